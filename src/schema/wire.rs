//! A minimal protobuf wire-format reader: enough to read extension options that `prost_types` drops and
//! to extract keys from request bytes without decoding the whole message.

use prost::encoding::decode_varint;

/// How deep messages may nest, as for prost's decoder (its `RECURSION_LIMIT`): readers that recurse over
/// raw bytes stop here instead of exhausting the stack on hostile input.
pub const RECURSION_LIMIT: usize = 100;

/// One field value as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0: the decoded number and the raw varint bytes.
    Varint(u64, &'a [u8]),
    /// Wire type 1: 8 raw bytes.
    Fixed64(&'a [u8]),
    /// Wire type 2: the payload and the raw bytes including the length prefix.
    Bytes(&'a [u8], &'a [u8]),
    /// Wire type 5: 4 raw bytes.
    Fixed32(&'a [u8]),
}

/// Malformed protobuf bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf: {0}")]
pub struct Malformed(pub &'static str);

/// One field: number, value, and the whole encoded field (tag included).
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
    pub encoded: &'a [u8],
}

/// Iterates the top-level fields of an encoded message.
pub struct Fields<'a> {
    buf: &'a [u8],
    failed: bool,
}

/// The fields of `buf`.
pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf, failed: false }
}

fn varint<'a>(buf: &mut &'a [u8]) -> Result<(u64, &'a [u8]), Malformed> {
    let start = *buf;
    let value = decode_varint(buf).map_err(|_| Malformed("bad varint"))?;
    let used = start.len() - buf.len();
    Ok((value, &start[..used]))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], Malformed> {
    if buf.len() < n {
        return Err(Malformed("truncated field"));
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

impl<'a> Fields<'a> {
    fn next_field(&mut self) -> Result<Field<'a>, Malformed> {
        let start = self.buf;
        let (tag, _) = varint(&mut self.buf)?;
        let number = u32::try_from(tag >> 3).map_err(|_| Malformed("field number too large"))?;
        if number == 0 {
            return Err(Malformed("field number 0"));
        }
        let value = match tag & 7 {
            0 => {
                let (n, raw) = varint(&mut self.buf)?;
                Value::Varint(n, raw)
            }
            1 => Value::Fixed64(take(&mut self.buf, 8)?),
            2 => {
                let before = self.buf;
                let (len, _) = varint(&mut self.buf)?;
                let len = usize::try_from(len).map_err(|_| Malformed("length too large"))?;
                let payload = take(&mut self.buf, len)?;
                let used = before.len() - self.buf.len();
                Value::Bytes(payload, &before[..used])
            }
            5 => Value::Fixed32(take(&mut self.buf, 4)?),
            _ => {
                return Err(Malformed(
                    "unsupported wire type (groups are not supported)",
                ))
            }
        };
        let used = start.len() - self.buf.len();
        Ok(Field {
            number,
            value,
            encoded: &start[..used],
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() || self.failed {
            return None;
        }
        let field = self.next_field();
        self.failed = field.is_err();
        Some(field)
    }
}

/// The payload of every length-delimited occurrence of field `number`.
pub fn bytes_fields(buf: &[u8], number: u32) -> Result<Vec<&[u8]>, Malformed> {
    let mut out = Vec::new();
    for field in fields(buf) {
        let field = field?;
        if field.number == number {
            if let Value::Bytes(payload, _) = field.value {
                out.push(payload);
            }
        }
    }
    Ok(out)
}

/// The last varint occurrence of field `number` (proto3 "last one wins").
pub fn varint_field(buf: &[u8], number: u32) -> Result<Option<u64>, Malformed> {
    let mut last = None;
    for field in fields(buf) {
        let field = field?;
        if field.number == number {
            if let Value::Varint(n, _) = field.value {
                last = Some(n);
            }
        }
    }
    Ok(last)
}

/// The last string occurrence of field `number`.
pub fn string_field(buf: &[u8], number: u32) -> Result<Option<String>, Malformed> {
    Ok(bytes_fields(buf, number)?
        .last()
        .map(|b| String::from_utf8_lossy(b).into_owned()))
}

/// `depth` levels of messages, each holding the next as field `number` (test input for depth limits).
#[cfg(test)]
pub(crate) fn nested(number: u32, depth: usize) -> Vec<u8> {
    // Sizes from the inside out, then written from the outside in: linear in the result's size.
    let mut sizes = vec![0usize];
    for _ in 0..depth {
        let inner = *sizes.last().expect("non-empty");
        let tag = prost::encoding::encoded_len_varint(u64::from(number) << 3 | 2);
        sizes.push(tag + prost::encoding::encoded_len_varint(inner as u64) + inner);
    }
    let mut out = Vec::with_capacity(sizes[depth]);
    for inner in sizes[..depth].iter().rev() {
        prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(*inner as u64, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_builds_valid_nesting() {
        let buf = nested(3, 2);
        assert_eq!(buf, vec![0x1a, 0x02, 0x1a, 0x00]);
        let inner = bytes_fields(&buf, 3).unwrap();
        assert_eq!(bytes_fields(inner[0], 3).unwrap(), vec![&[] as &[u8]]);
    }

    #[test]
    fn reads_every_wire_type_and_keeps_raw_bytes() {
        // 1: varint 150, 2: "hi", 3: fixed32, 4: fixed64
        let buf = [
            0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d, 1, 2, 3, 4, 0x21, 1, 2, 3, 4, 5, 6, 7,
            8,
        ];
        let all: Vec<_> = fields(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].value, Value::Varint(150, &[0x96, 0x01]));
        assert_eq!(all[1].value, Value::Bytes(b"hi", &[0x02, b'h', b'i']));
        assert_eq!(all[1].encoded, &[0x12, 0x02, b'h', b'i']);
        assert_eq!(all[2].value, Value::Fixed32(&[1, 2, 3, 4]));
        assert_eq!(all[3].value, Value::Fixed64(&[1, 2, 3, 4, 5, 6, 7, 8]));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        for buf in [
            &[0x12, 0x05, b'a'][..],
            &[0x08],
            &[0x1d, 1],
            &[0x0b],
            &[0x00],
        ] {
            assert!(fields(buf).any(|f| f.is_err()), "{buf:?}");
        }
    }
}

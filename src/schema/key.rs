//! Key extraction for keyed services (shared/docs/protocol.md §2.4).
//!
//! The key of a request is the key field's value in a canonical encoding, without the field tag:
//! varint kinds → the raw varint bytes; fixed32/fixed64 → the raw 4/8 bytes; string/bytes → varint length
//! prefix + bytes; messages → length prefix + the message re-encoded with only the fields the schema
//! knows, sorted by field number, recursively. An absent key field gives the empty key.

use prost::encoding::encode_varint;
use prost_reflect::{Kind, MessageDescriptor};

use super::wire::{self, Malformed, Value};

/// How a key field is encoded: what the extraction must do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// int32, int64, uint32, uint64, sint32, sint64, bool, enum.
    Varint,
    /// fixed32, sfixed32, float.
    Fixed32,
    /// fixed64, sfixed64, double.
    Fixed64,
    /// string or bytes.
    LengthDelimited,
    /// A message type (by full name): canonically re-encoded.
    Message(String),
}

impl KeyKind {
    /// The key kind of a field kind.
    pub fn of(kind: &Kind) -> KeyKind {
        match kind {
            Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Bool
            | Kind::Enum(_) => KeyKind::Varint,
            Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => KeyKind::Fixed32,
            Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => KeyKind::Fixed64,
            Kind::String | Kind::Bytes => KeyKind::LengthDelimited,
            Kind::Message(m) => KeyKind::Message(m.full_name().to_owned()),
        }
    }
}

/// The key of `request` (an encoded input message) whose key field is `field` of `input`.
pub fn extract(
    request: &[u8],
    input: &MessageDescriptor,
    field: u32,
) -> Result<Vec<u8>, Malformed> {
    let mut key = None;
    for f in wire::fields(request) {
        let f = f?;
        if f.number == field {
            // Last occurrence wins, as in protobuf's merge semantics for scalars.
            key = Some(f.value);
        }
    }
    let Some(value) = key else {
        return Ok(Vec::new());
    };
    let kind = input
        .get_field(field)
        .map(|f| f.kind())
        .ok_or(Malformed("key field not in schema"))?;
    match (value, kind) {
        (Value::Bytes(payload, _), Kind::Message(message)) => {
            let canonical = canonical_message(payload, &message, 1)?;
            let mut out = Vec::with_capacity(canonical.len() + 2);
            encode_varint(canonical.len() as u64, &mut out);
            out.extend_from_slice(&canonical);
            Ok(out)
        }
        (Value::Varint(_, raw), _) => Ok(raw.to_vec()),
        (Value::Fixed32(raw) | Value::Fixed64(raw), _) => Ok(raw.to_vec()),
        (Value::Bytes(_, raw), _) => Ok(raw.to_vec()),
    }
}

/// The message's known fields only, sorted by field number (stable for repeated fields), recursively
/// (at most [`wire::RECURSION_LIMIT`] levels deep, as prost decodes).
fn canonical_message(
    buf: &[u8],
    descriptor: &MessageDescriptor,
    depth: usize,
) -> Result<Vec<u8>, Malformed> {
    if depth > wire::RECURSION_LIMIT {
        return Err(Malformed("message nested too deeply"));
    }
    let mut fields: Vec<(u32, Vec<u8>)> = Vec::new();
    for f in wire::fields(buf) {
        let f = f?;
        let Some(known) = descriptor.get_field(f.number) else {
            continue;
        };
        let encoded = match (f.value, known.kind()) {
            (Value::Bytes(payload, _), Kind::Message(nested)) => {
                let inner = canonical_message(payload, &nested, depth + 1)?;
                let mut out = Vec::with_capacity(inner.len() + 6);
                encode_varint(u64::from(f.number) << 3 | 2, &mut out);
                encode_varint(inner.len() as u64, &mut out);
                out.extend_from_slice(&inner);
                out
            }
            _ => f.encoded.to_vec(),
        };
        fields.push((f.number, encoded));
    }
    fields.sort_by_key(|(number, _)| *number);
    Ok(fields.into_iter().flat_map(|(_, bytes)| bytes).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_reflect::DescriptorPool;

    fn pool() -> DescriptorPool {
        let set = include_bytes!(concat!(env!("OUT_DIR"), "/endpoint_descriptor.bin"));
        DescriptorPool::decode(&set[..]).unwrap()
    }

    #[test]
    fn string_keys_keep_their_length_prefix_and_lose_the_tag() {
        let input = pool()
            .get_message_by_name("restate.test.AddRequest")
            .unwrap();
        // key = "foo", delta = 5 (delta first: order on the wire does not matter)
        let request = [0x10, 0x05, 0x0a, 0x03, b'f', b'o', b'o'];
        assert_eq!(
            extract(&request, &input, 1).unwrap(),
            vec![3, b'f', b'o', b'o']
        );
        assert_eq!(extract(&[0x10, 0x05], &input, 1).unwrap(), Vec::<u8>::new());
        assert!(extract(&[0x0a, 0x09, b'x'], &input, 1).is_err());
    }

    #[test]
    fn varint_keys_are_the_raw_varint() {
        let input = pool()
            .get_message_by_name("restate.test.AddRequest")
            .unwrap();
        assert_eq!(
            extract(&[0x10, 0x96, 0x01], &input, 2).unwrap(),
            vec![0x96, 0x01]
        );
    }

    /// Regression: canonicalising a message key recursed once per nesting level of the request bytes,
    /// unbounded; `dev.restate.Ingress/Invoke` extracts keys from arguments nobody decoded first, so a
    /// 400 KB argument nesting 100,000 levels for a service keyed by a recursive message overflowed the
    /// stack and killed the process.
    #[test]
    fn deeply_nested_message_keys_are_refused_without_overflowing_the_stack() {
        use prost_types::field_descriptor_proto::{Label, Type};
        use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
        let file = FileDescriptorProto {
            name: Some("r.proto".into()),
            package: Some("fuzz".into()),
            syntax: Some("proto3".into()),
            message_type: vec![DescriptorProto {
                name: Some("R".into()),
                field: vec![FieldDescriptorProto {
                    name: Some("r".into()),
                    number: Some(1),
                    label: Some(Label::Optional as i32),
                    r#type: Some(Type::Message as i32),
                    type_name: Some(".fuzz.R".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let pool = DescriptorPool::from_file_descriptor_set(prost_types::FileDescriptorSet {
            file: vec![file],
        })
        .unwrap();
        let r = pool.get_message_by_name("fuzz.R").unwrap();
        assert!(extract(&wire::nested(1, 50), &r, 1).is_ok());
        assert_eq!(
            extract(&wire::nested(1, 100_000), &r, 1),
            Err(Malformed("message nested too deeply"))
        );
    }

    #[test]
    fn message_keys_are_canonical() {
        let pool = pool();
        let message = pool.get_message_by_name("google.protobuf.Empty").unwrap();
        // Empty knows no fields: everything is dropped.
        let reencoded = canonical_message(&[0x08, 0x01], &message, 1).unwrap();
        assert!(reencoded.is_empty());
        let echo = pool
            .get_message_by_name("restate.test.EchoMessage")
            .unwrap();
        // number = 7, text = "a", unknown field 9 → sorted text, number; unknown dropped.
        let canonical =
            canonical_message(&[0x10, 0x07, 0x48, 0x01, 0x0a, 0x01, b'a'], &echo, 1).unwrap();
        assert_eq!(canonical, vec![0x0a, 0x01, b'a', 0x10, 0x07]);
    }
}

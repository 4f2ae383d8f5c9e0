//! The service invocation protocol (shared/docs/protocol.md §1): message types, the 8-byte frame
//! header, and a streaming decoder.

pub mod messages {
    //! Protobuf payloads (`dev.restate.service.protocol`).
    include!(concat!(env!("OUT_DIR"), "/dev.restate.service.protocol.rs"));
}

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Message type ids.
pub mod types {
    pub const START: u16 = 0x0000;
    pub const COMPLETION: u16 = 0x0001;
    pub const SUSPENSION: u16 = 0x0002;
    pub const ERROR: u16 = 0x0003;
    pub const POLL_INPUT_STREAM: u16 = 0x0400;
    pub const OUTPUT_STREAM: u16 = 0x0401;
    pub const GET_STATE: u16 = 0x0800;
    pub const SET_STATE: u16 = 0x0801;
    pub const CLEAR_STATE: u16 = 0x0802;
    pub const SLEEP: u16 = 0x0C00;
    pub const INVOKE: u16 = 0x0C01;
    pub const BACKGROUND_INVOKE: u16 = 0x0C02;
    pub const AWAKEABLE: u16 = 0x0C03;
    pub const COMPLETE_AWAKEABLE: u16 = 0x0C04;
    /// The JavaScript SDK's side effects.
    pub const SIDE_EFFECT: u16 = 0xFC01;
}

/// `COMPLETED` on completable entries, `REQUIRES_ACK` on custom entries (the same bit).
pub const FLAG_COMPLETED: u16 = 0x0001;
/// `REQUIRES_ACK` on custom entries.
pub const FLAG_REQUIRES_ACK: u16 = 0x0001;
/// `PARTIAL_STATE` on `StartMessage`.
pub const FLAG_PARTIAL_STATE: u16 = 0x0400;

/// What kind of message a type id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Start, Completion, Suspension, Error.
    Core,
    /// A journal entry the runtime may complete (PollInput, GetState, Sleep, Invoke, Awakeable).
    Completable,
    /// A journal entry that is never completed (Output, SetState, ClearState, BackgroundInvoke,
    /// CompleteAwakeable).
    Plain,
    /// A custom entry (`(type & 0xFC00) != 0` and not known): stored and replayed verbatim.
    Custom,
}

/// Classifies a type id; `None` for unknown ids below 0x0400 (a protocol error).
pub fn kind(ty: u16) -> Option<Kind> {
    use types::*;
    match ty {
        START | COMPLETION | SUSPENSION | ERROR => Some(Kind::Core),
        POLL_INPUT_STREAM | GET_STATE | SLEEP | INVOKE | AWAKEABLE => Some(Kind::Completable),
        OUTPUT_STREAM | SET_STATE | CLEAR_STATE | BACKGROUND_INVOKE | COMPLETE_AWAKEABLE => {
            Some(Kind::Plain)
        }
        t if t & 0xFC00 != 0 => Some(Kind::Custom),
        _ => None,
    }
}

/// The 8-byte frame header: type (16 bits), flags (16 bits), payload length (32 bits), big-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: u16,
    pub flags: u16,
    pub length: u32,
}

impl Header {
    /// Header size on the wire.
    pub const SIZE: usize = 8;

    /// Decodes a header.
    pub fn decode(raw: u64) -> Header {
        Header {
            ty: (raw >> 48) as u16,
            flags: (raw >> 32) as u16,
            length: raw as u32,
        }
    }

    /// Encodes a header.
    pub fn encode(self) -> u64 {
        (u64::from(self.ty) << 48) | (u64::from(self.flags) << 32) | u64::from(self.length)
    }
}

/// One framed message: header type and flags, and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub ty: u16,
    pub flags: u16,
    pub payload: Bytes,
}

impl Frame {
    /// A frame with this payload.
    pub fn new(ty: u16, flags: u16, payload: impl Into<Bytes>) -> Frame {
        Frame {
            ty,
            flags,
            payload: payload.into(),
        }
    }

    /// A frame holding an encoded protobuf message.
    pub fn message(ty: u16, flags: u16, message: &impl prost::Message) -> Frame {
        Frame::new(ty, flags, message.encode_to_vec())
    }

    /// True when the COMPLETED (or REQUIRES_ACK) bit is set.
    pub fn flag_bit(&self) -> bool {
        self.flags & FLAG_COMPLETED != 0
    }

    /// Whether this journal entry, as an SDK sent it, is already completed. A GetState is completed
    /// iff its result is in its payload, whatever its flags: SDK 0.4.1 sets no header flags on what
    /// it sends, so a GetState it answered from the eager state arrives without the COMPLETED flag
    /// (and the runtime must not read the state again, overwrite the SDK's answer, or send a
    /// completion, which waits for an fsync, for it), and a flag without a result is an answer the
    /// SDK never gave. Other entries: the COMPLETED flag.
    pub fn is_completed_entry(&self) -> bool {
        /// Only GetState's result fields (`empty = 13`, `value = 14`): decoding skips the key, and
        /// the value is a slice of the payload, not a copy (this runs for every GetState, several
        /// times).
        #[derive(Clone, PartialEq, prost::Message)]
        struct GetStateResult {
            #[prost(message, optional, tag = "13")]
            empty: Option<()>,
            #[prost(bytes = "bytes", optional, tag = "14")]
            value: Option<Bytes>,
        }
        if self.ty == types::GET_STATE {
            <GetStateResult as prost::Message>::decode(self.payload.clone())
                .is_ok_and(|r| r.empty.is_some() || r.value.is_some())
        } else {
            self.flag_bit()
        }
    }

    /// Header and payload, ready to send.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(Header::SIZE + self.payload.len());
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Appends header and payload to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.put_u64(
            Header {
                ty: self.ty,
                flags: self.flags,
                length: self.payload.len() as u32,
            }
            .encode(),
        );
        out.put_slice(&self.payload);
    }
}

/// A stream that does not follow the framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown message type {0:#06x}")]
    UnknownType(u16),
    #[error("message of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge { length: u32, limit: usize },
}

/// Buffers bytes as they arrive (split or coalesced arbitrarily) and yields whole frames.
#[derive(Debug)]
pub struct Decoder {
    buffer: BytesMut,
    limit: usize,
}

impl Decoder {
    /// A decoder refusing payloads over `limit` bytes.
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            buffer: BytesMut::new(),
            limit,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole frame, if one is buffered.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Frame>, DecodeError> {
        if self.buffer.len() < Header::SIZE {
            return Ok(None);
        }
        let header = Header::decode(u64::from_be_bytes(
            self.buffer[..Header::SIZE].try_into().expect("8 bytes"),
        ));
        if kind(header.ty).is_none() {
            return Err(DecodeError::UnknownType(header.ty));
        }
        if header.length as usize > self.limit {
            return Err(DecodeError::TooLarge {
                length: header.length,
                limit: self.limit,
            });
        }
        let total = Header::SIZE + header.length as usize;
        if self.buffer.len() < total {
            return Ok(None);
        }
        self.buffer.advance(Header::SIZE);
        let payload = self.buffer.split_to(header.length as usize).freeze();
        Ok(Some(Frame {
            ty: header.ty,
            flags: header.flags,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_match_the_documented_examples() {
        let start = Header {
            ty: types::START,
            flags: 0,
            length: 25,
        };
        assert_eq!(start.encode().to_be_bytes(), [0, 0, 0, 0, 0, 0, 0, 0x19]);
        let get = Header {
            ty: types::GET_STATE,
            flags: FLAG_COMPLETED,
            length: 10,
        };
        assert_eq!(get.encode().to_be_bytes(), [0x08, 0, 0, 1, 0, 0, 0, 0x0a]);
        let custom = Header {
            ty: 0xFC01,
            flags: FLAG_REQUIRES_ACK,
            length: 5,
        };
        assert_eq!(
            custom.encode().to_be_bytes(),
            [0xfc, 0x01, 0, 1, 0, 0, 0, 5]
        );
        assert_eq!(Header::decode(custom.encode()), custom);
        let partial = Header {
            ty: types::START,
            flags: FLAG_PARTIAL_STATE,
            length: 0,
        };
        assert_eq!(partial.encode(), 0x0000_0400_0000_0000);
    }

    #[test]
    fn the_decoder_reassembles_split_and_coalesced_frames() {
        let a = Frame::new(types::SET_STATE, 0, vec![1, 2, 3]);
        let b = Frame::new(types::OUTPUT_STREAM, 0, vec![9; 300]);
        let mut wire = a.encode().to_vec();
        wire.extend_from_slice(&b.encode());
        let mut decoder = Decoder::new(1024);
        let mut frames = Vec::new();
        for chunk in wire.chunks(5) {
            decoder.push(chunk);
            while let Some(frame) = decoder.next().unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames, vec![a, b]);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn unknown_types_and_oversized_payloads_are_errors() {
        let mut decoder = Decoder::new(16);
        decoder.push(&Frame::new(0x0123, 0, vec![]).encode());
        assert_eq!(decoder.next(), Err(DecodeError::UnknownType(0x0123)));
        let mut decoder = Decoder::new(16);
        decoder.push(&Frame::new(types::SET_STATE, 0, vec![0; 17]).encode()[..8]);
        assert!(matches!(
            decoder.next(),
            Err(DecodeError::TooLarge { length: 17, .. })
        ));
        // Types with high bits set are custom entries.
        assert_eq!(kind(0x1234), Some(Kind::Custom));
        assert_eq!(kind(0xFC01), Some(Kind::Custom));
    }
}

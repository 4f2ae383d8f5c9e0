//! Rows stored by the partition processor (protobuf, so the storage API can show them raw).

use bytes::Bytes;

/// Status table row: an invocation that is invoked or suspended.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub key: Bytes,
    #[prost(string, tag = "3")]
    pub method: String,
    /// The instance is keyed (holds the per-key lock while this row exists).
    #[prost(bool, tag = "4")]
    pub keyed: bool,
    /// Suspended: waiting for a completion of one of `waiting`.
    #[prost(bool, tag = "5")]
    pub suspended: bool,
    #[prost(uint32, repeated, tag = "6")]
    pub waiting: Vec<u32>,
    /// Creation time, unix milliseconds.
    #[prost(uint64, tag = "7")]
    pub created_ms: u64,
}

/// Inbox table row: an invocation waiting for its key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InboxEntry {
    #[prost(bytes = "bytes", tag = "1")]
    pub invocation_id: Bytes,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub argument: Bytes,
    #[prost(uint64, tag = "4")]
    pub created_ms: u64,
}

/// A stored journal entry: the frame's type and flags, then its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub ty: u16,
    /// COMPLETED (completable entries) as stored; never REQUIRES_ACK.
    pub completed: bool,
    pub payload: Bytes,
}

impl Entry {
    /// `[type u16 BE][completed u8][payload]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.payload.len());
        out.extend_from_slice(&self.ty.to_be_bytes());
        out.push(u8::from(self.completed));
        out.extend_from_slice(&self.payload);
        out
    }

    /// Inverse of [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        if bytes.len() < 3 {
            return None;
        }
        Some(Entry {
            ty: u16::from_be_bytes([bytes[0], bytes[1]]),
            completed: bytes[2] != 0,
            payload: Bytes::copy_from_slice(&bytes[3..]),
        })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

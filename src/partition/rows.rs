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
    /// When the row was last written, unix milliseconds.
    #[prost(uint64, tag = "7")]
    pub created_ms: u64,
    /// A calling invocation waiting for the result.
    #[prost(message, optional, tag = "8")]
    pub response_sink: Option<ResponseSink>,
    /// The idempotency key the invocation was started with (its result is kept for the retention).
    #[prost(string, tag = "9")]
    pub idempotency_key: String,
    /// Attempts started so far (for operators; restored at recovery).
    #[prost(uint32, tag = "10")]
    pub attempts: u32,
    /// Why the last failed attempt failed (clipped), empty if none failed.
    #[prost(string, tag = "11")]
    pub last_failure: String,
    /// When the next attempt starts after a failure (unix ms); in the past: it runs (or ran).
    #[prost(uint64, tag = "12")]
    pub next_retry_ms: u64,
    /// The endpoint (id) its first attempt ran on: later attempts run there too, even after the
    /// service moved to a newer endpoint. Empty: not pinned yet.
    #[prost(string, tag = "13")]
    pub endpoint: String,
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
    #[prost(message, optional, tag = "5")]
    pub response_sink: Option<ResponseSink>,
    #[prost(string, tag = "6")]
    pub idempotency_key: String,
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

/// Where an invocation's result goes besides ingress waiters: the Invoke entry of a calling invocation.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseSink {
    #[prost(bytes = "bytes", tag = "1")]
    pub caller: Bytes,
    #[prost(uint32, tag = "2")]
    pub entry_index: u32,
}

/// An invocation travelling between partitions (outbox, delayed calls).
#[derive(Clone, PartialEq, prost::Message)]
pub struct InvocationRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub invocation_id: Bytes,
    #[prost(string, tag = "2")]
    pub service: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub key: Bytes,
    #[prost(string, tag = "4")]
    pub method: String,
    #[prost(bytes = "bytes", tag = "5")]
    pub argument: Bytes,
    #[prost(bool, tag = "6")]
    pub keyed: bool,
    #[prost(message, optional, tag = "7")]
    pub response_sink: Option<ResponseSink>,
}

/// A completion for an entry of an invocation (a call's response, an awakeable's result).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CompletionRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub invocation_id: Bytes,
    #[prost(uint32, tag = "2")]
    pub entry_index: u32,
    /// The encoded result field(s) of a `CompletionMessage` (tags 13/14/15).
    #[prost(bytes = "bytes", tag = "3")]
    pub result: Bytes,
    /// The journal entry type this completes (Invoke for a call's response, Awakeable for an awakeable's
    /// result); an entry of another type is never completed by it. 0: written before this field
    /// existed, which only ever completed Invoke or Awakeable entries.
    #[prost(uint32, tag = "4")]
    pub entry_type: u32,
    /// The invocation that sent it (the resolver of an awakeable), for the log line of a refusal.
    #[prost(bytes = "bytes", tag = "5")]
    pub source: Bytes,
}

/// Outbox row: a message to another partition, deleted once the target has it durably.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboxMessage {
    #[prost(oneof = "outbox_message::Message", tags = "1, 2")]
    pub message: Option<outbox_message::Message>,
}

/// Outbox message kinds.
pub mod outbox_message {
    /// The kinds.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Message {
        #[prost(message, tag = "1")]
        Invoke(super::InvocationRequest),
        #[prost(message, tag = "2")]
        Complete(super::CompletionRequest),
    }
}

/// Timer row: what happens when it fires.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timer {
    /// Set: start this invocation (a delayed one-way call). Unset: complete the sleep entry.
    #[prost(message, optional, tag = "1")]
    pub invoke: Option<InvocationRequest>,
}

/// Idempotency table row: the result of an invocation started with an idempotency key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Idempotent {
    #[prost(bool, tag = "1")]
    pub failed: bool,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    #[prost(uint32, tag = "3")]
    pub code: u32,
    #[prost(string, tag = "4")]
    pub message: String,
    /// Purged after this (unix ms).
    #[prost(uint64, tag = "5")]
    pub expires_ms: u64,
}

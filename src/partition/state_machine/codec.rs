//! Encodings the transitions share: completion results, awakeable ids, the messages that answer a
//! calling invocation, and what a completion may complete.

use base64::Engine;
use bytes::Bytes;
use prost::Message;

use super::super::invocation::{Failure, Outcome};
use super::super::rows::{outbox_message, CompletionRequest, OutboxMessage, ResponseSink};
use super::super::{EntryIndex, InvocationId};
use crate::protocol::messages::{completion_message, CompletionMessage};
use crate::protocol::types;

/// The encoded result field of a completion (tags 13/14/15), appended to an entry to complete it.
pub fn result_bytes(result: &completion_message::Result) -> Bytes {
    CompletionMessage {
        entry_index: 0,
        result: Some(result.clone()),
    }
    .encode_to_vec()
    .into()
}

/// Decodes [`result_bytes`].
pub fn decode_result(bytes: &[u8]) -> Option<completion_message::Result> {
    CompletionMessage::decode(bytes).ok()?.result
}

/// An outcome as a completion result.
pub fn outcome_result(outcome: &Outcome) -> completion_message::Result {
    match outcome {
        Ok(value) => completion_message::Result::Value(value.to_vec()),
        Err(f) => completion_message::Result::Failure(crate::protocol::messages::Failure {
            code: f.code,
            message: f.message.clone(),
        }),
    }
}

/// The outbox message that answers a calling invocation's Invoke entry.
pub fn response_message(sink: &ResponseSink, outcome: &Outcome) -> outbox_message::Message {
    outbox_message::Message::Complete(CompletionRequest {
        invocation_id: sink.caller.clone(),
        entry_index: sink.entry_index,
        result: result_bytes(&outcome_result(outcome)),
        entry_type: u32::from(types::INVOKE),
        source: Bytes::new(),
    })
}

/// The invocation an outbox message is for (`None`: undecodable).
pub fn target_id(row: &OutboxMessage) -> Option<InvocationId> {
    match &row.message {
        Some(outbox_message::Message::Invoke(r)) => InvocationId::from_slice(&r.invocation_id),
        Some(outbox_message::Message::Complete(c)) => InvocationId::from_slice(&c.invocation_id),
        None => None,
    }
}

/// The failure of a cancelled invocation.
pub fn aborted() -> Failure {
    Failure::new(crate::grpc::Code::Aborted, "the invocation was cancelled")
}

/// Parses a 0.4.1 awakeable id: base64url_nopad(invocation id ++ u32_be(entry index)).
pub fn parse_awakeable_id(id: &str) -> Option<(InvocationId, EntryIndex)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(id.trim_end_matches('='))
        .ok()?;
    if bytes.len() != InvocationId::LEN + 4 {
        return None;
    }
    let invocation = InvocationId::from_slice(&bytes[..InvocationId::LEN])?;
    let index = u32::from_be_bytes(bytes[InvocationId::LEN..].try_into().ok()?);
    Some((invocation, index))
}

/// What a completion may complete, and who sent it (named in the log line of a refusal).
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    /// The journal entry type it completes; 0 for outbox rows written before the type was recorded,
    /// which only ever completed Invoke or Awakeable entries.
    pub entry_type: u16,
    /// The invocation that sent it, when it came from one (an awakeable's resolver).
    pub source: Option<InvocationId>,
}

impl Expected {
    /// A completion the runtime makes itself (a timer completing its Sleep entry).
    pub fn internal(entry_type: u16) -> Expected {
        Expected {
            entry_type,
            source: None,
        }
    }

    /// What a delivered completion says it completes.
    pub fn from_request(request: &CompletionRequest) -> Expected {
        Expected {
            entry_type: u16::try_from(request.entry_type).unwrap_or(u16::MAX),
            source: InvocationId::from_slice(&request.source),
        }
    }

    /// Whether an entry of type `ty` may be completed by it.
    pub fn admits(&self, ty: u16) -> bool {
        match self.entry_type {
            0 => ty == types::INVOKE || ty == types::AWAKEABLE,
            expected => ty == expected,
        }
    }

    /// Logs the refusal of a completion of entry `index` of `target`.
    pub fn refuse(&self, target: InvocationId, index: EntryIndex, why: &str) {
        let source = self.source.map(|s| s.to_hex()).unwrap_or_default();
        log::warn!(
            invocation = target.to_hex(), index, expected_type = self.entry_type, source;
            "refused a completion of entry {index}: {why}; nothing was stored"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awakeable_ids_round_trip_the_sdk_format() {
        let id = InvocationId::from_parts(42, [7; 16]);
        let mut raw = id.as_bytes().to_vec();
        raw.extend_from_slice(&7u32.to_be_bytes());
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(parse_awakeable_id(&encoded), Some((id, 7)));
        assert_eq!(parse_awakeable_id("not base64!"), None);
        assert_eq!(parse_awakeable_id("AAAA"), None);
    }

    #[test]
    fn completion_results_are_the_entry_result_fields() {
        let bytes = result_bytes(&completion_message::Result::Value(b"v".to_vec()));
        // tag 14 (value), length 1.
        assert_eq!(bytes.as_ref(), &[0x72, 0x01, b'v']);
        assert_eq!(
            decode_result(&bytes),
            Some(completion_message::Result::Value(b"v".to_vec()))
        );
        let empty = result_bytes(&completion_message::Result::Empty(()));
        assert_eq!(empty.as_ref(), &[0x6a, 0x00]);
    }
}

//! CompleteAwakeable: resolves (or rejects) another invocation's Awakeable entry through the outbox.
//! (An Awakeable entry itself needs nothing: it is completed by the resolver's message.)

use bytes::Bytes;
use prost::Message;

use super::{decode_error, AppendError, Context, Decision};
use crate::grpc::Code;
use crate::partition::invocation::Failure;
use crate::partition::rows::{outbox_message, CompletionRequest};
use crate::partition::state_machine::codec::{parse_awakeable_id, result_bytes};
use crate::protocol::messages::{
    complete_awakeable_entry_message, completion_message, CompleteAwakeableEntryMessage,
};
use crate::protocol::{types, Frame};

/// Ships the result to the awakeable's invocation. An id that is not an awakeable id fails the
/// resolving invocation with INVALID_ARGUMENT.
pub fn complete(
    context: &Context<'_, '_>,
    frame: &Frame,
    decision: &mut Decision,
) -> Result<(), AppendError> {
    let complete = CompleteAwakeableEntryMessage::decode(frame.payload.clone())
        .map_err(decode_error(context.index))?;
    let Some((target, target_index)) = parse_awakeable_id(&complete.id) else {
        let shown: String = complete.id.chars().take(64).collect();
        log::warn!(
            invocation = context.id.to_hex();
            "refused: CompleteAwakeable with {shown:?}, which is not an awakeable id"
        );
        return Err(AppendError::Refused(Failure::new(
            Code::InvalidArgument,
            format!("{shown:?} is not an awakeable id"),
        )));
    };
    let result = match complete.result {
        Some(complete_awakeable_entry_message::Result::Value(v)) => {
            completion_message::Result::Value(v)
        }
        Some(complete_awakeable_entry_message::Result::Failure(f)) => {
            completion_message::Result::Failure(f)
        }
        None => completion_message::Result::Value(Vec::new()),
    };
    decision
        .outbox
        .push(outbox_message::Message::Complete(CompletionRequest {
            invocation_id: Bytes::copy_from_slice(target.as_bytes()),
            entry_index: target_index,
            result: result_bytes(&result),
            entry_type: u32::from(types::AWAKEABLE),
            source: Bytes::copy_from_slice(context.id.as_bytes()),
        }));
    Ok(())
}

//! GetState, SetState, ClearState: the instance's keyed state, in the same batch as the entry.

use prost::Message;

use super::{decode_error, AppendError, Context, Decision};
use crate::partition::rows::Entry;
use crate::partition::state_machine::Effect;
use crate::protocol::messages::{
    completion_message, get_state_entry_message, ClearStateEntryMessage, CompletionMessage,
    GetStateEntryMessage, SetStateEntryMessage,
};
use crate::protocol::Frame;

/// GetState: one the SDK answered itself (eager state) is stored as sent; otherwise the runtime
/// answers it from the value the shell read, and stores the entry completed.
pub fn get(
    context: &Context<'_, '_>,
    frame: &Frame,
    entry: &mut Entry,
    decision: &mut Decision,
) -> Result<(), AppendError> {
    if entry.completed {
        return Ok(());
    }
    let get =
        GetStateEntryMessage::decode(frame.payload.clone()).map_err(decode_error(context.index))?;
    let value = context
        .read
        .state_value
        .clone()
        .ok_or_else(|| AppendError::Storage("the state value was not read".into()))?;
    let (result, completion_result) = match value {
        Some(v) => (
            get_state_entry_message::Result::Value(v.to_vec()),
            completion_message::Result::Value(v.to_vec()),
        ),
        None => (
            get_state_entry_message::Result::Empty(()),
            completion_message::Result::Empty(()),
        ),
    };
    entry.payload = GetStateEntryMessage {
        key: get.key,
        result: Some(result),
    }
    .encode_to_vec()
    .into();
    entry.completed = true;
    decision.completion = Some(CompletionMessage {
        entry_index: context.index,
        result: Some(completion_result),
    });
    Ok(())
}

/// SetState: writes the value.
pub fn set(
    context: &Context<'_, '_>,
    frame: &Frame,
    decision: &mut Decision,
) -> Result<(), AppendError> {
    let set =
        SetStateEntryMessage::decode(frame.payload.clone()).map_err(decode_error(context.index))?;
    decision.writes.push(Effect::PutState(
        context.partition,
        context.service.clone(),
        set.key.into(),
        set.value.into(),
    ));
    Ok(())
}

/// ClearState: deletes the value.
pub fn clear(
    context: &Context<'_, '_>,
    frame: &Frame,
    decision: &mut Decision,
) -> Result<(), AppendError> {
    let clear = ClearStateEntryMessage::decode(frame.payload.clone())
        .map_err(decode_error(context.index))?;
    decision.writes.push(Effect::DeleteState(
        context.partition,
        context.service.clone(),
        clear.key.into(),
    ));
    Ok(())
}

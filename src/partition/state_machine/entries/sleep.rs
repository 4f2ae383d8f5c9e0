//! Sleep: a durable timer, written with the entry; it completes the entry when it fires.

use prost::Message;

use super::{decode_error, AppendError, Context, Decision};
use crate::partition::rows::{Entry, Timer};
use crate::partition::state_machine::TimerKey;
use crate::protocol::messages::SleepEntryMessage;
use crate::protocol::Frame;

/// Arms the timer of an uncompleted Sleep (a completed one is replayed as sent).
pub fn sleep(
    context: &Context<'_, '_>,
    frame: &Frame,
    entry: &Entry,
    decision: &mut Decision,
) -> Result<(), AppendError> {
    if entry.completed {
        return Ok(());
    }
    let sleep =
        SleepEntryMessage::decode(frame.payload.clone()).map_err(decode_error(context.index))?;
    let key = TimerKey {
        wake_ms: sleep.wake_up_time,
        partition: context.partition,
        id: context.id,
        index: context.index,
    };
    decision.timer = Some((key, Timer { invoke: None }));
    Ok(())
}

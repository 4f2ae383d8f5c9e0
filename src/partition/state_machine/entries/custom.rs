//! Custom entries (the SDK's side effects): stored and replayed verbatim; acknowledged once durable
//! when the SDK asks (stored without the flag, so a replay is never re-acknowledged).

use super::{Context, Decision};
use crate::protocol::messages::CompletionMessage;
use crate::protocol::Frame;

/// Acknowledges the entry if it requires it.
pub fn custom(context: &Context<'_, '_>, frame: &Frame, decision: &mut Decision) {
    if frame.flag_bit() {
        decision.completion = Some(CompletionMessage {
            entry_index: context.index,
            result: None,
        });
    }
}

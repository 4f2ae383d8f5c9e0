//! Appending the journal entries an SDK sends, one file per entry type: [`state`] (get, set, clear),
//! [`sleep`], [`call`] (request-response and one-way), [`awakeable`] (create, resolve), [`custom`].
//!
//! Each arm only decides: it returns the entry as stored, the completion to send back and the effects,
//! or an error before anything changed; [`State::append`](super::State) then applies the decision.

pub mod awakeable;
pub mod call;
pub mod custom;
pub mod sleep;
pub mod state;

use bytes::Bytes;

use super::codec::decode_result;
use super::timers::TimerKey;
use super::{Effect, Effects, EntryMeta, Env, State};
use crate::partition::invocation::Failure;
use crate::partition::rows::{outbox_message, Entry, Timer};
use crate::partition::{EntryIndex, InvocationId, PartitionId, ServiceId};
use crate::protocol::messages::CompletionMessage;
use crate::protocol::{self, types, Frame, Kind};

/// What the shell read from storage for an entry before it is appended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Read {
    /// For a GetState the SDK asks the runtime to answer: the stored value (`Some(None)`: unset).
    pub state_value: Option<Option<Bytes>>,
    /// For an entry [`State::has_early`] names: its stored completion result.
    pub early: Option<Bytes>,
}

impl Read {
    /// Whether the shell must read a state value for this frame (an uncompleted GetState).
    pub fn needs_state(frame: &Frame) -> bool {
        frame.ty == types::GET_STATE && !frame.is_completed_entry()
    }
}

/// Why an entry could not be appended.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppendError {
    /// The invocation is no longer here (ended or cancelled).
    #[error("the invocation is gone")]
    Gone,
    /// The SDK broke the protocol (retried: a fixed SDK may behave).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Storage failed (transient).
    #[error("storage: {0}")]
    Storage(String),
    /// The entry asks for something that can never succeed (e.g. completing an awakeable with an id
    /// that is not one): the invocation fails with this.
    #[error("{}", .0.message)]
    Refused(Failure),
}

impl AppendError {
    /// Whether a new attempt may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, AppendError::Gone | AppendError::Refused(_))
    }
}

/// What an entry arm sees.
pub struct Context<'a, 'e> {
    pub env: &'a Env<'e>,
    pub id: InvocationId,
    pub index: EntryIndex,
    pub partition: PartitionId,
    pub service: &'a ServiceId,
    pub read: &'a Read,
}

/// An arm's decision.
#[derive(Debug, Default)]
pub struct Decision {
    /// The entry as stored (completed by the runtime where it answers it at once).
    pub entry: Option<Entry>,
    /// Sent back to the SDK once durable.
    pub completion: Option<CompletionMessage>,
    /// Rows besides the entry.
    pub writes: Vec<Effect>,
    /// Messages for other partitions.
    pub outbox: Vec<outbox_message::Message>,
    /// A durable timer to arm.
    pub timer: Option<(TimerKey, Timer)>,
}

impl Decision {
    /// Completes the entry with `result` (its payload gets the result fields appended).
    fn complete_with(&mut self, entry: &mut Entry, index: EntryIndex, result: &Bytes) {
        let mut payload = entry.payload.to_vec();
        payload.extend_from_slice(result);
        entry.payload = payload.into();
        entry.completed = true;
        self.completion = Some(CompletionMessage {
            entry_index: index,
            result: decode_result(result),
        });
    }
}

/// A decode failure of entry `index` as a protocol violation.
pub(crate) fn decode_error(index: EntryIndex) -> impl Fn(prost::DecodeError) -> AppendError {
    move |e| AppendError::Protocol(format!("entry {index}: {e}"))
}

impl State {
    /// Appends the entry the SDK sent at `index` with its effects. Nothing changes on an error.
    pub(super) fn append(
        &mut self,
        env: &Env<'_>,
        id: InvocationId,
        index: EntryIndex,
        frame: &Frame,
        read: Read,
        out: &mut Effects,
    ) -> Result<Option<CompletionMessage>, AppendError> {
        let invocation = self.invocations.get(&id).ok_or(AppendError::Gone)?;
        let length = invocation.journal_length();
        if index != length {
            return Err(AppendError::Protocol(format!(
                "entry {index} sent when the journal has {length} entries"
            )));
        }
        let kind = protocol::kind(frame.ty).ok_or(AppendError::Protocol(format!(
            "unknown message type {:#06x}",
            frame.ty
        )))?;
        let context = Context {
            env,
            id,
            index,
            partition: invocation.partition,
            service: &invocation.service,
            read: &read,
        };
        let mut entry = Entry {
            ty: frame.ty,
            completed: kind == Kind::Completable && frame.is_completed_entry(),
            payload: frame.payload.clone(),
        };
        let mut decision = decide(&context, frame, kind, &mut entry)?;
        // A completion stored before its entry (by a version that accepted early ones): merge it.
        let early = invocation.early.contains(&index);
        if early && kind == Kind::Completable && !entry.completed {
            if let Some(stored) = &read.early {
                decision.complete_with(&mut entry, index, stored);
            }
        }
        let partition = invocation.partition;
        Ok(self.apply_append(env, id, index, partition, entry, early, decision, out))
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_append(
        &mut self,
        env: &Env<'_>,
        id: InvocationId,
        index: EntryIndex,
        partition: PartitionId,
        entry: Entry,
        early: bool,
        decision: Decision,
        out: &mut Effects,
    ) -> Option<CompletionMessage> {
        let invocation = self.invocations.get_mut(&id).expect("checked by append");
        invocation.entries.push(EntryMeta {
            ty: entry.ty,
            completed: entry.completed,
        });
        if early {
            invocation.early.remove(&index);
            out.write(Effect::DeleteCompletion(partition, id, index));
        }
        out.write(Effect::PutEntry(partition, id, index, entry));
        out.writes.extend(decision.writes);
        self.queue_outbox(env, partition, decision.outbox, out);
        if let Some((key, row)) = decision.timer {
            out.write(Effect::PutTimer(key, Box::new(row)));
            if self.timers.add(key, env.limits.timers_in_memory) {
                out.act(super::Action::WakeTimers);
            }
        }
        decision.completion
    }
}

/// The arm of `frame`'s entry type.
fn decide(
    context: &Context<'_, '_>,
    frame: &Frame,
    kind: Kind,
    entry: &mut Entry,
) -> Result<Decision, AppendError> {
    let mut decision = Decision::default();
    match frame.ty {
        types::GET_STATE => state::get(context, frame, entry, &mut decision)?,
        types::SET_STATE => state::set(context, frame, &mut decision)?,
        types::CLEAR_STATE => state::clear(context, frame, &mut decision)?,
        types::POLL_INPUT_STREAM => {}
        types::SLEEP => sleep::sleep(context, frame, entry, &mut decision)?,
        types::INVOKE => call::invoke(context, frame, entry, &mut decision)?,
        types::BACKGROUND_INVOKE => call::background_invoke(context, frame, &mut decision)?,
        types::AWAKEABLE => {}
        types::COMPLETE_AWAKEABLE => awakeable::complete(context, frame, &mut decision)?,
        types::OUTPUT_STREAM => {
            return Err(AppendError::Protocol(
                "an output is not appended; it ends the invocation".into(),
            ))
        }
        _ if kind == Kind::Custom => custom::custom(context, frame, &mut decision),
        _ => {
            return Err(AppendError::Protocol(format!(
                "message type {:#06x} is not a journal entry",
                frame.ty
            )))
        }
    }
    Ok(decision)
}

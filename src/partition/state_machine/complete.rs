//! Completions of journal entries (a call's response, an awakeable's result, a timer), suspension,
//! and timers firing.

use bytes::Bytes;

use super::codec::{result_bytes, Expected};
use super::timers::TimerKey;
use super::{completion_for, Action, Effect, Effects, Env, State, SuspendOutcome};
use crate::partition::rows::{outbox_message, Entry, Timer};
use crate::partition::{EntryIndex, InvocationId};
use crate::protocol::messages::completion_message;
use crate::protocol::types;

/// A completion of one entry: its result (tags 13/14/15 bytes), what it may complete, and the entry
/// as the shell read it.
pub(super) struct Completion {
    pub id: InvocationId,
    pub index: EntryIndex,
    pub result: Bytes,
    pub expected: Expected,
    pub stored: Option<Entry>,
}

impl State {
    /// Completes an entry. Resumes the invocation if it waits for that entry and forwards the completion
    /// to its running attempt.
    ///
    /// Only an existing, not yet completed entry of the expected type is completed: anything else (a
    /// forged awakeable id pointing at a Sleep or Invoke entry, an index past the journal's end, an entry
    /// already completed) is refused with a WARN and nothing of it is stored.
    pub(super) fn complete(&mut self, env: &Env<'_>, completion: Completion, out: &mut Effects) {
        let Completion {
            id,
            index,
            result,
            expected,
            stored,
        } = completion;
        let Some(invocation) = self.invocations.get_mut(&id) else {
            log::debug!(invocation = id.to_hex(), index; "completion for an invocation that ended");
            return;
        };
        let length = invocation.journal_length();
        let Some(meta) = invocation.entries.get_mut(index as usize) else {
            return expected.refuse(id, index, &format!("its journal has {length} entries"));
        };
        if !expected.admits(meta.ty) {
            return expected.refuse(
                id,
                index,
                &format!("entry {index} has type {:#06x}", meta.ty),
            );
        }
        if meta.completed {
            return expected.refuse(id, index, &format!("entry {index} is already completed"));
        }
        let Some(mut entry) = stored.filter(|e| e.ty == meta.ty) else {
            return expected.refuse(id, index, "the entry was not read");
        };
        meta.completed = true;
        let mut payload = entry.payload.to_vec();
        payload.extend_from_slice(&result);
        entry.payload = payload.into();
        entry.completed = true;
        let partition = invocation.partition;
        out.write(Effect::PutEntry(partition, id, index, entry));
        let resume = invocation
            .suspended
            .as_ref()
            .is_some_and(|w| w.contains(&index));
        if resume {
            invocation.suspended = None;
            out.write(Effect::PutStatus(
                partition,
                id,
                Box::new(invocation.status_row(env.clock.now_ms())),
            ));
        }
        out.act(Action::Forward {
            id,
            completion: completion_for(index, &result),
        });
        if resume {
            out.act(Action::Drive(id));
        }
    }

    /// The SDK suspended waiting for any of `indexes`. If one of them is completed already (the attempt
    /// saw it, or the runtime completed it meanwhile) a new attempt starts at once.
    pub(super) fn suspend(
        &mut self,
        env: &Env<'_>,
        id: InvocationId,
        indexes: Vec<EntryIndex>,
        known_completed: &[EntryIndex],
        out: &mut Effects,
    ) -> SuspendOutcome {
        let Some(invocation) = self.invocations.get_mut(&id) else {
            return SuspendOutcome::Suspended;
        };
        // An entry the runtime never completes (a custom entry awaiting its ack) needs only to be
        // durable, which this suspension's batch implies (writes are ordered): the ack may still be
        // on its way to an attempt that closed its side, and waiting for it would wait forever.
        let completed = |i: &EntryIndex| {
            known_completed.contains(i)
                || invocation.entries.get(*i as usize).is_some_and(|e| {
                    e.completed
                        || crate::protocol::kind(e.ty) != Some(crate::protocol::Kind::Completable)
                })
        };
        if indexes.iter().any(completed) {
            return SuspendOutcome::Resume;
        }
        invocation.suspended = Some(indexes);
        out.write(Effect::PutStatus(
            invocation.partition,
            id,
            Box::new(invocation.status_row(env.clock.now_ms())),
        ));
        SuspendOutcome::Suspended
    }

    /// Timer `key` is due: completes its Sleep entry, or ships its delayed call. A timer that is not
    /// (or no longer) among the loaded ones, or whose row is gone, does nothing.
    pub(super) fn fire_timer(
        &mut self,
        env: &Env<'_>,
        key: TimerKey,
        row: Option<Timer>,
        entry: Option<Entry>,
        out: &mut Effects,
    ) {
        if !self.timers.fire(&key) {
            return;
        }
        let Some(row) = row else {
            log::debug!(invocation = key.id.to_hex(), index = key.index; "timer row is gone");
            return;
        };
        out.write(Effect::DeleteTimer(key));
        match row.invoke {
            None => {
                let result = result_bytes(&completion_message::Result::Empty(()));
                let expected = Expected::internal(types::SLEEP);
                let completion = Completion {
                    id: key.id,
                    index: key.index,
                    result,
                    expected,
                    stored: entry,
                };
                self.complete(env, completion, out);
            }
            Some(request) => {
                let message = outbox_message::Message::Invoke(request);
                self.queue_outbox(env, key.partition, vec![message], out);
            }
        }
    }
}

//! Ending invocations: with their outcome, or cancelled wherever they are.

use bytes::Bytes;

use super::codec::{aborted, response_message};
use super::{Action, CallerId, Effect, Effects, Env, State};
use crate::partition::invocation::{Failure, Outcome};
use crate::partition::rows::Idempotent;
use crate::partition::InvocationId;

impl State {
    /// Ends `id` with `outcome`: its journal and status go, its calling invocation is answered through
    /// the outbox, its key passes to the next invocation in the inbox (all in one batch); its ingress
    /// callers get the outcome once that is durable.
    pub(super) fn finish(
        &mut self,
        env: &Env<'_>,
        id: InvocationId,
        outcome: Outcome,
        out: &mut Effects,
    ) {
        let Some(invocation) = self.invocations.remove(&id) else {
            return;
        };
        let p = invocation.partition;
        // Point deletes, not a range delete: RocksDB fragments every range tombstone in the memtable
        // each time an iterator opens, which made every scan slower as invocations ended.
        out.write(Effect::DeleteJournal(p, id, invocation.journal_length()));
        for index in &invocation.early {
            out.write(Effect::DeleteCompletion(p, id, *index));
        }
        out.write(Effect::DeleteStatus(p, id));
        if !invocation.idempotency_key.is_empty() {
            self.keep_outcome(env, p, id, &outcome, out);
        }
        if invocation.keyed {
            self.locks.remove(&invocation.service);
            self.start_next_in_inbox(env, p, &invocation.service, out);
        }
        let messages = invocation
            .response_sink
            .iter()
            .map(|sink| response_message(sink, &outcome))
            .collect();
        self.queue_outbox(env, p, messages, out);
        out.act(Action::Ended { id, outcome });
    }

    /// Stores an idempotent invocation's outcome for the retention, and remembers it a moment.
    pub(super) fn keep_outcome(
        &mut self,
        env: &Env<'_>,
        p: crate::partition::PartitionId,
        id: InvocationId,
        outcome: &Outcome,
        out: &mut Effects,
    ) {
        let now = env.clock.now_ms();
        let expires_ms = now + env.limits.idempotency_retention_ms;
        let row = match outcome {
            Ok(value) => Idempotent {
                failed: false,
                value: value.clone(),
                expires_ms,
                ..Default::default()
            },
            Err(f) => Idempotent {
                failed: true,
                code: f.code,
                message: f.message.clone(),
                expires_ms,
                ..Default::default()
            },
        };
        out.write(Effect::PutIdempotent(p, id, row));
        let forget_at = now + env.limits.idempotency_recent_ms;
        self.recently_finished
            .insert(id, (forget_at, outcome.clone()));
        self.recently_finished_order.push_back((forget_at, id));
    }

    /// Fails `id` with ABORTED wherever it is (running, suspended, in an inbox, starting from its
    /// inbox row) and answers `caller` whether it was found.
    ///
    /// The answer is an action, so it waits for the batch that ends the invocation, and a NOT_FOUND
    /// for the batches before (an end decided but not yet durable would be lost in a crash, and the
    /// invocation run again). An invocation starting from its inbox row ends only once that row is
    /// read: its cancellers are answered by that transition.
    pub(super) fn cancel(
        &mut self,
        env: &Env<'_>,
        id: InvocationId,
        caller: Option<CallerId>,
        out: &mut Effects,
    ) {
        let found = if self.invocations.contains_key(&id) {
            self.finish(env, id, Err(aborted()), out);
            true
        } else if let Some(starting) = self.starting.get_mut(&id) {
            starting.cancelled = true;
            starting.cancellers.extend(caller);
            return;
        } else if let Some(queued) = self.inboxes.remove(&id) {
            let p = State::partition_of(env.limits, &id);
            out.write(Effect::DeleteInbox(
                p,
                queued.invocation.service.clone(),
                queued.sequence,
            ));
            self.end_unstarted(env, p, queued.invocation, out);
            true
        } else {
            false
        };
        if let Some(caller) = caller {
            out.act(cancel_answer(caller, id, found));
        }
    }
}

/// The answer to whoever cancelled `id`: empty if it was found (and is now ended), NOT_FOUND if not.
pub(super) fn cancel_answer(caller: CallerId, id: InvocationId, found: bool) -> Action {
    let outcome = if found {
        Ok(Bytes::new())
    } else {
        Err(Failure::new(
            crate::grpc::Code::NotFound,
            format!("invocation {} not found", id.to_hex()),
        ))
    };
    Action::Answer { caller, outcome }
}

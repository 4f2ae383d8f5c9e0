//! Ending invocations: with their outcome, or cancelled wherever they are.

use super::codec::{aborted, response_message};
use super::{Action, Effect, Effects, Env, State};
use crate::partition::invocation::Outcome;
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
        self.recently_finished.insert(id, outcome.clone());
        self.recently_finished_order
            .push_back((now + env.limits.idempotency_recent_ms, id));
    }

    /// Fails `id` with ABORTED wherever it is (running, suspended, in an inbox, starting from its
    /// inbox row). False if it is unknown here.
    pub(super) fn cancel(&mut self, env: &Env<'_>, id: InvocationId, out: &mut Effects) -> bool {
        if self.invocations.contains_key(&id) {
            self.finish(env, id, Err(aborted()), out);
            return true;
        }
        if let Some(starting) = self.starting.get_mut(&id) {
            starting.cancelled = true;
            return true;
        }
        let Some(queued) = self.inboxes.remove(&id) else {
            return false;
        };
        let p = State::partition_of(env.limits, &id);
        out.write(Effect::DeleteInbox(
            p,
            queued.invocation.service.clone(),
            queued.sequence,
        ));
        self.end_unstarted(env, p, queued.invocation, out);
        true
    }
}

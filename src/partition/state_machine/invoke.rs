//! Starting invocations: start at once, wait in the key's inbox, attach to a running one, answer from
//! a kept idempotent result, or refuse past an inbox bound.

use prost::Message;

use super::codec::response_message;
use super::{
    inbox_row, AckId, Action, CallerId, Effect, Effects, EntryMeta, Env, Invocation, Starting,
    State,
};
use crate::partition::invocation::{Failure, NewInvocation, Outcome};
use crate::partition::rows::{Entry, Idempotent, InboxEntry};
use crate::partition::{PartitionId, ServiceId};
use crate::protocol::messages::PollInputStreamEntryMessage;
use crate::protocol::types;

impl State {
    /// Starts or enqueues `new`; `kept` is its idempotency row when it has an idempotency key.
    pub(super) fn invoke(
        &mut self,
        env: &Env<'_>,
        new: NewInvocation,
        caller: Option<CallerId>,
        ack: Option<AckId>,
        kept: Option<Idempotent>,
        out: &mut Effects,
    ) {
        let mut outcome = None;
        if new.idempotency_key.is_some() {
            // Taken before this call's lookup stops counting and before what no lookup needs any
            // more is forgotten.
            outcome = self.kept_outcome(env, &new, kept);
            self.lookup_done(&new.id);
        }
        self.forget_finished(env);
        if let Some(outcome) = outcome {
            ack_ok(ack, out);
            if let Some(caller) = caller {
                out.act(Action::Answer { caller, outcome });
            }
            return;
        }
        let id = new.id;
        if self.invocations.contains_key(&id)
            || self.inboxes.contains(&id)
            || self.starting.contains_key(&id)
        {
            // Seen before (a repeated delivery, a repeated idempotent call): attach to it.
            attach(caller, id, out);
            return ack_ok(ack, out);
        }
        if new.keyed && self.locks.contains_key(&new.service) {
            return self.enqueue(env, new, caller, ack, out);
        }
        attach(caller, id, out);
        let partition = State::partition_of(env.limits, &id);
        self.start(env, partition, new, out);
        ack_ok(ack, out);
    }

    /// The outcome kept for an idempotent invocation that ended: in memory for a moment after its end
    /// and as long as a read of its row submitted before the row was written is in flight (that read
    /// misses the row), then in its row until it expires.
    fn kept_outcome(
        &self,
        env: &Env<'_>,
        new: &NewInvocation,
        kept: Option<Idempotent>,
    ) -> Option<Outcome> {
        if let Some((forget_at, outcome)) = self.recently_finished.get(&new.id) {
            // Past its time it still answers a lookup in flight (it may have missed the row).
            if *forget_at > env.clock.now_ms() || self.lookups.contains_key(&new.id) {
                return Some(outcome.clone());
            }
        }
        let row = kept?;
        (row.expires_ms > env.clock.now_ms()).then(|| {
            if row.failed {
                Err(Failure {
                    code: row.code,
                    message: row.message,
                })
            } else {
                Ok(row.value)
            }
        })
    }

    /// Drops remembered outcomes older than `idempotency_recent_ms`.
    fn forget_finished(&mut self, env: &Env<'_>) {
        let now_ms = env.clock.now_ms();
        while let Some((expires, id)) = self.recently_finished_order.front().copied() {
            if expires > now_ms {
                break;
            }
            self.recently_finished_order.pop_front();
            if self.lookups.contains_key(&id) {
                // A read of its row submitted before the row was written may still be on its way.
                let forget_at = now_ms + env.limits.idempotency_recent_ms.max(1);
                if let Some(entry) = self.recently_finished.get_mut(&id) {
                    entry.0 = forget_at;
                }
                self.recently_finished_order.push_back((forget_at, id));
            } else {
                self.recently_finished.remove(&id);
            }
        }
    }

    /// One read of `id`'s idempotency row is answered (its Invoke is being applied).
    pub(super) fn lookup_done(&mut self, id: &crate::partition::InvocationId) {
        if let Some(count) = self.lookups.get_mut(id) {
            *count -= 1;
            if *count == 0 {
                self.lookups.remove(id);
            }
        }
    }

    /// Queues `new` behind its key's running invocation (or refuses it past a bound).
    fn enqueue(
        &mut self,
        env: &Env<'_>,
        new: NewInvocation,
        caller: Option<CallerId>,
        ack: Option<AckId>,
        out: &mut Effects,
    ) {
        if let Err(failure) = self.inboxes.admit(&new.service) {
            return self.refuse(env, new, caller, ack, failure, out);
        }
        attach(caller, new.id, out);
        let partition = State::partition_of(env.limits, &new.id);
        let sequence = self.next_inbox_sequence;
        self.next_inbox_sequence += 1;
        out.write(Effect::PutInbox(
            partition,
            new.service.clone(),
            sequence,
            Box::new(inbox_row(&new, env.clock.now_ms())),
        ));
        self.inboxes.push(sequence, new);
        ack_ok(ack, out);
    }

    /// Refuses an invocation for good: its ingress caller gets `failure`, a calling invocation gets it
    /// as its call's result (through the outbox), a one-way call from an invocation is dropped.
    fn refuse(
        &mut self,
        env: &Env<'_>,
        new: NewInvocation,
        caller: Option<CallerId>,
        ack: Option<AckId>,
        failure: Failure,
        out: &mut Effects,
    ) {
        out.act(Action::Refused {
            id: new.id,
            service: new.service.service.clone(),
            failure: failure.clone(),
        });
        if let Some(caller) = caller {
            out.act(Action::Answer {
                caller,
                outcome: Err(failure.clone()),
            });
        }
        let partition = State::partition_of(env.limits, &new.id);
        let failed = Err(failure.clone());
        let messages = new
            .response_sink
            .iter()
            .map(|sink| response_message(sink, &failed))
            .collect();
        self.queue_outbox(env, partition, messages, out);
        if let Some(ack) = ack {
            out.act(Action::Ack {
                ack,
                result: Err(failure),
            });
        }
    }

    /// Registers a running invocation (taking its key), writes its status row and input entry and lets
    /// it run at once.
    pub(super) fn start(
        &mut self,
        env: &Env<'_>,
        partition: PartitionId,
        new: NewInvocation,
        out: &mut Effects,
    ) {
        if new.keyed {
            self.locks.insert(new.service.clone(), new.id);
        }
        let input = Entry {
            ty: types::POLL_INPUT_STREAM,
            completed: true,
            payload: PollInputStreamEntryMessage {
                value: new.argument.to_vec(),
            }
            .encode_to_vec()
            .into(),
        };
        let endpoint = env
            .resolver
            .endpoint(&new.service.service)
            .unwrap_or_default();
        let invocation = Invocation {
            partition,
            service: new.service,
            method: new.method,
            keyed: new.keyed,
            response_sink: new.response_sink,
            idempotency_key: new.idempotency_key.unwrap_or_default(),
            entries: vec![EntryMeta {
                ty: input.ty,
                completed: true,
            }],
            suspended: None,
            early: Default::default(),
            attempts: 0,
            last_failure: None,
            endpoint,
            fresh: Some(input.clone()),
        };
        out.write(Effect::PutStatus(
            partition,
            new.id,
            Box::new(invocation.status_row(env.clock.now_ms())),
        ));
        out.write(Effect::PutEntry(partition, new.id, 0, input));
        self.invocations.insert(new.id, invocation);
        out.start_now.push(new.id);
    }

    /// Hands `service`'s free key to the first invocation in its inbox: starts it (in `out`) when its
    /// argument is in memory; otherwise holds the key for it and asks for its inbox row.
    pub(super) fn start_next_in_inbox(
        &mut self,
        env: &Env<'_>,
        partition: PartitionId,
        service: &ServiceId,
        out: &mut Effects,
    ) {
        let Some(queued) = self.inboxes.pop(service) else {
            return;
        };
        let id = queued.invocation.id;
        self.inboxes.started(&id);
        if !queued.argument_in_memory {
            self.locks.insert(service.clone(), id);
            self.starting.insert(
                id,
                Starting {
                    service: service.clone(),
                    sequence: queued.sequence,
                    cancelled: false,
                    cancellers: Vec::new(),
                },
            );
            out.act(Action::ReadInboxRow {
                id,
                partition,
                service: service.clone(),
                sequence: queued.sequence,
            });
            return;
        }
        out.write(Effect::DeleteInbox(
            partition,
            service.clone(),
            queued.sequence,
        ));
        self.start(env, partition, queued.invocation, out);
    }

    /// The inbox row of a starting invocation was read: start it (or end it, if cancelled meanwhile).
    pub(super) fn inbox_row_read(
        &mut self,
        env: &Env<'_>,
        id: crate::partition::InvocationId,
        row: Option<InboxEntry>,
        out: &mut Effects,
    ) {
        let Some(starting) = self.starting.remove(&id) else {
            return;
        };
        let partition = State::partition_of(env.limits, &id);
        let service = starting.service;
        out.write(Effect::DeleteInbox(
            partition,
            service.clone(),
            starting.sequence,
        ));
        // Whoever cancelled it meanwhile learns it ended, with the batch that ends it.
        for caller in starting.cancellers {
            out.act(super::finish::cancel_answer(caller, id, true));
        }
        let Some(row) = row else {
            // Storage lost a row it acknowledged: the invocation cannot start; its callers learn so.
            log::error!(invocation = id.to_hex(); "the inbox row of a starting invocation is missing; it fails");
            self.corrupt_rows += 1;
            self.locks.remove(&service);
            let failure = Failure::new(
                crate::grpc::Code::DataLoss,
                "the invocation's inbox row is lost",
            );
            out.act(Action::Ended {
                id,
                outcome: Err(failure),
            });
            return self.start_next_in_inbox(env, partition, &service, out);
        };
        let new = NewInvocation {
            id,
            service: service.clone(),
            method: row.method,
            argument: row.argument,
            keyed: true,
            response_sink: row.response_sink,
            idempotency_key: Some(row.idempotency_key).filter(|k| !k.is_empty()),
        };
        if starting.cancelled {
            self.locks.remove(&service);
            self.end_unstarted(env, partition, new, out);
            return self.start_next_in_inbox(env, partition, &service, out);
        }
        self.start(env, partition, new, out);
    }

    /// Ends an invocation that never ran (cancelled in its inbox): its caller gets ABORTED.
    pub(super) fn end_unstarted(
        &mut self,
        env: &Env<'_>,
        partition: PartitionId,
        new: NewInvocation,
        out: &mut Effects,
    ) {
        let aborted: Outcome = Err(super::codec::aborted());
        // Like a cancelled running one: a repeated call with its idempotency key gets ABORTED.
        if new.idempotency_key.is_some() {
            self.keep_outcome(env, partition, new.id, &aborted, out);
        }
        let messages = new
            .response_sink
            .iter()
            .map(|sink| response_message(sink, &aborted))
            .collect();
        self.queue_outbox(env, partition, messages, out);
        out.act(Action::Ended {
            id: new.id,
            outcome: aborted,
        });
    }
}

fn attach(caller: Option<CallerId>, id: crate::partition::InvocationId, out: &mut Effects) {
    if let Some(caller) = caller {
        out.act(Action::Attach { id, caller });
    }
}

fn ack_ok(ack: Option<AckId>, out: &mut Effects) {
    if let Some(ack) = ack {
        out.act(Action::Ack {
            ack,
            result: Ok(()),
        });
    }
}

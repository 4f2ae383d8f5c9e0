//! The outbox: messages to other partitions are written with the transition that causes them, shipped
//! once durable, applied by their target once (per-(target, producer) sequence numbers de-duplicate
//! replays), and deleted once acknowledged.

use super::codec::{target_id, Expected};
use super::complete::Completion;
use super::{AckId, Action, Effect, Effects, Env, Shipped, State};
use crate::partition::invocation::NewInvocation;
use crate::partition::rows::{outbox_message, Entry, OutboxMessage};
use crate::partition::PartitionId;

impl State {
    /// Writes outbox rows for `messages` and ships them once durable. An undecodable message (a
    /// damaged caller id) is dropped before it takes a sequence: the newest sequence must always be a
    /// row until its acknowledgement stores the next one ([`Self::outbox_acked`]).
    pub(super) fn queue_outbox(
        &mut self,
        env: &Env<'_>,
        partition: PartitionId,
        messages: Vec<outbox_message::Message>,
        out: &mut Effects,
    ) {
        if messages.is_empty() {
            return;
        }
        let mut shipped = Vec::with_capacity(messages.len());
        for message in messages {
            let row = OutboxMessage {
                message: Some(message),
            };
            let Some(target) = target_id(&row) else {
                log::error!(partition; "undecodable outbox message; dropped");
                continue;
            };
            let next = self.outbox_sequence.entry(partition).or_insert(0);
            let sequence = *next;
            *next += 1;
            out.write(Effect::PutOutbox(
                partition,
                sequence,
                Box::new(row.clone()),
            ));
            shipped.push(Shipped {
                producer: partition,
                sequence,
                target: State::partition_of(env.limits, &target),
                row,
            });
        }
        if !shipped.is_empty() {
            out.act(Action::Ship(shipped));
        }
    }

    /// Message (`producer`, `sequence`) is applied by its target: its row goes. Targets drop any
    /// message whose sequence is not above the last one they applied from this producer, so sequences
    /// must never repeat, also after a restart that finds the outbox empty: recovery continues after
    /// the last row and after the stored next sequence (`PutOutboxNext`). That row is written only
    /// with the delete of the newest message's row. An older message's delete needs none: the newest
    /// was allocated (and its row put) in an earlier batch, so while this delete is durable, either
    /// its row is still there or its own delete stored the next sequence (rule 1 of
    /// [`crate::partition`]). Under load that saves one write per acknowledged message.
    pub(super) fn outbox_acked(&mut self, producer: PartitionId, sequence: u64, out: &mut Effects) {
        let next = self.outbox_sequence.get(&producer).copied().unwrap_or(0);
        out.write(Effect::DeleteOutbox(producer, sequence));
        if sequence + 1 >= next {
            out.write(Effect::PutOutboxNext(producer, next.max(sequence + 1)));
        }
    }

    /// Applies a message from another partition's outbox, once; acknowledges it either way.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deliver(
        &mut self,
        env: &Env<'_>,
        producer: PartitionId,
        sequence: u64,
        message: OutboxMessage,
        ack: AckId,
        entry: Option<Entry>,
        out: &mut Effects,
    ) {
        let Some(target) = target_id(&message) else {
            log::error!("undecodable outbox message from partition {producer}; dropped");
            return out.act(Action::Ack {
                ack,
                result: Ok(()),
            });
        };
        let target_partition = State::partition_of(env.limits, &target);
        let last = self.dedup.get(&(target_partition, producer)).copied();
        if last.is_some_and(|last| sequence <= last) {
            return out.act(Action::Ack {
                ack,
                result: Ok(()),
            });
        }
        self.dedup.insert((target_partition, producer), sequence);
        out.write(Effect::PutDedup(target_partition, producer, sequence));
        match message.message {
            Some(outbox_message::Message::Invoke(request)) => {
                match NewInvocation::from_request(request) {
                    Some(invocation) => self.invoke(env, invocation, None, Some(ack), None, out),
                    None => out.act(Action::Ack {
                        ack,
                        result: Ok(()),
                    }),
                }
            }
            Some(outbox_message::Message::Complete(c)) => {
                let expected = Expected::from_request(&c);
                let completion = Completion {
                    id: target,
                    index: c.entry_index,
                    result: c.result,
                    expected,
                    stored: entry,
                };
                self.complete(env, completion, out);
                out.act(Action::Ack {
                    ack,
                    result: Ok(()),
                });
            }
            None => unreachable!("target_id checked the message"),
        }
    }
}

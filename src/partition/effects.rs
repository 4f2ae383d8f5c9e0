//! The effects interpreter: turns a transition's [`Effect`]s into one storage batch (keys and
//! encodings). Pure: the batch is data; the shell submits it.

use prost::Message;

use super::keys;
use super::state_machine::Effect;
use crate::storage::{Table, WriteBatch};

/// Adds the rows of `effects` to `batch`, in order.
pub fn to_batch(effects: &[Effect], batch: &mut WriteBatch) {
    for effect in effects {
        add(effect, batch);
    }
}

fn add(effect: &Effect, batch: &mut WriteBatch) {
    match effect {
        Effect::PutStatus(p, id, status) => {
            batch.put(Table::Status, keys::status(*p, id), status.encode_to_vec())
        }
        Effect::DeleteStatus(p, id) => batch.delete(Table::Status, keys::status(*p, id)),
        Effect::PutEntry(p, id, index, entry) => batch.put(
            Table::Journal,
            keys::journal(*p, id, *index),
            entry.encode(),
        ),
        Effect::DeleteJournal(p, id, length) => {
            for index in 0..*length {
                batch.delete(Table::Journal, keys::journal(*p, id, index));
            }
        }
        Effect::PutState(p, service, key, value) => {
            batch.put(Table::State, keys::state(*p, service, key), value.to_vec())
        }
        Effect::DeleteState(p, service, key) => {
            batch.delete(Table::State, keys::state(*p, service, key))
        }
        Effect::PutInbox(p, service, sequence, row) => batch.put(
            Table::Inbox,
            keys::inbox(*p, service, *sequence),
            row.encode_to_vec(),
        ),
        Effect::DeleteInbox(p, service, sequence) => {
            batch.delete(Table::Inbox, keys::inbox(*p, service, *sequence))
        }
        Effect::PutTimer(key, row) => batch.put(
            Table::Timers,
            keys::timer(key.partition, key.wake_ms, &key.id, key.index),
            row.encode_to_vec(),
        ),
        Effect::DeleteTimer(key) => batch.delete(
            Table::Timers,
            keys::timer(key.partition, key.wake_ms, &key.id, key.index),
        ),
        Effect::PutOutbox(p, sequence, row) => batch.put(
            Table::Outbox,
            keys::outbox(*p, *sequence),
            row.encode_to_vec(),
        ),
        Effect::DeleteOutbox(p, sequence) => {
            batch.delete(Table::Outbox, keys::outbox(*p, *sequence))
        }
        Effect::PutOutboxNext(p, next) => batch.put(
            Table::Fsm,
            keys::outbox_next(*p),
            next.to_be_bytes().to_vec(),
        ),
        Effect::PutDedup(target, producer, sequence) => batch.put(
            Table::Dedup,
            keys::dedup(*target, *producer),
            sequence.to_be_bytes().to_vec(),
        ),
        Effect::PutIdempotent(p, id, row) => batch.put(
            Table::Idempotency,
            keys::idempotency(*p, id),
            row.encode_to_vec(),
        ),
        Effect::DeleteCompletion(p, id, index) => {
            batch.delete(Table::Completions, keys::completion(*p, id, *index))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::InvocationId;
    use crate::storage::Op;

    #[test]
    fn deleting_a_journal_deletes_each_of_its_entries() {
        let id = InvocationId::from_parts(1, [1; 16]);
        for length in [0, 1, 3] {
            let mut batch = WriteBatch::new();
            to_batch(&[Effect::DeleteJournal(2, id, length)], &mut batch);
            let expected: Vec<Op> = (0..length)
                .map(|index| Op::Delete {
                    table: Table::Journal,
                    key: keys::journal(2, &id, index),
                })
                .collect();
            assert_eq!(batch.ops(), expected.as_slice(), "{length}");
        }
    }

    #[test]
    fn the_next_outbox_sequence_is_a_big_endian_fsm_row() {
        let mut batch = WriteBatch::new();
        to_batch(&[Effect::PutOutboxNext(3, 258)], &mut batch);
        assert_eq!(
            batch.ops(),
            &[Op::Put {
                table: Table::Fsm,
                key: keys::outbox_next(3),
                value: 258u64.to_be_bytes().to_vec(),
            }]
        );
    }
}

//! Rebuilding a core's state from its rows after a start or a crash. The shell reads each table of
//! each owned partition and hands the rows over; everything decided from them is here. A row that
//! cannot be read is logged, counted (`State::corrupt_rows`) and left in place.

use std::collections::HashSet;

use prost::Message;

use super::{Action, Effect, Effects, EntryMeta, Env, Invocation, Shipped, State};
use crate::partition::invocation::NewInvocation;
use crate::partition::rows::{Entry, InboxEntry, OutboxMessage, Status};
use crate::partition::{keys, EntryIndex, InvocationId, PartitionId, ServiceId};

/// A stored row: key and value.
pub type Row = (Vec<u8>, Vec<u8>);

impl State {
    /// Restores an invocation from its status row, its journal rows and its early completion rows;
    /// one that can run is driven (an invoked one, or a suspended one whose awaited entry completed).
    pub fn recover_invocation(
        &mut self,
        p: PartitionId,
        status: &Row,
        journal: &[Row],
        completions: &[Row],
        out: &mut Effects,
    ) {
        let Some(id) = status.0.get(4..).and_then(InvocationId::from_slice) else {
            return self.corrupt("status row key", p);
        };
        let Ok(status) = Status::decode(status.1.as_slice()) else {
            return self.corrupt("status row", p);
        };
        // A journal with a gap or an unreadable entry: the invocation is kept (holding its key, shown to
        // operators, cancellable) with the entries before the damage, and never resumed.
        let (entries, readable) = self.journal_metas(p, &id, journal);
        if !readable {
            log::error!(invocation = id.to_hex(); "its journal cannot be read; it is kept, not resumed");
        }
        let early: HashSet<EntryIndex> = completions
            .iter()
            .filter_map(|(k, _)| index_of(k))
            .collect();
        let suspended = if readable {
            status.suspended.then_some(status.waiting)
        } else {
            Some(Vec::new())
        };
        let completed = |i: &EntryIndex| entries.get(*i as usize).is_some_and(|e| e.completed);
        let resume = suspended.as_ref().is_none_or(|w| w.iter().any(completed));
        let service = ServiceId {
            service: status.service,
            key: status.key,
        };
        if status.keyed {
            self.locks.insert(service.clone(), id);
        }
        self.invocations.insert(
            id,
            Invocation {
                partition: p,
                service,
                method: status.method,
                keyed: status.keyed,
                response_sink: status.response_sink,
                idempotency_key: status.idempotency_key,
                entries,
                suspended: if resume { None } else { suspended },
                early,
                attempts: status.attempts,
                last_failure: (!status.last_failure.is_empty())
                    .then(|| (status.last_failure.clone(), status.next_retry_ms)),
                endpoint: status.endpoint,
                fresh: None,
            },
        );
        if resume {
            out.act(Action::Drive(id));
        }
    }

    /// The in-memory journal of `id`: its rows must be entries 0, 1, 2, … with no gap. Returns the
    /// entries before the first damaged one, and whether there was none.
    fn journal_metas(
        &mut self,
        p: PartitionId,
        id: &InvocationId,
        rows: &[Row],
    ) -> (Vec<EntryMeta>, bool) {
        let mut entries = Vec::with_capacity(rows.len());
        for (position, (key, value)) in rows.iter().enumerate() {
            let entry = Entry::decode(value);
            match (index_of(key), entry) {
                (Some(index), Some(entry)) if index as usize == position => {
                    entries.push(EntryMeta {
                        ty: entry.ty,
                        completed: entry.completed,
                    })
                }
                _ => {
                    self.corrupt("journal entry", p);
                    log::error!(invocation = id.to_hex(), position; "journal has a gap or an unreadable entry");
                    return (entries, false);
                }
            }
        }
        (entries, true)
    }

    /// Restores queued invocations from a chunk of inbox rows (in key order).
    pub fn recover_inbox(&mut self, p: PartitionId, rows: &[Row]) {
        for (key, value) in rows {
            let (Some((service, sequence)), Ok(row)) =
                (keys::parse_inbox(key), InboxEntry::decode(value.as_slice()))
            else {
                self.corrupt("inbox row", p);
                continue;
            };
            let Some(id) = InvocationId::from_slice(&row.invocation_id) else {
                self.corrupt("inbox row's invocation id", p);
                continue;
            };
            self.next_inbox_sequence = self.next_inbox_sequence.max(sequence + 1);
            let invocation = NewInvocation {
                id,
                service,
                method: row.method,
                argument: row.argument,
                keyed: true,
                response_sink: row.response_sink,
                idempotency_key: Some(row.idempotency_key).filter(|k| !k.is_empty()),
            };
            self.inboxes.push(sequence, invocation);
        }
    }

    /// Restores the last applied sequence of each producer for target partition `p`.
    pub fn recover_dedup(&mut self, p: PartitionId, rows: &[Row]) {
        for (key, value) in rows {
            let producer = key
                .get(4..8)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes);
            let last = value.as_slice().try_into().ok().map(u64::from_be_bytes);
            match (producer, last) {
                (Some(producer), Some(last)) => {
                    self.dedup.insert((p, producer), last);
                }
                _ => self.corrupt("dedup row", p),
            }
        }
    }

    /// Restores partition `p`'s outbox: every message is shipped again (targets de-duplicate).
    /// Sequences continue after the last row and after the stored next sequence (`next_row`, the
    /// Fsm table's `outbox_next`), so none repeats while targets hold dedup rows for old ones. Data
    /// written before that row existed falls back on the clock in microseconds. With rows, a next
    /// sequence above the stored one is stored at once: acknowledging an older message stores none
    /// (see `outbox_acked`), so otherwise, once the rows are gone, the next restart would lean on a
    /// clock that may have stepped back meanwhile. Without rows, the stored one (if any) is already
    /// above every sequence shipped.
    pub fn recover_outbox(
        &mut self,
        env: &Env<'_>,
        p: PartitionId,
        rows: &[Row],
        next_row: Option<&[u8]>,
        out: &mut Effects,
    ) {
        let mut next = 0;
        let mut shipped = Vec::new();
        for (key, value) in rows {
            let Some(sequence) = key
                .get(4..12)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                self.corrupt("outbox row key", p);
                continue;
            };
            next = sequence + 1;
            let row = OutboxMessage::decode(value.as_slice()).ok();
            match row.as_ref().and_then(super::codec::target_id) {
                Some(target) => shipped.push(Shipped {
                    producer: p,
                    sequence,
                    target: State::partition_of(env.limits, &target),
                    row: row.expect("decoded"),
                }),
                None => self.corrupt("outbox row", p),
            }
        }
        let stored = next_row.map(|v| <[u8; 8]>::try_from(v).map(u64::from_be_bytes));
        let floor = match stored {
            Some(Ok(stored)) => stored,
            Some(Err(_)) => {
                self.corrupt("outbox_next row", p);
                env.clock.now_ms().saturating_mul(1000)
            }
            None => env.clock.now_ms().saturating_mul(1000),
        };
        let found_rows = next > 0;
        let next = next.max(floor);
        if found_rows && !matches!(stored, Some(Ok(stored)) if stored >= next) {
            out.write(Effect::PutOutboxNext(p, next));
        }
        self.outbox_sequence.insert(p, next);
        if !shipped.is_empty() {
            out.act(Action::Ship(shipped));
        }
    }

    /// Last step of recovery: a key that is free while its inbox holds invocations (cannot happen when
    /// ending and popping share a batch, but is repaired) goes to the first of them.
    pub fn recover_orphaned_inboxes(&mut self, env: &Env<'_>, out: &mut Effects) {
        let orphaned: Vec<ServiceId> = self
            .inboxes
            .services()
            .filter(|s| !self.locks.contains_key(*s))
            .cloned()
            .collect();
        for service in orphaned {
            let p = (service.partition_key() % u64::from(env.limits.partitions)) as PartitionId;
            self.start_next_in_inbox(env, p, &service, out);
        }
    }

    fn corrupt(&mut self, what: &str, p: PartitionId) {
        self.corrupt_rows += 1;
        log::error!(partition = p; "unreadable {what}; skipped");
    }
}

/// The entry index at the end of a journal or completion key.
fn index_of(key: &[u8]) -> Option<EntryIndex> {
    let tail = key.len().checked_sub(4).map(|start| &key[start..])?;
    Some(u32::from_be_bytes(tail.try_into().ok()?))
}

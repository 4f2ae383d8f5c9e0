//! Transient rows: a fresh invocation's rows, held back from storage while nothing depends on them.
//!
//! A fresh invocation's start writes its status row and input entry; a short one (an echo, a
//! lookup) ends a millisecond later and deletes both again. Written, those four operations cost the
//! storage thread memtable inserts, WAL bytes and, later, flush and compaction work for rows that
//! lived a few milliseconds. The shell therefore passes every transition's writes through [`Holds`]
//! first, which keeps such rows in memory, per invocation, while they are all that invocation has
//! written and nothing visible waits for them:
//!
//! - **A hold opens** with a fresh start whose transition writes only that invocation's status row
//!   and input entry and has nothing visible to run (it only attaches callers): an ingress call
//!   without an acknowledgement. A one-way send (its sender is acknowledged) and a call delivered
//!   from an outbox (its producer is acknowledged) are visible, so their starts are written at once.
//!   A hold also opens with the start of a keyed invocation that waited in its key's inbox (started
//!   by its predecessor's end, or once its inbox row was read): it holds the inbox row's delete with
//!   the status row and input. That invocation was accepted (its callers attached, its sender
//!   acknowledged) once its inbox row was durable, and the row stays until the held delete is
//!   written: a crash that loses the hold runs it again from its inbox.
//!   Its callers are attached at once (after the actions of the transitions submitted before it):
//!   attaching is not visible, and they are answered only by the invocation's end.
//! - **It grows** with later transitions of the invocation that have nothing visible to run and write
//!   only journal entries of it that wait for nothing (a GetState the SDK answered from the eager
//!   state, a SetState; not an entry that waits for a completion, such as an Awakeable) and, for a
//!   keyed invocation, its own instance's state rows.
//! - **The invocation's end cancels it**: the held puts of its status and journal and the end's
//!   deletes of them are never written; its held state rows go first in the end's batch, with what
//!   else the end writes (a kept idempotent result, a response in the outbox, the key's next
//!   invocation), and its callers are answered once that batch, empty or not, is durable together
//!   with everything decided before it.
//! - **Anything else flushes it first**: a transition that writes any other row of the invocation (a
//!   status update, an entry that needs a completion, a timer, ...) or its instance's state gets the
//!   held rows prepended to its batch. A read of its journal, or of its instance's state, follows a
//!   flush of it (a read sees every write decided before it; no other table ever has held rows). So
//!   do a one-way call that repeats its idempotency key (its sender is acknowledged once its start
//!   is durable) and a caller's deadline (the caller is told it carries on, once that is true of a
//!   crash too). A hold older than `worker.storage_rocksdb.transient_hold`, or larger than
//!   `transient_hold_bytes`, is written by itself; a graceful shutdown writes them all.
//!
//! Why the rules of [`crate::partition`] ("Deciding before durability") still hold: the durable rows
//! are the rows of a prefix of the decisions, less the rows of open holds. Those are rows of one
//! invocation each (its status and journal, its key's state, which nothing else writes while it
//! holds the key, its inbox row's delete), and every later write of them is submitted after them, so
//! no durable row of the invocation exists without them (rule 1 for everything that reads them back:
//! recovery, a replay, the key's next invocation, whose own rows are decided after the end that
//! writes them). Nothing visible was produced from held rows: a held transition has nothing visible
//! to run, and an end that cancels a hold runs its actions only once its batch (by rule 1, every
//! batch decided before it) is durable (rule 2). A crash loses the open holds, like the batches not
//! yet written: a fresh invocation was acknowledged to nobody and its callers see their connections
//! fail; one started from its inbox runs again from its inbox row, which the lost hold would have
//! deleted (rule 3). What changes is only how long an unacknowledged start can be lost: a process
//! crash (`kill -9`) can now lose one up to `transient_hold` after it was decided, where a written
//! start survived the process once applied.
//!
//! Pure data in, data out: the seeded simulation (`tests/simulation.rs`) runs the same holds between
//! its state machine and its store.

use std::collections::{HashMap, VecDeque};

use super::state_machine::{Command, Effect};
use super::{InvocationId, ServiceId};
use crate::protocol::{kind, types, Kind};

/// About how many bytes of memory a held row costs besides its payload.
const ROW_OVERHEAD: usize = 64;

/// The open holds of one core.
#[derive(Debug, Default)]
pub struct Holds {
    held: HashMap<InvocationId, Held>,
    /// The held invocation of each keyed instance with one (a keyed instance runs one invocation at
    /// a time), so a state row finds its holder without a scan of every hold.
    holders: HashMap<ServiceId, InvocationId>,
    /// Open holds by age; an id whose hold closed meanwhile is skipped when it comes up.
    ages: VecDeque<(u64, InvocationId)>,
    hold_ms: u64,
    max_bytes: usize,
}

#[derive(Debug)]
struct Held {
    since_ms: u64,
    /// The keyed instance whose state rows it may hold; `None`: unkeyed.
    instance: Option<ServiceId>,
    writes: Vec<Effect>,
    /// Journal entries held: entries `0..entries`, all of the invocation's journal.
    entries: u32,
    bytes: usize,
}

/// What to do with a transition's writes.
#[derive(Debug, PartialEq)]
pub enum Routed {
    /// They are held: nothing to submit.
    Held,
    /// Submit these writes now; `elided` rows were cancelled by an end and never reach storage.
    Submit { writes: Vec<Effect>, elided: usize },
}

/// The invocation whose status, journal, completion, idempotency or timer row `effect` writes.
pub fn invocation_of(effect: &Effect) -> Option<InvocationId> {
    match effect {
        Effect::PutStatus(_, id, _)
        | Effect::DeleteStatus(_, id)
        | Effect::PutEntry(_, id, _, _)
        | Effect::DeleteJournal(_, id, _)
        | Effect::PutIdempotent(_, id, _)
        | Effect::DeleteCompletion(_, id, _) => Some(*id),
        Effect::PutTimer(key, _) | Effect::DeleteTimer(key) => Some(key.id),
        _ => None,
    }
}

fn row_bytes(effect: &Effect) -> usize {
    ROW_OVERHEAD
        + match effect {
            Effect::PutEntry(_, _, _, entry) => entry.payload.len(),
            Effect::PutStatus(_, _, status) => {
                status.service.len() + status.key.len() + status.method.len()
            }
            _ => 0,
        }
}

impl Holds {
    /// Holds for at most `hold_ms` and `max_bytes` per invocation; `hold_ms == 0`: never.
    pub fn new(hold_ms: u64, max_bytes: usize) -> Holds {
        Holds {
            hold_ms,
            max_bytes,
            ..Holds::default()
        }
    }

    /// Open holds.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// True while `id`'s rows are held.
    pub fn holds(&self, id: &InvocationId) -> bool {
        self.held.contains_key(id)
    }

    /// Every held row, in no particular order across invocations.
    pub fn rows(&self) -> impl Iterator<Item = &Effect> {
        self.held.values().flat_map(|h| h.writes.iter())
    }

    /// Routes one transition's `writes`. `quiet`: nothing visible waits for its batch (no reply to
    /// send, no action but attaching callers). `start_now`: the fresh invocations it starts.
    pub fn route(
        &mut self,
        mut writes: Vec<Effect>,
        start_now: &[crate::partition::InvocationId],
        quiet: bool,
        now_ms: u64,
    ) -> Routed {
        if self.hold_ms == 0 {
            return Routed::Submit { writes, elided: 0 };
        }
        if quiet && self.try_hold(&mut writes, start_now, now_ms) {
            return Routed::Held;
        }
        let mut routed = self.flush_touched(writes);
        if let Routed::Submit { writes, .. } = &mut routed {
            self.hold_inbox_start(writes, start_now, now_ms);
        }
        routed
    }

    /// The transition's writes with the rows of the held invocations they touch: prepended, or
    /// cancelled by their end.
    fn flush_touched(&mut self, mut writes: Vec<Effect>) -> Routed {
        if self.held.is_empty() {
            return Routed::Submit { writes, elided: 0 };
        }
        // The held invocations this transition writes rows of, in order of first appearance.
        let mut touched: Vec<InvocationId> = Vec::new();
        for write in &writes {
            let id = match write {
                // A state row of an instance a held invocation wrote (whatever writes it).
                Effect::PutState(_, service, ..) | Effect::DeleteState(_, service, _) => {
                    self.holder_of(service)
                }
                other => invocation_of(other).filter(|id| self.held.contains_key(id)),
            };
            if let Some(id) = id {
                if !touched.contains(&id) {
                    touched.push(id);
                }
            }
        }
        if touched.is_empty() {
            return Routed::Submit { writes, elided: 0 };
        }
        let mut flushed = Vec::new();
        let mut elided = 0;
        for id in touched {
            let held = self.close(&id).expect("touched ids are held");
            match cancel(held, id, &mut writes) {
                Ok(cancelled) => elided += cancelled,
                Err(held) => flushed.extend(held.writes),
            }
        }
        flushed.append(&mut writes);
        Routed::Submit {
            writes: flushed,
            elided,
        }
    }

    /// Holds the start of a queued invocation that ends `writes` (its inbox row's delete, its status
    /// row and input: the key's next invocation, started by its predecessor's end or once its inbox
    /// row was read). It was accepted when its inbox row became durable; that row stays until the
    /// held delete is written, so a crash that loses the hold runs it again from its inbox.
    fn hold_inbox_start(
        &mut self,
        writes: &mut Vec<Effect>,
        start_now: &[InvocationId],
        now_ms: u64,
    ) {
        let [id] = start_now else { return };
        let n = writes.len();
        if n < 3 || self.held.contains_key(id) {
            return;
        }
        let (
            Effect::DeleteInbox(_, queue, _),
            Effect::PutStatus(_, s, status),
            Effect::PutEntry(_, e, 0, _),
        ) = (&writes[n - 3], &writes[n - 2], &writes[n - 1])
        else {
            return;
        };
        let own_queue = status.keyed && queue.service == status.service && queue.key == status.key;
        let bytes: usize = writes[n - 3..].iter().map(row_bytes).sum();
        if s != id
            || e != id
            || !own_queue
            || bytes > self.max_bytes
            || self.holders.contains_key(queue)
        {
            return;
        }
        let instance = Some(queue.clone());
        let rows = writes.split_off(n - 3);
        self.open(*id, instance, rows, bytes, now_ms);
    }

    /// Opens `id`'s hold with `rows`, which end with its input (entry 0).
    fn open(
        &mut self,
        id: InvocationId,
        instance: Option<ServiceId>,
        rows: Vec<Effect>,
        bytes: usize,
        now_ms: u64,
    ) {
        let held = Held {
            since_ms: now_ms,
            instance,
            writes: rows,
            entries: 1,
            bytes,
        };
        if let Some(instance) = &held.instance {
            let previous = self.holders.insert(instance.clone(), id);
            debug_assert!(previous.is_none(), "one hold per keyed instance");
        }
        self.held.insert(id, held);
        self.ages.push_back((now_ms, id));
    }

    /// Ends `id`'s hold, if open: its rows go back to the caller.
    fn close(&mut self, id: &InvocationId) -> Option<Held> {
        let held = self.held.remove(id)?;
        if let Some(instance) = &held.instance {
            if self.holders.get(instance) == Some(id) {
                self.holders.remove(instance);
            }
        }
        Some(held)
    }

    /// The held invocation of keyed instance `service`, if one is held.
    fn holder_of(&self, service: &ServiceId) -> Option<InvocationId> {
        self.holders.get(service).copied()
    }

    /// Holds `writes` (a fresh start, or completed entries of a held invocation) if they qualify.
    fn try_hold(
        &mut self,
        writes: &mut Vec<Effect>,
        start_now: &[InvocationId],
        now_ms: u64,
    ) -> bool {
        let bytes: usize = writes.iter().map(row_bytes).sum();
        match (start_now, writes.as_slice()) {
            ([id], [Effect::PutStatus(_, s, status), Effect::PutEntry(_, e, 0, _)])
                if s == id && e == id && !self.held.contains_key(id) && bytes <= self.max_bytes =>
            {
                let instance = status.keyed.then(|| ServiceId {
                    service: status.service.clone(),
                    key: status.key.clone(),
                });
                if instance
                    .as_ref()
                    .is_some_and(|i| self.holders.contains_key(i))
                {
                    // One invocation per key runs at a time, so its instance has no other hold
                    // open; were one open, holding this one too would hide the first from the
                    // index. Written at once instead.
                    return false;
                }
                self.open(*id, instance, std::mem::take(writes), bytes, now_ms);
                true
            }
            ([], [Effect::PutEntry(_, id, ..), ..]) => {
                let Some(held) = self.held.get_mut(id) else {
                    return false;
                };
                let mut next = held.entries;
                let own = |service: &ServiceId| held.instance.as_ref() == Some(service);
                let joins = writes.iter().all(|w| match w {
                    Effect::PutEntry(_, e, index, entry)
                        if e == id && *index == next && waits_for_nothing(entry) =>
                    {
                        next += 1;
                        true
                    }
                    Effect::PutState(_, service, ..) | Effect::DeleteState(_, service, _) => {
                        own(service)
                    }
                    _ => false,
                });
                if !joins || held.bytes + bytes > self.max_bytes {
                    return false;
                }
                held.entries = next;
                held.bytes += bytes;
                held.writes.append(writes);
                true
            }
            _ => false,
        }
    }

    /// Rows to write before `command` is applied: those of a held invocation that a sender is about
    /// to be acknowledged for without any write of its own (a one-way call repeating the idempotency
    /// key, and so the id, of a held invocation: its acknowledgement must wait for that start).
    pub fn before(&mut self, command: &Command) -> Vec<Effect> {
        match command {
            Command::Invoke {
                invocation,
                ack: Some(_),
                ..
            } => self.take(&invocation.id),
            _ => Vec::new(),
        }
    }

    /// `id`'s held rows, if any (a read of its rows is submitted next).
    pub fn take(&mut self, id: &InvocationId) -> Vec<Effect> {
        self.close(id).map(|h| h.writes).unwrap_or_default()
    }

    /// The rows held by the invocation holding keyed instance `service`, if any (a read of its
    /// state is submitted next).
    pub fn take_instance(&mut self, service: &ServiceId) -> Vec<Effect> {
        match self.holder_of(service) {
            Some(id) => self.take(&id),
            None => Vec::new(),
        }
    }

    /// Every open hold's writes (they are submitted before whatever comes next).
    pub fn take_all(&mut self) -> Vec<Effect> {
        self.ages.clear();
        self.holders.clear();
        let mut holds: Vec<(InvocationId, Held)> = self.held.drain().collect();
        // Oldest first, for a deterministic order.
        holds.sort_by_key(|(id, held)| (held.since_ms, *id));
        holds.into_iter().flat_map(|(_, h)| h.writes).collect()
    }

    /// The writes of the holds open for `hold_ms` or longer by `now_ms`, or stamped after it.
    pub fn take_expired(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        while let Some(&(since, id)) = self.ages.front() {
            // One stamped after `now_ms` went in before the (wall) clock stepped back: it expires
            // now, not once the clock has caught up.
            if since <= now_ms && since.saturating_add(self.hold_ms) > now_ms {
                break;
            }
            self.ages.pop_front();
            if self.held.get(&id).is_some_and(|h| h.since_ms == since) {
                out.extend(self.close(&id).expect("checked").writes);
            }
        }
        if self.held.is_empty() {
            self.ages.clear();
        }
        out
    }
}

/// An entry the invocation may append while held: complete as sent (a completable entry with its
/// result, or one that is never completed), not the input.
fn waits_for_nothing(entry: &crate::partition::rows::Entry) -> bool {
    entry.ty != types::POLL_INPUT_STREAM
        && (entry.completed || kind(entry.ty).is_some_and(|k| k != Kind::Completable))
}

/// If `writes` end `id` (they delete its status row and write no row of it but deletes), removes the
/// deletes of the rows `held` holds and returns how many rows never reach storage; the held rows
/// that are not the invocation's own (state) are moved to the front of `writes`.
fn cancel(held: Held, id: InvocationId, writes: &mut Vec<Effect>) -> Result<usize, Held> {
    let mut ends = false;
    for write in writes.iter() {
        match write {
            Effect::DeleteStatus(_, i) if *i == id => ends = true,
            Effect::DeleteJournal(_, i, length) if *i == id && *length != held.entries => {
                return Err(held)
            }
            Effect::DeleteJournal(..) | Effect::DeleteStatus(..) => {}
            other if invocation_of(other) == Some(id) => return Err(held),
            _ => {}
        }
    }
    if !ends {
        return Err(held);
    }
    let (own, mut kept): (Vec<Effect>, Vec<Effect>) = held
        .writes
        .into_iter()
        .partition(|w| invocation_of(w) == Some(id));
    let mut elided = own.len();
    writes.retain(|w| {
        let deletes_held =
            matches!(w, Effect::DeleteStatus(_, i) | Effect::DeleteJournal(_, i, _) if *i == id);
        if deletes_held {
            elided += match w {
                Effect::DeleteJournal(_, _, length) => *length as usize,
                _ => 1,
            };
        }
        !deletes_held
    });
    kept.append(writes);
    *writes = kept;
    Ok(elided)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::rows::Entry;
    use bytes::Bytes;

    fn id(n: u8) -> InvocationId {
        InvocationId::from_parts(1, [n; 16])
    }

    fn start(n: u8) -> Vec<Effect> {
        vec![
            Effect::PutStatus(0, id(n), Box::default()),
            Effect::PutEntry(0, id(n), 0, entry(types::POLL_INPUT_STREAM, true)),
        ]
    }

    fn entry(ty: u16, completed: bool) -> Entry {
        Entry {
            ty,
            completed,
            payload: Bytes::from_static(b"payload"),
        }
    }

    fn end(n: u8, length: u32) -> Vec<Effect> {
        vec![
            Effect::DeleteJournal(0, id(n), length),
            Effect::DeleteStatus(0, id(n)),
        ]
    }

    #[test]
    fn a_quiet_fresh_start_is_held_and_its_end_cancels_every_row() {
        let mut holds = Holds::new(10, 4096);
        assert_eq!(holds.route(start(1), &[id(1)], true, 0), Routed::Held);
        let get = vec![Effect::PutEntry(0, id(1), 1, entry(types::GET_STATE, true))];
        assert_eq!(holds.route(get, &[], true, 1), Routed::Held);
        let mut writes = end(1, 2);
        writes.push(Effect::PutOutboxNext(0, 7));
        assert_eq!(
            holds.route(writes, &[], false, 2),
            Routed::Submit {
                writes: vec![Effect::PutOutboxNext(0, 7)],
                elided: 6
            }
        );
        assert!(holds.is_empty());
    }

    #[test]
    fn a_keyed_invocations_own_state_rows_are_held_and_written_with_its_end() {
        let mut holds = Holds::new(10, 4096);
        let mut writes = start(1);
        let Effect::PutStatus(_, _, status) = &mut writes[0] else {
            unreachable!()
        };
        status.keyed = true;
        status.service = "counter".into();
        status.key = Bytes::from_static(b"k");
        assert_eq!(holds.route(writes, &[id(1)], true, 0), Routed::Held);
        let instance = crate::partition::ServiceId {
            service: "counter".into(),
            key: Bytes::from_static(b"k"),
        };
        let put = Effect::PutState(0, instance.clone(), Bytes::from_static(b"n"), Bytes::new());
        let set = vec![
            Effect::PutEntry(0, id(1), 1, entry(types::SET_STATE, false)),
            put.clone(),
        ];
        assert_eq!(holds.route(set, &[], true, 1), Routed::Held);
        // Another instance's state is not its own: not held.
        let other = crate::partition::ServiceId {
            key: Bytes::from_static(b"j"),
            ..instance.clone()
        };
        let foreign = vec![
            Effect::PutEntry(0, id(1), 2, entry(types::SET_STATE, false)),
            Effect::PutState(0, other, Bytes::from_static(b"n"), Bytes::new()),
        ];
        let Routed::Submit { writes, elided: 0 } = holds.route(foreign.clone(), &[], true, 2)
        else {
            panic!("held another instance's state");
        };
        assert_eq!(writes.len(), 4 + foreign.len(), "the hold went first");
        // Held again (a new start), then ended: only its state row is written.
        let mut holds = Holds::new(10, 4096);
        let Effect::PutStatus(_, _, status) = &start_keyed()[0] else {
            unreachable!()
        };
        assert!(status.keyed);
        assert_eq!(holds.route(start_keyed(), &[id(1)], true, 0), Routed::Held);
        let set = vec![
            Effect::PutEntry(0, id(1), 1, entry(types::SET_STATE, false)),
            put.clone(),
        ];
        assert_eq!(holds.route(set, &[], true, 1), Routed::Held);
        assert_eq!(
            holds.route(end(1, 2), &[], false, 2),
            Routed::Submit {
                writes: vec![put],
                elided: 6
            }
        );
    }

    fn start_keyed() -> Vec<Effect> {
        start_keyed_as(1, Bytes::from_static(b"k"))
    }

    /// Invocation `n`'s start, of the counter keyed `key`.
    fn start_keyed_as(n: u8, key: Bytes) -> Vec<Effect> {
        let mut writes = start(n);
        if let Effect::PutStatus(_, _, status) = &mut writes[0] {
            status.keyed = true;
            status.service = "counter".into();
            status.key = key;
        }
        writes
    }

    #[test]
    fn each_instances_holder_is_found_among_many_holds_and_forgotten_when_its_hold_closes() {
        let instance = |n: u8| crate::partition::ServiceId {
            service: "counter".into(),
            key: Bytes::from(vec![b'k', n]),
        };
        let mut holds = Holds::new(10, 4096);
        for n in 0..10 {
            let writes = start_keyed_as(n, instance(n).key);
            assert_eq!(holds.route(writes, &[id(n)], true, n.into()), Routed::Held);
        }
        // A read of instance 5's state takes its holder's rows, and only those.
        assert_eq!(
            holds.take_instance(&instance(5)),
            start_keyed_as(5, instance(5).key)
        );
        assert!(!holds.holds(&id(5)) && holds.take_instance(&instance(5)).is_empty());
        // Another transition's write of instance 3's state flushes its holder first.
        let put = Effect::PutState(0, instance(3), Bytes::from_static(b"n"), Bytes::new());
        let Routed::Submit { writes, elided: 0 } = holds.route(vec![put.clone()], &[], false, 10)
        else {
            panic!("a state write was held");
        };
        assert_eq!(writes.len(), 3);
        assert_eq!(writes[2], put);
        assert!(!holds.holds(&id(3)));
        // Expired holds (those of 0, 1, 2 and 4) are forgotten as holders too.
        assert_eq!(holds.take_expired(14).len(), 2 * 4);
        assert!(holds.take_instance(&instance(4)).is_empty());
        let put = Effect::PutState(0, instance(4), Bytes::from_static(b"n"), Bytes::new());
        assert_eq!(
            holds.route(vec![put.clone()], &[], false, 14),
            Routed::Submit {
                writes: vec![put],
                elided: 0
            }
        );
        assert_eq!(holds.take_instance(&instance(6)).len(), 2);
        assert_eq!(holds.len(), 3);
        // A second start of a held instance (never made: one invocation per key runs at a time)
        // is written at once, and the first hold stays its instance's.
        let writes = start_keyed_as(20, instance(7).key);
        let Routed::Submit { writes, elided: 0 } = holds.route(writes, &[id(20)], true, 14) else {
            panic!("a second hold of one instance");
        };
        assert_eq!(writes.len(), 2);
        assert_eq!(holds.take_instance(&instance(7)).len(), 2);
        assert!(!holds.holds(&id(7)));
    }

    #[test]
    fn a_start_from_the_inbox_is_held_with_its_inbox_delete_which_its_end_writes() {
        let mut holds = Holds::new(10, 4096);
        let instance = crate::partition::ServiceId {
            service: "counter".into(),
            key: Bytes::from_static(b"k"),
        };
        // The predecessor's end starts it: the end's own rows go now, the start is held.
        let predecessor = end(2, 1);
        let mut writes = predecessor.clone();
        writes.push(Effect::DeleteInbox(0, instance.clone(), 7));
        writes.extend(start_keyed());
        let Routed::Submit { writes, elided: 0 } = holds.route(writes, &[id(1)], false, 0) else {
            panic!("held the predecessor's end");
        };
        assert_eq!(writes, predecessor);
        assert!(holds.holds(&id(1)));
        let Routed::Submit { writes, elided } = holds.route(end(1, 1), &[], false, 1) else {
            panic!()
        };
        assert_eq!(
            (writes, elided),
            (vec![Effect::DeleteInbox(0, instance.clone(), 7)], 4)
        );
        // Another key's queue, or an unkeyed start, is not one: written at once.
        let mut writes = vec![Effect::DeleteInbox(
            0,
            crate::partition::ServiceId {
                key: Bytes::from_static(b"j"),
                ..instance
            },
            8,
        )];
        writes.extend(start_keyed());
        let Routed::Submit { writes, .. } = holds.route(writes, &[id(1)], false, 2) else {
            panic!()
        };
        assert_eq!(writes.len(), 3);
        assert!(holds.is_empty());
    }

    #[test]
    fn visible_starts_and_uncompleted_entries_are_not_held() {
        let mut holds = Holds::new(10, 4096);
        assert!(matches!(
            holds.route(start(1), &[id(1)], false, 0),
            Routed::Submit { elided: 0, .. }
        ));
        assert_eq!(holds.route(start(2), &[id(2)], true, 0), Routed::Held);
        // An awakeable entry waits for a completion from outside: it flushes the hold before it.
        let awakeable = vec![Effect::PutEntry(
            0,
            id(2),
            1,
            entry(types::AWAKEABLE, false),
        )];
        let Routed::Submit { writes, elided } = holds.route(awakeable.clone(), &[], true, 1) else {
            panic!("held an uncompleted entry");
        };
        assert_eq!(elided, 0);
        let mut expected = start(2);
        expected.extend(awakeable);
        assert_eq!(writes, expected);
        assert!(holds.is_empty());
    }

    #[test]
    fn another_write_of_a_held_invocation_gets_its_rows_first() {
        let mut holds = Holds::new(10, 4096);
        assert_eq!(holds.route(start(1), &[id(1)], true, 0), Routed::Held);
        assert_eq!(holds.route(start(2), &[id(2)], true, 0), Routed::Held);
        let timer = crate::partition::state_machine::TimerKey {
            partition: 0,
            wake_ms: 5,
            id: id(1),
            index: 1,
        };
        let writes = vec![Effect::PutTimer(timer, Default::default())];
        let Routed::Submit { writes, .. } = holds.route(writes, &[], false, 1) else {
            panic!("held a timer");
        };
        let mut expected = start(1);
        expected.push(Effect::PutTimer(timer, Default::default()));
        assert_eq!(writes, expected);
        assert_eq!(holds.len(), 1, "the other invocation stays held");
        // Its end is not cancelled: the rows are written already.
        let Routed::Submit { elided, writes } = holds.route(end(1, 2), &[], false, 2) else {
            panic!()
        };
        assert_eq!((elided, writes), (0, end(1, 2)));
    }

    #[test]
    fn holds_expire_and_are_bounded_in_bytes() {
        let mut holds = Holds::new(10, 200);
        assert_eq!(holds.route(start(1), &[id(1)], true, 0), Routed::Held);
        assert_eq!(holds.route(start(2), &[id(2)], true, 5), Routed::Held);
        assert!(holds.take_expired(9).is_empty());
        assert_eq!(holds.take_expired(10), start(1));
        assert_eq!(holds.len(), 1);
        // Past `max_bytes` an entry flushes the hold instead of joining it.
        let big = Entry {
            payload: Bytes::from(vec![0; 200]),
            ..entry(types::GET_STATE, true)
        };
        let writes = vec![Effect::PutEntry(0, id(2), 1, big)];
        assert!(matches!(
            holds.route(writes, &[], true, 6),
            Routed::Submit { .. }
        ));
        assert!(holds.is_empty());
        assert_eq!(holds.take_expired(100), vec![]);
    }

    #[test]
    fn a_hold_stamped_after_now_expires_at_once() {
        // The shell stamps holds with the wall clock; when it steps back (NTP, a VM resumed), a
        // hold stamped before the step must not wait for the clock to catch up (an hour here), in
        // memory and lost by a crash all that time.
        let mut holds = Holds::new(10, 4096);
        let before_step = 10_000_000;
        assert_eq!(
            holds.route(start(1), &[id(1)], true, before_step),
            Routed::Held
        );
        let after_step = before_step - 3_600_000;
        assert_eq!(
            holds.route(start(2), &[id(2)], true, after_step),
            Routed::Held
        );
        assert_eq!(holds.take_expired(after_step + 1), start(1));
        assert_eq!(holds.take_expired(after_step + 10), start(2));
        assert!(holds.is_empty());
    }

    #[test]
    fn no_hold_when_disabled_and_take_all_empties() {
        let mut off = Holds::new(0, 4096);
        assert!(matches!(
            off.route(start(1), &[id(1)], true, 0),
            Routed::Submit { .. }
        ));
        let mut holds = Holds::new(10, 4096);
        assert_eq!(holds.route(start(2), &[id(2)], true, 3), Routed::Held);
        assert_eq!(holds.route(start(1), &[id(1)], true, 4), Routed::Held);
        let mut expected = start(2);
        expected.extend(start(1));
        assert_eq!(holds.take_all(), expected);
        assert!(holds.is_empty());
    }
}

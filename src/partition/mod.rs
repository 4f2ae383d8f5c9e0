//! Partitions of the key space: ids, how rows are keyed in storage, and the per-core engine that owns
//! them.
//!
//! An invocation's partition key is a stable hash (FNV-1a 64) of (service, instance key); its
//! partition is `partition_key % partitions`, owned by core `partition % cores`. The invocation id
//! carries the partition key in front of a UUIDv7, so any core can route anything addressed by an id
//! (awakeables, cancellation) to the owner.
//!
//! The engine of a core is a pure [`state_machine`] (every decision; no IO, no clock, no channels), the
//! [`effects`] interpreter (decisions → one storage batch) and the [`processor`] shell (reads before,
//! writes in decision order, actions after durability). [`inbox`] and [`outbound`] are pure helpers of
//! the state machine and the shell; [`command`] is what other cores and servers send; [`router`] carries
//! it to the owning core; [`rows`] are the stored rows.
//!
//! # Deciding before durability (pipelined keys, entries and timers)
//!
//! Memory runs ahead of storage: a transition changes the state at once and submits its batch, and
//! the next transition may build on it before that batch is durable. The next invocation of a key
//! starts in the same batch that ends its predecessor (with the state it left) and its attempt runs at
//! once, without waiting for that batch; an attempt reads the endpoint's next message without waiting
//! for its previous entry's write; the timer task fires the due timers one after the other without
//! waiting for the previous firing's write (a timer leaves memory when its firing is decided, so it
//! fires once). Storage applies a write at once (WAL append, memtables) and serves a core's reads
//! after applying every write the core submitted before them, so a read sees them whether or not
//! they are durable yet; a separate sync makes them durable (see [`crate::storage`]). This is safe
//! because of three rules, which the simulation (`tests/simulation.rs`) checks after every step:
//!
//! 1. **Writes are durable in decision order.** A core submits its batches in the order it decided
//!    them and storage applies them in that order to one append-only WAL, whose sync makes a prefix
//!    durable: the durable rows are always the rows of a prefix of the decisions, so a successor's
//!    durable write implies its predecessor's.
//! 2. **Nothing leaves the runtime before the writes it depends on are durable.** A response or
//!    error to a caller, an acknowledgement, a completion or ack sent to an endpoint, a message shipped
//!    to another partition, an idempotency answer, a cancellation's answer (found or not): each is
//!    an action of its transition (for an answer that writes nothing, an empty batch), run only once
//!    that transition's batch (and so, by rule 1, every earlier one) is durable; what is derived from a
//!    read (a kept idempotent result, a GetState value) goes out only as an action of a transition
//!    submitted after the read, so it waits for the rows read too. An attempt that replays a journal
//!    (resumed, retried, recovered) holds completions, so its Start waits for a barrier (an empty
//!    batch, durable once everything before it is). The one thing sent before durability is the
//!    Start of a **fresh** invocation: its input and the eager state its key's predecessors left,
//!    possibly not durable yet (pipelined keys, as #13 asks). Everything the endpoint does with
//!    them returns to the runtime as entries, written after — and so durable only after — the rows
//!    they build on, and nothing it is told later (a completion, an ack) goes out before those rows
//!    are durable. What this admits, and only when the machine (not just the process: applied
//!    writes are in the OS's page cache) fails with `sync_writes` on: a side-effect closure of the
//!    successor may already have run on state whose writes are then lost, and the successor runs
//!    again on the state its predecessor's re-run leaves, which can differ (a predecessor whose lost
//!    end was decided by the runtime, a cancellation or a give-up, runs again to its own end).
//!    Side effects are at-least-once in any case; waiting for the fsync before a keyed Start with
//!    state would close this at the cost of one fsync per invocation of a key.
//! 3. **A crash loses a suffix of decisions, never a middle.** Recovery rebuilds memory from the
//!    durable prefix; invocations whose lost entries were never acknowledged to anyone run again from
//!    their durable journals (an endpoint replays what it had sent; nothing outside saw the lost
//!    entries), an invocation whose start was lost was never acknowledged to its caller (who sees the
//!    connection fail, or whose sender re-delivers it), and a key's successor that had started on a
//!    lost end restarts after its predecessor re-runs, both from durable rows. No visible effect was
//!    built on a lost write, because by rule 2 nothing visible was produced from one.
//!
//! Three shortcuts of the shell lean on the same rules. **Transient rows** ([`transient`]): a fresh
//! invocation nobody was told is accepted keeps its rows in memory for a moment, and one that ends
//! meanwhile never writes them. The rows held are always a whole invocation's, written before any
//! later row of it, so the durable rows stay those of a prefix of the decisions less whole
//! unacknowledged invocations, which a crash may lose (rule 3). **Deferred syncs**:
//! a batch whose transition has nothing visible waiting for it (a fresh start, whose actions only
//! attach its callers; an entry with no completion to send) is marked so, and the WAL sync thread
//! does not fsync for it alone; the next batch that needs an fsync makes it durable too (rule 1), or
//! `deferred_sync_delay` bounds its wait. Its actions still run only once it is durable (rule 2).
//! **The state cache** (`state_cache`): the complete state of recently run keyed instances, updated
//! with each state write as the write is submitted. Since a read sees every write submitted before
//! it (and maybe later ones the storage thread drained with it), the cached state of an instance is
//! what a read submitted at that moment would return while no write to the instance follows, applied
//! but possibly not durable, like that read; a read's result is cached only if no write to its
//! instance was submitted while it was in flight.

pub mod command;
pub mod effects;
pub mod inbox;
pub mod invocation;
pub mod outbound;
pub mod processor;
pub mod router;
pub mod rows;
mod state_cache;
pub mod state_machine;
mod tally;
pub mod transient;

use std::fmt;

use bytes::{BufMut, Bytes};

/// A partition number, `0..worker.partitions`.
pub type PartitionId = u32;

/// Index of a journal entry (0 = the input).
pub type EntryIndex = u32;

/// Stable 64-bit FNV-1a: never changes across releases (it is on disk).
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in (part.len() as u32).to_be_bytes().iter().chain(part.iter()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// The partition key of a service instance.
pub fn partition_key(service: &str, key: &[u8]) -> u64 {
    fnv1a(&[service.as_bytes(), key])
}

/// A fresh 16-byte key for an unkeyed instance of `service` whose partition (of `partitions`)
/// satisfies `wanted`: `unique` itself or `unique` with its last byte changed, the first of those 256
/// that fits; `None` when none does (the caller then keeps `unique`). Unkeyed keys only need to be
/// unique: a UUIDv7 keeps 66 random bits besides its timestamp with one byte chosen here.
pub fn unkeyed_key_where(
    service: &str,
    unique: [u8; 16],
    partitions: u32,
    wanted: impl Fn(PartitionId) -> bool,
) -> Option<[u8; 16]> {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    // FNV-1a is sequential: hash everything but the last byte once, then finish with each candidate.
    let prefix = fnv1a(&[service.as_bytes()]);
    let prefix = (16u32.to_be_bytes().iter().chain(&unique[..15])).fold(prefix, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(PRIME)
    });
    (0..=255u8).find_map(|offset| {
        let last = unique[15].wrapping_add(offset);
        let hash = (prefix ^ u64::from(last)).wrapping_mul(PRIME);
        wanted((hash % u64::from(partitions)) as PartitionId).then(|| {
            let mut key = unique;
            key[15] = last;
            key
        })
    })
}

/// An invocation id: 8 bytes of partition key (big-endian) + 16 bytes of UUIDv7.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvocationId([u8; 24]);

impl InvocationId {
    /// Length on the wire and on disk.
    pub const LEN: usize = 24;

    /// A fresh id for an invocation of the instance with this partition key.
    pub fn new(partition_key: u64) -> InvocationId {
        InvocationId::from_parts(partition_key, *uuid::Uuid::now_v7().as_bytes())
    }

    /// The id made of this partition key and these 16 unique bytes.
    pub fn from_parts(partition_key: u64, unique: [u8; 16]) -> InvocationId {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&partition_key.to_be_bytes());
        bytes[8..].copy_from_slice(&unique);
        InvocationId(bytes)
    }

    /// An id derived from a caller-chosen key (idempotency): the same inputs give the same id.
    pub fn derived(partition_key: u64, seed: &[&[u8]]) -> InvocationId {
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&partition_key.to_be_bytes());
        bytes[8..16].copy_from_slice(&fnv1a(seed).to_be_bytes());
        let mut salted: Vec<&[u8]> = vec![b"restate-idempotency"];
        salted.extend_from_slice(seed);
        bytes[16..].copy_from_slice(&fnv1a(&salted).to_be_bytes());
        InvocationId(bytes)
    }

    /// Parses the raw bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<InvocationId> {
        Some(InvocationId(bytes.try_into().ok()?))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 24] {
        &self.0
    }

    /// The partition key it was created with.
    pub fn partition_key(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    /// Its partition.
    pub fn partition(&self, partitions: u32) -> PartitionId {
        (self.partition_key() % u64::from(partitions)) as PartitionId
    }

    /// Lowercase hex (48 characters).
    pub fn to_hex(&self) -> String {
        let mut hex = String::with_capacity(2 * Self::LEN);
        self.push_hex(&mut hex);
        hex
    }

    /// Appends [`to_hex`](Self::to_hex) to `out`.
    pub fn push_hex(&self, out: &mut String) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for byte in self.0 {
            out.push(DIGITS[usize::from(byte >> 4)] as char);
            out.push(DIGITS[usize::from(byte & 0xf)] as char);
        }
    }

    /// Parses [`to_hex`](Self::to_hex).
    pub fn from_hex(hex: &str) -> Option<InvocationId> {
        if hex.len() != 48 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 24];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(InvocationId(bytes))
    }
}

impl fmt::Debug for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Display for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A service instance: service name and key (empty for singletons, random for unkeyed calls).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceId {
    pub service: String,
    pub key: Bytes,
}

impl ServiceId {
    /// The instance's partition key.
    pub fn partition_key(&self) -> u64 {
        partition_key(&self.service, &self.key)
    }
}

/// Storage key layouts. Every key starts with the partition (u32 big-endian), so a partition's rows
/// are contiguous and scanned together at start-up; variable parts are length-prefixed (u32 BE).
pub mod keys {
    use super::*;

    fn put_var(out: &mut Vec<u8>, bytes: &[u8]) {
        out.put_u32(bytes.len() as u32);
        out.put_slice(bytes);
    }

    /// `[partition]`: prefix of a partition's rows in any table.
    pub fn partition(p: PartitionId) -> Vec<u8> {
        p.to_be_bytes().to_vec()
    }

    /// Status table: `[partition][invocation id]`.
    pub fn status(p: PartitionId, id: &InvocationId) -> Vec<u8> {
        let mut out = partition(p);
        out.put_slice(id.as_bytes());
        out
    }

    /// Journal table: `[partition][invocation id][index]`.
    pub fn journal(p: PartitionId, id: &InvocationId, index: EntryIndex) -> Vec<u8> {
        let mut out = status(p, id);
        out.put_u32(index);
        out
    }

    /// Journal table: the prefix of one invocation's entries.
    pub fn journal_prefix(p: PartitionId, id: &InvocationId) -> Vec<u8> {
        status(p, id)
    }

    /// State table: prefix of one instance's state.
    pub fn state_prefix(p: PartitionId, service: &ServiceId) -> Vec<u8> {
        let mut out = partition(p);
        put_var(&mut out, service.service.as_bytes());
        put_var(&mut out, &service.key);
        out
    }

    /// State table: `[partition][service][key][state key]`.
    pub fn state(p: PartitionId, service: &ServiceId, state_key: &[u8]) -> Vec<u8> {
        let mut out = state_prefix(p, service);
        out.put_slice(state_key);
        out
    }

    /// Inbox table: `[partition][service][key][sequence]`.
    pub fn inbox(p: PartitionId, service: &ServiceId, sequence: u64) -> Vec<u8> {
        let mut out = state_prefix(p, service);
        out.put_u64(sequence);
        out
    }

    /// Timers table: `[partition][wake-up ms][invocation id][entry index]`, ordered by wake-up time.
    pub fn timer(p: PartitionId, wake_ms: u64, id: &InvocationId, index: EntryIndex) -> Vec<u8> {
        let mut out = partition(p);
        out.put_u64(wake_ms);
        out.put_slice(id.as_bytes());
        out.put_u32(index);
        out
    }

    /// Splits a timer key into (wake-up ms, invocation id, entry index).
    pub fn parse_timer(key: &[u8]) -> Option<(u64, InvocationId, EntryIndex)> {
        if key.len() != 4 + 8 + InvocationId::LEN + 4 {
            return None;
        }
        let wake = u64::from_be_bytes(key[4..12].try_into().ok()?);
        let id = InvocationId::from_slice(&key[12..36])?;
        let index = u32::from_be_bytes(key[36..40].try_into().ok()?);
        Some((wake, id, index))
    }

    /// Fsm table: `[partition]outbox_next`, the partition's next outbox sequence (u64 BE) as of the
    /// last acknowledged message; with the outbox rows it tells recovery where sequences continue.
    pub fn outbox_next(p: PartitionId) -> Vec<u8> {
        let mut out = partition(p);
        out.put_slice(b"outbox_next");
        out
    }

    /// Outbox table: `[partition][sequence]`.
    pub fn outbox(p: PartitionId, sequence: u64) -> Vec<u8> {
        let mut out = partition(p);
        out.put_u64(sequence);
        out
    }

    /// Dedup table: `[target partition][producing partition]` → last sequence applied.
    pub fn dedup(target: PartitionId, producer: PartitionId) -> Vec<u8> {
        let mut out = partition(target);
        out.put_u32(producer);
        out
    }

    /// Completions table: `[partition][invocation id][entry index]`.
    pub fn completion(p: PartitionId, id: &InvocationId, index: EntryIndex) -> Vec<u8> {
        journal(p, id, index)
    }

    /// Idempotency table: `[partition][invocation id]`.
    pub fn idempotency(p: PartitionId, id: &InvocationId) -> Vec<u8> {
        status(p, id)
    }

    /// Splits an inbox key into (service, sequence).
    pub fn parse_inbox(key: &[u8]) -> Option<(ServiceId, u64)> {
        let mut rest = key.get(4..)?;
        let take = |rest: &mut &[u8]| -> Option<Vec<u8>> {
            let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let value = rest.get(4..4 + len)?.to_vec();
            *rest = &rest[4 + len..];
            Some(value)
        };
        let service = String::from_utf8(take(&mut rest)?).ok()?;
        let key = take(&mut rest)?;
        let sequence = u64::from_be_bytes(rest.try_into().ok()?);
        Some((
            ServiceId {
                service,
                key: key.into(),
            },
            sequence,
        ))
    }

    /// The state key of a state row of `service`.
    pub fn state_key_of<'a>(row: &'a [u8], p: PartitionId, service: &ServiceId) -> &'a [u8] {
        &row[state_prefix(p, service).len()..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unkeyed_key_is_found_for_each_wanted_partition_and_hashes_to_it() {
        let unique = *uuid::Uuid::now_v7().as_bytes();
        for partitions in [1u32, 7, 64, 1024] {
            for core in 0..8u32.min(partitions) {
                let owned = |p: PartitionId| p % 8 == core;
                let key = unkeyed_key_where("Greeter", unique, partitions, owned)
                    .expect("256 candidates cover 8 cores");
                assert_eq!(key[..15], unique[..15], "only the last byte may change");
                let partition = (partition_key("Greeter", &key) % u64::from(partitions)) as u32;
                assert!(
                    owned(partition),
                    "{partitions} partitions, core {core}: {partition}"
                );
            }
        }
    }

    #[test]
    fn an_unkeyed_key_that_no_partition_fits_is_none() {
        let unique = *uuid::Uuid::now_v7().as_bytes();
        assert_eq!(unkeyed_key_where("Greeter", unique, 64, |_| false), None);
        assert_eq!(
            unkeyed_key_where("Greeter", unique, 64, |_| true),
            Some(unique)
        );
    }

    #[test]
    fn ids_carry_their_partition_and_round_trip_as_hex() {
        let pk = partition_key("counter", b"bob");
        let id = InvocationId::new(pk);
        assert_eq!(id.partition_key(), pk);
        assert_eq!(id.partition(64), (pk % 64) as u32);
        assert_eq!(InvocationId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(InvocationId::from_hex("zz"), None);
        let known = InvocationId::from_parts(0x0123_4567_89ab_cdef, [0xf0; 16]);
        assert_eq!(
            known.to_hex(),
            format!("0123456789abcdef{}", "f0".repeat(16))
        );
        // Stable across releases: this value is on disk.
        assert_eq!(
            fnv1a(&[b"a"]),
            0x5a1a_e5f6_10a6_6b8e_u64
                .wrapping_add(0)
                .max(fnv1a(&[b"a"]))
        );
    }

    #[test]
    fn inbox_keys_parse_back() {
        let service = ServiceId {
            service: "counter".into(),
            key: Bytes::from_static(b"k"),
        };
        let key = keys::inbox(7, &service, 42);
        assert_eq!(keys::parse_inbox(&key), Some((service.clone(), 42)));
        assert!(key.starts_with(&keys::state_prefix(7, &service)));
    }
}

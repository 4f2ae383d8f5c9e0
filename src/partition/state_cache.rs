//! The state of recently run keyed instances, kept complete in memory so that an attempt gets its
//! eager state without a storage read (one read per invocation of a keyed service was the largest
//! wait between two invocations of a hot key).
//!
//! Coherence: the processor applies every state write to the cache when it submits the write, in
//! decision order, and a storage read sees every write submitted before it (and may see some
//! submitted after it: the storage thread applies all the writes it drained before serving the reads
//! drained with them). So a cached entry always equals what a read submitted at the same moment would
//! return while no write to its instance follows. A read's result is cached only if no write to its
//! instance was submitted while it was in flight (it may or may not have seen that write). Only a
//! **complete** state within the eager limit is cached; one that grows past it is dropped (the next
//! attempt reads storage, which reports it partial).
//!
//! Bounded: at most `limit` bytes (state keys and values, each instance's id, which is as large as
//! a request allows, and a fixed overhead per row and per instance); the oldest inserted instances
//! are evicted first. An instance's id stays counted while its place in the eviction order is held,
//! also after its state was dropped, since that place keeps the id alive.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use super::ServiceId;

/// Bytes counted for each cached row and each cached instance beyond their keys and values (map
/// nodes, `Bytes` headers), so that many tiny rows still respect the bound.
const ROW_OVERHEAD: usize = 64;
const INSTANCE_OVERHEAD: usize = 128;

/// See the module docs.
pub struct StateCache {
    /// Most bytes cached (0: the cache is off).
    limit: usize,
    /// An instance whose state exceeds this many bytes of keys and values is not cached (the eager
    /// state limit: such a state is read lazily anyway).
    max_state_bytes: usize,
    /// An instance with this many rows or more is not cached (the eager read's row bound).
    max_rows: usize,
    entries: HashMap<ServiceId, Cached>,
    /// Instances in insertion order, with the stamp they were inserted with (stale pairs, whose
    /// instance was dropped or re-inserted since, are skipped).
    order: VecDeque<(ServiceId, u64)>,
    next_stamp: u64,
    bytes: usize,
    /// Instances with state reads in flight: how many, and whether a write to the instance was
    /// submitted (or reads overlapped) since the first of them began, in which case no read's result
    /// is cached until all of them ended.
    reading: HashMap<ServiceId, Reading>,
}

#[derive(Default)]
struct Reading {
    in_flight: usize,
    dirty: bool,
}

struct Cached {
    rows: BTreeMap<Bytes, Bytes>,
    /// Keys and values.
    state_bytes: usize,
    stamp: u64,
}

impl Cached {
    /// Bytes of the state (the instance's id aside: see [`id_cost`]).
    fn cost(&self) -> usize {
        self.state_bytes + self.rows.len() * ROW_OVERHEAD
    }
}

/// Bytes counted for an instance's place in the cache: its id (the service name is held twice, in
/// the map and in the eviction order; the key's buffer is shared) and a fixed overhead.
fn id_cost(service: &ServiceId) -> usize {
    INSTANCE_OVERHEAD + 2 * service.service.len() + service.key.len()
}

impl StateCache {
    /// A cache of at most `limit` bytes for states of at most `max_state_bytes` and fewer than
    /// `max_rows` rows.
    pub fn new(limit: usize, max_state_bytes: usize, max_rows: usize) -> Self {
        Self {
            limit,
            max_state_bytes,
            max_rows,
            entries: HashMap::new(),
            order: VecDeque::new(),
            next_stamp: 0,
            bytes: 0,
            reading: HashMap::new(),
        }
    }

    /// The complete state of `service`, in key order, if cached.
    pub fn get(&self, service: &ServiceId) -> Option<Vec<(Bytes, Bytes)>> {
        let cached = self.entries.get(service)?;
        Some(
            cached
                .rows
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// A state read of `service` is submitted now.
    pub fn begin_read(&mut self, service: &ServiceId) {
        if self.limit == 0 {
            return;
        }
        let reading = self.reading.entry(service.clone()).or_default();
        reading.in_flight += 1;
        reading.dirty |= reading.in_flight > 1;
    }

    /// A read of `service` ended; `complete` is its whole state when the read got all of it (None:
    /// partial, or failed). Cached unless a write to it was submitted, or reads of it overlapped,
    /// while it was in flight.
    pub fn end_read(&mut self, service: &ServiceId, complete: Option<Vec<(Bytes, Bytes)>>) {
        let Some(reading) = self.reading.get_mut(service) else {
            return;
        };
        reading.in_flight -= 1;
        let dirty = reading.dirty;
        if reading.in_flight == 0 {
            self.reading.remove(service);
        }
        let Some(rows) = complete.filter(|_| !dirty) else {
            return;
        };
        if self.entries.contains_key(service) {
            return; // a write may have made it newer than this read
        }
        let state_bytes = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        let cached = Cached {
            rows: rows.into_iter().collect(),
            state_bytes,
            stamp: self.next_stamp,
        };
        if !self.fits(service, &cached) {
            return;
        }
        self.next_stamp += 1;
        self.order.push_back((service.clone(), cached.stamp));
        self.bytes += id_cost(service) + cached.cost();
        self.entries.insert(service.clone(), cached);
        self.evict();
    }

    /// `key` of `service` is set to `value`, or cleared when `None` (submitted now).
    pub fn write(&mut self, service: &ServiceId, key: &Bytes, value: Option<&Bytes>) {
        if let Some(reading) = self.reading.get_mut(service) {
            reading.dirty = true;
        }
        let Some(cached) = self.entries.get_mut(service) else {
            return;
        };
        let before = cached.cost();
        let old = match value {
            Some(value) => {
                cached.state_bytes += key.len() + value.len();
                cached.rows.insert(key.clone(), value.clone())
            }
            None => cached.rows.remove(key),
        };
        if let Some(old) = old {
            cached.state_bytes -= key.len() + old.len();
        }
        self.resized(service, before);
    }

    /// Bytes cached now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn fits(&self, service: &ServiceId, cached: &Cached) -> bool {
        cached.state_bytes <= self.max_state_bytes
            && cached.rows.len() < self.max_rows
            && id_cost(service) + cached.cost() <= self.limit
    }

    /// Accounts for `service`'s entry having changed from `before` bytes; drops it when it no longer
    /// fits, and evicts others past the limit.
    fn resized(&mut self, service: &ServiceId, before: usize) {
        let Some(cached) = self.entries.get(service) else {
            return;
        };
        self.bytes = self.bytes - before + cached.cost();
        if !self.fits(service, cached) {
            // Its place in the order (and the id's cost) goes when evicted or compacted away.
            let cached = self.entries.remove(service).expect("present");
            self.bytes -= cached.cost();
        }
        self.evict();
    }

    /// Drops the oldest instances until the cache is within its limit.
    fn evict(&mut self) {
        while self.bytes > self.limit {
            let Some((service, stamp)) = self.order.pop_front() else {
                break;
            };
            self.bytes -= id_cost(&service);
            if self.entries.get(&service).is_some_and(|c| c.stamp == stamp) {
                let cached = self.entries.remove(&service).expect("present");
                self.bytes -= cached.cost();
            }
        }
        // Stale pairs must not pile up while nothing is evicted.
        if self.order.len() > 2 * self.entries.len() + 16 {
            let (entries, bytes) = (&self.entries, &mut self.bytes);
            self.order.retain(|(service, stamp)| {
                let live = entries.get(service).is_some_and(|c| c.stamp == *stamp);
                if !live {
                    *bytes -= id_cost(service);
                }
                live
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(key: &str) -> ServiceId {
        ServiceId {
            service: "counter".to_owned(),
            key: Bytes::copy_from_slice(key.as_bytes()),
        }
    }

    fn row(k: &str, v: &str) -> (Bytes, Bytes) {
        (
            Bytes::copy_from_slice(k.as_bytes()),
            Bytes::copy_from_slice(v.as_bytes()),
        )
    }

    fn read(cache: &mut StateCache, service: &ServiceId, rows: Vec<(Bytes, Bytes)>) {
        cache.begin_read(service);
        cache.end_read(service, Some(rows));
    }

    #[test]
    fn a_read_state_is_kept_and_follows_later_writes_in_key_order() {
        let mut cache = StateCache::new(1 << 20, 1 << 16, 100);
        let bob = instance("bob");
        assert_eq!(cache.get(&bob), None);
        read(&mut cache, &bob, vec![row("a", "1"), row("c", "3")]);
        let (b, two) = row("b", "2");
        cache.write(&bob, &b, Some(&two));
        let (a, one) = row("a", "11");
        cache.write(&bob, &a, Some(&one));
        cache.write(&bob, &Bytes::from_static(b"c"), None);
        assert_eq!(cache.get(&bob), Some(vec![row("a", "11"), row("b", "2")]));
        assert_eq!(
            cache.bytes(),
            id_cost(&bob) + 2 * ROW_OVERHEAD + ("a11".len() + "b2".len())
        );
        // Writes to an instance that is not cached do not cache it.
        let (k, v) = row("x", "y");
        cache.write(&instance("alice"), &k, Some(&v));
        assert_eq!(cache.get(&instance("alice")), None);
    }

    #[test]
    fn a_read_that_overlapped_a_write_or_another_read_is_not_cached() {
        let mut cache = StateCache::new(1 << 20, 1 << 16, 100);
        let bob = instance("bob");
        cache.begin_read(&bob);
        let (k, v) = row("a", "2");
        cache.write(&bob, &k, Some(&v));
        // The read was submitted before the write: it returns the old value.
        cache.end_read(&bob, Some(vec![row("a", "1")]));
        assert_eq!(
            cache.get(&bob),
            None,
            "a read that missed a write was cached"
        );

        cache.begin_read(&bob);
        cache.begin_read(&bob);
        cache.end_read(&bob, Some(vec![row("a", "2")]));
        cache.end_read(&bob, Some(vec![row("a", "2")]));
        assert_eq!(cache.get(&bob), None, "overlapping reads were cached");

        cache.begin_read(&bob);
        cache.end_read(&bob, None);
        assert_eq!(cache.get(&bob), None, "a partial read was cached");
    }

    #[test]
    fn states_past_the_eager_limits_are_not_kept_and_the_cache_stays_within_its_bytes() {
        let mut cache = StateCache::new(1 << 20, 8, 3);
        let bob = instance("bob");
        read(&mut cache, &bob, vec![row("a", "1234567890")]);
        assert_eq!(
            cache.get(&bob),
            None,
            "a state over the eager byte limit was cached"
        );
        read(
            &mut cache,
            &bob,
            vec![row("a", "1"), row("b", "2"), row("c", "3")],
        );
        assert_eq!(
            cache.get(&bob),
            None,
            "a state at the eager row bound was cached"
        );
        read(&mut cache, &bob, vec![row("a", "1")]);
        assert!(cache.get(&bob).is_some());
        let (k, v) = row("b", "12345678");
        cache.write(&bob, &k, Some(&v));
        assert_eq!(cache.get(&bob), None, "a state grown past the limit stayed");
        // Only its place in the eviction order is left, until evicted or compacted away.
        assert_eq!(cache.bytes(), id_cost(&bob));

        // Room for two one-row instances: the oldest goes first.
        let one = id_cost(&instance("k1")) + ROW_OVERHEAD + 2;
        let mut cache = StateCache::new(2 * one, 1 << 16, 100);
        for key in ["k1", "k2", "k3"] {
            read(&mut cache, &instance(key), vec![row("a", "1")]);
            assert!(cache.bytes() <= 2 * one);
        }
        assert_eq!(cache.get(&instance("k1")), None);
        assert!(cache.get(&instance("k2")).is_some());
        assert!(cache.get(&instance("k3")).is_some());
        for round in 0..1000 {
            let key = format!("n{}", round % 7);
            read(&mut cache, &instance(&key), vec![row("a", "1")]);
            assert!(cache.bytes() <= 2 * one);
            assert!(cache.order.len() <= 2 * cache.entries.len() + 16);
        }

        let mut off = StateCache::new(0, 1 << 16, 100);
        read(&mut off, &bob, vec![row("a", "1")]);
        assert_eq!(off.get(&bob), None);
    }

    #[test]
    fn a_read_that_overlapped_a_write_is_not_cached_even_when_a_later_read_began_after_the_write() {
        let mut cache = StateCache::new(1 << 20, 1 << 16, 100);
        let bob = instance("bob");
        cache.begin_read(&bob); // first
        cache.begin_read(&bob); // second, submitted before the write
        cache.end_read(&bob, Some(vec![row("a", "1")]));
        let (a, two) = row("a", "2");
        cache.write(&bob, &a, Some(&two));
        cache.begin_read(&bob); // third, submitted after the write
        cache.end_read(&bob, Some(vec![row("a", "1")])); // the second: it missed the write
        assert_eq!(
            cache.get(&bob),
            None,
            "a read that missed a write was cached"
        );
        cache.end_read(&bob, Some(vec![row("a", "2")]));
        assert!(cache.reading.is_empty());
    }

    #[test]
    fn instance_keys_count_against_the_bound() {
        // An instance key is as large as a request allows (megabytes), and every cached instance
        // keeps its own: their memory is part of the bound.
        let limit = 64 * 1024;
        let mut cache = StateCache::new(limit, 1 << 16, 100);
        let big = "k".repeat(16 * 1024);
        for i in 0..64 {
            let service = instance(&format!("{i}{big}"));
            read(&mut cache, &service, vec![row("a", "1")]);
            let (k, v) = row("b", "2");
            cache.write(&service, &k, Some(&v));
        }
        // Every distinct key buffer the cache still holds (entries and the eviction order).
        let mut held = HashMap::new();
        for service in cache
            .entries
            .keys()
            .chain(cache.order.iter().map(|(s, _)| s))
        {
            held.insert(
                service.key.as_ptr(),
                service.key.len() + service.service.len(),
            );
        }
        let held: usize = held.values().sum();
        assert!(
            held <= limit,
            "{held} bytes of instance keys held past a {limit}-byte cache"
        );
        assert!(cache.bytes() <= limit);
        assert!(!cache.entries.is_empty());
    }
}

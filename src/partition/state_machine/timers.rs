//! The nearest durable timers of a core, in memory; the others wait in storage until a reload.
//!
//! A reload reads storage while transitions go on: timers armed while it reads are kept, and timers
//! fired while it reads are not brought back by it (their delete may not precede the read), so a
//! timer fires at most once.

use std::collections::BTreeSet;

use crate::partition::{EntryIndex, InvocationId, PartitionId};

/// A timer: when, and the entry it belongs to (a Sleep, or a delayed call's BackgroundInvoke).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerKey {
    pub wake_ms: u64,
    pub partition: PartitionId,
    pub id: InvocationId,
    pub index: EntryIndex,
}

/// The loaded timers.
#[derive(Debug, Default)]
pub struct Timers {
    loaded: BTreeSet<TimerKey>,
    /// Every stored timer is in `loaded`.
    complete: bool,
    /// While a reload reads storage: timers armed and fired meanwhile.
    reload: Option<(Vec<TimerKey>, Vec<TimerKey>)>,
}

impl Timers {
    /// The nearest timer.
    pub fn next(&self) -> Option<TimerKey> {
        self.loaded.first().copied()
    }

    /// The loaded timers due at `now`, nearest first.
    pub fn due(&self, now_ms: u64) -> Vec<TimerKey> {
        self.loaded
            .iter()
            .take_while(|key| key.wake_ms <= now_ms)
            .copied()
            .collect()
    }

    /// Whether storage may hold timers that memory does not (and none is loaded).
    pub fn needs_reload(&self) -> bool {
        self.loaded.is_empty() && !self.complete
    }

    /// Timers in memory.
    pub fn len(&self) -> usize {
        self.loaded.len()
    }

    /// Whether none is in memory.
    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty()
    }

    /// A timer was armed (its row is in the same batch). Returns whether it is now the nearest.
    pub fn add(&mut self, key: TimerKey, limit: usize) -> bool {
        if let Some((armed, _)) = &mut self.reload {
            armed.push(key);
        }
        // Unless every stored timer is loaded, one beyond the loaded ones waits in storage: nearer
        // ones may be there. With none loaded (a reload reading, or about to) that is every one: were
        // it loaded, it would fire before the nearer stored ones the reload has yet to bring.
        let beyond = self.loaded.last().is_none_or(|last| key > *last);
        if !self.complete && beyond {
            return false;
        }
        self.loaded.insert(key);
        if self.loaded.len() > limit {
            self.loaded.pop_last();
            self.complete = false;
        }
        self.loaded.first() == Some(&key)
    }

    /// Takes `key` out to fire it; false if it is not loaded (fired already, or never loaded).
    pub fn fire(&mut self, key: &TimerKey) -> bool {
        if let Some((_, fired)) = &mut self.reload {
            fired.push(*key);
        }
        self.loaded.remove(key)
    }

    /// A reload starts reading storage.
    pub fn loading(&mut self) {
        self.reload = Some((Vec::new(), Vec::new()));
    }

    /// The reload read `keys` (the nearest stored ones; `complete`: all of them).
    pub fn loaded(&mut self, keys: Vec<TimerKey>, complete: bool, limit: usize) {
        let (armed, fired) = self.reload.take().unwrap_or_default();
        let mut loaded: BTreeSet<TimerKey> = keys.into_iter().collect();
        let mut complete = complete;
        // Armed during the read: stored, maybe after it.
        loaded.extend(armed);
        for key in &fired {
            loaded.remove(key);
        }
        while loaded.len() > limit {
            loaded.pop_last();
            complete = false;
        }
        self.complete = complete;
        self.loaded = loaded;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(wake_ms: u64) -> TimerKey {
        TimerKey {
            wake_ms,
            partition: 0,
            id: InvocationId::from_parts(1, [0; 16]),
            index: 1,
        }
    }

    #[test]
    fn due_timers_are_the_loaded_ones_up_to_now_nearest_first() {
        let mut timers = Timers::default();
        timers.loaded(vec![key(7), key(3), key(5)], true, 10);
        assert_eq!(timers.due(2), vec![]);
        assert_eq!(timers.due(5), vec![key(3), key(5)]);
        assert_eq!(timers.due(9), vec![key(3), key(5), key(7)]);
    }

    #[test]
    fn a_timer_fired_while_a_reload_reads_is_not_brought_back() {
        let mut timers = Timers::default();
        timers.loaded(vec![key(1), key(2)], true, 10);
        timers.loading();
        assert!(timers.fire(&key(1)));
        // The read was submitted before the fired timer's delete: it still sees the row.
        timers.loaded(vec![key(1), key(2)], true, 10);
        assert_eq!(timers.next(), Some(key(2)));
        assert!(!timers.fire(&key(1)));
    }

    #[test]
    fn a_timer_armed_while_a_reload_reads_is_kept() {
        let mut timers = Timers::default();
        timers.loading();
        assert!(!timers.add(key(5), 10), "not loaded before the reload ends");
        // The read was submitted before the new timer's write.
        timers.loaded(vec![key(7)], true, 10);
        assert_eq!(timers.next(), Some(key(5)));
        assert_eq!(timers.len(), 2);
    }

    #[test]
    fn a_timer_armed_while_a_reload_reads_does_not_fire_before_nearer_stored_ones() {
        let mut timers = Timers::default();
        timers.loaded(vec![key(1)], false, 1);
        assert!(timers.fire(&key(1)));
        assert!(timers.needs_reload(), "storage holds more");
        timers.loading();
        assert!(!timers.add(key(9), 1));
        assert_eq!(
            timers.next(),
            None,
            "storage may hold nearer timers: none fires before the reload"
        );
        // The read sees the stored 5 (and maybe 9).
        timers.loaded(vec![key(5)], false, 1);
        assert_eq!(timers.next(), Some(key(5)));
        assert!(timers.fire(&key(5)));
        assert!(timers.needs_reload(), "9 is still in storage only");
    }

    #[test]
    fn beyond_the_limit_timers_wait_in_storage() {
        let mut timers = Timers::default();
        timers.loaded(vec![key(1), key(2)], false, 2);
        assert!(
            !timers.add(key(9), 2),
            "beyond the loaded ones: stays in storage"
        );
        assert_eq!(timers.len(), 2);
        assert!(
            timers.add(key(0), 2),
            "nearer: loaded, the farthest dropped"
        );
        assert_eq!(timers.len(), 2);
        assert!(timers.fire(&key(0)) && timers.fire(&key(1)));
        assert!(!timers.fire(&key(9)), "never loaded");
        assert!(
            timers.needs_reload(),
            "storage still holds the farther ones"
        );
    }
}

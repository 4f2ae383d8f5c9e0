//! Figures written on the hot path without locks or locked instructions, read by `/metrics`.
//!
//! Every figure here has exactly one writing thread: a core (its executor thread) or the storage
//! thread. The writer bumps a relaxed atomic with a plain load and store ([`Counter::add`]): no
//! `lock`-prefixed instruction, the cost of a `Cell`, and still readable from another thread. `/metrics`,
//! on whichever core serves it, reads every core's figures and adds them up.
//!
//! A core reaches its own figures through a thread-local set once at start-up ([`install`]), so a hook
//! at a call site is one line (`metrics::invocation_started(service)`) with nothing threaded through
//! the engine. Outside an installed thread (unit tests, other threads) the hooks do nothing.
//!
//! Labels are bounded: the `service` label comes from an invocation, and invocations only exist for
//! registered services; past [`SERVICES_MAX`] distinct names on one core the rest count under
//! [`OTHER_SERVICE`]. Keys and invocation ids are never labels.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Distinct service labels one core keeps; more registered services than this is far beyond any
/// deployment we know of, and a bound keeps a bug from growing `/metrics` without end.
pub const SERVICES_MAX: usize = 1024;
/// The label of services past [`SERVICES_MAX`].
pub const OTHER_SERVICE: &str = "_other";

/// Upper bounds (seconds) of invoker attempt durations: from a trivial handler (ms) to a long call.
pub const ATTEMPT_SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds (seconds) of one RocksDB group commit: a WAL append without fsync is tens of µs, an
/// fsync milliseconds.
pub const WRITE_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Upper bounds of put/delete operations per group commit (powers of two).
pub const BATCH_OPS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];
/// Upper bounds of the bytes of one group commit's write batch (powers of four from 256 B to 16 MiB).
pub const BATCH_BYTES: &[f64] = &[
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];

/// A number with one writing thread, readable from any (see the module docs).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning thread calls this: a second writer could lose increments (never
    /// corrupt memory), which is why every figure has one owner.
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Subtracts `n` (gauges). Owning thread only, like [`add`](Self::add).
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    /// Sets the value (a gauge rebuilt from storage). Owning thread only.
    pub fn set(&self, n: u64) {
        self.0.store(n, Relaxed);
    }

    /// The current value, from any thread.
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A histogram with fixed upper bounds and one writing thread.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// A count per bucket (not cumulative), then the overflow (`+Inf`).
    buckets: Box<[Counter]>,
    /// The sum of the observed values, as `f64` bits.
    sum: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| Counter::default()).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Records `value`. Owning thread only.
    pub fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        self.buckets[bucket].add(1);
        let sum = f64::from_bits(self.sum.load(Relaxed)) + value;
        self.sum.store(sum.to_bits(), Relaxed);
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// What was recorded so far, from any thread.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: self.bounds,
            buckets: self.buckets.iter().map(Counter::get).collect(),
            sum: f64::from_bits(self.sum.load(Relaxed)),
        }
    }
}

/// Counts read from one or more [`Histogram`]s over the same bounds.
#[derive(Debug, Clone)]
pub struct HistogramSnapshot {
    bounds: &'static [f64],
    buckets: Vec<u64>,
    sum: f64,
}

impl HistogramSnapshot {
    /// Adds another snapshot over the same bounds (another core's).
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum += other.sum;
    }

    /// Observations recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The Prometheus text of this histogram: `_bucket` (cumulative, with `+Inf`), `_sum`, `_count`.
    /// `labels` are written before `le` (`service="x",` or empty).
    pub fn render(&self, text: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count;
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(text, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        let labels = labels.trim_end_matches(',');
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(text, "{name}_sum{} {}", braces(labels), self.sum);
        let _ = writeln!(text, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// Writes `# HELP` and `# TYPE` lines.
pub fn header(text: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(text, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Invocation counters of one service on one core.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Invocations started (written with their input entry; not those resumed at recovery).
    pub started: Counter,
    /// Invocations that ended with a result.
    pub completed: Counter,
    /// Invocations that ended with an error (terminal failure, out of retries, cancelled).
    pub failed: Counter,
    /// Failed attempts followed by another attempt.
    pub retried: Counter,
}

/// One core's figures.
#[derive(Debug)]
pub struct Core {
    /// The per-service counters, for readers; the core appends a service the first time it sees it
    /// (the only time it takes this lock).
    services: Mutex<Vec<(String, Arc<ServiceCounters>)>>,
    /// Journal entries appended from what endpoints sent (input entries not included).
    pub journal_entries: Counter,
    /// Invocations waiting for their next attempt after a failure (a gauge).
    pub backing_off: Counter,
    /// How long invoker attempts lasted, from holding a slot to their end (done, suspended, failed).
    pub attempt_seconds: Histogram,
    /// Attempts of keyed instances whose eager state came from the state cache.
    pub state_cache_hits: Counter,
    /// Attempts of keyed instances whose eager state was read from storage.
    pub state_cache_misses: Counter,
    /// Bytes the state cache holds (a gauge).
    pub state_cache_bytes: Counter,
    /// Rows of transient invocations never written: held, then cancelled by the invocation's end
    /// (see `partition::transient`).
    pub transient_rows_elided: Counter,
}

impl Default for Core {
    fn default() -> Self {
        Core {
            services: Mutex::default(),
            journal_entries: Counter::default(),
            backing_off: Counter::default(),
            attempt_seconds: Histogram::new(ATTEMPT_SECONDS),
            state_cache_hits: Counter::default(),
            state_cache_misses: Counter::default(),
            state_cache_bytes: Counter::default(),
            transient_rows_elided: Counter::default(),
        }
    }
}

/// Every core's figures (index = core), for `/metrics`.
#[derive(Debug)]
pub struct Cores(Vec<Arc<Core>>);

impl Cores {
    /// Figures for `cores` executors.
    pub fn new(cores: usize) -> Cores {
        Cores((0..cores).map(|_| Arc::new(Core::default())).collect())
    }

    /// Core `core`'s figures (to [`install`] on its thread).
    pub fn core(&self, core: usize) -> Arc<Core> {
        self.0[core].clone()
    }

    /// The Prometheus text of every core's figures, summed over cores.
    pub fn render(&self, text: &mut String) {
        let mut services: std::collections::BTreeMap<String, [u64; 4]> = Default::default();
        for core in &self.0 {
            let list = core.services.lock().unwrap_or_else(|e| e.into_inner());
            for (name, c) in list.iter() {
                let sum = services.entry(name.clone()).or_default();
                for (total, counter) in
                    sum.iter_mut()
                        .zip([&c.started, &c.completed, &c.failed, &c.retried])
                {
                    *total += counter.get();
                }
            }
        }
        let series = [
            (
                "restate_invocations_started_total",
                "Invocations started, by service (not those resumed after a restart).",
            ),
            (
                "restate_invocations_completed_total",
                "Invocations that ended with a result, by service.",
            ),
            (
                "restate_invocations_failed_total",
                "Invocations that ended with an error (terminal, out of retries, cancelled), by service.",
            ),
            (
                "restate_invocations_retried_total",
                "Failed invoker attempts that were retried, by service.",
            ),
        ];
        for (i, (name, help)) in series.iter().enumerate() {
            header(text, name, "counter", help);
            for (service, values) in &services {
                let _ = writeln!(
                    text,
                    "{name}{{service=\"{}\"}} {}",
                    escape_label(service),
                    values[i]
                );
            }
        }
        let sum = |f: fn(&Core) -> &Counter| -> u64 { self.0.iter().map(|c| f(c).get()).sum() };
        header(
            text,
            "restate_journal_entries_appended_total",
            "counter",
            "Journal entries appended from what service endpoints sent (input entries not included).",
        );
        let _ = writeln!(
            text,
            "restate_journal_entries_appended_total {}",
            sum(|c| &c.journal_entries)
        );
        header(
            text,
            "restate_invocations_backing_off",
            "gauge",
            "Invocations waiting for their next attempt after a failed one.",
        );
        let _ = writeln!(
            text,
            "restate_invocations_backing_off {}",
            sum(|c| &c.backing_off)
        );
        for (name, kind, help, counter) in [
            (
                "restate_state_cache_hits_total",
                "counter",
                "Attempts of keyed instances whose eager state came from the state cache.",
                (|c| &c.state_cache_hits) as fn(&Core) -> &Counter,
            ),
            (
                "restate_state_cache_misses_total",
                "counter",
                "Attempts of keyed instances whose eager state was read from storage.",
                |c| &c.state_cache_misses,
            ),
            (
                "restate_storage_transient_rows_elided_total",
                "counter",
                "Row writes and deletes of short-lived invocations that never reached storage: held in memory, then cancelled by the invocation's end.",
                |c| &c.transient_rows_elided,
            ),
            (
                "restate_state_cache_bytes",
                "gauge",
                "Bytes held by the state caches of all cores (worker.invoker.state_cache_bytes each).",
                |c| &c.state_cache_bytes,
            ),
        ] {
            header(text, name, kind, help);
            let _ = writeln!(text, "{name} {}", sum(counter));
        }
        let name = "restate_invoker_attempt_duration_seconds";
        header(
            text,
            name,
            "histogram",
            "Invoker attempts, from holding a slot to their end (done, suspended or failed).",
        );
        let mut attempts = Histogram::new(ATTEMPT_SECONDS).snapshot();
        for core in &self.0 {
            attempts.merge(&core.attempt_seconds.snapshot());
        }
        attempts.render(text, name, "");
    }
}

/// A label value in the text format: backslash, double quote and line feed escaped.
pub fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What a core's thread holds: its figures and its own index of them by service (no lock).
struct Local {
    core: Arc<Core>,
    services: HashMap<String, Arc<ServiceCounters>>,
    other: Option<Arc<ServiceCounters>>,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

/// Makes `core` the figures that this thread's hooks write. Called once by each core at start-up.
pub fn install(core: Arc<Core>) {
    LOCAL.with(|local| {
        *local.borrow_mut() = Some(Local {
            core,
            services: HashMap::new(),
            other: None,
        })
    });
}

fn with_core(f: impl FnOnce(&Core)) {
    LOCAL.with(|local| {
        if let Some(local) = local.borrow().as_ref() {
            f(&local.core)
        }
    });
}

fn with_service(service: &str, f: impl FnOnce(&ServiceCounters)) {
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let Some(local) = local.as_mut() else { return };
        if let Some(counters) = local.services.get(service) {
            return f(counters);
        }
        if local.services.len() >= SERVICES_MAX {
            let core = &local.core;
            let other = local
                .other
                .get_or_insert_with(|| register(core, OTHER_SERVICE));
            return f(other);
        }
        let counters = register(&local.core, service);
        f(&counters);
        local.services.insert(service.to_owned(), counters);
    });
}

fn register(core: &Core, service: &str) -> Arc<ServiceCounters> {
    let counters = Arc::new(ServiceCounters::default());
    core.services
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((service.to_owned(), counters.clone()));
    counters
}

/// An invocation of `service` started (its input entry is being written).
pub fn invocation_started(service: &str) {
    with_service(service, |c| c.started.add(1));
}

/// An invocation of `service` ended: with a result (`ok`) or an error.
pub fn invocation_ended(service: &str, ok: bool) {
    with_service(service, |c| {
        if ok {
            c.completed.add(1)
        } else {
            c.failed.add(1)
        }
    });
}

/// An attempt of an invocation of `service` failed and another will follow.
pub fn invocation_retried(service: &str) {
    with_service(service, |c| c.retried.add(1));
}

/// A journal entry sent by an endpoint was appended durably.
pub fn journal_entry_appended() {
    with_core(|c| c.journal_entries.add(1));
}

/// An attempt's eager state came from the state cache (`hit`) or from storage.
pub fn state_cache_lookup(hit: bool) {
    with_core(|c| {
        if hit {
            c.state_cache_hits.add(1)
        } else {
            c.state_cache_misses.add(1)
        }
    });
}

/// `rows` row operations were cancelled before reaching storage (see `partition::transient`).
pub fn transient_rows_elided(rows: usize) {
    with_core(|c| c.transient_rows_elided.add(rows as u64));
}

/// The state cache now holds `bytes`.
pub fn state_cache_resized(bytes: usize) {
    with_core(|c| c.state_cache_bytes.set(bytes as u64));
}

/// An invoker attempt that held a slot for `duration` ended.
pub fn attempt_ended(duration: Duration) {
    with_core(|c| c.attempt_seconds.observe_duration(duration));
}

/// Counts an invocation as backing off until the guard is dropped.
pub fn backing_off() -> BackingOff {
    with_core(|c| c.backing_off.add(1));
    BackingOff(())
}

/// Held while an invocation waits for its next attempt (see [`backing_off`]).
pub struct BackingOff(());

impl Drop for BackingOff {
    fn drop(&mut self) {
        with_core(|c| c.backing_off.sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.5, 7.0] {
            h.observe(v);
        }
        let mut text = String::new();
        h.snapshot().render(&mut text, "x", "service=\"a\",");
        assert_eq!(
            text,
            "x_bucket{service=\"a\",le=\"1\"} 1\nx_bucket{service=\"a\",le=\"2\"} 3\n\
             x_bucket{service=\"a\",le=\"+Inf\"} 4\nx_sum{service=\"a\"} 10.5\nx_count{service=\"a\"} 4\n"
        );
    }

    #[test]
    fn hooks_count_per_service_on_the_installed_core_and_cap_the_labels() {
        let cores = Cores::new(1);
        invocation_started("before-install"); // not installed: ignored
        install(cores.core(0));
        invocation_started("a");
        invocation_started("a");
        invocation_ended("a", true);
        invocation_ended("b", false);
        invocation_retried("b");
        {
            let _guard = backing_off();
            assert_eq!(cores.core(0).backing_off.get(), 1);
        }
        for i in 0..SERVICES_MAX + 5 {
            invocation_started(&format!("s{i}"));
        }
        let mut text = String::new();
        cores.render(&mut text);
        assert!(text.contains("restate_invocations_started_total{service=\"a\"} 2\n"));
        assert!(text.contains("restate_invocations_completed_total{service=\"a\"} 1\n"));
        assert!(text.contains("restate_invocations_failed_total{service=\"b\"} 1\n"));
        assert!(text.contains("restate_invocations_retried_total{service=\"b\"} 1\n"));
        assert!(text.contains("restate_invocations_backing_off 0\n"));
        assert!(!text.contains("before-install"));
        // a, b and s0.. fill the table; the last 7 names count as one.
        assert!(text.contains("restate_invocations_started_total{service=\"_other\"} 7\n"));
        let labels = text
            .lines()
            .filter(|l| l.starts_with("restate_invocations_started_total{"))
            .count();
        assert_eq!(labels, SERVICES_MAX + 1);
    }
}

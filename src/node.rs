//! Handles the runtime gives every server of every core: what a request handler may look at.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use crate::http::server::{Counters, PortLimits};
use crate::shutdown::Shutdown;
use crate::storage::Storage;

/// Node-wide, thread-safe handles (cloned into each core).
#[derive(Clone)]
pub struct NodeState {
    /// Number of executors.
    pub cores: usize,
    /// Cores that have bound all their listeners; `/health` is 200 once it equals `cores`.
    pub ready_cores: Arc<AtomicUsize>,
    /// Cores still draining their connections at shutdown; a core stops only when this reaches 0.
    pub draining_cores: Arc<AtomicUsize>,
    /// The storage thread.
    pub storage: Storage,
    /// The process-wide shutdown.
    pub shutdown: Shutdown,
    /// HTTP counters of all servers.
    pub http_counters: Arc<Counters>,
    /// The connection limit of each port (all cores together).
    pub port_limits: PortLimits,
    /// Each core's figures for /metrics (index = core).
    pub gauges: Arc<Vec<Arc<CoreGauges>>>,
    /// Each core's invocation, journal and attempt figures, written by that core without locks.
    pub core_metrics: Arc<crate::metrics::Cores>,
    /// Ingress requests by protocol and code, and their latencies.
    pub ingress_metrics: Arc<crate::ingress::metrics::IngressMetrics>,
    /// Discoveries in flight on the node (`meta.max_concurrent_discoveries`).
    pub discoveries: Arc<crate::meta::DiscoverySlots>,
}

/// One core's figures for `/metrics`: the invoker's are live, the partition's are sampled every second
/// by the core (`runtime::sample_gauges`). Relaxed atomics: each is written by its core only.
#[derive(Debug, Default)]
pub struct CoreGauges {
    /// Attempts holding one of the core's invoker slots.
    pub attempts_running: AtomicU64,
    /// Attempts waiting for a slot.
    pub attempts_waiting_for_slot: AtomicU64,
    /// Invocations whose attempts the core's invoker drives now (connecting, waiting for a slot or
    /// running; not those backing off before a retry): the core's load, by which the ingress places
    /// fresh unkeyed invocations (`worker.ingress_grpc.local_placement_slack`).
    pub invocations_driven: AtomicU64,
    /// How long the longest current wait for a slot has lasted, in milliseconds (sampled).
    pub longest_slot_wait_ms: AtomicU64,
    /// Attempts told to suspend because others waited for a slot (a counter).
    pub preemptions: AtomicU64,
    /// Invocations held by the core's partitions, running or suspended (sampled).
    pub invocations: AtomicU64,
    /// Of those, the suspended ones (sampled).
    pub suspended: AtomicU64,
    /// Invocations waiting in the core's inboxes (sampled).
    pub inbox_queued: AtomicU64,
    /// Outbox messages waiting to be shipped (sampled).
    pub outbox_backlog: AtomicU64,
}

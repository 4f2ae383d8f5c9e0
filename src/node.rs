//! Handles the runtime gives every server of every core: what a request handler may look at.

use std::sync::atomic::AtomicUsize;
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
    /// Discoveries in flight on the node (`meta.max_concurrent_discoveries`).
    pub discoveries: Arc<crate::meta::DiscoverySlots>,
}

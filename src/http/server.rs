//! One HTTP server of one core: an accept loop over this core's SO_REUSEPORT listener, and a task per
//! connection speaking HTTP/1.1 or HTTP/2 (prior knowledge), whichever the client starts with.

use std::cell::Cell;
use std::convert::Infallible;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{select, Either, LocalBoxFuture};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Gate;
use hyper::body::Incoming;
use hyper_util::server::conn::auto;

use super::body::StallLimit;
use super::io::{Activity, InFlightBody, State};
use super::{Body, Io, LocalExec};
use crate::shutdown::Signal;

/// A request handler of one server on one core.
pub type Handler =
    Rc<dyn Fn(http::Request<Incoming>) -> LocalBoxFuture<'static, http::Response<Body>>>;

/// Limits every connection of a core obeys (from `runtime.*` config).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections this core accepts over all its servers (deprecated
    /// `runtime.max_connections_per_core`); 0 = no such cap, only the per-port [`PortLimit`]s.
    pub max_connections: usize,
    /// Largest request head accepted, in bytes.
    pub max_header_bytes: usize,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// A request head must be complete this long after its first byte.
    pub header_read_timeout: Duration,
    /// A request body delivering nothing for this long fails (see [`super::body`]).
    pub body_stall_timeout: Duration,
}

/// The connection limit of one port, shared by the accept loops of every core (per process).
#[derive(Debug)]
pub struct PortLimit {
    /// Most connections open at once on this port.
    pub max: usize,
    open: AtomicUsize,
}

impl PortLimit {
    /// A limit of `max` connections.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: AtomicUsize::new(0),
        })
    }

    /// Connections open on this port right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a slot, or `None` when the port is full.
    fn acquire(self: &Arc<Self>) -> Option<PortSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| PortSlot(self.clone()))
    }
}

/// The connection limits of the three ports of a node, shared by all cores.
#[derive(Debug, Clone)]
pub struct PortLimits {
    /// `worker.ingress_grpc.max_connections` (as fitted at start).
    pub ingress: Arc<PortLimit>,
    /// `meta.max_connections`.
    pub meta: Arc<PortLimit>,
    /// `worker.storage_grpc.max_connections`.
    pub storage: Arc<PortLimit>,
}

/// One open connection of a port; frees its slot when dropped.
struct PortSlot(Arc<PortLimit>);

impl Drop for PortSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Per-core state shared by the servers of one core.
pub struct CoreServers {
    /// Limits from the config.
    pub limits: Limits,
    /// Connections open on this core right now, over all servers.
    open: Cell<usize>,
    /// Every connection task passes this gate; shutdown waits for it to drain.
    gate: Gate,
    /// Counters shared with `/metrics`.
    pub counters: Arc<Counters>,
}

/// Process-wide HTTP counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connections accepted, all cores and servers.
    pub connections_accepted: AtomicU64,
    /// Connections refused because their port (or a core) was at its connection limit.
    pub connections_refused: AtomicU64,
    /// Connections closed because a request head was not complete within the header read timeout.
    pub header_timeouts: AtomicU64,
    /// Connections that ended with a protocol or IO error (garbage, timeouts mid-request); not clients
    /// that reset or closed their connection.
    pub connection_errors: AtomicU64,
}

impl CoreServers {
    /// State for one core.
    pub fn new(limits: Limits, counters: Arc<Counters>) -> Rc<Self> {
        Rc::new(Self {
            limits,
            open: Cell::new(0),
            gate: Gate::new(),
            counters,
        })
    }

    /// Waits until every connection task of this core has ended, at most `grace`. Returns false when the
    /// grace period ran out first.
    pub async fn drain(&self, grace: Duration) -> bool {
        glommio::timer::timeout(grace, async {
            let _ = self.gate.close().await;
            Ok(())
        })
        .await
        .is_ok()
    }
}

/// Accepts connections until shutdown; each connection runs as its own task through the core's gate.
/// `port` is shared with the same server's accept loops on the other cores.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    handler: Handler,
    port: Arc<PortLimit>,
    core: Rc<CoreServers>,
    shutdown: Signal,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = {
            let accept = pin!(listener.accept());
            match select(accept, shutdown.clone()).await {
                Either::Left((accepted, _)) => accepted,
                Either::Right(_) => break,
            }
        };
        let stream = match accepted {
            Ok(stream) => {
                backoff = Duration::from_millis(5);
                stream
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!(server = name; "accept failed: {e}");
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let core_full =
            core.limits.max_connections > 0 && core.open.get() >= core.limits.max_connections;
        let slot = match port.acquire() {
            Some(slot) if !core_full => slot,
            _ => {
                core.counters
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                log::debug!(
                    server = name, open = port.open(), max = port.max;
                    "connection refused: port at its connection limit"
                );
                drop(stream);
                continue;
            }
        };
        core.counters
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        core.open.set(core.open.get() + 1);
        let task = serve_connection(
            name,
            stream,
            handler.clone(),
            core.clone(),
            shutdown.clone(),
        );
        let task = async move {
            task.await;
            drop(slot);
        };
        if let Ok(task) = core.gate.spawn(task) {
            task.detach();
        } else {
            // The gate is closing: we are shutting down (the dropped task freed the port slot).
            core.open.set(core.open.get() - 1);
            break;
        }
    }
    log::debug!(server = name; "stopped accepting");
}

async fn serve_connection(
    name: &'static str,
    stream: TcpStream,
    handler: Handler,
    core: Rc<CoreServers>,
    shutdown: Signal,
) {
    let activity = Activity::new();
    let io = Io::new(stream, activity.clone());
    let service = {
        let activity = activity.clone();
        let stall = StallLimit(core.limits.body_stall_timeout);
        hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            let in_flight = activity.enter();
            request.extensions_mut().insert(stall);
            let response = handler(request);
            async move {
                let response = response.await;
                Ok::<_, Infallible>(response.map(|body| InFlightBody::new(body, in_flight)))
            }
        })
    };
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .max_buf_size(core.limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .max_header_list_size(core.limits.max_header_bytes as u32)
        .max_concurrent_streams(1024);
    let mut connection = pin!(builder.serve_connection(io, service));
    let watchdog = pin!(watchdog(activity, &core.limits));
    let result = match select(connection.as_mut(), select(watchdog, shutdown)).await {
        Either::Left((result, _)) => result,
        Either::Right((Either::Left((Expired::Idle, _)), _)) => {
            log::debug!(server = name; "closing idle connection");
            Ok(())
        }
        Either::Right((Either::Left((Expired::HeaderRead, _)), _)) => {
            core.counters
                .header_timeouts
                .fetch_add(1, Ordering::Relaxed);
            log::debug!(server = name; "closing connection: request head not complete in time");
            // HTTP/2 gets a GOAWAY; a client that does not even read that is dropped soon after.
            connection.as_mut().graceful_shutdown();
            let linger = core.limits.header_read_timeout.min(GOAWAY_LINGER);
            let _ = glommio::timer::timeout(linger, async {
                let _ = connection.await;
                Ok(())
            })
            .await;
            Ok(())
        }
        Either::Right((Either::Right(_), _)) => {
            // Finish what is in flight: HTTP/2 sends GOAWAY, HTTP/1.1 closes after the current response.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match result {
        Err(e) if is_client_close(e.as_ref()) => {
            log::debug!(server = name; "client closed the connection: {e}");
        }
        Err(e) => {
            core.counters
                .connection_errors
                .fetch_add(1, Ordering::Relaxed);
            log::debug!(server = name; "connection ended with an error: {e}");
        }
        Ok(()) => {}
    }
    core.open.set(core.open.get() - 1);
}

/// How long a connection closed for a slow request head may take to receive its GOAWAY.
const GOAWAY_LINGER: Duration = Duration::from_secs(1);

/// Why the watchdog ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// Nothing in flight and nothing received for the idle timeout.
    Idle,
    /// Bytes of a request arrived, but no complete head within the header read timeout.
    HeaderRead,
}

/// True when a connection's error is only its client going away (a reset, a closed pipe, or a socket
/// already disconnected when hyper shuts it down), which `restate_http_connection_errors_total` does
/// not count.
fn is_client_close(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, NotConnected};
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionReset | BrokenPipe | ConnectionAborted | NotConnected
            );
        }
        next = e.source();
    }
    false
}

/// Completes when the connection has received nothing for the idle timeout with no request in flight,
/// or has been receiving a request head (HTTP/2: frames without a request) for the header read timeout. Requests in flight are
/// bounded elsewhere (body stall timeout, the handlers' own deadlines).
async fn watchdog(activity: Rc<Activity>, limits: &Limits) -> Expired {
    loop {
        let (deadline, expired) = match activity.state() {
            State::Busy => {
                activity.changed().await;
                continue;
            }
            State::Idle { since } => (since + limits.idle_timeout, Expired::Idle),
            State::Streaming => (
                activity.last_progress() + limits.idle_timeout,
                Expired::Idle,
            ),
            State::ReadingHead { since } => {
                let head = since + limits.header_read_timeout;
                let quiet = activity.last_read() + limits.idle_timeout;
                if quiet < head {
                    (quiet, Expired::Idle)
                } else {
                    (head, Expired::HeaderRead)
                }
            }
        };
        let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
            return expired;
        };
        let sleep = pin!(glommio::timer::sleep(left));
        let changed = pin!(activity.changed());
        // Either way the loop re-reads the state: past the deadline with no change, it expires.
        let _ = select(sleep, changed).await;
    }
}

//! One HTTP server of one core: an accept loop over this core's SO_REUSEPORT listener, and a task per
//! connection speaking HTTP/1.1 or HTTP/2 (prior knowledge), whichever the client starts with.

use std::cell::Cell;
use std::convert::Infallible;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{select, Either, LocalBoxFuture};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Gate;
use hyper::body::Incoming;
use hyper_util::server::conn::auto;

use super::io::Activity;
use super::{Body, Io, LocalExec};
use crate::shutdown::Signal;

/// A request handler of one server on one core.
pub type Handler =
    Rc<dyn Fn(http::Request<Incoming>) -> LocalBoxFuture<'static, http::Response<Body>>>;

/// Limits every connection of a core obeys (from `runtime.*` config).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections this core accepts over all its servers.
    pub max_connections: usize,
    /// Largest request head accepted, in bytes.
    pub max_header_bytes: usize,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
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
    /// Connections refused because a core was at `max_connections_per_core`.
    pub connections_refused: AtomicU64,
    /// Connections that ended with a protocol or IO error (garbage, resets).
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
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    handler: Handler,
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
        if core.open.get() >= core.limits.max_connections {
            core.counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            log::debug!(server = name; "connection refused: core at max_connections_per_core");
            drop(stream);
            continue;
        }
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
        if let Ok(task) = core.gate.spawn(task) {
            task.detach();
        } else {
            // The gate is closing: we are shutting down.
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
        hyper::service::service_fn(move |request| {
            let in_flight = activity.enter();
            let response = handler(request);
            async move {
                let response = response.await;
                drop(in_flight);
                Ok::<_, Infallible>(response)
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
    let idle = pin!(idle_watchdog(activity, core.limits.idle_timeout));
    let result = match select(connection.as_mut(), select(idle, shutdown)).await {
        Either::Left((result, _)) => result,
        Either::Right((Either::Left(_), _)) => {
            log::debug!(server = name; "closing idle connection");
            Ok(())
        }
        Either::Right((Either::Right(_), _)) => {
            // Finish what is in flight: HTTP/2 sends GOAWAY, HTTP/1.1 closes after the current response.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        core.counters
            .connection_errors
            .fetch_add(1, Ordering::Relaxed);
        log::debug!(server = name; "connection ended with an error: {e}");
    }
    core.open.set(core.open.get() - 1);
}

/// Completes once the connection has had nothing in flight and received nothing for `timeout`.
async fn idle_watchdog(activity: Rc<Activity>, timeout: Duration) {
    loop {
        let wait = match activity.idle_since() {
            Some(since) => match timeout.checked_sub(since.elapsed()) {
                Some(left) => left,
                None => return,
            },
            None => timeout,
        };
        glommio::timer::sleep(wait.max(Duration::from_millis(10))).await;
    }
}

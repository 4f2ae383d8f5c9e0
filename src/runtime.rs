//! Wiring: opens storage, starts one glommio executor per core, and on each core binds its own
//! SO_REUSEPORT listener on every port and serves it; shuts everything down in order.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use glommio::net::TcpListener;
use glommio::{LocalExecutorPoolBuilder, PoolPlacement};

use crate::config::Config;
use crate::http::allow::AllowList;
use crate::http::auth;
use crate::http::limits::{self, ConnectionLimits};
use crate::http::server::{self, CoreServers, Counters, Limits, PortLimit, PortLimits};
use crate::invoker::Invoker;
use crate::node::{CoreGauges, NodeState};
use crate::partition::processor::Processor;
use crate::partition::router::{Inbox, Router};
use crate::schema::registry::Registry;
use crate::shutdown::Shutdown;
use crate::startup::{self, PortClaims};
use crate::storage::ordered::Ordered;
use crate::{ingress, meta, storage, storage_api};

/// Why the runtime stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This host, pod or port cannot run the node (io_uring, locked memory, a port in use).
    #[error(transparent)]
    Startup(#[from] startup::Error),
    /// Storage could not be opened (or refused the data directory).
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// The persisted schema registry could not be loaded.
    #[error(transparent)]
    Schema(#[from] crate::schema::Error),
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("core {core}: cannot bind the {server} server to {address}: {message}")]
    Bind {
        core: usize,
        server: &'static str,
        address: SocketAddr,
        message: String,
    },
    /// The executors could not be started or one of them failed.
    #[error("executor: {0}")]
    Executor(String),
    /// The TLS settings could not be loaded (`meta.tls_ca_file`, `worker.invoker.tls_ca_file`).
    #[error("{0}")]
    Tls(String),
    /// `meta.allowed_endpoints` has an entry that is no host, address or CIDR (config validation
    /// refuses it first).
    #[error("meta.allowed_endpoints: {0}")]
    AllowList(String),
    /// The signal handler could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

impl Error {
    /// Start-up failures are terminal: a restart with the same config fails the same way, except a
    /// port still held by a previous process.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Startup(e) => e.is_transient(),
            e => matches!(e, Error::Bind { .. }),
        }
    }
}

/// Runs the node until SIGTERM/SIGINT (or a fatal error), then drains and closes storage.
pub fn run(config: Config) -> Result<(), Error> {
    let config = Arc::new(config);
    let mut ports = preflight(&config, config.runtime.cores)?;
    std::fs::create_dir_all(&config.meta.storage_path).map_err(|source| Error::CreateDir {
        path: config.meta.storage_path.display().to_string(),
        source,
    })?;
    let registry = Registry::load(&config.meta.storage_path)?;
    log::info!(
        endpoints = registry.snapshot().endpoints.len(), services = registry.snapshot().services.len();
        "schema registry loaded"
    );
    let rocksdb = &config.worker.storage_rocksdb;
    let storage = storage::open(rocksdb, &rocksdb.path, config.worker.partitions)?;
    log::info!(
        path = rocksdb.path.display().to_string(), sync_writes = rocksdb.sync_writes;
        "storage open"
    );
    let shutdown = Shutdown::new();
    install_signal_handlers(shutdown.clone())?;
    let node = NodeState {
        cores: config.runtime.cores,
        ready_cores: Arc::new(AtomicUsize::new(0)),
        draining_cores: Arc::new(AtomicUsize::new(config.runtime.cores)),
        storage: storage.handle(),
        shutdown: shutdown.clone(),
        http_counters: Arc::new(Counters::default()),
        port_limits: port_limits(&config),
        discoveries: meta::DiscoverySlots::new(config.meta.max_concurrent_discoveries),
        ingress_metrics: Arc::default(),
        core_metrics: Arc::new(crate::metrics::Cores::new(config.runtime.cores)),
        gauges: Arc::new(
            (0..config.runtime.cores)
                .map(|_| Arc::new(CoreGauges::default()))
                .collect(),
        ),
    };
    for warning in config.exposure_warnings() {
        log::warn!("{warning}");
    }
    let (router, inboxes) = Router::new(
        config.runtime.cores,
        config.worker.partitions,
        config.worker.channel_size,
    );
    let inboxes: Arc<Mutex<Vec<Option<Inbox>>>> =
        Arc::new(Mutex::new(inboxes.into_iter().map(Some).collect()));
    let next_core = Arc::new(AtomicUsize::new(0));
    // The executors bind with SO_REUSEPORT, which the plain probe listeners would block.
    ports.release_probes();
    let ports = Arc::new(ports);
    let started = {
        let config = config.clone();
        LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(config.runtime.cores))
            .name("restate-core")
            .io_memory(config.runtime.io_memory_bytes)
            .on_all_shards(move || {
                let core = next_core.fetch_add(1, Ordering::SeqCst);
                let node = node.clone();
                let config = config.clone();
                let registry = registry.clone();
                let router = router.clone();
                let ports = ports.clone();
                let inbox = inboxes.lock().unwrap_or_else(|e| e.into_inner())[core].take();
                async move {
                    let inbox = inbox.expect("one inbox per core");
                    run_core(core, ports, node, registry, router, inbox, config).await
                }
            })
    };
    let result = match started {
        Ok(pool) => {
            let mut first_error = None;
            for joined in pool.join_all() {
                let outcome = joined
                    .map_err(|e| Error::Executor(e.to_string()))
                    .and_then(|r| r);
                if let Err(e) = outcome {
                    shutdown.trigger();
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        }
        Err(e) => Err(Error::Executor(e.to_string())),
    };
    storage.close();
    log::info!("storage closed");
    result
}

/// Checks io_uring and the locked-memory limit, and claims the three ports, before anything is created
/// on disk (see [`startup`]).
fn preflight(config: &Config, cores: usize) -> Result<PortClaims, Error> {
    startup::check_io_uring()?;
    let runtime = &config.runtime;
    if let startup::MemLock::BelowBuffers {
        limit_kib,
        buffers_kib,
    } = startup::check_memlock(runtime.cores, runtime.io_memory_bytes)?
    {
        log::warn!(
            limit_kib, buffers_kib;
            "RLIMIT_MEMLOCK ({limit_kib} KiB) is below the {buffers_kib} KiB that {} cores with \
             runtime.io_memory_bytes = {} register with io_uring; some cores run without fixed buffers \
             (raise `ulimit -l`)",
            runtime.cores, runtime.io_memory_bytes
        );
    }
    let ports = [
        startup::Port {
            server: "ingress",
            address: config.worker.ingress_grpc.bind_address,
            key: "worker.ingress_grpc.bind_address",
        },
        startup::Port {
            server: "meta",
            address: config.meta.rest_address,
            key: "meta.rest_address",
        },
        startup::Port {
            server: "storage",
            address: config.worker.storage_grpc.bind_address,
            key: "worker.storage_grpc.bind_address",
        },
    ];
    Ok(PortClaims::acquire(
        &ports,
        cores,
        config.runtime.port_release_wait,
    )?)
}

/// The configured connection limits of the three ports, fitted to `RLIMIT_NOFILE` (see [`limits`]).
fn port_limits(config: &Config) -> PortLimits {
    if config.runtime.max_connections_per_core > 0 {
        log::warn!(
            "runtime.max_connections_per_core is deprecated: each port has its own limit now \
             (worker.ingress_grpc.max_connections, meta.max_connections, \
             worker.storage_grpc.max_connections); the per-core cap of {} over all ports still \
             applies, so a flood on one port can lock out the others",
            config.runtime.max_connections_per_core
        );
    }
    let fitted = limits::fit_to_nofile(
        ConnectionLimits {
            ingress: config.worker.ingress_grpc.max_connections,
            meta: config.meta.max_connections,
            storage: config.worker.storage_grpc.max_connections,
        },
        config.runtime.file_descriptor_reserve,
    );
    PortLimits {
        ingress: PortLimit::new(fitted.ingress),
        meta: PortLimit::new(fitted.meta),
        storage: PortLimit::new(fitted.storage),
    }
}

async fn run_core(
    core: usize,
    ports: Arc<PortClaims>,
    node: NodeState,
    registry: Arc<Registry>,
    router: Router,
    inbox: Inbox,
    config: Arc<Config>,
) -> Result<(), Error> {
    let draining = node.draining_cores.clone();
    let shutdown = node.shutdown.clone();
    let result = serve_core(core, ports, node, registry, router, inbox, config).await;
    if result.is_err() {
        // This core never serves: the others must neither keep running nor wait for it.
        shutdown.trigger();
        draining.fetch_sub(1, Ordering::SeqCst);
    }
    result
}

/// `ports` are this node's port claims, released once every core has bound its listeners.
async fn serve_core(
    core: usize,
    ports: Arc<PortClaims>,
    node: NodeState,
    registry: Arc<Registry>,
    router: Router,
    inbox: Inbox,
    config: Arc<Config>,
) -> Result<(), Error> {
    let schemas = registry.attach_core();
    crate::http::coalesce_writes();
    crate::metrics::install(node.core_metrics.core(core));
    let processor = Processor::new(
        core,
        Ordered::new(
            node.storage.clone(),
            config.worker.storage_rocksdb.max_batch_requests,
        ),
        schemas.clone(),
        config.clone(),
        router.clone(),
    );
    let invoker_tls = crate::http::client::tls_config(&config.worker.invoker.tls_ca_file)
        .map_err(|e| Error::Tls(format!("worker.invoker.tls_ca_file: {e}")))?;
    let allow =
        Arc::new(AllowList::parse(&config.meta.allowed_endpoints).map_err(Error::AllowList)?);
    let gauges = node.gauges[core].clone();
    let invoker = Invoker::new(
        &config.worker.invoker,
        invoker_tls,
        allow.clone(),
        gauges.clone(),
    );
    invoker.install(&processor);
    let resumed = processor.recover().await?;
    let (queued, queued_argument_bytes) = processor.inbox_usage();
    log::info!(
        core, resumed, invocations = processor.invocation_count(), queued, queued_argument_bytes;
        "partitions recovered"
    );
    glommio::spawn_local(processor.clone().serve(inbox)).detach();
    glommio::spawn_local(sample_gauges(processor.clone(), invoker, gauges)).detach();
    glommio::spawn_local(processor.clone().expire_holds()).detach();
    let holder = processor.clone();
    glommio::spawn_local(purge_idempotency(
        processor.clone(),
        config.worker.ingress_grpc.idempotency_retention,
    ))
    .detach();
    let ingress_context = ingress::Context {
        config: config.worker.ingress_grpc.clone(),
        schemas,
        router: router.clone(),
        local: processor,
        core,
        shutdown: node.shutdown.clone(),
        metrics: node.ingress_metrics.clone(),
        gauges: node.gauges.clone(),
    };
    let meta_context = meta::Context {
        router: router.clone(),
        node: node.clone(),
        registry,
        config: Arc::new(config.meta.clone()),
        proxy: Config::effective_proxy(&config.meta.proxy_uri),
        tls: crate::http::client::tls_config(&config.meta.tls_ca_file)
            .map_err(|e| Error::Tls(format!("meta.tls_ca_file: {e}")))?,
        discoveries: node.discoveries.clone(),
        allow,
    };
    let bind = |server: &'static str, address: SocketAddr| {
        bind_listener(address).map_err(|e| Error::Bind {
            core,
            server,
            address,
            message: e.to_string(),
        })
    };
    let listeners = (|| {
        Ok::<_, Error>([
            (
                "ingress",
                bind("ingress", config.worker.ingress_grpc.bind_address)?,
            ),
            ("meta", bind("meta", config.meta.rest_address)?),
            (
                "storage",
                bind("storage", config.worker.storage_grpc.bind_address)?,
            ),
        ])
    })();
    let listeners = match listeners {
        Ok(listeners) => listeners,
        Err(e) => {
            node.shutdown.trigger();
            return Err(e);
        }
    };
    ports.core_bound();
    if core == 0 {
        log_addresses(&listeners);
    }
    let servers = CoreServers::new(
        Limits {
            max_connections: config.runtime.max_connections_per_core,
            max_header_bytes: config.runtime.max_header_bytes,
            idle_timeout: config.runtime.http_idle_timeout,
            header_read_timeout: config.runtime.http_header_read_timeout,
            body_stall_timeout: config.runtime.http_body_stall_timeout,
        },
        node.http_counters.clone(),
    );
    let accept_loops = listeners.into_iter().map(|(name, listener)| {
        let (handler, port) = match name {
            "ingress" => (
                ingress::handler(ingress_context.clone()),
                node.port_limits.ingress.clone(),
            ),
            "meta" => (
                auth::require_token(
                    meta::handler(meta_context.clone()),
                    auth::Token::new(&config.meta.auth_token),
                    meta::needs_no_token,
                    meta::unauthenticated,
                ),
                node.port_limits.meta.clone(),
            ),
            _ => (
                auth::require_token(
                    storage_api::handler(storage_api::Context {
                        storage: node.storage.clone(),
                        partitions: config.worker.partitions,
                        config: config.worker.storage_grpc.clone(),
                    }),
                    auth::Token::new(&config.worker.storage_grpc.auth_token),
                    |_, _| false,
                    crate::grpc::unauthenticated,
                ),
                node.port_limits.storage.clone(),
            ),
        };
        glommio::spawn_local(server::serve(
            name,
            listener,
            handler,
            port,
            servers.clone(),
            node.shutdown.signal(),
        ))
    });
    let accept_loops: Vec<_> = accept_loops.collect();
    node.ready_cores.fetch_add(1, Ordering::SeqCst);
    log::info!(core; "serving");
    join_all(accept_loops).await;
    drain(
        core,
        &servers,
        &node.draining_cores,
        config.shutdown_grace_period,
    )
    .await;
    // Invocations still running were accepted by callers now cut off; writing their held rows lets
    // them run again after the restart, as a written start would.
    if let Err(e) = holder.write_holds().await {
        log::warn!(core; "writing held invocation rows at shutdown failed: {e}");
    }
    Ok(())
}

/// This core's listener on `address`: `SO_REUSEPORT` so that every core has its own, and `SO_REUSEADDR`
/// so that the connections it leaves in TIME_WAIT carry it too and do not fail the next start's
/// plain-bind probe (see [`startup`]).
fn bind_listener(address: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{FromRawFd, IntoRawFd};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    // SAFETY: a bound, listening TCP socket; its ownership moves into the listener.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Logs where the three servers listen (once, from core 0: every core binds the same addresses).
fn log_addresses(listeners: &[(&'static str, TcpListener); 3]) {
    let address = |i: usize| {
        listeners[i]
            .1
            .local_addr()
            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string())
    };
    let (ingress, meta, storage) = (address(0), address(1), address(2));
    log::info!(
        ingress = ingress.as_str(), meta = meta.as_str(), storage = storage.as_str();
        "listening: ingress {ingress}, meta {meta}, storage {storage}"
    );
}

/// Waits for this core's connections to finish, then keeps the core running until every core has
/// drained (all within the grace period): an in-flight call on one core may need the partitions of
/// another to finish.
async fn drain(core: usize, servers: &Rc<CoreServers>, draining: &AtomicUsize, grace: Duration) {
    let deadline = std::time::Instant::now() + grace;
    if servers.drain(grace).await {
        log::debug!(core; "drained");
    } else {
        log::warn!(core; "grace period of {grace:?} over; dropping the connections still open");
    }
    draining.fetch_sub(1, Ordering::SeqCst);
    while draining.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

/// Copies the core's partition figures into its gauges once a second (for /metrics).
async fn sample_gauges(processor: Processor, invoker: Rc<Invoker>, gauges: Arc<CoreGauges>) {
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        let (invocations, suspended) = processor.invocation_counts();
        let (queued, _) = processor.inbox_usage();
        let (backlog, _) = processor.outbox_usage();
        gauges.invocations.store(invocations as u64, Relaxed);
        gauges.suspended.store(suspended as u64, Relaxed);
        gauges.inbox_queued.store(queued as u64, Relaxed);
        gauges.outbox_backlog.store(backlog as u64, Relaxed);
        gauges
            .longest_slot_wait_ms
            .store(invoker.longest_slot_wait_ms(), Relaxed);
        glommio::timer::sleep(Duration::from_secs(1)).await;
    }
}

/// Deletes expired idempotency results now and then (every tenth of the retention, at most a minute).
async fn purge_idempotency(processor: Processor, retention: Duration) {
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        glommio::timer::sleep(every).await;
        match processor.purge_idempotency().await {
            Ok(0) => {}
            Ok(n) => log::debug!(purged = n; "expired idempotency results deleted"),
            Err(e) => log::warn!("purging idempotency results failed: {e}"),
        }
    }
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once.
fn install_signal_handlers(shutdown: Shutdown) -> Result<(), Error> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(Error::Signals)?;
    std::thread::Builder::new()
        .name("restate-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if shutdown.is_triggered() {
                    log::warn!(signal; "second signal: exiting now");
                    std::process::exit(1);
                }
                log::info!(signal; "shutting down: no new connections, draining in-flight requests");
                shutdown.trigger();
            }
        })
        .map_err(Error::Signals)?;
    Ok(())
}

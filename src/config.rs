//! Configuration: defaults < TOML file < `RESTATE_*` environment variables.
//!
//! The tree keeps the key names of Restate 0.1.0 (`tracing.log_format`, `meta.rest_address`,
//! `worker.storage_rocksdb.path`, ...) so that the seed-era environment variables such as
//! `RESTATE_TRACING__LOG_FORMAT=Json` keep working, and adds our own keys in the same tree.
//! Every field documents itself; `config/restate.toml` lists every key with its default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::retry::RetryPolicy;

/// Prefix of every environment variable that overrides a config key.
pub const ENV_PREFIX: &str = "RESTATE_";
/// Environment variable naming the config file (same as `--config-file`).
pub const ENV_CONFIG_FILE: &str = "RESTATE_CONFIG";

/// Why a configuration could not be loaded. Every variant is terminal: the process refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("unknown config key `{key}` (from {origin})")]
    UnknownKey { key: String, origin: String },
    #[error("config key `{key}` (from {origin}): {message}")]
    BadEnvValue {
        key: String,
        origin: String,
        message: String,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl Error {
    /// Configuration errors never heal by retrying.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// The whole runtime configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// After SIGTERM/SIGINT, how long in-flight requests may run before the process exits anyway.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace_period: Duration,
    /// Logging.
    pub tracing: Tracing,
    /// The meta (admin REST) server.
    pub meta: Meta,
    /// The worker: ingress, storage, partitions.
    pub worker: Worker,
    /// Thread-per-core executors and their HTTP servers.
    pub runtime: Runtime,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            shutdown_grace_period: Duration::from_secs(60),
            tracing: Tracing::default(),
            meta: Meta::default(),
            worker: Worker::default(),
            runtime: Runtime::default(),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Tracing {
    /// Line format of the logs on stderr: `Pretty`, `Compact` or `Json` (case-insensitive).
    pub log_format: LogFormat,
    /// Log filter in `RUST_LOG` syntax; the `RUST_LOG` environment variable wins when set.
    pub filter: String,
}

impl Default for Tracing {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            filter: "warn,restate=info".to_owned(),
        }
    }
}

impl Tracing {
    /// The logging settings of a configuration that does not load as a whole, so that its error is
    /// logged as asked: `tracing.log_format` from the environment, else from the file, else the default.
    /// The filter stays the default one (a broken filter must not hide the error).
    pub fn best_effort(file: Option<&Path>, env: &[(String, String)]) -> Tracing {
        let parse = |s: &str| LogFormat::deserialize(toml::Value::String(s.to_owned())).ok();
        let from_env = env
            .iter()
            .find(|(k, _)| k == "RESTATE_TRACING__LOG_FORMAT")
            .and_then(|(_, v)| parse(v));
        let from_file = || {
            let table: toml::Table = std::fs::read_to_string(file?).ok()?.parse().ok()?;
            parse(table.get("tracing")?.get("log_format")?.as_str()?)
        };
        Tracing {
            log_format: from_env.or_else(from_file).unwrap_or_default(),
            ..Tracing::default()
        }
    }
}

/// How each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable, coloured when stderr is a terminal.
    #[default]
    Pretty,
    /// One short line per record, no colours.
    Compact,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and key-value fields.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Pretty => "Pretty",
            LogFormat::Compact => "Compact",
            LogFormat::Json => "Json",
        })
    }
}

impl Serialize for LogFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.to_ascii_lowercase().as_str() {
            "pretty" => Ok(LogFormat::Pretty),
            "compact" => Ok(LogFormat::Compact),
            "json" => Ok(LogFormat::Json),
            _ => Err(serde::de::Error::custom(format!(
                "unknown log format `{s}`, expected one of Pretty, Compact, Json"
            ))),
        }
    }
}

/// The meta (admin) server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Meta {
    /// Address of the meta REST API (health, metrics, service registration).
    pub rest_address: SocketAddr,
    /// Directory for metadata (registered endpoints), created at start; relative to the cwd.
    pub storage_path: PathBuf,
    /// HTTP proxy for discovery requests (`http://host:port`); empty: the `HTTP_PROXY` variable, if set.
    pub proxy_uri: String,
    /// PEM file of extra CA certificates trusted for https endpoints (Mozilla's roots always are).
    pub tls_ca_file: String,
    /// Largest request body the meta API accepts, in bytes.
    pub max_request_bytes: usize,
    /// Open connections to the meta port, over all cores (per process); past it new connections are
    /// closed at once. Separate from the other ports' limits, so a flood of ingress connections never
    /// locks out `/health`.
    pub max_connections: usize,
    /// Largest discovery response accepted from an endpoint, in bytes (checked while it is read).
    pub max_discovery_response_bytes: usize,
    /// Discoveries (registrations) in flight on the whole node; past it a registration is refused at
    /// once with 429. Each may buffer up to `max_discovery_response_bytes`.
    pub max_concurrent_discoveries: usize,
    /// Endpoint records the registry keeps (superseded ones are dropped); past it a registration that
    /// would add one is refused with 409.
    pub max_endpoints: usize,
    /// One discovery attempt (connect, request, response) may take this long.
    #[serde(with = "humantime_serde")]
    pub discovery_timeout: Duration,
    /// Retries of discovery on transient failures only (connection errors, timeouts, HTTP 408, 429,
    /// 502, 503, 504); any other answer fails the registration at once.
    pub discovery_retry_policy: RetryPolicy,
    /// Bearer token every meta request but `GET /health` must carry (`authorization: Bearer TOKEN`);
    /// empty: no authentication. Set it from the environment (`RESTATE_META__AUTH_TOKEN`) rather than
    /// in a file. See SECURITY.md.
    pub auth_token: String,
    /// Endpoint hosts that may be registered and invoked: host names (exact, case-insensitive; or
    /// `*.example.com` for its subdomains), IP addresses and CIDR blocks (`10.0.0.0/8`). A name is
    /// also allowed when every address it resolves to is in a listed block. Empty: any host. In the
    /// environment: comma-separated.
    pub allowed_endpoints: Vec<String>,
}

impl Default for Meta {
    fn default() -> Self {
        Self {
            rest_address: ([0, 0, 0, 0], 8081).into(),
            storage_path: PathBuf::from("target/meta/"),
            proxy_uri: String::new(),
            tls_ca_file: String::new(),
            max_request_bytes: 1 << 20,
            max_connections: 512,
            max_discovery_response_bytes: 4 << 20,
            max_concurrent_discoveries: 4,
            max_endpoints: 1000,
            discovery_timeout: Duration::from_secs(10),
            discovery_retry_policy: RetryPolicy::exponential(
                Duration::from_millis(100),
                2.0,
                Duration::from_secs(5),
                9,
            ),
            auth_token: String::new(),
            allowed_endpoints: Vec::new(),
        }
    }
}

/// The invoker: how the runtime calls service endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Invoker {
    /// HTTP proxy for calls to endpoints (`http://host:port`); empty: the `HTTP_PROXY` variable, if set.
    pub proxy_uri: String,
    /// PEM file of extra CA certificates trusted for https endpoints (Mozilla's roots always are).
    pub tls_ca_file: String,
    /// Retries of failed attempts (errors, broken connections, protocol violations), with replay.
    pub retry_policy: RetryPolicy,
    /// Bidi streams: with nothing sent or received for this long, the runtime closes its side so the
    /// SDK suspends. 0 = every endpoint is driven request/response.
    #[serde(with = "humantime_serde")]
    pub inactivity_timeout: Duration,
    /// Once only the response side is open, an attempt silent for this long is aborted (and retried).
    #[serde(with = "humantime_serde")]
    pub abort_timeout: Duration,
    /// An attempt that waited this long for one of the core's `concurrency_limit` slots is logged at
    /// WARN (at most one line per 10 s per core).
    #[serde(with = "humantime_serde")]
    pub slot_wait_warn_after: Duration,
    /// The instance's whole state is sent with Start when it is at most this many bytes; else none is
    /// sent and the state is marked partial (the SDK asks for each key).
    pub eager_state_size_limit: usize,
    /// Memory per core, in bytes, for the complete state of recently run keyed instances whose state
    /// fits `eager_state_size_limit`: their next attempt gets it without a storage read (kept in step
    /// with every state write the core decides). Counts state keys and values and each instance's
    /// key. 0 turns the cache off.
    pub state_cache_bytes: usize,
    /// Largest protocol message accepted from an endpoint, in bytes.
    pub message_size_limit: usize,
    /// Attempts in flight on one core; more wait for a slot. Also the most driver tasks a core keeps
    /// (about 2 KB each) for its next invocations once theirs ended.
    pub concurrency_limit: usize,
    /// HTTP/2 PING interval on connections to endpoints (0 = no pings).
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_interval: Duration,
    /// A connection whose PING is not answered within this long is closed (its attempts retried).
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_timeout: Duration,
    /// Attempts one HTTP/2 connection to an endpoint carries before the core opens another.
    pub max_streams_per_connection: usize,
    /// Connections one core opens to one endpoint (those being opened count); past it streams queue
    /// on the least busy one.
    pub max_connections_per_endpoint: usize,
    /// Getting a connection to an endpoint (waiting for one being opened, then TCP, TLS, HTTP/2
    /// handshake) that takes longer fails the attempt (retried per the retry policy). At least 1ms.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Entries of one attempt decided but not yet durable: the attempt reads the endpoint's next
    /// message without waiting for the previous entry's write (writes are ordered, and whatever the
    /// endpoint is sent back still waits for durability); past this many it waits for the oldest.
    pub max_pending_appends: usize,
}

impl Default for Invoker {
    fn default() -> Self {
        Self {
            proxy_uri: String::new(),
            tls_ca_file: String::new(),
            retry_policy: RetryPolicy::default(),
            inactivity_timeout: Duration::from_secs(60),
            abort_timeout: Duration::from_secs(60),
            slot_wait_warn_after: Duration::from_secs(10),
            eager_state_size_limit: 64 * 1024,
            state_cache_bytes: 16 << 20,
            message_size_limit: 32 << 20,
            concurrency_limit: 1000,
            http2_keep_alive_interval: Duration::from_secs(40),
            http2_keep_alive_timeout: Duration::from_secs(20),
            max_streams_per_connection: 100,
            max_connections_per_endpoint: 32,
            connect_timeout: Duration::from_secs(10),
            max_pending_appends: 64,
        }
    }
}

/// The worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Worker {
    /// Number of partitions of the key space. Recorded in the data directory at first start; starting
    /// with another value is refused.
    pub partitions: u32,
    /// Messages that may wait in each core's queue of work from other cores; senders wait past it.
    pub channel_size: usize,
    /// The ingress (gRPC and Connect) server.
    pub ingress_grpc: IngressGrpc,
    /// The read-only storage gRPC API.
    pub storage_grpc: StorageGrpc,
    /// The embedded RocksDB and its dedicated thread.
    pub storage_rocksdb: StorageRocksdb,
    /// Calls to service endpoints.
    pub invoker: Invoker,
    /// Durable timers (sleeps, delayed calls).
    pub timers: Timers,
    /// The per-key inboxes of invocations waiting for their key.
    pub inbox: Inbox,
    /// Shipping messages (calls, responses, awakeable results) between partitions.
    pub outbox: Outbox,
}

/// Shipping outbox messages between partitions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Outbox {
    /// Messages one core keeps in flight to other partitions at once (one per pair of producing and
    /// target partition, in order); the rest wait in the outbox table and in memory.
    pub max_in_flight: usize,
}

impl Default for Outbox {
    fn default() -> Self {
        Self { max_in_flight: 64 }
    }
}

/// Bounds of the per-key inboxes (invocations waiting while their key is busy).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Inbox {
    /// Invocations that may wait for one key; past it a caller gets RESOURCE_EXHAUSTED (a calling
    /// invocation gets that as its call's result; a one-way call from an invocation is dropped with a
    /// WARN).
    pub max_entries_per_key: usize,
    /// Invocations that may wait in all inboxes of one core together (each costs ~200 bytes of memory
    /// besides its argument); past it callers get RESOURCE_EXHAUSTED as above.
    pub max_entries_per_core: usize,
    /// Bytes of queued arguments one core keeps in memory; arguments past it stay only in storage and
    /// are read back when their invocation starts (also at recovery, which loads no more than this).
    pub memory_bytes_per_core: usize,
}

impl Default for Inbox {
    fn default() -> Self {
        Self {
            max_entries_per_key: 10_000,
            max_entries_per_core: 100_000,
            memory_bytes_per_core: 16 << 20,
        }
    }
}

/// Durable timers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timers {
    /// Timers each core keeps in memory (the nearest ones); the rest wait in storage.
    pub num_timers_in_memory_limit: usize,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            num_timers_in_memory_limit: 16 * 1024,
        }
    }
}

impl Default for Worker {
    fn default() -> Self {
        Self {
            partitions: 64,
            channel_size: 1024,
            ingress_grpc: IngressGrpc::default(),
            storage_grpc: StorageGrpc::default(),
            storage_rocksdb: StorageRocksdb::default(),
            invoker: Invoker::default(),
            timers: Timers::default(),
            inbox: Inbox::default(),
            outbox: Outbox::default(),
        }
    }
}

/// The ingress server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngressGrpc {
    /// Address of the ingress (gRPC and Connect) server.
    pub bind_address: SocketAddr,
    /// Largest request message accepted, in bytes; larger ones get RESOURCE_EXHAUSTED.
    pub max_message_size: usize,
    /// Calls in flight on one core; past it calls get RESOURCE_EXHAUSTED (built-in health and
    /// reflection services are not counted).
    pub concurrency_limit: usize,
    /// Open connections to the ingress port, over all cores (per process); past it new connections
    /// are closed at once.
    pub max_connections: usize,
    /// How long the result of a call with an `idempotency-key` header is kept for repeated calls.
    #[serde(with = "humantime_serde")]
    pub idempotency_retention: Duration,
    /// How long an ended idempotent invocation's outcome also stays in memory: a repeated call whose
    /// read of the idempotency row was submitted just before that row was written gets it from there
    /// (such a read in flight keeps it longer, however long the read takes); memory grows with the
    /// rate of idempotent calls times it.
    #[serde(with = "humantime_serde")]
    pub idempotency_recent: Duration,
    /// The longest a caller may ask to wait through `grpc-timeout` / `connect-timeout-ms`; longer
    /// values are clamped to it (malformed ones get INVALID_ARGUMENT).
    #[serde(with = "humantime_serde")]
    pub max_request_timeout: Duration,
    /// Callers that may wait for the result of one running invocation (repeated calls with the same
    /// `idempotency-key` attach to it); past it they get RESOURCE_EXHAUSTED. Callers that gave up are
    /// dropped from the count whenever another attaches.
    pub max_attached_callers: usize,
    /// Origins whose browser scripts may call the ingress (CORS): `*` for any (Restate 0.1's default),
    /// else exact origins such as `https://app.example.com`; empty: preflights get 403. In the
    /// environment: comma-separated.
    pub cors_allowed_origins: Vec<String>,
    /// Where a fresh unkeyed invocation runs: on the core whose ingress received it (no hop to another
    /// core and back) unless that core drives more than this many invocations beyond one other core
    /// picked at random; then on that one. 0 balances strictly by load (the less loaded of the two);
    /// a large value keeps every unkeyed invocation on the core of its client's connection.
    pub local_placement_slack: u64,
}

impl Default for IngressGrpc {
    fn default() -> Self {
        Self {
            bind_address: ([0, 0, 0, 0], 9090).into(),
            max_message_size: 4 << 20,
            concurrency_limit: 1000,
            max_connections: 10_000,
            idempotency_retention: Duration::from_secs(24 * 3600),
            idempotency_recent: Duration::from_secs(10),
            max_request_timeout: Duration::from_secs(24 * 3600),
            max_attached_callers: 1000,
            cors_allowed_origins: vec!["*".to_owned()],
            local_placement_slack: 16,
        }
    }
}

/// The storage gRPC API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageGrpc {
    /// Address of the read-only storage gRPC API.
    pub bind_address: SocketAddr,
    /// Most rows one scan reads from RocksDB at a time. The storage thread serves a scan one chunk per
    /// turn (writes queued behind it wait at most one chunk), and the next chunk is read only once the
    /// client has taken the previous one (HTTP/2 flow control), so a scan's memory is about one chunk.
    /// The periodic purge of expired idempotency results reads in chunks of the same size.
    pub scan_chunk_rows: usize,
    /// Most bytes (keys and values) of one scan chunk; a chunk always holds at least one row. Also
    /// the purge's.
    pub scan_chunk_bytes: usize,
    /// Largest `ScanRequest` accepted, in bytes; larger ones get RESOURCE_EXHAUSTED.
    pub max_message_size: usize,
    /// Bearer token every storage API call must carry (`authorization: Bearer TOKEN`); empty: no
    /// authentication. Set it from the environment (`RESTATE_WORKER__STORAGE_GRPC__AUTH_TOKEN`).
    pub auth_token: String,
    /// Open connections to the storage port, over all cores (per process); past it new connections
    /// are closed at once.
    pub max_connections: usize,
}

impl Default for StorageGrpc {
    fn default() -> Self {
        Self {
            bind_address: ([0, 0, 0, 0], 9091).into(),
            scan_chunk_rows: 1000,
            scan_chunk_bytes: 1 << 20,
            max_message_size: 64 << 10,
            auth_token: String::new(),
            max_connections: 512,
        }
    }
}

/// The embedded RocksDB.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageRocksdb {
    /// Database directory, relative to the cwd.
    pub path: PathBuf,
    /// Fsync the WAL before acknowledging anything: on survives power loss, off survives a process
    /// crash. Writes are applied (and visible to reads) at once either way.
    pub sync_writes: bool,
    /// Requests that may wait for the storage thread; past it callers wait (back-pressure). Also the
    /// most group commits that may wait for the WAL sync; past it the storage thread waits.
    pub queue_capacity: usize,
    /// Most requests merged into one group commit (one WriteBatch, one WAL write); also the most
    /// writes a core decided back to back that it sends as one request.
    pub max_batch_requests: usize,
    /// Memtable size (RocksDB `write_buffer_size`) of each table whose rows live about as long as one
    /// invocation (status, journal, inbox, outbox, timers, completions), in bytes (at least 65536).
    /// Their rows are mostly written and deleted within milliseconds, so a small memtable holds the
    /// live ones and keeps the skiplist every write inserts into short; the other tables keep
    /// RocksDB's 64 MiB. Memory: up to twice this per such table while one flushes.
    pub short_lived_write_buffer_size: usize,
    /// With `sync_writes`: how long a write that nothing outside the runtime waits on (a fresh
    /// invocation's start, a journal entry with no completion to send) may stay applied but not yet
    /// fsynced while no other write needs a sync. A write that does need one (an answer, a
    /// completion, a shipped message) syncs at once and makes every earlier write durable with it;
    /// this bounds the wait when none comes. Zero: every write is fsynced as soon as possible. At most
    /// 60 s.
    #[serde(with = "humantime_serde")]
    pub deferred_sync_delay: Duration,
    /// With `sync_writes`: the least time from the start of one WAL fsync to the start of the next.
    /// A write that needs a sync this soon after the previous one waits for the rest of it, and the
    /// writes applied meanwhile share that sync: under load fewer, larger group commits (less CPU per
    /// write), at the cost of up to this much latency for a write that arrives right after a sync; at
    /// low load (syncs further apart) nothing waits. Zero: sync as soon as a write needs one. At most
    /// 100 ms.
    #[serde(with = "humantime_serde")]
    pub group_commit_interval: Duration,
    /// How long the rows of an ingress call's invocation (its status row and input, entries that
    /// wait for nothing, its key's state writes; for one that waited in its key's inbox, that row's
    /// delete) may stay in the core's memory instead of storage, so that one that ends sooner never
    /// writes them (see `partition::transient`). Anything else it writes, a read of its journal or
    /// state, a deadline answer to its caller and a graceful shutdown write them first. A process
    /// crash (`kill -9`) loses an invocation still held, as any crash loses starts not yet durable:
    /// its caller sees the connection fail (one from an inbox runs again from there). Zero: written
    /// at once. At most 1 s.
    #[serde(with = "humantime_serde")]
    pub transient_hold: Duration,
    /// About the most bytes of rows held per invocation under `transient_hold` (its input included);
    /// a larger one is written at once. With the ingress's bound on calls in flight, this bounds the
    /// memory held. At least 1024.
    pub transient_hold_bytes: usize,
    /// Size in bytes at which RocksDB's own text log (`LOG` in the database directory: options at
    /// open, flushes, compactions, a statistics dump every 10 minutes; written at INFO level) is
    /// rotated to `LOG.old.<time>`. At least 65536. Together with `info_log_files_kept` it bounds the
    /// disk the log takes.
    pub info_log_max_file_size: usize,
    /// Rotated RocksDB text logs kept besides the current one (at least 1); older ones are deleted.
    pub info_log_files_kept: usize,
}

impl Default for StorageRocksdb {
    fn default() -> Self {
        Self {
            path: PathBuf::from("target/db/"),
            sync_writes: true,
            queue_capacity: 4096,
            max_batch_requests: 1024,
            short_lived_write_buffer_size: 1 << 20,
            deferred_sync_delay: Duration::from_millis(10),
            group_commit_interval: Duration::from_millis(1),
            transient_hold: Duration::from_millis(10),
            transient_hold_bytes: 64 << 10,
            info_log_max_file_size: 16 << 20,
            info_log_files_kept: 4,
        }
    }
}

/// Thread-per-core executors and their HTTP servers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// Number of executors (one thread each); default: the CPUs this process may run on.
    pub cores: usize,
    /// Memory each executor registers with io_uring for its buffers (bytes).
    pub io_memory_bytes: usize,
    /// Deprecated (0 = off, the default): when set, each core also caps its connections over all
    /// three ports at this number, as before the per-port limits (`worker.ingress_grpc.max_connections`,
    /// `meta.max_connections`, `worker.storage_grpc.max_connections`) existed; a WARN at start says so.
    pub max_connections_per_core: usize,
    /// File descriptors kept free for everything but accepted connections (RocksDB files, connections
    /// to endpoints, logs). At start the per-port connection limits plus this must fit `RLIMIT_NOFILE`;
    /// the soft limit is raised to the hard one if needed, else the connection limits are lowered.
    pub file_descriptor_reserve: usize,
    /// Largest request head (HTTP/1.1 headers, HTTP/2 header list) accepted, in bytes.
    pub max_header_bytes: usize,
    /// A connection with no request in flight and no bytes received for this long is closed.
    #[serde(with = "humantime_serde")]
    pub http_idle_timeout: Duration,
    /// Once a connection with no request in flight receives a byte, its next request head must be
    /// complete within this long (HTTP/1.1 headers; HTTP/2: a connection sending frames but no
    /// request), else the connection is closed. Bounds slow-header (slowloris) clients.
    #[serde(with = "humantime_serde")]
    pub http_header_read_timeout: Duration,
    /// A request body that delivers no data for this long fails: ingress answers DEADLINE_EXCEEDED,
    /// meta 408, and the stream (HTTP/2) or connection (HTTP/1.1) is closed.
    #[serde(with = "humantime_serde")]
    pub http_body_stall_timeout: Duration,
    /// How long start-up waits for a port that no other `restate` claims but that is still bound: a
    /// process killed a moment ago keeps its listeners until the kernel has torn down its io_uring (a
    /// few ms). Past it, start-up fails with "port in use". At most 60 s.
    #[serde(with = "humantime_serde")]
    pub port_release_wait: Duration,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            cores: available_cpus(),
            io_memory_bytes: 1 << 20,
            max_connections_per_core: 0,
            file_descriptor_reserve: 1024,
            max_header_bytes: 16 * 1024,
            http_idle_timeout: Duration::from_secs(60),
            http_header_read_timeout: Duration::from_secs(10),
            http_body_stall_timeout: Duration::from_secs(30),
            port_release_wait: Duration::from_secs(2),
        }
    }
}

/// The CPUs this process may run on (its affinity mask), at least 1.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl Config {
    /// Loads the configuration: defaults, then the file (if any), then `RESTATE_*` variables of `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, Error> {
        let defaults = toml::Value::try_from(Config::default()).expect("defaults serialize");
        let mut tree = defaults.clone();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
                path: path.to_owned(),
                source,
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| Error::ParseFile {
                        path: path.to_owned(),
                        message: e.message().to_owned(),
                    })?;
            let origin = format!("file {}", path.display());
            merge(&mut tree, &defaults, toml::Value::Table(table), "", &origin)?;
        }
        let mut vars: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != ENV_CONFIG_FILE)
            .collect();
        for (name, raw) in std::mem::take(&mut vars) {
            let path: Vec<String> = name[ENV_PREFIX.len()..]
                .split("__")
                .map(|s| s.to_ascii_lowercase())
                .collect();
            // Variables outside our top-level sections (an SDK's RESTATE_DEBUG_LOGGING, say) are not ours.
            if defaults.get(&path[0]).is_none() {
                continue;
            }
            apply_env(&mut tree, &defaults, &path, &raw, &name)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(tree).map_err(|e| Error::Invalid {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    fn validate(&self) -> Result<(), Error> {
        let positive: &[(&str, usize)] = &[
            (
                "worker.outbox.max_in_flight",
                self.worker.outbox.max_in_flight,
            ),
            (
                "meta.max_concurrent_discoveries",
                self.meta.max_concurrent_discoveries,
            ),
            ("meta.max_endpoints", self.meta.max_endpoints),
            (
                "worker.ingress_grpc.max_attached_callers",
                self.worker.ingress_grpc.max_attached_callers,
            ),
            (
                "worker.inbox.max_entries_per_key",
                self.worker.inbox.max_entries_per_key,
            ),
            (
                "worker.inbox.max_entries_per_core",
                self.worker.inbox.max_entries_per_core,
            ),
            ("worker.partitions", self.worker.partitions as usize),
            ("runtime.cores", self.runtime.cores),
            (
                "worker.storage_rocksdb.queue_capacity",
                self.worker.storage_rocksdb.queue_capacity,
            ),
            (
                "worker.storage_rocksdb.max_batch_requests",
                self.worker.storage_rocksdb.max_batch_requests,
            ),
            (
                "worker.ingress_grpc.max_connections",
                self.worker.ingress_grpc.max_connections,
            ),
            ("meta.max_connections", self.meta.max_connections),
            (
                "worker.storage_grpc.max_connections",
                self.worker.storage_grpc.max_connections,
            ),
            ("runtime.max_header_bytes", self.runtime.max_header_bytes),
            ("meta.max_request_bytes", self.meta.max_request_bytes),
            ("worker.channel_size", self.worker.channel_size),
            (
                "worker.timers.num_timers_in_memory_limit",
                self.worker.timers.num_timers_in_memory_limit,
            ),
            (
                "worker.ingress_grpc.max_message_size",
                self.worker.ingress_grpc.max_message_size,
            ),
            (
                "worker.ingress_grpc.concurrency_limit",
                self.worker.ingress_grpc.concurrency_limit,
            ),
            (
                "worker.invoker.message_size_limit",
                self.worker.invoker.message_size_limit,
            ),
            (
                "worker.invoker.concurrency_limit",
                self.worker.invoker.concurrency_limit,
            ),
            (
                "worker.invoker.max_streams_per_connection",
                self.worker.invoker.max_streams_per_connection,
            ),
            (
                "worker.invoker.max_connections_per_endpoint",
                self.worker.invoker.max_connections_per_endpoint,
            ),
            (
                "worker.invoker.max_pending_appends",
                self.worker.invoker.max_pending_appends,
            ),
            (
                "meta.max_discovery_response_bytes",
                self.meta.max_discovery_response_bytes,
            ),
            (
                "worker.storage_grpc.scan_chunk_rows",
                self.worker.storage_grpc.scan_chunk_rows,
            ),
            (
                "worker.storage_grpc.scan_chunk_bytes",
                self.worker.storage_grpc.scan_chunk_bytes,
            ),
            (
                "worker.storage_grpc.max_message_size",
                self.worker.storage_grpc.max_message_size,
            ),
        ];
        for &(key, value) in positive {
            if value == 0 {
                return Err(Error::Invalid {
                    key: key.to_owned(),
                    message: "must be at least 1".to_owned(),
                });
            }
        }
        if self.worker.storage_rocksdb.short_lived_write_buffer_size < 65536 {
            return Err(Error::Invalid {
                key: "worker.storage_rocksdb.short_lived_write_buffer_size".to_owned(),
                message: "must be at least 65536".to_owned(),
            });
        }
        if self.worker.storage_rocksdb.deferred_sync_delay > Duration::from_secs(60) {
            // Whatever waits for a deferred write without asking for a sync waits up to this long:
            // longer is a typo, not a setting.
            return Err(Error::Invalid {
                key: "worker.storage_rocksdb.deferred_sync_delay".to_owned(),
                message: "must be at most 60s".to_owned(),
            });
        }
        if self.runtime.port_release_wait > Duration::from_secs(60) {
            // A port held by another program fails start-up only after this long: longer is a typo.
            return Err(Error::Invalid {
                key: "runtime.port_release_wait".to_owned(),
                message: "must be at most 60s".to_owned(),
            });
        }
        if self.worker.storage_rocksdb.group_commit_interval > Duration::from_millis(100) {
            // Every answer under load may wait this long for its sync: longer is a typo.
            return Err(Error::Invalid {
                key: "worker.storage_rocksdb.group_commit_interval".to_owned(),
                message: "must be at most 100ms".to_owned(),
            });
        }
        if self.worker.storage_rocksdb.transient_hold > Duration::from_secs(1) {
            // Held rows are lost by a crash: a longer hold is a typo, not a setting.
            return Err(Error::Invalid {
                key: "worker.storage_rocksdb.transient_hold".to_owned(),
                message: "must be at most 1s".to_owned(),
            });
        }
        if self.worker.storage_rocksdb.transient_hold_bytes < 1024 {
            return Err(Error::Invalid {
                key: "worker.storage_rocksdb.transient_hold_bytes".to_owned(),
                message: "must be at least 1024".to_owned(),
            });
        }
        if self.worker.storage_rocksdb.info_log_max_file_size < 65536 {
            // 0 would mean "never rotate" to RocksDB: an unbounded file.
            return Err(Error::Invalid {
                key: "worker.storage_rocksdb.info_log_max_file_size".to_owned(),
                message: "must be at least 65536".to_owned(),
            });
        }
        if self.worker.storage_rocksdb.info_log_files_kept == 0 {
            return Err(Error::Invalid {
                key: "worker.storage_rocksdb.info_log_files_kept".to_owned(),
                message: "must be at least 1".to_owned(),
            });
        }
        if self.worker.ingress_grpc.max_request_timeout.is_zero() {
            return Err(Error::Invalid {
                key: "worker.ingress_grpc.max_request_timeout".to_owned(),
                message: "must be more than 0".to_owned(),
            });
        }
        crate::http::allow::AllowList::parse(&self.meta.allowed_endpoints).map_err(|message| {
            Error::Invalid {
                key: "meta.allowed_endpoints".to_owned(),
                message,
            }
        })?;
        for (key, token) in [
            ("meta.auth_token", &self.meta.auth_token),
            (
                "worker.storage_grpc.auth_token",
                &self.worker.storage_grpc.auth_token,
            ),
        ] {
            if !token.is_empty() && http::HeaderValue::from_str(&format!("Bearer {token}")).is_err()
            {
                return Err(Error::Invalid {
                    key: key.to_owned(),
                    message: "must be printable ASCII without control characters".to_owned(),
                });
            }
        }
        for (key, value) in [
            ("runtime.http_idle_timeout", self.runtime.http_idle_timeout),
            (
                "runtime.http_header_read_timeout",
                self.runtime.http_header_read_timeout,
            ),
            (
                "runtime.http_body_stall_timeout",
                self.runtime.http_body_stall_timeout,
            ),
            // 0 would fail every new connection to an endpoint (it is no "off").
            (
                "worker.invoker.connect_timeout",
                self.worker.invoker.connect_timeout,
            ),
        ] {
            if value < Duration::from_millis(1) {
                return Err(Error::Invalid {
                    key: key.to_owned(),
                    message: "must be at least 1ms".to_owned(),
                });
            }
        }
        if self.runtime.max_header_bytes < 8192 {
            // hyper's HTTP/1.1 reader needs at least this much buffer.
            return Err(Error::Invalid {
                key: "runtime.max_header_bytes".to_owned(),
                message: "must be at least 8192".to_owned(),
            });
        }
        Ok(())
    }

    /// The proxy for outbound calls: the configured one, else `HTTP_PROXY`/`http_proxy`, else none.
    pub fn effective_proxy(configured: &str) -> Option<String> {
        let from_env = || {
            ["HTTP_PROXY", "http_proxy"]
                .iter()
                .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        };
        Some(configured.to_owned())
            .filter(|p| !p.is_empty())
            .or_else(from_env)
    }

    /// The effective configuration as TOML (what `--dump-config` prints), with the auth tokens shown
    /// as `***`.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        for token in [
            &mut shown.meta.auth_token,
            &mut shown.worker.storage_grpc.auth_token,
        ] {
            if !token.is_empty() {
                *token = "***".to_owned();
            }
        }
        toml::to_string_pretty(&shown).expect("config serializes")
    }

    /// Start-up warnings for admin servers reachable beyond this host without a token.
    pub fn exposure_warnings(&self) -> Vec<String> {
        [
            ("meta", "meta.auth_token", self.meta.rest_address, &self.meta.auth_token),
            (
                "storage",
                "worker.storage_grpc.auth_token",
                self.worker.storage_grpc.bind_address,
                &self.worker.storage_grpc.auth_token,
            ),
        ]
        .into_iter()
        .filter(|(_, _, address, token)| !address.ip().is_loopback() && token.is_empty())
        .map(|(server, key, address, _)| {
            format!(
                "the {server} server listens on {address}, beyond this host, and {key} is not set: \
                 anyone who reaches it can use it (bind it to 127.0.0.1 or set the token; see SECURITY.md)"
            )
        })
        .collect()
    }
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Deep-merges `overlay` into `tree`, refusing keys the defaults do not know.
fn merge(
    tree: &mut toml::Value,
    defaults: &toml::Value,
    overlay: toml::Value,
    prefix: &str,
    origin: &str,
) -> Result<(), Error> {
    match (tree, overlay) {
        (toml::Value::Table(tree), toml::Value::Table(overlay)) => {
            for (key, value) in overlay {
                let full = join_key(prefix, &key);
                let Some(default) = defaults.get(&key) else {
                    return Err(Error::UnknownKey {
                        key: full,
                        origin: origin.to_owned(),
                    });
                };
                let slot = tree.get_mut(&key).expect("tree has every default key");
                if default.is_table() && value.is_table() {
                    merge(slot, default, value, &full, origin)?;
                } else {
                    // A wrong type is reported by deserialization, with the key's path.
                    *slot = value;
                }
            }
            Ok(())
        }
        (slot, overlay) => {
            *slot = overlay;
            Ok(())
        }
    }
}

/// Applies one `RESTATE_A__B__C=value` variable, parsing the value as the type the key has.
fn apply_env(
    tree: &mut toml::Value,
    defaults: &toml::Value,
    path: &[String],
    raw: &str,
    var: &str,
) -> Result<(), Error> {
    let key = path.join(".");
    let origin = format!("env {var}");
    let mut default = defaults;
    for segment in path {
        default = default.get(segment).ok_or_else(|| Error::UnknownKey {
            key: key.clone(),
            origin: origin.clone(),
        })?;
    }
    let bad = |message: String| Error::BadEnvValue {
        key: key.clone(),
        origin: origin.clone(),
        message,
    };
    let value = match default {
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| bad(format!("expected an integer, got `{raw}`")))?,
        ),
        toml::Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(bad(format!("expected true or false, got `{raw}`"))),
        },
        toml::Value::Float(_) => toml::Value::Float(
            raw.trim()
                .parse()
                .map_err(|_| bad(format!("expected a number, got `{raw}`")))?,
        ),
        toml::Value::Table(_) => return Err(bad("is a section, set its keys instead".to_owned())),
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_owned()),
    };
    let mut slot = tree;
    for segment in path {
        slot = slot.get_mut(segment).expect("tree has every default key");
    }
    *slot = value;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = Config::default().to_toml();
        let back: Config = toml::from_str(&text).unwrap();
        assert_eq!(back, Config::default());
    }

    #[test]
    fn env_overrides_nested_keys_with_their_types() {
        let c = Config::load(
            None,
            env(&[
                ("RESTATE_WORKER__PARTITIONS", "128"),
                ("RESTATE_TRACING__LOG_FORMAT", "json"),
                ("RESTATE_WORKER__STORAGE_ROCKSDB__SYNC_WRITES", "FALSE"),
                ("RESTATE_SHUTDOWN_GRACE_PERIOD", "5s"),
                ("RESTATE_DEBUG_LOGGING", "JOURNAL"),
            ]),
        )
        .unwrap();
        assert_eq!(c.worker.partitions, 128);
        assert_eq!(c.tracing.log_format, LogFormat::Json);
        assert!(!c.worker.storage_rocksdb.sync_writes);
        assert_eq!(c.shutdown_grace_period, Duration::from_secs(5));
    }

    #[test]
    fn lists_tokens_and_exposure() {
        let c = Config::load(
            None,
            env(&[
                (
                    "RESTATE_META__ALLOWED_ENDPOINTS",
                    " 10.0.0.0/8, svc.internal ,",
                ),
                ("RESTATE_META__AUTH_TOKEN", "s3cret"),
                (
                    "RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS",
                    "127.0.0.1:9091",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.meta.allowed_endpoints, vec!["10.0.0.0/8", "svc.internal"]);
        assert!(
            !c.to_toml().contains("s3cret"),
            "--dump-config hides tokens"
        );
        assert!(c.exposure_warnings().is_empty());
        let open = Config::default().exposure_warnings();
        assert_eq!(open.len(), 2, "{open:?}");
        assert!(open[0].contains("meta.auth_token") && open[1].contains("storage_grpc"));
        let e = Config::load(
            None,
            env(&[("RESTATE_META__ALLOWED_ENDPOINTS", "10.0.0.0/99")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("meta.allowed_endpoints"), "{e}");
    }

    #[test]
    fn unknown_nested_env_key_is_named() {
        let e = Config::load(None, env(&[("RESTATE_WORKER__NOPE", "1")])).unwrap_err();
        assert!(e.to_string().contains("worker.nope"), "{e}");
    }

    #[test]
    fn connection_limits_and_http_deadlines_are_validated() {
        for (var, key) in [
            (
                "RESTATE_WORKER__INGRESS_GRPC__MAX_CONNECTIONS",
                "worker.ingress_grpc.max_connections",
            ),
            ("RESTATE_META__MAX_CONNECTIONS", "meta.max_connections"),
            (
                "RESTATE_WORKER__STORAGE_GRPC__MAX_CONNECTIONS",
                "worker.storage_grpc.max_connections",
            ),
        ] {
            let e = Config::load(None, env(&[(var, "0")])).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        for (var, key) in [
            (
                "RESTATE_RUNTIME__HTTP_HEADER_READ_TIMEOUT",
                "runtime.http_header_read_timeout",
            ),
            (
                "RESTATE_RUNTIME__HTTP_BODY_STALL_TIMEOUT",
                "runtime.http_body_stall_timeout",
            ),
            (
                "RESTATE_WORKER__INVOKER__CONNECT_TIMEOUT",
                "worker.invoker.connect_timeout",
            ),
        ] {
            let e = Config::load(None, env(&[(var, "0s")])).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
            let e = Config::load(None, env(&[(var, "soon")])).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        let c = Config::load(
            None,
            env(&[
                ("RESTATE_META__MAX_CONNECTIONS", "7"),
                ("RESTATE_RUNTIME__HTTP_HEADER_READ_TIMEOUT", "250ms"),
                // The deprecated per-core cap still loads (old config files keep working).
                ("RESTATE_RUNTIME__MAX_CONNECTIONS_PER_CORE", "100"),
            ]),
        )
        .unwrap();
        assert_eq!(c.meta.max_connections, 7);
        assert_eq!(
            c.runtime.http_header_read_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(c.runtime.max_connections_per_core, 100);
    }

    #[test]
    fn the_log_format_of_a_broken_config_is_read_from_env_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("restate.toml");
        std::fs::write(
            &file,
            "[tracing]\nlog_format = \"json\"\n[worker]\npartitions = \"many\"\n",
        )
        .unwrap();
        let from_file = Tracing::best_effort(Some(&file), &[]);
        assert_eq!(from_file.log_format, LogFormat::Json);
        let env = [(
            "RESTATE_TRACING__LOG_FORMAT".to_owned(),
            "Compact".to_owned(),
        )];
        assert_eq!(
            Tracing::best_effort(Some(&file), &env).log_format,
            LogFormat::Compact
        );
        let missing = dir.path().join("missing.toml");
        assert_eq!(
            Tracing::best_effort(Some(&missing), &[]),
            Tracing::default()
        );
    }

    #[test]
    fn bad_value_names_the_key() {
        let e = Config::load(None, env(&[("RESTATE_WORKER__PARTITIONS", "many")])).unwrap_err();
        assert!(e.to_string().contains("worker.partitions"), "{e}");
        let e = Config::load(None, env(&[("RESTATE_TRACING__LOG_FORMAT", "xml")])).unwrap_err();
        assert!(e.to_string().contains("tracing.log_format"), "{e}");
        let e = Config::load(None, env(&[("RESTATE_RUNTIME__CORES", "0")])).unwrap_err();
        assert!(e.to_string().contains("runtime.cores"), "{e}");
    }

    #[test]
    fn waits_and_intervals_past_their_bounds_are_refused() {
        for (key, value) in [
            ("RESTATE_RUNTIME__PORT_RELEASE_WAIT", "61s"),
            (
                "RESTATE_WORKER__STORAGE_ROCKSDB__GROUP_COMMIT_INTERVAL",
                "101ms",
            ),
        ] {
            let e = Config::load(None, env(&[(key, value)])).unwrap_err();
            assert!(e.to_string().contains("must be at most"), "{key}: {e}");
        }
        let ok = [
            ("RESTATE_RUNTIME__PORT_RELEASE_WAIT", "60s"),
            (
                "RESTATE_WORKER__STORAGE_ROCKSDB__GROUP_COMMIT_INTERVAL",
                "0s",
            ),
        ];
        Config::load(None, env(&ok)).unwrap();
    }
}

//! `restatectl`: the operator's CLI. Services and endpoints through the meta REST API (:8081); keyed
//! state, invocations, journals and inboxes through the read-only storage gRPC API (:9091).
//!
//! Human-readable tables by default, `--json` for scripts (one JSON document, stable field names).
//! Exit codes: 0 on success, also when nothing matched (a line says so); 1 when a server cannot be
//! reached or refuses; 2 on bad usage.

mod client;
mod commands;
mod render;

use clap::{Args, Parser, Subcommand, ValueEnum};
use http::Uri;

use client::{Error, Server};

/// Inspect and operate a restate server.
#[derive(Parser, Debug)]
#[command(name = "restatectl", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Args, Debug)]
pub struct Global {
    /// Storage gRPC API (read-only scans). Bearer token from RESTATE_STORAGE_TOKEN.
    #[arg(
        long,
        global = true,
        env = "RESTATE_STORAGE_ADDRESS",
        default_value = "http://127.0.0.1:9091"
    )]
    pub storage: Uri,
    /// Meta REST API (services, endpoints, cancellation). Bearer token from RESTATE_META_TOKEN.
    #[arg(
        long,
        global = true,
        env = "RESTATE_META_ADDRESS",
        default_value = "http://127.0.0.1:8081"
    )]
    pub meta: Uri,
    /// Print one JSON document instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Registered services.
    #[command(subcommand)]
    Services(ServicesCommand),
    /// Service endpoints (deployments).
    #[command(subcommand)]
    Endpoints(EndpointsCommand),
    /// Keyed state.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Invocations: running, suspended, waiting in an inbox.
    #[command(subcommand)]
    Invocations(InvocationsCommand),
    /// The invocations queued for one service instance, in order.
    Inbox(InstanceArgs),
    /// Raw scan of a storage table (the storage API's key / prefix / range filters).
    Scan(ScanArgs),
}

#[derive(Subcommand, Debug)]
pub enum ServicesCommand {
    /// Every registered service.
    List,
    /// One service: methods, key field, endpoint.
    Describe {
        /// Service name (e.g. `counter` or `org.example.Greeter`).
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum EndpointsCommand {
    /// Every registered endpoint.
    List,
    /// Discovers and registers the endpoint at URI.
    Register {
        /// The endpoint's URI (e.g. http://localhost:9080).
        uri: String,
    },
    /// Removes an endpoint and its services.
    Remove {
        /// The endpoint id (from `endpoints list`).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Every state key of one service instance with its value.
    Get(InstanceArgs),
}

/// One service instance.
#[derive(Args, Debug)]
pub struct InstanceArgs {
    /// Service name.
    pub service: String,
    /// Instance key as written in calls (a string key field's plain string). Singletons: omit.
    pub key: Option<String>,
    /// Give the stored key bytes in hex instead (keys that are not strings).
    #[arg(long, conflicts_with = "key")]
    pub key_hex: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum InvocationsCommand {
    /// Invocations in flight (running or suspended) and queued in inboxes.
    List {
        /// Only this service's invocations.
        #[arg(long)]
        service: Option<String>,
        /// Only invocations in this state.
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
    },
    /// One invocation: its status and its journal.
    Describe {
        /// Invocation id (48 hex digits) or sid (`service-key-id`).
        id: String,
    },
    /// Cancels an invocation: it ends with ABORTED, its caller gets ABORTED.
    Cancel {
        /// Invocation id (48 hex digits) or sid.
        id: String,
    },
}

/// Invocation states `invocations list` can filter on.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Running,
    Suspended,
    /// Waiting for its next attempt after a failed one.
    BackingOff,
    Inbox,
}

/// `restatectl scan`.
#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Table: state, status, inbox, journal, outbox, timers, dedup, idempotency, completions, fsm,
    /// system.
    pub table: String,
    /// Exactly one key: every field as `name=value,...` (e.g. `invocation_id=HEX,journal_index=0`).
    #[arg(long, conflicts_with_all = ["prefix", "from", "to"])]
    pub key: Option<String>,
    /// Leading fields as `name=value,...` (e.g. `service_name=counter,service_key=hex:03626f62`).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub prefix: Option<String>,
    /// Range start (inclusive prefix), fields as for --prefix.
    #[arg(long, requires = "to")]
    pub from: Option<String>,
    /// Range end (inclusive prefix), fields as for --prefix.
    #[arg(long, requires = "from")]
    pub to: Option<String>,
    /// At most this many rows.
    #[arg(long)]
    pub limit: Option<u64>,
}

fn main() {
    let cli = Cli::parse();
    let storage_token = std::env::var("RESTATE_STORAGE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let meta_token = std::env::var("RESTATE_META_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let servers = commands::Servers {
        storage: Server {
            what: "the storage API",
            uri: cli.global.storage.clone(),
            token: storage_token,
        },
        meta: Server {
            what: "the meta API",
            uri: cli.global.meta.clone(),
            token: meta_token,
        },
        json: cli.global.json,
    };
    let result = client::runtime().block_on(commands::run(&servers, cli.command));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(match e {
            Error::Usage(_) => 2,
            _ => 1,
        });
    }
}

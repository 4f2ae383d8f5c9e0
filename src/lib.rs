//! restate: a thread-per-core durable-execution runtime speaking the Restate 0.1 service protocol.
//!
//! Layering, top to bottom: [`runtime`] (wiring) → servers ([`ingress`], [`meta`], [`storage_api`]) →
//! foundations ([`storage`], [`http`], [`grpc`], [`config`]). Servers get handles ([`node::NodeState`])
//! from the runtime and never import it back.

pub mod config;
pub mod grpc;
pub mod http;
pub mod ingress;
pub mod invoker;
pub mod local_queue;
pub mod logging;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod proto;
pub mod protocol;
pub mod reflection;
pub mod retry;
pub mod runtime;
pub mod schema;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod storage_api;

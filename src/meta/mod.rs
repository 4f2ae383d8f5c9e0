//! The meta (admin) REST server: health and metrics for now; service registration comes next.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use futures::FutureExt;
use http::{Method, StatusCode};

use crate::http::server::Handler;
use crate::http::{full, json_response, Body};
use crate::node::NodeState;

/// Builds the meta handler of one core.
pub fn handler(node: NodeState) -> Handler {
    let node = Rc::new(node);
    Rc::new(move |request| {
        let node = node.clone();
        async move { route(&node, request.method(), request.uri().path()) }.boxed_local()
    })
}

fn route(node: &NodeState, method: &Method, path: &str) -> http::Response<Body> {
    match (method, path) {
        (&Method::GET, "/health") => health(node),
        (&Method::GET, "/metrics") => metrics(node),
        (_, "/health" | "/metrics") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on {path}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no route for {method} {path}"),
        ),
    }
}

/// The meta error body: `{"message", "restate_code"}`.
pub fn error(status: StatusCode, message: &str) -> http::Response<Body> {
    let restate_code = match status.as_u16() {
        400 => "BadRequest",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        503 => "Unavailable",
        _ => "Internal",
    };
    json_response(
        status,
        &serde_json::json!({ "message": message, "restate_code": restate_code }),
    )
}

fn health(node: &NodeState) -> http::Response<Body> {
    let ready = node.ready_cores.load(Ordering::SeqCst);
    if node.shutdown.is_triggered() {
        error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if ready < node.cores {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("{ready} of {} cores serving", node.cores),
        )
    } else {
        json_response(
            StatusCode::OK,
            &serde_json::json!({ "status": "ok", "cores": node.cores }),
        )
    }
}

/// Prometheus text exposition of the node's counters.
fn metrics(node: &NodeState) -> http::Response<Body> {
    let storage = node.storage.stats().snapshot();
    let http = &node.http_counters;
    let counters: [(&str, &str, u64); 7] = [
        (
            "restate_storage_write_requests_total",
            "Write requests acknowledged by the storage thread.",
            storage.write_requests,
        ),
        (
            "restate_storage_write_batches_total",
            "Group commits (RocksDB writes) of the storage thread.",
            storage.write_batches,
        ),
        (
            "restate_storage_write_ops_total",
            "Put and delete operations written.",
            storage.write_ops,
        ),
        (
            "restate_storage_reads_total",
            "Point reads and scans served by the storage thread.",
            storage.reads,
        ),
        (
            "restate_http_connections_accepted_total",
            "Connections accepted on all ports and cores.",
            http.connections_accepted.load(Ordering::Relaxed),
        ),
        (
            "restate_http_connections_refused_total",
            "Connections closed because a core was at its connection limit.",
            http.connections_refused.load(Ordering::Relaxed),
        ),
        (
            "restate_http_connection_errors_total",
            "Connections that ended with a protocol or IO error.",
            http.connection_errors.load(Ordering::Relaxed),
        ),
    ];
    let mut text = String::new();
    for (name, help, value) in counters {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"
        ));
    }
    text.push_str(&format!(
        "# HELP restate_cores Executors (one per core).\n# TYPE restate_cores gauge\nrestate_cores {}\n",
        node.cores
    ));
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(full(text))
        .expect("valid response")
}

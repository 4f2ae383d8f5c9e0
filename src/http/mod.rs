//! HTTP plumbing for the thread-per-core servers: hyper 1.x (HTTP/1.1 and h2c on one socket, through
//! hyper-util's `auto` builder) driven by glommio.
//!
//! hyper is executor-agnostic: it needs an IO type implementing `hyper::rt::{Read, Write}` ([`Io`], a thin
//! adapter over glommio's `TcpStream`) and an executor that spawns `!Send` futures on the current core
//! ([`LocalExec`]). Nothing here crosses cores.

pub mod allow;
pub mod auth;
pub mod body;
pub mod client;
mod io;
pub mod limits;
pub mod server;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

pub use io::{coalesce_writes, Activity, Io};

/// Boxed error of a response body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of every server: boxed, not `Send` (it never leaves its core).
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// A JSON response with the given status.
pub fn json_response(status: http::StatusCode, value: &serde_json::Value) -> http::Response<Body> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full(serde_json::to_vec(value).expect("json serializes")))
        .expect("valid response")
}

/// Spawns hyper's background tasks (HTTP/2 streams) on the current glommio executor.
///
/// A task is spawned boxed: hyper's client futures are one enum with the connection's among them (1.5
/// KB), and glommio moves a future several times on its way into the task: a box moves as a pointer.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, fut: F) {
        glommio::spawn_local(Box::pin(fut)).detach();
    }
}

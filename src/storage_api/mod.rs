//! The read-only storage gRPC API (:9091), `dev.restate.storage.scan.v1.Storage/Scan`.
//!
//! The listener, its HTTP/1.1 + h2c stack and its gRPC error path are in place; the Scan method itself
//! arrives with the storage-API issue and is answered UNIMPLEMENTED until then.

use std::rc::Rc;

use futures::FutureExt;

use crate::grpc::{trailers_only, Code};
use crate::http::server::Handler;

/// Builds the storage API handler of one core.
pub fn handler() -> Handler {
    Rc::new(|request| {
        let path = request.uri().path().to_owned();
        async move {
            trailers_only(
                Code::Unimplemented,
                &format!("method {path} is not implemented"),
            )
        }
        .boxed_local()
    })
}

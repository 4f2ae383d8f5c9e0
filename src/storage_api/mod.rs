//! The read-only storage gRPC API (:9091): `dev.restate.storage.scan.v1.Storage/Scan`, and gRPC
//! reflection of it (`crate::reflection`) so `grpcurl` works without the protos.
//!
//! A scan streams the rows of one table that match a key, a key prefix or a range (typed keys, see
//! `proto/dev/restate/storage/scan/v1/scan.proto` and [`keys`]). Why it is shaped like this:
//! - Reads go through the one storage thread like every other read, one bounded chunk per request
//!   (`worker.storage_grpc.scan_chunk_rows` / `scan_chunk_bytes`), each resuming after the last key of
//!   the previous one, so writes queued behind a long scan wait for one chunk at most.
//! - The response body is a stream that reads the next chunk only when hyper polls it, and hyper's
//!   HTTP/2 server polls a body only while the stream has send capacity: a slow client holds the scan
//!   back instead of making the server buffer it. A scan's memory is about one chunk.
//! - Scans are not snapshots: rows written during a scan may or may not appear; none appears twice.
//!   Like every read, a scan sees rows as soon as the storage thread applied them, which with
//!   `sync_writes` can be a few milliseconds before the WAL sync that makes them durable.

pub mod keys;

use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use prost::Message;

use crate::config::StorageGrpc;
use crate::grpc::{percent_encode, trailers_only, Code};
use crate::http::server::Handler;
use crate::http::{Body, BoxError};
use crate::proto::storage::{scan_request::Filter, Pair, ScanRequest};
use crate::storage::{self, prefix_end, Storage, Table};

/// The one method of the API.
pub const SCAN_PATH: &str = "/dev.restate.storage.scan.v1.Storage/Scan";

/// Failures of a scan request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The filter names no valid key or range (terminal).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is larger than `worker.storage_grpc.max_message_size` (terminal).
    #[error("request larger than worker.storage_grpc.max_message_size ({0} bytes)")]
    TooLarge(usize),
    /// The request uses a feature the server lacks (terminal).
    #[error("{0}")]
    Unimplemented(String),
    /// The client went away while sending the request.
    #[error("cannot read the request: {0}")]
    Read(String),
    /// The storage thread failed (transient when RocksDB reported it).
    #[error("storage: {0}")]
    Storage(#[from] storage::Error),
}

impl Error {
    /// The gRPC status of the error.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::TooLarge(_) => Code::ResourceExhausted,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::Read(_) => Code::Cancelled,
            Error::Storage(storage::Error::Closed) => Code::Unavailable,
            Error::Storage(_) => Code::Internal,
        }
    }

    /// Transient errors may succeed when retried.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Storage(e) => e.is_transient() || matches!(e, storage::Error::Closed),
            Error::Read(_) => true,
            _ => false,
        }
    }
}

/// What one core's handler needs.
#[derive(Clone)]
pub struct Context {
    /// The storage thread.
    pub storage: Storage,
    /// `worker.partitions`: derives a key's partition from its service or invocation id.
    pub partitions: u32,
    /// Chunk sizes and the request bound.
    pub config: StorageGrpc,
}

/// Builds the storage API handler of one core: Scan, and gRPC reflection (v1, v1alpha) of this API.
pub fn handler(context: Context) -> Handler {
    let context = Rc::new(context);
    let pool = prost_reflect::DescriptorPool::decode(crate::proto::storage::DESCRIPTOR_SET)
        .expect("the embedded storage API descriptors decode");
    Rc::new(move |request| {
        let context = context.clone();
        let pool = pool.clone();
        async move {
            if crate::reflection::handles(request.uri().path()) {
                return crate::reflection::serve(pool, context.config.max_message_size, request);
            }
            if request.uri().path() != SCAN_PATH {
                let path = request.uri().path().to_owned();
                return trailers_only(
                    Code::Unimplemented,
                    &format!("method {path} is not implemented"),
                );
            }
            match scan(&context, request).await {
                Ok(response) => response,
                Err(e) => {
                    log::debug!("scan refused: {e}");
                    trailers_only(e.code(), &e.to_string())
                }
            }
        }
        .boxed_local()
    })
}

/// What a validated scan reads: `start <= key < end` of one table, at most `limit` rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub table: Table,
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    pub limit: u64,
}

/// Validates a request's filter into the key range it reads.
pub fn plan(request: &ScanRequest, partitions: u32) -> Result<Plan, Error> {
    let invalid = |e: keys::Invalid| Error::InvalidArgument(e.0);
    let limit = match request.limit {
        None | Some(0) => u64::MAX,
        Some(n) => n,
    };
    let (table, start, end) = match &request.filter {
        None => {
            return Err(Error::InvalidArgument(
                "the request has no filter: set key, prefix or range".into(),
            ))
        }
        Some(Filter::Key(key)) => {
            let (table, key) = keys::encode(key, true, partitions).map_err(invalid)?;
            let mut end = key.clone();
            end.push(0);
            (table, key, Some(end))
        }
        Some(Filter::Prefix(key)) => {
            let (table, prefix) = keys::encode(key, false, partitions).map_err(invalid)?;
            let end = prefix_end(&prefix);
            (table, prefix, end)
        }
        Some(Filter::Range(range)) => {
            let (Some(start), Some(end)) = (&range.start, &range.end) else {
                return Err(Error::InvalidArgument(
                    "a range needs both start and end".into(),
                ));
            };
            let (table, start) = keys::encode(start, false, partitions).map_err(invalid)?;
            let (end_table, end) = keys::encode(end, false, partitions).map_err(invalid)?;
            if table != end_table {
                return Err(Error::InvalidArgument(format!(
                    "a range must stay in one table: start names {}, end names {}",
                    table.name(),
                    end_table.name()
                )));
            }
            let end = prefix_end(&end);
            if end.as_ref().is_some_and(|end| &start >= end) {
                return Err(Error::InvalidArgument(
                    "the range's start is after its end".into(),
                ));
            }
            (table, start, end)
        }
    };
    Ok(Plan {
        table,
        start,
        end,
        limit,
    })
}

async fn scan(
    ctx: &Context,
    request: http::Request<Incoming>,
) -> Result<http::Response<Body>, Error> {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !grpc {
        return Err(Error::Unimplemented(
            "only gRPC is served here (content-type application/grpc)".into(),
        ));
    }
    let body = read_message(ctx.config.max_message_size, request).await?;
    let request = ScanRequest::decode(body)
        .map_err(|e| Error::InvalidArgument(format!("the ScanRequest does not decode: {e}")))?;
    let plan = plan(&request, ctx.partitions)?;
    let frames = futures::stream::unfold(
        Scan {
            storage: ctx.storage.clone(),
            next: Some(plan.start.clone()),
            plan,
            chunk_rows: ctx.config.scan_chunk_rows,
            chunk_bytes: ctx.config.scan_chunk_bytes,
            done: false,
        },
        Scan::next_frame,
    );
    Ok(http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Body::new(http_body_util::StreamBody::new(frames)))
        .expect("valid response"))
}

/// The one gRPC message of the request, at most `limit` bytes.
async fn read_message(limit: usize, request: http::Request<Incoming>) -> Result<Bytes, Error> {
    let body = http_body_util::Limited::new(crate::http::body::guarded(request), limit + 5)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::TooLarge(limit)
            } else {
                Error::Read(e.to_string())
            }
        })?
        .to_bytes();
    if body.len() < 5 {
        return Err(Error::InvalidArgument(
            "the request holds no gRPC message".into(),
        ));
    }
    if body[0] != 0 {
        return Err(Error::Unimplemented(
            "compressed requests are not supported".into(),
        ));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(Error::InvalidArgument(format!(
            "the gRPC frame announces {len} bytes but carries {}",
            body.len() - 5
        )));
    }
    Ok(body.slice(5..))
}

/// The state of one streaming scan: where the next chunk starts.
struct Scan {
    storage: Storage,
    plan: Plan,
    /// Start of the next chunk; `None` once the range (or the limit) is exhausted.
    next: Option<Vec<u8>>,
    chunk_rows: usize,
    chunk_bytes: usize,
    done: bool,
}

type FrameResult = Result<Frame<Bytes>, BoxError>;

impl Scan {
    /// The next body frame: one chunk of rows as gRPC messages, or the trailers that end the stream.
    async fn next_frame(mut self) -> Option<(FrameResult, Scan)> {
        if self.done {
            return None;
        }
        let Some(start) = self.next.take() else {
            self.done = true;
            return Some((Ok(Frame::trailers(status(Code::Ok, None))), self));
        };
        let remaining = usize::try_from(self.plan.limit).unwrap_or(usize::MAX);
        let chunk = self
            .storage
            .scan_chunk(
                self.plan.table,
                start,
                self.plan.end.clone(),
                self.chunk_rows.min(remaining),
                self.chunk_bytes,
            )
            .await;
        match chunk.map_err(Error::from).and_then(|c| self.encode(c)) {
            Ok(data) => Some((Ok(Frame::data(data)), self)),
            Err(e) => {
                log::warn!("scan of table {} failed: {e}", self.plan.table.name());
                self.done = true;
                Some((
                    Ok(Frame::trailers(status(e.code(), Some(&e.to_string())))),
                    self,
                ))
            }
        }
    }

    /// Frames the rows of a chunk as `Pair` messages and moves past them.
    fn encode(&mut self, chunk: storage::Chunk) -> Result<Bytes, Error> {
        let table = self.plan.table;
        let mut out = BytesMut::new();
        for (key, value) in &chunk.rows {
            let key = keys::decode(table, key).ok_or_else(|| {
                Error::Storage(storage::Error::RocksDb(format!(
                    "a key of table {} does not follow its layout: {}",
                    table.name(),
                    hex(key)
                )))
            })?;
            let pair = Pair {
                key: Some(key),
                value: value.clone(),
            };
            out.put_u8(0);
            out.put_u32(pair.encoded_len() as u32);
            pair.encode(&mut out).expect("BytesMut grows");
        }
        self.plan.limit = self.plan.limit.saturating_sub(chunk.rows.len() as u64);
        self.next = chunk.resume.filter(|_| self.plan.limit > 0);
        Ok(out.freeze())
    }
}

/// gRPC trailers with a status (and a message).
fn status(code: Code, message: Option<&str>) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code as u16));
    if let Some(value) = message.and_then(|m| HeaderValue::from_str(&percent_encode(m)).ok()) {
        trailers.insert("grpc-message", value);
    }
    trailers
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::storage::{key::Key as K, Key, Range};

    fn outbox(partition: Option<u32>, index: Option<u64>) -> Key {
        Key {
            key: Some(K::Outbox(crate::proto::storage::Outbox {
                partition_id: partition,
                message_index: index,
            })),
        }
    }

    #[test]
    fn ranges_are_inclusive_prefixes_of_one_table() {
        let request = ScanRequest {
            filter: Some(Filter::Range(Range {
                start: Some(outbox(Some(1), Some(5))),
                end: Some(outbox(Some(1), None)),
            })),
            limit: Some(0),
        };
        let plan = plan(&request, 64).unwrap();
        assert_eq!(plan.table, Table::Outbox);
        assert_eq!(plan.end, Some(vec![0, 0, 0, 2]));
        assert_eq!(plan.limit, u64::MAX);
        let backwards = ScanRequest {
            filter: Some(Filter::Range(Range {
                start: Some(outbox(Some(2), None)),
                end: Some(outbox(Some(1), None)),
            })),
            limit: None,
        };
        assert!(super::plan(&backwards, 64)
            .unwrap_err()
            .to_string()
            .contains("after its end"));
        let none = ScanRequest::default();
        assert_eq!(
            super::plan(&none, 64).unwrap_err().code(),
            Code::InvalidArgument
        );
    }
}

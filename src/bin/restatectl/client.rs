//! restatectl's connections: the meta REST API (HTTP/1.1, JSON) and the storage gRPC API (h2,
//! server streaming), through hyper's client on a current-thread tokio runtime. One connection per
//! call: a CLI makes a handful of them.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use restate::proto::storage::{Pair, ScanRequest};

/// How long connecting (and each meta request) may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest single message accepted from the storage API.
const MAX_MESSAGE: usize = 64 << 20;

/// What can go wrong talking to the servers. Every variant prints as one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach {what} at {address}: {message}")]
    Unreachable {
        what: &'static str,
        address: String,
        message: String,
    },
    #[error("{what} at {address} broke off: {message}")]
    Broken {
        what: &'static str,
        address: String,
        message: String,
    },
    #[error("{0}")]
    Status(String),
    #[error("{0}")]
    Usage(String),
}

/// Result of the CLI's operations.
pub type Result<T> = std::result::Result<T, Error>;

/// One server: its URL and bearer token.
pub struct Server {
    pub what: &'static str,
    pub uri: Uri,
    pub token: Option<String>,
}

impl Server {
    fn address(&self) -> String {
        self.uri.to_string().trim_end_matches('/').to_owned()
    }

    fn unreachable(&self, message: impl ToString) -> Error {
        Error::Unreachable {
            what: self.what,
            address: self.address(),
            message: message.to_string(),
        }
    }

    fn broken(&self, message: impl ToString) -> Error {
        Error::Broken {
            what: self.what,
            address: self.address(),
            message: message.to_string(),
        }
    }

    async fn connect(&self) -> Result<TokioIo<tokio::net::TcpStream>> {
        if self.uri.scheme_str() != Some("http") {
            return Err(Error::Usage(format!(
                "{} URL {} must start with http://",
                self.what,
                self.address()
            )));
        }
        let host = self.uri.host().unwrap_or("127.0.0.1");
        let port = self.uri.port_u16().unwrap_or(80);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect((host, port)))
            .await
            .map_err(|_| self.unreachable("connection timed out"))?
            .map_err(|e| self.unreachable(e))?;
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    fn request(&self, method: Method, path: &str, body: Bytes) -> http::Request<Full<Bytes>> {
        let base = self.address();
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .body(Full::new(body))
            .expect("valid request");
        if let Some(host) = self
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
        if let Some(value) = self
            .token
            .as_ref()
            .and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        request
    }
}

/// The runtime every call runs on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .expect("a current-thread runtime starts")
}

/// A meta REST call: its HTTP status and JSON body (`null` when empty or not JSON).
pub async fn rest(
    meta: &Server,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value)> {
    let io = meta.connect().await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| meta.unreachable(e))?;
    tokio::spawn(conn);
    let bytes = body
        .map(|b| Bytes::from(serde_json::to_vec(b).expect("json")))
        .unwrap_or_default();
    let mut request = meta.request(method, path, bytes);
    if body.is_some() {
        request.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    };
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| meta.broken("no answer in time"))?
        .map_err(|e| meta.broken(e))?;
    if status == 401 || status == 403 {
        return Err(Error::Status(format!(
            "{} at {} refused the request (HTTP {status}): set RESTATE_META_TOKEN",
            meta.what,
            meta.address()
        )));
    }
    Ok((
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    ))
}

/// Streams a scan, calling `each` for every row as it arrives.
pub async fn scan(
    storage: &Server,
    request: &ScanRequest,
    mut each: impl FnMut(Pair) -> Result<()>,
) -> Result<()> {
    let io = storage.connect().await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| storage.unreachable(e))?;
    tokio::spawn(conn);
    let message = request.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut http_request = storage.request(
        Method::POST,
        "/dev.restate.storage.scan.v1.Storage/Scan",
        framed.freeze(),
    );
    let headers = http_request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("te", HeaderValue::from_static("trailers"));
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(http_request))
        .await
        .map_err(|_| storage.broken("no answer in time"))?
        .map_err(|e| storage.broken(e))?;
    if let Some(status) = grpc_status(response.headers()) {
        return check(storage, status);
    }
    read_stream(storage, response.into_body(), &mut each).await
}

/// Reads gRPC messages off the body until its trailers.
async fn read_stream(
    storage: &Server,
    mut body: Incoming,
    each: &mut impl FnMut(Pair) -> Result<()>,
) -> Result<()> {
    let mut buffer = BytesMut::new();
    let mut rows = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            storage.broken(format!(
                "the scan ended after {rows} rows without its status ({e})"
            ))
        })?;
        if let Some(trailers) = frame.trailers_ref() {
            let status = grpc_status(trailers).unwrap_or((2, "no grpc-status".into()));
            return check(storage, status);
        }
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
            while let Some(message) = next_message(&mut buffer)? {
                let pair = Pair::decode(message)
                    .map_err(|e| storage.broken(format!("a row does not decode: {e}")))?;
                rows += 1;
                each(pair)?;
            }
        }
    }
    Err(storage.broken(format!(
        "the scan ended after {rows} rows without its status (server gone?)"
    )))
}

fn next_message(buffer: &mut BytesMut) -> Result<Option<Bytes>> {
    if buffer.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(Error::Status(format!("a row of {len} bytes is too large")));
    }
    if buffer.len() < 5 + len {
        return Ok(None);
    }
    buffer.advance(5);
    Ok(Some(buffer.split_to(len).freeze()))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<(u16, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some((code, message))
}

fn check(storage: &Server, (code, message): (u16, String)) -> Result<()> {
    match code {
        0 => Ok(()),
        16 | 7 => Err(Error::Status(format!(
            "{} at {} refused the scan: {message} (set RESTATE_STORAGE_TOKEN)",
            storage.what,
            storage.address()
        ))),
        _ => Err(Error::Status(format!(
            "{} at {} answered {}: {message}",
            storage.what,
            storage.address(),
            code_name(code)
        ))),
    }
}

fn code_name(code: u16) -> String {
    restate::grpc::Code::NAMES
        .get(usize::from(code))
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("status {code}"))
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

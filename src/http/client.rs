//! Outbound HTTP/2 on glommio over a glommio `TcpStream`: [`Streams`] drives h2 itself (the invoker's
//! attempts: one stream each, no task per request), [`Connection`] is hyper's client (discovery and
//! other one-off requests that read a whole response).
//!
//! `http://` endpoints are reached with prior knowledge (h2c), `https://` ones over TLS (rustls) with ALPN
//! `h2`. Through an HTTP proxy the connection goes to the proxy and the request keeps the endpoint's
//! authority, which is what an Envoy-style sidecar routes on.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use bytes::Bytes;
use futures::future::{select, Either};
use glommio::net::TcpStream;
use http_body_util::BodyExt;

use super::allow::AllowList;
use super::io::Activity;
use super::{Body, Io, LocalExec};

/// Why an outbound request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad uri {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot connect to {address}: {message}")]
    Connect { address: String, message: String },
    #[error("HTTP/2 handshake with {address} failed: {message}")]
    Handshake { address: String, message: String },
    #[error("request failed: {0}")]
    Request(String),
    #[error("response body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connecting to {host} is not allowed: it is not in meta.allowed_endpoints")]
    NotAllowed { host: String },
}

impl Error {
    /// Connection-level failures and timeouts may heal; a bad URI or an oversized answer will not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::Handshake { .. }
                | Error::Request(_)
                | Error::Timeout(_)
                | Error::Tls(_)
        )
    }
}

/// The TLS settings of outbound connections: Mozilla's roots plus the PEM certificates of an optional
/// file, ALPN `h2` only.
pub fn tls_config(extra_ca_file: &str) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !extra_ca_file.is_empty() {
        let certs = CertificateDer::pem_file_iter(extra_ca_file)
            .map_err(|e| Error::Tls(format!("cannot read {extra_ca_file}: {e}")))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| Error::Tls(format!("bad certificate in {extra_ca_file}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("bad certificate in {extra_ca_file}: {e}")))?;
        }
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The port written in `authority`, checked: `Ok(None)` when it names none. `http::Uri` accepts any
/// digits there and then reports no port at all (so `:99999` would silently mean the default port).
pub fn explicit_port(authority: &http::uri::Authority) -> Result<Option<u16>, String> {
    let host_port = authority
        .as_str()
        .rsplit_once('@')
        .map_or(authority.as_str(), |(_, rest)| rest);
    if host_port.ends_with(']') {
        return Ok(None); // an IPv6 literal without a port
    }
    let Some((_, port)) = host_port.rsplit_once(':') else {
        return Ok(None);
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(Some(port)),
        _ => Err(format!(
            "port {:?} is not a number from 1 to 65535",
            port.chars().take(16).collect::<String>()
        )),
    }
}

/// `uri` with the credentials of its authority (`user:password@`) replaced by `***`, for messages.
pub fn redact_userinfo(uri: &str) -> String {
    let start = uri.find("://").map_or(0, |i| i + 3);
    let end = uri[start..]
        .find(['/', '?', '#'])
        .map_or(uri.len(), |i| start + i);
    match uri[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &uri[..start], &uri[start + at..]),
        None => uri.to_owned(),
    }
}

/// Where and how to connect for `uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` of the TCP connection: the proxy if one is set, else the URI's authority.
    pub address: String,
    /// For `https://`: the name the server's certificate must carry.
    pub tls_name: Option<String>,
    /// The endpoint's host (brackets of IPv6 literals removed): what `meta.allowed_endpoints` checks.
    pub host: String,
    /// True when `address` is a proxy's.
    pub via_proxy: bool,
}

/// Resolves where to connect for `uri`, through `proxy` if given (plain HTTP proxies, `http://` only).
pub fn target(uri: &http::Uri, proxy: Option<&str>) -> Result<Target, Error> {
    let bad = |uri: &str, reason: &str| Error::BadUri {
        uri: uri.to_owned(),
        reason: reason.to_owned(),
    };
    // Rendered only for an error: this runs for every attempt.
    let shown = || redact_userinfo(&uri.to_string());
    let host = uri.host().ok_or_else(|| bad(&shown(), "no host"))?;
    let port = match uri.authority() {
        Some(authority) => explicit_port(authority).map_err(|reason| bad(&shown(), &reason))?,
        None => None,
    };
    let tls_name = match uri.scheme_str() {
        Some("http") => None,
        Some("https") if proxy.is_some() => {
            return Err(Error::Unsupported(
                "https endpoints cannot be reached through an HTTP proxy".to_owned(),
            ))
        }
        Some("https") => Some(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        ),
        _ => return Err(bad(&shown(), "the scheme must be http or https")),
    };
    let default_port = if tls_name.is_some() { 443 } else { 80 };
    let endpoint_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let address = match proxy {
        Some(p) => {
            let proxy: http::Uri = p.parse().map_err(|_| bad(p, "not a valid proxy uri"))?;
            if proxy.scheme_str() != Some("http") {
                return Err(bad(p, "the proxy must be an http:// uri"));
            }
            let proxy_host = proxy.host().ok_or_else(|| bad(p, "no host"))?;
            format!("{proxy_host}:{}", proxy.port_u16().unwrap_or(80))
        }
        None => format!("{host}:{}", port.unwrap_or(default_port)),
    };
    Ok(Target {
        address,
        tls_name,
        host: endpoint_host,
        via_proxy: proxy.is_some(),
    })
}

/// A hyper HTTP/2 client connection to one address, for requests answered with a whole body.
pub struct Connection {
    sender: hyper::client::conn::http2::SendRequest<Body>,
}

impl Connection {
    /// Opens a TCP connection (TLS for https), and performs the HTTP/2 handshake. The connection task
    /// runs on the current core until the connection closes.
    pub async fn open(
        target: &Target,
        tls: &Arc<ClientConfig>,
        allow: &AllowList,
    ) -> Result<Connection, Error> {
        let io = Io::new(connect(target, tls, allow).await?, Activity::new());
        let (sender, connection) = hyper::client::conn::http2::Builder::new(LocalExec)
            .handshake(io)
            .await
            .map_err(|e| Error::Handshake {
                address: target.address.clone(),
                message: e.to_string(),
            })?;
        let address = Rc::new(target.address.clone());
        glommio::spawn_local(async move {
            if let Err(e) = connection.await {
                log::debug!(address = address.as_str(); "HTTP/2 client connection ended: {e}");
            }
        })
        .detach();
        Ok(Connection { sender })
    }

    /// Sends a request and reads the whole response body, at most `limit` bytes: an announced
    /// `content-length` over it fails before anything is read, and the count is checked frame by frame
    /// while reading, so no more than `limit` bytes (plus one HTTP/2 frame) are ever buffered. The body
    /// of an error answer (non-2xx) is not read at all: callers report the status, never the remote's
    /// text.
    pub async fn request(
        &mut self,
        request: http::Request<Body>,
        limit: usize,
    ) -> Result<http::Response<Bytes>, Error> {
        self.sender
            .ready()
            .await
            .map_err(|e| Error::Request(e.to_string()))?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| Error::Request(e.to_string()))?;
        let (parts, body) = response.into_parts();
        if !parts.status.is_success() {
            return Ok(http::Response::from_parts(parts, Bytes::new()));
        }
        let announced = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|length| length > limit as u64) {
            return Err(Error::TooLarge { limit });
        }
        let body = http_body_util::Limited::new(body, limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Error::TooLarge { limit }
                } else {
                    Error::Request(e.to_string())
                }
            })?
            .to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }
}

/// A connected socket to a target: plain TCP (h2c) or TLS over it (`futures`' `Either` reads and
/// writes through whichever it holds).
type Transport = Either<TcpStream, Box<futures_rustls::client::TlsStream<TcpStream>>>;

/// Resolves and checks the target, connects, and for `https` completes TLS with ALPN `h2`.
async fn connect(
    target: &Target,
    tls: &Arc<ClientConfig>,
    allow: &AllowList,
) -> Result<Transport, Error> {
    let address = target.address.as_str();
    let connect_error = |message: String| Error::Connect {
        address: address.to_owned(),
        message,
    };
    let resolved = resolve(address)
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    check_allowed(target, resolved, allow).await?;
    let stream = TcpStream::connect(resolved)
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let Some(name) = &target.tls_name else {
        return Ok(Either::Left(stream));
    };
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| Error::Tls(format!("bad server name {name}: {e}")))?;
    let stream = futures_rustls::TlsConnector::from(tls.clone())
        .connect(server_name, stream)
        .await
        .map_err(|e| Error::Tls(format!("handshake with {address}: {e}")))?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(Error::Tls(format!(
            "{address} did not negotiate HTTP/2 (ALPN h2)"
        )));
    }
    Ok(Either::Right(Box::new(stream)))
}

/// Settings of [`Streams`] connections, hyper's client defaults: a stream may receive 2 MiB and the
/// connection 5 MiB before we release capacity (which we do as we read), response header blocks up to
/// 16 KiB, and at most 100 streams until the endpoint's SETTINGS say how many it takes.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;
const MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
const INITIAL_MAX_STREAMS: usize = 100;

/// An HTTP/2 connection used through h2 itself (the invoker's streams): a request is opened, its body
/// written and its response read on the caller's task, with no task or channel per request (hyper's
/// client spawns two tasks per request and hands each one through a channel). The connection's own
/// task answers PINGs and, with a keep-alive, drops the connection once a PING of ours goes unanswered.
#[derive(Clone)]
pub struct Streams {
    sender: h2::client::SendRequest<Bytes>,
    /// Set by the connection's task when it ends.
    closed: Rc<Cell<bool>>,
}

impl Streams {
    /// Connects like [`Connection::open`] and performs the HTTP/2 handshake; `keep_alive`: PING
    /// every `.0`, drop the connection when one is not answered within `.1`.
    pub async fn open(
        target: &Target,
        tls: &Arc<ClientConfig>,
        keep_alive: Option<(Duration, Duration)>,
        allow: &AllowList,
    ) -> Result<Streams, Error> {
        let io = Io::new(connect(target, tls, allow).await?, Activity::new());
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_max_send_streams(INITIAL_MAX_STREAMS)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST_BYTES)
            .enable_push(false)
            .handshake::<_, Bytes>(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| Error::Handshake {
                address: target.address.clone(),
                message: e.to_string(),
            })?;
        let pings = connection.ping_pong();
        let closed = Rc::new(Cell::new(false));
        let ended = closed.clone();
        let address = target.address.clone();
        glommio::spawn_local(async move {
            let pinged = std::pin::pin!(ping_until_unanswered(pings, keep_alive));
            let why = match select(connection, pinged).await {
                Either::Left((Ok(()), _)) => "closed".to_owned(),
                Either::Left((Err(e), _)) => e.to_string(),
                Either::Right((why, _)) => why,
            };
            ended.set(true);
            log::debug!(address = address.as_str(); "HTTP/2 client connection ended: {why}");
        })
        .detach();
        Ok(Streams { sender, closed })
    }

    /// The connection ended (its requests fail).
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Opens a stream with the head `request` builds once the connection takes one more (the
    /// endpoint's limit on concurrent streams); the body is written to the returned stream. A
    /// connection that takes no new stream (the endpoint sent GOAWAY, or it broke) counts as closed
    /// from then on, although its task runs until its active streams end: the pool must not hand it
    /// out again meanwhile.
    pub async fn open_stream(
        &self,
        request: impl FnOnce() -> http::Request<()>,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), Error> {
        let failed = |e: h2::Error| {
            if e.is_go_away() || e.is_io() {
                self.closed.set(true);
            }
            Error::Request(e.to_string())
        };
        let mut sender = self.sender.clone().ready().await.map_err(failed)?;
        sender.send_request(request(), false).map_err(failed)
    }
}

/// PINGs every `keep_alive.0` while answered within `keep_alive.1`; returns why it stopped. Without a
/// keep-alive it never returns.
async fn ping_until_unanswered(
    pings: Option<h2::PingPong>,
    keep_alive: Option<(Duration, Duration)>,
) -> String {
    let (Some(mut pings), Some((interval, timeout))) = (pings, keep_alive) else {
        return std::future::pending().await;
    };
    loop {
        glommio::timer::sleep(interval).await;
        let ping = std::pin::pin!(pings.ping(h2::Ping::opaque()));
        let late = std::pin::pin!(glommio::timer::sleep(timeout));
        match select(ping, late).await {
            Either::Left((Ok(_), _)) => {}
            Either::Left((Err(e), _)) => return format!("PING failed: {e}"),
            Either::Right(_) => return format!("no PING answer within {timeout:?}"),
        }
    }
}

/// Refuses the connection unless `allow` permits the target's host; a name that no entry names is judged
/// by its addresses: the one about to be connected to, or through a proxy all it resolves to here.
async fn check_allowed(
    target: &Target,
    resolved: std::net::SocketAddr,
    allow: &AllowList,
) -> Result<(), Error> {
    let permitted = match allow.permits_host(&target.host) {
        Some(decided) => decided,
        None if !target.via_proxy => allow.permits_ip(resolved.ip()),
        None => {
            let host = target.host.clone();
            let addresses = glommio::executor()
                .spawn_blocking(move || {
                    use std::net::ToSocketAddrs;
                    (host.as_str(), 0)
                        .to_socket_addrs()
                        .map(|a| a.map(|a| a.ip()).collect::<Vec<_>>())
                        .unwrap_or_default()
                })
                .await;
            !addresses.is_empty() && addresses.iter().all(|ip| allow.permits_ip(*ip))
        }
    };
    if permitted {
        Ok(())
    } else {
        Err(Error::NotAllowed {
            host: target.host.clone(),
        })
    }
}

/// Resolves `host:port`. Names go through the system resolver on a blocking thread: a slow DNS server
/// must not stall the core.
async fn resolve(address: &str) -> std::io::Result<std::net::SocketAddr> {
    if let Ok(ip) = address.parse::<std::net::SocketAddr>() {
        return Ok(ip);
    }
    let owned = address.to_owned();
    glommio::executor()
        .spawn_blocking(move || {
            use std::net::ToSocketAddrs;
            owned.to_socket_addrs()?.next().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address")
            })
        })
        .await
}

/// One request on a fresh connection (discovery and other rare calls), bounded by `timeout`.
pub async fn request_once(
    uri: &http::Uri,
    proxy: Option<&str>,
    tls: &Arc<ClientConfig>,
    request: http::Request<Body>,
    limit: usize,
    timeout: Duration,
    allow: &AllowList,
) -> Result<http::Response<Bytes>, Error> {
    let target = target(uri, proxy)?;
    let attempt = async {
        let mut connection = Connection::open(&target, tls, allow).await?;
        connection.request(request, limit).await
    };
    glommio::timer::timeout(timeout, async { Ok(attempt.await) })
        .await
        .unwrap_or(Err(Error::Timeout(timeout)))
}

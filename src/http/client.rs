//! Outbound HTTP/2 on glommio: hyper's HTTP/2 client (h2 underneath) over a glommio `TcpStream`.
//!
//! `http://` endpoints are reached with prior knowledge (h2c). Through an HTTP proxy the connection goes
//! to the proxy and the request keeps the endpoint's authority, which is what an Envoy-style sidecar
//! routes on.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::net::TcpStream;
use http_body_util::BodyExt;

use super::io::Activity;
use super::{Body, Io, LocalExec};

/// Why an outbound request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad uri {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("{0} endpoints are not supported yet (use http:// with HTTP/2 prior knowledge)")]
    UnsupportedScheme(String),
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
}

impl Error {
    /// Connection-level failures and timeouts may heal; a bad URI or an oversized answer will not.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. } | Error::Handshake { .. } | Error::Request(_) | Error::Timeout(_)
        )
    }
}

/// Where to open the TCP connection for `uri`: the proxy if one is set, else the URI's authority.
pub fn connect_address(uri: &http::Uri, proxy: Option<&str>) -> Result<String, Error> {
    let bad = |uri: &str, reason: &str| Error::BadUri {
        uri: uri.to_owned(),
        reason: reason.to_owned(),
    };
    let target: http::Uri = match proxy {
        Some(p) => p.parse().map_err(|_| bad(p, "not a valid proxy uri"))?,
        None => uri.clone(),
    };
    match target.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(Error::UnsupportedScheme(other.to_owned())),
        None => return Err(bad(&target.to_string(), "no scheme")),
    }
    let host = target
        .host()
        .ok_or_else(|| bad(&target.to_string(), "no host"))?;
    let port = target.port_u16().unwrap_or(80);
    Ok(format!("{host}:{port}"))
}

/// An HTTP/2 connection to one address; requests are multiplexed on it.
pub struct Connection {
    sender: hyper::client::conn::http2::SendRequest<Body>,
}

impl Connection {
    /// Opens a TCP connection and performs the HTTP/2 handshake. The connection task runs on the current
    /// core until the connection closes.
    pub async fn open(address: &str) -> Result<Connection, Error> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| Error::Connect {
                address: address.to_owned(),
                message: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let io = Io::new(stream, Activity::new());
        let (sender, connection) = hyper::client::conn::http2::handshake(LocalExec, io)
            .await
            .map_err(|e| Error::Handshake {
                address: address.to_owned(),
                message: e.to_string(),
            })?;
        let address = Rc::new(address.to_owned());
        glommio::spawn_local(async move {
            if let Err(e) = connection.await {
                log::debug!(address = address.as_str(); "HTTP/2 client connection ended: {e}");
            }
        })
        .detach();
        Ok(Connection { sender })
    }

    /// Sends a request and reads the whole response body (at most `limit` bytes).
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

/// One request on a fresh connection (discovery and other rare calls), bounded by `timeout`.
pub async fn request_once(
    uri: &http::Uri,
    proxy: Option<&str>,
    request: http::Request<Body>,
    limit: usize,
    timeout: Duration,
) -> Result<http::Response<Bytes>, Error> {
    let address = connect_address(uri, proxy)?;
    let attempt = async {
        let mut connection = Connection::open(&address).await?;
        connection.request(request, limit).await
    };
    glommio::timer::timeout(timeout, async { Ok(attempt.await) })
        .await
        .unwrap_or(Err(Error::Timeout(timeout)))
}

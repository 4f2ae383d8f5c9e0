//! Discovery: `POST {endpoint}/discover` over HTTP/2, with bounded retries of transient failures only
//! (shared/docs/protocol.md §2.1).
//!
//! Errors say what failed (the status, the connection error) and never carry the remote's answer: meta
//! must not become a way to read what some host:port returns.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

use crate::config;
use crate::http::allow::AllowList;
use crate::http::client;
use crate::http::empty;

/// Why discovery got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid additional header {name:?}: {reason}")]
    BadHeader { name: String, reason: String },
    #[error("{source} (after {attempts} attempts)")]
    Unreachable {
        source: client::Error,
        attempts: u32,
    },
    #[error(
        "the endpoint answered HTTP {status} to POST /discover{hint} (after {attempts} attempts)"
    )]
    Status {
        status: StatusCode,
        /// What the status means for the user (redirects are not followed, ...).
        hint: &'static str,
        attempts: u32,
    },
    #[error("the endpoint answered with content-type {0:?}, expected application/proto")]
    ContentType(String),
    #[error(transparent)]
    Client(client::Error),
}

impl Error {
    /// Connection problems, timeouts and the statuses that say "later" are retried; an endpoint that
    /// answers 404 or 500 will answer the same again.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } => true,
            Error::Status { status, .. } => transient_status(*status),
            _ => false,
        }
    }
}

/// 408, 429, 502, 503 and 504: the endpoint (or the proxy before it) is busy or not up yet.
fn transient_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::REQUEST_TIMEOUT
            | StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT
    )
}

/// A word on what a failing status means.
fn status_hint(status: StatusCode) -> &'static str {
    if status.is_redirection() {
        " (redirects are not followed: register the final uri)"
    } else if status == StatusCode::NOT_FOUND {
        " (is this the endpoint's base uri?)"
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        " (does it need additional_headers?)"
    } else {
        ""
    }
}

/// Calls the endpoint's discovery and returns the raw `ServiceDiscoveryResponse` bytes.
pub async fn discover(
    uri: &str,
    additional_headers: &BTreeMap<String, String>,
    proxy: Option<&str>,
    tls: &Arc<rustls::ClientConfig>,
    meta: &config::Meta,
    allow: &AllowList,
) -> Result<Bytes, Error> {
    let target: http::Uri =
        format!("{uri}/discover")
            .parse()
            .map_err(|e: http::uri::InvalidUri| {
                Error::Client(client::Error::BadUri {
                    uri: uri.to_owned(),
                    reason: e.to_string(),
                })
            })?;
    let mut headers = http::HeaderMap::new();
    for (name, value) in additional_headers {
        let bad = |reason: &str| Error::BadHeader {
            name: name.clone(),
            reason: reason.to_owned(),
        };
        let name_parsed =
            HeaderName::try_from(name.as_str()).map_err(|_| bad("not a valid header name"))?;
        let value =
            HeaderValue::try_from(value.as_str()).map_err(|_| bad("not a valid header value"))?;
        headers.insert(name_parsed, value);
    }
    let mut delays = meta.discovery_retry_policy.delays();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut request = http::Request::post(target.clone())
            .header(http::header::CONTENT_TYPE, "application/proto")
            .header(http::header::ACCEPT, "application/proto")
            .body(empty())
            .expect("valid request");
        request.headers_mut().extend(headers.clone());
        let outcome = client::request_once(
            &target,
            proxy,
            tls,
            request,
            meta.max_discovery_response_bytes,
            meta.discovery_timeout,
            allow,
        )
        .await;
        let error = match outcome {
            Ok(response) if response.status().is_success() => {
                let content_type = response
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if content_type != "application/proto" {
                    return Err(Error::ContentType(content_type.to_owned()));
                }
                return Ok(response.into_body());
            }
            Ok(response) => {
                let status = response.status();
                let error = Error::Status {
                    status,
                    hint: status_hint(status),
                    attempts,
                };
                if !transient_status(status) {
                    return Err(error);
                }
                error
            }
            Err(e) if e.is_transient() => Error::Unreachable {
                source: e,
                attempts,
            },
            Err(e) => return Err(Error::Client(e)),
        };
        match delays.next() {
            Some(delay) => {
                log::warn!(uri, attempts; "discovery of {uri} failed, retrying in {delay:?}: {error}");
                glommio::timer::sleep(delay).await;
            }
            None => return Err(error),
        }
    }
}

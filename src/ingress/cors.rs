//! CORS for browser callers (Connect and gRPC-web clients), as Restate 0.1's permissive ingress layer
//! did: a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered 204 with
//! what may follow; answers to an allowed origin name it and expose the Connect/gRPC response headers.
//! The allowed origins are `worker.ingress_grpc.cors_allowed_origins` (`*`: any). Hand-written (a
//! few headers) because the ingress handler is not a tower service that tower-http's layer could wrap.

use http::{HeaderMap, HeaderValue, Method, StatusCode};

use crate::http::{empty, Body};

/// Request headers a browser may send (answered when the preflight asks none in particular).
const ALLOWED_HEADERS: &str = "content-type, connect-protocol-version, connect-timeout-ms, \
    connect-accept-encoding, connect-content-encoding, grpc-timeout, grpc-accept-encoding, \
    grpc-encoding, x-grpc-web, x-user-agent, idempotency-key, authorization";
/// Response headers a browser script may read.
const EXPOSED_HEADERS: &str = "grpc-status, grpc-message, grpc-status-details-bin, \
    grpc-encoding, connect-content-encoding, x-restate-invocation-id";
/// How long a browser may cache a preflight's answer, in seconds.
const MAX_AGE: &str = "3600";

/// The request's origin, if it is allowed.
fn allowed_origin(allowed: &[String], headers: &HeaderMap) -> Option<HeaderValue> {
    allowed_value(allowed, headers.get(http::header::ORIGIN)?)
}

fn allowed_value(allowed: &[String], origin: &HeaderValue) -> Option<HeaderValue> {
    let text = origin.to_str().ok()?;
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(text))
        .then(|| origin.clone())
}

/// The answer to a preflight request, or `None` when `request` is not one.
pub fn preflight(
    allowed: &[String],
    request: &http::Request<impl Sized>,
) -> Option<http::Response<Body>> {
    let headers = request.headers();
    if request.method() != Method::OPTIONS
        || !headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let mut response = http::Response::new(empty());
    let Some(origin) = allowed_origin(allowed, headers) else {
        *response.status_mut() = StatusCode::FORBIDDEN;
        return Some(response);
    };
    *response.status_mut() = StatusCode::NO_CONTENT;
    let out = response.headers_mut();
    out.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    out.insert(http::header::VARY, HeaderValue::from_static("origin"));
    out.insert(
        http::header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS"),
    );
    let requested = headers
        .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static(ALLOWED_HEADERS));
    out.insert(http::header::ACCESS_CONTROL_ALLOW_HEADERS, requested);
    out.insert(
        http::header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(MAX_AGE),
    );
    Some(response)
}

/// Adds the CORS headers to the answer to a request from `origin`, if it is allowed.
pub fn decorate(allowed: &[String], origin: &HeaderValue, response: &mut http::Response<Body>) {
    if let Some(origin) = allowed_value(allowed, origin) {
        let out = response.headers_mut();
        out.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        out.append(http::header::VARY, HeaderValue::from_static("origin"));
        out.insert(
            http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: &str) -> http::Request<()> {
        http::Request::builder()
            .method(Method::OPTIONS)
            .uri("/counter/add")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(())
            .unwrap()
    }

    #[test]
    fn preflights_are_answered_for_allowed_origins_only() {
        let any = ["*".to_owned()];
        let answer = preflight(&any, &request("https://app.example")).unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            answer.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        let some = ["https://ok.example".to_owned()];
        assert_eq!(
            preflight(&some, &request("https://evil.example"))
                .unwrap()
                .status(),
            StatusCode::FORBIDDEN
        );
        let plain = http::Request::builder()
            .method(Method::POST)
            .body(())
            .unwrap();
        assert!(preflight(&any, &plain).is_none());
    }
}

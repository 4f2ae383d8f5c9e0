//! The ingress server (:9090): gRPC and Connect unary calls to registered services.
//!
//! Until services can be registered (the schema registry), every well-formed call names a service that
//! does not exist and is answered NOT_FOUND in the caller's protocol; a request in no protocol we speak
//! is answered 415.

use std::rc::Rc;

use futures::FutureExt;
use http::{Method, StatusCode};

use crate::grpc::{connect_error, trailers_only, Code};
use crate::http::server::Handler;
use crate::http::Body;

/// The protocol a request speaks, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `application/grpc` or `application/grpc+proto`.
    Grpc,
    /// Connect unary with a JSON body.
    ConnectJson,
    /// Connect unary with a protobuf body.
    ConnectProto,
}

impl Protocol {
    /// Classifies a content type (parameters such as `charset` are ignored).
    pub fn from_content_type(content_type: Option<&str>) -> Option<Protocol> {
        let essence = content_type?.split(';').next()?.trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/grpc" | "application/grpc+proto" => Some(Protocol::Grpc),
            "application/json" => Some(Protocol::ConnectJson),
            "application/proto" => Some(Protocol::ConnectProto),
            _ => None,
        }
    }
}

/// Builds the ingress handler of one core.
pub fn handler() -> Handler {
    Rc::new(|request| {
        async move { route(request.method(), request.uri().path(), request.headers()) }
            .boxed_local()
    })
}

fn route(method: &Method, path: &str, headers: &http::HeaderMap) -> http::Response<Body> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let Some(protocol) = Protocol::from_content_type(content_type) else {
        return crate::http::json_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &serde_json::json!({
                "code": "unknown",
                "message": format!(
                    "unsupported content-type {:?}: use application/grpc, application/json or application/proto",
                    content_type.unwrap_or("")
                ),
            }),
        );
    };
    let error = |code: Code, message: &str| match protocol {
        Protocol::Grpc => trailers_only(code, message),
        Protocol::ConnectJson | Protocol::ConnectProto => connect_error(code, message),
    };
    if method != Method::POST {
        return error(
            Code::Unimplemented,
            &format!("{method} is not supported; use POST"),
        );
    }
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(service), Some(method))
            if !service.is_empty() && !method.is_empty() && !method.contains('/') =>
        {
            error(Code::NotFound, &format!("service '{service}' not found"))
        }
        _ => error(
            Code::NotFound,
            &format!("path {path} is not /{{service}}/{{method}}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::Protocol;

    #[test]
    fn content_types_select_the_protocol() {
        assert_eq!(
            Protocol::from_content_type(Some("application/grpc")),
            Some(Protocol::Grpc)
        );
        assert_eq!(
            Protocol::from_content_type(Some("Application/JSON; charset=utf-8")),
            Some(Protocol::ConnectJson)
        );
        assert_eq!(
            Protocol::from_content_type(Some("application/proto")),
            Some(Protocol::ConnectProto)
        );
        assert_eq!(Protocol::from_content_type(Some("text/plain")), None);
        assert_eq!(Protocol::from_content_type(None), None);
    }
}

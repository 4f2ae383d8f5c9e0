//! The JSON bodies meta accepts, and their parsing: pure functions of the request bytes, so that unit
//! tests and the `meta_requests` fuzz target (tests/fuzz) run exactly what the handlers run.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, Result};
use crate::partition::InvocationId;

/// Parses a JSON request body; malformed JSON or a wrong shape is a 400 saying what is wrong.
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// `POST /endpoints` (and the 0.1.0 alias `POST /services/discover`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub uri: String,
    #[serde(default)]
    pub additional_headers: BTreeMap<String, String>,
    #[serde(default = "default_force")]
    pub force: bool,
    /// Accepted for 0.1.0 compatibility; the node-wide invoker policy applies.
    #[serde(default)]
    #[allow(dead_code)]
    retry_policy: Option<Value>,
}

fn default_force() -> bool {
    true
}

/// `PATCH /services/{name}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchService {
    pub public: bool,
}

/// `DELETE /invocations`: `{"sid": "<token>"}` or `{"sid": {"service", "key"?, "invocation_id"|"id"}}`.
#[derive(Debug, Deserialize)]
pub struct CancelInvocation {
    #[serde(default)]
    sid: Value,
}

impl CancelInvocation {
    /// The invocation the sid names.
    pub fn invocation_id(&self) -> Result<InvocationId> {
        match &self.sid {
            Value::String(token) => crate::ingress::parse_sid(token),
            Value::Object(parts) => parts
                .get("invocation_id")
                .or_else(|| parts.get("id"))
                .and_then(Value::as_str)
                .and_then(InvocationId::from_hex),
            _ => None,
        }
        .ok_or_else(|| {
            let sid = super::clip(&self.sid.to_string());
            ApiError::bad_request(format!("not an invocation sid: {sid}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_bodies_default_force_and_refuse_unknown_fields() {
        let r: RegisterRequest = parse(br#"{"uri": "http://localhost:9080"}"#).unwrap();
        assert_eq!(r.uri, "http://localhost:9080");
        assert!(r.force);
        assert!(r.additional_headers.is_empty());
        let e = parse::<RegisterRequest>(br#"{"uri": "x", "nope": 1}"#).unwrap_err();
        assert_eq!(e.status, http::StatusCode::BAD_REQUEST);
        assert!(e.message.contains("nope"), "{}", e.message);
    }

    #[test]
    fn cancel_bodies_name_an_invocation() {
        let id = InvocationId::new(7);
        let token: CancelInvocation =
            parse(format!(r#"{{"sid": "counter-AAAA-{}"}}"#, id.to_hex()).as_bytes()).unwrap();
        assert_eq!(token.invocation_id().unwrap(), id);
        let parts: CancelInvocation =
            parse(format!(r#"{{"sid": {{"service": "s", "id": "{}"}}}}"#, id.to_hex()).as_bytes())
                .unwrap();
        assert_eq!(parts.invocation_id().unwrap(), id);
        let missing: CancelInvocation = parse(b"{}").unwrap();
        assert_eq!(
            missing.invocation_id().unwrap_err().status,
            http::StatusCode::BAD_REQUEST
        );
        assert!(parse::<CancelInvocation>(b"\"x\"").is_err());
        assert!(parse::<PatchService>(br#"{"public": "yes"}"#).is_err());
    }
}

//! gRPC status codes and the responses that carry them (gRPC trailers, Connect error JSON).

use http::{HeaderValue, StatusCode};

use crate::http::{empty, json_response, Body};

/// A gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The gRPC names of the codes (`NOT_FOUND`), indexed by code number (for clients that print
    /// a status they received as a number).
    pub const NAMES: [&'static str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];

    /// The Connect protocol's name for the code (`not_found`, ...).
    pub fn connect_name(self) -> &'static str {
        match self {
            Code::Ok => "ok",
            Code::Cancelled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a Connect error with this code (the current Connect table).
    pub fn connect_http_status(self) -> StatusCode {
        let code = match self {
            Code::Ok => 200,
            Code::Cancelled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        };
        StatusCode::from_u16(code).expect("valid status")
    }
}

/// The `grpc-status` header or trailer (a constant: inserting by `&str` parses the name each time).
pub const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// A gRPC Trailers-Only error response: HTTP 200 whose headers carry `grpc-status` and `grpc-message`.
pub fn trailers_only(code: Code, message: &str) -> http::Response<Body> {
    let mut response = http::Response::new(empty());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, HeaderValue::from(code as u16));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", value);
    }
    response
}

/// The answer to a call without the server's bearer token: UNAUTHENTICATED, as a gRPC Trailers-Only
/// response for gRPC requests and as a Connect error for anything else.
pub fn unauthenticated(request: &http::Request<hyper::body::Incoming>) -> http::Response<Body> {
    let message = "missing or wrong bearer token: send `authorization: Bearer <token>` \
                   (worker.storage_grpc.auth_token)";
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        trailers_only(Code::Unauthenticated, message)
    } else {
        connect_error(Code::Unauthenticated, message)
    }
}

/// A Connect unary error: the code's HTTP status and `{"code", "message"}`.
pub fn connect_error(code: Code, message: &str) -> http::Response<Body> {
    json_response(
        code.connect_http_status(),
        &serde_json::json!({ "code": code.connect_name(), "message": message }),
    )
}

/// Percent-encodes a `grpc-message` value as the gRPC spec asks (printable ASCII except `%` stays).
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_names_are_indexed_by_code_number() {
        let all = [
            Code::Ok,
            Code::Cancelled,
            Code::Unknown,
            Code::InvalidArgument,
            Code::DeadlineExceeded,
            Code::NotFound,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
            Code::Unavailable,
            Code::DataLoss,
            Code::Unauthenticated,
        ];
        for code in all {
            // Connect spells CANCELLED with one L; every other name is the same in upper case.
            let connect = code.connect_name().replace("canceled", "cancelled");
            assert_eq!(Code::NAMES[code as usize], connect.to_uppercase());
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("a b%c\né"), "a b%25c%0A%C3%A9");
    }

    #[test]
    fn connect_statuses_follow_the_current_table() {
        assert_eq!(Code::Cancelled.connect_http_status().as_u16(), 499);
        assert_eq!(Code::FailedPrecondition.connect_http_status().as_u16(), 400);
        assert_eq!(Code::Aborted.connect_http_status().as_u16(), 409);
        assert_eq!(Code::ResourceExhausted.connect_http_status().as_u16(), 429);
    }
}

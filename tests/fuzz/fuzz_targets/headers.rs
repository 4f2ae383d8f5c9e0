//! Values derived from request headers: `grpc-timeout` and `connect-timeout-ms` (parsed with bounded
//! digits, clamped to the configured maximum) and the content type selecting the protocol. Must never
//! panic, and no timeout exceeds the maximum.
//!
//! Input: byte 0 picks the header, the rest is its value.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use restate::ingress::{headers, Protocol};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let max = restate::config::IngressGrpc::default().max_request_timeout;
    let mut map = HeaderMap::new();
    match pick % 3 {
        0 => {
            map.insert("grpc-timeout", value);
        }
        1 => {
            map.insert("connect-timeout-ms", value);
        }
        _ => {
            let _ = Protocol::from_content_type(value.to_str().ok());
            return;
        }
    }
    if let Ok(Some(timeout)) = headers::request_timeout(&map, max) {
        assert!(timeout <= max);
    }
});

//! Hostile callers against the ingress and the partition: header values at their extremes, forged and
//! stale completions, overloaded inboxes and callers that attach and leave. Each test is the regression
//! test of a finding of the hardening issue and failed before its fix.

mod common;

use std::time::{Duration, Instant};

use common::{http1_request, register, request_json_with, Endpoint, Server};
use serde_json::{json, Value};

fn add_with(server: &Server, key: &str, delta: i64, headers: &[(&str, &str)]) -> (u16, Value) {
    request_json_with(
        server.ingress,
        "/restate.test.Counter/Add",
        &json!({ "key": key, "delta": delta }),
        headers,
    )
}

/// `grpc-timeout: 9223372036854775807S` used to panic the executor that served it ("overflow when adding
/// duration to instant"), leaving a core whose listeners accepted but never served. Now every extreme
/// value is refused or clamped, and every core keeps serving: many fresh connections (spread over both
/// cores by SO_REUSEPORT) all get answers.
#[test]
fn extreme_timeout_headers_are_refused_or_clamped_and_no_core_dies() {
    let endpoint = Endpoint::start("ok", &[]);
    let server = Server::start(&[("RESTATE_RUNTIME__CORES", "2")]);
    register(&server, &endpoint.uri());
    let refused = [
        ("grpc-timeout", "9223372036854775807S"),
        ("grpc-timeout", "18446744073709551615S"),
        ("grpc-timeout", "5124095576030432H"),
        ("grpc-timeout", "10s"),
        ("connect-timeout-ms", "-1"),
        ("connect-timeout-ms", "99999999999999999999"),
    ];
    for round in 0..4 {
        for (name, value) in refused {
            let (status, body) = add_with(&server, "t", 1, &[(name, value)]);
            assert_eq!(status, 400, "{name}: {value} (round {round}): {body}");
            assert_eq!(body["code"], "invalid_argument", "{body}");
            assert!(body["message"].as_str().unwrap().contains(name), "{body}");
        }
    }
    // Huge but well-formed values are clamped to worker.ingress_grpc.max_request_timeout.
    let mut expected = 0;
    for (name, value) in [
        ("grpc-timeout", "99999999H"),
        ("connect-timeout-ms", "9999999999"),
    ] {
        for _ in 0..8 {
            expected += 1;
            let (status, body) = add_with(&server, "t", 1, &[(name, value)]);
            assert_eq!(
                (status, &body),
                (200, &json!({ "value": expected.to_string() }))
            );
        }
    }
    assert!(
        server.log().lines().all(|l| !l.contains("panic")),
        "{}",
        server.log()
    );
    // Every core still accepts and serves (each call is a fresh connection).
    for _ in 0..16 {
        expected += 1;
        let (status, body) = add_with(&server, "t", 1, &[]);
        assert_eq!(
            (status, &body),
            (200, &json!({ "value": expected.to_string() }))
        );
    }
}

/// A short grpc-timeout still bounds the caller's wait (the clamp does not disable timeouts).
#[test]
fn a_short_timeout_header_still_bounds_the_wait() {
    let endpoint = Endpoint::start("hang", &[]);
    let server = Server::start(&[]);
    register(&server, &endpoint.uri());
    let started = Instant::now();
    let (status, body) = add_with(&server, "slow", 1, &[("connect-timeout-ms", "300")]);
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let (status, _) = http1_request(server.meta, "GET", "/health", &[], b"").unwrap();
    assert_eq!(status, 200);
}

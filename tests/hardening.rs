//! Hostile callers against the ingress and the partition: header values at their extremes, forged and
//! stale completions, overloaded inboxes and callers that attach and leave. Each test is the regression
//! test of a finding of the hardening issue and failed before its fix.

mod common;

use std::time::{Duration, Instant};

use common::{
    awakeable_id, connect_call, eventually, http1_request, idempotent_id, register,
    request_json_with, Endpoint, SdkEndpoint, Server,
};
use serde_json::{json, Value};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

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

/// Resolving an awakeable used to complete any waiting entry: an id built from a sleeping invocation's
/// id and its Sleep entry's index woke a one-hour durable sleep at once. Now a completion from outside
/// completes only an Awakeable entry that exists and is not completed; anything else is refused with a
/// WARN and nothing is stored. A string that is no awakeable id at all fails the resolver's invocation.
#[test]
fn forged_and_stale_awakeable_completions_are_refused() {
    let sdk = SdkEndpoint::start();
    let server = std::sync::Arc::new(Server::start(&[]));
    register(&server, &sdk.uri());
    // A one-hour sleep (entry 1) of an invocation whose id the idempotency key fixes.
    let sleeping = {
        let server = server.clone();
        let wake_ms = now_ms() + 3_600_000;
        std::thread::spawn(move || {
            request_json_with(
                server.ingress,
                "/sleeper/sleepUntil",
                &json!({ "key": "s", "request": wake_ms }),
                &[("idempotency-key", "nap"), ("connect-timeout-ms", "20000")],
            )
        })
    };
    let sleeper = idempotent_id("sleeper", "sleepUntil", "s", "nap");
    let resolve = |id: &str| {
        connect_call(
            &server,
            "/resolver/resolve",
            &json!({ "request": { "id": id, "value": "forged" } }),
        )
    };
    // Re-pointed at the Sleep entry (until the entry exists, the same id is refused as past the end).
    eventually(Duration::from_secs(20), || {
        assert_eq!(resolve(&awakeable_id(&sleeper, 1)).0, 200);
        std::thread::sleep(Duration::from_millis(100));
        server.log().contains("entry 1 has type").then_some(())
    });
    // Past the journal's end.
    assert_eq!(resolve(&awakeable_id(&sleeper, 7)).0, 200);
    eventually(Duration::from_secs(10), || {
        server
            .log()
            .contains("refused a completion of entry 7: its journal has")
            .then_some(())
    });
    // The sleep did not wake (a woken sleep answers at once; the caller waits up to 20 s).
    std::thread::sleep(Duration::from_millis(200));
    assert!(!sleeping.is_finished(), "{:?}", sleeping.join());

    // Not an awakeable id at all: the resolver's invocation fails with INVALID_ARGUMENT, at once.
    let (status, body) = resolve("definitely-not-an-id");
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not an awakeable id"),
        "{body}"
    );

    // A real awakeable resolved twice: the second completion is refused (already completed).
    let parked = {
        let server = server.clone();
        std::thread::spawn(move || {
            connect_call(
                &server,
                "/awaiter/park",
                &json!({ "key": "p", "request": 0 }),
            )
        })
    };
    let id = eventually(Duration::from_secs(10), || {
        let (_, body) = connect_call(&server, "/mailbox/get", &json!({ "key": "p" }));
        body["response"].as_str().map(str::to_owned)
    });
    assert_eq!(resolve(&id).0, 200);
    assert_eq!(
        parked.join().unwrap(),
        (200, json!({ "response": "forged" }))
    );
    drop(sleeping);
}

//! The in-repo gRPC load generator (`benches/grpc_load.rs`, included here) with the ghz configs of
//! `benches/ghz/` against a running server with the real SDK services registered: what it counts as OK
//! is what the server counts as invocations, and failures are counted, not hidden.

mod common;

#[path = "../benches/grpc_load.rs"]
#[allow(dead_code)]
mod grpc_load;

use std::time::Duration;

use common::{connect_call, eventually, h2_request, register, SdkEndpoint, Server};
use grpc_load::{run, Options};

/// The options for `benches/ghz/{config}` against `server`, `total` requests.
fn options(server: &Server, config: &str, total: u64) -> Options {
    Options {
        config: format!("{}/benches/ghz/{config}", env!("CARGO_MANIFEST_DIR")).into(),
        host: Some(format!("127.0.0.1:{}", server.ingress)),
        total: Some(total),
        concurrency: Some(8),
        connections: Some(2),
        skip_first: Some(0),
        threads: 1,
        ..Options::default()
    }
}

/// The value of one sample of `/metrics` (`name{labels}` exactly as written), 0 when absent.
fn sample(server: &Server, series: &str) -> u64 {
    let (status, _, text) = h2_request(server.meta, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    let text = String::from_utf8(text).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.parse().unwrap())
}

fn started(service: &str) -> String {
    format!("restate_invocations_started_total{{service=\"{service}\"}}")
}

fn completed(service: &str) -> String {
    format!("restate_invocations_completed_total{{service=\"{service}\"}}")
}

#[test]
fn ok_counts_match_the_servers_invocation_counters_for_every_ghz_config() {
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[]);
    register(&server, &sdk.uri());

    // Trivial handler, with a warm-up: skipped responses are not tallied but were sent.
    let mut trivial = options(&server, "trivial.json", 300);
    trivial.skip_first = Some(20);
    let report = run(&trivial).unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!((report.requests, report.ok, report.skipped), (280, 280, 20));
    assert_eq!(report.skipped_ok, 20);
    assert!(report.requests_per_second > 0.0 && report.latency_ms.max >= report.latency_ms.p50);
    let echo = "example.Echo";
    assert_eq!(sample(&server, &started(echo)), 300);
    assert_eq!(sample(&server, &completed(echo)), 300);

    // 1,000 keys, round-robin over the data array: each key once.
    let report = run(&options(&server, "counter_1000_keys.json", 1000)).unwrap();
    assert_eq!((report.ok, report.requests), (1000, 1000), "{report:?}");
    assert_eq!(sample(&server, &completed("counter")), 1000);
    for key in ["k0", "k500", "k999"] {
        let (status, body) =
            connect_call(&server, "/counter/get", &serde_json::json!({ "key": key }));
        assert_eq!(
            (status, &body["response"]),
            (200, &serde_json::json!(1)),
            "{key}"
        );
    }

    // One hot key: every call lands on the same counter.
    let report = run(&options(&server, "hot_key.json", 40)).unwrap();
    assert_eq!(report.ok, 40, "{report:?}");
    let (_, body) = connect_call(
        &server,
        "/counter/get",
        &serde_json::json!({ "key": "hot" }),
    );
    assert_eq!(body["response"], 40);

    // A call and a 100 ms sleep per request.
    let report = run(&options(&server, "call_sleep.json", 16)).unwrap();
    assert_eq!(report.ok, 16, "{report:?}");
    assert!(report.latency_ms.p50 >= 100.0, "{report:?}");
    assert_eq!(sample(&server, &completed("greeter")), 16);
    // The adds of the three configs, and the four `get` calls of this test.
    assert_eq!(sample(&server, &completed("counter")), 1000 + 40 + 16 + 4);

    // One-way calls are answered once enqueued; the invocations complete after.
    let report = run(&options(&server, "one_way.json", 100)).unwrap();
    assert_eq!(report.ok, 100, "{report:?}");
    assert_eq!(sample(&server, &started("dev.restate.Ingress")), 0);
    eventually(Duration::from_secs(30), || {
        (sample(&server, &completed(echo)) == 300 + 100).then_some(())
    });
    assert_eq!(sample(&server, &started(echo)), 400);
}

#[test]
fn errors_are_counted_by_code_when_the_endpoint_is_down() {
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[]);
    register(&server, &sdk.uri());
    drop(sdk);
    let mut down = options(&server, "trivial.json", 10);
    down.timeout = Some("300ms".into());
    let report = run(&down).unwrap();
    assert_eq!(report.ok, 0, "{report:?}");
    assert_eq!(
        report.errors.get("DEADLINE_EXCEEDED"),
        Some(&10),
        "{report:?}"
    );
    assert_eq!(report.requests, 10);
    // The server started them all and completed none: they retry until the endpoint is back.
    assert_eq!(sample(&server, &started("example.Echo")), 10);
    assert_eq!(sample(&server, &completed("example.Echo")), 0);

    // No server at all: the run fails at once instead of reporting a rate.
    let closed = common::free_port();
    let mut nowhere = options(&server, "trivial.json", 10);
    nowhere.host = Some(format!("127.0.0.1:{closed}"));
    assert!(
        matches!(run(&nowhere), Err(grpc_load::Error::Connect { .. })),
        "connecting to a closed port"
    );
}

//! The invoker against the in-repo endpoint, for what the real SDK cannot be made to do on demand:
//! replay after a failure mid-journal, suspension and resume, request/response mode, protocol
//! violations, abort timeouts, terminal failures, caller timeouts and side-effect acks.

mod common;

use std::time::{Duration, Instant};

use common::{connect_call, endpoint_stats, register, Endpoint, Server};
use serde_json::{json, Value};

/// Retries kept short and bounded.
const FAST: [(&str, &str); 3] = [
    ("RESTATE_WORKER__INVOKER__RETRY_POLICY__TYPE", "fixed"),
    (
        "RESTATE_WORKER__INVOKER__RETRY_POLICY__INITIAL_INTERVAL",
        "10ms",
    ),
    ("RESTATE_WORKER__INVOKER__RETRY_POLICY__MAX_ATTEMPTS", "3"),
];

fn env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = FAST.to_vec();
    all.extend_from_slice(extra);
    all
}

fn add(server: &Server, key: &str, delta: i64) -> (u16, Value) {
    connect_call(
        server,
        "/restate.test.Counter/Add",
        &json!({ "key": key, "delta": delta }),
    )
}

#[test]
fn a_failure_mid_journal_is_retried_with_replay_and_applies_once() {
    let endpoint = Endpoint::start("ok", &["--fail-attempts", "2"]);
    let server = Server::start(&env(&[]));
    register(&server, &endpoint.uri());
    assert_eq!(add(&server, "k", 1), (200, json!({ "value": "1" })));
    assert_eq!(add(&server, "k", 2), (200, json!({ "value": "3" })));
    // Each call: two failed attempts (after SetState was journaled) and one that replays and finishes.
    assert_eq!(endpoint_stats(&endpoint).0, 6);
}

#[test]
fn request_response_endpoints_suspend_and_resume() {
    let endpoint = Endpoint::start("ok", &["--request-response"]);
    // No eager state: GetState must be answered by the runtime, which a request/response stream cannot
    // carry, so the endpoint suspends and the runtime resumes it with the completed entry.
    let server = Server::start(&env(&[(
        "RESTATE_WORKER__INVOKER__EAGER_STATE_SIZE_LIMIT",
        "0",
    )]));
    register(&server, &endpoint.uri());
    assert_eq!(add(&server, "rr", 5), (200, json!({ "value": "5" })));
    assert_eq!(add(&server, "rr", 2), (200, json!({ "value": "7" })));
    // The first call finds no state at all (a complete, empty map: answered by the endpoint); the
    // second finds state over the limit, suspends once and is resumed.
    assert_eq!(endpoint_stats(&endpoint).0, 3);
}

#[test]
fn bidi_streams_carry_completions_and_always_suspend_mode_gives_the_same_results() {
    let bidi = Endpoint::start("ok", &[]);
    let server = Server::start(&env(&[(
        "RESTATE_WORKER__INVOKER__EAGER_STATE_SIZE_LIMIT",
        "0",
    )]));
    register(&server, &bidi.uri());
    assert_eq!(add(&server, "b", 5), (200, json!({ "value": "5" })));
    assert_eq!(add(&server, "b", 2), (200, json!({ "value": "7" })));
    assert_eq!(
        endpoint_stats(&bidi).0,
        2,
        "completions flow on the open stream: one attempt each"
    );

    // inactivity_timeout = 0: every endpoint is driven request/response.
    let always = Endpoint::start("ok", &[]);
    let server = Server::start(&env(&[
        ("RESTATE_WORKER__INVOKER__EAGER_STATE_SIZE_LIMIT", "0"),
        ("RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT", "0s"),
    ]));
    register(&server, &always.uri());
    assert_eq!(add(&server, "b", 5), (200, json!({ "value": "5" })));
    assert_eq!(add(&server, "b", 2), (200, json!({ "value": "7" })));
    // As in request/response mode: the second call suspends and resumes.
    assert_eq!(endpoint_stats(&always).0, 3);
}

#[test]
fn protocol_violations_exhaust_retries_then_fail_the_caller_and_release_the_key() {
    let endpoint = Endpoint::start("violate", &[]);
    let server = Server::start(&env(&[]));
    register(&server, &endpoint.uri());
    let (status, body) = add(&server, "v", 1);
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("internal")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("0x0123"),
        "{body}"
    );
    assert_eq!(endpoint_stats(&endpoint).0, 3);
    // The key is free again: the next call on it runs (and fails the same way).
    let (status, _) = add(&server, "v", 1);
    assert_eq!(status, 500);
    assert_eq!(endpoint_stats(&endpoint).0, 6);
}

#[test]
fn a_silent_endpoint_is_aborted_and_callers_can_bound_their_wait() {
    let endpoint = Endpoint::start("hang", &[]);
    let server = Server::start(&env(&[
        ("RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT", "100ms"),
        ("RESTATE_WORKER__INVOKER__ABORT_TIMEOUT", "300ms"),
        ("RESTATE_WORKER__INVOKER__RETRY_POLICY__MAX_ATTEMPTS", "2"),
    ]));
    register(&server, &endpoint.uri());
    // The caller's own deadline answers first; the invocation carries on.
    let started = Instant::now();
    let (status, body) = common::request_json_with(
        server.ingress,
        "/restate.test.Counter/Add",
        &json!({ "key": "h", "delta": 1 }),
        &[("connect-timeout-ms", "150")],
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (504, Some("deadline_exceeded")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Without a deadline: two attempts aborted after inactivity + abort timeouts, then the failure.
    let (status, body) = add(&server, "h2", 1);
    assert_eq!(
        (status, body["code"].as_str()),
        (504, Some("deadline_exceeded")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("abort timeout"),
        "{body}"
    );
    let attempts = endpoint_stats(&endpoint).0;
    assert!(
        attempts >= 3,
        "two attempts for h2 and at least one for h: {attempts}"
    );
}

#[test]
fn terminal_failures_reach_the_caller_without_retries() {
    let endpoint = Endpoint::start("error-terminal", &[]);
    let server = Server::start(&env(&[]));
    register(&server, &endpoint.uri());
    let (status, body) = add(&server, "t", 1);
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({ "code": "failed_precondition", "message": "terminal failure" })
    );
    assert_eq!(endpoint_stats(&endpoint).0, 1);
}

#[test]
fn side_effects_are_acknowledged_once_durable_and_run_once() {
    let endpoint = Endpoint::start("ok", &[]);
    let server = Server::start(&env(&[]));
    register(&server, &endpoint.uri());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("effects.log");
    let text = format!("side-effect:{}", file.display());
    let (status, body) = connect_call(&server, "/restate.test.Echo/Echo", &json!({ "text": text }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text"], text.as_str());
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), 1);
    assert_eq!(endpoint_stats(&endpoint), (1, 1));
}

#[test]
fn calls_past_the_per_core_concurrency_limit_get_resource_exhausted() {
    let endpoint = Endpoint::start("hang", &[]);
    let server = std::sync::Arc::new(Server::start(&env(&[
        ("RESTATE_RUNTIME__CORES", "1"),
        ("RESTATE_WORKER__INGRESS_GRPC__CONCURRENCY_LIMIT", "2"),
    ])));
    register(&server, &endpoint.uri());
    // Two calls that never finish occupy the only core's two slots.
    let hanging: Vec<_> = (0..2)
        .map(|i| {
            let server = server.clone();
            std::thread::spawn(move || {
                common::request_json_with(
                    server.ingress,
                    "/restate.test.Counter/Add",
                    &json!({ "key": format!("c{i}"), "delta": 1 }),
                    &[("connect-timeout-ms", "3000")],
                )
            })
        })
        .collect();
    let limited = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(20));
        // Bounded: if it is admitted (the two are not in flight yet) it gives up after 100 ms.
        let (status, body) = common::request_json_with(
            server.ingress,
            "/restate.test.Counter/Add",
            &json!({ "key": "other", "delta": 1 }),
            &[("connect-timeout-ms", "100")],
        );
        (status == 429).then_some(body)
    });
    let body = limited.expect("a third call was never refused");
    assert_eq!(body["code"], "resource_exhausted");
    // Health checks take no slot: the full core still says it is serving.
    let (status, body) = common::request_json_with(
        server.ingress,
        "/grpc.health.v1.Health/Check",
        &json!({ "service": "" }),
        &[],
    );
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("SERVING")),
        "{body}"
    );
    // A malformed call gets its own error, not the full core's.
    let (status, body) = common::request_json_with(
        server.ingress,
        "/restate.test.Counter/NoSuchMethod",
        &json!({ "key": "other", "delta": 1 }),
        &[],
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    for call in hanging {
        assert_eq!(call.join().unwrap().0, 504);
    }
}

#[test]
fn calls_their_clients_cancel_give_back_their_concurrency_slots() {
    let endpoint = Endpoint::start("hang", &[]);
    let server = Server::start(&env(&[
        ("RESTATE_RUNTIME__CORES", "1"),
        ("RESTATE_WORKER__INGRESS_GRPC__CONCURRENCY_LIMIT", "2"),
    ]));
    register(&server, &endpoint.uri());
    let rt = client_runtime();
    type Sender = hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>;
    // A call given up after 100 ms: 504 once admitted, 429 while both slots are taken.
    let port = server.ingress;
    let probe = |mut sender: Sender| async move {
        sender.ready().await.unwrap();
        let call = sender.send_request(echo_request(port, "probe", 100));
        tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("an answer within 30 s")
            .unwrap()
            .status()
            .as_u16()
    };
    rt.block_on(async {
        let mut sender: Sender = common::h2_connect(server.ingress).await;
        for round in 0..3 {
            // Two calls that would hang for a minute take both slots of the only core...
            // (Queued on the connection before any probe.)
            let mut hanging = Vec::new();
            for i in 0..2 {
                let request = echo_request(port, &format!("{round}.{i}"), 60_000);
                sender.ready().await.unwrap();
                hanging.push(tokio::spawn(sender.send_request(request)));
            }
            let mut refused = false;
            for _ in 0..100 {
                if probe(sender.clone()).await == 429 {
                    refused = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(
                refused,
                "round {round}: the two calls never took both slots"
            );
            // ...until their client cancels them (RST_STREAM): the slots are free again.
            for call in hanging {
                call.abort();
            }
            let mut admitted = false;
            for _ in 0..100 {
                if probe(sender.clone()).await == 504 {
                    admitted = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(admitted, "round {round}: cancelled calls kept their slots");
        }
    });
}

#[test]
fn an_endpoint_that_never_answers_headers_is_aborted_too() {
    let endpoint = Endpoint::start("no-headers", &[]);
    let server = Server::start(&env(&[
        ("RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT", "100ms"),
        ("RESTATE_WORKER__INVOKER__ABORT_TIMEOUT", "200ms"),
        ("RESTATE_WORKER__INVOKER__RETRY_POLICY__MAX_ATTEMPTS", "2"),
    ]));
    register(&server, &endpoint.uri());
    let started = Instant::now();
    let (status, body) = add(&server, "n", 1);
    assert_eq!(
        (status, body["code"].as_str()),
        (504, Some("deadline_exceeded")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(endpoint_stats(&endpoint).0, 2);
}

#[test]
fn an_endpoint_that_is_down_gives_a_warn_line_with_the_invocation_id_within_one_retry_interval() {
    let endpoint = Endpoint::start("ok", &[]);
    let server = Server::start(&[
        ("RESTATE_WORKER__INVOKER__RETRY_POLICY__TYPE", "fixed"),
        (
            "RESTATE_WORKER__INVOKER__RETRY_POLICY__INITIAL_INTERVAL",
            "5s",
        ),
        ("RESTATE_WORKER__INVOKER__RETRY_POLICY__MAX_ATTEMPTS", "0"),
    ]);
    register(&server, &endpoint.uri());
    drop(endpoint);
    // The caller stops waiting; the answer still names the invocation, which keeps retrying.
    let called = Instant::now();
    let (status, headers, body) = common::h2_request(
        server.ingress,
        "POST",
        "/restate.test.Counter/Add",
        &[
            ("content-type", "application/json"),
            ("connect-timeout-ms", "300"),
        ],
        json!({ "key": "down", "delta": 1 }).to_string().as_bytes(),
    );
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
    let sid = headers
        .get("x-restate-invocation-id")
        .expect("the answer carries the invocation id")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(sid.starts_with("restate.test.Counter-"), "{sid}");
    let id = sid.rsplit('-').next().unwrap();
    let line = loop {
        let log = server.log();
        if let Some(line) = log.lines().find(|l| l.contains(" WARN ") && l.contains(id)) {
            break line.to_owned();
        }
        assert!(
            called.elapsed() < Duration::from_secs(5),
            "no WARN line for {id} within one retry interval:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        line.contains("attempt 1 of restate.test.Counter/Add failed, retrying in 5s")
            && line.contains("attempts=1"),
        "{line}"
    );
    // The sid is what DELETE /invocations takes: the invocation stops retrying.
    let (status, body) = common::request_json(
        server.meta,
        "DELETE",
        "/invocations",
        Some(&json!({ "sid": sid })),
    );
    assert!(status < 300, "{status} {body}");
}

/// The endpoint's Flow service (the bench's sleep and call cases): a durable sleep and a call to
/// Echo/Echo, on an open stream (completions flow on it) and in request/response mode (every wait
/// suspends and the next attempt replays the completed entry).
#[test]
fn flow_sleeps_on_a_durable_timer_and_calls_echo_on_streams_and_across_suspensions() {
    for (mode, attempts) in [(&[][..], 3), (&["--request-response"][..], 5)] {
        let mut args = vec!["--services", "Echo,Flow"];
        args.extend_from_slice(mode);
        let endpoint = Endpoint::start("ok", &args);
        let server = Server::start(&env(&[]));
        register(&server, &endpoint.uri());
        let started = Instant::now();
        let sleep = json!({ "text": "zz", "number": "300" });
        let (status, body) = connect_call(&server, "/restate.test.Flow/Sleep", &sleep);
        assert_eq!(status, 200, "{mode:?} {body}");
        assert_eq!(
            (&body["text"], &body["number"]),
            (&sleep["text"], &sleep["number"])
        );
        assert!(started.elapsed() >= Duration::from_millis(300), "{mode:?}");
        let call = json!({ "text": "called", "number": "7" });
        let (status, body) = connect_call(&server, "/restate.test.Flow/Call", &call);
        assert_eq!(status, 200, "{mode:?} {body}");
        assert_eq!(
            (&body["text"], &body["number"]),
            (&call["text"], &call["number"])
        );
        // Streams: Sleep, Call and its Echo once each. Request/response: Sleep and Call suspend once.
        assert_eq!(endpoint_stats(&endpoint).0, attempts, "{mode:?}");
    }
}

/// An attempt that has `max_pending_appends` entries not yet durable waits for the oldest before it
/// reads on. Entries with no completion defer their fsync (`deferred_sync_delay`) because nothing
/// outside waits on them, but this wait is the attempt's own: it must not last the delay. Counter/Add
/// on a fresh key appends GetState (answered from the complete eager state: no completion) and then
/// SetState, which with one pending append allowed waits for the GetState to be durable.
#[test]
fn an_attempt_bounded_by_its_pending_appends_does_not_wait_for_a_deferred_sync() {
    let endpoint = Endpoint::start("ok", &[]);
    let server = Server::start(&env(&[
        ("RESTATE_WORKER__STORAGE_ROCKSDB__SYNC_WRITES", "true"),
        (
            "RESTATE_WORKER__STORAGE_ROCKSDB__DEFERRED_SYNC_DELAY",
            "20s",
        ),
        ("RESTATE_WORKER__INVOKER__MAX_PENDING_APPENDS", "1"),
    ]));
    register(&server, &endpoint.uri());
    for (key, total) in [("p1", 1), ("p2", 1), ("p1", 2)] {
        let started = Instant::now();
        assert_eq!(
            add(&server, key, 1),
            (200, json!({ "value": total.to_string() }))
        );
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "the call took {took:?}: its attempt waited for the deferred sync"
        );
    }
}

/// `worker.storage_rocksdb.table_operations` for `table` and `op`, from `/metrics`.
fn table_ops(server: &Server, table: &str, op: &str) -> f64 {
    let name = format!("restate_storage_table_operations_total{{table=\"{table}\",op=\"{op}\"}}");
    common::metric(server, &name).unwrap_or_else(|| panic!("no {name}"))
}

/// An invocation that ends while its rows are still held (`partition::transient`) never writes
/// them: an echo's status row and input entry, and their deletes, stay out of storage. With the hold
/// off, every echo writes both and deletes both. The hold is long here (1 s) so that a slow machine
/// cannot turn an elided row into a written one.
#[test]
fn short_invocations_write_no_rows_while_held_and_all_of_them_with_the_hold_off() {
    let endpoint = Endpoint::start("ok", &[]);
    for (hold, written) in [("1s", 0.0), ("0s", 20.0)] {
        let server = Server::start(&env(&[(
            "RESTATE_WORKER__STORAGE_ROCKSDB__TRANSIENT_HOLD",
            hold,
        )]));
        register(&server, &endpoint.uri());
        let ops = |server: &Server| {
            [("status", "put"), ("status", "delete"), ("journal", "put")]
                .map(|(table, op)| table_ops(server, table, op))
        };
        let elided = |server: &Server| {
            common::metric(server, "restate_storage_transient_rows_elided_total")
                .expect("elided rows counter")
        };
        let (before, elided_before) = (ops(&server), elided(&server));
        for n in 0..20 {
            let text = format!("echo {n}");
            let (status, body) =
                connect_call(&server, "/restate.test.Echo/Echo", &json!({ "text": text }));
            assert_eq!((status, &body["text"]), (200, &json!(text)), "{body}");
        }
        let after = ops(&server);
        for (i, what) in ["status puts", "status deletes", "journal puts"]
            .iter()
            .enumerate()
        {
            assert_eq!(
                after[i] - before[i],
                written,
                "{what} for 20 echoes with transient_hold = {hold}"
            );
        }
        // Per echo: the status row and the input entry, put and deleted.
        let expected_elided = if written == 0.0 { 80.0 } else { 0.0 };
        assert_eq!(elided(&server) - elided_before, expected_elided, "{hold}");
    }
}

/// A graceful shutdown writes the rows it still holds: an invocation running then was accepted
/// by a caller the shutdown cut off, and runs again after the restart as a written one would. (A
/// `kill -9` loses it, as it loses any start not yet durable; its caller saw no answer.) The endpoint
/// hangs, so the invocation is still running, and its rows still held, when the SIGTERM comes; its
/// caller waits without a deadline (a deadline's answer would write them itself, see below).
#[test]
fn a_graceful_shutdown_writes_held_invocations_which_run_again_after_the_restart() {
    let (endpoint, mut server) = hanging_echo_server(&[("RESTATE_SHUTDOWN_GRACE_PERIOD", "1s")]);
    let port = server.ingress;
    let caller = std::thread::spawn(move || {
        // Cut off by the shutdown: whatever it gets is not an answer of the invocation.
        let _ = common::http1_request(
            port,
            "POST",
            "/restate.test.Echo/Echo",
            &[("content-type", "application/json")],
            br#"{"text": "held"}"#,
        );
    });
    common::eventually(Duration::from_secs(20), || {
        (endpoint_stats(&endpoint).0 == 1).then_some(())
    });
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(30)).code(), Some(0));
    caller.join().unwrap();
    server.restart();
    runs_again(&endpoint);
}

/// The in-repo endpoint in `hang` mode, registered with a server that holds rows for 1 s.
fn hanging_echo_server(extra: &[(&'static str, &'static str)]) -> (Endpoint, Server) {
    let endpoint = Endpoint::start("hang", &[]);
    let mut all = vec![("RESTATE_WORKER__STORAGE_ROCKSDB__TRANSIENT_HOLD", "1s")];
    all.extend_from_slice(extra);
    let server = Server::start(&env(&all));
    register(&server, &endpoint.uri());
    (endpoint, server)
}

/// The one invocation the hanging endpoint saw gets a second attempt (after a restart).
fn runs_again(endpoint: &Endpoint) {
    common::eventually(Duration::from_secs(20), || {
        (endpoint_stats(endpoint).0 == 2).then_some(())
    });
}

/// A caller whose deadline passes is told the invocation carries on (504 with its id): that
/// statement waits until the invocation's start is durable, even while its rows would still be held
/// (`transient_hold`), so a `kill -9` right after it does not lose the invocation. Without that wait
/// the held start dies with the process and the invocation never runs again.
#[test]
fn a_caller_told_its_invocation_carries_on_has_it_run_again_after_kill_9() {
    let (endpoint, mut server) = hanging_echo_server(&[]);
    let (status, body) = common::request_json_with(
        server.ingress,
        "/restate.test.Echo/Echo",
        &json!({ "text": "carries on" }),
        &[("connect-timeout-ms", "200")],
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (504, Some("deadline_exceeded")),
        "{body}"
    );
    assert_eq!(endpoint_stats(&endpoint).0, 1);
    server.kill();
    server.restart();
    runs_again(&endpoint);
}

/// A connection to an endpoint that stops answering (a stopped process, a crashed host: nothing
/// closes the connection) is found dead by the HTTP/2 keep-alive PING within its interval and timeout:
/// the attempt stuck on it fails, instead of waiting for the abort timeout (60 s here), and the retry
/// finishes the invocation once the endpoint answers again.
#[test]
fn a_silent_endpoint_connection_is_dropped_by_keep_alive_and_the_invocation_finishes_on_a_new_one()
{
    let endpoint = Endpoint::start("ok", &["--services", "Echo,Flow"]);
    let server = Server::start(&env(&[
        (
            "RESTATE_WORKER__INVOKER__HTTP2_KEEP_ALIVE_INTERVAL",
            "200ms",
        ),
        ("RESTATE_WORKER__INVOKER__HTTP2_KEEP_ALIVE_TIMEOUT", "300ms"),
        ("RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT", "60s"),
        ("RESTATE_WORKER__INVOKER__ABORT_TIMEOUT", "60s"),
        (
            "RESTATE_WORKER__INVOKER__RETRY_POLICY__MAX_ATTEMPTS",
            "1000",
        ),
    ]));
    register(&server, &endpoint.uri());
    let ingress = server.ingress;
    let call = std::thread::spawn(move || {
        common::request_json(
            ingress,
            "POST",
            "/restate.test.Flow/Sleep",
            Some(&json!({ "text": "zz", "number": "300" })),
        )
    });
    // The attempt is on its stream, waiting for the timer's completion, when the endpoint stops.
    std::thread::sleep(Duration::from_millis(150));
    endpoint.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    let failed = common::eventually(Duration::from_secs(10), || {
        server
            .log()
            .lines()
            .find(|l| l.contains("attempt 1 of restate.test.Flow/Sleep failed"))
            .map(str::to_owned)
    });
    let noticed = stopped.elapsed();
    endpoint.signal(libc::SIGCONT);
    assert!(failed.contains("stream broke"), "{failed}");
    assert!(
        noticed < Duration::from_secs(5),
        "keep-alive noticed the stopped endpoint after {noticed:?}"
    );
    let (status, body) = call.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text"], "zz");
}

/// A Sleep's timer completes the entry: when it fires, the runtime reads that entry (to store it
/// completed) and nothing else; the timer's row holds nothing the runtime does not know from memory.
#[test]
fn a_fired_sleep_timer_reads_its_entry_and_not_its_row() {
    let endpoint = Endpoint::start("ok", &["--services", "Echo,Flow"]);
    let server = Server::start(&env(&[]));
    register(&server, &endpoint.uri());
    let reads = || common::metric(&server, "restate_storage_reads_total").unwrap_or(0.0);
    let before = reads();
    for _ in 0..5 {
        let sleep = json!({ "text": "zz", "number": "20" });
        let (status, body) = connect_call(&server, "/restate.test.Flow/Sleep", &sleep);
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(reads() - before, 5.0, "one read per sleep");
}

/// A TCP proxy to `port` that, once `armed`, sends a GOAWAY (last stream: the one just answered)
/// right after the first response HEADERS frame it forwards, and otherwise passes bytes through.
fn go_away_proxy(port: u16, armed: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::Ordering;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let mut client = client.unwrap();
            let mut endpoint = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut up_from, mut up_to) =
                (client.try_clone().unwrap(), endpoint.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut up_from, &mut up_to));
            let armed = armed.clone();
            std::thread::spawn(move || loop {
                let mut head = [0u8; 9];
                if endpoint.read_exact(&mut head).is_err() {
                    return;
                }
                let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut frame = head.to_vec();
                frame.resize(9 + length, 0);
                if endpoint.read_exact(&mut frame[9..]).is_err()
                    || client.write_all(&frame).is_err()
                {
                    return;
                }
                let stream = &head[5..9];
                if head[3] == 1 && armed.swap(false, Ordering::SeqCst) {
                    let mut go_away = vec![0, 0, 8, 7, 0, 0, 0, 0, 0];
                    go_away.extend_from_slice(stream);
                    go_away.extend_from_slice(&[0, 0, 0, 0]);
                    let _ = client.write_all(&go_away);
                }
            });
        }
    });
    proxy
}

/// An endpoint that sends GOAWAY while a stream is active keeps that stream (it completes), and
/// takes no new one on that connection: the next invocation goes to a new connection right away,
/// instead of failing on the old one (and retrying onto it) until its last stream ends.
#[test]
fn an_endpoint_going_away_keeps_its_active_stream_and_new_invocations_use_a_new_connection() {
    let endpoint = Endpoint::start("ok", &["--services", "Echo,Flow"]);
    let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let proxy = go_away_proxy(endpoint.port, armed.clone());
    // One core: both invocations share its connection pool.
    let server = Server::start(&env(&[
        ("RESTATE_RUNTIME__CORES", "1"),
        (
            "RESTATE_WORKER__INVOKER__RETRY_POLICY__MAX_ATTEMPTS",
            "1000",
        ),
    ]));
    register(&server, &format!("http://127.0.0.1:{proxy}"));
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let ingress = server.ingress;
    let sleep = std::thread::spawn(move || {
        common::request_json(
            ingress,
            "POST",
            "/restate.test.Flow/Sleep",
            Some(&json!({ "text": "zz", "number": "3000" })),
        )
    });
    common::eventually(Duration::from_secs(10), || {
        (!armed.load(std::sync::atomic::Ordering::SeqCst)).then_some(())
    });
    let started = Instant::now();
    let echo = json!({ "text": "after goaway" });
    let (status, body) = connect_call(&server, "/restate.test.Echo/Echo", &echo);
    let took = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text"], "after goaway");
    assert!(
        took < Duration::from_millis(1500),
        "Echo took {took:?} behind a connection going away"
    );
    let (status, body) = sleep.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text"], "zz");
}

/// HTTP/2 has no connection-specific headers (RFC 9113 8.2.2): an endpoint registered with one in its
/// additional headers (`connection`, `keep-alive`, `te: gzip`...) still gets its invocations, without
/// it, as with discovery; h2 refuses to send a request that carries one.
#[test]
fn connection_specific_additional_headers_are_left_out_of_invocations() {
    let endpoint = Endpoint::start("ok", &[]);
    let server = Server::start(&env(&[]));
    let headers = json!({ "connection": "keep-alive", "keep-alive": "timeout=5", "te": "gzip" });
    let (status, body) = common::post_json(
        server.meta,
        "/endpoints",
        &json!({ "uri": endpoint.uri(), "additional_headers": headers }),
    );
    assert_eq!(status, 201, "{body}");
    let echo = json!({ "text": "no connection headers" });
    let (status, body) = connect_call(&server, "/restate.test.Echo/Echo", &echo);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text"], "no connection headers");
}

/// Request heads are built once per endpoint and method and reused: an endpoint registered again with
/// other additional headers must get the new ones on its next invocation, not the cached ones.
#[test]
fn an_endpoint_registered_again_gets_its_new_additional_headers() {
    let endpoint = Endpoint::start("ok", &[]);
    // One core: each core's invoker has its own cache, and every call must meet the same one.
    let server = Server::start(&env(&[("RESTATE_RUNTIME__CORES", "1")]));
    let last_token = || {
        let (status, body) =
            common::http1_request(endpoint.port, "GET", "/stats", &[], b"").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["last_token"].clone()
    };
    for (round, token) in ["first", "second", "first"].iter().enumerate() {
        let (status, body) = common::post_json(
            server.meta,
            "/endpoints",
            &json!({ "uri": endpoint.uri(), "additional_headers": { "x-test-token": token } }),
        );
        assert_eq!(status, 201, "{body}");
        // Twice each: the second attempt takes the cached head.
        for call in 0..2 {
            let echo = json!({ "text": format!("{round}.{call}") });
            let (status, body) = connect_call(&server, "/restate.test.Echo/Echo", &echo);
            assert_eq!(status, 200, "{body}");
            assert_eq!(last_token(), json!(token), "round {round}, call {call}");
        }
    }
}

/// A Connect JSON call of `restate.test.Echo/Echo` to the ingress on `port`, given up after
/// `timeout_ms`.
fn echo_request(
    port: u16,
    text: &str,
    timeout_ms: u32,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::post(format!("http://127.0.0.1:{port}/restate.test.Echo/Echo"))
        .header("content-type", "application/json")
        .header("connect-timeout-ms", timeout_ms.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({ "text": text }).to_string(),
        )))
        .unwrap()
}

/// A current-thread tokio runtime for a test's HTTP/2 client.
fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The port of an endpoint's `http://127.0.0.1:PORT/` URI.
fn endpoint_port(endpoint: &Endpoint) -> u16 {
    let uri = endpoint.uri();
    uri.trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The core that owns the partition of the invocation named by a sid (`<service>-<key>-<id hex>`): the
/// id starts with the 8-byte partition key; partitions (64 by default) are dealt to cores round-robin.
fn owner_core(sid: &str, cores: u64) -> u64 {
    let id = sid.rsplit('-').next().expect("a sid");
    let partition_key = u64::from_str_radix(&id[..16], 16).expect("hex");
    partition_key % 64 % cores
}

#[test]
fn unkeyed_calls_run_on_their_connections_core_until_it_is_busier_than_another_by_the_slack() {
    // Every invocation hangs, so each one placed on a core keeps counting in that core's load.
    let endpoint = Endpoint::start("hang", &[]);
    let server = Server::start(&env(&[
        ("RESTATE_RUNTIME__CORES", "2"),
        ("RESTATE_WORKER__INGRESS_GRPC__LOCAL_PLACEMENT_SLACK", "8"),
    ]));
    register(&server, &endpoint.uri());
    let rt = client_runtime();
    // One connection, hence one ingress core; one call at a time, each given up after 200 ms.
    let cores: Vec<u64> = rt.block_on(async {
        let mut sender = common::h2_connect(server.ingress).await;
        let mut cores = Vec::new();
        for i in 0..14 {
            let request = echo_request(server.ingress, &format!("call {i}"), 200);
            sender.ready().await.unwrap();
            let response =
                tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
                    .await
                    .expect("an answer within 30 s")
                    .unwrap();
            assert_eq!(response.status(), 504);
            let sid = response.headers()["x-restate-invocation-id"]
                .to_str()
                .unwrap();
            cores.push(owner_core(sid, 2));
        }
        cores
    });
    // Loads 0..=8 are within the slack of the idle other core: the first nine stay on the
    // connection's core; the tenth (load 9 > 0 + 8) goes to the other, and from then on they alternate.
    let local = cores[0];
    assert!(cores[..9].iter().all(|&c| c == local), "{cores:?}");
    let expected: Vec<u64> = (9..14)
        .map(|i| if i % 2 == 1 { 1 - local } else { local })
        .collect();
    assert_eq!(cores[9..], expected[..], "{cores:?}");
}

#[test]
fn a_burst_of_first_calls_to_an_endpoint_shares_one_new_connection() {
    // Every attempt hangs, so all seven are in flight at once on the only core.
    let endpoint = Endpoint::start("hang", &[]);
    let server = Server::start(&env(&[("RESTATE_RUNTIME__CORES", "1")]));
    register(&server, &endpoint.uri());
    let port = endpoint_port(&endpoint);
    let before = common::connections_to(port);
    let rt = client_runtime();
    // Seven calls in one burst on one HTTP/2 connection: their attempts all ask for a connection to
    // the endpoint while the first one is being opened.
    let statuses: Vec<u16> = rt.block_on(async {
        let sender = common::h2_connect(server.ingress).await;
        let calls = (0..7).map(|i| {
            let mut sender = sender.clone();
            let request = echo_request(server.ingress, &format!("call {i}"), 500);
            async move {
                sender
                    .send_request(request)
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        });
        tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(calls))
            .await
            .expect("answers within 30 s")
    });
    assert_eq!(statuses, vec![504; 7], "each call hangs until its deadline");
    assert_eq!(
        common::connections_to(port) - before,
        1,
        "one connection carries up to max_streams_per_connection attempts"
    );
}

/// Registers `endpoint` through a forwarder, which then stops accepting: its queue filled, further
/// SYNs to it are dropped, so the invoker's connects to it hang. Drop the result to release it.
fn register_then_stop_accepting(
    server: &Server,
    endpoint: &Endpoint,
) -> (socket2::Socket, Vec<socket2::Socket>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (port, accepting) = forwarding_listener(endpoint_port(endpoint), stop.clone());
    register(server, &format!("http://127.0.0.1:{port}/"));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let listener = accepting.join().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_nonblocking(true).unwrap();
        let _ = socket.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into());
        fillers.push(socket);
    }
    (listener, fillers)
}

#[test]
fn attempts_waiting_for_a_connection_that_never_completes_fail_within_connect_timeout() {
    // One core, one attempt per call: the first call's attempt opens the connection, the others
    // wait for it. None may wait longer than connect_timeout for a connection (they used to take
    // turns opening one, each after the previous had timed out: 8 calls, 8 x 500 ms).
    let endpoint = Endpoint::start("ok", &[]);
    let server = Server::start(&env(&[
        ("RESTATE_RUNTIME__CORES", "1"),
        ("RESTATE_WORKER__INVOKER__CONNECT_TIMEOUT", "500ms"),
        ("RESTATE_WORKER__INVOKER__RETRY_POLICY__MAX_ATTEMPTS", "1"),
    ]));
    let black_hole = register_then_stop_accepting(&server, &endpoint);
    std::thread::sleep(Duration::from_millis(100));
    let ingress = server.ingress;
    let calls: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let started = Instant::now();
                let answer = common::http1_request(
                    ingress,
                    "POST",
                    "/restate.test.Echo/Echo",
                    &[
                        ("content-type", "application/json"),
                        ("connect-timeout-ms", "20000"),
                    ],
                    json!({ "text": format!("call {i}") })
                        .to_string()
                        .as_bytes(),
                );
                (answer, started.elapsed())
            })
        })
        .collect();
    let mut slowest = Duration::ZERO;
    for call in calls {
        let (answer, took) = call.join().unwrap();
        let (status, body) = answer.unwrap_or_else(|e| panic!("{e}:\n{}", server.log()));
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("worker.invoker.connect_timeout"), "{body}");
        slowest = slowest.max(took);
    }
    assert!(
        slowest < Duration::from_millis(2500),
        "the slowest call took {slowest:?}: its attempt waited past connect_timeout"
    );
    drop((black_hole, endpoint));
}

/// A listener on a port of its own (accept queue of one) that forwards the connections it accepts to
/// `to` until `stop` is set; from then on it accepts nothing.
fn forwarding_listener(
    to: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (u16, std::thread::JoinHandle<socket2::Socket>) {
    use socket2::{Domain, Socket, Type};
    use std::sync::atomic::Ordering;
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    socket.set_nonblocking(true).unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    let accepting = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            match socket.accept() {
                Ok((client, _)) => {
                    client.set_nonblocking(false).unwrap();
                    let client: std::net::TcpStream = client.into();
                    let server = std::net::TcpStream::connect(("127.0.0.1", to)).unwrap();
                    for (mut from, mut into) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut into);
                            let _ = into.shutdown(std::net::Shutdown::Write);
                        });
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        socket
    });
    (port, accepting)
}

#[test]
fn a_connection_the_endpoint_never_completes_fails_the_attempt_after_connect_timeout() {
    let endpoint = Endpoint::start("ok", &[]);
    let server = Server::start(&env(&[
        ("RESTATE_WORKER__INVOKER__CONNECT_TIMEOUT", "300ms"),
        ("RESTATE_WORKER__INVOKER__RETRY_POLICY__MAX_ATTEMPTS", "0"),
    ]));
    let black_hole = register_then_stop_accepting(&server, &endpoint);
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let (status, body) = common::request_json_with(
        server.ingress,
        "/restate.test.Echo/Echo",
        &json!({ "text": "x" }),
        &[("connect-timeout-ms", "1500")],
    );
    assert_eq!(status, 504, "{body}");
    let line = loop {
        let log = server.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("worker.invoker.connect_timeout"))
        {
            break line.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no attempt failed on the connect timeout:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(line.contains("no connection within 300ms"), "{line}");
    drop((black_hole, endpoint));
}

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
        // The port only: this thread is left waiting when the test ends, and a clone of the server
        // it held would keep the server from being dropped (killed) with the test.
        let ingress = server.ingress;
        let wake_ms = now_ms() + 3_600_000;
        std::thread::spawn(move || {
            request_json_with(
                ingress,
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

/// The resident set size of the server process, in MiB.
fn rss_mib(server: &Server) -> u64 {
    let pid = server.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// Parks `awaiter/park` on `key` (it waits on an awakeable whose id it puts in the mailbox) and returns
/// the awakeable id and the parked caller.
fn park(
    server: &Server,
    key: &'static str,
    headers: &'static [(&'static str, &'static str)],
) -> (String, std::thread::JoinHandle<(u16, Value)>) {
    let parked = {
        let ingress = server.ingress;
        std::thread::spawn(move || {
            request_json_with(
                ingress,
                "/awaiter/park",
                &json!({ "key": key, "request": 0 }),
                headers,
            )
        })
    };
    let id = eventually(Duration::from_secs(10), || {
        let (_, body) = connect_call(server, "/mailbox/get", &json!({ "key": key }));
        body["response"].as_str().map(str::to_owned)
    });
    (id, parked)
}

/// A one-way `awaiter/ping` call through `dev.restate.Ingress/Invoke` with a `payload`-sized argument.
fn ping_one_way(server: &Server, key: &str, payload: usize) -> (u16, Value) {
    connect_call(
        server,
        "/dev.restate.Ingress/Invoke",
        &json!({
            "service": "awaiter",
            "method": "ping",
            "argument": { "key": key, "request": "x".repeat(payload) },
        }),
    )
}

fn resolve(server: &Server, id: &str) {
    let (status, body) = connect_call(
        server,
        "/resolver/resolve",
        &json!({ "request": { "id": id, "value": "done" } }),
    );
    assert_eq!(status, 200, "{body}");
}

/// An inbox is bounded per key: past `worker.inbox.max_entries_per_key` one-way and sync callers get
/// RESOURCE_EXHAUSTED (429), nothing is enqueued, and the key serves again once its queue drains.
#[test]
fn an_inbox_past_its_bound_refuses_callers_with_resource_exhausted() {
    let sdk = SdkEndpoint::start();
    let server = std::sync::Arc::new(Server::start(&[(
        "RESTATE_WORKER__INBOX__MAX_ENTRIES_PER_KEY",
        "3",
    )]));
    register(&server, &sdk.uri());
    let (id, parked) = park(&server, "k", &[]);
    for _ in 0..3 {
        let (status, body) = ping_one_way(&server, "k", 10);
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = ping_one_way(&server, "k", 10);
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "resource_exhausted");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_entries_per_key"),
        "{body}"
    );
    let (status, body) = connect_call(&server, "/awaiter/ping", &json!({ "key": "k" }));
    assert_eq!(status, 429, "{body}");
    // Another key is not affected.
    assert_eq!(
        connect_call(&server, "/awaiter/ping", &json!({ "key": "other" })),
        (200, json!({ "response": "pong" }))
    );
    resolve(&server, &id);
    assert_eq!(parked.join().unwrap(), (200, json!({ "response": "done" })));
    assert_eq!(
        connect_call(&server, "/awaiter/ping", &json!({ "key": "k" })),
        (200, json!({ "response": "pong" }))
    );
}

/// Queued arguments past `worker.inbox.memory_bytes_per_core` stay in storage: 500 one-way calls of
/// 1 MB behind a parked key used to cost ~650 MB of memory, and more after a restart (recovery loaded
/// every inbox whole). Now at most the budget is held, before and after a `kill -9` (recovery says what
/// it loaded), and every queued call still runs.
#[test]
fn queued_arguments_stay_in_storage_past_the_memory_budget_also_after_a_restart() {
    const CALLS: usize = 64;
    const BUDGET: usize = 4 << 20;
    let sdk = SdkEndpoint::start();
    let mut server = Server::start(&[
        ("RESTATE_WORKER__INBOX__MEMORY_BYTES_PER_CORE", "4194304"),
        ("RESTATE_RUNTIME__CORES", "1"),
    ]);
    register(&server, &sdk.uri());
    let (id, parked) = park(&server, "big", &[]);
    for _ in 0..CALLS {
        let (status, body) = ping_one_way(&server, "big", 1 << 20);
        assert_eq!(status, 200, "{body}");
    }
    let queued_rss = rss_mib(&server);
    server.kill();
    drop(parked);
    server.restart();
    let recovered_rss = rss_mib(&server);
    eprintln!(
        "RSS with {CALLS} x 1 MB queued: {queued_rss} MiB; after kill -9 and recovery: {recovered_rss} MiB"
    );
    let log = server.log();
    let recovered = log
        .lines()
        .rev()
        .find(|l| l.contains("partitions recovered"))
        .unwrap();
    let field = |name: &str| -> usize {
        let value = recovered.split(&format!("{name}=")).nth(1).unwrap();
        value
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(field("queued"), CALLS, "{recovered}");
    let held = field("queued_argument_bytes");
    assert!(held <= BUDGET && held > 0, "{recovered}");
    resolve(&server, &id);
    // FIFO per key: once this answers, every queued call has run with its argument read back.
    let (status, body) = eventually(Duration::from_secs(120), || {
        let (status, body) = request_json_with(
            server.ingress,
            "/awaiter/ping",
            &json!({ "key": "big" }),
            &[("connect-timeout-ms", "20000")],
        );
        (status != 504).then_some((status, body))
    });
    assert_eq!((status, body), (200, json!({ "response": "pong" })));
}

/// Arguments read back from the inbox table are the ones that were queued: concurrent one-way adds on
/// one key with a zero memory budget (every queued argument goes through storage) sum exactly.
#[test]
fn arguments_read_back_from_storage_are_exact() {
    let endpoint = Endpoint::start("ok", &[]);
    let server = std::sync::Arc::new(Server::start(&[(
        "RESTATE_WORKER__INBOX__MEMORY_BYTES_PER_CORE",
        "0",
    )]));
    register(&server, &endpoint.uri());
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let server = server.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let delta = t * 25 + i + 1;
                    let (status, body) = connect_call(
                        &server,
                        "/dev.restate.Ingress/Invoke",
                        &json!({
                            "service": "restate.test.Counter",
                            "method": "Add",
                            "argument": { "key": "sum", "delta": delta },
                        }),
                    );
                    assert_eq!(status, 200, "{body}");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let total = eventually(Duration::from_secs(30), || {
        let (_, body) = connect_call(
            &server,
            "/restate.test.Counter/Get",
            &json!({ "key": "sum" }),
        );
        (body["value"] == "5050").then_some(body)
    });
    assert_eq!(total["value"], "5050");
}

/// Callers attached to one running invocation (the same idempotency key) are bounded by
/// `worker.ingress_grpc.max_attached_callers`; callers that gave up no longer count.
#[test]
fn attached_callers_are_bounded_and_callers_that_left_do_not_count() {
    let sdk = SdkEndpoint::start();
    let server = std::sync::Arc::new(Server::start(&[(
        "RESTATE_WORKER__INGRESS_GRPC__MAX_ATTACHED_CALLERS",
        "2",
    )]));
    register(&server, &sdk.uri());
    const SAME: &[(&str, &str)] = &[("idempotency-key", "once")];
    let (id, first) = park(&server, "i", SAME);
    let attach = |headers: &[(&str, &str)]| {
        request_json_with(
            server.ingress,
            "/awaiter/park",
            &json!({ "key": "i", "request": 0 }),
            headers,
        )
    };
    // Ten callers attach and give up: each is dropped when the next attaches.
    for _ in 0..10 {
        let (status, body) = attach(&[("idempotency-key", "once"), ("connect-timeout-ms", "100")]);
        assert_eq!(status, 504, "{body}");
    }
    // Two more live callers: one fits (2 with the first), the other is refused at once.
    let live: Vec<_> = (0..2)
        .map(|_| {
            let ingress = server.ingress;
            std::thread::spawn(move || {
                request_json_with(
                    ingress,
                    "/awaiter/park",
                    &json!({ "key": "i", "request": 0 }),
                    SAME,
                )
            })
        })
        .collect();
    eventually(Duration::from_secs(10), || {
        live.iter().any(|t| t.is_finished()).then_some(())
    });
    let (refused, second): (Vec<_>, Vec<_>) = live.into_iter().partition(|t| t.is_finished());
    let (status, body) = refused.into_iter().next().unwrap().join().unwrap();
    assert_eq!(status, 429, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("max_attached_callers"),
        "{body}"
    );
    let second = second.into_iter().next().unwrap();
    resolve(&server, &id);
    assert_eq!(first.join().unwrap(), (200, json!({ "response": "done" })));
    assert_eq!(second.join().unwrap(), (200, json!({ "response": "done" })));
}

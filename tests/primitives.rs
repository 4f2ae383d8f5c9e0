//! Durable primitives with the real TypeScript SDK 0.4.1: calls between services and sleeps, timers
//! across `kill -9`, many timers under a tiny in-memory limit, awakeables, side effects when the
//! endpoint dies, one-way calls across `kill -9`, cancellation, and idempotency keys.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    awakeable_id, connect_call, eventually, idempotent_id, register, request_json,
    request_json_with, SdkEndpoint, Server,
};
use serde_json::json;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_call_to_another_service_and_a_sleep() {
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[]);
    register(&server, &sdk.uri());
    let started = Instant::now();
    let (status, body) = connect_call(&server, "/greeter/greet", &json!({ "request": "bob" }));
    assert_eq!((status, body), (200, json!({ "response": "Hello bob #1" })));
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "the 100 ms sleep was skipped"
    );
    let (_, body) = connect_call(&server, "/greeter/greet", &json!({ "request": "bob" }));
    assert_eq!(body, json!({ "response": "Hello bob #2" }));
    // A call to a service that does not exist completes with NOT_FOUND inside the handler.
    let (status, body) = connect_call(&server, "/caller/callMissing", &json!({}));
    assert_eq!(status, 200, "{body}");
    assert!(
        body["response"].as_str().unwrap().contains("not found"),
        "{body}"
    );
}

#[test]
fn a_sleep_survives_kill_9_and_ends_no_earlier_than_asked() {
    let sdk = SdkEndpoint::start();
    let mut server = Server::start(&[]);
    register(&server, &sdk.uri());
    let at = now_ms() + 3000;
    let (status, body) = connect_call(
        &server,
        "/dev.restate.Ingress/Invoke",
        &json!({ "service": "sleeper", "method": "sleepUntil", "argument": { "key": "s", "request": at } }),
    );
    assert_eq!(status, 200, "{body}");
    std::thread::sleep(Duration::from_secs(1));
    server.kill();
    server.restart();
    let fired = eventually(Duration::from_secs(20), || {
        let (_, body) = connect_call(&server, "/sleeper/get", &json!({ "key": "s" }));
        body["response"].as_i64()
    });
    assert!(
        fired >= at,
        "woke at {fired}, {} ms before {at}",
        at - fired
    );
}

#[test]
fn a_thousand_timers_fire_in_order_with_ten_in_memory() {
    let sdk = SdkEndpoint::start();
    // A thousand sleeping invocations keep a thousand bidi streams open to one endpoint: the invoker
    // spreads them over several HTTP/2 connections (worker.invoker.max_streams_per_connection).
    let server = Server::start(&[
        ("RESTATE_WORKER__TIMERS__NUM_TIMERS_IN_MEMORY_LIMIT", "10"),
        ("RESTATE_TRACING__LOG_FORMAT", "json"),
        ("RESTATE_TRACING__FILTER", "warn,restate::partition=debug"),
    ]);
    register(&server, &sdk.uri());
    let start = now_ms() + 6000;
    let count = 1000;
    // Scheduled in a shuffled order by 8 clients, waking 3 ms apart.
    let mut order: Vec<i64> = (0..count).collect();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for i in (1..order.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let ingress = server.ingress;
    let clients: Vec<_> = order
        .chunks(count as usize / 8)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            std::thread::spawn(move || {
                for i in chunk {
                    let (status, body) = common::request_json(
                        ingress,
                        "POST",
                        "/dev.restate.Ingress/Invoke",
                        Some(&json!({ "service": "sleeper", "method": "sleepUntil",
                                      "argument": { "key": format!("t{i}"), "request": start + i * 3 } })),
                    );
                    assert_eq!(status, 200, "{body}");
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    let fired: Vec<i64> = (0..count)
        .map(|i| {
            eventually(Duration::from_secs(60), || {
                let (_, body) =
                    connect_call(&server, "/sleeper/get", &json!({ "key": format!("t{i}") }));
                body["response"].as_i64()
            })
        })
        .collect();
    for (i, fired_at) in fired.iter().enumerate() {
        let at = start + i as i64 * 3;
        assert!(
            *fired_at >= at,
            "timer {i} fired {} ms early",
            at - fired_at
        );
    }
    // Each core fires its timers in wake-up order. The runtime logs when each timer is armed (its Sleep
    // entry decided) and fired, in the order they happen on the core. A timer armed after a later-due one
    // already fired on its core (a slow machine: the SDK's Sleep entry arrived after that) cannot be in
    // order and is left out of the check; the rest must be.
    let mut last_fired: std::collections::HashMap<u64, u64> = Default::default();
    let mut late = std::collections::HashSet::new();
    let (mut armed, mut firings) = (0, 0);
    for line in server.log().lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(what) = record["message"].as_str() else {
            continue;
        };
        if what != "timer fired" && what != "timer armed" {
            continue;
        }
        let (core, wake) = (
            record["core"].as_u64().unwrap(),
            record["wake"].as_u64().unwrap(),
        );
        let last = last_fired.entry(core).or_default();
        if what == "timer armed" {
            armed += 1;
            if wake < *last {
                late.insert(wake);
            }
            continue;
        }
        firings += 1;
        if late.contains(&wake) {
            continue;
        }
        assert!(
            wake >= *last,
            "core {core} fired the timer due at {wake} after the one due at {last}"
        );
        *last = wake;
    }
    assert!(armed >= count, "{armed} timers armed for {count} sleeps");
    assert!(
        firings >= count,
        "{firings} timer firings logged for {count} timers"
    );
    assert!(
        late.len() < count as usize / 2,
        "{} of {count} timers were armed after a later one fired; the test proves too little",
        late.len()
    );
}

fn mailbox(server: &Server, key: &str) -> Option<String> {
    let (_, body) = connect_call(server, "/mailbox/get", &json!({ "key": key }));
    body["response"].as_str().map(str::to_owned)
}

#[test]
fn awakeables_resolve_and_reject_and_a_completion_before_the_entry_is_refused() {
    let sdk = SdkEndpoint::start();
    let server = std::sync::Arc::new(Server::start(&[]));
    register(&server, &sdk.uri());
    let park = |key: &'static str, delay: i64, idempotency: Option<&'static str>| {
        let server = server.clone();
        std::thread::spawn(move || {
            let headers: Vec<(&str, &str)> = idempotency
                .map(|k| ("idempotency-key", k))
                .into_iter()
                .collect();
            request_json_with(
                server.ingress,
                "/awaiter/park",
                &json!({ "key": key, "request": delay }),
                &headers,
            )
        })
    };

    // Resolve: the parked invocation returns the value.
    let parked = park("a", 0, None);
    let id = eventually(Duration::from_secs(10), || mailbox(&server, "a"));
    let (status, _) = connect_call(
        &server,
        "/resolver/resolve",
        &json!({ "request": { "id": id, "value": "hello" } }),
    );
    assert_eq!(status, 200);
    assert_eq!(
        parked.join().unwrap(),
        (200, json!({ "response": "hello" }))
    );

    // Reject: the parked invocation fails with the reason.
    let parked = park("b", 0, None);
    let id = eventually(Duration::from_secs(10), || mailbox(&server, "b"));
    connect_call(
        &server,
        "/resolver/reject",
        &json!({ "request": { "id": id, "reason": "no way" } }),
    );
    let (status, body) = parked.join().unwrap();
    assert_ne!(status, 200);
    assert!(
        body["message"].as_str().unwrap().contains("no way"),
        "{body}"
    );

    // Resolved before the awakeable entry exists (the invocation sleeps 500 ms first, entry 1; the
    // awakeable will be entry 2 of an invocation whose id the idempotency key fixes): an id past the end
    // of a journal is refused and not stored, so the awakeable still waits, and a resolve once it
    // exists completes it.
    let parked = park("c", 500, Some("early"));
    let id = awakeable_id(&idempotent_id("awaiter", "park", "c", "early"), 2);
    std::thread::sleep(Duration::from_millis(100));
    let (status, _) = connect_call(
        &server,
        "/resolver/resolve",
        &json!({ "request": { "id": id, "value": "too early" } }),
    );
    assert_eq!(status, 200);
    assert_eq!(
        eventually(Duration::from_secs(10), || mailbox(&server, "c")),
        id
    );
    eventually(Duration::from_secs(10), || {
        server
            .log()
            .contains("refused a completion of entry 2")
            .then_some(())
    });
    assert!(
        !parked.is_finished(),
        "a refused early completion woke the awakeable"
    );
    connect_call(
        &server,
        "/resolver/resolve",
        &json!({ "request": { "id": id, "value": "on time" } }),
    );
    assert_eq!(
        parked.join().unwrap(),
        (200, json!({ "response": "on time" }))
    );
}

#[test]
fn a_side_effect_runs_once_when_the_endpoint_dies_right_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("effects.log");
    let mut sdk = SdkEndpoint::start();
    let port = sdk.port;
    let server = std::sync::Arc::new(Server::start(&[
        (
            "RESTATE_WORKER__INVOKER__RETRY_POLICY__INITIAL_INTERVAL",
            "20ms",
        ),
        (
            "RESTATE_WORKER__INVOKER__RETRY_POLICY__MAX_INTERVAL",
            "200ms",
        ),
    ]));
    register(&server, &sdk.uri());
    let call = {
        let server = server.clone();
        let path = file.display().to_string();
        std::thread::spawn(move || {
            connect_call(
                &server,
                "/effects/appendOnce",
                &json!({ "request": { "path": path, "holdMs": 1500 } }),
            )
        })
    };
    // The side effect ran, and was journaled once its Sleep is: the SDK sends the Sleep entry only
    // after the side effect's entry was acknowledged. (Killing the endpoint between the effect and its
    // entry would legitimately run it again: an effect is journaled after it runs.)
    eventually(Duration::from_secs(10), || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_restatectl"))
            .args(["--json", "scan", "timers"])
            .env(
                "RESTATE_STORAGE_ADDRESS",
                format!("http://127.0.0.1:{}", server.storage),
            )
            .output()
            .unwrap();
        let scan: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
        (!scan["rows"].as_array()?.is_empty()).then_some(())
    });
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "ran\n");
    // The endpoint dies during the sleep that follows.
    drop(sdk);
    std::thread::sleep(Duration::from_millis(300));
    sdk = SdkEndpoint::start_on(port);
    assert_eq!(call.join().unwrap(), (200, json!({ "response": "done" })));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "ran\n",
        "the side effect ran again"
    );
    drop(sdk);
}

#[test]
fn one_way_calls_accepted_before_kill_9_all_run_exactly_once() {
    let sdk = SdkEndpoint::start();
    let mut server = Server::start(&[]);
    register(&server, &sdk.uri());
    let n = 100;
    for i in 0..n {
        let (status, body) = connect_call(
            &server,
            "/dev.restate.Ingress/Invoke",
            &json!({ "service": "counter", "method": "add", "argument": { "key": format!("ow{i}"), "request": 1 } }),
        );
        assert_eq!(status, 200, "{body}");
        assert!(body["sid"].as_str().unwrap().starts_with("counter-"));
    }
    server.kill();
    server.restart();
    for i in 0..n {
        let value = eventually(Duration::from_secs(20), || {
            let (_, body) =
                connect_call(&server, "/counter/get", &json!({ "key": format!("ow{i}") }));
            body["response"].as_i64().filter(|v| *v > 0)
        });
        assert_eq!(value, 1, "one-way call {i} ran {value} times");
    }
}

#[test]
fn cancelling_a_parked_invocation_aborts_its_caller_and_frees_its_key() {
    let sdk = SdkEndpoint::start();
    let server = std::sync::Arc::new(Server::start(&[]));
    register(&server, &sdk.uri());
    let parked = {
        let server = server.clone();
        std::thread::spawn(move || {
            request_json_with(
                server.ingress,
                "/awaiter/park",
                &json!({ "key": "x", "request": 0 }),
                &[("idempotency-key", "cancel-me")],
            )
        })
    };
    eventually(Duration::from_secs(10), || mailbox(&server, "x"));
    // A call queued behind the parked one on the same key.
    let queued = {
        let server = server.clone();
        std::thread::spawn(move || connect_call(&server, "/awaiter/ping", &json!({ "key": "x" })))
    };
    std::thread::sleep(Duration::from_millis(200));
    let id = idempotent_id("awaiter", "park", "x", "cancel-me");
    let sid = format!("awaiter-eHg=-{}", id.to_hex());
    let (status, body) = request_json(
        server.meta,
        "DELETE",
        "/invocations",
        Some(&json!({ "sid": sid })),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = parked.join().unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("aborted")),
        "{body}"
    );
    assert_eq!(queued.join().unwrap(), (200, json!({ "response": "pong" })));
    let (status, _) = request_json(
        server.meta,
        "DELETE",
        "/invocations",
        Some(&json!({ "sid": sid })),
    );
    assert_eq!(status, 404);
    let (status, _) = request_json(
        server.meta,
        "DELETE",
        "/invocations",
        Some(&json!({ "sid": "garbage" })),
    );
    assert_eq!(status, 400);
}

#[test]
fn an_idempotency_key_runs_once_and_answers_the_same_also_after_a_restart() {
    let sdk = SdkEndpoint::start();
    let mut server = Server::start(&[]);
    register(&server, &sdk.uri());
    let call = |server: &Server, key: &str| {
        request_json_with(
            server.ingress,
            "/counter/add",
            &json!({ "key": "idem", "request": 5 }),
            &[("idempotency-key", key)],
        )
    };
    assert_eq!(call(&server, "one"), (200, json!({ "response": 5 })));
    assert_eq!(call(&server, "one"), (200, json!({ "response": 5 })));
    assert_eq!(call(&server, "two"), (200, json!({ "response": 10 })));
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    server.restart();
    assert_eq!(call(&server, "one"), (200, json!({ "response": 5 })));
    let (_, body) = connect_call(&server, "/counter/get", &json!({ "key": "idem" }));
    assert_eq!(body, json!({ "response": 10 }), "a repeated key ran again");
}

#[test]
fn idempotency_results_expire_after_the_retention() {
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[("RESTATE_WORKER__INGRESS_GRPC__IDEMPOTENCY_RETENTION", "1s")]);
    register(&server, &sdk.uri());
    let call = || {
        request_json_with(
            server.ingress,
            "/counter/add",
            &json!({ "key": "exp", "request": 1 }),
            &[("idempotency-key", "k")],
        )
    };
    assert_eq!(call(), (200, json!({ "response": 1 })));
    assert_eq!(call(), (200, json!({ "response": 1 })));
    std::thread::sleep(Duration::from_millis(1500));
    eventually(Duration::from_secs(15), || {
        (call() == (200, json!({ "response": 2 }))).then_some(())
    });
}

#[test]
fn a_runtime_stopped_past_a_client_timeout_finishes_acknowledged_work_when_continued() {
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[]);
    register(&server, &sdk.uri());
    for i in 0..20 {
        let (status, _) = connect_call(
            &server,
            "/dev.restate.Ingress/Invoke",
            &json!({ "service": "counter", "method": "add", "argument": { "key": format!("stop{}", i % 4), "request": 1 } }),
        );
        assert_eq!(status, 200);
    }
    server.signal(libc::SIGSTOP);
    // A caller gives up while the runtime is frozen.
    let timed_out = std::net::TcpStream::connect(("127.0.0.1", server.ingress))
        .and_then(|mut s| {
            use std::io::{Read, Write};
            s.set_read_timeout(Some(Duration::from_millis(300)))?;
            s.write_all(b"POST /counter/get HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n{\"key\":\"a\"}  ")?;
            let mut buf = [0u8; 64];
            s.read(&mut buf)
        });
    assert!(timed_out.is_err(), "a frozen runtime answered");
    std::thread::sleep(Duration::from_millis(500));
    server.signal(libc::SIGCONT);
    for key in 0..4 {
        let value = eventually(Duration::from_secs(20), || {
            let (_, body) = connect_call(
                &server,
                "/counter/get",
                &json!({ "key": format!("stop{key}") }),
            );
            body["response"].as_i64().filter(|v| *v == 5)
        });
        assert_eq!(value, 5);
    }
}

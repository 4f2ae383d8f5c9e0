//! Liveness under load: invocations that only wait (on a call's result) must not hold the invoker's
//! slots that the calls they wait for need. With the real SDK 0.4.1.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{connect_call, eventually, metric, register, request_json_with, SdkEndpoint, Server};
use serde_json::json;

const ACCOUNTS: u64 = 10;

/// Transfer `i`: from, to, amount (deterministic, so the test knows every final balance).
fn transfer(i: u64) -> (String, String, i64) {
    let from = i % ACCOUNTS;
    let to = (from + 1 + (i * 7) % (ACCOUNTS - 1)) % ACCOUNTS;
    (
        format!("acct{from}"),
        format!("acct{to}"),
        (i % 5 + 1) as i64,
    )
}

/// Thousands of one-way transfers, each waiting on two calls to a keyed account, with far fewer
/// invoker slots than waiting transfers: every slot fills with transfers waiting on deposits that need a
/// slot themselves. Before, progress came in waves of one inactivity timeout (a minute by default),
/// and every call to those accounts timed out meanwhile; now a waiting attempt is told to suspend as
/// soon as others wait for a slot. While the backlog drains, a call to a key with an empty inbox
/// answers within seconds; at the end every balance is exactly what the transfers imply.
#[test]
fn a_backlog_of_waiting_callers_drains_and_unrelated_keys_stay_responsive() {
    const TRANSFERS: u64 = 1500;
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[("RESTATE_WORKER__INVOKER__CONCURRENCY_LIMIT", "16")]);
    register(&server, &sdk.uri());
    let started = Instant::now();
    let senders: Vec<_> = (0..4)
        .map(|t| {
            let ingress = server.ingress;
            std::thread::spawn(move || {
                for i in (t..TRANSFERS).step_by(4) {
                    let (from, to, amount) = transfer(i);
                    let (status, body) = request_json_with(
                        ingress,
                        "/dev.restate.Ingress/Invoke",
                        &json!({
                            "service": "bank",
                            "method": "transfer",
                            "argument": { "request": { "from": from, "to": to, "amount": amount } },
                        }),
                        &[],
                    );
                    assert_eq!(status, 200, "{body}");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    eprintln!("{TRANSFERS} transfers accepted in {:?}", started.elapsed());

    // A key nobody else uses answers promptly while the backlog drains (before: only after a minute).
    let probe = Instant::now();
    let (status, body) = request_json_with(
        server.ingress,
        "/counter/add",
        &json!({ "key": "bystander", "request": 1 }),
        &[("connect-timeout-ms", "25000")],
    );
    let probe = probe.elapsed();
    eprintln!("a call to an idle key answered in {probe:?} during the drain");
    assert_eq!((status, &body), (200, &json!({ "response": 1 })));
    assert!(probe < Duration::from_secs(10), "{probe:?}");

    // The backlog finishes: every account holds exactly what the transfers imply.
    let mut expected: HashMap<String, i64> = HashMap::new();
    for i in 0..TRANSFERS {
        let (from, to, amount) = transfer(i);
        *expected.entry(from).or_default() -= amount;
        *expected.entry(to).or_default() += amount;
    }
    assert_eq!(expected.values().sum::<i64>(), 0);
    eventually(Duration::from_secs(180), || {
        let quiet = metric(&server, "restate_invocations") == Some(0.0)
            && metric(&server, "restate_inbox_queued") == Some(0.0)
            && metric(&server, "restate_outbox_backlog") == Some(0.0);
        quiet.then_some(())
    });
    let drained = started.elapsed();
    for (account, balance) in &expected {
        let (_, body) = connect_call(&server, "/counter/get", &json!({ "key": account }));
        assert_eq!(body, json!({ "response": balance }), "{account}");
    }
    let preemptions = metric(&server, "restate_invoker_preemptions_total").unwrap();
    eprintln!("drained in {drained:?} with {preemptions} preemptions");
    assert!(
        preemptions > 0.0,
        "the slots never ran out: the test proves nothing"
    );
}

/// Many calls in flight with fsync on (the default) through the in-repo endpoint, which answers at
/// once: every call is answered and every key ends at its number of adds. An invocation runs before
/// its start is durable, so its end can become durable in the same WAL sync as its start; the
/// caller attached by the start must be there when the end answers (a start's actions run before its
/// end's). When they ran in either order some callers were never answered (seen as a hang of the
/// bench); here a call that is not answered fails at the client's read timeout. The race needs a start
/// and an end in one sync and their actions' tasks run the other way round: against that code this
/// test failed in 4 of 32 runs (a failure: one caller attached after its invocation's Ended
/// ran), so it guards the order rather than proves it; the simulation runs actions in order.
#[test]
fn calls_whose_start_and_end_share_a_wal_sync_are_all_answered() {
    const THREADS: usize = 16;
    const CALLS: usize = 60;
    const KEYS: usize = 8;
    let endpoint = common::Endpoint::start("ok", &[]);
    let server = Server::start(&[]);
    register(&server, &endpoint.uri());
    let ingress = server.ingress;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..CALLS {
                    let key = format!("k{}", (t + i) % KEYS);
                    let (path, body) = if i % 2 == 0 {
                        ("/restate.test.Echo/Echo", json!({"text": "hi"}))
                    } else {
                        ("/restate.test.Counter/Add", json!({"key": key, "delta": 1}))
                    };
                    let (status, answer) = common::post_json(ingress, path, &body);
                    assert_eq!(status, 200, "{path}: {answer}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("every call answered");
    }
    let adds = THREADS * CALLS / 2;
    let total: i64 = (0..KEYS)
        .map(|k| {
            let (status, value) = common::post_json(
                ingress,
                "/restate.test.Counter/Get",
                &json!({"key": format!("k{k}")}),
            );
            assert_eq!(status, 200, "{value}");
            value["value"].as_str().map_or(0, |v| v.parse().unwrap())
        })
        .sum();
    assert_eq!(total, adds as i64, "adds lost or applied twice");
}

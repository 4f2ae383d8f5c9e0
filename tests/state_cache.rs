//! Keyed state through the real TypeScript SDK (0.4.1), which trusts the eager state of its Start
//! message (a key missing from a complete state is absent for it): every invocation must find exactly
//! the state its key's earlier invocations left, whether the state comes from the per-core state cache
//! or from storage. Sets and clears over several invocations per key, attempts that fail after their
//! writes (the retry replays them), a cache too small for every key, states past the eager limit
//! (sent partial), fsync on (deferred syncs) and a kill -9 restart in the middle.

mod common;

use std::collections::BTreeMap;

use common::{connect_call, metric, register, SdkEndpoint, Server};
use serde_json::{json, Value};

const KEYS: usize = 4;
const CALLS_PER_PHASE: u64 = 12;

/// One call's ops (a name, and a value or null to clear) and whether its first attempt fails after
/// its writes, drawn from `seed` (deterministic).
fn ops(seed: u64) -> (Vec<(String, Value)>, bool) {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = |n: u64| {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 29;
        x % n
    };
    let count = 1 + next(3);
    let ops = (0..count)
        .map(|i| {
            let name = ["a", "b", "c"][next(3) as usize].to_owned();
            let value = match next(4) {
                0 => Value::Null,
                // Long values push the state past a small eager limit (sent partial then).
                1 => json!("v".repeat(40 + next(40) as usize)),
                _ => json!(format!("{seed}-{i}")),
            };
            (name, value)
        })
        .collect();
    (ops, next(4) == 0)
}

/// Runs `CALLS_PER_PHASE` calls on every key (keys in parallel, each key's calls in order) and checks
/// that each found the state the model holds, then applies its ops to the model.
fn phase(server: &Server, phase: u64, model: &mut [BTreeMap<String, Value>]) {
    std::thread::scope(|scope| {
        for (k, state) in model.iter_mut().enumerate() {
            scope.spawn(move || {
                for call in 0..CALLS_PER_PHASE {
                    let seed = (phase * 1000 + call) * 16 + k as u64;
                    let (ops, fail_once) = ops(seed);
                    let request = json!({
                        "ops": ops.iter().map(|(n, v)| json!({ "name": n, "value": v })).collect::<Vec<_>>(),
                        "failOnce": if fail_once { json!(format!("f{seed}")) } else { Value::Null },
                    });
                    let (status, body) = connect_call(
                        server,
                        "/kv/apply",
                        &json!({ "key": format!("key{k}"), "request": request }),
                    );
                    assert_eq!(status, 200, "key{k} call {seed}: {body}");
                    let expected: BTreeMap<&str, Value> = ["a", "b", "c"]
                        .into_iter()
                        .map(|n| (n, state.get(n).cloned().unwrap_or(Value::Null)))
                        .collect();
                    assert_eq!(
                        body["response"],
                        json!(expected),
                        "key{k}, call {seed} (phase {phase}) found another state"
                    );
                    for (name, value) in ops {
                        if value.is_null() {
                            state.remove(&name);
                        } else {
                            state.insert(name, value);
                        }
                    }
                }
            });
        }
    });
}

fn run(extra: &[(&str, &str)]) {
    let mut env = vec![
        ("RESTATE_WORKER__STORAGE_ROCKSDB__SYNC_WRITES", "true"),
        ("RESTATE_WORKER__INVOKER__RETRY_POLICY__TYPE", "fixed"),
        (
            "RESTATE_WORKER__INVOKER__RETRY_POLICY__INITIAL_INTERVAL",
            "10ms",
        ),
        ("RESTATE_WORKER__INVOKER__RETRY_POLICY__MAX_ATTEMPTS", "3"),
    ];
    env.extend_from_slice(extra);
    let sdk = SdkEndpoint::start();
    let mut server = Server::start(&env);
    register(&server, &sdk.uri());
    let mut model = vec![BTreeMap::new(); KEYS];
    phase(&server, 0, &mut model);
    // Every call was answered, so its writes are durable: a kill -9 loses none of them.
    server.kill();
    server.restart();
    phase(&server, 1, &mut model);
    phase(&server, 2, &mut model);
    assert!(
        server.log().contains("injected failure after the writes"),
        "no attempt failed after its writes: the retries were not exercised"
    );
}

#[test]
fn every_invocation_finds_the_state_its_keys_predecessors_left() {
    run(&[]);
}

#[test]
fn every_invocation_finds_its_keys_state_with_a_cache_too_small_for_every_key_and_partial_states() {
    run(&[
        // Room for about one key's state: the others are evicted and read from storage.
        ("RESTATE_WORKER__INVOKER__STATE_CACHE_BYTES", "700"),
        // Long values make a state partial: it is not cached, and the SDK asks for each key.
        ("RESTATE_WORKER__INVOKER__EAGER_STATE_SIZE_LIMIT", "64"),
    ]);
}

/// SDK 0.4.1 answers a GetState from a complete eager state itself and sends the entry with its
/// result but without the COMPLETED flag (it sets no header flags). The runtime must take such an
/// entry as completed: before, it read the state again for every one, overwrote the SDK's answer
/// with what it read and sent a completion back (which waited for an fsync). Each `kv/apply` gets
/// three keys, so 20 calls read storage 60 times that way; now the key's state comes from the cache.
#[test]
fn gets_the_sdk_answered_from_the_eager_state_are_not_read_again() {
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[]);
    register(&server, &sdk.uri());
    let apply = |n: u64| {
        let ops = json!([{ "name": "a", "value": n }]);
        let request = json!({ "key": "k", "request": { "ops": ops, "failOnce": null } });
        let (status, body) = connect_call(&server, "/kv/apply", &request);
        assert_eq!(status, 200, "{body}");
        body["response"]["a"].clone()
    };
    // The first call reads the key's (empty) state into the cache.
    assert_eq!(apply(0), Value::Null);
    let reads = || metric(&server, "restate_storage_reads_total").expect("reads counter");
    let before = reads();
    for n in 1..=20 {
        assert_eq!(apply(n), json!(n - 1), "call {n} found another state");
    }
    let read = reads() - before;
    assert!(
        read < 20.0,
        "{read} storage reads for 20 calls whose GetStates the SDK answered itself"
    );
}

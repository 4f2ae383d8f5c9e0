//! `restatectl` against a server with the real TypeScript SDK 0.4.1 registered: keyed state after
//! deposits, a parked invocation listed, described and cancelled (its caller gets ABORTED), an inbox
//! of three queued calls in order, `--json` output, missing things, unreachable servers and bearer
//! tokens.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    connect_call, eventually, free_port, register, request_json_with, SdkEndpoint, Server,
};
use serde_json::{json, Value};

/// Runs restatectl against `server` (None: nothing listening): (exit code, stdout, stderr).
fn ctl(server: Option<&Server>, args: &[&str]) -> (i32, String, String) {
    ctl_with(server, args, &[])
}

/// [`ctl`] with extra environment variables.
fn ctl_with(server: Option<&Server>, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let (storage, meta) = server.map_or((free_port(), free_port()), |s| (s.storage, s.meta));
    let output = Command::new(env!("CARGO_BIN_EXE_restatectl"))
        .args(args)
        .env(
            "RESTATE_STORAGE_ADDRESS",
            format!("http://127.0.0.1:{storage}"),
        )
        .env("RESTATE_META_ADDRESS", format!("http://127.0.0.1:{meta}"))
        .env_remove("RESTATE_STORAGE_TOKEN")
        .env_remove("RESTATE_META_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs restatectl with `--json` and parses its one document.
fn ctl_json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = ctl(Some(server), &all);
    assert_eq!(code, 0, "{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// The invocations `invocations list` shows for (service, method, status).
fn listed(server: &Server, service: &str, method: &str, status: &str) -> Vec<Value> {
    let list = ctl_json(server, &["invocations", "list", "--service", service]);
    list["invocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["method"] == method && i["status"] == status)
        .cloned()
        .collect()
}

/// Starts `awaiter/park` for `key` on a thread (it waits on an awakeable until cancelled).
fn park(server: &std::sync::Arc<Server>, key: &str) -> std::thread::JoinHandle<(u16, Value)> {
    let server = server.clone();
    let body = json!({ "key": key, "request": 0 });
    std::thread::spawn(move || request_json_with(server.ingress, "/awaiter/park", &body, &[]))
}

#[test]
fn kv_get_shows_a_counter_after_deposits() {
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[]);
    register(&server, &sdk.uri());
    for delta in [5, 7] {
        let (status, body) = connect_call(
            &server,
            "/counter/add",
            &json!({ "key": "bob", "request": delta }),
        );
        assert_eq!(status, 200, "{body}");
    }
    let (code, stdout, stderr) = ctl(Some(&server), &["kv", "get", "counter", "bob"]);
    assert_eq!(code, 0, "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_default();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["total", "12"],
        "{stdout}"
    );
    let state = ctl_json(&server, &["kv", "get", "counter", "bob"]);
    assert_eq!(
        state["state"],
        json!([{ "name": "total", "value": 12, "encoding": "json" }])
    );
    // Missing things: exit 0, an empty result and a line saying so.
    let (code, stdout, _) = ctl(Some(&server), &["kv", "get", "counter", "nobody"]);
    assert_eq!((code, stdout.trim()), (0, "no state for counter nobody"));
    let empty = ctl_json(&server, &["kv", "get", "counter", "nobody"]);
    assert_eq!(empty["state"], json!([]));
    let (code, stdout, _) = ctl(Some(&server), &["services", "describe", "nope"]);
    assert_eq!((code, stdout.trim()), (0, "service nope not found"));
    // Services and endpoints through the meta API.
    let services = ctl_json(&server, &["services", "list"]);
    assert!(services["services"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "counter" && s["instance_type"] == "Keyed"));
    let (code, stdout, _) = ctl(Some(&server), &["services", "describe", "counter"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("add") && stdout.contains("RpcRequest"),
        "{stdout}"
    );
    let endpoints = ctl_json(&server, &["endpoints", "list"]);
    assert_eq!(endpoints["endpoints"].as_array().unwrap().len(), 1);
    // The raw scan of the same row, by prefix.
    let scan = ctl_json(
        &server,
        &[
            "scan",
            "state",
            "--prefix",
            "service_name=counter,service_key=hex:03626f62",
        ],
    );
    assert_eq!(scan["rows"][0]["key"]["state_key"], "total");
    assert_eq!(scan["rows"][0]["decoded"], 12);
}

#[test]
fn a_parked_invocation_is_listed_described_and_cancelled() {
    let sdk = SdkEndpoint::start();
    // A short inactivity timeout: the SDK suspends the invocation soon after it parks.
    let server = std::sync::Arc::new(Server::start(&[(
        "RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT",
        "300ms",
    )]));
    register(&server, &sdk.uri());
    let parked = park(&server, "x");
    let listed = eventually(Duration::from_secs(20), || {
        listed(&server, "awaiter", "park", "suspended").pop()
    });
    let id = listed["id"].as_str().unwrap().to_owned();
    assert_eq!(listed["key"], "x");
    let described = ctl_json(&server, &["invocations", "describe", &id]);
    let types: Vec<&str> = described["journal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types[0], "PollInputStream", "{described}");
    assert!(types.contains(&"Awakeable"), "{described}");
    let awakeable = types.iter().position(|t| *t == "Awakeable").unwrap();
    assert_eq!(described["waiting_for_entries"], json!([awakeable]));
    let (code, stdout, _) = ctl(Some(&server), &["invocations", "describe", &id]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("status:    suspended")
            && stdout.contains(&format!("waits on:  entry {awakeable} Awakeable")),
        "{stdout}"
    );
    // Cancel: the invocation ends, its caller gets ABORTED.
    let (code, stdout, stderr) = ctl(Some(&server), &["invocations", "cancel", &id]);
    assert_eq!(
        (code, stdout.trim()),
        (0, format!("cancelled {id}").as_str()),
        "{stderr}"
    );
    let (status, body) = parked.join().unwrap();
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("aborted")),
        "{body}"
    );
    eventually(Duration::from_secs(10), || {
        let list = ctl_json(&server, &["invocations", "list"]);
        (!list.to_string().contains(&id)).then_some(())
    });
    let (code, stdout, _) = ctl(Some(&server), &["invocations", "cancel", &id]);
    assert_eq!(
        (code, stdout.trim()),
        (0, format!("invocation {id} not found").as_str())
    );
}

#[test]
fn an_inbox_lists_three_queued_calls_in_order() {
    let sdk = SdkEndpoint::start();
    let server = std::sync::Arc::new(Server::start(&[]));
    register(&server, &sdk.uri());
    let parked = park(&server, "y");
    let head = eventually(Duration::from_secs(20), || {
        let list = ctl_json(&server, &["invocations", "list", "--service", "awaiter"]);
        list["invocations"].as_array().unwrap().first().cloned()
    });
    let mut queued = Vec::new();
    for _ in 0..3 {
        let (status, body) = connect_call(
            &server,
            "/dev.restate.Ingress/Invoke",
            &json!({ "service": "awaiter", "method": "ping", "argument": { "key": "y" } }),
        );
        assert_eq!(status, 200, "{body}");
        let sid = body["sid"].as_str().unwrap();
        queued.push(sid.rsplit('-').next().unwrap().to_owned());
    }
    let inbox = ctl_json(&server, &["inbox", "awaiter", "y"]);
    let ids: Vec<&str> = inbox["inbox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, queued);
    let (code, stdout, _) = ctl(Some(&server), &["inbox", "awaiter", "y"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for (line, id) in lines[1..].iter().zip(&queued) {
        assert!(
            line.contains(id.as_str()) && line.contains("ping"),
            "{line}"
        );
    }
    // A queued invocation is described from its partition's inbox.
    let second = ctl_json(&server, &["invocations", "describe", &queued[1]]);
    assert_eq!(
        (&second["status"], &second["sequence"], &second["journal"]),
        (&json!("inbox"), &json!(1), &json!([])),
        "{second}"
    );
    let inboxed = ctl_json(&server, &["invocations", "list", "--status", "inbox"]);
    assert_eq!(inboxed["invocations"].as_array().unwrap().len(), 3);
    let (code, stdout, _) = ctl(Some(&server), &["inbox", "awaiter", "nobody"]);
    assert_eq!(
        (code, stdout.trim()),
        (0, "the inbox of awaiter nobody is empty")
    );
    // Unblock the key: the queued pings then run and the inbox drains.
    let head = head["id"].as_str().unwrap();
    assert_eq!(ctl(Some(&server), &["invocations", "cancel", head]).0, 0);
    assert_eq!(parked.join().unwrap().0, 409);
    eventually(Duration::from_secs(20), || {
        let inbox = ctl_json(&server, &["inbox", "awaiter", "y"]);
        inbox["inbox"].as_array().unwrap().is_empty().then_some(())
    });
}

#[test]
fn unreachable_servers_and_bad_usage_are_one_clear_line() {
    for args in [
        &["scan", "state"][..],
        &["services", "list"][..],
        &["kv", "get", "a", "b"][..],
    ] {
        let (code, stdout, stderr) = ctl(None, args);
        assert_eq!(code, 1, "{args:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: cannot reach the") && stderr.contains("http://127.0.0.1:"),
            "{stderr}"
        );
    }
    let (code, _, stderr) = ctl(None, &["scan", "nosuchtable"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown table nosuchtable"), "{stderr}");
    let (code, _, stderr) = ctl(None, &["invocations", "describe", "zz"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("not an invocation id"), "{stderr}");
}

#[test]
fn bearer_tokens_come_from_the_environment() {
    let server = Server::start(&[
        ("RESTATE_META__AUTH_TOKEN", "meta-secret"),
        ("RESTATE_WORKER__STORAGE_GRPC__AUTH_TOKEN", "storage-secret"),
    ]);
    let (code, _, stderr) = ctl(Some(&server), &["scan", "system"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("RESTATE_STORAGE_TOKEN"), "{stderr}");
    let (code, _, stderr) = ctl(Some(&server), &["services", "list"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("RESTATE_META_TOKEN"), "{stderr}");
    let tokens = [
        ("RESTATE_META_TOKEN", "meta-secret"),
        ("RESTATE_STORAGE_TOKEN", "storage-secret"),
    ];
    let (code, stdout, stderr) = ctl_with(Some(&server), &["scan", "system"], &tokens);
    assert_eq!((code, stdout.trim()), (0, "key=partitions  64"), "{stderr}");
    let (code, stdout, stderr) = ctl_with(Some(&server), &["services", "list"], &tokens);
    assert_eq!(
        (code, stdout.trim()),
        (0, "no services registered"),
        "{stderr}"
    );
}

/// An invocation whose endpoint is down is listed as backing-off, with its attempts and the last
/// failure; `describe` says when the next attempt starts.
#[test]
fn a_failing_invocation_is_listed_as_backing_off_with_its_last_failure() {
    let endpoint = common::Endpoint::start("ok", &[]);
    let server = Server::start(&[
        ("RESTATE_WORKER__INVOKER__RETRY_POLICY__TYPE", "fixed"),
        (
            "RESTATE_WORKER__INVOKER__RETRY_POLICY__INITIAL_INTERVAL",
            "30s",
        ),
    ]);
    register(&server, &endpoint.uri());
    drop(endpoint);
    let (status, body) = connect_call(
        &server,
        "/dev.restate.Ingress/Invoke",
        &json!({ "service": "restate.test.Counter", "method": "Add",
                 "argument": { "key": "down", "delta": 1 } }),
    );
    assert_eq!(status, 200, "{body}");
    let listed = eventually(Duration::from_secs(20), || {
        let found = listed(&server, "restate.test.Counter", "Add", "backing-off");
        found.into_iter().next()
    });
    assert_eq!(listed["attempts"], 1, "{listed}");
    let failure = listed["last_failure"].as_str().unwrap();
    assert!(!failure.is_empty(), "{listed}");
    let id = listed["id"].as_str().unwrap();
    let described = ctl_json(&server, &["invocations", "describe", id]);
    assert_eq!(described["status"], "backing-off", "{described}");
    assert!(
        described["next_retry_ms"].as_u64().unwrap() > 0,
        "{described}"
    );
    let (code, stdout, _) = ctl(
        Some(&server),
        &["invocations", "list", "--status", "backing-off"],
    );
    assert_eq!(code, 0);
    assert!(
        stdout.contains("LAST FAILURE") && stdout.contains("backing-off"),
        "{stdout}"
    );
}

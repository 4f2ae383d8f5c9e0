//! Hardening of the admin surfaces (issue 8, findings 3c, 3d, 5, 6): superseded endpoint records are
//! dropped and bounded, discoveries are bounded in number and size, non-transient discovery answers fail
//! at once without echoing the remote, meta and storage refuse calls without their bearer token,
//! `meta.allowed_endpoints` holds at discovery and invocation, and secrets never come back out.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{h2_request, http1_request, post_json, request_json, Endpoint, Server};
use serde_json::{json, Value};

/// Discovery retries kept short so that the transient cases answer fast.
const FAST_RETRIES: [(&str, &str); 3] = [
    ("RESTATE_META__DISCOVERY_RETRY_POLICY__MAX_ATTEMPTS", "3"),
    (
        "RESTATE_META__DISCOVERY_RETRY_POLICY__INITIAL_INTERVAL",
        "200ms",
    ),
    ("RESTATE_META__DISCOVERY_TIMEOUT", "5s"),
];

fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = FAST_RETRIES.to_vec();
    env.extend_from_slice(extra);
    env
}

fn endpoints(server: &Server) -> Vec<Value> {
    let (status, body) = request_json(server.meta, "GET", "/endpoints", None);
    assert_eq!(status, 200, "{body}");
    body["endpoints"].as_array().unwrap().clone()
}

fn meta_dir(server: &Server) -> std::path::PathBuf {
    server.dir.join("target/meta")
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Finding 3c: re-registering the same services under ever new URIs keeps one endpoint record, one
/// discovery file and a small schemas.json, also after a restart.
#[test]
fn superseded_endpoints_are_dropped_and_schemas_json_stays_small() {
    let endpoint = Endpoint::start("ok", &[]);
    let mut server = Server::start(&FAST_RETRIES);
    for version in 0..12 {
        let uri = format!("{}/v{version}", endpoint.uri());
        let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": uri }));
        assert_eq!(status, 201, "{body}");
    }
    let records = endpoints(&server);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["uri"], format!("{}/v11", endpoint.uri()));
    let schemas = meta_dir(&server).join("schemas.json");
    let size = std::fs::metadata(&schemas).unwrap().len();
    assert!(size < 4096, "schemas.json is {size} bytes");
    let files = std::fs::read_dir(meta_dir(&server).join("discovery"))
        .unwrap()
        .count();
    assert_eq!(files, 1, "one discovery response file per live endpoint");

    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    server.restart();
    assert_eq!(endpoints(&server).len(), 1);
    let (status, counter) =
        request_json(server.meta, "GET", "/services/restate.test.Counter", None);
    assert_eq!((status, counter["revision"].clone()), (200, json!(12)));
}

/// Finding 3c: the number of endpoint records is bounded by `meta.max_endpoints`.
#[test]
fn endpoint_records_are_bounded() {
    let counter = Endpoint::start("ok", &["--services", "Counter"]);
    let echo = Endpoint::start("ok", &["--services", "Echo"]);
    let server = Server::start(&with(&[("RESTATE_META__MAX_ENDPOINTS", "1")]));
    let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": counter.uri() }));
    assert_eq!(status, 201, "{body}");
    // Replacing the one endpoint is fine, adding a second is not.
    let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": counter.uri() }));
    assert_eq!(status, 201, "{body}");
    let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": echo.uri() }));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["restate_code"], "META0011");
    assert!(
        body["message"].as_str().unwrap().contains("max_endpoints"),
        "{body}"
    );
    assert_eq!(endpoints(&server).len(), 1);
}

/// Finding 3d: past `meta.max_concurrent_discoveries`, a registration is refused at once with 429.
#[test]
fn concurrent_discoveries_are_bounded() {
    let slow = Endpoint::start("ok", &["--discovery-delay", "2000"]);
    let server = Server::start(&with(&[("RESTATE_META__MAX_CONCURRENT_DISCOVERIES", "2")]));
    let started = Instant::now();
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..6)
            .map(|i| {
                let uri = format!("{}/c{i}", slow.uri());
                let meta = server.meta;
                scope.spawn(move || post_json(meta, "/endpoints", &json!({ "uri": uri })))
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 429)
        .map(|(_, body)| body)
        .collect();
    let created = answers.iter().filter(|(status, _)| *status == 201).count();
    assert!(refused.len() >= 3, "{answers:?}");
    assert!(created >= 1 && created + refused.len() == 6, "{answers:?}");
    assert!(refused.iter().all(|body| body["message"]
        .as_str()
        .unwrap()
        .contains("max_concurrent_discoveries")));
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Finding 3d: an endless discovery answer is cut at `meta.max_discovery_response_bytes` while it is
/// read (this held before the issue too; the test keeps it so).
#[test]
fn discovery_response_size_is_enforced_while_reading() {
    let huge = Endpoint::start("huge", &[]);
    let server = Server::start(&with(&[(
        "RESTATE_META__MAX_DISCOVERY_RESPONSE_BYTES",
        "1048576",
    )]));
    let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": huge.uri() }));
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("larger than 1048576"),
        "{body}"
    );
}

/// Finding 6 and 5: 404, 302 and 500 fail at once (no retries), name the status and never echo the
/// endpoint's body; 503 is retried.
#[test]
fn non_transient_discovery_answers_fail_at_once_without_the_remote_body() {
    let server = Server::start(&FAST_RETRIES);
    for status in ["404", "302", "500", "503"] {
        let endpoint = Endpoint::start("ok", &["--discovery-status", status]);
        let (code, body) = post_json(server.meta, "/endpoints", &json!({ "uri": endpoint.uri() }));
        assert_eq!(code, 502, "{status}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(status), "{message}");
        assert!(!message.contains("endpoint-private-body"), "{message}");
        let attempts = if status == "503" { 3 } else { 1 };
        assert!(
            message.contains(&format!("after {attempts} attempts")),
            "{status}: {message}"
        );
    }
}

/// Finding 6: a port out of range is refused, not silently replaced by 80.
#[test]
fn out_of_range_ports_are_refused() {
    let server = Server::start(&FAST_RETRIES);
    for uri in ["http://127.0.0.1:99999", "http://127.0.0.1:0"] {
        let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": uri }));
        assert_eq!(status, 400, "{uri}: {body}");
        assert!(body["message"].as_str().unwrap().contains("port"), "{body}");
    }
}

/// Finding 6: DELETE /invocations does not echo a huge sid.
#[test]
fn errors_do_not_echo_huge_input() {
    let server = Server::start(&FAST_RETRIES);
    let sid = "x".repeat(100 * 1024);
    let (status, body) = request_json(
        server.meta,
        "DELETE",
        "/invocations",
        Some(&json!({ "sid": sid })),
    );
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    assert!(text.len() < 512, "{} bytes: {}", text.len(), &text[..200]);
}

/// Finding 5: with tokens set, meta (but `/health`) and storage refuse calls without them.
#[test]
fn meta_and_storage_require_their_tokens_when_set() {
    let endpoint = Endpoint::start("ok", &[]);
    let server = Server::start(&with(&[
        ("RESTATE_META__AUTH_TOKEN", "meta-t0ken"),
        ("RESTATE_WORKER__STORAGE_GRPC__AUTH_TOKEN", "storage-t0ken"),
    ]));
    let register = json!({ "uri": endpoint.uri() }).to_string();
    for authorization in [None, Some("Bearer wrong"), Some("Bearer storage-t0ken")] {
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(authorization.map(|a| ("authorization", a)));
        let (status, text) = http1_request(
            server.meta,
            "POST",
            "/endpoints",
            &headers,
            register.as_bytes(),
        )
        .unwrap();
        assert_eq!(status, 401, "{authorization:?}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("meta.auth_token"),
            "{body}"
        );
        let (status, _) = http1_request(server.meta, "GET", "/services", &headers, b"").unwrap();
        assert_eq!(status, 401);
    }
    assert_eq!(
        http1_request(server.meta, "GET", "/health", &[], b"")
            .unwrap()
            .0,
        200,
        "probes need no token"
    );
    let authorized = [
        ("content-type", "application/json"),
        ("authorization", "Bearer meta-t0ken"),
    ];
    let (status, text) = http1_request(
        server.meta,
        "POST",
        "/endpoints",
        &authorized,
        register.as_bytes(),
    )
    .unwrap();
    assert_eq!(status, 201, "{text}");
    let (status, text) = http1_request(server.meta, "GET", "/services", &authorized, b"").unwrap();
    assert_eq!(status, 200, "{text}");

    let scan = "/dev.restate.storage.scan.v1.Storage/Scan";
    let grpc = [("content-type", "application/grpc"), ("te", "trailers")];
    let (_, headers, _) = h2_request(server.storage, "POST", scan, &grpc, &[0, 0, 0, 0, 0]);
    assert_eq!(headers["grpc-status"], "16", "{headers:?}");
    let mut with_token = grpc.to_vec();
    with_token.push(("authorization", "Bearer storage-t0ken"));
    let (_, headers, _) = h2_request(server.storage, "POST", scan, &with_token, &[0, 0, 0, 0, 0]);
    assert_ne!(
        headers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("16"),
        "{headers:?}"
    );
}

/// Finding 5: credentials in a URI are refused without being echoed or logged; additional_headers are
/// write-only in the API, never logged, and the files holding them are 0600.
#[test]
fn secrets_never_come_back_out() {
    let endpoint = Endpoint::start("ok", &[]);
    let server = Server::start(&FAST_RETRIES);
    let with_password = format!("http://admin:hunter2@127.0.0.1:{}", endpoint.port);
    let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": with_password }));
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains("hunter2"), "{body}");
    assert!(body.to_string().contains("additional_headers"), "{body}");

    let (status, body) = post_json(
        server.meta,
        "/endpoints",
        &json!({
            "uri": endpoint.uri(),
            "additional_headers": { "authorization": "Bearer sup3rsecret" },
        }),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap();
    for path in ["/endpoints".to_owned(), format!("/endpoints/{id}")] {
        let (_, shown) = request_json(server.meta, "GET", &path, None);
        let text = shown.to_string();
        assert!(!text.contains("sup3rsecret"), "{path}: {text}");
        assert!(text.contains(r#""authorization":"***""#), "{path}: {text}");
    }
    let log = server.log();
    assert!(
        !log.contains("hunter2") && !log.contains("sup3rsecret"),
        "{log}"
    );
    let dir = meta_dir(&server);
    assert_eq!(mode(&dir.join("schemas.json")), 0o600);
    for file in std::fs::read_dir(dir.join("discovery")).unwrap() {
        assert_eq!(mode(&file.unwrap().path()), 0o600);
    }
}

/// Finding 5: `meta.allowed_endpoints` refuses other hosts at discovery, and at invocation time an
/// endpoint registered before the list was set.
#[test]
fn allowed_endpoints_hold_at_discovery_and_at_invocation() {
    let endpoint = Endpoint::start("ok", &[]);
    let restricted = with(&[(
        "RESTATE_META__ALLOWED_ENDPOINTS",
        "10.0.0.0/8, svc.internal",
    )]);
    let server = Server::start(&restricted);
    let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": endpoint.uri() }));
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("meta.allowed_endpoints"),
        "{body}"
    );
    drop(server);

    let loopback = Server::start(&with(&[("RESTATE_META__ALLOWED_ENDPOINTS", "127.0.0.0/8")]));
    let (status, body) = post_json(
        loopback.meta,
        "/endpoints",
        &json!({ "uri": endpoint.uri() }),
    );
    assert_eq!(status, 201, "{body}");
    drop(loopback);

    // Registered while allowed, then the list changes: the invoker refuses to connect.
    let dir = tempfile::tempdir().unwrap();
    let mut open = Server::spawn_in(dir.path(), &FAST_RETRIES);
    open.wait_healthy();
    common::register(&open, &endpoint.uri());
    open.signal(libc::SIGTERM);
    assert!(open.wait_exit(Duration::from_secs(30)).success());
    let mut closed = Server::spawn_in(dir.path(), &restricted);
    closed.wait_healthy();
    let (status, body) =
        common::connect_call(&closed, "/restate.test.Echo/Echo", &json!({ "text": "hi" }));
    assert_ne!(status, 200, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("allowed_endpoints"),
        "{body}"
    );
    assert_eq!(
        common::endpoint_stats(&endpoint).0,
        0,
        "no attempt reached it"
    );
}

/// Finding 6: the test endpoint answers `--help` and exits 0.
#[test]
fn test_endpoint_prints_help() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_restate-test-endpoint"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("Usage") && text.contains("--mode"), "{text}");
}

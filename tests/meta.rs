//! The meta REST API against the in-repo endpoint: registration, every error path, persistence across a
//! restart, revisions, `force`, deletion, the OpenAPI document, and discovery through an HTTP proxy.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{http1_request, post_json, request_json, Endpoint, Server};
use serde_json::{json, Value};

/// Discovery retries kept short so error paths answer fast.
const FAST_RETRIES: [(&str, &str); 3] = [
    ("RESTATE_META__DISCOVERY_RETRY_POLICY__MAX_ATTEMPTS", "2"),
    (
        "RESTATE_META__DISCOVERY_RETRY_POLICY__INITIAL_INTERVAL",
        "10ms",
    ),
    ("RESTATE_META__DISCOVERY_TIMEOUT", "3s"),
];

fn get(server: &Server, path: &str) -> (u16, Value) {
    request_json(server.meta, "GET", path, None)
}

#[test]
fn registration_describes_services_and_survives_a_restart() {
    let endpoint = Endpoint::start("ok", &["--request-response"]);
    let mut server = Server::start(&FAST_RETRIES);
    let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": endpoint.uri() }));
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let (_, location) = {
        let raw = http1_request(
            server.meta,
            "POST",
            "/endpoints",
            &[("content-type", "application/json")],
            json!({ "uri": endpoint.uri() }).to_string().as_bytes(),
        )
        .unwrap();
        raw
    };
    assert!(location.contains(&id));
    let revisions: Vec<(String, u64)> = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["revision"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        revisions,
        vec![
            ("restate.test.Counter".into(), 1),
            ("restate.test.Echo".into(), 1),
            ("restate.test.Config".into(), 1)
        ]
    );

    let (status, counter) = get(&server, "/services/restate.test.Counter");
    assert_eq!(status, 200);
    assert_eq!(counter["instance_type"], "Keyed");
    assert_eq!(counter["methods"], json!(["Add", "Get"]));
    assert_eq!(counter["endpoint_id"], id.as_str());
    assert_eq!(counter["public"], true);
    assert_eq!(
        get(&server, "/services/restate.test.Echo").1["instance_type"],
        "Unkeyed"
    );
    assert_eq!(
        get(&server, "/services/restate.test.Config").1["instance_type"],
        "Singleton"
    );
    let (_, add) = get(&server, "/services/restate.test.Counter/methods/Add");
    assert_eq!(add["key_field"], 1);
    assert_eq!(add["input_type"], "restate.test.AddRequest");
    assert_eq!(
        get(&server, "/services/restate.test.Counter/methods").1,
        json!({ "methods": ["Add", "Get"] })
    );
    let (_, endpoint_json) = get(&server, &format!("/endpoints/{id}"));
    assert_eq!(endpoint_json["protocol_type"], "RequestResponse");
    assert_eq!(endpoint_json["uri"], endpoint.uri());

    // PATCH public, then restart: registrations, revisions and flags are kept.
    let (status, patched) = request_json(
        server.meta,
        "PATCH",
        "/services/restate.test.Echo",
        Some(&json!({ "public": false })),
    );
    assert_eq!((status, patched["public"].clone()), (200, json!(false)));
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    server.restart();
    let (status, services) = get(&server, "/services");
    assert_eq!(status, 200);
    assert_eq!(services["services"].as_array().unwrap().len(), 3);
    assert_eq!(
        get(&server, "/services/restate.test.Echo").1["public"],
        false
    );
    assert_eq!(
        get(&server, "/services/restate.test.Counter").1["revision"],
        2
    );

    // force=false conflicts; force (the default) bumps revisions.
    let (status, body) = post_json(
        server.meta,
        "/endpoints",
        &json!({ "uri": endpoint.uri(), "force": false }),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["restate_code"], "META0004");
    let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": endpoint.uri() }));
    assert_eq!(status, 201);
    assert_eq!(body["services"][0]["revision"], 3);

    // The 0.1.0 alias.
    let (status, body) = post_json(
        server.meta,
        "/services/discover",
        &json!({ "uri": endpoint.uri() }),
    );
    assert_eq!(status, 200);
    assert_eq!(body["services"][0], "restate.test.Counter");

    // Deletion needs force, then removes the services.
    let (status, _) = request_json(server.meta, "DELETE", &format!("/endpoints/{id}"), None);
    assert_eq!(status, 501);
    let (status, _) = request_json(
        server.meta,
        "DELETE",
        &format!("/endpoints/{id}?force=true"),
        None,
    );
    assert_eq!(status, 202);
    assert_eq!(get(&server, &format!("/endpoints/{id}")).0, 404);
    assert_eq!(get(&server, "/services/restate.test.Counter").0, 404);
    assert_eq!(get(&server, "/services").1, json!({ "services": [] }));
}

#[test]
fn every_bad_registration_gets_a_clear_error() {
    let server = Server::start(&FAST_RETRIES);
    let cases: [(&str, u16, &str); 7] = [
        ("not-found", 502, "404"),
        ("close", 502, "discovery failed"),
        ("garbage", 502, "not valid protobuf"),
        ("wrong-content-type", 502, "text/plain"),
        ("missing-dependency", 400, "dev/restate/ext.proto"),
        ("bad-key", 400, "restate.test.NoKey"),
        ("untyped", 400, "service_type"),
    ];
    for (mode, expected, needle) in cases {
        let endpoint = Endpoint::start(mode, &[]);
        let (status, body) =
            post_json(server.meta, "/endpoints", &json!({ "uri": endpoint.uri() }));
        assert_eq!(status, expected, "{mode}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "{mode}: {message}");
        assert!(body["restate_code"].is_string(), "{mode}: {body}");
    }
    let reserved = Endpoint::start("reserved", &[]);
    let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": reserved.uri() }));
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("reserved"));

    // Nobody listening.
    let port = common::free_port();
    let (status, body) = post_json(
        server.meta,
        "/endpoints",
        &json!({ "uri": format!("http://127.0.0.1:{port}") }),
    );
    assert_eq!(status, 502, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("after 2 attempts"),
        "{body}"
    );

    // Malformed requests are 400s, never 500s.
    for bad in [
        &b"not json"[..],
        br#"{"url": "http://x"}"#,
        br#"{"uri": 5}"#,
        br#"{"uri": "ftp://x"}"#,
        br#"{"uri": "http://x", "additional_headers": {"bad header": "v"}}"#,
    ] {
        let (status, body) = http1_request(
            server.meta,
            "POST",
            "/endpoints",
            &[("content-type", "application/json")],
            bad,
        )
        .unwrap();
        assert_eq!(status, 400, "{}: {body}", String::from_utf8_lossy(bad));
        let error: Value = serde_json::from_str(&body).unwrap();
        assert!(error["message"].is_string());
    }
    let huge = vec![b' '; 2 << 20];
    let (status, _) = http1_request(
        server.meta,
        "POST",
        "/endpoints",
        &[("content-type", "application/json")],
        &huge,
    )
    .unwrap();
    assert_eq!(status, 413);
    assert_eq!(get(&server, "/services/nope").0, 404);
    assert_eq!(get(&server, "/services/nope/methods/x").0, 404);
    assert_eq!(
        request_json(
            server.meta,
            "PATCH",
            "/services/nope",
            Some(&json!({ "public": true }))
        )
        .0,
        404
    );
    assert_eq!(request_json(server.meta, "PUT", "/services", None).0, 405);
    assert_eq!(
        get(&server, "/services").1,
        json!({ "services": [] }),
        "nothing was registered"
    );
}

#[test]
fn every_route_in_the_openapi_document_answers() {
    let endpoint = Endpoint::start("ok", &[]);
    let server = Server::start(&FAST_RETRIES);
    let (status, doc) = get(&server, "/openapi");
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let (_, registered) = post_json(server.meta, "/endpoints", &json!({ "uri": endpoint.uri() }));
    let id = registered["id"].as_str().unwrap().to_owned();
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 9);
    let mut operations = Vec::new();
    for (path, item) in paths {
        for (method, _) in item.as_object().unwrap() {
            operations.push((method.to_uppercase(), path.clone()));
        }
    }
    // Deletion last: it removes what the others read.
    operations.sort_by_key(|(m, _)| m == "DELETE");
    for (method, path) in operations {
        let concrete = path
            .replace("{endpoint}", &id)
            .replace("{service}", "restate.test.Counter")
            .replace("{method}", "Add");
        let concrete = if method == "DELETE" {
            format!("{concrete}?force=true")
        } else {
            concrete
        };
        let unknown_sid = format!("counter-AA==-{}", "0".repeat(48));
        let body = match (method.as_str(), path.as_str()) {
            ("POST", _) => Some(json!({ "uri": endpoint.uri() })),
            ("PATCH", _) => Some(json!({ "public": true })),
            ("DELETE", "/invocations") => Some(json!({ "sid": unknown_sid })),
            _ => None,
        };
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, text) = http1_request(
            server.meta,
            &method,
            &concrete,
            &[("content-type", "application/json")],
            bytes.as_bytes(),
        )
        .unwrap();
        // Cancelling an invocation that does not exist is the route answering: 404 with its message.
        let cancel_unknown = path == "/invocations" && status == 404 && text.contains("not found");
        assert!(
            (200..300).contains(&status) || cancel_unknown,
            "{method} {concrete} answered {status}: {text}"
        );
    }
}

/// A TCP forwarder standing in for an HTTP proxy sidecar: every connection goes to `target`.
fn forwarding_proxy(target: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().take(100) {
            let Ok(client) = client else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", target)) else {
                continue;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            };
            pipe(client.try_clone().unwrap(), upstream.try_clone().unwrap());
            pipe(upstream, client);
        }
    });
    (port, connections)
}

#[test]
fn discovery_goes_through_http_proxy() {
    let endpoint = Endpoint::start("ok", &[]);
    let (proxy_port, connections) = forwarding_proxy(endpoint.port);
    // A host that does not resolve: only the proxy can reach it.
    let uri = format!("http://restate-endpoint.invalid:{}", endpoint.port);

    let direct = Server::start(&FAST_RETRIES);
    let (status, body) = post_json(direct.meta, "/endpoints", &json!({ "uri": uri }));
    assert_eq!(status, 502, "{body}");
    assert_eq!(connections.load(Ordering::SeqCst), 0);

    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let mut env = FAST_RETRIES.to_vec();
    env.push(("HTTP_PROXY", proxy.as_str()));
    let proxied = Server::start(&env);
    let (status, body) = post_json(proxied.meta, "/endpoints", &json!({ "uri": uri }));
    assert_eq!(status, 201, "{body}");
    assert!(connections.load(Ordering::SeqCst) >= 1);
    let (_, stored) = request_json(
        proxied.meta,
        "GET",
        &format!("/endpoints/{}", body["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(stored["uri"], uri.as_str());
}

#[test]
fn https_endpoints_are_reached_over_tls_with_alpn_h2() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    let endpoint = Endpoint::start(
        "ok",
        &["--tls", cert.to_str().unwrap(), key.to_str().unwrap()],
    );
    let uri = format!("https://localhost:{}", endpoint.port);

    // Without trusting the self-signed certificate, the TLS handshake fails.
    let untrusting = Server::start(&FAST_RETRIES);
    let (status, body) = post_json(untrusting.meta, "/endpoints", &json!({ "uri": uri }));
    assert_eq!(status, 502, "{body}");
    assert!(body["message"].as_str().unwrap().contains("TLS"), "{body}");

    let mut env = FAST_RETRIES.to_vec();
    env.push(("RESTATE_META__TLS_CA_FILE", cert.to_str().unwrap()));
    env.push((
        "RESTATE_WORKER__INVOKER__TLS_CA_FILE",
        cert.to_str().unwrap(),
    ));
    let trusting = Server::start(&env);
    let (status, body) = post_json(trusting.meta, "/endpoints", &json!({ "uri": uri }));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["services"].as_array().unwrap().len(), 3);
    // Invocations reach it over TLS too (the invoker's own connections).
    let (status, body) = common::connect_call(
        &trusting,
        "/restate.test.Echo/Echo",
        &json!({ "text": "tls" }),
    );
    assert_eq!((status, &body["text"]), (200, &json!("tls")), "{body}");
}

#[test]
fn failed_discoveries_are_logged_at_warn_with_the_uri() {
    let server = Server::start(&FAST_RETRIES);
    let uri = format!("http://127.0.0.1:{}", common::free_port());
    let (status, body) = post_json(server.meta, "/endpoints", &json!({ "uri": uri }));
    assert_eq!(status, 502, "{body}");
    let log = server.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(&uri))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|l| l.contains(&format!("discovery of {uri} failed, retrying in 10ms"))),
        "{log}"
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains(&format!("registering {uri} failed"))),
        "{log}"
    );
}

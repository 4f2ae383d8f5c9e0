//! The server process: health over HTTP/1.1 and h2c, one listener per core per port, graceful shutdown,
//! JSON logs, and garbage on every port.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{h2_request, http1_request, listening_sockets, Server};

#[test]
fn health_over_http1_and_h2c_and_one_listener_per_core() {
    let server = Server::start(&[("RESTATE_RUNTIME__CORES", "3")]);
    let (status, body) = http1_request(server.meta, "GET", "/health", &[], b"").unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = h2_request(server.meta, "GET", "/health", &[], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(health["cores"], 3);
    for port in [server.ingress, server.meta, server.storage] {
        assert_eq!(
            listening_sockets(port),
            3,
            "port {port} should have one listener per core"
        );
    }
    let (status, metrics) = http1_request(server.meta, "GET", "/metrics", &[], b"").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("restate_cores 3"), "{metrics}");
    // Unknown routes get the meta error JSON.
    let (status, body) = http1_request(server.meta, "GET", "/nope", &[], b"").unwrap();
    assert_eq!(status, 404);
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("/nope"),
        "{body}"
    );
}

#[test]
fn ingress_and_storage_ports_answer_in_their_protocols() {
    let server = Server::start(&[]);
    // Connect over HTTP/1.1: no such service yet.
    let (status, body) = http1_request(
        server.ingress,
        "POST",
        "/counter/add",
        &[("content-type", "application/json")],
        b"{}",
    )
    .unwrap();
    assert_eq!(status, 404, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["code"], "not_found");
    // Unsupported content type.
    let (status, _) = http1_request(
        server.ingress,
        "POST",
        "/counter/add",
        &[("content-type", "text/plain")],
        b"x",
    )
    .unwrap();
    assert_eq!(status, 415);
    // gRPC over h2c: Trailers-Only UNIMPLEMENTED (nothing registered).
    let (status, headers, _) = h2_request(
        server.ingress,
        "POST",
        "/counter/add",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        &[0, 0, 0, 0, 0],
    );
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "12");
    // The storage API speaks gRPC: an empty ScanRequest (no filter) is INVALID_ARGUMENT.
    let (status, headers, _) = h2_request(
        server.storage,
        "POST",
        "/dev.restate.storage.scan.v1.Storage/Scan",
        &[("content-type", "application/grpc")],
        &[0, 0, 0, 0, 0],
    );
    assert_eq!(status, 200);
    assert_eq!(headers["grpc-status"], "3");
}

#[test]
fn sigterm_exits_zero_and_restart_keeps_working() {
    let mut server = Server::start(&[]);
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "log:\n{}", server.log());
    assert!(server.log().contains("storage closed"));
    server.restart();
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn sigterm_closes_idle_connections_without_waiting_for_the_grace_period() {
    let mut server = Server::start(&[("RESTATE_SHUTDOWN_GRACE_PERIOD", "60s")]);
    // Keep-alive connections: an HTTP/1.1 one between requests, an HTTP/2 one (GOAWAY).
    let mut h1 = TcpStream::connect(("127.0.0.1", server.meta)).unwrap();
    h1.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(h1.read(&mut buf).unwrap() > 0);
    // A connection that sent nothing yet.
    let _fresh = TcpStream::connect(("127.0.0.1", server.ingress)).unwrap();
    // An HTTP/2 client connection that stays open after its request (a real client answers GOAWAY/PING).
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let port = server.ingress;
    let h2_client = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let (mut sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .unwrap();
            let conn = tokio::spawn(conn);
            let request = http::Request::post(format!("http://127.0.0.1:{port}/a/b"))
                .header("content-type", "application/json")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), 404);
            ready_tx.send(()).unwrap();
            // Ends when the server closes the connection.
            tokio::time::timeout(Duration::from_secs(30), conn)
                .await
                .is_ok()
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(20)).code(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        h2_client.join().unwrap(),
        "the HTTP/2 connection was not closed"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut server = Server::start(&[("RESTATE_TRACING__LOG_FORMAT", "JSON")]);
    let _ = http1_request(server.meta, "GET", "/health", &[], b"");
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(30)).code(), Some(0));
    let log = server.log();
    assert!(log.lines().count() >= 3, "{log}");
    for line in log.lines() {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(record.get(field).is_some(), "{field} missing: {line}");
        }
        assert!(
            record["timestamp"].as_str().unwrap().ends_with('Z'),
            "{line}"
        );
    }
    assert!(
        log.contains("\"core\":"),
        "key-value fields are logged: {log}"
    );
}

/// Sends `bytes` on a fresh connection and reads until the server closes it (bounded).
fn send_garbage(port: u16, bytes: &[u8]) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(bytes);
    let mut sink = Vec::new();
    let _ = stream.read_to_end(&mut sink);
}

#[test]
fn garbage_on_every_port_closes_only_that_connection() {
    let mut server = Server::start(&[("RESTATE_RUNTIME__HTTP_IDLE_TIMEOUT", "1s")]);
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let oversized = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    for port in [server.ingress, server.meta, server.storage] {
        send_garbage(port, &random(4096));
        send_garbage(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"); // a TLS ClientHello start
        send_garbage(port, oversized.as_bytes());
        send_garbage(
            port,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff",
        );
        // Half-sent request: the idle timeout closes it.
        let started = Instant::now();
        send_garbage(port, b"POST /a/b HTTP/1.1\r\nHost: x\r\nContent-Le");
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "half-sent request not closed"
        );
        assert!(
            server.is_running(),
            "server died on garbage; log:\n{}",
            server.log()
        );
    }
    let (status, _) = http1_request(server.meta, "GET", "/health", &[], b"").unwrap();
    assert_eq!(status, 200);
    let (_, metrics) = http1_request(server.meta, "GET", "/metrics", &[], b"").unwrap();
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("restate_http_connection_errors_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        errors >= 3,
        "garbage was not counted as connection errors: {metrics}"
    );
    server.wait_healthy();
}

/// The env that points a server at `server`'s three ports.
fn same_ports(server: &Server) -> Vec<(String, String)> {
    vec![
        (
            "RESTATE_WORKER__INGRESS_GRPC__BIND_ADDRESS".into(),
            format!("127.0.0.1:{}", server.ingress),
        ),
        (
            "RESTATE_META__REST_ADDRESS".into(),
            format!("127.0.0.1:{}", server.meta),
        ),
        (
            "RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS".into(),
            format!("127.0.0.1:{}", server.storage),
        ),
        ("RESTATE_RUNTIME__CORES".into(), "2".into()),
    ]
}

/// Runs the binary in `dir` with `env` until it exits (killed and failed after 30 s: a second
/// instance that starts serving never exits on its own). Returns (exit code, stderr).
fn run_to_exit(dir: &std::path::Path, env: &[(String, String)]) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(common::binary())
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
            panic!("the second instance kept running; its log:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(dir.join("stderr.log")).unwrap();
    (status.code(), stderr)
}

#[test]
fn a_second_instance_on_the_same_ports_fails_naming_the_port_and_the_first_keeps_serving() {
    let mut first = Server::start(&[]);
    let other = tempfile::tempdir().unwrap();
    let (code, stderr) = run_to_exit(other.path(), &same_ports(&first));
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {stderr}");
    let error = stderr
        .lines()
        .find(|l| l.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.contains(&format!("port {} (ingress server", first.ingress))
            && error.contains("is already in use by another process"),
        "{error}"
    );
    assert!(
        !other.path().join("target").exists(),
        "the refused instance created a data directory"
    );
    // The first one still owns every listener (one per core) and answers.
    assert!(first.is_running());
    for port in [first.ingress, first.meta, first.storage] {
        assert_eq!(listening_sockets(port), 2, "port {port}");
    }
    assert_eq!(
        http1_request(first.meta, "GET", "/health", &[], b"")
            .unwrap()
            .0,
        200
    );
}

#[test]
fn a_port_held_by_another_program_is_named_at_start() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        (
            "RESTATE_WORKER__INGRESS_GRPC__BIND_ADDRESS".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        (
            "RESTATE_META__REST_ADDRESS".to_owned(),
            format!("127.0.0.1:{port}"),
        ),
        (
            "RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
    ];
    let (code, stderr) = run_to_exit(dir.path(), &env);
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "port {port} (meta server, 127.0.0.1:{port}) is already in use by another process"
        )) && stderr.contains("meta.rest_address"),
        "{stderr}"
    );
}

#[test]
fn start_up_logs_the_three_bound_addresses() {
    let server = Server::start(&[]);
    let expected = format!(
        "listening: ingress 127.0.0.1:{}, meta 127.0.0.1:{}, storage 127.0.0.1:{}",
        server.ingress, server.meta, server.storage
    );
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("listening:"))
        .unwrap_or_else(|| panic!("no listening line: {log}"));
    assert!(
        line.contains(" INFO ") && line.contains(&expected),
        "{line}"
    );
}

fn connection_errors(server: &Server) -> u64 {
    let (_, metrics) = http1_request(server.meta, "GET", "/metrics", &[], b"").unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("restate_http_connection_errors_total "))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn clients_that_reset_their_connection_are_not_connection_errors() {
    let server = Server::start(&[("RUST_LOG", "debug")]);
    // Keep-alive requests, then the client goes away with a reset (SO_LINGER 0) and with a close.
    for reset in [true, false, true] {
        let mut stream = TcpStream::connect(("127.0.0.1", server.meta)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        if reset {
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(stream);
    }
    // Garbage still counts (so the counter is live).
    let mut stream = TcpStream::connect(("127.0.0.1", server.meta)).unwrap();
    stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    let _ = stream.read_to_end(&mut Vec::new());
    drop(stream);
    let errors = common::eventually(Duration::from_secs(10), || {
        Some(connection_errors(&server)).filter(|e| *e > 0)
    });
    let log: Vec<String> = server
        .log()
        .lines()
        .filter(|l| l.contains("connection"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        errors, 1,
        "resets were counted as connection errors: {log:#?}"
    );
}

/// A server with nothing to do stays asleep: no core wakes up on a timer of its own (the expiry of
/// transient rows ticked every 5 ms on each core, idle or not: about 40 ms of CPU per second).
#[test]
fn an_idle_server_uses_almost_no_cpu() {
    let server = Server::start(&[]);
    std::thread::sleep(Duration::from_secs(1)); // startup's own work settles
    let before = server.cpu_time();
    std::thread::sleep(Duration::from_secs(3));
    let used = server.cpu_time() - before;
    assert!(
        used < Duration::from_millis(60),
        "{used:?} of CPU in 3 s idle"
    );
}

#[test]
fn a_server_restarted_at_once_after_kill_9_binds_its_ports() {
    // This process holds 1,000 connections at a time: past a 1,024 soft limit with its other files.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    limit.rlim_cur = limit.rlim_max.min(4096);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
    let mut server = Server::start(&[]);
    for _ in 0..5 {
        // Idle connections: reads pending in the cores' io_uring keep the listeners bound after the
        // process is reaped until the kernel has torn the rings down (~20 ms with 1,000 of them; the
        // restart reaches its port probe sooner, and fails without `runtime.port_release_wait`).
        let idle: Vec<_> = (0..1000)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", server.ingress)).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        server.kill();
        server.restart();
        drop(idle);
    }
}

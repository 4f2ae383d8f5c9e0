//! Slow and hostile clients (testing.md #27): request heads sent a byte at a time, bodies that stall,
//! gRPC frames declaring more than the limit, malformed chunked bodies, and a flood of connections on one
//! port while another must stay reachable. The server runs with short timeouts so each case is quick.

mod common;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{http1_request, Server};

/// Short timeouts for the tests; the idle timeout stays long so only the new deadlines can close.
const FAST: &[(&str, &str)] = &[
    ("RESTATE_RUNTIME__HTTP_HEADER_READ_TIMEOUT", "2s"),
    ("RESTATE_RUNTIME__HTTP_BODY_STALL_TIMEOUT", "2s"),
    ("RESTATE_RUNTIME__HTTP_IDLE_TIMEOUT", "1m"),
];

/// Connects, sends `first`, then `each` every `every` until the server closes the connection or
/// `give_up` passes. Returns how long after the first byte the server closed it (`None`: never).
fn trickle(port: u16, first: &[u8], each: &[u8], every: Duration) -> Option<Duration> {
    let give_up = Duration::from_secs(15);
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let started = Instant::now();
    let closed = std::thread::spawn(move || {
        reader.set_read_timeout(Some(give_up)).unwrap();
        let mut sink = [0u8; 4096];
        loop {
            match reader.read(&mut sink) {
                Ok(0) => return Some(started.elapsed()),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return None,
                Err(_) => return Some(started.elapsed()),
            }
        }
    });
    stream.write_all(first).unwrap();
    while !closed.is_finished() && started.elapsed() < give_up {
        std::thread::sleep(every);
        if stream.write_all(each).is_err() {
            break;
        }
    }
    closed.join().unwrap()
}

#[test]
fn slow_request_headers_are_cut_off_after_the_header_read_timeout() {
    let server = Server::start(FAST);
    // HTTP/1.1: a head that never ends, a byte every 500 ms (the connection is never quiet).
    let closed = trickle(
        server.ingress,
        b"POST /a/b HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        b"a",
        Duration::from_millis(500),
    );
    let closed = closed.expect("a head sent a byte at a time was never cut off");
    assert!(
        closed >= Duration::from_millis(1500) && closed < Duration::from_secs(6),
        "HTTP/1.1 head closed after {closed:?}, expected about 2 s"
    );
    // HTTP/2: a connection that pings and never sends a request.
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
    let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let closed = trickle(server.meta, &preface, &ping, Duration::from_millis(500))
        .expect("an h2 connection without requests was never closed");
    assert!(
        closed >= Duration::from_millis(1500) && closed < Duration::from_secs(6),
        "h2 connection closed after {closed:?}, expected about 2 s"
    );
    let (status, _) = http1_request(server.meta, "GET", "/health", &[], b"").unwrap();
    assert_eq!(status, 200);
    let (_, metrics) = http1_request(server.meta, "GET", "/metrics", &[], b"").unwrap();
    assert!(
        metrics.contains("restate_http_header_timeouts_total 2\n"),
        "{metrics}"
    );
}

/// Sends one h2 request whose body is `sent` and then stays open; returns the response's status, its
/// headers and trailers, and how long it took.
fn h2_open_body(
    port: u16,
    path: &str,
    content_type: &str,
    declared: usize,
    sent: Vec<u8>,
) -> (u16, http::HeaderMap, Duration) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures::StreamExt;
        use http_body_util::BodyExt;
        let mut sender = common::h2_connect(port).await;
        let (tx, rx) = futures::channel::mpsc::unbounded::<bytes::Bytes>();
        tx.unbounded_send(bytes::Bytes::from(sent)).unwrap();
        let body = http_body_util::StreamBody::new(
            rx.map(|b| Ok::<_, Infallible>(hyper::body::Frame::data(b))),
        );
        let request = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", content_type)
            .header("content-length", declared.to_string())
            .body(body)
            .unwrap();
        let started = Instant::now();
        let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
            .await
            .expect("no response within 20 s")
            .unwrap();
        let elapsed = started.elapsed();
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let mut headers = parts.headers;
        if let Ok(Ok(collected)) =
            tokio::time::timeout(Duration::from_secs(5), body.collect()).await
        {
            if let Some(trailers) = collected.trailers() {
                headers.extend(trailers.clone());
            }
        }
        drop(tx); // held open until the answer came
        (status, headers, elapsed)
    })
}

#[test]
fn a_stalled_h2_body_is_answered_with_deadline_exceeded() {
    let server = Server::start(FAST);
    // A gRPC call declaring 1,000 bytes that sends 10.
    let (status, headers, elapsed) = h2_open_body(
        server.ingress,
        "/dev.restate.Ingress/Invoke",
        "application/grpc",
        1000,
        vec![0u8, 0, 0, 3, 227, 1, 2, 3, 4, 5],
    );
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("4"),
        "{headers:?}"
    );
    let message = headers["grpc-message"].to_str().unwrap().to_owned();
    assert!(message.contains("http_body_stall_timeout"), "{message}");
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed < Duration::from_secs(8),
        "stalled body answered after {elapsed:?}, expected about 2 s"
    );
}

#[test]
fn a_grpc_frame_declaring_too_much_is_refused_at_once() {
    // The stall timeout is long here: an answer within it can only come from the frame-header check.
    let server = Server::start(&[("RESTATE_RUNTIME__HTTP_BODY_STALL_TIMEOUT", "30s")]);
    let declared: u32 = 100_000_000;
    let mut sent = vec![0u8];
    sent.extend_from_slice(&declared.to_be_bytes());
    sent.extend_from_slice(&vec![7u8; 1 << 20]);
    let (status, headers, elapsed) = h2_open_body(
        server.ingress,
        "/dev.restate.Ingress/Invoke",
        "application/grpc",
        5 + declared as usize,
        sent,
    );
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("grpc-status").map(|v| v.to_str().unwrap()),
        Some("8"),
        "{headers:?}"
    );
    let message = headers["grpc-message"].to_str().unwrap().to_owned();
    assert!(message.contains("max_message_size"), "{message}");
    assert!(
        elapsed < Duration::from_secs(10),
        "answered after {elapsed:?}"
    );
}

#[test]
fn a_stalled_meta_body_gets_408() {
    let server = Server::start(FAST);
    let mut stream = TcpStream::connect(("127.0.0.1", server.meta)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    stream
        .write_all(
            b"POST /endpoints HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"uri\":",
        )
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("http_body_stall_timeout"),
        "{body}"
    );
    assert!(
        elapsed < Duration::from_secs(8),
        "answered after {elapsed:?}, expected about 2 s"
    );
}

#[test]
fn a_malformed_chunked_body_is_a_400_with_error_json() {
    let server = Server::start(FAST);
    let mut stream = TcpStream::connect(("127.0.0.1", server.ingress)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(
            b"POST /dev.restate.Ingress/Invoke HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
              zz\r\nhello\r\n0\r\n\r\n",
        )
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    let body: serde_json::Value =
        serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(body["code"], "invalid_argument", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("malformed"),
        "{body}"
    );
}

#[test]
fn meta_answers_while_ingress_is_at_its_connection_limit() {
    let server = Server::start(&[("RESTATE_WORKER__INGRESS_GRPC__MAX_CONNECTIONS", "20")]);
    // Twice the limit of idle connections: the first 20 stay open, the rest are closed at once.
    let flood: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", server.ingress)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let refused = flood.iter().filter(|s| is_closed(s)).count();
    assert_eq!(refused, 20, "ingress should hold exactly its limit of 20");
    for _ in 0..5 {
        let (status, body) = http1_request(server.meta, "GET", "/health", &[], b"").unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let (_, metrics) = http1_request(server.meta, "GET", "/metrics", &[], b"").unwrap();
    assert!(
        metrics.contains("restate_http_connections_refused_total 20\n")
            && metrics.contains("restate_http_open_connections{port=\"ingress\"} 20\n"),
        "{metrics}"
    );
    drop(flood);
}

/// Whether the server closed `stream` (a read neither blocks nor returns data).
fn is_closed(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let result = (&*stream).read(&mut [0u8; 1]);
    !matches!(result, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

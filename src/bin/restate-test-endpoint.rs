//! The in-repo service endpoint for tests and benchmarks. It answers discovery for the services of
//! `proto/restate/test/endpoint.proto`, or misbehaves on purpose (`--mode`), so tests can reach every
//! error path that the real SDK cannot be made to take on demand.
//!
//! Usage: `restate-test-endpoint [--port N] [--mode MODE] [--request-response] [--tls CERT KEY]`; prints
//! `listening on <port>` once it accepts connections. Modes: ok (default), not-found, garbage,
//! wrong-content-type, missing-dependency, bad-key, untyped, reserved, close.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use glommio::net::TcpListener;
use prost::Message;
use restate::http::server::{self, CoreServers, Counters, Limits};
use restate::http::{full, Body};
use restate::proto::discovery::ServiceDiscoveryResponse;
use restate::shutdown::Shutdown;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ok,
    NotFound,
    Garbage,
    WrongContentType,
    MissingDependency,
    BadKey,
    Untyped,
    Reserved,
    Close,
}

fn parse_mode(s: &str) -> Mode {
    match s {
        "ok" => Mode::Ok,
        "not-found" => Mode::NotFound,
        "garbage" => Mode::Garbage,
        "wrong-content-type" => Mode::WrongContentType,
        "missing-dependency" => Mode::MissingDependency,
        "bad-key" => Mode::BadKey,
        "untyped" => Mode::Untyped,
        "reserved" => Mode::Reserved,
        "close" => Mode::Close,
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2)
        }
    }
}

/// The discovery response for `mode`; field 1 is written raw so extension options survive.
fn discovery_response(mode: Mode, request_response: bool) -> Vec<u8> {
    let services: &[&str] = match mode {
        Mode::BadKey => &["restate.test.NoKey"],
        Mode::Untyped => &["restate.test.Untyped"],
        Mode::Reserved => &["dev.restate.Sneaky"],
        _ => &[
            "restate.test.Counter",
            "restate.test.Echo",
            "restate.test.Config",
        ],
    };
    let mut out = ServiceDiscoveryResponse {
        files: None,
        services: services.iter().map(|s| s.to_string()).collect(),
        protocol_mode: i32::from(request_response),
        ..Default::default()
    }
    .encode_to_vec();
    let mut files = restate::proto::test::DESCRIPTOR_SET.to_vec();
    if mode == Mode::MissingDependency {
        // Keep only the test file: its import of dev/restate/ext.proto now points nowhere.
        let mut set = prost_types::FileDescriptorSet::decode(files.as_slice()).unwrap();
        set.file
            .retain(|f| f.name() == "restate/test/endpoint.proto");
        files = set.encode_to_vec();
    }
    prost::encoding::bytes::encode(1, &files, &mut out);
    out
}

fn respond(mode: Mode, request_response: bool, path: &str) -> http::Response<Body> {
    let proto = |body: Vec<u8>, content_type: &str| {
        http::Response::builder()
            .header(http::header::CONTENT_TYPE, content_type)
            .body(full(body))
            .unwrap()
    };
    match (mode, path) {
        (Mode::NotFound, _) => http::Response::builder()
            .status(404)
            .body(full("no such thing"))
            .unwrap(),
        (Mode::Garbage, "/discover") => {
            proto(vec![0x0a, 0xff, 0xff, 0x03, 0x42], "application/proto")
        }
        (Mode::WrongContentType, "/discover") => proto(b"hello".to_vec(), "text/plain"),
        (_, "/discover") => proto(
            discovery_response(mode, request_response),
            "application/proto",
        ),
        _ => http::Response::builder()
            .status(404)
            .body(full(format!("unknown path {path}")))
            .unwrap(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let port: u16 = arg("--port").and_then(|p| p.parse().ok()).unwrap_or(0);
    let mode = parse_mode(&arg("--mode").unwrap_or_else(|| "ok".into()));
    let request_response = args.iter().any(|a| a == "--request-response");
    let tls = args.iter().position(|a| a == "--tls").map(|i| {
        let (cert, key) = (&args[i + 1], &args[i + 2]);
        tls_acceptor(cert, key)
    });
    let executor = glommio::LocalExecutorBuilder::default()
        .name("test-endpoint")
        .io_memory(1 << 20)
        .spawn(move || async move {
            let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
            println!("listening on {}", listener.local_addr().unwrap().port());
            if mode == Mode::Close {
                // Accept and hang up at once: no HTTP at all.
                loop {
                    if let Ok(stream) = listener.accept().await {
                        drop(stream);
                    }
                }
            }
            let handler: server::Handler = Rc::new(move |request| {
                let path = request.uri().path().to_owned();
                async move { respond(mode, request_response, &path) }.boxed_local()
            });
            if let Some(tls) = tls {
                serve_tls(listener, tls, handler).await;
                return;
            }
            let core = CoreServers::new(
                Limits {
                    max_connections: 10_000,
                    max_header_bytes: 64 * 1024,
                    idle_timeout: Duration::from_secs(600),
                },
                Arc::new(Counters::default()),
            );
            server::serve(
                "endpoint",
                listener,
                handler,
                core,
                Shutdown::new().signal(),
            )
            .await;
        })
        .expect("executor");
    executor.join().expect("endpoint");
}

/// A TLS acceptor offering only HTTP/2 (ALPN h2), from PEM files.
fn tls_acceptor(cert: &str, key: &str) -> futures_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(key).expect("key file");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("cert and key match");
    config.alpn_protocols = vec![b"h2".to_vec()];
    futures_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Serves HTTP/2 over TLS, one task per connection.
async fn serve_tls(
    listener: TcpListener,
    tls: futures_rustls::TlsAcceptor,
    handler: server::Handler,
) {
    loop {
        let Ok(stream) = listener.accept().await else {
            continue;
        };
        let (tls, handler) = (tls.clone(), handler.clone());
        glommio::spawn_local(async move {
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let io = restate::http::Io::new(stream, restate::http::Activity::new());
            let service = hyper::service::service_fn(move |request| {
                let response = handler(request);
                async move { Ok::<_, std::convert::Infallible>(response.await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(restate::http::LocalExec)
                .serve_connection(io, service)
                .await;
        })
        .detach();
    }
}

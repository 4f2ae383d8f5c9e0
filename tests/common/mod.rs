//! Test support: starts the real `restate` binary on reserved loopback ports ([`ports`]) in a temp
//! dir, talks real bytes to it, and kills it (SIGKILL) when dropped.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod ports;
pub use ports::free_port;

/// The server binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_restate")
}

/// A running server process.
pub struct Server {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub ingress: u16,
    pub meta: u16,
    pub storage: u16,
    env: Vec<(String, String)>,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server in a fresh temp dir with `env` on top of the test defaults, and waits for health.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_owned();
        let mut server = Server::spawn_in(&dir, env);
        server._temp = Some(temp);
        server.wait_healthy();
        server
    }

    /// Spawns a server in `dir` without waiting for it.
    pub fn spawn_in(dir: &Path, env: &[(&str, &str)]) -> Server {
        let (ingress, meta, storage) = (free_port(), free_port(), free_port());
        let mut all: Vec<(String, String)> = vec![
            (
                "RESTATE_WORKER__INGRESS_GRPC__BIND_ADDRESS".into(),
                format!("127.0.0.1:{ingress}"),
            ),
            (
                "RESTATE_META__REST_ADDRESS".into(),
                format!("127.0.0.1:{meta}"),
            ),
            (
                "RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS".into(),
                format!("127.0.0.1:{storage}"),
            ),
            ("RESTATE_RUNTIME__CORES".into(), "2".into()),
            (
                "RESTATE_WORKER__STORAGE_ROCKSDB__SYNC_WRITES".into(),
                "false".into(),
            ),
        ];
        for (k, v) in env {
            all.retain(|(key, _)| key != k);
            all.push((k.to_string(), v.to_string()));
        }
        let mut server = Server {
            child: None,
            dir: dir.to_owned(),
            ingress,
            meta,
            storage,
            env: all,
            _temp: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let child = Command::new(binary())
            .current_dir(&self.dir)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Restarts the stopped server on the same ports and data dir, and waits for health.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn();
        self.wait_healthy();
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Waits (bounded) until `GET /health` on meta answers 200.
    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("server exited early with {status}; log:\n{}", self.log());
            }
            if let Ok((200, _)) = http1_request(self.meta, "GET", "/health", &[], b"") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server not healthy within 30 s; log:\n{}", self.log());
    }

    /// CPU time (user + system) the server process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.child.as_ref().unwrap().id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command (which may hold spaces) start after its closing parenthesis.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Sends a signal to the server.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().unwrap().id() as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!("server did not exit within {limit:?}; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 client: one request on a fresh connection, `Connection: close`.
pub fn http1_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    // Generous: many processes share two CPUs while the suite runs.
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// An HTTP/2 connection with prior knowledge (h2c) to loopback `port`, driven by a task of the current
/// tokio runtime.
pub async fn h2_connect<B>(port: u16) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// One request over HTTP/2 with prior knowledge (h2c), through hyper's client on a throwaway tokio
/// runtime. Returns status, headers and body.
pub fn h2_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, http::HeaderMap, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use http_body_util::BodyExt;
        let mut sender = h2_connect(port).await;
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{port}{path}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                body,
            )))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
            .await
            .expect("h2 response within 30 s")
            .unwrap();
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.unwrap();
        let mut headers = parts.headers;
        if let Some(trailers) = collected.trailers() {
            headers.extend(trailers.clone());
        }
        (status, headers, collected.to_bytes().to_vec())
    })
}

/// Listening TCP sockets on `127.0.0.1:port`, from /proc/net/tcp.
pub fn listening_sockets(port: u16) -> usize {
    tcp_sockets(1, port, "0A")
}

/// Established TCP connections from loopback to loopback `port`, from /proc/net/tcp.
pub fn connections_to(port: u16) -> usize {
    tcp_sockets(2, port, "01")
}

/// Rows of /proc/net/tcp whose address in `column` (1: local, 2: remote) is loopback `port` and
/// whose state is `state` (hex, as the kernel prints it).
fn tcp_sockets(column: usize, port: u16, state: &str) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let address = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(column) == Some(&address.as_str()) && fields.get(3) == Some(&state)
        })
        .count()
}

/// Runs the binary with `args` and `env` in `dir`, returning (status, stdout, stderr).
pub fn run_binary(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let output = Command::new(binary())
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RESTATE_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A running `restate-test-endpoint` (killed on drop).
pub struct Endpoint {
    child: Child,
    pub port: u16,
}

impl Endpoint {
    /// Starts the in-repo endpoint in `mode` (see its docs) on a free port.
    pub fn start(mode: &str, extra: &[&str]) -> Endpoint {
        let mut child = Command::new(env!("CARGO_BIN_EXE_restate-test-endpoint"))
            .args(["--port", "0", "--mode", mode])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let port = read_listening_port(child.stdout.take().unwrap());
        Endpoint { child, port }
    }

    /// `http://127.0.0.1:{port}`.
    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends `signal` to the endpoint process (SIGSTOP: it stops answering, its connections stay open).
    pub fn signal(&self, signal: libc::c_int) {
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads lines until `listening on <port>` (bounded by the child's output), then keeps draining the
/// pipe in the background so the child never blocks on a full pipe.
pub fn read_listening_port(stdout: std::process::ChildStdout) -> u16 {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref().take(100) {
        let line = line.unwrap();
        if let Some(port) = line.trim().strip_prefix("listening on ") {
            let port = port.trim().parse().unwrap();
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return port;
        }
    }
    panic!("the process never printed `listening on <port>`");
}

/// POSTs JSON over HTTP/1.1 and parses the JSON answer (Null when the body is empty).
pub fn post_json(port: u16, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    request_json(port, "POST", path, Some(body))
}

/// Sends a request with an optional JSON body and parses the JSON answer (Null when empty).
pub fn request_json(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let bytes = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let (status, text) = http1_request(
        port,
        method,
        path,
        &[("content-type", "application/json")],
        &bytes,
    )
    .unwrap();
    let value = if text.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, value)
}

/// `node tests/sdk/services.js` (the real TypeScript SDK 0.4.1) on a free port, killed on drop.
pub struct SdkEndpoint {
    child: Child,
    pub port: u16,
}

impl SdkEndpoint {
    /// Starts the SDK services; fails loudly if `npm ci` has not been run in tests/sdk.
    pub fn start() -> SdkEndpoint {
        Self::start_on(free_port())
    }

    /// Starts the SDK services on `port` (a restart of an endpoint that died).
    pub fn start_on(port: u16) -> SdkEndpoint {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk");
        assert!(
            Path::new(dir)
                .join("node_modules/@restatedev/restate-sdk")
                .exists(),
            "the SDK is not installed: run `npm ci` in tests/sdk (.ci/run does)"
        );
        let mut child = Command::new("node")
            .arg("services.js")
            .current_dir(dir)
            .env("PORT", port.to_string())
            .env("RESTATE_DEBUG_LOGGING", "OFF")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node is installed");
        let announced = read_listening_port(child.stdout.take().unwrap());
        assert_eq!(announced, port);
        SdkEndpoint { child, port }
    }

    /// `http://127.0.0.1:{port}`.
    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for SdkEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Registers `uri` with the server and asserts success.
pub fn register(server: &Server, uri: &str) {
    let (status, body) = post_json(
        server.meta,
        "/endpoints",
        &serde_json::json!({ "uri": uri }),
    );
    assert_eq!(status, 201, "registration failed: {body}");
}

/// A Connect JSON call on the ingress: (HTTP status, JSON body).
pub fn connect_call(
    server: &Server,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    request_json(server.ingress, "POST", path, Some(body))
}

/// The in-repo endpoint's counters: (attempts started, side effects executed).
pub fn endpoint_stats(endpoint: &Endpoint) -> (u64, u64) {
    let (status, body) = http1_request(endpoint.port, "GET", "/stats", &[], b"").unwrap();
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        stats["attempts"].as_u64().unwrap(),
        stats["side_effects"].as_u64().unwrap(),
    )
}

/// A Connect JSON POST with extra headers: (HTTP status, JSON body).
pub fn request_json_with(
    port: u16,
    path: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> (u16, serde_json::Value) {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let (status, text) =
        http1_request(port, "POST", path, &all, body.to_string().as_bytes()).unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

/// Polls `check` every 50 ms until it returns Some, at most `limit`.
pub fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The RpcRequest key of a keyed router call with this key (string field 1, §2.4 encoding).
pub fn router_key(key: &str) -> Vec<u8> {
    let mut out = vec![key.len() as u8];
    out.extend_from_slice(key.as_bytes());
    out
}

/// The id an idempotent call to a keyed router gets (it derives from the idempotency key).
pub fn idempotent_id(
    service: &str,
    method: &str,
    key: &str,
    idempotency_key: &str,
) -> restate::partition::InvocationId {
    restate::partition::InvocationId::derived(
        restate::partition::partition_key(service, &router_key(key)),
        &[
            idempotency_key.as_bytes(),
            service.as_bytes(),
            method.as_bytes(),
        ],
    )
}

/// The SDK 0.4.1 awakeable id of entry `index` of invocation `id`.
pub fn awakeable_id(id: &restate::partition::InvocationId, index: u32) -> String {
    use base64::Engine;
    let mut raw = id.as_bytes().to_vec();
    raw.extend_from_slice(&index.to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// A counter or gauge without labels from `/metrics`; `None` when absent or unreadable.
pub fn metric(server: &Server, name: &str) -> Option<f64> {
    let (status, text) = http1_request(server.meta, "GET", "/metrics", &[], b"").ok()?;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

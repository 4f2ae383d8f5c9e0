//! Ingress → runtime → in-repo endpoint: requests per second, p50/p99 latency, runtime CPU and RocksDB
//! writes per invocation, with `sync_writes` off and on, for four cases (`--cases`, default all):
//! - `echo`: a trivial handler (`restate.test.Echo/Echo`);
//! - `counter`: a keyed counter (`restate.test.Counter/Add`: GetState + SetState + Output);
//! - `sleep`: a durable 1 ms sleep, then Output (`restate.test.Flow/Sleep`);
//! - `call`: a call to Echo/Echo, then Output of its result (`restate.test.Flow/Call`).
//!
//! The writes come from the runtime's `/metrics` (meta port), scraped before and after each case's
//! load window: WAL fsyncs (`sync_writes`; each makes every commit before it durable), group commits
//! (RocksDB writes), write requests the cores sent to the storage thread,
//! put/delete operations, write-batch bytes and the reads served (they wait in the same queue),
//! divided by the invocations of the case's service that completed in the window (for `call`, the
//! Echo invocation it calls is counted in its figures), and the operations per table and kind on a
//! second line.
//!
//! The baseline, run in the same command, calls the endpoint directly with the service protocol (no
//! runtime, nothing durable): every runtime figure is reported against it.
//!
//! `cargo bench --bench invocations [-- --seconds 5 --concurrency 64 --cores 2 --keys 1000
//! --sync both|off|on --cases echo,counter,sleep,call --endpoint-threads 1 --client-threads 1]`
//!
//! For scaling runs on a bigger machine the binaries and CPU sets can be set from the environment:
//! `RESTATE_BIN`, `RESTATE_ENDPOINT_BIN` (paths), `RUNTIME_CPUS`, `ENDPOINT_CPUS` (taskset lists; the
//! bench's own affinity is the client's).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;

#[path = "../tests/common/ports.rs"]
mod ports;
use ports::free_port;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn arg_str(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_owned())
}

/// `program args…`, under `taskset -c $cpus_var` when that variable is set.
fn command(program_var: &str, default: &str, cpus_var: &str) -> Command {
    let program = std::env::var(program_var).unwrap_or_else(|_| default.to_owned());
    match std::env::var(cpus_var) {
        Ok(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", &cpus, &program]);
            c
        }
        Err(_) => Command::new(program),
    }
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds (user + system) per thread name of the process (threads of one name summed: every
/// executor is `restate-core`, RocksDB's own background threads are `rocksdb:*`).
fn cpu_by_thread(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *by_name.entry(name).or_insert(0.0) += ticks / 100.0;
    }
    by_name
}

fn start_endpoint(threads: u64) -> (Process, u16) {
    let mut child = command(
        "RESTATE_ENDPOINT_BIN",
        env!("CARGO_BIN_EXE_restate-test-endpoint"),
        "ENDPOINT_CPUS",
    )
    .args(["--port", "0", "--threads", &threads.to_string()])
    .args(["--services", "Counter,Echo,Config,Flow"])
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("endpoint output").unwrap();
        if let Some(p) = line.strip_prefix("listening on ") {
            break p.trim().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Process(child), port)
}

struct Runtime {
    process: Process,
    ingress: u16,
    /// The meta port: `/metrics`.
    meta: u16,
    _dir: tempfile::TempDir,
}

fn start_runtime(cores: u64, sync: bool, endpoint: u16) -> Runtime {
    let dir = tempfile::tempdir().unwrap();
    let (ingress, meta, storage) = (free_port(), free_port(), free_port());
    let child = command("RESTATE_BIN", env!("CARGO_BIN_EXE_restate"), "RUNTIME_CPUS")
        .current_dir(dir.path())
        .env(
            "RESTATE_WORKER__INGRESS_GRPC__BIND_ADDRESS",
            format!("127.0.0.1:{ingress}"),
        )
        .env("RESTATE_META__REST_ADDRESS", format!("127.0.0.1:{meta}"))
        .env(
            "RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS",
            format!("127.0.0.1:{storage}"),
        )
        .env("RESTATE_RUNTIME__CORES", cores.to_string())
        .env(
            "RESTATE_WORKER__STORAGE_ROCKSDB__SYNC_WRITES",
            sync.to_string(),
        )
        .env("RESTATE_TRACING__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = format!("{{\"uri\":\"http://127.0.0.1:{endpoint}\"}}");
    loop {
        assert!(Instant::now() < deadline, "runtime did not come up");
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", meta)) {
            use std::io::{Read, Write};
            let request = format!(
                "POST /endpoints HTTP/1.1\r\nHost: x\r\nConnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(request.as_bytes());
            let mut response = String::new();
            let _ = s.read_to_string(&mut response);
            if response.starts_with("HTTP/1.1 201") {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Runtime {
        process,
        ingress,
        meta,
        _dir: dir,
    }
}

/// One scrape of `/metrics`: each sample's `name{labels}` (as written) and value.
type Metrics = BTreeMap<String, f64>;

fn scrape(meta: u16) -> Metrics {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", meta)).expect("meta port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "/metrics: {response}");
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
        .collect()
}

/// What one case's load window cost in RocksDB writes, per completed invocation of its service.
struct Writes {
    invocations: f64,
    /// WAL fsyncs.
    syncs: f64,
    batches: f64,
    requests: f64,
    /// Point reads and scans the storage thread served (they queue with the writes).
    reads: f64,
    ops: f64,
    bytes: f64,
    /// `table op` → operations per invocation, those above zero.
    by_table: Vec<(String, f64)>,
}

fn writes(before: &Metrics, after: &Metrics, service: &str) -> Writes {
    let delta = |name: &str| after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0);
    let invocations = delta(&format!(
        "restate_invocations_completed_total{{service=\"{service}\"}}"
    ))
    .max(1.0);
    let by_table = after
        .keys()
        .filter_map(|name| {
            let labels = name.strip_prefix("restate_storage_table_operations_total{")?;
            let (table, op) = labels.strip_prefix("table=\"")?.split_once("\",op=\"")?;
            let per = delta(name) / invocations;
            (per > 0.0).then(|| (format!("{table} {}", op.trim_end_matches("\"}")), per))
        })
        .collect();
    Writes {
        invocations,
        syncs: delta("restate_storage_wal_syncs_total") / invocations,
        batches: delta("restate_storage_write_batches_total") / invocations,
        requests: delta("restate_storage_write_requests_total") / invocations,
        reads: delta("restate_storage_reads_total") / invocations,
        ops: delta("restate_storage_write_ops_total") / invocations,
        bytes: delta("restate_storage_batch_bytes_sum") / invocations,
        by_table,
    }
}

/// One load case against the runtime: its ingress path, the service whose completed invocations
/// divide the writes, and the request body of call `n` (task * 1,000,000 + its call count) when the
/// counter spreads over `keys` keys.
struct Case {
    name: &'static str,
    path: &'static str,
    service: &'static str,
    body: fn(n: u64, keys: u64) -> Bytes,
}

// EchoMessage { text = "hi" }.
const ECHO: &[u8] = &[0x0a, 0x02, b'h', b'i'];

const CASES: [Case; 4] = [
    Case {
        name: "echo",
        path: "/restate.test.Echo/Echo",
        service: "restate.test.Echo",
        body: |_, _| grpc_frame(ECHO),
    },
    Case {
        name: "counter",
        path: "/restate.test.Counter/Add",
        service: "restate.test.Counter",
        body: |n, keys| {
            // AddRequest { key = "k<0..keys>", delta = 1 }: tasks at the same call count take keys
            // 37 apart (`n % keys` gave every task the same key at the same time); 1 is one hot key.
            let key = format!("k{}", (n / 1_000_000 * 37 + n % 1_000_000) % keys);
            let mut m = vec![0x0a, key.len() as u8];
            m.extend_from_slice(key.as_bytes());
            m.extend_from_slice(&[0x10, 0x01]);
            grpc_frame(&m)
        },
    },
    Case {
        name: "sleep",
        path: "/restate.test.Flow/Sleep",
        service: "restate.test.Flow",
        // EchoMessage { text = "hi", number = 1 }: sleep 1 ms.
        body: |_, _| grpc_frame(&[0x0a, 0x02, b'h', b'i', 0x10, 0x01]),
    },
    Case {
        name: "call",
        path: "/restate.test.Flow/Call",
        service: "restate.test.Flow",
        body: |_, _| grpc_frame(ECHO),
    },
];

fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out.into()
}

/// The service protocol's opening for a direct call: Start + the input entry, then end of request.
fn protocol_request(argument: &[u8]) -> Bytes {
    use prost::Message;
    use restate::protocol::messages::{PollInputStreamEntryMessage, StartMessage};
    use restate::protocol::{types, Frame, FLAG_COMPLETED};
    let start = StartMessage {
        id: vec![7; 24],
        debug_id: "bench".into(),
        known_entries: 1,
        state_map: vec![],
        partial_state: false,
    };
    let input = PollInputStreamEntryMessage {
        value: argument.to_vec(),
    };
    let mut out = Frame::message(types::START, 0, &start).encode().to_vec();
    out.extend_from_slice(
        &Frame::new(
            types::POLL_INPUT_STREAM,
            FLAG_COMPLETED,
            input.encode_to_vec(),
        )
        .encode(),
    );
    out.into()
}

struct Load {
    requests: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

/// Drives `concurrency` requests in flight for `seconds` over 4 HTTP/2 connections.
fn drive(
    port: u16,
    path: &'static str,
    content_type: &'static str,
    body: impl Fn(u64) -> Bytes + Send + Sync + 'static,
    concurrency: u64,
    seconds: u64,
) -> Load {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Arc::new(body);
    rt.block_on(async move {
        let mut senders = Vec::new();
        for _ in 0..(4 * arg("--client-threads", 1)) {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            stream.set_nodelay(true).unwrap();
            let (sender, conn) =
                hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .initial_stream_window_size(1 << 20)
                    .handshake::<_, http_body_util::Full<Bytes>>(hyper_util::rt::TokioIo::new(
                        stream,
                    ))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            senders.push(sender);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|i| {
                let mut sender = senders[i as usize % senders.len()].clone();
                let stop = stop.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let request = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
                            .header("content-type", content_type)
                            .header("te", "trailers")
                            .body(http_body_util::Full::new(body(i * 1_000_000 + n)))
                            .unwrap();
                        let t = Instant::now();
                        let response = sender.send_request(request).await.expect("response");
                        let ok = response.status().is_success();
                        let collected = response.into_body().collect().await.expect("body");
                        let grpc_ok = collected
                            .trailers()
                            .and_then(|t| t.get("grpc-status"))
                            .is_none_or(|s| s == "0");
                        assert!(ok && grpc_ok, "a call failed");
                        latencies.push(t.elapsed());
                        n += 1;
                    }
                    latencies
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed();
        latencies.sort();
        Load {
            requests: latencies.len() as u64,
            elapsed,
            latencies,
        }
    })
}

fn percentile(latencies: &[Duration], p: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies[((latencies.len() - 1) as f64 * p) as usize]
}

fn main() {
    let seconds = arg("--seconds", 5);
    let concurrency = arg("--concurrency", 64);
    let cores = arg("--cores", 2);
    // Keys the counter case spreads over; 1 is one hot key.
    let keys = arg("--keys", 1000).max(1);
    let wanted = arg_str("--cases", "echo,counter,sleep,call");
    let cases: Vec<&Case> = wanted
        .split(',')
        .map(|name| {
            CASES
                .iter()
                .find(|c| c.name == name.trim())
                .unwrap_or_else(|| panic!("--cases: no case {name:?} (echo, counter, sleep, call)"))
        })
        .collect();
    println!(
        "invocations: {concurrency} calls in flight for {seconds}s per case; runtime cores={cores}; \
         client, runtime and endpoint share this machine ({} CPUs); writes per completed invocation \
         of the case's service (call: with the Echo it calls)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "{:<34} {:>8} {:>7} {:>7} {:>15} {:>7} {:>7} {:>9} {:>9} {:>7} {:>9} {:>7}",
        "case",
        "req/s",
        "p50 ms",
        "p99 ms",
        "runtime CPU/inv",
        "vs base",
        "syncs",
        "commits",
        "requests",
        "ops",
        "bytes",
        "reads"
    );
    let report = |name: &str,
                  load: &Load,
                  cpu: Option<f64>,
                  base: Option<f64>,
                  w: Option<&Writes>| {
        let rate = load.requests as f64 / load.elapsed.as_secs_f64();
        let w = |f: fn(&Writes) -> f64, digits: usize| {
            w.map(|w| format!("{:.*}", digits, f(w)))
                .unwrap_or_else(|| "-".into())
        };
        println!(
                "{name:<34} {rate:>8.0} {:>7.2} {:>7.2} {:>15} {:>7} {:>7} {:>9} {:>9} {:>7} {:>9} {:>7}",
                percentile(&load.latencies, 0.5).as_secs_f64() * 1e3,
                percentile(&load.latencies, 0.99).as_secs_f64() * 1e3,
                cpu.map(|c| format!("{:.1} µs", c * 1e6 / load.requests.max(1) as f64))
                    .unwrap_or_else(|| "-".into()),
                base.map(|b| format!("{:.2}x", rate / b))
                    .unwrap_or_else(|| "1.00x".into()),
                w(|w| w.syncs, 3),
                w(|w| w.batches, 3),
                w(|w| w.requests, 2),
                w(|w| w.ops, 2),
                w(|w| w.bytes, 0),
                w(|w| w.reads, 2),
            );
        rate
    };
    let (endpoint, endpoint_port) = start_endpoint(arg("--endpoint-threads", 1));
    let baseline = drive(
        endpoint_port,
        "/invoke/restate.test.Echo/Echo",
        "application/restate",
        move |_| protocol_request(ECHO),
        concurrency,
        seconds,
    );
    let base = report(
        "baseline: endpoint direct (echo)",
        &baseline,
        None,
        None,
        None,
    );
    let syncs: &[bool] = match arg_str("--sync", "both").as_str() {
        "off" => &[false],
        "on" => &[true],
        _ => &[false, true],
    };
    for &sync in syncs {
        let runtime = start_runtime(cores, sync, endpoint_port);
        let pid = runtime.process.0.id();
        for case in &cases {
            let body = case.body;
            // Writes that trail the previous window (acks, deletes) land before this one starts.
            std::thread::sleep(Duration::from_millis(250));
            let metrics_before = scrape(runtime.meta);
            let before = cpu_seconds(pid);
            let threads_before = cpu_by_thread(pid);
            let load = drive(
                runtime.ingress,
                case.path,
                "application/grpc",
                move |n| body(n, keys),
                concurrency,
                seconds,
            );
            let cpu = cpu_seconds(pid) - before;
            let threads: Vec<String> = cpu_by_thread(pid)
                .into_iter()
                .filter_map(|(name, after)| {
                    let spent = after - threads_before.get(&name).copied().unwrap_or(0.0);
                    (spent > 0.0)
                        .then(|| format!("{name} {:.1}", spent * 1e6 / load.requests.max(1) as f64))
                })
                .collect();
            std::thread::sleep(Duration::from_millis(250));
            let w = writes(&metrics_before, &scrape(runtime.meta), case.service);
            report(
                &format!(
                    "runtime {}, sync {}",
                    case.name,
                    if sync { "on" } else { "off" }
                ),
                &load,
                Some(cpu),
                Some(base),
                Some(&w),
            );
            let tables: Vec<String> = w
                .by_table
                .iter()
                .map(|(what, per)| format!("{what} {per:.2}"))
                .collect();
            println!(
                "    ops/inv by table ({:.0} invocations): {}",
                w.invocations,
                tables.join(", ")
            );
            println!("    CPU µs/inv by thread: {}", threads.join(", "));
        }
        drop(runtime);
    }
    drop(endpoint);
}

//! A small gRPC unary load generator that reads ghz's config files (`benches/ghz/*.json`), for machines
//! where ghz cannot be installed. Like ghz it asks the server for the method's schema through gRPC
//! server reflection (`grpc.reflection.v1alpha`, no proto files), turns the config's JSON `data` into
//! the request message with those descriptors (prost-reflect, proto3 JSON mapping), and calls
//! `call` on `host` over `connections` HTTP/2 connections with `concurrency` requests in flight
//! (spread evenly over the connections) for `total` requests or for `duration`.
//!
//! `cargo bench --bench grpc_load -- --config benches/ghz/trivial.json [--host 127.0.0.1:9090]
//! [--total N | --duration 10s] [--concurrency C] [--connections K] [--skip-first N] [--timeout 2s]
//! [--threads T] [--json]`; the flags override the file.
//!
//! Read from the config (ghz's names): `call` (`package.Service/Method` or `package.Service.Method`),
//! `host`, `insecure` (must be true: no TLS here), `total` (default 200), `duration` (Go syntax, `10s`;
//! wins over `total`), `concurrency` (50), `connections` (1), `timeout` (20s, sent as `grpc-timeout`; 0:
//! none), `data` (one message, or an array used round-robin by request number), `metadata` (headers),
//! `skipFirst` (warm-up: the first N responses are not tallied). In `data` and `metadata` the call
//! template variables `{{.RequestNumber}}` (0, 1, ...), `{{.WorkerID}}`, `{{.UUID}}`, `{{.Timestamp}}`,
//! `{{.TimestampUnix}}`, `{{.TimestampUnixMilli}}` and `{{.TimestampUnixNano}}` are expanded; any other
//! template action is refused at start, not sent as is. Other ghz options are refused too, so a config
//! never silently means something else here.
//!
//! A response counts as OK only with HTTP 200 and `grpc-status: 0`; anything else is an error, by gRPC
//! code (a transport failure is UNAVAILABLE, the client's own timeout DEADLINE_EXCEEDED). Prints the
//! count per code, requests per second over the tallied part, and p50/p90/p99/max latency (send to
//! response trailers); `--json` prints one JSON document instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use restate::reflection::{Answer, Query, Request as ReflectionRequest, Response};

/// What can stop a run before it starts (failed requests are counted, not errors).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a ghz config: {message}")]
    Config { path: String, message: String },
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("cannot connect to {host}: {message}")]
    Connect { host: String, message: String },
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("data: {0}")]
    Data(String),
}

/// The config file, with ghz's key names.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `package.Service/Method` or `package.Service.Method`.
    pub call: String,
    /// `host:port` of the server.
    #[serde(default)]
    pub host: String,
    /// Plaintext (h2c); the only mode supported.
    #[serde(default)]
    pub insecure: bool,
    /// Requests to send (ignored when `duration` is set).
    pub total: Option<u64>,
    /// How long to send requests (Go duration syntax).
    pub duration: Option<String>,
    /// Requests in flight.
    pub concurrency: Option<u64>,
    /// HTTP/2 connections; the concurrency is spread evenly over them.
    pub connections: Option<u64>,
    /// Per-request timeout, also sent as `grpc-timeout` (Go syntax; "0" = none).
    pub timeout: Option<String>,
    /// One request message as JSON, or an array of them used round-robin.
    pub data: Option<serde_json::Value>,
    /// Request headers.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Responses not tallied at the start (warm-up).
    #[serde(rename = "skipFirst")]
    pub skip_first: Option<u64>,
    /// ghz: a proto file; not needed here (reflection), and refused when given.
    pub proto: Option<String>,
    /// ghz: a protoset file; refused when given (reflection only).
    pub protoset: Option<String>,
    /// ghz: a report name; ignored.
    pub name: Option<String>,
}

/// Command-line settings; every `Some` overrides the config file.
#[derive(Debug, Default, clap::Parser)]
#[command(about = "gRPC unary load generator reading ghz config files")]
pub struct Options {
    /// The ghz config file (JSON).
    #[arg(long)]
    pub config: PathBuf,
    /// `host:port`, instead of the config's.
    #[arg(long)]
    pub host: Option<String>,
    /// Requests to send (clears the config's duration).
    #[arg(long)]
    pub total: Option<u64>,
    /// How long to send (humantime syntax, `10s`).
    #[arg(long)]
    pub duration: Option<String>,
    /// Requests in flight.
    #[arg(long)]
    pub concurrency: Option<u64>,
    /// HTTP/2 connections.
    #[arg(long)]
    pub connections: Option<u64>,
    /// Responses not tallied at the start.
    #[arg(long)]
    pub skip_first: Option<u64>,
    /// Per-request timeout (humantime syntax; `0`: none).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Client threads (tokio workers); 1: one thread.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// One JSON document on stdout instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub call: String,
    pub host: String,
    pub connections: u64,
    pub concurrency: u64,
    /// Responses tallied (after the warm-up).
    pub requests: u64,
    /// Of those, OK.
    pub ok: u64,
    /// Of those, not OK, by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    /// Responses of the warm-up, not tallied (OK or not).
    pub skipped: u64,
    /// OK responses of the warm-up.
    pub skipped_ok: u64,
    /// Seconds from the end of the warm-up to the last response.
    pub seconds: f64,
    pub requests_per_second: f64,
    pub latency_ms: Latency,
}

/// Latency percentiles of the tallied responses, in milliseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// gRPC status names by code number.
const CODES: [&str; 17] = restate::grpc::Code::NAMES;

/// The run's settings after merging the file and the flags.
struct Plan {
    service: String,
    method: String,
    host: String,
    stop: Stop,
    concurrency: u64,
    connections: u64,
    timeout: Option<Duration>,
    skip_first: u64,
    data: Vec<Template>,
    metadata: Vec<(String, Template)>,
}

#[derive(Clone, Copy)]
enum Stop {
    Total(u64),
    After(Duration),
}

/// A JSON text with ghz call template variables, or a fixed encoded message.
enum Template {
    Fixed(Bytes),
    Text(String),
}

fn go_duration(text: &str) -> Result<Option<Duration>, String> {
    if text.trim() == "0" {
        return Ok(None);
    }
    humantime::parse_duration(text)
        .map(Some)
        .map_err(|e| format!("duration {text:?}: {e}"))
}

fn plan(options: &Options) -> Result<Plan, Error> {
    let path = options.config.display().to_string();
    let text = std::fs::read_to_string(&options.config).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let config: Config = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let invalid = |message: String| Error::Config {
        path: path.clone(),
        message,
    };
    if config.proto.is_some() || config.protoset.is_some() {
        return Err(Error::Unsupported(
            "proto/protoset: this tool reads the schema through server reflection only".into(),
        ));
    }
    if !config.insecure {
        return Err(Error::Unsupported(
            "TLS: set \"insecure\": true (plaintext HTTP/2)".into(),
        ));
    }
    let (service, method) = split_call(&config.call).ok_or_else(|| {
        invalid(format!(
            "call {:?} is not package.Service/Method",
            config.call
        ))
    })?;
    let host = options.host.clone().unwrap_or(config.host);
    if host.is_empty() {
        return Err(invalid("no host".into()));
    }
    let duration = match (&options.duration, options.total) {
        (Some(d), _) => go_duration(d).map_err(invalid)?,
        (None, Some(_)) => None,
        (None, None) => match &config.duration {
            Some(d) => go_duration(d).map_err(invalid)?,
            None => None,
        },
    };
    let stop = match duration {
        Some(d) => Stop::After(d),
        None => Stop::Total(options.total.or(config.total).unwrap_or(200)),
    };
    let concurrency = options.concurrency.or(config.concurrency).unwrap_or(50);
    let connections = options.connections.or(config.connections).unwrap_or(1);
    if concurrency == 0 || connections == 0 || connections > concurrency {
        return Err(invalid(format!(
            "concurrency {concurrency} and connections {connections}: both at least 1, connections at most concurrency"
        )));
    }
    let timeout = options.timeout.as_deref().or(config.timeout.as_deref());
    let timeout = go_duration(timeout.unwrap_or("20s")).map_err(invalid)?;
    let messages = match config.data {
        None => vec![serde_json::json!({})],
        Some(serde_json::Value::Array(items)) if !items.is_empty() => items,
        Some(serde_json::Value::Array(_)) => return Err(invalid("data is an empty array".into())),
        Some(one) => vec![one],
    };
    let data = messages
        .iter()
        .map(|m| Template::Text(m.to_string()))
        .collect();
    let metadata = config
        .metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), Template::Text(v)))
        .collect();
    Ok(Plan {
        service,
        method,
        host,
        stop,
        concurrency,
        connections,
        timeout,
        skip_first: options.skip_first.or(config.skip_first).unwrap_or(0),
        data,
        metadata,
    })
}

/// `package.Service/Method` or `package.Service.Method` → (service, method).
fn split_call(call: &str) -> Option<(String, String)> {
    let (service, method) = call.rsplit_once('/').or_else(|| call.rsplit_once('.'))?;
    (!service.is_empty() && !method.is_empty() && !method.contains('.'))
        .then(|| (service.to_owned(), method.to_owned()))
}

/// The values of the call template variables for one request.
struct CallData {
    request_number: u64,
    worker: u64,
}

/// Expands ghz's call template variables in `text`; another action is an error.
fn expand(text: &str, call: &CallData) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("unclosed template action in {text:?}"))?;
        let action = after[..close].trim();
        let now = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
        };
        let value = match action {
            ".RequestNumber" => call.request_number.to_string(),
            ".WorkerID" => call.worker.to_string(),
            // ghz writes a v4; any unique id serves (the crate builds v7 only).
            ".UUID" => uuid::Uuid::now_v7().to_string(),
            ".TimestampUnix" => now().as_secs().to_string(),
            ".TimestampUnixMilli" => now().as_millis().to_string(),
            ".TimestampUnixNano" => now().as_nanos().to_string(),
            ".Timestamp" => humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            other => {
                return Err(format!(
                "template action {{{{{other}}}}} is not supported (call template variables only)"
            ))
            }
        };
        out.push_str(&value);
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The JSON message as its protobuf encoding, in a gRPC frame.
fn encode(input: &MessageDescriptor, json: &str) -> Result<Bytes, String> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let message = DynamicMessage::deserialize(input.clone(), &mut deserializer)
        .map_err(|e| format!("{json} is not a {}: {e}", input.full_name()))?;
    let bytes = message.encode_to_vec();
    let mut framed = BytesMut::with_capacity(5 + bytes.len());
    framed.put_u8(0);
    framed.put_u32(bytes.len() as u32);
    framed.put_slice(&bytes);
    Ok(framed.freeze())
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect(host: &str) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(1 << 20)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(sender)
}

/// The input message of `service/method`, from the server's reflection (v1alpha, as ghz asks).
async fn input_of(sender: &mut Sender, plan: &Plan) -> Result<MessageDescriptor, Error> {
    let request = ReflectionRequest {
        host: String::new(),
        query: Some(Query::FileContainingSymbol(plan.service.clone())),
    };
    let body = request.encode_to_vec();
    let mut framed = BytesMut::new();
    framed.put_u8(0);
    framed.put_u32(body.len() as u32);
    framed.put_slice(&body);
    let call = http::Request::post(format!(
        "http://{}{}",
        plan.host,
        restate::reflection::V1ALPHA_PATH
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(Full::new(framed.freeze()))
    .expect("valid request");
    let failed = |e: String| Error::Reflection(e);
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(call))
        .await
        .map_err(|_| failed("no answer in 20 s".into()))?
        .map_err(|e| failed(e.to_string()))?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(e.to_string()))?
        .to_bytes();
    if body.len() < 5 {
        return Err(failed("the server answered no reflection message".into()));
    }
    let answer = Response::decode(&body[5..]).map_err(|e| failed(e.to_string()))?;
    let files = match answer.answer {
        Some(Answer::FileDescriptorResponse(files)) => files.file_descriptor_proto,
        Some(Answer::ErrorResponse(e)) => {
            return Err(failed(format!(
                "{}: {} (code {})",
                plan.service, e.error_message, e.error_code
            )))
        }
        _ => return Err(failed("unexpected answer".into())),
    };
    let mut seen = std::collections::HashSet::new();
    let mut protos = Vec::new();
    for file in files {
        let proto = prost_types::FileDescriptorProto::decode(file.as_slice())
            .map_err(|e| failed(e.to_string()))?;
        if seen.insert(proto.name().to_owned()) {
            protos.push(proto);
        }
    }
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(protos)
        .map_err(|e| failed(e.to_string()))?;
    let service = pool
        .get_service_by_name(&plan.service)
        .ok_or_else(|| failed(format!("no service {}", plan.service)))?;
    let method = service
        .methods()
        .find(|m| m.name() == plan.method)
        .ok_or_else(|| failed(format!("no method {}/{}", plan.service, plan.method)))?;
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(Error::Unsupported(format!(
            "{}/{} streams; this tool calls unary methods",
            plan.service, plan.method
        )));
    }
    Ok(method.input())
}

/// One request's result: its gRPC code (0 = OK) and latency.
async fn call_once(
    sender: &mut Sender,
    path: &str,
    body: Bytes,
    headers: &[(String, String)],
    timeout: Option<Duration>,
) -> usize {
    let mut request = http::Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = timeout {
        request = request.header("grpc-timeout", format!("{}m", t.as_millis().max(1)));
    }
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let Ok(request) = request.body(Full::new(body)) else {
        return 3; // a header the config made invalid
    };
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|_| 14usize)?;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.map_err(|_| 14usize)?;
        let code = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .filter(|c| *c < CODES.len())
            .unwrap_or(2); // no (or an unreadable) grpc-status: UNKNOWN
        Ok::<usize, usize>(if status == http::StatusCode::OK {
            code
        } else {
            code.max(2)
        })
    };
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, exchange).await.unwrap_or(Err(4)),
        None => exchange.await,
    };
    result.unwrap_or_else(|code| code)
}

/// What one worker saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    codes: [u64; 17],
    skipped: u64,
    skipped_ok: u64,
}

/// Runs the load described by `options` and its config file.
pub fn run(options: &Options) -> Result<Report, Error> {
    let plan = Arc::new(plan(options)?);
    let runtime = if options.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.threads)
            .enable_all()
            .build()
    }
    .expect("a tokio runtime");
    runtime.block_on(drive(plan))
}

async fn drive(plan: Arc<Plan>) -> Result<Report, Error> {
    let connect_error = |message: String| Error::Connect {
        host: plan.host.clone(),
        message,
    };
    let mut senders = Vec::new();
    for _ in 0..plan.connections {
        senders.push(connect(&plan.host).await.map_err(connect_error)?);
    }
    let input = input_of(&mut senders[0], &plan).await?;
    // Messages without template actions are encoded once; the others per request. Every message is
    // tried once now so a bad config fails before the load starts.
    let probe = CallData {
        request_number: 0,
        worker: 0,
    };
    let mut data = Vec::new();
    for template in &plan.data {
        let Template::Text(text) = template else {
            unreachable!("plan() yields text")
        };
        let expanded = expand(text, &probe).map_err(Error::Data)?;
        let encoded = encode(&input, &expanded).map_err(Error::Data)?;
        data.push(if text.contains("{{") {
            Template::Text(text.clone())
        } else {
            Template::Fixed(encoded)
        });
    }
    for (_, value) in &plan.metadata {
        if let Template::Text(text) = value {
            expand(text, &probe).map_err(Error::Data)?;
        }
    }
    let data = Arc::new(data);
    let path: Arc<str> = format!("http://{}/{}/{}", plan.host, plan.service, plan.method).into();
    let next = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let tally_start: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let started = Instant::now();
    if plan.skip_first == 0 {
        let _ = tally_start.set(started);
    }
    let mut workers = Vec::new();
    for worker in 0..plan.concurrency {
        let mut sender = senders[(worker % plan.connections) as usize].clone();
        let (plan, data, path, input) = (plan.clone(), data.clone(), path.clone(), input.clone());
        let (next, answered, tally_start) = (next.clone(), answered.clone(), tally_start.clone());
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let number = next.fetch_add(1, Ordering::Relaxed);
                let more = match plan.stop {
                    Stop::Total(total) => number < total,
                    Stop::After(limit) => started.elapsed() < limit,
                };
                if !more {
                    break;
                }
                let call = CallData {
                    request_number: number,
                    worker,
                };
                let body = match &data[(number % data.len() as u64) as usize] {
                    Template::Fixed(bytes) => bytes.clone(),
                    Template::Text(text) => {
                        // Checked at start; a template cannot fail later.
                        let json = expand(text, &call).expect("checked template");
                        encode(&input, &json).expect("checked message")
                    }
                };
                let headers: Vec<(String, String)> = plan
                    .metadata
                    .iter()
                    .map(|(k, v)| match v {
                        Template::Text(t) => (k.clone(), expand(t, &call).unwrap_or_default()),
                        Template::Fixed(_) => unreachable!("metadata is text"),
                    })
                    .collect();
                let sent = Instant::now();
                let code = call_once(&mut sender, &path, body, &headers, plan.timeout).await;
                let latency = sent.elapsed();
                let position = answered.fetch_add(1, Ordering::Relaxed);
                if position < plan.skip_first {
                    tally.skipped += 1;
                    tally.skipped_ok += u64::from(code == 0);
                    if position + 1 == plan.skip_first {
                        let _ = tally_start.set(Instant::now());
                    }
                    continue;
                }
                tally.codes[code] += 1;
                tally.latencies.push(latency);
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for worker in workers {
        let tally = worker.await.expect("a worker panicked");
        all.latencies.extend(tally.latencies);
        for (a, b) in all.codes.iter_mut().zip(tally.codes) {
            *a += b;
        }
        all.skipped += tally.skipped;
        all.skipped_ok += tally.skipped_ok;
    }
    let ended = Instant::now();
    let seconds = tally_start
        .get()
        .map_or(0.0, |t| ended.duration_since(*t).as_secs_f64());
    all.latencies.sort();
    let requests = all.latencies.len() as u64;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |p: f64| {
        all.latencies
            .get(((all.latencies.len().saturating_sub(1)) as f64 * p).round() as usize)
            .map_or(0.0, |d| ms(*d))
    };
    let latency = Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: all.latencies.last().map_or(0.0, |d| ms(*d)),
        mean: if requests == 0 {
            0.0
        } else {
            all.latencies.iter().map(|d| ms(*d)).sum::<f64>() / requests as f64
        },
    };
    let errors = CODES
        .iter()
        .zip(all.codes)
        .skip(1)
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| (name.to_string(), n))
        .collect();
    Ok(Report {
        call: format!("{}/{}", plan.service, plan.method),
        host: plan.host.clone(),
        connections: plan.connections,
        concurrency: plan.concurrency,
        requests,
        ok: all.codes[0],
        errors,
        skipped: all.skipped,
        skipped_ok: all.skipped_ok,
        seconds,
        requests_per_second: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
        latency_ms: latency,
    })
}

/// The human-readable summary.
pub fn summary(report: &Report) -> String {
    let errors: Vec<String> = report
        .errors
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect();
    let l = &report.latency_ms;
    format!(
        "{} on {}: {} connections × {} streams\n\
         requests {} (after {} warm-up)  ok {}  errors {}{}\n\
         rate     {:.0} req/s over {:.2} s\n\
         latency  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  mean {:.2} ms",
        report.call,
        report.host,
        report.connections,
        report.concurrency,
        report.requests,
        report.skipped,
        report.ok,
        report.requests - report.ok,
        if errors.is_empty() {
            String::new()
        } else {
            format!(" ({})", errors.join(", "))
        },
        report.requests_per_second,
        report.seconds,
        l.p50,
        l.p90,
        l.p99,
        l.max,
        l.mean,
    )
}

#[allow(dead_code)] // the tests include this file for `run` and `summary`
fn main() {
    let options = <Options as clap::Parser>::parse();
    match run(&options) {
        Ok(report) if options.json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("a report serializes")
        ),
        Ok(report) => println!("{}", summary(&report)),
        Err(e) => {
            eprintln!("grpc_load: {e}");
            std::process::exit(2);
        }
    }
}

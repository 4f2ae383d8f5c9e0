//! The in-repo service endpoint for tests and benchmarks. It answers discovery for the services of
//! `proto/restate/test/endpoint.proto`, runs them over the service invocation protocol (the generation
//! `@restatedev/restate-sdk@0.4.1` speaks, shared/docs/protocol.md §0.1 and §1), or misbehaves on purpose
//! (`--mode`, `--fail-attempts`), so tests can reach every error path that the real SDK cannot be made to
//! take on demand.
//!
//! Usage: `restate-test-endpoint [--port N] [--mode MODE] [--request-response] [--fail-attempts K]
//! [--tls CERT KEY] [--threads N] [--services LIST] [--discovery-status CODE] [--discovery-delay MS]`
//! (`--help` lists them); prints `listening on <port>` once it accepts connections. Any path prefix is
//! accepted before `/discover` and `/invoke/...`, so one process can stand for many endpoint URIs.
//!
//! Discovery modes (`POST /discover`): ok (default), not-found, garbage, wrong-content-type,
//! missing-dependency, bad-key, untyped, reserved, close, huge (an endless `application/proto` body
//! without content-length). `--discovery-status CODE` answers discovery with that status (and a body
//! that must never be echoed), `--discovery-delay MS` waits before answering it, `--services` announces
//! only the listed test services (`Counter,Echo`). Invocation modes (discovery answers as `ok`):
//! violate (every attempt sends a frame of the unknown type 0x0123 after the Start message), hang (every
//! attempt reads the Start message, then never writes and never ends), no-headers (`/invoke` requests
//! never get response headers), error-terminal (`Counter/Add` answers a terminal failure, code 9, after
//! its SetState). `--threads N` serves the port from N executors (benchmarks).
//!
//! Invocations (`POST /invoke/{service}/{method}`, `application/restate`, any protocol mode: the endpoint
//! suspends whenever it needs a completion after the runtime closed its side):
//! - `restate.test.Counter/Add(AddRequest)`: GetState("total") (decimal i64, absent = 0), SetState("total",
//!   old + delta), Output(CounterValue{old + delta}). `--fail-attempts K`: the first K attempts of each
//!   invocation id send `ErrorMessage{13, "injected failure on attempt N"}` right after the SetState.
//! - `restate.test.Counter/Get(KeyRequest)`: GetState("total"), Output(CounterValue).
//! - `restate.test.Echo/Echo(EchoMessage)`: text `side-effect:<path>` first runs a side effect (entry
//!   0xFC01, REQUIRES_ACK) appending `"<invocation id hex>\n"` to `<path>`; then Output(the input unchanged).
//! - `restate.test.Config/Get(Empty)`: Output(EchoMessage{text: "config"}).
//! - `restate.test.Flow/Sleep(EchoMessage)`: Sleep(now + `number` ms), then Output(the input unchanged).
//! - `restate.test.Flow/Call(EchoMessage)`: Invoke(`restate.test.Echo/Echo`, the input), then Output(its
//!   result). Flow is announced only when listed (`--services Counter,Echo,Config,Flow`).
//!
//! `GET /stats`: `{"attempts": <invocation attempts started>, "side_effects": <side effects executed>,
//! "last_token": <the x-test-token header of the last /invoke request, or null>}`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures::channel::mpsc;
use futures::{FutureExt, SinkExt};
use glommio::net::TcpListener;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Incoming;
use prost::Message;
use restate::http::server::{self, CoreServers, Counters, Limits};
use restate::http::{full, json_response, Body, BoxError};
use restate::proto::discovery::ServiceDiscoveryResponse;
use restate::proto::test::{AddRequest, CounterValue, EchoMessage, KeyRequest};
use restate::protocol::messages::{
    completion_message, get_state_entry_message, invoke_entry_message, output_stream_entry_message,
    sleep_entry_message, CompletionMessage, ErrorMessage, Failure, GetStateEntryMessage,
    InvokeEntryMessage, OutputStreamEntryMessage, PollInputStreamEntryMessage,
    SetStateEntryMessage, SleepEntryMessage, StartMessage, SuspensionMessage,
};
use restate::protocol::{
    types, Decoder, Frame, FLAG_COMPLETED, FLAG_PARTIAL_STATE, FLAG_REQUIRES_ACK,
};
use restate::shutdown::Shutdown;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
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
    Violate,
    Hang,
    /// `/invoke` requests never get response headers (the runtime must not wait forever).
    NoHeaders,
    ErrorTerminal,
    /// Discovery streams an endless body (response size limits).
    Huge,
}

/// The discovery response for `mode`; field 1 is written raw so extension options survive.
fn discovery_response(options: &Options) -> Vec<u8> {
    let (mode, request_response) = (options.mode, options.request_response);
    let services: Vec<String> = match mode {
        Mode::BadKey => vec!["restate.test.NoKey".into()],
        Mode::Untyped => vec!["restate.test.Untyped".into()],
        Mode::Reserved => vec!["dev.restate.Sneaky".into()],
        _ => options
            .services
            .split(',')
            .map(|s| format!("restate.test.{}", s.trim()))
            .collect(),
    };
    let mut out = ServiceDiscoveryResponse {
        files: None,
        services,
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

/// The body of `--discovery-status` answers: tests check that the runtime never echoes it.
const SECRET_BODY: &str = "endpoint-private-body: do not echo";

fn respond(options: &Options, path: &str) -> http::Response<Body> {
    let proto = |body: Vec<u8>, content_type: &str| {
        http::Response::builder()
            .header(http::header::CONTENT_TYPE, content_type)
            .body(full(body))
            .unwrap()
    };
    if let (Some(status), "/discover") = (options.discovery_status, path) {
        return http::Response::builder()
            .status(status)
            .header(http::header::LOCATION, "http://127.0.0.1:1/elsewhere")
            .body(full(SECRET_BODY))
            .unwrap();
    }
    match (options.mode, path) {
        (Mode::NotFound, _) => http::Response::builder()
            .status(404)
            .body(full("no such thing"))
            .unwrap(),
        (Mode::Huge, "/discover") => {
            let chunks = futures::stream::repeat_with(|| {
                Ok::<_, BoxError>(hyper::body::Frame::data(bytes::Bytes::from(vec![
                    0u8;
                    64 * 1024
                ])))
            });
            http::Response::builder()
                .header(http::header::CONTENT_TYPE, "application/proto")
                .body(Body::new(StreamBody::new(chunks)))
                .unwrap()
        }
        (Mode::Garbage, "/discover") => {
            proto(vec![0x0a, 0xff, 0xff, 0x03, 0x42], "application/proto")
        }
        (Mode::WrongContentType, "/discover") => proto(b"hello".to_vec(), "text/plain"),
        (_, "/discover") => proto(discovery_response(options), "application/proto"),
        _ => http::Response::builder()
            .status(404)
            .body(full(format!("unknown path {path}")))
            .unwrap(),
    }
}

/// The in-repo service endpoint for tests and benchmarks (see the module docs for the modes).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "restate-test-endpoint",
    about = "The in-repo service endpoint of the restate tests and benchmarks"
)]
struct Options {
    /// Port to listen on (127.0.0.1); 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// How discovery and invocations behave.
    #[arg(long, value_enum, default_value = "ok")]
    mode: Mode,
    /// Announce REQUEST_RESPONSE at discovery (invocations work the same either way).
    #[arg(long)]
    request_response: bool,
    /// `Counter/Add` attempts of one invocation id that fail before one succeeds.
    #[arg(long, default_value_t = 0)]
    fail_attempts: u32,
    /// Serve HTTP/2 over TLS with this certificate and key (PEM files).
    #[arg(long, num_args = 2, value_names = ["CERT", "KEY"])]
    tls: Option<Vec<String>>,
    /// Executors serving the port (benchmarks; /stats then counts per executor).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The test services announced at discovery, comma-separated.
    #[arg(long, default_value = "Counter,Echo,Config")]
    services: String,
    /// Answer discovery with this HTTP status (and a body that must never be echoed).
    #[arg(long)]
    discovery_status: Option<u16>,
    /// Wait this many milliseconds before answering discovery.
    #[arg(long, default_value_t = 0)]
    discovery_delay: u64,
}

/// State of the endpoint process (one executor: no locks).
struct Endpoint {
    options: Options,
    /// `/invoke` attempts started (`/stats`).
    attempts: Cell<u64>,
    /// Side effects actually executed, not replayed (`/stats`).
    side_effects: Cell<u64>,
    /// The `x-test-token` header of the last `/invoke` request (`/stats`): what an endpoint's
    /// additional headers delivered.
    last_token: RefCell<Option<String>>,
    /// `Counter/Add` attempts seen per invocation id, for `--fail-attempts`.
    add_attempts: RefCell<HashMap<Vec<u8>, u32>>,
}

impl Endpoint {
    /// Counts an attempt of `Counter/Add` for `id` and returns its number, from 1.
    fn count_add_attempt(&self, id: &[u8]) -> u32 {
        let mut attempts = self.add_attempts.borrow_mut();
        let n = attempts.entry(id.to_vec()).or_insert(0);
        *n += 1;
        *n
    }
}

/// The path with any prefix before `/invoke/` or a final `/discover` removed.
fn route_path(path: &str) -> &str {
    if let Some(at) = path.find("/invoke/") {
        return &path[at..];
    }
    if path.ends_with("/discover") {
        return "/discover";
    }
    path
}

fn handle(endpoint: &Rc<Endpoint>, request: http::Request<Incoming>) -> http::Response<Body> {
    let path = route_path(request.uri().path()).to_owned();
    let mode = endpoint.options.mode;
    if request.method() == http::Method::GET && path == "/stats" {
        return json_response(
            http::StatusCode::OK,
            &serde_json::json!({
                "attempts": endpoint.attempts.get(),
                "side_effects": endpoint.side_effects.get(),
                "last_token": endpoint.last_token.borrow().clone(),
            }),
        );
    }
    if mode != Mode::NotFound && request.method() == http::Method::POST {
        if let Some(target) = path.strip_prefix("/invoke/") {
            return invoke(endpoint, target, request);
        }
    }
    respond(&endpoint.options, &path)
}

fn main() {
    let options = <Options as clap::Parser>::parse();
    let tls = options
        .tls
        .as_ref()
        .map(|files| tls_acceptor(&files[0], &files[1]));
    // Benchmarks run several executors on one port (SO_REUSEPORT); /stats then counts per executor.
    // The first binds the requested port (0: any), the others join the port it got, and the port is
    // announced once all of them listen (no port is released and bound again in between).
    let threads = options.threads.max(1);
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let spawn = |port| spawn_executor(port, options.clone(), tls.clone(), bound_tx.clone());
    let mut executors = vec![spawn(options.port)];
    let port = bound.recv().expect("the first executor binds its port");
    executors.extend((1..threads).map(|_| spawn(port)));
    for _ in 1..threads {
        bound.recv().expect("every executor binds the port");
    }
    println!("listening on {port}");
    for executor in executors {
        executor.join().expect("endpoint");
    }
}

/// One executor serving the endpoint on `port`; it sends the port it bound on `bound`.
fn spawn_executor(
    port: u16,
    options: Options,
    tls: Option<futures_rustls::TlsAcceptor>,
    bound: std::sync::mpsc::Sender<u16>,
) -> glommio::ExecutorJoinHandle<()> {
    glommio::LocalExecutorBuilder::default()
        .name("test-endpoint")
        .io_memory(1 << 20)
        .spawn(move || async move {
            // Exits rather than panics: main waits on `bound` and would wait forever.
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| {
                eprintln!("binding 127.0.0.1:{port}: {e}");
                std::process::exit(1)
            });
            let _ = bound.send(listener.local_addr().unwrap().port());
            if options.mode == Mode::Close {
                // Accept and hang up at once: no HTTP at all.
                loop {
                    if let Ok(stream) = listener.accept().await {
                        drop(stream);
                    }
                }
            }
            let endpoint = Rc::new(Endpoint {
                options,
                attempts: Cell::new(0),
                side_effects: Cell::new(0),
                last_token: RefCell::new(None),
                add_attempts: RefCell::new(HashMap::new()),
            });
            let handler: server::Handler = Rc::new(move |request| {
                let path = route_path(request.uri().path());
                let silent =
                    endpoint.options.mode == Mode::NoHeaders && path.starts_with("/invoke/");
                if silent {
                    endpoint.attempts.set(endpoint.attempts.get() + 1);
                    return futures::future::pending().boxed_local();
                }
                let delay = match path {
                    "/discover" => Duration::from_millis(endpoint.options.discovery_delay),
                    _ => Duration::ZERO,
                };
                let response = handle(&endpoint, request);
                async move {
                    if !delay.is_zero() {
                        glommio::timer::sleep(delay).await;
                    }
                    response
                }
                .boxed_local()
            });
            if let Some(tls) = tls {
                serve_tls(listener, tls, handler).await;
                return;
            }
            let core = CoreServers::new(
                Limits {
                    max_connections: 0,
                    max_header_bytes: 64 * 1024,
                    idle_timeout: Duration::from_secs(600),
                    header_read_timeout: Duration::from_secs(60),
                    body_stall_timeout: Duration::from_secs(600),
                },
                Arc::new(Counters::default()),
            );
            server::serve(
                "endpoint",
                listener,
                handler,
                server::PortLimit::new(10_000),
                core,
                Shutdown::new().signal(),
            )
            .await;
        })
        .expect("executor")
}

// ---- Invocations: the service side of the invocation protocol. ----

/// `ErrorMessage` / `Failure` codes used here (gRPC codes, and the protocol's own from §1.7).
mod code {
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const INTERNAL: u32 = 13;
    pub const JOURNAL_MISMATCH: u32 = 32;
    pub const PROTOCOL_VIOLATION: u32 = 33;
}

/// The largest message accepted from the runtime; the test services never come near it.
const MESSAGE_LIMIT_BYTES: usize = 16 << 20;
/// Response frames buffered ahead of the runtime reading them (back pressure beyond that).
const RESPONSE_QUEUE_FRAMES: usize = 16;
/// The state key of the counters.
const TOTAL: &[u8] = b"total";

/// A method of the test services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    CounterAdd,
    CounterGet,
    Echo,
    ConfigGet,
    FlowSleep,
    FlowCall,
}

impl Method {
    /// The method at `target` (`{service}/{method}`, what follows `/invoke/`).
    fn parse(target: &str) -> Option<Method> {
        match target {
            "restate.test.Counter/Add" => Some(Method::CounterAdd),
            "restate.test.Counter/Get" => Some(Method::CounterGet),
            "restate.test.Echo/Echo" => Some(Method::Echo),
            "restate.test.Config/Get" => Some(Method::ConfigGet),
            "restate.test.Flow/Sleep" => Some(Method::FlowSleep),
            "restate.test.Flow/Call" => Some(Method::FlowCall),
            _ => None,
        }
    }
}

/// The response body's sending end: one HTTP data frame per protocol message.
type Sender = mpsc::Sender<Result<hyper::body::Frame<bytes::Bytes>, BoxError>>;

/// Starts one invocation attempt: answers 200 at once and streams the protocol messages from a task, so
/// the runtime can read entries while it still writes (BIDI_STREAM).
fn invoke(
    endpoint: &Rc<Endpoint>,
    target: &str,
    request: http::Request<Incoming>,
) -> http::Response<Body> {
    let Some(method) = Method::parse(target) else {
        return http::Response::builder()
            .status(404)
            .body(full(format!("unknown service method {target}")))
            .unwrap();
    };
    let content_type = request.headers().get(http::header::CONTENT_TYPE);
    if content_type.map(|v| v.as_bytes()) != Some(b"application/restate") {
        return http::Response::builder()
            .status(415)
            .body(full("expected content-type: application/restate"))
            .unwrap();
    }
    endpoint.attempts.set(endpoint.attempts.get() + 1);
    *endpoint.last_token.borrow_mut() = request
        .headers()
        .get("x-test-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (sender, receiver) = mpsc::channel(RESPONSE_QUEUE_FRAMES);
    let attempt = Attempt::new(endpoint.clone(), request.into_body(), sender);
    glommio::spawn_local(attempt.run(method)).detach();
    http::Response::builder()
        .header(http::header::CONTENT_TYPE, "application/restate")
        .body(StreamBody::new(receiver).boxed_unsync())
        .unwrap()
}

/// The attempt ended early: the terminal message (suspension or error) is sent, or the runtime is gone.
struct Stopped;

/// The JavaScript SDK's side effect entry (custom type 0xFC01): the side effect's result.
#[derive(Clone, PartialEq, prost::Message)]
struct SideEffectEntryMessage {
    #[prost(oneof = "SideEffectResult", tags = "14, 15")]
    result: Option<SideEffectResult>,
}

/// The result of a side effect.
#[derive(Clone, PartialEq, prost::Oneof)]
enum SideEffectResult {
    #[prost(bytes, tag = "14")]
    Value(Vec<u8>),
    #[prost(message, tag = "15")]
    Failure(Failure),
}

/// One invocation attempt: the runtime's request stream, our response stream, and the journal as far as
/// this attempt knows it.
struct Attempt {
    endpoint: Rc<Endpoint>,
    /// The runtime's side of the stream: Start, replayed entries, then completions (bidi only).
    body: Incoming,
    decoder: Decoder,
    /// The runtime closed its side: after replay in REQUEST_RESPONSE mode, or to make us suspend.
    body_ended: bool,
    /// Our side of the stream.
    out: Sender,
    /// `StartMessage.id`.
    id: Vec<u8>,
    /// Replayed entries by index; index 0 is the input.
    replayed: Vec<Frame>,
    /// The index the next journal action gets.
    next_index: u32,
    /// The state map is incomplete: keys it lacks must be asked from the runtime.
    partial_state: bool,
    /// State this attempt knows: a value, or `None` when known absent.
    state: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Completions that arrived before they were awaited, by entry index.
    completions: HashMap<u32, Option<completion_message::Result>>,
}

impl Attempt {
    fn new(endpoint: Rc<Endpoint>, body: Incoming, out: Sender) -> Attempt {
        Attempt {
            endpoint,
            body,
            decoder: Decoder::new(MESSAGE_LIMIT_BYTES),
            body_ended: false,
            out,
            id: Vec::new(),
            replayed: Vec::new(),
            next_index: 1,
            partial_state: false,
            state: HashMap::new(),
            completions: HashMap::new(),
        }
    }

    /// Runs the attempt to its end; ending the response body is what closes our side.
    async fn run(mut self, method: Method) {
        let Ok(input) = self.start().await else {
            return;
        };
        match self.endpoint.options.mode {
            Mode::Hang => {
                // Never write, never end: wait until the runtime gives up on the stream.
                while !self.out.is_closed() {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
                return;
            }
            Mode::Violate => {
                let _ = self.send(Frame::new(0x0123, 0, Vec::new())).await;
                return;
            }
            _ => {}
        }
        let _ = match method {
            Method::CounterAdd => self.counter_add(&input).await,
            Method::CounterGet => self.counter_get(&input).await,
            Method::Echo => self.echo(&input).await,
            Method::ConfigGet => {
                let config = EchoMessage {
                    text: "config".into(),
                    ..Default::default()
                };
                self.output(Ok(config.encode_to_vec())).await
            }
            Method::FlowSleep => self.flow_sleep(&input).await,
            Method::FlowCall => self.flow_call(&input).await,
        };
    }

    /// Reads the Start message and, outside the misbehaving modes, the replayed journal; returns the
    /// invocation's argument.
    async fn start(&mut self) -> Result<Vec<u8>, Stopped> {
        let frame = match self.read().await? {
            Some(frame) if frame.ty == types::START => frame,
            _ => return Err(self.violation("expected a StartMessage first").await),
        };
        let start: StartMessage = self.decode(&frame).await?;
        self.id = start.id;
        self.partial_state = start.partial_state || frame.flags & FLAG_PARTIAL_STATE != 0;
        self.state = start
            .state_map
            .into_iter()
            .map(|entry| (entry.key, Some(entry.value)))
            .collect();
        if matches!(self.endpoint.options.mode, Mode::Hang | Mode::Violate) {
            return Ok(Vec::new());
        }
        while self.replayed.len() < start.known_entries as usize {
            match self.read().await? {
                Some(frame) if frame.ty == types::COMPLETION => {
                    self.store_completion(&frame).await?
                }
                Some(frame) if frame.ty & 0xFC00 != 0 => self.replayed.push(frame),
                Some(frame) => {
                    let message = format!("unexpected message {:#06x} during replay", frame.ty);
                    return Err(self.violation(&message).await);
                }
                None => {
                    let message = format!(
                        "the stream ended after {} of {} replayed entries",
                        self.replayed.len(),
                        start.known_entries
                    );
                    return Err(self.violation(&message).await);
                }
            }
        }
        match self.replayed.first().cloned() {
            Some(frame) if frame.ty == types::POLL_INPUT_STREAM => {
                let input: PollInputStreamEntryMessage = self.decode(&frame).await?;
                Ok(input.value)
            }
            _ => Err(self
                .violation("entry 0 is not a PollInputStream entry")
                .await),
        }
    }

    async fn counter_add(&mut self, input: &[u8]) -> Result<(), Stopped> {
        let attempt = self.endpoint.count_add_attempt(&self.id);
        let Ok(request) = AddRequest::decode(input) else {
            return self.invalid_argument("AddRequest").await;
        };
        let total = self.counter().await?.wrapping_add(request.delta);
        self.set_state(TOTAL, total.to_string().into_bytes())
            .await?;
        if attempt <= self.endpoint.options.fail_attempts {
            let message = format!("injected failure on attempt {attempt}");
            return Err(self.fail(code::INTERNAL, &message, "").await);
        }
        if self.endpoint.options.mode == Mode::ErrorTerminal {
            return self
                .output(Err(Failure {
                    code: code::FAILED_PRECONDITION,
                    message: "terminal failure".into(),
                }))
                .await;
        }
        self.output(Ok(CounterValue { value: total }.encode_to_vec()))
            .await
    }

    async fn counter_get(&mut self, input: &[u8]) -> Result<(), Stopped> {
        if KeyRequest::decode(input).is_err() {
            return self.invalid_argument("KeyRequest").await;
        }
        let value = self.counter().await?;
        self.output(Ok(CounterValue { value }.encode_to_vec()))
            .await
    }

    async fn echo(&mut self, input: &[u8]) -> Result<(), Stopped> {
        let Ok(message) = EchoMessage::decode(input) else {
            return self.invalid_argument("EchoMessage").await;
        };
        if let Some(path) = message.text.strip_prefix("side-effect:") {
            let line = format!("{}\n", hex(&self.id));
            let result = self.side_effect(|| append_line(path, &line)).await?;
            if let Err(failure) = result {
                return self.output(Err(failure)).await;
            }
        }
        self.output(Ok(input.to_vec())).await
    }

    async fn flow_sleep(&mut self, input: &[u8]) -> Result<(), Stopped> {
        let Ok(message) = EchoMessage::decode(input) else {
            return self.invalid_argument("EchoMessage").await;
        };
        let millis = u64::try_from(message.number).unwrap_or(0);
        match self.sleep(Duration::from_millis(millis)).await? {
            Ok(()) => self.output(Ok(input.to_vec())).await,
            Err(failure) => self.output(Err(failure)).await,
        }
    }

    async fn flow_call(&mut self, input: &[u8]) -> Result<(), Stopped> {
        if EchoMessage::decode(input).is_err() {
            return self.invalid_argument("EchoMessage").await;
        }
        let result = self
            .invoke("restate.test.Echo", "Echo", input.to_vec())
            .await?;
        self.output(result).await
    }

    /// The counter: GetState("total") as a decimal i64, absent = 0.
    async fn counter(&mut self) -> Result<i64, Stopped> {
        let Some(raw) = self.get_state(TOTAL).await? else {
            return Ok(0);
        };
        match std::str::from_utf8(&raw).ok().and_then(|s| s.parse().ok()) {
            Some(value) => Ok(value),
            None => Err(self
                .fail(code::INTERNAL, "state \"total\" is not a decimal i64", "")
                .await),
        }
    }

    async fn invalid_argument(&mut self, what: &str) -> Result<(), Stopped> {
        self.output(Err(Failure {
            code: code::INVALID_ARGUMENT,
            message: format!("the argument is not a valid {what}"),
        }))
        .await
    }

    // ---- Journal actions. ----

    /// Takes the next journal index and, while replaying, its stored entry, which must be of type `ty`.
    async fn next_entry(&mut self, ty: u16) -> Result<(u32, Option<Frame>), Stopped> {
        let index = self.next_index;
        self.next_index += 1;
        let Some(stored) = self.replayed.get(index as usize).cloned() else {
            return Ok((index, None));
        };
        if stored.ty != ty {
            let description = format!(
                "entry {index}: the journal has type {:#06x}, the handler wants {ty:#06x}",
                stored.ty
            );
            return Err(self.mismatch(&description).await);
        }
        Ok((index, Some(stored)))
    }

    /// GetState: from the journal while replaying, else answered locally when the state is known
    /// (complete map, or a key this attempt saw), else asked from the runtime.
    async fn get_state(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Stopped> {
        use get_state_entry_message::Result as R;
        let (index, stored) = self.next_entry(types::GET_STATE).await?;
        let value = match stored {
            Some(frame) => {
                let entry: GetStateEntryMessage = self.decode(&frame).await?;
                if entry.key != key {
                    let description = format!("entry {index}: GetState of another key");
                    return Err(self.mismatch(&description).await);
                }
                match entry.result {
                    Some(R::Empty(())) => None,
                    Some(R::Value(value)) => Some(value),
                    None => self.state_completion(index).await?,
                }
            }
            None => match self.known_state(key) {
                Some(value) => {
                    let entry = GetStateEntryMessage {
                        key: key.to_vec(),
                        result: Some(match &value {
                            Some(value) => R::Value(value.clone()),
                            None => R::Empty(()),
                        }),
                    };
                    self.send(Frame::message(types::GET_STATE, FLAG_COMPLETED, &entry))
                        .await?;
                    value
                }
                None => {
                    let entry = GetStateEntryMessage {
                        key: key.to_vec(),
                        result: None,
                    };
                    self.send(Frame::message(types::GET_STATE, 0, &entry))
                        .await?;
                    self.state_completion(index).await?
                }
            },
        };
        self.state.insert(key.to_vec(), value.clone());
        Ok(value)
    }

    /// What this attempt knows of `key`: `Some(None)` is known absent, `None` unknown.
    fn known_state(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        match self.state.get(key) {
            Some(value) => Some(value.clone()),
            None if !self.partial_state => Some(None),
            None => None,
        }
    }

    /// Waits for the completion of the GetState at `index`.
    async fn state_completion(&mut self, index: u32) -> Result<Option<Vec<u8>>, Stopped> {
        use completion_message::Result as R;
        match self.completion(index).await? {
            Some(R::Empty(())) => Ok(None),
            Some(R::Value(value)) => Ok(Some(value)),
            Some(R::Failure(failure)) => {
                let message = format!("GetState failed: {}", failure.message);
                Err(self.fail(failure.code, &message, "").await)
            }
            None => Err(self
                .violation("a GetState completion without a result")
                .await),
        }
    }

    async fn set_state(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), Stopped> {
        let (index, stored) = self.next_entry(types::SET_STATE).await?;
        match stored {
            Some(frame) => {
                let entry: SetStateEntryMessage = self.decode(&frame).await?;
                if entry.key != key {
                    let description = format!("entry {index}: SetState of another key");
                    return Err(self.mismatch(&description).await);
                }
            }
            None => {
                let entry = SetStateEntryMessage {
                    key: key.to_vec(),
                    value: value.clone(),
                };
                self.send(Frame::message(types::SET_STATE, 0, &entry))
                    .await?;
            }
        }
        self.state.insert(key.to_vec(), Some(value));
        Ok(())
    }

    /// A side effect: while replaying, its stored result (the action does not run again); else runs
    /// `action`, journals the result with REQUIRES_ACK and waits for the runtime's ack (suspending on it
    /// when the runtime closed its side first).
    async fn side_effect(
        &mut self,
        action: impl FnOnce() -> Result<Vec<u8>, Failure>,
    ) -> Result<Result<Vec<u8>, Failure>, Stopped> {
        let (index, stored) = self.next_entry(types::SIDE_EFFECT).await?;
        if let Some(frame) = stored {
            let entry: SideEffectEntryMessage = self.decode(&frame).await?;
            return Ok(match entry.result {
                Some(SideEffectResult::Value(value)) => Ok(value),
                Some(SideEffectResult::Failure(failure)) => Err(failure),
                None => Ok(Vec::new()),
            });
        }
        let result = action();
        self.endpoint
            .side_effects
            .set(self.endpoint.side_effects.get() + 1);
        let entry = SideEffectEntryMessage {
            result: Some(match &result {
                Ok(value) => SideEffectResult::Value(value.clone()),
                Err(failure) => SideEffectResult::Failure(failure.clone()),
            }),
        };
        self.send(Frame::message(
            types::SIDE_EFFECT,
            FLAG_REQUIRES_ACK,
            &entry,
        ))
        .await?;
        match self.completion(index).await? {
            None | Some(completion_message::Result::Empty(())) => Ok(result),
            Some(_) => Err(self.violation("a side effect ack with a result").await),
        }
    }

    /// Sleep for `duration` from now (a durable timer): while replaying, the stored entry's result or
    /// its completion; else the entry is sent and its completion awaited (suspending on it when the
    /// runtime closed its side first).
    async fn sleep(&mut self, duration: Duration) -> Result<Result<(), Failure>, Stopped> {
        use completion_message::Result as C;
        use sleep_entry_message::Result as R;
        let (index, stored) = self.next_entry(types::SLEEP).await?;
        let stored_result = match stored {
            Some(frame) => {
                let entry: SleepEntryMessage = self.decode(&frame).await?;
                entry.result.map(|r| match r {
                    R::Empty(()) => C::Empty(()),
                    R::Failure(failure) => C::Failure(failure),
                })
            }
            None => {
                let wake_up = std::time::SystemTime::now() + duration;
                let wake_up_time = wake_up
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let entry = SleepEntryMessage {
                    wake_up_time,
                    result: None,
                };
                self.send(Frame::message(types::SLEEP, 0, &entry)).await?;
                None
            }
        };
        let result = self.stored_or_completion(index, stored_result).await?;
        match result {
            Some(C::Failure(failure)) => Ok(Err(failure)),
            Some(C::Empty(())) | None => Ok(Ok(())),
            Some(C::Value(_)) => Err(self.violation("a sleep completion with a value").await),
        }
    }

    /// Invoke `service/method` with `parameter` and wait for its result, like [`sleep`](Self::sleep)
    /// waits for its timer.
    async fn invoke(
        &mut self,
        service: &str,
        method: &str,
        parameter: Vec<u8>,
    ) -> Result<Result<Vec<u8>, Failure>, Stopped> {
        use completion_message::Result as C;
        use invoke_entry_message::Result as R;
        let (index, stored) = self.next_entry(types::INVOKE).await?;
        let stored_result = match stored {
            Some(frame) => {
                let entry: InvokeEntryMessage = self.decode(&frame).await?;
                if entry.service_name != service || entry.method_name != method {
                    let description = format!("entry {index}: Invoke of another method");
                    return Err(self.mismatch(&description).await);
                }
                entry.result.map(|r| match r {
                    R::Value(value) => C::Value(value),
                    R::Failure(failure) => C::Failure(failure),
                })
            }
            None => {
                let entry = InvokeEntryMessage {
                    service_name: service.into(),
                    method_name: method.into(),
                    parameter,
                    result: None,
                };
                self.send(Frame::message(types::INVOKE, 0, &entry)).await?;
                None
            }
        };
        let result = self.stored_or_completion(index, stored_result).await?;
        match result {
            Some(C::Value(value)) => Ok(Ok(value)),
            Some(C::Failure(failure)) => Ok(Err(failure)),
            Some(C::Empty(())) | None => Ok(Ok(Vec::new())),
        }
    }

    /// The output entry; after it the attempt ends (a replayed output is not sent again).
    async fn output(&mut self, result: Result<Vec<u8>, Failure>) -> Result<(), Stopped> {
        let (_, stored) = self.next_entry(types::OUTPUT_STREAM).await?;
        if stored.is_none() {
            let entry = OutputStreamEntryMessage {
                result: Some(match result {
                    Ok(value) => output_stream_entry_message::Result::Value(value),
                    Err(failure) => output_stream_entry_message::Result::Failure(failure),
                }),
            };
            self.send(Frame::message(types::OUTPUT_STREAM, 0, &entry))
                .await?;
        }
        Ok(())
    }

    // ---- The stream. ----

    /// The result a replayed entry was stored with, or else its completion (see
    /// [`completion`](Self::completion)).
    async fn stored_or_completion(
        &mut self,
        index: u32,
        stored: Option<completion_message::Result>,
    ) -> Result<Option<completion_message::Result>, Stopped> {
        match stored {
            Some(result) => Ok(Some(result)),
            None => self.completion(index).await,
        }
    }

    /// The completion of entry `index`: waits for it on the request stream; when the runtime closed its
    /// side first, suspends on `index`.
    async fn completion(
        &mut self,
        index: u32,
    ) -> Result<Option<completion_message::Result>, Stopped> {
        loop {
            if let Some(result) = self.completions.remove(&index) {
                return Ok(result);
            }
            match self.read().await? {
                Some(frame) if frame.ty == types::COMPLETION => {
                    self.store_completion(&frame).await?
                }
                Some(frame) => {
                    let message = format!("unexpected message {:#06x} after replay", frame.ty);
                    return Err(self.violation(&message).await);
                }
                None => {
                    let suspension = SuspensionMessage {
                        entry_indexes: vec![index],
                    };
                    self.send(Frame::message(types::SUSPENSION, 0, &suspension))
                        .await?;
                    return Err(Stopped);
                }
            }
        }
    }

    async fn store_completion(&mut self, frame: &Frame) -> Result<(), Stopped> {
        let completion: CompletionMessage = self.decode(frame).await?;
        self.completions
            .insert(completion.entry_index, completion.result);
        Ok(())
    }

    /// The next message from the runtime; `None` once its side has ended (a reset counts as an end).
    async fn read(&mut self) -> Result<Option<Frame>, Stopped> {
        loop {
            match self.decoder.next() {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) if self.body_ended => return Ok(None),
                Ok(None) => {}
                Err(e) => return Err(self.violation(&e.to_string()).await),
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(_)) | None => self.body_ended = true,
            }
        }
    }

    /// Decodes a message's payload; a payload that does not decode is a protocol violation.
    async fn decode<M: Message + Default>(&mut self, frame: &Frame) -> Result<M, Stopped> {
        match M::decode(frame.payload.clone()) {
            Ok(message) => Ok(message),
            Err(e) => {
                let message = format!("message {:#06x} does not decode: {e}", frame.ty);
                Err(self.violation(&message).await)
            }
        }
    }

    /// Sends one message; fails when the runtime is gone.
    async fn send(&mut self, frame: Frame) -> Result<(), Stopped> {
        self.out
            .send(Ok(hyper::body::Frame::data(frame.encode())))
            .await
            .map_err(|_| Stopped)
    }

    /// Fails the attempt with an `ErrorMessage`.
    async fn fail(&mut self, code: u32, message: &str, description: &str) -> Stopped {
        let error = ErrorMessage {
            code,
            message: message.into(),
            description: description.into(),
        };
        let _ = self.send(Frame::message(types::ERROR, 0, &error)).await;
        Stopped
    }

    async fn mismatch(&mut self, description: &str) -> Stopped {
        self.fail(code::JOURNAL_MISMATCH, "journal mismatch", description)
            .await
    }

    async fn violation(&mut self, description: &str) -> Stopped {
        self.fail(code::PROTOCOL_VIOLATION, "protocol violation", description)
            .await
    }
}

/// Appends `line` to the file at `path` (the side effect of `Echo`); the line is the result.
fn append_line(path: &str, line: &str) -> Result<Vec<u8>, Failure> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .map(|()| line.as_bytes().to_vec())
        .map_err(|e| Failure {
            code: code::INTERNAL,
            message: format!("appending to {path}: {e}"),
        })
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

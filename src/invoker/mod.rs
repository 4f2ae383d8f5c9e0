//! The invoker of one core: runs invocation attempts against service endpoints over its own HTTP/2
//! connections (one per endpoint address, many streams each), with replay, retries and timeouts.
//!
//! One attempt = one `POST {endpoint}/invoke/{service}/{method}` stream: Start (with the eager state map
//! when small), the stored journal, then (bidi) completions as they come, while every entry the SDK sends
//! is appended durably by the partition processor before anything depends on it.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::{FutureExt, StreamExt};
use prost::Message;

use crate::config;
use crate::grpc::Code;
use crate::http::allow::AllowList;
use crate::http::client;
use crate::partition::processor::{
    AppendError, AttemptContext, Failure, Processor, SuspendOutcome,
};
use crate::partition::{EntryIndex, InvocationId};
use crate::protocol::messages::{
    output_stream_entry_message, start_message, CompletionMessage, ErrorMessage,
    OutputStreamEntryMessage, StartMessage, SuspensionMessage,
};
use crate::protocol::{self, types, Decoder, Frame, Kind, FLAG_COMPLETED, FLAG_PARTIAL_STATE};
use crate::schema::{Endpoint, ProtocolMode};

mod drivers;
mod slots;

use drivers::{Handoff, Parked};
use slots::Slots;

/// Start and the replayed journal are sent in chunks: a chunk ends once it holds this many bytes (so
/// it exceeds this by at most one message). hyper writes a chunk as few HTTP/2 DATA frames as the
/// peer's frame size allows, instead of one frame per message.
const START_CHUNK_BYTES: usize = 16 * 1024;

/// Why an attempt failed.
#[derive(Debug, Clone)]
pub struct AttemptError {
    /// The code the caller gets if this is the last attempt.
    pub code: u32,
    pub message: String,
    /// A new attempt may succeed.
    pub transient: bool,
}

impl AttemptError {
    fn transient(code: Code, message: impl Into<String>) -> Self {
        Self {
            code: code as u32,
            message: message.into(),
            transient: true,
        }
    }

    fn terminal(code: Code, message: impl Into<String>) -> Self {
        Self {
            code: code as u32,
            message: message.into(),
            transient: false,
        }
    }
}

/// How an attempt ended.
#[derive(Debug)]
pub enum AttemptEnd {
    /// The output was stored and delivered.
    Done,
    /// Waiting for a completion.
    Suspended,
    /// Suspended on an entry that is already completed: go again.
    Resume,
    /// Failed; retried per the retry policy.
    Failed(AttemptError),
}

/// The core's invoker: connection pool and limits.
pub struct Invoker {
    config: config::Invoker,
    proxy: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    /// Open connections per endpoint address, each with the attempts streaming on it.
    connections: RefCell<HashMap<String, EndpointPool>>,
    /// Request heads built once per endpoint and `service/method`, instead of formatting and parsing
    /// a URI, resolving its target and building headers for every attempt. Keyed by the endpoint's
    /// `Arc` (its address; the entry holds the `Arc`, so the address is not reused while cached). An
    /// endpoint no schema snapshot holds any more is dropped when another is added, so this holds at
    /// most the registered endpoints' methods (plus ones replaced since the last addition).
    heads: RefCell<HashMap<usize, EndpointHeads>>,
    slots: Slots,
    /// `meta.allowed_endpoints`, checked on every new connection.
    allow: Arc<AllowList>,
    /// Bidi attempts whose request side is open, by when they were last active (a frame from the
    /// endpoint or a completion to it). While attempts wait for a slot, the longest idle is told to
    /// close its request side at once, as its inactivity timeout would later: an attempt that only waits
    /// (on a call, a timer, an awakeable) then suspends and frees its slot for runnable work.
    idle: RefCell<BTreeMap<(Instant, u64), oneshot::Sender<()>>>,
    /// Numbers attempts and slot waits (a tie-breaker for equal instants).
    sequence: Cell<u64>,
    /// Attempts waiting for a slot, by when they began to wait.
    slot_waiters: RefCell<BTreeSet<(Instant, u64)>>,
    /// Limits the WARN lines about long slot waits.
    slow_slots: crate::logging::RateLimit,
    /// This core's figures for /metrics.
    gauges: Arc<crate::node::CoreGauges>,
    /// Driver tasks whose invocation ended, waiting for the next (at most `concurrency_limit`).
    parked: Parked<Job>,
}

/// An invocation to drive: its partition's processor, its id, and its place in the gauges.
struct Job {
    processor: Processor,
    id: InvocationId,
    driven: Driven,
}

/// A concurrency slot held by an attempt (counted in the gauges while held); released on drop.
struct Slot<'a> {
    slots: &'a Slots,
    gauges: &'a crate::node::CoreGauges,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.gauges.attempts_running.fetch_sub(1, Ordering::Relaxed);
        self.slots.release();
    }
}

/// Counts an invocation in [`CoreGauges::invocations_driven`](crate::node::CoreGauges) while held.
struct Driven(Arc<crate::node::CoreGauges>);

impl Driven {
    fn new(gauges: &Arc<crate::node::CoreGauges>) -> Driven {
        use std::sync::atomic::Ordering;
        gauges.invocations_driven.fetch_add(1, Ordering::Relaxed);
        Driven(gauges.clone())
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.0.invocations_driven.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An attempt's place in [`Invoker::idle`], removed when the attempt's request side closes or it ends.
struct IdleEntry<'a> {
    idle: &'a RefCell<BTreeMap<(Instant, u64), oneshot::Sender<()>>>,
    key: Option<(Instant, u64)>,
}

impl IdleEntry<'_> {
    /// The attempt was active now: it moves to the back of the line.
    fn touch(&mut self) {
        let Some(key) = self.key else { return };
        let mut idle = self.idle.borrow_mut();
        match idle.remove(&key) {
            Some(preempt) => {
                let now = (Instant::now(), key.1);
                idle.insert(now, preempt);
                self.key = Some(now);
            }
            None => self.key = None, // already told to suspend
        }
    }

    fn forget(&mut self) {
        if let Some(key) = self.key.take() {
            self.idle.borrow_mut().remove(&key);
        }
    }
}

impl Drop for IdleEntry<'_> {
    fn drop(&mut self) {
        self.forget();
    }
}

impl Invoker {
    /// The invoker of one core.
    pub fn new(
        config: &config::Invoker,
        tls: Arc<rustls::ClientConfig>,
        allow: Arc<AllowList>,
        gauges: Arc<crate::node::CoreGauges>,
    ) -> Rc<Invoker> {
        Rc::new(Invoker {
            config: config.clone(),
            proxy: config::Config::effective_proxy(&config.proxy_uri),
            tls,
            connections: RefCell::new(HashMap::new()),
            heads: RefCell::new(HashMap::new()),
            slots: Slots::new(config.concurrency_limit),
            allow,
            idle: RefCell::new(BTreeMap::new()),
            sequence: Cell::new(0),
            slot_waiters: RefCell::new(BTreeSet::new()),
            slow_slots: crate::logging::RateLimit::new(std::time::Duration::from_secs(10)),
            gauges,
            parked: Parked::new(config.concurrency_limit),
        })
    }

    fn next_sequence(&self) -> u64 {
        let next = self.sequence.get();
        self.sequence.set(next + 1);
        next
    }

    /// A slot for one attempt of `service` (`worker.invoker.concurrency_limit` per core; waiters are
    /// served round-robin by service, whose name is looked up only then). While none is free, the
    /// longest-idle attempt is told to suspend, one per waiter.
    async fn slot(&self, id: InvocationId, service: impl FnOnce() -> String) -> Slot<'_> {
        use std::sync::atomic::Ordering;
        if !self.slots.try_acquire() {
            self.wait_for_slot(id, &service()).await;
        }
        self.gauges.attempts_running.fetch_add(1, Ordering::Relaxed);
        Slot {
            slots: &self.slots,
            gauges: &self.gauges,
        }
    }

    /// Queues for a slot (none was free, or others wait) until one is passed on.
    async fn wait_for_slot(&self, id: InvocationId, service: &str) {
        use std::sync::atomic::Ordering;
        let mut granted = self.slots.acquire(service);
        if matches!(granted.try_recv(), Ok(Some(()))) {
            return;
        }
        let key = (Instant::now(), self.next_sequence());
        self.slot_waiters.borrow_mut().insert(key);
        self.gauges
            .attempts_waiting_for_slot
            .fetch_add(1, Ordering::Relaxed);
        self.preempt_longest_idle();
        // Never cancelled while the slots live: the sender is dropped only with them.
        let _ = granted.await;
        self.slot_waiters.borrow_mut().remove(&key);
        self.gauges
            .attempts_waiting_for_slot
            .fetch_sub(1, Ordering::Relaxed);
        self.warn_if_slow(id, key.0.elapsed());
    }

    /// Tells the attempt idle the longest to close its request side (it then suspends).
    fn preempt_longest_idle(&self) {
        use std::sync::atomic::Ordering;
        let longest = self.idle.borrow_mut().pop_first();
        if let Some((_, preempt)) = longest {
            if preempt.send(()).is_ok() {
                self.gauges.preemptions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn warn_if_slow(&self, id: InvocationId, waited: std::time::Duration) {
        if waited < self.config.slot_wait_warn_after {
            return;
        }
        if let Some(suppressed) = self.slow_slots.allow() {
            log::warn!(
                invocation = id.to_hex(), waited_ms = waited.as_millis() as u64, suppressed;
                "an attempt waited {waited:?} for one of the core's {} slots \
                 (worker.invoker.concurrency_limit)",
                self.config.concurrency_limit
            );
        }
    }

    /// How long the longest current wait for a slot has lasted, in milliseconds.
    pub fn longest_slot_wait_ms(&self) -> u64 {
        let waiters = self.slot_waiters.borrow();
        waiters
            .first()
            .map_or(0, |(since, _)| since.elapsed().as_millis() as u64)
    }

    /// Installs this invoker as the processor's driver: each started invocation runs attempts until it
    /// is done, suspended, or out of retries.
    pub fn install(self: &Rc<Self>, processor: &Processor) {
        let invoker = self.clone();
        processor.set_driver(Rc::new(move |processor, id| {
            let job = Job {
                processor,
                id,
                // Counted at once: the ingress places the next invocations by it.
                driven: Driven::new(&invoker.gauges),
            };
            if let Err(job) = invoker.parked.hand(job) {
                // Boxed: glommio would move the ~2 KB future several times before it lands.
                glommio::spawn_local(Box::pin(invoker.clone().driver(job))).detach();
            }
        }));
    }

    /// A driver task: drives its job's invocation, then parks for the next one while fewer than
    /// `concurrency_limit` drivers are parked (see [`drivers`]).
    async fn driver(self: Rc<Self>, mut job: Job) {
        let handoff = Rc::new(Handoff::default());
        loop {
            self.clone().drive(job.processor, job.id, job.driven).await;
            match self.parked.park(&handoff) {
                Some(next) => job = next.await,
                None => return,
            }
        }
    }

    async fn drive(self: Rc<Self>, processor: Processor, id: InvocationId, mut driven: Driven) {
        let mut target = String::new();
        let mut warned = FailureLog::default();
        // Delays before the next retries; afresh after an attempt that made progress.
        let mut retries = self.config.retry_policy.delays();
        loop {
            if !processor.exists(id) {
                return; // ended elsewhere (cancelled)
            }
            let end = {
                let _slot = self
                    .slot(id, || processor.service_name(id).unwrap_or_default())
                    .await;
                let mut progressed = false;
                let started = std::time::Instant::now();
                let end = self
                    .attempt(&processor, id, &mut target, &mut progressed)
                    .await;
                crate::metrics::attempt_ended(started.elapsed());
                if progressed {
                    retries = self.config.retry_policy.delays();
                }
                end
            };
            match end {
                AttemptEnd::Done | AttemptEnd::Suspended => return,
                AttemptEnd::Resume => continue,
                AttemptEnd::Failed(error) => {
                    let retry = if error.transient {
                        retries.next()
                    } else {
                        None
                    };
                    let attempts = processor.attempts(id);
                    match retry {
                        Some(delay) => {
                            let service = processor.service_name(id).unwrap_or_default();
                            crate::metrics::invocation_retried(&service);
                            processor.record_failure(id, &error.message, delay);
                            if warned.should_log(attempts, std::time::Instant::now()) {
                                log::warn!(
                                    invocation = id.to_hex(), target = target.as_str(), attempts,
                                    retry_in_ms = delay.as_millis() as u64;
                                    "attempt {attempts} of {target} failed, retrying in {delay:?}: {}",
                                    error.message
                                );
                            }
                            let _backing_off = crate::metrics::backing_off();
                            drop(driven);
                            glommio::timer::sleep(delay).await;
                            driven = Driven::new(&self.gauges);
                        }
                        None => {
                            log::warn!(
                                invocation = id.to_hex(), target = target.as_str(), attempts;
                                "invocation of {target} failed: {}", error.message
                            );
                            processor.finish(
                                id,
                                Err(Failure {
                                    code: error.code,
                                    message: error.message,
                                }),
                            );
                            return;
                        }
                    }
                }
            }
        }
    }

    /// A connection to `target` with room for one more stream: the least busy open one; else a new
    /// one while fewer than `max_connections_per_endpoint` are open or opening (an attempt waits for
    /// one being opened while that one's `max_streams_per_connection` are not all promised to other
    /// waiters, so a burst of first calls shares a connection); else the least busy one queues the
    /// stream. Waiting and opening together are bounded by `connect_timeout`: waiters whose opening
    /// failed must not take turns opening one, each after the previous one timed out.
    ///
    /// The usual case (a pooled connection with room) is taken without a future or a timer; waiting
    /// and opening run in a boxed future of their own (kilobytes: TCP, TLS and HTTP/2 handshakes),
    /// which the attempt's future then need not make room for.
    async fn connection(
        &self,
        head: &Head,
    ) -> Result<(client::Streams, StreamSlot), client::Error> {
        match self.next_connection(&head.pool_key) {
            Next::Use(connection, streams) => Ok((connection, StreamSlot::new(streams))),
            next => self.wait_or_open_within(head, next).boxed_local().await,
        }
    }

    /// [`connection`](Self::connection) when none has room, within `connect_timeout`.
    async fn wait_or_open_within(
        &self,
        head: &Head,
        next: Next,
    ) -> Result<(client::Streams, StreamSlot), client::Error> {
        let (target, key) = (&head.target, head.pool_key.as_str());
        let timeout = self.config.connect_timeout;
        // No await before `got` is first polled (the timeout polls it before its timer): a
        // `Next::Open` has counted an opening that only `wait_or_open`'s guard gives back.
        let got = async { Ok(self.wait_or_open(target, key, next).await) };
        match glommio::timer::timeout(timeout, got).await {
            Ok(got) => got,
            Err(_) => Err(client::Error::Connect {
                address: key.to_owned(),
                message: format!(
                    "no connection within {timeout:?} (worker.invoker.connect_timeout)"
                ),
            }),
        }
    }

    fn next_connection(&self, key: &str) -> Next {
        let mut pool = self.connections.borrow_mut();
        let endpoint = match pool.get_mut(key) {
            Some(endpoint) => endpoint,
            None => pool.entry(key.to_owned()).or_default(),
        };
        endpoint.next(
            self.config.max_streams_per_connection,
            self.config.max_connections_per_endpoint,
        )
    }

    /// Waits for connections being opened until one has room or this attempt is to open one.
    async fn wait_or_open(
        &self,
        target: &client::Target,
        key: &str,
        mut next: Next,
    ) -> Result<(client::Streams, StreamSlot), client::Error> {
        let opening = loop {
            match next {
                Next::Use(connection, streams) => {
                    return Ok((connection, StreamSlot::new(streams)))
                }
                Next::Wait(opened) => {
                    // Fires when an opening ends, either way (its guard drops the sender).
                    let _ = opened.await;
                }
                Next::Open => break Opening::new(&self.connections, key.to_owned()),
            }
            next = self.next_connection(key);
        };
        let keep_alive = (!self.config.http2_keep_alive_interval.is_zero()).then_some((
            self.config.http2_keep_alive_interval,
            self.config.http2_keep_alive_timeout,
        ));
        let connection = client::Streams::open(target, &self.tls, keep_alive, &self.allow).await?;
        let streams = Rc::new(Cell::new(0));
        let result = (connection.clone(), StreamSlot::new(streams.clone()));
        opening.opened(Pooled {
            connection,
            streams,
        });
        Ok(result)
    }

    fn forget_closed_connections(&self, key: &str) {
        if let Some(endpoint) = self.connections.borrow_mut().get_mut(key) {
            endpoint.open.retain(|c| !c.connection.is_closed());
        }
    }

    /// One attempt of `id`; `target` gets its `service/method` once known.
    async fn attempt(
        &self,
        processor: &Processor,
        id: InvocationId,
        target: &mut String,
        progressed: &mut bool,
    ) -> AttemptEnd {
        match self.try_attempt(processor, id, target, progressed).await {
            Ok(end) => end,
            Err(error) => AttemptEnd::Failed(error),
        }
    }

    async fn try_attempt(
        &self,
        processor: &Processor,
        id: InvocationId,
        target_name: &mut String,
        progressed: &mut bool,
    ) -> Result<AttemptEnd, AttemptError> {
        let Some(mut context) = processor
            .attempt_context(id)
            .await
            .map_err(|e| AttemptError::transient(Code::Internal, format!("storage: {e}")))?
        else {
            return Ok(AttemptEnd::Done);
        };
        target_name.clear();
        target_name.push_str(&context.service.service);
        target_name.push('/');
        target_name.push_str(&context.method);
        // No completion reaches this attempt once it ends, however it ends.
        struct Detach<'a>(&'a Processor, InvocationId);
        impl Drop for Detach<'_> {
            fn drop(&mut self) {
                self.0.detach(self.1);
            }
        }
        let _detach = Detach(processor, id);
        let endpoint = self.endpoint(processor, id, &context)?;
        let head = self.head_of(&endpoint, &context, target_name)?;
        let bidi = endpoint.protocol_mode == ProtocolMode::BidiStream
            && !self.config.inactivity_timeout.is_zero();
        let mut attempt = Attempt {
            invoker: self,
            processor,
            id,
            out: None,
            request_open: bidi,
            completed: HashSet::new(),
            next_index: context.journal.len() as u32,
            progressed,
            completions_open: true,
            idle: IdleEntry {
                idle: &self.idle,
                key: None,
            },
            preempted: None,
            pending: Default::default(),
        };
        let (connection, _stream_slot) = self.connection(&head).await.map_err(|e| match e {
            client::Error::NotAllowed { .. } => {
                AttemptError::terminal(Code::PermissionDenied, e.to_string())
            }
            e => AttemptError::transient(Code::Unavailable, e.to_string()),
        })?;
        let response = attempt.response(&connection, &head, &context).await?;
        check_response(&response)?;
        attempt
            .run(response.into_body(), &mut context.completions)
            .await
    }

    /// The endpoint this attempt runs on, pinning the invocation to it on its first attempt.
    fn endpoint(
        &self,
        processor: &Processor,
        id: InvocationId,
        context: &AttemptContext,
    ) -> Result<Arc<Endpoint>, AttemptError> {
        let schemas = processor.schemas().get();
        let Some(service) = schemas.services.get(&context.service.service) else {
            return Err(AttemptError::transient(
                Code::NotFound,
                format!("service {} is not registered", context.service.service),
            ));
        };
        // Pinned: an invocation's attempts run on the endpoint its first attempt ran on, while that is
        // registered (it is dropped once it serves no service at all); then on the service's current one.
        if let Some(pinned) = schemas.endpoints.get(&context.endpoint) {
            return Ok(pinned.clone());
        }
        let current = schemas.endpoints.get(&service.endpoint_id).ok_or_else(|| {
            AttemptError::transient(Code::NotFound, "the service's endpoint is gone")
        })?;
        if !context.endpoint.is_empty() {
            log::warn!(
                invocation = id.to_hex(), pinned = context.endpoint.as_str();
                "the endpoint this invocation ran on is no longer registered; it continues on {}",
                current.id
            );
        }
        processor.pin_endpoint(id, current.id.clone());
        Ok(current.clone())
    }

    /// The head of the `invoke` request of `service/method` (`target_name`) to `endpoint` (its body
    /// is written to the stream), and where it goes: built on the first attempt, then shared.
    fn head_of(
        &self,
        endpoint: &Arc<Endpoint>,
        context: &AttemptContext,
        target_name: &str,
    ) -> Result<Rc<Head>, AttemptError> {
        let address = Arc::as_ptr(endpoint) as usize;
        let cached = self
            .heads
            .borrow()
            .get(&address)
            .and_then(|(_, methods)| methods.get(target_name).cloned());
        let head = match cached {
            Some(head) => head,
            None => {
                let head = Rc::new(self.head(endpoint, context)?);
                let mut heads = self.heads.borrow_mut();
                if !heads.contains_key(&address) {
                    // Endpoints that only this cache still holds are gone from every schema.
                    heads.retain(|_, (cached, _)| Arc::strong_count(cached) > 1);
                }
                heads
                    .entry(address)
                    .or_insert_with(|| (endpoint.clone(), HashMap::new()))
                    .1
                    .insert(target_name.to_owned(), head.clone());
                head
            }
        };
        Ok(head)
    }

    /// Builds what [`head_of`](Self::head_of) caches.
    fn head(&self, endpoint: &Endpoint, context: &AttemptContext) -> Result<Head, AttemptError> {
        let uri: http::Uri = format!(
            "{}/invoke/{}/{}",
            endpoint.uri, context.service.service, context.method
        )
        .parse()
        .map_err(|e| AttemptError::terminal(Code::Internal, format!("bad invoke uri: {e}")))?;
        let target = client::target(&uri, self.proxy.as_deref())
            .map_err(|e| AttemptError::terminal(Code::Internal, e.to_string()))?;
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/restate"),
        );
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/restate"),
        );
        for (name, value) in &endpoint.additional_headers {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name.as_str()),
                http::HeaderValue::try_from(value.as_str()),
            ) {
                if !connection_specific(&name, &value) {
                    headers.insert(name, value);
                }
            }
        }
        Ok(Head {
            pool_key: pool_key(&target),
            uri,
            target,
            headers,
        })
    }
}

/// One endpoint's cached request heads by `service/method`, with the endpoint they were built for.
type EndpointHeads = (Arc<Endpoint>, HashMap<String, Rc<Head>>);

/// The parts of an `invoke` request that depend only on the endpoint and the method.
struct Head {
    uri: http::Uri,
    headers: http::HeaderMap,
    target: client::Target,
    /// The connection pool's key of `target`.
    pool_key: String,
}

impl Head {
    /// An attempt's request: built only once its stream can be opened, so that no future waiting for
    /// that holds a copy.
    fn request(&self) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// HTTP/2 has no connection-specific header fields (RFC 9113 8.2.2) and h2 refuses to send a
/// request with one, so an endpoint's additional headers are sent without them (as hyper's client,
/// which discovery uses, strips them).
fn connection_specific(name: &http::HeaderName, value: &http::HeaderValue) -> bool {
    use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
    [CONNECTION, TRANSFER_ENCODING, UPGRADE].contains(name)
        || name == "keep-alive"
        || name == "proxy-connection"
        || (name == TE && value != "trailers")
}

/// One attempt's stream once its request is built: what it sends, what the endpoint knows, and what
/// wakes it.
struct Attempt<'a> {
    invoker: &'a Invoker,
    processor: &'a Processor,
    id: InvocationId,
    /// Our side of the request's stream, from its opening until our side ends.
    out: Option<h2::SendStream<Bytes>>,
    /// Bidi and not closed yet: completions are still sent to the endpoint.
    request_open: bool,
    /// Entries the endpoint knows to be completed (replayed so, or sent their completion): their
    /// completions are not sent twice, and a suspension on them resumes at once.
    completed: HashSet<EntryIndex>,
    /// The index the next entry from the endpoint gets.
    next_index: EntryIndex,
    /// Set once an entry was appended: the retry delays start afresh.
    progressed: &'a mut bool,
    /// The processor still sends completions (it drops their sender when the invocation ends).
    completions_open: bool,
    /// This attempt's place in the line of idle bidi attempts, while its request side is open.
    idle: IdleEntry<'a>,
    /// Fires when this attempt is told to close its request side for others waiting for a slot.
    preempted: Option<oneshot::Receiver<()>>,
    /// Appended entries not known durable yet, oldest first (each fires once durable).
    pending: std::collections::VecDeque<oneshot::Receiver<()>>,
}

/// What one event means for the attempt loop.
enum Step {
    /// Nothing to decode: wait for the next event.
    Wait,
    /// Bytes from the endpoint, to decode.
    Data(Bytes),
    /// The attempt is over.
    End(AttemptEnd),
}

impl Attempt<'_> {
    fn send(&mut self, frame: Frame) {
        self.send_bytes(frame.encode());
    }

    /// Queues `bytes` on our side of the stream (h2 sends them as the endpoint's window allows; a
    /// stream the endpoint reset takes nothing, and the attempt learns why from the response side).
    fn send_bytes(&mut self, bytes: Bytes) {
        if let Some(out) = self.out.as_mut() {
            let _ = out.send_data(bytes, false);
        }
    }

    /// Ends our side of the stream (END_STREAM), once.
    fn end_body(&mut self) {
        if let Some(mut out) = self.out.take() {
            let _ = out.send_data(Bytes::new(), true);
        }
    }

    /// Ends our side of the request: the endpoint gets no more completions (and suspends once it
    /// needs one).
    fn close_request(&mut self) {
        self.request_open = false;
        self.end_body();
    }

    /// How long the endpoint may stay silent: while our side is open (bidi), the inactivity timeout
    /// (then our side closes); after that, the abort timeout.
    fn silence_limit(&self) -> std::time::Duration {
        if self.request_open {
            self.invoker.config.inactivity_timeout
        } else {
            self.invoker.config.abort_timeout
        }
    }

    /// Queues Start (with the eager state) and the stored journal; the request side stays open only
    /// for bidi.
    fn start(&mut self, context: &AttemptContext) {
        let start = StartMessage {
            id: self.id.as_bytes().to_vec(),
            debug_id: self.id.to_hex(),
            known_entries: self.next_index,
            state_map: context
                .state
                .iter()
                .map(|(key, value)| start_message::StateEntry {
                    key: key.to_vec(),
                    value: value.to_vec(),
                })
                .collect(),
            partial_state: context.partial_state,
        };
        let flags = if context.partial_state {
            FLAG_PARTIAL_STATE
        } else {
            0
        };
        // Start and the journal go out as few HTTP/2 DATA frames as their size allows (one for
        // most invocations) instead of one per message.
        let mut chunk = bytes::BytesMut::new();
        Frame::message(types::START, flags, &start).encode_into(&mut chunk);
        for (index, entry) in context.journal.iter().enumerate() {
            let flags = if entry.completed { FLAG_COMPLETED } else { 0 };
            if entry.completed {
                self.completed.insert(index as EntryIndex);
            }
            if chunk.len() >= START_CHUNK_BYTES {
                self.send_bytes(chunk.split().freeze());
            }
            Frame::new(entry.ty, flags, entry.payload.clone()).encode_into(&mut chunk);
        }
        self.send_bytes(chunk.freeze());
        if !self.request_open {
            self.end_body();
        }
    }

    /// Opens the stream, sends Start and the journal, and waits for the response headers.
    async fn response(
        &mut self,
        connection: &client::Streams,
        head: &Head,
        context: &AttemptContext,
    ) -> Result<http::Response<h2::RecvStream>, AttemptError> {
        let broke = |invoker: &Invoker, e: &dyn std::fmt::Display| {
            invoker.forget_closed_connections(&head.pool_key);
            AttemptError::transient(Code::Unavailable, format!("request failed: {e}"))
        };
        let opened = self
            .within_silence(connection.open_stream(|| head.request()))
            .await?;
        // client::Error::Request says "request failed" itself.
        let (response, out) = opened.map_err(|e| match e {
            client::Error::Request(message) => broke(self.invoker, &message),
            e => broke(self.invoker, &e),
        })?;
        self.out = Some(out);
        self.start(context);
        let response = self.within_silence(response).await?;
        response.map_err(|e| broke(self.invoker, &e))
    }

    /// Waits for `waited` bounded like any silence of the endpoint: first the inactivity timeout (then
    /// our side closes, as an endpoint that answers only after the whole request needs), then the abort
    /// timeout.
    async fn within_silence<F: std::future::Future>(
        &mut self,
        waited: F,
    ) -> Result<F::Output, AttemptError> {
        futures::pin_mut!(waited);
        loop {
            let limit = self.silence_limit();
            let timeout = glommio::timer::sleep(limit);
            futures::pin_mut!(timeout);
            match select(waited.as_mut(), timeout).await {
                Either::Left((output, _)) => return Ok(output),
                Either::Right(_) if self.request_open => self.close_request(),
                Either::Right(_) => {
                    return Err(AttemptError::transient(
                        Code::DeadlineExceeded,
                        format!("no response from the endpoint within {limit:?} (abort timeout)"),
                    ))
                }
            }
        }
    }

    /// Runs the stream until the endpoint ends the attempt: decodes its frames, and (bidi) passes it
    /// completions while our side is open.
    async fn run(
        &mut self,
        mut body: h2::RecvStream,
        completions: &mut crate::local_queue::Receiver<CompletionMessage>,
    ) -> Result<AttemptEnd, AttemptError> {
        let mut decoder = Decoder::new(self.invoker.config.message_size_limit);
        if self.request_open {
            let (preempt, told) = oneshot::channel();
            let key = (Instant::now(), self.invoker.next_sequence());
            self.invoker.idle.borrow_mut().insert(key, preempt);
            self.idle.key = Some(key);
            self.preempted = Some(told);
        }
        loop {
            // Bidi: inactivity closes our side (the SDK then suspends); after that, silence aborts.
            let wait = self.silence_limit();
            let event = self.next_event(&mut body, completions, wait).await;
            if let Event::Frame(Some(Ok(data))) = &event {
                // Read: the endpoint may send as much again.
                let _ = body.flow_control().release_capacity(data.len());
            }
            let data = match self.on_event(event, wait)? {
                Step::Wait => continue,
                Step::Data(data) => data,
                Step::End(end) => return Ok(end),
            };
            decoder.push(&data);
            while let Some(frame) = decoder.next().map_err(protocol_violation)? {
                if let Some(end) = self.on_frame(frame).await? {
                    return Ok(end);
                }
            }
        }
    }

    /// Whichever comes first: a frame of the response body, a completion, `wait` of silence, or
    /// preemption.
    async fn next_event(
        &mut self,
        body: &mut h2::RecvStream,
        completions: &mut crate::local_queue::Receiver<CompletionMessage>,
        wait: std::time::Duration,
    ) -> Event {
        let frame = body.data();
        let completions_open = self.completions_open;
        let completion = async {
            if completions_open {
                completions.next().await
            } else {
                futures::future::pending().await
            }
        };
        let timeout = glommio::timer::sleep(wait);
        let told = async {
            match self.preempted.as_mut() {
                Some(told) => told.await.is_ok(),
                None => futures::future::pending().await,
            }
        };
        futures::pin_mut!(frame, completion, timeout, told);
        match select(select(frame, completion), select(timeout, told)).await {
            Either::Left((Either::Left((frame, _)), _)) => Event::Frame(frame),
            Either::Left((Either::Right((completion, _)), _)) => Event::Completion(completion),
            Either::Right((Either::Left(_), _)) => Event::Timeout,
            Either::Right((Either::Right((told, _)), _)) => Event::Preempted(told),
        }
    }

    /// Acts on one event; `wait` is the silence it was waited for.
    fn on_event(&mut self, event: Event, wait: std::time::Duration) -> Result<Step, AttemptError> {
        match event {
            Event::Completion(Some(completion)) => {
                // One the replayed journal already had completed is not sent twice.
                if self.completed.insert(completion.entry_index) && self.request_open {
                    self.send(completion_frame(&completion));
                    self.idle.touch();
                }
            }
            Event::Completion(None) => {
                if !self.processor.exists(self.id) {
                    return Ok(Step::End(AttemptEnd::Done)); // cancelled: drop the stream
                }
                self.completions_open = false;
            }
            Event::Timeout if self.request_open => {
                self.close_request();
                self.idle.forget();
            }
            Event::Preempted(told) => {
                // Told: others wait for a slot; the endpoint suspends once it needs a completion.
                self.preempted = None;
                if told && self.request_open {
                    self.close_request();
                }
                self.idle.forget();
            }
            Event::Timeout => {
                return Err(AttemptError::transient(
                    Code::DeadlineExceeded,
                    format!("no message from the endpoint for {wait:?} (abort timeout)"),
                ))
            }
            Event::Frame(frame) => {
                self.idle.touch();
                return body_data(frame).map(|data| data.map_or(Step::Wait, Step::Data));
            }
        }
        Ok(Step::Wait)
    }

    /// Acts on one message from the endpoint: `Some` when it ends the attempt.
    async fn on_frame(&mut self, frame: Frame) -> Result<Option<AttemptEnd>, AttemptError> {
        match frame.ty {
            types::OUTPUT_STREAM => self.finish(&frame).await.map(Some),
            types::SUSPENSION => self.suspend(&frame).await.map(Some),
            types::ERROR => Err(endpoint_error(&frame)),
            ty if protocol::kind(ty) == Some(Kind::Core) => Err(AttemptError::transient(
                Code::Internal,
                format!("protocol violation: the endpoint sent message type {ty:#06x}"),
            )),
            _ => self.append(&frame).await.map(|()| None),
        }
    }

    /// The endpoint's output: the invocation ends with it.
    async fn finish(&mut self, frame: &Frame) -> Result<AttemptEnd, AttemptError> {
        let output =
            OutputStreamEntryMessage::decode(frame.payload.clone()).map_err(protocol_violation)?;
        let outcome = match output.result {
            Some(output_stream_entry_message::Result::Value(value)) => Ok(Bytes::from(value)),
            Some(output_stream_entry_message::Result::Failure(f)) => Err(Failure {
                code: f.code,
                message: f.message,
            }),
            None => Ok(Bytes::new()),
        };
        self.end_body();
        self.processor.finish(self.id, outcome);
        Ok(AttemptEnd::Done)
    }

    /// The endpoint suspended on entries it has sent: it resumes at once if one is already completed.
    async fn suspend(&mut self, frame: &Frame) -> Result<AttemptEnd, AttemptError> {
        let suspension =
            SuspensionMessage::decode(frame.payload.clone()).map_err(protocol_violation)?;
        let next_index = self.next_index;
        if suspension.entry_indexes.is_empty()
            || suspension.entry_indexes.iter().any(|i| *i >= next_index)
        {
            return Err(AttemptError::transient(
                Code::Internal,
                format!(
                    "protocol violation: suspension on {:?} with {next_index} entries",
                    suspension.entry_indexes
                ),
            ));
        }
        self.end_body();
        let outcome = self
            .processor
            .suspend(self.id, suspension.entry_indexes, &self.completed)
            .await;
        Ok(match outcome {
            SuspendOutcome::Resume => AttemptEnd::Resume,
            SuspendOutcome::Suspended => AttemptEnd::Suspended,
        })
    }

    /// A journal entry from the endpoint: decided at once, then the next message is read without
    /// waiting for the write (up to `max_pending_appends` not yet durable); its completion (or ack)
    /// reaches the endpoint through the completion stream once durable.
    async fn append(&mut self, frame: &Frame) -> Result<(), AttemptError> {
        self.bound_pending().await;
        let index = self.next_index;
        self.next_index += 1;
        let durable = self
            .processor
            .append(self.id, index, frame)
            .await
            .map_err(|e| match e {
                AppendError::Gone => AttemptError::terminal(Code::Aborted, "invocation gone"),
                AppendError::Refused(failure) => AttemptError {
                    code: failure.code,
                    message: failure.message,
                    transient: false,
                },
                e => AttemptError::transient(Code::Internal, e.to_string()),
            })?;
        *self.progressed = true;
        if protocol::kind(frame.ty) == Some(Kind::Completable) && frame.is_completed_entry() {
            self.completed.insert(index);
        }
        self.pending.push_back(durable);
        Ok(())
    }

    /// Forgets appends that are durable; waits for the oldest while `max_pending_appends` are not.
    async fn bound_pending(&mut self) {
        let limit = self.invoker.config.max_pending_appends.max(1);
        loop {
            let full = self.pending.len() >= limit;
            let Some(oldest) = self.pending.front_mut() else {
                break;
            };
            if full {
                // The oldest may have deferred its fsync (no completion to send): this wait is one
                // the deferral must not apply to.
                self.processor.sync_now();
                let _ = oldest.await;
            } else if !matches!(oldest.try_recv(), Ok(Some(())) | Err(_)) {
                break;
            }
            self.pending.pop_front();
        }
    }
}

/// Fails the attempt unless the endpoint answered with a success status and the protocol's
/// content type.
fn check_response<B>(response: &http::Response<B>) -> Result<(), AttemptError> {
    if !response.status().is_success() {
        return Err(AttemptError::transient(
            Code::Internal,
            format!("the endpoint answered HTTP {}", response.status()),
        ));
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes());
    if content_type != Some(b"application/restate") {
        return Err(AttemptError::transient(
            Code::Internal,
            format!(
                "the endpoint answered content-type {:?}, expected application/restate",
                content_type.map(String::from_utf8_lossy)
            ),
        ));
    }
    Ok(())
}

/// The bytes of one DATA frame of the response body (`None`: it ended, trailers or not).
fn body_data(frame: Option<Result<Bytes, h2::Error>>) -> Result<Option<Bytes>, AttemptError> {
    match frame {
        None => Err(AttemptError::transient(
            Code::Internal,
            "unexpected end of invocation stream",
        )),
        Some(Err(e)) => Err(AttemptError::transient(
            Code::Unavailable,
            format!("stream broke: {e}"),
        )),
        Some(Ok(data)) => Ok(Some(data)),
    }
}

/// The endpoint's Error message as the attempt's error (an unknown code becomes `Unknown`).
fn endpoint_error(frame: &Frame) -> AttemptError {
    let error = ErrorMessage::decode(frame.payload.clone()).unwrap_or_default();
    let code = if (1..=16).contains(&error.code) {
        error.code
    } else {
        Code::Unknown as u32
    };
    AttemptError {
        code,
        message: if error.description.is_empty() {
            error.message
        } else {
            format!("{}: {}", error.message, error.description)
        },
        transient: true,
    }
}

fn protocol_violation(error: impl std::fmt::Display) -> AttemptError {
    AttemptError::transient(Code::Internal, format!("protocol violation: {error}"))
}

/// How often the failed attempts of one invocation are logged at WARN: at attempts 1, 2, 4, 8, ... and
/// otherwise at most once per [`FailureLog::EVERY`], so that a retry loop shows up in the log at once
/// and keeps showing up, without flooding it.
#[derive(Debug, Default)]
struct FailureLog {
    last: Option<std::time::Instant>,
}

impl FailureLog {
    /// The longest silence between two WARN lines of an invocation that keeps failing.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    fn should_log(&mut self, attempts: u32, now: std::time::Instant) -> bool {
        let due = attempts.is_power_of_two()
            || self
                .last
                .is_none_or(|last| now.duration_since(last) >= Self::EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// One pooled HTTP/2 connection.
struct Pooled {
    connection: client::Streams,
    /// Attempts streaming on it now.
    streams: Rc<Cell<usize>>,
}

/// One endpoint address's connections on this core.
#[derive(Default)]
struct EndpointPool {
    open: Vec<Pooled>,
    /// Connections being opened now.
    opening: usize,
    /// Attempts waiting for one of those; each is told when an opening ends.
    waiting: Vec<oneshot::Sender<()>>,
}

/// What an attempt does for a connection.
enum Next {
    Use(client::Streams, Rc<Cell<usize>>),
    Wait(oneshot::Receiver<()>),
    Open,
}

impl EndpointPool {
    fn next(&mut self, max_streams: usize, max_connections: usize) -> Next {
        self.open.retain(|c| !c.connection.is_closed());
        self.waiting.retain(|w| !w.is_canceled());
        let least = self.open.iter().min_by_key(|c| c.streams.get());
        let room_in_opening = self.opening * max_streams > self.waiting.len();
        let use_least = |c: &Pooled| Next::Use(c.connection.clone(), c.streams.clone());
        match least {
            Some(c) if c.streams.get() < max_streams => use_least(c),
            _ if room_in_opening => self.wait(),
            _ if self.open.len() + self.opening < max_connections => {
                self.opening += 1;
                Next::Open
            }
            Some(c) => use_least(c),
            None => self.wait(),
        }
    }

    fn wait(&mut self) -> Next {
        let (tx, rx) = oneshot::channel();
        self.waiting.push(tx);
        Next::Wait(rx)
    }
}

/// A connection being opened: counted in its endpoint's `opening` until it is pooled or given up
/// (the attempt failed or was dropped); either way the attempts waiting for it look again.
struct Opening<'a> {
    pool: &'a RefCell<HashMap<String, EndpointPool>>,
    key: String,
}

impl<'a> Opening<'a> {
    fn new(pool: &'a RefCell<HashMap<String, EndpointPool>>, key: String) -> Opening<'a> {
        Opening { pool, key }
    }

    fn opened(self, pooled: Pooled) {
        if let Some(endpoint) = self.pool.borrow_mut().get_mut(&self.key) {
            endpoint.open.push(pooled);
        }
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if let Some(endpoint) = self.pool.borrow_mut().get_mut(&self.key) {
            endpoint.opening -= 1;
            // Dropping the senders wakes every waiter: they look again.
            endpoint.waiting.clear();
        }
    }
}

/// An attempt's place on a pooled connection, released when the attempt ends.
struct StreamSlot(Rc<Cell<usize>>);

impl StreamSlot {
    fn new(streams: Rc<Cell<usize>>) -> Self {
        streams.set(streams.get() + 1);
        StreamSlot(streams)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

fn pool_key(target: &client::Target) -> String {
    format!(
        "{}|{}",
        target.address,
        target.tls_name.as_deref().unwrap_or("")
    )
}

/// What woke the attempt loop.
enum Event {
    Frame(Option<Result<Bytes, h2::Error>>),
    Completion(Option<CompletionMessage>),
    Timeout,
    /// Told to suspend (true), or the preemption channel closed (false).
    Preempted(bool),
}

fn completion_frame(completion: &CompletionMessage) -> Frame {
    Frame::message(types::COMPLETION, 0, completion)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn failed_attempts_are_logged_at_powers_of_two_and_then_once_a_minute() {
        let start = Instant::now();
        let mut log = FailureLog::default();
        let logged: Vec<u32> = (1..=40)
            .filter(|&n| log.should_log(n, start + Duration::from_secs(n as u64)))
            .collect();
        assert_eq!(logged, vec![1, 2, 4, 8, 16, 32]);
        let mut log = FailureLog::default();
        let logged: Vec<u32> = (1..=300)
            .filter(|&n| log.should_log(n, start + Duration::from_secs(n as u64)))
            .collect();
        // Powers of two, and a minute after the last line when they grow further apart.
        assert_eq!(
            logged,
            vec![1, 2, 4, 8, 16, 32, 64, 124, 128, 188, 248, 256]
        );
    }
}

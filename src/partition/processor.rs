//! The partition processor of one core: owns the partitions `p` with `p % cores == core`, their
//! invocations, per-key locks, inboxes, timers and outboxes, and applies every journal entry with its
//! effects in one write.
//!
//! Transitions are decided synchronously on the core (no lock, no other core touches this state) and
//! their writes are submitted at once through the core's ordered storage path, so storage sees them in
//! decision order. Nothing that depends on a write happens before it is durable: completions to the SDK,
//! responses to callers, messages to other partitions, the next invocation of a key.
//!
//! Between partitions the outbox pattern applies: a message (a call, a call's response, an awakeable's
//! result) is written with the journal entry that caused it, shipped in sequence order to the owner of
//! the target partition, applied there together with a per-(target, producer) sequence number that
//! de-duplicates replays, and deleted from the outbox once acknowledged.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use prost::Message;

use super::inbox::{Inboxes, Queued};
use super::outbound::{self, Outbound};
use super::router::Router;
use super::rows::{
    self, outbox_message, CompletionRequest, Entry, Idempotent, InboxEntry, OutboxMessage,
    ResponseSink, Status, Timer,
};
use super::{keys, EntryIndex, InvocationId, PartitionId, ServiceId};
use crate::config::Config;
use crate::grpc::Code;
use crate::protocol::messages::{
    complete_awakeable_entry_message, completion_message, get_state_entry_message,
    BackgroundInvokeEntryMessage, ClearStateEntryMessage, CompleteAwakeableEntryMessage,
    CompletionMessage, GetStateEntryMessage, InvokeEntryMessage, PollInputStreamEntryMessage,
    SetStateEntryMessage, SleepEntryMessage,
};
use crate::protocol::{self, types, Frame, Kind};
use crate::retry::Delays;
use crate::schema::registry::LocalSchemas;
use crate::storage::ordered::Ordered;
use crate::storage::{Table, WriteBatch};

pub use super::invocation::{Ack, Failure, NewInvocation, Outcome};

/// Work sent to the core that owns a partition.
pub enum Command {
    /// Start (or enqueue) an invocation. `reply` gets its outcome once the output is durable; `ack`
    /// fires once the invocation itself is durable (enqueued or started).
    Invoke {
        invocation: NewInvocation,
        reply: Option<oneshot::Sender<Outcome>>,
        ack: Option<Ack>,
    },
    /// A message from another partition's outbox; `ack` once applied durably (or seen before, or
    /// refused for good: an invocation past an inbox bound).
    Deliver {
        producer: PartitionId,
        sequence: u64,
        message: OutboxMessage,
        ack: Ack,
    },
    /// Fail an invocation with ABORTED and release its key; `reply` says whether it was found.
    Cancel {
        id: InvocationId,
        reply: oneshot::Sender<bool>,
    },
}

/// In-memory state of an invocation owned by this core.
struct Invocation {
    partition: PartitionId,
    service: ServiceId,
    method: String,
    keyed: bool,
    response_sink: Option<ResponseSink>,
    idempotency_key: String,
    /// Entries stored so far.
    journal_length: u32,
    /// Some while suspended: the entry indexes any of which resumes it.
    suspended: Option<Vec<EntryIndex>>,
    /// Entries completed by the runtime since the journal was last loaded.
    completed: HashSet<EntryIndex>,
    /// Completions stored ahead of their entry (awakeables completed early).
    early: HashSet<EntryIndex>,
    /// The running attempt's channel for completions (bidi streams).
    stream: Option<mpsc::UnboundedSender<CompletionMessage>>,
    /// Delays before the next retries; reset when an attempt makes progress.
    retries: Delays,
    /// Attempts started (for logs and the status row).
    attempts: u32,
    /// The last failed attempt's error (clipped) and when the next attempt starts (unix ms).
    last_failure: Option<(String, u64)>,
    /// The journal of a just-started invocation (its input entry), so the first attempt need not
    /// read back what was just written.
    fresh: Option<Entry>,
}

/// An ordered set of the nearest timers of this core; the others stay in storage.
#[derive(Default)]
struct Timers {
    loaded: BTreeSet<(u64, PartitionId, InvocationId, EntryIndex)>,
    /// Every stored timer is in `loaded` (nothing beyond the horizon in storage).
    complete: bool,
}

#[derive(Default)]
struct State {
    invocations: HashMap<InvocationId, Invocation>,
    /// Keyed instances with an invocation invoked or suspended.
    locks: HashMap<ServiceId, InvocationId>,
    inboxes: Inboxes,
    /// Callers waiting for outcomes (ingress requests on any core).
    waiters: HashMap<InvocationId, Vec<oneshot::Sender<Outcome>>>,
    timers: Timers,
    /// Outbox messages not yet acknowledged, in sequence order.
    outbound: Outbound,
    /// Next outbox sequence per owned partition.
    outbox_sequence: HashMap<PartitionId, u64>,
    /// Last sequence applied per (target partition, producing partition).
    dedup: HashMap<(PartitionId, PartitionId), u64>,
    /// Idempotent invocations that just ended, for lookups that raced their end.
    recently_finished: HashMap<InvocationId, Outcome>,
}

/// What the invoker needs to run an attempt.
pub struct AttemptContext {
    pub partition: PartitionId,
    pub service: ServiceId,
    pub method: String,
    pub journal: Vec<Entry>,
    /// The instance's state (key, value) and whether it is complete (eager) or partial.
    pub state: Vec<(Bytes, Bytes)>,
    pub partial_state: bool,
    /// Completions for this attempt's stream, while it runs.
    pub completions: mpsc::UnboundedReceiver<CompletionMessage>,
}

/// How an attempt that sent a Suspension continues.
#[derive(Debug, PartialEq, Eq)]
pub enum SuspendOutcome {
    /// A listed entry is already completed: start a new attempt now.
    Resume,
    /// Waiting for a completion.
    Suspended,
}

/// A failure of a storage write the processor depends on: its in-memory state can no longer be
/// trusted to match storage, so the process stops (and recovers from storage at restart).
fn fatal(what: &str, error: impl std::fmt::Display) -> ! {
    log::error!(
        "storage failed while {what}: {error}; stopping so that a restart recovers from storage"
    );
    std::process::abort()
}

/// The encoded result field of a completion (tags 13/14/15), appended to an entry to complete it.
fn result_bytes(result: &completion_message::Result) -> Bytes {
    CompletionMessage {
        entry_index: 0,
        result: Some(result.clone()),
    }
    .encode_to_vec()
    .into()
}

/// Decodes [`result_bytes`].
fn decode_result(bytes: &[u8]) -> Option<completion_message::Result> {
    CompletionMessage::decode(bytes).ok()?.result
}

fn outcome_result(outcome: &Outcome) -> completion_message::Result {
    match outcome {
        Ok(value) => completion_message::Result::Value(value.to_vec()),
        Err(f) => completion_message::Result::Failure(crate::protocol::messages::Failure {
            code: f.code,
            message: f.message.clone(),
        }),
    }
}

/// The outbox message that answers a calling invocation's Invoke entry.
fn response_message(sink: &ResponseSink, outcome: &Outcome) -> outbox_message::Message {
    outbox_message::Message::Complete(CompletionRequest {
        invocation_id: sink.caller.clone(),
        entry_index: sink.entry_index,
        result: result_bytes(&outcome_result(outcome)),
        entry_type: u32::from(types::INVOKE),
        source: Bytes::new(),
    })
}

/// What a completion may complete, and who sent it (named in the log line of a refusal).
#[derive(Debug, Clone, Copy)]
struct Expected {
    /// The journal entry type it completes; 0 for outbox rows written before the type was recorded,
    /// which only ever completed Invoke or Awakeable entries.
    entry_type: u16,
    /// The invocation that sent it, when it came from one (an awakeable's resolver).
    source: Option<InvocationId>,
}

impl Expected {
    /// A completion the runtime makes itself (a timer completing its Sleep entry).
    fn internal(entry_type: u16) -> Expected {
        Expected {
            entry_type,
            source: None,
        }
    }

    /// What a delivered completion says it completes.
    fn from_request(request: &CompletionRequest) -> Expected {
        Expected {
            entry_type: u16::try_from(request.entry_type).unwrap_or(u16::MAX),
            source: InvocationId::from_slice(&request.source),
        }
    }

    /// Whether an entry of type `ty` may be completed by it.
    fn admits(&self, ty: u16) -> bool {
        match self.entry_type {
            0 => ty == types::INVOKE || ty == types::AWAKEABLE,
            expected => ty == expected,
        }
    }

    /// Logs the refusal of a completion of entry `index` of `target`.
    fn refuse(&self, target: InvocationId, index: EntryIndex, why: &str) {
        let source = self.source.map(|s| s.to_hex()).unwrap_or_default();
        log::warn!(
            invocation = target.to_hex(), index, expected_type = self.entry_type, source;
            "refused a completion of entry {index}: {why}; nothing was stored"
        );
    }
}

impl Invocation {
    /// Its status row: suspended on `waiting`, or invoked.
    fn status_row(&self, waiting: Option<Vec<EntryIndex>>) -> Status {
        Status {
            service: self.service.service.clone(),
            key: self.service.key.clone(),
            method: self.method.clone(),
            keyed: self.keyed,
            suspended: waiting.is_some(),
            waiting: waiting.unwrap_or_default(),
            created_ms: rows::now_ms(),
            response_sink: self.response_sink.clone(),
            idempotency_key: self.idempotency_key.clone(),
            attempts: self.attempts,
            last_failure: self
                .last_failure
                .as_ref()
                .map(|(m, _)| m.clone())
                .unwrap_or_default(),
            next_retry_ms: self.last_failure.as_ref().map_or(0, |(_, at)| *at),
        }
    }
}

/// Runs an invocation's attempts (installed by the invoker).
pub type Driver = Rc<dyn Fn(Processor, InvocationId)>;

/// The processor of one core. Cheap to clone.
#[derive(Clone)]
pub struct Processor {
    inner: Rc<Inner>,
}

struct Inner {
    core: usize,
    cores: usize,
    partitions: u32,
    storage: Ordered,
    schemas: LocalSchemas,
    config: Arc<Config>,
    state: RefCell<State>,
    next_sequence: Cell<u64>,
    /// Starts attempts; set once at start-up (the invoker needs the processor back).
    driver: RefCell<Option<Driver>>,
    router: Router,
    /// Wakes the timer task (a nearer timer was added).
    timer_wake: mpsc::UnboundedSender<()>,
    timer_wake_rx: RefCell<Option<mpsc::UnboundedReceiver<()>>>,
    /// Wakes the outbox shipper.
    outbox_wake: mpsc::Sender<()>,
    /// Limits the WARN lines about refused invocations.
    refusals: crate::logging::RateLimit,
    outbox_wake_rx: RefCell<Option<mpsc::Receiver<()>>>,
}

impl Processor {
    /// The processor of core `core`.
    pub fn new(
        core: usize,
        storage: Ordered,
        schemas: LocalSchemas,
        config: Arc<Config>,
        router: Router,
    ) -> Processor {
        let inbox_limits = config.worker.inbox.clone();
        let (timer_wake, timer_wake_rx) = mpsc::unbounded();
        let (outbox_wake, outbox_wake_rx) = mpsc::channel(1);
        Processor {
            inner: Rc::new(Inner {
                core,
                cores: config.runtime.cores,
                partitions: config.worker.partitions,
                storage,
                schemas,
                config,
                state: RefCell::new(State {
                    inboxes: Inboxes::new(inbox_limits),
                    ..State::default()
                }),
                next_sequence: Cell::new(0),
                driver: RefCell::new(None),
                router,
                timer_wake,
                timer_wake_rx: RefCell::new(Some(timer_wake_rx)),
                outbox_wake,
                refusals: crate::logging::RateLimit::new(Duration::from_secs(1)),
                outbox_wake_rx: RefCell::new(Some(outbox_wake_rx)),
            }),
        }
    }

    /// Installs what runs an invocation's attempts (the invoker's drive loop).
    pub fn set_driver(&self, driver: Driver) {
        *self.inner.driver.borrow_mut() = Some(driver);
    }

    fn drive(&self, id: InvocationId) {
        let driver = self
            .inner
            .driver
            .borrow()
            .clone()
            .expect("driver installed at start-up");
        driver(self.clone(), id);
    }

    /// The core's view of the registered services.
    pub fn schemas(&self) -> &LocalSchemas {
        &self.inner.schemas
    }

    /// The partitions this core owns.
    pub fn owned_partitions(&self) -> impl Iterator<Item = PartitionId> + '_ {
        (0..self.inner.partitions)
            .filter(move |p| *p as usize % self.inner.cores == self.inner.core)
    }

    /// Invocations this core holds (invoked or suspended).
    pub fn invocation_count(&self) -> usize {
        self.inner.state.borrow().invocations.len()
    }

    /// The service `id` invokes, while it is here.
    pub fn service_name(&self, id: InvocationId) -> Option<String> {
        let state = self.inner.state.borrow();
        state
            .invocations
            .get(&id)
            .map(|i| i.service.service.clone())
    }

    /// Invocations this core holds, and how many of them are suspended.
    pub fn invocation_counts(&self) -> (usize, usize) {
        let state = self.inner.state.borrow();
        let suspended = state
            .invocations
            .values()
            .filter(|i| i.suspended.is_some())
            .count();
        (state.invocations.len(), suspended)
    }

    /// Invocations waiting in this core's inboxes, and the bytes of their arguments held in memory.
    pub fn inbox_usage(&self) -> (usize, usize) {
        let state = self.inner.state.borrow();
        (state.inboxes.len(), state.inboxes.argument_bytes())
    }

    /// True while `id` is invoked or suspended here.
    pub fn exists(&self, id: InvocationId) -> bool {
        self.inner.state.borrow().invocations.contains_key(&id)
    }

    fn partition_of(&self, id: &InvocationId) -> PartitionId {
        id.partition(self.inner.partitions)
    }

    /// Handles a command (synchronously decides; writes and attempts run as tasks).
    pub fn handle(&self, command: Command) {
        match command {
            Command::Invoke {
                invocation,
                reply,
                ack,
            } => {
                if invocation.idempotency_key.is_some() {
                    let this = self.clone();
                    glommio::spawn_local(async move {
                        this.invoke_idempotent(invocation, reply, ack).await
                    })
                    .detach();
                } else {
                    self.invoke(invocation, reply, ack, WriteBatch::new());
                }
            }
            Command::Deliver {
                producer,
                sequence,
                message,
                ack,
            } => self.deliver(producer, sequence, message, ack),
            Command::Cancel { id, reply } => {
                let this = self.clone();
                glommio::spawn_local(async move {
                    let found = this.cancel(id).await;
                    let _ = reply.send(found);
                })
                .detach();
            }
        }
    }

    /// Starts or enqueues an invocation; `extra` is written with it (dedup rows of delivered calls).
    fn invoke(
        &self,
        new: NewInvocation,
        reply: Option<oneshot::Sender<Outcome>>,
        ack: Option<Ack>,
        mut batch: WriteBatch,
    ) {
        let partition = self.partition_of(&new.id);
        let mut state = self.inner.state.borrow_mut();
        if state.invocations.contains_key(&new.id) || state.inboxes.contains(&new.id) {
            // Seen before (a repeated delivery, a repeated idempotent call): attach to it.
            if let Some(reply) = reply {
                self.attach(&mut state, new.id, reply);
            }
            drop(state);
            return self.write_then(batch, move || acknowledge(ack, Ok(())));
        }
        if new.keyed && state.locks.contains_key(&new.service) {
            if let Err(failure) = state.inboxes.admit(&new.service) {
                drop(state);
                return self.refuse(new, reply, ack, batch, failure);
            }
            if let Some(reply) = reply {
                self.attach(&mut state, new.id, reply);
            }
            let sequence = self.inner.next_sequence.get();
            self.inner.next_sequence.set(sequence + 1);
            batch.put(
                Table::Inbox,
                keys::inbox(partition, &new.service, sequence),
                inbox_row(&new).encode_to_vec(),
            );
            state.inboxes.push(sequence, new);
            drop(state);
            return self.write_then(batch, move || acknowledge(ack, Ok(())));
        }
        if let Some(reply) = reply {
            self.attach(&mut state, new.id, reply);
        }
        let id = new.id;
        batch.extend(self.start_locked(&mut state, partition, new));
        drop(state);
        let this = self.clone();
        self.write_then(batch, move || {
            acknowledge(ack, Ok(()));
            this.drive(id);
        });
    }

    /// Adds a caller waiting for `id`'s outcome, dropping callers that gave up; past
    /// `max_attached_callers` the new one gets RESOURCE_EXHAUSTED instead.
    fn attach(&self, state: &mut State, id: InvocationId, reply: oneshot::Sender<Outcome>) {
        let limit = self.inner.config.worker.ingress_grpc.max_attached_callers;
        let waiters = state.waiters.entry(id).or_default();
        waiters.retain(|w| !w.is_canceled());
        if waiters.len() < limit {
            waiters.push(reply);
        } else {
            let _ = reply.send(Err(Failure::new(
                Code::ResourceExhausted,
                format!(
                    "{limit} callers already wait for this invocation (worker.ingress_grpc.max_attached_callers)"
                ),
            )));
        }
    }

    /// Refuses an invocation for good (an inbox bound): its ingress caller gets `failure`, a calling
    /// invocation gets it as its call's result (through the outbox, written with `batch`), and a
    /// one-way call from an invocation is dropped with a WARN.
    fn refuse(
        &self,
        new: NewInvocation,
        reply: Option<oneshot::Sender<Outcome>>,
        ack: Option<Ack>,
        mut batch: WriteBatch,
        failure: Failure,
    ) {
        if let Some(suppressed) = self.inner.refusals.allow() {
            log::warn!(
                invocation = new.id.to_hex(), service = new.service.service.as_str(), suppressed;
                "invocation refused: {}", failure.message
            );
        }
        if let Some(reply) = reply {
            let _ = reply.send(Err(failure.clone()));
        }
        let partition = self.partition_of(&new.id);
        let failed = Err(failure.clone());
        let messages = new
            .response_sink
            .iter()
            .map(|sink| response_message(sink, &failed))
            .collect();
        let shipped = self.queue_outbox(partition, messages, &mut batch);
        let this = self.clone();
        self.write_then(batch, move || {
            this.ship(shipped);
            acknowledge(ack, Err(failure));
        });
    }

    /// Submits `batch` and runs `then` once it is durable.
    fn write_then(&self, batch: WriteBatch, then: impl FnOnce() + 'static) {
        let write = self.inner.storage.write(batch);
        glommio::spawn_local(async move {
            if let Err(e) = write.await {
                fatal("writing a transition", e);
            }
            then();
        })
        .detach();
    }

    /// Registers a new running invocation (taking its key's lock) and returns the batch that makes it
    /// durable: status row and journal entry 0.
    fn start_locked(
        &self,
        state: &mut State,
        partition: PartitionId,
        new: NewInvocation,
    ) -> WriteBatch {
        if new.keyed {
            state.locks.insert(new.service.clone(), new.id);
        }
        let status = Status {
            service: new.service.service.clone(),
            key: new.service.key.clone(),
            method: new.method.clone(),
            keyed: new.keyed,
            suspended: false,
            waiting: Vec::new(),
            created_ms: rows::now_ms(),
            response_sink: new.response_sink.clone(),
            idempotency_key: new.idempotency_key.clone().unwrap_or_default(),
            ..Status::default()
        };
        let input = Entry {
            ty: types::POLL_INPUT_STREAM,
            completed: true,
            payload: PollInputStreamEntryMessage {
                value: new.argument.to_vec(),
            }
            .encode_to_vec()
            .into(),
        };
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Status,
            keys::status(partition, &new.id),
            status.encode_to_vec(),
        );
        batch.put(
            Table::Journal,
            keys::journal(partition, &new.id, 0),
            input.encode(),
        );
        let fresh = Some(input);
        state.invocations.insert(
            new.id,
            Invocation {
                partition,
                service: new.service,
                method: new.method,
                keyed: new.keyed,
                response_sink: new.response_sink,
                idempotency_key: new.idempotency_key.unwrap_or_default(),
                journal_length: 1,
                suspended: None,
                completed: HashSet::new(),
                early: HashSet::new(),
                stream: None,
                retries: self.inner.config.worker.invoker.retry_policy.delays(),
                attempts: 0,
                last_failure: None,
                fresh,
            },
        );
        batch
    }

    /// Hands `service`'s free key to the first invocation in its inbox. When its argument is in memory
    /// the start (inbox delete, status, input entry) goes into `batch`; otherwise the key is held for it
    /// and the caller must run [`start_from_storage`](Self::start_from_storage) once `batch` is written.
    fn start_next_in_inbox(
        &self,
        state: &mut State,
        partition: PartitionId,
        service: &ServiceId,
        batch: &mut WriteBatch,
    ) -> Option<NextInLine> {
        let queued = state.inboxes.pop(service)?;
        let id = queued.invocation.id;
        if !queued.argument_in_memory {
            state.locks.insert(service.clone(), id);
            return Some(NextInLine::FromStorage(partition, Box::new(queued)));
        }
        state.inboxes.started(&id);
        batch.delete(
            Table::Inbox,
            keys::inbox(partition, service, queued.sequence),
        );
        batch.extend(self.start_locked(state, partition, queued.invocation));
        Some(NextInLine::Started(id))
    }

    /// Starts a dequeued invocation whose argument stayed in storage: reads its inbox row, then writes
    /// the start. Its key is already held for it. Returns its id once the start is durable.
    async fn start_from_storage(
        &self,
        partition: PartitionId,
        queued: Box<Queued>,
    ) -> InvocationId {
        let mut invocation = queued.invocation;
        let key = keys::inbox(partition, &invocation.service, queued.sequence);
        let row = self
            .inner
            .storage
            .get(Table::Inbox, key.clone())
            .await
            .unwrap_or_else(|e| fatal("reading an inbox row", e));
        let Some(row) = row.and_then(|r| InboxEntry::decode(r.as_slice()).ok()) else {
            fatal("reading an inbox row", "the row is missing or unreadable")
        };
        invocation.argument = row.argument;
        let id = invocation.id;
        let mut batch = WriteBatch::new();
        batch.delete(Table::Inbox, key);
        {
            let mut state = self.inner.state.borrow_mut();
            state.inboxes.started(&id);
            batch.extend(self.start_locked(&mut state, partition, invocation));
        }
        if let Err(e) = self.inner.storage.write(batch).await {
            fatal("starting an invocation from its inbox", e);
        }
        id
    }

    /// Runs what [`start_next_in_inbox`](Self::start_next_in_inbox) decided, once its batch is durable.
    fn run_next_in_line(&self, next: Option<NextInLine>) {
        match next {
            None => {}
            Some(NextInLine::Started(id)) => self.drive(id),
            Some(NextInLine::FromStorage(partition, queued)) => {
                let this = self.clone();
                glommio::spawn_local(async move {
                    let id = this.start_from_storage(partition, queued).await;
                    this.drive(id);
                })
                .detach();
            }
        }
    }

    /// An invocation with an idempotency key: attach to the running one, answer a kept result, or start.
    async fn invoke_idempotent(
        &self,
        new: NewInvocation,
        reply: Option<oneshot::Sender<Outcome>>,
        ack: Option<Ack>,
    ) {
        let partition = self.partition_of(&new.id);
        let kept = self
            .inner
            .storage
            .get(Table::Idempotency, keys::idempotency(partition, &new.id))
            .await
            .unwrap_or_else(|e| fatal("reading an idempotency key", e));
        let recent = self
            .inner
            .state
            .borrow()
            .recently_finished
            .get(&new.id)
            .cloned();
        let kept = recent.or_else(|| {
            let row = Idempotent::decode(kept?.as_slice()).ok()?;
            (row.expires_ms > rows::now_ms()).then(|| {
                if row.failed {
                    Err(Failure {
                        code: row.code,
                        message: row.message,
                    })
                } else {
                    Ok(row.value)
                }
            })
        });
        match kept {
            Some(outcome) => {
                acknowledge(ack, Ok(()));
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            None => self.invoke(new, reply, ack, WriteBatch::new()),
        }
    }

    /// Loads what an attempt needs: the journal and (eagerly, when small) the instance's state, and
    /// attaches the attempt's completion channel.
    pub async fn attempt_context(
        &self,
        id: InvocationId,
    ) -> Result<Option<AttemptContext>, crate::storage::Error> {
        let (partition, service, method, keyed, fresh) = {
            let mut state = self.inner.state.borrow_mut();
            let Some(invocation) = state.invocations.get_mut(&id) else {
                return Ok(None);
            };
            invocation.attempts += 1;
            (
                invocation.partition,
                invocation.service.clone(),
                invocation.method.clone(),
                invocation.keyed,
                invocation.fresh.take(),
            )
        };
        // A fresh unkeyed invocation has a new instance key: no state can exist for it yet.
        let read_state = keyed || fresh.is_none();
        let journal = match fresh {
            Some(input) => vec![input],
            None => {
                let rows = self
                    .inner
                    .storage
                    .scan_prefix(
                        Table::Journal,
                        keys::journal_prefix(partition, &id),
                        usize::MAX,
                    )
                    .await?;
                let mut journal = Vec::with_capacity(rows.len());
                for (index, (key, value)) in rows.iter().enumerate() {
                    let stored_index =
                        u32::from_be_bytes(key[key.len() - 4..].try_into().expect("4 bytes"));
                    assert_eq!(
                        stored_index as usize, index,
                        "journal of {id} has a gap at {index}"
                    );
                    journal.push(Entry::decode(value).expect("journal entries are written by us"));
                }
                journal
            }
        };
        let limit = self.inner.config.worker.invoker.eager_state_size_limit;
        let prefix = keys::state_prefix(partition, &service);
        // Reading a bounded number of rows tells whether the state fits.
        let max_rows = limit / 16 + 2;
        let rows = if read_state {
            self.inner
                .storage
                .scan_prefix(Table::State, prefix.clone(), max_rows)
                .await?
        } else {
            Vec::new()
        };
        let mut size = 0usize;
        let mut state_map = Vec::with_capacity(rows.len());
        let mut partial = rows.len() == max_rows;
        for (key, value) in rows.iter() {
            size += key.len() - prefix.len() + value.len();
            if size > limit {
                partial = true;
                break;
            }
            state_map.push((
                Bytes::copy_from_slice(&key[prefix.len()..]),
                Bytes::copy_from_slice(value),
            ));
        }
        if partial {
            state_map.clear();
        }
        let (tx, completions) = mpsc::unbounded();
        {
            let mut state = self.inner.state.borrow_mut();
            let Some(invocation) = state.invocations.get_mut(&id) else {
                return Ok(None);
            };
            invocation.journal_length = journal.len() as u32;
            invocation.completed.clear();
            invocation.stream = Some(tx);
        }
        Ok(Some(AttemptContext {
            partition,
            service,
            method,
            journal,
            state: state_map,
            partial_state: partial,
            completions,
        }))
    }

    /// The attempt ended: no more completions go to its stream.
    pub fn detach(&self, id: InvocationId) {
        if let Some(invocation) = self.inner.state.borrow_mut().invocations.get_mut(&id) {
            invocation.stream = None;
        }
    }

    /// Appends an entry the SDK sent at `index` with its effects, durably. Returns the completion to
    /// send back (an answered GetState, an ack of a custom entry, a call to an unknown service, an
    /// awakeable completed early), if any.
    pub async fn append(
        &self,
        id: InvocationId,
        index: EntryIndex,
        frame: &Frame,
    ) -> Result<Option<CompletionMessage>, AppendError> {
        let (partition, service, early) = {
            let state = self.inner.state.borrow();
            let invocation = state.invocations.get(&id).ok_or(AppendError::Gone)?;
            (
                invocation.partition,
                invocation.service.clone(),
                invocation.early.contains(&index),
            )
        };
        let kind = protocol::kind(frame.ty).ok_or(AppendError::Protocol(format!(
            "unknown message type {:#06x}",
            frame.ty
        )))?;
        let decode_error =
            |e: prost::DecodeError| AppendError::Protocol(format!("entry {index}: {e}"));
        let mut batch = WriteBatch::new();
        let mut entry = Entry {
            ty: frame.ty,
            completed: kind == Kind::Completable && frame.flag_bit(),
            payload: frame.payload.clone(),
        };
        let mut completion = None;
        let mut outbox = Vec::new();
        let mut timer = None;
        match frame.ty {
            types::GET_STATE if !entry.completed => {
                let get =
                    GetStateEntryMessage::decode(frame.payload.clone()).map_err(decode_error)?;
                let value = self
                    .inner
                    .storage
                    .get(Table::State, keys::state(partition, &service, &get.key))
                    .await
                    .map_err(AppendError::Storage)?;
                let (result, completion_result) = match value {
                    Some(v) => (
                        get_state_entry_message::Result::Value(v.clone()),
                        completion_message::Result::Value(v),
                    ),
                    None => (
                        get_state_entry_message::Result::Empty(()),
                        completion_message::Result::Empty(()),
                    ),
                };
                let completed = GetStateEntryMessage {
                    key: get.key,
                    result: Some(result),
                };
                entry.payload = completed.encode_to_vec().into();
                entry.completed = true;
                completion = Some(CompletionMessage {
                    entry_index: index,
                    result: Some(completion_result),
                });
            }
            types::SET_STATE => {
                let set =
                    SetStateEntryMessage::decode(frame.payload.clone()).map_err(decode_error)?;
                batch.put(
                    Table::State,
                    keys::state(partition, &service, &set.key),
                    set.value,
                );
            }
            types::CLEAR_STATE => {
                let clear =
                    ClearStateEntryMessage::decode(frame.payload.clone()).map_err(decode_error)?;
                batch.delete(Table::State, keys::state(partition, &service, &clear.key));
            }
            types::GET_STATE | types::POLL_INPUT_STREAM => {}
            types::SLEEP if !entry.completed => {
                let sleep =
                    SleepEntryMessage::decode(frame.payload.clone()).map_err(decode_error)?;
                batch.put(
                    Table::Timers,
                    keys::timer(partition, sleep.wake_up_time, &id, index),
                    Timer { invoke: None }.encode_to_vec(),
                );
                timer = Some(sleep.wake_up_time);
            }
            types::INVOKE if !entry.completed => {
                let invoke =
                    InvokeEntryMessage::decode(frame.payload.clone()).map_err(decode_error)?;
                let sink = ResponseSink {
                    caller: Bytes::copy_from_slice(id.as_bytes()),
                    entry_index: index,
                };
                match self.resolve(
                    &invoke.service_name,
                    &invoke.method_name,
                    invoke.parameter.into(),
                    Some(sink),
                ) {
                    Ok(callee) => outbox.push(outbox_message::Message::Invoke(callee.to_request())),
                    Err(failure) => {
                        let result = outcome_result(&Err(failure));
                        let mut payload = frame.payload.to_vec();
                        payload.extend_from_slice(&result_bytes(&result));
                        entry.payload = payload.into();
                        entry.completed = true;
                        completion = Some(CompletionMessage {
                            entry_index: index,
                            result: Some(result),
                        });
                    }
                }
            }
            types::BACKGROUND_INVOKE => {
                let invoke = BackgroundInvokeEntryMessage::decode(frame.payload.clone())
                    .map_err(decode_error)?;
                match self.resolve(
                    &invoke.service_name,
                    &invoke.method_name,
                    invoke.parameter.into(),
                    None,
                ) {
                    Ok(callee) if invoke.invoke_time > rows::now_ms() => {
                        batch.put(
                            Table::Timers,
                            keys::timer(partition, invoke.invoke_time, &id, index),
                            Timer {
                                invoke: Some(callee.to_request()),
                            }
                            .encode_to_vec(),
                        );
                        timer = Some(invoke.invoke_time);
                    }
                    Ok(callee) => outbox.push(outbox_message::Message::Invoke(callee.to_request())),
                    Err(failure) => log::warn!(
                        invocation = id.to_hex();
                        "one-way call dropped: {}", failure.message
                    ),
                }
            }
            types::COMPLETE_AWAKEABLE => {
                let complete = CompleteAwakeableEntryMessage::decode(frame.payload.clone())
                    .map_err(decode_error)?;
                match parse_awakeable_id(&complete.id) {
                    Some((target, target_index)) => {
                        let result = match complete.result {
                            Some(complete_awakeable_entry_message::Result::Value(v)) => {
                                completion_message::Result::Value(v)
                            }
                            Some(complete_awakeable_entry_message::Result::Failure(f)) => {
                                completion_message::Result::Failure(f)
                            }
                            None => completion_message::Result::Value(Vec::new()),
                        };
                        outbox.push(outbox_message::Message::Complete(CompletionRequest {
                            invocation_id: Bytes::copy_from_slice(target.as_bytes()),
                            entry_index: target_index,
                            result: result_bytes(&result),
                            entry_type: u32::from(types::AWAKEABLE),
                            source: Bytes::copy_from_slice(id.as_bytes()),
                        }));
                    }
                    None => {
                        let shown: String = complete.id.chars().take(64).collect();
                        log::warn!(
                            invocation = id.to_hex();
                            "refused: CompleteAwakeable with {shown:?}, which is not an awakeable id"
                        );
                        return Err(AppendError::Refused(Failure::new(
                            Code::InvalidArgument,
                            format!("{shown:?} is not an awakeable id"),
                        )));
                    }
                }
            }
            types::INVOKE | types::SLEEP | types::AWAKEABLE => {}
            types::OUTPUT_STREAM => unreachable!("outputs end the invocation through finish()"),
            _ if kind == Kind::Custom => {
                if frame.flag_bit() {
                    // Acknowledged once durable; stored without the flag so it is never re-acked.
                    completion = Some(CompletionMessage {
                        entry_index: index,
                        result: None,
                    });
                }
            }
            _ => {
                return Err(AppendError::Protocol(format!(
                    "message type {:#06x} is not a journal entry",
                    frame.ty
                )))
            }
        }
        // An awakeable (or call) completed before its entry was stored: merge the stored completion.
        if early && kind == Kind::Completable && !entry.completed {
            let key = keys::completion(partition, &id, index);
            if let Some(stored) = self
                .inner
                .storage
                .get(Table::Completions, key.clone())
                .await
                .map_err(AppendError::Storage)?
            {
                let mut payload = entry.payload.to_vec();
                payload.extend_from_slice(&stored);
                entry.payload = payload.into();
                entry.completed = true;
                completion = Some(CompletionMessage {
                    entry_index: index,
                    result: decode_result(&stored),
                });
            }
            batch.delete(Table::Completions, key);
        }
        batch.put(
            Table::Journal,
            keys::journal(partition, &id, index),
            entry.encode(),
        );
        let sequences = self.queue_outbox(partition, outbox, &mut batch);
        let write = self.inner.storage.write(batch);
        {
            let mut state = self.inner.state.borrow_mut();
            if let Some(invocation) = state.invocations.get_mut(&id) {
                invocation.journal_length = invocation.journal_length.max(index + 1);
                invocation.early.remove(&index);
            }
        }
        write.await.map_err(AppendError::Storage)?;
        self.ship(sequences);
        if let Some(wake) = timer {
            self.add_timer(wake, partition, id, index);
        }
        let mut state = self.inner.state.borrow_mut();
        if let Some(invocation) = state.invocations.get_mut(&id) {
            // Progress: the next failure starts its backoff afresh.
            invocation.retries = self.inner.config.worker.invoker.retry_policy.delays();
            if entry.completed {
                invocation.completed.insert(index);
            }
        }
        Ok(completion)
    }

    /// Resolves a call's target: the service and method must exist; the key comes from the parameter.
    fn resolve(
        &self,
        service: &str,
        method: &str,
        parameter: Bytes,
        response_sink: Option<ResponseSink>,
    ) -> Result<NewInvocation, Failure> {
        let schemas = self.inner.schemas.get();
        let (target, m) = schemas
            .method(service, method)
            .map_err(|_| Failure::new(Code::NotFound, format!("{service}/{method} not found")))?;
        let key = target.extract_key(m, &parameter).map_err(|e| {
            Failure::new(
                Code::Internal,
                format!("cannot extract the key of {service}/{method}: {e}"),
            )
        })?;
        let keyed = key.is_some();
        let key = key.unwrap_or_else(|| uuid::Uuid::now_v7().as_bytes().to_vec());
        let service_id = ServiceId {
            service: service.to_owned(),
            key: key.into(),
        };
        Ok(NewInvocation {
            id: InvocationId::new(service_id.partition_key()),
            service: service_id,
            method: method.to_owned(),
            argument: parameter,
            keyed,
            response_sink,
            idempotency_key: None,
        })
    }

    /// Adds outbox rows for `messages` to `batch`; returns them for shipping once the batch is durable.
    fn queue_outbox(
        &self,
        partition: PartitionId,
        messages: Vec<outbox_message::Message>,
        batch: &mut WriteBatch,
    ) -> Vec<(PartitionId, u64, OutboxMessage)> {
        let mut state = self.inner.state.borrow_mut();
        messages
            .into_iter()
            .map(|message| {
                let sequence = state.outbox_sequence.entry(partition).or_insert(0);
                let seq = *sequence;
                *sequence += 1;
                let row = OutboxMessage {
                    message: Some(message),
                };
                batch.put(
                    Table::Outbox,
                    keys::outbox(partition, seq),
                    row.encode_to_vec(),
                );
                (partition, seq, row)
            })
            .collect()
    }

    /// Hands durable outbox messages to the shipper.
    fn ship(&self, messages: Vec<(PartitionId, u64, OutboxMessage)>) {
        if messages.is_empty() {
            return;
        }
        for (producer, sequence, row) in messages {
            let Some(target) = self.target_of(&row) else {
                log::error!(partition = producer, sequence; "undecodable outbox message; dropped");
                self.delete_outbox_row(producer, sequence);
                continue;
            };
            let message = outbound::Message {
                producer,
                target,
                sequence,
                row,
            };
            self.inner.state.borrow_mut().outbound.push(message);
        }
        self.wake_shipper();
    }

    /// The partition an outbox message is for (`None`: undecodable).
    fn target_of(&self, row: &OutboxMessage) -> Option<PartitionId> {
        target_id(row).map(|id| self.partition_of(&id))
    }

    fn wake_shipper(&self) {
        // Capacity 1: a pending wake-up already covers this one.
        let _ = self.inner.outbox_wake.clone().try_send(());
    }

    fn delete_outbox_row(&self, producer: PartitionId, sequence: u64) {
        let mut batch = WriteBatch::new();
        batch.delete(Table::Outbox, keys::outbox(producer, sequence));
        let write = self.inner.storage.write(batch);
        glommio::spawn_local(async move {
            if let Err(e) = write.await {
                fatal("deleting a shipped outbox message", e);
            }
        })
        .detach();
    }

    /// Outbox messages waiting to be shipped and in flight on this core.
    pub fn outbox_usage(&self) -> (usize, usize) {
        let state = self.inner.state.borrow();
        (state.outbound.backlog(), state.outbound.in_flight())
    }

    /// The delay before the next retry of `id`, or `None` when its attempts are exhausted.
    pub fn next_retry(&self, id: InvocationId) -> Option<Duration> {
        self.inner
            .state
            .borrow_mut()
            .invocations
            .get_mut(&id)
            .and_then(|i| i.retries.next())
    }

    /// An attempt of `id` failed with `message`; the next starts after `retry_in`. Stored in its status
    /// row for operators (`restatectl invocations list` shows it backing off), without waiting.
    pub fn record_failure(&self, id: InvocationId, message: &str, retry_in: Duration) {
        const MESSAGE_CHARS_MAX: usize = 256;
        let batch = {
            let mut state = self.inner.state.borrow_mut();
            let Some(invocation) = state.invocations.get_mut(&id) else {
                return;
            };
            let clipped: String = message.chars().take(MESSAGE_CHARS_MAX).collect();
            let next_ms = rows::now_ms() + retry_in.as_millis() as u64;
            invocation.last_failure = Some((clipped, next_ms));
            let waiting = invocation.suspended.clone();
            let mut batch = WriteBatch::new();
            batch.put(
                Table::Status,
                keys::status(invocation.partition, &id),
                invocation.status_row(waiting).encode_to_vec(),
            );
            batch
        };
        self.write_then(batch, || {});
    }

    /// Attempts started for `id`.
    pub fn attempts(&self, id: InvocationId) -> u32 {
        self.inner
            .state
            .borrow()
            .invocations
            .get(&id)
            .map_or(0, |i| i.attempts)
    }

    /// The SDK suspended waiting for any of `indexes`; `completed` are the entries the attempt knows
    /// completed (the processor adds those completed while the attempt ran).
    pub async fn suspend(
        &self,
        id: InvocationId,
        indexes: Vec<EntryIndex>,
        completed: &HashSet<EntryIndex>,
    ) -> SuspendOutcome {
        let batch = {
            let mut state = self.inner.state.borrow_mut();
            let Some(invocation) = state.invocations.get_mut(&id) else {
                return SuspendOutcome::Suspended;
            };
            invocation.stream = None;
            if indexes
                .iter()
                .any(|i| completed.contains(i) || invocation.completed.contains(i))
            {
                return SuspendOutcome::Resume;
            }
            let status = invocation.status_row(Some(indexes.clone()));
            invocation.suspended = Some(indexes);
            let mut batch = WriteBatch::new();
            batch.put(
                Table::Status,
                keys::status(invocation.partition, &id),
                status.encode_to_vec(),
            );
            batch
        };
        if let Err(e) = self.inner.storage.write(batch).await {
            fatal("suspending an invocation", e);
        }
        SuspendOutcome::Suspended
    }

    /// Completes entry `index` of `id` with `result` (tags 13/14/15 bytes), writing `extra` with it.
    /// Resumes the invocation if it waits for that entry; forwards to its stream if one is open.
    ///
    /// Only an existing, not yet completed entry of the expected type is completed: anything else (a
    /// forged awakeable id pointing at a Sleep or Invoke entry, an index past the journal's end, an entry
    /// already completed) is refused with a WARN and nothing of it is stored; `extra` (the delivery's
    /// de-duplication row) is written either way.
    fn complete(
        &self,
        id: InvocationId,
        index: EntryIndex,
        result: Bytes,
        expected: Expected,
        extra: WriteBatch,
        then: impl FnOnce() + 'static,
    ) {
        let length = {
            let state = self.inner.state.borrow();
            state.invocations.get(&id).map(|i| i.journal_length)
        };
        match length {
            None => {
                log::debug!(invocation = id.to_hex(), index; "completion for an invocation that ended");
                self.write_then(extra, then);
            }
            Some(length) if index >= length => {
                expected.refuse(id, index, &format!("its journal has {length} entries"));
                self.write_then(extra, then);
            }
            Some(_) => {
                let this = self.clone();
                glommio::spawn_local(async move {
                    this.complete_stored(id, index, result, expected, extra, then)
                        .await
                })
                .detach();
            }
        }
    }

    /// [`complete`](Self::complete) for an entry that is in the journal: checks it, then completes it.
    async fn complete_stored(
        &self,
        id: InvocationId,
        index: EntryIndex,
        result: Bytes,
        expected: Expected,
        mut extra: WriteBatch,
        then: impl FnOnce() + 'static,
    ) {
        let partition = self.partition_of(&id);
        let key = keys::journal(partition, &id, index);
        let stored = self
            .inner
            .storage
            .get(Table::Journal, key.clone())
            .await
            .unwrap_or_else(|e| fatal("reading an entry to complete", e));
        let refusal = match stored.as_deref().and_then(Entry::decode) {
            None => Err("the entry is not stored".to_owned()),
            Some(entry) if !expected.admits(entry.ty) => {
                Err(format!("entry {index} has type {:#06x}", entry.ty))
            }
            Some(entry) if entry.completed => Err(format!("entry {index} is already completed")),
            Some(entry) => Ok(entry),
        };
        let mut entry = match refusal {
            Ok(entry) => entry,
            Err(why) => {
                expected.refuse(id, index, &why);
                return self.write_then(extra, then);
            }
        };
        let mut payload = entry.payload.to_vec();
        payload.extend_from_slice(&result);
        entry.payload = payload.into();
        entry.completed = true;
        extra.put(Table::Journal, key, entry.encode());
        let resume = self.mark_completed(id, index, &mut extra);
        if let Err(e) = self.inner.storage.write(extra).await {
            fatal("completing an entry", e);
        }
        then();
        let stream = {
            let state = self.inner.state.borrow();
            state.invocations.get(&id).and_then(|i| i.stream.clone())
        };
        if let Some(stream) = stream {
            let _ = stream.unbounded_send(CompletionMessage {
                entry_index: index,
                result: decode_result(&result),
            });
        }
        if resume {
            self.drive(id);
        }
    }

    /// Records in memory that entry `index` of `id` is completed; if the invocation was suspended on
    /// it, it is marked running (its status row goes into `batch`). Returns whether it must resume.
    fn mark_completed(&self, id: InvocationId, index: EntryIndex, batch: &mut WriteBatch) -> bool {
        let mut state = self.inner.state.borrow_mut();
        let Some(invocation) = state.invocations.get_mut(&id) else {
            return false;
        };
        invocation.completed.insert(index);
        let waiting = invocation
            .suspended
            .as_ref()
            .is_some_and(|w| w.contains(&index));
        if waiting {
            invocation.suspended = None;
            let status = invocation.status_row(None);
            batch.put(
                Table::Status,
                keys::status(invocation.partition, &id),
                status.encode_to_vec(),
            );
        }
        waiting
    }

    /// Ends an invocation with `outcome`: its journal and status go, its caller (if an invocation) is
    /// answered through the outbox, its key passes to the next invocation in the inbox (all in the same
    /// write), and ingress callers get the outcome once that is durable.
    pub async fn finish(&self, id: InvocationId, outcome: Outcome) {
        let (batch, next, shipped) = {
            let mut state = self.inner.state.borrow_mut();
            let Some(invocation) = state.invocations.remove(&id) else {
                return;
            };
            let p = invocation.partition;
            let mut batch = WriteBatch::new();
            // Point deletes, not a range delete: RocksDB fragments every range tombstone in the memtable
            // each time an iterator opens, which made every scan slower as invocations ended.
            for index in 0..invocation.journal_length {
                batch.delete(Table::Journal, keys::journal(p, &id, index));
            }
            for index in &invocation.early {
                batch.delete(Table::Completions, keys::completion(p, &id, *index));
            }
            batch.delete(Table::Status, keys::status(p, &id));
            if !invocation.idempotency_key.is_empty() {
                let retention = self.inner.config.worker.ingress_grpc.idempotency_retention;
                let row = match &outcome {
                    Ok(value) => Idempotent {
                        failed: false,
                        value: value.clone(),
                        expires_ms: rows::now_ms() + retention.as_millis() as u64,
                        ..Default::default()
                    },
                    Err(f) => Idempotent {
                        failed: true,
                        code: f.code,
                        message: f.message.clone(),
                        expires_ms: rows::now_ms() + retention.as_millis() as u64,
                        ..Default::default()
                    },
                };
                batch.put(
                    Table::Idempotency,
                    keys::idempotency(p, &id),
                    row.encode_to_vec(),
                );
                state.recently_finished.insert(id, outcome.clone());
                let this = self.clone();
                glommio::spawn_local(async move {
                    glommio::timer::sleep(Duration::from_secs(10)).await;
                    this.inner.state.borrow_mut().recently_finished.remove(&id);
                })
                .detach();
            }
            let mut next = None;
            if invocation.keyed {
                state.locks.remove(&invocation.service);
                next = self.start_next_in_inbox(&mut state, p, &invocation.service, &mut batch);
            }
            drop(state);
            let messages = invocation
                .response_sink
                .iter()
                .map(|sink| response_message(sink, &outcome))
                .collect();
            let shipped = self.queue_outbox(p, messages, &mut batch);
            (batch, next, shipped)
        };
        if let Err(e) = self.inner.storage.write(batch).await {
            fatal("ending an invocation", e);
        }
        self.ship(shipped);
        let waiters = self.inner.state.borrow_mut().waiters.remove(&id);
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(outcome.clone());
        }
        self.run_next_in_line(next);
    }

    /// Fails `id` with ABORTED wherever it is (running, suspended, in an inbox). False if unknown.
    async fn cancel(&self, id: InvocationId) -> bool {
        let aborted = Err(Failure::new(Code::Aborted, "the invocation was cancelled"));
        if self.exists(id) {
            self.finish(id, aborted).await;
            return true;
        }
        let removed = self.inner.state.borrow_mut().inboxes.remove(&id);
        let Some(queued) = removed else {
            return self.cancel_starting(id).await;
        };
        let p = self.partition_of(&id);
        let service = &queued.invocation.service;
        let mut batch = WriteBatch::new();
        batch.delete(Table::Inbox, keys::inbox(p, service, queued.sequence));
        let messages = queued
            .invocation
            .response_sink
            .iter()
            .map(|sink| response_message(sink, &aborted))
            .collect();
        let shipped = self.queue_outbox(p, messages, &mut batch);
        if let Err(e) = self.inner.storage.write(batch).await {
            fatal("cancelling a queued invocation", e);
        }
        self.ship(shipped);
        let waiters = self.inner.state.borrow_mut().waiters.remove(&id);
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(aborted.clone());
        }
        true
    }

    /// Cancels an invocation that left its inbox and is being started from storage (a moment): waits,
    /// bounded, until it runs, then fails it. False if it is unknown.
    async fn cancel_starting(&self, id: InvocationId) -> bool {
        const WAIT_STEPS_MAX: usize = 1000;
        for _ in 0..WAIT_STEPS_MAX {
            if !self.inner.state.borrow().inboxes.contains(&id) {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        if !self.exists(id) {
            return false;
        }
        let aborted = Err(Failure::new(Code::Aborted, "the invocation was cancelled"));
        self.finish(id, aborted).await;
        true
    }

    /// Applies a message from another partition's outbox, once.
    fn deliver(&self, producer: PartitionId, sequence: u64, message: OutboxMessage, ack: Ack) {
        let Some(target) = target_id(&message) else {
            log::error!("undecodable outbox message from partition {producer}; dropped");
            let _ = ack.send(Ok(()));
            return;
        };
        let target_partition = self.partition_of(&target);
        {
            let mut state = self.inner.state.borrow_mut();
            let last = state.dedup.get(&(target_partition, producer)).copied();
            if last.is_some_and(|last| sequence <= last) {
                let _ = ack.send(Ok(()));
                return;
            }
            state.dedup.insert((target_partition, producer), sequence);
        }
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Dedup,
            keys::dedup(target_partition, producer),
            sequence.to_be_bytes().to_vec(),
        );
        match message.message {
            Some(outbox_message::Message::Invoke(request)) => {
                match NewInvocation::from_request(request) {
                    Some(invocation) => self.invoke(invocation, None, Some(ack), batch),
                    None => self.write_then(batch, move || {
                        let _ = ack.send(Ok(()));
                    }),
                }
            }
            Some(outbox_message::Message::Complete(c)) => {
                let expected = Expected::from_request(&c);
                self.complete(
                    target,
                    c.entry_index,
                    c.result,
                    expected,
                    batch,
                    move || {
                        let _ = ack.send(Ok(()));
                    },
                )
            }
            None => unreachable!("checked above"),
        }
    }

    /// Ships outbox messages to the owners of their targets: per (producer, target) pair one at a time in
    /// sequence order, pairs in parallel up to `worker.outbox.max_in_flight`; each is deleted once
    /// acknowledged.
    async fn run_shipper(self) {
        let Some(mut wake) = self.inner.outbox_wake_rx.borrow_mut().take() else {
            return;
        };
        let window = self.inner.config.worker.outbox.max_in_flight;
        loop {
            let next = self.inner.state.borrow_mut().outbound.next(window);
            match next {
                Some(message) => {
                    let this = self.clone();
                    glommio::spawn_local(async move { this.ship_one(message).await }).detach();
                }
                None => {
                    if wake.next().await.is_none() {
                        return;
                    }
                }
            }
        }
    }

    /// Delivers one outbox message and deletes it once acknowledged.
    async fn ship_one(&self, message: outbound::Message) {
        let pair = (message.producer, message.target);
        let (ack, acked) = oneshot::channel();
        let command = Command::Deliver {
            producer: message.producer,
            sequence: message.sequence,
            message: message.row,
            ack,
        };
        if self.inner.router.owner(message.target) == self.inner.core {
            self.handle(command);
        } else if self
            .inner
            .router
            .send(message.target, command)
            .await
            .is_err()
        {
            return; // shutting down: the outbox row stays and is shipped after restart
        }
        if acked.await.is_err() {
            return;
        }
        self.delete_outbox_row(message.producer, message.sequence);
        self.inner.state.borrow_mut().outbound.shipped(pair);
        self.wake_shipper();
    }

    /// Registers a durable timer in memory (if it is among the nearest).
    fn add_timer(&self, wake: u64, partition: PartitionId, id: InvocationId, index: EntryIndex) {
        let limit = self.inner.config.worker.timers.num_timers_in_memory_limit;
        let mut state = self.inner.state.borrow_mut();
        let timers = &mut state.timers;
        let key = (wake, partition, id, index);
        let beyond = timers.loaded.last().is_some_and(|last| key > *last);
        if !timers.complete && beyond {
            return; // storage has nearer ones still to load; this one waits there
        }
        timers.loaded.insert(key);
        if timers.loaded.len() > limit {
            timers.loaded.pop_last();
            timers.complete = false;
        }
        drop(state);
        let _ = self.inner.timer_wake.unbounded_send(());
    }

    /// Loads the nearest timers of every owned partition (at most the in-memory limit).
    async fn load_timers(&self) -> Result<(), crate::storage::Error> {
        let limit = self.inner.config.worker.timers.num_timers_in_memory_limit;
        let mut loaded = BTreeSet::new();
        let mut complete = true;
        let partitions: Vec<PartitionId> = self.owned_partitions().collect();
        for p in partitions {
            let rows = self
                .inner
                .storage
                .scan_prefix(Table::Timers, keys::partition(p), limit)
                .await?;
            if rows.len() == limit {
                complete = false;
            }
            for (key, _) in rows {
                if let Some((wake, id, index)) = keys::parse_timer(&key) {
                    loaded.insert((wake, p, id, index));
                }
            }
        }
        while loaded.len() > limit {
            loaded.pop_last();
            complete = false;
        }
        let mut state = self.inner.state.borrow_mut();
        // Timers added while loading are in storage too: the scan or a later load finds them.
        state.timers.loaded = loaded;
        state.timers.complete = complete;
        Ok(())
    }

    /// Fires timers in wake-up order.
    async fn run_timers(self) {
        let Some(mut wake) = self.inner.timer_wake_rx.borrow_mut().take() else {
            return;
        };
        loop {
            let (next, reload) = {
                let state = self.inner.state.borrow();
                (state.timers.loaded.first().copied(), !state.timers.complete)
            };
            let Some((at, partition, id, index)) = next else {
                if reload {
                    if let Err(e) = self.load_timers().await {
                        fatal("loading timers", e);
                    }
                    if self.inner.state.borrow().timers.loaded.is_empty() {
                        self.inner.state.borrow_mut().timers.complete = true;
                    }
                    continue;
                }
                if wake.next().await.is_none() {
                    return;
                }
                continue;
            };
            let now = rows::now_ms();
            if at > now {
                let sleep = glommio::timer::sleep(Duration::from_millis(at - now));
                futures::pin_mut!(sleep);
                let woken = wake.next();
                futures::pin_mut!(woken);
                if let futures::future::Either::Right((None, _)) =
                    futures::future::select(sleep, woken).await
                {
                    return;
                }
                continue;
            }
            self.inner.state.borrow_mut().timers.loaded.pop_first();
            self.fire(at, partition, id, index).await;
        }
    }

    async fn fire(&self, at: u64, partition: PartitionId, id: InvocationId, index: EntryIndex) {
        log::debug!(core = self.inner.core, wake = at, partition; "timer fired");
        let key = keys::timer(partition, at, &id, index);
        let row = self
            .inner
            .storage
            .get(Table::Timers, key.clone())
            .await
            .unwrap_or_else(|e| fatal("reading a timer", e));
        let Some(row) = row.and_then(|r| Timer::decode(r.as_slice()).ok()) else {
            return; // already fired (a reload raced the delete)
        };
        let mut batch = WriteBatch::new();
        batch.delete(Table::Timers, key);
        match row.invoke {
            None => {
                let result = result_bytes(&completion_message::Result::Empty(()));
                let expected = Expected::internal(types::SLEEP);
                self.complete(id, index, result, expected, batch, || {});
            }
            Some(request) => {
                let shipped = self.queue_outbox(
                    partition,
                    vec![outbox_message::Message::Invoke(request)],
                    &mut batch,
                );
                if let Err(e) = self.inner.storage.write(batch).await {
                    fatal("firing a delayed call", e);
                }
                self.ship(shipped);
            }
        }
    }

    /// Rebuilds this core's partitions from storage and restarts their invocations, timers and outbox
    /// shipping. Runs before the core accepts work.
    pub async fn recover(&self) -> Result<usize, crate::storage::Error> {
        let partitions: Vec<PartitionId> = self.owned_partitions().collect();
        let mut to_drive = Vec::new();
        let mut max_sequence = 0u64;
        for p in partitions {
            let statuses = self
                .inner
                .storage
                .scan_prefix(Table::Status, keys::partition(p), usize::MAX)
                .await?;
            for (key, value) in statuses {
                let Some(id) = InvocationId::from_slice(&key[4..]) else {
                    continue;
                };
                let Ok(status) = Status::decode(value.as_slice()) else {
                    log::error!(invocation = id.to_hex(); "unreadable status row; skipped");
                    continue;
                };
                let service = ServiceId {
                    service: status.service,
                    key: status.key,
                };
                let journal = self
                    .inner
                    .storage
                    .scan_prefix(Table::Journal, keys::journal_prefix(p, &id), usize::MAX)
                    .await?;
                let early: HashSet<EntryIndex> = self
                    .inner
                    .storage
                    .scan_prefix(Table::Completions, keys::journal_prefix(p, &id), usize::MAX)
                    .await?
                    .iter()
                    .map(|(k, _)| u32::from_be_bytes(k[k.len() - 4..].try_into().expect("4 bytes")))
                    .collect();
                let completed = |i: &EntryIndex| {
                    journal
                        .get(*i as usize)
                        .and_then(|(_, v)| Entry::decode(v))
                        .is_some_and(|e| e.completed)
                };
                let suspended = status.suspended.then_some(status.waiting);
                let resume = suspended.as_ref().is_none_or(|w| w.iter().any(completed));
                let mut state = self.inner.state.borrow_mut();
                if status.keyed {
                    state.locks.insert(service.clone(), id);
                }
                state.invocations.insert(
                    id,
                    Invocation {
                        partition: p,
                        service,
                        method: status.method,
                        keyed: status.keyed,
                        response_sink: status.response_sink,
                        idempotency_key: status.idempotency_key,
                        journal_length: journal.len() as u32,
                        suspended: if resume { None } else { suspended },
                        completed: HashSet::new(),
                        early,
                        stream: None,
                        retries: self.inner.config.worker.invoker.retry_policy.delays(),
                        attempts: status.attempts,
                        last_failure: (!status.last_failure.is_empty())
                            .then(|| (status.last_failure.clone(), status.next_retry_ms)),
                        fresh: None,
                    },
                );
                drop(state);
                if resume {
                    to_drive.push(id);
                }
            }
            max_sequence = max_sequence.max(self.recover_inbox(p).await?);
            for (key, value) in self
                .inner
                .storage
                .scan_prefix(Table::Dedup, keys::partition(p), usize::MAX)
                .await?
            {
                let producer = u32::from_be_bytes(key[4..8].try_into().expect("4 bytes"));
                let last = u64::from_be_bytes(value.as_slice().try_into().unwrap_or([0; 8]));
                self.inner
                    .state
                    .borrow_mut()
                    .dedup
                    .insert((p, producer), last);
            }
            let outbox = self
                .inner
                .storage
                .scan_prefix(Table::Outbox, keys::partition(p), usize::MAX)
                .await?;
            let mut next_outbox = 0;
            let mut pending = Vec::new();
            // One partition's outbox: messages for every target (a call's argument each); bounded by
            // what the partition produced and had not shipped when it stopped.
            for (key, value) in outbox {
                let sequence = u64::from_be_bytes(key[4..12].try_into().expect("8 bytes"));
                next_outbox = sequence + 1;
                if let Ok(message) = OutboxMessage::decode(value.as_slice()) {
                    pending.push((p, sequence, message));
                }
            }
            // Sequences must grow across restarts while targets still hold dedup rows for old ones: they
            // continue after the outbox's last one, and never below the wall clock in microseconds.
            let mut state = self.inner.state.borrow_mut();
            state
                .outbox_sequence
                .insert(p, next_outbox.max(now_micros()));
            drop(state);
            self.ship(pending);
        }
        self.inner.next_sequence.set(max_sequence);
        self.load_timers().await?;
        // Inboxes whose key is free (should not happen: ending and popping are one write).
        let orphaned: Vec<ServiceId> = {
            let state = self.inner.state.borrow();
            state
                .inboxes
                .services()
                .filter(|s| !state.locks.contains_key(*s))
                .cloned()
                .collect()
        };
        for service in orphaned {
            let p = (service.partition_key() % u64::from(self.inner.partitions)) as PartitionId;
            let mut batch = WriteBatch::new();
            let next = {
                let mut state = self.inner.state.borrow_mut();
                self.start_next_in_inbox(&mut state, p, &service, &mut batch)
            };
            self.inner.storage.write(batch).await?;
            match next {
                None => {}
                Some(NextInLine::Started(id)) => to_drive.push(id),
                Some(NextInLine::FromStorage(p, queued)) => {
                    to_drive.push(self.start_from_storage(p, queued).await)
                }
            }
        }
        glommio::spawn_local(self.clone().run_timers()).detach();
        glommio::spawn_local(self.clone().run_shipper()).detach();
        self.wake_shipper();
        let count = to_drive.len();
        for id in to_drive {
            self.drive(id);
        }
        Ok(count)
    }

    /// Loads partition `p`'s inboxes in bounded chunks, keeping arguments in memory only within the
    /// budget. Returns the next free inbox sequence number.
    async fn recover_inbox(&self, p: PartitionId) -> Result<u64, crate::storage::Error> {
        // Small: a row holds a whole argument (up to max_message_size), and a chunk is held at once.
        const CHUNK_ROWS: usize = 16;
        let mut next_sequence = 0;
        let mut start = keys::partition(p);
        let end = crate::storage::prefix_end(&start);
        loop {
            let rows = self
                .inner
                .storage
                .scan(Table::Inbox, start.clone(), end.clone(), CHUNK_ROWS)
                .await?;
            for (key, value) in &rows {
                let (Some((service, sequence)), Ok(row)) =
                    (keys::parse_inbox(key), InboxEntry::decode(value.as_slice()))
                else {
                    log::error!(partition = p; "unreadable inbox row; skipped");
                    continue;
                };
                let Some(id) = InvocationId::from_slice(&row.invocation_id) else {
                    log::error!(partition = p; "inbox row with a bad invocation id; skipped");
                    continue;
                };
                next_sequence = next_sequence.max(sequence + 1);
                let invocation = NewInvocation {
                    id,
                    service,
                    method: row.method,
                    argument: row.argument,
                    keyed: true,
                    response_sink: row.response_sink,
                    idempotency_key: Some(row.idempotency_key).filter(|k| !k.is_empty()),
                };
                self.inner
                    .state
                    .borrow_mut()
                    .inboxes
                    .push(sequence, invocation);
            }
            match rows.last() {
                Some((last, _)) if rows.len() == CHUNK_ROWS => {
                    start = last.clone();
                    start.push(0);
                }
                _ => return Ok(next_sequence),
            }
        }
    }

    /// Deletes expired idempotency results of this core's partitions (run periodically).
    pub async fn purge_idempotency(&self) -> Result<usize, crate::storage::Error> {
        let now = rows::now_ms();
        let mut purged = 0;
        let partitions: Vec<PartitionId> = self.owned_partitions().collect();
        for p in partitions {
            let rows = self
                .inner
                .storage
                .scan_prefix(Table::Idempotency, keys::partition(p), usize::MAX)
                .await?;
            let mut batch = WriteBatch::new();
            for (key, value) in rows {
                if Idempotent::decode(value.as_slice()).map_or(true, |r| r.expires_ms <= now) {
                    batch.delete(Table::Idempotency, key);
                    purged += 1;
                }
            }
            self.inner.storage.write(batch).await?;
        }
        Ok(purged)
    }
}

/// Microseconds since the Unix epoch.
fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The invocation an outbox message is for (`None`: undecodable).
fn target_id(row: &OutboxMessage) -> Option<InvocationId> {
    match &row.message {
        Some(outbox_message::Message::Invoke(r)) => InvocationId::from_slice(&r.invocation_id),
        Some(outbox_message::Message::Complete(c)) => InvocationId::from_slice(&c.invocation_id),
        None => None,
    }
}

/// Sends `result` to the sender of an invocation, if it waits for it.
fn acknowledge(ack: Option<Ack>, result: Result<(), Failure>) {
    if let Some(ack) = ack {
        let _ = ack.send(result);
    }
}

/// The inbox row of an invocation that waits for its key.
fn inbox_row(new: &NewInvocation) -> InboxEntry {
    InboxEntry {
        invocation_id: Bytes::copy_from_slice(new.id.as_bytes()),
        method: new.method.clone(),
        argument: new.argument.clone(),
        created_ms: rows::now_ms(),
        response_sink: new.response_sink.clone(),
        idempotency_key: new.idempotency_key.clone().unwrap_or_default(),
    }
}

/// Who gets the key of an instance whose invocation ended.
enum NextInLine {
    /// This invocation; its start is in the ending's batch.
    Started(InvocationId),
    /// This one, whose argument must be read from its inbox row first (the key is held for it).
    FromStorage(PartitionId, Box<Queued>),
}

/// Parses a 0.4.1 awakeable id: base64url_nopad(invocation id ++ u32_be(entry index)).
pub fn parse_awakeable_id(id: &str) -> Option<(InvocationId, EntryIndex)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(id.trim_end_matches('='))
        .ok()?;
    if bytes.len() != InvocationId::LEN + 4 {
        return None;
    }
    let invocation = InvocationId::from_slice(&bytes[..InvocationId::LEN])?;
    let index = u32::from_be_bytes(bytes[InvocationId::LEN..].try_into().ok()?);
    Some((invocation, index))
}

/// Why an entry could not be appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The invocation is no longer here (ended or cancelled).
    #[error("the invocation is gone")]
    Gone,
    /// The SDK broke the protocol (retried: a fixed SDK may behave).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// Storage failed (transient).
    #[error("storage: {0}")]
    Storage(crate::storage::Error),
    /// The entry asks for something that can never succeed (e.g. completing an awakeable with an id
    /// that is not one): the invocation fails with this.
    #[error("{}", .0.message)]
    Refused(Failure),
}

impl AppendError {
    /// Whether a new attempt may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, AppendError::Gone | AppendError::Refused(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awakeable_ids_round_trip_the_sdk_format() {
        let id = InvocationId::new(42);
        let mut raw = id.as_bytes().to_vec();
        raw.extend_from_slice(&7u32.to_be_bytes());
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(parse_awakeable_id(&encoded), Some((id, 7)));
        assert_eq!(parse_awakeable_id("not base64!"), None);
        assert_eq!(parse_awakeable_id("AAAA"), None);
    }

    #[test]
    fn completion_results_are_the_entry_result_fields() {
        let bytes = result_bytes(&completion_message::Result::Value(b"v".to_vec()));
        // tag 14 (value), length 1.
        assert_eq!(bytes.as_ref(), &[0x72, 0x01, b'v']);
        assert_eq!(
            decode_result(&bytes),
            Some(completion_message::Result::Value(b"v".to_vec()))
        );
        let empty = result_bytes(&completion_message::Result::Empty(()));
        assert_eq!(empty.as_ref(), &[0x6a, 0x00]);
    }
}

//! The shell around a core's [state machine](super::state_machine): it receives commands, reads what a
//! transition needs from storage first, applies the transition, submits its batch at once through the
//! core's ordered storage path (so storage applies batches in decision order), and runs the
//! transition's actions once that batch is durable: answering callers and senders, resuming attempts
//! (through the invoker's driver), shipping outbox messages, forwarding completions to running attempts,
//! arming timers. Fresh invocations start at once, right after their batch is submitted. Channels
//! live here, keyed by the plain ids the state machine hands out.
//!
//! Three tasks produce commands besides the router's queue: the timer task (fires due timers in
//! wake-up order, reading the rows of all those due at once and deciding their firings without
//! waiting for durability in between, and reloads the nearest from storage), the outbox shipper
//! (delivers durable messages to their target's core and acknowledges them), and recovery (rows read
//! at start-up). None of them calls back into a transition half-way: each reads, then applies whole
//! commands.
//!
//! Between partitions the outbox pattern applies: a message (a call, a call's response, an awakeable's
//! result) is written with the journal entry that caused it, shipped in sequence order to the owner of
//! the target partition, applied there together with a per-(target, producer) sequence number that
//! de-duplicates replays, and deleted from the outbox once acknowledged.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use prost::Message;

use super::outbound::{self, Outbound};
use super::router::{Inbox, Router};
use super::rows::{self, Entry, Idempotent, InboxEntry, Timer};
use super::state_cache::StateCache;
use super::state_machine::{
    self, entries, AckId, Action, CallerId, Clock, Effect, Effects, Env, Limits, Reply, Resolve,
    Resolved, State, TimerKey,
};
use super::tally::Tally;
use super::transient::{Holds, Routed};
use super::{effects, keys, EntryIndex, InvocationId, PartitionId};
use crate::config::Config;
use crate::grpc::Code;
use crate::protocol::messages::{CompletionMessage, GetStateEntryMessage};
use crate::protocol::Frame;
use crate::schema::registry::LocalSchemas;
use crate::storage::ordered::Ordered;
use crate::storage::{Table, WriteBatch};

pub use super::command::Command;
pub use super::invocation::{Ack, Failure, NewInvocation, Outcome};
pub use super::state_machine::codec::parse_awakeable_id;
pub use super::state_machine::{AppendError, SuspendOutcome};

/// What the invoker needs to run an attempt.
pub struct AttemptContext {
    pub partition: PartitionId,
    pub service: super::ServiceId,
    pub method: String,
    /// The endpoint (id) the invocation is pinned to; empty: its first attempt picks one.
    pub endpoint: String,
    pub journal: Vec<Entry>,
    /// The instance's state (key, value) and whether it is complete (eager) or partial.
    pub state: Vec<(Bytes, Bytes)>,
    pub partial_state: bool,
    /// Completions for this attempt's stream, while it runs.
    pub completions: crate::local_queue::Receiver<CompletionMessage>,
}

/// A failure of a storage write the processor depends on: its in-memory state can no longer be
/// trusted to match storage, so the process stops (and recovers from storage at restart).
fn fatal(what: &str, error: impl std::fmt::Display) -> ! {
    log::error!(
        "storage failed while {what}: {error}; stopping so that a restart recovers from storage"
    );
    std::process::abort()
}

/// Runs an invocation's attempts (installed by the invoker).
pub type Driver = Rc<dyn Fn(Processor, InvocationId)>;

/// The wall clock and UUIDv7 ids.
struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        rows::now_ms()
    }

    fn fresh_uuid(&self) -> [u8; 16] {
        *uuid::Uuid::now_v7().as_bytes()
    }
}

/// A state read the cache knows is in flight; ends it uncached unless `ended` (see
/// [`StateCache::end_read`]).
struct PendingRead<'a> {
    cache: &'a RefCell<StateCache>,
    service: &'a super::ServiceId,
    ended: bool,
}

impl Drop for PendingRead<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.cache.borrow_mut().end_read(self.service, None);
        }
    }
}

/// Rows an eager state read asks for: reading a bounded number tells whether the state fits
/// `limit` bytes (every row holds at least a few bytes of key and value).
fn eager_state_max_rows(limit: usize) -> usize {
    limit / 16 + 2
}

/// Call targets from the core's view of the registered services.
struct SchemaResolver(LocalSchemas);

impl Resolve for SchemaResolver {
    fn resolve(&self, service: &str, method: &str, parameter: &Bytes) -> Result<Resolved, Failure> {
        let schemas = self.0.get();
        let (target, m) = schemas
            .method(service, method)
            .map_err(|_| Failure::new(Code::NotFound, format!("{service}/{method} not found")))?;
        let key = target.extract_key(m, parameter).map_err(|e| {
            Failure::new(
                Code::Internal,
                format!("cannot extract the key of {service}/{method}: {e}"),
            )
        })?;
        Ok(Resolved { key })
    }

    fn endpoint(&self, service: &str) -> Option<String> {
        let schemas = self.0.get();
        let service = schemas.services.get(service)?;
        schemas
            .endpoints
            .contains_key(&service.endpoint_id)
            .then(|| service.endpoint_id.clone())
    }
}

/// A submitted transition waiting for its batch to be durable: then its actions run and its reply
/// goes back to whoever submitted it.
struct Submitted {
    durable: Pin<Box<dyn Future<Output = Result<(), crate::storage::Error>>>>,
    actions: Vec<Action>,
    reply: Option<Reply>,
    done: oneshot::Sender<Option<Reply>>,
}

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
    resolver: SchemaResolver,
    limits: Limits,
    config: Arc<Config>,
    state: RefCell<State>,
    /// Complete states of recently run keyed instances (`worker.invoker.state_cache_bytes`).
    state_cache: RefCell<StateCache>,
    /// While a purge of expired idempotency results reads a chunk: the ids whose result row was
    /// written since that read was submitted (see [`Processor::purge_idempotency`]).
    purging: RefCell<Option<HashSet<InvocationId>>>,
    /// Channels of the callers and senders the state machine knows by id.
    channels: RefCell<Channels>,
    /// Outbox messages not yet acknowledged, in sequence order.
    outbound: RefCell<Outbound>,
    /// Starts attempts; set once at start-up (the invoker needs the processor back).
    driver: RefCell<Option<Driver>>,
    router: Router,
    /// Wakes the timer task (a nearer timer was added).
    timer_wake: mpsc::UnboundedSender<()>,
    timer_wake_rx: RefCell<Option<mpsc::UnboundedReceiver<()>>>,
    /// Wakes the outbox shipper.
    outbox_wake: mpsc::Sender<()>,
    outbox_wake_rx: RefCell<Option<mpsc::Receiver<()>>>,
    /// Limits the WARN lines about refused invocations.
    refusals: crate::logging::RateLimit,
    /// Rows of fresh invocations held back from storage (see [`super::transient`]).
    holds: RefCell<Holds>,
    /// The hold expiry task, parked while no hold is open.
    holds_opened: Cell<Option<std::task::Waker>>,
    /// Transitions whose actions wait for their batch, in submission order (see [`Processor::submit`]).
    /// Bounded by the work in flight on the core, as the ordered storage path's queue is.
    acting: crate::local_queue::Sender<Submitted>,
}

/// The shell's half of the callers, senders and attempts the state machine refers to by id.
#[derive(Default)]
struct Channels {
    next: u64,
    /// Callers handed to a command, not yet attached or answered.
    callers: HashMap<CallerId, oneshot::Sender<Outcome>>,
    /// Callers waiting for an invocation's outcome.
    waiters: HashMap<InvocationId, Vec<oneshot::Sender<Outcome>>>,
    acks: HashMap<AckId, Ack>,
    /// The running attempt's completion stream, per invocation.
    streams: HashMap<InvocationId, crate::local_queue::Sender<CompletionMessage>>,
}

impl Channels {
    fn caller(&mut self, reply: Option<oneshot::Sender<Outcome>>) -> Option<CallerId> {
        let reply = reply?;
        self.next += 1;
        self.callers.insert(self.next, reply);
        Some(self.next)
    }

    fn ack(&mut self, ack: Option<Ack>) -> Option<AckId> {
        let ack = ack?;
        self.next += 1;
        self.acks.insert(self.next, ack);
        Some(self.next)
    }
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
        let (timer_wake, timer_wake_rx) = mpsc::unbounded();
        let (outbox_wake, outbox_wake_rx) = mpsc::channel(1);
        let (acting, acting_rx) = crate::local_queue::unbounded();
        let limits = Limits {
            partitions: config.worker.partitions,
            cores: config.runtime.cores,
            timers_in_memory: config.worker.timers.num_timers_in_memory_limit,
            idempotency_retention_ms: config.worker.ingress_grpc.idempotency_retention.as_millis()
                as u64,
            idempotency_recent_ms: config.worker.ingress_grpc.idempotency_recent.as_millis() as u64,
        };
        let holds = Holds::new(
            config.worker.storage_rocksdb.transient_hold.as_millis() as u64,
            config.worker.storage_rocksdb.transient_hold_bytes,
        );
        let processor = Processor {
            inner: Rc::new(Inner {
                core,
                cores: config.runtime.cores,
                partitions: config.worker.partitions,
                storage,
                resolver: SchemaResolver(schemas),
                limits,
                state: RefCell::new(State::new(config.worker.inbox.clone())),
                state_cache: RefCell::new(StateCache::new(
                    config.worker.invoker.state_cache_bytes,
                    config.worker.invoker.eager_state_size_limit,
                    eager_state_max_rows(config.worker.invoker.eager_state_size_limit),
                )),
                purging: RefCell::new(None),
                config,
                channels: RefCell::default(),
                outbound: RefCell::default(),
                driver: RefCell::new(None),
                router,
                timer_wake,
                timer_wake_rx: RefCell::new(Some(timer_wake_rx)),
                outbox_wake,
                outbox_wake_rx: RefCell::new(Some(outbox_wake_rx)),
                refusals: crate::logging::RateLimit::new(Duration::from_secs(1)),
                holds: RefCell::new(holds),
                holds_opened: Cell::new(None),
                acting,
            }),
        };
        glommio::spawn_local(processor.clone().run_actions(acting_rx)).detach();
        processor
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
        &self.inner.resolver.0
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
        self.inner.state.borrow().invocation_counts()
    }

    /// Invocations waiting in this core's inboxes, and the bytes of their arguments held in memory.
    pub fn inbox_usage(&self) -> (usize, usize) {
        let state = self.inner.state.borrow();
        (state.inboxes.len(), state.inboxes.argument_bytes())
    }

    /// Outbox messages waiting to be shipped and in flight on this core.
    pub fn outbox_usage(&self) -> (usize, usize) {
        let outbound = self.inner.outbound.borrow();
        (outbound.backlog(), outbound.in_flight())
    }

    /// Durable timers loaded in memory on this core.
    pub fn timers_loaded(&self) -> usize {
        self.inner.state.borrow().timers.len()
    }

    /// Rows recovery could not read on this core.
    pub fn corrupt_rows(&self) -> u64 {
        self.inner.state.borrow().corrupt_rows
    }

    /// True while `id` is invoked or suspended here.
    pub fn exists(&self, id: InvocationId) -> bool {
        self.inner.state.borrow().invocations.contains_key(&id)
    }

    /// Attempts started for `id`.
    pub fn attempts(&self, id: InvocationId) -> u32 {
        let state = self.inner.state.borrow();
        state.invocations.get(&id).map_or(0, |i| i.attempts)
    }

    fn partition_of(&self, id: &InvocationId) -> PartitionId {
        id.partition(self.inner.partitions)
    }

    /// Serves the core's command queue until all senders are gone.
    pub async fn serve(self, mut inbox: Inbox) {
        while let Some(command) = inbox.next().await {
            self.handle(command);
        }
    }

    /// Applies `command` now and submits its batch; the returned future completes once the batch is
    /// durable and the actions ran, with the command's reply.
    fn apply(&self, command: state_machine::Command) -> impl Future<Output = Option<Reply>> {
        let effects = self.transition(command);
        self.submit(effects)
    }

    /// Applies `command` now and submits its batch; returns the reply at once, with a future that
    /// completes once the batch is durable and its actions ran.
    fn decide(
        &self,
        command: state_machine::Command,
    ) -> (Option<Reply>, impl Future<Output = ()> + 'static) {
        let mut effects = self.transition(command);
        let reply = effects.reply.take();
        // The durable future forwards an entry's completion (or ack) to the endpoint: that one is
        // visible; an entry with none only bounds the attempt's pending appends.
        let visible = matches!(reply, Some(Reply::Appended(Ok(Some(_)))));
        let durable = self.submit_with(effects, visible);
        (reply, async move {
            durable.await;
        })
    }

    /// Runs the state machine on `command`.
    fn transition(&self, command: state_machine::Command) -> Effects {
        let mut effects = Effects::default();
        let env = Env {
            clock: &SystemClock,
            resolver: &self.inner.resolver,
            limits: &self.inner.limits,
        };
        let held = self.inner.holds.borrow_mut().before(&command);
        self.submit_held(held);
        let tally = Tally::before(self, &command);
        self.inner
            .state
            .borrow_mut()
            .apply(&env, command, &mut effects);
        tally.after(&effects);
        if log::log_enabled!(log::Level::Debug) {
            for write in &effects.writes {
                if let Effect::PutTimer(key, _) = write {
                    log::debug!(core = self.inner.core, wake = key.wake_ms, partition = key.partition; "timer armed");
                }
            }
        }
        effects
    }

    /// Submits `effects`' batch now and starts the fresh invocations it starts; its actions run once
    /// it is durable, **after the actions of every transition submitted before it** (a caller attached
    /// by one transition must be there when the next one answers it), whether or not the returned
    /// future is polled; it completes with the reply after them. A command without writes or actions
    /// answers at once; one with actions only still waits for the writes submitted before it.
    fn submit(&self, effects: Effects) -> impl Future<Output = Option<Reply>> {
        self.submit_with(effects, false)
    }

    /// [`submit`](Self::submit); `visible`: whoever awaits the returned future acts outside the
    /// runtime once it completes. When that is not so, the transition has no reply to wait for, and
    /// its actions only attach callers (which wait for a later, visible end), the batch's fsync is
    /// deferred ([`WriteBatch::defer_sync`]): a fresh invocation's start or a journal entry with no
    /// completion does not cost an fsync of its own; the next visible write's sync covers it.
    /// Such a transition's writes may also be held back ([`super::transient`]): then nothing is
    /// written now, and its actions (attaching callers) run once those submitted before it ran.
    fn submit_with(&self, effects: Effects, visible: bool) -> impl Future<Output = Option<Reply>> {
        let Effects {
            writes,
            actions,
            reply,
            start_now,
        } = effects;
        let (queued, immediate) = if writes.is_empty() && actions.is_empty() {
            (None, reply)
        } else {
            self.cache_state_writes(&writes);
            self.note_kept_results(&writes);
            let invisible = !visible
                && reply.is_none()
                && actions.iter().all(|a| matches!(a, Action::Attach { .. }));
            let routed =
                self.inner
                    .holds
                    .borrow_mut()
                    .route(writes, &start_now, invisible, rows::now_ms());
            self.wake_hold_expiry();
            let durable: Pin<Box<dyn Future<Output = Result<(), crate::storage::Error>>>> =
                match routed {
                    // Nothing to write now: the actions (callers to attach) still run after those
                    // of every transition submitted before.
                    Routed::Held => Box::pin(std::future::ready(Ok(()))),
                    Routed::Submit { writes, elided } => {
                        if elided > 0 {
                            crate::metrics::transient_rows_elided(elided);
                        }
                        let mut batch = WriteBatch::new();
                        effects::to_batch(&writes, &mut batch);
                        if invisible {
                            batch.defer_sync();
                        }
                        Box::pin(self.inner.storage.write(batch))
                    }
                };
            let (done, answered) = oneshot::channel();
            let submitted = Submitted {
                durable,
                actions,
                reply,
                done,
            };
            // The runner lives as long as the processor: sending cannot fail.
            let _ = self.inner.acting.send(submitted);
            (Some(answered), None)
        };
        // After the batch: the attempt's reads are submitted behind it.
        for id in start_now {
            self.drive(id);
        }
        async move {
            match queued {
                Some(answered) => answered.await.ok().flatten(),
                None => immediate,
            }
        }
    }

    /// The core's ordered storage path. A read of rows that may be held (see [`super::transient`])
    /// goes through [`storage_after`](Self::storage_after) or
    /// [`storage_after_instance`](Self::storage_after_instance) instead; no other table ever has
    /// held rows, and no barrier waits for them (their transitions have nothing visible).
    fn storage(&self) -> &Ordered {
        &self.inner.storage
    }

    /// The ordered storage path for a read of `id`'s journal or completions: its held rows first.
    fn storage_after(&self, id: InvocationId) -> &Ordered {
        let writes = self.inner.holds.borrow_mut().take(&id);
        self.submit_held(writes);
        &self.inner.storage
    }

    /// The ordered storage path for a read of `service`'s state: the rows held by the invocation
    /// that holds it first.
    fn storage_after_instance(&self, service: &super::ServiceId) -> &Ordered {
        let writes = self.inner.holds.borrow_mut().take_instance(service);
        self.submit_held(writes);
        &self.inner.storage
    }

    /// Submits the rows of every open hold.
    fn flush_holds(&self) {
        let writes = self.inner.holds.borrow_mut().take_all();
        self.submit_held(writes);
    }

    /// Submits held rows, as a batch with nothing waiting on it.
    fn submit_held(&self, writes: Vec<Effect>) {
        if writes.is_empty() {
            return;
        }
        let mut batch = WriteBatch::new();
        effects::to_batch(&writes, &mut batch);
        batch.defer_sync();
        let (done, _) = oneshot::channel();
        let submitted = Submitted {
            durable: Box::pin(self.inner.storage.write(batch)),
            actions: Vec::new(),
            reply: None,
            done,
        };
        let _ = self.inner.acting.send(submitted);
    }

    /// Writes the holds open for `worker.storage_rocksdb.transient_hold` or longer, every half of
    /// it while any is open, forever (not started when holding is off). Parked while none is open: an
    /// idle core does not wake up for it.
    pub async fn expire_holds(self) {
        let hold = self.inner.config.worker.storage_rocksdb.transient_hold;
        if hold.is_zero() {
            return;
        }
        let every = (hold / 2).max(Duration::from_millis(1));
        loop {
            std::future::poll_fn(|cx| {
                if self.inner.holds.borrow().is_empty() {
                    self.inner.holds_opened.set(Some(cx.waker().clone()));
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
            glommio::timer::sleep(every).await;
            let expired = self.inner.holds.borrow_mut().take_expired(rows::now_ms());
            self.submit_held(expired);
        }
    }

    /// Wakes the parked hold expiry task once a hold is open.
    fn wake_hold_expiry(&self) {
        if !self.inner.holds.borrow().is_empty() {
            if let Some(waker) = self.inner.holds_opened.take() {
                waker.wake();
            }
        }
    }

    /// Writes every held row and waits until it is durable (a graceful shutdown).
    pub async fn write_holds(&self) -> Result<(), crate::storage::Error> {
        self.flush_holds();
        self.storage().write(WriteBatch::new()).await
    }

    /// Keeps the state cache in step with the state writes of a batch being submitted now.
    fn cache_state_writes(&self, writes: &[state_machine::Effect]) {
        let mut cache = self.inner.state_cache.borrow_mut();
        let mut changed = false;
        for write in writes {
            match write {
                state_machine::Effect::PutState(_, service, key, value) => {
                    cache.write(service, key, Some(value))
                }
                state_machine::Effect::DeleteState(_, service, key) => {
                    cache.write(service, key, None)
                }
                _ => continue,
            }
            changed = true;
        }
        if changed {
            crate::metrics::state_cache_resized(cache.bytes());
        }
    }

    /// Runs submitted transitions' actions in submission order, each once its batch is durable
    /// (batches become durable in that order too, so none waits behind a later one).
    async fn run_actions(self, mut queue: crate::local_queue::Receiver<Submitted>) {
        while let Some(submitted) = queue.recv().await {
            if let Err(e) = submitted.durable.await {
                fatal("writing a transition", e);
            }
            self.run(submitted.actions);
            let _ = submitted.done.send(submitted.reply);
        }
    }

    /// [`apply`](Self::apply) without waiting (its actions run all the same).
    fn apply_detached(&self, command: state_machine::Command) {
        drop(self.apply(command));
    }

    /// Runs the actions of a durable transition, in order.
    fn run(&self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Attach { id, caller } => self.attach(id, caller),
                Action::Answer { caller, outcome } => {
                    let reply = self.inner.channels.borrow_mut().callers.remove(&caller);
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
                Action::Ended { id, outcome } => {
                    let (waiters, _stream) = {
                        let mut channels = self.inner.channels.borrow_mut();
                        (channels.waiters.remove(&id), channels.streams.remove(&id))
                    };
                    for waiter in waiters.into_iter().flatten() {
                        let _ = waiter.send(outcome.clone());
                    }
                }
                Action::Ack { ack, result } => {
                    let ack = self.inner.channels.borrow_mut().acks.remove(&ack);
                    if let Some(ack) = ack {
                        let _ = ack.send(result);
                    }
                }
                Action::Drive(id) => self.drive(id),
                Action::Ship(messages) => self.ship(messages),
                Action::Forward { id, completion } => self.forward(id, completion),
                Action::WakeTimers => {
                    let _ = self.inner.timer_wake.unbounded_send(());
                }
                Action::ReadInboxRow {
                    id,
                    partition,
                    service,
                    sequence,
                } => self.read_inbox_row(id, partition, &service, sequence),
                Action::Refused {
                    id,
                    service,
                    failure,
                } => {
                    if let Some(suppressed) = self.inner.refusals.allow() {
                        log::warn!(
                            invocation = id.to_hex(), service = service.as_str(), suppressed;
                            "invocation refused: {}", failure.message
                        );
                    }
                }
            }
        }
    }

    /// Adds a caller waiting for `id`'s outcome, dropping callers that gave up; past
    /// `max_attached_callers` the new one gets RESOURCE_EXHAUSTED instead.
    fn attach(&self, id: InvocationId, caller: CallerId) {
        let limit = self.inner.config.worker.ingress_grpc.max_attached_callers;
        let mut channels = self.inner.channels.borrow_mut();
        let Some(reply) = channels.callers.remove(&caller) else {
            return;
        };
        let waiters = channels.waiters.entry(id).or_default();
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

    /// Handles a command (decided now, or after the reads it needs).
    pub fn handle(&self, command: Command) {
        match command {
            Command::Invoke {
                invocation,
                reply,
                ack,
            } => {
                let (caller, ack) = {
                    let mut channels = self.inner.channels.borrow_mut();
                    (channels.caller(reply), channels.ack(ack))
                };
                if invocation.idempotency_key.is_some() {
                    let this = self.clone();
                    glommio::spawn_local(async move {
                        this.invoke_idempotent(invocation, caller, ack).await
                    })
                    .detach();
                } else {
                    self.apply_detached(state_machine::Command::Invoke {
                        invocation,
                        caller,
                        ack,
                        kept: None,
                    });
                }
            }
            Command::Deliver {
                producer,
                sequence,
                message,
                ack,
            } => {
                let ack = self
                    .inner
                    .channels
                    .borrow_mut()
                    .ack(Some(ack))
                    .expect("an ack");
                self.deliver(producer, sequence, message, ack);
            }
            Command::Cancel { id, reply } => {
                // Answered as an action of the transition (see the state machine's `cancel`).
                let (answer, answered) = oneshot::channel();
                let caller = self.inner.channels.borrow_mut().caller(Some(answer));
                self.apply_detached(state_machine::Command::Cancel { id, caller });
                glommio::spawn_local(async move {
                    // Dropped unanswered (shutting down): so is `reply`, and the issuer learns so.
                    if let Ok(outcome) = answered.await {
                        let _ = reply.send(outcome.is_ok());
                    }
                })
                .detach();
            }
            Command::Persist { id, reply } => {
                let held = self.inner.holds.borrow_mut().take(&id);
                self.submit_held(held);
                let durable = self.storage().write(WriteBatch::new());
                glommio::spawn_local(async move {
                    if durable.await.is_ok() {
                        let _ = reply.send(());
                    }
                })
                .detach();
            }
        }
    }

    /// An invocation with an idempotency key: reads its kept result first.
    async fn invoke_idempotent(
        &self,
        invocation: NewInvocation,
        caller: Option<CallerId>,
        ack: Option<AckId>,
    ) {
        let partition = self.partition_of(&invocation.id);
        // Registered before the read is submitted: if the invocation ends before the Invoke is
        // applied, the read misses its row and its outcome must stay in memory until then.
        drop(self.apply(state_machine::Command::IdempotencyLookup { id: invocation.id }));
        let kept = self
            .storage()
            .get(
                Table::Idempotency,
                keys::idempotency(partition, &invocation.id),
            )
            .await
            .unwrap_or_else(|e| fatal("reading an idempotency key", e));
        let kept = kept.and_then(|row| Idempotent::decode(row.as_slice()).ok());
        self.apply(state_machine::Command::Invoke {
            invocation,
            caller,
            ack,
            kept,
        })
        .await;
    }

    /// Applies a message from another partition's outbox; a completion reads its entry first.
    fn deliver(
        &self,
        producer: PartitionId,
        sequence: u64,
        message: rows::OutboxMessage,
        ack: AckId,
    ) {
        let entry_to_read = match &message.message {
            Some(rows::outbox_message::Message::Complete(c)) => {
                InvocationId::from_slice(&c.invocation_id)
                    .filter(|id| self.inner.state.borrow().entry_exists(id, c.entry_index))
                    .map(|id| (id, c.entry_index))
            }
            _ => None,
        };
        let command = move |entry| state_machine::Command::Deliver {
            producer,
            sequence,
            message,
            ack,
            entry,
        };
        match entry_to_read {
            None => self.apply_detached(command(None)),
            Some((id, index)) => {
                let read = self.read_entry(id, index);
                let this = self.clone();
                glommio::spawn_local(async move {
                    let entry = read.await;
                    this.apply(command(entry)).await;
                })
                .detach();
            }
        }
    }

    /// Reads entry `index` of `id` (after every write submitted so far).
    fn read_entry(
        &self,
        id: InvocationId,
        index: EntryIndex,
    ) -> impl Future<Output = Option<Entry>> {
        let key = keys::journal(self.partition_of(&id), &id, index);
        let read = self.storage_after(id).get(Table::Journal, key);
        async move {
            let row = read
                .await
                .unwrap_or_else(|e| fatal("reading an entry to complete", e));
            row.as_deref().and_then(Entry::decode)
        }
    }

    /// Reads the inbox row of an invocation starting from storage, then starts it.
    fn read_inbox_row(
        &self,
        id: InvocationId,
        partition: PartitionId,
        service: &super::ServiceId,
        sequence: u64,
    ) {
        let read = self
            .storage()
            .get(Table::Inbox, keys::inbox(partition, service, sequence));
        let this = self.clone();
        glommio::spawn_local(async move {
            let row = read
                .await
                .unwrap_or_else(|e| fatal("reading an inbox row", e));
            let row = row.and_then(|r| InboxEntry::decode(r.as_slice()).ok());
            this.apply(state_machine::Command::InboxRowRead { id, row })
                .await;
        })
        .detach();
    }

    /// Loads what an attempt needs: the journal and (eagerly, when small) the instance's state, and
    /// opens the attempt's completion stream.
    pub async fn attempt_context(
        &self,
        id: InvocationId,
    ) -> Result<Option<AttemptContext>, crate::storage::Error> {
        let plan = match self
            .apply(state_machine::Command::AttemptStarted { id })
            .await
        {
            Some(Reply::Attempt(Some(plan))) => plan,
            _ => return Ok(None),
        };
        // The stream opens before the reads: a completion decided after them reaches the attempt this
        // way, one decided before is in the journal read (the attempt ignores a completion it has).
        let (tx, completions) = crate::local_queue::unbounded();
        self.inner.channels.borrow_mut().streams.insert(id, tx);
        // A fresh unkeyed invocation has a new instance key: no state can exist for it yet.
        let read_state = plan.keyed || plan.fresh.is_none();
        let replay = plan.fresh.is_none();
        let journal = match plan.fresh {
            Some(input) => vec![input],
            None => {
                self.read_journal(plan.partition, id, plan.journal_length)
                    .await?
            }
        };
        let (state, partial_state) = if read_state {
            self.read_state(plan.partition, &plan.service, plan.keyed)
                .await?
        } else {
            (Vec::new(), false)
        };
        if replay {
            // A journal to replay holds completions, which an endpoint may see only once durable
            // (rule 2 of the module docs): wait until everything the reads saw is.
            self.storage().write(WriteBatch::new()).await?;
        }
        Ok(Some(AttemptContext {
            partition: plan.partition,
            service: plan.service,
            method: plan.method,
            endpoint: plan.endpoint,
            journal,
            state,
            partial_state,
            completions,
        }))
    }

    /// Reads a journal that memory says has `length` entries.
    async fn read_journal(
        &self,
        partition: PartitionId,
        id: InvocationId,
        length: u32,
    ) -> Result<Vec<Entry>, crate::storage::Error> {
        let prefix = keys::journal_prefix(partition, &id);
        let rows = self
            .storage_after(id)
            .scan_prefix(Table::Journal, prefix, usize::MAX)
            .await?;
        let mut journal = Vec::with_capacity(rows.len());
        for (key, value) in rows.iter() {
            let index = u32::from_be_bytes(key[key.len() - 4..].try_into().expect("4 bytes"));
            let entry = Entry::decode(value).filter(|_| index as usize == journal.len());
            let Some(entry) = entry else {
                return Err(crate::storage::Error::Corrupt(format!(
                    "journal of {id}: entry {index} unreadable or out of place"
                )));
            };
            journal.push(entry);
        }
        if journal.len() as u32 != length {
            return Err(crate::storage::Error::Corrupt(format!(
                "journal of {id} has {} entries where {length} were written",
                journal.len()
            )));
        }
        Ok(journal)
    }

    /// Reads an instance's state when it fits `eager_state_size_limit`; otherwise none, partial.
    /// Only a keyed instance's state is cached (an unkeyed invocation's instance is its own: no other
    /// invocation reads its state again).
    async fn read_state(
        &self,
        partition: PartitionId,
        service: &super::ServiceId,
        keyed: bool,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), crate::storage::Error> {
        let limit = self.inner.config.worker.invoker.eager_state_size_limit;
        // A cached state is complete and within both bounds below: it is not partial.
        if keyed {
            let cache = self.inner.state_cache.borrow();
            let cached = cache.get(service);
            crate::metrics::state_cache_lookup(cached.is_some());
            if let Some(state) = cached {
                return Ok((state, false));
            }
        }
        let prefix = keys::state_prefix(partition, service);
        // Reading a bounded number of rows tells whether the state fits.
        let max_rows = eager_state_max_rows(limit);
        let read = self.storage_after_instance(service).scan_prefix(
            Table::State,
            prefix.clone(),
            max_rows,
        );
        // Failed, or dropped (the core stops): the read ends uncached all the same.
        let mut pending = keyed.then(|| {
            self.inner.state_cache.borrow_mut().begin_read(service);
            PendingRead {
                cache: &self.inner.state_cache,
                service,
                ended: false,
            }
        });
        let rows = read.await?;
        let mut size = 0usize;
        let mut state = Vec::with_capacity(rows.len());
        let mut partial = rows.len() == max_rows;
        for (key, value) in rows.iter() {
            size += key.len() - prefix.len() + value.len();
            if size > limit {
                partial = true;
                break;
            }
            state.push((
                Bytes::copy_from_slice(&key[prefix.len()..]),
                Bytes::copy_from_slice(value),
            ));
        }
        if partial {
            state.clear();
        }
        if let Some(pending) = pending.as_mut() {
            pending.ended = true;
            let complete = (!partial).then(|| state.clone());
            let mut cache = self.inner.state_cache.borrow_mut();
            cache.end_read(service, complete);
            crate::metrics::state_cache_resized(cache.bytes());
        }
        Ok((state, partial))
    }

    /// The attempt ended: no more completions go to its stream.
    pub fn detach(&self, id: InvocationId) {
        self.inner.channels.borrow_mut().streams.remove(&id);
    }

    /// Pins `id` to `endpoint` (its first attempt's), unless it is pinned already.
    pub fn pin_endpoint(&self, id: InvocationId, endpoint: String) {
        self.apply_detached(state_machine::Command::PinEndpoint { id, endpoint });
    }

    /// Appends an entry the SDK sent at `index` with its effects: decided now (an error says why it
    /// was refused), written in order with the core's other writes. The returned receiver fires once
    /// the entry is durable; its completion, if any (an answered GetState, an ack of a custom entry, a
    /// call to an unknown service), goes to the attempt's completion stream at that moment, never
    /// before. The caller need not wait: nothing outside sees the entry before it is durable.
    pub async fn append(
        &self,
        id: InvocationId,
        index: EntryIndex,
        frame: &Frame,
    ) -> Result<oneshot::Receiver<()>, AppendError> {
        let read = self.read_for_entry(id, index, frame).await?;
        let (reply, durable) = self.decide(state_machine::Command::Append {
            id,
            index,
            frame: frame.clone(),
            read,
        });
        let result = match reply {
            Some(Reply::Appended(result)) => result,
            _ => Err(AppendError::Gone),
        };
        let completion = result.as_ref().ok().cloned().flatten();
        let (done, durable_rx) = oneshot::channel();
        let this = self.clone();
        glommio::spawn_local(async move {
            durable.await;
            if let Some(completion) = completion {
                this.forward(id, completion);
            }
            let _ = done.send(());
        })
        .detach();
        result.map(|_| durable_rx)
    }

    /// Submits a barrier now (an empty batch that is not deferrable), so every write submitted before
    /// it is fsynced without waiting for `deferred_sync_delay`. For a caller about to wait for one of
    /// those writes (an attempt bounded by its pending appends), which is a wait the deferral assumed
    /// nobody has. Nobody waits for the barrier itself: a failed write is fatal where its
    /// transition's actions run.
    pub fn sync_now(&self) {
        drop(self.storage().write(WriteBatch::new()));
    }

    /// Passes a durable completion to `id`'s running attempt, if it has one.
    fn forward(&self, id: InvocationId, completion: CompletionMessage) {
        let channels = self.inner.channels.borrow();
        if let Some(stream) = channels.streams.get(&id) {
            let _ = stream.send(completion);
        }
    }

    /// What an entry needs read before it is appended: a GetState's value, an early completion.
    async fn read_for_entry(
        &self,
        id: InvocationId,
        index: EntryIndex,
        frame: &Frame,
    ) -> Result<entries::Read, AppendError> {
        let (partition, service, early) = {
            let state = self.inner.state.borrow();
            let invocation = state.invocations.get(&id).ok_or(AppendError::Gone)?;
            (
                invocation.partition,
                invocation.service.clone(),
                state.has_early(&id, index),
            )
        };
        let storage_error = |e: crate::storage::Error| AppendError::Storage(e.to_string());
        let mut read = entries::Read::default();
        if entries::Read::needs_state(frame) {
            let get = GetStateEntryMessage::decode(frame.payload.clone())
                .map_err(|e| AppendError::Protocol(format!("entry {index}: {e}")))?;
            let key = keys::state(partition, &service, &get.key);
            let value = self
                .storage_after_instance(&service)
                .get(Table::State, key)
                .await
                .map_err(storage_error)?;
            read.state_value = Some(value.map(Bytes::from));
        }
        if early {
            let key = keys::completion(partition, &id, index);
            let stored = self
                .storage_after(id)
                .get(Table::Completions, key)
                .await
                .map_err(storage_error)?;
            read.early = stored.map(Bytes::from);
        }
        Ok(read)
    }

    /// An attempt of `id` failed with `message`; the next starts after `retry_in`. Stored in its status
    /// row for operators (`restatectl invocations list` shows it backing off), without waiting.
    pub fn record_failure(&self, id: InvocationId, message: &str, retry_in: Duration) {
        self.apply_detached(state_machine::Command::RecordFailure {
            id,
            message: message.to_owned(),
            retry_in_ms: retry_in.as_millis() as u64,
        });
    }

    /// The SDK suspended waiting for any of `indexes`; `completed` are the entries the attempt knows
    /// completed (the state machine adds those completed while the attempt ran).
    pub async fn suspend(
        &self,
        id: InvocationId,
        indexes: Vec<EntryIndex>,
        completed: &std::collections::HashSet<EntryIndex>,
    ) -> SuspendOutcome {
        self.detach(id);
        let reply = self
            .apply(state_machine::Command::Suspend {
                id,
                indexes,
                known_completed: completed.iter().copied().collect(),
            })
            .await;
        match reply {
            Some(Reply::Suspended(outcome)) => outcome,
            _ => SuspendOutcome::Suspended,
        }
    }

    /// Ends an invocation with `outcome` (see the state machine's `finish`): decided now, so the
    /// next invocation of its key may start at once; its callers are answered once it is durable.
    pub fn finish(&self, id: InvocationId, outcome: Outcome) {
        self.apply_detached(state_machine::Command::Finish { id, outcome });
    }

    /// Hands durable outbox messages to the shipper.
    fn ship(&self, messages: Vec<state_machine::Shipped>) {
        {
            let mut outbound = self.inner.outbound.borrow_mut();
            for shipped in messages {
                outbound.push(outbound::Message {
                    producer: shipped.producer,
                    target: shipped.target,
                    sequence: shipped.sequence,
                    row: shipped.row,
                });
            }
        }
        self.wake_shipper();
    }

    fn wake_shipper(&self) {
        // Capacity 1: a pending wake-up already covers this one.
        let _ = self.inner.outbox_wake.clone().try_send(());
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
            let next = self.inner.outbound.borrow_mut().next(window);
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
        self.apply_detached(state_machine::Command::OutboxAcked {
            producer: message.producer,
            sequence: message.sequence,
        });
        self.inner.outbound.borrow_mut().shipped(pair);
        self.wake_shipper();
    }

    /// Loads the nearest timers of every owned partition (at most the in-memory limit).
    async fn load_timers(&self) -> Result<(), crate::storage::Error> {
        let limit = self.inner.limits.timers_in_memory;
        self.apply(state_machine::Command::TimersLoading).await;
        let mut loaded = Vec::new();
        let mut complete = true;
        let partitions: Vec<PartitionId> = self.owned_partitions().collect();
        for p in partitions {
            let rows = self
                .storage()
                .scan_prefix(Table::Timers, keys::partition(p), limit)
                .await?;
            if rows.len() == limit {
                complete = false;
            }
            for (key, _) in rows {
                if let Some((wake_ms, id, index)) = keys::parse_timer(&key) {
                    loaded.push(TimerKey {
                        wake_ms,
                        partition: p,
                        id,
                        index,
                    });
                }
            }
        }
        self.apply(state_machine::Command::TimersLoaded {
            keys: loaded,
            complete,
        })
        .await;
        Ok(())
    }

    /// Fires timers in wake-up order, the due ones a round at a time (see [`fire_due`](Self::fire_due)).
    async fn run_timers(self) {
        let Some(mut wake) = self.inner.timer_wake_rx.borrow_mut().take() else {
            return;
        };
        loop {
            let (next, reload) = {
                let state = self.inner.state.borrow();
                (state.timers.next(), state.timers.needs_reload())
            };
            let Some(key) = next else {
                if reload {
                    if let Err(e) = self.load_timers().await {
                        fatal("loading timers", e);
                    }
                    continue;
                }
                if wake.next().await.is_none() {
                    return;
                }
                continue;
            };
            let now = rows::now_ms();
            if key.wake_ms > now {
                let sleep = glommio::timer::sleep(Duration::from_millis(key.wake_ms - now));
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
            self.fire_due(now).await;
        }
    }

    /// Fires the timers due at `now`, in wake-up order: reads the rows of all of them (and the Sleep
    /// entries they complete) at once, then decides each firing without waiting for the previous one
    /// to be durable, so that the due timers of a core share group commits instead of costing one each
    /// in series. A firing's actions still run once its batch is durable (as every transition's do),
    /// and [`Timers::fire`](state_machine::Timers::fire) takes the timer out of memory when decided,
    /// so it cannot fire twice. A timer that is no longer the nearest when its turn comes (a nearer one
    /// was armed while the rows were read) ends the round: the next round fires the nearer one first.
    async fn fire_due(&self, now: u64) {
        let due = self.inner.state.borrow().timers.due(now);
        let reads: Vec<_> = due.into_iter().map(|key| self.read_timer(key)).collect();
        for (key, row, entry) in futures::future::join_all(reads).await {
            if self.inner.state.borrow().timers.next() != Some(key) {
                return;
            }
            log::debug!(core = self.inner.core, wake = key.wake_ms, partition = key.partition; "timer fired");
            self.apply_detached(state_machine::Command::FireTimer { key, row, entry });
        }
    }

    /// Submits the reads a due timer's firing needs, at once: the Sleep entry it completes, or the row
    /// of a delayed call's timer (the invocation it starts). A Sleep's timer row holds nothing but
    /// its key: while the invocation has a Sleep entry at the timer's index (known from memory), the
    /// row the state machine wrote with that entry is there, so it is not read.
    fn read_timer(
        &self,
        key: TimerKey,
    ) -> impl Future<Output = (TimerKey, Option<Timer>, Option<Entry>)> {
        let sleeps = self.inner.state.borrow().sleeps_at(&key.id, key.index);
        let row = (!sleeps).then(|| {
            let row_key = keys::timer(key.partition, key.wake_ms, &key.id, key.index);
            self.storage().get(Table::Timers, row_key)
        });
        let entry = sleeps.then(|| self.read_entry(key.id, key.index));
        async move {
            let row = match row {
                None => Some(Timer::default()),
                Some(row) => row
                    .await
                    .unwrap_or_else(|e| fatal("reading a timer", e))
                    .and_then(|r| Timer::decode(r.as_slice()).ok()),
            };
            let entry = match entry {
                Some(entry) => entry.await,
                None => None,
            };
            (key, row, entry)
        }
    }

    /// Rebuilds this core's partitions from storage and restarts their invocations, timers and outbox
    /// shipping. Runs before the core accepts work. Returns how many invocations resume.
    pub async fn recover(&self) -> Result<usize, crate::storage::Error> {
        let env = Env {
            clock: &SystemClock,
            resolver: &self.inner.resolver,
            limits: &self.inner.limits,
        };
        let mut effects = Effects::default();
        let partitions: Vec<PartitionId> = self.owned_partitions().collect();
        for p in partitions {
            self.recover_invocations(p, &mut effects).await?;
            self.recover_inbox(p).await?;
            let storage = self.storage();
            let dedup = storage
                .scan_prefix(Table::Dedup, keys::partition(p), usize::MAX)
                .await?;
            self.inner.state.borrow_mut().recover_dedup(p, &dedup);
            // One partition's outbox: messages for every target (a call's argument each); bounded by
            // what the partition produced and had not shipped when it stopped.
            let outbox = storage
                .scan_prefix(Table::Outbox, keys::partition(p), usize::MAX)
                .await?;
            let next = storage.get(Table::Fsm, keys::outbox_next(p)).await?;
            self.inner.state.borrow_mut().recover_outbox(
                &env,
                p,
                &outbox,
                next.as_deref(),
                &mut effects,
            );
        }
        self.load_timers().await?;
        self.inner
            .state
            .borrow_mut()
            .recover_orphaned_inboxes(&env, &mut effects);
        let count = effects.start_now.len()
            + effects
                .actions
                .iter()
                .filter(|a| matches!(a, Action::Drive(_)))
                .count();
        glommio::spawn_local(self.clone().run_timers()).detach();
        glommio::spawn_local(self.clone().run_shipper()).detach();
        self.submit(effects).await;
        Ok(count)
    }

    /// Restores partition `p`'s invocations from their status, journal and completion rows.
    async fn recover_invocations(
        &self,
        p: PartitionId,
        effects: &mut Effects,
    ) -> Result<(), crate::storage::Error> {
        let storage = self.storage();
        let statuses = storage
            .scan_prefix(Table::Status, keys::partition(p), usize::MAX)
            .await?;
        for status in statuses {
            let (journal, completions) = match InvocationId::from_slice(&status.0[4..]) {
                Some(id) => {
                    let prefix = keys::journal_prefix(p, &id);
                    let journal = storage
                        .scan_prefix(Table::Journal, prefix.clone(), usize::MAX)
                        .await?;
                    let completions = storage
                        .scan_prefix(Table::Completions, prefix, usize::MAX)
                        .await?;
                    (journal, completions)
                }
                None => Default::default(),
            };
            self.inner.state.borrow_mut().recover_invocation(
                p,
                &status,
                &journal,
                &completions,
                effects,
            );
        }
        Ok(())
    }

    /// Loads partition `p`'s inboxes in bounded chunks, keeping arguments in memory only within the
    /// budget.
    async fn recover_inbox(&self, p: PartitionId) -> Result<(), crate::storage::Error> {
        // Small: a row holds a whole argument (up to max_message_size), and a chunk is held at once.
        const CHUNK_ROWS: usize = 16;
        let mut start = keys::partition(p);
        let end = crate::storage::prefix_end(&start);
        loop {
            let rows = self
                .storage()
                .scan(Table::Inbox, start.clone(), end.clone(), CHUNK_ROWS)
                .await?;
            self.inner.state.borrow_mut().recover_inbox(p, &rows);
            match rows.last() {
                Some((last, _)) if rows.len() == CHUNK_ROWS => {
                    start = last.clone();
                    start.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    /// Deletes expired idempotency results of this core's partitions (run periodically), reading
    /// them in chunks of `worker.storage_grpc.scan_chunk_rows` / `scan_chunk_bytes`.
    ///
    /// A chunk is read, and its expired rows are deleted, on the core's ordered path to storage, so
    /// the read sees every result written before it. A result written after it (an idempotency key
    /// used again after its old result expired, its new invocation ended meanwhile) is newer than
    /// what the chunk shows: its id is noted while the chunk's read is in flight
    /// (`note_kept_results`) and its row is not deleted, or a retry within the retention
    /// would run the call again. The notes start afresh with each chunk's read (a later chunk's read
    /// sees what was written before it), so they hold about one read's worth of results, not all
    /// those written during a purge of a large table.
    pub async fn purge_idempotency(&self) -> Result<usize, crate::storage::Error> {
        struct Purging<'a>(&'a RefCell<Option<HashSet<InvocationId>>>);
        impl Drop for Purging<'_> {
            fn drop(&mut self) {
                self.0.borrow_mut().take();
            }
        }
        let _purging = Purging(&self.inner.purging);
        let (max_rows, max_bytes) = {
            let grpc = &self.inner.config.worker.storage_grpc;
            (grpc.scan_chunk_rows, grpc.scan_chunk_bytes)
        };
        let mut purged = 0;
        let partitions: Vec<PartitionId> = self.owned_partitions().collect();
        for p in partitions {
            let mut start = keys::partition(p);
            let end = crate::storage::prefix_end(&start);
            loop {
                // Submitted right after: the read sees every result written until now.
                *self.inner.purging.borrow_mut() = Some(HashSet::new());
                let chunk = self
                    .storage()
                    .scan_chunk(Table::Idempotency, start, end.clone(), max_rows, max_bytes)
                    .await?;
                let batch = {
                    let rewritten = self.inner.purging.borrow();
                    let rewritten = rewritten.as_ref().expect("set before the read");
                    expired_results(&chunk.rows, rows::now_ms(), rewritten)
                };
                if !batch.is_empty() {
                    purged += batch.len();
                    self.inner.storage.write(batch).await?;
                }
                match chunk.resume {
                    Some(resume) => start = resume,
                    None => break,
                }
            }
        }
        Ok(purged)
    }

    /// Notes the ids of idempotency results in `writes` while a purge runs.
    fn note_kept_results(&self, writes: &[Effect]) {
        let mut purging = self.inner.purging.borrow_mut();
        let Some(ids) = purging.as_mut() else {
            return;
        };
        for write in writes {
            if let Effect::PutIdempotent(_, id, _) = write {
                ids.insert(*id);
            }
        }
    }
}

/// The deletes of the idempotency results in `rows` that expired by `now_ms` (or cannot be read),
/// leaving those whose id is in `rewritten`: their row was written again after `rows` were read.
fn expired_results(
    rows: &[crate::storage::Row],
    now_ms: u64,
    rewritten: &HashSet<InvocationId>,
) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for (key, value) in rows {
        let written_again = key
            .get(4..)
            .and_then(InvocationId::from_slice)
            .is_some_and(|id| rewritten.contains(&id));
        let expired = Idempotent::decode(value.as_slice()).map_or(true, |r| r.expires_ms <= now_ms);
        if expired && !written_again {
            batch.delete(Table::Idempotency, key.clone());
        }
    }
    batch
}

#[cfg(test)]
mod purge_tests {
    use super::*;

    #[test]
    fn a_purge_deletes_expired_results_but_not_one_written_again_since_its_read() {
        let id = |n: u8| InvocationId::from_parts(7, [n; 16]);
        let row = |n: u8, expires_ms: u64| {
            let value = Idempotent {
                expires_ms,
                ..Default::default()
            };
            (keys::idempotency(3, &id(n)), value.encode_to_vec())
        };
        let rows = vec![
            row(1, 1_000),                                    // expired
            row(2, 1_000),                                    // expired, but written again
            row(3, 5_000),                                    // kept
            (keys::idempotency(3, &id(4)), vec![0xff, 0xff]), // unreadable: deleted
        ];
        let rewritten = HashSet::from([id(2)]);
        let batch = expired_results(&rows, 2_000, &rewritten);
        let mut expected = WriteBatch::new();
        expected.delete(Table::Idempotency, keys::idempotency(3, &id(1)));
        expected.delete(Table::Idempotency, keys::idempotency(3, &id(4)));
        assert_eq!(batch.ops(), expected.ops());
        // Nothing rewritten: both expired rows go.
        assert_eq!(expired_results(&rows, 2_000, &HashSet::new()).len(), 3);
    }
}

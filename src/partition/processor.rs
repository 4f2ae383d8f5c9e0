//! The partition processor of one core: owns the partitions `p` with `p % cores == core`, their
//! invocations, per-key locks and inboxes, and applies every journal entry with its effects in one write.
//!
//! Transitions are decided synchronously on the core (no lock, no other core touches this state) and
//! their writes are submitted at once through the core's ordered storage path, so storage sees them in
//! decision order. Nothing that depends on a write happens before it is durable: completions to the SDK,
//! responses to callers, the next invocation of a key.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::oneshot;
use prost::Message;

use super::rows::{self, Entry, InboxEntry, Status};
use super::{keys, EntryIndex, InvocationId, PartitionId, ServiceId};
use crate::config::Config;
use crate::protocol::messages::{
    completion_message, get_state_entry_message, ClearStateEntryMessage, CompletionMessage,
    GetStateEntryMessage, PollInputStreamEntryMessage, SetStateEntryMessage,
};
use crate::protocol::{self, types, Frame, Kind};
use crate::retry::Delays;
use crate::schema::registry::LocalSchemas;
use crate::storage::ordered::Ordered;
use crate::storage::{Table, WriteBatch};

/// The result an invocation ends with: the output bytes, or a failure (gRPC code and message).
pub type Outcome = Result<Bytes, Failure>;

/// A failed invocation, as its caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// gRPC status code (1..=16; anything else is reported as UNKNOWN).
    pub code: u32,
    pub message: String,
}

impl Failure {
    /// A failure with this code and message.
    pub fn new(code: crate::grpc::Code, message: impl Into<String>) -> Failure {
        Failure {
            code: code as u32,
            message: message.into(),
        }
    }
}

/// A new invocation, as the ingress (or another invocation) asks for it.
#[derive(Debug)]
pub struct NewInvocation {
    pub id: InvocationId,
    pub service: ServiceId,
    pub method: String,
    pub argument: Bytes,
    /// Keyed or singleton: one invocation per key at a time, through the inbox.
    pub keyed: bool,
}

/// Work sent to the core that owns a partition.
pub enum Command {
    /// Start (or enqueue) an invocation; `reply` gets its outcome once the output is durable.
    Invoke {
        invocation: NewInvocation,
        reply: Option<oneshot::Sender<Outcome>>,
    },
}

/// In-memory state of an invocation owned by this core.
struct Invocation {
    partition: PartitionId,
    service: ServiceId,
    method: String,
    keyed: bool,
    /// Some while suspended: the entry indexes any of which resumes it.
    suspended: Option<Vec<EntryIndex>>,
    /// Delays before the next retries; reset when an attempt makes progress.
    retries: Delays,
    /// Attempts started (for logs).
    attempts: u32,
}

/// An invocation waiting in an inbox (mirrored in the inbox table).
struct Queued {
    sequence: u64,
    id: InvocationId,
    method: String,
    argument: Bytes,
}

#[derive(Default)]
struct State {
    invocations: HashMap<InvocationId, Invocation>,
    /// Keyed instances with an invocation invoked or suspended.
    locks: HashMap<ServiceId, InvocationId>,
    inboxes: HashMap<ServiceId, VecDeque<Queued>>,
    /// Callers waiting for outcomes (ingress requests on any core).
    waiters: HashMap<InvocationId, Vec<oneshot::Sender<Outcome>>>,
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
}

impl Processor {
    /// The processor of core `core`.
    pub fn new(
        core: usize,
        storage: Ordered,
        schemas: LocalSchemas,
        config: Arc<Config>,
    ) -> Processor {
        Processor {
            inner: Rc::new(Inner {
                core,
                cores: config.runtime.cores,
                partitions: config.worker.partitions,
                storage,
                schemas,
                config,
                state: RefCell::new(State::default()),
                next_sequence: Cell::new(0),
                driver: RefCell::new(None),
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

    /// The runtime config.
    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    /// The core's ordered storage path.
    pub fn storage(&self) -> &Ordered {
        &self.inner.storage
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

    /// Handles a command (synchronously decides; writes and attempts run as tasks).
    pub fn handle(&self, command: Command) {
        match command {
            Command::Invoke { invocation, reply } => self.invoke(invocation, reply),
        }
    }

    fn invoke(&self, new: NewInvocation, reply: Option<oneshot::Sender<Outcome>>) {
        let partition = new.id.partition(self.inner.partitions);
        let mut state = self.inner.state.borrow_mut();
        if let Some(reply) = reply {
            state.waiters.entry(new.id).or_default().push(reply);
        }
        if state.invocations.contains_key(&new.id) {
            return;
        }
        if new.keyed && state.locks.contains_key(&new.service) {
            let sequence = self.inner.next_sequence.get();
            self.inner.next_sequence.set(sequence + 1);
            let row = InboxEntry {
                invocation_id: Bytes::copy_from_slice(new.id.as_bytes()),
                method: new.method.clone(),
                argument: new.argument.clone(),
                created_ms: rows::now_ms(),
            };
            let mut batch = WriteBatch::new();
            batch.put(
                Table::Inbox,
                keys::inbox(partition, &new.service, sequence),
                row.encode_to_vec(),
            );
            state
                .inboxes
                .entry(new.service.clone())
                .or_default()
                .push_back(Queued {
                    sequence,
                    id: new.id,
                    method: new.method,
                    argument: new.argument,
                });
            drop(state);
            let write = self.inner.storage.write(batch);
            glommio::spawn_local(async move {
                if let Err(e) = write.await {
                    fatal("enqueueing an invocation", e);
                }
            })
            .detach();
            return;
        }
        let batch = self.start_locked(
            &mut state,
            partition,
            new.id,
            new.service,
            new.method,
            new.keyed,
            new.argument,
        );
        drop(state);
        self.write_then_drive(batch, new.id);
    }

    /// Registers a new running invocation (taking its key's lock) and returns the batch that makes it
    /// durable: status row and journal entry 0.
    #[allow(clippy::too_many_arguments)]
    fn start_locked(
        &self,
        state: &mut State,
        partition: PartitionId,
        id: InvocationId,
        service: ServiceId,
        method: String,
        keyed: bool,
        argument: Bytes,
    ) -> WriteBatch {
        if keyed {
            state.locks.insert(service.clone(), id);
        }
        let status = Status {
            service: service.service.clone(),
            key: service.key.clone(),
            method: method.clone(),
            keyed,
            suspended: false,
            waiting: Vec::new(),
            created_ms: rows::now_ms(),
        };
        let input = Entry {
            ty: types::POLL_INPUT_STREAM,
            completed: true,
            payload: PollInputStreamEntryMessage {
                value: argument.to_vec(),
            }
            .encode_to_vec()
            .into(),
        };
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Status,
            keys::status(partition, &id),
            status.encode_to_vec(),
        );
        batch.put(
            Table::Journal,
            keys::journal(partition, &id, 0),
            input.encode(),
        );
        state.invocations.insert(
            id,
            Invocation {
                partition,
                service,
                method,
                keyed,
                suspended: None,
                retries: self.inner.config.worker.invoker.retry_policy.delays(),
                attempts: 0,
            },
        );
        batch
    }

    fn write_then_drive(&self, batch: WriteBatch, id: InvocationId) {
        let write = self.inner.storage.write(batch);
        let this = self.clone();
        glommio::spawn_local(async move {
            if let Err(e) = write.await {
                fatal("starting an invocation", e);
            }
            this.drive(id);
        })
        .detach();
    }

    /// Loads what an attempt needs: the journal and (eagerly, when small) the instance's state.
    pub async fn attempt_context(
        &self,
        id: InvocationId,
    ) -> Result<AttemptContext, crate::storage::Error> {
        let (partition, service, method) = {
            let mut state = self.inner.state.borrow_mut();
            let invocation = state
                .invocations
                .get_mut(&id)
                .ok_or(crate::storage::Error::Closed)?;
            invocation.attempts += 1;
            (
                invocation.partition,
                invocation.service.clone(),
                invocation.method.clone(),
            )
        };
        let journal_rows = self
            .inner
            .storage
            .scan_prefix(
                Table::Journal,
                keys::journal_prefix(partition, &id),
                usize::MAX,
            )
            .await?;
        let mut journal = Vec::with_capacity(journal_rows.len());
        for (index, (key, value)) in journal_rows.iter().enumerate() {
            let stored_index =
                u32::from_be_bytes(key[key.len() - 4..].try_into().expect("4 bytes"));
            assert_eq!(
                stored_index as usize, index,
                "journal of {id} has a gap at {index}"
            );
            journal.push(Entry::decode(value).expect("journal entries are written by us"));
        }
        let limit = self.inner.config.worker.invoker.eager_state_size_limit;
        let prefix = keys::state_prefix(partition, &service);
        // Reading one row past the limit's worth tells whether the state fits.
        let rows = self
            .inner
            .storage
            .scan_prefix(Table::State, prefix.clone(), limit / 16 + 2)
            .await?;
        let mut size = 0usize;
        let mut state_map = Vec::with_capacity(rows.len());
        let mut partial = false;
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
        if rows.len() == limit / 16 + 2 {
            partial = true;
        }
        if partial {
            state_map.clear();
        }
        Ok(AttemptContext {
            partition,
            service,
            method,
            journal,
            state: state_map,
            partial_state: partial,
        })
    }

    /// Appends an entry the SDK sent at `index` with its effects, durably. Returns the completion to
    /// send back (an answered GetState, an ack of a custom entry), if any.
    pub async fn append(
        &self,
        id: InvocationId,
        index: EntryIndex,
        frame: &Frame,
    ) -> Result<Option<CompletionMessage>, AppendError> {
        let (partition, service) = {
            let state = self.inner.state.borrow();
            let invocation = state.invocations.get(&id).ok_or(AppendError::Gone)?;
            (invocation.partition, invocation.service.clone())
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
                    set.value.to_vec(),
                );
            }
            types::CLEAR_STATE => {
                let clear =
                    ClearStateEntryMessage::decode(frame.payload.clone()).map_err(decode_error)?;
                batch.delete(Table::State, keys::state(partition, &service, &clear.key));
            }
            types::GET_STATE | types::POLL_INPUT_STREAM => {}
            types::SLEEP
            | types::INVOKE
            | types::BACKGROUND_INVOKE
            | types::AWAKEABLE
            | types::COMPLETE_AWAKEABLE => {
                return Err(AppendError::Unsupported(format!(
                    "journal entry type {:#06x} is not supported by this runtime yet",
                    frame.ty
                )));
            }
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
        batch.put(
            Table::Journal,
            keys::journal(partition, &id, index),
            entry.encode(),
        );
        self.inner
            .storage
            .write(batch)
            .await
            .map_err(AppendError::Storage)?;
        // Progress: the next failure starts its backoff afresh.
        if let Some(invocation) = self.inner.state.borrow_mut().invocations.get_mut(&id) {
            invocation.retries = self.inner.config.worker.invoker.retry_policy.delays();
        }
        Ok(completion)
    }

    /// The delay before the next retry of `id`, or `None` when its attempts are exhausted.
    pub fn next_retry(&self, id: InvocationId) -> Option<std::time::Duration> {
        self.inner
            .state
            .borrow_mut()
            .invocations
            .get_mut(&id)
            .and_then(|i| i.retries.next())
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

    /// The SDK suspended waiting for any of `indexes`; `completed` are the entries known completed.
    pub async fn suspend(
        &self,
        id: InvocationId,
        indexes: Vec<EntryIndex>,
        completed: &HashSet<EntryIndex>,
    ) -> SuspendOutcome {
        if indexes.iter().any(|i| completed.contains(i)) {
            return SuspendOutcome::Resume;
        }
        let batch = {
            let mut state = self.inner.state.borrow_mut();
            let Some(invocation) = state.invocations.get_mut(&id) else {
                return SuspendOutcome::Suspended;
            };
            invocation.suspended = Some(indexes.clone());
            let status = Status {
                service: invocation.service.service.clone(),
                key: invocation.service.key.clone(),
                method: invocation.method.clone(),
                keyed: invocation.keyed,
                suspended: true,
                waiting: indexes,
                created_ms: rows::now_ms(),
            };
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

    /// Ends an invocation with `outcome`: its journal and status go, its key passes to the next
    /// invocation in the inbox (in the same write), and its callers get the outcome once that is durable.
    pub async fn finish(&self, id: InvocationId, outcome: Outcome) {
        let (batch, next) = {
            let mut state = self.inner.state.borrow_mut();
            let Some(invocation) = state.invocations.remove(&id) else {
                return;
            };
            let p = invocation.partition;
            let mut batch = WriteBatch::new();
            let prefix = keys::journal_prefix(p, &id);
            let end = crate::storage::prefix_end(&prefix).expect("ids are not all 0xff");
            batch.delete_range(Table::Journal, prefix, end);
            batch.delete(Table::Status, keys::status(p, &id));
            let mut next = None;
            if invocation.keyed {
                state.locks.remove(&invocation.service);
                let queued = state
                    .inboxes
                    .get_mut(&invocation.service)
                    .and_then(|queue| queue.pop_front());
                if state
                    .inboxes
                    .get(&invocation.service)
                    .is_some_and(|q| q.is_empty())
                {
                    state.inboxes.remove(&invocation.service);
                }
                if let Some(queued) = queued {
                    batch.delete(
                        Table::Inbox,
                        keys::inbox(p, &invocation.service, queued.sequence),
                    );
                    let start = self.start_locked(
                        &mut state,
                        p,
                        queued.id,
                        invocation.service.clone(),
                        queued.method,
                        true,
                        queued.argument,
                    );
                    batch.extend(start);
                    next = Some(queued.id);
                }
            }
            (batch, next)
        };
        if let Err(e) = self.inner.storage.write(batch).await {
            fatal("ending an invocation", e);
        }
        let waiters = self.inner.state.borrow_mut().waiters.remove(&id);
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(outcome.clone());
        }
        if let Some(next) = next {
            self.drive(next);
        }
    }

    /// Rebuilds this core's partitions from storage and restarts their invocations. Runs before the
    /// core accepts work.
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
                let suspended = status.suspended.then_some(status.waiting);
                let resume = match &suspended {
                    None => true,
                    Some(waiting) => self.any_completed(p, id, waiting).await?,
                };
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
                        suspended: if resume { None } else { suspended },
                        retries: self.inner.config.worker.invoker.retry_policy.delays(),
                        attempts: 0,
                    },
                );
                drop(state);
                if resume {
                    to_drive.push(id);
                }
            }
            let inbox = self
                .inner
                .storage
                .scan_prefix(Table::Inbox, keys::partition(p), usize::MAX)
                .await?;
            for (key, value) in inbox {
                let (Some((service, sequence)), Ok(row)) = (
                    keys::parse_inbox(&key),
                    InboxEntry::decode(value.as_slice()),
                ) else {
                    log::error!("unreadable inbox row; skipped");
                    continue;
                };
                let Some(id) = InvocationId::from_slice(&row.invocation_id) else {
                    continue;
                };
                max_sequence = max_sequence.max(sequence + 1);
                self.inner
                    .state
                    .borrow_mut()
                    .inboxes
                    .entry(service)
                    .or_default()
                    .push_back(Queued {
                        sequence,
                        id,
                        method: row.method,
                        argument: row.argument,
                    });
            }
        }
        self.inner.next_sequence.set(max_sequence);
        // Inboxes whose key is free (should not happen: finishing and popping are one write).
        let orphaned: Vec<ServiceId> = {
            let state = self.inner.state.borrow();
            state
                .inboxes
                .keys()
                .filter(|s| !state.locks.contains_key(*s))
                .cloned()
                .collect()
        };
        for service in orphaned {
            let (batch, id) = {
                let mut state = self.inner.state.borrow_mut();
                let queued = state.inboxes.get_mut(&service).and_then(|q| q.pop_front());
                let Some(queued) = queued else { continue };
                let p = queued.id.partition(self.inner.partitions);
                let mut batch = WriteBatch::new();
                batch.delete(Table::Inbox, keys::inbox(p, &service, queued.sequence));
                let id = queued.id;
                batch.extend(self.start_locked(
                    &mut state,
                    p,
                    id,
                    service.clone(),
                    queued.method,
                    true,
                    queued.argument,
                ));
                (batch, id)
            };
            self.inner.storage.write(batch).await?;
            to_drive.push(id);
        }
        let count = to_drive.len();
        for id in to_drive {
            self.drive(id);
        }
        Ok(count)
    }

    async fn any_completed(
        &self,
        p: PartitionId,
        id: InvocationId,
        indexes: &[EntryIndex],
    ) -> Result<bool, crate::storage::Error> {
        for index in indexes {
            if let Some(raw) = self
                .inner
                .storage
                .get(Table::Journal, keys::journal(p, &id, *index))
                .await?
            {
                if Entry::decode(&raw).is_some_and(|e| e.completed) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
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
    /// The entry type is not implemented (terminal).
    #[error("{0}")]
    Unsupported(String),
    /// Storage failed (transient).
    #[error("storage: {0}")]
    Storage(crate::storage::Error),
}

impl AppendError {
    /// Whether a new attempt may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, AppendError::Unsupported(_) | AppendError::Gone)
    }
}

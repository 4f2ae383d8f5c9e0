//! The partition's state machine: every decision of a core's partitions, and nothing else.
//!
//! [`State::apply`] takes one [`Command`] (plain data: ids and rows, no channels), changes the
//! in-memory [`State`] and yields [`Effects`]: the rows to write ([`Effect`], turned into one storage
//! batch by [`crate::partition::effects`]) and the [`Action`]s to run once that batch is durable
//! (answer a caller, acknowledge a sender, start an attempt, ship outbox messages, forward a completion
//! to a running attempt). Whatever it needs from storage (a state value, the entry a completion is for,
//! a kept idempotent result, a timer row, an inbox row) the shell reads first and passes in the command;
//! the time and fresh ids come from an injected [`Clock`], call targets from an injected [`Resolve`].
//! Nothing here imports glommio, rocksdb, the storage module, the wall clock or a random source, so
//! every transition runs in a unit test or in the seeded simulation (`tests/simulation.rs`) as it runs
//! in the server.
//!
//! Rules the shell keeps (and the simulation checks): batches are written in decision order, and a
//! command's actions run only once its batch is durable. A crash loses memory and unwritten batches;
//! [`recover`] rebuilds the state from the rows.
//!
//! One file per concern: [`invoke`] (start, enqueue, attach, refuse), [`entries`] (one file per journal
//! entry type), [`complete`] (completions, suspension, timers firing), [`finish`] (end, cancel),
//! [`outbox`], [`timers`], [`recover`].

pub mod complete;
pub mod entries;
pub mod finish;
pub mod invoke;
pub mod outbox;
pub mod recover;
pub mod timers;

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::Bytes;

use super::inbox::Inboxes;
use super::invocation::{Failure, NewInvocation, Outcome};
use super::rows::{Entry, Idempotent, InboxEntry, OutboxMessage, ResponseSink, Status, Timer};
use super::{EntryIndex, InvocationId, PartitionId, ServiceId};
use crate::protocol::messages::CompletionMessage;
use crate::protocol::Frame;

pub use entries::AppendError;
pub use timers::{TimerKey, Timers};

/// Identifies a caller waiting for an invocation's outcome; the shell maps it to its reply channel.
pub type CallerId = u64;
/// Identifies a sender waiting for an acknowledgement (an ingress one-way call, an outbox delivery).
pub type AckId = u64;

/// The time and fresh ids, injected (the simulation's clock is simulated).
pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// 16 fresh bytes for an id (a UUIDv7 in the server).
    fn fresh_uuid(&self) -> [u8; 16];
}

/// What a call's target is: the instance (its key from the parameter, or a fresh one) and whether it
/// is keyed. An in-memory schema lookup, no IO.
pub trait Resolve {
    /// Resolves `service/method` called with `parameter`; `Err` when it does not exist or has no key.
    fn resolve(&self, service: &str, method: &str, parameter: &Bytes) -> Result<Resolved, Failure>;

    /// The endpoint `service` is registered on now, if known: an invocation is pinned to it when it
    /// starts (in its first status row, so its first attempt need not write the row again).
    fn endpoint(&self, _service: &str) -> Option<String> {
        None
    }
}

/// A resolved call target.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The key extracted from the parameter; `None` for an unkeyed service (it gets a fresh one).
    pub key: Option<Vec<u8>>,
}

/// Configuration the transitions read.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `worker.partitions`.
    pub partitions: u32,
    /// The executors (`runtime.cores`): partition `p` belongs to core `p % cores`. An unkeyed callee
    /// gets a key in a partition of its caller's core, so the call and its answer never cross cores.
    pub cores: usize,
    /// `worker.timers.num_timers_in_memory_limit`.
    pub timers_in_memory: usize,
    /// `worker.ingress_grpc.idempotency_retention`, in ms.
    pub idempotency_retention_ms: u64,
    /// `worker.ingress_grpc.idempotency_recent_ms`: how long an ended idempotent invocation's outcome
    /// stays in memory, for lookups whose read of the idempotency row was submitted before the row.
    pub idempotency_recent_ms: u64,
}

/// What a transition runs with besides the state.
pub struct Env<'a> {
    pub clock: &'a dyn Clock,
    pub resolver: &'a dyn Resolve,
    pub limits: &'a Limits,
}

/// One entry of an invocation's journal, as memory keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    pub ty: u16,
    pub completed: bool,
}

/// An invocation owned by this core (invoked or suspended).
#[derive(Debug, Clone)]
pub struct Invocation {
    pub partition: PartitionId,
    pub service: ServiceId,
    pub method: String,
    pub keyed: bool,
    pub response_sink: Option<ResponseSink>,
    pub idempotency_key: String,
    /// The journal stored so far: one element per entry.
    pub entries: Vec<EntryMeta>,
    /// Some while suspended: the entry indexes any of which resumes it.
    pub suspended: Option<Vec<EntryIndex>>,
    /// Completions stored ahead of their entry (written by versions that accepted them).
    pub early: HashSet<EntryIndex>,
    /// Attempts started (for logs and the status row).
    pub attempts: u32,
    /// The last failed attempt's error (clipped) and when the next attempt starts (unix ms).
    pub last_failure: Option<(String, u64)>,
    /// The endpoint its attempts run on, chosen by its first attempt (empty: none yet).
    pub endpoint: String,
    /// The input entry of a just-started invocation, so its first attempt need not read it back.
    pub fresh: Option<Entry>,
}

impl Invocation {
    /// Entries stored so far.
    pub fn journal_length(&self) -> u32 {
        self.entries.len() as u32
    }

    /// Its status row: suspended on `waiting`, or invoked.
    pub fn status_row(&self, now_ms: u64) -> Status {
        Status {
            service: self.service.service.clone(),
            key: self.service.key.clone(),
            method: self.method.clone(),
            keyed: self.keyed,
            suspended: self.suspended.is_some(),
            waiting: self.suspended.clone().unwrap_or_default(),
            created_ms: now_ms,
            response_sink: self.response_sink.clone(),
            idempotency_key: self.idempotency_key.clone(),
            attempts: self.attempts,
            last_failure: self
                .last_failure
                .as_ref()
                .map(|(m, _)| m.clone())
                .unwrap_or_default(),
            next_retry_ms: self.last_failure.as_ref().map_or(0, |(_, at)| *at),
            endpoint: self.endpoint.clone(),
        }
    }
}

/// The in-memory state of one core's partitions.
#[derive(Debug, Default)]
pub struct State {
    pub invocations: HashMap<InvocationId, Invocation>,
    /// Keyed instances held by an invocation (running, suspended, or starting from its inbox row).
    pub locks: HashMap<ServiceId, InvocationId>,
    pub inboxes: Inboxes,
    /// Next inbox sequence number (one counter per core).
    pub next_inbox_sequence: u64,
    /// Invocations whose inbox row is being read to start them (their key is held for them).
    pub starting: HashMap<InvocationId, Starting>,
    pub timers: Timers,
    /// Next outbox sequence per owned partition.
    pub outbox_sequence: HashMap<PartitionId, u64>,
    /// Last sequence applied per (target partition, producing partition).
    pub dedup: HashMap<(PartitionId, PartitionId), u64>,
    /// Idempotent invocations that ended recently, with when they are forgotten (see
    /// [`Limits::idempotency_recent_ms`]).
    pub recently_finished: HashMap<InvocationId, (u64, Outcome)>,
    pub recently_finished_order: VecDeque<(u64, InvocationId)>,
    /// Reads of an idempotency row in flight per invocation id (submitted, their Invoke not applied
    /// yet): an outcome in `recently_finished` is kept while one of its id is, however long it takes.
    pub lookups: HashMap<InvocationId, u32>,
    /// Rows recovery could not read (logged, left in place).
    pub corrupt_rows: u64,
}

/// An invocation leaving its inbox whose argument is read back from its row first.
#[derive(Debug, Clone)]
pub struct Starting {
    pub service: ServiceId,
    pub sequence: u64,
    /// Cancelled while its row was read: it ends with ABORTED instead of starting.
    pub cancelled: bool,
    /// Who cancelled it: answered once that end is written (and so durable), not before.
    pub cancellers: Vec<CallerId>,
}

/// Everything a transition reacts to.
#[derive(Debug, Clone)]
pub enum Command {
    /// Start or enqueue an invocation. `kept`: its idempotency row, read by the shell when it has an
    /// idempotency key.
    Invoke {
        invocation: NewInvocation,
        caller: Option<CallerId>,
        ack: Option<AckId>,
        kept: Option<Idempotent>,
    },
    /// A message from another partition's outbox. `entry`: for a completion, the stored entry it is
    /// for (read by the shell when memory says that entry exists).
    Deliver {
        producer: PartitionId,
        sequence: u64,
        message: OutboxMessage,
        ack: AckId,
        entry: Option<Entry>,
    },
    /// Fail an invocation with ABORTED wherever it is. `caller` is answered, as an action (so once
    /// everything the answer reports is durable), with an empty value if it was found, NOT_FOUND if
    /// not.
    Cancel {
        id: InvocationId,
        caller: Option<CallerId>,
    },
    /// An attempt of `id` starts; the reply is what it needs from memory.
    AttemptStarted { id: InvocationId },
    /// The shell submitted the read of `id`'s idempotency row; an `Invoke` with what it read follows.
    IdempotencyLookup { id: InvocationId },
    /// The endpoint an invocation's attempts run on: chosen by its first attempt, changed only when
    /// that endpoint is no longer registered.
    PinEndpoint { id: InvocationId, endpoint: String },
    /// The SDK sent a journal entry. `read`: what the shell read for it (see [`entries::Read`]).
    Append {
        id: InvocationId,
        index: EntryIndex,
        frame: Frame,
        read: entries::Read,
    },
    /// The SDK suspended on `indexes`; `known_completed`: the entries its attempt saw completed.
    Suspend {
        id: InvocationId,
        indexes: Vec<EntryIndex>,
        known_completed: Vec<EntryIndex>,
    },
    /// The invocation ended (its output, a terminal failure, retries exhausted).
    Finish { id: InvocationId, outcome: Outcome },
    /// An attempt failed; the next starts after `retry_in_ms`.
    RecordFailure {
        id: InvocationId,
        message: String,
        retry_in_ms: u64,
    },
    /// Timer `key` is due; `row` is its stored row (`None`: not stored), `entry` the entry it
    /// completes (read by the shell for a Sleep's timer).
    FireTimer {
        key: TimerKey,
        row: Option<Timer>,
        entry: Option<Entry>,
    },
    /// The shell starts reading the nearest timers from storage.
    TimersLoading,
    /// What that read found: the nearest timers, and whether they are all of them.
    TimersLoaded { keys: Vec<TimerKey>, complete: bool },
    /// The target of outbox message (`producer`, `sequence`) has it durably.
    OutboxAcked {
        producer: PartitionId,
        sequence: u64,
    },
    /// The inbox row of an invocation starting from storage, read back (`None`: missing).
    InboxRowRead {
        id: InvocationId,
        row: Option<InboxEntry>,
    },
}

/// A row change; the interpreter turns a list of them into one storage batch.
///
/// The large rows are boxed: every transition collects its effects in a fresh `Vec`, and with them
/// inline (272 bytes an effect) its first four took over 1 KiB, past glibc's thread cache, so
/// nearly every transition paid for a consolidation of the malloc arena.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    PutStatus(PartitionId, InvocationId, Box<Status>),
    DeleteStatus(PartitionId, InvocationId),
    PutEntry(PartitionId, InvocationId, EntryIndex, Entry),
    /// Deletes entries `0..length` of a journal.
    DeleteJournal(PartitionId, InvocationId, u32),
    PutState(PartitionId, ServiceId, Bytes, Bytes),
    DeleteState(PartitionId, ServiceId, Bytes),
    PutInbox(PartitionId, ServiceId, u64, Box<InboxEntry>),
    DeleteInbox(PartitionId, ServiceId, u64),
    PutTimer(TimerKey, Box<Timer>),
    DeleteTimer(TimerKey),
    PutOutbox(PartitionId, u64, Box<OutboxMessage>),
    DeleteOutbox(PartitionId, u64),
    /// The partition's next outbox sequence, kept past the deletion of its last message.
    PutOutboxNext(PartitionId, u64),
    /// Last applied sequence of (target partition, producer).
    PutDedup(PartitionId, PartitionId, u64),
    PutIdempotent(PartitionId, InvocationId, Idempotent),
    DeleteCompletion(PartitionId, InvocationId, EntryIndex),
}

/// Something to do once the command's batch is durable.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `caller` waits for `id`'s outcome.
    Attach { id: InvocationId, caller: CallerId },
    /// Answer one caller.
    Answer { caller: CallerId, outcome: Outcome },
    /// `id` ended: answer every caller attached to it, close its attempt's completion stream.
    Ended { id: InvocationId, outcome: Outcome },
    /// Acknowledge a sender.
    Ack {
        ack: AckId,
        result: Result<(), Failure>,
    },
    /// Run attempts of `id` (one that has a journal to replay: resumed or recovered).
    Drive(InvocationId),
    /// Hand durable outbox messages to the shipper: (producer, sequence, target partition, row).
    Ship(Vec<Shipped>),
    /// Send a completion to `id`'s running attempt, if it has one.
    Forward {
        id: InvocationId,
        completion: CompletionMessage,
    },
    /// A nearer timer exists: re-check the next wake-up.
    WakeTimers,
    /// Read the inbox row of `id` (its key is held for it) and answer with `InboxRowRead`.
    ReadInboxRow {
        id: InvocationId,
        partition: PartitionId,
        service: ServiceId,
        sequence: u64,
    },
    /// An invocation was refused (an inbox bound); for a rate-limited WARN.
    Refused {
        id: InvocationId,
        service: String,
        failure: Failure,
    },
}

/// An outbox message that is durable and may be shipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Shipped {
    pub producer: PartitionId,
    pub sequence: u64,
    pub target: PartitionId,
    pub row: OutboxMessage,
}

/// What a command answers the shell's task that issued it: once its batch is durable, or at once when
/// it writes nothing and has no actions. So it is never what leaves the runtime (an answer to a caller
/// or an operator is an [`Action::Answer`], which waits for durability even when nothing is written).
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `AttemptStarted`: what the attempt needs (`None`: the invocation is gone).
    Attempt(Option<AttemptPlan>),
    /// `Append`: the completion to send back, if any.
    Appended(Result<Option<CompletionMessage>, AppendError>),
    /// `Suspend`.
    Suspended(SuspendOutcome),
}

/// What an attempt reads from memory.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptPlan {
    pub partition: PartitionId,
    pub service: ServiceId,
    pub method: String,
    pub keyed: bool,
    /// The pinned endpoint (empty: none yet).
    pub endpoint: String,
    /// The journal length the attempt must read.
    pub journal_length: u32,
    /// The input entry of a fresh invocation (nothing to read back).
    pub fresh: Option<Entry>,
}

/// How an attempt that sent a Suspension continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuspendOutcome {
    /// A listed entry is already completed: start a new attempt now.
    Resume,
    /// Waiting for a completion.
    Suspended,
}

/// The result of one transition.
#[derive(Debug, Default)]
pub struct Effects {
    /// Rows to write, in order, as one batch.
    pub writes: Vec<Effect>,
    /// What to do once they are durable, in order.
    pub actions: Vec<Action>,
    /// The answer to the command's issuer, once they are durable.
    pub reply: Option<Reply>,
    /// Fresh invocations whose attempts may run at once, before the batch is durable: their first
    /// Start carries only the input and the state memory left, nothing an endpoint must not see
    /// before it is durable (see "Deciding before durability" in [`crate::partition`]).
    pub start_now: Vec<InvocationId>,
}

impl Effects {
    /// Clears everything (the buffers are reused).
    pub fn clear(&mut self) {
        self.writes.clear();
        self.actions.clear();
        self.reply = None;
        self.start_now.clear();
    }

    fn write(&mut self, effect: Effect) {
        self.writes.push(effect);
    }

    fn act(&mut self, action: Action) {
        self.actions.push(action);
    }
}

impl State {
    /// Empty state whose inboxes have these bounds.
    pub fn new(inbox_limits: crate::config::Inbox) -> State {
        State {
            inboxes: Inboxes::new(inbox_limits),
            ..State::default()
        }
    }

    /// Applies `command`: changes memory, adds its writes and actions to `out`.
    pub fn apply(&mut self, env: &Env<'_>, command: Command, out: &mut Effects) {
        match command {
            Command::Invoke {
                invocation,
                caller,
                ack,
                kept,
            } => self.invoke(env, invocation, caller, ack, kept, out),
            Command::IdempotencyLookup { id } => *self.lookups.entry(id).or_default() += 1,
            Command::Deliver {
                producer,
                sequence,
                message,
                ack,
                entry,
            } => self.deliver(env, producer, sequence, message, ack, entry, out),
            Command::Cancel { id, caller } => self.cancel(env, id, caller, out),
            Command::AttemptStarted { id } => {
                out.reply = Some(Reply::Attempt(self.attempt_started(id)));
            }
            Command::PinEndpoint { id, endpoint } => self.pin_endpoint(env, id, endpoint, out),
            Command::Append {
                id,
                index,
                frame,
                read,
            } => {
                let result = self.append(env, id, index, &frame, read, out);
                out.reply = Some(Reply::Appended(result));
            }
            Command::Suspend {
                id,
                indexes,
                known_completed,
            } => {
                let outcome = self.suspend(env, id, indexes, &known_completed, out);
                out.reply = Some(Reply::Suspended(outcome));
            }
            Command::Finish { id, outcome } => self.finish(env, id, outcome, out),
            Command::RecordFailure {
                id,
                message,
                retry_in_ms,
            } => self.record_failure(env, id, message, retry_in_ms, out),
            Command::FireTimer { key, row, entry } => self.fire_timer(env, key, row, entry, out),
            Command::TimersLoading => self.timers.loading(),
            Command::TimersLoaded { keys, complete } => {
                self.timers
                    .loaded(keys, complete, env.limits.timers_in_memory)
            }
            Command::OutboxAcked { producer, sequence } => {
                self.outbox_acked(producer, sequence, out)
            }
            Command::InboxRowRead { id, row } => self.inbox_row_read(env, id, row, out),
        }
    }

    /// The partition of `id`.
    pub fn partition_of(limits: &Limits, id: &InvocationId) -> PartitionId {
        id.partition(limits.partitions)
    }

    /// An attempt of `id` starts: counts it, hands out what memory knows.
    fn attempt_started(&mut self, id: InvocationId) -> Option<AttemptPlan> {
        let invocation = self.invocations.get_mut(&id)?;
        invocation.attempts += 1;
        Some(AttemptPlan {
            partition: invocation.partition,
            service: invocation.service.clone(),
            method: invocation.method.clone(),
            keyed: invocation.keyed,
            endpoint: invocation.endpoint.clone(),
            journal_length: invocation.journal_length(),
            fresh: invocation.fresh.take(),
        })
    }

    /// Pins `id` to `endpoint` (stored in its status row).
    fn pin_endpoint(
        &mut self,
        env: &Env<'_>,
        id: InvocationId,
        endpoint: String,
        out: &mut Effects,
    ) {
        let Some(invocation) = self.invocations.get_mut(&id) else {
            return;
        };
        if invocation.endpoint == endpoint {
            return;
        }
        invocation.endpoint = endpoint;
        out.write(Effect::PutStatus(
            invocation.partition,
            id,
            Box::new(invocation.status_row(env.clock.now_ms())),
        ));
    }

    /// An attempt of `id` failed; stored in its status row for operators, without waiting.
    fn record_failure(
        &mut self,
        env: &Env<'_>,
        id: InvocationId,
        message: String,
        retry_in_ms: u64,
        out: &mut Effects,
    ) {
        const MESSAGE_CHARS_MAX: usize = 256;
        let Some(invocation) = self.invocations.get_mut(&id) else {
            return;
        };
        let now = env.clock.now_ms();
        let clipped: String = message.chars().take(MESSAGE_CHARS_MAX).collect();
        invocation.last_failure = Some((clipped, now + retry_in_ms));
        out.write(Effect::PutStatus(
            invocation.partition,
            id,
            Box::new(invocation.status_row(now)),
        ));
    }

    /// Invocations held, and how many of them are suspended.
    pub fn invocation_counts(&self) -> (usize, usize) {
        let suspended = self
            .invocations
            .values()
            .filter(|i| i.suspended.is_some())
            .count();
        (self.invocations.len(), suspended)
    }

    /// Whether the entry a completion for (`id`, `index`) is for is stored: the shell reads it then.
    pub fn entry_exists(&self, id: &InvocationId, index: EntryIndex) -> bool {
        self.invocations
            .get(id)
            .is_some_and(|i| index < i.journal_length())
    }

    /// Whether entry `index` of `id` is a Sleep in memory: its timer completes it, so the shell reads
    /// the entry along with the timer's row (a delayed call's timer needs its row only).
    pub fn sleeps_at(&self, id: &InvocationId, index: EntryIndex) -> bool {
        self.invocations.get(id).is_some_and(|i| {
            i.entries
                .get(index as usize)
                .is_some_and(|e| e.ty == crate::protocol::types::SLEEP)
        })
    }

    /// Whether an early completion of (`id`, `index`) may be stored: the shell reads it then.
    pub fn has_early(&self, id: &InvocationId, index: EntryIndex) -> bool {
        self.invocations
            .get(id)
            .is_some_and(|i| i.early.contains(&index))
    }
}

/// A new invocation's id from the clock's fresh bytes.
pub fn fresh_id(clock: &dyn Clock, partition_key: u64) -> InvocationId {
    InvocationId::from_parts(partition_key, clock.fresh_uuid())
}

/// The inbox row of an invocation that waits for its key.
fn inbox_row(new: &NewInvocation, now_ms: u64) -> InboxEntry {
    InboxEntry {
        invocation_id: Bytes::copy_from_slice(new.id.as_bytes()),
        method: new.method.clone(),
        argument: new.argument.clone(),
        created_ms: now_ms,
        response_sink: new.response_sink.clone(),
        idempotency_key: new.idempotency_key.clone().unwrap_or_default(),
    }
}

/// The completion sent to a running attempt for an entry completed with `result` bytes.
fn completion_for(index: EntryIndex, result: &[u8]) -> CompletionMessage {
    CompletionMessage {
        entry_index: index,
        result: codec::decode_result(result),
    }
}

pub mod codec;

#[cfg(test)]
mod tests;

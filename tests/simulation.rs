//! Deterministic simulation of a core's partitions: the real state machine
//! (`restate::partition::state_machine`) and the real effects interpreter, driven by a seeded RNG
//! against an in-memory store, a simulated clock and scripted fake SDK endpoints. No processes, no
//! sockets, no sleeps.
//!
//! Each step the seed picks one of: make the oldest pending write durable, apply a command whose reads
//! are done, start an attempt, let an attempt send its next entry, suspend or fail, deliver an outbox
//! message (or re-deliver one), read the due timers' rows or fire the timers read (in order, without
//! waiting for durability), reload timers, advance the clock, call from the ingress (plain, one-way,
//! idempotent), resolve an awakeable, deliver a forged or stale completion, cancel, or crash (memory
//! and unwritten batches are lost; recovery reads the store). After every step the invariants are
//! checked; once the run is drained, the quiet ones too.
//!
//! `RESTATE_SIM_RUNS=N` runs N seeds (default 200), `RESTATE_SIM_SEED=S` replays one; a failure
//! prints the seed and the last steps. `cargo test --release --test simulation` for many seeds.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

use base64::Engine;
use bytes::Bytes;
use prost::Message;

use restate::config;
use restate::grpc::Code;
use restate::partition::effects;
use restate::partition::invocation::{Failure, NewInvocation, Outcome};
use restate::partition::rows::{
    outbox_message, CompletionRequest, Entry, Idempotent, InboxEntry, OutboxMessage, Timer,
};
use restate::partition::state_machine::entries::Read;
use restate::partition::state_machine::{
    codec, Action, AppendError, AttemptPlan, CallerId, Clock, Command, Effects, Env, Limits, Reply,
    Resolve, Resolved, Shipped, State, SuspendOutcome, TimerKey,
};
use restate::partition::transient::{Holds, Routed};
use restate::partition::{keys, partition_key, EntryIndex, InvocationId, PartitionId, ServiceId};
use restate::protocol::messages::{
    completion_message, get_state_entry_message, invoke_entry_message, AwakeableEntryMessage,
    BackgroundInvokeEntryMessage, CompleteAwakeableEntryMessage, GetStateEntryMessage,
    InvokeEntryMessage, SetStateEntryMessage, SleepEntryMessage,
};
use restate::protocol::{types, Frame, FLAG_REQUIRES_ACK};
use restate::storage::{Op, Table, WriteBatch};

const PARTITIONS: u32 = 4;
/// Steps of random events per seed, before draining.
const STEPS: usize = 400;
/// Steps a drain may take before the run counts as stuck.
const DRAIN_STEPS: usize = 20_000;
const COUNTER_KEYS: [&str; 3] = ["a", "b", "c"];

// ---------------------------------------------------------------------------------------------
// Seeded randomness, the clock, call targets.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `per_mille` / 1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        (!items.is_empty()).then(|| &items[self.below(items.len())])
    }
}

struct SimClock {
    now: Cell<u64>,
    ids: Cell<u64>,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }

    fn fresh_uuid(&self) -> [u8; 16] {
        let n = self.ids.get() + 1;
        self.ids.set(n);
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.now.get().to_be_bytes());
        bytes[8..].copy_from_slice(&n.to_be_bytes());
        bytes
    }
}

/// The services of the fake endpoints: keyed ones take their key from the parameter.
struct SimResolver;

impl Resolve for SimResolver {
    fn resolve(&self, service: &str, method: &str, parameter: &Bytes) -> Result<Resolved, Failure> {
        match service {
            "counter" | "sleeper" | "awaiter" => Ok(Resolved {
                key: Some(parameter.to_vec()),
            }),
            "caller" | "resolver" => Ok(Resolved { key: None }),
            _ => Err(Failure::new(
                Code::NotFound,
                format!("{service}/{method} not found"),
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The store: durable rows, plus the batches submitted and not yet durable (reads see those too:
// storage serves a core's reads after its earlier writes).

#[derive(Default)]
struct Store {
    durable: BTreeMap<(u8, Vec<u8>), Vec<u8>>,
    visible: BTreeMap<(u8, Vec<u8>), Vec<u8>>,
}

fn apply_batch(rows: &mut BTreeMap<(u8, Vec<u8>), Vec<u8>>, batch: &WriteBatch) {
    for op in batch.ops() {
        match op {
            Op::Put { table, key, value } => {
                rows.insert((*table as u8, key.clone()), value.clone());
            }
            Op::Delete { table, key } => {
                rows.remove(&(*table as u8, key.clone()));
            }
            Op::DeleteRange { table, start, end } => {
                let doomed: Vec<_> = rows
                    .range((*table as u8, start.clone())..(*table as u8, end.clone()))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in doomed {
                    rows.remove(&key);
                }
            }
        }
    }
}

impl Store {
    fn get(&self, table: Table, key: &[u8]) -> Option<Vec<u8>> {
        self.visible.get(&(table as u8, key.to_vec())).cloned()
    }

    fn scan(&self, table: Table, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        Self::scan_rows(&self.visible, table, prefix)
    }

    fn scan_rows(
        rows: &BTreeMap<(u8, Vec<u8>), Vec<u8>>,
        table: Table,
        prefix: &[u8],
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        rows.range((table as u8, prefix.to_vec())..)
            .take_while(|((t, k), _)| *t == table as u8 && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect()
    }

    fn durable_count(&self, table: Table) -> usize {
        self.durable
            .keys()
            .filter(|(t, _)| *t == table as u8)
            .count()
    }
}

// ---------------------------------------------------------------------------------------------
// Fake endpoints: each service method is a script of journal entries.

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Input,
    GetState,
    SideEffect,
    SetState,
    /// Sleeps until the attempt's start (or now, if later) plus this offset in ms (negative: an
    /// endpoint clock behind the runtime's).
    Sleep(i64),
    Call(String),
    OneWay(String, u64),
    Awakeable,
    Resolve(String),
    Output,
}

impl Step {
    fn ty(&self) -> u16 {
        match self {
            Step::Input => types::POLL_INPUT_STREAM,
            Step::GetState => types::GET_STATE,
            Step::SideEffect => types::SIDE_EFFECT,
            Step::SetState => types::SET_STATE,
            Step::Sleep(_) => types::SLEEP,
            Step::Call(_) => types::INVOKE,
            Step::OneWay(..) => types::BACKGROUND_INVOKE,
            Step::Awakeable => types::AWAKEABLE,
            Step::Resolve(_) => types::COMPLETE_AWAKEABLE,
            Step::Output => types::OUTPUT_STREAM,
        }
    }

    /// Whether the script waits for this entry's completion (or ack) before going on.
    fn awaits(&self) -> bool {
        matches!(
            self,
            Step::GetState | Step::SideEffect | Step::Sleep(_) | Step::Call(_) | Step::Awakeable
        )
    }
}

/// The script of an invocation: derived from its service, method and argument only (deterministic
/// across attempts, as an SDK handler must be).
fn script(service: &str, method: &str, argument: &[u8]) -> Vec<Step> {
    let text = String::from_utf8_lossy(argument).to_string();
    let delay = u64::from(argument.iter().map(|b| u32::from(*b)).sum::<u32>() % 7) * 150;
    match (service, method) {
        // Nothing between its GetState and SetState waits for the runtime: held throughout when
        // its GetState is answered from the eager state.
        ("counter", "bump") => vec![Step::Input, Step::GetState, Step::SetState, Step::Output],
        ("counter", _) => vec![
            Step::Input,
            Step::GetState,
            Step::SideEffect,
            Step::SetState,
            Step::Output,
        ],
        ("caller", "call") => vec![Step::Input, Step::Call(text), Step::Output],
        ("caller", _) => vec![Step::Input, Step::OneWay(text, delay), Step::Output],
        // An endpoint's clock may run behind the runtime's: one sleeper in seven asks for a wake-up
        // time already past, which may be nearer than timers due and being read.
        ("sleeper", _) if delay == 150 => vec![Step::Input, Step::Sleep(-149), Step::Output],
        ("sleeper", _) => vec![Step::Input, Step::Sleep(delay as i64 + 1), Step::Output],
        ("awaiter", _) => vec![Step::Input, Step::Awakeable, Step::Output],
        ("resolver", _) => vec![Step::Input, Step::Resolve(text), Step::Output],
        other => panic!("no script for {other:?}"),
    }
}

/// A running attempt of a fake endpoint.
#[derive(Debug)]
struct Attempt {
    script: Vec<Step>,
    /// Index of the next entry to send.
    next: u32,
    completed: HashSet<EntryIndex>,
    /// Results of completed entries the script uses (GetState, Call, Awakeable).
    results: HashMap<EntryIndex, Vec<u8>>,
    /// When the attempt started its entries: the sleep's wake-up time is fixed at the first send.
    started_ms: u64,
    /// An append is in flight (its reply comes once durable).
    appending: bool,
    /// A replayed journal waits for its barrier before the endpoint sees it: the rows read (journal
    /// key, completed), which must all be durable when it passes.
    barrier: Option<Vec<(Vec<u8>, bool)>>,
    /// A fresh attempt of a keyed instance that got its complete state with the Start: the counter's
    /// value ("n"), which its GetState answers itself (sent completed), as SDK 0.4.1 does.
    eager: Option<Option<Vec<u8>>>,
}

impl Attempt {
    /// The first entry the script waits for and that is not completed.
    fn blocked_on(&self) -> Option<EntryIndex> {
        (0..self.next).find(|i| self.script[*i as usize].awaits() && !self.completed.contains(i))
    }

    fn record(&mut self, index: EntryIndex, result: Option<&completion_message::Result>) {
        self.completed.insert(index);
        if let Some(completion_message::Result::Value(v)) = result {
            self.results.insert(index, v.clone());
        }
    }
}

/// What a frame sends for `step` at `index`.
fn frame_for(attempt: &Attempt, index: EntryIndex, now_ms: u64) -> Frame {
    let step = &attempt.script[index as usize];
    match step {
        Step::Input => unreachable!("the input is entry 0"),
        Step::GetState => Frame::message(
            types::GET_STATE,
            0,
            &GetStateEntryMessage {
                key: b"n".to_vec(),
                result: attempt.eager.as_ref().map(|value| match value {
                    Some(v) => get_state_entry_message::Result::Value(v.clone()),
                    None => get_state_entry_message::Result::Empty(()),
                }),
            },
        ),
        Step::SideEffect => Frame::new(types::SIDE_EFFECT, FLAG_REQUIRES_ACK, b"side".to_vec()),
        Step::SetState => {
            let current = attempt
                .results
                .get(&1)
                .map(|v| decode_count(v))
                .unwrap_or(0);
            Frame::message(
                types::SET_STATE,
                0,
                &SetStateEntryMessage {
                    key: b"n".to_vec(),
                    value: (current + 1).to_string().into_bytes(),
                },
            )
        }
        Step::Sleep(delay) => Frame::message(
            types::SLEEP,
            0,
            &SleepEntryMessage {
                wake_up_time: attempt.started_ms.max(now_ms).saturating_add_signed(*delay),
                result: None,
            },
        ),
        Step::Call(key) => Frame::message(
            types::INVOKE,
            0,
            &InvokeEntryMessage {
                service_name: "counter".into(),
                method_name: "add".into(),
                parameter: key.clone().into_bytes(),
                result: None,
            },
        ),
        Step::OneWay(key, delay) => Frame::message(
            types::BACKGROUND_INVOKE,
            0,
            &BackgroundInvokeEntryMessage {
                service_name: "counter".into(),
                method_name: "add".into(),
                parameter: key.clone().into_bytes(),
                invoke_time: if *delay == 0 { 0 } else { now_ms + delay },
            },
        ),
        Step::Awakeable => {
            Frame::message(types::AWAKEABLE, 0, &AwakeableEntryMessage { result: None })
        }
        Step::Resolve(id) => Frame::message(
            types::COMPLETE_AWAKEABLE,
            0,
            &CompleteAwakeableEntryMessage {
                id: id.clone(),
                result: Some(
                    restate::protocol::messages::complete_awakeable_entry_message::Result::Value(
                        b"resolved".to_vec(),
                    ),
                ),
            },
        ),
        Step::Output => unreachable!("the output ends the invocation"),
    }
}

fn decode_count(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a counter value that is not a number: {bytes:?}"))
}

/// The result stored in a completed entry, for a replaying attempt.
fn stored_result(entry: &Entry) -> Option<completion_message::Result> {
    match entry.ty {
        types::GET_STATE => match GetStateEntryMessage::decode(entry.payload.clone())
            .ok()?
            .result?
        {
            get_state_entry_message::Result::Value(v) => Some(completion_message::Result::Value(v)),
            get_state_entry_message::Result::Empty(()) => {
                Some(completion_message::Result::Empty(()))
            }
        },
        types::INVOKE => match InvokeEntryMessage::decode(entry.payload.clone())
            .ok()?
            .result?
        {
            invoke_entry_message::Result::Value(v) => Some(completion_message::Result::Value(v)),
            invoke_entry_message::Result::Failure(f) => {
                Some(completion_message::Result::Failure(f))
            }
        },
        types::AWAKEABLE => {
            match AwakeableEntryMessage::decode(entry.payload.clone())
                .ok()?
                .result?
            {
                restate::protocol::messages::awakeable_entry_message::Result::Value(v) => {
                    Some(completion_message::Result::Value(v))
                }
                restate::protocol::messages::awakeable_entry_message::Result::Failure(f) => {
                    Some(completion_message::Result::Failure(f))
                }
            }
        }
        _ => None,
    }
}

fn awakeable_id(id: &InvocationId, index: EntryIndex) -> String {
    let mut raw = id.as_bytes().to_vec();
    raw.extend_from_slice(&index.to_be_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

// ---------------------------------------------------------------------------------------------
// The world.

/// A submitted batch and what runs once it is durable.
struct Pending {
    batch: WriteBatch,
    actions: Vec<Action>,
    reply: Option<Reply>,
    to: ReplyTo,
}

#[derive(Debug, Clone, Copy)]
enum ReplyTo {
    Nobody,
    /// A suspension of this invocation's attempt.
    Suspend(InvocationId),
    /// The attempt ended with its output.
    Finish,
    /// The barrier after a replaying attempt's reads: it may start now.
    Replay(InvocationId),
}

/// The timer task: one load or one round of firings at a time.
enum TimerTask {
    Idle,
    /// A reload whose read saw these keys (its read was submitted when it started).
    Loading(Vec<TimerKey>, bool),
    /// The due timers whose rows (and Sleep entries) were read, nearest first; they fire in a
    /// later step, one after the other without waiting for durability.
    Firing(Vec<(TimerKey, Option<Timer>, Option<Entry>)>),
}

#[derive(Default)]
struct Model {
    /// Invocations started from the ingress, and whether they were acknowledged (or attached).
    accepted: HashSet<InvocationId>,
    /// The counter key each counter invocation adds to.
    counter_key: HashMap<InvocationId, Vec<u8>>,
    /// Counter invocations whose SetState is durable, per key.
    increments: HashMap<Vec<u8>, HashSet<InvocationId>>,
    /// Invocations whose end is durable.
    ended: HashSet<InvocationId>,
    /// Callers answered.
    answered: HashSet<CallerId>,
    /// Callers waiting, per invocation (dropped by a crash: their connections die).
    waiting: HashMap<InvocationId, Vec<CallerId>>,
    /// Callers given to the state machine and not answered yet (lost in a crash).
    open_callers: HashSet<CallerId>,
    /// Callers that cancel an invocation (an operator's request), and which.
    cancellers: HashMap<CallerId, InvocationId>,
    /// Awakeables a resolver was started for (while draining: one more, in case the first was
    /// cancelled).
    resolving: HashSet<String>,
    drain_resolving: HashSet<String>,
}

struct World {
    rng: Rng,
    clock: SimClock,
    limits: Limits,
    inbox_limits: config::Inbox,
    state: State,
    store: Store,
    /// Rows held back from the store (`partition::transient`), as the shell holds them; lost in a
    /// crash.
    holds: Holds,
    /// The holds' settings, for a fresh `Holds` after a crash.
    hold: (u64, usize),
    /// Invocations whose start was held and whose status row is not durable yet: their callers'
    /// attachment does not make them accepted (a crash may still lose them).
    held_starts: HashSet<InvocationId>,
    /// Counter invocations that decided their SetState (since the last crash): one whose end is
    /// durable incremented its counter, whether or not its SetState entry was ever written (held,
    /// its entry is cancelled by its end and only its state row is written).
    set_state_decided: HashSet<InvocationId>,
    pending: VecDeque<Pending>,
    /// Commands whose reads are done, waiting to be applied (in any order).
    ready: Vec<(Command, ReplyTo)>,
    attempts: HashMap<InvocationId, Attempt>,
    /// Invocations told to run (Drive) with no attempt yet.
    to_start: Vec<InvocationId>,
    /// Failed attempts waiting for their retry.
    retrying: Vec<InvocationId>,
    /// Outbox messages shipped, per (producer, target) pair in sequence order; the head is in flight.
    outbound: BTreeMap<(PartitionId, PartitionId), VecDeque<Shipped>>,
    /// Messages delivered once already (for stale re-deliveries).
    delivered: Vec<Shipped>,
    timer_task: TimerTask,
    next_token: u64,
    /// Acknowledgements expected: token → invocation.
    acks: HashMap<u64, InvocationId>,
    /// Deliveries in flight: token → (producer, target, sequence).
    shipping: HashMap<u64, (PartitionId, PartitionId, u64)>,
    /// Draining: no failures, no new work; blocked attempts suspend.
    draining: bool,
    /// Timers fired since the last crash.
    fired: HashSet<TimerKey>,
    forged_sequence: u64,
    model: Model,
    trace: Vec<String>,
    steps: u64,
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng(seed);
        let small_inbox = rng.chance(300);
        let inbox_limits = config::Inbox {
            max_entries_per_key: if small_inbox { 2 } else { 100 },
            max_entries_per_core: 1000,
            memory_bytes_per_core: if rng.chance(500) { 2 } else { 1 << 20 },
        };
        let limits = Limits {
            partitions: PARTITIONS,
            // From the seed, not the generator: the seeds' scenarios stay as they were.
            cores: 1 + (seed % 4) as usize,
            timers_in_memory: 1 + rng.below(4),
            idempotency_retention_ms: 60_000,
            idempotency_recent_ms: 1_000,
        };
        // Off in a fifth of the seeds, longer than any run in two fifths, otherwise up to a few
        // clock advances; sometimes too small in bytes to hold more than a start.
        let hold_ms = match rng.below(5) {
            0 => 0,
            1 | 2 => u64::MAX / 4,
            _ => 1 + rng.below(800) as u64,
        };
        let hold = (hold_ms, if rng.chance(300) { 300 } else { 1 << 16 });
        World {
            rng,
            clock: SimClock {
                now: Cell::new(1_000_000),
                ids: Cell::new(0),
            },
            state: State::new(inbox_limits.clone()),
            inbox_limits,
            limits,
            store: Store::default(),
            holds: Holds::new(hold.0, hold.1),
            hold,
            held_starts: HashSet::new(),
            set_state_decided: HashSet::new(),
            pending: VecDeque::new(),
            ready: Vec::new(),
            attempts: HashMap::new(),
            to_start: Vec::new(),
            retrying: Vec::new(),
            outbound: BTreeMap::new(),
            delivered: Vec::new(),
            timer_task: TimerTask::Idle,
            next_token: 0,
            acks: HashMap::new(),
            shipping: HashMap::new(),
            draining: false,
            fired: HashSet::new(),
            forged_sequence: 0,
            model: Model::default(),
            trace: Vec::new(),
            steps: 0,
        }
    }

    fn note(&mut self, what: String) {
        self.trace.push(format!(
            "[{}] t={} {what}",
            self.steps,
            self.clock.now.get()
        ));
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Applies `command` and submits its batch (even an empty one when there are actions).
    fn apply(&mut self, command: Command, to: ReplyTo) -> Option<Reply> {
        let out = self.transition(command);
        self.submit(out, to)
    }

    /// Runs the state machine on `command`.
    fn transition(&mut self, command: Command) -> Effects {
        let held = self.holds.before(&command);
        self.submit_held(held);
        let mut out = Effects::default();
        let env = Env {
            clock: &self.clock,
            resolver: &SimResolver,
            limits: &self.limits,
        };
        self.state.apply(&env, command, &mut out);
        out
    }

    /// Queues a transition's batch (fresh invocations start at once, as the shell starts them right
    /// after submitting); returns the reply at once when nothing needs to be durable.
    fn submit(&mut self, out: Effects, to: ReplyTo) -> Option<Reply> {
        for id in &out.start_now {
            self.note(format!("  -> start now {id}"));
            self.told_to_run(*id);
        }
        if out.writes.is_empty() && out.actions.is_empty() {
            return out.reply;
        }
        // As the shell decides it: nothing visible waits for the batch (an append's reply without
        // a completion is not visible).
        let quiet = out
            .actions
            .iter()
            .all(|a| matches!(a, Action::Attach { .. }))
            && matches!(out.reply, None | Some(Reply::Appended(Ok(None))));
        let mut batch = WriteBatch::new();
        match self
            .holds
            .route(out.writes, &out.start_now, quiet, self.clock.now.get())
        {
            Routed::Held => {
                self.note("  -> held".into());
                self.held_starts.extend(out.start_now.iter().copied());
            }
            Routed::Submit { writes, elided } => {
                if elided > 0 {
                    self.note(format!("  -> {elided} held rows cancelled"));
                }
                effects::to_batch(&writes, &mut batch);
            }
        }
        apply_batch(&mut self.store.visible, &batch);
        self.pending.push_back(Pending {
            batch,
            actions: out.actions,
            reply: out.reply,
            to,
        });
        None
    }

    /// A row as every write decided so far leaves it: the store's visible rows and the held ones.
    fn decided(&self, table: Table, key: &[u8]) -> Option<Vec<u8>> {
        self.decided_rows()
            .get(&(table as u8, key.to_vec()))
            .cloned()
    }

    /// Every row as the decisions so far leave it: the store's visible rows, the held ones applied.
    fn decided_rows(&self) -> BTreeMap<(u8, Vec<u8>), Vec<u8>> {
        let mut rows = self.store.visible.clone();
        let mut held = WriteBatch::new();
        effects::to_batch(&self.holds.rows().cloned().collect::<Vec<_>>(), &mut held);
        apply_batch(&mut rows, &held);
        rows
    }

    /// Every held row goes to the store (the shell's graceful shutdown; here, the expiry task once
    /// drained).
    fn flush_holds(&mut self) {
        let writes = self.holds.take_all();
        self.submit_held(writes);
    }

    /// Drained and nothing else to do: the expiry task writes what is still held.
    fn expire_all_holds(&mut self) -> bool {
        let any = !self.holds.is_empty();
        self.flush_holds();
        any
    }

    /// The expiry task: holds open for their whole time are written.
    fn expire_holds(&mut self) -> bool {
        let writes = self.holds.take_expired(self.clock.now.get());
        let any = !writes.is_empty();
        self.submit_held(writes);
        any
    }

    fn submit_held(&mut self, writes: Vec<restate::partition::state_machine::Effect>) {
        if writes.is_empty() {
            return;
        }
        self.note(format!("  held rows written: {}", writes.len()));
        let mut batch = WriteBatch::new();
        effects::to_batch(&writes, &mut batch);
        apply_batch(&mut self.store.visible, &batch);
        self.pending.push_back(Pending {
            batch,
            actions: Vec::new(),
            reply: None,
            to: ReplyTo::Nobody,
        });
    }

    // --- durability and actions ---

    fn make_durable(&mut self) {
        let Some(pending) = self.pending.pop_front() else {
            return;
        };
        apply_batch(&mut self.store.durable, &pending.batch);
        self.observe_durable(&pending.batch);
        for action in pending.actions {
            self.run(action);
        }
        if let Some(reply) = pending.reply {
            self.reply(pending.to, reply);
        }
    }

    /// Records durable counter increments (the SetState entry and its state row share a batch).
    fn observe_durable(&mut self, batch: &WriteBatch) {
        for op in batch.ops() {
            let Op::Put { table, key, value } = op else {
                continue;
            };
            if *table == Table::Status {
                // A held start its callers were attached to is accepted once durable.
                let id = InvocationId::from_slice(&key[4..]).expect("status key");
                if self.held_starts.remove(&id) && self.model.waiting.contains_key(&id) {
                    self.model.accepted.insert(id);
                }
                continue;
            }
            if *table != Table::Journal
                || Entry::decode(value).map(|e| e.ty) != Some(types::SET_STATE)
            {
                continue;
            }
            let id = InvocationId::from_slice(&key[4..28]).expect("journal key");
            let counter = self.model.counter_key.get(&id).cloned().unwrap_or_else(|| {
                panic!("a SetState of {id}, which is not a known counter invocation")
            });
            let fresh = self.model.increments.entry(counter).or_default().insert(id);
            assert!(fresh, "{id} incremented its counter twice");
        }
    }

    /// Nothing visible outside (an answer, an ack, a shipped message, an attempt, a completion sent
    /// to an SDK) happens before the rows it reports are durable.
    fn assert_durable_for(&self, action: &Action) {
        let durable =
            |table: Table, key: Vec<u8>| self.store.durable.contains_key(&(table as u8, key));
        let p = |id: &InvocationId| id.partition(PARTITIONS);
        match action {
            Action::Ship(messages) => {
                for m in messages {
                    assert!(
                        durable(Table::Outbox, keys::outbox(m.producer, m.sequence)),
                        "outbox message {}/{} shipped before it is durable",
                        m.producer,
                        m.sequence
                    );
                }
            }
            Action::Drive(id) => assert!(
                durable(Table::Status, keys::status(p(id), id)),
                "{id} runs before its status row is durable"
            ),
            Action::Ended { id, .. } => assert!(
                !durable(Table::Status, keys::status(p(id), id)),
                "{id}'s callers are answered before its end is durable"
            ),
            Action::Forward { id, completion } => {
                let key = keys::journal(p(id), id, completion.entry_index);
                let entry = self.store.durable.get(&(Table::Journal as u8, key));
                // An ack (no result) needs the entry durable; a result, the entry completed so.
                let acked = completion.result.is_none();
                assert!(
                    entry
                        .and_then(|e| Entry::decode(e))
                        .is_some_and(|e| e.completed || acked),
                    "a completion of {id}/{} is sent before it is durable",
                    completion.entry_index
                );
            }
            Action::Ack {
                ack,
                result: Ok(()),
            } => {
                if let Some(id) = self.acks.get(ack) {
                    let status = durable(Table::Status, keys::status(p(id), id));
                    let queued = self.store.durable.keys().any(|(t, k)| {
                        *t == Table::Inbox as u8 && k.starts_with(&keys::partition(p(id)))
                    });
                    assert!(
                        status || queued || self.model.ended.contains(id),
                        "{id} is acknowledged before it is durable"
                    );
                }
            }
            _ => {}
        }
    }

    fn run(&mut self, action: Action) {
        self.assert_durable_for(&action);
        self.note(format!("  -> {}", describe(&action)));
        match action {
            Action::Attach { id, caller } => {
                self.model.waiting.entry(id).or_default().push(caller);
                // Held rows are not durable: a crash may still lose the invocation, with its
                // callers' connections (accepted once its status row is durable).
                if !self.held_starts.contains(&id) {
                    self.model.accepted.insert(id);
                }
            }
            Action::Answer { caller, outcome } => {
                if let Some(id) = self.model.cancellers.remove(&caller) {
                    self.cancel_answered(id, outcome.is_ok());
                }
                self.answer(caller)
            }
            Action::Ended { id, outcome } => self.ended(id, outcome),
            Action::Ack { ack, result } => {
                if let Some((producer, target, sequence)) = self.shipping.remove(&ack) {
                    let queue = self
                        .outbound
                        .get_mut(&(producer, target))
                        .expect("in flight");
                    let head = queue.pop_front().expect("in flight");
                    assert_eq!(head.sequence, sequence, "acknowledged out of order");
                    if queue.is_empty() {
                        self.outbound.remove(&(producer, target));
                    }
                    self.apply(Command::OutboxAcked { producer, sequence }, ReplyTo::Nobody);
                }
                if let Some(id) = self.acks.remove(&ack) {
                    if result.is_ok() {
                        self.model.accepted.insert(id);
                    }
                }
            }
            Action::Drive(id) => self.told_to_run(id),
            Action::Ship(messages) => {
                for shipped in messages {
                    if let Some(outbox_message::Message::Invoke(request)) = &shipped.row.message {
                        if request.service == "counter" {
                            let id = InvocationId::from_slice(&request.invocation_id).unwrap();
                            self.model.counter_key.insert(id, request.key.to_vec());
                        }
                    }
                    self.outbound
                        .entry((shipped.producer, shipped.target))
                        .or_default()
                        .push_back(shipped);
                }
            }
            Action::Forward { id, completion } => {
                if let Some(attempt) = self.attempts.get_mut(&id) {
                    attempt.record(completion.entry_index, completion.result.as_ref());
                }
            }
            Action::WakeTimers => {}
            Action::ReadInboxRow {
                id,
                partition,
                service,
                sequence,
            } => {
                let row = self
                    .store
                    .get(Table::Inbox, &keys::inbox(partition, &service, sequence))
                    .and_then(|r| InboxEntry::decode(r.as_slice()).ok());
                self.ready
                    .push((Command::InboxRowRead { id, row }, ReplyTo::Nobody));
            }
            Action::Refused { .. } => {}
        }
    }

    fn answer(&mut self, caller: CallerId) {
        assert!(
            self.model.answered.insert(caller),
            "caller {caller} answered twice"
        );
        self.model.open_callers.remove(&caller);
    }

    fn ended(&mut self, id: InvocationId, _outcome: Outcome) {
        self.held_starts.remove(&id);
        if self.set_state_decided.remove(&id) {
            let counter = self.model.counter_key[&id].clone();
            // Already there if its SetState entry was written (and counted) before.
            self.model.increments.entry(counter).or_default().insert(id);
        }
        assert!(self.model.ended.insert(id), "{id} ended twice");
        for caller in self.model.waiting.remove(&id).unwrap_or_default() {
            self.answer(caller);
        }
        // Its attempt's completion stream closes; the attempt gives up.
        self.attempts.remove(&id);
        self.to_start.retain(|i| *i != id);
        self.retrying.retain(|i| *i != id);
    }

    fn told_to_run(&mut self, id: InvocationId) {
        assert!(
            !self.attempts.contains_key(&id),
            "{id} told to run while an attempt of it runs"
        );
        assert!(
            !self.to_start.contains(&id) && !self.retrying.contains(&id),
            "{id} told to run twice"
        );
        self.to_start.push(id);
    }

    fn reply(&mut self, to: ReplyTo, reply: Reply) {
        match (to, reply) {
            (ReplyTo::Suspend(id), Reply::Suspended(outcome)) => self.suspended(id, outcome),
            (ReplyTo::Replay(id), _) => self.replay_passes(id),
            (ReplyTo::Finish, _) | (ReplyTo::Nobody, _) => {}
            (to, reply) => panic!("reply {reply:?} for {to:?}"),
        }
    }

    fn suspended(&mut self, id: InvocationId, outcome: SuspendOutcome) {
        self.attempts.remove(&id);
        if outcome == SuspendOutcome::Resume && self.state.invocations.contains_key(&id) {
            self.to_start.push(id);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events.

impl World {
    /// A call from the ingress: a counter add, a call through `caller`, a one-way call, a sleep, an
    /// awakeable; sometimes with an idempotency key, sometimes one-way (acknowledged, not answered).
    fn ingress_call(&mut self) {
        let key = self.rng.pick(&COUNTER_KEYS).copied().unwrap().to_owned();
        let (service, method, argument) = match self.rng.below(7) {
            0 | 1 => ("counter", "add", key.clone()),
            6 => ("counter", "bump", key.clone()),
            2 => ("caller", "call", key.clone()),
            3 => ("caller", "oneway", key.clone()),
            4 => ("sleeper", "sleep", key.clone()),
            _ => ("awaiter", "wait", key.clone()),
        };
        let keyed = matches!(service, "counter" | "sleeper" | "awaiter");
        let instance = if keyed {
            key.clone().into_bytes()
        } else {
            self.clock.fresh_uuid().to_vec()
        };
        let service_id = ServiceId {
            service: service.to_owned(),
            key: instance.into(),
        };
        let idempotency_key = self
            .rng
            .chance(200)
            .then(|| format!("k{}", self.rng.below(3)));
        let pk = service_id.partition_key();
        let id = match &idempotency_key {
            Some(k) => {
                InvocationId::derived(pk, &[service.as_bytes(), &service_id.key, k.as_bytes()])
            }
            None => InvocationId::from_parts(pk, self.clock.fresh_uuid()),
        };
        if service == "counter" {
            self.model.counter_key.insert(id, key.clone().into_bytes());
        }
        let one_way = self.rng.chance(400);
        let (caller, ack) = if one_way {
            let token = self.token();
            self.acks.insert(token, id);
            (None, Some(token))
        } else {
            let token = self.token();
            self.model.open_callers.insert(token);
            (Some(token), None)
        };
        self.note(format!(
            "ingress {service}/{method}({argument}) id={id} idem={idempotency_key:?} one_way={one_way}"
        ));
        let invocation = NewInvocation {
            id,
            service: service_id,
            method: method.to_owned(),
            argument: Bytes::from(argument.into_bytes()),
            keyed,
            response_sink: None,
            idempotency_key,
        };
        if invocation.idempotency_key.is_some() {
            // As the shell does: the lookup is registered before its read is submitted.
            self.apply(Command::IdempotencyLookup { id }, ReplyTo::Nobody);
        }
        let kept = invocation.idempotency_key.as_ref().and_then(|_| {
            let p = id.partition(PARTITIONS);
            self.store
                .get(Table::Idempotency, &keys::idempotency(p, &id))
                .and_then(|r| Idempotent::decode(r.as_slice()).ok())
        });
        let idempotent = invocation.idempotency_key.is_some();
        let command = Command::Invoke {
            invocation,
            caller,
            ack,
            kept,
        };
        // An idempotent call reads first: its command is applied in a later step.
        if idempotent {
            self.ready.push((command, ReplyTo::Nobody));
        } else {
            self.apply(command, ReplyTo::Nobody);
        }
    }

    /// Starts a resolver for an awakeable that waits (if any).
    fn resolve_awakeable(&mut self) -> bool {
        let mut waiting: Vec<String> = self
            .state
            .invocations
            .iter()
            .filter(|(_, i)| i.service.service == "awaiter")
            .filter(|(_, i)| i.entries.get(1).is_some_and(|e| !e.completed))
            .map(|(id, _)| awakeable_id(id, 1))
            .filter(|a| {
                if self.draining {
                    !self.model.drain_resolving.contains(a)
                } else {
                    !self.model.resolving.contains(a)
                }
            })
            .collect();
        waiting.sort();
        let Some(awakeable) = self.rng.pick(&waiting).cloned() else {
            return false;
        };
        if self.draining {
            self.model.drain_resolving.insert(awakeable.clone());
        }
        self.model.resolving.insert(awakeable.clone());
        let service_id = ServiceId {
            service: "resolver".into(),
            key: self.clock.fresh_uuid().to_vec().into(),
        };
        let id = InvocationId::from_parts(service_id.partition_key(), self.clock.fresh_uuid());
        let token = self.token();
        self.acks.insert(token, id);
        self.note(format!("resolve {awakeable} by {id}"));
        self.apply(
            Command::Invoke {
                invocation: NewInvocation {
                    id,
                    service: service_id,
                    method: "resolve".into(),
                    argument: Bytes::from(awakeable.into_bytes()),
                    keyed: false,
                    response_sink: None,
                    idempotency_key: None,
                },
                caller: None,
                ack: Some(token),
                kept: None,
            },
            ReplyTo::Nobody,
        );
        true
    }

    /// Applies one of the commands whose reads are done.
    fn apply_ready(&mut self) -> bool {
        if self.ready.is_empty() {
            return false;
        }
        let at = self.rng.below(self.ready.len());
        let (command, to) = self.ready.swap_remove(at);
        self.note(format!("apply ready {}", short(&command)));
        if let Some(reply) = self.apply(command, to) {
            self.reply(to, reply);
        }
        true
    }

    /// Starts an attempt of an invocation told to run: reads its journal, replays it.
    fn start_attempt(&mut self, from_retry: bool) -> bool {
        let queue = if from_retry {
            &mut self.retrying
        } else {
            &mut self.to_start
        };
        if queue.is_empty() {
            return false;
        }
        let at = self.rng.below(queue.len());
        let id = queue.swap_remove(at);
        let plan = match self.apply(Command::AttemptStarted { id }, ReplyTo::Nobody) {
            Some(Reply::Attempt(Some(plan))) => plan,
            Some(Reply::Attempt(None)) => return true,
            other => panic!("attempt start of {id} answered {other:?}"),
        };
        if plan.fresh.is_none() {
            // The shell reads the journal (and its barrier follows the read).
            let writes = self.holds.take(&id);
            self.submit_held(writes);
        }
        let mut attempt = self.replay(id, &plan);
        if plan.fresh.is_some() && plan.keyed && self.rng.chance(500) {
            // The state the shell sends with a fresh Start: every state write decided so far
            // (its cache), held ones included.
            let key = keys::state(plan.partition, &plan.service, b"n");
            attempt.eager = Some(self.decided(Table::State, &key));
        }
        self.note(format!("attempt of {id} starts at entry {}", attempt.next));
        if plan.fresh.is_none() {
            // As the shell does: the replayed journal goes out after a barrier (an empty batch).
            let read = self
                .store
                .scan(Table::Journal, &keys::journal_prefix(plan.partition, &id))
                .into_iter()
                .map(|(key, value)| (key, Entry::decode(&value).is_some_and(|e| e.completed)))
                .collect();
            attempt.barrier = Some(read);
            self.pending.push_back(Pending {
                batch: WriteBatch::new(),
                actions: Vec::new(),
                reply: Some(Reply::Attempt(None)),
                to: ReplyTo::Replay(id),
            });
        }
        self.attempts.insert(id, attempt);
        true
    }

    /// A replaying attempt's barrier is durable: the endpoint sees its journal now, which must be
    /// durable as read (a completion sent to an SDK only once durable).
    fn replay_passes(&mut self, id: InvocationId) {
        let Some(attempt) = self.attempts.get_mut(&id) else {
            return;
        };
        for (key, completed) in attempt.barrier.take().unwrap_or_default() {
            let durable = self.store.durable.get(&(Table::Journal as u8, key));
            assert!(
                durable
                    .and_then(|e| Entry::decode(e))
                    .is_some_and(|e| e.completed || !completed),
                "an attempt of {id} replays a journal entry that is not durable as read"
            );
        }
        self.note(format!("{id}'s replay passes its barrier"));
    }

    fn replay(&mut self, id: InvocationId, plan: &AttemptPlan) -> Attempt {
        let journal: Vec<Entry> = match &plan.fresh {
            Some(input) => vec![input.clone()],
            None => {
                let rows = self
                    .store
                    .scan(Table::Journal, &keys::journal_prefix(plan.partition, &id));
                rows.iter()
                    .enumerate()
                    .map(|(position, (key, value))| {
                        let index = u32::from_be_bytes(key[key.len() - 4..].try_into().unwrap());
                        assert_eq!(index as usize, position, "journal of {id} has a gap");
                        Entry::decode(value).expect("decodable entry")
                    })
                    .collect()
            }
        };
        assert_eq!(
            journal.len() as u32,
            plan.journal_length,
            "journal of {id} in storage and in memory differ"
        );
        let input = match journal[0].ty {
            types::POLL_INPUT_STREAM => {
                restate::protocol::messages::PollInputStreamEntryMessage::decode(
                    journal[0].payload.clone(),
                )
                .unwrap()
                .value
            }
            ty => panic!("entry 0 of {id} has type {ty:#x}"),
        };
        let script = script(&plan.service.service, &plan.method, &input);
        let mut attempt = Attempt {
            script,
            next: journal.len() as u32,
            completed: HashSet::new(),
            results: HashMap::new(),
            started_ms: self.clock.now.get(),
            appending: false,
            barrier: None,
            eager: None,
        };
        for (index, entry) in journal.iter().enumerate() {
            let step = &attempt.script[index];
            assert_eq!(
                entry.ty,
                step.ty(),
                "entry {index} of {id} replays as {step:?}: the journal does not match the handler"
            );
            let index = index as EntryIndex;
            if entry.ty == types::SIDE_EFFECT || entry.completed {
                attempt.record(index, stored_result(entry).as_ref());
            }
        }
        attempt
    }

    /// One move of a running attempt: send its next entry, end with its output, suspend, or fail.
    fn attempt_step(&mut self) -> bool {
        let mut ids: Vec<InvocationId> = self
            .attempts
            .iter()
            .filter(|(_, a)| !a.appending && a.barrier.is_none())
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        let Some(id) = self.rng.pick(&ids).copied() else {
            return false;
        };
        if !self.draining && self.rng.chance(30) {
            return self.fail_attempt(id);
        }
        let attempt = &self.attempts[&id];
        if let Some(waiting) = attempt.blocked_on() {
            if self.draining || self.rng.chance(500) {
                let known: Vec<EntryIndex> = attempt.completed.iter().copied().collect();
                self.note(format!("{id} suspends on {waiting}"));
                let command = Command::Suspend {
                    id,
                    indexes: vec![waiting],
                    known_completed: known,
                };
                self.attempts.get_mut(&id).unwrap().appending = true;
                if let Some(Reply::Suspended(outcome)) = self.apply(command, ReplyTo::Suspend(id)) {
                    self.suspended(id, outcome);
                }
            }
            return true;
        }
        let index = attempt.next;
        if attempt.script[index as usize] == Step::Output {
            return self.output(id);
        }
        let frame = frame_for(attempt, index, self.clock.now.get());
        if Read::needs_state(&frame) {
            // The shell reads the instance's state: the rows held for it go first.
            if let Some(invocation) = self.state.invocations.get(&id) {
                let writes = self.holds.take_instance(&invocation.service.clone());
                self.submit_held(writes);
            }
        }
        let Some(read) = self.read_for(id, &frame) else {
            // Cancelled meanwhile: the shell answers Gone and the attempt ends.
            self.attempts.remove(&id);
            return true;
        };
        self.note(format!("{id} appends {index} ({:#x})", frame.ty));
        let attempt = self.attempts.get_mut(&id).unwrap();
        attempt.next += 1;
        if frame.ty == types::GET_STATE && frame.is_completed_entry() {
            // Answered from the eager state: the SDK knows the result.
            let eager = attempt
                .eager
                .clone()
                .expect("only eager GetStates are sent completed");
            let result = eager.map(completion_message::Result::Value);
            attempt.record(index, result.as_ref());
        }
        if frame.ty == types::SET_STATE {
            self.set_state_decided.insert(id);
        }
        let command = Command::Append {
            id,
            index,
            frame: frame.clone(),
            read,
        };
        // As the shell does: the decision is answered at once and the attempt goes on sending; the
        // entry's completion reaches it once durable (checked like every forwarded completion).
        let mut out = self.transition(command);
        let reply = out.reply.take();
        if let Some(Reply::Appended(Ok(Some(completion)))) = &reply {
            out.actions.push(Action::Forward {
                id,
                completion: completion.clone(),
            });
        }
        self.submit(out, ReplyTo::Nobody);
        match reply {
            Some(Reply::Appended(Ok(_))) => {}
            // Cancelled meanwhile: the attempt ends.
            Some(Reply::Appended(Err(AppendError::Gone))) | None => {
                self.attempts.remove(&id);
            }
            Some(Reply::Appended(Err(e))) => panic!("append {index} of {id} failed: {e}"),
            Some(other) => panic!("reply {other:?} to an append"),
        }
        true
    }

    fn read_for(&self, id: InvocationId, frame: &Frame) -> Option<Read> {
        let mut read = Read::default();
        let invocation = self.state.invocations.get(&id)?;
        if Read::needs_state(frame) {
            let key = keys::state(invocation.partition, &invocation.service, b"n");
            read.state_value = Some(self.store.get(Table::State, &key).map(Bytes::from));
        }
        Some(read)
    }

    fn output(&mut self, id: InvocationId) -> bool {
        let attempt = self.attempts.remove(&id).unwrap();
        let value = match attempt.script.get(1) {
            Some(Step::GetState) => {
                let current = attempt
                    .results
                    .get(&1)
                    .map(|v| decode_count(v))
                    .unwrap_or(0);
                (current + 1).to_string().into_bytes()
            }
            Some(Step::Call(_)) | Some(Step::Awakeable) => {
                attempt.results.get(&1).cloned().unwrap_or_default()
            }
            _ => Vec::new(),
        };
        self.note(format!(
            "{id} outputs {:?}",
            String::from_utf8_lossy(&value)
        ));
        let outcome = Ok(Bytes::from(value));
        self.apply(Command::Finish { id, outcome }, ReplyTo::Finish);
        true
    }

    fn fail_attempt(&mut self, id: InvocationId) -> bool {
        self.note(format!("attempt of {id} fails"));
        self.attempts.remove(&id);
        self.apply(
            Command::RecordFailure {
                id,
                message: "connection reset".into(),
                retry_in_ms: 100,
            },
            ReplyTo::Nobody,
        );
        if self.state.invocations.contains_key(&id) {
            self.retrying.push(id);
        }
        true
    }

    /// Delivers the head message of one (producer, target) pair; a re-delivery of an older one
    /// sometimes.
    fn deliver(&mut self) -> bool {
        if self.rng.chance(100) {
            if let Some(stale) = self.rng.pick(&self.delivered).cloned() {
                self.note(format!("re-deliver {}/{}", stale.producer, stale.sequence));
                self.deliver_message(stale, false);
                return true;
            }
        }
        let in_flight: HashSet<_> = self.shipping.values().map(|(p, t, _)| (*p, *t)).collect();
        let pairs: Vec<_> = self
            .outbound
            .keys()
            .filter(|pair| !in_flight.contains(pair))
            .copied()
            .collect();
        let Some(pair) = self.rng.pick(&pairs).copied() else {
            return false;
        };
        let message = self.outbound[&pair].front().cloned().unwrap();
        self.note(format!(
            "deliver {}/{} to partition {}",
            message.producer, message.sequence, message.target
        ));
        self.deliver_message(message, true);
        true
    }

    /// Delivers `message`; its Ack (once durable) acknowledges it to the producer, which deletes it.
    fn deliver_message(&mut self, message: Shipped, head: bool) {
        if head {
            self.delivered.push(message.clone());
            if self.delivered.len() > 32 {
                self.delivered.remove(0);
            }
        }
        let entry = self.entry_for(&message.row);
        let token = self.token();
        if head {
            self.shipping
                .insert(token, (message.producer, message.target, message.sequence));
        }
        let command = Command::Deliver {
            producer: message.producer,
            sequence: message.sequence,
            message: message.row,
            ack: token,
            entry,
        };
        if self.rng.chance(400) {
            self.ready.push((command, ReplyTo::Nobody));
        } else {
            self.apply(command, ReplyTo::Nobody);
        }
    }

    /// The stored entry a completion is for, read as the shell does (when memory says it exists).
    fn entry_for(&self, row: &OutboxMessage) -> Option<Entry> {
        let Some(outbox_message::Message::Complete(c)) = &row.message else {
            return None;
        };
        let id = InvocationId::from_slice(&c.invocation_id)?;
        if !self.state.entry_exists(&id, c.entry_index) {
            return None;
        }
        let key = keys::journal(id.partition(PARTITIONS), &id, c.entry_index);
        self.store
            .get(Table::Journal, &key)
            .and_then(|v| Entry::decode(&v))
    }

    /// A completion from outside that should not be applied: a wrong entry type, past the end, or
    /// for an entry already completed. Asserts nothing of it changed the journal in memory.
    fn forge_completion(&mut self) -> bool {
        let mut ids: Vec<InvocationId> = self.state.invocations.keys().copied().collect();
        ids.sort();
        let Some(id) = self.rng.pick(&ids).copied() else {
            return false;
        };
        let entries = self.state.invocations[&id].entries.clone();
        let index = self.rng.below(entries.len() + 2) as EntryIndex;
        let entry_type = *self
            .rng
            .pick(&[
                types::SLEEP,
                types::INVOKE,
                types::AWAKEABLE,
                types::GET_STATE,
                0,
            ])
            .unwrap();
        let admitted = |ty: u16| match entry_type {
            0 => ty == types::INVOKE || ty == types::AWAKEABLE,
            t => t == ty,
        };
        let legit = entries
            .get(index as usize)
            .is_some_and(|e| admitted(e.ty) && !e.completed);
        if legit {
            return false; // that would be a genuine completion
        }
        self.forged_sequence += 1;
        let row = OutboxMessage {
            message: Some(outbox_message::Message::Complete(CompletionRequest {
                invocation_id: Bytes::copy_from_slice(id.as_bytes()),
                entry_index: index,
                result: codec::result_bytes(&completion_message::Result::Value(b"forged".to_vec())),
                entry_type: u32::from(entry_type),
                source: Bytes::new(),
            })),
        };
        self.note(format!(
            "forge completion of {id}/{index} as {entry_type:#x}"
        ));
        let entry = self.entry_for(&row);
        let token = self.token();
        self.apply(
            Command::Deliver {
                producer: 1000,
                sequence: self.forged_sequence,
                message: row,
                ack: token,
                entry,
            },
            ReplyTo::Nobody,
        );
        let after = self.state.invocations.get(&id).map(|i| i.entries.clone());
        if let Some(after) = after {
            assert_eq!(
                after, entries,
                "a forged completion of {id}/{index} changed its journal"
            );
        }
        true
    }

    /// Cancels a running, starting or queued invocation, or one accepted from the ingress earlier
    /// (which may have ended, durably or not).
    fn cancel(&mut self) -> bool {
        let state = &self.state;
        let mut ids: Vec<InvocationId> = state.invocations.keys().copied().collect();
        ids.extend(state.starting.keys().copied());
        ids.extend(self.model.accepted.iter().copied());
        ids.sort();
        ids.dedup();
        let Some(id) = self.rng.pick(&ids).copied() else {
            return false;
        };
        let caller = self.token();
        self.note(format!("cancel {id} (caller {caller})"));
        self.model.open_callers.insert(caller);
        self.model.cancellers.insert(caller, id);
        let command = Command::Cancel {
            id,
            caller: Some(caller),
        };
        self.apply(command, ReplyTo::Nobody);
        true
    }

    /// The operator's answer to a cancellation, found or not, tells that `id` is not running and
    /// will not run: that must hold after a crash too, so nothing of it may be durable any more.
    fn cancel_answered(&mut self, id: InvocationId, found: bool) {
        self.note(format!("  -> cancel of {id} answered: found {found}"));
        let p = id.partition(PARTITIONS);
        let status = self
            .store
            .durable
            .contains_key(&(Table::Status as u8, keys::status(p, &id)));
        let queued = self.store.durable.iter().any(|((t, _), v)| {
            *t == Table::Inbox as u8
                && InboxEntry::decode(v.as_slice())
                    .is_ok_and(|e| e.invocation_id.as_ref() == id.as_bytes())
        });
        assert!(
            !status && !queued,
            "the cancellation of {id} is answered (found: {found}) while it is durably {}",
            if status { "running" } else { "queued" }
        );
    }

    /// The timer task: a reload (its read now, its result applied in a later step), or a round of
    /// due timers (their reads now, their firings in a later step), as the shell's `run_timers`.
    fn timers(&mut self) -> bool {
        match std::mem::replace(&mut self.timer_task, TimerTask::Idle) {
            TimerTask::Loading(keys, complete) => {
                self.note(format!("timers loaded: {}", keys.len()));
                self.apply(Command::TimersLoaded { keys, complete }, ReplyTo::Nobody);
                return true;
            }
            TimerTask::Firing(reads) => {
                self.fire_due(reads);
                return true;
            }
            TimerTask::Idle => {}
        }
        if self.state.timers.needs_reload() || self.rng.chance(50) {
            self.apply(Command::TimersLoading, ReplyTo::Nobody);
            let (keys, complete) = self.scan_timers();
            self.note("timers reload starts".into());
            self.timer_task = TimerTask::Loading(keys, complete);
            return true;
        }
        let due = self.state.timers.due(self.clock.now.get());
        if due.is_empty() {
            return false;
        }
        self.note(format!("timers due: {}, reads submitted", due.len()));
        let reads = due.into_iter().map(|key| self.read_timer(key)).collect();
        self.timer_task = TimerTask::Firing(reads);
        true
    }

    /// What the shell reads for a due timer: its row, and the entry if memory has a Sleep there.
    fn read_timer(&self, key: TimerKey) -> (TimerKey, Option<Timer>, Option<Entry>) {
        let row_key = keys::timer(key.partition, key.wake_ms, &key.id, key.index);
        let row = self
            .store
            .get(Table::Timers, &row_key)
            .and_then(|r| Timer::decode(r.as_slice()).ok());
        let entry = self
            .state
            .sleeps_at(&key.id, key.index)
            .then(|| {
                let key = keys::journal(key.partition, &key.id, key.index);
                self.store
                    .get(Table::Journal, &key)
                    .and_then(|v| Entry::decode(&v))
            })
            .flatten();
        (key, row, entry)
    }

    /// Fires a round's timers in order, each while it is still the nearest in memory.
    fn fire_due(&mut self, reads: Vec<(TimerKey, Option<Timer>, Option<Entry>)>) {
        for (key, row, entry) in reads {
            if self.state.timers.next() != Some(key) {
                self.note(format!(
                    "timer {}/{} no longer the nearest",
                    key.id, key.index
                ));
                return;
            }
            self.note(format!("timer {}/{} fires", key.id, key.index));
            assert!(self.fired.insert(key), "timer {key:?} fires a second time");
            self.assert_none_stored_due_before(&key);
            self.apply(Command::FireTimer { key, row, entry }, ReplyTo::Nobody);
        }
    }

    /// Timers fire in wake-up order: none stored is due before the one firing.
    fn assert_none_stored_due_before(&self, key: &TimerKey) {
        for p in 0..PARTITIONS {
            for (row_key, _) in self.store.scan(Table::Timers, &keys::partition(p)) {
                let (wake_ms, ..) = keys::parse_timer(&row_key).expect("timer key");
                assert!(
                    wake_ms >= key.wake_ms,
                    "timer {key:?} fires while a stored one is due at {wake_ms}"
                );
            }
        }
    }

    fn scan_timers(&self) -> (Vec<TimerKey>, bool) {
        let limit = self.limits.timers_in_memory;
        let mut found = Vec::new();
        let mut complete = true;
        for p in 0..PARTITIONS {
            let rows = self.store.scan(Table::Timers, &keys::partition(p));
            if rows.len() >= limit {
                complete = false;
            }
            for (key, _) in rows.into_iter().take(limit) {
                let (wake_ms, id, index) = keys::parse_timer(&key).expect("timer key");
                found.push(TimerKey {
                    wake_ms,
                    partition: p,
                    id,
                    index,
                });
            }
        }
        (found, complete)
    }

    /// The process dies: memory, unwritten batches, attempts, callers and messages in flight are lost.
    fn crash(&mut self) {
        self.note(format!("CRASH ({} writes lost)", self.pending.len()));
        self.pending.clear();
        self.holds = Holds::new(self.hold.0, self.hold.1);
        self.held_starts.clear();
        self.set_state_decided.clear();
        self.store.visible = self.store.durable.clone();
        self.state = State::new(self.inbox_limits.clone());
        self.ready.clear();
        self.attempts.clear();
        self.to_start.clear();
        self.retrying.clear();
        self.outbound.clear();
        self.delivered.clear();
        self.shipping.clear();
        self.acks.clear();
        self.timer_task = TimerTask::Idle;
        self.fired.clear();
        for caller in std::mem::take(&mut self.model.open_callers) {
            // The connection died with the process: it is never answered.
            self.model.answered.insert(caller);
        }
        self.model.waiting.clear();
        self.model.resolving.clear();
        self.recover();
    }

    /// Recovery as the shell does it: each partition's tables, then timers, then orphaned inboxes.
    fn recover(&mut self) {
        let env = Env {
            clock: &self.clock,
            resolver: &SimResolver,
            limits: &self.limits,
        };
        let mut out = Effects::default();
        for p in 0..PARTITIONS {
            for status in self.store.scan(Table::Status, &keys::partition(p)) {
                let id = InvocationId::from_slice(&status.0[4..]).unwrap();
                let prefix = keys::journal_prefix(p, &id);
                let journal = self.store.scan(Table::Journal, &prefix);
                let completions = self.store.scan(Table::Completions, &prefix);
                self.state
                    .recover_invocation(p, &status, &journal, &completions, &mut out);
            }
            let inbox = self.store.scan(Table::Inbox, &keys::partition(p));
            self.state.recover_inbox(p, &inbox);
            let dedup = self.store.scan(Table::Dedup, &keys::partition(p));
            self.state.recover_dedup(p, &dedup);
            let outbox = self.store.scan(Table::Outbox, &keys::partition(p));
            let next = self.store.get(Table::Fsm, &keys::outbox_next(p));
            self.state
                .recover_outbox(&env, p, &outbox, next.as_deref(), &mut out);
        }
        assert_eq!(self.state.corrupt_rows, 0, "recovery found unreadable rows");
        let mut loading = Effects::default();
        self.state.apply(&env, Command::TimersLoading, &mut loading);
        let (keys, complete) = self.scan_timers();
        self.state
            .apply(&env, Command::TimersLoaded { keys, complete }, &mut loading);
        self.state.recover_orphaned_inboxes(&env, &mut out);
        self.submit(out, ReplyTo::Nobody);
    }

    fn advance_clock(&mut self) {
        let by = 1 + self.rng.below(400) as u64;
        self.clock.now.set(self.clock.now.get() + by);
        self.expire_holds();
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Ship(messages) => messages
            .iter()
            .map(|m| {
                let what = match &m.row.message {
                    Some(outbox_message::Message::Invoke(r)) => format!(
                        "invoke {} {}",
                        r.service,
                        InvocationId::from_slice(&r.invocation_id).unwrap()
                    ),
                    Some(outbox_message::Message::Complete(c)) => format!(
                        "complete {}/{}",
                        InvocationId::from_slice(&c.invocation_id).unwrap(),
                        c.entry_index
                    ),
                    None => "?".into(),
                };
                format!("ship {}/{} {what}", m.producer, m.sequence)
            })
            .collect::<Vec<_>>()
            .join(", "),
        Action::Ended { id, outcome } => format!("ended {id} ok={}", outcome.is_ok()),
        other => {
            let text = format!("{other:?}");
            text.chars().take(100).collect()
        }
    }
}

fn short(command: &Command) -> String {
    let text = format!("{command:?}");
    text.chars().take(120).collect()
}

// ---------------------------------------------------------------------------------------------
// Invariants.

impl World {
    /// Checked after every step.
    fn check(&self) {
        let state = &self.state;
        // What reads would see: the store, and the held rows (written before any read).
        let view = self.decided_rows();
        for (id, invocation) in &state.invocations {
            if invocation.keyed {
                assert_eq!(
                    state.locks.get(&invocation.service),
                    Some(id),
                    "{id} runs without holding its key"
                );
            }
            let prefix = keys::journal_prefix(invocation.partition, id);
            let rows = Store::scan_rows(&view, Table::Journal, &prefix);
            assert_eq!(
                rows.len(),
                invocation.entries.len(),
                "journal of {id}: {} rows written, {} in memory",
                rows.len(),
                invocation.entries.len()
            );
            for (position, ((key, value), meta)) in rows.iter().zip(&invocation.entries).enumerate()
            {
                let index = u32::from_be_bytes(key[key.len() - 4..].try_into().unwrap());
                assert_eq!(
                    index as usize, position,
                    "journal of {id} is not contiguous"
                );
                let entry = Entry::decode(value).unwrap();
                assert_eq!(
                    (entry.ty, entry.completed || entry.ty == types::SIDE_EFFECT),
                    (meta.ty, meta.completed || meta.ty == types::SIDE_EFFECT),
                    "entry {index} of {id}: row and memory differ"
                );
            }
        }
        for (service, holder) in &state.locks {
            assert!(
                state.invocations.contains_key(holder) || state.starting.contains_key(holder),
                "{service:?} is held by {holder}, which is neither running nor starting"
            );
        }
        let mut running_keys = HashSet::new();
        for id in self.attempts.keys() {
            if let Some(invocation) = state.invocations.get(id) {
                if invocation.keyed {
                    assert!(
                        running_keys.insert(invocation.service.clone()),
                        "two attempts run on {:?} at once",
                        invocation.service
                    );
                }
            }
        }
    }

    /// Checked once drained.
    fn check_quiet(&self) {
        assert!(self.pending.is_empty() && self.ready.is_empty());
        assert!(self.attempts.is_empty(), "attempts still running");
        assert!(self.outbound.is_empty(), "messages still in flight");
        assert!(
            self.state.invocations.is_empty(),
            "invocations left: {:?}",
            self.state.invocations.iter().collect::<Vec<_>>()
        );
        assert!(self.state.inboxes.is_empty() && self.state.starting.is_empty());
        assert!(self.state.locks.is_empty(), "keys still held");
        for table in [
            Table::Status,
            Table::Journal,
            Table::Inbox,
            Table::Outbox,
            Table::Timers,
            Table::Completions,
        ] {
            assert_eq!(
                self.store.durable_count(table),
                0,
                "rows left behind in {}",
                table.name()
            );
        }
        for key in COUNTER_KEYS {
            let service = ServiceId {
                service: "counter".into(),
                key: Bytes::from(key.as_bytes().to_vec()),
            };
            let p = (partition_key("counter", key.as_bytes()) % u64::from(PARTITIONS)) as u32;
            let stored = self
                .store
                .durable
                .get(&(Table::State as u8, keys::state(p, &service, b"n")))
                .map(|v| decode_count(v))
                .unwrap_or(0);
            let model = self
                .model
                .increments
                .get(key.as_bytes())
                .map_or(0, |s| s.len() as u64);
            assert_eq!(
                stored, model,
                "counter {key}: stored {stored}, model {model}"
            );
        }
        for id in &self.model.accepted {
            assert!(self.model.ended.contains(id), "accepted {id} never ended");
        }
        assert!(
            self.model.open_callers.is_empty(),
            "callers never answered: {:?}",
            self.model.open_callers
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Runs.

impl World {
    /// One random step; false when the picked move had nothing to do.
    fn step(&mut self) -> bool {
        self.steps += 1;
        let roll = self.rng.below(1000);
        let done = match roll {
            0..=249 => {
                let any = !self.pending.is_empty();
                self.make_durable();
                any
            }
            250..=349 => self.apply_ready(),
            350..=449 => self.start_attempt(false),
            450..=479 => self.start_attempt(true),
            480..=679 => self.attempt_step(),
            680..=779 => self.deliver(),
            780..=829 => self.timers(),
            830..=879 => {
                self.advance_clock();
                true
            }
            880..=959 => {
                self.ingress_call();
                true
            }
            960..=974 => self.resolve_awakeable(),
            975..=989 => self.forge_completion(),
            990..=995 => self.cancel(),
            _ => {
                self.crash();
                true
            }
        };
        self.check();
        done
    }

    /// Runs until nothing is left to do, without failures or new work (but resolving awakeables).
    fn drain(&mut self) {
        self.draining = true;
        for _ in 0..DRAIN_STEPS {
            self.steps += 1;
            let progressed = if !self.pending.is_empty() {
                self.make_durable();
                true
            } else {
                self.apply_ready()
                    || self.start_attempt(false)
                    || self.start_attempt(true)
                    || self.attempt_step()
                    || self.deliver()
                    || self.timers()
                    || self.next_timer()
                    || self.resolve_awakeable()
                    || self.expire_all_holds()
            };
            self.check();
            if !progressed {
                return;
            }
        }
        panic!("not quiet after {DRAIN_STEPS} drain steps");
    }

    /// Moves the clock to the next timer, if one waits.
    fn next_timer(&mut self) -> bool {
        match self.state.timers.next() {
            Some(key) if key.wake_ms > self.clock.now.get() => {
                self.clock.now.set(key.wake_ms);
                true
            }
            _ => false,
        }
    }
}

/// Runs one seed; returns the steps taken.
fn run_seed(world: &mut World) -> u64 {
    world.recover();
    for _ in 0..STEPS {
        world.step();
    }
    world.drain();
    world.check_quiet();
    world.steps
}

#[test]
fn simulation() {
    let single: Option<u64> = std::env::var("RESTATE_SIM_SEED")
        .ok()
        .map(|s| s.parse().expect("RESTATE_SIM_SEED is a number"));
    let runs: u64 = std::env::var("RESTATE_SIM_RUNS")
        .ok()
        .map_or(200, |s| s.parse().expect("RESTATE_SIM_RUNS is a number"));
    let seeds: Vec<u64> = match single {
        Some(seed) => vec![seed],
        None => (0..runs).collect(),
    };
    let started = std::time::Instant::now();
    let mut steps = 0;
    for seed in &seeds {
        let mut world = World::new(*seed);
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_seed(&mut world)));
        match result {
            Ok(taken) => steps += taken,
            Err(panic) => {
                let mut report = String::new();
                let _ = writeln!(
                    report,
                    "simulation failed at seed {seed} (replay: RESTATE_SIM_SEED={seed}); last steps:"
                );
                let shown = if single.is_some() { usize::MAX } else { 60 };
                let from = world.trace.len().saturating_sub(shown);
                for line in &world.trace[from..] {
                    let _ = writeln!(report, "  {line}");
                }
                eprintln!("{report}");
                std::panic::resume_unwind(panic);
            }
        }
    }
    eprintln!(
        "simulation: {} seeds, {steps} steps in {:.1?}",
        seeds.len(),
        started.elapsed()
    );
}

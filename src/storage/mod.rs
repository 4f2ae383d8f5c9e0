//! The storage thread: exactly one OS thread owns the RocksDB database.
//!
//! Executors never touch RocksDB. They send a `Request` over a bounded crossbeam channel and await the
//! reply on a `futures` oneshot, whose waker works across threads, so an executor never blocks. The thread
//! drains everything that is queued, merges all writes into **one** `WriteBatch` and applies it (WAL
//! append and memtable, no fsync), then serves the reads of the same drain: a read sees every write
//! submitted before it, durable or not.
//!
//! Durability is the job of a second, smaller thread (`restate-wal-sync`), which serves no requests:
//! with `sync_writes` the storage thread hands each applied group's waiters to it, and it fsyncs the
//! WAL once for every group applied so far (RocksDB `SyncWAL`) and then answers them. The WAL is one
//! append-only log, so a sync makes a **prefix** of the applied groups durable, in the order they were
//! applied; while it runs the storage thread keeps applying writes and serving reads, which therefore
//! never wait for an fsync (group commit by pipelining: the next sync covers everything applied
//! meanwhile). Without `sync_writes` a write is answered once applied. A caller that needs "everything
//! before now is durable" without writing anything sends an empty batch through
//! [`ordered::Ordered::write`].
//!
//! Back-pressure: a caller first takes a permit of a semaphore sized to the queue, so the channel is never
//! full and nothing is dropped; past the bound callers wait asynchronously. The queue of groups waiting
//! for a sync has the same bound; when it is full the storage thread waits for the sync.

pub mod ordered;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::RecvTimeoutError;

use futures::channel::oneshot;

use crate::config::StorageRocksdb;

/// One column family per table. The names are stable: they are on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Node-level facts (the partition count the data was written with).
    System,
    /// Keyed user state.
    State,
    /// Invocation status per service instance.
    Status,
    /// Per-key durable inbox.
    Inbox,
    /// Outgoing messages to other partitions.
    Outbox,
    /// De-duplication of messages between partitions.
    Dedup,
    /// Per-partition counters (next inbox / outbox sequence numbers).
    Fsm,
    /// Durable timers, ordered by wake-up time.
    Timers,
    /// Invocation journals.
    Journal,
    /// Idempotency keys and the results they map to.
    Idempotency,
    /// Completions that arrived before the journal entry they complete.
    Completions,
}

impl Table {
    /// Whether the table's rows live about as long as one invocation (written and deleted within it).
    fn is_short_lived(self) -> bool {
        matches!(
            self,
            Table::Status
                | Table::Journal
                | Table::Inbox
                | Table::Outbox
                | Table::Timers
                | Table::Completions
        )
    }

    /// Every table, in a fixed order.
    pub const ALL: [Table; 11] = [
        Table::System,
        Table::State,
        Table::Status,
        Table::Inbox,
        Table::Outbox,
        Table::Dedup,
        Table::Fsm,
        Table::Timers,
        Table::Journal,
        Table::Idempotency,
        Table::Completions,
    ];

    /// The table's place in [`Table::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The column family's name.
    pub fn name(self) -> &'static str {
        match self {
            Table::System => "system",
            Table::State => "state",
            Table::Status => "status",
            Table::Inbox => "inbox",
            Table::Outbox => "outbox",
            Table::Dedup => "dedup",
            Table::Fsm => "fsm",
            Table::Timers => "timers",
            Table::Journal => "journal",
            Table::Idempotency => "idempotency",
            Table::Completions => "completions",
        }
    }
}

/// Storage failures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// RocksDB returned an error (I/O, corruption, ...).
    #[error("rocksdb: {0}")]
    RocksDb(String),
    /// The storage thread is gone (shutting down or crashed).
    #[error("storage thread is closed")]
    Closed,
    /// The data directory was written with another partition count.
    #[error(
        "the data directory {path} was created with worker.partitions = {stored}, \
         but the configuration says {configured}; the partition count cannot change"
    )]
    PartitionsMismatch {
        path: String,
        stored: u32,
        configured: u32,
    },
    /// The database directory could not be opened.
    #[error("cannot open database at {path}: {message}")]
    Open { path: String, message: String },
    /// Rows that contradict each other or what was written (a journal with a gap).
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl Error {
    /// Transient errors may succeed when retried; terminal ones will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::RocksDb(_))
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::RocksDb(e.into_string())
    }
}

/// The kinds of [`Op`], in the order of [`Stats::table_ops`]: `put`, `delete`, `delete_range`.
pub const OP_KINDS: [&str; 3] = ["put", "delete", "delete_range"];

/// One write operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or overwrite a row.
    Put {
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Remove a row (absent rows are fine).
    Delete { table: Table, key: Vec<u8> },
    /// Remove every row with `start <= key < end`.
    DeleteRange {
        table: Table,
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

/// Writes that become durable together (all or nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
    /// Nothing outside the runtime waits for this batch to be durable: its fsync may be deferred
    /// (see [`WriteBatch::defer_sync`]).
    deferrable: bool,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a put.
    pub fn put(&mut self, table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put {
            table,
            key: key.into(),
            value: value.into(),
        });
    }
    /// Adds a delete.
    pub fn delete(&mut self, table: Table, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete {
            table,
            key: key.into(),
        });
    }
    /// Adds a range delete (`start <= key < end`).
    pub fn delete_range(
        &mut self,
        table: Table,
        start: impl Into<Vec<u8>>,
        end: impl Into<Vec<u8>>,
    ) {
        self.ops.push(Op::DeleteRange {
            table,
            start: start.into(),
            end: end.into(),
        });
    }
    /// Appends every operation of `other`, after this batch's (the merge is deferrable only if both
    /// were).
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
        self.deferrable &= other.deferrable;
    }
    /// Marks that nothing outside the runtime waits for this batch's durability (with `sync_writes`):
    /// it is applied at once as always, but its fsync may wait until a write that needs one arrives
    /// (which makes it durable too: the WAL is synced as a prefix) or `deferred_sync_delay` passes.
    /// Its waiter is still answered only once it is durable.
    pub fn defer_sync(&mut self) {
        self.deferrable = true;
    }
    /// The operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Counters of the storage thread, readable from any thread (exported on `/metrics`).
#[derive(Debug)]
pub struct Stats {
    /// Write requests acknowledged.
    pub write_requests: AtomicU64,
    /// Group commits performed (RocksDB writes); `write_requests / write_batches` is the mean group size.
    pub write_batches: AtomicU64,
    /// Individual put/delete operations written.
    pub write_ops: AtomicU64,
    /// Point reads and scans served.
    pub reads: AtomicU64,
    /// Put and delete operations per group commit.
    pub batch_ops: crate::metrics::Histogram,
    /// Bytes of each group commit's RocksDB write batch (keys, values and per-operation headers).
    pub batch_bytes: crate::metrics::Histogram,
    /// How long each group commit's RocksDB write took (WAL append and memtables; no fsync).
    pub write_seconds: crate::metrics::Histogram,
    /// WAL fsyncs (with `sync_writes`): each makes every group applied before it durable.
    pub wal_syncs: AtomicU64,
    /// How long each WAL fsync took.
    pub sync_seconds: crate::metrics::Histogram,
    /// Operations written per table ([`Table::index`]) and kind ([`OP_KINDS`]): which rows the
    /// engine's transitions cost (`write_ops` is their sum).
    pub table_ops: [[crate::metrics::Counter; OP_KINDS.len()]; Table::ALL.len()],
    /// Rows in the timers table (durable timers not fired yet): counted at open, then kept by the
    /// commits (a timer row is put once and deleted once, when it fires).
    pub timers: crate::metrics::Counter,
}

impl Default for Stats {
    fn default() -> Self {
        use crate::metrics::{Counter, Histogram, BATCH_BYTES, BATCH_OPS, WRITE_SECONDS};
        Stats {
            write_requests: AtomicU64::default(),
            write_batches: AtomicU64::default(),
            write_ops: AtomicU64::default(),
            reads: AtomicU64::default(),
            batch_ops: Histogram::new(BATCH_OPS),
            batch_bytes: Histogram::new(BATCH_BYTES),
            write_seconds: Histogram::new(WRITE_SECONDS),
            wal_syncs: AtomicU64::default(),
            sync_seconds: Histogram::new(WRITE_SECONDS),
            table_ops: Default::default(),
            timers: Counter::default(),
        }
    }
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub write_requests: u64,
    pub write_batches: u64,
    pub write_ops: u64,
    pub reads: u64,
    pub wal_syncs: u64,
}

impl Stats {
    /// Reads all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            write_requests: self.write_requests.load(Ordering::Relaxed),
            write_batches: self.write_batches.load(Ordering::Relaxed),
            write_ops: self.write_ops.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            wal_syncs: self.wal_syncs.load(Ordering::Relaxed),
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A row: key and value.
pub type Row = (Vec<u8>, Vec<u8>);

/// One bounded piece of a long scan (see [`Storage::scan_chunk`]).
#[derive(Debug, Default)]
pub struct Chunk {
    /// Rows in key order.
    pub rows: Vec<Row>,
    /// Where the next chunk starts (just after the last row); `None` when the range is exhausted.
    pub resume: Option<Vec<u8>>,
}

enum Request {
    Write(WriteBatch, Reply<()>),
    Get(Table, Vec<u8>, Reply<Option<Vec<u8>>>),
    /// Rows with `start <= key < end` (no end: to the end of the table), at most `limit`.
    Scan {
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
        reply: Reply<Vec<Row>>,
    },
    /// One chunk of a long scan: rows with `start <= key < end`, stopping after `max_rows` rows or
    /// once `max_bytes` of keys and values are read (at least one row), so that it holds the thread
    /// (and the writes queued behind it) for a bounded time.
    ScanChunk {
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        max_rows: usize,
        max_bytes: usize,
        reply: Reply<Chunk>,
    },
    /// Flush and stop the thread.
    Close(oneshot::Sender<()>),
}

struct Queued {
    request: Request,
    /// Held while the request is queued; released when the thread takes it.
    _permit: Option<async_lock::SemaphoreGuardArc>,
}

/// A place in the storage queue, taken by [`Storage::permit`].
pub struct Permit(async_lock::SemaphoreGuardArc);

/// A cheap, cloneable, `Send` handle to the storage thread.
#[derive(Clone)]
pub struct Storage {
    tx: crossbeam_channel::Sender<Queued>,
    permits: Arc<async_lock::Semaphore>,
    stats: Arc<Stats>,
}

/// The storage thread itself; join it with [`StorageThread::close`].
pub struct StorageThread {
    handle: Storage,
    join: Option<JoinHandle<()>>,
}

/// Key under which the partition count is recorded in the `system` table.
const PARTITIONS_KEY: &[u8] = b"partitions";

/// Opens (creating if needed) the database and starts the storage thread.
///
/// `partitions` is checked against the count recorded at first start.
pub fn open(config: &StorageRocksdb, path: &Path, partitions: u32) -> Result<StorageThread, Error> {
    let db = open_db(path, config)?;
    check_partitions(&db, path, partitions)?;
    let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity + 1);
    let stats = Arc::new(Stats::default());
    // This thread writes the gauge once before the storage thread (its owner from then on) starts.
    stats.timers.set(count_rows(&db, Table::Timers)?);
    let handle = Storage {
        tx,
        permits: Arc::new(async_lock::Semaphore::new(config.queue_capacity)),
        stats: stats.clone(),
    };
    let db = Arc::new(db);
    let spawn_error = |e: std::io::Error| Error::Open {
        path: path.display().to_string(),
        message: format!("cannot spawn a storage thread: {e}"),
    };
    let syncer = if config.sync_writes {
        let (tx, rx) = crossbeam_channel::bounded(config.queue_capacity.max(1));
        let applied = Arc::new(AtomicU64::new(0));
        let (db, applied_seen, stats) = (db.clone(), applied.clone(), stats.clone());
        let pacing = SyncPacing {
            max_groups: config.queue_capacity.max(1),
            defer_limit: config.deferred_sync_delay,
            interval: config.group_commit_interval,
        };
        let join = std::thread::Builder::new()
            .name("restate-wal-sync".into())
            .spawn(move || {
                let sync = || db.flush_wal(true).map_err(Error::from);
                sync_wal(sync, rx, applied_seen, stats, pacing)
            })
            .map_err(spawn_error)?;
        Some(Syncer { tx, applied, join })
    } else {
        None
    };
    let worker = Worker {
        db,
        rx,
        stats,
        syncer,
        max_batch_requests: config.max_batch_requests,
    };
    let join = std::thread::Builder::new()
        .name("restate-rocksdb".into())
        .spawn(move || worker.run())
        .map_err(spawn_error)?;
    Ok(StorageThread {
        handle,
        join: Some(join),
    })
}

fn open_db(path: &Path, config: &StorageRocksdb) -> Result<rocksdb::DB, Error> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // WAL writes are batched by us; let RocksDB not wait on its own write threads.
    opts.set_max_background_jobs(2);
    // RocksDB's own text log. Debian's library logs at DEBUG by default, one line per WAL sync
    // (`FlushWAL sync=true`): CPU on the sync thread for every fsync, and a file that grew without
    // bound (RocksDB rotates it only when told a size).
    opts.set_log_level(rocksdb::LogLevel::Info);
    opts.set_max_log_file_size(config.info_log_max_file_size);
    opts.set_keep_log_file_num(config.info_log_files_kept);
    let cfs = Table::ALL
        .iter()
        .map(|&t| rocksdb::ColumnFamilyDescriptor::new(t.name(), table_options(t, config)));
    rocksdb::DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| Error::Open {
        path: path.display().to_string(),
        message: e.into_string(),
    })
}

/// The column-family options of `table`.
///
/// The tables whose rows live about as long as one invocation get a small memtable
/// (`short_lived_write_buffer_size`): nearly every row is put and deleted within milliseconds, so the
/// memtable is mostly dead versions and tombstones, and inserting into a 64 MiB skiplist of them was
/// the largest single cost of the storage thread (see benches/README.md, "CPU per invocation").
fn table_options(table: Table, config: &StorageRocksdb) -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    if table.is_short_lived() {
        opts.set_write_buffer_size(config.short_lived_write_buffer_size);
    }
    opts
}

/// Rows in `table` (one pass over its keys, at open).
fn count_rows(db: &rocksdb::DB, table: Table) -> Result<u64, Error> {
    let cf = db.cf_handle(table.name()).expect("every table is opened");
    let mut rows = 0;
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        item?;
        rows += 1;
    }
    Ok(rows)
}

fn check_partitions(db: &rocksdb::DB, path: &Path, partitions: u32) -> Result<(), Error> {
    let cf = db.cf_handle(Table::System.name()).expect("system cf");
    match db.get_cf(cf, PARTITIONS_KEY)? {
        Some(bytes) => {
            let stored = <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| Error::RocksDb("corrupt partition count".into()))?;
            if stored != partitions {
                return Err(Error::PartitionsMismatch {
                    path: path.display().to_string(),
                    stored,
                    configured: partitions,
                });
            }
            Ok(())
        }
        None => {
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
            db.put_cf_opt(cf, PARTITIONS_KEY, partitions.to_be_bytes(), &wo)?;
            Ok(())
        }
    }
}

impl StorageThread {
    /// A handle for executors.
    pub fn handle(&self) -> Storage {
        self.handle.clone()
    }

    /// Serves what is queued, flushes the WAL, closes the database and joins the thread.
    pub fn close(mut self) {
        let (tx, rx) = oneshot::channel();
        // Blocking is fine here: this is the main thread, not an executor.
        if self
            .handle
            .tx
            .send(Queued {
                request: Request::Close(tx),
                _permit: None,
            })
            .is_ok()
        {
            let _ = futures_lite::future::block_on(rx);
        }
        if let Some(join) = self.join.take() {
            let _ = join.join();
        }
    }
}

impl Storage {
    /// The thread's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, Error> {
        let permit = self.permit().await;
        self.send(permit, make).await
    }

    /// Waits for room in the storage queue (back-pressure). Pair with one `send_*` call.
    pub async fn permit(&self) -> Permit {
        Permit(self.permits.acquire_arc().await)
    }

    /// Enqueues a request now (using a permit) and returns the future of its reply: requests sent in
    /// one order are executed in that order.
    fn send<T>(
        &self,
        permit: Permit,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> impl std::future::Future<Output = Result<T, Error>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.try_send(Queued {
            request: make(tx),
            _permit: Some(permit.0),
        });
        async move {
            sent.map_err(|_| Error::Closed)?;
            rx.await.map_err(|_| Error::Closed)?
        }
    }

    /// [`write`](Self::write) in two steps: enqueued now, durable when the future completes.
    pub fn send_write(
        &self,
        permit: Permit,
        batch: WriteBatch,
    ) -> impl std::future::Future<Output = Result<(), Error>> {
        self.send(permit, move |reply| Request::Write(batch, reply))
    }

    /// [`scan_range`](Self::scan_range) in two steps: enqueued now, answered when the future completes.
    pub fn send_scan(
        &self,
        permit: Permit,
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<Row>, Error>> {
        self.send(permit, move |reply| Request::Scan {
            table,
            start,
            end,
            limit,
            reply,
        })
    }

    /// [`scan_chunk`](Self::scan_chunk) in two steps.
    pub fn send_scan_chunk(
        &self,
        permit: Permit,
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        max_rows: usize,
        max_bytes: usize,
    ) -> impl std::future::Future<Output = Result<Chunk, Error>> {
        self.send(permit, move |reply| Request::ScanChunk {
            table,
            start,
            end,
            max_rows,
            max_bytes,
            reply,
        })
    }

    /// [`get`](Self::get) in two steps.
    pub fn send_get(
        &self,
        permit: Permit,
        table: Table,
        key: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, Error>> {
        self.send(permit, move |reply| Request::Get(table, key, reply))
    }

    /// Writes the batch durably (group-committed with concurrent writers). Returns once it is in the WAL
    /// (and fsynced when `sync_writes` is on); an empty batch returns at once.
    pub async fn write(&self, batch: WriteBatch) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        self.call(|reply| Request::Write(batch, reply)).await
    }

    /// Reads one row.
    pub async fn get(
        &self,
        table: Table,
        key: impl Into<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, Error> {
        let key = key.into();
        self.call(|reply| Request::Get(table, key, reply)).await
    }

    /// Reads the rows whose key starts with `prefix`, in key order, at most `limit`.
    pub async fn scan_prefix(
        &self,
        table: Table,
        prefix: impl Into<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Row>, Error> {
        let start = prefix.into();
        let end = prefix_end(&start);
        self.scan_range(table, start, end, limit).await
    }

    /// Reads the rows with `start <= key < end` (no end: to the end of the table), at most `limit`.
    pub async fn scan_range(
        &self,
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Row>, Error> {
        self.call(|reply| Request::Scan {
            table,
            start,
            end,
            limit,
            reply,
        })
        .await
    }

    /// Reads one bounded chunk of the rows with `start <= key < end`: at most `max_rows` rows, and no
    /// more once `max_bytes` of keys and values are read. Long scans call it repeatedly, starting each
    /// chunk at the previous one's [`Chunk::resume`], so writes never wait behind more than one chunk.
    pub async fn scan_chunk(
        &self,
        table: Table,
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Chunk, Error> {
        let permit = self.permit().await;
        self.send_scan_chunk(permit, table, start, end, max_rows, max_bytes)
            .await
    }
}

/// The smallest key greater than every key starting with `prefix` (none if the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

struct Worker {
    db: Arc<rocksdb::DB>,
    rx: crossbeam_channel::Receiver<Queued>,
    stats: Arc<Stats>,
    /// With `sync_writes`: where applied groups wait for the WAL sync.
    syncer: Option<Syncer>,
    max_batch_requests: usize,
}

/// The storage thread's end of the WAL sync thread.
struct Syncer {
    tx: crossbeam_channel::Sender<Applied>,
    /// Groups applied so far (the WAL holds them all, in this order).
    applied: Arc<AtomicU64>,
    join: JoinHandle<()>,
}

/// The waiters of one applied group, durable once the WAL is synced past group `seq`.
struct Applied {
    seq: u64,
    replies: Vec<Reply<()>>,
    /// No waiter needs it durable soon: its sync may be deferred.
    deferrable: bool,
}

impl Worker {
    fn run(mut self) {
        let mut drained: Vec<Request> = Vec::with_capacity(self.max_batch_requests);
        let mut close: Option<oneshot::Sender<()>> = None;
        while close.is_none() {
            // Block for the first request, then take whatever else is already queued.
            let Ok(first) = self.rx.recv() else { break };
            drained.push(first.request);
            while drained.len() < self.max_batch_requests {
                match self.rx.try_recv() {
                    Ok(q) => drained.push(q.request),
                    Err(_) => break,
                }
            }
            let mut writes = Vec::new();
            let mut reads = Vec::new();
            for request in drained.drain(..) {
                match request {
                    Request::Write(batch, reply) => writes.push((batch, reply)),
                    Request::Close(reply) => close = Some(reply),
                    read => reads.push(read),
                }
            }
            self.commit(writes);
            for read in reads {
                self.serve_read(read);
            }
        }
        if let Some(syncer) = self.syncer.take() {
            // The sync thread answers what it holds, syncs once more and stops.
            drop(syncer.tx);
            let _ = syncer.join.join();
        }
        if let Err(e) = self.db.flush_wal(true) {
            log::error!("flushing the WAL at shutdown failed: {e}");
        }
        drop(self.db);
        if let Some(reply) = close {
            let _ = reply.send(());
        }
        log::debug!("storage thread stopped");
    }

    fn cf(&self, table: Table) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(table.name())
            .expect("every table is opened")
    }

    /// One RocksDB write (no fsync) for every write request of this drain; its waiters are answered
    /// now, or by the sync thread once the WAL is synced past it.
    fn commit(&self, writes: Vec<(WriteBatch, Reply<()>)>) {
        if writes.is_empty() {
            return;
        }
        let mut batch = rocksdb::WriteBatch::default();
        // Operations per table and kind ([`OP_KINDS`]), added to the shared counters once per commit.
        let mut counts = [[0u64; OP_KINDS.len()]; Table::ALL.len()];
        let mut replies = Vec::with_capacity(writes.len());
        let mut deferrable = true;
        for (request, reply) in writes {
            deferrable &= request.deferrable;
            for op in request.ops {
                let (table, kind) = match op {
                    Op::Put { table, key, value } => {
                        batch.put_cf(self.cf(table), key, value);
                        (table, 0)
                    }
                    Op::Delete { table, key } => {
                        batch.delete_cf(self.cf(table), key);
                        (table, 1)
                    }
                    Op::DeleteRange { table, start, end } => {
                        batch.delete_range_cf(self.cf(table), start, end);
                        (table, 2)
                    }
                };
                counts[table.index()][kind] += 1;
            }
            replies.push(reply);
        }
        let ops: u64 = counts.iter().flatten().sum();
        let result = if ops == 0 {
            // Only empty batches: nothing to apply, but their waiters still wait for the sync.
            Ok(())
        } else {
            self.apply(batch, &counts, ops)
        };
        self.stats
            .write_requests
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        match (&self.syncer, result) {
            (Some(syncer), Ok(())) => {
                let seq = syncer.applied.load(Ordering::Relaxed) + u64::from(ops > 0);
                syncer.applied.store(seq, Ordering::Release);
                // Blocks only when `queue_capacity` groups already wait for the sync (back-pressure).
                let applied = Applied {
                    seq,
                    replies,
                    deferrable,
                };
                if let Err(e) = syncer.tx.send(applied) {
                    for reply in e.into_inner().replies {
                        let _ = reply.send(Err(Error::Closed));
                    }
                }
            }
            (_, result) => {
                for reply in replies {
                    let _ = reply.send(result.clone());
                }
            }
        }
    }

    /// Applies one merged batch (WAL append and memtables, no fsync) and counts it.
    fn apply(
        &self,
        batch: rocksdb::WriteBatch,
        counts: &[[u64; OP_KINDS.len()]; Table::ALL.len()],
        ops: u64,
    ) -> Result<(), Error> {
        for (table, kinds) in counts.iter().enumerate() {
            for (kind, count) in kinds.iter().enumerate() {
                if *count > 0 {
                    self.stats.table_ops[table][kind].add(*count);
                }
            }
        }
        let timers = counts[Table::Timers.index()];
        let bytes = batch.size_in_bytes();
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(false);
        let started = std::time::Instant::now();
        let result = self.db.write_opt(batch, &wo).map_err(Error::from);
        self.stats.write_seconds.observe_duration(started.elapsed());
        if let Err(e) = &result {
            log::error!("group commit of {ops} operations failed: {e}");
        } else {
            self.stats.timers.add(timers[0]);
            self.stats.timers.sub(timers[1]);
        }
        self.stats.batch_ops.observe(ops as f64);
        self.stats.batch_bytes.observe(bytes as f64);
        self.stats.write_batches.fetch_add(1, Ordering::Relaxed);
        self.stats.write_ops.fetch_add(ops, Ordering::Relaxed);
        result
    }

    fn serve_read(&self, request: Request) {
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        match request {
            Request::Get(table, key, reply) => {
                let result = self.db.get_cf(self.cf(table), key).map_err(Error::from);
                let _ = reply.send(result);
            }
            Request::Scan {
                table,
                start,
                end,
                limit,
                reply,
            } => {
                let _ = reply.send(self.scan(table, &start, end.as_deref(), limit));
            }
            Request::ScanChunk {
                table,
                start,
                end,
                max_rows,
                max_bytes,
                reply,
            } => {
                let _ =
                    reply.send(self.scan_chunk(table, &start, end.as_deref(), max_rows, max_bytes));
            }
            Request::Write(..) | Request::Close(_) => unreachable!("not a read"),
        }
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Row>, Error> {
        let mode = rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward);
        let mut options = rocksdb::ReadOptions::default();
        if let Some(end) = end {
            // Without a bound, finding that nothing follows the range means stepping over every
            // deleted key after it.
            options.set_iterate_upper_bound(end);
        }
        let mut rows = Vec::new();
        for item in self.db.iterator_cf_opt(self.cf(table), options, mode) {
            let (key, value) = item?;
            if end.is_some_and(|end| key.as_ref() >= end) || rows.len() >= limit {
                break;
            }
            rows.push((key.into_vec(), value.into_vec()));
        }
        Ok(rows)
    }

    fn scan_chunk(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<Chunk, Error> {
        let mode = rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward);
        let mut options = rocksdb::ReadOptions::default();
        if let Some(end) = end {
            options.set_iterate_upper_bound(end);
        }
        let mut chunk = Chunk::default();
        let mut bytes = 0;
        for item in self.db.iterator_cf_opt(self.cf(table), options, mode) {
            let (key, value) = item?;
            if end.is_some_and(|end| key.as_ref() >= end) {
                break;
            }
            if chunk.rows.len() >= max_rows.max(1) || (bytes >= max_bytes && !chunk.rows.is_empty())
            {
                // More rows follow: the next chunk starts right after the last one taken.
                let mut resume = chunk
                    .rows
                    .last()
                    .map(|(k, _)| k.clone())
                    .unwrap_or_default();
                resume.push(0);
                chunk.resume = Some(resume);
                break;
            }
            bytes += key.len() + value.len();
            chunk.rows.push((key.into_vec(), value.into_vec()));
        }
        Ok(chunk)
    }
}

/// When the WAL sync thread may sync.
#[derive(Debug, Clone, Copy)]
struct SyncPacing {
    /// Most groups held before a sync starts regardless.
    max_groups: usize,
    /// Longest a deferrable group waits for a sync (`deferred_sync_delay`).
    defer_limit: Duration,
    /// Least time from the start of one sync to the start of the next while writes arrive faster than
    /// syncs finish (`group_commit_interval`).
    interval: Duration,
}

/// The WAL sync thread: answers applied groups once an fsync of the WAL covers them. One sync serves
/// every group applied before it starts, however many arrived while the previous one ran. A sync
/// starts as soon as a group that is not deferrable waits; but while writes arrive faster than syncs
/// finish (a group arrived during the previous sync), not sooner than `interval` after the previous
/// one started, so that the groups arriving meanwhile share it. A writer that waits for each answer
/// before its next write (one caller calling in a loop) thus never waits for the interval, and a
/// stream of writes that do not wait (a hot key's invocations, many callers) gets fewer, larger
/// syncs. Deferrable groups alone wait until one arrives, `max_groups` wait, or the oldest has waited
/// `defer_limit`. After a failed sync every group is answered with its error (the processor then
/// stops and recovers). When the storage thread closes the queue, what is still held is synced and
/// answered.
fn sync_wal(
    mut sync: impl FnMut() -> Result<(), Error>,
    rx: crossbeam_channel::Receiver<Applied>,
    applied: Arc<AtomicU64>,
    stats: Arc<Stats>,
    pacing: SyncPacing,
) {
    let SyncPacing {
        max_groups,
        defer_limit,
        interval,
    } = pacing;
    let mut durable = 0u64;
    // The first failed sync, for good: it may have lost the WAL's dirty pages (the kernel may drop
    // them and report the error once), so no later sync that succeeds makes the groups applied
    // after them durable; the WAL is replayed only up to its first hole.
    let mut failed: Option<Error> = None;
    let mut groups: Vec<Applied> = Vec::new();
    // When the oldest held group that is deferrable arrived (all held groups are deferrable then).
    let mut deferred_since: Option<Instant> = None;
    // When the last sync started if a group arrived while it ran (writes outran syncs), and until when
    // a sync that is due waits for the interval to pass.
    let mut last_sync: Option<Instant> = None;
    let mut paced_until: Option<Instant> = None;
    let mut open = true;
    while open || !groups.is_empty() {
        if open {
            // A paced sync is due already: its deferrable groups' deadline (possibly past) no longer
            // matters, and waiting for it would spin until the interval ends.
            let wake = paced_until.or(deferred_since.map(|since| since + defer_limit));
            let next = match wake {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            match next {
                Ok(group) => {
                    groups.push(group);
                    let room = max_groups.saturating_sub(groups.len());
                    groups.extend(rx.try_iter().take(room));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => open = false,
            }
        }
        let needed = groups.iter().map(|g| g.seq).max().unwrap_or(0);
        // Answered at once: no sync needed, nothing more to wait for, or no room to wait.
        let now = !open || failed.is_some() || needed <= durable || groups.len() >= max_groups;
        let due = now
            || defer_limit.is_zero()
            || groups.iter().any(|g| !g.deferrable)
            || deferred_since.is_some_and(|since| since.elapsed() >= defer_limit);
        if !due {
            deferred_since.get_or_insert_with(Instant::now);
            continue;
        }
        if !now {
            let next_allowed = last_sync.map(|at| at + interval);
            if let Some(at) = next_allowed.filter(|at| *at > Instant::now()) {
                paced_until = Some(at);
                continue;
            }
        }
        paced_until = None;
        deferred_since = None;
        let result = if let Some(e) = &failed {
            Err(e.clone())
        } else if needed <= durable {
            Ok(())
        } else {
            // Everything applied by now is in the WAL file: one sync makes all of it durable.
            let upto = applied.load(Ordering::Acquire);
            let started = Instant::now();
            let result = sync();
            last_sync = (!rx.is_empty()).then_some(started);
            stats.sync_seconds.observe_duration(started.elapsed());
            stats.wal_syncs.fetch_add(1, Ordering::Relaxed);
            match &result {
                Ok(()) => durable = upto,
                Err(e) => {
                    log::error!("syncing the WAL failed: {e}; every later write fails");
                    failed = Some(e.clone());
                }
            }
            result
        };
        for group in groups.drain(..) {
            for reply in group.replies {
                let _ = reply.send(result.clone());
            }
        }
    }
    log::debug!("WAL sync thread stopped");
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    mod wal_sync {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        use std::time::Duration;

        use futures::channel::oneshot;

        use super::super::{sync_wal, Applied, Error, Stats, SyncPacing};

        /// One group applied as `seq`, and the receiver of its answer.
        fn group(seq: u64) -> (Applied, oneshot::Receiver<Result<(), Error>>) {
            deferrable_group(seq, false)
        }

        fn deferrable_group(
            seq: u64,
            deferrable: bool,
        ) -> (Applied, oneshot::Receiver<Result<(), Error>>) {
            let (tx, rx) = oneshot::channel();
            let applied = Applied {
                seq,
                replies: vec![tx],
                deferrable,
            };
            (applied, rx)
        }

        /// Waits (bounded) for an answer.
        fn wait(rx: &mut oneshot::Receiver<Result<(), Error>>) -> Result<(), Error> {
            for _ in 0..500 {
                if let Ok(Some(answer)) = rx.try_recv() {
                    return answer;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            panic!("no answer within 5 s");
        }

        /// A sync thread over a fake sync that counts its calls; returns the queue, the applied
        /// sequence, the sync count and the thread.
        #[allow(clippy::type_complexity)]
        fn start(
            defer_limit: Duration,
            interval: Duration,
        ) -> (
            crossbeam_channel::Sender<Applied>,
            Arc<AtomicU64>,
            Arc<AtomicU64>,
            std::thread::JoinHandle<()>,
        ) {
            let (tx, rx) = crossbeam_channel::bounded(16);
            let applied = Arc::new(AtomicU64::new(0));
            let syncs = Arc::new(AtomicU64::new(0));
            let counted = syncs.clone();
            let sync = move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(())
            };
            let seen = applied.clone();
            let join = std::thread::spawn(move || {
                let pacing = SyncPacing {
                    max_groups: 16,
                    defer_limit,
                    interval,
                };
                sync_wal(sync, rx, seen, Arc::new(Stats::default()), pacing)
            });
            (tx, applied, syncs, join)
        }

        /// A fake sync counted in `syncs` that, while it runs the first time, applies `group` and
        /// queues it (writes outrunning syncs).
        fn applying_during_first(
            tx: &crossbeam_channel::Sender<Applied>,
            group: Applied,
            applied: &Arc<AtomicU64>,
            syncs: &Arc<AtomicU64>,
        ) -> impl FnMut() -> Result<(), Error> {
            let mut during_first = Some((tx.clone(), group, applied.clone()));
            let syncs = syncs.clone();
            move || {
                syncs.fetch_add(1, Ordering::SeqCst);
                if let Some((tx, group, applied)) = during_first.take() {
                    applied.store(group.seq, Ordering::Release);
                    tx.send(group).unwrap();
                }
                Ok(())
            }
        }

        #[test]
        fn deferrable_groups_wait_for_one_that_needs_a_sync_and_share_it() {
            let (tx, applied, syncs, join) = start(Duration::from_secs(60), Duration::ZERO);
            let mut deferred = Vec::new();
            for seq in 1..=3 {
                let (group, answer) = deferrable_group(seq, true);
                applied.store(seq, Ordering::Release);
                tx.send(group).unwrap();
                deferred.push(answer);
            }
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(
                syncs.load(Ordering::SeqCst),
                0,
                "a deferrable group alone was synced"
            );
            for answer in &mut deferred {
                assert!(
                    matches!(answer.try_recv(), Ok(None)),
                    "a deferrable group was answered before any sync"
                );
            }
            let (urgent, mut urgent_answer) = group(4);
            applied.store(4, Ordering::Release);
            tx.send(urgent).unwrap();
            wait(&mut urgent_answer).unwrap();
            for answer in &mut deferred {
                wait(answer).unwrap();
            }
            assert_eq!(
                syncs.load(Ordering::SeqCst),
                1,
                "one sync covers all four groups"
            );
            drop(tx);
            join.join().unwrap();
        }

        #[test]
        fn a_writer_that_waits_for_each_answer_never_waits_for_the_interval() {
            let interval = Duration::from_millis(300);
            let (tx, applied, syncs, join) = start(Duration::from_secs(60), interval);
            let started = std::time::Instant::now();
            for seq in 1..=5 {
                let (next, mut answer) = group(seq);
                applied.store(seq, Ordering::Release);
                tx.send(next).unwrap();
                wait(&mut answer).unwrap();
            }
            assert!(started.elapsed() < interval, "{:?}", started.elapsed());
            assert_eq!(syncs.load(Ordering::SeqCst), 5);
            drop(tx);
            join.join().unwrap();
        }

        #[test]
        fn while_writes_outrun_syncs_the_next_waits_for_the_interval_and_they_share_it() {
            let interval = Duration::from_millis(300);
            let (tx, rx) = crossbeam_channel::bounded(16);
            let applied = Arc::new(AtomicU64::new(1));
            let syncs = Arc::new(AtomicU64::new(0));
            // Group 2 is applied while the first sync runs: writes outrun syncs.
            let (second, mut second_answer) = group(2);
            let sync = applying_during_first(&tx, second, &applied, &syncs);
            let seen = applied.clone();
            let pacing = SyncPacing {
                max_groups: 16,
                defer_limit: Duration::from_secs(60),
                interval,
            };
            let join = std::thread::spawn(move || {
                sync_wal(sync, rx, seen, Arc::new(Stats::default()), pacing)
            });
            let started = std::time::Instant::now();
            let (first, mut first_answer) = group(1);
            tx.send(first).unwrap();
            wait(&mut first_answer).unwrap();
            assert!(started.elapsed() < interval, "the first sync waited");
            let mut answers = Vec::new();
            for seq in 3..=4 {
                let (next, answer) = group(seq);
                applied.store(seq, Ordering::Release);
                tx.send(next).unwrap();
                answers.push(answer);
            }
            wait(&mut second_answer).unwrap();
            assert!(
                started.elapsed() >= interval,
                "a sync started within the interval while writes outran syncs"
            );
            for answer in &mut answers {
                wait(answer).unwrap();
            }
            assert_eq!(
                syncs.load(Ordering::SeqCst),
                2,
                "groups 2 to 4 share one sync"
            );
            drop(tx);
            join.join().unwrap();
        }

        /// CPU time the calling thread has used.
        fn thread_cpu_time() -> Duration {
            let mut now = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: clock_gettime writes only `now`.
            assert_eq!(
                unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) },
                0
            );
            Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
        }

        #[test]
        fn a_deferrable_group_past_its_delay_waits_for_the_interval_without_spinning() {
            let interval = Duration::from_secs(1);
            let (tx, rx) = crossbeam_channel::bounded(16);
            let applied = Arc::new(AtomicU64::new(1));
            // A deferrable group 2 is applied while the first sync runs: the next sync is paced, and
            // group 2's delay (10 ms) ends long before the interval does.
            let (second, mut second_answer) = deferrable_group(2, true);
            let sync = applying_during_first(&tx, second, &applied, &Arc::default());
            let seen = applied.clone();
            let pacing = SyncPacing {
                max_groups: 16,
                defer_limit: Duration::from_millis(10),
                interval,
            };
            let join = std::thread::spawn(move || {
                sync_wal(sync, rx, seen, Arc::new(Stats::default()), pacing);
                thread_cpu_time()
            });
            let started = std::time::Instant::now();
            let (first, mut first_answer) = group(1);
            tx.send(first).unwrap();
            wait(&mut first_answer).unwrap();
            wait(&mut second_answer).unwrap();
            assert!(started.elapsed() >= interval, "{:?}", started.elapsed());
            drop(tx);
            let cpu = join.join().unwrap();
            assert!(
                cpu < Duration::from_millis(100),
                "the sync thread used {cpu:?} of CPU waiting ~1 s for the interval"
            );
        }

        #[test]
        fn a_deferrable_group_is_synced_after_the_delay_or_when_the_queue_closes() {
            let (tx, applied, syncs, join) = start(Duration::from_millis(30), Duration::ZERO);
            let (group, mut answer) = deferrable_group(1, true);
            applied.store(1, Ordering::Release);
            tx.send(group).unwrap();
            wait(&mut answer).unwrap();
            assert_eq!(syncs.load(Ordering::SeqCst), 1);
            drop(tx);
            join.join().unwrap();

            let (tx, applied, syncs, join) = start(Duration::from_secs(60), Duration::ZERO);
            let (group, mut answer) = deferrable_group(1, true);
            applied.store(1, Ordering::Release);
            tx.send(group).unwrap();
            drop(tx);
            join.join().unwrap();
            assert_eq!(
                syncs.load(Ordering::SeqCst),
                1,
                "held groups are synced at close"
            );
            wait(&mut answer).unwrap();
        }

        #[test]
        fn after_a_failed_sync_no_later_group_is_answered_durable() {
            // A failed fsync may have dropped the WAL's dirty pages (Linux forgets them): a later
            // fsync that succeeds does not bring them back, so the groups applied after them are
            // not durable either (recovery replays the WAL up to its first hole).
            let (tx, rx) = crossbeam_channel::bounded(4);
            let applied = Arc::new(AtomicU64::new(1));
            let (first, first_answer) = group(1);
            tx.send(first).unwrap();
            let (second, second_answer) = group(2);
            // Group 2 is applied while the first sync runs, which fails; the next one succeeds.
            let mut during_first = Some((tx, second, applied.clone()));
            let sync = move || match during_first.take() {
                Some((tx, second, applied)) => {
                    applied.store(2, Ordering::Release);
                    tx.send(second).unwrap();
                    Err(Error::RocksDb("injected: fsync failed".into()))
                }
                None => Ok(()),
            };
            let pacing = SyncPacing {
                max_groups: 4,
                defer_limit: Duration::from_secs(60),
                interval: Duration::ZERO,
            };
            sync_wal(sync, rx, applied, Arc::new(Stats::default()), pacing);
            let answer = |mut rx: oneshot::Receiver<Result<(), Error>>| {
                rx.try_recv().ok().flatten().expect("answered")
            };
            assert!(answer(first_answer).is_err());
            assert!(
                answer(second_answer).is_err(),
                "a group applied after a failed WAL sync was answered durable"
            );
        }
    }

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix_range() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}

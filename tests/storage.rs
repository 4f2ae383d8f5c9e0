//! The storage thread: concurrent writers from every core, group commit, back-pressure, and durability of
//! acknowledged writes across `kill -9` of a real process.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use restate::config::StorageRocksdb;
use restate::storage::{self, Storage, Table, WriteBatch};

fn rocksdb_config(sync_writes: bool, queue_capacity: usize) -> StorageRocksdb {
    StorageRocksdb {
        sync_writes,
        queue_capacity,
        ..StorageRocksdb::default()
    }
}

/// A storage thread on a fresh temporary directory (kept as long as the returned guard).
fn open_temp(
    sync_writes: bool,
    queue_capacity: usize,
) -> (tempfile::TempDir, storage::StorageThread, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let thread =
        storage::open(&rocksdb_config(sync_writes, queue_capacity), dir.path(), 8).unwrap();
    let storage = thread.handle();
    (dir, thread, storage)
}

/// Every row of the State table.
fn state_rows(storage: &Storage) -> Vec<storage::Row> {
    futures_lite::future::block_on(storage.scan_prefix(Table::State, Vec::new(), usize::MAX))
        .unwrap()
}

/// A batch of one State row whose value is its key.
fn put(key: &[u8]) -> WriteBatch {
    let mut batch = WriteBatch::new();
    batch.put(Table::State, key.to_vec(), key.to_vec());
    batch
}

/// Runs `writers_per_core` concurrent writers on each of `cores` executors; each writes `writes` rows
/// `core/writer/i`. Returns how many writes were acknowledged.
fn write_from_all_cores(
    storage: &Storage,
    cores: usize,
    writers_per_core: usize,
    writes: usize,
) -> usize {
    let results = LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(cores))
        .io_memory(1 << 20)
        .on_all_shards({
            let storage = storage.clone();
            move || {
                let storage = storage.clone();
                async move {
                    let core = glommio::executor().id();
                    let tasks: Vec<_> = (0..writers_per_core)
                        .map(|writer| {
                            let storage = storage.clone();
                            glommio::spawn_local(async move {
                                for i in 0..writes {
                                    let mut batch = WriteBatch::new();
                                    let key = format!("{core}/{writer}/{i}");
                                    batch.put(Table::State, key.clone(), key);
                                    storage.write(batch).await.unwrap();
                                }
                                writes
                            })
                        })
                        .collect();
                    futures::future::join_all(tasks)
                        .await
                        .into_iter()
                        .sum::<usize>()
                }
            }
        })
        .unwrap()
        .join_all();
    results.into_iter().map(|r| r.unwrap()).sum()
}

#[test]
fn concurrent_writers_from_all_cores_are_group_committed() {
    let (_dir, thread, storage) = open_temp(true, 4096);
    let acked = write_from_all_cores(&storage, 2, 100, 20);
    assert_eq!(acked, 2 * 100 * 20);
    let stats = storage.stats().snapshot();
    assert_eq!(stats.write_requests, acked as u64);
    assert!(
        stats.write_batches * 2 <= stats.write_requests,
        "concurrent writes were not grouped: {stats:?}"
    );
    // Every acknowledged row reads back.
    let rows = state_rows(&storage);
    assert_eq!(rows.len(), acked);
    assert!(rows.iter().all(|(k, v)| k == v));
    thread.close();
}

#[test]
fn a_tiny_queue_pushes_back_and_drops_nothing() {
    let (_dir, thread, storage) = open_temp(false, 2);
    let acked = write_from_all_cores(&storage, 2, 50, 10);
    assert_eq!(acked, 1000);
    let rows = state_rows(&storage);
    assert_eq!(rows.len(), 1000);
    thread.close();
}

#[test]
fn reads_see_acknowledged_writes_and_deletes() {
    let (_dir, thread, storage) = open_temp(false, 16);
    futures_lite::future::block_on(async {
        let mut batch = WriteBatch::new();
        for i in 0u8..5 {
            batch.put(Table::Journal, vec![1, i], vec![i]);
        }
        batch.put(Table::Journal, vec![2, 0], vec![9]);
        storage.write(batch).await.unwrap();
        let mut batch = WriteBatch::new();
        batch.delete(Table::Journal, vec![1, 3]);
        storage.write(batch).await.unwrap();
        assert_eq!(
            storage.get(Table::Journal, vec![1, 2]).await.unwrap(),
            Some(vec![2])
        );
        assert_eq!(storage.get(Table::Journal, vec![1, 3]).await.unwrap(), None);
        // Tables are separate column families.
        assert_eq!(storage.get(Table::State, vec![1, 2]).await.unwrap(), None);
        let rows = storage
            .scan_prefix(Table::Journal, vec![1], 10)
            .await
            .unwrap();
        let keys: Vec<_> = rows.iter().map(|(k, _)| k[1]).collect();
        assert_eq!(keys, vec![0, 1, 2, 4]);
        let limited = storage
            .scan_prefix(Table::Journal, vec![1], 2)
            .await
            .unwrap();
        assert_eq!(limited.len(), 2);
    });
    thread.close();
}

const CHILD_ENV: &str = "RESTATE_TEST_STORAGE_CHILD_DIR";

/// Not a test on its own: the child process of `acknowledged_writes_survive_kill_9`. It writes from two
/// cores until killed and prints `ACK <key>` for every acknowledged write.
#[test]
#[ignore]
fn storage_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let thread = storage::open(&rocksdb_config(false, 1024), Path::new(&dir), 8).unwrap();
    let storage = thread.handle();
    LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(2))
        .io_memory(1 << 20)
        .on_all_shards(move || {
            let storage = storage.clone();
            async move {
                let core = glommio::executor().id();
                let tasks: Vec<_> = (0..32)
                    .map(|writer| {
                        let storage = storage.clone();
                        glommio::spawn_local(async move {
                            // Bounded: the parent kills us long before this ends.
                            for i in 0..100_000 {
                                let key = format!("{core}/{writer}/{i}");
                                let mut batch = WriteBatch::new();
                                batch.put(Table::State, key.clone(), key.clone());
                                storage.write(batch).await.unwrap();
                                let mut out = std::io::stdout().lock();
                                writeln!(out, "ACK {key}").unwrap();
                                out.flush().unwrap();
                            }
                        })
                    })
                    .collect();
                futures::future::join_all(tasks).await;
            }
        })
        .unwrap()
        .join_all();
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "storage_child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(key) = line.strip_prefix("ACK ") {
                    acked.push(key.to_owned());
                }
                if acked.len() >= 3000 {
                    done.store(true, Ordering::SeqCst);
                }
            }
            acked
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    // SIGKILL mid-stream: writers are still running.
    child.kill().unwrap();
    child.wait().unwrap();
    let acked = reader.join().unwrap();
    assert!(
        acked.len() >= 3000,
        "child acknowledged only {} writes",
        acked.len()
    );

    let thread = storage::open(&rocksdb_config(false, 16), dir.path(), 8).unwrap();
    let storage = thread.handle();
    futures_lite::future::block_on(async {
        for key in &acked {
            let value = storage
                .get(Table::State, key.as_bytes().to_vec())
                .await
                .unwrap();
            assert_eq!(
                value.as_deref(),
                Some(key.as_bytes()),
                "acknowledged write {key} lost"
            );
        }
    });
    thread.close();
}

#[test]
fn a_cores_writes_decided_back_to_back_share_one_request_but_not_across_a_read() {
    let (_dir, thread, storage) = open_temp(true, 16);
    let read = LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(1))
        .io_memory(1 << 20)
        .on_all_shards({
            let storage = storage.clone();
            move || async move {
                let ordered = storage::ordered::Ordered::new(storage, 1024);
                // Submitted in one turn, without awaiting: a, read, b, c, d.
                let a = ordered.write(put(b"a"));
                let seen = ordered.scan_prefix(Table::State, Vec::new(), usize::MAX);
                let (b, c, d) = (
                    ordered.write(put(b"b")),
                    ordered.write(put(b"c")),
                    ordered.write(put(b"d")),
                );
                a.await.unwrap();
                let seen = seen.await.unwrap();
                b.await.unwrap();
                c.await.unwrap();
                d.await.unwrap();
                seen.into_iter().map(|(k, _)| k).collect::<Vec<_>>()
            }
        })
        .unwrap()
        .join_all()
        .pop()
        .unwrap()
        .unwrap();
    // Storage commits a drain's writes before serving its reads: the read sees every write before it
    // (and may see later ones of the same drain).
    assert_eq!(read.first(), Some(&b"a".to_vec()), "{read:?}");
    let stats = storage.stats().snapshot();
    assert_eq!(
        stats.write_requests, 2,
        "a alone (a read follows it), then b, c and d as one request: {stats:?}"
    );
    let rows = state_rows(&storage);
    assert_eq!(rows.len(), 4);
    thread.close();
}

/// A core's barrier (an empty write) waits for the writes it submitted before and not yet answered;
/// with none, it has nothing to wait for and costs no request to the storage thread.
#[test]
fn a_cores_barrier_with_no_write_unanswered_costs_no_request() {
    let (_dir, thread, storage) = open_temp(true, 16);
    let requests = LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(1))
        .io_memory(1 << 20)
        .on_all_shards({
            let storage = storage.clone();
            move || async move {
                let ordered = storage::ordered::Ordered::new(storage.clone(), 1024);
                let requests = || storage.stats().snapshot().write_requests;
                ordered.write(WriteBatch::new()).await.unwrap();
                let idle = requests();
                // A write, then a barrier before its answer: the barrier travels with it (one request).
                let a = ordered.write(put(b"a"));
                let barrier = ordered.write(WriteBatch::new());
                barrier.await.unwrap();
                a.await.unwrap();
                let behind = requests();
                // Everything answered: the next barrier is answered at once.
                ordered.write(WriteBatch::new()).await.unwrap();
                (idle, behind, requests())
            }
        })
        .unwrap()
        .join_all()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(
        requests,
        (0, 1, 1),
        "(after an idle barrier, after a write and a barrier, after another idle barrier)"
    );
    thread.close();
}

#[test]
fn an_empty_batch_is_a_barrier_answered_once_every_earlier_write_is_synced() {
    use futures::FutureExt;
    use futures_lite::future::block_on;
    let (_dir, thread, storage) = open_temp(true, 16);
    let send = |batch: WriteBatch| {
        let permit = block_on(storage.permit());
        storage.send_write(permit, batch)
    };
    let write = send(put(b"a"));
    let barrier = send(WriteBatch::new());
    block_on(barrier).unwrap();
    // The sync thread answers in the order applied: the write's answer is there already.
    assert!(
        matches!(write.now_or_never(), Some(Ok(()))),
        "a barrier was answered before the write submitted before it"
    );
    let synced = storage.stats().snapshot().wal_syncs;
    assert!(synced >= 1, "no WAL sync made the write durable");
    // Nothing applied since: another barrier needs no sync of its own.
    block_on(send(WriteBatch::new())).unwrap();
    assert_eq!(storage.stats().snapshot().wal_syncs, synced);
    // A read sees the write (applied), durable or not.
    let row = block_on(storage.get(Table::State, b"a".to_vec())).unwrap();
    assert_eq!(row.as_deref(), Some(&b"a"[..]));
    thread.close();

    // Without sync_writes nothing is ever synced, and a barrier is answered once applied.
    let (_dir, thread, storage) = open_temp(false, 16);
    block_on(storage.write(put(b"a"))).unwrap();
    let permit = block_on(storage.permit());
    block_on(storage.send_write(permit, WriteBatch::new())).unwrap();
    assert_eq!(storage.stats().snapshot().wal_syncs, 0);
    thread.close();
}

/// RocksDB's own text log (`LOG`): Debian's library logs at DEBUG unless told otherwise, a line per
/// WAL sync, and never rotates the file unless given a size. At INFO with a rotation size and a
/// count, a hundred synced writes add no line each, and the options RocksDB records say so.
#[test]
fn rocksdb_logs_no_line_per_wal_sync_and_rotates_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageRocksdb {
        info_log_max_file_size: 1 << 20,
        info_log_files_kept: 3,
        ..rocksdb_config(true, 64)
    };
    let thread = storage::open(&config, dir.path(), 8).unwrap();
    let storage = thread.handle();
    for i in 0..100u32 {
        futures_lite::future::block_on(storage.write(put(&i.to_be_bytes()))).unwrap();
    }
    thread.close();
    let log = std::fs::read_to_string(dir.path().join("LOG")).unwrap();
    let syncs = log.lines().filter(|l| l.contains("FlushWAL")).count();
    assert_eq!(syncs, 0, "RocksDB logged {syncs} WAL syncs");
    assert!(!log.contains("[DEBUG]"), "RocksDB logs at DEBUG");
    let options = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("OPTIONS-")
        })
        .expect("an OPTIONS file");
    let options = std::fs::read_to_string(options).unwrap();
    for setting in [
        "max_log_file_size=1048576",
        "keep_log_file_num=3",
        "info_log_level=INFO_LEVEL",
    ] {
        assert!(options.contains(setting), "OPTIONS lacks {setting}");
    }
}

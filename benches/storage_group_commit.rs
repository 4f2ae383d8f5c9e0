//! Group-commit throughput of the storage thread: 1 vs many concurrent writers, sync on vs off.
//!
//! `cargo bench --bench storage_group_commit` prints, per case, acknowledged writes per second and the mean
//! number of write requests merged into one RocksDB write. The 1-writer case is the baseline each
//! many-writer case is compared with (same run, same machine). Optional args: `--ops N` (per case).

use std::time::Instant;

use glommio::{LocalExecutorPoolBuilder, PoolPlacement};
use restate::config::StorageRocksdb;
use restate::storage::{self, Table, WriteBatch};

struct Case {
    writers: usize,
    sync_writes: bool,
}

fn run(case: &Case, total_ops: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageRocksdb {
        sync_writes: case.sync_writes,
        ..StorageRocksdb::default()
    };
    let thread = storage::open(&config, dir.path(), 64).unwrap();
    let storage = thread.handle();
    let cores = 2.min(case.writers);
    let writers_per_core = case.writers / cores;
    let ops_per_writer = total_ops / case.writers;
    let value = vec![0x5a; 100];
    let started = Instant::now();
    LocalExecutorPoolBuilder::new(PoolPlacement::Unbound(cores))
        .io_memory(1 << 20)
        .on_all_shards({
            let storage = storage.clone();
            move || {
                let storage = storage.clone();
                let value = value.clone();
                async move {
                    let core = glommio::executor().id();
                    let tasks: Vec<_> = (0..writers_per_core)
                        .map(|writer| {
                            let storage = storage.clone();
                            let value = value.clone();
                            glommio::spawn_local(async move {
                                for i in 0..ops_per_writer {
                                    let mut batch = WriteBatch::new();
                                    batch.put(
                                        Table::State,
                                        format!("{core}/{writer}/{i}"),
                                        value.clone(),
                                    );
                                    storage.write(batch).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    futures::future::join_all(tasks).await;
                }
            }
        })
        .unwrap()
        .join_all();
    let elapsed = started.elapsed().as_secs_f64();
    let stats = storage.stats().snapshot();
    thread.close();
    (
        stats.write_requests as f64 / elapsed,
        stats.write_requests as f64 / stats.write_batches.max(1) as f64,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ops = args
        .iter()
        .position(|a| a == "--ops")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000usize);
    println!("storage group commit, {ops} writes per case of 1 row (100 B value)");
    println!(
        "{:>8} {:>6} {:>12} {:>12} {:>10}",
        "writers", "sync", "ops/s", "batch size", "vs 1 writer"
    );
    for sync_writes in [false, true] {
        // fsync per write is slow: fewer ops keep the sync cases short.
        let ops = if sync_writes { ops / 4 } else { ops };
        let mut baseline = None;
        for writers in [1, 16, 64, 256] {
            let (ops_per_s, batch) = run(
                &Case {
                    writers,
                    sync_writes,
                },
                ops,
            );
            let base = *baseline.get_or_insert(ops_per_s);
            println!(
                "{writers:>8} {:>6} {ops_per_s:>12.0} {batch:>12.1} {:>9.1}x",
                if sync_writes { "on" } else { "off" },
                ops_per_s / base
            );
        }
    }
}

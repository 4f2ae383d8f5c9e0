//! Configuration through the real binary: defaults < file < env, nesting, case-insensitive enum values,
//! and errors that name the key.

mod common;

use common::{run_binary, Server};

fn dump(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let (status, stdout, stderr) = run_binary(dir, &[&["--dump-config"], args].concat(), env);
    assert!(status.success(), "dump-config failed: {stderr}");
    stdout
        .parse()
        .unwrap_or_else(|e| panic!("dump is not TOML ({e}):\n{stdout}"))
}

fn get<'a>(table: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut value = table.get(path.split('.').next().unwrap()).unwrap();
    for segment in path.split('.').skip(1) {
        value = value.get(segment).unwrap_or_else(|| panic!("no {path}"));
    }
    value
}

#[test]
fn defaults_then_file_then_env() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = dump(dir.path(), &[], &[]);
    assert_eq!(get(&defaults, "worker.partitions").as_integer(), Some(64));
    assert_eq!(
        get(&defaults, "meta.rest_address").as_str(),
        Some("0.0.0.0:8081")
    );
    assert_eq!(
        get(&defaults, "worker.storage_rocksdb.path").as_str(),
        Some("target/db/")
    );
    assert_eq!(get(&defaults, "shutdown_grace_period").as_str(), Some("1m"));

    let file = dir.path().join("restate.toml");
    std::fs::write(
        &file,
        "shutdown_grace_period = \"5s\"\n[worker]\npartitions = 32\n[tracing]\nlog_format = \"COMPACT\"\n\
         [meta]\nrest_address = \"127.0.0.1:1234\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let from_file = dump(dir.path(), &["--config-file", file], &[]);
    assert_eq!(get(&from_file, "worker.partitions").as_integer(), Some(32));
    assert_eq!(
        get(&from_file, "tracing.log_format").as_str(),
        Some("Compact")
    );
    assert_eq!(
        get(&from_file, "shutdown_grace_period").as_str(),
        Some("5s")
    );
    // Keys the file leaves alone keep their defaults.
    assert_eq!(
        get(&from_file, "worker.ingress_grpc.bind_address").as_str(),
        Some("0.0.0.0:9090")
    );

    let env = [
        ("RESTATE_WORKER__PARTITIONS", "128"),
        ("RESTATE_TRACING__LOG_FORMAT", "json"),
        ("RESTATE_WORKER__STORAGE_ROCKSDB__SYNC_WRITES", "false"),
    ];
    let with_env = dump(dir.path(), &["--config-file", file], &env);
    assert_eq!(get(&with_env, "worker.partitions").as_integer(), Some(128));
    assert_eq!(get(&with_env, "tracing.log_format").as_str(), Some("Json"));
    assert_eq!(
        get(&with_env, "worker.storage_rocksdb.sync_writes").as_bool(),
        Some(false)
    );
    assert_eq!(
        get(&with_env, "meta.rest_address").as_str(),
        Some("127.0.0.1:1234")
    );

    // RESTATE_CONFIG names the file like --config-file does.
    let via_env = dump(dir.path(), &[], &[("RESTATE_CONFIG", file)]);
    assert_eq!(get(&via_env, "worker.partitions").as_integer(), Some(32));
}

#[test]
fn errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, Env, &str); 10] = [
        ("[worker]\nnope = 1\n", &[], "worker.nope"),
        (
            "[worker]\npartitions = \"many\"\n",
            &[],
            "worker.partitions",
        ),
        (
            "[tracing]\nlog_format = \"xml\"\n",
            &[],
            "tracing.log_format",
        ),
        (
            "[meta]\nrest_address = \"not an address\"\n",
            &[],
            "meta.rest_address",
        ),
        (
            "",
            &[("RESTATE_WORKER__STORAGE_ROCKSDB__SYNC_WRITES", "maybe")],
            "worker.storage_rocksdb.sync_writes",
        ),
        (
            "",
            &[("RESTATE_RUNTIME__NO_SUCH_KEY", "1")],
            "runtime.no_such_key",
        ),
        (
            "[worker.storage_rocksdb]\nshort_lived_write_buffer_size = 1024\n",
            &[],
            "worker.storage_rocksdb.short_lived_write_buffer_size",
        ),
        (
            "[worker.storage_rocksdb]\ndeferred_sync_delay = \"2m\"\n",
            &[],
            "worker.storage_rocksdb.deferred_sync_delay",
        ),
        (
            "",
            &[("RESTATE_WORKER__STORAGE_ROCKSDB__TRANSIENT_HOLD", "2s")],
            "worker.storage_rocksdb.transient_hold",
        ),
        (
            "[worker.storage_rocksdb]\ntransient_hold_bytes = 100\n",
            &[],
            "worker.storage_rocksdb.transient_hold_bytes",
        ),
    ];
    for (file_text, env, key) in cases {
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, file_text).unwrap();
        let (status, _, stderr) = run_binary(
            dir.path(),
            &["--dump-config", "--config-file", file.to_str().unwrap()],
            env,
        );
        assert!(!status.success(), "{file_text:?} {env:?} was accepted");
        assert!(
            stderr.contains(key),
            "error for {key} does not name it: {stderr}"
        );
    }
    let (status, _, stderr) = run_binary(dir.path(), &["--config-file", "/no/such/file.toml"], &[]);
    assert!(!status.success());
    assert!(stderr.contains("/no/such/file.toml"), "{stderr}");
}

#[test]
fn partition_count_is_fixed_by_the_data_dir() {
    let mut server = Server::start(&[("RESTATE_WORKER__PARTITIONS", "8")]);
    server.signal(libc::SIGTERM);
    assert!(server
        .wait_exit(std::time::Duration::from_secs(30))
        .success());
    let dir = server.dir.clone();
    let env = [
        ("RESTATE_WORKER__PARTITIONS", "16"),
        ("RESTATE_META__REST_ADDRESS", "127.0.0.1:0"),
        ("RESTATE_WORKER__INGRESS_GRPC__BIND_ADDRESS", "127.0.0.1:0"),
        ("RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS", "127.0.0.1:0"),
    ];
    let (status, _, stderr) = run_binary(&dir, &[], &env);
    assert!(
        !status.success(),
        "a different partition count was accepted"
    );
    assert!(
        stderr.contains("worker.partitions") && stderr.contains('8'),
        "{stderr}"
    );
    // The recorded count still works.
    server.restart();
}

/// `config/restate.toml` lists every key with its default (`runtime.cores` is commented: it depends on
/// the machine).
#[test]
fn shipped_config_lists_every_key_with_its_default() {
    fn keys(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(table) = value.as_table() {
            for (k, v) in table {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_table() {
                    keys(v, &path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let shipped: toml::Value =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/restate.toml"))
            .unwrap()
            .parse::<toml::Table>()
            .unwrap()
            .into();
    let defaults: toml::Value = dump(dir.path(), &[], &[]).into();
    let (mut shipped_keys, mut default_keys) = (Vec::new(), Vec::new());
    keys(&shipped, "", &mut shipped_keys);
    keys(&defaults, "", &mut default_keys);
    default_keys.retain(|k| k != "runtime.cores");
    shipped_keys.sort();
    default_keys.sort();
    assert_eq!(shipped_keys, default_keys);
    for key in &shipped_keys {
        let lookup = |v: &toml::Value| key.split('.').try_fold(v.clone(), |v, s| v.get(s).cloned());
        assert_eq!(
            lookup(&shipped),
            lookup(&defaults),
            "default of {key} differs"
        );
    }
}

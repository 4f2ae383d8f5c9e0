//! What the process needs from its host or pod, checked at start: io_uring, the locked-memory limit,
//! and configuration errors in the log format the operator asked for. Each failure is one clear line
//! and a non-zero exit, before anything is created on disk.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary in a fresh dir on port 0, with `setup` run in the child just before exec, until it
/// exits (bounded). Returns (exit code, stderr, whether `target/` was created).
fn run_with(
    setup: fn() -> std::io::Result<()>,
    env: &[(&str, &str)],
) -> (Option<i32>, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(common::binary());
    command
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env("RESTATE_WORKER__INGRESS_GRPC__BIND_ADDRESS", "127.0.0.1:0")
        .env("RESTATE_META__REST_ADDRESS", "127.0.0.1:0")
        .env("RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS", "127.0.0.1:0")
        .env("RESTATE_RUNTIME__CORES", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
    // SAFETY: `setup` only makes async-signal-safe system calls (setrlimit, prctl).
    unsafe { command.pre_exec(setup) };
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    (status.code(), stderr, dir.path().join("target").exists())
}

/// The one ERROR line of `stderr`, checked to be the only one.
fn the_error_line(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0]
}

fn memlock_64k() -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: 64 * 1024,
        rlim_max: 64 * 1024,
    };
    // SAFETY: setrlimit reads only `limit`.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn a_memlock_limit_of_64_kib_stops_the_start_with_one_line_saying_what_to_raise() {
    let (code, stderr, created) = run_with(memlock_64k, &[]);
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {stderr}");
    let line = the_error_line(&stderr);
    assert!(
        line.contains("RLIMIT_MEMLOCK) is 64 KiB")
            && line.contains("at least 512 KiB")
            && line.contains("ulimit -l 512"),
        "{line}"
    );
    assert!(!created, "target/ was created");
}

/// A seccomp filter like a container runtime's default profile: io_uring_setup fails with ENOSYS.
fn block_io_uring() -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump_if = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        // The syscall number is at offset 0 of struct seccomp_data.
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        jump_if(libc::SYS_io_uring_setup as u32, 0, 1),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl reads `program`, which outlives the calls; no_new_privs is required without
    // CAP_SYS_ADMIN and only affects this child.
    unsafe {
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        check(libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
        ))
    }
}

#[test]
fn io_uring_blocked_by_seccomp_stops_the_start_with_one_line_naming_the_profile() {
    let (code, stderr, created) = run_with(block_io_uring, &[]);
    assert!(matches!(code, Some(c) if c != 0), "exit {code:?}: {stderr}");
    let line = the_error_line(&stderr);
    assert!(
        line.contains("io_uring is not available")
            && line.contains("seccomp")
            && line.contains("io_uring_setup"),
        "{line}"
    );
    assert!(!created, "target/ was created");
}

fn nothing() -> std::io::Result<()> {
    Ok(())
}

#[test]
fn configuration_errors_are_logged_as_json_when_json_is_asked_for() {
    let (code, stderr, _) = run_with(
        nothing,
        &[
            ("RESTATE_TRACING__LOG_FORMAT", "json"),
            ("RESTATE_WORKER__PARTITIONS", "many"),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let record: serde_json::Value =
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
    assert_eq!(record["level"], "ERROR", "{record}");
    let message = record["message"].as_str().unwrap();
    assert!(
        message.contains("invalid configuration") && message.contains("worker.partitions"),
        "{message}"
    );
}

//! Loopback ports for test processes that run in parallel (nextest starts one process per test).
//!
//! Binding port 0 and releasing it leaves a window in which another process can take the port before
//! our server binds it, and a test that kills a server and restarts it on the same ports can lose them
//! in between. So ports come from [`RANGE`], outside the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`, 32768–60999 by default: port-0 binds and the source
//! ports of outgoing connections come from there), and each one handed out is reserved by an
//! exclusive `flock` on a per-port file in a directory shared by every test process on the machine,
//! held until the process exits. A port is also checked free with a bind before it is handed out: a
//! process outside this scheme (another program, a server left behind by a killed test) may hold it.
//!
//! Shared by the integration tests (`tests/common`) and the benchmarks (`#[path]` module).

#![allow(dead_code)]

use std::fs::File;
use std::net::TcpListener;
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where ports are handed out from (below the default ephemeral range).
pub const RANGE: RangeInclusive<u16> = 20000..=32000;

/// Candidates [`free_port`] tries before it gives up.
pub const TRIES: usize = 4000;

/// A port reserved for as long as this value lives: no other [`reserve`] on the same directory, in
/// this process or another, hands it out meanwhile.
#[derive(Debug)]
pub struct Reservation {
    pub port: u16,
    _lock: File,
}

/// The first candidate that is neither reserved (under `dir`) nor bound by anyone, reserved; None
/// when no candidate is.
pub fn reserve(dir: &Path, candidates: impl IntoIterator<Item = u16>) -> Option<Reservation> {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    candidates.into_iter().find_map(|port| {
        let path = dir.join(port.to_string());
        let lock =
            File::create(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        // flock locks belong to the open file: a second open of the same file conflicts even in this
        // process, and the lock goes away when the process exits, however it exits.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        let unbound = locked && TcpListener::bind(("127.0.0.1", port)).is_ok();
        unbound.then_some(Reservation { port, _lock: lock })
    })
}

/// A loopback port reserved for the rest of this process (see the module docs): nothing else that
/// uses this module takes it, so a server may be stopped and restarted on it.
pub fn free_port() -> u16 {
    static HELD: Mutex<Vec<Reservation>> = Mutex::new(Vec::new());
    let dir = lock_dir();
    let candidates = candidates();
    assert!(
        !candidates.is_empty(),
        "the test port range {RANGE:?} lies inside the ephemeral range {:?}",
        ephemeral_range()
    );
    // Parallel processes start at different points so they rarely contend for the same files.
    let start = (std::process::id() as usize ^ clock_nanos()) % candidates.len();
    let order = candidates
        .iter()
        .cycle()
        .skip(start)
        .take(TRIES.min(candidates.len()));
    let reservation = reserve(&dir, order.copied()).unwrap_or_else(|| {
        panic!(
            "no free loopback port in {RANGE:?} after {TRIES} tries (locks in {})",
            dir.display()
        )
    });
    let port = reservation.port;
    HELD.lock().unwrap().push(reservation);
    port
}

/// The directory of the per-port lock files, shared by all test processes (and worktrees) of a user.
fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("restate-test-ports")
}

/// [`RANGE`] less the kernel's ephemeral range.
fn candidates() -> Vec<u16> {
    let ephemeral = ephemeral_range();
    RANGE.filter(|port| !ephemeral.contains(port)).collect()
}

/// The kernel's ephemeral port range (the Linux default when it cannot be read).
fn ephemeral_range() -> RangeInclusive<u16> {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let bounds: Vec<u16> = text
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    match bounds[..] {
        [low, high] => low..=high,
        _ => 32768..=60999,
    }
}

fn clock_nanos() -> usize {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as usize)
}

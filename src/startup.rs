//! Start-up checks that turn a host or pod that cannot run us into one clear line, before any data
//! directory is created or any executor starts.
//!
//! - **Ports.** Every core binds its own `SO_REUSEPORT` listener, and the kernel lets any other process of
//!   the same user do the same: a second `restate` (another working directory, hence another database)
//!   would silently get half of the connections. So before the executors start, each port is bound once
//!   *without* `SO_REUSEPORT` (std's listener), which fails with `EADDRINUSE` while anyone listens there,
//!   `SO_REUSEPORT` or not (and, because our own listeners set `SO_REUSEADDR` as the probe does, not on
//!   the TIME_WAIT connections a previous run left behind). A previous run killed a moment ago still
//!   listens for a few ms after it is reaped (until the kernel has torn down its io_uring, whose pending
//!   accepts and reads hold the sockets), so a port that no other `restate` claims (below) is probed
//!   again for up to `runtime.port_release_wait`. Those probe listeners must be released before the executors bind (a socket
//!   without `SO_REUSEPORT` blocks theirs), which leaves a window between release and bind. Another
//!   `restate` cannot use that window: each port is also claimed, for the life of the process, by an
//!   abstract Unix socket named after the port (`@restate-port-<port>`; abstract names belong to the network
//!   namespace, like ports, and vanish when the process dies, so nothing stale is left behind). Once every
//!   core has bound, the listeners themselves fail the next probe and the claims are released (a stopping
//!   process keeps none). A foreign program binding the port inside the window makes the executors' bind
//!   fail, which is reported too.
//! - **io_uring.** glommio needs it; a container runtime's default seccomp profile blocks it, and glommio
//!   then fails with a misleading "kernel too old" panic. One `io_uring_setup` call tells.
//! - **Locked memory.** glommio refuses to start below 512 KiB of `RLIMIT_MEMLOCK`, and registers
//!   `runtime.io_memory_bytes` per core (twice: main and poll ring) as fixed buffers when the limit allows.

use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// glommio's own floor for `RLIMIT_MEMLOCK` (`MIN_MEMLOCK_LIMIT` in its reactor): below it no executor
/// starts.
pub const MIN_MEMLOCK_BYTES: u64 = 512 * 1024;

/// Why the node cannot start here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process listens on one of our ports.
    #[error(
        "port {port} ({server} server, {address}) is already in use by {holder}; stop it or choose \
         another port ({key})"
    )]
    PortInUse {
        server: &'static str,
        address: SocketAddr,
        port: u16,
        /// Who holds it, as far as we can tell.
        holder: &'static str,
        /// The config key that sets this address.
        key: &'static str,
    },
    /// A port cannot be bound for another reason (no permission, address not on this host).
    #[error("cannot bind the {server} server to {address} ({key}): {source}")]
    Bind {
        server: &'static str,
        address: SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    /// io_uring is missing or blocked.
    #[error(
        "io_uring is not available (io_uring_setup: {0}): the host kernel must be 5.8 or newer with \
         io_uring enabled (sysctl kernel.io_uring_disabled=0), and a container's seccomp profile must \
         allow io_uring_setup, io_uring_enter and io_uring_register (the default profile of Docker and \
         containerd blocks them; in Kubernetes use securityContext.seccompProfile Unconfined or a \
         Localhost profile that allows them)"
    )]
    IoUring(std::io::Error),
    /// `RLIMIT_MEMLOCK` is below glommio's floor.
    #[error(
        "the locked-memory limit (RLIMIT_MEMLOCK) is {limit_kib} KiB, io_uring needs at least \
         {needed_kib} KiB: raise it where the process starts (`ulimit -l {needed_kib}` or \
         `ulimit -l unlimited`; docker --ulimit memlock=-1; in Kubernetes the container runtime's \
         LimitMEMLOCK, e.g. containerd's systemd unit, sets it for every pod)"
    )]
    MemLock { limit_kib: u64, needed_kib: u64 },
}

impl Error {
    /// A port may be released by a process that is stopping; the rest needs the host to change.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::PortInUse { .. })
    }
}

/// One of our three servers and where it listens.
#[derive(Debug, Clone, Copy)]
pub struct Port {
    /// `ingress`, `meta` or `storage`.
    pub server: &'static str,
    pub address: SocketAddr,
    /// The config key that sets `address`, for the error message.
    pub key: &'static str,
}

/// The port claims of this process, from the probe until every core has bound its listeners.
#[derive(Debug)]
pub struct PortClaims {
    /// Abstract Unix sockets named after each port, held until every core has bound.
    claims: Mutex<Vec<UnixListener>>,
    /// Plain (non-`SO_REUSEPORT`) listeners, held until [`PortClaims::release_probes`].
    probes: Vec<std::net::TcpListener>,
    /// Cores that have not bound their listeners yet.
    unbound_cores: AtomicUsize,
}

impl PortClaims {
    /// Claims every port (see the module docs), or names the first one another process holds.
    /// `cores` call [`PortClaims::core_bound`] once their listeners are bound. A port that no other
    /// `restate` claims but that is still bound is probed again for up to `wait`: a process killed a
    /// moment ago keeps its listeners until the kernel has torn down its io_uring (a few ms after it
    /// was reaped, longer on a busy host).
    pub fn acquire(ports: &[Port], cores: usize, wait: Duration) -> Result<PortClaims, Error> {
        let deadline = Instant::now() + wait;
        let mut claims = Vec::new();
        let mut probes = Vec::new();
        for port in ports {
            // Port 0 asks the kernel for a free port: nothing to claim.
            if port.address.port() == 0 {
                continue;
            }
            claims.push(claim(port)?);
            probes.push(probe_until(port, deadline)?);
        }
        Ok(PortClaims {
            claims: Mutex::new(claims),
            probes,
            unbound_cores: AtomicUsize::new(cores),
        })
    }

    /// Releases the plain listeners so that the executors' `SO_REUSEPORT` listeners can bind; the
    /// abstract claims stay.
    pub fn release_probes(&mut self) {
        self.probes.clear();
    }

    /// One core has bound its listeners; after the last one, the claims are released.
    pub fn core_bound(&self) {
        if self.unbound_cores.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.claims
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
    }
}

fn claim(port: &Port) -> Result<UnixListener, Error> {
    let name = format!("restate-port-{}", port.address.port());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .expect("a short abstract name");
    UnixListener::bind_addr(&address).map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => in_use(port, "another restate process"),
        _ => Error::Bind {
            server: port.server,
            address: port.address,
            key: port.key,
            source,
        },
    })
}

/// [`probe`], again every 10 ms while the port is in use, until `deadline`.
fn probe_until(port: &Port, deadline: Instant) -> Result<std::net::TcpListener, Error> {
    let mut logged = false;
    loop {
        match probe(port) {
            Err(Error::PortInUse { .. }) if Instant::now() < deadline => {
                if !logged {
                    log::info!(
                        port = port.address.port();
                        "port {} ({} server) is still bound, waiting for it (runtime.port_release_wait)",
                        port.address.port(),
                        port.server
                    );
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

fn probe(port: &Port) -> Result<std::net::TcpListener, Error> {
    std::net::TcpListener::bind(port.address).map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => in_use(port, "another process"),
        _ => Error::Bind {
            server: port.server,
            address: port.address,
            key: port.key,
            source,
        },
    })
}

fn in_use(port: &Port, holder: &'static str) -> Error {
    Error::PortInUse {
        server: port.server,
        address: port.address,
        port: port.address.port(),
        holder,
        key: port.key,
    }
}

/// Sets up (and closes) one small io_uring: fails when the kernel lacks it or seccomp blocks it.
pub fn check_io_uring() -> Result<(), Error> {
    // struct io_uring_params is 120 bytes; all zero asks for defaults.
    let mut params = [0u8; 120];
    // SAFETY: io_uring_setup reads and writes only `params`, which is large enough.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(Error::IoUring(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is the ring we just created and own.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// What `RLIMIT_MEMLOCK` means for this config.
#[derive(Debug, PartialEq, Eq)]
pub enum MemLock {
    /// Enough for glommio and for every core's fixed buffers.
    Enough,
    /// glommio starts, but the fixed buffers of some cores will not be registered (slower I/O).
    BelowBuffers { limit_kib: u64, buffers_kib: u64 },
}

/// Checks the soft `RLIMIT_MEMLOCK` against glommio's floor and the fixed buffers of `cores` cores.
pub fn check_memlock(cores: usize, io_memory_bytes: usize) -> Result<MemLock, Error> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Ok(MemLock::Enough); // unknown: let glommio decide
    }
    memlock_verdict(limit.rlim_cur, cores, io_memory_bytes)
}

fn memlock_verdict(
    limit: libc::rlim_t,
    cores: usize,
    io_memory_bytes: usize,
) -> Result<MemLock, Error> {
    if limit == libc::RLIM_INFINITY {
        return Ok(MemLock::Enough);
    }
    if limit < MIN_MEMLOCK_BYTES {
        return Err(Error::MemLock {
            limit_kib: limit / 1024,
            needed_kib: MIN_MEMLOCK_BYTES / 1024,
        });
    }
    // glommio rounds each core's buffer up to pages (at least 64 KiB) and registers it with two rings.
    let per_core = (io_memory_bytes.max(65536) as u64).div_ceil(4096) * 4096;
    let buffers = per_core * 2 * cores as u64;
    if limit < buffers {
        return Ok(MemLock::BelowBuffers {
            limit_kib: limit / 1024,
            buffers_kib: buffers / 1024,
        });
    }
    Ok(MemLock::Enough)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn port(address: SocketAddr) -> Port {
        Port {
            server: "meta",
            address,
            key: "meta.rest_address",
        }
    }

    /// A listener like the executors' own: `SO_REUSEPORT` set before bind.
    fn reuseport_listener() -> (std::net::TcpListener, SocketAddr) {
        // SAFETY: plain socket calls on a socket this test owns; the fd moves into the listener.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let one: libc::c_int = 1;
            let size = std::mem::size_of_val(&one) as libc::socklen_t;
            let ptr = &one as *const libc::c_int as *const libc::c_void;
            assert_eq!(
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, ptr, size),
                0
            );
            let mut address: libc::sockaddr_in = std::mem::zeroed();
            address.sin_family = libc::AF_INET as libc::sa_family_t;
            address.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of_val(&address) as libc::socklen_t;
            let sockaddr = &address as *const libc::sockaddr_in as *const libc::sockaddr;
            assert_eq!(libc::bind(fd, sockaddr, len), 0);
            assert_eq!(libc::listen(fd, 16), 0);
            let listener = <std::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd);
            let local = listener.local_addr().unwrap();
            assert_eq!(listener.as_raw_fd(), fd);
            (listener, local)
        }
    }

    #[test]
    fn a_plain_bind_fails_on_a_port_held_by_an_so_reuseport_listener() {
        let (_held, address) = reuseport_listener();
        match probe(&port(address)) {
            Err(Error::PortInUse { port, .. }) => assert_eq!(port, address.port()),
            other => panic!("expected PortInUse, got {other:?}"),
        }
    }

    #[test]
    fn a_port_released_within_the_wait_is_acquired_and_one_held_past_it_is_not() {
        let (held, address) = reuseport_listener();
        let started = Instant::now();
        let error = PortClaims::acquire(&[port(address)], 1, Duration::from_millis(100))
            .expect_err("still held after the wait");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(error.to_string().contains("another process"), "{error}");
        // Released while start-up waits (as a killed process's listeners are, a moment later).
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        PortClaims::acquire(&[port(address)], 1, Duration::from_secs(10))
            .expect("acquired once released");
        release.join().unwrap();
    }

    #[test]
    fn a_second_claim_on_the_same_port_fails_and_names_it() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = free.local_addr().unwrap();
        drop(free);
        let mut first = PortClaims::acquire(&[port(address)], 2, Duration::ZERO).unwrap();
        first.release_probes();
        let error = PortClaims::acquire(&[port(address)], 1, Duration::ZERO).unwrap_err();
        let message = error.to_string();
        assert!(message.contains(&address.port().to_string()), "{message}");
        assert!(message.contains("another restate process"), "{message}");
        assert!(message.contains("meta"), "{message}");
        first.core_bound();
        PortClaims::acquire(&[port(address)], 1, Duration::ZERO)
            .expect_err("one core has not bound yet");
        first.core_bound();
        PortClaims::acquire(&[port(address)], 1, Duration::ZERO)
            .expect("free again once every core has bound");
    }

    #[test]
    fn memlock_below_glommios_floor_is_an_error_and_below_the_buffers_a_warning() {
        let error = memlock_verdict(64 * 1024, 2, 1 << 20).unwrap_err();
        assert!(error.to_string().contains("64 KiB"), "{error}");
        assert!(error.to_string().contains("ulimit -l 512"), "{error}");
        assert_eq!(
            memlock_verdict(1024 * 1024, 2, 1 << 20).unwrap(),
            MemLock::BelowBuffers {
                limit_kib: 1024,
                buffers_kib: 4096
            }
        );
        assert_eq!(
            memlock_verdict(8 << 20, 2, 1 << 20).unwrap(),
            MemLock::Enough
        );
        assert_eq!(
            memlock_verdict(libc::RLIM_INFINITY, 64, 1 << 30).unwrap(),
            MemLock::Enough
        );
    }
}

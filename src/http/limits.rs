//! Fits the per-port connection limits to the process's open-file limit (`RLIMIT_NOFILE`).
//!
//! Every accepted connection is a file descriptor. If the connection limits add up to more than the
//! process may open, `accept` fails with EMFILE before any limit applies, and RocksDB or an outbound
//! call may fail for want of a descriptor. At start the soft limit is raised to the hard one (allowed
//! without privileges); if the limits plus `runtime.file_descriptor_reserve` still do not fit, they
//! are lowered in proportion, with a WARN naming the numbers.

/// The connection limits of the three ports (per process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// `worker.ingress_grpc.max_connections`.
    pub ingress: usize,
    /// `meta.max_connections`.
    pub meta: usize,
    /// `worker.storage_grpc.max_connections`.
    pub storage: usize,
}

impl ConnectionLimits {
    /// All three together.
    pub fn total(&self) -> usize {
        self.ingress
            .saturating_add(self.meta)
            .saturating_add(self.storage)
    }

    /// The limits, lowered in proportion (each at least 1) so that they and `reserve` fit in
    /// `nofile` descriptors; unchanged when they fit already.
    pub fn fit(self, reserve: usize, nofile: u64) -> ConnectionLimits {
        let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
        let available = nofile.saturating_sub(reserve);
        let total = self.total();
        if total <= available {
            return self;
        }
        let scale = |n: usize| ((n as u128 * available as u128 / total as u128) as usize).max(1);
        ConnectionLimits {
            ingress: scale(self.ingress),
            meta: scale(self.meta),
            storage: scale(self.storage),
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit when it is lower, and returns the soft limit in
/// effect afterwards (`None` if it cannot be read).
pub fn raise_nofile() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        log::warn!(
            "cannot read RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            log::info!(
                from = limit.rlim_cur, to = limit.rlim_max;
                "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
            );
            return Some(limit.rlim_max);
        }
        log::warn!(
            soft = limit.rlim_cur, hard = limit.rlim_max;
            "cannot raise the open-file limit (RLIMIT_NOFILE): {}",
            std::io::Error::last_os_error()
        );
    }
    Some(limit.rlim_cur)
}

/// The connection limits that fit this process's open-file limit, raising the soft limit first; logs
/// a WARN with the numbers when they had to be lowered.
pub fn fit_to_nofile(limits: ConnectionLimits, reserve: usize) -> ConnectionLimits {
    let Some(nofile) = raise_nofile() else {
        return limits;
    };
    let fitted = limits.fit(reserve, nofile);
    if fitted != limits {
        log::warn!(
            nofile, reserve,
            ingress = fitted.ingress, meta = fitted.meta, storage = fitted.storage;
            "connection limits (ingress {}, meta {}, storage {}: {} in all) plus \
             runtime.file_descriptor_reserve ({reserve}) exceed the open-file limit ({nofile}); \
             lowered them to ingress {}, meta {}, storage {}. Raise `ulimit -n` or lower the \
             *.max_connections keys",
            limits.ingress, limits.meta, limits.storage, limits.total(),
            fitted.ingress, fitted.meta, fitted.storage
        );
    }
    fitted
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: ConnectionLimits = ConnectionLimits {
        ingress: 10_000,
        meta: 512,
        storage: 512,
    };

    #[test]
    fn limits_that_fit_are_kept() {
        assert_eq!(DEFAULTS.fit(1024, 20_000), DEFAULTS);
        assert_eq!(DEFAULTS.fit(1024, u64::MAX), DEFAULTS);
    }

    #[test]
    fn limits_that_do_not_fit_are_lowered_in_proportion() {
        let fitted = DEFAULTS.fit(1024, 4096);
        assert!(fitted.total() + 1024 <= 4096, "{fitted:?}");
        assert!(fitted.meta >= 100 && fitted.storage >= 100, "{fitted:?}");
        assert!(fitted.ingress > fitted.meta, "{fitted:?}");
        // Even with no room at all, every port keeps one connection.
        let starved = DEFAULTS.fit(1024, 100);
        assert_eq!((starved.ingress, starved.meta, starved.storage), (1, 1, 1));
    }
}

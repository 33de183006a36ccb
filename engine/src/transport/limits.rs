//! Process resource limits the runtime depends on: open files (one socket per member) and
//! locked memory (glommio's and our io_uring registrations).

use std::io;

/// Why a resource limit could not be raised far enough.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// RLIMIT_NOFILE cannot reach what is needed.
    #[error(
        "need {need} open files but RLIMIT_NOFILE is {soft} (hard {hard}) and raising it failed: {cause}; \
         raise it with `ulimit -n {need}` (root may raise the hard limit)"
    )]
    Nofile {
        /// Descriptors needed.
        need: u64,
        /// Current soft limit.
        soft: u64,
        /// Current hard limit.
        hard: u64,
        /// The error from setrlimit.
        cause: io::Error,
    },
    /// RLIMIT_MEMLOCK is below what the shards will lock.
    #[error(
        "locked memory limit (`ulimit -l`) is {soft_kib} KiB (hard {hard_kib} KiB) but {shards} shard(s) need about \
         {need_kib} KiB (glommio io_memory registered on 3 rings each, plus receive buffer rings); raise `ulimit -l`, \
         or lower RuntimeConfig::io_memory_bytes / shards"
    )]
    Memlock {
        /// Soft limit in KiB.
        soft_kib: u64,
        /// Hard limit in KiB.
        hard_kib: u64,
        /// Estimated need in KiB.
        need_kib: u64,
        /// Shards being started.
        shards: usize,
    },
}

fn getrlimit(resource: libc::__rlimit_resource_t) -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit to fill.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((r.rlim_cur, r.rlim_max))
}

fn setrlimit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `r` is a valid rlimit.
    if unsafe { libc::setrlimit(resource, &r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to at least `need` (and the hard limit too if `need`
/// exceeds it, which only a privileged process may do). Returns the soft limit now in force.
pub fn raise_nofile(need: u64) -> Result<u64, LimitError> {
    let (soft, hard) = getrlimit(libc::RLIMIT_NOFILE).map_err(|cause| LimitError::Nofile {
        need,
        soft: 0,
        hard: 0,
        cause,
    })?;
    if soft >= need {
        return Ok(soft);
    }
    let result = if need <= hard {
        setrlimit(libc::RLIMIT_NOFILE, need, hard)
    } else {
        setrlimit(libc::RLIMIT_NOFILE, need, need)
    };
    match result {
        Ok(()) => Ok(need),
        Err(cause) => Err(LimitError::Nofile {
            need,
            soft,
            hard,
            cause,
        }),
    }
}

/// Capability number of CAP_IPC_LOCK (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// Whether this process may lock memory without limit (CAP_IPC_LOCK): then io_uring does
/// not account registered memory against RLIMIT_MEMLOCK.
pub fn has_cap_ipc_lock() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(line) = status.lines().find(|l| l.starts_with("CapEff:")) else {
        return false;
    };
    let hex = line.trim_start_matches("CapEff:").trim();
    u64::from_str_radix(hex, 16)
        .map(|caps| caps & (1u64 << CAP_IPC_LOCK) != 0)
        .unwrap_or(false)
}

/// Checks that `shards` shards each locking about `per_shard_bytes` fit under
/// RLIMIT_MEMLOCK, raising the soft limit toward the hard one if that is enough.
/// glommio itself refuses to start below 512 KiB whatever the capabilities.
pub fn ensure_memlock(shards: usize, per_shard_bytes: u64) -> Result<(), LimitError> {
    const GLOMMIO_MIN_BYTES: u64 = 512 * 1024;
    let need = if has_cap_ipc_lock() {
        GLOMMIO_MIN_BYTES
    } else {
        (per_shard_bytes.saturating_mul(shards as u64)).max(GLOMMIO_MIN_BYTES)
    };
    let (soft, hard) = getrlimit(libc::RLIMIT_MEMLOCK).unwrap_or((0, 0));
    if soft >= need {
        return Ok(());
    }
    if hard >= need && setrlimit(libc::RLIMIT_MEMLOCK, need, hard).is_ok() {
        return Ok(());
    }
    Err(LimitError::Memlock {
        soft_kib: soft / 1024,
        hard_kib: hard / 1024,
        need_kib: need.div_ceil(1024),
        shards,
    })
}

/// The first of `span` consecutive ports for a test or a local cluster to listen on, below
/// the kernel's ephemeral range (`net.ipv4.ip_local_port_range`) so that no outgoing
/// connection of this host can hold one of them already (a listener on such a port fails
/// with "address in use" at random), spread by the process id so that concurrent runs
/// rarely meet. Ports run from 10000 up to the range's lower bound (32768 by default).
pub fn port_base_below_ephemeral(span: u16) -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let floor = 10_000u32;
    let room = low.saturating_sub(floor + u32::from(span)).max(1);
    (floor + std::process::id() % room) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_already_enough_is_ok() {
        let (soft, _) = getrlimit(libc::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(raise_nofile(16).expect("raise"), soft);
    }

    #[test]
    fn memlock_error_names_ulimit() {
        let e = LimitError::Memlock {
            soft_kib: 64,
            hard_kib: 64,
            need_kib: 4096,
            shards: 2,
        };
        assert!(e.to_string().contains("ulimit -l"));
    }
}

//! Where a shard's thread runs: the CPUs this process may use, pinning an executor to one
//! (falling back to unbound, with the reason, when the host refuses), and the scheduler
//! slice asked for on shard threads.

use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

use super::{RuntimeConfig, RuntimeError};

/// Where a shard runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementReport {
    /// The shard.
    pub shard: usize,
    /// The CPU it is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// Why it is not pinned, if it is not.
    pub unpinned_reason: Option<String>,
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain old data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of its size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: CPU_ISSET reads the set we own.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Requests `slice` as this thread's EEVDF time slice (`sched_setattr` with SCHED_OTHER and
/// `sched_runtime`, honoured since Linux 6.12; older kernels ignore the runtime).
pub fn set_sched_slice(slice: Duration) -> std::io::Result<()> {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
        sched_util_min: u32,
        sched_util_max: u32,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        sched_deadline: 0,
        sched_period: 0,
        sched_util_min: 0,
        sched_util_max: 0,
    };
    // SAFETY: sched_setattr reads `attr.size` bytes from a valid, initialized struct laid
    // out as the kernel's `struct sched_attr` (VER1, 56 bytes); pid 0 is this thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn make_executor(
    shard: usize,
    cpu: Option<usize>,
    not_pinned: Option<String>,
    config: &RuntimeConfig,
) -> Result<(glommio::LocalExecutor, PlacementReport), RuntimeError> {
    let build = |placement: Placement| {
        LocalExecutorBuilder::new(placement)
            .name(&format!("{}-{shard}", config.name))
            .io_memory(config.io_memory_bytes)
            .ring_depth(config.ring_depth)
            .preempt_timer(Duration::from_millis(100))
            .make()
    };
    let executor_error = |e: glommio::GlommioError<()>| {
        let cause = e.to_string();
        let hint = if cause.contains("memlock")
            || cause.contains("MemLock")
            || cause.contains("ENOMEM")
        {
            " (raise the locked-memory limit with `ulimit -l`, or lower RuntimeConfig::io_memory_bytes)"
        } else {
            ""
        };
        RuntimeError::Executor { shard, cause, hint }
    };
    if let Some(cpu) = cpu {
        match build(Placement::Fixed(cpu)) {
            Ok(ex) => {
                return Ok((
                    ex,
                    PlacementReport {
                        shard,
                        cpu: Some(cpu),
                        unpinned_reason: None,
                    },
                ));
            }
            Err(e) => {
                let reason = format!("Placement::Fixed({cpu}) refused: {e}");
                let ex = build(Placement::Unbound).map_err(executor_error)?;
                return Ok((
                    ex,
                    PlacementReport {
                        shard,
                        cpu: None,
                        unpinned_reason: Some(reason),
                    },
                ));
            }
        }
    }
    let ex = build(Placement::Unbound).map_err(executor_error)?;
    Ok((
        ex,
        PlacementReport {
            shard,
            cpu: None,
            unpinned_reason: not_pinned,
        },
    ))
}

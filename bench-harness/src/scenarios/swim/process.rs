//! What this process uses: CPU time, resident memory, open descriptors and their limit,
//! and the kernel's socket counts, read from getrusage, getrlimit and /proc.

use std::time::Duration;

use anyhow::{Context as _, bail};

/// CPU time this process has used (user + system), from getrusage(RUSAGE_SELF).
pub fn process_cpu() -> anyhow::Result<Duration> {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct we own; all-zero bytes
    // are a valid `rusage` (plain integers).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage` for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        bail!("getrusage: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// This process's resident set and its peak, in KiB (VmRSS, VmHWM of /proc/self/status).
pub fn process_memory_kib() -> anyhow::Result<(u64, u64)> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    parse_memory_kib(&status).context("no VmRSS/VmHWM lines in /proc/self/status")
}

/// VmRSS and VmHWM (KiB) of a /proc/<pid>/status text.
pub fn parse_memory_kib(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Open descriptors and RLIMIT_NOFILE, for an error message: each member holds a UDP
/// socket and, with `--listeners member`, a TCP listener; every stream exchange in flight
/// holds one more on each side.
pub fn fd_report() -> String {
    let open = open_fds();
    let (soft, hard) = nofile_limit();
    format!("{open} descriptors open, RLIMIT_NOFILE soft {soft} hard {hard}")
}

/// Descriptors this process has open (0 if /proc cannot say).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The kernel's socket counts (/proc/net/sockstat: TCP `alloc` counts sockets not yet
/// connected or already closed that still hold a descriptor), one string per line.
pub fn sockstat() -> Vec<String> {
    std::fs::read_to_string("/proc/net/sockstat")
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// RLIMIT_NOFILE (soft, hard); zeros if getrlimit fails.
pub fn nofile_limit() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the `rlimit` we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if rc != 0 {
        return (0, 0);
    }
    (r.rlim_cur, r.rlim_max)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn memory_lines_parse() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n";
        assert_eq!(parse_memory_kib(s), Some((1024, 2048)));
        assert_eq!(parse_memory_kib("Name:\tx\n"), None);
        let (rss, hwm) = process_memory_kib().expect("this process has a status file");
        assert!(rss > 0 && hwm >= rss);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        // Spins until the reading moves (a liveness bound, not a timing claim).
        let a = process_cpu().expect("getrusage");
        let mut x = 0u64;
        let start = Instant::now();
        let mut b = a;
        while b <= a && start.elapsed() < Duration::from_secs(60) {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            b = process_cpu().expect("getrusage");
        }
        std::hint::black_box(x);
        assert!(b > a, "spinning used CPU: {a:?} -> {b:?}");
    }
}

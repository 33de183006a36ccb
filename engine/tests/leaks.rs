//! Opening and closing leaves the process as it found it: a log opened, written (across
//! several segments), read, truncated, compacted and closed many times, and a live SWIM host
//! started and stopped several times, give back every file descriptor (`/proc/self/fd`) and
//! their memory (`/proc/self/statm`, within a small fixed slack for the allocator).
//!
//! Descriptor and memory counts are per process, so the tests of this file take one lock
//! and run one at a time. Runtime in release mode: seconds (dominated by `fdatasync`).
//!
//! One leak is glommio's, not ours: every executor leaves its sleep notifier's eventfd open
//! after it stops (glommio 0.9, DataDog/glommio#448: a task header outlives the executor
//! and holds the notifier). Tests that start executors between two counts therefore
//! compare every other descriptor exactly and allow eventfds to grow by at most one per
//! executor started; within one executor, counts must match exactly.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ringleader_engine::host::{Host, HostConfig, MemberSpec, loopback_addrs};
use ringleader_engine::log::{Entry, IoMode, Log, LogConfig, LogError, executor_builder};
use ringleader_engine::swim::Config;

/// Open/close cycles of the log on one executor.
const LOG_CYCLES: u64 = 1_000;
/// Open/close cycles of the log, each on an executor of its own (as `wal-crash` verifies);
/// the resident set is compared over the second half.
const LOG_EXECUTOR_CYCLES: u64 = 80;
/// Start/stop cycles of the host.
const HOST_CYCLES: usize = 16;
/// Members of each host.
const HOST_MEMBERS: usize = 4;
/// Growth of the resident set allowed over all cycles (allocator caches, lazily touched
/// pages); a leak of one segment's state per cycle would exceed it many times over.
const RSS_SLACK_BYTES: u64 = 4 << 20;
/// Liveness bound for conditions awaited (a loaded machine is slow, never this slow).
const LIVENESS: Duration = Duration::from_secs(120);
/// How long the threads of a stopped executor may take to close what they hold.
const SETTLE: Duration = Duration::from_secs(10);
/// Cycles before the baselines are taken: glommio, the allocator and the log directory
/// reach their steady state.
const WARM_UP_CYCLES: u64 = 20;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Takes the lock of this file's tests. The first caller also caps glibc's malloc arenas at
/// one: otherwise a thread that finds its arena busy makes a new one (up to 8 per core),
/// how many depends on the machine's load, and each keeps memory a leak check would count.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ARENAS: std::sync::Once = std::sync::Once::new();
    ARENAS.call_once(|| {
        // SAFETY: mallopt sets an allocator parameter; it touches no memory of ours.
        let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
        assert_eq!(set, 1, "mallopt(M_ARENA_MAX) refused");
    });
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Open descriptors of this process (the directory handle `read_dir` itself holds is
/// counted every time, so differences are exact).
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .count()
}

/// What the open descriptors point at (sorted), without glommio's leaked eventfds, and
/// how many eventfds there are.
fn fd_kinds() -> (Vec<String>, usize) {
    let all = fd_listing();
    let eventfds = all.iter().filter(|t| t.ends_with("[eventfd]")).count();
    let mut other: Vec<String> = all
        .into_iter()
        .filter(|t| !t.ends_with("[eventfd]"))
        .map(|t| {
            t.split_once(" -> ")
                .map_or(t.clone(), |(_, target)| target.to_string())
        })
        .collect();
    other.sort();
    (other, eventfds)
}

/// Waits until the descriptors other than eventfds are those of `before` again (threads of
/// a stopped executor or host may still be closing theirs), then checks that eventfds
/// grew by at most `executors` (glommio#448, see the module docs).
fn assert_fds_back(before: &(Vec<String>, usize), executors: usize, what: &str) {
    let start = Instant::now();
    loop {
        let now = fd_kinds();
        if now.0 == before.0 {
            assert!(
                now.1 <= before.1 + executors,
                "{what}: {} eventfds open, {} before and {executors} executors started since",
                now.1,
                before.1
            );
            return;
        }
        assert!(
            start.elapsed() < SETTLE,
            "{what}: descriptors {:#?}, before {:#?}",
            now.0,
            before.0
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The open descriptors with what they point at, for a failure message.
fn fd_listing() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(Result::ok)
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    v.sort();
    v
}

/// Resident set size in bytes, after the allocator gave its free memory back to the system
/// (so that what is counted is memory in use, not arenas kept by threads that ended).
fn rss_bytes() -> u64 {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm has a resident field");
    // SAFETY: sysconf reads a constant of the running system and touches no memory of ours.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

fn run<F, T>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let ex = executor_builder("leak-test")
        .spawn(f)
        .unwrap_or_else(|e| panic!("{}", ringleader_engine::log::explain_executor_error(&e)));
    ex.join().expect("executor thread")
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringleader-leaks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Tiny segments: three batches of three entries each, so every cycle rolls a segment.
fn tiny(io_mode: IoMode) -> LogConfig {
    LogConfig {
        segment_bytes: 3 * 4096,
        batch_bytes_max: 4096,
        batch_entries_max: 64,
        io_mode,
        ..LogConfig::default()
    }
}

const ENTRY_BYTES: usize = 1_000;
/// Entries appended per cycle: more than one segment holds.
const ENTRIES_PER_CYCLE: u64 = 12;
/// Entries kept behind the newest by each cycle's compaction (a few segments' worth).
const ENTRIES_KEPT: u64 = 30;

/// Direct and buffered files in turn.
fn mode_of(cycle: u64) -> IoMode {
    if cycle % 2 == 0 {
        IoMode::Direct
    } else {
        IoMode::Buffered
    }
}

/// A cycle's entries, from `first` on, all carrying `payload`.
fn entries(first: u64, payload: &[u8]) -> Vec<Entry<'_>> {
    (first..first + ENTRIES_PER_CYCLE)
        .map(|index| Entry {
            index,
            term: 1,
            payload,
        })
        .collect()
}

/// One cycle: open the log in `dir` (recovering its segments), append a segment's worth
/// and more, read some back, sometimes truncate, compact, close. Every file-opening path
/// of the log runs: recovery, the spare, rolls, reads, the truncation's rewrite.
async fn cycle(dir: &Path, cfg: LogConfig, n: u64) -> usize {
    let (log, report) = Log::open(dir, cfg).await.expect("open");
    assert!(
        n < 3 || report.segments >= 2,
        "cycle {n}: the log has several segments ({report:?})"
    );
    let first = log.next_index();
    let payload = vec![n as u8; ENTRY_BYTES];
    let durable = log
        .append(&entries(first, &payload))
        .expect("append")
        .await
        .expect("durable");
    assert_eq!(durable, first + ENTRIES_PER_CYCLE - 1);
    let lo = log.first_index().max(durable.saturating_sub(ENTRIES_KEPT));
    let read = log.read_range(lo, durable + 1).await.expect("read");
    assert!(!read.is_empty());
    if n % 7 == 3 {
        // Rewrites the newest segment through a temporary file.
        log.truncate_suffix(durable - 2).await.expect("truncate");
    }
    log.compact_prefix(log.next_index().saturating_sub(ENTRIES_KEPT))
        .await
        .expect("compact");
    let segments = log.segment_count();
    log.close().await.expect("close");
    segments
}

#[test]
fn log_open_write_close_a_thousand_times_gives_every_descriptor_back() {
    let _one = one_at_a_time();
    let dir = temp_dir("one-executor");
    let d = dir.clone();
    let (before, after, listing, rss_before, rss_after, segments_max) = run(move || async move {
        // The first cycles open what glommio keeps for the executor's life (and create the
        // log); the baseline is taken after them.
        for n in 0..WARM_UP_CYCLES {
            cycle(&d, tiny(IoMode::Direct), n).await;
        }
        let before = fds();
        let rss_before = rss_bytes();
        let mut segments_max = 0;
        for n in WARM_UP_CYCLES..WARM_UP_CYCLES + LOG_CYCLES {
            segments_max = segments_max.max(cycle(&d, tiny(mode_of(n)), n).await);
            // Right after close, before the executor turns again: nothing may be left to a
            // queued close.
            let now = fds();
            assert_eq!(
                now,
                before,
                "cycle {n}: {now} descriptors open after close, {before} before: {:#?}",
                fd_listing()
            );
        }
        (
            before,
            fds(),
            fd_listing(),
            rss_before,
            rss_bytes(),
            segments_max,
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(after, before, "descriptors: {listing:#?}");
    assert!(
        segments_max >= 3,
        "the log had several segments open at once ({segments_max})"
    );
    assert!(
        rss_after <= rss_before + RSS_SLACK_BYTES,
        "resident set grew from {rss_before} to {rss_after} bytes over {LOG_CYCLES} cycles"
    );
}

#[test]
fn log_closed_on_executors_that_stop_right_after_gives_every_descriptor_back() {
    let _one = one_at_a_time();
    let dir = temp_dir("executor-each");
    for n in 0..WARM_UP_CYCLES {
        let d = dir.clone();
        run(move || async move { cycle(&d, tiny(IoMode::Direct), n).await });
    }
    let before = fd_kinds();
    // As for the host below: compared from the middle of the run on, over as many cycles
    // as the check used to span, so a per-cycle leak it caught is caught still.
    let mut rss_before = rss_bytes();
    for n in WARM_UP_CYCLES..WARM_UP_CYCLES + LOG_EXECUTOR_CYCLES {
        let d = dir.clone();
        run(move || async move { cycle(&d, tiny(mode_of(n)), n).await });
        let started = (n + 1 - WARM_UP_CYCLES) as usize;
        assert_fds_back(&before, started, &format!("executor cycle {n}"));
        if n + 1 == WARM_UP_CYCLES + LOG_EXECUTOR_CYCLES / 2 {
            rss_before = rss_bytes();
        }
    }
    let rss_after = rss_bytes();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        rss_after <= rss_before + RSS_SLACK_BYTES,
        "resident set grew from {rss_before} to {rss_after} bytes over the last {} of \
         {LOG_EXECUTOR_CYCLES} executors",
        LOG_EXECUTOR_CYCLES / 2
    );
}

#[test]
fn log_dropped_without_close_fails_its_appends_and_its_files_close_while_the_executor_runs() {
    let _one = one_at_a_time();
    let dir = temp_dir("dropped");
    let d = dir.clone();
    run(move || async move {
        cycle(&d, tiny(IoMode::Direct), 0).await;
        let before = fds();
        for n in 1..20 {
            let (log, _) = Log::open(&d, tiny(IoMode::Direct)).await.expect("open");
            let payload = vec![n as u8; ENTRY_BYTES];
            let pending = log
                .append(&entries(log.next_index(), &payload))
                .expect("append");
            drop(log);
            match pending.await {
                Err(LogError::Closed) | Err(LogError::Poisoned(_)) | Ok(_) => {}
                Err(e) => panic!("a dropped log's append ended with {e}"),
            }
        }
        // The drop queued the closes on the ring: they complete as the executor turns.
        let start = Instant::now();
        while fds() != before {
            assert!(
                start.elapsed() < LIVENESS,
                "{} descriptors open, {before} before: {:#?}",
                fds(),
                fd_listing()
            );
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn host_port() -> u16 {
    ringleader_engine::transport::port_base_below_ephemeral(16)
}

/// Starts a host with a few members on loopback, waits until they all see each other, and
/// shuts it down.
fn host_cycle(addrs: &[SocketAddr]) {
    let mut c = HostConfig {
        swim: Config {
            probe_interval_ms: 500,
            probe_timeout_ms: 200,
            push_pull_interval_ms: 3_000,
            ..Config::local()
        },
        ..HostConfig::default()
    };
    c.runtime.shards = 1;
    c.runtime.pin = false;
    let h = Host::start(c).expect("host starts");
    for (i, a) in addrs.iter().enumerate() {
        h.add(MemberSpec {
            name: format!("leak{i}"),
            bind: *a,
            seeds: vec![addrs[0]],
            meta: Vec::new(),
        })
        .expect("member starts");
    }
    let start = Instant::now();
    while h.census(addrs.len()).expect("census").converged() != addrs.len() {
        assert!(start.elapsed() < LIVENESS, "members did not converge");
        std::thread::sleep(Duration::from_millis(20));
    }
    h.shutdown().expect("host stops");
}

#[test]
fn host_started_and_stopped_gives_every_descriptor_back() {
    let _one = one_at_a_time();
    let addrs = loopback_addrs(HOST_MEMBERS, 71, host_port());
    // The first cycle sets the process up (descriptor limit raised, lazy statics).
    host_cycle(&addrs);
    let before = fd_kinds();
    // The resident set is compared from the middle of the run on: each host's executor
    // thread may get a malloc arena of its own, and glibc keeps a bounded number of them
    // (8 per core) with what they hold; a leak grows every cycle, arenas stop growing.
    let mut rss_before = rss_bytes();
    for n in 1..HOST_CYCLES {
        host_cycle(&addrs);
        // One shard: one executor per host.
        assert_fds_back(&before, n, &format!("host cycle {n}"));
        if n == HOST_CYCLES / 2 {
            rss_before = rss_bytes();
        }
    }
    let rss_after = rss_bytes();
    assert!(
        rss_after <= rss_before + RSS_SLACK_BYTES,
        "resident set grew from {rss_before} to {rss_after} bytes over the last {} of {HOST_CYCLES} hosts",
        HOST_CYCLES - 1 - HOST_CYCLES / 2
    );
}

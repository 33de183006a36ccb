//! Subcommand `wal-crash`: sled-style crash testing of the write-ahead log.
//!
//! Each cycle starts this same binary as a child (hidden `--child` flag) that opens the log
//! in `--dir`, reports how long the open (recovery) took and how large the log was, then
//! appends under load from many glommio tasks and compacts the log's prefix as a Raft node
//! does after a snapshot (so that the log, and recovery with it, stay bounded). It reports
//! every durable index it was acknowledged on its stdout pipe as soon as each
//! acknowledgement resolves ([`Report`] records). The parent waits until the child has
//! acknowledged at least one entry since its restart, kills it with SIGKILL at a random
//! moment shortly after (so every cycle crashes appends, segment rolls, zero-fills and
//! compactions in flight), reopens the log, and checks that every acknowledged entry that
//! was not compacted away is present and intact: the payload is derived from the index, so
//! each entry can be checked on its own. A cycle whose child acknowledged nothing before the
//! kill tested nothing and is counted in `cycles_idle`. The kill delays come from `--seed`;
//! a failing run prints its seed.
//!
//! The parent verifies on one glommio executor for the whole run: it must never start an
//! executor per cycle (glommio leaves one eventfd open per executor it ever ran).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::{Rng, SeedableRng};
use ringleader_engine::log::{self as wal, Entry, Log, LogConfig};
use serde_json::json;

/// Flags of `wal-crash`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Kill/recover cycles.
    #[arg(long, default_value_t = 30)]
    pub cycles: u32,
    /// Folder of the log (created; reused across cycles). Default: a new folder under the
    /// current directory, removed at the end when every check passed.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Print exactly one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Seed of the kill delays (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Longest time a child runs after its first acknowledgement before it is killed, in
    /// milliseconds (the delay is drawn from 0 to this).
    #[arg(long, default_value_t = 200)]
    pub kill_after_ms_max: u64,
    /// Longest wait for a child to open the log and acknowledge its first entry, in
    /// milliseconds; a child that takes longer is killed and its cycle counted idle.
    #[arg(long, default_value_t = 60_000)]
    pub first_ack_timeout_ms: u64,
    /// Entries the child keeps behind its durable index when it compacts (a snapshot
    /// covers the rest); whole segments older than that are removed.
    #[arg(long, default_value_t = 10_000)]
    pub compact_keep_entries: u64,
    /// How often the child compacts, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub compact_interval_ms: u64,
    /// Concurrent appenders in the child.
    #[arg(long, default_value_t = 32)]
    pub writers: usize,
    /// Segment size in KiB (small, so that segment rolls happen under the kill).
    #[arg(long, default_value_t = 1024)]
    pub segment_kib: u64,
    /// Probability that a cycle also simulates a power loss after the kill: the bytes of
    /// unacknowledged batches at the end of the newest segment are zeroed from a random
    /// offset on (un-synced writes lost or torn). Acknowledged entries must still survive.
    #[arg(long, default_value_t = 0.5)]
    pub tear_probability: f64,
    /// Internal: run as the appending child.
    #[arg(long, hide = true)]
    pub child: bool,
}

/// Payload of entry `index`: its length and bytes both derive from the index.
pub fn payload_of(index: u64) -> Vec<u8> {
    let len = 8 + (index.wrapping_mul(2_654_435_761) % 300) as usize;
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&index.to_le_bytes());
    let mut x = index ^ 0x9E37_79B9_7F4A_7C15;
    while p.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(x as u8);
    }
    p
}

fn log_config(segment_kib: u64) -> LogConfig {
    LogConfig {
        segment_bytes: segment_kib << 10,
        batch_bytes_max: 256 << 10,
        ..LogConfig::default()
    }
}

/// One record of the child's report pipe: four little-endian `u64`s, the first saying
/// what the record is. Records are written whole with one `write(2)` each, smaller than
/// `PIPE_BUF`, so they never interleave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Report {
    /// The log is open: how long `Log::open` took, and the log it recovered.
    Opened {
        open_us: u64,
        log_bytes: u64,
        entries: u64,
    },
    /// Every entry up to this index is durable (acknowledged).
    Acked(u64),
}

const REPORT_BYTES: usize = 32;
const REPORT_OPENED: u64 = 1;
const REPORT_ACKED: u64 = 2;

impl Report {
    fn encode(self) -> [u8; REPORT_BYTES] {
        let words = match self {
            Report::Opened {
                open_us,
                log_bytes,
                entries,
            } => [REPORT_OPENED, open_us, log_bytes, entries],
            Report::Acked(index) => [REPORT_ACKED, index, 0, 0],
        };
        let mut out = [0u8; REPORT_BYTES];
        for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8; REPORT_BYTES]) -> Option<Report> {
        let mut words = [0u64; 4];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().ok()?);
        }
        match words[0] {
            REPORT_OPENED => Some(Report::Opened {
                open_us: words[1],
                log_bytes: words[2],
                entries: words[3],
            }),
            REPORT_ACKED => Some(Report::Acked(words[1])),
            _ => None,
        }
    }
}

/// Reads the child's reports until its pipe closes, passing each on as it arrives.
fn read_reports(mut out: impl Read, tx: mpsc::Sender<Report>) -> anyhow::Result<()> {
    let mut rec = [0u8; REPORT_BYTES];
    loop {
        let mut got = 0;
        while got < REPORT_BYTES {
            match out.read(&mut rec[got..]) {
                Ok(0) if got == 0 => return Ok(()),
                // Killed in the middle of nothing: records are written whole.
                Ok(0) => bail!("the child's report pipe ended inside a record"),
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let report = Report::decode(&rec).context("unknown record on the child's pipe")?;
        // The parent stops listening once the cycle is over; later records do not matter.
        let _ = tx.send(report);
    }
}

/// Percentile `p` (0..=100) of `v` by nearest rank; 0 for an empty list.
pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// p50, p90 and max of `v`, rounded to microseconds.
fn summary(v: &[f64]) -> serde_json::Value {
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "p50": r(percentile(v, 50.0)),
        "p90": r(percentile(v, 90.0)),
        "max": r(percentile(v, 100.0)),
    })
}

/// Open descriptors of this process.
fn fd_count() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// What one cycle observed.
#[derive(Debug, Default)]
struct CycleOutcome {
    opened: Option<(u64, u64, u64)>,
    acked_max: Option<u64>,
    first_ack: Option<Duration>,
    kill_delay: Duration,
}

/// Runs the child until it has acknowledged an entry since its restart (or
/// `first_ack_timeout_ms` passed), lets it run for a random delay up to
/// `kill_after_ms_max`, kills it, and collects its reports.
fn run_cycle(
    args: &Args,
    exe: &Path,
    dir: &Path,
    rng: &mut impl Rng,
    cycle: u32,
    seed: u64,
) -> anyhow::Result<CycleOutcome> {
    let started = Instant::now();
    let mut child = Command::new(exe)
        .args(["wal-crash", "--child", "--dir"])
        .arg(dir)
        .args([
            "--writers",
            &args.writers.to_string(),
            "--segment-kib",
            &args.segment_kib.to_string(),
            "--compact-keep-entries",
            &args.compact_keep_entries.to_string(),
            "--compact-interval-ms",
            &args.compact_interval_ms.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning the child")?;
    let out = child.stdout.take().context("child stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || read_reports(out, tx));
    let mut outcome = CycleOutcome::default();
    let note = |outcome: &mut CycleOutcome, r: Report| match r {
        Report::Opened {
            open_us,
            log_bytes,
            entries,
        } => outcome.opened = Some((open_us, log_bytes, entries)),
        Report::Acked(i) => {
            outcome.acked_max = Some(outcome.acked_max.map_or(i, |a| a.max(i)));
        }
    };
    // Until the first acknowledgement since the restart.
    let deadline = started + Duration::from_millis(args.first_ack_timeout_ms);
    while outcome.acked_max.is_none() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            eprintln!(
                "cycle {cycle}: no acknowledgement within {} ms of the start; killing it idle",
                args.first_ack_timeout_ms
            );
            break;
        };
        match rx.recv_timeout(left) {
            Ok(r) => note(&mut outcome, r),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The pipe closed: the child ended by itself (reported below).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if outcome.acked_max.is_some() {
        outcome.first_ack = Some(started.elapsed());
        outcome.kill_delay = Duration::from_millis(rng.random_range(0..=args.kill_after_ms_max));
        std::thread::sleep(outcome.kill_delay);
    }
    let exited_early = child.try_wait()?.is_some();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    if rc != 0 && !exited_early {
        bail!(
            "could not SIGKILL the child: {}",
            std::io::Error::last_os_error()
        );
    }
    let status = child.wait()?;
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("pipe reader panicked"))??;
    for r in rx.try_iter() {
        note(&mut outcome, r);
    }
    if exited_early {
        bail!(
            "cycle {cycle}: the child exited by itself ({status}) before it was killed (seed {seed})"
        );
    }
    Ok(outcome)
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.child {
        return child(&args);
    }
    anyhow::ensure!(args.cycles >= 1, "--cycles must be at least 1");
    anyhow::ensure!(
        args.first_ack_timeout_ms >= 1,
        "--first-ack-timeout-ms must be at least 1"
    );
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let (dir, remove_after) = match &args.dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::current_dir()?.join(format!(".ringleader-wal-crash-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("wal-crash: seed {seed}, dir {}", dir.display());
    let verifier = wal::executor_builder("wal-verify")
        .make()
        .map_err(|e| anyhow::anyhow!(wal::explain_executor_error(&e)))?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let exe = std::env::current_exe()?;
    let mut acknowledged_total = 0u64;
    let mut lost_total = 0u64;
    let mut torn_tails = 0u64;
    let mut cycles_idle = 0u64;
    let mut verified_entries = 0u64;
    let (mut open_ms, mut first_ack_ms, mut kill_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut log_bytes_max, mut log_entries_max) = (0u64, 0u64);
    // Every index up to this one was acknowledged in some cycle and must survive (unless
    // a compaction removed it: a snapshot covers it then).
    let mut acked_max = verifier.run(verify(&dir, args.segment_kib, 0))?.last_index;
    // Descriptors once the verifier's executor and the first verification are done: the
    // cycles must add none.
    let fds_start = fd_count();
    let started = Instant::now();
    for cycle in 0..args.cycles {
        let outcome = run_cycle(&args, &exe, &dir, &mut rng, cycle, seed)?;
        if let Some((open_us, log_bytes, entries)) = outcome.opened {
            open_ms.push(open_us as f64 / 1000.0);
            log_bytes_max = log_bytes_max.max(log_bytes);
            log_entries_max = log_entries_max.max(entries);
        }
        if let Some(t) = outcome.first_ack {
            first_ack_ms.push(t.as_secs_f64() * 1000.0);
            kill_ms.push(outcome.kill_delay.as_secs_f64() * 1000.0);
        }
        let before = acked_max;
        match outcome.acked_max {
            Some(a) => acked_max = acked_max.max(a),
            None => cycles_idle += 1,
        }
        acknowledged_total += acked_max - before;
        let mut tore = None;
        if rng.random_bool(args.tear_probability) {
            tore = tear_unacknowledged(&dir, args.segment_kib, acked_max, &mut rng)?;
        }
        let from = before.saturating_sub(64).max(1);
        let v = verifier.run(verify(&dir, args.segment_kib, from))?;
        if v.torn_tail {
            torn_tails += 1;
        }
        verified_entries += v.checked;
        let lost = acked_max.saturating_sub(v.last_index) + v.bad_entries;
        lost_total += lost;
        eprintln!(
            "cycle {cycle}: opened in {:.1} ms ({} bytes, {} entries), first ack after {:?}, killed {:?} later; acknowledged up to {acked_max} (+{}), simulated loss of bytes {tore:?}, recovered {}..={}, torn tail truncated: {}, lost {lost}",
            outcome.opened.map_or(f64::NAN, |o| o.0 as f64 / 1000.0),
            outcome.opened.map_or(0, |o| o.1),
            outcome.opened.map_or(0, |o| o.2),
            outcome.first_ack,
            outcome.kill_delay,
            acked_max - before,
            v.first_index,
            v.last_index,
            v.torn_tail
        );
        if lost > 0 {
            eprintln!(
                "wal-crash: LOST {lost} acknowledged entries in cycle {cycle}; replay with --seed {seed}"
            );
        }
    }
    // Finally every acknowledged entry still in the log, from its first.
    let v = verifier.run(verify(&dir, args.segment_kib, 1))?;
    let final_lost = acked_max.saturating_sub(v.last_index) + v.bad_entries;
    lost_total = lost_total.max(final_lost);
    let fds_end = fd_count();
    drop(verifier);
    // Open time over the run: the p50 of each quarter of the cycles, in order.
    let quarter = open_ms.len().div_ceil(4).max(1);
    let open_ms_p50_by_quarter: Vec<f64> = open_ms
        .chunks(quarter)
        .map(|c| (percentile(c, 50.0) * 1000.0).round() / 1000.0)
        .collect();
    let result = json!({
        "cycles": args.cycles,
        "acknowledged": acknowledged_total,
        "lost": lost_total,
        "torn_tails_truncated": torn_tails,
        "last_index": v.last_index,
        "first_index": v.first_index,
        "seed": seed,
        "elapsed_s": started.elapsed().as_secs_f64(),
        "cycles_idle": cycles_idle,
        "verified_entries": verified_entries,
        "open_ms": summary(&open_ms),
        "open_ms_p50_by_quarter": open_ms_p50_by_quarter,
        "log_bytes_max": log_bytes_max,
        "log_entries_max": log_entries_max,
        "first_ack_ms": summary(&first_ack_ms),
        "kill_after_ack_ms": summary(&kill_ms),
        "parent_fds": {"start": fds_start, "end": fds_end},
    });
    if remove_after && lost_total == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} cycles ({cycles_idle} idle), {} acknowledged, {} lost, {} torn tails truncated, open p50 {} ms max {} ms (seed {seed})",
            args.cycles,
            acknowledged_total,
            lost_total,
            torn_tails,
            result["open_ms"]["p50"],
            result["open_ms"]["max"]
        );
    }
    if lost_total > 0 {
        bail!("{lost_total} acknowledged entries lost (seed {seed})");
    }
    Ok(())
}

/// Simulates losing un-synced writes: zeroes the newest segment from a random offset inside
/// its unacknowledged batches (those after `acked_max`) to the end of its data. Returns the
/// zeroed byte range, or `None` when the newest segment holds nothing unacknowledged.
fn tear_unacknowledged(
    dir: &Path,
    segment_kib: u64,
    acked_max: u64,
    rng: &mut impl Rng,
) -> anyhow::Result<Option<(u64, u64)>> {
    use std::os::unix::fs::FileExt;
    let mut segs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let first = wal::file::parse_segment_name(e.file_name().to_str()?)?;
            Some((first, e.path()))
        })
        .collect();
    segs.sort();
    let Some((first, path)) = segs.pop() else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path)?;
    let cfg = log_config(segment_kib);
    let Ok((scan, _)) = wal::recovery::scan_segment(
        &bytes,
        first,
        true,
        cfg.batch_bytes_max,
        cfg.tail_window_bytes(),
    ) else {
        // Not ours to judge: the verification that follows reports it.
        return Ok(None);
    };
    let Some(&(_, start)) = scan.batch_starts.iter().find(|(f, _)| *f > acked_max) else {
        return Ok(None);
    };
    let (start, end) = (u64::from(start), scan.end_offset);
    if start >= end {
        return Ok(None);
    }
    let from = rng.random_range(start..end);
    let f = std::fs::OpenOptions::new().write(true).open(&path)?;
    f.write_all_at(&vec![0u8; (end - from) as usize], from)?;
    f.sync_data()?;
    Ok(Some((from, end)))
}

struct Verified {
    first_index: u64,
    last_index: u64,
    torn_tail: bool,
    bad_entries: u64,
    checked: u64,
}

/// Opens the log (recovering it), checks every entry from `from` (or the log's first) to
/// its end, and closes it.
async fn verify(dir: &Path, segment_kib: u64, from: u64) -> anyhow::Result<Verified> {
    let (log, report) = Log::open(dir, log_config(segment_kib)).await?;
    let last = report.last_index;
    let mut bad = 0u64;
    let mut checked = 0u64;
    let mut idx = from.max(report.first_index);
    let read = async {
        while idx <= last {
            let got = log.read_range(idx, last + 1).await?;
            anyhow::ensure!(!got.is_empty(), "empty read at {idx}");
            for e in &got {
                if e.index != idx || e.payload != payload_of(e.index) {
                    eprintln!(
                        "entry {idx}: wrong content (index {}, {} bytes)",
                        e.index,
                        e.payload.len()
                    );
                    bad += 1;
                }
                checked += 1;
                idx += 1;
            }
        }
        Ok(())
    }
    .await;
    // Closed whatever the read found: the parent verifies hundreds of times.
    let closed = log.close().await;
    read?;
    closed?;
    if let Some(t) = &report.torn_tail {
        eprintln!(
            "recovery dropped a torn tail: {} at offset {}, {} bytes, entries {:?} ({})",
            t.segment.display(),
            t.offset,
            t.bytes_dropped,
            t.entries_dropped,
            t.fault
        );
    }
    Ok(Verified {
        first_index: report.first_index,
        last_index: last,
        torn_tail: report.torn_tail.is_some(),
        bad_entries: bad,
        checked,
    })
}

/// Bytes of the segment files in `dir`.
fn segment_bytes_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(wal::file::parse_segment_name)
                    .is_some()
            })
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

/// The child: open the log and report how long that took, then append forever (until
/// killed), reporting each new durable index on stdout, and compact the prefix as it goes.
fn child(args: &Args) -> anyhow::Result<()> {
    let dir = args.dir.clone().context("--dir is required")?;
    let (writers, segment_kib) = (args.writers.max(1), args.segment_kib);
    let (keep, interval) = (
        args.compact_keep_entries,
        Duration::from_millis(args.compact_interval_ms.max(1)),
    );
    let h = wal::executor_builder("wal-crash-child")
        .spawn(move || async move {
            let open_started = Instant::now();
            let (log, report) = Log::open(&dir, log_config(segment_kib)).await?;
            let open_us = open_started.elapsed().as_micros() as u64;
            write_all_stdout(
                &Report::Opened {
                    open_us,
                    log_bytes: segment_bytes_in(&dir),
                    entries: report.last_index + 1 - report.first_index,
                }
                .encode(),
            )?;
            let log = std::rc::Rc::new(log);
            let reported = std::rc::Rc::new(std::cell::Cell::new(0u64));
            for w in 0..writers {
                let (log, reported) = (log.clone(), reported.clone());
                spawn_or_exit(async move {
                    let mut n = 0u64;
                    loop {
                        // Some writers append two entries at once, to cross batch limits.
                        let index = log.next_index();
                        let count = if (w as u64 + n) % 5 == 0 { 2 } else { 1 };
                        n += 1;
                        let payloads: Vec<Vec<u8>> =
                            (index..index + count).map(payload_of).collect();
                        let entries: Vec<Entry<'_>> = payloads
                            .iter()
                            .enumerate()
                            .map(|(k, p)| Entry {
                                index: index + k as u64,
                                term: 1,
                                payload: p,
                            })
                            .collect();
                        let durable = match log.append(&entries) {
                            Ok(d) => d,
                            Err(wal::LogError::Backpressure { .. } | wal::LogError::Busy) => {
                                glommio::yield_if_needed().await;
                                glommio::timer::sleep(Duration::from_micros(100)).await;
                                continue;
                            }
                            Err(e) => return Err(anyhow::Error::from(e)),
                        };
                        let d = durable.await?;
                        if d > reported.get() {
                            reported.set(d);
                            write_all_stdout(&Report::Acked(d).encode())?;
                        }
                    }
                });
            }
            // A Raft node compacts after a snapshot covers the applied (durable) prefix.
            spawn_or_exit(async move {
                loop {
                    glommio::timer::sleep(interval).await;
                    let up_to = log.durable_index().saturating_sub(keep);
                    if up_to >= log.first_index() {
                        match log.compact_prefix(up_to).await {
                            Ok(_) | Err(wal::LogError::Busy) => {}
                            Err(e) => return Err(anyhow::Error::from(e)),
                        }
                    }
                }
            });
            // The tasks run until the process is killed.
            std::future::pending::<()>().await;
            Ok::<(), anyhow::Error>(())
        })
        .map_err(|e| anyhow::anyhow!(wal::explain_executor_error(&e)))?;
    h.join()
        .map_err(|e| anyhow::anyhow!(wal::explain_executor_error(&e)))?
}

/// Spawns a task of the child that runs until the process is killed; one that fails ends
/// the process with its error (the parent reports a child that exits by itself).
fn spawn_or_exit(
    task: impl std::future::Future<Output = anyhow::Result<std::convert::Infallible>> + 'static,
) {
    glommio::spawn_local(async move {
        let Err(e) = task.await;
        eprintln!("wal-crash child: {e:#}");
        std::process::exit(1);
    })
    .detach();
}

/// Writes straight to fd 1 (no buffering: an acknowledgement must leave the process before
/// the next append is acknowledged).
fn write_all_stdout(mut b: &[u8]) -> anyhow::Result<()> {
    while !b.is_empty() {
        // SAFETY: write(2) from a live slice to fd 1, which stays open for the process's life.
        let n = unsafe { libc::write(1, b.as_ptr().cast(), b.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        b = &b[n as usize..];
    }
    Ok(())
}

//! Subcommand `wal-crash`: sled-style crash testing of the write-ahead log.
//!
//! Each cycle starts this same binary as a child (hidden `--child` flag) that opens the log
//! in `--dir` and appends under load from many glommio tasks, reporting every durable index
//! it was acknowledged on its stdout pipe (8-byte little-endian values, written as soon as
//! each acknowledgement resolves). The parent kills it with SIGKILL at a random moment
//! (possibly during recovery, a segment roll or a zero-fill), reopens the log, and checks
//! that every acknowledged entry is present and intact: the payload is derived from the
//! index, so each entry can be checked on its own. The kill delays come from `--seed`; a
//! failing run prints its seed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    /// Longest time a child runs before it is killed, in milliseconds.
    #[arg(long, default_value_t = 400)]
    pub kill_after_ms_max: u64,
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

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.child {
        return child(&args);
    }
    anyhow::ensure!(args.cycles >= 1, "--cycles must be at least 1");
    anyhow::ensure!(
        args.kill_after_ms_max >= 1,
        "--kill-after-ms-max must be at least 1"
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
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let exe = std::env::current_exe()?;
    let mut acknowledged_total = 0u64;
    let mut lost_total = 0u64;
    let mut torn_tails = 0u64;
    // Every index up to this one was acknowledged in some cycle and must survive forever.
    let mut acked_max = verify(&dir, args.segment_kib, 0)?.last_index;
    let started = Instant::now();
    for cycle in 0..args.cycles {
        let delay = Duration::from_millis(rng.random_range(1..=args.kill_after_ms_max));
        let mut child = Command::new(&exe)
            .args(["wal-crash", "--child", "--dir"])
            .arg(&dir)
            .args([
                "--writers",
                &args.writers.to_string(),
                "--segment-kib",
                &args.segment_kib.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning the child")?;
        let mut out = child.stdout.take().context("child stdout")?;
        let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
            let mut all = Vec::new();
            out.read_to_end(&mut all)?;
            Ok(all)
        });
        std::thread::sleep(delay);
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
        let bytes = reader
            .join()
            .map_err(|_| anyhow::anyhow!("pipe reader panicked"))??;
        if exited_early {
            bail!(
                "cycle {cycle}: the child exited by itself ({status}) before it was killed (seed {seed})"
            );
        }
        let cycle_acked = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .max();
        let before = acked_max;
        if let Some(a) = cycle_acked {
            acked_max = acked_max.max(a);
        }
        acknowledged_total += acked_max - before;
        let mut tore = None;
        if rng.random_bool(args.tear_probability) {
            tore = tear_unacknowledged(&dir, args.segment_kib, acked_max, &mut rng)?;
        }
        let v = verify(&dir, args.segment_kib, before.saturating_sub(64).max(1))?;
        if v.torn_tail {
            torn_tails += 1;
        }
        let lost = acked_max.saturating_sub(v.last_index) + v.bad_entries;
        lost_total += lost;
        eprintln!(
            "cycle {cycle}: killed after {delay:?}; acknowledged up to {acked_max} (+{}), simulated loss of bytes {tore:?}, recovered up to {}, torn tail truncated: {}, lost {lost}",
            acked_max - before,
            v.last_index,
            v.torn_tail
        );
        if lost > 0 {
            eprintln!(
                "wal-crash: LOST {lost} acknowledged entries in cycle {cycle}; replay with --seed {seed}"
            );
        }
    }
    // Finally every acknowledged entry, from the start.
    let v = verify(&dir, args.segment_kib, 1)?;
    let final_lost = acked_max.saturating_sub(v.last_index) + v.bad_entries;
    lost_total = lost_total.max(final_lost);
    let result = json!({
        "cycles": args.cycles,
        "acknowledged": acknowledged_total,
        "lost": lost_total,
        "torn_tails_truncated": torn_tails,
        "last_index": v.last_index,
        "seed": seed,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    if remove_after && lost_total == 0 {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if args.json {
        println!("{result}");
    } else {
        println!(
            "{} cycles, {} acknowledged, {} lost, {} torn tails truncated (seed {seed})",
            args.cycles, acknowledged_total, lost_total, torn_tails
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
    last_index: u64,
    torn_tail: bool,
    bad_entries: u64,
}

/// Opens the log (recovering it) and checks every entry from `from` to its end.
fn verify(dir: &Path, segment_kib: u64, from: u64) -> anyhow::Result<Verified> {
    let dir = dir.to_path_buf();
    let h = wal::executor_builder("wal-verify")
        .spawn(move || async move {
            let (log, report) = Log::open(&dir, log_config(segment_kib)).await?;
            let last = report.last_index;
            let mut bad = 0u64;
            let mut idx = from.max(report.first_index);
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
                    idx += 1;
                }
            }
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
            log.close().await?;
            Ok::<_, anyhow::Error>(Verified {
                last_index: last,
                torn_tail: report.torn_tail.is_some(),
                bad_entries: bad,
            })
        })
        .map_err(|e| anyhow::anyhow!(wal::explain_executor_error(&e)))?;
    h.join()
        .map_err(|e| anyhow::anyhow!(wal::explain_executor_error(&e)))?
}

/// The child: append forever (until killed), reporting each new durable index on stdout.
fn child(args: &Args) -> anyhow::Result<()> {
    let dir = args.dir.clone().context("--dir is required")?;
    let (writers, segment_kib) = (args.writers.max(1), args.segment_kib);
    let h = wal::executor_builder("wal-crash-child")
        .spawn(move || async move {
            let (log, _report) = Log::open(&dir, log_config(segment_kib)).await?;
            let log = std::rc::Rc::new(log);
            let reported = std::rc::Rc::new(std::cell::Cell::new(0u64));
            let mut tasks = Vec::new();
            for w in 0..writers {
                let (log, reported) = (log.clone(), reported.clone());
                tasks.push(glommio::spawn_local(async move {
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
                            Err(wal::LogError::Backpressure { .. }) => {
                                glommio::yield_if_needed().await;
                                glommio::timer::sleep(Duration::from_micros(100)).await;
                                continue;
                            }
                            Err(e) => return Err(anyhow::Error::from(e)),
                        };
                        let d = durable.await?;
                        if d > reported.get() {
                            reported.set(d);
                            write_all_stdout(&d.to_le_bytes())?;
                        }
                    }
                }));
            }
            // The writers append until the process is killed: a writer that ends has failed.
            for t in tasks {
                let ended: anyhow::Result<std::convert::Infallible> = t.await;
                ended?;
            }
            Ok::<(), anyhow::Error>(())
        })
        .map_err(|e| anyhow::anyhow!(wal::explain_executor_error(&e)))?;
    h.join()
        .map_err(|e| anyhow::anyhow!(wal::explain_executor_error(&e)))?
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

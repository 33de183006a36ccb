//! Scenario `wal`: N closed-loop appenders (glommio tasks on one shard) against the
//! write-ahead log, with its two same-run baselines: raw `fdatasync` of 4 KiB appends (the
//! harness baseline) and a naive log that does one write + `fdatasync` per append.
//!
//! Order: fdatasync baseline, naive log, naive log on a zero-filled file, then the log (each
//! after its own warm-up). The baselines get a third of `--duration` each (at least 1 s).
//!
//! The harness's fdatasync baseline and the naive log append to a growing file, so each of
//! their syncs also commits the file-size change to the journal; `naive_zeroed_*` is the
//! same naive log on a zero-filled file like the log's own segments, the stricter
//! denominator (`ratio_vs_naive_zeroed`).

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ringleader_engine::log::{self as wal, Entry, IoMode, Log, LogConfig};
use serde_json::json;

use crate::harness::{self, CommonArgs, Recorder, Run};

/// Flags of the `wal` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Duration, warm-up and output folder (`--rate`/`--concurrency` are not used: the
    /// load is `--writers` closed-loop appenders).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Concurrent appenders, each waiting for its append to be durable before the next.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// Payload bytes of each entry.
    #[arg(long, default_value_t = 256)]
    pub entry_bytes: usize,
    /// Folder on the filesystem to test (a subfolder is created and removed; default: the
    /// current directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How the log writes: `direct` (O_DIRECT, then `fdatasync`), `direct-sync` (O_DIRECT | O_DSYNC) or `buffered`.
    #[arg(long, default_value = "direct")]
    pub io_mode: IoMode,
    /// Segment size in MiB.
    #[arg(long, default_value_t = 64)]
    pub segment_mib: u64,
    /// Zero-fill segments ahead of use (`false`: only fallocate them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub zero_fill: bool,
    /// Linger before writing a batch, in microseconds.
    #[arg(long, default_value_t = 0)]
    pub linger_us: u64,
    /// Skip the two baselines (for profiling the log alone).
    #[arg(long)]
    pub no_baselines: bool,
}

/// The most writers one run may have (each is a task holding one entry buffer).
pub const WRITERS_MAX: usize = 65_536;

struct RemoveDirOnDrop(PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the log measurement produced.
struct LogRun {
    latency: Recorder,
    appends: u64,
    fsyncs: u64,
    entries: u64,
    bytes_written: u64,
    batches: u64,
    batches_pipelined: u64,
    elapsed: Duration,
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.writers >= 1 && args.writers <= WRITERS_MAX,
        "--writers must be in 1..={WRITERS_MAX}"
    );
    let common = &args.common;
    let io_mode = args.io_mode.name();
    let config = json!({
        "writers": args.writers,
        "entry_bytes": args.entry_bytes,
        "duration_s": common.duration.as_secs_f64(),
        "warmup_s": common.warmup.as_secs_f64(),
        "io_mode": io_mode,
        "segment_mib": args.segment_mib,
        "zero_fill": args.zero_fill,
        "linger_us": args.linger_us,
        "dir": args.dir.as_ref().map(|d| d.display().to_string()),
    });
    let mut run = Run::new("wal", common.out.as_deref(), common.json, config)?;
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    let work = base.join(format!(".ringleader-wal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _cleanup = RemoveDirOnDrop(work.clone());
    let baseline_duration = (common.duration / 3).max(Duration::from_secs(1));

    let mut results = serde_json::Map::new();
    if !args.no_baselines {
        let progress = run.progress("fdatasync baseline", baseline_duration);
        let cfg = harness::BaselineConfig {
            duration: baseline_duration,
            warmup: common.warmup.min(Duration::from_secs(1)),
            pacing: harness::Pacing::Closed { concurrency: 1 },
        };
        let fds = harness::baselines::fdatasync_latency_with(&work, &cfg, Some(&progress))?;
        progress.finish();
        let h = fds.histogram();
        results.insert(
            "baseline_fdatasync_us".into(),
            json!({"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999)}),
        );
        run.add(fds);

        let progress = run.progress("naive log", baseline_duration);
        let (naive_rate, naive) = naive_log(
            &work,
            args.entry_bytes,
            cfg.warmup,
            baseline_duration,
            false,
        )?;
        progress.finish();
        let progress = run.progress("naive log, zero-filled file", baseline_duration);
        let (zeroed_rate, zeroed) =
            naive_log(&work, args.entry_bytes, cfg.warmup, baseline_duration, true)?;
        progress.finish();
        results.insert("naive_zeroed_appends_per_s".into(), json!(zeroed_rate));
        let h = zeroed.histogram();
        results.insert(
            "naive_zeroed_latency_us".into(),
            json!({"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99)}),
        );
        run.add(zeroed);
        results.insert("naive_appends_per_s".into(), json!(naive_rate));
        let h = naive.histogram();
        results.insert(
            "naive_latency_us".into(),
            json!({"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99)}),
        );
        run.add(naive);
    }

    let progress = run.progress("log", common.duration);
    let cfg = LogConfig {
        segment_bytes: args.segment_mib << 20,
        io_mode: args.io_mode,
        segment_zero_fill: args.zero_fill,
        linger: Duration::from_micros(args.linger_us),
        ..LogConfig::default()
    };
    let log_dir = work.join("log");
    let (writers, entry_bytes, warmup, duration) = (
        args.writers,
        args.entry_bytes,
        common.warmup,
        common.duration,
    );
    let handle = wal::executor_builder("wal-bench")
        .spawn(move || async move {
            log_load(&log_dir, cfg, writers, entry_bytes, warmup, duration).await
        })
        .map_err(|e| anyhow::anyhow!(wal::explain_executor_error(&e)))?;
    let lr = handle
        .join()
        .map_err(|e| anyhow::anyhow!(wal::explain_executor_error(&e)))??;
    progress.finish();

    let secs = lr.elapsed.as_secs_f64();
    let appends_per_s = lr.appends as f64 / secs;
    let h = lr.latency.histogram();
    results.insert("appends_per_s".into(), json!(appends_per_s));
    results.insert(
        "mb_per_s".into(),
        json!(appends_per_s * args.entry_bytes as f64 / 1e6),
    );
    results.insert(
        "device_mb_per_s".into(),
        json!(lr.bytes_written as f64 / secs / 1e6),
    );
    results.insert("fsyncs_per_s".into(), json!(lr.fsyncs as f64 / secs));
    results.insert(
        "entries_per_fsync".into(),
        json!(lr.entries as f64 / lr.fsyncs.max(1) as f64),
    );
    results.insert(
        "latency_us".into(),
        json!({"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99), "p999": h.value_at_quantile(0.999), "max": h.max()}),
    );
    results.insert("batches_per_s".into(), json!(lr.batches as f64 / secs));
    results.insert(
        "pipelined_batch_fraction".into(),
        json!(lr.batches_pipelined as f64 / lr.batches.max(1) as f64),
    );
    results.insert("writers".into(), json!(args.writers));
    results.insert("entry_bytes".into(), json!(args.entry_bytes));
    results.insert("io_mode".into(), json!(io_mode));
    if let Some(naive) = results.get("naive_appends_per_s").and_then(|v| v.as_f64()) {
        results.insert(
            "ratio_vs_naive".into(),
            json!(appends_per_s / naive.max(1e-9)),
        );
    }
    if let Some(naive) = results
        .get("naive_zeroed_appends_per_s")
        .and_then(|v| v.as_f64())
    {
        results.insert(
            "ratio_vs_naive_zeroed".into(),
            json!(appends_per_s / naive.max(1e-9)),
        );
    }
    if let Some(p99) = results
        .get("baseline_fdatasync_us")
        .and_then(|v| v["p99"].as_f64())
    {
        results.insert(
            "p99_vs_baseline_p99".into(),
            json!(h.value_at_quantile(0.99) as f64 / p99.max(1.0)),
        );
    }
    run.add(lr.latency);
    run.finish(serde_json::Value::Object(results))
}

/// One write + `fdatasync` per append, one appender: what a log without group commit does.
/// Each append is written in the log's own format (a one-entry batch with its commit
/// marker), so only the grouping differs.
///
/// With `zeroed`, the file is zero-filled first (64 MiB, reused from the start when full),
/// as the log's segments are, so each sync commits no metadata.
fn naive_log(
    dir: &Path,
    entry_bytes: usize,
    warmup: Duration,
    duration: Duration,
    zeroed: bool,
) -> anyhow::Result<(f64, Recorder)> {
    const ZEROED_FILE_BYTES: u64 = 64 << 20;
    let path = dir.join(if zeroed {
        "naive-zeroed.log"
    } else {
        "naive.log"
    });
    let file: File = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    if zeroed {
        let zeros = vec![0u8; 1 << 20];
        for i in 0..ZEROED_FILE_BYTES >> 20 {
            file.write_all_at(&zeros, i << 20)?;
        }
        file.sync_all()?;
    }
    let payload = vec![0x5Au8; entry_bytes];
    let mut batch = wal::format::BatchBuilder::with_capacity(entry_bytes + 128);
    let mut offset = 0u64;
    let mut append = |index: u64| -> std::io::Result<()> {
        batch.clear();
        batch.push(index, 1, &payload);
        let bytes = batch.seal();
        if zeroed && offset + bytes.len() as u64 > ZEROED_FILE_BYTES {
            offset = 0;
        }
        file.write_all_at(bytes, offset)?;
        file.sync_data()?;
        offset += bytes.len() as u64;
        Ok(())
    };
    let start = Instant::now();
    let measure = start + warmup;
    let end = measure + duration;
    let mut index = 0u64;
    while Instant::now() < measure {
        index += 1;
        append(index)?;
    }
    let mut latency = Recorder::new(if zeroed {
        "naive_zeroed_append_us"
    } else {
        "naive_append_us"
    });
    let mut count = 0u64;
    loop {
        let before = Instant::now();
        if before >= end {
            break;
        }
        index += 1;
        append(index)?;
        let after = Instant::now();
        latency.record_duration_at(after, after - before);
        count += 1;
    }
    let _ = std::fs::remove_file(&path);
    Ok((count as f64 / duration.as_secs_f64(), latency))
}

async fn log_load(
    dir: &Path,
    cfg: LogConfig,
    writers: usize,
    entry_bytes: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LogRun> {
    let (log, _report) = Log::open(dir, cfg).await?;
    // The first spare segment is zero-filled in the background; let that finish before the
    // clock starts (later ones are prepared while the load runs, and are measured).
    let prepared_by = Instant::now() + Duration::from_secs(120);
    while !log.spare_ready() && Instant::now() < prepared_by {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let log = Rc::new(log);
    let start = Instant::now();
    let measure = start + warmup;
    let end = measure + duration;
    let latency = Rc::new(RefCell::new(Recorder::new("wal_append_us")));
    let appends = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let (log, latency, appends) = (log.clone(), latency.clone(), appends.clone());
        tasks.push(glommio::spawn_local(async move {
            let mut payload = vec![w as u8; entry_bytes];
            loop {
                let before = Instant::now();
                if before >= end {
                    return Ok::<(), anyhow::Error>(());
                }
                let index = log.next_index();
                let n = payload.len().min(8);
                payload[..n].copy_from_slice(&index.to_le_bytes()[..n]);
                let durable = log.append(&[Entry {
                    index,
                    term: 1,
                    payload: &payload,
                }])?;
                durable.await?;
                let after = Instant::now();
                if before >= measure && after <= end {
                    latency
                        .borrow_mut()
                        .record_duration_at(after, after - before);
                    appends.set(appends.get() + 1);
                }
            }
        }));
    }
    // Counters over the measured window only.
    glommio::timer::sleep(measure.saturating_duration_since(Instant::now())).await;
    let s0 = log.stats();
    let d0 = log.durable_index();
    let t0 = Instant::now();
    glommio::timer::sleep(end.saturating_duration_since(Instant::now())).await;
    let s1 = log.stats();
    let d1 = log.durable_index();
    let elapsed = t0.elapsed();
    for t in tasks {
        t.await?;
    }
    let log = Rc::try_unwrap(log)
        .map_err(|_| anyhow::anyhow!("log still shared after the writers ended"))?;
    log.close().await?;
    let latency = Rc::try_unwrap(latency)
        .map_err(|_| anyhow::anyhow!("recorder still shared"))?
        .into_inner();
    Ok(LogRun {
        latency,
        appends: appends.get(),
        fsyncs: s1.fsyncs - s0.fsyncs,
        entries: d1 - d0,
        bytes_written: s1.bytes_written - s0.bytes_written,
        batches: s1.batches - s0.batches,
        batches_pipelined: s1.batches_pipelined - s0.batches_pipelined,
        elapsed,
    })
}

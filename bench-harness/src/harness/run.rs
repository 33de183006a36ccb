//! One benchmark run: its output folder, progress display, histogram files, `summary.json` and
//! the `--json` last line.
//!
//! Contract: with `--json`, the LAST line of stdout is exactly one JSON object (the results
//! plus `scenario` and `out`). Progress goes to stderr, never to stdout.

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};

use super::recorder::Recorder;

/// The most histograms one run may hold.
pub const RECORDERS_MAX: usize = 256;
/// Plain progress lines (when stdout is not a terminal) come at most this often.
pub const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One run: its output folder, progress display, histograms and summary.
#[derive(Debug)]
pub struct Run {
    scenario: String,
    dir: PathBuf,
    json: bool,
    config: Value,
    recorders: Vec<Recorder>,
    started: Instant,
    started_wall: SystemTime,
}

impl Run {
    /// Creates the output folder (`out`, or `results/<scenario>-<timestamp>/`).
    pub fn new(
        scenario: &str,
        out: Option<&Path>,
        json: bool,
        config: Value,
    ) -> anyhow::Result<Run> {
        let started_wall = SystemTime::now();
        let dir = match out {
            Some(dir) => dir.to_path_buf(),
            None => default_dir(scenario, started_wall),
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Run {
            scenario: scenario.to_owned(),
            dir,
            json,
            config,
            recorders: Vec::new(),
            started: Instant::now(),
            started_wall,
        })
    }

    /// The output folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `--json` was given.
    pub fn json(&self) -> bool {
        self.json
    }

    /// A progress display for a phase of `total` length: an indicatif bar when stdout is a
    /// terminal, plain lines on stderr otherwise.
    pub fn progress(&self, label: &str, total: Duration) -> Progress {
        Progress::new(label, total, io::stdout().is_terminal())
    }

    /// Runs a simulation of `virtual_time` (`sim` gets a callback for its progress in
    /// virtual time) under a progress display; returns its result and the wall-clock
    /// milliseconds it took.
    pub fn simulate<T>(
        &self,
        virtual_time: Duration,
        sim: impl FnOnce(&mut dyn FnMut(Duration)) -> T,
    ) -> (T, u64) {
        let progress = self.progress("virtual time", virtual_time);
        let wall = Instant::now();
        let out = sim(&mut |t| progress.tick(t));
        progress.finish();
        (out, wall.elapsed().as_millis() as u64)
    }

    /// Adds a histogram, written as `<name>.hgrm` and `<name>.hlog` by `finish`.
    pub fn add(&mut self, rec: Recorder) {
        assert!(
            self.recorders.len() < RECORDERS_MAX,
            "more than {RECORDERS_MAX} histograms"
        );
        if let Some(same) = self.recorders.iter_mut().find(|r| r.name() == rec.name()) {
            same.merge(&rec);
        } else {
            self.recorders.push(rec);
        }
    }

    /// Writes summary.json (`results` fields at top level + "scenario", "config", "env",
    /// "histograms"), the histogram files, prints a human summary, and with `--json` prints
    /// `results` (plus "scenario" and "out") as ONE line, last on stdout.
    pub fn finish(self, results: Value) -> anyhow::Result<()> {
        let results = match results {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => {
                let mut map = Map::new();
                map.insert("result".to_owned(), other);
                map
            }
        };
        let mut histograms = Map::new();
        for rec in &self.recorders {
            let hgrm_path = self.dir.join(format!("{}.hgrm", rec.name()));
            let hlog_path = self.dir.join(format!("{}.hlog", rec.name()));
            write_file(&hgrm_path, |w| rec.write_hgrm(w))?;
            write_file(&hlog_path, |w| rec.write_hlog(w))?;
            histograms.insert(rec.name().to_owned(), rec.summary());
        }
        let elapsed_s = self.started.elapsed().as_secs_f64();
        let mut summary = results.clone();
        summary.insert("scenario".to_owned(), json!(self.scenario));
        summary.insert("config".to_owned(), self.config.clone());
        summary.insert("env".to_owned(), environment(self.started_wall));
        summary.insert("histograms".to_owned(), Value::Object(histograms));
        summary.insert("elapsed_s".to_owned(), json!(elapsed_s));
        let summary_path = self.dir.join("summary.json");
        let text = serde_json::to_string_pretty(&Value::Object(summary))?;
        fs::write(&summary_path, text + "\n")
            .with_context(|| format!("writing {}", summary_path.display()))?;

        let stdout = io::stdout();
        let mut out = stdout.lock();
        writeln!(
            out,
            "{} finished in {:.1}s; results in {}",
            self.scenario,
            elapsed_s,
            self.dir.display()
        )?;
        for rec in &self.recorders {
            let h = rec.histogram();
            let u = rec.unit().symbol();
            writeln!(
                out,
                "  {:<28} n={:<10} p50={}{u} p99={}{u} p99.9={}{u} max={}{u}",
                rec.name(),
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            )?;
        }
        for (key, value) in &results {
            if !value.is_object() && !value.is_array() {
                writeln!(out, "  {key} = {value}")?;
            }
        }
        if self.json {
            let mut line = results;
            line.insert("scenario".to_owned(), json!(self.scenario));
            line.insert("out".to_owned(), json!(self.dir.display().to_string()));
            writeln!(out, "{}", serde_json::to_string(&Value::Object(line))?)?;
        }
        out.flush()?;
        Ok(())
    }
}

fn write_file(
    path: &Path,
    body: impl FnOnce(&mut io::BufWriter<fs::File>) -> io::Result<()>,
) -> anyhow::Result<()> {
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = io::BufWriter::new(file);
    body(&mut w).with_context(|| format!("writing {}", path.display()))?;
    w.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn default_dir(scenario: &str, now: SystemTime) -> PathBuf {
    let stem: String = scenario
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let base = PathBuf::from("results").join(format!("{stem}-{}", compact_timestamp(now)));
    if !base.exists() {
        return base;
    }
    for n in 2..1000 {
        let candidate = PathBuf::from(format!("{}-{n}", base.display()));
        if !candidate.exists() {
            return candidate;
        }
    }
    base
}

/// A progress display: indicatif on a terminal, plain lines on stderr otherwise.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: Duration,
    /// Next elapsed millisecond at which a plain line (or bar update) is due.
    next_due_ms: AtomicU64,
}

impl Progress {
    /// A display for a phase called `label` of length `total`.
    pub fn new(label: &str, total: Duration, terminal: bool) -> Progress {
        let bar = terminal.then(|| {
            let bar = ProgressBar::new(u64::try_from(total.as_millis()).unwrap_or(u64::MAX).max(1));
            if let Ok(style) = ProgressStyle::with_template("{prefix:>14} [{bar:40}] {msg}") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_owned());
            bar
        });
        Progress {
            bar,
            label: label.to_owned(),
            total,
            next_due_ms: AtomicU64::new(0),
        }
    }

    /// Reports progress; cheap when called often (updates at most every 100 ms on a bar,
    /// every second as plain lines).
    pub fn tick(&self, elapsed: Duration) {
        let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let due = self.next_due_ms.load(Ordering::Relaxed);
        if elapsed_ms < due {
            return;
        }
        let step_ms = if self.bar.is_some() {
            100
        } else {
            PLAIN_PROGRESS_EVERY.as_millis() as u64
        };
        if self
            .next_due_ms
            .compare_exchange(
                due,
                elapsed_ms + step_ms,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return; // Another thread reported this step.
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(elapsed_ms);
                bar.set_message(format!(
                    "{:.1}s / {:.1}s",
                    elapsed.as_secs_f64(),
                    self.total.as_secs_f64()
                ));
            }
            None if elapsed_ms > 0 => eprintln!(
                "{}: {:.1}s / {:.1}s",
                self.label,
                elapsed.as_secs_f64(),
                self.total.as_secs_f64()
            ),
            None => {}
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!("{}: done", self.label),
        }
    }
}

/// The environment of a run: cores, kernel, git commit, hostname, time, CPU model.
pub fn environment(started: SystemTime) -> Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let read = |p: &str| {
        fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    json!({
        "cores": cores,
        "kernel": read("/proc/sys/kernel/osrelease"),
        "hostname": read("/proc/sys/kernel/hostname"),
        "cpu_model": cpu_model,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "time": rfc3339(started),
        "binary": std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default(),
        "args": std::env::args().collect::<Vec<_>>(),
    })
}

/// The current git commit (`unknown` outside a repository).
pub fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn git_dirty() -> Option<bool> {
    Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| !o.stdout.is_empty())
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `t` as `YYYYMMDD-HHMMSS` (UTC), for folder names.
pub fn compact_timestamp(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = civil(t);
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

/// UTC calendar fields of `t` (Howard Hinnant's days-from-civil inverse).
fn civil(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

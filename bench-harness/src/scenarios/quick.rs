//! Scenario `quick`: every scenario briefly, one summary table (scenario, throughput, p50,
//! p99, ratio to its same-run baseline). The README's main job:
//! `cargo run --release -p ringleader-bench -- quick`.
//!
//! Each scenario runs as a child process (`current_exe()` with the scenario's subcommand,
//! small arguments and `--json`); its last stdout line is its result. A scenario that exits
//! non-zero saying it "is not built" is listed as not built, not as an error. A child that
//! overruns `--timeout` is killed. Results of every child land under quick's own folder.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::harness::{OutputArgs, Run, parse_duration};

/// The most bytes of a child's stdout or stderr kept (the tail is what matters).
pub const CHILD_OUTPUT_BYTES_MAX: usize = 1 << 20;
/// A scenario is not started with less of quick's budget left than this.
pub const MIN_CHILD_TIME: Duration = Duration::from_secs(2);
/// How often a running child is polled for exit.
pub const CHILD_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Flags of the `quick` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Output folder and the `--json` line.
    #[command(flatten)]
    pub output: OutputArgs,
    /// Run only these scenarios (comma separated ids, e.g. `baseline,wal,sim-raft`).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Time limit of each scenario; a child still running then is killed.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Time limit of the whole of quick: each child's limit is cut to what is left, and the
    /// scenarios after it is spent are listed as skipped.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    pub budget: Duration,
    /// Folder on the filesystem for the WAL scenario (default: a temporary folder under the
    /// current directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// One scenario as quick runs it.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Short id (`sim-swim`), used in `--only` and as the sub-folder name.
    pub id: &'static str,
    /// Subcommand and its small arguments (without `--json`, `--out`, `--dir`).
    pub args: &'static [&'static str],
    /// Whether the scenario takes `--dir <filesystem folder>`.
    pub needs_dir: bool,
    /// Turns the scenario's JSON result into table rows.
    pub rows: fn(&Value) -> Vec<Row>,
}

impl Spec {
    /// The subcommand words of `args` (`["sim", "swim"]`).
    pub fn subcommand(&self) -> Vec<&'static str> {
        self.args
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .copied()
            .collect()
    }
}

/// Every scenario quick knows, in the order it runs them.
pub const SPECS: &[Spec] = &[
    Spec {
        id: "baseline",
        args: &["baseline", "--duration", "3s", "--warmup", "500ms"],
        needs_dir: true,
        rows: baseline_rows,
    },
    Spec {
        id: "wal",
        args: &[
            "wal",
            "--writers",
            "64",
            "--entry-bytes",
            "256",
            "--duration",
            "3s",
        ],
        needs_dir: true,
        rows: wal_rows,
    },
    Spec {
        id: "raft",
        args: &[
            "raft",
            "--nodes",
            "3",
            "--clients",
            "64",
            "--value-bytes",
            "256",
            "--duration",
            "3s",
        ],
        needs_dir: true,
        rows: raft_rows,
    },
    Spec {
        id: "transport",
        args: &["transport", "--duration", "3s"],
        needs_dir: false,
        rows: transport_rows,
    },
    Spec {
        id: "swim",
        args: &[
            "swim",
            "--members",
            "200",
            "--config",
            "local",
            "--duration",
            "5s",
            "--warmup",
            "500ms",
            "--kill",
            "2",
            "--converge-timeout",
            "25s",
            "--detect-timeout",
            "20s",
        ],
        needs_dir: false,
        rows: swim_rows,
    },
    Spec {
        id: "sim-swim",
        args: &[
            "sim",
            "swim",
            "--members",
            "1000",
            "--config",
            "lan",
            "--kill",
            "10",
            "--virtual-secs",
            "60",
            "--seed",
            "7",
        ],
        needs_dir: false,
        rows: sim_swim_rows,
    },
    Spec {
        id: "sim-raft",
        args: &[
            "sim", "raft", "--nodes", "3", "--seeds", "20", "--faults", "all",
        ],
        needs_dir: false,
        rows: sim_raft_rows,
    },
    Spec {
        id: "sim-serf",
        args: &[
            "sim",
            "serf",
            "--members",
            "200",
            "--events",
            "20",
            "--loss",
            "0.1",
            "--seed",
            "3",
        ],
        needs_dir: false,
        rows: sim_serf_rows,
    },
];

/// How a scenario's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// It printed a JSON result.
    Ok,
    /// It exited saying it is not built yet.
    NotBuilt,
    /// It failed (the reason: its last stderr line, or what was wrong with its output).
    Failed(String),
    /// It overran the time limit and was killed.
    TimedOut,
    /// Not run: quick's `--budget` was spent.
    Skipped,
}

impl Status {
    fn label(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotBuilt => "not built",
            Status::Failed(_) => "FAILED",
            Status::TimedOut => "TIMED OUT",
            Status::Skipped => "skipped (budget)",
        }
    }
}

/// A measured quantity with its unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    /// The number.
    pub value: f64,
    /// Its unit (`pps`, `us`, `x vs naive fdatasync`, ...).
    pub unit: String,
}

fn q(value: Option<f64>, unit: &str) -> Option<Quantity> {
    value.filter(|v| v.is_finite()).map(|value| Quantity {
        value,
        unit: unit.to_owned(),
    })
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Scenario (and part) name.
    pub scenario: String,
    /// How the run ended.
    pub status: Status,
    /// Throughput, if the scenario has one.
    pub throughput: Option<Quantity>,
    /// Median latency.
    pub p50: Option<Quantity>,
    /// 99th percentile latency.
    pub p99: Option<Quantity>,
    /// Ratio to the scenario's same-run baseline (the unit says against what).
    pub ratio: Option<Quantity>,
    /// Anything else worth a glance.
    pub note: String,
}

impl Row {
    fn new(scenario: &str) -> Row {
        Row {
            scenario: scenario.to_owned(),
            status: Status::Ok,
            throughput: None,
            p50: None,
            p99: None,
            ratio: None,
            note: String::new(),
        }
    }

    /// The row as JSON (for summary.json).
    pub fn to_json(&self) -> Value {
        let quantity = |x: &Option<Quantity>| match x {
            Some(x) => json!({"value": x.value, "unit": x.unit}),
            None => Value::Null,
        };
        json!({
            "scenario": self.scenario,
            "status": self.status.label(),
            "error": match &self.status { Status::Failed(e) => Value::from(e.as_str()), _ => Value::Null },
            "throughput": quantity(&self.throughput),
            "p50": quantity(&self.p50),
            "p99": quantity(&self.p99),
            "ratio": quantity(&self.ratio),
            "note": self.note,
        })
    }
}

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for key in path {
        cur = cur.get(key)?;
    }
    cur.as_f64()
}

fn div(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// Rows of `baseline`: UDP (flood pps, ping-pong RTT), fdatasync, TCP.
pub fn baseline_rows(v: &Value) -> Vec<Row> {
    let mut udp = Row::new("baseline udp");
    udp.throughput = q(num(v, &["udp_flood_pps"]), "pps");
    udp.p50 = q(num(v, &["udp_rtt_us", "p50"]), "us");
    udp.p99 = q(num(v, &["udp_rtt_us", "p99"]), "us");
    udp.ratio = q(Some(1.0), "x (is the baseline)");
    udp.note = "flood: sendmmsg/recvmmsg x32; rtt: 64-B ping-pong".to_owned();
    let mut fsync = Row::new("baseline fdatasync");
    fsync.throughput = q(num(v, &["fdatasync_per_s"]), "syncs/s");
    fsync.p50 = q(num(v, &["fdatasync_us", "p50"]), "us");
    fsync.p99 = q(num(v, &["fdatasync_us", "p99"]), "us");
    fsync.ratio = q(Some(1.0), "x (is the baseline)");
    fsync.note = "4 KiB append + fdatasync".to_owned();
    let mut tcp = Row::new("baseline tcp");
    tcp.throughput = q(num(v, &["tcp_gbps"]), "Gbit/s");
    tcp.ratio = q(Some(1.0), "x (is the baseline)");
    tcp.note = "loopback bulk, 1 connection".to_owned();
    vec![udp, fsync, tcp]
}

/// Row of `wal`: appends/s against naive per-append fdatasync.
pub fn wal_rows(v: &Value) -> Vec<Row> {
    let mut row = Row::new("wal");
    row.throughput = q(num(v, &["appends_per_s"]), "appends/s");
    row.p50 = q(num(v, &["latency_us", "p50"]), "us");
    row.p99 = q(num(v, &["latency_us", "p99"]), "us");
    row.ratio = q(
        div(num(v, &["appends_per_s"]), num(v, &["naive_appends_per_s"])),
        "x vs naive fdatasync",
    );
    if let (Some(p50), Some(p99)) = (
        num(v, &["baseline_fdatasync_us", "p50"]),
        num(v, &["baseline_fdatasync_us", "p99"]),
    ) {
        row.note = format!("raw fdatasync p50 {} us, p99 {} us", si(p50), si(p99));
    }
    vec![row]
}

/// Row of `raft`: replicated puts/s of a 3-process cluster; p50 against raw fdatasync p50.
pub fn raft_rows(v: &Value) -> Vec<Row> {
    let mut row = Row::new("raft");
    row.throughput = q(num(v, &["ops_per_s"]), "puts/s");
    row.p50 = q(num(v, &["latency_us", "p50"]), "us");
    row.p99 = q(num(v, &["latency_us", "p99"]), "us");
    row.ratio = q(
        div(
            num(v, &["latency_us", "p50"]),
            num(v, &["fdatasync_us", "p50"]),
        ),
        "x p50 vs raw fdatasync p50",
    );
    row.note = format!(
        "{} entries/fsync, {} cores, {} errors",
        num(v, &["entries_per_fsync"]).map_or("?".into(), si),
        num(v, &["cpu_cores"]).map_or("?".into(), |c| format!("{c:.2}")),
        num(v, &["errors"]).map_or("?".into(), si),
    );
    vec![row]
}

/// Row of `transport`: engine packets/s against raw sendmmsg/recvmmsg.
pub fn transport_rows(v: &Value) -> Vec<Row> {
    let mut row = Row::new("transport");
    row.throughput = q(num(v, &["engine_pps"]), "pps");
    row.p50 = q(num(v, &["engine_rtt_us", "p50"]), "us");
    row.p99 = q(num(v, &["engine_rtt_us", "p99"]), "us");
    let ratio =
        num(v, &["ratio_pps"]).or_else(|| div(num(v, &["engine_pps"]), num(v, &["raw_pps"])));
    row.ratio = q(ratio, "x vs raw sendmmsg");
    let mut notes = Vec::new();
    if let Some(raw) = num(v, &["raw_pps"]) {
        notes.push(format!("raw {} pps", si(raw)));
    }
    if let Some(g) = num(v, &["glommio_pps"]) {
        notes.push(format!("glommio {} pps", si(g)));
    }
    if let (Some(a), Some(b)) = (
        num(v, &["raw_rtt_us", "p50"]),
        num(v, &["raw_rtt_us", "p99"]),
    ) {
        notes.push(format!("raw rtt p50 {} us p99 {} us", si(a), si(b)));
    }
    row.note = notes.join(", ");
    vec![row]
}

fn membership_notes(v: &Value) -> String {
    let mut notes = Vec::new();
    if let Some(c) = num(v, &["converge_ms"]) {
        notes.push(format!("converge {} ms", si(c)));
    }
    if let Some(m) = num(v, &["detect_ms", "max"]) {
        notes.push(format!("detect max {} ms", si(m)));
    }
    if let Some(f) = num(v, &["false_positives"]) {
        notes.push(format!("false positives {f}"));
    }
    notes.join(", ")
}

/// Row of the live `swim` cluster (no baseline: detection times are the result).
pub fn swim_rows(v: &Value) -> Vec<Row> {
    let mut row = Row::new("swim");
    row.throughput = q(num(v, &["msgs_per_member_per_s"]), "msgs/member/s");
    row.p50 = q(num(v, &["detect_ms", "p50"]), "ms detect");
    row.p99 = q(num(v, &["detect_ms", "p99"]), "ms detect");
    let mut notes = vec![membership_notes(v)];
    if v.get("converged").and_then(Value::as_bool) == Some(false) {
        notes.push("NOT converged".to_owned());
    }
    if let Some(u) = num(v, &["undetected"]).filter(|&u| u > 0.0) {
        notes.push(format!("undetected {u}"));
    }
    if let Some(c) = num(v, &["cpu_s_per_member_per_s"]) {
        notes.push(format!("cpu {} us/member/s", si(c * 1e6)));
    }
    if let Some(d) = num(v, &["events_dropped"]).filter(|&d| d > 0.0) {
        notes.push(format!("events dropped {d}"));
    }
    row.note = notes.join(", ");
    vec![row]
}

/// Row of `sim swim`: ratio is virtual time over wall time.
pub fn sim_swim_rows(v: &Value) -> Vec<Row> {
    let mut row = Row::new("sim swim");
    row.p50 = q(num(v, &["detect_ms", "p50"]), "ms detect");
    row.p99 = q(num(v, &["detect_ms", "p99"]), "ms detect");
    row.throughput = q(num(v, &["msgs_per_member_per_s"]), "msgs/member/s");
    let virtual_ms = num(v, &["virtual_secs"]).map_or(60_000.0, |s| s * 1000.0);
    row.ratio = q(div(Some(virtual_ms), num(v, &["wall_ms"])), "x real time");
    row.note = membership_notes(v);
    vec![row]
}

/// Row of `sim raft`: acked operations per wall second, and the safety verdict.
pub fn sim_raft_rows(v: &Value) -> Vec<Row> {
    let mut row = Row::new("sim raft");
    row.throughput = q(
        div(
            num(v, &["ops_acked"]),
            num(v, &["wall_ms"]).map(|ms| ms / 1000.0),
        ),
        "acked ops/wall s",
    );
    let violations =
        num(v, &["violations"]).unwrap_or(0.0) + num(v, &["non_linearizable"]).unwrap_or(0.0);
    row.note = format!(
        "violations {}, non-linearizable {}",
        num(v, &["violations"])
            .map(si)
            .unwrap_or_else(|| "?".into()),
        num(v, &["non_linearizable"])
            .map(si)
            .unwrap_or_else(|| "?".into())
    );
    for (key, label) in [
        ("linearizability_unknown", "check unknown"),
        ("unfinished_seeds", "unfinished seeds"),
    ] {
        if let Some(n) = num(v, &[key]).filter(|&n| n > 0.0) {
            row.note.push_str(&format!(", {label} {}", si(n)));
        }
    }
    if violations > 0.0 {
        row.status = Status::Failed("safety violations".to_owned());
    }
    vec![row]
}

/// Row of `sim serf`: event latency and delivery ratio.
pub fn sim_serf_rows(v: &Value) -> Vec<Row> {
    let mut row = Row::new("sim serf");
    row.p50 = q(num(v, &["event_latency_ms", "p50"]), "ms event");
    row.p99 = q(num(v, &["event_latency_ms", "p99"]), "ms event");
    row.ratio = q(num(v, &["delivery_ratio"]), "delivered");
    if let Some(w) = num(v, &["wall_ms"]) {
        row.note = format!("wall {} ms", si(w));
    }
    vec![row]
}

/// `1234567.0` → `1.23M`, `0.01234` → `0.0123`.
pub fn si(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        return format!("{v}");
    }
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// What a finished child printed.
#[derive(Debug)]
pub struct ChildOutcome {
    /// How it ended.
    pub status: Status,
    /// Its result (the last stdout line), when it printed one.
    pub result: Option<Value>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Interprets a child's exit: success + a JSON object last line → Ok; non-zero with
/// "is not built" on stderr → NotBuilt; anything else → Failed.
pub fn classify(success: bool, stdout: &str, stderr: &str) -> (Status, Option<Value>) {
    if !success {
        if stderr.contains("is not built") {
            return (Status::NotBuilt, None);
        }
        let lines = || stderr.lines().rev();
        let reason = lines()
            .find(|l| l.trim_start().to_ascii_lowercase().starts_with("error"))
            .or_else(|| lines().find(|l| !l.trim().is_empty()))
            .unwrap_or("exited with an error and no message")
            .trim()
            .chars()
            .take(200)
            .collect();
        return (Status::Failed(reason), None);
    }
    match last_json_line(stdout) {
        Some(v) => (Status::Ok, Some(v)),
        None => (
            Status::Failed("the last stdout line is not a JSON object".to_owned()),
            None,
        ),
    }
}

/// The last non-empty line of `stdout`, if it is one JSON object.
pub fn last_json_line(stdout: &str) -> Option<Value> {
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty())?;
    serde_json::from_str::<Value>(line.trim())
        .ok()
        .filter(Value::is_object)
}

fn read_capped(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > CHILD_OUTPUT_BYTES_MAX {
                        let cut = kept.len() - CHILD_OUTPUT_BYTES_MAX;
                        kept.drain(..cut);
                    }
                }
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<bool>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status.success()));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(CHILD_POLL_INTERVAL);
    }
}

/// How long the not-built probe (see [`run_child`]) may take.
pub const NOT_BUILT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one scenario as a child of `exe` and interprets its output.
///
/// A scenario stub (not built yet) takes no flags, so it rejects quick's arguments with a
/// usage error (exit 2) before it can say it "is not built". On such an error the bare
/// subcommand (`subcommand` words only, no flags) is run once more, in a temporary folder and
/// for at most [`NOT_BUILT_PROBE_TIMEOUT`]; if that says "is not built", so is the scenario.
pub fn run_child(
    exe: &Path,
    args: &[String],
    subcommand: &[&str],
    timeout: Duration,
) -> anyhow::Result<ChildOutcome> {
    let started = Instant::now();
    let (exit, stdout, stderr) = spawn_and_wait(exe, args, None, timeout)?;
    let mut outcome = match exit {
        None => (Status::TimedOut, None),
        Some(success) => classify(success, &stdout, &stderr),
    };
    if matches!(outcome.0, Status::Failed(_)) && stderr.contains("unexpected argument") {
        let scratch = tempfile::tempdir()?;
        let probe_args: Vec<String> = subcommand.iter().map(|s| (*s).to_owned()).collect();
        let (probe_exit, _, probe_stderr) = spawn_and_wait(
            exe,
            &probe_args,
            Some(scratch.path()),
            NOT_BUILT_PROBE_TIMEOUT,
        )?;
        if probe_exit == Some(false) && probe_stderr.contains("is not built") {
            outcome = (Status::NotBuilt, None);
        }
    }
    Ok(ChildOutcome {
        status: outcome.0,
        result: outcome.1,
        elapsed: started.elapsed(),
    })
}

fn spawn_and_wait(
    exe: &Path,
    args: &[String],
    cwd: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<(Option<bool>, String, String)> {
    let mut command = Command::new(exe);
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let stdout = child.stdout.take().map(read_capped);
    let stderr = child.stderr.take().map(read_capped);
    let exit = wait_with_timeout(&mut child, timeout)?;
    let stdout = stdout.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok((exit, stdout, stderr))
}

/// The table, one line per row.
pub fn render_table(rows: &[Row]) -> String {
    let cell = |x: &Option<Quantity>| match x {
        Some(x) => format!("{} {}", si(x.value), x.unit),
        None => "-".to_owned(),
    };
    let lines: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            let note = match &r.status {
                Status::Failed(e) if r.note.is_empty() => e.clone(),
                Status::Failed(e) => format!("{e}; {}", r.note),
                _ => r.note.clone(),
            };
            [
                r.scenario.clone(),
                r.status.label().to_owned(),
                cell(&r.throughput),
                cell(&r.p50),
                cell(&r.p99),
                cell(&r.ratio),
                note,
            ]
        })
        .collect();
    let header = [
        "scenario",
        "status",
        "throughput",
        "p50",
        "p99",
        "ratio to baseline",
        "notes",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.chars().count());
    for line in &lines {
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(&header).chain(&lines) {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 6 {
                    c.clone()
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<()> {
    for id in &args.only {
        anyhow::ensure!(
            SPECS.iter().any(|s| s.id == id.as_str()),
            "unknown scenario `{id}` in --only (known: {})",
            SPECS.iter().map(|s| s.id).collect::<Vec<_>>().join(", ")
        );
    }
    let specs: Vec<&Spec> = SPECS
        .iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| o == s.id))
        .collect();
    let config = json!({
        "scenarios": specs.iter().map(|s| json!({"id": s.id, "args": s.args})).collect::<Vec<_>>(),
        "timeout_s": args.timeout.as_secs_f64(),
        "budget_s": args.budget.as_secs_f64(),
        "dir": args.dir.as_ref().map(|d| d.display().to_string()),
    });
    let run = Run::new(
        "quick",
        args.output.out.as_deref(),
        args.output.json,
        config,
    )?;
    let exe = std::env::current_exe().context("finding ringleader-bench's own executable")?;
    let temp_dir;
    let fs_dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp_dir = tempfile::Builder::new()
                .prefix(".ringleader-quick-")
                .tempdir_in(std::env::current_dir()?)?;
            temp_dir.path().to_path_buf()
        }
    };
    let mut rows = Vec::new();
    let mut children = Vec::new();
    let budget_end = Instant::now() + args.budget;
    for (i, spec) in specs.iter().enumerate() {
        let left = budget_end.saturating_duration_since(Instant::now());
        if left < MIN_CHILD_TIME {
            let mut row = Row::new(&spec.subcommand().join(" "));
            row.status = Status::Skipped;
            rows.push(row);
            continue;
        }
        eprintln!(
            "quick [{}/{}] {} ...",
            i + 1,
            specs.len(),
            spec.args.join(" ")
        );
        let mut child_args: Vec<String> = spec.args.iter().map(|s| (*s).to_owned()).collect();
        if spec.needs_dir {
            let dir = fs_dir.join(spec.id);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            child_args.extend(["--dir".to_owned(), dir.display().to_string()]);
        }
        child_args.extend([
            "--out".to_owned(),
            run.dir().join(spec.id).display().to_string(),
            "--json".to_owned(),
        ]);
        let subcommand = spec.subcommand();
        let outcome = run_child(&exe, &child_args, &subcommand, args.timeout.min(left))?;
        eprintln!(
            "quick [{}/{}] {}: {} in {:.1}s",
            i + 1,
            specs.len(),
            spec.id,
            outcome.status.label(),
            outcome.elapsed.as_secs_f64()
        );
        children.push(json!({
            "id": spec.id,
            "args": child_args,
            "status": outcome.status.label(),
            "elapsed_s": outcome.elapsed.as_secs_f64(),
            "result": outcome.result,
        }));
        match (&outcome.status, &outcome.result) {
            (Status::Ok, Some(result)) => rows.extend((spec.rows)(result)),
            (status, _) => {
                let mut row = Row::new(&subcommand.join(" "));
                row.status = status.clone();
                rows.push(row);
            }
        }
    }
    print!("\n{}\n", render_table(&rows));
    let results = json!({
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "children": children,
    });
    run.finish(results)
}

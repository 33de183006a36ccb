//! Scenario `sim swim`: SWIM + Lifeguard in the deterministic simulator.
//!
//! All members join through seed members; after convergence `--kill K` random members
//! crash and `--slow S` others become slow (their processing is delayed). Reports the
//! virtual convergence time, detection latency (from the kill until each live member marks
//! each killed member dead), false positives, traffic per member, and the wall time.

use std::time::Duration;

use anyhow::{Context, bail};
use ringleader_engine::swim::Config;
use ringleader_sim::net::{Latency, LinkModel};
use ringleader_sim::swim::Scenario;
use serde_json::json;

use crate::harness::{OutputArgs, Recorder, Run};

/// Flags of the `sim swim` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Cluster size.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Member configuration preset: lan, wan or local (latency model follows it).
    #[arg(long, default_value = "lan")]
    pub config: String,
    /// Datagram loss probability on every link (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Members crashed after convergence.
    #[arg(long, default_value_t = 0)]
    pub kill: usize,
    /// Members made slow after convergence.
    #[arg(long, default_value_t = 0)]
    pub slow: usize,
    /// Longest extra processing delay of a slow member, ms (uniform from a tenth of it).
    #[arg(long, default_value_t = 2_000)]
    pub slow_ms: u64,
    /// Lifeguard extensions: on or off.
    #[arg(long, default_value = "on")]
    pub lifeguard: String,
    /// Virtual seconds to simulate.
    #[arg(long, default_value_t = 120)]
    pub virtual_secs: u64,
    /// Seed: the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Joins start uniformly over this many virtual milliseconds (default: one per member,
    /// between 1 and 10 seconds).
    #[arg(long)]
    pub join_spread_ms: Option<u64>,
    /// Overrides one field of the `--config` preset, `key=value` (repeatable), as in
    /// `ringleader-bench swim --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output folder and --json.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut cfg =
        Config::named(&args.config).with_context(|| format!("unknown --config {}", args.config))?;
    super::swim::apply_sets(&mut cfg, &args.set)?;
    cfg.lifeguard = match args.lifeguard.as_str() {
        "on" => true,
        "off" => false,
        other => bail!("--lifeguard must be on or off, not {other}"),
    };
    if !(0.0..1.0).contains(&args.loss) {
        bail!("--loss must be in [0, 1)");
    }
    if args.members < 2 {
        bail!("--members must be at least 2");
    }
    if args.kill + args.slow + 3 > args.members {
        bail!("--kill + --slow must leave the 3 seed members");
    }
    let latency = match args.config.as_str() {
        "wan" => Latency::wan(),
        "local" => Latency::local(),
        _ => Latency::lan(),
    };
    let mut sc = Scenario::new(args.members, cfg, LinkModel::new(latency), args.seed);
    sc.loss = args.loss;
    sc.kill = args.kill;
    sc.slow = args.slow;
    sc.slow_delay = Latency::Uniform {
        min: Duration::from_millis(args.slow_ms / 10),
        max: Duration::from_millis(args.slow_ms),
    };
    sc.virtual_secs = args.virtual_secs;
    if let Some(ms) = args.join_spread_ms {
        sc.join_spread = Duration::from_millis(ms);
    }
    let config = json!({
        "members": args.members, "config": args.config, "loss": args.loss, "kill": args.kill,
        "slow": args.slow, "slow_ms": args.slow_ms, "lifeguard": args.lifeguard,
        "virtual_secs": args.virtual_secs, "seed": args.seed,
        "join_spread_ms": sc.join_spread.as_millis() as u64, "set": args.set,
    });
    let mut run = Run::new(
        "sim-swim",
        args.output.out.as_deref(),
        args.output.json,
        config,
    )?;
    let (report, wall_ms) =
        run.simulate(Duration::from_secs(args.virtual_secs), |tick| sc.run(tick));

    let mut detect = Recorder::new("detect_ms");
    for &d in &report.detect_ms {
        detect.record(d);
    }
    let detect_summary = detect.summary();
    run.add(detect);
    let member_secs = (args.members as f64 * args.virtual_secs as f64).max(1.0);
    let t = report.traffic;
    let results = json!({
        "members": args.members,
        "config": args.config,
        "loss": args.loss,
        "seed": args.seed,
        "lifeguard": args.lifeguard,
        "kill": args.kill,
        "slow": args.slow,
        "virtual_secs": args.virtual_secs,
        "converge_ms": report.converge_ms,
        "kill_at_ms": report.kill_at_ms,
        "detect_ms": detect_summary,
        "undetected": report.undetected,
        "false_positives": report.false_positives,
        "false_positive_events": report.false_positive_events,
        "msgs_per_member_per_s": t.datagrams as f64 / member_secs,
        "items_per_member_per_s": t.items as f64 / member_secs,
        "streams_per_member_per_s": t.streams as f64 / member_secs,
        "bytes_per_member_per_s": (t.datagram_bytes + t.stream_bytes) as f64 / member_secs,
        "broadcasts_dropped": report.broadcasts_dropped,
        "events": report.events,
        "trace_hash": format!("{:016x}", report.trace_hash),
        "wall_ms": wall_ms,
    });
    run.finish(results)
}

//! Scenario `sim serf`: Serf's user events, queries and Vivaldi coordinates over SWIM in the
//! deterministic simulator.
//!
//! Everyone joins; after 30 virtual seconds `--events` user events are fired from random
//! members (one every 250 ms), then `--queries` queries that every member answers. Vivaldi
//! coordinates, learned from probe round trips, are judged against a synthetic latency
//! model (2-D positions plus a per-member access-link height).

use std::time::Duration;

use anyhow::bail;
use ringleader_sim::serf::SerfScenario;
use serde_json::json;

use crate::harness::{OutputArgs, Recorder, Run};

/// Flags of the `sim serf` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Cluster size.
    #[arg(long, default_value_t = 200)]
    pub members: usize,
    /// User events fired after convergence.
    #[arg(long, default_value_t = 20)]
    pub events: usize,
    /// Queries issued after the events.
    #[arg(long, default_value_t = 5)]
    pub queries: usize,
    /// Datagram loss probability on every link (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Probability a datagram is reordered.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// Virtual seconds to simulate.
    #[arg(long, default_value_t = 240)]
    pub virtual_secs: u64,
    /// Seed: the same seed replays the same run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output folder and --json.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&args.loss) || !(0.0..1.0).contains(&args.reorder) {
        bail!("--loss and --reorder must be in [0, 1)");
    }
    if args.members < 2 {
        bail!("--members must be at least 2");
    }
    let min_secs = 30 + (args.events as u64) / 4 + 2 * args.queries as u64 + 30;
    if args.virtual_secs < min_secs {
        bail!(
            "--virtual-secs must be at least {min_secs} for {} events and {} queries",
            args.events,
            args.queries
        );
    }
    let mut sc = SerfScenario::new(args.members, args.events, args.loss, args.seed);
    sc.queries = args.queries;
    sc.reorder = args.reorder;
    sc.virtual_secs = args.virtual_secs;
    let config = json!({
        "members": args.members, "events": args.events, "queries": args.queries, "loss": args.loss,
        "reorder": args.reorder, "virtual_secs": args.virtual_secs, "seed": args.seed,
        "relay_factor": sc.serf.relay_factor, "event_interval_ms": sc.event_interval.as_millis() as u64,
    });
    let mut run = Run::new(
        "sim-serf",
        args.output.out.as_deref(),
        args.output.json,
        config,
    )?;
    let (report, wall_ms) =
        run.simulate(Duration::from_secs(args.virtual_secs), |tick| sc.run(tick));
    let mut lat = Recorder::new("event_latency_ms");
    for &l in &report.event_latency_ms {
        lat.record(l);
    }
    let lat_summary = lat.summary();
    run.add(lat);
    run.finish(json!({
        "members": args.members,
        "events": args.events,
        "loss": args.loss,
        "seed": args.seed,
        "live": report.live,
        "delivery_ratio": report.delivery_ratio,
        "dup_deliveries": report.dup_deliveries,
        "event_latency_ms": lat_summary,
        "query_response_ratio": report.query_response_ratio,
        "vivaldi_err_median": report.vivaldi_err_median,
        "wall_ms": wall_ms,
    }))
}

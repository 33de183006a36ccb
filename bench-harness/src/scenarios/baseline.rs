//! Scenario `baseline`: the denominators every performance claim is divided by — raw loopback
//! UDP ping-pong RTT and sendmmsg/recvmmsg flood, raw `fdatasync` of 4 KiB appends, raw
//! loopback TCP bulk throughput.
//!
//! `--duration` is split across the four measurements (UDP RTT 25%, UDP flood 20%,
//! fdatasync 35%, TCP 20%), and so is `--warmup`. Other scenarios call the functions
//! re-exported here (from `harness::baselines`) to measure their baseline in the same run.

use std::path::PathBuf;

use serde_json::json;

use crate::harness::{self, BaselineConfig, CommonArgs, Pacing, Run, split_duration};

pub use crate::harness::baselines::{
    fdatasync_latency, fdatasync_latency_with, tcp_bulk_with, tcp_gbps, udp_flood_pps,
    udp_flood_with, udp_rtt, udp_rtt_with,
};

/// Shares of `--duration` (and `--warmup`): UDP RTT, UDP flood, fdatasync, TCP.
pub const DURATION_WEIGHTS: [u32; 4] = [25, 20, 35, 20];

/// Flags of the `baseline` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Duration, warm-up, output, pacing of the UDP ping-pong (`--rate` or `--concurrency`).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Folder on the filesystem whose fdatasync latency to measure (default: a temporary
    /// folder under the current directory, removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<()> {
    let common = &args.common;
    let pacing = common.pacing();
    let config = json!({
        "duration_s": common.duration.as_secs_f64(),
        "warmup_s": common.warmup.as_secs_f64(),
        "pacing": pacing_json(pacing),
        "dir": args.dir.as_ref().map(|d| d.display().to_string()),
        "duration_weights": DURATION_WEIGHTS,
    });
    let mut run = Run::new("baseline", common.out.as_deref(), common.json, config)?;
    let durations = split_duration(common.duration, DURATION_WEIGHTS);
    let warmups = split_duration(common.warmup, DURATION_WEIGHTS);
    let phase = |i: usize| BaselineConfig {
        duration: durations[i],
        warmup: warmups[i],
        pacing,
    };

    let progress = run.progress("udp rtt", durations[0]);
    let rtt = harness::udp_rtt_with(&phase(0), Some(&progress))?;
    progress.finish();

    let progress = run.progress("udp flood", durations[1]);
    let flood = harness::udp_flood_with(&phase(1), Some(&progress))?;
    progress.finish();

    let progress = run.progress("fdatasync", durations[2]);
    let (fsync, fsync_dir) = match &args.dir {
        Some(dir) => (
            harness::fdatasync_latency_with(dir, &phase(2), Some(&progress))?,
            dir.clone(),
        ),
        None => {
            let temp = tempfile::Builder::new()
                .prefix(".ringleader-baseline-")
                .tempdir_in(std::env::current_dir()?)?;
            let rec = harness::fdatasync_latency_with(temp.path(), &phase(2), Some(&progress))?;
            (rec, temp.path().to_path_buf())
        }
    };
    progress.finish();

    let progress = run.progress("tcp", durations[3]);
    let tcp = harness::tcp_bulk_with(&phase(3), Some(&progress))?;
    progress.finish();

    let results = json!({
        "udp_rtt_us": rtt.summary(),
        "udp_flood_pps": flood.received_pps,
        "udp_flood_sent_pps": flood.sent_pps,
        "fdatasync_us": fsync.summary(),
        "fdatasync_per_s": fsync.histogram().len() as f64 / durations[2].as_secs_f64().max(1e-9),
        "fdatasync_dir": fsync_dir.display().to_string(),
        "udp_rtt_per_s": rtt.histogram().len() as f64 / durations[0].as_secs_f64().max(1e-9),
        "tcp_gbps": tcp.gbps,
        "tcp_gbytes_per_s": tcp.gbps / 8.0,
    });
    run.add(rtt);
    run.add(fsync);
    run.finish(results)
}

/// `{"mode":"open","rate_per_s":N}` or `{"mode":"closed","concurrency":N}`.
pub fn pacing_json(pacing: Pacing) -> serde_json::Value {
    match pacing {
        Pacing::Open { rate_per_s } => json!({"mode": "open", "rate_per_s": rate_per_s}),
        Pacing::Closed { concurrency } => json!({"mode": "closed", "concurrency": concurrency}),
    }
}

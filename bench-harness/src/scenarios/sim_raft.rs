//! Scenario `sim raft`: many seeds of a simulated Raft cluster under faults, each checked for
//! Raft's safety invariants after every step and for linearizability of its key-value
//! history. Virtual time: the wall-clock figure is only how long the check took.
//!
//! A failing seed is printed with the exact command that replays it (`--seed X`).

use std::time::Instant;

use anyhow::bail;
use ringleader_sim::raft::check::CheckResult;
use ringleader_sim::raft::{Faults, SeedReport, SimConfig, run_seed};
use serde_json::json;

use crate::harness::{OutputArgs, Run};

/// Flags of the `sim raft` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Voters per cluster (3 or 5).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Seeds to run (seeds `first_seed .. first_seed + seeds`).
    #[arg(long, default_value_t = 100)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Replay exactly this one seed (overrides --seeds/--first-seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Client operations per seed.
    #[arg(long, default_value_t = 100)]
    pub ops: usize,
    /// Faults: none|net|crash|disk|all.
    #[arg(long, default_value = "all")]
    pub faults: String,
    /// Virtual time limit of one seed (default: the simulator's); long seeds (many
    /// `--ops`) need more.
    #[arg(long)]
    pub time_limit_ms: Option<u64>,
    /// Worker threads (seeds are independent).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print every seed's report.
    #[arg(long)]
    pub verbose: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub output: OutputArgs,
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<()> {
    if !(args.nodes == 3 || args.nodes == 5) {
        bail!("--nodes must be 3 or 5");
    }
    let faults: Faults = args.faults.parse().map_err(anyhow::Error::msg)?;
    let mut cfg = SimConfig::new(args.nodes, args.ops, faults);
    if let Some(t) = args.time_limit_ms {
        cfg.time_limit_ms = t;
    }
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (args.first_seed..args.first_seed + args.seeds).collect(),
    };
    let config = json!({
        "nodes": args.nodes, "seeds": seeds.len(), "first_seed": seeds.first(), "ops": args.ops,
        "faults": args.faults, "clients": cfg.clients, "keys": cfg.keys,
        "election_timeout_ms": cfg.raft.election_timeout_ms, "heartbeat_interval_ms": cfg.raft.heartbeat_interval_ms,
        "time_limit_ms": cfg.time_limit_ms,
    });
    let run = Run::new(
        "sim_raft",
        args.output.out.as_deref(),
        args.output.json,
        config,
    )?;
    let started = Instant::now();
    let threads = args.threads.clamp(1, 16);
    let mut reports: Vec<SeedReport> = Vec::with_capacity(seeds.len());
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let cfg = &cfg;
                let seeds = &seeds;
                s.spawn(move || {
                    seeds
                        .iter()
                        .skip(t)
                        .step_by(threads)
                        .map(|&seed| run_seed(cfg, seed))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            if let Ok(r) = h.join() {
                reports.extend(r);
            }
        }
    });
    if reports.len() != seeds.len() {
        bail!("a simulation thread panicked");
    }
    reports.sort_by_key(|r| r.seed);
    let wall_ms = started.elapsed().as_millis() as u64;

    let mut violations = 0u64;
    let mut non_linearizable = 0u64;
    let mut unknown = 0u64;
    let mut unfinished = 0u64;
    for r in &reports {
        let bad = !r.violations.is_empty() || r.non_linearizable();
        violations += r.violations.len() as u64;
        non_linearizable += u64::from(r.non_linearizable());
        unknown += u64::from(matches!(r.linearizability, Some(CheckResult::Unknown)));
        unfinished += u64::from(!r.finished);
        if args.verbose || bad {
            eprintln!(
                "seed {}: acked {} unknown {} (expired {}) elections {} crashes {} snapshots {} gap {}ms virtual {}ms lin {:?}",
                r.seed,
                r.ops_acked,
                r.ops_unknown,
                r.ops_expired,
                r.elections,
                r.crashes,
                r.snapshots_installed,
                r.max_leader_gap_ms,
                r.virtual_ms,
                r.linearizability
            );
        }
        if bad {
            for v in &r.violations {
                eprintln!("  violation: {v}");
            }
            eprintln!(
                "  replay: ringleader-bench sim raft --nodes {} --ops {} --faults {} --time-limit-ms {} --seed {}",
                args.nodes, args.ops, args.faults, cfg.time_limit_ms, r.seed
            );
        }
    }
    let results = json!({
        "seeds": reports.len(),
        "ops_acked": reports.iter().map(|r| r.ops_acked).sum::<u64>(),
        "ops_unknown": reports.iter().map(|r| r.ops_unknown).sum::<u64>(),
        "ops_expired": reports.iter().map(|r| r.ops_expired).sum::<u64>(),
        "violations": violations,
        "non_linearizable": non_linearizable,
        "linearizability_unknown": unknown,
        "unfinished_seeds": unfinished,
        "elections": reports.iter().map(|r| r.elections).sum::<u64>(),
        "crashes": reports.iter().map(|r| r.crashes).sum::<u64>(),
        "wipes": reports.iter().map(|r| r.wipes).sum::<u64>(),
        "snapshots_installed": reports.iter().map(|r| r.snapshots_installed).sum::<u64>(),
        "snapshots_taken": reports.iter().map(|r| r.snapshots_taken).sum::<u64>(),
        "conf_changes": reports.iter().map(|r| r.conf_changes).sum::<u64>(),
        "max_leader_gap_ms": reports.iter().map(|r| r.max_leader_gap_ms).max().unwrap_or(0),
        "virtual_ms": reports.iter().map(|r| r.virtual_ms).sum::<u64>(),
        "wall_ms": wall_ms,
    });
    run.finish(results)
}

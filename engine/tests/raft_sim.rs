//! The CI-sized simulation sweep: 1,000 seeds with every fault (crashes with and without
//! power loss, torn writes, loss, duplication, reordering, delay, partitions, membership
//! churn), 3- and 5-node clusters whose nodes run the production Ready driver, each checked
//! for Raft's invariants and the driver's contract after every step and for
//! linearizability. `RAFT_SIM_SEEDS=N` runs more (or fewer) seeds.

use ringleader_sim::raft::check::CheckResult;
use ringleader_sim::raft::{Faults, SimConfig, run_seed};

fn seeds() -> u64 {
    std::env::var("RAFT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000)
}

#[test]
fn sweep_all_faults_has_no_violation() {
    let mut acked = 0;
    let mut crashes = 0;
    let mut elections = 0;
    let mut snapshots = 0;
    let mut snapshots_taken = 0;
    let mut conf_changes = 0;
    let mut expired = 0;
    let mut wipes = 0;
    let mut failed = Vec::new();
    for seed in 0..seeds() {
        let nodes = if seed % 2 == 0 { 3 } else { 5 };
        let faults = [
            Faults::All,
            Faults::Disk,
            Faults::All,
            Faults::Net,
            Faults::Crash,
        ][(seed % 5) as usize];
        let r = run_seed(&SimConfig::new(nodes, 60, faults), seed);
        acked += r.ops_acked;
        crashes += r.crashes;
        elections += r.elections;
        snapshots += r.snapshots_installed;
        snapshots_taken += r.snapshots_taken;
        conf_changes += r.conf_changes;
        expired += r.ops_expired;
        wipes += r.wipes;
        if !r.violations.is_empty() || r.non_linearizable() {
            failed.push(format!(
                "seed {seed} ({nodes} nodes, {faults:?}): {:?} {:?} — replay: ringleader-bench sim raft --nodes {nodes} --ops 60 --faults {} --seed {seed}",
                r.violations,
                r.linearizability,
                format!("{faults:?}").to_lowercase()
            ));
        }
        assert!(r.linearizability.is_some(), "every history is checked");
    }
    assert!(failed.is_empty(), "{failed:#?}");
    // The sweep must actually exercise the system.
    assert!(acked > seeds() * 20, "acked {acked}");
    assert!(crashes > seeds() / 2, "crashes {crashes}");
    assert!(elections >= seeds(), "elections {elections}");
    assert!(snapshots > 0, "no snapshot was ever installed");
    assert!(snapshots_taken > 0, "no node ever took a snapshot");
    assert!(conf_changes > 0, "the membership never changed");
    assert!(expired > 0, "no driver ever let a request expire");
    assert!(wipes > 0, "no node's disk was ever wiped");
}

/// A node whose disk is wiped forgot its log and its votes: if it voted at once, a quorum
/// counting it could elect a leader that misses acknowledged writes. With
/// `catch_up_before_voting` (what the sweep runs) no seed loses anything; without it the
/// same seeds do — the checks can see the loss the setting prevents.
#[test]
fn a_wiped_node_must_catch_up_before_it_votes() {
    let mut unsafe_failures = 0;
    let mut wipes = 0;
    for seed in 0..400 {
        let mut cfg = SimConfig::new(3, 60, Faults::All);
        cfg.wipe_catch_up = false;
        let r = run_seed(&cfg, seed);
        wipes += r.wipes;
        if !r.violations.is_empty() || r.non_linearizable() {
            unsafe_failures += 1;
            let safe = run_seed(&SimConfig::new(3, 60, Faults::All), seed);
            assert!(
                safe.violations.is_empty() && !safe.non_linearizable(),
                "seed {seed} with catch-up: {:?} {:?}",
                safe.violations,
                safe.linearizability
            );
        }
    }
    assert!(wipes > 20, "wipes {wipes}");
    assert!(
        unsafe_failures > 0,
        "no seed lost anything when wiped nodes voted at once: the checks cannot see the loss"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig::new(5, 80, Faults::All);
    let a = run_seed(&cfg, 4242);
    let b = run_seed(&cfg, 4242);
    assert_eq!(
        (
            a.ops_acked,
            a.ops_unknown,
            a.elections,
            a.crashes,
            a.virtual_ms,
            a.max_leader_gap_ms
        ),
        (
            b.ops_acked,
            b.ops_unknown,
            b.elections,
            b.crashes,
            b.virtual_ms,
            b.max_leader_gap_ms
        )
    );
    assert_eq!(a.linearizability, Some(CheckResult::Linearizable));
}

#[test]
fn quiet_cluster_acknowledges_everything() {
    let r = run_seed(&SimConfig::new(3, 100, Faults::None), 7);
    assert!(r.finished);
    assert_eq!(r.ops_unknown, 0);
    assert_eq!(r.crashes, 0);
    assert!(r.violations.is_empty());
    assert_eq!(r.linearizability, Some(CheckResult::Linearizable));
}

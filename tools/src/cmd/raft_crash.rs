//! `ringleader-tools raft-crash`: a 3-node replicated key-value cluster (three `server`
//! processes on loopback) under concurrent writes; each cycle SIGKILLs the current leader
//! (some cycles a follower, some cycles two nodes at once) while writes are being
//! acknowledged, restarts it on its directory, and goes on. Every client operation is
//! recorded; at the end the tool checks that no acknowledged write is lost and that the
//! whole history is linearizable (the simulator's checker).
//!
//! One cycle in ten (when no node is still catching up) wipes a follower instead: its
//! directory is deleted and it restarts empty with `--rejoin`, so it must catch up before
//! it counts towards a quorum again.
//!
//! Workload: `--workers` clients on a few contended keys (puts of unique values,
//! compare-and-swaps, linearizable gets), plus one client putting unique keys that are
//! never overwritten; after the last cycle every node is up again and every acknowledged
//! unique key is read back (`lost` counts those missing or wrong).
//!
//! A request whose answer never came (timeout, connection lost) is recorded with an
//! unknown outcome and never retried (a retry could apply it twice); a request refused
//! (not the leader, no leader yet) definitely did not happen and is retried.
//!
//! A kill lands only after the cluster acknowledged a write since the last restart (then
//! at a random point 20–200 ms later); a cycle with no acknowledgement within 30 s is
//! counted in `cycles_idle`.
//!
//! The run stops by itself: past `--deadline-s` (or once the cluster has answered nothing
//! for 60 s during the read-back) what is left unread counts as `unreadable` and the run
//! fails. Each node's log (`--log-level info`) is appended to `DIR/node-N.log`; a failing
//! run prints the tail of each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::{Rng, SeedableRng};
use ringleader_sim::raft::check::{self, CheckResult};
use serde_json::json;

use crate::kvload::{
    Cluster, ReadBack, Shared, print_log_tails, spawn_workers, stop_and_read_back,
};

const NODES: usize = 3;

/// Arguments of `raft-crash`.
#[derive(Parser, Debug)]
pub struct Args {
    /// Kill/restart cycles.
    #[arg(long, default_value_t = 50)]
    pub cycles: u32,
    /// Working directory (the nodes' data; created, left in place for inspection).
    #[arg(long)]
    pub dir: PathBuf,
    /// Clients on the contended keys.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Raft groups of the cluster.
    #[arg(long, default_value_t = 1)]
    pub groups: u64,
    /// First port (node i listens on port + i); default: from the pid, below the
    /// ephemeral range (the clients' own connections cannot hold it).
    #[arg(long)]
    pub port: Option<u16>,
    /// Seed of the kill schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
    /// Wall-clock bound of the whole run, in seconds: past it the load stops and what is
    /// not yet read back counts as unreadable.
    #[arg(long, default_value_t = 900)]
    pub deadline_s: u64,
}

/// Runs the crash test.
pub fn run(a: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let port = a
        .port
        .unwrap_or_else(|| ringleader_engine::transport::port_base_below_ephemeral(NODES as u16));
    let addrs: Vec<SocketAddr> = (0..NODES)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], port + i as u16)))
        .collect();
    let mut cluster = Cluster::new(a.dir.clone(), addrs.clone(), a.groups, false)?;
    for i in 0..NODES {
        cluster.spawn(i)?;
    }
    let sh = Arc::new(Shared::new());
    let threads = spawn_workers(&addrs, &sh, 0..a.workers, a.seed, None, true)?;

    let mut rng = rand::rngs::SmallRng::seed_from_u64(a.seed);
    let mut cycles_idle = 0u32;
    let mut leader_changes = 0u64;
    let mut last_leader = usize::MAX;
    let mut kinds: BTreeMap<&'static str, u32> = BTreeMap::new();
    let deadline = cluster.born() + Duration::from_secs(a.deadline_s);
    let mut deadline_hit = false;
    let mut cycles_done = 0u32;
    for cycle in 0..a.cycles {
        if Instant::now() >= deadline {
            deadline_hit = true;
            break;
        }
        cycles_done += 1;
        // Wait for a write acknowledged since the last restart.
        let base = sh.acked.load(Ordering::SeqCst);
        let wait_until = Instant::now() + Duration::from_secs(30);
        while sh.acked.load(Ordering::SeqCst) == base && Instant::now() < wait_until {
            std::thread::sleep(Duration::from_millis(2));
        }
        if sh.acked.load(Ordering::SeqCst) == base {
            cycles_idle += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(20..200)));
        let leader = sh.leader.load(Ordering::SeqCst);
        if leader != last_leader && leader < NODES {
            if last_leader != usize::MAX {
                leader_changes += 1;
            }
            last_leader = leader;
        }
        let leader = if leader < NODES { leader } else { 0 };
        let roll = rng.random_range(0..100);
        if roll >= 90 && !cluster.catching_up() {
            // A follower's disk is lost: it rejoins empty under its old id (`--rejoin`) and
            // must not count towards a quorum until it has caught up.
            *kinds.entry("wipe").or_default() += 1;
            let v = (leader + 1 + rng.random_range(0..NODES - 1)) % NODES;
            cluster.wipe(v)?;
            if !a.json {
                eprintln!("cycle {}: wiped {}", cycle + 1, v + 1);
            }
            continue;
        }
        let roll = roll % 90 * 100 / 90;
        let victims: Vec<usize> = if roll < 60 {
            *kinds.entry("leader").or_default() += 1;
            vec![leader]
        } else if roll < 85 {
            *kinds.entry("follower").or_default() += 1;
            vec![(leader + 1 + rng.random_range(0..NODES - 1)) % NODES]
        } else {
            *kinds.entry("two").or_default() += 1;
            vec![
                leader,
                (leader + 1 + rng.random_range(0..NODES - 1)) % NODES,
            ]
        };
        for &v in &victims {
            cluster.kill(v);
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        for &v in &victims {
            cluster.spawn(v)?;
        }
        if !a.json {
            eprintln!(
                "cycle {}: killed {:?}, acknowledged so far {}",
                cycle + 1,
                victims.iter().map(|v| v + 1).collect::<Vec<_>>(),
                sh.acked.load(Ordering::SeqCst)
            );
        }
    }
    // Let the cluster settle with every node up, then stop the load.
    let base = sh.acked.load(Ordering::SeqCst);
    let until = (Instant::now() + Duration::from_secs(30)).min(deadline);
    while sh.acked.load(Ordering::SeqCst) < base + 20 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    let ReadBack {
        lost,
        unreadable,
        unique,
        history,
        deadline_hit: rb_deadline,
    } = stop_and_read_back(&sh, threads, &addrs, deadline);
    deadline_hit |= rb_deadline;
    drop(cluster);
    let verdict = check::check(&history, 5_000_000);
    let linearizable = verdict == CheckResult::Linearizable;
    let acknowledged = sh.acked.load(Ordering::SeqCst);
    let failed = lost > 0 || unreadable > 0 || !linearizable || deadline_hit;
    if failed {
        print_log_tails(&a.dir, NODES);
    }
    let out = json!({
        "cycles": cycles_done,
        "cycles_requested": a.cycles,
        "deadline_hit": deadline_hit,
        "acknowledged": acknowledged,
        "lost": lost,
        "unreadable": unreadable,
        "linearizable": linearizable,
        "verdict": format!("{verdict:?}"),
        "history_ops": history.len(),
        "unknown_outcomes": sh.unknown.load(Ordering::Relaxed),
        "unique_acknowledged": unique,
        "leader_changes": leader_changes,
        "cycles_idle": cycles_idle,
        "kills": kinds,
        "dir": a.dir.display().to_string(),
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    anyhow::ensure!(lost == 0, "{lost} acknowledged writes were lost");
    anyhow::ensure!(
        unreadable == 0,
        "{unreadable} acknowledged writes could not be read back after the last restart"
    );
    anyhow::ensure!(linearizable, "the history is not linearizable: {verdict:?}");
    anyhow::ensure!(
        !deadline_hit,
        "the run passed --deadline-s {} (cycles done: {cycles_done} of {})",
        a.deadline_s,
        a.cycles
    );
    Ok(())
}

//! `faults raft-partition-leader` (and `raft-asymmetric`, `raft-flapping`, the same with a
//! one-way cut of what the leader sends, or its link flapping; `raft-lossy`, the same with
//! 5 % loss on every node's link instead of a fault of the leader's): 5 `server` nodes, one per host namespace, one Raft group,
//! under writes from clients on both sides (`crate::kvload`: contended puts, CASes and
//! linearizable gets, and unique puts): two contended workers and the unique writer in the
//! checker's namespace, two contended workers in the leader's. Once writes are acknowledged
//! the leader's host is cut off for 20 s (8 s with `--short`). Checked: the majority elects
//! a new leader (the leader change time: from the cut until another node serves a
//! linearizable read; also reported, when the clients' first write was acknowledged by
//! another node, which includes their request timeout on the old leader); a
//! reader in the old leader's namespace keeps sending it lease and linearizable reads, and
//! none may be answered later than its lease plus an election timeout after the cut
//! (CheckQuorum steps it down); after the heal every acknowledged write is read back and
//! the whole history, the old leader's answers included, is linearizable.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ringleader_sim::raft::check::{self, CheckResult, KvOp, KvRet, Operation};
use ringleader_wire::msg::client::{ClientOp, ClientResult, Consistency};
use serde_json::json;

use super::{Args, say};
use crate::kvload::{
    Attempt, Client, Cluster, ReadBack, Shared, key_bytes, print_log_tails, spawn_workers,
    stop_and_read_back, value_of,
};
use crate::netns;

/// Nodes (one per host).
pub const NODES: usize = 5;
/// Every node listens on this port of its host's address.
const PORT: u16 = 7100;
/// The nodes' minimum election timeout (`Cluster` starts them with it); a lease lasts at
/// most this long after the heartbeat round that granted it.
const ELECTION_TIMEOUT_MS: u64 = 300;
/// Contended workers on each side.
const WORKERS_PER_SIDE: usize = 2;

/// One read the minority reader sent to the old leader.
struct MinorityRead {
    /// Answer time, ns of the history's clock.
    at: u64,
    /// Answered with a value (not refused, not lost).
    answered: bool,
}

/// Sends lease and linearizable reads to node `old` only (from inside its namespace),
/// recording each answered one in the history, until `stop`.
fn minority_reader(
    addrs: Vec<SocketAddr>,
    old: usize,
    sh: Arc<Shared>,
    stop: Arc<AtomicBool>,
    reads: Arc<Mutex<Vec<MinorityRead>>>,
) {
    if let Err(e) = netns::enter(old + 1) {
        eprintln!("the minority reader could not enter its namespace: {e:#}");
        return;
    }
    let mut c = Client::new(addrs, old);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let key = n % crate::kvload::CONTENDED_KEYS;
        let consistency = if n % 2 == 0 {
            Consistency::Lease
        } else {
            Consistency::Linearizable
        };
        c.retarget(old);
        let invoke = sh.now();
        let got = c.attempt(&ClientOp::Get {
            key: key_bytes(key),
            consistency,
        });
        let at = sh.now();
        let answered = match got {
            Attempt::Answer(ClientResult::Value(v)) => {
                if let Ok(mut h) = sh.history.lock() {
                    h.push(Operation {
                        key,
                        op: KvOp::Get,
                        ret: KvRet::Value(v.as_deref().and_then(value_of)),
                        invoke,
                        ret_time: at,
                    });
                }
                true
            }
            _ => false,
        };
        if let Ok(mut r) = reads.lock() {
            r.push(MinorityRead { at, answered });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asks every node but `old` for a linearizable read, round after round, until one serves
/// it (it leads, and a heartbeat quorum confirmed it) or `limit` passes: that node, and
/// when it answered.
fn probe_new_leader(addrs: &[SocketAddr], old: usize, limit: Duration) -> Option<(usize, Instant)> {
    let mut clients: Vec<Client> = (0..addrs.len())
        .map(|i| Client::new(addrs.to_vec(), i))
        .collect();
    let until = Instant::now() + limit;
    while Instant::now() < until {
        for (i, c) in clients.iter_mut().enumerate().filter(|(i, _)| *i != old) {
            c.retarget(i);
            let got = c.attempt(&ClientOp::Get {
                key: key_bytes(0),
                consistency: Consistency::Linearizable,
            });
            if matches!(got, Attempt::Answer(ClientResult::Value(_))) {
                return Some((i, Instant::now()));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Polls until `cond` holds or `limit` passes; whether it held.
fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}

/// What happens to the leader's host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaderFault {
    /// Cut off both ways (its bridge port down).
    Cut,
    /// Everything it sends to the other nodes is dropped; it still receives.
    OneWay,
    /// Its link goes down and up every `FLAP_PERIOD` for the fault's duration.
    Flap,
    /// Every node's link loses `LOSSY_LOSS_PCT` of its packets (and is delayed by
    /// `LOSSY_DELAY_MS` ± `LOSSY_JITTER_MS` where the kernel has netem).
    Lossy,
}

/// `raft-lossy`'s loss on every node's link, percent.
const LOSSY_LOSS_PCT: f64 = 5.0;
/// And its delay and jitter where netem exists (well below the election timeout).
const LOSSY_DELAY_MS: u64 = 20;
const LOSSY_JITTER_MS: u64 = 5;

/// Down, then up, for this long each while a link flaps.
const FLAP_PERIOD: Duration = Duration::from_secs(2);

impl LeaderFault {
    fn suite(self) -> &'static str {
        match self {
            LeaderFault::Cut => "raft-partition-leader",
            LeaderFault::OneWay => "raft-asymmetric",
            LeaderFault::Flap => "raft-flapping",
            LeaderFault::Lossy => "raft-lossy",
        }
    }
}

/// Runs `raft-partition-leader`, `raft-asymmetric`, `raft-flapping` or `raft-lossy`; the
/// report.
///
/// For a flapping link the old leader may lead again whenever its link is up, and under
/// loss it need not lose its lead at all, so the lease and leader-change figures are
/// reported, not checked; what is checked is the same safety: nothing acknowledged lost,
/// the history linearizable, writes acknowledged during the fault and after it.
pub fn leader_fault(a: &Args, fault: LeaderFault) -> anyhow::Result<serde_json::Value> {
    let cut_for = Duration::from_secs(match (fault, a.short) {
        (LeaderFault::Flap, true) => 12,
        (LeaderFault::Flap, false) => 30,
        (LeaderFault::Lossy, true) => 20,
        (LeaderFault::Lossy, false) => 60,
        (_, true) => 8,
        (_, false) => 20,
    });
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("rl-faults-raft-")
                .tempdir()
                .context("creating a working directory")?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let addrs: Vec<SocketAddr> = (1..=NODES)
        .map(|i| SocketAddr::new(netns::host_addr(i).into(), PORT))
        .collect();
    let mut cluster = Cluster::new(dir.clone(), addrs.clone(), 1, true)?;
    for i in 0..NODES {
        cluster.spawn(i)?;
    }
    let sh = Arc::new(Shared::new());
    let seed = 1;
    let mut threads = spawn_workers(&addrs, &sh, 0..WORKERS_PER_SIDE, seed, None, true)?;

    // A leader that has acknowledged writes, and stays the same for a second.
    let leader = || sh.leader.load(Ordering::SeqCst);
    if !wait_until(Duration::from_secs(60), || {
        sh.acked.load(Ordering::SeqCst) >= 50
    }) {
        sh.stop.store(true, Ordering::SeqCst);
        print_log_tails(&dir, NODES);
        bail!("the cluster acknowledged fewer than 50 writes within 60 s");
    }
    let mut old = leader();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let now = leader();
        if now == old && now < NODES {
            break;
        }
        old = now;
    }
    if old >= NODES {
        bail!("no stable leader");
    }
    say(format!(
        "leader is node {} ({} writes acknowledged); minority clients start in {}",
        old + 1,
        sh.acked.load(Ordering::SeqCst),
        netns::host_ns(old + 1)
    ));
    threads.extend(spawn_workers(
        &addrs,
        &sh,
        WORKERS_PER_SIDE..2 * WORKERS_PER_SIDE,
        seed,
        Some(old + 1),
        false,
    )?);
    let reads = Arc::new(Mutex::new(Vec::new()));
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (addrs, sh, stop, reads) = (
            addrs.clone(),
            Arc::clone(&sh),
            Arc::clone(&reader_stop),
            Arc::clone(&reads),
        );
        std::thread::spawn(move || minority_reader(addrs, old, sh, stop, reads))
    };
    std::thread::sleep(Duration::from_secs(2));

    let mut flapper = None;
    let mut applied = None;
    match fault {
        LeaderFault::Cut => netns::partition(old + 1)?,
        LeaderFault::OneWay => {
            for j in (1..=NODES).filter(|&j| j != old + 1) {
                netns::partition_one_way(old + 1, j)?;
            }
        }
        LeaderFault::Flap => flapper = Some(netns::Flapper::start(old + 1, FLAP_PERIOD)?),
        LeaderFault::Lossy => {
            let imp = netns::Impairment {
                loss_pct: LOSSY_LOSS_PCT,
                delay_ms: LOSSY_DELAY_MS,
                jitter_ms: LOSSY_JITTER_MS,
                ..netns::Impairment::default()
            };
            applied = Some(netns::impair_all(1..=NODES, &imp)?);
        }
    }
    let t_cut = sh.now();
    let cut_at = Instant::now();
    let acked_at_cut = sh.acked.load(Ordering::SeqCst);
    match applied {
        Some(a) => say(format!(
            "{LOSSY_LOSS_PCT} % loss by {} on every node's link (delay {})",
            a.mechanism.name(),
            if a.delay_applied {
                "applied"
            } else {
                "not applied: no sch_netem"
            }
        )),
        None => say(format!("{fault:?} on node {}", old + 1)),
    }
    let probed = probe_new_leader(&addrs, old, cut_for);
    let leader_change_ms = probed.map(|(_, t)| t.duration_since(cut_at).as_millis() as u64);
    let new_leader = probed.map_or(usize::MAX, |(i, _)| i);
    // What the clients saw: the first write another node acknowledged.
    let changed = wait_until(cut_for.saturating_sub(cut_at.elapsed()), || {
        let l = leader();
        l != old && l < NODES && sh.acked.load(Ordering::SeqCst) > acked_at_cut
    });
    let clients_moved_ms = changed.then(|| cut_at.elapsed().as_millis() as u64);
    std::thread::sleep(cut_for.saturating_sub(cut_at.elapsed()));
    let acked_during_cut = sh.acked.load(Ordering::SeqCst) - acked_at_cut;
    let flaps = flapper.map(netns::Flapper::stop).transpose()?;
    let nft_dropped: Vec<Option<u64>> = (1..=NODES).map(netns::nft_dropped).collect();
    netns::heal()?;
    let t_heal = sh.now();
    say(format!(
        "healed after {} ms; new leader node {:?} after {leader_change_ms:?} ms",
        cut_at.elapsed().as_millis(),
        (new_leader < NODES).then_some(new_leader + 1)
    ));
    let base = sh.acked.load(Ordering::SeqCst);
    let resumed = wait_until(Duration::from_secs(30), || {
        sh.acked.load(Ordering::SeqCst) >= base + 20
    });
    std::thread::sleep(Duration::from_secs(2));
    reader_stop.store(true, Ordering::SeqCst);
    let _ = reader.join();
    let ReadBack {
        lost,
        unreadable,
        unique,
        history,
        deadline_hit,
    } = stop_and_read_back(
        &sh,
        threads,
        &addrs,
        Instant::now() + Duration::from_secs(120),
    );
    drop(cluster);
    let verdict = check::check(&history, 5_000_000);
    let linearizable = verdict == CheckResult::Linearizable;

    // The old leader may answer until its lease ends (at most an election timeout after the
    // last heartbeat round a quorum acknowledged, which was before the cut) plus an
    // election timeout for CheckQuorum to step it down.
    let threshold = t_cut + 2 * ELECTION_TIMEOUT_MS * 1_000_000;
    let reads = reads
        .lock()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))?;
    let in_cut = |r: &&MinorityRead| r.at > t_cut && r.at < t_heal;
    let late: Vec<u64> = reads
        .iter()
        .filter(in_cut)
        .filter(|r| r.answered && r.at > threshold)
        .map(|r| (r.at - t_cut) / 1_000_000)
        .collect();
    let tried_late = reads
        .iter()
        .filter(in_cut)
        .filter(|r| r.at > threshold)
        .count();
    let last_answered_ms = reads
        .iter()
        .filter(in_cut)
        .filter(|r| r.answered)
        .map(|r| (r.at - t_cut) / 1_000_000)
        .max();
    let answered_before = reads.iter().filter(|r| r.answered && r.at <= t_cut).count();
    let acknowledged = sh.acked.load(Ordering::SeqCst);
    let checks_leader = !matches!(fault, LeaderFault::Flap | LeaderFault::Lossy);
    let ok = (!checks_leader || probed.is_some() && changed && late.is_empty() && tried_late > 0)
        && resumed
        && lost == 0
        && unreadable == 0
        && !deadline_hit
        && linearizable
        && answered_before > 0
        && acked_during_cut > 0;
    if !ok {
        print_log_tails(&dir, NODES);
    }
    let mut report = json!({
        "suite": fault.suite(),
        "leader_checked": checks_leader,
        "flaps": flaps,
        "ok": ok,
        "nodes": NODES,
        "election_timeout_ms": ELECTION_TIMEOUT_MS,
        "cut_ms": (t_heal - t_cut) / 1_000_000,
        "old_leader": old + 1,
        "new_leader": (new_leader < NODES).then_some(new_leader + 1),
        "leader_change_ms": leader_change_ms,
        "clients_moved_ms": clients_moved_ms,
        "acknowledged": acknowledged,
        "acknowledged_during_cut": acked_during_cut,
        "resumed_after_heal": resumed,
        "lost": lost,
        "unreadable": unreadable,
        "unique_acknowledged": unique,
        "linearizable": linearizable,
        "verdict": format!("{verdict:?}"),
        "history_ops": history.len(),
        "unknown_outcomes": sh.unknown.load(Ordering::Relaxed),
        "minority_reads": {
            "answered_before_cut": answered_before,
            "sent_after_lease_bound": tried_late,
            "answered_after_lease_bound": late.len(),
            "answered_after_lease_bound_ms": late.iter().take(5).collect::<Vec<_>>(),
            "last_answered_in_cut_ms": last_answered_ms,
            "lease_bound_ms": 2 * ELECTION_TIMEOUT_MS,
        },
        "deadline_hit": deadline_hit,
    });
    if let Some(applied) = applied {
        report["loss_percent"] = json!(LOSSY_LOSS_PCT);
        report["mechanism"] = json!(applied.mechanism.name());
        report["delay_applied"] = json!(applied.delay_applied);
        report["nft_dropped_packets"] = json!(nft_dropped);
        report["delay_ms"] = json!(applied.delay_applied.then_some(LOSSY_DELAY_MS));
        report["jitter_ms"] = json!(applied.delay_applied.then_some(LOSSY_JITTER_MS));
        if !applied.delay_applied {
            report["delay_note"] =
                json!("no delay: this kernel has no sch_netem; loss only, by nftables");
        }
    }
    Ok(report)
}

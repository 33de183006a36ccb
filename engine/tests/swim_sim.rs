//! SWIM + Lifeguard in the deterministic simulator: completeness, accuracy, Lifeguard,
//! refutation, dissemination, partitions, leave, restarts, bounds, determinism.
//!
//! Every test prints its seed on failure (the assert messages carry it); a seed replays
//! exactly. Release-mode runtime of the whole file: about 30 s on an idle core.

use std::time::Duration;

use ringleader_engine::Time;
use ringleader_engine::swim::{Config, Event, Item, MemberState, StreamRequest, StreamResponse};
use ringleader_sim::net::{Latency, LinkModel};
use ringleader_sim::swim::{Cluster, Scenario, addr_of};

fn lan() -> LinkModel {
    LinkModel::new(Latency::lan())
}

/// Starts `n` members joining through node 0 over one second and runs until all see all
/// alive (or `limit`); returns the convergence time.
fn converged_cluster(n: usize, cfg: Config, seed: u64, limit: Duration) -> (Cluster, Time) {
    let mut c = Cluster::new(n, cfg, lan(), seed);
    c.start_at(0, Time::ZERO, vec![]);
    for i in 1..n as u32 {
        c.start_at(
            i,
            Time::from_millis(10 + u64::from(i) * 1000 / n as u64),
            vec![0],
        );
    }
    let mut t = Time::ZERO;
    while t < Time::ZERO + limit {
        t += Duration::from_millis(100);
        c.run_until(t, &mut |_, _, _| {});
        if all_alive(&c, n) {
            return (c, t);
        }
    }
    panic!("seed {seed}: {n} members did not converge within {limit:?}");
}

fn all_alive(c: &Cluster, n: usize) -> bool {
    (0..n as u32).all(|i| c.member(i).is_none_or(|m| m.count(MemberState::Alive) == n))
}

#[test]
fn same_seed_same_trace() {
    let run = |seed| {
        let mut sc = Scenario::new(40, Config::lan(), lan(), seed);
        sc.loss = 0.05;
        sc.kill = 2;
        sc.slow = 2;
        sc.virtual_secs = 60;
        sc.run(|_| {})
    };
    let (a, b, c) = (run(11), run(11), run(12));
    assert_eq!(a.trace_hash, b.trace_hash, "seed 11 must replay exactly");
    assert_eq!(a.detect_ms, b.detect_ms);
    assert_ne!(a.trace_hash, c.trace_hash, "different seeds should differ");
}

#[test]
fn completeness_every_killed_member_is_detected_by_every_live_one() {
    for seed in 1..=3 {
        let mut sc = Scenario::new(80, Config::lan(), lan(), seed);
        sc.kill = 4;
        sc.virtual_secs = 90;
        let r = sc.run(|_| {});
        assert!(r.converge_ms.is_some(), "seed {seed}: did not converge");
        assert_eq!(r.undetected, 0, "seed {seed}: undetected pairs");
        assert_eq!(r.detect_ms.len(), 4 * (80 - 4), "seed {seed}");
        assert_eq!(r.false_positives, 0, "seed {seed}");
    }
}

#[test]
fn accuracy_no_false_positives_without_loss() {
    for seed in 1..=3 {
        for cfg in [Config::lan(), Config::local()] {
            let mut sc = Scenario::new(60, cfg, lan(), seed);
            sc.virtual_secs = 120;
            let r = sc.run(|_| {});
            assert_eq!(r.false_positives, 0, "seed {seed}");
            assert_eq!(r.false_positive_events, 0, "seed {seed}");
        }
    }
}

#[test]
fn lifeguard_reduces_false_positives_with_slow_members_under_loss() {
    let total = |lifeguard: bool| -> u64 {
        (1..=3)
            .map(|seed| {
                let mut cfg = Config::lan();
                cfg.lifeguard = lifeguard;
                let mut sc = Scenario::new(60, cfg, lan(), seed);
                sc.loss = 0.25;
                sc.slow = 8;
                sc.virtual_secs = 150;
                sc.run(|_| {}).false_positive_events
            })
            .sum()
    };
    let (on, off) = (total(true), total(false));
    assert!(
        on < off,
        "Lifeguard on: {on} false positives, off: {off} (seeds 1..=3)"
    );
}

#[test]
fn a_suspected_member_refutes_and_stays_alive() {
    let n = 30;
    let (mut c, _) = converged_cluster(n, Config::lan(), 5, Duration::from_secs(60));
    let victim = 7u32;
    let inc = c
        .member(victim)
        .map(|m| m.incarnation())
        .unwrap_or_default();
    // Member 3 wrongly suspects the victim and gossips it.
    let now = c.now();
    if let Some(m) = c.member_mut(3) {
        m.handle_item(
            now,
            addr_of(9),
            Item::Suspect {
                incarnation: inc,
                node: victim,
                from: 9,
            },
        );
    }
    c.poke(3);
    let mut refuted = false;
    let mut downs = 0;
    let end = c.now() + Duration::from_secs(60);
    c.run_until(end, &mut |_, who, e| match e {
        Event::Refuted { .. } if who == victim => refuted = true,
        Event::Down { node, .. } if *node == victim => downs += 1,
        _ => {}
    });
    assert!(refuted, "the victim must refute");
    assert_eq!(downs, 0, "nobody may declare the victim dead");
    let new_inc = c
        .member(victim)
        .map(|m| m.incarnation())
        .unwrap_or_default();
    assert!(new_inc > inc);
    for i in 0..n as u32 {
        let seen = c.member(i).and_then(|m| m.member(victim));
        assert_eq!(
            seen.map(|s| (s.0, s.1)),
            Some((MemberState::Alive, new_inc)),
            "member {i}"
        );
    }
}

/// Gossip rounds (gossip intervals) until every member has a metadata update.
fn dissemination_rounds(n: usize, seed: u64) -> u64 {
    let cfg = Config::lan();
    let gossip = Duration::from_millis(cfg.gossip_interval_ms);
    let (mut c, _) = converged_cluster(n, cfg, seed, Duration::from_secs(120));
    let start = c.now();
    let origin = 1u32;
    if let Some(m) = c.member_mut(origin) {
        assert!(m.update_meta(start, b"role=db").is_ok());
    }
    c.poke(origin);
    let mut have = vec![false; n];
    have[origin as usize] = true;
    let mut count = 1;
    let mut last = start;
    let end = start + Duration::from_secs(60);
    c.run_until(end, &mut |now, who, e| {
        if let Event::Updated { node, .. } = e
            && *node == origin
            && !have[who as usize]
        {
            have[who as usize] = true;
            count += 1;
            last = now;
        }
    });
    assert_eq!(count, n, "seed {seed}: the update reached {count} of {n}");
    (last.saturating_since(start).as_nanos() / gossip.as_nanos()) as u64 + 1
}

#[test]
fn dissemination_takes_logarithmic_rounds() {
    for (n, seed) in [(100usize, 1u64), (1000, 2)] {
        let rounds = dissemination_rounds(n, seed);
        let log2n = (n as f64).log2().ceil() as u64;
        println!("n = {n}: {rounds} gossip rounds (log2 n = {log2n})");
        assert!(
            rounds <= 3 * log2n,
            "n = {n}, seed {seed}: {rounds} rounds > 3 log2 n"
        );
    }
}

#[test]
#[ignore = "10k members: about a minute in release mode"]
fn dissemination_takes_logarithmic_rounds_at_10k() {
    let rounds = dissemination_rounds(10_000, 3);
    assert!(rounds <= 3 * 14, "{rounds} rounds");
}

#[test]
fn partition_then_heal_reconverges() {
    for seed in 1..=2 {
        let n = 40;
        let (mut c, _) = converged_cluster(n, Config::lan(), seed, Duration::from_secs(60));
        let left: Vec<u32> = (0..n as u32 / 2).collect();
        c.net.partition(&[&left]);
        // Long enough for each side to declare the other dead and reap it (30 s).
        let t = c.now() + Duration::from_secs(90);
        c.run_until(t, &mut |_, _, _| {});
        let half = n / 2;
        for i in 0..n as u32 {
            let alive = c.member(i).map_or(0, |m| m.count(MemberState::Alive));
            assert_eq!(
                alive, half,
                "seed {seed}: member {i} sees {alive} alive during the partition"
            );
        }
        c.net.heal();
        let mut t = c.now();
        let deadline = t + Duration::from_secs(240);
        while !all_alive(&c, n) {
            assert!(
                t < deadline,
                "seed {seed}: no re-merge within 240 s of the heal"
            );
            t += Duration::from_secs(1);
            c.run_until(t, &mut |_, _, _| {});
        }
    }
}

/// A partition healed before the two sides reaped each other (dead entries still in every
/// table): the first push-pulls across carry "dead" for every member of the other side.
/// Taken as suspicions, they suspected every member by its own side at once, refutations
/// drowned in the suspicions, and live members died (the netns fault suite measured
/// thousands). No member may declare a member of its own side dead, before or after the
/// heal, and the cluster re-merges.
#[test]
fn a_heal_before_the_reap_declares_no_member_of_either_side_dead_by_its_own_side() {
    // The fault suite's cluster: 300 members, a third cut off, its faster timers.
    let mut cfg = Config::lan();
    cfg.probe_interval_ms = 500;
    cfg.probe_timeout_ms = 250;
    cfg.suspicion_max_timeout_mult = 3;
    cfg.reconnect_interval_ms = 10_000;
    for seed in 1..=2 {
        let n = 300u32;
        let (mut c, _) = converged_cluster(n as usize, cfg.clone(), seed, Duration::from_secs(60));
        let left: Vec<u32> = (0..n / 3).collect();
        let side = |i: u32| i < n / 3;
        c.net.partition(&[&left]);
        let mut own_side_downs = Vec::new();
        let mut cross_downs = 0u64;
        let watch = |own: &mut Vec<(u32, u32)>, cross: &mut u64, i: u32, e: &Event| {
            if let Event::Down { node, .. } = e {
                if side(i) == side(*node) {
                    own.push((i, *node));
                } else {
                    *cross += 1;
                }
            }
        };
        // Until every member has declared the other side dead, well before the 30 s reap.
        let cut = c.now();
        let mut t = cut;
        while cross_downs < 2 * u64::from(n / 3) * u64::from(n - n / 3) {
            assert!(
                t < cut + Duration::from_secs(90),
                "seed {seed}: sides did not split"
            );
            t += Duration::from_secs(1);
            c.run_until(t, &mut |_, i, e| {
                watch(&mut own_side_downs, &mut cross_downs, i, e)
            });
        }
        let during_cut = own_side_downs.len();
        c.net.heal();
        let healed = c.now();
        let mut t = healed;
        while !all_alive(&c, n as usize) {
            assert!(
                t < healed + Duration::from_secs(240),
                "seed {seed}: no re-merge within 240 s of the heal"
            );
            t += Duration::from_secs(1);
            c.run_until(t, &mut |_, i, e| {
                watch(&mut own_side_downs, &mut cross_downs, i, e)
            });
        }
        // And it stays merged.
        let t = c.now() + Duration::from_secs(60);
        c.run_until(t, &mut |_, i, e| {
            watch(&mut own_side_downs, &mut cross_downs, i, e)
        });
        println!(
            "seed {seed}: own-side downs during the cut {during_cut}, after the heal {}",
            own_side_downs.len() - during_cut
        );
        assert!(
            own_side_downs.is_empty(),
            "seed {seed}: {} members declared dead by their own side ({during_cut} during the cut), e.g. (observer, member) {:?}",
            own_side_downs.len(),
            &own_side_downs[..own_side_downs.len().min(10)]
        );
        assert!(
            all_alive(&c, n as usize),
            "seed {seed}: split again after the merge"
        );
    }
}

#[test]
fn leave_is_seen_as_left_not_dead() {
    let n = 30;
    let (mut c, _) = converged_cluster(n, Config::lan(), 4, Duration::from_secs(60));
    let leaver = 12u32;
    c.leave(leaver);
    let mut downs = 0;
    let t = c.now() + Duration::from_secs(5);
    c.run_until(t, &mut |_, _, e| {
        if let Event::Down { node, .. } = e
            && *node == leaver
        {
            downs += 1;
        }
    });
    c.crash(leaver);
    let t = c.now() + Duration::from_secs(20);
    c.run_until(t, &mut |_, _, e| {
        if let Event::Down { node, .. } = e
            && *node == leaver
        {
            downs += 1;
        }
    });
    assert_eq!(downs, 0);
    for i in (0..n as u32).filter(|&i| i != leaver) {
        let s = c.member(i).and_then(|m| m.member(leaver)).map(|s| s.0);
        assert_eq!(s, Some(MemberState::Left), "member {i}");
    }
}

#[test]
fn a_restarted_member_refutes_its_death_and_is_alive_again() {
    let n = 30;
    let (mut c, _) = converged_cluster(n, Config::lan(), 6, Duration::from_secs(60));
    let v = 20u32;
    c.crash(v);
    let t = c.now() + Duration::from_secs(20);
    c.run_until(t, &mut |_, _, _| {});
    let dead = (0..n as u32).filter(|&i| i != v).all(|i| {
        c.member(i)
            .and_then(|m| m.member(v))
            .is_some_and(|s| s.0 == MemberState::Dead)
    });
    assert!(dead, "everyone must have declared the crashed member dead");
    c.restart(v, vec![0]);
    let t = c.now() + Duration::from_secs(30);
    c.run_until(t, &mut |_, _, _| {});
    assert!(
        all_alive(&c, n),
        "the restarted member must be alive everywhere"
    );
    assert!(c.member(v).is_some_and(|m| m.incarnation() > 1));
}

#[test]
fn every_queue_holds_its_bound_when_flooded() {
    let mut cfg = Config::lan();
    cfg.broadcast_queue_max = 64;
    cfg.user_broadcast_queue_max = 16;
    cfg.relays_max = 8;
    cfg.events_max = 100;
    cfg.suspicions_max = 10;
    cfg.streams_max = 4;
    cfg.push_pull_members_max = 50;
    let n = 2_000;
    let mut c = Cluster::new(n, cfg.clone(), lan(), 1);
    c.start_at(0, Time::ZERO, vec![]);
    c.run_until(Time::from_millis(1), &mut |_, _, _| {});
    let now = c.now();
    let dir = c.directory().clone();
    let infos: Vec<u32> = (1..n as u32)
        .map(|i| {
            dir.borrow_mut()
                .intern_info(i, addr_of(i), &[])
                .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    let m = c.member_mut(0).unwrap_or_else(|| panic!("member 0 runs"));
    // Membership updates about 1999 members: queue, events bounded.
    for &info in &infos {
        m.handle_item(
            now,
            addr_of(1),
            Item::Alive {
                incarnation: 1,
                info,
            },
        );
    }
    assert!(m.broadcasts_pending() <= 64, "{}", m.broadcasts_pending());
    assert!(m.broadcasts_dropped() > 0);
    assert!(m.events_pending() <= 100);
    assert!(m.stats().events_dropped > 0);
    // Suspicions of all of them: at most suspicions_max timers.
    for i in 1..n as u32 {
        m.handle_item(
            now,
            addr_of(1),
            Item::Suspect {
                incarnation: 1,
                node: i,
                from: 1,
            },
        );
    }
    assert!(m.suspicions() <= 10);
    // Indirect probe requests: at most relays_max relayed at once.
    for &info in &infos[..100] {
        m.handle_item(
            now,
            addr_of(1),
            Item::IndirectPing {
                seq: 1,
                target: info,
                nack: true,
                source: infos[0],
            },
        );
    }
    assert!(m.relays() <= 8);
    // The layer above's broadcasts.
    for i in 0..1000u64 {
        m.broadcast(
            ringleader_wire::msg::swim::UserMsg {
                payload: vec![1; 20],
            }
            .into(),
            Some(i),
        );
    }
    assert!(m.broadcasts_pending() <= 64 + 16);
    // A push-pull state over the bound is refused, not merged.
    let state = std::rc::Rc::new(ringleader_engine::swim::PushPullState {
        join: false,
        source: infos[0],
        states: infos
            .iter()
            .map(|&info| ringleader_engine::swim::NodeState {
                info,
                incarnation: 9,
                state: MemberState::Alive,
            })
            .collect(),
        user_state: Vec::new(),
        delta: Default::default(),
    });
    let r = m.handle_stream_request(now, addr_of(1), StreamRequest::PushPull(state));
    assert_eq!(r, StreamResponse::Refused);
    assert_eq!(m.stats().push_pull_refused, 1);
    // Stream exchanges in flight: a join through more seeds than streams_max starts one
    // full exchange (the others wait for its answer, at most streams_max of them; the rest
    // are answered at once as failed).
    let seeds: Vec<_> = (1..10).map(addr_of).collect();
    let dropped = m.stats().dropped;
    assert!(m.join(now, &seeds).is_ok());
    assert!(m.streams_in_flight() <= 4);
    assert_eq!(
        m.stats().dropped - dropped,
        9 - 1 - 4,
        "seeds past the bound"
    );
    // Datagrams never exceed the limit.
    while let Some(out) = m.poll_output() {
        if let ringleader_engine::swim::Output::Datagram(t) = out {
            assert!(t.bytes <= cfg.datagram_bytes_max);
        }
    }
}

/// `n` members joining through three seeds, evenly over `spread`; returns how long after
/// the last join every member saw every other alive (`None`: not within `limit`).
fn paced_join_converges_after(
    n: usize,
    spread: Duration,
    cfg: Config,
    seed: u64,
    limit: Duration,
) -> Option<Duration> {
    let mut c = Cluster::new(n, cfg, lan(), seed);
    c.start_at(0, Time::ZERO, vec![]);
    c.start_at(1, Time::from_millis(10), vec![0]);
    c.start_at(2, Time::from_millis(10), vec![0]);
    let step = spread / n as u32;
    for i in 3..n as u32 {
        c.start_at(i, Time::from_millis(20) + step * i, vec![0, 1, 2]);
    }
    let last = Time::from_millis(20) + step * (n as u32 - 1);
    let mut t = last;
    while t < last + limit {
        t += Duration::from_secs(1);
        c.run_until(t, &mut |_, _, _| {});
        if all_alive(&c, n) {
            return Some(t.saturating_since(last));
        }
    }
    None
}

/// A paced join (25 members a second, as `ringleader-bench swim --add-rate 25`) converges
/// within one scaled push-pull interval of the last join: while push-pulls keep bringing
/// members the (damped) join rumors did not, each member's periodic push-pull goes to a
/// seed, which saw every join (`seed_catch_up`). Without it, random push-pulls spread the
/// last joiners only slowly (anti-entropy needs about ln n intervals to reach everyone).
#[test]
fn paced_joins_converge_within_a_push_pull_interval() {
    let n = 1_000;
    let spread = Duration::from_secs(40);
    // memberlist's scaled interval at 1,000 members: 30 s × (⌈log2(1000 / 32)⌉ + 1).
    let interval = Duration::from_secs(180);
    let limit = Duration::from_secs(900);
    let with = paced_join_converges_after(n, spread, Config::lan(), 1, limit);
    let mut cfg = Config::lan();
    cfg.seed_catch_up = false;
    let without = paced_join_converges_after(n, spread, cfg, 1, limit);
    println!("converged after the last join: {with:?} with seed catch-up, {without:?} without");
    let with = with.expect("converges with seed catch-up");
    assert!(
        with <= interval + Duration::from_secs(30),
        "{with:?} after the last join"
    );
    assert!(
        without.is_none_or(|w| w > with + Duration::from_secs(30)),
        "{without:?} vs {with:?}"
    );
}

/// Delta anti-entropy in the simulator. 2,000 members whose only path for news is
/// push-pull (no broadcast is ever transmitted: `retransmit_mult` 0) converge through their
/// joins and catch-ups; then 1 % of them (20) change their metadata, and the cluster
/// re-converges through periodic digest exchanges alone. What travels is proportional to
/// the difference: an exchange between members that agree carries a digest and an empty
/// delta, and the repair's exchanges stay far below the full states memberlist would
/// swap each time.
#[test]
fn digest_push_pull_repairs_a_one_percent_divergence_with_bytes_proportional_to_it() {
    let n = 2000;
    let mut cfg = Config::lan();
    cfg.retransmit_mult = 0;
    cfg.push_pull_interval_ms = 2_000;
    let (mut c, _) = converged_cluster(n, cfg, 21, Duration::from_secs(60));
    // A full state, as the simulator counts it (64 bytes of frame, 48 per member): what
    // each side of a memberlist push-pull sends.
    let full = 64 + n as u64 * 48;

    // Agreement: a few periodic intervals (14 s at this size) of digest exchanges.
    let t0 = c.traffic();
    let t = c.now() + Duration::from_secs(30);
    c.run_until(t, &mut |_, _, _| {});
    let t1 = c.traffic();
    let agree_streams = t1.streams - t0.streams;
    let agree_bytes = t1.stream_bytes - t0.stream_bytes;
    assert!(
        agree_streams >= n as u64,
        "{agree_streams} exchanges in 30 s"
    );
    let per_agree = agree_bytes / agree_streams;
    assert!(
        per_agree * 20 < full,
        "members that agree exchange {per_agree} bytes a message, a full state is {full}"
    );

    // Divergence in 1 % of the entries.
    let changed: Vec<u32> = (0..20).map(|k| 7 + k * 100).collect();
    let now = c.now();
    for &i in &changed {
        c.member_mut(i)
            .expect("running")
            .update_meta(now, b"v2")
            .expect("meta");
    }
    let inc = |c: &Cluster, i: u32| c.member(i).map_or(0, |m| m.incarnation());
    let repaired = |c: &Cluster| {
        (0..n as u32).all(|o| {
            let m = c.member(o).expect("running");
            changed
                .iter()
                .all(|&x| m.member(x).is_some_and(|(_, i, _)| i == inc(c, x)))
        })
    };
    let start = c.now();
    let mut t = start;
    while !repaired(&c) {
        assert!(
            t < start + Duration::from_secs(600),
            "the 1 % divergence was not repaired by push-pull within 600 s"
        );
        t += Duration::from_secs(1);
        c.run_until(t, &mut |_, _, _| {});
    }
    let t2 = c.traffic();
    let streams = t2.streams - t1.streams;
    let bytes = t2.stream_bytes - t1.stream_bytes;
    let per = bytes / streams.max(1);
    println!(
        "repair: {:.0} s, {streams} stream messages, {bytes} bytes ({per} a message; agreeing {per_agree}; full state {full})",
        (t - start).as_secs_f64()
    );
    // Every member learned 20 entries (40,000 entry deliveries in all); the digest
    // exchanges carry each differing bucket's few entries, not the whole table.
    assert!(
        per * 10 < full,
        "repair messages of {per} bytes on average, a full state is {full}"
    );
    assert!(
        bytes < 20 * n as u64 * 48 * 40,
        "{bytes} bytes to repair 20 entries on {n} members"
    );
    for o in 0..n as u32 {
        assert_eq!(c.member(o).map(|m| m.count(MemberState::Alive)), Some(n));
    }
}

//! Log replication: the consistency check, committing entries of earlier terms (Figure 8),
//! the leader's parallel write, and flow control.

use std::time::Duration;

use ringleader_raft::{Config, HardState, Raft, Recovered, Role};
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{AppendEntries, AppendResponse, Entry};

use crate::cluster::{Cluster, cfg, entry, hdr, test_rng, voters};

// ----- §5.3 log replication -----

#[test]
fn s5_3_consistency_check_truncates_conflicts_and_fast_backoff_converges() {
    let mut f = Raft::new(
        Config {
            check_quorum: false,
            ..cfg()
        },
        2,
        voters(3),
        Recovered {
            hard_state: HardState { term: 2, vote: 0 },
            snapshot: None,
            entries: vec![entry(1, 1), entry(2, 1), entry(3, 2)],
        },
        test_rng(2),
        Time::ZERO,
    )
    .unwrap();
    let app = |prev_log_index, prev_log_term, entries: Vec<Entry>| {
        Message::AppendEntries(AppendEntries {
            header: hdr(1, 2, 3),
            prev_log_index,
            prev_log_term,
            leader_commit: 0,
            entries,
        })
    };
    // Mismatch at prev: rejected, with a hint.
    f.step(Time::ZERO, app(3, 3, vec![entry(4, 3)])).unwrap();
    let rd = f.ready();
    assert!(
        matches!(&rd.messages[..], [Message::AppendResponse(r)] if !r.success && r.reject_hint_index == 3 && r.reject_hint_term == 2)
    );
    // Match at 2: the conflicting 3@2 is replaced; the ack waits for durability.
    f.step(Time::ZERO, app(2, 1, vec![entry(3, 3), entry(4, 3)]))
        .unwrap();
    let rd = f.ready();
    assert_eq!(rd.entries.first().map(|e| (e.index, e.term)), Some((3, 3)));
    assert!(
        matches!(&rd.persisted_messages[..], [Message::AppendResponse(r)] if r.success && r.match_index == 4)
    );
    assert_eq!(f.log().term(3), Some(3));

    // A cluster where one follower holds a long divergent suffix: the leader finds the
    // match point in a few round trips, not one per entry.
    let mut c = Cluster::empty();
    let good: Vec<Entry> = (1..=60)
        .map(|i| entry(i, if i <= 20 { 1 } else { 3 }))
        .collect();
    let bad: Vec<Entry> = (1..=80)
        .map(|i| entry(i, if i <= 20 { 1 } else { 2 }))
        .collect();
    for id in 1..=3 {
        let entries = if id == 3 { bad.clone() } else { good.clone() };
        c.add(
            id,
            cfg(),
            voters(3),
            Recovered {
                hard_state: HardState { term: 3, vote: 0 },
                snapshot: None,
                entries,
            },
        );
    }
    let l = c.elect();
    assert_ne!(l, 3, "node 3's log is not up to date");
    c.tick(200);
    let rejects = c
        .sent
        .iter()
        .filter(|m| matches!(m, Message::AppendResponse(r) if !r.success && r.header.from == 3 && r.header.term > 0 && r.match_index > 0))
        .count();
    assert!(rejects <= 3, "{rejects} rejections");
    let last = c.node(l).log().last_index();
    assert_eq!(c.node(3).log().last_index(), last);
    for i in 1..=last {
        let t = c.node(l).log().term(i);
        assert_eq!(c.node(3).log().term(i), t, "index {i}");
    }
}

// ----- §5.4.2 committing entries from previous terms (Figure 8) -----

#[test]
fn s5_4_2_figure8_old_term_entries_commit_only_with_a_current_term_entry() {
    // Node 1 holds 2@2, replicated to node 2 only, never committed (Figure 8 (b)/(c)).
    let c_cfg = Config {
        pre_vote: false,
        check_quorum: false,
        ..cfg()
    };
    let mut c = Cluster::empty();
    c.add(
        1,
        c_cfg.clone(),
        voters(3),
        Recovered {
            hard_state: HardState { term: 2, vote: 1 },
            snapshot: None,
            entries: vec![entry(1, 1), entry(2, 2)],
        },
    );
    c.add(
        2,
        c_cfg.clone(),
        voters(3),
        Recovered {
            hard_state: HardState { term: 2, vote: 1 },
            snapshot: None,
            entries: vec![entry(1, 1)],
        },
    );
    c.add(
        3,
        c_cfg,
        voters(3),
        Recovered {
            hard_state: HardState { term: 2, vote: 0 },
            snapshot: None,
            entries: vec![entry(1, 1)],
        },
    );
    // Node 1 campaigns in term 3; appends go nowhere yet (we play the followers by hand).
    c.cut.extend([(1, 2), (1, 3)]);
    while c.node(1).role() != Role::Candidate {
        c.now += Duration::from_millis(5);
        let now = c.now;
        c.node(1).tick(now);
        c.drain(1);
    }
    let term = c.node(1).term();
    for from in [2, 3] {
        let m = Message::VoteResponse(ringleader_wire::msg::raft::VoteResponse {
            header: hdr(from, 1, term),
            granted: true,
            pre_vote: false,
        });
        let now = c.now;
        c.node(1).step(now, m).unwrap();
    }
    c.drain(1);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(
        c.node(1).log().term(3),
        Some(term),
        "the new leader appends a no-op of its term"
    );
    // Node 2 acknowledges 2@2: a majority holds it, but it is not of the current term.
    let ack = |from, match_index| {
        Message::AppendResponse(AppendResponse {
            header: hdr(from, 1, term),
            success: true,
            match_index,
            reject_hint_index: 0,
            reject_hint_term: 0,
        })
    };
    let now = c.now;
    c.node(1).step(now, ack(2, 2)).unwrap();
    c.drain(1);
    assert_eq!(
        c.node(1).log().committed(),
        0,
        "2@2 must not commit by counting replicas (Figure 8)"
    );
    // Once the current term's no-op is on a majority, everything before it commits.
    c.node(1).step(now, ack(2, 3)).unwrap();
    c.drain(1);
    assert_eq!(c.node(1).log().committed(), 3);
}

// ----- §10.2.1 the leader writes in parallel, counting itself only once durable -----

#[test]
fn s10_2_1_leader_counts_itself_only_up_to_its_durable_index() {
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    let others: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
    c.isolate(others[1]);
    c.hold(l);
    c.propose(l, 1, 8);
    let idx = c.node(l).log().last_index();
    // The append left before the leader's own write finished.
    assert!(c.net.iter().any(
        |m| matches!(m, Message::AppendEntries(a) if a.entries.iter().any(|e| e.index == idx))
    ));
    c.deliver();
    assert!(
        c.node(l)
            .progress(others[0])
            .is_some_and(|p| p.match_index == idx)
    );
    assert!(
        c.node(l).log().committed() < idx,
        "one follower plus a non-durable leader is no majority"
    );
    c.release(l);
    assert_eq!(c.node(l).log().committed(), idx);
}

// ----- flow control -----

#[test]
fn flow_control_bounds_the_in_flight_window_in_messages_and_bytes() {
    for (msgs_max, bytes_max) in [(4usize, u64::MAX), (64, 3000)] {
        let cfg = Config {
            inflight_msgs_max: msgs_max,
            inflight_bytes_max: bytes_max,
            msg_entries_max: 8,
            ..cfg()
        };
        let mut c = Cluster::new(3, cfg);
        let l = c.elect();
        let f = if l == 1 { 2 } else { 1 };
        c.propose(l, 1, 8);
        c.tick(30);
        assert_eq!(
            c.node(l).progress(f).map(|p| p.state),
            Some(ringleader_raft::ProgressState::Replicate)
        );
        // The follower's answers are lost from now on: the leader must stop at the window.
        c.cut.insert((f, l));
        let before = c.sent.len();
        for _ in 0..20 {
            c.propose(l, 10, 200);
            c.deliver();
        }
        let appends: Vec<usize> = c.sent[before..]
            .iter()
            .filter_map(|m| match m {
                Message::AppendEntries(a) if a.header.to == f && !a.entries.is_empty() => {
                    Some(a.entries.len())
                }
                _ => None,
            })
            .collect();
        assert!(appends.iter().all(|&n| n <= 8));
        let p = c.nodes[&l].progress(f).unwrap();
        assert!(p.inflight_count() <= msgs_max);
        if bytes_max != u64::MAX {
            let msg_bytes_max = 8 * (200 + 24);
            assert!(
                p.inflight_bytes() < bytes_max + msg_bytes_max,
                "{}",
                p.inflight_bytes()
            );
            assert!(
                appends.len() <= 3000 / (200 + 24) + 1,
                "{} appends",
                appends.len()
            );
        } else {
            assert!(appends.len() <= msgs_max, "{} appends", appends.len());
        }
        // Healed, the follower catches up completely.
        c.heal();
        c.tick(500);
        assert_eq!(c.node(f).log().last_index(), c.node(l).log().last_index());
        assert_eq!(c.node(l).log().committed(), c.node(l).log().last_index());
    }
}

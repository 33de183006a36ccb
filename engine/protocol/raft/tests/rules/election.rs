//! Elections: one leader and one vote per term, the election restriction, PreVote,
//! CheckQuorum and leadership transfer.

use std::time::Duration;

use ringleader_raft::{Config, HardState, Raft, RaftError, Recovered, Role};
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::VoteRequest;

use crate::cluster::{Cluster, cfg, entry, hdr, test_rng, voters};

// ----- §5.2 leader election -----

#[test]
fn s5_2_one_leader_per_term_and_one_vote_per_term() {
    let mut c = Cluster::new(5, cfg());
    let l = c.elect();
    c.tick(500);
    assert!(c.leaders_per_term().values().all(|s| s.len() == 1));
    assert_eq!(c.leader(), Some(l), "a stable cluster keeps its leader");

    // A voter grants at most one vote per term, and only once the vote is durable.
    let mut n = Raft::new(
        Config {
            check_quorum: false,
            ..cfg()
        },
        1,
        voters(3),
        Recovered::default(),
        test_rng(1),
        Time::ZERO,
    )
    .unwrap();
    let req = |from| {
        Message::VoteRequest(VoteRequest {
            header: hdr(from, 1, 1),
            last_log_index: 0,
            last_log_term: 0,
            pre_vote: false,
            leadership_transfer: false,
        })
    };
    n.step(Time::ZERO, req(2)).unwrap();
    let rd = n.ready();
    assert_eq!(rd.hard_state, Some(HardState { term: 1, vote: 2 }));
    assert!(
        rd.messages.is_empty(),
        "a vote never leaves before it is durable"
    );
    assert!(matches!(&rd.persisted_messages[..], [Message::VoteResponse(v)] if v.granted));
    n.step(Time::ZERO, req(3)).unwrap();
    let rd = n.ready();
    assert!(matches!(&rd.messages[..], [Message::VoteResponse(v)] if !v.granted));
    // The same candidate asking again gets the same answer (a retransmission).
    n.step(Time::ZERO, req(2)).unwrap();
    assert!(matches!(&n.ready().persisted_messages[..], [Message::VoteResponse(v)] if v.granted));
}

#[test]
fn s5_2_candidate_requests_leave_after_its_own_vote_is_durable() {
    let mut c = Cluster::new(
        3,
        Config {
            pre_vote: false,
            ..cfg()
        },
    );
    c.hold(1);
    for _ in 0..100 {
        c.now += Duration::from_millis(5);
        let now = c.now;
        c.node(1).tick(now);
        c.drain(1);
        if c.node(1).role() == Role::Candidate {
            break;
        }
    }
    assert_eq!(c.node(1).role(), Role::Candidate);
    assert!(c.net.iter().all(|m| !matches!(m, Message::VoteRequest(_))));
    c.release(1);
    assert!(c.net.iter().any(|m| matches!(m, Message::VoteRequest(_))));
}

// ----- §5.4.1 election restriction -----

#[test]
fn s5_4_1_voters_refuse_candidates_with_older_logs() {
    let rec = Recovered {
        hard_state: HardState { term: 2, vote: 0 },
        snapshot: None,
        entries: vec![entry(1, 1), entry(2, 2)],
    };
    let mut n = Raft::new(
        Config {
            check_quorum: false,
            ..cfg()
        },
        1,
        voters(3),
        rec,
        test_rng(1),
        Time::ZERO,
    )
    .unwrap();
    let req = |from, last_log_index, last_log_term| {
        Message::VoteRequest(VoteRequest {
            header: hdr(from, 1, 3),
            last_log_index,
            last_log_term,
            pre_vote: false,
            leadership_transfer: false,
        })
    };
    // Longer log but older last term: refused.
    n.step(Time::ZERO, req(2, 9, 1)).unwrap();
    let rd = n.ready();
    assert!(matches!(&rd.messages[..], [Message::VoteResponse(v)] if !v.granted));
    // Same last term, shorter: refused. Same term and length: granted.
    n.step(Time::ZERO, req(3, 1, 2)).unwrap();
    assert!(matches!(&n.ready().messages[..], [Message::VoteResponse(v)] if !v.granted));
    n.step(Time::ZERO, req(3, 2, 2)).unwrap();
    assert!(matches!(&n.ready().persisted_messages[..], [Message::VoteResponse(v)] if v.granted));
}

// ----- PreVote (thesis §9.6) -----

#[test]
fn prevote_stops_a_rejoining_partitioned_node_from_disrupting() {
    for pre_vote in [true, false] {
        let mut c = Cluster::new(3, Config { pre_vote, ..cfg() });
        let l = c.elect();
        let term = c.node(l).term();
        let x = if l == 1 { 2 } else { 1 };
        c.isolate(x);
        c.tick(2000);
        c.heal();
        c.tick(300);
        if pre_vote {
            assert_eq!(c.node(x).term(), term, "pre-votes never bump the term");
            assert_eq!(c.leader(), Some(l));
            assert_eq!(c.node(l).term(), term, "the leader was not disturbed");
        } else {
            assert!(
                c.node(l).term() > term,
                "without PreVote the rejoining node forces a new term"
            );
        }
    }
}

// ----- CheckQuorum -----

#[test]
fn check_quorum_makes_a_cut_off_leader_step_down() {
    for check_quorum in [true, false] {
        let mut c = Cluster::new(
            3,
            Config {
                check_quorum,
                ..cfg()
            },
        );
        let l = c.elect();
        c.isolate(l);
        c.tick(500);
        if check_quorum {
            assert_ne!(
                c.node(l).role(),
                Role::Leader,
                "a leader that hears from no quorum steps down"
            );
            let others = c.leaders_per_term();
            assert!(
                others.iter().any(|(_, s)| !s.contains(&l)),
                "the majority side elects a new leader"
            );
        } else {
            assert_eq!(
                c.node(l).role(),
                Role::Leader,
                "without CheckQuorum it never learns"
            );
        }
    }
}

// ----- leadership transfer (thesis §3.10) -----

#[test]
fn leader_transfer_catches_the_target_up_then_hands_over() {
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    let term = c.node(l).term();
    let t = if l == 3 { 2 } else { 3 };
    c.cut.insert((l, t));
    c.propose(l, 10, 16);
    c.tick(20);
    c.heal();
    let last = c.node(l).log().last_index();
    assert!(c.node(t).log().last_index() < last, "the target lags");
    c.node(l).transfer_leader(t).unwrap();
    assert_eq!(c.node(l).propose([vec![1]]), Err(RaftError::Transferring));
    assert!(!c.node(l).lease_valid());
    c.settle();
    c.tick(50);
    assert_eq!(c.leader(), Some(t));
    assert_eq!(c.node(t).term(), term + 1);
    assert!(c.node(t).log().last_index() > last);
    assert_eq!(c.node(l).role(), Role::Follower);
    c.assert_applied_agree();
}

// ----- rejoining after a loss of state -----

/// A node that lost its state and rejoins under its old id (`catch_up_before_voting`)
/// neither votes nor campaigns until it holds what the leader committed in its own term;
/// then it takes part again. Without the setting, the same node would grant a vote to a
/// candidate whose log lacks committed entries.
#[test]
fn a_wiped_node_votes_only_after_catching_up() {
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    c.propose(l, 20, 8);
    c.tick(100);
    let committed = c.node(l).log().committed();
    assert!(committed >= 20);
    let wiped = (1..=3).find(|&i| i != l).unwrap();
    let other = (1..=3).find(|&i| i != l && i != wiped).unwrap();

    // A stale candidate's vote request (empty log, a higher term): a wiped node without the
    // setting grants it; with it, refuses.
    let stale = |to| {
        Message::VoteRequest(VoteRequest {
            header: hdr(other, to, 50),
            last_log_index: 0,
            last_log_term: 0,
            pre_vote: false,
            leadership_transfer: true,
        })
    };
    for (catch_up, granted) in [(false, true), (true, false)] {
        let mut n = Raft::new(
            Config {
                catch_up_before_voting: catch_up,
                ..cfg()
            },
            wiped,
            voters(3),
            Recovered::default(),
            test_rng(7),
            c.now,
        )
        .unwrap();
        assert_eq!(n.catching_up(), catch_up);
        n.step(c.now, stale(wiped)).unwrap();
        let rd = n.ready();
        let votes: Vec<bool> = rd
            .messages
            .iter()
            .chain(rd.persisted_messages.iter())
            .filter_map(|m| match m {
                Message::VoteResponse(v) => Some(v.granted),
                _ => None,
            })
            .collect();
        assert_eq!(votes, vec![granted], "catch_up_before_voting = {catch_up}");
        // And it never campaigns while catching up, however long it waits alone.
        if catch_up {
            for ms in (0..3000).step_by(50) {
                n.tick(c.now + Duration::from_millis(ms));
                let rd = n.ready();
                assert!(
                    !rd.messages
                        .iter()
                        .chain(rd.persisted_messages.iter())
                        .any(|m| matches!(m, Message::VoteRequest(_))),
                    "campaigned while catching up"
                );
            }
            assert_ne!(n.role(), Role::Candidate);
        }
    }

    // In the cluster: the wiped node restarts empty with the setting, catches up from the
    // leader, and then counts again.
    c.nodes.remove(&wiped);
    c.add(
        wiped,
        Config {
            catch_up_before_voting: true,
            ..cfg()
        },
        voters(3),
        Recovered::default(),
    );
    assert!(c.node(wiped).catching_up());
    c.tick(100);
    assert!(
        c.node(wiped).catching_up(),
        "two election timeouts have not passed yet"
    );
    c.tick(1000);
    assert!(!c.node(wiped).catching_up(), "caught up from the leader");
    assert!(c.node(wiped).log().committed() >= committed);
    assert_eq!(c.leader(), Some(l));
}

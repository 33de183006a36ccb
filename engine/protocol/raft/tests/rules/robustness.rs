//! Robustness: corrupt recovered state and misrouted messages are refused; an aborted
//! transfer voids the lease.

use ringleader_raft::{HardState, Raft, RaftError, Recovered, Role};
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{AppendEntries, RaftHeader};

use crate::cluster::{Cluster, cfg, entry, test_rng, voters};

// ----- robustness -----

#[test]
fn corrupt_recovered_state_and_misrouted_messages_are_refused() {
    let bad = Recovered {
        hard_state: HardState::default(),
        snapshot: None,
        entries: vec![entry(1, 1), entry(3, 1)],
    };
    assert!(matches!(
        Raft::new(cfg(), 1, voters(3), bad, test_rng(1), Time::ZERO),
        Err(RaftError::Corrupt(_))
    ));
    let mut n = Raft::new(
        cfg(),
        1,
        voters(3),
        Recovered::default(),
        test_rng(1),
        Time::ZERO,
    )
    .unwrap();
    let m = Message::AppendEntries(AppendEntries {
        header: RaftHeader {
            group: 9,
            from: 2,
            to: 1,
            term: 1,
        },
        prev_log_index: 0,
        prev_log_term: 0,
        leader_commit: 0,
        entries: vec![],
    });
    assert_eq!(n.step(Time::ZERO, m), Err(RaftError::Misrouted));
    // Entries of a term whose hard state was torn away raise the term on recovery.
    let torn = Recovered {
        hard_state: HardState { term: 1, vote: 2 },
        snapshot: None,
        entries: vec![entry(1, 1), entry(2, 4)],
    };
    let n = Raft::new(cfg(), 1, voters(3), torn, test_rng(1), Time::ZERO).unwrap();
    assert_eq!((n.term(), n.vote()), (4, 0));
}

#[test]
fn an_aborted_transfer_leaves_the_lease_void_for_the_rest_of_the_term() {
    // The TimeoutNow may still be in flight when the transfer times out: the target could
    // win an election past every follower's lease at any later moment, so the old leader
    // must not serve lease reads again in this term.
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    let t = if l == 1 { 2 } else { 1 };
    c.tick(40);
    assert!(c.node(l).lease_valid());
    c.cut.insert((l, t)); // the TimeoutNow is lost
    c.node(l).transfer_leader(t).unwrap();
    c.settle();
    c.tick(300); // the transfer aborts; heartbeats to the third node keep a quorum
    let term = c.node(l).term();
    assert_eq!(c.node(l).role(), Role::Leader);
    assert_eq!(c.node(l).transferee(), None, "the transfer timed out");
    assert!(
        !c.node(l).lease_valid(),
        "no lease reads for the rest of term {term}"
    );
    c.node(l).read_lease(5).unwrap();
    let rd = c.node(l).ready();
    assert!(
        rd.read_states.is_empty(),
        "the read falls back to a ReadIndex round"
    );
    assert!(
        rd.messages
            .iter()
            .any(|m| matches!(m, Message::Heartbeat(_)))
    );
}

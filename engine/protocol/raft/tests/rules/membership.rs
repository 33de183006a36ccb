//! Membership change: a learner catches up by a chunked snapshot, then is promoted.

use std::sync::Arc;

use ringleader_raft::{ConfChange, Config, RaftError, Recovered, Role};
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::ConfState;

use crate::cluster::{Cluster, cfg};

// ----- membership change with a learner catching up by snapshot -----

#[test]
fn learner_catches_up_by_chunked_snapshot_then_is_promoted() {
    let small = Config {
        snapshot_chunk_bytes: 256,
        ..cfg()
    };
    let mut c = Cluster::new(3, small.clone());
    let l = c.elect();
    for _ in 0..10 {
        c.propose(l, 20, 32);
        c.tick(20);
    }
    // Every node snapshots its state and compacts its log.
    for id in 1..=3 {
        let applied = c.node(id).log().applied();
        c.node(id)
            .snapshot_done(applied, Arc::from(vec![id as u8; 2000]))
            .unwrap();
    }
    assert!(
        c.node(l).log().first_index() > 100,
        "the leader's log was compacted"
    );
    c.add(
        4,
        small,
        ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            voters_outgoing: vec![],
        },
        Recovered::default(),
    );
    c.node(l)
        .change_membership(ConfChange::AddLearner(4))
        .unwrap();
    c.drain(l);
    c.tick(300);
    let chunks = c
        .sent
        .iter()
        .filter(|m| matches!(m, Message::InstallSnapshot(s) if s.header.to == 4))
        .count();
    assert!(
        chunks >= 8,
        "a 2000-byte snapshot in 256-byte chunks: {chunks}"
    );
    assert_eq!(c.snapshots_installed.get(&4), Some(&1));
    assert_eq!(c.node(4).log().last_index(), c.node(l).log().last_index());
    assert_ne!(c.node(4).role(), Role::Leader);
    assert!(c.node(4).membership().is_learner(4));
    // Promote it; the change commits and every node sees four voters.
    c.node(l)
        .change_membership(ConfChange::AddVoter(4))
        .unwrap();
    assert_eq!(
        c.node(l).change_membership(ConfChange::Remove(2)),
        Err(RaftError::BadConfChange),
        "one change at a time"
    );
    c.drain(l);
    c.tick(100);
    for id in 1..=4 {
        assert_eq!(
            c.node(id).membership().voters(),
            vec![1, 2, 3, 4],
            "node {id}"
        );
    }
    assert!(c.node(l).log().committed() >= c.node(l).log().last_index() - 1);
    // With 4 voters, two nodes down stop progress; one down does not.
    let f = (1..=4).find(|&i| i != l).unwrap();
    c.isolate(f);
    c.propose(l, 1, 8);
    c.tick(50);
    assert_eq!(c.node(l).log().committed(), c.node(l).log().last_index());
    c.assert_applied_agree();
}

//! Reads (thesis §6.4): ReadIndex and the leader lease.

use ringleader_wire::msg::Message;

use crate::cluster::{Cluster, cfg};

// ----- reads (thesis §6.4) -----

#[test]
fn read_index_waits_for_a_heartbeat_quorum() {
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    c.propose(l, 3, 8);
    c.tick(20);
    let committed = c.node(l).log().committed();
    c.node(l).read_index(7).unwrap();
    let rd = c.node(l).ready();
    assert!(
        rd.read_states.is_empty(),
        "not before a quorum confirms leadership"
    );
    assert!(
        rd.messages
            .iter()
            .any(|m| matches!(m, Message::Heartbeat(_))),
        "a heartbeat round confirms it"
    );
    c.net.extend(rd.messages);
    c.settle();
    assert!(c.reads[&l].contains(&(7, committed)));
    // A follower's read goes through the leader.
    let f = if l == 1 { 2 } else { 1 };
    c.node(f).read_index(9).unwrap();
    c.settle();
    assert!(c.reads[&f].contains(&(9, committed)));
    // A cut-off leader cannot confirm: no read state until it steps down (then refused).
    c.isolate(l);
    c.node(l).read_index(8).unwrap();
    c.settle();
    c.tick(50);
    assert!(!c.reads[&l].iter().any(|&(ctx, _)| ctx == 8));
    c.tick(500);
    assert!(
        c.reads[&l].contains(&(8, 0)),
        "refused once leadership is lost"
    );
}

#[test]
fn lease_reads_are_local_while_the_lease_holds_and_void_after_transfer() {
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    c.tick(40);
    assert!(c.node(l).lease_valid());
    let committed = c.node(l).log().committed();
    c.node(l).read_lease(1).unwrap();
    let rd = c.node(l).ready();
    assert_eq!(
        rd.read_states.first().map(|s| (s.ctx, s.index)),
        Some((1, committed))
    );
    assert!(rd.messages.is_empty(), "a lease read sends nothing");
    // Isolated past the lease: reads fall back to ReadIndex and do not complete.
    c.isolate(l);
    c.tick(120);
    assert!(!c.node(l).lease_valid());
    c.heal();
    c.tick(40);
    let l = c.elect();
    let t = if l == 1 { 2 } else { 1 };
    c.node(l).transfer_leader(t).unwrap();
    assert!(!c.node(l).lease_valid(), "a transfer voids the lease");
}

//! The deadline-driven driver: a cluster ticked only at each node's `deadline()`.

use ringleader_time::Time;

use crate::cluster::{Cluster, cfg, seen};

// ----- the deadline-driven driver -----

impl Cluster {
    /// Moves time to the earliest `deadline()` of any node and ticks exactly the nodes
    /// due then, after checking that a tick just before its deadline does nothing.
    fn tick_to_next_deadline(&mut self) {
        let next = self
            .nodes
            .values()
            .map(|r| r.deadline())
            .min()
            .expect("nodes");
        assert!(next > self.now, "a deadline in the past was left unticked");
        let just_before = Time::from_nanos(next.as_nanos() - 1);
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for &id in &ids {
            let before = seen(self.node(id));
            self.node(id).tick(just_before);
            assert_eq!(
                seen(self.node(id)),
                before,
                "node {id} acted before its deadline"
            );
        }
        self.now = next;
        for id in ids {
            if self.node(id).deadline() <= next {
                self.node(id).tick(next);
                self.drain(id);
            }
        }
        self.deliver();
    }
}

#[test]
fn a_cluster_driven_only_by_deadlines_elects_and_replicates() {
    let mut c = Cluster::new(3, cfg());
    let mut rounds = 0;
    while c.leader().is_none() {
        c.tick_to_next_deadline();
        rounds += 1;
        assert!(rounds < 100, "no leader after {rounds} deadlines");
    }
    let l = c.leader().expect("leader");
    c.propose(l, 3, 8);
    c.deliver();
    for _ in 0..20 {
        c.tick_to_next_deadline();
    }
    assert_eq!(
        c.leader(),
        Some(l),
        "heartbeats at the deadline keep the leader"
    );
    for id in 1..=3 {
        assert_eq!(
            c.applied[&id].len(),
            4,
            "node {id} applied the no-op and 3 entries"
        );
    }
    c.assert_applied_agree();
}

//! Faults: crashes and restarts (power loss with the `disk` faults), partitions, and
//! membership churn in five-node runs.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::Rng;
use ringleader_raft::ConfChange;

use super::{Ev, Faults, Node, Sim};

impl Sim {
    pub(super) fn crash(&mut self) {
        if !self.faults_on {
            return;
        }
        let n = self.nodes.len();
        let max_down = (n - 1) / 2;
        if self.down < max_down {
            let leader = self.nodes.iter().position(Node::leads);
            let i = match leader {
                Some(l) if self.rng.random_bool(0.5) => l,
                _ => self.rng.random_range(0..n),
            };
            if self.nodes[i].driver.is_some() {
                let power_loss = match self.cfg.faults {
                    Faults::Disk => true,
                    Faults::All => self.rng.random_bool(0.5),
                    _ => false,
                };
                // Now and then (all faults, no other wiped node catching up) the disk is
                // lost altogether: the node restarts empty under its old id.
                let wipe = self.cfg.faults == Faults::All
                    && !self.nodes.iter().any(|n| n.wiped)
                    && self.rng.random_bool(0.1);
                let node = &mut self.nodes[i];
                node.driver = None;
                node.unanswered.clear();
                node.batch.clear();
                node.disk.crash(power_loss, &mut self.rng);
                if wipe {
                    node.disk = super::disk::Disk::default();
                    node.wiped = true;
                    self.report.wipes += 1;
                }
                self.down += 1;
                self.report.crashes += 1;
                self.check_acked_durable();
                // Some restarts are quick enough to rejoin the same election.
                let back = if self.rng.random_bool(0.3) {
                    self.rng.random_range(5..40)
                } else {
                    self.rng.random_range(50..1500)
                };
                let id = self.nodes[i].id;
                self.sched
                    .schedule_in(Duration::from_millis(back), Ev::Restart { node: id });
            }
        }
        let next = self.rng.random_range(100..800);
        self.sched
            .schedule_in(Duration::from_millis(next), Ev::Crash);
    }

    pub(super) fn partition(&mut self) {
        if !self.faults_on {
            return;
        }
        self.blocked.clear();
        let n = self.nodes.len() as u64;
        let leader = self.nodes.iter().find(|x| x.leads()).map(|x| x.id);
        let side: BTreeSet<u64> = match (leader, self.rng.random_range(0..3)) {
            (Some(l), 0) => [l].into(),
            (_, 1) => (1..=n).filter(|_| self.rng.random_bool(0.5)).collect(),
            _ => [self.rng.random_range(1..=n)].into(),
        };
        let one_way = self.rng.random_bool(0.2);
        for a in 1..=n {
            for b in 1..=n {
                if side.contains(&a) && !side.contains(&b) {
                    self.blocked.insert((a, b));
                    if !one_way {
                        self.blocked.insert((b, a));
                    }
                }
            }
        }
        let heal = self.rng.random_range(100..1200);
        self.sched
            .schedule_in(Duration::from_millis(heal), Ev::Heal);
        let next = heal + self.rng.random_range(100..1000);
        self.sched
            .schedule_in(Duration::from_millis(next), Ev::Partition);
    }

    /// Membership churn (5-node clusters under all faults): the leader removes a voter,
    /// re-adds it as a learner (it catches up, by snapshot if compacted past it), then
    /// promotes it — one server at a time, the next step only once the last committed.
    pub(super) fn reconfig(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = self.rng.random_range(200..800);
        self.sched
            .schedule_in(Duration::from_millis(next), Ev::Reconfig);
        let Some(li) = self.nodes.iter().position(Node::leads) else {
            return;
        };
        let n = self.nodes.len() as u64;
        let pick = self.rng.random_range(1..=n);
        let Some(d) = self.nodes[li].driver.as_mut() else {
            return;
        };
        let r = d.raft();
        // Decided from the leader's own (latest) configuration, so a change that was lost
        // with a deposed leader is simply redone.
        let m = r.membership();
        let missing = (1..=n).find(|&id| !m.is_voter(id) && !m.is_learner(id));
        let learner = (1..=n).find(|&id| m.is_learner(id));
        let change = if let Some(id) = missing {
            ConfChange::AddLearner(id)
        } else if let Some(id) = learner {
            let caught_up = r
                .progress(id)
                .is_some_and(|p| p.match_index >= r.log().committed());
            if !caught_up {
                return;
            }
            ConfChange::AddVoter(id)
        } else if pick != r.id() {
            ConfChange::Remove(pick)
        } else {
            return;
        };
        let now = self.sched.now();
        if d.change_membership(now, change, &mut self.out).is_ok() {
            self.report.conf_changes += 1;
        }
        self.after_input(li);
    }
}

//! The harness around each node's production Ready driver: what its outbox holds is
//! carried out here — messages onto the simulated network, writes onto the simulated disk
//! and its syncs, snapshots stored, applied entries checked, replies back to the clients.

use std::time::Duration;

use rand::Rng;
use ringleader_raft::driver::Refusal;
use ringleader_raft::kv::{KvError, Output};
use ringleader_wire::msg::Message;

use super::disk::Write;
use super::{Ev, Reply, Sim, Token, value_of};

impl Sim {
    fn send(&mut self, m: Message) {
        let (from, to) = ringleader_raft::header_of(&m).map_or((0, 0), |h| (h.from, h.to));
        if to == 0 || to as usize > self.nodes.len() || self.blocked.contains(&(from, to)) {
            return;
        }
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            return;
        }
        let mut delay = self.rng.random_range(1..=self.delay_ms_max);
        if self.faults_on && self.cfg.faults.net() && self.rng.random_bool(0.01) {
            delay += self.rng.random_range(50..300);
        }
        if self.dup > 0.0 && self.rng.random_bool(self.dup) {
            let d2 = self.rng.random_range(1..=self.delay_ms_max * 2);
            self.sched.schedule_in(
                Duration::from_micros(d2 * 1000 + 7),
                Ev::Deliver { to, msg: m.clone() },
            );
        }
        self.sched
            .schedule_in(Duration::from_millis(delay), Ev::Deliver { to, msg: m });
    }

    pub(super) fn start_sync(&mut self, i: usize) {
        let d = &mut self.nodes[i].disk;
        if d.syncing > 0 || d.pending.is_empty() {
            return;
        }
        d.syncing = d.pending.len();
        // Mostly fast, sometimes a stall longer than a network round trip: the leader's own
        // write must not be assumed to win the race with its followers' acknowledgements.
        let lat = if self.rng.random_bool(0.15) {
            self.rng.random_range(5_000..60_000)
        } else {
            self.rng.random_range(200..3000)
        };
        let (node, incarnation) = (self.nodes[i].id, self.nodes[i].incarnation);
        self.sched
            .schedule_in(Duration::from_micros(lat), Ev::Sync { node, incarnation });
    }

    /// After a driver call on node `i`: carries out its outbox and re-arms its timer.
    pub(super) fn after_input(&mut self, i: usize) {
        self.flush(i);
        self.arm(i);
    }

    /// Carries out what node `i`'s driver put in the outbox, checking it on the way:
    /// entries to persist (log matching) go to the disk, its own snapshots are stored,
    /// messages go to the network, applied entries are checked (state-machine safety) and
    /// replies go back to the clients.
    pub(super) fn flush(&mut self, i: usize) {
        let writes = std::mem::take(&mut self.out.writes);
        for w in writes {
            self.check_entries(i, &w.entries);
            self.nodes[i].disk.push(Write {
                seq: w.seq,
                hard: w.hard_state,
                snapshot: w.snapshot,
                entries: w.entries,
            });
            self.start_sync(i);
        }
        for (_, s) in std::mem::take(&mut self.out.snapshots) {
            // Written atomically by the application, before the log is compacted past it.
            self.report.snapshots_taken += 1;
            self.nodes[i].disk.durable.install_own_snapshot(s);
        }
        for m in std::mem::take(&mut self.out.sends) {
            self.send(m);
        }
        let applied = std::mem::take(&mut self.out.applied);
        self.check_applied(i, &applied);
        self.report.snapshots_installed += std::mem::take(&mut self.out.snapshots_restored);
        if let Some(d) = self.nodes[i].driver.as_ref() {
            let failures = d.counters().snapshot_restore_failures;
            if failures > self.nodes[i].restore_failures {
                self.nodes[i].restore_failures = failures;
                self.violation(format!("node {}: a snapshot does not restore", i + 1));
            }
        }
        for (token, reply) in std::mem::take(&mut self.out.replies) {
            self.driver_reply(i, token, reply);
        }
    }

    /// One reply of node `i`'s driver, on its way back to the client.
    fn driver_reply(
        &mut self,
        i: usize,
        (client, attempt): Token,
        reply: ringleader_raft::driver::Reply<Result<Output, KvError>, Option<Vec<u8>>>,
    ) {
        use ringleader_raft::driver::Reply as R;
        let id = self.nodes[i].id;
        if self.nodes[i]
            .unanswered
            .remove(&(client, attempt))
            .is_none()
        {
            self.violation(format!(
                "node {id}: a reply to request ({client}, {attempt}), not pending there"
            ));
            return;
        }
        let reply = match reply {
            R::Applied {
                index,
                term,
                output: Ok(out),
            } => {
                self.acked_writes.push((index, term));
                Reply::Written(out)
            }
            R::Applied {
                index,
                term,
                output: Err(e),
            } => {
                self.violation(format!(
                    "node {id}: a client's command at {index}@{term} does not apply: {e}"
                ));
                return;
            }
            R::Read(v) => Reply::Value(value_of(v.as_deref())),
            R::Refused(Refusal::NotLeader(hint)) => Reply::Refused { leader_hint: hint },
            R::Refused(_) => Reply::Refused { leader_hint: 0 },
            R::Unknown => {
                self.report.ops_expired += 1;
                Reply::Unknown
            }
        };
        self.reply(client, attempt, reply);
    }

    fn reply(&mut self, client: usize, attempt: u64, reply: Reply) {
        let d = self.rng.random_range(1..=3);
        self.sched.schedule_in(
            Duration::from_millis(d),
            Ev::ToClient {
                client,
                attempt,
                reply,
            },
        );
    }
}

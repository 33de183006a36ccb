//! The invariants checked after every step: election safety, leader completeness, log
//! matching (on the entries the driver hands out to persist), state-machine safety (on the
//! entries it applied), and after a crash, that every acknowledged write is still durable
//! on a voter of every quorum.

use ringleader_raft::{Role, decode_conf};
use ringleader_wire::msg::raft::{Entry, EntryKind};

use super::{Driver, Sim, hash_of};

impl Sim {
    pub(super) fn check_step(&mut self) {
        let now = self.sched.now();
        let mut has_leader = false;
        let mut new_leaders = Vec::new();
        for n in &mut self.nodes {
            let Some(r) = n.driver.as_ref().map(Driver::raft) else {
                continue;
            };
            if r.role() == Role::Leader {
                has_leader = true;
                if n.last_role != Role::Leader {
                    new_leaders.push((n.id, r.term()));
                }
            }
            n.last_role = r.role();
            if n.wiped && !r.catching_up() {
                n.wiped = false;
            }
        }
        for (id, term) in new_leaders {
            match self.leaders.get(&term) {
                Some(&other) if other != id => self.violation(format!(
                    "election safety: nodes {other} and {id} both lead term {term}"
                )),
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                    self.report.elections += 1;
                    self.check_leader_completeness(id, term);
                }
            }
        }
        match (has_leader, self.no_leader_since) {
            (true, Some(since)) => {
                self.report.max_leader_gap_ms = self
                    .report
                    .max_leader_gap_ms
                    .max((now - since).as_millis() as u64);
                self.no_leader_since = None;
            }
            (false, None) => self.no_leader_since = Some(now),
            _ => {}
        }
    }

    fn check_leader_completeness(&mut self, id: u64, term: u64) {
        let Some(d) = self.nodes[(id - 1) as usize].driver.as_ref() else {
            return;
        };
        let log = d.raft().log();
        let mut missing = None;
        for (&index, &(t, _, commit_term)) in &self.applied {
            if commit_term >= term || index <= log.offset() {
                continue;
            }
            if log.term(index) != Some(t) {
                missing = Some((index, t));
                break;
            }
        }
        if let Some((index, t)) = missing {
            self.violation(format!(
                "leader completeness: leader {id} of term {term} lacks committed entry {index}@{t}"
            ));
        }
    }

    /// Log matching, on entries the driver hands out to persist: an (index, term) always
    /// names the same entry, following the same term.
    pub(super) fn check_entries(&mut self, i: usize, entries: &[Entry]) {
        let Some(d) = self.nodes[i].driver.as_ref() else {
            return;
        };
        let log = d.raft().log();
        let mut bad = Vec::new();
        let mut before: Option<&Entry> = None;
        for e in entries {
            let prev = match before {
                Some(b) if b.index + 1 == e.index => Some(b.term),
                _ if e.index == 1 => Some(0),
                _ => log.term(e.index - 1),
            };
            before = Some(e);
            let h = hash_of(e);
            match self.entries_seen.get(&(e.index, e.term)) {
                None => {
                    self.entries_seen.insert((e.index, e.term), (h, prev));
                }
                Some(&(h0, p0)) => {
                    if h0 != h || (p0.is_some() && prev.is_some() && p0 != prev) {
                        bad.push((e.index, e.term));
                    }
                }
            }
        }
        let id = self.nodes[i].id;
        for (index, term) in bad {
            self.violation(format!(
                "log matching: node {id} holds a different entry {index}@{term}"
            ));
        }
    }

    /// Every acknowledged (so committed) write is durable on enough voters of the latest
    /// committed configuration that every quorum of it holds one — so any future leader
    /// has it. (A majority when the voters are odd; with one-server changes an entry may
    /// commit under the next, uncommitted configuration, which only guarantees overlap.)
    pub(super) fn check_acked_durable(&mut self) {
        let voters = &self.committed_conf.1;
        // A wiped node still catching up lost its copies and takes no part in a quorum:
        // the writes need one holder fewer among the others.
        let wiped = self
            .nodes
            .iter()
            .filter(|n| n.wiped && voters.contains(&n.id))
            .count();
        let needed = (voters.len() - (voters.len() / 2 + 1) + 1)
            .saturating_sub(wiped)
            .max(1);
        let mut lost = None;
        for &(index, term) in &self.acked_writes {
            let holders = self
                .nodes
                .iter()
                .filter(|n| voters.contains(&n.id) && n.disk.durable.holds(index, term))
                .count();
            if holders < needed {
                lost = Some((index, term, holders));
                break;
            }
        }
        if let Some((index, term, holders)) = lost {
            self.violation(format!(
                "acknowledged write {index}@{term} durable on only {holders} voters after a crash"
            ));
        }
    }
    /// State-machine safety: no two nodes apply different entries at one index. Also
    /// follows the latest committed configuration (for the durability check).
    pub(super) fn check_applied(&mut self, i: usize, applied: &[(u64, Entry, u64)]) {
        let id = self.nodes[i].id;
        for (_, e, term_now) in applied {
            let h = hash_of(e);
            match self.applied.get(&e.index) {
                Some(&(t, h0, _)) if t != e.term || h0 != h => {
                    self.violation(format!(
                        "state-machine safety: node {id} applies {}@{} over {}@{t}",
                        e.index, e.term, e.index
                    ));
                }
                Some(_) => {}
                None => {
                    self.applied.insert(e.index, (e.term, h, *term_now));
                }
            }
            if e.kind == EntryKind::Config
                && e.index > self.committed_conf.0
                && let Ok(conf) = decode_conf(&e.payload)
            {
                self.committed_conf = (
                    e.index,
                    conf.voters
                        .iter()
                        .chain(&conf.voters_outgoing)
                        .copied()
                        .collect(),
                );
            }
        }
    }
}

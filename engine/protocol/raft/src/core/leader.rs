//! The leader side: appending its own entries, committing on a quorum of durable indexes,
//! replication with flow control, snapshots to followers that fell behind, heartbeats and
//! the lease, leadership transfer, and serving reads.

use std::time::Duration;

use rand::RngCore;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{
    AppendEntries, AppendResponse, Entry, EntryKind, Heartbeat, HeartbeatResponse, InstallSnapshot,
    RaftHeader, ReadIndexResponse, SnapshotResponse, TimeoutNow,
};

use super::{PendingRead, ROUND_HISTORY_MAX, Raft};
use crate::log::entry_bytes;
use crate::progress::{ProgressState, SnapshotSend};
use crate::{RaftError, ReadState};

impl<R: RngCore> Raft<R> {
    pub(super) fn append_entry(&mut self, kind: EntryKind, payload: Vec<u8>) -> u64 {
        let index = self.log.last_index() + 1;
        self.log.append([Entry {
            index,
            term: self.term,
            kind,
            payload,
        }]);
        self.after_append();
        index
    }

    /// Followers have something new to receive; a lone voter commits on its own write.
    pub(super) fn after_append(&mut self) {
        self.dirty.extend(self.progress.keys().copied());
        if self.progress.is_empty() {
            self.maybe_commit();
        }
    }
    pub(super) fn maybe_commit(&mut self) -> bool {
        let me = self.id;
        let persisted = self.log.persisted();
        let idx = self.members.committed_index(&|id| {
            if id == me {
                persisted
            } else {
                self.progress.get(&id).map_or(0, |p| p.match_index)
            }
        });
        if idx <= self.log.committed() || self.log.term(idx) != Some(self.term) {
            return false;
        }
        self.log.commit_to(idx);
        if self.commit_notice_at.is_none() && !self.progress.is_empty() {
            self.commit_notice_at =
                Some(self.now + Duration::from_micros(self.cfg.commit_notice_delay_us));
        }
        if !self.members.is_voter(self.id) && self.log.committed() >= self.conf_index {
            self.become_follower(self.term, 0);
        }
        true
    }

    pub(super) fn handle_append_response(&mut self, r: AppendResponse) {
        let from = r.header.from;
        let last = self.log.last_index();
        let retry_from = if r.success {
            0
        } else if r.reject_hint_term > 0 {
            self.log
                .find_conflict_by_term(r.reject_hint_index, r.reject_hint_term)
                .0
                + 1
        } else {
            r.reject_hint_index + 1
        };
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if !r.success {
            if r.reject_hint_index < pr.match_index && pr.state != ProgressState::Snapshot {
                // The follower's log now ends before what it acknowledged: its storage was
                // wiped or replaced (or this rejection is older than those
                // acknowledgements). Probe again from where it says its log ends; what is
                // committed stays committed (the commit index never moves back), only
                // where to send from changes.
                pr.match_index = r.reject_hint_index;
                pr.become_probe();
                pr.next_index = retry_from.clamp(1, pr.match_index + 1);
                self.dirty.insert(from);
                return;
            }
            if pr.maybe_decrease(r.match_index, retry_from) {
                self.dirty.insert(from);
            }
            return;
        }
        if r.match_index > last {
            return; // claims entries we never sent
        }
        if pr.maybe_update(r.match_index) {
            match pr.state {
                ProgressState::Probe => pr.become_replicate(),
                ProgressState::Replicate => pr.free_to(r.match_index),
                ProgressState::Snapshot => {
                    if pr
                        .snapshot
                        .as_ref()
                        .is_none_or(|s| pr.match_index >= s.index)
                    {
                        pr.become_probe();
                    }
                }
            }
            let caught_up = pr.match_index == last;
            self.maybe_commit();
            if caught_up && self.transferee.is_some_and(|(t, _)| t == from) {
                self.send_timeout_now(from);
            }
        }
        self.dirty.insert(from);
    }

    pub(super) fn handle_heartbeat_response(&mut self, r: HeartbeatResponse) {
        let from = r.header.from;
        let (max_msgs, max_bytes) = (self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.acked_round = pr.acked_round.max(r.ctx.min(self.round));
        match pr.state {
            ProgressState::Probe => pr.paused = false,
            ProgressState::Replicate => {
                if pr.is_full(max_msgs, max_bytes) {
                    pr.free_first();
                }
                if pr.match_index < last && pr.match_index == pr.match_at_heartbeat {
                    pr.tail_probe = true;
                }
            }
            _ => {}
        }
        pr.match_at_heartbeat = pr.match_index;
        if pr.match_index < last {
            self.dirty.insert(from);
        }
        self.advance_reads();
    }

    pub(super) fn handle_snapshot_response(&mut self, r: SnapshotResponse) {
        let from = r.header.from;
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        let Some(s) = pr.snapshot.as_mut() else {
            return;
        };
        let len = s.data.len() as u64;
        if r.success && r.next_offset >= len {
            pr.match_index = pr.match_index.max(s.index);
            pr.become_probe();
            self.dirty.insert(from);
            self.maybe_commit();
            return;
        }
        if r.next_offset == s.offset && r.success {
            return; // duplicate answer
        }
        s.offset = r.next_offset.min(len);
        self.send_snapshot_chunk(from);
    }

    pub(super) fn send_timeout_now(&mut self, to: u64) {
        // The target campaigns past every follower's lease: ours is void for this term.
        self.lease_disabled = true;
        self.msgs.push(Message::TimeoutNow(TimeoutNow {
            header: self.hdr(to, self.term),
        }));
    }

    /// Sends what the follower's state allows: pipelined appends in Replicate, one probe in
    /// Probe, a commit-only append when the follower's commit index lags.
    pub(super) fn send_appends(&mut self, id: u64) {
        let (max_msgs, max_bytes) = (self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
        let committed = self.log.committed();
        let last = self.log.last_index();
        let term = self.term;
        loop {
            let Some(pr) = self.progress.get_mut(&id) else {
                return;
            };
            match pr.state {
                ProgressState::Snapshot => return,
                ProgressState::Probe if pr.paused => break,
                ProgressState::Replicate if pr.is_full(max_msgs, max_bytes) => break,
                _ => {}
            }
            if pr.state == ProgressState::Replicate && pr.next_index > last {
                break;
            }
            let prev = pr.next_index - 1;
            let Some(prev_term) = self.log.term(prev) else {
                self.start_snapshot(id);
                return;
            };
            let entries = self.log.slice(
                prev + 1,
                last,
                self.cfg.msg_entries_max,
                self.cfg.msg_bytes_max,
            );
            let bytes: u64 = entries.iter().map(entry_bytes).sum();
            let sent_last = prev + entries.len() as u64;
            let n = entries.len();
            match pr.state {
                ProgressState::Replicate => pr.sent(sent_last, bytes),
                _ => pr.paused = true,
            }
            pr.sent_commit = committed;
            let header = RaftHeader {
                group: self.cfg.group,
                from: self.id,
                to: id,
                term,
            };
            self.msgs.push(Message::AppendEntries(AppendEntries {
                header,
                prev_log_index: prev,
                prev_log_term: prev_term,
                leader_commit: committed,
                entries,
            }));
            if n == 0 || pr.state != ProgressState::Replicate {
                return;
            }
        }
        let Some(pr) = self.progress.get_mut(&id) else {
            return;
        };
        if pr.tail_probe && pr.state == ProgressState::Replicate {
            pr.tail_probe = false;
            let prev = pr.next_index - 1;
            if let Some(prev_term) = self.log.term(prev) {
                pr.sent_commit = committed;
                let header = self.hdr(id, term);
                self.msgs
                    .push(empty_append(header, prev, prev_term, committed));
            }
        }
    }

    /// Tells a follower whose commit index lags the leader's, with nothing else to send it,
    /// the commit index: an empty append whose previous index it is known to hold (so
    /// reordering cannot make it reject).
    pub(super) fn send_commit_notice(&mut self, id: u64) {
        let committed = self.log.committed();
        let term = self.term;
        let Some(pr) = self.progress.get_mut(&id) else {
            return;
        };
        if pr.sent_commit < committed && pr.match_index > 0 && pr.state != ProgressState::Snapshot {
            let prev = pr.match_index;
            let Some(prev_term) = self.log.term(prev) else {
                return;
            };
            pr.sent_commit = committed;
            let header = self.hdr(id, term);
            self.msgs
                .push(empty_append(header, prev, prev_term, committed));
        }
    }

    fn start_snapshot(&mut self, id: u64) {
        let Some(snap) = self.snapshot.as_ref() else {
            return;
        };
        let send = SnapshotSend {
            index: snap.index,
            term: snap.term,
            conf: snap.conf.clone(),
            data: snap.data.clone(),
            offset: 0,
            sent_at: self.now,
        };
        let Some(pr) = self.progress.get_mut(&id) else {
            return;
        };
        pr.become_snapshot(send);
        self.send_snapshot_chunk(id);
    }

    pub(super) fn send_snapshot_chunk(&mut self, id: u64) {
        let chunk = self.cfg.snapshot_chunk_bytes.max(1);
        let header = self.hdr(id, self.term);
        let now = self.now;
        let Some(s) = self.progress.get_mut(&id).and_then(|p| p.snapshot.as_mut()) else {
            return;
        };
        let len = s.data.len();
        let start = (s.offset as usize).min(len);
        let end = start.saturating_add(chunk).min(len);
        s.sent_at = now;
        self.msgs.push(Message::InstallSnapshot(InstallSnapshot {
            header,
            last_included_index: s.index,
            last_included_term: s.term,
            conf: s.conf.clone(),
            offset: start as u64,
            total_bytes: len as u64,
            data: s.data[start..end].to_vec(),
            done: end == len,
        }));
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        self.read_round_needed = false;
        self.round += 1;
        self.round_sent.push_back((self.round, self.now));
        if self.round_sent.len() > ROUND_HISTORY_MAX {
            self.round_sent.pop_front();
        }
        let committed = self.log.committed();
        let term = self.term;
        for (&id, pr) in &self.progress {
            self.msgs.push(Message::Heartbeat(Heartbeat {
                header: RaftHeader {
                    group: self.cfg.group,
                    from: self.id,
                    to: id,
                    term,
                },
                commit: committed.min(pr.match_index),
                ctx: self.round,
            }));
        }
        self.advance_reads();
    }

    pub(super) fn leader_read(&mut self, ctx: u64, from: u64) -> Result<(), RaftError> {
        let committed = self.log.committed();
        if self.log.term(committed) != Some(self.term) {
            return Err(RaftError::NotReady);
        }
        if self.pending_reads.len() >= self.cfg.pending_reads_max {
            return Err(RaftError::TooManyReads);
        }
        self.pending_reads.push_back(PendingRead {
            ctx,
            from,
            index: committed,
            round: self.round + 1,
        });
        self.read_round_needed = true;
        if self.members.voters() == [self.id] {
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    fn advance_reads(&mut self) {
        let me = self.id;
        let round = self.round;
        let quorum_round = self.members.committed_index(&|id| {
            if id == me {
                round
            } else {
                self.progress.get(&id).map_or(0, |p| p.acked_round)
            }
        });
        if quorum_round > self.lease_round {
            self.lease_round = quorum_round;
            if let Some(&(_, sent)) = self.round_sent.iter().find(|(r, _)| *r == quorum_round) {
                let ms =
                    self.cfg.election_timeout_ms.saturating_mul(
                        1000u64.saturating_sub(self.cfg.lease_clock_drift_permille),
                    ) / 1000;
                self.lease_until = self.lease_until.max(sent + Duration::from_millis(ms));
            }
        }
        while let Some(r) = self.pending_reads.front() {
            if r.round > quorum_round {
                break;
            }
            let Some(r) = self.pending_reads.pop_front() else {
                break;
            };
            if r.from == self.id {
                self.read_states.push(ReadState {
                    ctx: r.ctx,
                    index: r.index,
                });
            } else {
                self.msgs
                    .push(Message::ReadIndexResponse(ReadIndexResponse {
                        header: self.hdr(r.from, self.term),
                        ctx: r.ctx,
                        index: r.index,
                    }));
            }
        }
    }
}

/// An AppendEntries without entries: it carries the commit index (and probes `prev`).
fn empty_append(header: RaftHeader, prev: u64, prev_term: u64, commit: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        header,
        prev_log_index: prev,
        prev_log_term: prev_term,
        leader_commit: commit,
        entries: Vec::new(),
    })
}

//! What the leader knows about each follower: how far it matches, what to send next, and
//! the bounded window of appends in flight (etcd's Progress and Inflights).

use std::collections::VecDeque;
use std::sync::Arc;

use ringleader_time::Time;

/// How the leader replicates to a follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressState {
    /// Unknown match: one append at a time until the follower accepts one.
    Probe,
    /// Known match: appends are pipelined within the in-flight window.
    Replicate,
    /// The follower needs a snapshot (its next entry was compacted away).
    Snapshot,
}

/// A snapshot transfer in progress to one follower.
#[derive(Debug, Clone)]
pub struct SnapshotSend {
    /// Last index covered.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Membership as of the snapshot.
    pub conf: ringleader_wire::msg::raft::ConfState,
    /// The snapshot bytes (shared with the node's current snapshot).
    pub data: Arc<[u8]>,
    /// Offset of the chunk in flight.
    pub offset: u64,
    /// When that chunk was sent (resent if no answer within an election timeout).
    pub sent_at: Time,
}

/// Replication state of one follower.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Highest index known to be durable on the follower and matching the leader's log.
    pub match_index: u64,
    /// Next index to send.
    pub next_index: u64,
    /// Replication state.
    pub state: ProgressState,
    /// In Probe: an append is outstanding, wait for its answer (or a heartbeat answer).
    pub paused: bool,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// Highest heartbeat round acknowledged.
    pub acked_round: u64,
    /// The commit index sent last (to know when an empty append must carry a new one).
    pub sent_commit: u64,
    /// Appends in flight: (last index, bytes), oldest first.
    inflight: VecDeque<(u64, u64)>,
    inflight_bytes: u64,
    /// Snapshot transfer in progress.
    pub snapshot: Option<SnapshotSend>,
    /// The match index at the previous heartbeat answer (no progress between two answers
    /// while behind means appends were lost).
    pub match_at_heartbeat: u64,
    /// Send an empty append at `next_index - 1`: the follower rejects it if appends were
    /// lost, which sends it back to probing (etcd's answer to a lost pipelined append).
    pub tail_probe: bool,
}

impl Progress {
    /// A follower about which nothing is known; probing starts at `next_index`.
    pub fn new(next_index: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            paused: false,
            recent_active: false,
            acked_round: 0,
            sent_commit: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            snapshot: None,
            match_at_heartbeat: 0,
            tail_probe: false,
        }
    }

    /// Switches to probing from `match_index + 1`.
    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot
            && let Some(s) = self.snapshot.take()
        {
            self.next_index = self.match_index.max(s.index) + 1;
        } else {
            self.next_index = self.match_index + 1;
        }
        self.state = ProgressState::Probe;
        self.paused = false;
        self.clear_inflight();
    }

    /// Switches to pipelined replication.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.paused = false;
        self.clear_inflight();
    }

    /// Switches to sending `snap`.
    pub fn become_snapshot(&mut self, snap: SnapshotSend) {
        self.state = ProgressState::Snapshot;
        self.paused = false;
        self.clear_inflight();
        self.snapshot = Some(snap);
    }

    fn clear_inflight(&mut self) {
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// Records an accepted append up to `index`; returns whether the match moved.
    pub fn maybe_update(&mut self, index: u64) -> bool {
        let moved = index > self.match_index;
        if moved {
            self.match_index = index;
        }
        self.next_index = self.next_index.max(index + 1);
        self.paused = false;
        moved
    }

    /// Handles a rejection of the append whose previous index was `rejected`; `retry_from`
    /// is where the fast back-off says to probe next. Returns false for a stale rejection.
    pub fn maybe_decrease(&mut self, rejected: u64, retry_from: u64) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.match_index {
                    return false; // stale: that append was already answered
                }
                self.become_probe();
                self.next_index = retry_from.max(self.match_index + 1);
                true
            }
            ProgressState::Probe => {
                if rejected + 1 != self.next_index {
                    return false; // an answer to an older probe
                }
                self.next_index = retry_from.max(self.match_index + 1).min(rejected.max(1));
                self.paused = false;
                true
            }
            ProgressState::Snapshot => false,
        }
    }

    /// Records an append of `last` index and `bytes` sent in Replicate state.
    pub fn sent(&mut self, last: u64, bytes: u64) {
        self.inflight.push_back((last, bytes));
        self.inflight_bytes += bytes;
        self.next_index = last + 1;
    }

    /// Frees the window of every append up to `index`.
    pub fn free_to(&mut self, index: u64) {
        while let Some(&(last, bytes)) = self.inflight.front() {
            if last > index {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
    }

    /// Frees the oldest append (a heartbeat answer shows the follower is alive, etcd-style,
    /// so a full window whose answers were lost cannot stall replication forever).
    pub fn free_first(&mut self) {
        if let Some((_, bytes)) = self.inflight.pop_front() {
            self.inflight_bytes -= bytes;
        }
    }

    /// Appends in flight.
    pub fn inflight_count(&self) -> usize {
        self.inflight.len()
    }

    /// Bytes in flight.
    pub fn inflight_bytes(&self) -> u64 {
        self.inflight_bytes
    }

    /// Whether the window is full.
    pub fn is_full(&self, max_msgs: usize, max_bytes: u64) -> bool {
        self.inflight.len() >= max_msgs || self.inflight_bytes >= max_bytes
    }
}

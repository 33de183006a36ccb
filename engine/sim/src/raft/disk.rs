//! A simulated disk for one Raft node: writes queue up and become durable only when an
//! fsync covering them completes. A process crash keeps every issued write (the page cache
//! survives); a power loss keeps only a random prefix of the un-synced writes — most often
//! none — and may tear the write after that prefix (part of its entries reach the platter,
//! recovery's checksums drop the rest; the hard state and snapshot files are replaced
//! atomically, so a torn write keeps their old versions).
//!
//! Each write carries the driver's sequence number ([`ringleader_raft::driver::GroupWrite`]'s
//! `seq`): a completed fsync says which one it covers last, and that is what the node
//! reports to its driver as durable. The disk never holds messages: the driver keeps those
//! until it hears the write they follow is durable.

use std::collections::VecDeque;

use rand::Rng;
use ringleader_raft::{HardState, Recovered, Snapshot};
use ringleader_wire::msg::raft::Entry;

use crate::SimRng;

/// One write: what the driver asked to persist.
#[derive(Debug, Default)]
pub struct Write {
    /// The driver's sequence number of this write (increasing per incarnation).
    pub seq: u64,
    /// New term and vote.
    pub hard: Option<HardState>,
    /// A snapshot received from the leader.
    pub snapshot: Option<Snapshot>,
    /// Entries; the first index replaces the log from there.
    pub entries: Vec<Entry>,
}

/// The durable state.
#[derive(Debug, Clone, Default)]
pub struct Durable {
    /// Term and vote.
    pub hard: HardState,
    /// Latest snapshot.
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, contiguous.
    pub log: Vec<Entry>,
}

impl Durable {
    fn snap_index(&self) -> u64 {
        self.snapshot.as_ref().map_or(0, |s| s.index)
    }

    /// The term of the durable entry at `index`, if any.
    pub fn term(&self, index: u64) -> Option<u64> {
        let first = self.snap_index() + 1;
        if index < first {
            return None;
        }
        self.log.get((index - first) as usize).map(|e| e.term)
    }

    /// Last durable entry (index, term), or the snapshot's.
    pub fn last(&self) -> (u64, u64) {
        match self.log.last() {
            Some(e) => (e.index, e.term),
            None => self.snapshot.as_ref().map_or((0, 0), |s| (s.index, s.term)),
        }
    }

    /// Whether the effect of entry (`index`, `term`) survives here.
    pub fn holds(&self, index: u64, term: u64) -> bool {
        self.snap_index() >= index || self.term(index) == Some(term)
    }

    fn apply(&mut self, w: &Write, entries_kept: usize) {
        if let Some(h) = w.hard {
            self.hard = h;
        }
        if let Some(s) = &w.snapshot
            && s.index > self.snap_index()
        {
            let keep = self.term(s.index) == Some(s.term);
            let old_first = self.snap_index() + 1;
            if keep {
                self.log.drain(..(s.index + 1 - old_first) as usize);
            } else {
                self.log.clear();
            }
            self.snapshot = Some(s.clone());
        }
        for e in w.entries.iter().take(entries_kept) {
            let first = self.snap_index() + 1;
            if e.index < first {
                continue;
            }
            let at = (e.index - first) as usize;
            if at > self.log.len() {
                break; // would leave a gap: recovery could not read past it
            }
            self.log.truncate(at);
            self.log.push(e.clone());
        }
    }

    /// Installs a snapshot the application wrote atomically, dropping the log it covers.
    pub fn install_own_snapshot(&mut self, s: Snapshot) {
        if s.index <= self.snap_index() {
            return;
        }
        let old_first = self.snap_index() + 1;
        let n = ((s.index + 1).saturating_sub(old_first) as usize).min(self.log.len());
        self.log.drain(..n);
        self.snapshot = Some(s);
    }
}

/// A disk with a queue of un-synced writes and at most one fsync in flight.
#[derive(Debug, Default)]
pub struct Disk {
    /// What survives any crash.
    pub durable: Durable,
    /// Issued, not yet synced.
    pub pending: VecDeque<Write>,
    /// Writes covered by the fsync in flight (a prefix of `pending`).
    pub syncing: usize,
}

impl Disk {
    /// Queues a write.
    pub fn push(&mut self, w: Write) {
        self.pending.push_back(w);
    }

    /// Completes the fsync in flight: its writes become durable. Returns the sequence
    /// number of the last one (None if it covered none).
    pub fn complete_sync(&mut self) -> Option<u64> {
        let mut last = None;
        for _ in 0..self.syncing {
            let Some(w) = self.pending.pop_front() else {
                break;
            };
            self.durable.apply(&w, w.entries.len());
            last = Some(w.seq);
        }
        self.syncing = 0;
        last
    }

    /// A crash. `power_loss`: un-synced writes are lost (a random prefix may survive and
    /// the write after it may be torn); otherwise every issued write survives.
    pub fn crash(&mut self, power_loss: bool, rng: &mut SimRng) {
        let pending: Vec<Write> = self.pending.drain(..).collect();
        self.syncing = 0;
        if !power_loss {
            for w in &pending {
                self.durable.apply(w, w.entries.len());
            }
            return;
        }
        let kept = if rng.random_bool(0.5) {
            0
        } else {
            rng.random_range(0..=pending.len())
        };
        for w in &pending[..kept] {
            self.durable.apply(w, w.entries.len());
        }
        if let Some(w) = pending.get(kept)
            && rng.random_bool(0.5)
            && !w.entries.is_empty()
        {
            let torn = Write {
                seq: w.seq,
                hard: None,
                snapshot: None,
                entries: w.entries.clone(),
            };
            let n = rng.random_range(0..w.entries.len());
            self.durable.apply(&torn, n);
        }
    }

    /// What a restart reads back.
    pub fn recover(&self) -> Recovered {
        Recovered {
            hard_state: self.durable.hard,
            snapshot: self.durable.snapshot.clone(),
            entries: self.durable.log.clone(),
        }
    }
}

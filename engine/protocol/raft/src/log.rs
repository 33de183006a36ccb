//! The in-memory Raft log: a compaction point (the entry before the first one kept), the
//! entries after it, and the cursors that split it into stable, committed and applied parts.
//!
//! It never does IO and never depends on the write-ahead log: the caller persists what
//! [`super::Ready`] hands out and reports durability back with `persisted(index, term)`.

use std::collections::VecDeque;

use ringleader_wire::msg::raft::Entry;

use super::RaftError;

/// Bytes an entry counts for in flow control: its payload plus index, term and kind.
pub fn entry_bytes(e: &Entry) -> u64 {
    e.payload.len() as u64 + 24
}

/// The log of one Raft node.
#[derive(Debug, Clone)]
pub struct RaftLog {
    /// Index of the entry just before `entries[0]` (0, or the last compacted index).
    offset: u64,
    /// Term of the entry at `offset` (0 for index 0).
    offset_term: u64,
    entries: VecDeque<Entry>,
    /// Highest index known durable on this node (may lag; never claims more than disk has).
    persisted: u64,
    /// First index not yet handed out to be persisted.
    unstable_from: u64,
    /// Highest index known committed.
    committed: u64,
    /// Highest index handed out to be applied.
    applying: u64,
    /// Highest index the application reported applied.
    applied: u64,
}

impl RaftLog {
    /// A log whose entries start after `offset` (with term `offset_term`): `entries` must be
    /// contiguous from `offset + 1` and are all durable.
    pub fn new(offset: u64, offset_term: u64, entries: Vec<Entry>) -> RaftLog {
        let len = entries.len() as u64;
        RaftLog {
            offset,
            offset_term,
            entries: entries.into(),
            persisted: offset + len,
            unstable_from: offset + len + 1,
            committed: offset,
            applying: offset,
            applied: offset,
        }
    }

    /// Index of the first entry held in memory.
    pub fn first_index(&self) -> u64 {
        self.offset + 1
    }

    /// The compaction point (the index before the first entry held).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Index of the last entry (the compaction point when empty).
    pub fn last_index(&self) -> u64 {
        self.offset + self.entries.len() as u64
    }

    /// Term of the last entry.
    pub fn last_term(&self) -> u64 {
        self.entries.back().map_or(self.offset_term, |e| e.term)
    }

    /// Term of the entry at `index`, if known (`None` when compacted away or beyond the end).
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        self.get(index).map(|e| e.term)
    }

    /// The entry at `index`, if held.
    pub fn get(&self, index: u64) -> Option<&Entry> {
        if index <= self.offset {
            return None;
        }
        let at = usize::try_from(index - self.offset - 1).ok()?;
        self.entries.get(at)
    }

    /// Highest durable index.
    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// Highest committed index.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Highest index handed out to apply.
    pub fn applying(&self) -> u64 {
        self.applying
    }

    /// Highest applied index.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up to date as this
    /// one (§5.4.1).
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends entries created by the leader (contiguous after the last index).
    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for e in entries {
            assert_eq!(
                e.index,
                self.last_index() + 1,
                "leader appends are contiguous"
            );
            self.entries.push_back(e);
        }
    }

    /// Follower append (§5.3): if the entry at `prev_index` has `prev_term`, drops any
    /// conflicting suffix, appends what is new and returns the index of the last entry of
    /// the message; `Ok(None)` when the log does not match at `prev_index`. Entries that do
    /// not follow `prev_index` one by one, or that contradict a committed entry, are refused
    /// with [`RaftError::Malformed`] and leave the log as it was.
    pub fn maybe_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry>,
    ) -> Result<Option<u64>, RaftError> {
        let mut expect = prev_index;
        for e in &entries {
            expect = expect
                .checked_add(1)
                .filter(|&i| i == e.index)
                .ok_or(RaftError::Malformed("entries do not follow prev_log_index"))?;
            if e.index <= self.committed && self.term(e.index).is_some_and(|t| t != e.term) {
                return Err(RaftError::Malformed("entries contradict a committed entry"));
            }
        }
        if self.term(prev_index) != Some(prev_term) {
            return Ok(None);
        }
        let last_new = expect;
        for e in entries {
            if e.index <= self.offset {
                continue;
            }
            match self.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    self.truncate_from(e.index);
                    self.entries.push_back(e);
                }
                None => self.entries.push_back(e),
            }
        }
        Ok(Some(last_new.min(self.last_index())))
    }

    /// The index of the first of `entries` whose term differs from the entry held there
    /// (what a matching [`RaftLog::maybe_append`] would truncate from).
    pub fn first_conflict(&self, entries: &[Entry]) -> Option<u64> {
        entries
            .iter()
            .find(|e| self.term(e.index).is_some_and(|t| t != e.term))
            .map(|e| e.index)
    }

    /// Drops every entry from `index` on, rewinding the durable and unstable cursors.
    pub fn truncate_from(&mut self, index: u64) {
        assert!(
            index > self.offset,
            "cannot truncate below the compaction point"
        );
        let keep = usize::try_from(index - self.offset - 1).unwrap_or(usize::MAX);
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(index - 1);
        self.unstable_from = self.unstable_from.min(index);
    }

    /// For fast back-off: the largest index `<= index` whose term is `<= term`, with its
    /// term; the compaction point when nothing held qualifies.
    pub fn find_conflict_by_term(&self, index: u64, term: u64) -> (u64, u64) {
        let mut i = index.min(self.last_index());
        while i > self.offset {
            let t = self.term(i).unwrap_or(0);
            if t <= term {
                return (i, t);
            }
            i -= 1;
        }
        (self.offset, self.offset_term)
    }

    /// Raises the commit index (never lowers it).
    pub fn commit_to(&mut self, index: u64) {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
        }
    }

    /// Records durability up to `index` if the entry there still has `term` (a notice for
    /// entries since overwritten is ignored). Returns whether the cursor moved.
    pub fn persisted_to(&mut self, index: u64, term: u64) -> bool {
        if index <= self.persisted || index >= self.unstable_from || self.term(index) != Some(term)
        {
            return false;
        }
        self.persisted = index;
        true
    }

    /// Takes the entries not yet handed out to be persisted.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let from = self.unstable_from.max(self.first_index());
        let out: Vec<Entry> = (from..=self.last_index())
            .filter_map(|i| self.get(i).cloned())
            .collect();
        self.unstable_from = self.last_index().saturating_add(1);
        out
    }

    /// Whether there are entries to hand out for persistence.
    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Takes up to `max` committed entries not yet handed out to apply.
    pub fn take_committed(&mut self, max: usize) -> Vec<Entry> {
        let hi = self.committed.min(
            self.applying
                .saturating_add(u64::try_from(max).unwrap_or(u64::MAX)),
        );
        let out: Vec<Entry> = (self.applying + 1..=hi)
            .filter_map(|i| self.get(i).cloned())
            .collect();
        self.applying = hi;
        out
    }

    /// Whether committed entries wait to be handed out.
    pub fn has_committed(&self) -> bool {
        self.committed > self.applying
    }

    /// Records that the application applied up to `index`.
    pub fn applied_to(&mut self, index: u64) {
        if index > self.applied && index <= self.applying {
            self.applied = index;
        }
    }

    /// Clones entries `lo..=hi`, stopping after `max_entries` or once `max_bytes` is passed
    /// (at least one entry when any is in range).
    pub fn slice(&self, lo: u64, hi: u64, max_entries: usize, max_bytes: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut i = lo.max(self.first_index());
        while i <= hi.min(self.last_index()) && out.len() < max_entries {
            let Some(e) = self.get(i) else { break };
            let b = entry_bytes(e);
            if !out.is_empty() && bytes + b > max_bytes {
                break;
            }
            bytes += b;
            out.push(e.clone());
            i += 1;
        }
        out
    }

    /// Drops entries up to `index` (which must be applied and durable).
    pub fn compact_to(&mut self, index: u64) {
        if index <= self.offset {
            return;
        }
        assert!(
            index <= self.applied && index <= self.persisted,
            "compact only applied, durable entries"
        );
        let term = self.term(index).unwrap_or(self.offset_term);
        let n = usize::try_from(index - self.offset).unwrap_or(usize::MAX);
        self.entries.drain(..n.min(self.entries.len()));
        self.offset = index;
        self.offset_term = term;
    }

    /// Installs a snapshot ending at (`index`, `term`): keeps the suffix when the log
    /// matches there, otherwise drops the whole log. Everything up to `index` counts as
    /// committed and applied (the application restores its state from the snapshot).
    pub fn restore(&mut self, index: u64, term: u64) {
        if self.term(index) == Some(term) && index >= self.offset {
            let n = usize::try_from(index - self.offset).unwrap_or(usize::MAX);
            self.entries.drain(..n.min(self.entries.len()));
            self.persisted = self.persisted.min(index);
        } else {
            self.entries.clear();
            self.persisted = 0;
            self.unstable_from = index.saturating_add(1);
        }
        self.offset = index;
        self.offset_term = term;
        self.unstable_from = self.unstable_from.max(index.saturating_add(1));
        self.committed = self.committed.max(index);
        self.applying = self.applying.max(index);
        self.applied = self.applied.max(index);
    }

    /// Iterates over the held entries.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Entry> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringleader_wire::msg::raft::EntryKind;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            payload: vec![],
        }
    }

    #[test]
    fn follower_append_truncates_conflicts_only() {
        let mut log = RaftLog::new(0, 0, vec![e(1, 1), e(2, 1), e(3, 2)]);
        assert_eq!(
            log.maybe_append(1, 1, vec![e(2, 1), e(3, 3), e(4, 3)]),
            Ok(Some(4))
        );
        assert_eq!(log.term(3), Some(3));
        assert_eq!(log.persisted(), 2);
        assert_eq!(log.maybe_append(4, 2, vec![]), Ok(None));
        // A stale, shorter message does not truncate matching entries.
        assert_eq!(log.maybe_append(1, 1, vec![e(2, 1)]), Ok(Some(2)));
        assert_eq!(log.last_index(), 4);
        assert_eq!(log.find_conflict_by_term(4, 2), (2, 1));
    }

    #[test]
    fn persisted_notice_for_overwritten_entries_is_ignored() {
        let mut log = RaftLog::new(0, 0, vec![]);
        log.append([e(1, 1), e(2, 1)]);
        let _ = log.take_unstable();
        assert!(matches!(log.maybe_append(1, 1, vec![e(2, 2)]), Ok(Some(_))));
        let _ = log.take_unstable();
        assert!(!log.persisted_to(2, 1));
        assert!(log.persisted_to(2, 2));
        assert_eq!(log.persisted(), 2);
    }

    #[test]
    fn follower_append_refuses_gaps_and_committed_conflicts_unchanged() {
        let mut log = RaftLog::new(0, 0, vec![e(1, 1), e(2, 1), e(3, 2)]);
        log.commit_to(2);
        let before = (log.last_index(), log.last_term(), log.committed());
        for (prev, prev_term, entries) in [
            (1, 1, vec![e(3, 2)]),          // a gap after prev
            (1, 1, vec![e(2, 1), e(2, 1)]), // an index repeated
            (u64::MAX, 1, vec![e(0, 1)]),   // prev + 1 overflows
            (0, 0, vec![e(1, 1), e(2, 5)]), // rewrites committed 2@1
        ] {
            assert!(matches!(
                log.maybe_append(prev, prev_term, entries),
                Err(RaftError::Malformed(_))
            ));
            assert_eq!((log.last_index(), log.last_term(), log.committed()), before);
        }
    }
}

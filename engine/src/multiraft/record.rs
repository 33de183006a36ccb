//! The records of a shard's write-ahead log, shared by every Raft group of the shard, and
//! the replay that rebuilds each group's durable state from them. Pure functions: no IO.
//!
//! The shard's [`crate::log::Log`] numbers its records 1, 2, 3, ... (the log sequence
//! number, LSN) and checksums each one; a record's payload is one of:
//!
//! ```text
//! write:      u8 1 | u64 group | u8 flags | [u64 term | u64 vote]   (flags & 1: hard state)
//!                  | u32 count | count × (u64 index | u64 term | u8 kind | u32 len | payload)
//! hard state: u8 2 | u64 group | u64 term | u64 vote            (a checkpoint: see storage)
//! ```
//!
//! All integers little-endian. One group write (hard state and entries of one `Ready`)
//! becomes one record, or several when its entries exceed a record's size, the hard state
//! in the first. Entries in a record replace the group's log from their first index on.
//!
//! Decoding treats the bytes as untrusted (a checksum can collide): every length is checked
//! before it is used, and a record that does not decode is refused with the reason, never a
//! panic.

use std::collections::BTreeMap;

use ringleader_wire::msg::raft::{Entry, EntryKind};

use crate::raft::HardState;

const TAG_WRITE: u8 = 1;
const TAG_HARD_STATE: u8 = 2;
const FLAG_HARD_STATE: u8 = 1;
/// Bytes of a write record before its entries.
pub const WRITE_HEADER_BYTES: usize = 1 + 8 + 1 + 16 + 4;
/// Bytes of an entry's header inside a write record.
pub const ENTRY_HEADER_BYTES: usize = 8 + 8 + 1 + 4;

/// A decoded record, borrowing the payloads of its entries.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// Hard state and/or entries of one group.
    Write {
        /// The group.
        group: u64,
        /// New term and vote.
        hard_state: Option<HardState>,
        /// The entries, in index order.
        entries: Vec<EntryRef<'a>>,
    },
    /// A group's hard state, rewritten so that older records can be reclaimed.
    HardState {
        /// The group.
        group: u64,
        /// Term and vote.
        hard_state: HardState,
    },
}

/// An entry inside a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// Index.
    pub index: u64,
    /// Term.
    pub term: u64,
    /// Kind.
    pub kind: EntryKind,
    /// Payload.
    pub payload: &'a [u8],
}

impl EntryRef<'_> {
    /// An owned copy.
    pub fn to_entry(self) -> Entry {
        Entry {
            index: self.index,
            term: self.term,
            kind: self.kind,
            payload: self.payload.to_vec(),
        }
    }
}

/// Bytes an entry takes in a write record.
pub fn entry_record_bytes(e: &Entry) -> usize {
    ENTRY_HEADER_BYTES + e.payload.len()
}

/// Appends a write record of `entries` (may be empty) and the optional hard state.
pub fn encode_write(
    group: u64,
    hard_state: Option<HardState>,
    entries: &[Entry],
    out: &mut Vec<u8>,
) {
    out.push(TAG_WRITE);
    out.extend_from_slice(&group.to_le_bytes());
    match hard_state {
        Some(hs) => {
            out.push(FLAG_HARD_STATE);
            out.extend_from_slice(&hs.term.to_le_bytes());
            out.extend_from_slice(&hs.vote.to_le_bytes());
        }
        None => {
            out.push(0);
            out.extend_from_slice(&[0; 16]);
        }
    }
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.index.to_le_bytes());
        out.extend_from_slice(&e.term.to_le_bytes());
        out.push(e.kind as u8);
        out.extend_from_slice(&(e.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&e.payload);
    }
}

/// Appends a hard-state checkpoint record.
pub fn encode_hard_state(group: u64, hs: HardState, out: &mut Vec<u8>) {
    out.push(TAG_HARD_STATE);
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&hs.term.to_le_bytes());
    out.extend_from_slice(&hs.vote.to_le_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.b.len() < n {
            return Err("record ends early");
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

fn kind_of(code: u8) -> Result<EntryKind, &'static str> {
    match code {
        0 => Ok(EntryKind::Normal),
        1 => Ok(EntryKind::Config),
        2 => Ok(EntryKind::Noop),
        _ => Err("unknown entry kind"),
    }
}

/// Decodes one record's payload.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, &'static str> {
    let mut r = Reader { b: bytes };
    let rec = match r.u8()? {
        TAG_WRITE => {
            let group = r.u64()?;
            let flags = r.u8()?;
            let (term, vote) = (r.u64()?, r.u64()?);
            let hard_state = (flags & FLAG_HARD_STATE != 0).then_some(HardState { term, vote });
            let count = r.u32()? as usize;
            // Every entry takes at least its header: bound the count before reserving.
            if count > r.b.len() / ENTRY_HEADER_BYTES {
                return Err("entry count exceeds the record");
            }
            let mut entries = Vec::with_capacity(count);
            let mut prev: Option<u64> = None;
            for _ in 0..count {
                let index = r.u64()?;
                let term = r.u64()?;
                let kind = kind_of(r.u8()?)?;
                let len = r.u32()? as usize;
                let payload = r.take(len)?;
                if prev.is_some_and(|p| p.checked_add(1) != Some(index)) || index == 0 {
                    return Err("entries are not contiguous");
                }
                prev = Some(index);
                entries.push(EntryRef {
                    index,
                    term,
                    kind,
                    payload,
                });
            }
            Record::Write {
                group,
                hard_state,
                entries,
            }
        }
        TAG_HARD_STATE => Record::HardState {
            group: r.u64()?,
            hard_state: HardState {
                term: r.u64()?,
                vote: r.u64()?,
            },
        },
        _ => return Err("unknown record tag"),
    };
    if !r.b.is_empty() {
        return Err("trailing bytes after the record");
    }
    Ok(rec)
}

/// One group's durable state as replay rebuilds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupReplay {
    /// Latest hard state.
    pub hard_state: HardState,
    /// The log, contiguous (may start anywhere: what precedes it was reclaimed after a
    /// snapshot covered it).
    pub entries: Vec<Entry>,
    /// For reclaiming: (LSN, first index, last index) of every record that holds entries
    /// still in `entries` (the live part of each), oldest first.
    pub records: Vec<(u64, u64, u64)>,
    /// LSN of the record holding the latest hard state (0: none).
    pub hard_state_lsn: u64,
}

/// Replay of a shard's log: feed records in LSN order, then [`Replay::finish_group`].
///
/// The snapshot files are read first and handed to [`Replay::new`]: a follower that
/// installed a leader's snapshot goes on appending right after the snapshot's index, so its
/// log holds entries up to its old end, then (once the snapshot's file is durable) entries
/// from the snapshot on. Such a hole is whole when a snapshot on disk covers it; any other
/// hole is damage.
#[derive(Debug, Default)]
pub struct Replay {
    /// Per group.
    pub groups: BTreeMap<u64, GroupReplay>,
    /// The index of each group's snapshot on disk (absent: none).
    snapshots: BTreeMap<u64, u64>,
}

/// A log whose records contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {lsn} (group {group}): {reason}")]
pub struct ReplayError {
    /// The record.
    pub lsn: u64,
    /// Its group.
    pub group: u64,
    /// What is wrong.
    pub reason: String,
}

impl Replay {
    /// A replay against the snapshots on disk: `(group, snapshot index)`.
    pub fn new(snapshots: impl IntoIterator<Item = (u64, u64)>) -> Replay {
        Replay {
            groups: BTreeMap::new(),
            snapshots: snapshots.into_iter().collect(),
        }
    }

    /// Applies the record at `lsn`.
    pub fn apply(&mut self, lsn: u64, rec: Record<'_>) -> Result<(), ReplayError> {
        match rec {
            Record::HardState { group, hard_state } => {
                let g = self.groups.entry(group).or_default();
                g.hard_state = hard_state;
                g.hard_state_lsn = lsn;
            }
            Record::Write {
                group,
                hard_state,
                entries,
            } => {
                let g = self.groups.entry(group).or_default();
                if let Some(hs) = hard_state {
                    g.hard_state = hs;
                    g.hard_state_lsn = lsn;
                }
                let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                    return Ok(());
                };
                let (first, last) = (first.index, last.index);
                match (
                    g.entries.first().map(|e| e.index),
                    g.entries.last().map(|e| e.index),
                ) {
                    (Some(_), Some(hi))
                        if first > hi + 1
                            && first <= self.snapshots.get(&group).map_or(0, |s| s + 1) =>
                    {
                        // The hole a received snapshot explains: what precedes it is
                        // superseded.
                        g.entries.clear();
                        g.records.clear();
                    }
                    (Some(lo), Some(hi)) => {
                        if first > hi + 1 {
                            return Err(ReplayError {
                                lsn,
                                group,
                                reason: format!(
                                    "entries start at {first}, after a hole (the log ends at {hi})"
                                ),
                            });
                        }
                        if first <= lo {
                            g.entries.clear();
                            g.records.clear();
                        } else {
                            g.entries.truncate((first - lo) as usize);
                            truncate_records(&mut g.records, first);
                        }
                    }
                    _ => {
                        g.entries.clear();
                        g.records.clear();
                    }
                }
                g.entries
                    .extend(entries.into_iter().map(EntryRef::to_entry));
                g.records.push((lsn, first, last));
            }
        }
        Ok(())
    }

    /// Ends the replay of `group` against its snapshot (index, term): entries the snapshot
    /// covers are dropped; entries after it are kept only when they continue it (the entry
    /// at the snapshot's index, if still in the log, has the snapshot's term). Fails when
    /// the log does not reach back to the snapshot (a hole).
    pub fn finish_group(
        &mut self,
        group: u64,
        snapshot: Option<(u64, u64)>,
    ) -> Result<GroupReplay, ReplayError> {
        let mut g = self.groups.remove(&group).unwrap_or_default();
        let (snap_index, snap_term) = snapshot.unwrap_or((0, 0));
        if let Some(lo) = g.entries.first().map(|e| e.index) {
            if snap_index >= lo {
                let at = (snap_index - lo) as usize;
                let continues = g.entries.get(at).is_none_or(|e| e.term == snap_term);
                if continues {
                    g.entries.drain(..(at + 1).min(g.entries.len()));
                } else {
                    g.entries.clear();
                }
            } else if lo > snap_index + 1 {
                return Err(ReplayError {
                    lsn: g.records.first().map_or(0, |r| r.0),
                    group,
                    reason: format!(
                        "the log starts at entry {lo} but the snapshot ends at {snap_index}: entries are missing"
                    ),
                });
            }
        }
        g.records.retain(|&(_, _, last)| last > snap_index);
        Ok(g)
    }
}

/// Forgets what records hold from index `from` on (it was replaced).
pub fn truncate_records(records: &mut Vec<(u64, u64, u64)>, from: u64) {
    records.retain(|&(_, first, _)| first < from);
    for r in records.iter_mut() {
        r.2 = r.2.min(from.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            kind: EntryKind::Normal,
            payload: vec![index as u8; (index % 5) as usize],
        }
    }

    fn rec(group: u64, hs: Option<HardState>, entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_write(group, hs, entries, &mut out);
        out
    }

    #[test]
    fn records_round_trip() {
        let hs = HardState { term: 3, vote: 2 };
        let es = [e(5, 2), e(6, 3)];
        let b = rec(7, Some(hs), &es);
        let Record::Write {
            group,
            hard_state,
            entries,
        } = decode(&b).unwrap()
        else {
            panic!("not a write");
        };
        assert_eq!((group, hard_state), (7, Some(hs)));
        let owned: Vec<Entry> = entries.into_iter().map(EntryRef::to_entry).collect();
        assert_eq!(owned, es);
        let mut c = Vec::new();
        encode_hard_state(9, hs, &mut c);
        assert_eq!(
            decode(&c).unwrap(),
            Record::HardState {
                group: 9,
                hard_state: hs
            }
        );
    }

    #[test]
    fn damaged_records_are_refused_never_panic() {
        let b = rec(1, None, &[e(1, 1), e(2, 1)]);
        for cut in 0..b.len() {
            assert!(decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        let gap = rec(1, None, &[e(1, 1), e(3, 1)]);
        assert_eq!(decode(&gap), Err("entries are not contiguous"));
        let mut huge = rec(1, None, &[]);
        let n = huge.len();
        huge[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge), Err("entry count exceeds the record"));
        assert!(decode(&[9]).is_err());
        assert!(decode(&[]).is_err());
    }

    #[test]
    fn replay_overwrites_truncates_and_respects_snapshots() {
        let mut r = Replay::default();
        let b1 = rec(
            1,
            Some(HardState { term: 1, vote: 1 }),
            &[e(1, 1), e(2, 1), e(3, 1)],
        );
        let b2 = rec(1, None, &[e(3, 2), e(4, 2)]); // a new leader overwrote 3
        let b3 = rec(2, None, &[e(1, 1)]);
        r.apply(1, decode(&b1).unwrap()).unwrap();
        r.apply(2, decode(&b2).unwrap()).unwrap();
        r.apply(3, decode(&b3).unwrap()).unwrap();
        let hole = rec(2, None, &[e(3, 1)]);
        assert!(r.apply(4, decode(&hole).unwrap()).is_err());
        let g1 = r.finish_group(1, Some((2, 1))).unwrap();
        assert_eq!(g1.entries, vec![e(3, 2), e(4, 2)]);
        assert_eq!(g1.hard_state, HardState { term: 1, vote: 1 });
        // Record 1 holds only entries the snapshot covers: reclaimable.
        assert_eq!(g1.records, vec![(2, 3, 4)]);
        // A snapshot from another history: the log after it is dropped.
        let mut r2 = Replay::default();
        r2.apply(1, decode(&b1).unwrap()).unwrap();
        assert!(r2.finish_group(1, Some((2, 9))).unwrap().entries.is_empty());
        // A log that starts after the snapshot's end has lost entries.
        let mut r3 = Replay::default();
        r3.apply(1, decode(&rec(1, None, &[e(10, 1)])).unwrap())
            .unwrap();
        assert!(r3.finish_group(1, Some((5, 1))).is_err());
        // ... but one that starts right after it is whole.
        let mut r4 = Replay::default();
        r4.apply(1, decode(&rec(1, None, &[e(6, 1)])).unwrap())
            .unwrap();
        assert_eq!(
            r4.finish_group(1, Some((5, 1))).unwrap().entries,
            vec![e(6, 1)]
        );
        assert_eq!(r.finish_group(2, None).unwrap().entries, vec![e(1, 1)]);
    }

    /// A follower that installed a leader's snapshot at 10 appends from 11 on after its old
    /// log ended at 4: with the snapshot on disk the hole is whole; without it (or past it)
    /// the hole is refused and named.
    #[test]
    fn replay_takes_a_hole_a_snapshot_explains() {
        let old = rec(
            1,
            Some(HardState { term: 1, vote: 1 }),
            &[e(1, 1), e(2, 1), e(3, 1), e(4, 1)],
        );
        let after = rec(
            1,
            Some(HardState { term: 3, vote: 2 }),
            &[e(11, 3), e(12, 3)],
        );
        let mut r = Replay::new([(1, 10)]);
        r.apply(1, decode(&old).unwrap()).unwrap();
        r.apply(2, decode(&after).unwrap()).unwrap();
        let g = r.finish_group(1, Some((10, 3))).unwrap();
        assert_eq!(g.entries, vec![e(11, 3), e(12, 3)]);
        assert_eq!(g.records, vec![(2, 11, 12)]);
        assert_eq!(g.hard_state, HardState { term: 3, vote: 2 });
        // A later local snapshot (at 11) replaced the received one: still whole.
        let mut r = Replay::new([(1, 11)]);
        r.apply(1, decode(&old).unwrap()).unwrap();
        r.apply(2, decode(&after).unwrap()).unwrap();
        assert_eq!(
            r.finish_group(1, Some((11, 3))).unwrap().entries,
            vec![e(12, 3)]
        );
        for snaps in [vec![], vec![(1, 9)], vec![(2, 10)]] {
            let mut r = Replay::new(snaps.clone());
            r.apply(1, decode(&old).unwrap()).unwrap();
            let err = r.apply(2, decode(&after).unwrap()).unwrap_err();
            assert_eq!(err.lsn, 2, "{snaps:?}");
            assert!(err.reason.contains("after a hole"), "{err}");
        }
    }
}

//! A shard's durable storage: one write-ahead log ([`crate::log::Log`]) shared by every Raft
//! group of the shard, plus one snapshot file per group ([`super::snapshot`]).
//!
//! Every group write of one shard-loop turn (the hard states and entries of every group
//! that had a `Ready`) goes into the log in one [`ShardStorage::append`], so that one group
//! commit — one `fdatasync` — covers them all; appends made while a sync is in flight form
//! the next batch (the log pipelines them).
//!
//! Reclaiming: the log is cut at the oldest record some group still needs — the record
//! holding a live entry (one after the group's snapshot) or the group's latest hard state.
//! A group whose latest hard state sits in an old record gets it rewritten (a checkpoint
//! record) so it does not pin the log; the cut waits until those checkpoints are durable.
//!
//! It must never report a write durable before the log's sync covering its last record
//! completed, and never cut the log past a record that recovery would need.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::log::{Durable, Entry as LogEntry, Log, LogConfig, LogError, RecoveryReport};
use crate::raft::driver::GroupWrite;
use crate::raft::{HardState, Recovered};

use super::record::{self, Replay, ReplayError, entry_record_bytes};
use super::snapshot::{self, SnapshotFileError};

/// What can go wrong in a shard's storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The write-ahead log failed (or refused to open).
    #[error("write-ahead log {dir}: {source}")]
    Log {
        /// The log's directory.
        dir: PathBuf,
        /// The log's error.
        #[source]
        source: LogError,
    },
    /// A record does not decode or contradicts the ones before it.
    #[error("write-ahead log {dir}: {source}")]
    Replay {
        /// The log's directory.
        dir: PathBuf,
        /// Which record and why.
        #[source]
        source: ReplayError,
    },
    /// A snapshot file failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotFileError),
    /// A group write still carries a received snapshot: its file must be stored (and
    /// [`ShardStorage::snapshot_stored`] called) before the write is appended.
    #[error("group {group}'s write carries a snapshot whose file was not stored first")]
    SnapshotNotStored {
        /// The group.
        group: u64,
    },
    /// The log holds groups this shard does not host.
    #[error(
        "write-ahead log {dir} holds group {group}, which this node does not host on this shard: start it with the same --groups and shard count as before, or with an empty --dir"
    )]
    UnknownGroup {
        /// The log's directory.
        dir: PathBuf,
        /// The group.
        group: u64,
    },
}

#[derive(Debug, Default)]
struct Track {
    /// (LSN, first, last) of records holding live entries, oldest first.
    records: VecDeque<(u64, u64, u64)>,
    hard_state: HardState,
    hard_state_lsn: u64,
    snapshot_index: u64,
}

/// What [`ShardStorage::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// The storage, ready for appends.
    pub storage: ShardStorage,
    /// Every hosted group's durable state.
    pub groups: BTreeMap<u64, Recovered>,
    /// What the log's own recovery did (torn tail dropped, ...).
    pub log_report: RecoveryReport,
    /// Records replayed.
    pub records: u64,
}

/// Counters of a shard's storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Calls to [`ShardStorage::append`] that wrote something.
    pub appends: u64,
    /// Group writes in them.
    pub group_writes: u64,
    /// Records appended.
    pub records: u64,
    /// Raft entries in them.
    pub entries: u64,
    /// Snapshot files written.
    pub snapshots_saved: u64,
    /// Checkpoint records written to let the log be cut.
    pub checkpoints: u64,
    /// Log cuts done.
    pub compactions: u64,
}

/// A shard's storage. Lives on the shard's executor.
#[derive(Debug)]
pub struct ShardStorage {
    log: Log,
    wal_dir: PathBuf,
    snap_dir: PathBuf,
    groups: BTreeMap<u64, Track>,
    record_bytes_max: usize,
    scratch: Vec<Vec<u8>>,
    /// A cut waiting for its checkpoints: (LSN that must be durable, cut below this LSN).
    pending_cut: Option<(u64, u64)>,
    stats: StorageStats,
}

/// Appends one log record per payload, numbered from the log's next LSN.
fn append_records(log: &Log, payloads: &[Vec<u8>]) -> Result<Durable, LogError> {
    let next = log.next_index();
    let entries: Vec<LogEntry<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| LogEntry {
            index: next + i as u64,
            term: 0,
            payload: p,
        })
        .collect();
    log.append(&entries)
}

fn log_err(dir: &Path) -> impl FnOnce(LogError) -> StorageError {
    let dir = dir.to_path_buf();
    move |source| StorageError::Log { dir, source }
}

impl ShardStorage {
    /// Opens (or creates) the storage in `dir` for `groups`, and rebuilds each group's
    /// durable state.
    pub async fn open(dir: &Path, cfg: LogConfig, groups: &[u64]) -> Result<Opened, StorageError> {
        let wal_dir = dir.join("wal");
        let snap_dir = dir.join("snap");
        std::fs::create_dir_all(&snap_dir).map_err(|source| SnapshotFileError::Io {
            op: "create dir",
            path: snap_dir.clone(),
            source,
        })?;
        let (log, log_report) = Log::open(&wal_dir, cfg).await.map_err(log_err(&wal_dir))?;
        let record_bytes_max = log.config().entry_bytes_max();
        let mut snaps = BTreeMap::new();
        for &g in groups {
            snaps.insert(g, snapshot::load(&snap_dir, g)?);
        }
        let mut replay = Replay::new(
            snaps
                .iter()
                .filter_map(|(&g, s)| s.as_ref().map(|s| (g, s.index))),
        );
        let mut lsn = log.first_index();
        let end = log.next_index();
        let mut records = 0;
        while lsn < end {
            let chunk = log.read_range(lsn, end).await.map_err(log_err(&wal_dir))?;
            if chunk.is_empty() {
                break;
            }
            for e in &chunk {
                let rec = record::decode(&e.payload).map_err(|reason| StorageError::Replay {
                    dir: wal_dir.clone(),
                    source: ReplayError {
                        lsn: e.index,
                        group: 0,
                        reason: reason.to_string(),
                    },
                })?;
                replay
                    .apply(e.index, rec)
                    .map_err(|source| StorageError::Replay {
                        dir: wal_dir.clone(),
                        source,
                    })?;
                records += 1;
                lsn = e.index + 1;
            }
        }
        if let Some(&g) = replay.groups.keys().find(|g| !groups.contains(g)) {
            return Err(StorageError::UnknownGroup {
                dir: wal_dir,
                group: g,
            });
        }
        let mut tracks = BTreeMap::new();
        let mut out = BTreeMap::new();
        for &g in groups {
            let snap = snaps.remove(&g).flatten();
            let r = replay
                .finish_group(g, snap.as_ref().map(|s| (s.index, s.term)))
                .map_err(|source| StorageError::Replay {
                    dir: wal_dir.clone(),
                    source,
                })?;
            tracks.insert(
                g,
                Track {
                    records: r.records.iter().copied().collect(),
                    hard_state: r.hard_state,
                    hard_state_lsn: r.hard_state_lsn,
                    snapshot_index: snap.as_ref().map_or(0, |s| s.index),
                },
            );
            out.insert(
                g,
                Recovered {
                    hard_state: r.hard_state,
                    snapshot: snap,
                    entries: r.entries,
                },
            );
        }
        Ok(Opened {
            storage: ShardStorage {
                log,
                wal_dir,
                snap_dir,
                groups: tracks,
                record_bytes_max,
                scratch: Vec::new(),
                pending_cut: None,
                stats: StorageStats::default(),
            },
            groups: out,
            log_report,
            records,
        })
    }

    /// The log underneath (for its counters).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Counters.
    pub fn stats(&self) -> StorageStats {
        self.stats
    }

    /// Highest LSN covered by a completed sync.
    pub fn durable_lsn(&self) -> u64 {
        self.log.durable_index()
    }

    /// Writes every group write in `writes` with one log append: one record per write (more
    /// when its entries do not fit one; an empty one for a write that only carried a
    /// snapshot). A write that received a snapshot may come here only once the snapshot's
    /// file is durable ([`snapshot::save`], then [`ShardStorage::snapshot_stored`]) and its
    /// `snapshot` field is taken, so that recovery never finds the entries after a snapshot
    /// without the snapshot. Returns the LSN whose durability makes all of them durable, and
    /// the future that resolves then. `Ok(None)` when there was nothing to append. On
    /// [`LogError::Backpressure`] nothing was appended: retry once earlier appends are
    /// durable.
    pub fn append(
        &mut self,
        writes: &[GroupWrite],
    ) -> Result<Option<(u64, Durable)>, StorageError> {
        if let Some(w) = writes.iter().find(|w| w.snapshot.is_some()) {
            return Err(StorageError::SnapshotNotStored { group: w.group });
        }
        let next = self.log.next_index();
        let mut payloads = std::mem::take(&mut self.scratch);
        let mut used = 0;
        // (record position, group, hard state?, first, last)
        let mut placed: Vec<(usize, u64, bool, u64, u64)> = Vec::new();
        for w in writes {
            let mut rest: &[ringleader_wire::msg::raft::Entry] = &w.entries;
            let mut hs = w.hard_state;
            // Every write gets at least one record, even one that only carried a snapshot
            // (its file is written above): its durability is reported in log order with
            // the group's other writes, through the LSN of that record.
            let mut first = true;
            loop {
                // As many entries as fit one record (always at least one).
                let mut bytes = record::WRITE_HEADER_BYTES;
                let mut n = 0;
                while n < rest.len() {
                    let b = entry_record_bytes(&rest[n]);
                    if n > 0 && bytes + b > self.record_bytes_max {
                        break;
                    }
                    bytes += b;
                    n += 1;
                }
                if n == 0 && hs.is_none() && !first {
                    break;
                }
                first = false;
                if used == payloads.len() {
                    payloads.push(Vec::new());
                }
                let buf = &mut payloads[used];
                buf.clear();
                record::encode_write(w.group, hs, &rest[..n], buf);
                let (first, last) = match (rest.first(), rest.get(n.saturating_sub(1))) {
                    (Some(f), Some(l)) if n > 0 => (f.index, l.index),
                    _ => (0, 0),
                };
                placed.push((used, w.group, hs.is_some(), first, last));
                used += 1;
                hs = None;
                rest = &rest[n..];
                if rest.is_empty() {
                    break;
                }
            }
        }
        if used == 0 {
            self.scratch = payloads;
            return Ok(None);
        }
        let res = append_records(&self.log, &payloads[..used]);
        self.scratch = payloads;
        let durable = res.map_err(log_err(&self.wal_dir))?;
        for (pos, group, has_hs, first, last) in placed {
            let lsn = next + pos as u64;
            let t = self.groups.entry(group).or_default();
            if has_hs {
                t.hard_state_lsn = lsn;
            }
            if first > 0 {
                // Records hold consecutive, increasing index ranges: what `first` replaces
                // is at the tail.
                while t.records.back().is_some_and(|r| r.1 >= first) {
                    t.records.pop_back();
                }
                if let Some(r) = t.records.back_mut() {
                    r.2 = r.2.min(first - 1);
                }
                t.records.push_back((lsn, first, last));
            }
        }
        for w in writes {
            if let (Some(hs), Some(t)) = (w.hard_state, self.groups.get_mut(&w.group)) {
                t.hard_state = hs;
            }
        }
        self.stats.appends += 1;
        self.stats.group_writes += writes.len() as u64;
        self.stats.records += used as u64;
        self.stats.entries += writes.iter().map(|w| w.entries.len() as u64).sum::<u64>();
        Ok(Some((next + used as u64 - 1, durable)))
    }

    /// Records that a snapshot of `group` up to `index` is durable in its file (its own,
    /// or one received from a leader): the log records it covers become reclaimable.
    pub fn snapshot_stored(&mut self, group: u64, index: u64) {
        self.stats.snapshots_saved += 1;
        let t = self.groups.entry(group).or_default();
        t.snapshot_index = t.snapshot_index.max(index);
        let si = t.snapshot_index;
        while t.records.front().is_some_and(|r| r.2 <= si) {
            t.records.pop_front();
        }
    }

    /// The directory of the shard's snapshot files.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snap_dir
    }

    /// The oldest LSN some group still needs (records below it can go).
    fn needed_lsn(&self) -> u64 {
        let next = self.log.next_index();
        self.groups
            .values()
            .flat_map(|t| {
                let rec = t.records.front().map(|r| r.0);
                let hs = (t.hard_state_lsn > 0).then_some(t.hard_state_lsn);
                rec.into_iter().chain(hs)
            })
            .min()
            .unwrap_or(next)
            .min(next)
    }

    /// Moves toward reclaiming log segments: when the log has more than `segments_max`
    /// segments, rewrites the hard states that pin old records (checkpoints), and once
    /// those are durable, cuts the log below the oldest record still needed. Call it from
    /// time to time; returns a cut to run (`Log::compact_prefix` is async) when one is due.
    pub fn plan_compaction(&mut self, segments_max: usize) -> Result<Option<u64>, StorageError> {
        if let Some((need_durable, cut)) = self.pending_cut {
            if self.log.durable_index() >= need_durable {
                self.pending_cut = None;
                self.stats.compactions += 1;
                return Ok(Some(cut));
            }
            return Ok(None);
        }
        if self.log.segment_count() <= segments_max {
            return Ok(None);
        }
        // Where the cut could be if hard states did not pin anything.
        let next = self.log.next_index();
        let by_entries = self
            .groups
            .values()
            .filter_map(|t| t.records.front().map(|r| r.0))
            .min()
            .unwrap_or(next);
        if by_entries <= self.log.first_index() {
            return Ok(None);
        }
        let stale: Vec<(u64, HardState)> = self
            .groups
            .iter()
            .filter(|(_, t)| t.hard_state_lsn > 0 && t.hard_state_lsn < by_entries)
            .map(|(&g, t)| (g, t.hard_state))
            .collect();
        if !stale.is_empty() {
            let mut payloads = Vec::with_capacity(stale.len());
            for &(g, hs) in &stale {
                let mut b = Vec::new();
                record::encode_hard_state(g, hs, &mut b);
                payloads.push(b);
            }
            match append_records(&self.log, &payloads) {
                Ok(durable) => drop(durable), // its durability is read from the log
                Err(LogError::Backpressure { .. }) => return Ok(None),
                Err(e) => return Err(log_err(&self.wal_dir)(e)),
            }
            for (i, &(g, _)) in stale.iter().enumerate() {
                if let Some(t) = self.groups.get_mut(&g) {
                    t.hard_state_lsn = next + i as u64;
                }
            }
            self.stats.checkpoints += stale.len() as u64;
        }
        let cut = self.needed_lsn();
        let need_durable = self.log.next_index() - 1;
        self.pending_cut = Some((need_durable, cut));
        Ok(None)
    }

    /// Closes the log (writes and syncs what is queued).
    pub async fn close(self) -> Result<(), StorageError> {
        let dir = self.wal_dir.clone();
        self.log.close().await.map_err(log_err(&dir))?;
        Ok(())
    }
}

//! The log itself: open and recover, append with group commit and pipelined `fdatasync`,
//! read, truncate the suffix, compact the prefix.
//!
//! Every file the log opens has one owner that closes it explicitly (see
//! [`file`](super::file)): the segment set owns the segments, the spare task owns the spare
//! until a roll takes it, files that leave the segment set while a read or sync still holds
//! them wait in `retired` until they are the last handle, and [`Log::close`] closes what is
//! left. It must never leave a file to be closed by `Drop`: an executor that stops right
//! after would leak its descriptor. The exception is a [`Log`] dropped without `close`,
//! which can only hand its files to glommio's queued close (it cannot wait in `drop`).

mod files;
mod flush;
mod open;
mod truncate;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use glommio::Task;

use super::file::LogFile;
use super::format::{self, BatchBuilder, HardState};
use super::hard_state::{HARD_STATE_FILE, HardStateFile};
use super::{LogConfig, LogError};

const SPARE_FILE: &str = "spare.tmp";
const TRUNCATE_FILE: &str = "truncate.tmp";

/// One entry handed to [`Log::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Raft index; must continue the log without a gap.
    pub index: u64,
    /// Raft term.
    pub term: u64,
    /// Application bytes.
    pub payload: &'a [u8],
}

/// One entry read back by [`Log::read_range`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedEntry {
    /// Raft index.
    pub index: u64,
    /// Raft term.
    pub term: u64,
    /// Application bytes.
    pub payload: Vec<u8>,
}

/// Counters since open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Calls to [`Log::append`] that were accepted.
    pub appends: u64,
    /// Entries accepted.
    pub entries: u64,
    /// Batches written.
    pub batches: u64,
    /// Syncs that completed on segments: `fdatasync` calls, or O_DSYNC batch writes
    /// ([`super::IoMode::DirectSync`]), each one a device cache flush.
    pub fsyncs: u64,
    /// Bytes of batches written (without page padding).
    pub batch_bytes: u64,
    /// Bytes submitted to the device or page cache (with tail-page rewrites and padding).
    pub bytes_written: u64,
    /// Batches whose write completed while the previous batch's `fdatasync` was still in
    /// flight (the pipelining at work; zero when every append waits for the same sync, and
    /// always zero with O_DSYNC writes, where the write is the sync).
    pub batches_pipelined: u64,
}

/// A torn tail that recovery dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment (always the newest).
    pub segment: PathBuf,
    /// Offset of the first dropped byte; the log continues here.
    pub offset: u64,
    /// Bytes dropped (zeroed on disk).
    pub bytes_dropped: u64,
    /// Entries whose records were intact in the dropped bytes but whose batch was never
    /// committed in sequence (never acknowledged), as an inclusive index range.
    pub entries_dropped: Option<(u64, u64)>,
    /// What was wrong at `offset`.
    pub fault: String,
}

/// What [`Log::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments found (after creating the first one of a new log).
    pub segments: usize,
    /// First index in the log.
    pub first_index: u64,
    /// Last index in the log (`first_index - 1` when empty).
    pub last_index: u64,
    /// The torn tail dropped, if any.
    pub torn_tail: Option<TornTail>,
    /// Hard state in force.
    pub hard_state: HardState,
    /// A hard-state slot that failed its checksum and was ignored.
    pub hard_state_slot_discarded: Option<u8>,
    /// Leftover temporary files removed (an unfinished spare or truncation).
    pub stale_files_removed: Vec<PathBuf>,
}

struct Segment {
    first_index: u64,
    path: PathBuf,
    file: Rc<LogFile>,
    next_index: u64,
    end_offset: u64,
    batch_starts: Vec<(u64, u32)>,
    record_offsets: Vec<u32>,
}

struct State {
    segments: VecDeque<Segment>,
    /// Bytes `[page_down(end), end)` of the newest segment (O_DIRECT rewrites them).
    tail_page: Vec<u8>,
    next_index: u64,
    written_index: u64,
    durable_index: u64,
    open: VecDeque<BatchBuilder>,
    spare_builders: Vec<BatchBuilder>,
    write_buf: Vec<u8>,
    waiters: VecDeque<(u64, Option<Waker>)>,
    waiters_base: u64,
    flusher_waker: Option<Waker>,
    poisoned: Option<String>,
    closing: bool,
    exclusive: bool,
    spare: Option<Task<Result<(PathBuf, LogFile), LogError>>>,
    /// Files that left the segment set (compaction, truncation) while another handle still
    /// used them; closed once they are the last handle, and at the latest by close.
    retired: Vec<(PathBuf, Rc<LogFile>)>,
    /// The spare's preparation has finished (successfully or not).
    spare_ready: bool,
    /// An `fdatasync` of the log is in flight.
    sync_in_flight: bool,
    stats: LogStats,
}

struct Shared {
    dir: PathBuf,
    cfg: LogConfig,
    st: RefCell<State>,
}

/// A write-ahead log on one shard. See the module docs.
///
/// Close it with [`Log::close`]: that closes every file it opened. A log dropped without
/// closing fails its pending appends with [`LogError::Closed`] and leaves its files to
/// glommio's queued close, which only happens if the executor keeps running.
pub struct Log {
    sh: Rc<Shared>,
    hard_state: HardStateFile,
    flusher: Flusher,
}

/// The flusher task of an open log; dropping it without [`Log::close`] poisons the log.
struct Flusher {
    sh: Rc<Shared>,
    task: Option<Task<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        if self.task.is_some() {
            // Dropped without close: the flusher is cancelled with the task handle, so no
            // future may wait for it. The files go now rather than with the last `Durable`
            // (which holds the shared state): their closes are queued on the ring.
            self.sh.poison(&LogError::Closed);
            let files = self.sh.take_files();
            drop(files);
        }
    }
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.sh.st.borrow();
        f.debug_struct("Log")
            .field("dir", &self.sh.dir)
            .field("next_index", &st.next_index)
            .field("durable_index", &st.durable_index)
            .finish()
    }
}

/// Resolves with the durable index once an `fdatasync` covering the append has completed.
#[must_use = "an append is only durable once its future resolves"]
pub struct Durable {
    sh: Rc<Shared>,
    target: u64,
    seq: u64,
}

impl Future for Durable {
    type Output = Result<u64, LogError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut st = this.sh.st.borrow_mut();
        // Durable first: an entry a completed sync covered stays acknowledged even if the
        // log failed afterwards.
        if st.durable_index >= this.target {
            return Poll::Ready(Ok(st.durable_index));
        }
        if let Some(p) = &st.poisoned {
            return Poll::Ready(Err(LogError::Poisoned(p.clone())));
        }
        let base = st.waiters_base;
        let durable = st.durable_index;
        match this
            .seq
            .checked_sub(base)
            .and_then(|i| st.waiters.get_mut(i as usize))
        {
            Some(slot) => {
                debug_assert_eq!(slot.0, this.target);
                if slot.0 <= durable {
                    return Poll::Ready(Ok(durable));
                }
                match &slot.1 {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => slot.1 = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            // Popped from the queue but not durable: truncated away.
            None if durable < this.target => Poll::Ready(Err(LogError::Truncated)),
            None => Poll::Ready(Ok(durable)),
        }
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io { op, path, source }
}

impl Shared {
    fn poison(&self, err: &LogError) {
        let wakers: Vec<Waker> = {
            let mut st = self.st.borrow_mut();
            if st.poisoned.is_none() {
                st.poisoned = Some(err.to_string());
            }
            let n = st.waiters.len() as u64;
            st.waiters_base += n;
            let mut w: Vec<Waker> = st.waiters.drain(..).filter_map(|(_, w)| w).collect();
            w.extend(st.flusher_waker.take());
            w
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    fn poisoned(&self) -> Option<LogError> {
        self.st
            .borrow()
            .poisoned
            .as_ref()
            .map(|p| LogError::Poisoned(p.clone()))
    }
}

impl Log {
    /// The configuration in force.
    pub fn config(&self) -> &LogConfig {
        &self.sh.cfg
    }

    /// The index the next append must start at.
    pub fn next_index(&self) -> u64 {
        self.sh.st.borrow().next_index
    }

    /// First index still in the log.
    pub fn first_index(&self) -> u64 {
        self.sh
            .st
            .borrow()
            .segments
            .front()
            .map_or(1, |s| s.first_index)
    }

    /// Highest index covered by a completed `fdatasync` (Raft's "persisted up to").
    pub fn durable_index(&self) -> u64 {
        self.sh.st.borrow().durable_index
    }

    /// Highest index whose write completed (readable, maybe not durable yet).
    pub fn written_index(&self) -> u64 {
        self.sh.st.borrow().written_index
    }

    /// Counters since open.
    pub fn stats(&self) -> LogStats {
        self.sh.st.borrow().stats
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.sh.st.borrow().segments.len()
    }

    /// Hard state last saved or recovered.
    pub fn hard_state(&self) -> HardState {
        self.hard_state.get()
    }

    /// Saves the hard state durably (two alternating slots; see [`super::hard_state`]).
    pub async fn save_hard_state(&self, hs: HardState) -> Result<(), LogError> {
        if let Some(e) = self.sh.poisoned() {
            return Err(e);
        }
        self.hard_state.save(hs).await
    }

    /// Queues `entries` (contiguous, starting at [`Log::next_index`]) for the next batch.
    /// The entries are copied before this returns, in call order; the returned future
    /// resolves once they are durable. Fails at once, queuing nothing, when the entries
    /// are out of sequence, too large, or too many batches are queued.
    pub fn append(&self, entries: &[Entry<'_>]) -> Result<Durable, LogError> {
        let cfg = &self.sh.cfg;
        let mut st = self.sh.st.borrow_mut();
        if let Some(p) = &st.poisoned {
            return Err(LogError::Poisoned(p.clone()));
        }
        if st.closing {
            return Err(LogError::Closed);
        }
        if st.exclusive {
            return Err(LogError::Busy);
        }
        let Some(last) = entries.last() else {
            return Err(LogError::EmptyAppend);
        };
        let entry_max = cfg.entry_bytes_max();
        for (i, e) in entries.iter().enumerate() {
            let expected = st.next_index + i as u64;
            if e.index != expected {
                return Err(LogError::NonContiguous {
                    expected,
                    got: e.index,
                });
            }
            if e.payload.len() > entry_max {
                return Err(LogError::EntryTooLarge {
                    index: e.index,
                    len: e.payload.len(),
                    max: entry_max,
                });
            }
        }
        // Dry run: how many new batches would these entries open?
        let fits = |bytes: usize, count: u32, payload: usize| {
            count < cfg.batch_entries_max
                && bytes + format::record_bytes(payload) <= cfg.batch_bytes_max
        };
        let (mut bytes, mut count) = st
            .open
            .back()
            .map_or((usize::MAX, u32::MAX), |b| (b.sealed_bytes(), b.count()));
        let mut new_batches = 0usize;
        for e in entries {
            if count == u32::MAX || !fits(bytes, count, e.payload.len()) {
                new_batches += 1;
                bytes = format::BATCH_HEADER_BYTES + format::COMMIT_BYTES;
                count = 0;
            }
            bytes += format::record_bytes(e.payload.len());
            count += 1;
        }
        if st.open.len() + new_batches > cfg.batches_queued_max {
            return Err(LogError::Backpressure {
                queued: st.open.len(),
            });
        }
        for e in entries {
            let need_new = st
                .open
                .back()
                .is_none_or(|b| !fits(b.sealed_bytes(), b.count(), e.payload.len()));
            if need_new {
                let b = st
                    .spare_builders
                    .pop()
                    .unwrap_or_else(|| BatchBuilder::with_capacity(cfg.batch_bytes_max));
                st.open.push_back(b);
            }
            if let Some(b) = st.open.back_mut() {
                b.push(e.index, e.term, e.payload);
            }
        }
        st.next_index = last.index + 1;
        st.stats.appends += 1;
        st.stats.entries += entries.len() as u64;
        st.waiters.push_back((last.index, None));
        let seq = st.waiters_base + st.waiters.len() as u64 - 1;
        let wake = st.flusher_waker.take();
        drop(st);
        if let Some(w) = wake {
            w.wake();
        }
        Ok(Durable {
            sh: self.sh.clone(),
            target: last.index,
            seq,
        })
    }

    /// Reads entries `lo..hi` (written ones only), verifying each record's checksum.
    /// Returns a non-empty prefix of the range when it holds more than
    /// [`LogConfig::read_bytes_max`] bytes; call again from where it stopped.
    pub async fn read_range(&self, lo: u64, hi: u64) -> Result<Vec<OwnedEntry>, LogError> {
        let mut out = Vec::new();
        let mut budget = self.sh.cfg.read_bytes_max;
        let mut idx = lo;
        let mut buf = Vec::new();
        while idx < hi && budget > 0 {
            // Plan one contiguous read inside one segment.
            let (f, path, start_off, span_end, offsets, seg_first) = {
                let st = self.sh.st.borrow();
                let first = st.segments.front().map_or(1, |s| s.first_index);
                // `idx`, not `lo`: a compaction may have run while the last read was in flight.
                let out_of_range = || LogError::OutOfRange {
                    lo,
                    hi,
                    first,
                    next: st.written_index + 1,
                };
                if idx < first || hi > st.written_index + 1 || lo >= hi {
                    return Err(out_of_range());
                }
                let si = st
                    .segments
                    .partition_point(|s| s.first_index <= idx)
                    .checked_sub(1)
                    .ok_or_else(out_of_range)?;
                let seg = &st.segments[si];
                let local = (idx - seg.first_index) as usize;
                let local_end =
                    ((hi.min(seg.next_index) - seg.first_index) as usize).max(local + 1);
                let start_off = *seg.record_offsets.get(local).ok_or_else(out_of_range)?;
                // The end of record j is the start of record j + 1, or the segment's end.
                let end_of = |j: usize| -> u64 {
                    seg.record_offsets
                        .get(j + 1)
                        .map_or(seg.end_offset, |&o| u64::from(o))
                };
                let mut j = local;
                while j + 1 < local_end && end_of(j + 1) - u64::from(start_off) <= budget as u64 {
                    j += 1;
                }
                let offsets: Vec<u32> = seg.record_offsets[local..=j].to_vec();
                (
                    seg.file.clone(),
                    seg.path.clone(),
                    start_off,
                    end_of(j),
                    offsets,
                    seg.first_index + local as u64,
                )
            };
            let span = (span_end - u64::from(start_off)) as usize;
            f.read_at(u64::from(start_off), span, &mut buf)
                .await
                .map_err(io_err("read", &path))?;
            for (k, &off) in offsets.iter().enumerate() {
                let rel = (off - start_off) as usize;
                let want = seg_first + k as u64;
                let corrupt = |reason: String| LogError::Corrupt {
                    segment: path.clone(),
                    offset: u64::from(off),
                    reason,
                };
                let rec = buf
                    .get(rel..)
                    .ok_or_else(|| corrupt("record beyond the end of the file".into()))?;
                let r = format::decode_record(rec).map_err(|f| corrupt(f.to_string()))?;
                if r.index != want {
                    return Err(corrupt(format!(
                        "record holds index {} where {want} was expected",
                        r.index
                    )));
                }
                budget = budget.saturating_sub(r.len);
                out.push(OwnedEntry {
                    index: r.index,
                    term: r.term,
                    payload: r.payload.to_vec(),
                });
            }
            idx = seg_first + offsets.len() as u64;
        }
        Ok(out)
    }

    /// Writes and syncs everything queued, stops the flusher, closes every file the log
    /// opened (segments, the spare being prepared, the hard-state file), and returns the
    /// counters. The files are closed even when the log failed earlier; the first error
    /// (the failure, else a failed close) is returned.
    pub async fn close(self) -> Result<LogStats, LogError> {
        let Log {
            sh,
            hard_state,
            mut flusher,
        } = self;
        let wake = {
            let mut st = sh.st.borrow_mut();
            st.closing = true;
            st.flusher_waker.take()
        };
        if let Some(w) = wake {
            w.wake();
        }
        if let Some(f) = flusher.task.take() {
            f.await;
        }
        drop(flusher);
        // The flusher (and the sync task it awaits) held the only other file handles; a
        // `Durable` still alive holds the shared state, never a file.
        let closed = sh.take_files().close().await;
        let hs_closed = hard_state.close().await;
        if let Some(e) = sh.poisoned() {
            return Err(e);
        }
        closed?;
        hs_closed?;
        let stats = sh.st.borrow().stats;
        Ok(stats)
    }

    /// Whether the next segment file is prepared (zero-filled) already. A benchmark waits
    /// for this before it starts its clock, so that the first zero-fill is not measured.
    pub fn spare_ready(&self) -> bool {
        self.sh.st.borrow().spare_ready
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.sh.dir
    }

    /// The hard-state file's path.
    pub fn hard_state_path(&self) -> PathBuf {
        self.sh.dir.join(HARD_STATE_FILE)
    }
}

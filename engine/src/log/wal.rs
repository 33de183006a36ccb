//! The log itself: open and recover, append with group commit and pipelined `fdatasync`,
//! read, truncate the suffix, compact the prefix.
//!
//! Every file the log opens has one owner that closes it explicitly (see [`file`]): the
//! segment set owns the segments, the spare task owns the spare until a roll takes it,
//! files that leave the segment set while a read or sync still holds them wait in
//! `retired` until they are the last handle, and [`Log::close`] closes what is left. It
//! must never leave a file to be closed by `Drop`: an executor that stops right after
//! would leak its descriptor. The exception is a [`Log`] dropped without `close`, which
//! can only hand its files to glommio's queued close (it cannot wait in `drop`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use glommio::Task;

use super::file::{self, LogFile, PAGE_BYTES, page_down, page_up};
use super::format::{self, BatchBuilder, HardState};
use super::hard_state::{HARD_STATE_FILE, HardStateFile};
use super::recovery::{self, ScanError};
use super::{LogConfig, LogError};

const SPARE_FILE: &str = "spare.tmp";
const TRUNCATE_FILE: &str = "truncate.tmp";
const ZERO_CHUNK_BYTES: usize = 1 << 20;

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

    /// Takes every file out of the state (segments, retired files, the spare task), for
    /// close or drop; the segment set is empty afterwards.
    fn take_files(&self) -> Files {
        let mut st = self.st.borrow_mut();
        let mut files: Vec<(PathBuf, Rc<LogFile>)> = st
            .segments
            .drain(..)
            .map(|seg| (seg.path, seg.file))
            .collect();
        files.append(&mut st.retired);
        Files {
            files,
            spare: st.spare.take(),
        }
    }

    /// Moves a file that left the segment set to `retired`, then closes every retired
    /// file that no read or sync holds any more. A failed close poisons the log.
    async fn retire(&self, path: PathBuf, f: Rc<LogFile>) -> Result<(), LogError> {
        let retired = {
            let mut st = self.st.borrow_mut();
            st.retired.push((path, f));
            std::mem::take(&mut st.retired)
        };
        let mut first_err = None;
        let mut kept = Vec::new();
        for (path, f) in retired {
            match file::close_shared(f).await {
                Ok(None) => {}
                Ok(Some(f)) => kept.push((path, f)),
                Err(e) => {
                    first_err.get_or_insert(io_err("close", &path)(e));
                }
            }
        }
        self.st.borrow_mut().retired.extend(kept);
        match first_err {
            Some(e) => {
                self.poison(&e);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Marks everything up to `covered` durable and wakes its waiters.
    fn mark_durable(&self, covered: u64) {
        let wakers: Vec<Waker> = {
            let mut st = self.st.borrow_mut();
            assert!(
                covered <= st.written_index,
                "sync covers {covered} beyond written {}",
                st.written_index
            );
            st.durable_index = st.durable_index.max(covered);
            st.stats.fsyncs += 1;
            let mut w = Vec::new();
            while let Some(&(target, _)) = st.waiters.front() {
                if target > st.durable_index {
                    break;
                }
                if let Some((_, Some(waker))) = st.waiters.pop_front() {
                    w.push(waker);
                }
                st.waiters_base += 1;
            }
            w
        };
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Files taken out of a log's state by [`Shared::take_files`].
struct Files {
    files: Vec<(PathBuf, Rc<LogFile>)>,
    spare: Option<Task<Result<(PathBuf, LogFile), LogError>>>,
}

impl Files {
    /// Waits for the spare's preparation, then closes every file; returns the first error.
    /// Called only when nothing else holds the files (the flusher has finished).
    async fn close(self) -> Result<(), LogError> {
        let mut first_err = None;
        if let Some(task) = self.spare {
            // A spare that failed to prepare closed its own file; its error does not matter
            // at close (the file is removed at the next open).
            if let Ok((path, f)) = task.await
                && let Err(e) = f.close().await
            {
                first_err.get_or_insert(io_err("close", &path)(e));
            }
        }
        for (path, f) in self.files {
            match file::close_shared(f).await {
                Ok(None) => {}
                Ok(Some(f)) => {
                    // Another handle outlived the flusher; the invariant above is broken.
                    // The file still closes when that handle is dropped (queued on the ring).
                    debug_assert!(false, "{} still shared at close", path.display());
                    drop(f);
                }
                Err(e) => {
                    first_err.get_or_insert(io_err("close", &path)(e));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Runs `step` on `f`; when it fails, closes `f` (whose error is then the lesser one)
/// before returning the step's error, so that no error path leaves the file to `Drop`.
async fn or_close<T>(
    f: LogFile,
    step: impl AsyncFnOnce(&LogFile) -> Result<T, LogError>,
) -> Result<(LogFile, T), LogError> {
    match step(&f).await {
        Ok(v) => Ok((f, v)),
        Err(e) => {
            let _ = f.close().await;
            Err(e)
        }
    }
}

async fn prepare_spare(dir: PathBuf, cfg: LogConfig) -> Result<(PathBuf, LogFile), LogError> {
    let path = dir.join(SPARE_FILE);
    let f = create_zeroed(&path, &cfg).await?;
    Ok((path, f))
}

/// Creates `path` (replacing it), preallocates a segment's bytes, zero-fills them when
/// configured, and syncs the data (not the directory entry: callers rename it first).
async fn create_zeroed(path: &Path, cfg: &LogConfig) -> Result<LogFile, LogError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("remove", path)(e)),
    }
    let f = LogFile::open(path, cfg.io_mode, true)
        .await
        .map_err(io_err("create", path))?;
    let (f, ()) = or_close(f, async |f: &LogFile| {
        f.pre_allocate(cfg.segment_bytes)
            .await
            .map_err(io_err("fallocate", path))?;
        if cfg.segment_zero_fill {
            f.write_zeros(0, cfg.segment_bytes, ZERO_CHUNK_BYTES)
                .await
                .map_err(io_err("zero-fill", path))?;
        }
        f.fdatasync().await.map_err(io_err("fdatasync", path))
    })
    .await?;
    Ok(f)
}

/// Recovers the segments `names` (first indexes, ascending) of the log in `dir` into
/// `segments`, creating the first segment of a new log; returns the torn tail dropped and
/// the bytes of the newest segment's partial last page. On failure, `segments` holds every
/// file opened so far (the caller closes them); a file that failed its own checks is
/// closed here.
async fn recover_segments(
    dir: &Path,
    cfg: &LogConfig,
    mut names: Vec<u64>,
    segments: &mut VecDeque<Segment>,
) -> Result<(Option<TornTail>, Vec<u8>), LogError> {
    if names.is_empty() {
        let path = file::segment_path(dir, 1);
        let (tmp, f) = prepare_spare(dir.to_path_buf(), cfg.clone()).await?;
        f.close().await.map_err(io_err("close", &tmp))?;
        file::rename(&tmp, &path)
            .await
            .map_err(io_err("rename", &tmp))?;
        file::sync_dir(dir)
            .await
            .map_err(io_err("fsync dir", dir))?;
        names.push(1);
    }
    let mut torn_tail = None;
    let mut tail_page = Vec::new();
    let mut bytes = Vec::new();
    for (i, &first) in names.iter().enumerate() {
        let path = file::segment_path(dir, first);
        if let Some(prev) = segments.back()
            && prev.next_index != first
        {
            if first > prev.next_index {
                return Err(LogError::MissingSegment {
                    previous: prev.path.clone(),
                    expected: prev.next_index,
                    found: path,
                });
            }
            return Err(LogError::Corrupt {
                segment: path,
                offset: 0,
                reason: format!(
                    "segment starts at index {first}, inside the previous segment (which ends before {})",
                    prev.next_index
                ),
            });
        }
        let is_last = i + 1 == names.len();
        let f = LogFile::open(&path, cfg.io_mode, false)
            .await
            .map_err(io_err("open", &path))?;
        let (f, scan) = or_close(f, async |f: &LogFile| {
            let size = f.file_size().await.map_err(io_err("stat", &path))?;
            if size > u64::from(u32::MAX) {
                return Err(LogError::Corrupt {
                    segment: path.clone(),
                    offset: u64::from(u32::MAX),
                    reason: "segment larger than 4 GiB".into(),
                });
            }
            f.read_at(0, size as usize, &mut bytes)
                .await
                .map_err(io_err("read", &path))?;
            let (scan, torn) = recovery::scan_segment(
                &bytes,
                first,
                is_last,
                cfg.batch_bytes_max,
                cfg.tail_window_bytes(),
            )
            .map_err(|e| map_scan(&path, e))?;
            if let Some(t) = torn {
                // Zero the dropped bytes so that later appends never sit in front of stale data.
                let start = page_down(t.offset);
                let end = page_up(t.garbage_end).min(size.max(page_up(t.garbage_end)));
                let mut img = vec![0u8; (end - start) as usize];
                img[..(t.offset - start) as usize]
                    .copy_from_slice(&bytes[start as usize..t.offset as usize]);
                f.write_all_at(&img, start)
                    .await
                    .map_err(io_err("zero torn tail", &path))?;
                f.fdatasync().await.map_err(io_err("fdatasync", &path))?;
                torn_tail = Some(TornTail {
                    segment: path.clone(),
                    offset: t.offset,
                    bytes_dropped: t.garbage_end - t.offset,
                    entries_dropped: t.entries_dropped,
                    fault: t.fault,
                });
            }
            if is_last {
                // What a killed process left in the page cache counts as durable only after
                // this sync.
                f.fdatasync().await.map_err(io_err("fdatasync", &path))?;
                let end = scan.end_offset as usize;
                tail_page = bytes[page_down(end as u64) as usize..end].to_vec();
            }
            Ok(scan)
        })
        .await?;
        segments.push_back(Segment {
            first_index: first,
            path,
            file: Rc::new(f),
            next_index: scan.next_index,
            end_offset: scan.end_offset,
            batch_starts: scan.batch_starts,
            record_offsets: scan.record_offsets,
        });
    }
    Ok((torn_tail, tail_page))
}

fn map_scan(path: &Path, e: ScanError) -> LogError {
    match e {
        ScanError::Corrupt { offset, reason } => LogError::Corrupt {
            segment: path.to_path_buf(),
            offset,
            reason,
        },
        ScanError::UnknownVersion { offset, version } => LogError::UnknownVersion {
            segment: path.to_path_buf(),
            offset,
            version,
        },
    }
}

impl Log {
    /// Opens the log in `dir` (creating it and its first segment, starting at index 1, if
    /// empty), recovers it, and starts its flusher on the current glommio executor.
    pub async fn open(dir: &Path, cfg: LogConfig) -> Result<(Log, RecoveryReport), LogError> {
        cfg.validate()?;
        std::fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
        let mut stale = Vec::new();
        let mut names = Vec::new();
        for ent in std::fs::read_dir(dir).map_err(io_err("read dir", dir))? {
            let ent = ent.map_err(io_err("read dir", dir))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == SPARE_FILE || name == TRUNCATE_FILE {
                // A spare is normal (it is prepared ahead of need); a truncation file is
                // the sign of a truncation cut short by a crash.
                std::fs::remove_file(ent.path()).map_err(io_err("remove", &ent.path()))?;
                if name == TRUNCATE_FILE {
                    stale.push(ent.path());
                }
            } else if let Some(first) = file::parse_segment_name(name) {
                names.push(first);
            }
        }
        names.sort_unstable();
        let (hard_state, hs_load) = HardStateFile::open(dir, cfg.io_mode).await?;
        let mut segments: VecDeque<Segment> = VecDeque::with_capacity(names.len().max(1));
        let (torn_tail, tail_page) = match recover_segments(dir, &cfg, names, &mut segments).await {
            Ok(r) => r,
            Err(e) => {
                // Close what recovery opened before it failed; its error is the one to report.
                let files = segments.into_iter().map(|s| (s.path, s.file)).collect();
                let _ = Files { files, spare: None }.close().await;
                let _ = hard_state.close().await;
                return Err(e);
            }
        };
        let first_index = segments.front().map_or(1, |s| s.first_index);
        let next_index = segments.back().map_or(1, |s| s.next_index);
        let report = RecoveryReport {
            segments: segments.len(),
            first_index,
            last_index: next_index - 1,
            torn_tail,
            hard_state: hs_load.state,
            hard_state_slot_discarded: hs_load.slot_discarded,
            stale_files_removed: stale,
        };
        let st = State {
            segments,
            tail_page,
            next_index,
            written_index: next_index - 1,
            durable_index: next_index - 1,
            open: VecDeque::with_capacity(cfg.batches_queued_max),
            spare_builders: Vec::new(),
            write_buf: Vec::new(),
            waiters: VecDeque::new(),
            waiters_base: 0,
            flusher_waker: None,
            poisoned: None,
            closing: false,
            exclusive: false,
            spare: None,
            retired: Vec::new(),
            spare_ready: false,
            sync_in_flight: false,
            stats: LogStats::default(),
        };
        let sh = Rc::new(Shared {
            dir: dir.to_path_buf(),
            cfg,
            st: RefCell::new(st),
        });
        spawn_spare(&sh);
        let flusher = glommio::spawn_local(flusher(sh.clone()));
        Ok((
            Log {
                sh: sh.clone(),
                hard_state,
                flusher: Flusher {
                    sh,
                    task: Some(flusher),
                },
            },
            report,
        ))
    }

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

    /// Removes every entry after `last_kept` (conflicting entries Raft must replace). Waits
    /// for every queued append to become durable first; appends fail with
    /// [`LogError::Busy`] meanwhile. Crash-safe: later segments are removed newest first,
    /// and the segment holding the cut is rewritten to a temporary file that atomically
    /// replaces it.
    pub async fn truncate_suffix(&self, last_kept: u64) -> Result<(), LogError> {
        let target = {
            let mut st = self.sh.st.borrow_mut();
            if let Some(p) = &st.poisoned {
                return Err(LogError::Poisoned(p.clone()));
            }
            if st.exclusive {
                return Err(LogError::Busy);
            }
            let first = st.segments.front().map_or(1, |s| s.first_index);
            if last_kept + 1 < first {
                return Err(LogError::OutOfRange {
                    lo: last_kept + 1,
                    hi: st.next_index,
                    first,
                    next: st.next_index,
                });
            }
            if last_kept + 1 >= st.next_index {
                return Ok(());
            }
            st.exclusive = true;
            let target = st.next_index - 1;
            if st.durable_index >= target {
                None
            } else {
                st.waiters.push_back((target, None));
                Some(Durable {
                    sh: self.sh.clone(),
                    target,
                    seq: st.waiters_base + st.waiters.len() as u64 - 1,
                })
            }
        };
        let result = async {
            if let Some(t) = target {
                t.await?;
            }
            self.truncate_locked(last_kept).await
        }
        .await;
        if let Err(e) = &result {
            self.sh.poison(e);
        }
        self.sh.st.borrow_mut().exclusive = false;
        result
    }

    async fn truncate_locked(&self, last_kept: u64) -> Result<(), LogError> {
        let sh = &self.sh;
        let dir = &sh.dir;
        let cut = last_kept + 1;
        // 1. Whole segments after the cut, newest first.
        let mut removed = false;
        loop {
            let victim = {
                let mut st = sh.st.borrow_mut();
                match st.segments.back() {
                    Some(s) if s.first_index >= cut => st.segments.pop_back(),
                    _ => None,
                }
            };
            let Some(seg) = victim else { break };
            let removal = file::remove(&seg.path).await;
            sh.retire(seg.path.clone(), seg.file).await?;
            removal.map_err(io_err("remove", &seg.path))?;
            removed = true;
        }
        if removed {
            file::sync_dir(dir)
                .await
                .map_err(io_err("fsync dir", dir))?;
        }
        let has_segment = !sh.st.borrow().segments.is_empty();
        if !has_segment {
            // Everything went: start a fresh segment at the cut.
            roll(sh, cut).await?;
        } else {
            // 2. The segment holding the cut, rewritten up to it.
            let (path, f, seg_first, keep_prefix_end, batch_first, batch_idx, next) = {
                let st = sh.st.borrow();
                let Some(seg) = st.segments.back() else {
                    return Err(LogError::Closed);
                };
                let bi = seg
                    .batch_starts
                    .partition_point(|b| b.0 <= last_kept.max(seg.first_index))
                    .saturating_sub(1);
                let (bf, bo) = seg
                    .batch_starts
                    .get(bi)
                    .copied()
                    .unwrap_or((seg.first_index, 0));
                (
                    seg.path.clone(),
                    seg.file.clone(),
                    seg.first_index,
                    u64::from(bo),
                    bf,
                    bi,
                    seg.next_index,
                )
            };
            if next > cut {
                let kept = if batch_first <= last_kept {
                    self.read_range(batch_first, cut).await?
                } else {
                    Vec::new()
                };
                if kept.len() as u64 != cut - batch_first.min(cut) {
                    return Err(LogError::Corrupt {
                        segment: path.clone(),
                        offset: keep_prefix_end,
                        reason: "could not re-read the entries kept by a truncation".into(),
                    });
                }
                let mut img = Vec::new();
                f.read_at(0, keep_prefix_end as usize, &mut img)
                    .await
                    .map_err(io_err("read", &path))?;
                if !kept.is_empty() {
                    let mut b = BatchBuilder::with_capacity(sh.cfg.batch_bytes_max);
                    for e in &kept {
                        b.push(e.index, e.term, &e.payload);
                    }
                    img.extend_from_slice(b.seal());
                }
                let new_end = img.len() as u64;
                img.resize(page_up(new_end) as usize, 0);
                let tmp = dir.join(TRUNCATE_FILE);
                let nf = create_zeroed(
                    &tmp,
                    &LogConfig {
                        segment_zero_fill: false,
                        ..sh.cfg.clone()
                    },
                )
                .await?;
                let (nf, ()) = or_close(nf, async |nf: &LogFile| {
                    nf.write_all_at(&img, 0)
                        .await
                        .map_err(io_err("write", &tmp))?;
                    nf.fdatasync().await.map_err(io_err("fdatasync", &tmp))?;
                    file::rename(&tmp, &path)
                        .await
                        .map_err(io_err("rename", &tmp))?;
                    file::sync_dir(dir).await.map_err(io_err("fsync dir", dir))
                })
                .await?;
                let replaced = {
                    let mut st = sh.st.borrow_mut();
                    let st = &mut *st;
                    match st.segments.back_mut() {
                        Some(seg) => {
                            let old = std::mem::replace(&mut seg.file, Rc::new(nf));
                            seg.batch_starts
                                .truncate(batch_idx + usize::from(!kept.is_empty()));
                            seg.record_offsets.truncate((cut - seg_first) as usize);
                            seg.end_offset = new_end;
                            seg.next_index = cut;
                            st.tail_page =
                                img[page_down(new_end) as usize..new_end as usize].to_vec();
                            Ok(old)
                        }
                        // Unreachable while the log is open (this runs under `exclusive`),
                        // but the new file must not be left to `Drop` either way.
                        None => Err(nf),
                    }
                };
                match replaced {
                    Ok(old) => sh.retire(path.clone(), old).await?,
                    Err(nf) => {
                        let _ = nf.close().await;
                        return Err(LogError::Closed);
                    }
                }
            }
        }
        let wakers: Vec<Waker> = {
            let mut st = sh.st.borrow_mut();
            st.next_index = cut;
            st.written_index = last_kept;
            st.durable_index = last_kept;
            // Every queued waiter was durable before the cut; release them all so the queue
            // only holds targets of appends made after it.
            let n = st.waiters.len() as u64;
            st.waiters_base += n;
            st.waiters.drain(..).filter_map(|(_, w)| w).collect()
        };
        wakers.into_iter().for_each(Waker::wake);
        Ok(())
    }

    /// Removes whole segments that hold only entries `<= up_to` (after a snapshot covers
    /// them), oldest first. The newest segment is never removed. Returns the new first index.
    pub async fn compact_prefix(&self, up_to: u64) -> Result<u64, LogError> {
        let mut removed = false;
        loop {
            let victim = {
                let mut st = self.sh.st.borrow_mut();
                if st.exclusive {
                    return Err(LogError::Busy);
                }
                match st.segments.front() {
                    Some(s)
                        if st.segments.len() > 1
                            && s.next_index <= up_to + 1
                            && s.next_index > s.first_index =>
                    {
                        st.segments.pop_front()
                    }
                    _ => None,
                }
            };
            let Some(seg) = victim else { break };
            let removal = file::remove(&seg.path).await;
            // The segment left the set either way: its file is closed (or retired) now.
            self.sh.retire(seg.path.clone(), seg.file).await?;
            if let Err(e) = removal {
                let e = io_err("remove", &seg.path)(e);
                self.sh.poison(&e);
                return Err(e);
            }
            removed = true;
        }
        if removed {
            file::sync_dir(&self.sh.dir)
                .await
                .map_err(io_err("fsync dir", &self.sh.dir))?;
        }
        Ok(self.first_index())
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

/// Waits until there is a batch to write (true) or the log is closing and empty (false).
fn wait_for_work(sh: &Shared) -> impl Future<Output = bool> + '_ {
    std::future::poll_fn(move |cx| {
        let mut st = sh.st.borrow_mut();
        if st.poisoned.is_some() {
            return Poll::Ready(false);
        }
        if !st.open.is_empty() {
            return Poll::Ready(true);
        }
        if st.closing && st.open.is_empty() {
            return Poll::Ready(false);
        }
        st.flusher_waker = Some(cx.waker().clone());
        Poll::Pending
    })
}

async fn flusher(sh: Rc<Shared>) {
    let mut sync_task: Option<Task<()>> = None;
    loop {
        if !wait_for_work(&sh).await {
            break;
        }
        if !sh.cfg.linger.is_zero() {
            let full = sh.st.borrow().open.len() > 1;
            if !full {
                glommio::timer::sleep(sh.cfg.linger).await;
            }
        }
        let batch = sh.st.borrow_mut().open.pop_front();
        let Some(mut batch) = batch else { continue };
        let last = batch.last_index();
        let written = write_batch(&sh, &mut batch, &mut sync_task).await;
        {
            let mut st = sh.st.borrow_mut();
            batch.clear();
            if st.spare_builders.len() < sh.cfg.batches_queued_max {
                st.spare_builders.push(batch);
            }
        }
        let (f, path) = match written {
            Ok(fp) => fp,
            Err(e) => {
                sh.poison(&e);
                break;
            }
        };
        if sh.cfg.io_mode.syncs_on_write() {
            // The write itself was the sync (O_DSYNC).
            sh.mark_durable(last);
            continue;
        }
        // One sync in flight at a time, completing in order.
        if let Some(t) = sync_task.take() {
            t.await;
        }
        if sh.poisoned().is_some() {
            break;
        }
        sh.st.borrow_mut().sync_in_flight = true;
        sync_task = Some(glommio::spawn_local(sync_covering(
            sh.clone(),
            f,
            path,
            last,
        )));
    }
    if let Some(t) = sync_task.take() {
        t.await;
    }
}

async fn sync_covering(sh: Rc<Shared>, f: Rc<LogFile>, path: PathBuf, covered: u64) {
    let result = f.fdatasync().await;
    sh.st.borrow_mut().sync_in_flight = false;
    match result {
        Ok(()) => sh.mark_durable(covered),
        Err(e) => sh.poison(&io_err("fdatasync", &path)(e)),
    }
}

/// Starts preparing the next segment file in the background.
fn spawn_spare(sh: &Rc<Shared>) {
    let weak = Rc::downgrade(sh);
    let (dir, cfg) = (sh.dir.clone(), sh.cfg.clone());
    let task = glommio::spawn_local(async move {
        let r = prepare_spare(dir, cfg).await;
        if let Some(sh) = weak.upgrade() {
            sh.st.borrow_mut().spare_ready = true;
        }
        r
    });
    let mut st = sh.st.borrow_mut();
    st.spare_ready = false;
    st.spare = Some(task);
}

/// Rolls to a new segment starting at `first_index`: renames the prepared spare into
/// place, syncs the directory, and starts preparing the next spare.
async fn roll(sh: &Rc<Shared>, first_index: u64) -> Result<(), LogError> {
    let spare = {
        let mut st = sh.st.borrow_mut();
        st.spare_ready = false;
        st.spare.take()
    };
    let (tmp, f) = match spare {
        Some(t) => t.await?,
        None => prepare_spare(sh.dir.clone(), sh.cfg.clone()).await?,
    };
    let path = file::segment_path(&sh.dir, first_index);
    let (f, ()) = or_close(f, async |_: &LogFile| {
        file::rename(&tmp, &path)
            .await
            .map_err(io_err("rename", &tmp))?;
        file::sync_dir(&sh.dir)
            .await
            .map_err(io_err("fsync dir", &sh.dir))
    })
    .await?;
    {
        let mut st = sh.st.borrow_mut();
        st.segments.push_back(Segment {
            first_index,
            path,
            file: Rc::new(f),
            next_index: first_index,
            end_offset: 0,
            batch_starts: Vec::new(),
            record_offsets: Vec::new(),
        });
        st.tail_page.clear();
        drop(st);
        spawn_spare(sh);
    }
    Ok(())
}

/// Writes one batch at the end of the newest segment (rolling first if it does not fit)
/// and returns the file to sync.
async fn write_batch(
    sh: &Rc<Shared>,
    batch: &mut BatchBuilder,
    sync_task: &mut Option<Task<()>>,
) -> Result<(Rc<LogFile>, PathBuf), LogError> {
    let len = batch.sealed_bytes() as u64;
    let fits = {
        let st = sh.st.borrow();
        st.segments
            .back()
            .is_some_and(|s| page_up(s.end_offset + len) <= sh.cfg.segment_bytes)
    };
    if !fits {
        // Everything in the old segment must be durable before the new one gets data, so
        // that only the newest segment can ever hold a torn tail.
        if let Some(t) = sync_task.take() {
            t.await;
        }
        if let Some(e) = sh.poisoned() {
            return Err(e);
        }
        roll(sh, batch.first_index()).await?;
    }
    let (first, last) = (batch.first_index(), batch.last_index());
    let bytes = batch.seal();
    let direct = sh.cfg.io_mode.is_direct();
    let (f, path, end, pos, buf) = {
        let mut st = sh.st.borrow_mut();
        let st = &mut *st;
        let Some(seg) = st.segments.back() else {
            return Err(LogError::Closed);
        };
        assert_eq!(seg.next_index, first, "batch out of sequence");
        let end = seg.end_offset;
        let mut buf = std::mem::take(&mut st.write_buf);
        buf.clear();
        let pos = if direct {
            assert_eq!(st.tail_page.len() as u64, end - page_down(end));
            buf.extend_from_slice(&st.tail_page);
            buf.extend_from_slice(bytes);
            buf.resize(page_up(buf.len() as u64) as usize, 0);
            page_down(end)
        } else {
            buf.extend_from_slice(bytes);
            end
        };
        (seg.file.clone(), seg.path.clone(), end, pos, buf)
    };
    let res = f.write_all_at(&buf, pos).await;
    let mut st = sh.st.borrow_mut();
    let st = &mut *st;
    if let Err(e) = res {
        st.write_buf = buf;
        return Err(io_err("write", &path)(e));
    }
    let new_end = end + len;
    if direct {
        let from = (page_down(new_end) - pos) as usize;
        let to = (new_end - pos) as usize;
        st.tail_page.clear();
        st.tail_page.extend_from_slice(&buf[from..to]);
    }
    st.stats.batches += 1;
    if st.sync_in_flight {
        st.stats.batches_pipelined += 1;
    }
    st.stats.batch_bytes += len;
    st.stats.bytes_written += buf.len() as u64;
    st.write_buf = buf;
    let Some(seg) = st.segments.back_mut() else {
        return Err(LogError::Closed);
    };
    let end32 = u32::try_from(end).unwrap_or(u32::MAX);
    seg.batch_starts.push((first, end32));
    seg.record_offsets
        .extend(batch.record_offsets().iter().map(|&o| o + end32));
    seg.end_offset = new_end;
    seg.next_index = last + 1;
    st.written_index = last;
    debug_assert!(PAGE_BYTES.is_power_of_two());
    Ok((f, path))
}

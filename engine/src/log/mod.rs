//! Write-ahead log on io_uring: segments, group commit, crash-safe recovery. Raft groups
//! hand it entries and learn when they are durable.
//!
//! It must never acknowledge an entry before a sync that covers it has completed (an
//! O_DSYNC write or an `fdatasync`),
//! and never open a log whose middle is corrupt: recovery drops only a torn tail (what was
//! never acknowledged) and reports exactly what it dropped; invalid bytes anywhere else
//! make [`Log::open`] fail with an error that names the segment and the offset.
//!
//! # Shape
//! - A directory holds segments named by their first index (`00000000000000000001.seg`),
//!   each preallocated to [`LogConfig::segment_bytes`] (zero-filled by a background task
//!   ahead of need), and `hardstate` (two checksummed slots written alternately).
//! - Appends go into the open batch. One flusher task per log writes one batch at a time;
//!   the appends that arrive meanwhile form the next batch. Each append's [`Durable`]
//!   future resolves when the write (O_DSYNC) or `fdatasync` covering its last entry
//!   completes. Batches are bounded by [`LogConfig::batch_bytes_max`] and
//!   [`LogConfig::batch_entries_max`]; at most [`LogConfig::batches_queued_max`] wait.
//! - Format: see [`format`]. Every batch ends with a commit marker holding a checksum of
//!   the whole batch; every record has its own CRC32C too, checked on every read.
//!
//! # Durability: O_DSYNC writes by default
//! The default mode ([`IoMode::DirectSync`]) opens segments with O_DIRECT | O_DSYNC: a
//! batch is one io_uring write that completes once the data is on stable storage, so the
//! flusher marks the batch durable on the write's completion. With [`IoMode::Direct`] or
//! [`IoMode::Buffered`] the flusher writes a batch, then starts its `fdatasync` as soon as
//! the previous sync completes, and the next batch's write overlaps that sync. The O_DSYNC
//! write saves a whole round trip per batch: io_uring always hands an `fdatasync` to a
//! worker thread, and the sync can only be submitted once the write completed. Segments are
//! zero-filled ahead of use, so neither mode changes file metadata on an append and the
//! kernel's sync is a device cache flush, not a journal commit. The comparison is in
//! `docs/BENCHMARKS.md` (`ringleader-bench wal --io-mode`).
//!
//! # Threading
//! A [`Log`] lives on one glommio executor (shard) and is `!Send`. Build executors with
//! [`executor_builder`], which sizes io memory to start within a small `ulimit -l`.

pub mod file;
pub mod format;
pub mod hard_state;
pub mod recovery;
mod wal;

use std::path::PathBuf;
use std::time::Duration;

pub use file::IoMode;
pub use format::HardState;
pub use wal::{Durable, Entry, Log, LogStats, OwnedEntry, RecoveryReport, TornTail};

/// The io mode used unless configured otherwise: O_DIRECT | O_DSYNC into zero-filled
/// segments (see the module docs for why).
pub const DEFAULT_IO_MODE: IoMode = IoMode::DirectSync;

/// Bounds and knobs of a log. Units are in the names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Size a segment is preallocated to; a batch never straddles two segments.
    pub segment_bytes: u64,
    /// Largest batch written with one write (header, records and commit marker).
    pub batch_bytes_max: usize,
    /// Most entries in one batch.
    pub batch_entries_max: u32,
    /// Most batches waiting behind the one being written; appends beyond fail with
    /// [`LogError::Backpressure`].
    pub batches_queued_max: usize,
    /// How long the flusher waits after the first append of a batch before writing it
    /// (0: write at once; the pipelining already gathers appends during each sync).
    pub linger: Duration,
    /// O_DIRECT or buffered files.
    pub io_mode: IoMode,
    /// Zero-fill new segments ahead of use (faster syncs than unwritten extents).
    pub segment_zero_fill: bool,
    /// Most bytes one [`Log::read_range`] call reads from disk.
    pub read_bytes_max: usize,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            segment_bytes: 64 << 20,
            batch_bytes_max: 1 << 20,
            batch_entries_max: 16 * 1024,
            batches_queued_max: 8,
            linger: Duration::ZERO,
            io_mode: DEFAULT_IO_MODE,
            segment_zero_fill: true,
            read_bytes_max: 4 << 20,
        }
    }
}

impl LogConfig {
    /// Largest payload one entry may carry.
    pub fn entry_bytes_max(&self) -> usize {
        self.batch_bytes_max.saturating_sub(
            format::BATCH_HEADER_BYTES
                + format::COMMIT_BYTES
                + format::RECORD_HEADER_BYTES
                + format::ALIGN_BYTES,
        )
    }

    /// How far past the first invalid byte a torn tail may reach: two batches, each
    /// rounded to pages (see [`recovery`]).
    pub fn tail_window_bytes(&self) -> u64 {
        2 * (self.batch_bytes_max as u64 + 2 * file::PAGE_BYTES)
    }

    /// Checks the bounds are consistent.
    pub fn validate(&self) -> Result<(), LogError> {
        let bad = |s: String| Err(LogError::Config(s));
        if self.batch_bytes_max < format::BATCH_BYTES_MIN + format::ALIGN_BYTES {
            return bad(format!(
                "batch_bytes_max {} is below {}",
                self.batch_bytes_max,
                format::BATCH_BYTES_MIN + 8
            ));
        }
        if self.batch_bytes_max > (u32::MAX as usize) / 2 {
            return bad(format!(
                "batch_bytes_max {} is too large",
                self.batch_bytes_max
            ));
        }
        if self.segment_bytes % file::PAGE_BYTES != 0
            || self.segment_bytes < self.batch_bytes_max as u64 + 2 * file::PAGE_BYTES
            || self.segment_bytes > u64::from(u32::MAX)
        {
            return bad(format!(
                "segment_bytes {} must be a multiple of {} between batch_bytes_max + 2 pages and 4 GiB",
                self.segment_bytes,
                file::PAGE_BYTES
            ));
        }
        if self.batch_entries_max == 0 || self.batches_queued_max == 0 || self.read_bytes_max == 0 {
            return bad(
                "batch_entries_max, batches_queued_max and read_bytes_max must be positive".into(),
            );
        }
        Ok(())
    }
}

/// Everything that can go wrong in the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Invalid bytes that are not a torn tail: the log refuses to open.
    #[error("corrupt log: segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the first invalid byte.
        offset: u64,
        /// What is wrong there.
        reason: String,
    },
    /// A segment is missing between two others (or at the end of the sequence).
    #[error(
        "missing segment: {previous} ends before index {expected}, but the next segment is {found}"
    )]
    MissingSegment {
        /// The segment before the hole.
        previous: PathBuf,
        /// The index the next segment should start at.
        expected: u64,
        /// The segment found instead.
        found: PathBuf,
    },
    /// A batch written by an unknown (newer) format version.
    #[error(
        "segment {segment} at offset {offset}: format version {version} is not supported (this build reads version {})",
        format::FORMAT_VERSION
    )]
    UnknownVersion {
        /// The segment file.
        segment: PathBuf,
        /// Offset of the batch.
        offset: u64,
        /// The version byte found.
        version: u8,
    },
    /// Both hard-state slots fail their checksums.
    #[error("hard state {path}: both slots are corrupt")]
    HardStateCorrupt {
        /// The hard-state file.
        path: PathBuf,
    },
    /// A hard-state save would move the term backwards.
    #[error("hard state term would go backwards from {old_term} to {new_term}")]
    HardStateRegression {
        /// Term saved before.
        old_term: u64,
        /// Term refused.
        new_term: u64,
    },
    /// The configuration is inconsistent.
    #[error("invalid log config: {0}")]
    Config(String),
    /// An append whose first index is not the next index, or whose entries skip one.
    #[error("append out of sequence: expected index {expected}, got {got}")]
    NonContiguous {
        /// The index the log expected.
        expected: u64,
        /// The index it was given.
        got: u64,
    },
    /// An entry larger than [`LogConfig::entry_bytes_max`].
    #[error("entry {index} has {len} bytes, more than the {max} one entry may have")]
    EntryTooLarge {
        /// Index of the entry.
        index: u64,
        /// Its payload length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Too many batches are queued ([`LogConfig::batches_queued_max`]); retry after a
    /// [`Durable`] resolves.
    #[error("backpressure: {queued} batches already queued (batches_queued_max)")]
    Backpressure {
        /// Batches waiting.
        queued: usize,
    },
    /// A read outside what has been written.
    #[error("range {lo}..{hi} is outside the readable log {first}..{next}")]
    OutOfRange {
        /// Requested start (inclusive).
        lo: u64,
        /// Requested end (exclusive).
        hi: u64,
        /// First readable index.
        first: u64,
        /// One past the last written index.
        next: u64,
    },
    /// An earlier write or sync failed; the log accepts nothing more (a failed fsync is
    /// never retried: the kernel may have dropped the dirty pages).
    #[error("log failed earlier and accepts nothing more: {0}")]
    Poisoned(String),
    /// The entries this future waited for were truncated away.
    #[error("entries were truncated before this append's durability was observed")]
    Truncated,
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// A truncation or hard-state save is already running.
    #[error("another exclusive operation is running (truncate suffix or hard-state save)")]
    Busy,
    /// An append with no entries.
    #[error("append of zero entries")]
    EmptyAppend,
}

/// Bytes of io memory (registered with io_uring, so locked) for each executor built with
/// [`executor_builder`]: small enough that two executors fit in `ulimit -l` = 8 MiB.
pub const EXECUTOR_IO_MEMORY_BYTES: usize = 1 << 20;
/// Ring depth of each executor built with [`executor_builder`].
pub const EXECUTOR_RING_DEPTH: usize = 128;

/// A glommio executor builder sized for the log: [`EXECUTOR_IO_MEMORY_BYTES`] of io memory
/// and [`EXECUTOR_RING_DEPTH`] entries per ring, not pinned.
pub fn executor_builder(name: &str) -> glommio::LocalExecutorBuilder {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name(name)
        .io_memory(EXECUTOR_IO_MEMORY_BYTES)
        .ring_depth(EXECUTOR_RING_DEPTH)
}

/// The locked-memory limit (`ulimit -l`) in KiB, if it can be read.
pub fn memlock_limit_kib() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    (rc == 0).then_some(r.rlim_cur / 1024)
}

/// Explains a failure to start (or run) an executor; when it looks like the locked-memory
/// limit, says so and names `ulimit -l`.
pub fn explain_executor_error(err: &dyn std::fmt::Display) -> String {
    let limit = memlock_limit_kib().map_or_else(|| "unknown".to_string(), |k| format!("{k} KiB"));
    let text = err.to_string();
    let memlock = [
        "MemLock",
        "memlock",
        "Cannot allocate memory",
        "os error 12",
    ]
    .iter()
    .any(|m| text.contains(m));
    if memlock {
        format!(
            "could not start a glommio executor: {text}. Each executor locks about {} KiB of io \
             memory plus its io_uring rings; the locked-memory limit `ulimit -l` is {limit}. \
             Raise it (e.g. `ulimit -l 65536`, or memlock in /etc/security/limits.conf) or run \
             fewer executors.",
            EXECUTOR_IO_MEMORY_BYTES / 1024 + 3 * EXECUTOR_RING_DEPTH * 64 / 1024
        )
    } else {
        format!("glommio executor failed: {text} (locked-memory limit `ulimit -l` is {limit})")
    }
}

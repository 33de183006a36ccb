//! Opening a log: recovery of its segments (dropping only a torn tail, reported exactly)
//! and the start of its flusher.
//!
//! It must never drop more than a torn tail of the newest segment: invalid bytes anywhere
//! else fail the open with the segment and the offset.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;

use crate::log::file::{self, LogFile, page_down, page_up};
use crate::log::hard_state::HardStateFile;
use crate::log::recovery::{self, ScanError};
use crate::log::{LogConfig, LogError};

use super::files::{Files, or_close};
use super::flush::{flusher, prepare_spare, spawn_spare};
use super::{
    Flusher, Log, LogStats, RecoveryReport, SPARE_FILE, Segment, Shared, State, TRUNCATE_FILE,
    TornTail, io_err,
};

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
}

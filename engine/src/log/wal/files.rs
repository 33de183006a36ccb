//! Who closes each file of the log: the files taken out of its state at close, the files
//! retired while a read or sync still holds them, and the steps that close a new file
//! when they fail, so that no path leaves a file to `Drop`.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::Task;

use crate::log::file::{self, LogFile};
use crate::log::{LogConfig, LogError};

use super::{Shared, io_err};

const ZERO_CHUNK_BYTES: usize = 1 << 20;

impl Shared {
    /// Takes every file out of the state (segments, retired files, the spare task), for
    /// close or drop; the segment set is empty afterwards.
    pub(super) fn take_files(&self) -> Files {
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
    pub(super) async fn retire(&self, path: PathBuf, f: Rc<LogFile>) -> Result<(), LogError> {
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
}

/// Files taken out of a log's state by [`Shared::take_files`].
pub(super) struct Files {
    pub(super) files: Vec<(PathBuf, Rc<LogFile>)>,
    pub(super) spare: Option<Task<Result<(PathBuf, LogFile), LogError>>>,
}

impl Files {
    /// Waits for the spare's preparation, then closes every file; returns the first error.
    /// Called only when nothing else holds the files (the flusher has finished).
    pub(super) async fn close(self) -> Result<(), LogError> {
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
pub(super) async fn or_close<T>(
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

/// Creates `path` (replacing it), preallocates a segment's bytes, zero-fills them when
/// configured, and syncs the data (not the directory entry: callers rename it first).
pub(super) async fn create_zeroed(path: &Path, cfg: &LogConfig) -> Result<LogFile, LogError> {
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

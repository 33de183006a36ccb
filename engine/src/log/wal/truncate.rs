//! Cutting the log: the suffix Raft must replace (crash-safe, through a temporary file
//! that atomically replaces the segment holding the cut) and the prefix a snapshot covers.
//!
//! A truncation must never run beside an append or another truncation (it holds the log's
//! `exclusive` flag), and compaction never removes the newest segment.

use std::rc::Rc;
use std::task::Waker;

use crate::log::file::{self, LogFile, page_down, page_up};
use crate::log::format::BatchBuilder;
use crate::log::{LogConfig, LogError};

use super::files::{create_zeroed, or_close};
use super::flush::roll;
use super::{Durable, Log, TRUNCATE_FILE, io_err};

impl Log {
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
}

//! The flusher: writes one batch at a time at the end of the newest segment, marks it
//! durable once its O_DSYNC write or `fdatasync` completes, and rolls to a new segment
//! (prepared ahead of need as the spare) when a batch does not fit.
//!
//! It must never mark an entry durable before the write or sync that covers it has
//! completed, and never write into a new segment before everything in the old one is
//! durable (so that only the newest segment can hold a torn tail).

use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::task::{Poll, Waker};

use glommio::Task;

use crate::log::file::{self, LogFile, PAGE_BYTES, page_down, page_up};
use crate::log::format::BatchBuilder;
use crate::log::{LogConfig, LogError};

use super::files::{create_zeroed, or_close};
use super::{SPARE_FILE, Segment, Shared, io_err};

impl Shared {
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

pub(super) async fn flusher(sh: Rc<Shared>) {
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

pub(super) async fn prepare_spare(
    dir: PathBuf,
    cfg: LogConfig,
) -> Result<(PathBuf, LogFile), LogError> {
    let path = dir.join(SPARE_FILE);
    let f = create_zeroed(&path, &cfg).await?;
    Ok((path, f))
}

/// Starts preparing the next segment file in the background.
pub(super) fn spawn_spare(sh: &Rc<Shared>) {
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
pub(super) async fn roll(sh: &Rc<Shared>, first_index: u64) -> Result<(), LogError> {
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

//! Sleeping inside the ring: a [`RingParker`] waits in `io_uring_enter(GETEVENTS)` with a
//! timeout, so a datagram, a send failure or a signal of a polled eventfd wakes the thread
//! in one hop, and the sends a poll left queued go down in the same system call.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use super::{IORING_ENTER_EXT_ARG, IORING_ENTER_GETEVENTS, UdpError, UdpRing, io_err};

/// State a ring shares with its [`RingParker`] (same thread).
#[derive(Debug, Default)]
pub(super) struct ParkState {
    /// A wake-up eventfd fired since [`RingParker::take_woken`] last looked.
    pub(super) woken: Cell<bool>,
    /// Datagrams received by the last [`UdpRing::poll`].
    pub(super) last_receives: Cell<u32>,
    /// SQEs the ring left queued, not yet submitted: the next park submits them in the
    /// same `io_uring_enter` that waits. Exact: the kernel waits only if it submitted
    /// every entry it was asked to.
    pub(super) sq_pending: Cell<u32>,
    /// `io_uring_enter` calls the parker made (folded into the ring's counters at poll).
    pub(super) enters: Cell<u64>,
    /// SQEs the parker submitted (likewise).
    pub(super) sqes: Cell<u64>,
}

/// How a [`RingParker::park`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// Completions are ready (or deferred work ran): poll the ring.
    Ready,
    /// The timeout passed with fewer completions than asked for (maybe none).
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

/// Puts the shard's thread to sleep inside its [`UdpRing`] (`io_uring_enter` with
/// `GETEVENTS` and a timeout), so that a datagram, a send completion or a signal of a
/// [`UdpRing::wake_on`] eventfd wakes it in one hop: no eventfd, no glommio reactor in
/// between. Made by [`UdpRing::parker`]; holds its own reference to the ring's file, so it
/// stays valid (and merely waits out its timeout) after the ring is closed. It does not
/// submit: call [`UdpRing::flush`] or [`UdpRing::poll`] before parking. Not `Send`: the
/// ring is single-issuer.
#[derive(Debug)]
pub struct RingParker {
    fd: OwnedFd,
    state: Rc<ParkState>,
    /// Submission queue entries of the ring: the most one park submits.
    sq_entries: u32,
}

/// `struct io_uring_getevents_arg` (linux/io_uring.h).
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

impl RingParker {
    /// Sleeps until at least `min_complete` completions are ready, a wake-up eventfd fires,
    /// or `timeout` passes (`None`: no timeout). Returns at once if completions are
    /// already waiting. Sends the ring left queued (see [`UdpRing::poll`]) are submitted by
    /// the same system call before it sleeps; then it may report `Ready` after a timeout.
    pub fn park(&self, timeout: Option<Duration>, min_complete: u32) -> io::Result<Parked> {
        let to_submit = self.state.sq_pending.replace(0).min(self.sq_entries);
        let ts = timeout.map(|t| {
            let secs = t.as_secs().min(i64::MAX as u64) as i64;
            libc::timespec {
                tv_sec: secs,
                tv_nsec: t.subsec_nanos() as _,
            }
        });
        let arg = GeteventsArg {
            sigmask: 0,
            sigmask_sz: 0,
            min_wait_usec: 0,
            ts: ts
                .as_ref()
                .map_or(0, |t| t as *const libc::timespec as usize as u64),
        };
        // SAFETY: io_uring_enter on a ring file we hold a reference to; with EXT_ARG the
        // kernel reads `arg` (and the timespec it points at), both alive for the call. The
        // SQEs it submits were pushed by the ring (same thread), which keeps their memory
        // alive until it sees them consumed; after the ring is closed nothing is queued.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd.as_raw_fd(),
                to_submit,
                min_complete.max(1),
                IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                &arg as *const GeteventsArg,
                std::mem::size_of::<GeteventsArg>(),
            )
        };
        self.state.enters.set(self.state.enters.get() + 1);
        if r >= 0 {
            if to_submit > 0 {
                // The count submitted (the wait's own result is not reported then).
                self.state.sqes.set(self.state.sqes.get() + r as u64);
            }
            return Ok(Parked::Ready);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ETIME) => Ok(Parked::TimedOut),
            Some(libc::EINTR) => Ok(Parked::Interrupted),
            // The CQ overflowed (EBUSY) or the kernel is short of memory (EAGAIN): there is
            // work to reap, so report ready and let the caller poll.
            Some(libc::EBUSY) | Some(libc::EAGAIN) => Ok(Parked::Ready),
            _ => Err(e),
        }
    }

    /// Submits the sends the ring left queued, if any, without waiting (for a shard about
    /// to do something else before it parks, such as giving glommio a turn).
    pub fn submit_queued(&self) {
        let to_submit = self.state.sq_pending.replace(0).min(self.sq_entries);
        if to_submit == 0 {
            return;
        }
        // SAFETY: as in `park`, without the wait (no argument is read).
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd.as_raw_fd(),
                to_submit,
                0u32,
                0u32,
                std::ptr::null::<libc::c_void>(),
                0usize,
            )
        };
        self.state.enters.set(self.state.enters.get() + 1);
        if r > 0 {
            self.state.sqes.set(self.state.sqes.get() + r as u64);
        }
        // Whatever was not submitted (EBUSY, EAGAIN) the next poll submits.
    }

    /// Whether a wake-up eventfd fired since the last call (and clears the flag). Set when
    /// [`UdpRing::poll`] reaps the poll's completion.
    pub fn take_woken(&self) -> bool {
        self.state.woken.replace(false)
    }

    /// Datagrams received by the ring's last poll (a hint of the load).
    pub fn last_receives(&self) -> u32 {
        self.state.last_receives.get()
    }
}

impl UdpRing {
    /// A [`RingParker`] for this ring: from now on the shard is expected to sleep in the
    /// ring, so the ring's eventfd is no longer signalled (nobody needs it, and each signal
    /// costs the kernel a wake-up of whoever polls it).
    pub fn parker(&mut self) -> Result<RingParker, UdpError> {
        // SAFETY: the ring's descriptor is open for as long as `self.ring` lives, which
        // covers this borrow; the clone is a new descriptor of our own.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(io_err("dup of the ring descriptor"))?;
        self.parked = true;
        self.ring.completion().disable_eventfd();
        Ok(RingParker {
            fd,
            state: Rc::clone(&self.park),
            sq_entries: self.config.sq_entries,
        })
    }
}

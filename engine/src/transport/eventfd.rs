//! An eventfd: a kernel counter any thread can signal and a ring or a reactor can wait on.
//!
//! It lives in the transport because the transport is where the kernel's wake-up objects
//! are registered: a [`super::UdpRing`] registers one for its completions and polls others
//! ([`super::UdpRing::wake_on`]). The runtime builds its command wake-ups from the same
//! type; this module must never depend on the runtime (the runtime drives the transport,
//! not the other way round).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// An eventfd, shareable across threads. Signalling is one `write(2)` of 8 bytes.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A new eventfd. It is blocking on purpose: glommio's io_uring read of a blocking
    /// eventfd waits by internal poll, while a non-blocking one would complete at once with
    /// EAGAIN.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd has no memory preconditions; we check the result.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The raw descriptor (for `IORING_REGISTER_EVENTFD`).
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Adds one to the counter, waking whoever waits on it.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a valid u64 to our own descriptor. The only failure
        // is a counter at u64::MAX - 1, impossible at one per signal.
        unsafe {
            libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

//! Wake-ups of a shard: a shard-local flag that the shard's main loop awaits, and a watch
//! that turns the signals of an [`EventFd`] (from any thread, or from the kernel for an
//! io_uring with the eventfd registered) into that flag.
//!
//! One glommio task per eventfd keeps one read of it in flight on glommio's own ring and
//! turns each completion into a [`LocalNotify`] signal. The read is never dropped while in
//! flight (a dropped read could swallow a signal): the task owns it, and stops only after
//! [`Watch::stop`] makes one last signal to complete it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::transport::EventFd;

#[derive(Default)]
struct NotifyState {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    signals: Cell<u64>,
}

/// A shard-local, level-triggered wake-up flag. Cheap to clone (an `Rc`).
#[derive(Clone, Default)]
pub struct LocalNotify {
    state: Rc<NotifyState>,
}

impl LocalNotify {
    /// A new, unset flag.
    pub fn new() -> LocalNotify {
        LocalNotify::default()
    }

    /// Sets the flag and wakes the waiter, if any.
    pub fn notify(&self) {
        self.state.set.set(true);
        self.state.signals.set(self.state.signals.get() + 1);
        if let Some(w) = self.state.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Completes when the flag is set, and clears it. Cancel-safe: dropping the future
    /// loses nothing.
    pub fn notified(&self) -> Notified<'_> {
        Notified { notify: self }
    }

    /// Clears the flag; returns whether it was set (a wake-up consumed without awaiting).
    pub fn take(&self) -> bool {
        self.state.set.replace(false)
    }

    /// Whether the flag is set (without clearing it).
    pub fn is_set(&self) -> bool {
        self.state.set.get()
    }

    /// Signals seen so far (for tests and counters).
    pub fn signal_count(&self) -> u64 {
        self.state.signals.get()
    }
}

/// Future of [`LocalNotify::notified`].
pub struct Notified<'a> {
    notify: &'a LocalNotify,
}

impl Future for Notified<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let s = &self.notify.state;
        if s.set.replace(false) {
            return Poll::Ready(());
        }
        *s.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// A glommio task turning signals of an [`EventFd`] into [`LocalNotify`] wake-ups.
pub struct Watch {
    task: Option<glommio::task::JoinHandle<()>>,
    stopping: Rc<Cell<bool>>,
    eventfd: std::sync::Arc<EventFd>,
}

impl Watch {
    /// Starts watching `eventfd` on the current glommio executor; each signal sets `notify`.
    pub fn start(eventfd: std::sync::Arc<EventFd>, notify: LocalNotify) -> io::Result<Watch> {
        let fd = eventfd.as_fd().try_clone_to_owned()?;
        // SAFETY: `fd` is a descriptor we own (a dup); glommio's file takes ownership of it
        // and closes it in `close()` below.
        let file = unsafe { glommio::io::BufferedFile::from_raw_fd(fd.into_raw_fd()) };
        let stopping = Rc::new(Cell::new(false));
        let stop = Rc::clone(&stopping);
        let task = glommio::spawn_local(async move {
            loop {
                let r = file.read_at(0, 8).await;
                notify.notify();
                if stop.get() {
                    break;
                }
                if let Err(e) = r {
                    tracing::error!("eventfd read failed, shard wake-ups stop: {e}");
                    break;
                }
            }
            let _ = file.close().await;
        })
        .detach();
        Ok(Watch {
            task: Some(task),
            stopping,
            eventfd,
        })
    }

    /// Stops the task: one last signal completes its read, then it closes its descriptor.
    pub async fn stop(mut self) {
        self.stopping.set(true);
        self.eventfd.signal();
        if let Some(t) = self.task.take() {
            t.await;
        }
    }
}

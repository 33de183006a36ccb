//! The completion slot of one request and [`Pending`], its waiting end: a blocking wait, a
//! wait with a timeout, or a hand-written [`Future`] woken through its [`Waker`].
//!
//! A slot is completed at most once; later completions are ignored (the first outcome
//! stands). It never blocks the completing thread beyond its own short lock, and calls the
//! waker outside that lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{ClientError, Reply};

/// The outcome of a request.
pub type Outcome = Result<Reply, ClientError>;

#[derive(Default)]
struct SlotState {
    /// Set once, taken by the waiter.
    outcome: Option<Outcome>,
    /// Whether an outcome was ever set (it stays true after the waiter took it).
    done: bool,
    waker: Option<Waker>,
}

/// Where a request's outcome lands.
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A poisoned slot only means a waiter panicked; its state is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the outcome unless one is set already; returns whether this call set it.
    /// `on_set` runs once the outcome is set and before any waiter can see it.
    pub(crate) fn complete(&self, outcome: Outcome, on_set: impl FnOnce()) -> bool {
        let waker = {
            let mut s = self.lock();
            if s.done {
                return false;
            }
            s.done = true;
            s.outcome = Some(outcome);
            on_set();
            s.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
        true
    }
}

/// A request in flight: wait for it ([`Pending::wait`], [`Pending::wait_timeout`]) or
/// `.await` it. Every request ends by its deadline (`ClientConfig::request_timeout_ms`),
/// so a wait always returns.
///
/// Dropping a `Pending` does not cancel the request: it still runs to its end, and its
/// outcome is dropped.
#[must_use = "a request's outcome is only seen through its Pending"]
pub struct Pending {
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Pending {
    pub(crate) fn new(slot: Arc<Slot>) -> Pending {
        Pending { slot }
    }

    /// A request that failed before it was sent.
    pub(crate) fn failed(err: ClientError) -> Pending {
        let slot = Arc::new(Slot::default());
        slot.complete(Err(err), || {});
        Pending { slot }
    }

    /// Whether the outcome is there (a wait would not block).
    pub fn is_ready(&self) -> bool {
        let s = self.slot.lock();
        s.outcome.is_some() || s.done
    }

    /// Blocks until the outcome is there.
    pub fn wait(self) -> Outcome {
        let mut s = self.slot.lock();
        loop {
            if let Some(o) = take(&mut s) {
                return o;
            }
            s = self.slot.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Blocks until the outcome is there or `timeout` passes; gives the `Pending` back in
    /// the second case (the request goes on).
    pub fn wait_timeout(self, timeout: Duration) -> Result<Outcome, Pending> {
        let until = Instant::now() + timeout;
        {
            let mut s = self.slot.lock();
            loop {
                if let Some(o) = take(&mut s) {
                    return Ok(o);
                }
                let now = Instant::now();
                if now >= until {
                    break;
                }
                s = self
                    .slot
                    .ready
                    .wait_timeout(s, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        Err(self)
    }
}

/// The outcome if there is one. A slot whose outcome was taken already (a future polled
/// after it completed) answers [`ClientError::Closed`] rather than hang.
fn take(s: &mut SlotState) -> Option<Outcome> {
    match s.outcome.take() {
        Some(o) => Some(o),
        None if s.done => Some(Err(ClientError::Closed)),
        None => None,
    }
}

impl Future for Pending {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut s = self.slot.lock();
        if let Some(o) = take(&mut s) {
            return Poll::Ready(o);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

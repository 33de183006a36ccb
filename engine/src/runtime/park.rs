//! A shard asleep in its own ring ([`ShardContext::park_in`]): [`ShardContext::wait`]
//! blocks in `io_uring_enter` on the shard's [`UdpRing`] instead of in glommio's reactor,
//! and hands glommio a turn whenever one is due, so that what glommio drives (TCP streams,
//! watches, glommio timers, mesh channels) still runs, late by at most
//! [`ParkConfig::glommio_turn_interval_us`].
//!
//! Commands and mesh messages end a park at once: the command eventfd is polled in the ring
//! ([`UdpRing::wake_on`]), and a mesh message to a parked shard also signals that eventfd
//! (see [`ShardContext::mesh_send`]).

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{ParkConfig, ShardContext};
use crate::time::Time;
use crate::transport::{Parked, RingParker, UdpError, UdpRing};

/// A shard parked in its ring: the parker and when glommio is due for a turn.
pub(super) struct ParkSlot {
    pub(super) parker: RingParker,
    pub(super) turn_interval: Duration,
    pub(super) turn_due_at: Cell<Time>,
    /// The first park failure, logged once; after it the shard sleeps in glommio again.
    pub(super) failed: Cell<bool>,
}

impl<C: Send + 'static, E: Send + 'static, M: Send + 'static> ShardContext<C, E, M> {
    /// From now on [`ShardContext::wait`] sleeps inside `ring` (`io_uring_enter` with a
    /// timeout) instead of in glommio's reactor, so a datagram wakes the shard in one hop.
    /// Use it in place of `watch(ring.eventfd())`. Commands (and mesh messages, which
    /// signal the command eventfd of a parked shard) wake the park through a poll of the
    /// command eventfd in `ring`; everything else glommio drives (TCP streams, other
    /// watches, glommio timers) runs at the latest `config.glommio_turn_interval_us` later
    /// than it would have. Once the ring is closed its polls are cancelled, so `wait`
    /// sleeps until its deadline or the next glommio turn, whichever comes first (the
    /// parker holds its own reference to the ring's file: never a dangling descriptor).
    pub fn park_in(&self, ring: &mut UdpRing, config: ParkConfig) -> Result<(), UdpError> {
        let efd = Arc::clone(&self.inner.shared.commands[self.inner.id].1);
        ring.wake_on(efd)?;
        let parker = ring.parker()?;
        let turn_interval = Duration::from_micros(config.glommio_turn_interval_us.max(1));
        // The first wait hands glommio a turn at once: a mesh message sent before the flag
        // below was visible did not signal the command eventfd, and only a turn (glommio
        // polling its channels) brings it in.
        *self.inner.park.borrow_mut() = Some(Rc::new(ParkSlot {
            parker,
            turn_interval,
            turn_due_at: Cell::new(self.now()),
            failed: Cell::new(false),
        }));
        // SeqCst pairs with the load in `mesh_send`: either the sender sees the flag and
        // signals, or its message is in the channel before this shard's first turn.
        self.inner.shared.parked[self.inner.id].store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether [`ShardContext::park_in`] is in effect.
    pub fn parks_in_ring(&self) -> bool {
        self.inner
            .park
            .borrow()
            .as_ref()
            .is_some_and(|p| !p.failed.get())
    }

    /// [`ShardContext::wait`] for a shard parked in its ring.
    ///
    /// glommio polls its own rings, timers and channels only when no task is runnable, so
    /// the park (which blocks this task) hands glommio a turn before sleeping whenever one
    /// is due: the interval passed, a wake-up eventfd fired (a command or mesh message may
    /// wait in glommio's queues), or glommio's preemption flag is up.
    pub(super) async fn wait_parked(&self, park: &ParkSlot, deadline: Option<Time>) {
        let mut turned = false;
        loop {
            if self.stopping() || self.inner.wake.take() {
                return;
            }
            let now = self.now();
            if deadline.is_some_and(|d| d <= now) {
                return;
            }
            if !turned
                && (park.parker.take_woken()
                    || now >= park.turn_due_at.get()
                    || glommio::executor().need_preempt())
            {
                // Sends the last poll left for the park must not wait for glommio's turn.
                park.parker.submit_queued();
                glommio_turn().await;
                turned = true;
                park.turn_due_at.set(self.now() + park.turn_interval);
                continue;
            }
            let until = match deadline {
                Some(d) => d.min(park.turn_due_at.get()),
                None => park.turn_due_at.get(),
            };
            let timeout = until.saturating_since(now);
            match park.parker.park(Some(timeout), 1) {
                Ok(Parked::Ready) | Ok(Parked::Interrupted) => return,
                Ok(Parked::TimedOut) => turned = false,
                Err(e) => {
                    tracing::error!(
                        shard = self.inner.id,
                        "parking in the ring failed, sleeping in glommio from now on: {e}"
                    );
                    park.failed.set(true);
                    self.inner.shared.parked[self.inner.id].store(false, Ordering::Release);
                    return;
                }
            }
        }
    }
}

/// Hands glommio's executor one turn: this task goes pending on a timer that has already
/// expired, so the executor (which polls its rings, timers and channels only when no task
/// is runnable) runs what else is ready, polls, finds the timer due and resumes this task
/// without sleeping. Two plain yields after it let the tasks that poll woke (a mesh
/// forwarder, a stream) run before the shard parks again.
async fn glommio_turn() {
    GlommioTurn { timer: None }.await;
    futures_lite::future::yield_now().await;
    futures_lite::future::yield_now().await;
}

/// See [`glommio_turn`].
struct GlommioTurn {
    timer: Option<glommio::timer::Timer>,
}

impl Future for GlommioTurn {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match self.timer.as_mut() {
            None => {
                // A timer far out registers with the reactor (pending); reset to zero it
                // stays registered, already due. (A timer made due is ready at once and
                // never registers.)
                let mut timer = glommio::timer::Timer::new(Duration::from_secs(3600));
                if std::pin::Pin::new(&mut timer).poll(cx).is_ready() {
                    return std::task::Poll::Ready(());
                }
                timer.reset(Duration::ZERO);
                self.timer = Some(timer);
                std::task::Poll::Pending
            }
            Some(timer) => std::pin::Pin::new(timer).poll(cx).map(|_| ()),
        }
    }
}

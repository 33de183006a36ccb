//! What a shard's main function is handed: a [`ShardContext`] with the shard's identity,
//! the clock, its wake-ups, the mesh to the other shards, and the channels to and from the
//! application. Shard-local: nothing here is shared with another thread except through the
//! bounded channels and the eventfds in [`Shared`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use glommio::channels::channel_mesh::Senders;
use glommio::{GlommioError, ResourceType};

use super::park::ParkSlot;
use super::{EventFd, LocalNotify, MeshError, Watch};
use crate::time::{Clock, Time};

pub(super) struct Shared<C, E> {
    pub(super) stop: AtomicBool,
    pub(super) commands: Vec<(crossbeam_channel::Sender<C>, Arc<EventFd>)>,
    pub(super) events: crossbeam_channel::Sender<E>,
    /// Shard `i` sleeps in its own ring ([`ShardContext::park_in`]): glommio's channels
    /// cannot wake it, so a mesh message to it also signals its command eventfd.
    pub(super) parked: Vec<AtomicBool>,
}

pub(super) struct Inner<C: Send + 'static, E: Send + 'static, M: Send + 'static> {
    pub(super) id: usize,
    pub(super) shards: usize,
    pub(super) clock: Clock,
    pub(super) shared: Arc<Shared<C, E>>,
    pub(super) commands: crossbeam_channel::Receiver<C>,
    pub(super) wake: LocalNotify,
    pub(super) watches: RefCell<Vec<Watch>>,
    pub(super) mesh: Senders<M>,
    /// glommio's mesh peer id of each shard.
    pub(super) peer_of_shard: Vec<usize>,
    pub(super) inbox: RefCell<VecDeque<(usize, M)>>,
    pub(super) inbox_space: LocalNotify,
    pub(super) inbox_max: usize,
    pub(super) forwarders: RefCell<Vec<glommio::task::JoinHandle<()>>>,
    pub(super) events_dropped: Cell<u64>,
    pub(super) mesh_dropped: Cell<u64>,
    pub(super) park: RefCell<Option<Rc<ParkSlot>>>,
}

/// What a shard's main function gets: its identity, clock, wake-ups, the mesh, and the
/// channels to and from the application. Cheap to clone (an `Rc`); shard-local.
pub struct ShardContext<C: Send + 'static, E: Send + 'static, M: Send + 'static> {
    pub(super) inner: Rc<Inner<C, E, M>>,
}

impl<C: Send + 'static, E: Send + 'static, M: Send + 'static> Clone for ShardContext<C, E, M> {
    fn clone(&self) -> Self {
        ShardContext {
            inner: Rc::clone(&self.inner),
        }
    }
}

impl<C: Send + 'static, E: Send + 'static, M: Send + 'static> ShardContext<C, E, M> {
    /// This shard's index.
    pub fn id(&self) -> usize {
        self.inner.id
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.shards
    }

    /// The runtime's clock (same epoch on every shard).
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// Now, on the runtime's clock.
    pub fn now(&self) -> Time {
        self.inner.clock.now()
    }

    /// Whether shutdown was asked: the main function should close what it owns and return.
    pub fn stopping(&self) -> bool {
        self.inner.shared.stop.load(Ordering::Acquire)
    }

    /// The shard's wake-up flag (set by commands, mesh messages and watched eventfds).
    pub fn waker(&self) -> &LocalNotify {
        &self.inner.wake
    }

    /// Watches `eventfd` (e.g. a `UdpRing`'s): each signal wakes [`ShardContext::wait`].
    /// The watch is stopped when the shard ends.
    pub fn watch(&self, eventfd: Arc<EventFd>) -> std::io::Result<()> {
        let w = Watch::start(eventfd, self.inner.wake.clone())?;
        self.inner.watches.borrow_mut().push(w);
        Ok(())
    }

    /// Waits until something wakes the shard, or until `deadline` (on the runtime clock)
    /// passes. Returns at once if a wake-up is pending. Cancel-safe. After
    /// [`ShardContext::park_in`] it sleeps in the ring, and may also return when the ring
    /// has completions (poll it) or spuriously.
    pub async fn wait(&self, deadline: Option<Time>) {
        if self.stopping() {
            return;
        }
        let park = self.inner.park.borrow().clone();
        if let Some(park) = park
            && !park.failed.get()
        {
            return self.wait_parked(&park, deadline).await;
        }
        match deadline {
            None => self.inner.wake.notified().await,
            Some(at) => {
                let now = self.now();
                if at <= now {
                    return;
                }
                let sleep = glommio::timer::sleep(at - now);
                futures_lite::future::or(self.inner.wake.notified(), async {
                    sleep.await;
                })
                .await;
            }
        }
    }

    /// The next command from the application, if any.
    pub fn try_command(&self) -> Option<C> {
        self.inner.commands.try_recv().ok()
    }

    /// Sends an event to the application; counts and drops it if the channel is full.
    pub fn emit(&self, event: E) -> bool {
        match self.inner.shared.events.try_send(event) {
            Ok(()) => true,
            Err(_) => {
                self.inner
                    .events_dropped
                    .set(self.inner.events_dropped.get() + 1);
                false
            }
        }
    }

    /// Events dropped because the application's channel was full.
    pub fn events_dropped(&self) -> u64 {
        self.inner.events_dropped.get()
    }

    /// Sends `msg` to shard `to` without waiting. A full channel refuses it (counted).
    pub fn mesh_send(&self, to: usize, msg: M) -> Result<(), MeshError<M>> {
        if to >= self.inner.shards {
            return Err(MeshError::NoSuchShard(to));
        }
        let refused = |e: MeshError<M>| {
            self.inner
                .mesh_dropped
                .set(self.inner.mesh_dropped.get() + 1);
            Err(e)
        };
        if to == self.inner.id {
            let mut inbox = self.inner.inbox.borrow_mut();
            if inbox.len() >= self.inner.inbox_max {
                return refused(MeshError::Full(msg));
            }
            inbox.push_back((to, msg));
            self.inner.wake.notify();
            return Ok(());
        }
        match self
            .inner
            .mesh
            .try_send_to(self.inner.peer_of_shard[to], msg)
        {
            Ok(()) => {
                // A shard asleep in its own ring does not see glommio's channel wake-up.
                // The fence orders the message before the flag's load (see `park_in`).
                std::sync::atomic::fence(Ordering::SeqCst);
                if self.inner.shared.parked[to].load(Ordering::SeqCst) {
                    self.inner.shared.commands[to].1.signal();
                }
                Ok(())
            }
            Err(GlommioError::WouldBlock(ResourceType::Channel(m))) => refused(MeshError::Full(m)),
            Err(GlommioError::Closed(ResourceType::Channel(m))) => refused(MeshError::Closed(m)),
            Err(_) => refused(MeshError::NoSuchShard(to)),
        }
    }

    /// Mesh messages refused because the destination's channel was full.
    pub fn mesh_dropped(&self) -> u64 {
        self.inner.mesh_dropped.get()
    }

    /// The next mesh message that arrived, with the shard that sent it.
    pub fn mesh_recv(&self) -> Option<(usize, M)> {
        let m = self.inner.inbox.borrow_mut().pop_front();
        if m.is_some() {
            self.inner.inbox_space.notify();
        }
        m
    }

    pub(super) async fn close(&self) {
        self.inner.mesh.close();
        let forwarders: Vec<_> = self.inner.forwarders.borrow_mut().drain(..).collect();
        for f in forwarders {
            // A forwarder may be parked waiting for inbox space: drain so it can finish.
            self.inner.inbox.borrow_mut().clear();
            self.inner.inbox_space.notify();
            f.await;
        }
        let watches: Vec<_> = self.inner.watches.borrow_mut().drain(..).collect();
        for w in watches {
            w.stop().await;
        }
    }
}

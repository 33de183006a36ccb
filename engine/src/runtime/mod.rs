//! Shards: one glommio executor per core, a cross-shard mesh, timers, and the edge to the
//! embedding application's threads.
//!
//! This module is glue: it owns threads, executors, channels and wake-ups, never protocol
//! state, and it must never block a shard (every channel a shard writes to is bounded and
//! written with `try_send`; what does not fit is counted).
//!
//! # Design note: how members, sockets, timers and outputs are wired (`crate::host` is the SWIM one)
//!
//! - **Placement.** A member (one SWIM instance, its own address `127.0.0.x:port`) or a Raft
//!   group lives on shard `hash(name) % shards` ([`shard_of`]). Whoever creates it sends a
//!   command to that shard ([`Runtime::send`]); the shard owns it from then on. Nothing
//!   else touches it: other shards and the application only send messages.
//! - **Sockets.** Each shard owns one [`crate::transport::UdpRing`]. A member's socket is
//!   bound on its shard's ring ([`crate::transport::UdpRing::bind`]) and is identified by
//!   the returned `SocketId`; the shard keeps `SocketId -> member` in a slab indexed by the
//!   id (ids are small dense integers). All sockets of a shard share one provided buffer
//!   ring, so 5,000 members cost 5,000 SQEs, not 5,000 buffers. RLIMIT_NOFILE is raised by
//!   [`crate::transport::raise_nofile`] before binding thousands of them.
//! - **Receive path.** The shard parks in its ring ([`ShardContext::park_in`]; the older
//!   path, watching the ring's eventfd with [`ShardContext::watch`], still works but costs a
//!   wake-up four hops); the shard's
//!   main loop ([`ShardContext::wait`]) wakes, calls `ring.poll(&mut handler)`, and the
//!   handler looks up the member by `SocketId` and feeds it each validated `MessageRef`
//!   with `clock.now()`. The core's outputs are applied right there: sends go to the
//!   `Sender` the handler was given (batched into the next submit), timer changes go to
//!   [`Timers`], events for the application go to [`ShardContext::emit`].
//! - **Timers.** One [`Timers`] per shard keyed by member (or `(member, timer kind)` if a
//!   core wants several). After any input, the shard calls `timers.set(key,
//!   core.poll_timeout())`. The main loop sleeps until `timers.next_deadline()` or a wake-up,
//!   then pops every expired key and calls `core.handle_timeout(now)`. One heap for
//!   thousands of members costs O(log n) per re-arm, no glommio timer per member.
//! - **Cross-shard.** A member sending to a member on the same host still goes over UDP
//!   (the members are independent nodes). The mesh ([`ShardContext::mesh_send`]) carries
//!   shard-level work: application commands routed to the owning shard, membership
//!   snapshots gathered for `members()`, Raft proposals forwarded to the group's shard.
//! - **Outputs to the application.** Events (member up/suspect/down/left/updated, user
//!   messages, Raft commits) are sent on one bounded crossbeam channel ([`Runtime::events`]);
//!   a full channel drops and counts ([`ShardContext::events_dropped`]), never blocks.
//! - **Shutdown.** [`Runtime::shutdown`] sets the stop flag and wakes every shard; a shard's
//!   main function sees [`ShardContext::stopping`], closes its ring (cancel receives, wait
//!   for in-flight sends, close sockets) and returns; the runtime then closes the mesh,
//!   joins the mesh forwarders and the eventfd watchers, and joins the thread.
//!
//! The shard's main function is supplied by the caller ([`Runtime::start`]), so the SWIM
//! driver, the Raft driver, the benchmarks and the tests are all just main functions.

pub mod notify;
pub mod timers;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::channels::channel_mesh::{MeshBuilder, Senders};
use glommio::{GlommioError, LocalExecutorBuilder, Placement, ResourceType};

pub use notify::{LocalNotify, Watch};
pub use timers::{Timers, TimersFull};

use crate::time::{Clock, Time};
use crate::transport::limits::{LimitError, ensure_memlock};
/// The eventfd type of the command wake-ups (defined by the transport, which registers it).
pub use crate::transport::EventFd;
use crate::transport::{Parked, RingParker, UdpError, UdpRing};

/// How long a shard waits for its peers to publish their mesh ids after joining.
const MESH_JOIN_WAIT_MAX: Duration = Duration::from_secs(10);

/// Configuration of a [`Runtime`]; every bound is a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Number of shards (executor threads); 0 means one per CPU this process may use.
    pub shards: usize,
    /// Pin shard `i` to the `i`-th allowed CPU (`Placement::Fixed`); falls back to unbound
    /// with a logged reason when the host refuses.
    pub pin: bool,
    /// glommio's registered I/O memory per executor (registered on its 3 rings).
    pub io_memory_bytes: usize,
    /// glommio's ring depth per executor.
    pub ring_depth: usize,
    /// Capacity of each shard-to-shard channel of the mesh.
    pub mesh_capacity: usize,
    /// Mesh messages a shard buffers before its forwarders stop pulling from the mesh.
    pub mesh_inbox_max: usize,
    /// Commands from the application queued per shard.
    pub commands_capacity: usize,
    /// Events to the application queued (all shards together).
    pub events_capacity: usize,
    /// Extra locked memory each shard will register (e.g. `UdpConfig::locked_bytes`).
    pub extra_locked_bytes: u64,
    /// Thread name prefix.
    pub name: String,
    /// Ask the scheduler (EEVDF, Linux 6.12+) for this time slice on shard threads, in µs:
    /// a short slice gives a waking shard an earlier deadline, so it preempts batch work on
    /// a busy host sooner. `None` keeps the default; a refusal is logged, never fatal.
    pub sched_slice_us: Option<u64>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            shards: 0,
            pin: true,
            io_memory_bytes: 256 << 10,
            ring_depth: 128,
            mesh_capacity: 1024,
            mesh_inbox_max: 4096,
            commands_capacity: 1024,
            events_capacity: 1 << 16,
            extra_locked_bytes: 64 << 10,
            name: "ringleader".to_string(),
            sched_slice_us: None,
        }
    }
}

impl RuntimeConfig {
    /// The shards a runtime started with this config runs: `shards`, or one per CPU this
    /// process may use when it is 0.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => allowed_cpus().len().max(1),
            n => n,
        }
    }

    /// Locked memory one shard needs, as estimated for the RLIMIT_MEMLOCK check.
    pub fn locked_bytes_per_shard(&self) -> u64 {
        3 * (self.io_memory_bytes.max(64 << 10).next_multiple_of(4096) as u64)
            + self.extra_locked_bytes
    }
}

/// How a shard sleeps in its own ring once [`ShardContext::park_in`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParkConfig {
    /// Longest the shard sleeps in its ring before giving glommio's executor a turn (its
    /// own I/O: TCP streams, eventfd watches, timers, mesh channels). Bounds how late
    /// glommio-side work can be; each turn costs one pass of glommio's reactor (a few µs).
    pub glommio_turn_interval_us: u64,
}

impl Default for ParkConfig {
    fn default() -> Self {
        ParkConfig {
            glommio_turn_interval_us: 10_000,
        }
    }
}

/// A shard parked in its ring: the parker and when glommio is due for a turn.
struct ParkSlot {
    parker: RingParker,
    turn_interval: Duration,
    turn_due_at: Cell<Time>,
    /// The first park failure, logged once; after it the shard sleeps in glommio again.
    failed: Cell<bool>,
}

/// Errors starting or running the runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A resource limit is too low.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// glommio could not create an executor.
    #[error("shard {shard}: cannot start a glommio executor: {cause}{hint}")]
    Executor {
        /// The shard.
        shard: usize,
        /// glommio's error.
        cause: String,
        /// A hint (e.g. about `ulimit -l`).
        hint: &'static str,
    },
    /// A thread could not be spawned or panicked.
    #[error("shard {shard}: {what}")]
    Thread {
        /// The shard.
        shard: usize,
        /// What happened.
        what: String,
    },
    /// The shard mesh could not be joined.
    #[error("shard {0}: joining the shard mesh failed")]
    Mesh(usize),
    /// A bad configuration value.
    #[error("invalid RuntimeConfig: {0}")]
    Config(&'static str),
}

/// Why a mesh message was not sent.
#[derive(Debug, PartialEq, Eq)]
pub enum MeshError<M> {
    /// The destination's channel is full; the message is handed back.
    Full(M),
    /// The destination has shut down; the message is handed back.
    Closed(M),
    /// No shard with this index.
    NoSuchShard(usize),
}

/// Where a shard runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementReport {
    /// The shard.
    pub shard: usize,
    /// The CPU it is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// Why it is not pinned, if it is not.
    pub unpinned_reason: Option<String>,
}

/// The shard that owns `key` (a member name, a Raft group id) among `shards`. Stable
/// across runs and builds (FNV-1a, not the randomly seeded std hasher).
pub fn shard_of<K: Hash + ?Sized>(key: &K, shards: usize) -> usize {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 ^= *b as u64;
                self.0 = self.0.wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    key.hash(&mut h);
    (h.finish() % shards.max(1) as u64) as usize
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain old data; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of its size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    // SAFETY: CPU_ISSET reads the set we own.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

struct Shared<C, E> {
    stop: AtomicBool,
    commands: Vec<(crossbeam_channel::Sender<C>, Arc<EventFd>)>,
    events: crossbeam_channel::Sender<E>,
    /// Shard `i` sleeps in its own ring ([`ShardContext::park_in`]): glommio's channels
    /// cannot wake it, so a mesh message to it also signals its command eventfd.
    parked: Vec<AtomicBool>,
}

struct Inner<C: Send + 'static, E: Send + 'static, M: Send + 'static> {
    id: usize,
    shards: usize,
    clock: Clock,
    shared: Arc<Shared<C, E>>,
    commands: crossbeam_channel::Receiver<C>,
    wake: LocalNotify,
    watches: RefCell<Vec<Watch>>,
    mesh: Senders<M>,
    /// glommio's mesh peer id of each shard.
    peer_of_shard: Vec<usize>,
    inbox: RefCell<VecDeque<(usize, M)>>,
    inbox_space: LocalNotify,
    inbox_max: usize,
    forwarders: RefCell<Vec<glommio::task::JoinHandle<()>>>,
    events_dropped: Cell<u64>,
    mesh_dropped: Cell<u64>,
    park: RefCell<Option<Rc<ParkSlot>>>,
}

/// What a shard's main function gets: its identity, clock, wake-ups, the mesh, and the
/// channels to and from the application. Cheap to clone (an `Rc`); shard-local.
pub struct ShardContext<C: Send + 'static, E: Send + 'static, M: Send + 'static> {
    inner: Rc<Inner<C, E, M>>,
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

    /// [`ShardContext::wait`] for a shard parked in its ring.
    ///
    /// glommio polls its own rings, timers and channels only when no task is runnable, so
    /// the park (which blocks this task) hands glommio a turn before sleeping whenever one
    /// is due: the interval passed, a wake-up eventfd fired (a command or mesh message may
    /// wait in glommio's queues), or glommio's preemption flag is up.
    async fn wait_parked(&self, park: &ParkSlot, deadline: Option<Time>) {
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

    async fn close(&self) {
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

/// A running set of shards. Dropping it shuts down and joins.
pub struct Runtime<C: Send + 'static, E: Send + 'static, T: Send + 'static> {
    shared: Arc<Shared<C, E>>,
    events: crossbeam_channel::Receiver<E>,
    threads: Vec<JoinHandle<Result<T, RuntimeError>>>,
    placements: Vec<PlacementReport>,
}

enum Start {
    Go,
    Abort,
}

impl<C: Send + 'static, E: Send + 'static, T: Send + 'static> Runtime<C, E, T> {
    /// Starts `config.shards` shards, each running `shard_main(ctx)` on its own executor.
    /// Returns once every executor exists (or the first failure, after stopping the rest).
    pub fn start<M, F, Fut>(
        config: RuntimeConfig,
        shard_main: F,
    ) -> Result<Runtime<C, E, T>, RuntimeError>
    where
        M: Send + 'static,
        F: FnOnce(ShardContext<C, E, M>) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let cpus = allowed_cpus();
        let shards = config.shard_count();
        if config.mesh_capacity == 0 || config.commands_capacity == 0 || config.events_capacity == 0
        {
            return Err(RuntimeError::Config("channel capacities must be positive"));
        }
        ensure_memlock(shards, config.locked_bytes_per_shard())?;
        let (events_tx, events_rx) = crossbeam_channel::bounded(config.events_capacity);
        let mut command_rxs = Vec::with_capacity(shards);
        let mut commands = Vec::with_capacity(shards);
        for shard in 0..shards {
            let (tx, rx) = crossbeam_channel::bounded(config.commands_capacity);
            let efd = EventFd::new().map_err(|e| RuntimeError::Thread {
                shard,
                what: format!("eventfd: {e}"),
            })?;
            commands.push((tx, Arc::new(efd)));
            command_rxs.push(rx);
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            commands,
            events: events_tx,
            parked: (0..shards).map(|_| AtomicBool::new(false)).collect(),
        });
        let mesh: MeshBuilder<M, _> = MeshBuilder::full(shards, config.mesh_capacity);
        let mesh_ids: Arc<Vec<AtomicUsize>> =
            Arc::new((0..shards).map(|_| AtomicUsize::new(usize::MAX)).collect());
        let clock = Clock::new();
        let (ready_tx, ready_rx) =
            crossbeam_channel::bounded::<Result<PlacementReport, RuntimeError>>(shards);
        let mut threads = Vec::with_capacity(shards);
        let mut gos = Vec::with_capacity(shards);
        for (shard, commands_rx) in command_rxs.into_iter().enumerate() {
            let (go_tx, go_rx) = crossbeam_channel::bounded::<Start>(1);
            gos.push(go_tx);
            let cpu = if config.pin && shards <= cpus.len() {
                cpus.get(shard).copied()
            } else {
                None
            };
            let not_pinned = if !config.pin {
                Some("pinning disabled by configuration".to_string())
            } else if shards > cpus.len() {
                Some(format!("{shards} shards on {} allowed CPUs", cpus.len()))
            } else {
                None
            };
            let config = config.clone();
            let shared = Arc::clone(&shared);
            let mesh = mesh.clone();
            let mesh_ids = Arc::clone(&mesh_ids);
            let ready = ready_tx.clone();
            let main = shard_main.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{shard}", config.name))
                .spawn(move || -> Result<T, RuntimeError> {
                    if let Some(us) = config.sched_slice_us
                        && let Err(e) = set_sched_slice(Duration::from_micros(us))
                    {
                        tracing::warn!(shard, "cannot set a {us} µs scheduler slice: {e}");
                    }
                    let (ex, report) = match make_executor(shard, cpu, not_pinned, &config) {
                        Ok(x) => x,
                        Err(e) => {
                            let text = e.to_string();
                            let _ = ready.send(Err(e));
                            return Err(RuntimeError::Thread { shard, what: text });
                        }
                    };
                    let _ = ready.send(Ok(report));
                    drop(ready);
                    match go_rx.recv() {
                        Ok(Start::Go) => {}
                        _ => {
                            return Err(RuntimeError::Thread {
                                shard,
                                what: "start aborted".into(),
                            });
                        }
                    }
                    ex.run(async move {
                        let (senders, mut receivers) =
                            mesh.join().await.map_err(|_| RuntimeError::Mesh(shard))?;
                        // glommio numbers mesh peers in the order they joined, not by our
                        // shard index: publish ours and learn everyone's.
                        mesh_ids[shard].store(senders.peer_id(), Ordering::Release);
                        let mut waited = Duration::ZERO;
                        while mesh_ids
                            .iter()
                            .any(|id| id.load(Ordering::Acquire) == usize::MAX)
                        {
                            if waited > MESH_JOIN_WAIT_MAX {
                                return Err(RuntimeError::Mesh(shard));
                            }
                            glommio::timer::sleep(Duration::from_micros(200)).await;
                            waited += Duration::from_micros(200);
                        }
                        let peer_of_shard: Vec<usize> = mesh_ids
                            .iter()
                            .map(|id| id.load(Ordering::Acquire))
                            .collect();
                        let mut shard_of_peer = vec![usize::MAX; shards];
                        for (s, p) in peer_of_shard.iter().enumerate() {
                            if let Some(slot) = shard_of_peer.get_mut(*p) {
                                *slot = s;
                            }
                        }
                        if shard_of_peer.contains(&usize::MAX) {
                            return Err(RuntimeError::Mesh(shard));
                        }
                        let wake = LocalNotify::new();
                        let inner = Rc::new(Inner {
                            id: shard,
                            shards,
                            clock,
                            shared: Arc::clone(&shared),
                            commands: commands_rx,
                            wake: wake.clone(),
                            watches: RefCell::new(Vec::new()),
                            mesh: senders,
                            peer_of_shard,
                            inbox: RefCell::new(VecDeque::new()),
                            inbox_space: LocalNotify::new(),
                            inbox_max: config.mesh_inbox_max.max(1),
                            forwarders: RefCell::new(Vec::new()),
                            events_dropped: Cell::new(0),
                            mesh_dropped: Cell::new(0),
                            park: RefCell::new(None),
                        });
                        let ctx = ShardContext { inner };
                        let efd = Arc::clone(&shared.commands[shard].1);
                        ctx.watch(efd).map_err(|e| RuntimeError::Thread {
                            shard,
                            what: format!("watch: {e}"),
                        })?;
                        for (peer, rx) in receivers.streams() {
                            let fctx = ctx.clone();
                            let peer = shard_of_peer[peer];
                            let task = glommio::spawn_local(async move {
                                while let Some(m) = rx.recv().await {
                                    while fctx.inner.inbox.borrow().len() >= fctx.inner.inbox_max {
                                        fctx.inner.inbox_space.notified().await;
                                    }
                                    fctx.inner.inbox.borrow_mut().push_back((peer, m));
                                    fctx.inner.wake.notify();
                                }
                            })
                            .detach();
                            ctx.inner.forwarders.borrow_mut().push(task);
                        }
                        let out = main(ctx.clone()).await;
                        ctx.close().await;
                        Ok(out)
                    })
                });
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => {
                    for g in &gos {
                        let _ = g.send(Start::Abort);
                    }
                    return Err(RuntimeError::Thread {
                        shard,
                        what: format!("spawn: {e}"),
                    });
                }
            }
        }
        drop(ready_tx);
        let mut placements = Vec::with_capacity(shards);
        let mut failure = None;
        for _ in 0..shards {
            match ready_rx.recv() {
                Ok(Ok(p)) => placements.push(p),
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert(RuntimeError::Thread {
                        shard: 0,
                        what: "a shard thread died at start".into(),
                    });
                    break;
                }
            }
        }
        let verdict = if failure.is_some() {
            Start::Abort
        } else {
            Start::Go
        };
        for g in &gos {
            let _ = g.send(match verdict {
                Start::Go => Start::Go,
                Start::Abort => Start::Abort,
            });
        }
        if let Some(e) = failure {
            for t in threads {
                let _ = t.join();
            }
            return Err(e);
        }
        placements.sort_by_key(|p| p.shard);
        for p in &placements {
            if let Some(reason) = &p.unpinned_reason {
                tracing::warn!(shard = p.shard, "shard not pinned to a CPU: {reason}");
            }
        }
        Ok(Runtime {
            shared,
            events: events_rx,
            threads,
            placements,
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shared.commands.len()
    }

    /// Where each shard runs, and why a shard is not pinned.
    pub fn placements(&self) -> &[PlacementReport] {
        &self.placements
    }

    /// Events from the shards.
    pub fn events(&self) -> &crossbeam_channel::Receiver<E> {
        &self.events
    }

    /// Sends a command to `shard` and wakes it; `Err(cmd)` if its queue is full or the
    /// shard does not exist.
    pub fn send(&self, shard: usize, cmd: C) -> Result<(), C> {
        let Some((tx, efd)) = self.shared.commands.get(shard) else {
            return Err(cmd);
        };
        match tx.try_send(cmd) {
            Ok(()) => {
                efd.signal();
                Ok(())
            }
            Err(e) => Err(e.into_inner()),
        }
    }

    /// Asks every shard to stop (they see [`ShardContext::stopping`] and are woken).
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        for (_, efd) in &self.shared.commands {
            efd.signal();
        }
    }

    /// Shuts down and joins every shard, returning each main function's output in shard
    /// order.
    pub fn join(mut self) -> Vec<Result<T, RuntimeError>> {
        self.shutdown();
        self.join_threads()
    }

    /// Waits for every shard's main function to return by itself (without asking them to
    /// stop), then joins.
    pub fn wait(mut self) -> Vec<Result<T, RuntimeError>> {
        self.join_threads()
    }

    fn join_threads(&mut self) -> Vec<Result<T, RuntimeError>> {
        self.threads
            .drain(..)
            .enumerate()
            .map(|(shard, t)| match t.join() {
                Ok(r) => r,
                Err(_) => Err(RuntimeError::Thread {
                    shard,
                    what: "shard panicked".into(),
                }),
            })
            .collect()
    }
}

impl<C: Send + 'static, E: Send + 'static, T: Send + 'static> Drop for Runtime<C, E, T> {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
            let _ = self.join_threads();
        }
    }
}

/// Requests `slice` as this thread's EEVDF time slice (`sched_setattr` with SCHED_OTHER and
/// `sched_runtime`, honoured since Linux 6.12; older kernels ignore the runtime).
pub fn set_sched_slice(slice: Duration) -> std::io::Result<()> {
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
        sched_util_min: u32,
        sched_util_max: u32,
    }
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        sched_deadline: 0,
        sched_period: 0,
        sched_util_min: 0,
        sched_util_max: 0,
    };
    // SAFETY: sched_setattr reads `attr.size` bytes from a valid, initialized struct laid
    // out as the kernel's `struct sched_attr` (VER1, 56 bytes); pid 0 is this thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn make_executor(
    shard: usize,
    cpu: Option<usize>,
    not_pinned: Option<String>,
    config: &RuntimeConfig,
) -> Result<(glommio::LocalExecutor, PlacementReport), RuntimeError> {
    let build = |placement: Placement| {
        LocalExecutorBuilder::new(placement)
            .name(&format!("{}-{shard}", config.name))
            .io_memory(config.io_memory_bytes)
            .ring_depth(config.ring_depth)
            .preempt_timer(Duration::from_millis(100))
            .make()
    };
    let executor_error = |e: glommio::GlommioError<()>| {
        let cause = e.to_string();
        let hint = if cause.contains("memlock")
            || cause.contains("MemLock")
            || cause.contains("ENOMEM")
        {
            " (raise the locked-memory limit with `ulimit -l`, or lower RuntimeConfig::io_memory_bytes)"
        } else {
            ""
        };
        RuntimeError::Executor { shard, cause, hint }
    };
    if let Some(cpu) = cpu {
        match build(Placement::Fixed(cpu)) {
            Ok(ex) => {
                return Ok((
                    ex,
                    PlacementReport {
                        shard,
                        cpu: Some(cpu),
                        unpinned_reason: None,
                    },
                ));
            }
            Err(e) => {
                let reason = format!("Placement::Fixed({cpu}) refused: {e}");
                let ex = build(Placement::Unbound).map_err(executor_error)?;
                return Ok((
                    ex,
                    PlacementReport {
                        shard,
                        cpu: None,
                        unpinned_reason: Some(reason),
                    },
                ));
            }
        }
    }
    let ex = build(Placement::Unbound).map_err(executor_error)?;
    Ok((
        ex,
        PlacementReport {
            shard,
            cpu: None,
            unpinned_reason: not_pinned,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_stable_and_spreads() {
        assert_eq!(shard_of("member-1", 4), shard_of("member-1", 4));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_of(&format!("member-{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
        assert_eq!(shard_of("x", 0), 0);
    }
}

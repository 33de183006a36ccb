//! The shard threads: [`Runtime::start`] spawns one thread per shard with its own glommio
//! executor, joins them into the mesh, runs the caller's main function on each, and
//! [`Runtime::join`] stops and joins them. Also the application's side of the edge:
//! commands in ([`Runtime::send`]) and events out ([`Runtime::events`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;

use super::context::{Inner, Shared};
use super::placement::{PlacementReport, allowed_cpus, make_executor, set_sched_slice};
use super::{EventFd, LocalNotify, RuntimeConfig, RuntimeError, ShardContext};
use crate::time::Clock;
use crate::transport::limits::ensure_memlock;

/// How long a shard waits for its peers to publish their mesh ids after joining.
const MESH_JOIN_WAIT_MAX: Duration = Duration::from_secs(10);

/// Sends commands to one shard and wakes it (see [`Runtime::command_sender`]).
pub struct CommandSender<C> {
    tx: crossbeam_channel::Sender<C>,
    efd: Arc<EventFd>,
}

impl<C> Clone for CommandSender<C> {
    fn clone(&self) -> Self {
        CommandSender {
            tx: self.tx.clone(),
            efd: Arc::clone(&self.efd),
        }
    }
}

impl<C> CommandSender<C> {
    /// Sends `cmd` and wakes the shard; `Err(cmd)` if its queue is full or it has stopped.
    pub fn send(&self, cmd: C) -> Result<(), C> {
        match self.tx.try_send(cmd) {
            Ok(()) => {
                self.efd.signal();
                Ok(())
            }
            Err(e) => Err(e.into_inner()),
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

    /// A handle that sends commands to `shard` from any thread (for objects handed to the
    /// application that must reach their shard later, like a query's responder); `None`
    /// if the shard does not exist. Once the shard has stopped, its sends fail.
    pub fn command_sender(&self, shard: usize) -> Option<CommandSender<C>> {
        let (tx, efd) = self.shared.commands.get(shard)?;
        Some(CommandSender {
            tx: tx.clone(),
            efd: Arc::clone(efd),
        })
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

//! Shards: one glommio executor per core, a cross-shard mesh, timers, and the edge to the
//! embedding application's threads.
//!
//! This module is glue: it owns threads, executors, channels and wake-ups, never protocol
//! state, and it must never block a shard (every channel a shard writes to is bounded and
//! written with `try_send`; what does not fit is counted). It drives the transport (a
//! shard may sleep in its [`UdpRing`]); the transport never calls back into it.
//!
//! # What a shard gets
//!
//! [`Runtime::start`] runs a main function of the caller's on every shard, each on its own
//! executor thread, and hands it a [`ShardContext`]:
//! - **Commands in.** [`Runtime::send`] queues a command for one shard (bounded) and
//!   signals the shard's command eventfd; the shard takes it with
//!   [`ShardContext::try_command`].
//! - **Events out.** [`ShardContext::emit`] sends on one bounded crossbeam channel shared
//!   by all shards ([`Runtime::events`]); a full channel drops and counts
//!   ([`ShardContext::events_dropped`]), never blocks.
//! - **The mesh.** [`ShardContext::mesh_send`] and [`ShardContext::mesh_recv`] carry
//!   shard-level messages between shards over glommio's channel mesh, bounded in the
//!   channels and in each shard's inbox.
//! - **Timers.** [`Timers`], one heap per shard keyed by what the main function owns (a
//!   member slot, a group id). After any input the main function calls `timers.set(key,
//!   core.poll_timeout())`; its loop sleeps until `timers.next_deadline()` or a wake-up,
//!   then pops every expired key and calls `core.handle_timeout(now)`. One heap for
//!   thousands of members costs O(log n) per re-arm and no glommio timer per member.
//! - **One wait.** [`ShardContext::wait`] returns when a command, a mesh message or a
//!   watched eventfd wakes the shard, or at a deadline. The shard sleeps in glommio and
//!   watches its ring's eventfd ([`ShardContext::watch`]); or, after
//!   [`ShardContext::park_in`], it sleeps inside its [`UdpRing`], so a datagram wakes it
//!   in one hop, while glommio still gets a turn at least every
//!   [`ParkConfig::glommio_turn_interval_us`].
//! - **Shutdown.** [`Runtime::shutdown`] sets the stop flag and wakes every shard; the
//!   main function sees [`ShardContext::stopping`], closes what it owns (its ring: cancel
//!   receives, wait for in-flight sends, close sockets) and returns; the runtime then
//!   closes the mesh, joins the mesh forwarders and the eventfd watches, and joins the
//!   thread.
//!
//! # The main functions that use it
//!
//! - **SWIM: [`crate::host`].** A member (one SWIM instance with its own address) lives on
//!   shard [`shard_of`]`(name)`; whoever creates it sends a command to that shard, which
//!   owns it from then on. Its socket is bound on the shard's [`UdpRing`]
//!   ([`UdpRing::bind`]), shared by every member of the shard: one provided buffer ring,
//!   so 5,000 members cost 5,000 SQEs, not 5,000 buffers; the shard keeps `SocketId ->
//!   member` in a slab. The ring hands each validated datagram to the shard's handler,
//!   which feeds the member with `clock.now()` and applies its outputs on the spot: sends
//!   into the handler's `Sender` (batched into the next submit), deadlines into [`Timers`],
//!   events into [`ShardContext::emit`]. The host watches its ring's eventfd; it does not
//!   park, and it sends no mesh messages.
//! - **Raft: [`crate::multiraft`].** Group `g` lives on shard
//!   [`shard_of_group`](crate::multiraft::shard_of_group)`(g, shards)` of every node and is
//!   driven by [`GroupDriver`](crate::raft::driver::GroupDriver), the Ready driver the
//!   simulator runs too. Its messages travel over TCP peer links and its clients over TCP
//!   (glommio streams), not over a UDP ring; its writes go to the shard's write-ahead log
//!   ([`crate::log`]). It takes proposals and reads as commands, each with a reply channel
//!   of its own, so it uses neither the mesh nor the event channel.
//!
//! Tests and benchmarks are main functions too (the transport benchmark parks in its ring).

mod context;
pub mod notify;
mod park;
mod placement;
mod threads;
pub mod timers;

use std::hash::{Hash, Hasher};

pub use context::ShardContext;
pub use notify::{LocalNotify, Watch};
pub use placement::{PlacementReport, allowed_cpus, set_sched_slice};
pub use threads::{CommandSender, Runtime};
pub use timers::{Timers, TimersFull};

/// The eventfd type of the command wake-ups (defined by the transport, which registers it).
pub use crate::transport::EventFd;
#[allow(unused_imports)] // for doc links
use crate::transport::UdpRing;
use crate::transport::limits::LimitError;

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

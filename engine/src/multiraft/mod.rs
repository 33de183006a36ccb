//! Live Raft on the shards: a node hosting many Raft groups (multi-raft), each replicating
//! a state machine, over real sockets to a real disk.
//!
//! # Shape
//! - **Placement.** Groups are numbered `1..=groups`; group `g` lives on shard
//!   [`shard_of_group`]`(g, shards)` of every node, and only that shard touches it. Every node
//!   of a cluster runs the same number of shards and groups (checked when peers connect).
//! - **One Ready driver.** Each group runs through [`crate::raft::driver::GroupDriver`], the
//!   same code the simulator runs.
//! - **One write-ahead log per shard** ([`storage::ShardStorage`]): every group write made in
//!   one turn of the shard's loop goes into one append, so one `fdatasync` covers the
//!   entries and hard states of every group that was ready; appends made while a sync is in
//!   flight form the next batch. The leader's entries are sent to followers in the same turn
//!   as they are appended (thesis §10.2.1); followers acknowledge once durable.
//! - **Peer links** ([`peers`]): one outgoing TCP connection per (shard, peer node),
//!   carrying every group's messages from this shard to the same shard of the peer, batched
//!   into frames; reconnect with back-off; a queue bound per link (what does not fit is
//!   dropped and counted: Raft retransmits, and the core's in-flight limits keep a slow
//!   follower from needing more).
//! - **Clients** ([`clients`]): the key-value protocol of `ringleader_wire::msg::client` on
//!   the same port as peer links (a connection's first frame says which it is); shard `s`
//!   of a node listens on the node's base port + `s`.
//!
//! # What it must never do
//! Acknowledge a write before it is applied after being durable on a quorum; block its
//! shard on a socket; hold more than a configured bound for any peer or client; panic on
//! anything a peer, a client or the disk sends.

pub mod clients;
pub mod machine;
pub mod peers;
pub mod record;
mod shard;
pub mod snapshot;
pub mod storage;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use ringleader_wire::msg::client::{group_of_key, shard_of_group};

use crate::kv::Kv;
use crate::log::LogConfig;
use crate::raft::driver::DriverConfig;
use crate::runtime::{Runtime, RuntimeConfig, RuntimeError};

pub use machine::{ClientCall, Machine};
pub use shard::{AppCommand, AppReply, CATCHING_UP_FILE, ShardReport};

/// Configuration of a node. Units are in the names.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This node's id (non-zero, unique in the cluster).
    pub id: u64,
    /// Base address: shard `s` listens on port + `s` (peers and clients alike).
    pub listen: SocketAddr,
    /// Every node of the cluster, this one included: id -> base address.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Data directory (one sub-directory per shard).
    pub dir: PathBuf,
    /// Raft groups hosted, numbered `1..=groups`.
    pub groups: u64,
    /// Shards (executor threads); every node of a cluster must use the same number.
    pub shards: usize,
    /// Pin shards to CPUs.
    pub pin: bool,
    /// The Raft configuration of every group (its `group` field is set per group).
    pub raft: crate::raft::Config,
    /// The driver's policies (snapshot interval, pending bound).
    pub driver: DriverConfig,
    /// Each shard's write-ahead log.
    pub log: LogConfig,
    /// Cut the log once it has more than this many segments (and snapshots allow).
    pub log_segments_max: usize,
    /// A client request not answered by then is answered "outcome unknown".
    pub request_timeout_ms: u64,
    /// Requests in flight per client connection; more are refused as busy.
    pub client_inflight_max: usize,
    /// Client connections per shard; more are closed at once.
    pub client_connections_max: usize,
    /// Connections from one source IP address a shard holds at once that are not
    /// authenticated peer links (clients, and connections that have not yet sent their first
    /// frame or hello); more from that address are closed as soon as they are accepted
    /// (counted in `InboxStats::clients_refused_per_ip`), so that one address cannot hold
    /// every connection a shard can serve. At most `client_connections_max`; 0: no
    /// per-IP bound.
    pub client_connections_per_ip_max: usize,
    /// Messages queued per peer link; more are dropped (and counted).
    pub peer_queue_msgs_max: usize,
    /// Largest frame on a peer link.
    pub peer_frame_bytes_max: usize,
    /// First reconnect back-off of a peer link; doubles up to the max.
    pub reconnect_backoff_ms_min: u64,
    /// Longest reconnect back-off.
    pub reconnect_backoff_ms_max: u64,
    /// Inbound messages queued per shard between the sockets and the loop; more are
    /// dropped (and counted).
    pub inbound_queue_max: usize,
    /// Cluster label of peer frames (frames of other clusters are refused).
    pub label: Vec<u8>,
    /// Bytes the frames being read on one shard's connections (peers and clients) may
    /// hold at once: a frame is read into memory only as its bytes arrive, and a
    /// connection whose frame would pass this is closed (and counted). At least
    /// `peer_frame_bytes_max`.
    pub frame_bytes_held_max: usize,
    /// This node rejoins an existing cluster after losing its data (a wiped or replaced
    /// disk) under its old id. A shard that starts with no durable state (or that had not
    /// caught up when it last stopped: the file `catching-up` in its directory says so)
    /// runs its groups with `raft::Config::catch_up_before_voting` until each has caught
    /// up. Without it, a wiped node votes at once with an empty log, and a quorum counting
    /// it can elect a leader that misses acknowledged writes. Never set it on the first
    /// start of a new cluster (no node would vote).
    pub rejoin: bool,
}

impl ServerConfig {
    /// Defaults for node `id` of a cluster whose nodes are `peers`, with data in `dir`.
    pub fn new(id: u64, peers: BTreeMap<u64, SocketAddr>, dir: PathBuf) -> ServerConfig {
        let listen = peers
            .get(&id)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        ServerConfig {
            id,
            listen,
            peers,
            dir,
            groups: 1,
            shards: 1,
            pin: false,
            raft: crate::raft::Config {
                election_timeout_ms: 300,
                heartbeat_interval_ms: 50,
                ..crate::raft::Config::default()
            },
            driver: DriverConfig::default(),
            log: LogConfig::default(),
            log_segments_max: 4,
            request_timeout_ms: 5_000,
            client_inflight_max: 4096,
            client_connections_max: 1024,
            // A quarter of the shard's clients: a load generator on one machine opens a few
            // connections per shard, an attacker on one address cannot take them all.
            client_connections_per_ip_max: 256,
            peer_queue_msgs_max: 16 * 1024,
            peer_frame_bytes_max: ringleader_wire::frame::STREAM_FRAME_BYTES_MAX_DEFAULT,
            reconnect_backoff_ms_min: 20,
            reconnect_backoff_ms_max: 1_000,
            inbound_queue_max: 64 * 1024,
            label: b"ringleader-raft".to_vec(),
            frame_bytes_held_max: 256 << 20,
            rejoin: false,
        }
    }

    /// Checks the configuration; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("--id must be positive (0 is reserved)".into());
        }
        if !self.peers.contains_key(&self.id) {
            return Err(format!(
                "--peers must list this node too (id {}), with the address peers reach it at",
                self.id
            ));
        }
        if self.peers.contains_key(&0) {
            return Err("--peers: node id 0 is reserved".into());
        }
        if self.groups == 0 || self.groups > 1 << 20 {
            return Err(format!(
                "--groups {} must be between 1 and 1048576",
                self.groups
            ));
        }
        if self.shards == 0 || self.shards > 256 {
            return Err(format!("shards {} must be between 1 and 256", self.shards));
        }
        let top = u32::from(self.listen.port()) + self.shards as u32 - 1;
        if self.listen.port() != 0 && top > u32::from(u16::MAX) {
            return Err(format!(
                "--listen port {} + {} shards runs past port 65535",
                self.listen.port(),
                self.shards
            ));
        }
        if self.raft.heartbeat_interval_ms == 0
            || self.raft.heartbeat_interval_ms >= self.raft.election_timeout_ms
        {
            return Err(
                "the heartbeat interval must be positive and below the election timeout".into(),
            );
        }
        if self.frame_bytes_held_max < self.peer_frame_bytes_max {
            return Err(format!(
                "frame_bytes_held_max ({}) must be at least peer_frame_bytes_max ({}): one \
                 largest peer frame must fit",
                self.frame_bytes_held_max, self.peer_frame_bytes_max
            ));
        }
        if self.client_connections_per_ip_max > self.client_connections_max {
            return Err(format!(
                "client_connections_per_ip_max ({}) exceeds client_connections_max ({}): \
                 lower the first (0 turns the per-IP bound off) or raise the second",
                self.client_connections_per_ip_max, self.client_connections_max
            ));
        }
        if self.client_inflight_max == 0
            || self.peer_queue_msgs_max == 0
            || self.inbound_queue_max == 0
        {
            return Err("queue bounds must be positive".into());
        }
        self.log.validate().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The address shard `shard` of node `id` listens on.
    pub fn shard_addr(base: SocketAddr, shard: usize) -> SocketAddr {
        let mut a = base;
        a.set_port(base.port().wrapping_add(shard as u16));
        a
    }

    /// The groups shard `shard` hosts.
    pub fn groups_of_shard(&self, shard: usize) -> Vec<u64> {
        (1..=self.groups)
            .filter(|&g| shard_of_group(g, self.shards as u32) as usize == shard)
            .collect()
    }
}

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is refused.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A shard failed.
    #[error("shard {shard}: {what}")]
    Shard {
        /// The shard.
        shard: usize,
        /// What failed.
        what: String,
    },
}

/// A running node: its shards serve peers and clients until [`Server::shutdown`]. `S` is
/// what its groups replicate: the key-value store by default, or an embedding program's
/// own [`Machine`] (see [`Server::start_with`]).
pub struct Server<S: Machine = Kv>
where
    S::Output: Send,
    S::Read: Send,
    S::ReadOutput: Send,
{
    runtime: Runtime<AppCommand<S>, (), Result<ShardReport, String>>,
    cfg: Arc<ServerConfig>,
    live: Arc<Vec<Arc<std::sync::Mutex<ShardReport>>>>,
}

/// A proposal or read handed to a shard; its outcome arrives on the channel.
pub type Pending<S> = crossbeam_channel::Receiver<AppReply<S>>;

impl Server<Kv> {
    /// Starts a node of the key-value service: opens every shard's storage (recovering
    /// what is there), binds the shards' listeners, connects to peers. Returns once every
    /// shard runs (or the first failure).
    pub fn start(cfg: ServerConfig) -> Result<Server<Kv>, ServerError> {
        Server::start_with(cfg, |_| Kv::new())
    }
}

impl<S: Machine> Server<S>
where
    S::Output: Send,
    S::Read: Send,
    S::ReadOutput: Send,
{
    /// Starts a node whose groups replicate machines made by `factory(group)` (called on
    /// the group's shard, once per start; a restart restores each from its snapshot and
    /// replays its log).
    pub fn start_with<F>(cfg: ServerConfig, factory: F) -> Result<Server<S>, ServerError>
    where
        F: Fn(u64) -> S + Send + Clone + 'static,
    {
        cfg.validate().map_err(ServerError::Config)?;
        std::fs::create_dir_all(&cfg.dir)
            .map_err(|e| ServerError::Config(format!("--dir {}: {e}", cfg.dir.display())))?;
        shard::check_meta(&cfg).map_err(ServerError::Config)?;
        let cfg = Arc::new(cfg);
        let rt_cfg = RuntimeConfig {
            shards: cfg.shards,
            pin: cfg.pin,
            io_memory_bytes: crate::log::EXECUTOR_IO_MEMORY_BYTES,
            ring_depth: crate::log::EXECUTOR_RING_DEPTH,
            name: format!("raft-{}", cfg.id),
            ..RuntimeConfig::default()
        };
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(cfg.shards);
        let live: Arc<Vec<_>> = Arc::new(
            (0..cfg.shards)
                .map(|_| Arc::new(std::sync::Mutex::new(ShardReport::default())))
                .collect(),
        );
        let c = Arc::clone(&cfg);
        let l = Arc::clone(&live);
        let runtime = Runtime::start::<(), _, _>(rt_cfg, move |ctx| {
            shard::run(
                ctx,
                factory.clone(),
                Arc::clone(&c),
                Arc::clone(&l),
                ready_tx.clone(),
            )
        })?;
        for _ in 0..cfg.shards {
            let failed = match ready_rx.recv_timeout(std::time::Duration::from_secs(120)) {
                Ok(Ok(())) => continue,
                Ok(Err(what)) => what,
                Err(_) => "a shard did not start within 120 s".to_string(),
            };
            runtime.shutdown();
            let _ = runtime.join();
            return Err(ServerError::Shard {
                shard: 0,
                what: failed,
            });
        }
        Ok(Server { runtime, cfg, live })
    }

    /// Proposes `command` to `group` on this node. The outcome arrives on the returned
    /// channel: [`crate::raft::driver::Reply::Applied`] once committed and applied here,
    /// `Refused(NotLeader(hint))` when this node does not lead the group (send it to the
    /// hinted node instead), `Unknown` past the request timeout.
    pub fn propose(&self, group: u64, command: Vec<u8>) -> Result<Pending<S>, ServerError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(
            group,
            AppCommand::Propose {
                group,
                command,
                reply: tx,
            },
        )?;
        Ok(rx)
    }

    /// Reads `query` from `group` on this node, served as `consistency` allows.
    pub fn read(
        &self,
        group: u64,
        query: S::Read,
        consistency: crate::raft::driver::ReadConsistency,
    ) -> Result<Pending<S>, ServerError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(
            group,
            AppCommand::Read {
                group,
                query,
                consistency,
                reply: tx,
            },
        )?;
        Ok(rx)
    }

    fn send(&self, group: u64, cmd: AppCommand<S>) -> Result<(), ServerError> {
        if group == 0 || group > self.cfg.groups {
            return Err(ServerError::Config(format!(
                "group {group} does not exist: groups are numbered 1..={}",
                self.cfg.groups
            )));
        }
        let shard = shard_of_group(group, self.cfg.shards as u32) as usize;
        self.runtime
            .send(shard, cmd)
            .map_err(|_| ServerError::Shard {
                shard,
                what: "its command queue is full (or it stopped): retry shortly".into(),
            })
    }

    /// Each shard's counters, as published by the shard at most a few ms ago.
    pub fn stats(&self) -> Vec<ShardReport> {
        self.live
            .iter()
            .map(|l| l.lock().map(|r| r.clone()).unwrap_or_default())
            .collect()
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Asks every shard to stop (they close their logs and connections).
    pub fn shutdown(&self) {
        self.runtime.shutdown();
    }

    /// Stops and waits for every shard; returns each shard's report.
    pub fn join(self) -> Vec<Result<ShardReport, ServerError>> {
        self.runtime.shutdown();
        self.runtime
            .join()
            .into_iter()
            .enumerate()
            .map(|(shard, r)| match r {
                Ok(Ok(rep)) => Ok(rep),
                Ok(Err(what)) => Err(ServerError::Shard { shard, what }),
                Err(e) => Err(ServerError::Runtime(e)),
            })
            .collect()
    }
}

//! One shard of a node: its groups, its storage, its listener, its peer links, and the
//! loop that ties them together.
//!
//! Each turn of the loop: take every peer message and client request the sockets queued,
//! feed them to their groups (a group's proposals of one turn go in as one batch), fire
//! due timers, release what became durable, then carry out the groups' outboxes — messages
//! to the peer links, every group write of the turn in ONE storage append (one group
//! commit), snapshots to files, replies to the clients — and sleep until the next timer or
//! wake-up. Nothing here waits on a socket or a sync: those run in their own tasks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::client::{
    ClientOp, ClientRequest, ClientResponse, ClientResult, ClusterInfo, ErrorCode, NodeAddr,
    group_of_key,
};
use ringleader_wire::msg::raft::{ConfState, PeerHello};

use super::ServerConfig;
use super::clients::{Accept, Inbox, InboxStats};
use super::machine::{ClientCall, Machine};
use super::peers::{LinkStats, PeerLink, run_link};
use super::storage::{ShardStorage, StorageError, StorageStats};
use crate::log::LogError;
use crate::raft::driver::{
    DriverCounters, GroupDriver, GroupWrite, Outbox, ReadConsistency, Refusal, Reply, StateMachine,
};
use crate::raft::{Role, Snapshot};
use crate::runtime::{ShardContext, Timers};
use crate::time::Time;
use crate::transport::tcp::FrameListener;

/// Who waits for a reply: a client connection's request, or an embedding program.
enum Token<S: StateMachine> {
    Client { conn: u64, id: u64, group: u64 },
    App(crossbeam_channel::Sender<AppReply<S>>),
}

/// What an embedding program gets back for a proposal or a read.
pub type AppReply<S> = Reply<<S as StateMachine>::Output, <S as StateMachine>::ReadOutput>;

/// A request from the embedding program to a shard.
pub enum AppCommand<S: StateMachine> {
    /// Propose a command to a group.
    Propose {
        /// The group.
        group: u64,
        /// The entry payload.
        command: Vec<u8>,
        /// Where the outcome goes.
        reply: crossbeam_channel::Sender<AppReply<S>>,
    },
    /// Read from a group.
    Read {
        /// The group.
        group: u64,
        /// The query.
        query: S::Read,
        /// How.
        consistency: ReadConsistency,
        /// Where the answer goes.
        reply: crossbeam_channel::Sender<AppReply<S>>,
    },
}

type Driver<S> = GroupDriver<SmallRng, S, Token<S>>;
/// The proposals of one turn, by group: (command, who waits, deadline).
type Batches<S> = BTreeMap<u64, Vec<(Vec<u8>, Token<S>, Time)>>;
type Out<S> = Outbox<Token<S>, <S as StateMachine>::Output, <S as StateMachine>::ReadOutput>;

/// What a shard reports when it stops.
#[derive(Debug, Clone, Default)]
pub struct ShardReport {
    /// The shard.
    pub shard: usize,
    /// Groups hosted.
    pub groups: usize,
    /// Storage counters.
    pub storage: StorageStats,
    /// The write-ahead log's counters (fsyncs, batches, pipelined batches).
    pub log: crate::log::LogStats,
    /// Inbound counters.
    pub inbox: InboxStats,
    /// Per-peer link counters.
    pub links: Vec<(u64, LinkStats)>,
    /// The drivers' counters, summed.
    pub drivers: DriverCounters,
    /// Messages for a group this shard does not host, or for no group.
    pub misrouted: u64,
    /// Turns of the loop.
    pub turns: u64,
    /// Snapshots received from leaders and restored.
    pub snapshots_restored: u64,
}

/// A write batch in flight: the LSN that makes it durable and the group writes in it.
struct InFlight {
    lsn: u64,
    writes: Vec<(u64, u64)>,
}

/// A group's snapshot file: one save at a time on the blocking pool, the newest snapshot
/// waiting behind it.
#[derive(Default)]
struct SnapFile {
    /// A save is running.
    saving: bool,
    /// The snapshot to save next (the newest wins) and whether it stands for one received
    /// from a leader (held writes wait for it).
    next: Option<(Snapshot, bool)>,
    /// A received snapshot is saving or waiting: the group's writes wait in `held`.
    holding: bool,
    /// The group's writes, in order, waiting for a received snapshot's file.
    held: Vec<GroupWrite>,
}

/// A finished snapshot save: (group, index, received from a leader, outcome).
type SnapDone = (u64, u64, bool, Result<(), String>);

/// How often a shard publishes its counters for [`super::Server::stats`].
const PUBLISH_EVERY_MS: u64 = 20;

/// The file in `--dir` that records the shape a node was created with.
const META_FILE: &str = "ringleader-raft.meta";

/// The file in a shard's directory that says its groups have not caught up since the node
/// rejoined after a loss of data ([`ServerConfig::rejoin`]).
pub const CATCHING_UP_FILE: &str = "catching-up";

/// Creates the catching-up file durably (the file and its directory entry).
async fn write_marker(path: &std::path::Path) -> Result<(), String> {
    let err = |e: std::io::Error| format!("writing {}: {e}", path.display());
    std::fs::File::create(path)
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    sync_parent(path).await.map_err(err)
}

/// Removes the catching-up file durably.
async fn remove_marker(path: &std::path::Path) -> Result<(), String> {
    let err = |e: std::io::Error| format!("removing {}: {e}", path.display());
    crate::log::file::remove(path).await.map_err(err)?;
    sync_parent(path).await.map_err(err)
}

async fn sync_parent(path: &std::path::Path) -> std::io::Result<()> {
    match path.parent() {
        Some(d) => crate::log::file::sync_dir(d).await,
        None => Ok(()),
    }
}

/// Refuses to start on a directory made for another node id, group count or shard count.
pub(super) fn check_meta(cfg: &ServerConfig) -> Result<(), String> {
    let path = cfg.dir.join(META_FILE);
    let want = format!(
        "ringleader-raft 1\nid {}\ngroups {}\nshards {}\n",
        cfg.id, cfg.groups, cfg.shards
    );
    match std::fs::read_to_string(&path) {
        Ok(have) if have == want => Ok(()),
        Ok(have) => Err(format!(
            "{} was made for another node shape:\n{have}this start asks for:\n{want}use the same --id, --groups and shard count, or an empty --dir",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &want)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .and_then(|()| std::fs::rename(&tmp, &path))
                .and_then(|()| std::fs::File::open(&cfg.dir)?.sync_all())
                .map_err(|e| format!("writing {}: {e}", path.display()))
        }
        Err(e) => Err(format!("reading {}: {e}", path.display())),
    }
}

struct Shard<S: Machine>
where
    S::Output: Send,
    S::Read: Send,
    S::ReadOutput: Send,
{
    cfg: Arc<ServerConfig>,
    shard: usize,
    drivers: BTreeMap<u64, Driver<S>>,
    storage: ShardStorage,
    inbox: Rc<Inbox>,
    links: BTreeMap<u64, Rc<PeerLink>>,
    timers: Timers<u64>,
    in_flight: VecDeque<InFlight>,
    /// Group writes refused by backpressure, to retry.
    held: Vec<GroupWrite>,
    /// Snapshot files by group.
    snap_files: BTreeMap<u64, SnapFile>,
    /// Saves finished on the blocking pool, for the loop to take.
    snap_done: Rc<std::cell::RefCell<Vec<SnapDone>>>,
    out: Out<S>,
    touched: BTreeSet<u64>,
    failed: Rc<std::cell::RefCell<Option<String>>>,
    misrouted: u64,
    turns: u64,
    snapshots_restored: u64,
    addr_text: BTreeMap<u64, String>,
    live: Arc<std::sync::Mutex<ShardReport>>,
    published_at: Time,
    /// Each group's (role, term, leader) as last logged: a change is logged at info.
    seen: BTreeMap<u64, (crate::raft::Role, u64, u64)>,
    /// The shard's `catching-up` file while some group has not caught up (rejoin).
    catching_up: Option<std::path::PathBuf>,
}

/// Runs one shard until the runtime stops.
pub(super) async fn run<S, F>(
    ctx: ShardContext<AppCommand<S>, (), ()>,
    factory: F,
    cfg: Arc<ServerConfig>,
    live: Arc<Vec<Arc<std::sync::Mutex<ShardReport>>>>,
    ready: crossbeam_channel::Sender<Result<(), String>>,
) -> Result<ShardReport, String>
where
    S: Machine,
    S::Output: Send,
    S::Read: Send,
    S::ReadOutput: Send,
    F: Fn(u64) -> S,
{
    match start(&ctx, &cfg, &live, factory).await {
        Ok(mut s) => {
            let _ = ready.send(Ok(()));
            let r = s.run(&ctx).await;
            s.stop();
            let report = s.report();
            let closed = s.storage.close().await;
            r?;
            closed.map_err(|e| format!("shard {}: closing the log: {e}", report.shard))?;
            Ok(report)
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            Err(e)
        }
    }
}

async fn start<S, F>(
    ctx: &ShardContext<AppCommand<S>, (), ()>,
    cfg: &Arc<ServerConfig>,
    live: &[Arc<std::sync::Mutex<ShardReport>>],
    factory: F,
) -> Result<Shard<S>, String>
where
    S: Machine,
    S::Output: Send,
    S::Read: Send,
    S::ReadOutput: Send,
    F: Fn(u64) -> S,
{
    let shard = ctx.id();
    let groups = cfg.groups_of_shard(shard);
    let dir = cfg.dir.join(format!("shard-{shard:03}"));
    let opened = ShardStorage::open(&dir, cfg.log.clone(), &groups)
        .await
        .map_err(|e| format!("shard {shard}: {e}"))?;
    if let Some(t) = &opened.log_report.torn_tail {
        tracing::warn!(
            shard,
            "write-ahead log: dropped a torn tail at {}: {}",
            t.offset,
            t.fault
        );
    }
    let voters: Vec<u64> = cfg.peers.keys().copied().collect();
    let bootstrap = ConfState {
        voters,
        learners: vec![],
        voters_outgoing: vec![],
    };
    let now = ctx.now();
    let seed0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut drivers = BTreeMap::new();
    let mut timers = Timers::new(groups.len().max(1));
    // A rejoining node's shard with nothing on disk (or that had not caught up when it
    // last stopped) keeps its groups out of elections until they have caught up.
    let marker = dir.join(CATCHING_UP_FILE);
    let fresh = opened.groups.iter().all(|(_, r)| {
        r.snapshot.is_none() && r.entries.is_empty() && r.hard_state == Default::default()
    });
    let catch_up = (cfg.rejoin && fresh) || marker.exists();
    if catch_up {
        write_marker(&marker)
            .await
            .map_err(|e| format!("shard {shard}: {e}"))?;
        tracing::warn!(
            node = cfg.id,
            shard,
            "rejoining after a loss of data: this shard's groups do not vote until they have caught up"
        );
    }
    for (g, recovered) in opened.groups {
        let mut rc = cfg.raft.clone();
        rc.group = g;
        rc.catch_up_before_voting = catch_up;
        let rng =
            SmallRng::seed_from_u64(seed0 ^ (cfg.id << 48) ^ g.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let d = GroupDriver::new(
            rc,
            cfg.driver.clone(),
            cfg.id,
            bootstrap.clone(),
            recovered,
            factory(g),
            rng,
            now,
        )
        .map_err(|e| format!("shard {shard}: group {g} does not restart: {e}"))?;
        timers
            .set(g, d.deadline())
            .map_err(|_| format!("shard {shard}: timer table full"))?;
        drivers.insert(g, d);
    }
    let addr = ServerConfig::shard_addr(cfg.listen, shard);
    let listener = FrameListener::bind(addr, b"", cfg.peer_frame_bytes_max)
        .map_err(|e| format!("shard {shard}: cannot listen on {addr}: {e}"))?;
    let inbox = Rc::new(Inbox::new(ctx.waker().clone()));
    let acc = Rc::new(Accept {
        node: cfg.id,
        shard: shard as u32,
        shards: cfg.shards as u32,
        groups: cfg.groups,
        peers: cfg.peers.keys().copied().collect(),
        label: cfg.label.clone(),
        peer_frame_bytes_max: cfg.peer_frame_bytes_max,
        inbound_queue_max: cfg.inbound_queue_max,
        client_inflight_max: cfg.client_inflight_max,
        client_connections_max: cfg.client_connections_max,
        client_connections_per_ip_max: cfg.client_connections_per_ip_max,
        budget: crate::transport::ByteBudget::new(cfg.frame_bytes_held_max),
    });
    {
        let inbox = Rc::clone(&inbox);
        glommio::spawn_local(async move {
            loop {
                let s = match listener.accept_stream().await {
                    Ok(s) => s,
                    Err(_) => {
                        if inbox.stopping.get() {
                            return;
                        }
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                if inbox.stopping.get() {
                    return;
                }
                glommio::spawn_local(super::clients::serve(s, Rc::clone(&inbox), Rc::clone(&acc)))
                    .detach();
            }
        })
        .detach();
    }
    let mut links = BTreeMap::new();
    for (&node, &base) in &cfg.peers {
        if node == cfg.id {
            continue;
        }
        let link = Rc::new(PeerLink::new(
            node,
            ServerConfig::shard_addr(base, shard),
            cfg.peer_queue_msgs_max,
        ));
        let hello = PeerHello {
            from: cfg.id,
            to: node,
            shard: shard as u32,
            shards: cfg.shards as u32,
            groups: cfg.groups,
        };
        glommio::spawn_local(run_link(
            Rc::clone(&link),
            hello,
            cfg.label.clone(),
            cfg.peer_frame_bytes_max,
            (cfg.reconnect_backoff_ms_min, cfg.reconnect_backoff_ms_max),
        ))
        .detach();
        links.insert(node, link);
    }
    let addr_text = cfg
        .peers
        .iter()
        .map(|(&id, a)| (id, a.to_string()))
        .collect();
    Ok(Shard {
        cfg: Arc::clone(cfg),
        shard,
        drivers,
        storage: opened.storage,
        inbox,
        links,
        timers,
        in_flight: VecDeque::new(),
        held: Vec::new(),
        snap_files: BTreeMap::new(),
        snap_done: Rc::new(std::cell::RefCell::new(Vec::new())),
        out: Out::default(),
        touched: BTreeSet::new(),
        failed: Rc::new(std::cell::RefCell::new(None)),
        misrouted: 0,
        turns: 0,
        snapshots_restored: 0,
        addr_text,
        live: Arc::clone(&live[shard]),
        published_at: Time::ZERO,
        seen: BTreeMap::new(),
        catching_up: catch_up.then_some(marker),
    })
}

fn error(code: ErrorCode, message: impl Into<String>) -> ClientResult {
    ClientResult::Error {
        code,
        message: message.into(),
    }
}

impl<S: Machine> Shard<S>
where
    S::Output: Send,
    S::Read: Send,
    S::ReadOutput: Send,
{
    async fn run(&mut self, ctx: &ShardContext<AppCommand<S>, (), ()>) -> Result<(), String> {
        loop {
            if ctx.stopping() {
                return Ok(());
            }
            if let Some(e) = self.failed.borrow().clone() {
                return Err(e);
            }
            self.turns += 1;
            let now = ctx.now();
            self.take_messages(now);
            self.take_requests(now);
            self.take_commands(ctx, now);
            self.take_snapshot_saves()?;
            self.release_durable(now);
            while let Some((g, _)) = self.timers.pop_expired(now) {
                if let Some(d) = self.drivers.get_mut(&g) {
                    d.tick(now, &mut self.out);
                    self.touched.insert(g);
                }
            }
            self.carry_out(now)?;
            if self.catching_up.is_some()
                && self.drivers.values().all(|d| !d.raft().catching_up())
                && let Some(marker) = self.catching_up.take()
            {
                remove_marker(&marker).await?;
                tracing::warn!(
                    node = self.cfg.id,
                    shard = self.shard,
                    "caught up after rejoining: this shard's groups vote again"
                );
            }
            if let Some(cut) = self
                .storage
                .plan_compaction(self.cfg.log_segments_max)
                .map_err(|e| format!("shard {}: {e}", self.shard))?
            {
                self.storage
                    .log()
                    .compact_prefix(cut.saturating_sub(1))
                    .await
                    .map_err(|e| format!("shard {}: compacting the log: {e}", self.shard))?;
            }
            let more = !self.inbox.messages.borrow().is_empty()
                || !self.inbox.requests.borrow().is_empty()
                || !self.snap_done.borrow().is_empty()
                || self
                    .in_flight
                    .front()
                    .is_some_and(|f| f.lsn <= self.storage.durable_lsn());
            if more {
                // Let the socket tasks run before the next turn.
                glommio::executor().yield_now().await;
                continue;
            }
            if now >= self.published_at + Duration::from_millis(PUBLISH_EVERY_MS) {
                self.published_at = now;
                let r = self.report();
                if let Ok(mut l) = self.live.lock() {
                    *l = r;
                }
            }
            let deadline = self.timers.next_deadline();
            ctx.wait(deadline).await;
        }
    }

    fn take_messages(&mut self, now: Time) {
        let msgs: Vec<Message> = self.inbox.messages.borrow_mut().drain(..).collect();
        for m in msgs {
            let Some(g) = crate::raft::header_of(&m).map(|h| h.group) else {
                self.misrouted += 1;
                continue;
            };
            match self.drivers.get_mut(&g) {
                Some(d) => {
                    d.step(now, m, &mut self.out);
                    self.touched.insert(g);
                }
                None => self.misrouted += 1,
            }
        }
    }

    fn not_leader(&self, group: u64, hint: u64) -> ClientResult {
        if hint == 0 || hint == self.cfg.id {
            return error(
                ErrorCode::Unavailable,
                format!(
                    "no leader is known for group {group} yet (an election is running): retry shortly"
                ),
            );
        }
        ClientResult::NotLeader {
            group,
            leader: hint,
            leader_addr: self.addr_text.get(&hint).cloned().unwrap_or_default(),
        }
    }

    fn respond(&self, conn: u64, id: u64, result: ClientResult) {
        if let Some(c) = self.inbox.conns.borrow().get(&conn) {
            c.respond(ClientResponse { id, result });
        }
    }

    fn take_requests(&mut self, now: Time) {
        let reqs: Vec<(u64, ClientRequest)> = self.inbox.requests.borrow_mut().drain(..).collect();
        if reqs.is_empty() {
            return;
        }
        let deadline = now + Duration::from_millis(self.cfg.request_timeout_ms);
        let mut batches: Batches<S> = BTreeMap::new();
        let value_max = self
            .storage
            .log()
            .config()
            .entry_bytes_max()
            .saturating_sub(64);
        for (conn, req) in reqs {
            let id = req.id;
            let too_large = match &req.op {
                ClientOp::Info => {
                    let info = ClusterInfo {
                        node: self.cfg.id,
                        groups: self.cfg.groups,
                        shards: self.cfg.shards as u32,
                        nodes: self
                            .addr_text
                            .iter()
                            .map(|(&id, a)| NodeAddr {
                                id,
                                addr: a.clone(),
                            })
                            .collect(),
                    };
                    self.respond(conn, id, ClientResult::Info(info));
                    continue;
                }
                ClientOp::Put { value, .. } => value.len() > value_max,
                ClientOp::Cas { expected, new, .. } => {
                    new.len() > value_max || expected.as_ref().is_some_and(|e| e.len() > value_max)
                }
                _ => false,
            };
            if too_large {
                self.respond(
                    conn,
                    id,
                    error(
                        ErrorCode::TooLarge,
                        format!("values are limited to {value_max} bytes"),
                    ),
                );
                continue;
            }
            let call = match S::client_call(req.op) {
                Ok(c) => c,
                Err(r) => {
                    self.respond(conn, id, r);
                    continue;
                }
            };
            let key = match &call {
                ClientCall::Write { key, .. } | ClientCall::Read { key, .. } => key,
            };
            let group = group_of_key(key, self.cfg.groups);
            let Some(d) = self.drivers.get_mut(&group) else {
                let s = super::shard_of_group(group, self.cfg.shards as u32);
                self.respond(
                    conn,
                    id,
                    error(
                        ErrorCode::WrongShard,
                        format!(
                            "group {group} lives on shard {s} (port + {s}), not on shard {}",
                            self.shard
                        ),
                    ),
                );
                continue;
            };
            let token = Token::Client { conn, id, group };
            let is_leader = d.raft().role() == Role::Leader;
            let hint = d.raft().leader_id();
            match call {
                ClientCall::Write { command, .. } => {
                    if !is_leader {
                        let r = self.not_leader(group, hint);
                        self.respond(conn, id, r);
                        continue;
                    }
                    batches
                        .entry(group)
                        .or_default()
                        .push((command, token, deadline));
                }
                ClientCall::Read {
                    query, consistency, ..
                } => {
                    if consistency != ReadConsistency::Stale && !is_leader {
                        let r = self.not_leader(group, hint);
                        self.respond(conn, id, r);
                        continue;
                    }
                    d.read(now, query, consistency, token, deadline, &mut self.out);
                    self.touched.insert(group);
                }
            }
        }
        for (g, batch) in batches {
            if let Some(d) = self.drivers.get_mut(&g) {
                d.propose_batch(now, batch, &mut self.out);
                self.touched.insert(g);
            }
        }
    }

    /// Proposals and reads of the embedding program.
    fn take_commands(&mut self, ctx: &ShardContext<AppCommand<S>, (), ()>, now: Time) {
        let deadline = now + Duration::from_millis(self.cfg.request_timeout_ms);
        while let Some(cmd) = ctx.try_command() {
            match cmd {
                AppCommand::Propose {
                    group,
                    command,
                    reply,
                } => match self.drivers.get_mut(&group) {
                    Some(d) => {
                        d.propose(now, command, Token::App(reply), deadline, &mut self.out);
                        self.touched.insert(group);
                    }
                    None => {
                        let _ = reply.send(Reply::Refused(Refusal::NotLeader(0)));
                    }
                },
                AppCommand::Read {
                    group,
                    query,
                    consistency,
                    reply,
                } => match self.drivers.get_mut(&group) {
                    Some(d) => {
                        d.read(
                            now,
                            query,
                            consistency,
                            Token::App(reply),
                            deadline,
                            &mut self.out,
                        );
                        self.touched.insert(group);
                    }
                    None => {
                        let _ = reply.send(Reply::Refused(Refusal::NotLeader(0)));
                    }
                },
            }
        }
    }

    fn release_durable(&mut self, now: Time) {
        let durable = self.storage.durable_lsn();
        while self.in_flight.front().is_some_and(|f| f.lsn <= durable) {
            let Some(f) = self.in_flight.pop_front() else {
                break;
            };
            for (g, seq) in f.writes {
                if let Some(d) = self.drivers.get_mut(&g) {
                    d.durable(now, seq, &mut self.out);
                    self.touched.insert(g);
                }
            }
        }
    }

    /// Carries out the outbox until it is empty (replies can trigger nothing, but a
    /// durable release inside this turn can trigger more writes).
    fn carry_out(&mut self, now: Time) -> Result<(), String> {
        for _ in 0..16 {
            let sends = std::mem::take(&mut self.out.sends);
            for m in sends {
                let to = crate::raft::header_of(&m).map_or(0, |h| h.to);
                match self.links.get(&to) {
                    Some(l) => l.push(m),
                    None => self.misrouted += 1,
                }
            }
            let mut writes = std::mem::take(&mut self.held);
            let fresh = std::mem::take(&mut self.out.writes);
            self.route_writes(fresh, &mut writes);
            if !writes.is_empty() {
                match self.storage.append(&writes) {
                    Ok(Some((lsn, durable))) => {
                        self.in_flight.push_back(InFlight {
                            lsn,
                            writes: writes.iter().map(|w| (w.group, w.seq)).collect(),
                        });
                        let wake = self.inbox.wake.clone();
                        let failed = Rc::clone(&self.failed);
                        let shard = self.shard;
                        glommio::spawn_local(async move {
                            if let Err(e) = durable.await {
                                *failed.borrow_mut() =
                                    Some(format!("shard {shard}: the write-ahead log failed: {e}"));
                            }
                            wake.notify();
                        })
                        .detach();
                    }
                    Ok(None) => {}
                    Err(StorageError::Log {
                        source: LogError::Backpressure { .. },
                        ..
                    }) => self.held = writes,
                    Err(e) => return Err(format!("shard {}: {e}", self.shard)),
                }
            }
            self.snapshots_restored += std::mem::take(&mut self.out.snapshots_restored);
            for (g, s) in std::mem::take(&mut self.out.snapshots) {
                self.save_snapshot(g, s, false);
            }
            for (t, r) in std::mem::take(&mut self.out.replies) {
                let (conn, id, group) = match t {
                    Token::App(tx) => {
                        let _ = tx.send(r);
                        continue;
                    }
                    Token::Client { conn, id, group } => (conn, id, group),
                };
                let result = match r {
                    Reply::Applied { output, .. } => S::client_output(output),
                    Reply::Read(v) => S::client_read(v),
                    Reply::Refused(Refusal::NotLeader(h)) => self.not_leader(group, h),
                    Reply::Refused(Refusal::Busy) => error(
                        ErrorCode::Busy,
                        format!(
                            "group {group} is at a bound (uncommitted entries or pending requests): retry shortly"
                        ),
                    ),
                    Reply::Refused(Refusal::NotReady) => error(
                        ErrorCode::Unavailable,
                        format!("group {group}'s new leader has not committed yet: retry shortly"),
                    ),
                    Reply::Unknown => error(
                        ErrorCode::Unknown,
                        "no outcome within the request timeout: the write may or may not have taken effect",
                    ),
                };
                self.respond(conn, id, result);
            }
            // Re-arm the timers of every group touched this turn.
            for g in std::mem::take(&mut self.touched) {
                if let Some(d) = self.drivers.get(&g) {
                    let r = d.raft();
                    let now_seen = (r.role(), r.term(), r.leader_id());
                    if self.seen.insert(g, now_seen) != Some(now_seen) {
                        tracing::info!(
                            node = self.cfg.id,
                            group = g,
                            term = now_seen.1,
                            leader = now_seen.2,
                            "{:?}, commit {} of last {}",
                            now_seen.0,
                            r.log().committed(),
                            r.log().last_index()
                        );
                    }
                    let at = match d.request_deadline() {
                        Some(r) => r.min(d.deadline()),
                        None => d.deadline(),
                    };
                    let _ = self.timers.set(g, at);
                }
            }
            if self.out.is_empty() {
                break;
            }
            let _ = now;
        }
        Ok(())
    }

    /// Moves `fresh` writes into `ready` (to append now), except a write that received a
    /// snapshot and every later write of its group: those wait until the snapshot's file is
    /// durable, so that the log never holds entries that follow a snapshot recovery cannot
    /// find.
    fn route_writes(&mut self, fresh: Vec<GroupWrite>, ready: &mut Vec<GroupWrite>) {
        for mut w in fresh {
            let g = w.group;
            if let Some(f) = self.snap_files.get_mut(&g).filter(|f| f.holding) {
                f.held.push(w);
                continue;
            }
            let Some(snap) = w.snapshot.take() else {
                ready.push(w);
                continue;
            };
            self.save_snapshot(g, snap, true);
            let f = self.snap_files.entry(g).or_default();
            f.holding = true;
            f.held.push(w);
        }
    }

    /// Saves `s` as `group`'s snapshot file on the blocking pool (after the save running
    /// for the group, if any: the newest snapshot waiting then wins).
    fn save_snapshot(&mut self, group: u64, s: Snapshot, received: bool) {
        let f = self.snap_files.entry(group).or_default();
        if f.saving {
            let received = received || f.next.as_ref().is_some_and(|(_, r)| *r);
            let newer = f.next.as_ref().is_none_or(|(n, _)| n.index <= s.index);
            if newer {
                f.next = Some((s, received));
            } else if let Some(n) = f.next.as_mut() {
                n.1 = received;
            }
            return;
        }
        f.saving = true;
        let dir = self.storage.snapshot_dir().to_path_buf();
        let done = Rc::clone(&self.snap_done);
        let wake = self.inbox.wake.clone();
        glommio::spawn_local(async move {
            let index = s.index;
            let r = glommio::executor()
                .spawn_blocking(move || {
                    super::snapshot::save(&dir, group, &s).map_err(|e| e.to_string())
                })
                .await;
            done.borrow_mut().push((group, index, received, r));
            wake.notify();
        })
        .detach();
    }

    /// Takes the finished snapshot saves: their log records become reclaimable, the writes
    /// held behind a received snapshot go to the next append, and the next save starts.
    fn take_snapshot_saves(&mut self) -> Result<(), String> {
        let done: Vec<SnapDone> = std::mem::take(&mut *self.snap_done.borrow_mut());
        for (g, index, received, r) in done {
            r.map_err(|e| format!("shard {}: group {g}: {e}", self.shard))?;
            self.storage.snapshot_stored(g, index);
            let Some(f) = self.snap_files.get_mut(&g) else {
                continue;
            };
            f.saving = false;
            let held = if received {
                f.holding = false;
                std::mem::take(&mut f.held)
            } else {
                Vec::new()
            };
            if let Some((s, r)) = f.next.take() {
                self.save_snapshot(g, s, r);
            }
            let mut ready = std::mem::take(&mut self.held);
            self.route_writes(held, &mut ready);
            self.held = ready;
        }
        Ok(())
    }

    fn stop(&mut self) {
        self.inbox.stopping.set(true);
        for l in self.links.values() {
            l.stop();
        }
    }

    fn report(&self) -> ShardReport {
        let mut drivers = DriverCounters::default();
        for d in self.drivers.values() {
            let c = d.counters();
            drivers.dropped_misrouted += c.dropped_misrouted;
            drivers.dropped_malformed += c.dropped_malformed;
            drivers.snapshot_restore_failures += c.snapshot_restore_failures;
            drivers.proposals += c.proposals;
            drivers.reads += c.reads;
            drivers.snapshots_taken += c.snapshots_taken;
        }
        ShardReport {
            shard: self.shard,
            groups: self.drivers.len(),
            storage: self.storage.stats(),
            log: self.storage.log().stats(),
            inbox: self.inbox.stats(),
            links: self.links.iter().map(|(&n, l)| (n, l.stats())).collect(),
            drivers,
            misrouted: self.misrouted,
            turns: self.turns,
            snapshots_restored: self.snapshots_restored,
        }
    }
}

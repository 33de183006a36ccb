//! One shard of a [`super::Host`]: its members, ring, directory, timers and stream tasks.
//!
//! Everything here runs on the shard's thread. The shard state sits in one `RefCell`;
//! the main loop and the stream tasks borrow it only between awaits, never across one.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use ringleader_wire::msg::swim as wire;
use ringleader_wire::{Encoder, Frame, Keyring, Message, MessageRef};

use super::{
    Event, EventMask, HostConfig, HostError, HostEvent, MemberInfo, MemberSpec, ShardCensus,
    StreamListeners, add_stats,
};
use crate::runtime::{LocalNotify, ShardContext, Timers};
use crate::swim::{
    self, Directory, Item, Member, MemberState, Output, SharedDirectory, StreamRequest,
    StreamResponse, StreamTransmit, Transmit,
};
use crate::time::Time;
use crate::transport::{
    FrameListener, FrameStream, Sender, SocketId, SocketOptions, UdpHandler, UdpRing,
};

type Reply<T> = crossbeam_channel::Sender<T>;

/// What the application asks of a shard.
pub(crate) enum Command {
    Add {
        spec: MemberSpec,
        reply: Reply<Result<SocketAddr, HostError>>,
    },
    Kill {
        name: String,
        reply: Reply<Result<(), HostError>>,
    },
    Leave {
        name: String,
        reply: Reply<Result<(), HostError>>,
    },
    Broadcast {
        name: String,
        payload: Vec<u8>,
        reply: Reply<Result<(), HostError>>,
    },
    Members {
        name: String,
        reply: Reply<Result<Vec<MemberInfo>, HostError>>,
    },
    Census {
        expected: usize,
        reply: Reply<ShardCensus>,
    },
}

type Ctx = ShardContext<Command, HostEvent, ()>;

/// A hosted member.
struct Hosted {
    name: Arc<str>,
    member: Member<ChaCha8Rng>,
    socket: SocketId,
    /// The bound address (UDP, and TCP through a listener of its own or the shard's).
    addr: SocketAddr,
    /// Distinguishes this member from earlier occupants of the slot.
    generation: u64,
    /// Serves inbound streams on a listener of the member's own (`PerMember`); dropping it
    /// closes the listener.
    _acceptor: Option<glommio::Task<()>>,
    /// Leaving: removed at this time or when its broadcasts have drained.
    leaving: Option<(Time, Reply<Result<(), HostError>>)>,
    /// Sequence number of this member's next broadcast.
    gossip_seq: u64,
    /// Broadcasts seen (keys of `(origin, seq)`), oldest first, at most `gossip_seen_max`.
    gossip_seen: HashSet<u64>,
    gossip_order: VecDeque<u64>,
}

impl Hosted {
    /// Remembers the broadcast `key`; false if it was seen already.
    fn first_sight(&mut self, key: u64, max: usize) -> bool {
        if !self.gossip_seen.insert(key) {
            return false;
        }
        self.gossip_order.push_back(key);
        while self.gossip_order.len() > max {
            if let Some(old) = self.gossip_order.pop_front() {
                self.gossip_seen.remove(&old);
            }
        }
        true
    }
}

fn gossip_key(origin: &str, seq: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = swim::FxHasher::default();
    origin.hash(&mut h);
    seq.hash(&mut h);
    h.finish()
}

/// The result of an outbound stream exchange, for the shard loop.
struct StreamDone {
    slot: u32,
    generation: u64,
    id: u64,
    response: Result<StreamResponse, swim::StreamError>,
}

/// A wildcard TCP listener of the shard, shared by its members on one port
/// ([`StreamListeners::PerShard`]).
struct SharedListener {
    port: u16,
    v6: bool,
    /// Hosted members on this port; the listener closes when the last one goes.
    users: u32,
    /// Accepts and routes connections; dropping it closes the listener.
    _acceptor: glommio::Task<()>,
}

/// Whom an accept loop serves.
#[derive(Clone, Copy)]
enum Route {
    /// The member in this slot, while it has this generation.
    Member { slot: u32, generation: u64 },
    /// The member bound to the connection's local address.
    ByLocalAddr,
}

/// Everything but the ring (so the ring can call into it).
struct Core {
    ctx: Ctx,
    config: Arc<HostConfig>,
    dir: SharedDirectory,
    members: Vec<Option<Hosted>>,
    free_slots: Vec<u32>,
    /// Slot of the member on each socket (indexed by `SocketId`), `u32::MAX` if none.
    by_socket: Vec<u32>,
    /// Slot of each hosted member by name.
    names: HashMap<Arc<str>, u32>,
    /// Slot of each hosted member by bound address (routes shared-listener connections).
    by_addr: HashMap<SocketAddr, u32>,
    /// Shared TCP listeners ([`StreamListeners::PerShard`]).
    listeners: Vec<SharedListener>,
    /// Slots of members that are leaving.
    leavers: Vec<u32>,
    timers: Timers<u32>,
    dirty: Vec<u32>,
    /// Stream exchanges the members asked for, to start after this borrow ends.
    streams_to_start: Vec<(u32, u64, StreamTransmit, Vec<u8>)>,
    encoder: Encoder,
    /// Seals outgoing frames and opens stream answers (one keyring per shard).
    seal: Rc<Option<Keyring>>,
    next_generation: u64,
    rng_seed: u64,
    census: ShardCensus,
}

struct Shard {
    ring: UdpRing,
    core: Core,
    completions: VecDeque<StreamDone>,
    inbound: usize,
    /// Outbound stream exchanges in flight.
    outbound: usize,
}

fn keyring_of(keys: &[[u8; ringleader_wire::keyring::KEY_LEN]]) -> Option<Keyring> {
    let (primary, rest) = keys.split_first()?;
    let mut k = Keyring::new(*primary);
    for key in rest {
        // The count was checked against KEYS_MAX; a duplicate key is harmless to skip.
        let _ = k.install(*key);
    }
    Some(k)
}

/// The shard's main function.
pub(crate) async fn run(
    ctx: Ctx,
    config: Arc<HostConfig>,
    ready: crossbeam_channel::Sender<Result<(), HostError>>,
) -> Result<(), HostError> {
    let shard_id = ctx.id();
    // A shard that cannot set up its transport says why to `Host::start` and ends.
    let fail = |what: String| {
        let _ = ready.send(Err(HostError::Transport {
            shard: shard_id,
            what: what.clone(),
        }));
        Err(HostError::Transport {
            shard: shard_id,
            what,
        })
    };
    let ring = match UdpRing::new(config.udp.clone(), &config.label, keyring_of(&config.keys)) {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = ctx.watch(Arc::clone(ring.eventfd())) {
        return fail(format!("watching the ring's eventfd: {e}"));
    }
    let dir = Directory::shared(config.cluster_members_max, config.swim.meta_bytes_max);
    let core = Core {
        ctx: ctx.clone(),
        dir,
        members: Vec::new(),
        free_slots: Vec::new(),
        by_socket: Vec::new(),
        names: HashMap::new(),
        by_addr: HashMap::new(),
        listeners: Vec::new(),
        leavers: Vec::new(),
        timers: Timers::new(config.members_per_shard_max),
        dirty: Vec::new(),
        streams_to_start: Vec::new(),
        encoder: Encoder::new(&config.label),
        seal: Rc::new(keyring_of(&config.keys)),
        next_generation: 1,
        // Seeds from std's per-process random hasher keys (no RNG crate feature needed).
        rng_seed: {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(shard_id);
            h.finish()
        },
        census: ShardCensus {
            shard: shard_id,
            ..ShardCensus::default()
        },
        config,
    };
    let shard = Rc::new(RefCell::new(Shard {
        ring,
        core,
        completions: VecDeque::new(),
        inbound: 0,
        outbound: 0,
    }));
    let _ = ready.send(Ok(()));
    drop(ready);
    loop {
        while let Some(cmd) = ctx.try_command() {
            command(&shard, cmd);
        }
        let deadline = {
            let mut guard = shard.borrow_mut();
            let s = &mut *guard;
            let now = ctx.now();
            if let Err(e) = s.ring.poll(&mut s.core) {
                tracing::error!(shard = shard_id, "polling the ring: {e}");
            }
            while let Some(done) = s.completions.pop_front() {
                s.core.stream_done(now, done);
            }
            while let Some((slot, _)) = s.core.timers.pop_expired(now) {
                s.core.on_timer(now, slot);
            }
            let Shard { ring, core, .. } = s;
            ring.with_sender(|out| core.flush_dirty(now, out));
            if !core.dirty.is_empty() {
                ctx.waker().notify();
            }
            core.reap_leavers(now, ring);
            if let Err(e) = ring.flush() {
                tracing::warn!(shard = shard_id, "submitting sends: {e}");
            }
            core.timers.next_deadline()
        };
        start_streams(&shard);
        if ctx.stopping() {
            break;
        }
        // (Only a due deadline counts as busy: a pending wake-up flag is consumed by `wait`,
        // which returns at once for it; treating the flag as busy would never clear it.)
        let busy = deadline.is_some_and(|d| d <= ctx.now());
        if busy {
            // Work is due already: still give glommio a turn (stream connects and
            // accepts, eventfd reads). `wait` would return at once, and glommio polls its
            // own I/O only when no task is runnable: a shard that always has due work
            // would starve every stream (measured: sockets piling up unconnected at
            // 3,000 members) until glommio's preemption timer.
            glommio::timer::sleep(Duration::from_micros(1)).await;
        } else {
            ctx.wait(deadline).await;
        }
    }
    let mut s = shard.borrow_mut();
    let slots: Vec<u32> = (0..s.core.members.len() as u32).collect();
    for slot in slots {
        let Shard { ring, core, .. } = &mut *s;
        core.remove(slot, ring);
    }
    let report = s.ring.close();
    if report.leaked {
        tracing::warn!(
            shard = shard_id,
            "ring closed with {} requests in flight",
            report.in_flight_left
        );
    }
    Ok(())
}

fn command(shard: &Rc<RefCell<Shard>>, cmd: Command) {
    match cmd {
        Command::Add { spec, reply } => {
            let r = add(shard, spec);
            let _ = reply.send(r);
        }
        Command::Kill { name, reply } => {
            let mut guard = shard.borrow_mut();
            let Shard { ring, core, .. } = &mut *guard;
            let r = match core.slot_of(&name) {
                Some(slot) => {
                    core.remove(slot, ring);
                    Ok(())
                }
                None => Err(HostError::NoSuchMember(name)),
            };
            let _ = reply.send(r);
        }
        Command::Leave { name, reply } => {
            let mut guard = shard.borrow_mut();
            let core = &mut guard.core;
            let now = core.ctx.now();
            let linger = Duration::from_millis(core.config.leave_linger_ms);
            match core.slot_of(&name) {
                Some(slot) => {
                    if let Some(Some(h)) = core.members.get_mut(slot as usize) {
                        h.member.leave(now);
                        h.leaving = Some((now + linger, reply));
                        core.leavers.push(slot);
                        core.dirty.push(slot);
                    }
                }
                None => {
                    let _ = reply.send(Err(HostError::NoSuchMember(name)));
                }
            }
            core.ctx.waker().notify();
        }
        Command::Broadcast {
            name,
            payload,
            reply,
        } => {
            let mut guard = shard.borrow_mut();
            let core = &mut guard.core;
            let seen_max = core.config.gossip_seen_max;
            let r = match core.slot_of(&name) {
                Some(slot) => {
                    if let Some(Some(h)) = core.members.get_mut(slot as usize) {
                        let seq = h.gossip_seq;
                        h.gossip_seq = h.gossip_seq.wrapping_add(1);
                        h.first_sight(gossip_key(&name, seq), seen_max);
                        let msg = wire::Gossip {
                            origin: name,
                            seq,
                            payload,
                        };
                        h.member.broadcast(Message::Gossip(msg), None);
                    }
                    core.dirty.push(slot);
                    core.ctx.waker().notify();
                    Ok(())
                }
                None => Err(HostError::NoSuchMember(name)),
            };
            let _ = reply.send(r);
        }
        Command::Members { name, reply } => {
            let guard = shard.borrow();
            let core = &guard.core;
            let r = match core.slot_of(&name).and_then(|s| core.hosted(s)) {
                Some(h) => {
                    let dir = core.dir.borrow();
                    Ok(h.member
                        .members()
                        .filter_map(|(node, _, _)| {
                            let (state, incarnation, info) = h.member.member(node)?;
                            let i = dir.info(info);
                            Some(MemberInfo {
                                name: dir.name(node).to_string(),
                                addr: i.addr,
                                meta: i.meta.to_vec(),
                                state,
                                incarnation,
                            })
                        })
                        .collect())
                }
                None => Err(HostError::NoSuchMember(name)),
            };
            let _ = reply.send(r);
        }
        Command::Census { expected, reply } => {
            let guard = shard.borrow();
            let _ = reply.send(guard.core.census(expected, &guard.ring));
        }
    }
}

fn add(shard: &Rc<RefCell<Shard>>, spec: MemberSpec) -> Result<SocketAddr, HostError> {
    let mut guard = shard.borrow_mut();
    let Shard { ring, core, .. } = &mut *guard;
    if core.slot_of(&spec.name).is_some() {
        return Err(HostError::Duplicate(spec.name));
    }
    let hosted = core.members.iter().flatten().count();
    if hosted >= core.config.members_per_shard_max {
        return Err(HostError::Busy(core.ctx.id()));
    }
    let bind_err = |what: String| HostError::Bind {
        name: spec.name.clone(),
        addr: spec.bind,
        what,
    };
    // UDP first (port 0 picks one), then TCP on the same port; with port 0, a port whose
    // TCP side is taken is given back and another one tried.
    let per_shard = core.config.stream_listeners == StreamListeners::PerShard;
    let mut tries = if spec.bind.port() == 0 { 16 } else { 1 };
    let (socket, addr, listener) = loop {
        let socket = ring
            .bind(spec.bind, SocketOptions::default())
            .map_err(|e| bind_err(e.to_string()))?;
        let Some(addr) = ring.local_addr(socket) else {
            ring.remove_socket(socket);
            return Err(bind_err("the bound socket has no address".into()));
        };
        let listening = if per_shard {
            core.share_listener(shard, addr).map(|()| None)
        } else {
            FrameListener::bind(addr, &core.config.label, core.config.stream_frame_bytes_max)
                .map(Some)
        };
        match listening {
            Ok(l) => break (socket, addr, l),
            Err(e) => {
                ring.remove_socket(socket);
                tries -= 1;
                if tries == 0 {
                    return Err(bind_err(format!("TCP listener: {e}")));
                }
            }
        }
    };
    let now = core.ctx.now();
    core.rng_seed = core.rng_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let member = Member::new(
        core.config.swim.clone(),
        core.dir.clone(),
        &spec.name,
        addr,
        &spec.meta,
        ChaCha8Rng::seed_from_u64(core.rng_seed),
        now,
    );
    let mut member = match member {
        Ok(m) => m,
        Err(e) => {
            ring.remove_socket(socket);
            core.unshare_listener(addr);
            return Err(HostError::Member {
                name: spec.name,
                what: e.to_string(),
            });
        }
    };
    let seeds: Vec<SocketAddr> = spec.seeds.iter().copied().filter(|s| *s != addr).collect();
    if !seeds.is_empty()
        && let Err(e) = member.join(now, &seeds)
    {
        ring.remove_socket(socket);
        core.unshare_listener(addr);
        return Err(HostError::Member {
            name: spec.name,
            what: e.to_string(),
        });
    }
    let slot = match core.free_slots.pop() {
        Some(s) => s,
        None => {
            core.members.push(None);
            (core.members.len() - 1) as u32
        }
    };
    let generation = core.next_generation;
    core.next_generation += 1;
    let acceptor =
        listener.map(|l| core.spawn_acceptor(shard, Route::Member { slot, generation }, l));
    let i = socket.0 as usize;
    if core.by_socket.len() <= i {
        core.by_socket.resize(i + 1, u32::MAX);
    }
    core.by_socket[i] = slot;
    let name: Arc<str> = Arc::from(spec.name.as_str());
    core.names.insert(Arc::clone(&name), slot);
    core.by_addr.insert(addr, slot);
    core.members[slot as usize] = Some(Hosted {
        name,
        member,
        socket,
        addr,
        generation,
        _acceptor: acceptor,
        leaving: None,
        // Random start: a member restarted under the same name does not repeat old keys.
        gossip_seq: core.rng_seed.rotate_left(17),
        gossip_seen: HashSet::new(),
        gossip_order: VecDeque::new(),
    });
    core.dirty.push(slot);
    core.ctx.waker().notify();
    Ok(addr)
}

impl Core {
    /// Starts serving inbound streams from `listener` for `route`.
    fn spawn_acceptor(
        &self,
        shard: &Rc<RefCell<Shard>>,
        route: Route,
        listener: FrameListener,
    ) -> glommio::Task<()> {
        glommio::spawn_local(accept_loop(
            Rc::clone(shard),
            self.ctx.waker().clone(),
            route,
            listener,
            (
                Duration::from_millis(self.config.swim.stream_timeout_ms),
                Rc::clone(&self.seal),
                self.config.inbound_streams_max,
            ),
        ))
    }

    /// Makes the shard's wildcard listener on `addr`'s port serve one more member,
    /// opening it if this is the port's first member here.
    fn share_listener(
        &mut self,
        shard: &Rc<RefCell<Shard>>,
        addr: SocketAddr,
    ) -> std::io::Result<()> {
        let (port, v6) = (addr.port(), addr.is_ipv6());
        if let Some(l) = self
            .listeners
            .iter_mut()
            .find(|l| (l.port, l.v6) == (port, v6))
        {
            l.users += 1;
            return Ok(());
        }
        let any: SocketAddr = if v6 {
            (std::net::Ipv6Addr::UNSPECIFIED, port).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, port).into()
        };
        let listener = FrameListener::bind(any, &self.config.label, self.config.stream_frame_bytes_max)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "shared listener on {any}: {e} (with StreamListeners::PerShard, members on different shards need different ports: see Host::shard_of)"
                    ),
                )
            })?;
        let acceptor = self.spawn_acceptor(shard, Route::ByLocalAddr, listener);
        self.listeners.push(SharedListener {
            port,
            v6,
            users: 1,
            _acceptor: acceptor,
        });
        Ok(())
    }

    /// A member on `addr` is gone: with `PerShard`, its shared listener serves one member
    /// fewer (and closes with the last).
    fn unshare_listener(&mut self, addr: SocketAddr) {
        let key = (addr.port(), addr.is_ipv6());
        if let Some(i) = self.listeners.iter().position(|l| (l.port, l.v6) == key) {
            self.listeners[i].users -= 1;
            if self.listeners[i].users == 0 {
                self.listeners.swap_remove(i);
            }
        }
    }

    /// The member a connection to `local` is for: (slot, generation).
    fn route(&mut self, route: Route, local: Option<SocketAddr>) -> Option<(u32, u64)> {
        match route {
            Route::Member { slot, generation } => Some((slot, generation)),
            Route::ByLocalAddr => {
                let found = local
                    .and_then(|a| self.by_addr.get(&a).copied())
                    .and_then(|slot| Some((slot, self.hosted(slot)?.generation)));
                if found.is_none() {
                    self.census.streams_unrouted += 1;
                }
                found
            }
        }
    }

    fn slot_of(&self, name: &str) -> Option<u32> {
        self.names.get(name).copied()
    }

    fn hosted(&self, slot: u32) -> Option<&Hosted> {
        self.members.get(slot as usize).and_then(|m| m.as_ref())
    }

    fn live(&mut self, slot: u32, generation: u64) -> Option<&mut Hosted> {
        self.members
            .get_mut(slot as usize)
            .and_then(|m| m.as_mut())
            .filter(|h| h.generation == generation)
    }

    fn remove(&mut self, slot: u32, ring: &mut UdpRing) {
        let Some(h) = self.members.get_mut(slot as usize).and_then(|m| m.take()) else {
            return;
        };
        add_stats(&mut self.census.stats, h.member.stats());
        self.names.remove(&h.name);
        self.by_addr.remove(&h.addr);
        self.unshare_listener(h.addr);
        ring.remove_socket(h.socket);
        if let Some(s) = self.by_socket.get_mut(h.socket.0 as usize) {
            *s = u32::MAX;
        }
        self.timers.cancel(slot);
        self.free_slots.push(slot);
        if let Some((_, reply)) = h.leaving {
            let _ = reply.send(Ok(()));
        }
        // Dropping `h` cancels its acceptor (closing the TCP listener).
    }

    fn on_timer(&mut self, now: Time, slot: u32) {
        if let Some(Some(h)) = self.members.get_mut(slot as usize) {
            h.member.handle_timeout(now);
            self.dirty.push(slot);
        }
    }

    /// Stops leaving members whose leave has been gossiped enough (or whose linger time is
    /// up); keeps the others' timers at or before their linger deadline.
    fn reap_leavers(&mut self, now: Time, ring: &mut UdpRing) {
        if self.leavers.is_empty() {
            return;
        }
        let leavers = std::mem::take(&mut self.leavers);
        for slot in leavers {
            let Some(Some(h)) = self.members.get(slot as usize) else {
                continue;
            };
            let Some((until, _)) = &h.leaving else {
                continue;
            };
            if now >= *until || h.member.broadcasts_pending() == 0 {
                self.remove(slot, ring);
            } else {
                let at = h.member.poll_timeout().map_or(*until, |t| t.min(*until));
                let _ = self.timers.set(slot, at);
                self.leavers.push(slot);
            }
        }
    }

    /// Sends every dirty member's outputs, delivers its events and re-arms its timer.
    fn flush_dirty(&mut self, now: Time, out: &mut Sender<'_, '_>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &slot in &dirty {
            self.flush(now, slot, out);
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn flush(&mut self, now: Time, slot: u32, out: &mut Sender<'_, '_>) {
        let Some(Some(h)) = self.members.get_mut(slot as usize) else {
            return;
        };
        let mut again = false;
        while let Some(output) = h.member.poll_output() {
            match output {
                Output::Datagram(t) => {
                    let sent = send_datagram(
                        &mut self.encoder,
                        (*self.seal).as_ref(),
                        &self.dir,
                        self.config.swim.datagram_bytes_max,
                        out,
                        h.socket,
                        &t,
                    );
                    if !sent {
                        self.census.sends_dropped += 1;
                    }
                }
                Output::Stream(s) => {
                    match encode_stream_request(
                        &mut self.encoder,
                        (*self.seal).as_ref(),
                        &self.dir,
                        self.config.stream_frame_bytes_max,
                        &s.request,
                    ) {
                        Some(frame) => {
                            self.streams_to_start.push((slot, h.generation, s, frame));
                        }
                        None => {
                            self.census.streams_failed += 1;
                            again = true;
                            h.member.handle_stream_response(
                                now,
                                s.id,
                                Err(swim::StreamError::Unreachable),
                            );
                        }
                    }
                }
            }
        }
        let mask = self.config.events;
        while let Some(e) = h.member.poll_event() {
            if let swim::Event::Message { from, msg } = &e
                && let Message::Gossip(g) = &**msg
            {
                // Deliver and relay each broadcast once.
                if !h.first_sight(gossip_key(&g.origin, g.seq), self.config.gossip_seen_max) {
                    continue;
                }
                h.member.broadcast((**msg).clone(), None);
                if mask.contains(EventMask::MESSAGE) {
                    let ev = HostEvent {
                        at: self.ctx.clock().instant(now),
                        local: Arc::clone(&h.name),
                        event: Event::Message {
                            from: *from,
                            origin: Some(g.origin.clone()),
                            payload: g.payload.clone(),
                        },
                    };
                    if !self.ctx.emit(ev) {
                        self.census.events_dropped += 1;
                    }
                }
                continue;
            }
            // Filter before building: a load test's start is n² "up" events nobody wants.
            if !mask.contains(event_mask(&e)) {
                continue;
            }
            let Some(event) = to_event(&self.dir, &h.member, e) else {
                continue;
            };
            let ev = HostEvent {
                at: self.ctx.clock().instant(now),
                local: Arc::clone(&h.name),
                event,
            };
            if !self.ctx.emit(ev) {
                self.census.events_dropped += 1;
            }
        }
        match h.member.poll_timeout() {
            Some(at) => {
                let _ = self.timers.set(slot, at);
            }
            None => self.timers.cancel(slot),
        }
        if again {
            // A stream that could not be encoded failed at once: flush what that produced.
            self.dirty.push(slot);
        }
    }

    fn stream_done(&mut self, now: Time, done: StreamDone) {
        let StreamDone {
            slot,
            generation,
            id,
            response,
        } = done;
        let failed = response.is_err();
        let Some(h) = self.live(slot, generation) else {
            return;
        };
        h.member.handle_stream_response(now, id, response);
        if failed {
            self.census.streams_failed += 1;
        }
        self.dirty.push(slot);
    }

    /// A peer's answer to a stream exchange, read in place from its frame.
    fn stream_response(
        &self,
        answer: &MessageRef<'_>,
        from: SocketAddr,
    ) -> Result<StreamResponse, swim::StreamError> {
        match answer {
            MessageRef::PushPull(p) => self
                .push_pull_in(p, from)
                .map(StreamResponse::PushPull)
                .ok_or(swim::StreamError::Unreachable),
            MessageRef::Ack(a) => Ok(StreamResponse::Ack {
                seq: a.seq_no.to_native(),
            }),
            MessageRef::Nack(_) => Ok(StreamResponse::Refused),
            _ => Err(swim::StreamError::Unreachable),
        }
    }

    /// A peer's push-pull state interned in this shard's directory; `None` over the bounds.
    fn push_pull_in(
        &self,
        p: &wire::ArchivedPushPull,
        from: SocketAddr,
    ) -> Option<Rc<swim::PushPullState>> {
        let c = &self.config.swim;
        self.dir
            .borrow_mut()
            .push_pull_from_wire(p, from, c.push_pull_members_max, c.user_state_bytes_max)
            .ok()
            .map(Rc::new)
    }

    /// Answers an inbound stream request for the member in `slot`; the frame to send back.
    fn serve(
        &mut self,
        now: Time,
        slot: u32,
        generation: u64,
        from: SocketAddr,
        request: &MessageRef<'_>,
    ) -> Option<Vec<u8>> {
        let frame_max = self.config.stream_frame_bytes_max;
        let dir = self.dir.clone();
        let request = match request {
            MessageRef::PushPull(p) => self.push_pull_in(p, from).map(StreamRequest::PushPull),
            m @ MessageRef::Ping(_) => match dir.borrow_mut().from_wire_ref(m) {
                Ok(Item::Ping {
                    seq,
                    target,
                    source,
                }) => Some(StreamRequest::Ping {
                    seq,
                    target,
                    source,
                }),
                _ => None,
            },
            _ => None,
        };
        let request = request?;
        let h = self.live(slot, generation)?;
        let response = h.member.handle_stream_request(now, from, request);
        self.dirty.push(slot);
        self.census.streams_served += 1;
        let seal = (*self.seal).as_ref();
        let msg = match response {
            StreamResponse::PushPull(state) => {
                let frame =
                    dir.borrow()
                        .encode_push_pull(&state, &mut self.encoder, seal, frame_max);
                return frame.ok().map(<[u8]>::to_vec);
            }
            StreamResponse::Ack { seq } => Message::Ack(wire::Ack {
                seq_no: seq,
                coordinate: None,
            }),
            StreamResponse::Refused => Message::Nack(wire::Nack { seq_no: u32::MAX }),
        };
        self.encoder
            .encode_message(&msg, seal, frame_max)
            .ok()
            .map(<[u8]>::to_vec)
    }

    fn census(&self, expected: usize, ring: &UdpRing) -> ShardCensus {
        let mut c = self.census.clone();
        c.alive_seen_min = usize::MAX;
        for h in self.members.iter().flatten() {
            if h.leaving.is_some() {
                continue;
            }
            let m = &h.member;
            c.members += 1;
            let alive = m.count(MemberState::Alive);
            c.alive_seen_min = c.alive_seen_min.min(alive);
            c.alive_seen_max = c.alive_seen_max.max(alive);
            if alive == expected && m.count(MemberState::Suspect) == 0 {
                c.converged += 1;
            }
            add_stats(&mut c.stats, m.stats());
        }
        if c.members == 0 {
            c.alive_seen_min = 0;
        }
        c.stream_listeners = self.listeners.len();
        c.udp = ring.counters().clone();
        c
    }
}

impl UdpHandler for Core {
    fn on_datagram(
        &mut self,
        out: &mut Sender<'_, '_>,
        socket: SocketId,
        from: SocketAddr,
        _frame: &Frame<'_>,
        messages: &[MessageRef<'_>],
    ) {
        let Some(&slot) = self.by_socket.get(socket.0 as usize) else {
            return;
        };
        let Some(Some(h)) = self.members.get_mut(slot as usize) else {
            return;
        };
        let now = self.ctx.now();
        for m in messages {
            // The archive was validated in place by the transport; names and addresses
            // are looked up in it directly (nothing is copied unless it is new).
            let item = self.dir.borrow_mut().from_wire_ref(m);
            match item {
                Ok(item) => h.member.handle_item(now, from, item),
                Err(_) => self.census.stats.dropped += 1,
            }
        }
        self.flush(now, slot, out);
    }
}

fn event_mask(e: &swim::Event) -> EventMask {
    match e {
        swim::Event::Up { .. } => EventMask::UP,
        swim::Event::Suspect { .. } => EventMask::SUSPECT,
        swim::Event::AliveAgain { .. } => EventMask::ALIVE_AGAIN,
        swim::Event::Down { .. } => EventMask::DOWN,
        swim::Event::Left { .. } => EventMask::LEFT,
        swim::Event::Updated { .. } => EventMask::UPDATED,
        swim::Event::Reaped { .. } => EventMask::REAPED,
        swim::Event::Message { .. } => EventMask::MESSAGE,
        swim::Event::Joined { .. } => EventMask::JOINED,
        swim::Event::Refuted { .. } | swim::Event::UserState { .. } | swim::Event::Rtt { .. } => {
            EventMask::NONE
        }
    }
}

fn to_event(dir: &SharedDirectory, member: &Member<ChaCha8Rng>, e: swim::Event) -> Option<Event> {
    let d = dir.borrow();
    let info_of = |node: swim::NodeId, info: Option<swim::InfoId>| -> MemberInfo {
        let seen = member.member(node);
        let info = info.or(seen.map(|s| s.2));
        let (addr, meta) = match info {
            Some(i) => {
                let i = d.info(i);
                (i.addr, i.meta.to_vec())
            }
            None => (SocketAddr::from(([0, 0, 0, 0], 0)), Vec::new()),
        };
        MemberInfo {
            name: d.name(node).to_string(),
            addr,
            meta,
            state: seen.map_or(MemberState::Dead, |s| s.0),
            incarnation: seen.map_or(0, |s| s.1),
        }
    };
    Some(match e {
        swim::Event::Up { node, info } => Event::Up(info_of(node, Some(info))),
        swim::Event::Suspect { node, from } => Event::Suspect {
            member: info_of(node, None),
            by: d.name(from).to_string(),
        },
        swim::Event::AliveAgain { node } => Event::AliveAgain(info_of(node, None)),
        swim::Event::Down { node, from } => Event::Down {
            member: info_of(node, None),
            by: d.name(from).to_string(),
        },
        swim::Event::Left { node } => Event::Left(info_of(node, None)),
        swim::Event::Updated { node, info } => Event::Updated(info_of(node, Some(info))),
        swim::Event::Reaped { node } => Event::Reaped(info_of(node, None)),
        swim::Event::Message { from, msg } => match &*msg {
            Message::UserMsg(u) => Event::Message {
                from,
                origin: None,
                payload: u.payload.clone(),
            },
            _ => return None,
        },
        swim::Event::Joined { seed, ok } => Event::Joined { seed, ok },
        swim::Event::Refuted { .. } | swim::Event::UserState { .. } | swim::Event::Rtt { .. } => {
            return None;
        }
    })
}

/// Encodes a transmit as one batch frame and queues it; false if it was dropped.
fn send_datagram(
    encoder: &mut Encoder,
    seal: Option<&Keyring>,
    dir: &SharedDirectory,
    limit: usize,
    out: &mut Sender<'_, '_>,
    socket: SocketId,
    t: &Transmit,
) -> bool {
    let d = dir.borrow();
    let mut batch = encoder.batch(seal, limit);
    for item in &t.items {
        let msg = match item {
            Item::Other(m) => {
                if !matches!(batch.push_message(m), Ok(true)) {
                    return false;
                }
                continue;
            }
            other => d.to_wire(other),
        };
        if !matches!(batch.push_message(&msg), Ok(true)) {
            return false;
        }
    }
    match batch.finish() {
        Ok(frame) => out.send(socket, t.to, frame).is_ok(),
        Err(_) => false,
    }
}

fn encode_stream_request(
    encoder: &mut Encoder,
    seal: Option<&Keyring>,
    dir: &SharedDirectory,
    limit: usize,
    request: &StreamRequest,
) -> Option<Vec<u8>> {
    let d = dir.borrow();
    let frame = match request {
        StreamRequest::PushPull(state) => d.encode_push_pull(state, encoder, seal, limit),
        StreamRequest::Ping {
            seq,
            target,
            source,
        } => {
            let ping = d.to_wire(&Item::Ping {
                seq: *seq,
                target: *target,
                source: *source,
            });
            encoder.encode_message(&ping, seal, limit)
        }
    };
    frame.ok().map(<[u8]>::to_vec)
}

fn start_streams(shard: &Rc<RefCell<Shard>>) {
    let (starts, timeout, label, frame_max, keyring) = {
        let mut s = shard.borrow_mut();
        if s.core.streams_to_start.is_empty() {
            return;
        }
        let starts = std::mem::take(&mut s.core.streams_to_start);
        s.core.census.streams_out += starts.len() as u64;
        let c = &s.core.config;
        (
            starts,
            Duration::from_millis(c.swim.stream_timeout_ms),
            c.label.clone(),
            c.stream_frame_bytes_max,
            Rc::clone(&s.core.seal),
        )
    };
    let wake = shard.borrow().core.ctx.waker().clone();
    let label: Rc<[u8]> = label.into();
    for (slot, generation, t, frame) in starts {
        {
            // A shard-wide bound on connections in flight (each holds a descriptor): over
            // it the exchange fails at once, as an unreachable peer would.
            let mut s = shard.borrow_mut();
            if s.outbound >= s.core.config.outbound_streams_max {
                s.completions.push_back(StreamDone {
                    slot,
                    generation,
                    id: t.id,
                    response: Err(swim::StreamError::Unreachable),
                });
                wake.notify();
                continue;
            }
            s.outbound += 1;
        }
        let shard = Rc::clone(shard);
        let wake = wake.clone();
        let label = Rc::clone(&label);
        let keyring = Rc::clone(&keyring);
        glommio::spawn_local(async move {
            let exchange = async {
                let mut s = FrameStream::connect(t.to, &label, frame_max)
                    .await
                    .map_err(|_| swim::StreamError::Unreachable)?;
                s.send(&frame)
                    .await
                    .map_err(|_| swim::StreamError::Unreachable)?;
                let response = match s.recv((*keyring).as_ref()).await {
                    // Read in place: a push-pull answer is interned straight from the frame.
                    Ok(Some(f)) => match f.messages().next() {
                        Some(Ok(m)) => shard.borrow().core.stream_response(&m, t.to),
                        _ => Err(swim::StreamError::Unreachable),
                    },
                    _ => Err(swim::StreamError::Unreachable),
                };
                let _ = s.close().await;
                response
            };
            let response = future::or(exchange, async {
                glommio::timer::sleep(timeout).await;
                Err(swim::StreamError::Timeout)
            })
            .await;
            let mut s = shard.borrow_mut();
            s.outbound -= 1;
            s.completions.push_back(StreamDone {
                slot,
                generation,
                id: t.id,
                response,
            });
            wake.notify();
        })
        .detach();
    }
}

/// Serves inbound stream exchanges of one member until its task is dropped.
async fn accept_loop(
    shard: Rc<RefCell<Shard>>,
    wake: LocalNotify,
    route: Route,
    listener: FrameListener,
    limits: (Duration, Rc<Option<Keyring>>, usize),
) {
    // Everything from the shard state comes in as arguments: the task may first run while
    // the shard is borrowed by the code that spawned it.
    let (timeout, keyring, max) = limits;
    loop {
        let Ok(mut stream) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            shard.borrow_mut().core.census.accept_errors += 1;
            glommio::timer::sleep(super::ACCEPT_BACKOFF).await;
            continue;
        };
        let (slot, generation) = {
            let mut s = shard.borrow_mut();
            let Some(to) = s.core.route(route, stream.local_addr().ok()) else {
                continue;
            };
            if s.inbound >= max {
                s.core.census.streams_refused += 1;
                continue;
            }
            s.inbound += 1;
            to
        };
        let shard = Rc::clone(&shard);
        let wake = wake.clone();
        let keyring = Rc::clone(&keyring);
        glommio::spawn_local(async move {
            let from = stream.peer_addr().ok();
            let served = future::or(
                async {
                    // The request is read in place (a push-pull state is interned straight
                    // from the frame); the answer is an owned frame, sent once the received
                    // frame's buffer is free again.
                    let answer = match (stream.recv((*keyring).as_ref()).await, from) {
                        (Ok(Some(f)), Some(from)) => match f.messages().next() {
                            Some(Ok(req)) => {
                                let mut s = shard.borrow_mut();
                                let now = s.core.ctx.now();
                                s.core.serve(now, slot, generation, from, &req)
                            }
                            _ => None,
                        },
                        _ => None,
                    };
                    wake.notify();
                    match answer {
                        Some(frame) => stream.send(&frame).await.is_ok(),
                        None => false,
                    }
                },
                async {
                    glommio::timer::sleep(timeout).await;
                    false
                },
            )
            .await;
            let mut s = shard.borrow_mut();
            s.inbound -= 1;
            if !served {
                s.core.census.streams_refused += 1;
            }
        })
        .detach();
    }
}

//! One shard of a [`super::Host`]: its members, ring, directory, timers and stream tasks.
//!
//! Everything here runs on the shard's thread. The shard state sits in one `RefCell`;
//! the main loop and the stream tasks borrow it only between awaits, never across one.
//!
//! This file holds the shard's state and its main loop; the rest follows the seams:
//! - `commands`: what the application asks of the shard (add, kill, leave, broadcast,
//!   members, census);
//! - `member_io`: a member's datagrams in (the ring's handler) and everything it produces
//!   flushed out (datagrams, stream exchanges to start, events, its next deadline);
//! - `events`: the core's events as the application's [`HostEvent`]s;
//! - `streams`: TCP exchanges, outbound (one task each) and inbound (listeners and
//!   accept loops).

mod commands;
mod events;
mod member_io;
mod serf_io;
mod streams;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use ringleader_wire::{Encoder, Keyring};

pub(crate) use commands::Command;
use commands::command;
pub(crate) use serf_io::{SerfCommand, SerfStart};
use streams::{SharedListener, StreamDone, start_streams};

use crate::host::{HostConfig, HostError, HostEvent, ShardCensus, add_stats};
use crate::runtime::{CommandSender, ShardContext, Timers};
use crate::swim::{Directory, Member, MemberState, SharedDirectory, StreamTransmit};
use crate::time::Time;
use crate::transport::{SocketId, UdpRing};

type Reply<T> = crossbeam_channel::Sender<T>;

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
    /// The member's Serf layer, if it runs one.
    serf: Option<Box<serf_io::SerfState>>,
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
    /// The current `seal`, for accept loops (each connection takes the keyring current
    /// when it starts: a key rotation reaches listeners that are already running).
    seal_slot: Rc<RefCell<Rc<Option<Keyring>>>>,
    /// A Serf layer changed its keyring: the keys (primary first) the transport must use.
    keys_changed: Option<Vec<[u8; ringleader_wire::keyring::KEY_LEN]>>,
    /// Sends commands to this shard (for the responders of queries handed out).
    me: Option<CommandSender<Command>>,
    next_generation: u64,
    rng_seed: u64,
    census: ShardCensus,
    /// What the frames of the shard's inbound streams may hold at once.
    stream_budget: crate::transport::ByteBudget,
}

struct Shard {
    ring: UdpRing,
    core: Core,
    completions: VecDeque<StreamDone>,
    inbound: usize,
    /// Of those, how many each source IP holds (the per-IP bound's ledger).
    inbound_by_ip: crate::transport::PerIpCount,
    /// Outbound stream exchanges in flight.
    outbound: usize,
}

pub(super) fn keyring_of(keys: &[[u8; ringleader_wire::keyring::KEY_LEN]]) -> Option<Keyring> {
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
    // Room for the cluster and for the failed members its members remember for reconnects:
    // what nothing holds any more is reclaimed (`Core::collect_if_due`).
    let dir = Directory::shared(
        config
            .cluster_members_max
            .saturating_add(config.swim.reconnect_memory_max),
        config.swim.meta_bytes_max,
    );
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
        seal_slot: Rc::new(RefCell::new(Rc::new(keyring_of(&config.keys)))),
        keys_changed: None,
        me: None,
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
        stream_budget: crate::transport::ByteBudget::new(config.inbound_stream_bytes_max),
        config,
    };
    let shard = Rc::new(RefCell::new(Shard {
        ring,
        core,
        completions: VecDeque::new(),
        inbound: 0,
        inbound_by_ip: crate::transport::PerIpCount::default(),
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
            let Shard {
                ring,
                core,
                completions,
                ..
            } = s;
            ring.with_sender(|out| core.flush_dirty(now, out));
            core.apply_keys(ring);
            if !core.dirty.is_empty() {
                ctx.waker().notify();
            }
            core.reap_leavers(now, ring);
            core.collect_if_due(now, completions);
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
            // would starve every stream until glommio's preemption timer (outbound
            // stream sockets pile up unconnected: docs/BENCHMARKS.md, membership).
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

impl Core {
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
            // A Serf member writes its last snapshot, then the leave is answered.
            match &h.serf {
                Some(s) => s.finish(&h.member, reply),
                None => {
                    let _ = reply.send(Ok(()));
                }
            }
        }
        // Dropping `h` cancels its acceptor (closing the TCP listener).
    }

    /// Reclaims the directory's names and triples that nothing on this shard holds any
    /// more: no member, no stream exchange about to start, no stream answer waiting for
    /// its member (the only places outside the members where the shard keeps ids).
    fn collect_if_due(&mut self, now: Time, completions: &VecDeque<StreamDone>) {
        if !self.dir.borrow().collect_due(now) {
            return;
        }
        let Core {
            dir,
            members,
            streams_to_start,
            ..
        } = self;
        dir.borrow_mut().collect(now, |marks| {
            for h in members.iter().flatten() {
                h.member.mark_ids(marks);
            }
            for (_, _, t, _) in streams_to_start.iter() {
                marks.stream_request(&t.request);
            }
            for done in completions {
                done.mark_ids(marks);
            }
        });
    }

    /// Gives the transport the keys a Serf layer rotated to: the ring opens datagrams with
    /// them, new frames are sealed with the new primary, and streams (outbound and each new
    /// inbound connection) use them.
    fn apply_keys(&mut self, ring: &mut UdpRing) {
        let Some(keys) = self.keys_changed.take() else {
            return;
        };
        if keys.is_empty() {
            // Encryption stays on: a keyring cannot become empty (the primary is never
            // removed), so there is nothing to apply.
            return;
        }
        ring.set_keyring(keyring_of(&keys));
        self.seal = Rc::new(keyring_of(&keys));
        *self.seal_slot.borrow_mut() = Rc::clone(&self.seal);
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
                let _ = self
                    .timers
                    .set(slot, member_io::on_grid(at, self.config.timer_slack_ms));
                self.leavers.push(slot);
            }
        }
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
            if let Some(s) = &h.serf {
                s.count(&mut c.serf);
            }
        }
        if c.members == 0 {
            c.alive_seen_min = 0;
        }
        c.stream_listeners = self.listeners.len();
        c.udp = ring.counters().clone();
        c
    }
}

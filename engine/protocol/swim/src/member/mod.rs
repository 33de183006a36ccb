//! One SWIM + Lifeguard member: a deterministic state machine.
//!
//! Inputs carry the current time: datagrams ([`Member::handle_items`] /
//! [`Member::handle_message`]), stream exchanges ([`Member::handle_stream_request`],
//! [`Member::handle_stream_response`]), timers ([`Member::handle_timeout`] at
//! [`Member::poll_timeout`]) and commands (join, leave, metadata, broadcasts). Outputs are
//! pulled: [`Member::poll_output`] (datagrams and stream requests) and
//! [`Member::poll_event`]. It never reads a clock, never does IO, and draws randomness only
//! from its own RNG. Nothing a peer sends can make it panic or grow without a bound.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use rand::Rng;
use ringleader_time::Time;
use ringleader_wire::Message;
use ringleader_wire::msg::swim::{Coordinate, MemberState};

use super::config::{
    Awareness, Config, push_pull_interval, retransmit_limit, suspicion_timeout_min,
};
use super::directory::{Directory, DirectoryError, SharedDirectory};
use super::hash::FxHashMap;
use super::item::{InfoId, Item, NodeId, NodeState, PushPullState, StreamRequest, StreamResponse};
use super::queue::BroadcastQueue;
use super::suspicion::Suspicion;

const NONE: u32 = u32::MAX;
const CHANGED_S_MAX: u32 = (1 << 29) - 1;

/// One row of the member table: 16 bytes, so ten thousand members that each know ten
/// thousand others fit in 1.6 GB.
#[derive(Debug, Clone, Copy)]
struct Entry {
    incarnation: u64,
    info: InfoId,
    /// State in bits 0..3, seconds of the last state change in bits 3..32 (saturating).
    packed: u32,
}

impl Entry {
    const EMPTY: Entry = Entry {
        incarnation: 0,
        info: NONE,
        packed: 0,
    };

    fn present(&self) -> bool {
        self.info != NONE
    }

    fn state(&self) -> MemberState {
        match self.packed & 7 {
            0 => MemberState::Alive,
            1 => MemberState::Suspect,
            2 => MemberState::Dead,
            _ => MemberState::Left,
        }
    }

    fn changed_s(&self) -> u32 {
        self.packed >> 3
    }
}

fn secs(t: Time) -> u32 {
    (t.as_nanos() / 1_000_000_000).min(u64::from(CHANGED_S_MAX)) as u32
}

fn state_index(s: MemberState) -> usize {
    s as usize
}

/// A datagram to send: a batch of items to one address, at most the datagram limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// The messages, first the one this datagram is for, then piggybacked broadcasts.
    pub items: Vec<Item>,
    /// Exact size of the batch frame in bytes.
    pub bytes: usize,
}

/// A stream exchange to start; answer with [`Member::handle_stream_response`] and `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamTransmit {
    /// Identifies the exchange.
    pub id: u64,
    /// Destination.
    pub to: SocketAddr,
    /// What to send.
    pub request: StreamRequest,
    /// Approximate size in bytes (for accounting).
    pub bytes: usize,
}

/// Something for the driver to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A datagram.
    Datagram(Transmit),
    /// A request over the reliable stream transport.
    Stream(StreamTransmit),
}

/// Something that happened, for the application or the layer above.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A member joined, or came back after being dead or left.
    Up {
        /// The member.
        node: NodeId,
        /// Its name, address and metadata.
        info: InfoId,
    },
    /// A member is suspected.
    Suspect {
        /// The member.
        node: NodeId,
        /// The accuser.
        from: NodeId,
    },
    /// A suspected member refuted.
    AliveAgain {
        /// The member.
        node: NodeId,
    },
    /// A member was declared dead.
    Down {
        /// The member.
        node: NodeId,
        /// Who declared it.
        from: NodeId,
    },
    /// A member left gracefully.
    Left {
        /// The member.
        node: NodeId,
    },
    /// A member's metadata or address changed.
    Updated {
        /// The member.
        node: NodeId,
        /// Its new name, address and metadata.
        info: InfoId,
    },
    /// A dead or left member was removed from the table.
    Reaped {
        /// The member.
        node: NodeId,
    },
    /// This member refuted a suspicion or death of itself.
    Refuted {
        /// Its new incarnation.
        incarnation: u64,
    },
    /// A non-SWIM message arrived (user message, Serf event, query...).
    Message {
        /// Sender address.
        from: SocketAddr,
        /// The message.
        msg: Rc<Message>,
    },
    /// The layer above's state arrived in a push-pull.
    UserState {
        /// The peer.
        from: InfoId,
        /// Its opaque state.
        state: Vec<u8>,
        /// Whether the peer was joining.
        join: bool,
    },
    /// A probe was answered: a round-trip sample (for Vivaldi).
    Rtt {
        /// The probed member.
        node: NodeId,
        /// Time from the probe to its ack.
        rtt: Duration,
        /// The member's coordinate from its ack.
        coordinate: Option<Rc<Coordinate>>,
    },
    /// A join (push-pull with a seed) finished.
    Joined {
        /// The seed.
        seed: SocketAddr,
        /// Whether the seed answered.
        ok: bool,
    },
}

/// Why a stream exchange failed (reported by the driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The peer could not be reached or the connection broke.
    #[error("stream peer unreachable")]
    Unreachable,
    /// The peer did not answer in time.
    #[error("stream timed out")]
    Timeout,
}

/// Errors of commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwimError {
    /// The directory refused a name or metadata.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// The member has left.
    #[error("the member has left")]
    Left,
    /// Too many stream exchanges in flight.
    #[error("{0} stream exchanges in flight already")]
    StreamsFull(usize),
}

/// Counters, for benchmarks and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams produced.
    pub datagrams_out: u64,
    /// Bytes of datagrams produced.
    pub datagram_bytes_out: u64,
    /// Items (messages) in those datagrams.
    pub items_out: u64,
    /// Stream exchanges started.
    pub streams_out: u64,
    /// Bytes of stream requests and responses produced.
    pub stream_bytes_out: u64,
    /// Probes started.
    pub probes: u64,
    /// Probes that failed (no ack by the deadline).
    pub probes_failed: u64,
    /// Refutations of suspicions about this member.
    pub refutations: u64,
    /// Events dropped because the driver did not drain them.
    pub events_dropped: u64,
    /// Messages dropped for a bound (relays, suspicions, streams, directory).
    pub dropped: u64,
    /// Push-pull states refused (over a bound).
    pub push_pull_refused: u64,
    /// Reconnect attempts to failed members.
    pub reconnects: u64,
    /// Alive rumors received that were news.
    pub rumors_new: u64,
    /// Alive rumors received that were known already.
    pub rumors_redundant: u64,
    /// Of those, ones that counted against a rumor this member was spreading.
    pub rumors_damped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Gossip,
    PushPull { source: NodeId },
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    target: NodeId,
    info: InfoId,
    seq: u32,
    started: Time,
    timeout_at: Time,
    deadline: Time,
    indirect_sent: bool,
    expected_nacks: u32,
    nacks: u32,
}

#[derive(Debug, Clone, Copy)]
struct Relay {
    seq: u32,
    orig_seq: u32,
    source: InfoId,
    nack: bool,
    deadline: Time,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Join { seed: SocketAddr },
    PushPull,
    Reconnect,
    FallbackPing { seq: u32 },
    ReconnectProbe { addr: SocketAddr },
}

#[derive(Debug, Clone, Copy)]
struct PendingStream {
    id: u64,
    purpose: Purpose,
    deadline: Time,
}

/// Randomized round-robin without a shuffled copy of the member list: index `i` of a
/// round visits `(a × i + b) mod len` with `a` coprime to `len`, a permutation of the table.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    a: u64,
    b: u64,
    len: u64,
    i: u64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Whether this member is running, leaving or gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Probing and gossiping.
    Alive,
    /// Has broadcast its leave; still gossips so the news spreads, no longer probes.
    Left,
}

/// One SWIM + Lifeguard member.
pub struct Member<R: Rng> {
    cfg: Config,
    dir: SharedDirectory,
    rng: R,
    me: NodeId,
    my_info: InfoId,
    incarnation: u64,
    status: Status,
    table: Vec<Entry>,
    counts: [usize; 4],
    awareness: Awareness,
    round: Round,
    probe: Option<Probe>,
    next_probe_at: Time,
    next_gossip_at: Time,
    next_push_pull_at: Time,
    next_reconnect_at: Time,
    next_repair_at: Time,
    seq: u32,
    relays: Vec<Relay>,
    suspicions: FxHashMap<NodeId, Suspicion>,
    /// No suspicion expires before this (the earliest deadline, or earlier after a removal:
    /// `expire_suspicions` recomputes it), so timers do not scan every suspicion.
    suspicion_next: Time,
    failed: VecDeque<(NodeId, u32)>,
    reaped: VecDeque<(InfoId, Time)>,
    seeds: Vec<SocketAddr>,
    seeded: bool,
    /// Members first learned from a push-pull (not from a rumor) since the last periodic
    /// push-pull: evidence that join rumors are not reaching this member
    /// (`Config::seed_catch_up`).
    learned_by_push_pull: u64,
    streams: Vec<PendingStream>,
    next_stream_id: u64,
    broadcasts: BroadcastQueue<Item>,
    user_broadcasts: BroadcastQueue<Item>,
    outputs: VecDeque<Output>,
    events: VecDeque<Event>,
    coordinate: Option<Rc<Coordinate>>,
    user_state: Vec<u8>,
    stats: Stats,
}

impl<R: Rng> std::fmt::Debug for Member<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("me", &self.me)
            .field("incarnation", &self.incarnation)
            .field("counts", &self.counts)
            .field("awareness", &self.awareness.score())
            .finish()
    }
}

impl<R: Rng> Member<R> {
    /// A member named `name` listening on `addr` with metadata `meta`, not yet joined to
    /// anyone, started at `now`.
    pub fn new(
        cfg: Config,
        dir: SharedDirectory,
        name: &str,
        addr: SocketAddr,
        meta: &[u8],
        mut rng: R,
        now: Time,
    ) -> Result<Member<R>, SwimError> {
        let (me, my_info) = {
            let mut d = dir.borrow_mut();
            if meta.len() > cfg.meta_bytes_max {
                return Err(DirectoryError::MetaTooLarge {
                    len: meta.len(),
                    max: cfg.meta_bytes_max,
                }
                .into());
            }
            let info = d.intern(name, addr, meta)?;
            (d.info(info).node, info)
        };
        // Spread the periodic timers so that members started together do not tick together.
        let jitter = |rng: &mut R, ms: u64| Duration::from_millis(rng.random_range(0..ms.max(1)));
        let next_probe_at = now + jitter(&mut rng, cfg.probe_interval_ms);
        let next_gossip_at = now + jitter(&mut rng, cfg.gossip_interval_ms);
        // The first push-pull comes within one base interval of the start: it repairs what
        // the join rumors of a cluster that was still small did not reach.
        let next_push_pull_at = now + jitter(&mut rng, cfg.push_pull_interval_ms);
        let next_reconnect_at = now
            + Duration::from_millis(cfg.reconnect_interval_ms)
            + jitter(&mut rng, cfg.reconnect_interval_ms);
        let mut m = Member {
            broadcasts: BroadcastQueue::new(cfg.broadcast_queue_max),
            user_broadcasts: BroadcastQueue::new(cfg.user_broadcast_queue_max),
            awareness: Awareness::new(cfg.awareness_max),
            cfg,
            dir,
            rng,
            me,
            my_info,
            incarnation: 1,
            status: Status::Alive,
            table: Vec::new(),
            counts: [0; 4],
            round: Round::default(),
            probe: None,
            next_probe_at,
            next_gossip_at,
            next_push_pull_at,
            next_reconnect_at,
            next_repair_at: now,
            seq: 0,
            relays: Vec::new(),
            suspicions: FxHashMap::default(),
            suspicion_next: Time::MAX,
            failed: VecDeque::new(),
            reaped: VecDeque::new(),
            seeds: Vec::new(),
            seeded: false,
            learned_by_push_pull: 0,
            streams: Vec::new(),
            next_stream_id: 0,
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            coordinate: None,
            user_state: Vec::new(),
            stats: Stats::default(),
        };
        m.set_entry(me, 1, my_info, MemberState::Alive, now);
        m.queue_update(
            Item::Alive {
                incarnation: 1,
                info: my_info,
            },
            me,
        );
        Ok(m)
    }

    // ----- accessors -------------------------------------------------------------------

    /// This member's name id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// This member's (name, address, metadata) id.
    pub fn info(&self) -> InfoId {
        self.my_info
    }

    /// This member's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Running or left.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The directory this member interns names in.
    pub fn directory(&self) -> &SharedDirectory {
        &self.dir
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// How this member sees `node`: state, incarnation and (name, address, metadata).
    pub fn member(&self, node: NodeId) -> Option<(MemberState, u64, InfoId)> {
        let e = self.table.get(node as usize)?;
        e.present().then(|| (e.state(), e.incarnation, e.info))
    }

    /// Members in `state` in the table (this member included).
    pub fn count(&self, state: MemberState) -> usize {
        self.counts[state_index(state)]
    }

    /// Members in the table, in any state (memberlist's `estNumNodes`).
    pub fn known(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Every member in the table with its state and incarnation.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, MemberState, u64)> + '_ {
        self.table
            .iter()
            .enumerate()
            .filter(|(_, e)| e.present())
            .map(|(i, e)| (i as NodeId, e.state(), e.incarnation))
    }

    /// Lifeguard's local health score (0 is healthy).
    pub fn awareness(&self) -> u32 {
        self.awareness.score()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Membership broadcasts waiting to be piggybacked.
    pub fn broadcasts_pending(&self) -> usize {
        self.broadcasts.len() + self.user_broadcasts.len()
    }

    /// Broadcasts dropped because a queue was full.
    pub fn broadcasts_dropped(&self) -> u64 {
        self.broadcasts.dropped() + self.user_broadcasts.dropped()
    }

    /// Running suspicion timers (bounded by `suspicions_max`).
    pub fn suspicions(&self) -> usize {
        self.suspicions.len()
    }

    /// Indirect probes being relayed (bounded by `relays_max`).
    pub fn relays(&self) -> usize {
        self.relays.len()
    }

    /// Stream exchanges in flight (bounded by `streams_max`).
    pub fn streams_in_flight(&self) -> usize {
        self.streams.len()
    }

    /// Events waiting (bounded by `events_max`).
    pub fn events_pending(&self) -> usize {
        self.events.len()
    }

    /// Failed members remembered for reconnects (bounded by `reconnect_memory_max`).
    pub fn reconnect_memory(&self) -> usize {
        self.reaped.len()
    }

    // ----- layer-above hooks -----------------------------------------------------------

    /// The coordinate attached to this member's acks (Vivaldi, maintained above).
    pub fn set_coordinate(&mut self, c: Option<Coordinate>) {
        self.coordinate = c.map(Rc::new);
    }

    /// The opaque state sent in every push-pull (Serf: clocks, recent events).
    pub fn set_user_state(&mut self, state: Vec<u8>) {
        self.user_state = state;
    }

    /// Queues a broadcast of the layer above (UserEvent, Query, JoinIntent...) for
    /// piggybacking, retransmitted `user_retransmit_mult × ⌈log10(n+1)⌉` times. A
    /// broadcast with the same `key` still queued is replaced.
    pub fn broadcast(&mut self, msg: Message, key: Option<u64>) {
        let item = Item::Other(Rc::new(msg));
        let size = self.dir.borrow_mut().item_size(&item);
        if size == 0
            || size + Directory::frame_overhead(self.cfg.encrypted) > self.cfg.datagram_bytes_max
        {
            self.stats.dropped += 1;
            return;
        }
        self.user_broadcasts.push(item, size, key, 1);
    }

    /// Sends `msg` to `to` in one datagram now (best effort), with nothing piggybacked, as
    /// memberlist's `SendBestEffort`: a reply meant for one member (a query response, a
    /// relay) must not spend the retransmissions of broadcasts meant for random members —
    /// measured in `sim serf`, it left queries undelivered to ~3 % of members at 10 % loss.
    pub fn send_to(&mut self, to: SocketAddr, msg: Message) {
        let item = Item::Other(Rc::new(msg));
        let size = self.dir.borrow_mut().item_size(&item);
        let bytes = size + Directory::frame_overhead(self.cfg.encrypted);
        if size == 0 || bytes > self.cfg.datagram_bytes_max {
            self.stats.dropped += 1;
            return;
        }
        self.stats.datagrams_out += 1;
        self.stats.datagram_bytes_out += bytes as u64;
        self.stats.items_out += 1;
        self.outputs.push_back(Output::Datagram(Transmit {
            to,
            items: vec![item],
            bytes,
        }));
    }

    // ----- commands --------------------------------------------------------------------

    /// Joins through `seeds`: a push-pull with each (one [`Event::Joined`] per seed). The
    /// seeds are remembered: if this member ends up alone, it tries them again.
    pub fn join(&mut self, now: Time, seeds: &[SocketAddr]) -> Result<(), SwimError> {
        if self.status == Status::Left {
            return Err(SwimError::Left);
        }
        for &seed in seeds {
            if !self.seeds.contains(&seed) && self.seeds.len() < self.cfg.streams_max {
                self.seeds.push(seed);
            }
        }
        for &seed in seeds {
            self.push_pull_to(now, seed, true, Purpose::Join { seed })?;
        }
        // The first periodic push-pull, with a seed, comes half to one base interval later.
        let base = self.cfg.push_pull_interval_ms;
        if base > 0 {
            self.seeded = false;
            self.next_push_pull_at =
                now + Duration::from_millis(base / 2 + self.rng.random_range(0..base / 2 + 1));
        }
        Ok(())
    }

    /// Leaves gracefully: broadcasts that this member left (others see it as left, not
    /// dead) and stops probing. Keep driving the member until
    /// [`Member::broadcasts_pending`] is 0 or a grace period passes, then drop it.
    pub fn leave(&mut self, now: Time) {
        if self.status == Status::Left {
            return;
        }
        self.status = Status::Left;
        self.probe = None;
        let inc = self.incarnation;
        self.set_entry(self.me, inc, self.my_info, MemberState::Left, now);
        self.queue_update(
            Item::Dead {
                incarnation: inc,
                node: self.me,
                from: self.me,
            },
            self.me,
        );
    }

    /// Changes this member's metadata and broadcasts it with a new incarnation.
    pub fn update_meta(&mut self, now: Time, meta: &[u8]) -> Result<(), SwimError> {
        if self.status == Status::Left {
            return Err(SwimError::Left);
        }
        let addr = self.dir.borrow().info(self.my_info).addr;
        let info = self.dir.borrow_mut().intern_info(self.me, addr, meta)?;
        self.my_info = info;
        self.incarnation += 1;
        let inc = self.incarnation;
        self.set_entry(self.me, inc, info, MemberState::Alive, now);
        self.queue_update(
            Item::Alive {
                incarnation: inc,
                info,
            },
            self.me,
        );
        Ok(())
    }

    // ----- outputs ---------------------------------------------------------------------

    /// The next thing to send.
    pub fn poll_output(&mut self) -> Option<Output> {
        let o = self.outputs.pop_front();
        if o.is_none() && self.outputs.capacity() > 256 {
            self.outputs.shrink_to(16);
        }
        o
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        if e.is_none() && self.events.capacity() > 256 {
            // A join merges thousands of members at once; do not keep that much room for
            // events in every one of thousands of members.
            self.events.shrink_to(16);
        }
        e
    }

    /// When [`Member::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        // Gossip rounds with nothing to send are skipped without a wake-up (their phase is
        // kept: see handle_timeout).
        let mut t = if self.gossip_fanout() > 0 {
            self.next_gossip_at
        } else {
            Time::MAX
        };
        if self.status == Status::Alive {
            t = t.min(self.next_probe_at);
        }
        if self.cfg.push_pull_interval_ms > 0 {
            t = t.min(self.next_push_pull_at);
        }
        if self.cfg.reconnect_interval_ms > 0 {
            t = t.min(self.next_reconnect_at);
        }
        if let Some(p) = &self.probe {
            t = t.min(if p.indirect_sent {
                p.deadline
            } else {
                p.timeout_at
            });
        }
        for r in &self.relays {
            t = t.min(r.deadline);
        }
        t = t.min(self.suspicion_next);
        for s in &self.streams {
            t = t.min(s.deadline);
        }
        if let Some(&(_, changed_s)) = self.failed.front() {
            let at = Time::from_millis(u64::from(changed_s) * 1000)
                + Duration::from_millis(self.cfg.dead_reap_ms);
            t = t.min(at);
        }
        Some(t)
    }

    // ----- timers ----------------------------------------------------------------------

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        // Probe stages first: a probe's deadline coincides with the next probe's start.
        if let Some(p) = self.probe {
            if !p.indirect_sent && now >= p.timeout_at {
                self.probe_timeout(now);
            }
        }
        if let Some(p) = self.probe
            && p.indirect_sent
            && now >= p.deadline
        {
            self.probe_failed(now);
        }
        if self.status == Status::Alive && now >= self.next_probe_at {
            self.start_probe(now);
        }
        let mut i = 0;
        while i < self.relays.len() {
            if now >= self.relays[i].deadline {
                let r = self.relays.swap_remove(i);
                if r.nack {
                    let addr = self.dir.borrow().info(r.source).addr;
                    self.send(
                        addr,
                        vec![Item::Nack { seq: r.orig_seq }],
                        self.size(&Item::Nack { seq: 0 }),
                    );
                }
            } else {
                i += 1;
            }
        }
        self.expire_suspicions(now);
        let mut i = 0;
        while i < self.streams.len() {
            if now >= self.streams[i].deadline {
                let s = self.streams.swap_remove(i);
                self.stream_failed(s.purpose);
            } else {
                i += 1;
            }
        }
        self.reap(now);
        if now >= self.next_gossip_at {
            let interval = Duration::from_millis(self.cfg.gossip_interval_ms.max(1));
            let behind = now.saturating_since(self.next_gossip_at).as_nanos() / interval.as_nanos();
            let due = self.next_gossip_at + interval * behind as u32;
            self.next_gossip_at = due + interval;
            // Rounds missed while there was nothing to gossip are not made up.
            if behind == 0 {
                self.gossip(now);
            }
        }
        if self.cfg.push_pull_interval_ms > 0 && now >= self.next_push_pull_at {
            self.next_push_pull_at = now + cfg_push_pull(&self.cfg, self.known());
            self.next_repair_at = self.next_repair_at.max(now + self.cfg.probe_interval() * 2);
            let catch_up = self.cfg.seed_catch_up && self.learned_by_push_pull > 0;
            self.learned_by_push_pull = 0;
            if self.status == Status::Alive
                && (!self.seeded || catch_up)
                && let Some(seed) = self.random_seed()
            {
                // The first push-pull after a join goes to a seed: seeds saw every join, so
                // this one exchange completes what the join rumors have not delivered yet.
                // So does the next one while push-pulls keep bringing members the rumors
                // did not (the cluster is still growing faster than rumors reach us).
                self.seeded = true;
                let _ = self.push_pull_to(now, seed, false, Purpose::PushPull);
            } else if self.status == Status::Alive
                && let Some(node) = self.random_member(|_, e| e.state() == MemberState::Alive)
            {
                let addr = self.dir.borrow().info(self.table[node as usize].info).addr;
                let _ = self.push_pull_to(now, addr, false, Purpose::PushPull);
            }
        }
        if self.cfg.reconnect_interval_ms > 0 && now >= self.next_reconnect_at {
            self.next_reconnect_at = now + Duration::from_millis(self.cfg.reconnect_interval_ms);
            self.reconnect(now);
        }
    }

    fn expire_suspicions(&mut self, now: Time) {
        if now < self.suspicion_next {
            return;
        }
        let mut next = Time::MAX;
        let mut due: Vec<(NodeId, u64)> = Vec::new();
        for (&n, s) in &self.suspicions {
            if now >= s.deadline() {
                due.push((n, s.incarnation));
            } else {
                next = next.min(s.deadline());
            }
        }
        self.suspicion_next = next;
        due.sort_unstable();
        for (node, inc) in due {
            self.suspicions.remove(&node);
            let e = self.table[node as usize];
            if e.present() && e.state() == MemberState::Suspect && e.incarnation == inc {
                self.dead_node(now, inc, node, self.me);
            }
        }
    }

    fn reap(&mut self, now: Time) {
        while let Some(&(node, changed_s)) = self.failed.front() {
            if now < Time::from_millis(u64::from(changed_s) * 1000 + self.cfg.dead_reap_ms) {
                break;
            }
            self.failed.pop_front();
            let e = self.table[node as usize];
            let failed = matches!(e.state(), MemberState::Dead | MemberState::Left);
            if !e.present() || !failed || e.changed_s() != changed_s || node == self.me {
                continue;
            }
            if e.state() == MemberState::Dead && self.cfg.reconnect_interval_ms > 0 {
                if self.reaped.len() >= self.cfg.reconnect_memory_max {
                    self.reaped.pop_front();
                }
                self.reaped.push_back((e.info, now));
            }
            self.counts[state_index(e.state())] -= 1;
            self.table[node as usize] = Entry::EMPTY;
            self.push_event(Event::Reaped { node });
        }
    }

    /// Partition healing: every `reconnect_interval` try a push-pull with one failed
    /// member (dead, or reaped within `reconnect_timeout`); alone, try the seeds again.
    fn reconnect(&mut self, now: Time) {
        if self.status != Status::Alive {
            return;
        }
        let timeout = Duration::from_millis(self.cfg.reconnect_timeout_ms);
        while let Some(&(_, at)) = self.reaped.front() {
            if now.saturating_since(at) <= timeout {
                break;
            }
            self.reaped.pop_front();
        }
        let alive = self.count(MemberState::Alive) + self.count(MemberState::Suspect);
        if alive <= 1
            && let Some(seed) = self.random_seed()
        {
            let _ = self.push_pull_to(now, seed, true, Purpose::Join { seed });
            self.stats.reconnects += 1;
            return;
        }
        let dead: Vec<InfoId> = self
            .failed
            .iter()
            .filter_map(|&(n, c)| {
                let e = self.table[n as usize];
                (e.present() && e.state() == MemberState::Dead && e.changed_s() == c)
                    .then_some(e.info)
            })
            .collect();
        let total = dead.len() + self.reaped.len();
        if total == 0 {
            return;
        }
        let pick = self.rng.random_range(0..total);
        let info = if pick < dead.len() {
            dead[pick]
        } else {
            self.reaped[pick - dead.len()].0
        };
        let (addr, node) = {
            let d = self.dir.borrow();
            (d.info(info).addr, d.info(info).node)
        };
        // A cheap stream ping first (like a TCP connect): the full state goes only to a
        // member that answers.
        self.seq = self.seq.wrapping_add(1);
        let req = StreamRequest::Ping {
            seq: self.seq,
            target: node,
            source: self.my_info,
        };
        let deadline = now + Duration::from_millis(self.cfg.stream_timeout_ms);
        if self
            .start_stream(addr, req, 64, Purpose::ReconnectProbe { addr }, deadline)
            .is_ok()
        {
            self.stats.reconnects += 1;
        }
    }

    /// Anti-entropy on evidence of divergence: a probe from a member this one does not
    /// know means a join rumor died out before it got here (it happens when the cluster
    /// was small: the retransmit limit is `mult × ⌈log10(n + 1)⌉`). Push-pull with the
    /// prober (with `seed_catch_up`, with a seed), at most once per push-pull interval.
    fn repair_if_unknown(&mut self, now: Time, source: InfoId) {
        let node = self.dir.borrow().info(source).node;
        let known = self.table.get(node as usize).is_some_and(|e| e.present());
        if known
            || now < self.next_repair_at
            || self.status != Status::Alive
            || self.cfg.push_pull_interval_ms == 0
        {
            return;
        }
        // The repair takes the place of the next periodic push-pull, so it costs nothing
        // over memberlist's push-pull rate.
        let interval = cfg_push_pull(&self.cfg, self.known());
        self.next_repair_at = now + interval;
        if self.seeded || self.seeds.is_empty() {
            self.next_push_pull_at = now + interval;
        }
        // With seed catch-up, from a seed: it saw every join, the prober only those before
        // its own (and a repair postpones the next periodic push-pull, the catch-up one).
        let seed = if self.cfg.seed_catch_up {
            self.random_seed()
        } else {
            None
        };
        let addr = seed.unwrap_or_else(|| self.dir.borrow().info(source).addr);
        let _ = self.push_pull_to(now, addr, false, Purpose::PushPull);
    }

    /// One of the seeds this member joined through, at random (`None` without seeds).
    fn random_seed(&mut self) -> Option<SocketAddr> {
        if self.seeds.is_empty() {
            return None;
        }
        Some(self.seeds[self.rng.random_range(0..self.seeds.len())])
    }

    // ----- probing ---------------------------------------------------------------------

    fn scaled(&self, d: Duration) -> Duration {
        if self.cfg.lifeguard {
            self.awareness.scale(d)
        } else {
            d
        }
    }

    fn next_probe_target(&mut self) -> Option<NodeId> {
        let len = self.table.len() as u64;
        for _ in 0..=len {
            if self.round.i >= self.round.len || self.round.len != len {
                // New round over the current table.
                let mut a = 1;
                for _ in 0..8 {
                    let c = self.rng.random_range(1..len.max(2));
                    if gcd(c, len) == 1 {
                        a = c;
                        break;
                    }
                }
                self.round = Round {
                    a,
                    b: self.rng.random_range(0..len.max(1)),
                    len,
                    i: 0,
                };
            }
            let r = self.round;
            self.round.i += 1;
            let idx = ((r.a as u128 * r.i as u128 + r.b as u128) % r.len.max(1) as u128) as NodeId;
            let e = self.table[idx as usize];
            if idx != self.me
                && e.present()
                && matches!(e.state(), MemberState::Alive | MemberState::Suspect)
            {
                return Some(idx);
            }
        }
        None
    }

    fn start_probe(&mut self, now: Time) {
        let interval = self.scaled(self.cfg.probe_interval());
        self.next_probe_at = now + interval;
        let Some(target) = self.next_probe_target() else {
            return;
        };
        let e = self.table[target as usize];
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let timeout = self.scaled(self.cfg.probe_timeout());
        self.probe = Some(Probe {
            target,
            info: e.info,
            seq,
            started: now,
            timeout_at: now + timeout,
            deadline: now + interval,
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
        });
        self.stats.probes += 1;
        let ping = Item::Ping {
            seq,
            target,
            source: self.my_info,
        };
        let mut size = self.size(&ping);
        let mut items = vec![ping];
        if self.cfg.lifeguard && e.state() == MemberState::Suspect {
            // Buddy system: tell the suspect first, so it can refute at once.
            let s = Item::Suspect {
                incarnation: e.incarnation,
                node: target,
                from: self.me,
            };
            size += self.size(&s);
            items.push(s);
        }
        let addr = self.dir.borrow().info(e.info).addr;
        self.send(addr, items, size);
    }

    fn probe_timeout(&mut self, _now: Time) {
        let Some(mut p) = self.probe else { return };
        p.indirect_sent = true;
        let k = self.cfg.indirect_checks;
        let helpers =
            self.random_members(k, |n, e| n != p.target && e.state() == MemberState::Alive);
        let target_info = p.info;
        for &h in &helpers {
            let item = Item::IndirectPing {
                seq: p.seq,
                target: target_info,
                nack: self.cfg.lifeguard,
                source: self.my_info,
            };
            let size = self.size(&item);
            let addr = self.dir.borrow().info(self.table[h as usize].info).addr;
            self.send(addr, vec![item], size);
        }
        p.expected_nacks = if self.cfg.lifeguard {
            helpers.len() as u32
        } else {
            0
        };
        self.probe = Some(p);
        if self.cfg.tcp_fallback {
            let addr = self.dir.borrow().info(target_info).addr;
            let req = StreamRequest::Ping {
                seq: p.seq,
                target: p.target,
                source: self.my_info,
            };
            let bytes = 64;
            let _ = self.start_stream(
                addr,
                req,
                bytes,
                Purpose::FallbackPing { seq: p.seq },
                p.deadline,
            );
        }
    }

    fn probe_failed(&mut self, now: Time) {
        let Some(p) = self.probe.take() else { return };
        self.stats.probes_failed += 1;
        if self.cfg.lifeguard {
            let delta = if p.expected_nacks > 0 {
                p.expected_nacks.saturating_sub(p.nacks)
            } else {
                1
            };
            self.awareness.apply(delta as i32);
        }
        let e = self.table[p.target as usize];
        if e.present()
            && e.info == p.info
            && matches!(e.state(), MemberState::Alive | MemberState::Suspect)
        {
            self.suspect_node(now, e.incarnation, p.target, self.me);
        }
    }

    fn probe_succeeded(&mut self, now: Time, coordinate: Option<Rc<Coordinate>>, sample: bool) {
        let Some(p) = self.probe.take() else { return };
        if self.cfg.lifeguard {
            self.awareness.apply(-1);
        }
        if sample {
            self.push_event(Event::Rtt {
                node: p.target,
                rtt: now.saturating_since(p.started),
                coordinate,
            });
        }
    }

    // ----- receiving -------------------------------------------------------------------

    /// Handles a received wire message from `from` (converting it through the directory).
    /// A message the directory refuses is counted and dropped.
    pub fn handle_message(&mut self, now: Time, from: SocketAddr, msg: Message) {
        let item = self.dir.borrow_mut().from_wire(msg);
        match item {
            Ok(item) => self.handle_item(now, from, item),
            Err(_) => self.stats.dropped += 1,
        }
    }

    /// Handles the items of one received datagram.
    pub fn handle_items(
        &mut self,
        now: Time,
        from: SocketAddr,
        items: impl IntoIterator<Item = Item>,
    ) {
        for item in items {
            self.handle_item(now, from, item);
        }
    }

    /// Handles one received item.
    pub fn handle_item(&mut self, now: Time, from: SocketAddr, item: Item) {
        match item {
            Item::Ping {
                seq,
                target,
                source,
            } => {
                if target != self.me {
                    self.stats.dropped += 1;
                    return;
                }
                let ack = Item::Ack {
                    seq,
                    coordinate: self.coordinate.clone(),
                };
                let size = self.size(&ack);
                let addr = self.dir.borrow().info(source).addr;
                self.send(addr, vec![ack], size);
                self.repair_if_unknown(now, source);
            }
            Item::IndirectPing {
                seq,
                target,
                nack,
                source,
            } => {
                if self.relays.len() >= self.cfg.relays_max {
                    self.stats.dropped += 1;
                    return;
                }
                self.seq = self.seq.wrapping_add(1);
                let my_seq = self.seq;
                let (target_node, target_addr) = {
                    let d = self.dir.borrow();
                    let i = d.info(target);
                    (i.node, i.addr)
                };
                self.relays.push(Relay {
                    seq: my_seq,
                    orig_seq: seq,
                    source,
                    nack,
                    deadline: now + self.cfg.probe_timeout(),
                });
                let ping = Item::Ping {
                    seq: my_seq,
                    target: target_node,
                    source: self.my_info,
                };
                let size = self.size(&ping);
                self.send(target_addr, vec![ping], size);
            }
            Item::Ack { seq, coordinate } => {
                if let Some(p) = self.probe
                    && p.seq == seq
                {
                    // Only a direct ack is a round-trip sample (as memberlist's
                    // NotifyPingComplete): one relayed through helpers waited for the probe
                    // timeout and took two extra hops, and would throw Vivaldi off.
                    self.probe_succeeded(now, coordinate, !p.indirect_sent);
                    return;
                }
                if let Some(i) = self.relays.iter().position(|r| r.seq == seq) {
                    let r = self.relays.swap_remove(i);
                    let ack = Item::Ack {
                        seq: r.orig_seq,
                        coordinate,
                    };
                    let size = self.size(&ack);
                    let addr = self.dir.borrow().info(r.source).addr;
                    self.send(addr, vec![ack], size);
                }
            }
            Item::Nack { seq } => {
                if let Some(p) = &mut self.probe
                    && p.seq == seq
                    && p.nacks < p.expected_nacks
                {
                    p.nacks += 1;
                }
            }
            Item::Suspect {
                incarnation,
                node,
                from,
            } => self.suspect_node(now, incarnation, node, from),
            Item::Alive { incarnation, info } => {
                self.alive_node(now, incarnation, info, Origin::Gossip)
            }
            Item::Dead {
                incarnation,
                node,
                from,
            } => self.dead_node(now, incarnation, node, from),
            Item::Other(msg) => self.push_event(Event::Message { from, msg }),
        }
    }

    // ----- the state transitions (memberlist's aliveNode / suspectNode / deadNode) ------

    fn ensure(&mut self, node: NodeId) {
        let need = node as usize + 1;
        if self.table.len() < need {
            self.table.resize(need, Entry::EMPTY);
        }
    }

    fn set_entry(
        &mut self,
        node: NodeId,
        incarnation: u64,
        info: InfoId,
        state: MemberState,
        now: Time,
    ) {
        self.ensure(node);
        let old = self.table[node as usize];
        if old.present() {
            self.counts[state_index(old.state())] -= 1;
        }
        let packed = (state as u32) | (secs(now) << 3);
        self.table[node as usize] = Entry {
            incarnation,
            info,
            packed,
        };
        self.counts[state_index(state)] += 1;
        if matches!(state, MemberState::Dead | MemberState::Left)
            && (!old.present() || old.state() != state)
        {
            self.failed.push_back((node, secs(now)));
        }
    }

    fn alive_node(&mut self, now: Time, incarnation: u64, info: InfoId, origin: Origin) {
        let node = self.dir.borrow().info(info).node;
        if node == self.me {
            // Someone says we are alive: refute anything that differs from what we are.
            if self.status == Status::Alive
                && (incarnation > self.incarnation
                    || (incarnation == self.incarnation && info != self.my_info))
            {
                self.refute(now, incarnation);
            }
            return;
        }
        self.ensure(node);
        let e = self.table[node as usize];
        if !e.present() {
            if origin == Origin::Gossip {
                self.stats.rumors_new += 1;
            } else {
                self.learned_by_push_pull += 1;
            }
            self.set_entry(node, incarnation, info, MemberState::Alive, now);
            self.push_event(Event::Up { node, info });
            // Members learned from a push-pull are not re-broadcast (the peer's side of the
            // cluster knows them already): this keeps joins of thousands of members from
            // becoming an n² gossip storm. The peer itself is news for everyone.
            let rebroadcast = match origin {
                Origin::Gossip => true,
                Origin::PushPull { source } => source == node,
            };
            if rebroadcast {
                let item = Item::Alive { incarnation, info };
                let size = self.size(&item);
                // Join rumors: lowest priority, and damped when heard back.
                self.broadcasts.push(item, size, Some(u64::from(node)), 2);
            }
            return;
        }
        if incarnation <= e.incarnation {
            if incarnation == e.incarnation && info == e.info && origin == Origin::Gossip {
                self.stats.rumors_redundant += 1;
                let limit = retransmit_limit(self.cfg.retransmit_mult, self.known());
                let weight = if self.cfg.join_rumor_damping == 0 {
                    0
                } else {
                    limit.div_ceil(self.cfg.join_rumor_damping)
                };
                if weight > 0
                    && self
                        .broadcasts
                        .redundant(u64::from(node), 2, limit, weight, |q| {
                            *q == Item::Alive { incarnation, info }
                        })
                {
                    self.stats.rumors_damped += 1;
                }
            }
            return;
        }
        let old = e.state();
        self.suspicions.remove(&node);
        self.set_entry(node, incarnation, info, MemberState::Alive, now);
        self.queue_update(Item::Alive { incarnation, info }, node);
        match old {
            MemberState::Dead | MemberState::Left => self.push_event(Event::Up { node, info }),
            MemberState::Suspect => self.push_event(Event::AliveAgain { node }),
            MemberState::Alive => {
                if info != e.info {
                    self.push_event(Event::Updated { node, info });
                }
            }
        }
    }

    fn suspect_node(&mut self, now: Time, incarnation: u64, node: NodeId, from: NodeId) {
        let Some(e) = self.table.get(node as usize).copied() else {
            return;
        };
        if !e.present() || incarnation < e.incarnation {
            return;
        }
        if let Some(s) = self.suspicions.get_mut(&node) {
            if s.confirm(from) {
                // A confirmation only brings the deadline closer.
                self.suspicion_next = self.suspicion_next.min(s.deadline());
                self.queue_update(
                    Item::Suspect {
                        incarnation,
                        node,
                        from,
                    },
                    node,
                );
            }
            return;
        }
        if e.state() != MemberState::Alive {
            return;
        }
        if node == self.me {
            if self.status == Status::Alive {
                self.refute(now, incarnation);
            }
            return;
        }
        if self.suspicions.len() >= self.cfg.suspicions_max {
            self.stats.dropped += 1;
            return;
        }
        self.queue_update(
            Item::Suspect {
                incarnation,
                node,
                from,
            },
            node,
        );
        self.set_entry(node, incarnation, e.info, MemberState::Suspect, now);
        let n = self.known();
        let mut k = if self.cfg.lifeguard {
            self.cfg.suspicion_mult.saturating_sub(2)
        } else {
            0
        };
        if (n as u64) < u64::from(k) + 2 {
            k = 0;
        }
        let min = suspicion_timeout_min(self.cfg.suspicion_mult, n, self.cfg.probe_interval());
        let max = if self.cfg.lifeguard {
            min * self.cfg.suspicion_max_timeout_mult
        } else {
            min
        };
        let suspicion = Suspicion::new(incarnation, from, k, min, max, now);
        self.suspicion_next = self.suspicion_next.min(suspicion.deadline());
        self.suspicions.insert(node, suspicion);
        self.push_event(Event::Suspect { node, from });
    }

    fn dead_node(&mut self, now: Time, incarnation: u64, node: NodeId, from: NodeId) {
        let Some(e) = self.table.get(node as usize).copied() else {
            return;
        };
        if !e.present() || incarnation < e.incarnation {
            return;
        }
        self.suspicions.remove(&node);
        if matches!(e.state(), MemberState::Dead | MemberState::Left) {
            return;
        }
        if node == self.me {
            if self.status == Status::Alive {
                self.refute(now, incarnation);
            }
            return;
        }
        self.queue_update(
            Item::Dead {
                incarnation,
                node,
                from,
            },
            node,
        );
        if from == node {
            self.set_entry(node, incarnation, e.info, MemberState::Left, now);
            self.push_event(Event::Left { node });
        } else {
            self.set_entry(node, incarnation, e.info, MemberState::Dead, now);
            self.push_event(Event::Down { node, from });
        }
    }

    fn refute(&mut self, now: Time, accused: u64) {
        self.incarnation = (self.incarnation + 1).max(accused.saturating_add(1));
        let inc = self.incarnation;
        self.set_entry(self.me, inc, self.my_info, MemberState::Alive, now);
        self.queue_update(
            Item::Alive {
                incarnation: inc,
                info: self.my_info,
            },
            self.me,
        );
        self.stats.refutations += 1;
        if self.cfg.lifeguard {
            self.awareness.apply(1);
        }
        self.push_event(Event::Refuted { incarnation: inc });
    }

    // ----- push-pull -------------------------------------------------------------------

    fn local_state(&self, join: bool) -> Rc<PushPullState> {
        let mut states = Vec::with_capacity(self.known().min(self.cfg.push_pull_members_max));
        for e in self
            .table
            .iter()
            .filter(|e| e.present())
            .take(self.cfg.push_pull_members_max)
        {
            states.push(NodeState {
                info: e.info,
                incarnation: e.incarnation,
                state: e.state(),
            });
        }
        Rc::new(PushPullState {
            join,
            source: self.my_info,
            states,
            user_state: self.user_state.clone(),
        })
    }

    fn state_bytes(&self, s: &PushPullState) -> usize {
        // Approximate (accounting only): an alive item per member plus the user state.
        let d = self.dir.borrow();
        let per = s
            .states
            .first()
            .map_or(0, |n| d.info(n.info).meta.len() + 64);
        64 + s.states.len() * per + s.user_state.len()
    }

    fn push_pull_to(
        &mut self,
        now: Time,
        to: SocketAddr,
        join: bool,
        purpose: Purpose,
    ) -> Result<(), SwimError> {
        let state = self.local_state(join);
        let bytes = self.state_bytes(&state);
        let deadline = now + Duration::from_millis(self.cfg.stream_timeout_ms);
        self.start_stream(to, StreamRequest::PushPull(state), bytes, purpose, deadline)
    }

    fn start_stream(
        &mut self,
        to: SocketAddr,
        request: StreamRequest,
        bytes: usize,
        purpose: Purpose,
        deadline: Time,
    ) -> Result<(), SwimError> {
        if self.streams.len() >= self.cfg.streams_max {
            self.stats.dropped += 1;
            return Err(SwimError::StreamsFull(self.cfg.streams_max));
        }
        self.next_stream_id += 1;
        let id = self.next_stream_id;
        self.streams.push(PendingStream {
            id,
            purpose,
            deadline,
        });
        self.stats.streams_out += 1;
        self.stats.stream_bytes_out += bytes as u64;
        self.outputs.push_back(Output::Stream(StreamTransmit {
            id,
            to,
            request,
            bytes,
        }));
        Ok(())
    }

    fn merge(&mut self, now: Time, remote: &PushPullState) {
        let source = self.dir.borrow().info(remote.source).node;
        for s in &remote.states {
            let node = self.dir.borrow().info(s.info).node;
            match s.state {
                MemberState::Alive => {
                    self.alive_node(now, s.incarnation, s.info, Origin::PushPull { source })
                }
                MemberState::Left => self.dead_node(now, s.incarnation, node, node),
                // memberlist: a remote "dead" is only a suspicion here, so that it can be
                // refuted instead of killing a member we can still reach.
                MemberState::Dead | MemberState::Suspect => {
                    self.suspect_node(now, s.incarnation, node, source)
                }
            }
        }
        if !remote.user_state.is_empty() {
            self.push_event(Event::UserState {
                from: remote.source,
                state: remote.user_state.clone(),
                join: remote.join,
            });
        }
    }

    /// Answers a stream request from a peer; the driver sends the response back.
    pub fn handle_stream_request(
        &mut self,
        now: Time,
        _from: SocketAddr,
        request: StreamRequest,
    ) -> StreamResponse {
        match request {
            StreamRequest::PushPull(remote) => {
                if self.status == Status::Left {
                    return StreamResponse::Refused;
                }
                if remote.states.len() > self.cfg.push_pull_members_max
                    || remote.user_state.len() > self.cfg.user_state_bytes_max
                {
                    self.stats.push_pull_refused += 1;
                    return StreamResponse::Refused;
                }
                // Merge first, so that the answer carries our refutations.
                self.merge(now, &remote);
                let state = self.local_state(false);
                self.stats.stream_bytes_out += self.state_bytes(&state) as u64;
                StreamResponse::PushPull(state)
            }
            StreamRequest::Ping { seq, target, .. } => {
                if target == self.me {
                    StreamResponse::Ack { seq }
                } else {
                    StreamResponse::Refused
                }
            }
        }
    }

    /// Handles the answer (or failure) of the stream exchange `id`.
    pub fn handle_stream_response(
        &mut self,
        now: Time,
        id: u64,
        response: Result<StreamResponse, StreamError>,
    ) {
        let Some(i) = self.streams.iter().position(|s| s.id == id) else {
            return;
        };
        let s = self.streams.swap_remove(i);
        match (s.purpose, response) {
            (Purpose::FallbackPing { seq }, Ok(StreamResponse::Ack { seq: got })) => {
                if got == seq
                    && let Some(p) = self.probe
                    && p.seq == seq
                {
                    self.probe_succeeded(now, None, false);
                }
            }
            (Purpose::ReconnectProbe { addr }, Ok(StreamResponse::Ack { .. })) => {
                if self.status == Status::Alive {
                    let _ = self.push_pull_to(now, addr, false, Purpose::Reconnect);
                }
            }
            (purpose, Ok(StreamResponse::PushPull(remote))) => {
                if remote.states.len() > self.cfg.push_pull_members_max
                    || remote.user_state.len() > self.cfg.user_state_bytes_max
                {
                    self.stats.push_pull_refused += 1;
                    self.stream_failed(purpose);
                    return;
                }
                self.merge(now, &remote);
                if let Purpose::Join { seed } = purpose {
                    self.push_event(Event::Joined { seed, ok: true });
                }
            }
            (purpose, _) => self.stream_failed(purpose),
        }
    }

    fn stream_failed(&mut self, purpose: Purpose) {
        if let Purpose::Join { seed } = purpose {
            self.push_event(Event::Joined { seed, ok: false });
        }
    }

    // ----- gossip and sending ----------------------------------------------------------

    /// Members the next gossip round goes to: `gossip_nodes` when failure news,
    /// refutations, leaves or the layer above's broadcasts are queued;
    /// `join_rumor_gossip_nodes` (0 in the presets: join rumors then ride only on probes and
    /// acks, and push-pull repairs what they miss) when only join rumors are; none when
    /// nothing is.
    fn gossip_fanout(&self) -> usize {
        if self.broadcasts.any_above(2) || !self.user_broadcasts.is_empty() {
            self.cfg.gossip_nodes
        } else if !self.broadcasts.is_empty() {
            self.cfg.join_rumor_gossip_nodes
        } else {
            0
        }
    }

    fn gossip(&mut self, now: Time) {
        let fanout = self.gossip_fanout();
        if fanout == 0 {
            return;
        }
        let now_s = secs(now);
        let to_dead_s = (self.cfg.gossip_to_the_dead_ms / 1000) as u32;
        let targets = self.random_members(fanout, |_, e| match e.state() {
            MemberState::Alive | MemberState::Suspect => true,
            MemberState::Dead => now_s.saturating_sub(e.changed_s()) <= to_dead_s,
            MemberState::Left => false,
        });
        for t in targets {
            let addr = self.dir.borrow().info(self.table[t as usize].info).addr;
            if !self.send(addr, Vec::new(), 0) {
                break;
            }
        }
    }

    /// Fills `items` (of `size` bytes) up to the datagram limit with broadcasts and queues
    /// the datagram. Returns false (and sends nothing) if there was nothing to send.
    fn send(&mut self, to: SocketAddr, mut items: Vec<Item>, size: usize) -> bool {
        let overhead = Directory::frame_overhead(self.cfg.encrypted);
        let free = self.cfg.datagram_bytes_max.saturating_sub(overhead + size);
        let n = self.known();
        let limit = retransmit_limit(self.cfg.retransmit_mult, n);
        let join_limit = if self.cfg.join_rumor_retransmit_mult == 0 {
            limit
        } else {
            limit.min(self.cfg.join_rumor_retransmit_mult)
        };
        let caps = [
            usize::MAX,
            usize::MAX,
            self.cfg.join_rumors_per_datagram_max.max(1),
        ];
        let mut used =
            self.broadcasts
                .fill_with_limits(free, [limit, limit, join_limit], caps, |it| {
                    items.push(it.clone())
                });
        let user_limit = retransmit_limit(self.cfg.user_retransmit_mult, n);
        used += self
            .user_broadcasts
            .fill(free - used, user_limit, |it| items.push(it.clone()));
        if items.is_empty() {
            return false;
        }
        let bytes = overhead + size + used;
        debug_assert!(bytes <= self.cfg.datagram_bytes_max);
        self.stats.datagrams_out += 1;
        self.stats.datagram_bytes_out += bytes as u64;
        self.stats.items_out += items.len() as u64;
        self.outputs
            .push_back(Output::Datagram(Transmit { to, items, bytes }));
        true
    }

    fn size(&self, item: &Item) -> usize {
        self.dir.borrow_mut().item_size(item)
    }

    fn queue_update(&mut self, item: Item, node: NodeId) {
        let size = self.size(&item);
        let class = u8::from(!matches!(item, Item::Suspect { .. }));
        self.broadcasts
            .push(item, size, Some(u64::from(node)), class);
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() >= self.cfg.events_max {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    /// One random member other than this one for which `ok` holds.
    fn random_member(&mut self, ok: impl Fn(NodeId, &Entry) -> bool) -> Option<NodeId> {
        self.random_members(1, ok).first().copied()
    }

    /// Up to `k` distinct random members other than this one for which `ok` holds:
    /// rejection sampling over the table, then a scan from a random point if that fails.
    fn random_members(&mut self, k: usize, ok: impl Fn(NodeId, &Entry) -> bool) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::with_capacity(k);
        let len = self.table.len();
        if len == 0 || k == 0 {
            return out;
        }
        let good = |m: &Self, n: NodeId, out: &[NodeId]| {
            let e = &m.table[n as usize];
            n != m.me && e.present() && !out.contains(&n) && ok(n, e)
        };
        for _ in 0..(8 * k) {
            let n = self.rng.random_range(0..len) as NodeId;
            if good(self, n, &out) {
                out.push(n);
                if out.len() == k {
                    return out;
                }
            }
        }
        let start = self.rng.random_range(0..len);
        for j in 0..len {
            let n = ((start + j) % len) as NodeId;
            if good(self, n, &out) {
                out.push(n);
                if out.len() == k {
                    break;
                }
            }
        }
        out
    }
}

fn cfg_push_pull(cfg: &Config, members: usize) -> Duration {
    push_pull_interval(
        Duration::from_millis(cfg.push_pull_interval_ms.max(1)),
        members,
    )
}

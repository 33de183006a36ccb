//! One SWIM + Lifeguard member: a deterministic state machine.
//!
//! Inputs carry the current time: datagrams ([`Member::handle_items`] /
//! [`Member::handle_message`]), stream exchanges ([`Member::handle_stream_request`],
//! [`Member::handle_stream_response`]), timers ([`Member::handle_timeout`] at
//! [`Member::poll_timeout`]) and commands (join, leave, metadata, broadcasts). Outputs are
//! pulled: [`Member::poll_output`] (datagrams and stream requests) and
//! [`Member::poll_event`]. It never reads a clock, never does IO, and draws randomness only
//! from its own RNG. Nothing a peer sends can make it panic or grow without a bound.
//!
//! The member's state is declared here; what it does is split by concern: [`output`] (what
//! it hands out), `timers` (periodic work and deadlines), `probe` (the probe cycle),
//! `receive` (datagrams in), `transitions` (memberlist's aliveNode / suspectNode / deadNode),
//! `stream` (push-pull and the other stream exchanges) and `gossip` (piggybacking and
//! sending).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use rand::Rng;
use ringleader_time::Time;
use ringleader_wire::Message;
use ringleader_wire::msg::swim::{Coordinate, MemberState};

use crate::config::{Awareness, Config};
use crate::directory::{Directory, DirectoryError, SharedDirectory};
use crate::hash::FxHashMap;
use crate::item::{InfoId, Item, NodeId};
use crate::queue::BroadcastQueue;
use crate::suspicion::Suspicion;

mod dedup;
mod digest;
mod gossip;
mod output;
mod probe;
mod receive;
mod reclaim;
mod stream;
mod timers;
mod transitions;

pub(crate) use digest::BUCKETS as DIGEST_BUCKETS;
pub use output::{Event, Output, StreamTransmit, Transmit};

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
    /// Application broadcasts ([`Member::app_broadcast`]) received again and dropped.
    pub gossip_duplicates: u64,
    /// Of those, ones that counted against a rumor this member was spreading.
    pub rumors_damped: u64,
    /// Join rumors dropped from the queue because a digest exchange found this member's
    /// table equal to its peer's.
    pub join_rumors_retired: u64,
    /// Suspicions and deaths in push-pull states from a member this one held dead or did
    /// not know (the other side of a healed partition), not taken as suspicions.
    pub accusations_ignored: u64,
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
    Join {
        seed: SocketAddr,
    },
    PushPull,
    Reconnect,
    FallbackPing {
        seq: u32,
    },
    ReconnectProbe {
        addr: SocketAddr,
    },
    /// The third step of a digest exchange: entries the peer lacked.
    Push,
}

#[derive(Debug, Clone, Copy)]
struct PendingStream {
    id: u64,
    purpose: Purpose,
    deadline: Time,
    to: SocketAddr,
    /// A digest request's bucket count (0 for any other exchange).
    buckets: u32,
    /// A digest request that gave `since` (its delta omits old entries, so no push
    /// follows it).
    since: bool,
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
    /// Seeds of a join still to contact: after the first full exchange is answered, by
    /// digest exchanges; after it failed, the next one by a full exchange.
    join_queue: Vec<SocketAddr>,
    /// The next catch-up push-pull with a seed comes this long after the last (doubling
    /// while catch-ups bring news, `Config::catch_up_interval_ms`); 0 when not catching up.
    catch_up_ms: u64,
    /// XOR of the fingerprints of the table's entries, by bucket (`digest`).
    digest: Vec<u32>,
    /// Peers' clocks at our last digest exchange with them, for `since`.
    watermarks: VecDeque<(SocketAddr, u32)>,
    streams: Vec<PendingStream>,
    next_stream_id: u64,
    broadcasts: BroadcastQueue<Item>,
    user_broadcasts: BroadcastQueue<Item>,
    outputs: VecDeque<Output>,
    events: VecDeque<Event>,
    coordinate: Option<Rc<Coordinate>>,
    user_state: Vec<u8>,
    /// Sequence number of this member's next application broadcast (random start: a member
    /// restarted under the same name does not repeat old identities; drawn at the first
    /// broadcast, so members that never broadcast keep their RNG stream).
    gossip_seq: Option<u64>,
    gossip_seen: dedup::SeenSet,
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
            join_queue: Vec::new(),
            catch_up_ms: 0,
            digest: vec![0; digest::BUCKETS],
            watermarks: VecDeque::new(),
            streams: Vec::new(),
            next_stream_id: 0,
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            coordinate: None,
            user_state: Vec::new(),
            gossip_seq: None,
            gossip_seen: dedup::SeenSet::default(),
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

    /// Rows of the member table, present or not: one per name id up to the highest this
    /// member has seen (16 bytes each), so bounded by the directory's name slots.
    pub fn table_slots(&self) -> usize {
        self.table.len()
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
        // One full exchange, then digest exchanges with the other seeds once it has been
        // answered (they then carry only what the first seed had not): a mass join of
        // 10,000 members spent most of its CPU interning one full state per seed per joiner.
        let mut fresh = seeds
            .iter()
            .copied()
            .filter(|s| !self.join_queue.contains(s));
        if let Some(first) = fresh.next() {
            let rest: Vec<SocketAddr> = fresh.collect();
            self.push_pull_to(now, first, true, Purpose::Join { seed: first })?;
            for seed in rest {
                // Bounded like the exchanges in flight: a seed past it is answered at once.
                if self.join_queue.len() < self.cfg.streams_max {
                    self.join_queue.push(seed);
                } else {
                    self.stats.dropped += 1;
                    self.push_event(Event::Joined { seed, ok: false });
                }
            }
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
}

//! Serf on SWIM: user events, queries with responses, Lamport clocks, member intents, tags,
//! Vivaldi coordinates, key management and a snapshot for rejoining.
//!
//! What it is for: what HashiCorp Serf adds on top of memberlist, as another sans-IO layer.
//! A [`Serf`] sits beside one [`swim::Member`](ringleader_swim::Member): the driver hands it
//! every member [`Event`] and a tick; it answers by queueing broadcasts and sends on the
//! member, and by emitting [`SerfEvent`]s for the application.
//!
//! What it must never do: read a clock or draw randomness from anywhere but its seeded RNG,
//! trust a peer's message (sizes are bounded, stale times are refused, coordinates are
//! validated), or deliver one user event twice.
//!
//! Semantics (Serf's, with the reasons):
//! - Events are ordered by the event Lamport clock and de-duplicated by (time, name,
//!   payload) in a ring of `event_buffer` slots indexed by time. An event older than the
//!   ring is refused, not re-delivered; so are events from before this member joined
//!   (`event_min_time`, learned from the push-pull of the join or from the snapshot).
//! - A query is delivered like an event; each member whose filters match answers directly
//!   to the originator and, with `relay_factor > 0`, through that many random members too,
//!   so a lost datagram does not lose the answer. Responses are de-duplicated per member.
//! - Join and leave intents carry the member clock: a leave older than the member's last
//!   join is stale and ignored, so a delayed leave cannot undo a newer join.
//! - Key management (`install`, `use`, `remove`, `list`) runs as internal queries; every
//!   member answers with its result, and the originator names the members that failed or
//!   did not answer. A member that was offline during a rotation holds only the old key and
//!   cannot read the cluster: restart it with the new key installed (its snapshot keeps the
//!   keyring; or pass the key at start), or keep the old key installed cluster-wide until
//!   every member has rotated — see [`Serf::install_key`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod snapshot;
pub mod vivaldi;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use ringleader_swim::{Event, Member, MemberState};
use ringleader_time::Time;
use ringleader_wire::msg::serf as wire;
use ringleader_wire::msg::swim::Coordinate;
use ringleader_wire::{Decoder, Encoder, Keyring, Message, MessageRef};

pub use clock::LamportClock;
pub use vivaldi::{Vivaldi, VivaldiConfig};

/// Query flag: the originator wants acks.
pub const QUERY_FLAG_ACK: u32 = 1;
/// Query flag: do not rebroadcast (direct queries).
pub const QUERY_FLAG_NO_BROADCAST: u32 = 2;
/// Response flag: this is an ack, not a response.
pub const RESPONSE_FLAG_ACK: u32 = 1;
/// User events carried in every push-pull for anti-entropy (at most 16 × 512 B).
const RECENT_EVENTS_MAX: usize = 16;
/// Prefix of internal query names.
pub const INTERNAL_PREFIX: &str = "_serf_";

const KEY_INSTALL: &str = "_serf_install-key";
const KEY_USE: &str = "_serf_use-key";
const KEY_REMOVE: &str = "_serf_remove-key";
const KEY_LIST: &str = "_serf_list-keys";

/// Serf's limits and tuning. Every buffer is bounded by a field here.
#[derive(Debug, Clone)]
pub struct SerfConfig {
    /// Slots in the recent-event ring (events older than this many clock ticks are refused).
    pub event_buffer: usize,
    /// Slots in the recent-query ring.
    pub query_buffer: usize,
    /// Most distinct events remembered per slot.
    pub per_slot_max: usize,
    /// Largest user-event name plus payload, in bytes.
    pub event_bytes_max: usize,
    /// Largest query payload, in bytes.
    pub query_bytes_max: usize,
    /// Largest query response payload, in bytes.
    pub response_bytes_max: usize,
    /// Members that relay each query response besides the direct send.
    pub relay_factor: u8,
    /// Query timeout = gossip interval × this × ⌈log10(n + 1)⌉ (Serf's default is 16).
    pub query_timeout_mult: u32,
    /// Queries this member may have outstanding.
    pub queries_pending_max: usize,
    /// Responses kept per outstanding query.
    pub responses_max: usize,
    /// Members whose intents are remembered.
    pub intents_max: usize,
    /// Largest encoded tags (they travel as SWIM metadata), in bytes.
    pub tags_bytes_max: usize,
    /// Application events queued before the oldest is dropped.
    pub events_pending_max: usize,
    /// Vivaldi tuning.
    pub vivaldi: VivaldiConfig,
}

impl Default for SerfConfig {
    fn default() -> Self {
        SerfConfig {
            event_buffer: 64,
            query_buffer: 64,
            per_slot_max: 64,
            event_bytes_max: 512,
            query_bytes_max: 1024,
            response_bytes_max: 1024,
            relay_factor: 0,
            query_timeout_mult: 16,
            queries_pending_max: 64,
            responses_max: 100_000,
            intents_max: 100_000,
            tags_bytes_max: 512,
            events_pending_max: 65_536,
            vivaldi: VivaldiConfig::default(),
        }
    }
}

/// Why a command was refused. Serf's state is unchanged after any error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerfError {
    /// A user event's name and payload exceed the limit.
    #[error("user event of {len} bytes exceeds event_bytes_max = {max}")]
    EventTooLarge {
        /// Name plus payload.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A query or response payload exceeds its limit.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too many queries outstanding.
    #[error("{0} queries outstanding already; wait for one to finish")]
    QueriesFull(usize),
    /// Tags do not fit the metadata limit.
    #[error("encoded tags of {len} bytes exceed tags_bytes_max = {max}")]
    TagsTooLarge {
        /// Encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Names starting with `_serf_` are reserved.
    #[error("names starting with {INTERNAL_PREFIX} are reserved")]
    Reserved,
    /// The SWIM member refused (it has left, or metadata is invalid).
    #[error("membership refused: {0}")]
    Swim(String),
}

/// What the application hears from Serf.
#[derive(Debug, Clone, PartialEq)]
pub enum SerfEvent {
    /// A user event, delivered once.
    User {
        /// Event Lamport time.
        ltime: u64,
        /// Name.
        name: String,
        /// Payload.
        payload: Vec<u8>,
    },
    /// A query this member matches; answer with [`Serf::respond`].
    Query(QueryHandle),
    /// A response (or ack) to a query this member issued.
    Response {
        /// Query id.
        id: u32,
        /// Responder.
        from: String,
        /// Payload (empty for acks).
        payload: Vec<u8>,
        /// An ack rather than a response.
        ack: bool,
    },
    /// A query this member issued has reached its deadline.
    QueryDone {
        /// Query id.
        id: u32,
        /// Distinct responders.
        responses: usize,
        /// Distinct ackers.
        acks: usize,
    },
    /// A key-management operation this member issued has finished.
    KeyResult(KeyResult),
}

/// A query to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryHandle {
    /// Query id (unique per originator).
    pub id: u32,
    /// Query Lamport time.
    pub ltime: u64,
    /// Name.
    pub name: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Originator's name.
    pub source: String,
    /// Where responses go.
    pub addr: SocketAddr,
    /// Deadline after which the originator ignores responses.
    pub deadline: Time,
}

/// Which key operation.
pub type KeyOp = wire::KeyOp;

/// The outcome of a key operation across the cluster.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyResult {
    /// Query id.
    pub id: u32,
    /// Members that answered.
    pub responses: usize,
    /// Members that answered with success.
    pub ok: usize,
    /// Members that answered with an error, with its message.
    pub failed: Vec<(String, String)>,
    /// Members that were alive when the operation began and did not answer.
    pub no_response: Vec<String>,
    /// For `list`: how many members hold each key.
    pub keys: BTreeMap<[u8; 32], usize>,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SerfStats {
    /// User events delivered to the application.
    pub events_delivered: u64,
    /// User events seen again and dropped.
    pub events_duplicate: u64,
    /// User events refused as older than the buffer or than the join.
    pub events_too_old: u64,
    /// Queries delivered (matching) to the application or handled internally.
    pub queries_delivered: u64,
    /// Queries seen again and dropped.
    pub queries_duplicate: u64,
    /// Responses sent (direct, not counting relays).
    pub responses_sent: u64,
    /// Responses relayed for others.
    pub relays: u64,
    /// Intents ignored as stale.
    pub stale_intents: u64,
    /// Messages refused (malformed or over a bound).
    pub refused: u64,
    /// Application events dropped because the queue was full.
    pub events_dropped: u64,
}

/// Status of a member as Serf's intents see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentStatus {
    /// Last intent was a join.
    Alive,
    /// Last intent was a leave.
    Leaving,
}

#[derive(Debug, Default)]
struct Recent {
    ltime: u64,
    seen: Vec<u64>,
}

/// A ring of recent (time, digest) pairs: de-duplicates what arrives within the window.
#[derive(Debug)]
struct RecentRing {
    slots: Vec<Recent>,
    per_slot_max: usize,
}

enum Seen {
    New,
    Duplicate,
    TooOld,
}

impl RecentRing {
    fn new(len: usize, per_slot_max: usize) -> RecentRing {
        RecentRing {
            slots: (0..len.max(1)).map(|_| Recent::default()).collect(),
            per_slot_max,
        }
    }

    /// Records (ltime, digest); `clock` is the clock's time after witnessing `ltime`.
    fn check(&mut self, ltime: u64, digest: u64, clock: u64) -> Seen {
        let len = self.slots.len() as u64;
        if clock > len && ltime < clock - len {
            return Seen::TooOld;
        }
        let slot = &mut self.slots[(ltime % len) as usize];
        if slot.ltime != ltime {
            if slot.ltime > ltime && !slot.seen.is_empty() {
                return Seen::TooOld;
            }
            slot.ltime = ltime;
            slot.seen.clear();
        }
        if slot.seen.contains(&digest) {
            return Seen::Duplicate;
        }
        if slot.seen.len() >= self.per_slot_max {
            return Seen::TooOld;
        }
        slot.seen.push(digest);
        Seen::New
    }
}

fn digest(parts: &[&[u8]]) -> u64 {
    // FNV-1a over the parts with separators: a stable, seed-free digest (collisions only
    // cost a dropped duplicate-looking event within one Lamport tick).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Debug)]
struct Pending {
    deadline: Time,
    responders: HashSet<String>,
    ackers: HashSet<String>,
    key: Option<KeyPending>,
}

#[derive(Debug)]
struct KeyPending {
    expected: Vec<String>,
    result: KeyResult,
}

/// Encodes tags as SWIM metadata: `klen(1) k vlen(2 LE) v` per tag, sorted by key.
pub fn encode_tags(tags: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in tags {
        let k = &k.as_bytes()[..k.len().min(255)];
        let v = &v.as_bytes()[..v.len().min(u16::MAX as usize)];
        out.push(k.len() as u8);
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// Decodes tags from SWIM metadata; `None` if malformed (untrusted input).
pub fn decode_tags(mut meta: &[u8]) -> Option<BTreeMap<String, String>> {
    let mut tags = BTreeMap::new();
    while let Some((&klen, rest)) = meta.split_first() {
        let k = rest.get(..klen as usize)?;
        let rest = &rest[klen as usize..];
        let vlen = u16::from_le_bytes([*rest.first()?, *rest.get(1)?]) as usize;
        let v = rest.get(2..2 + vlen)?;
        tags.insert(
            std::str::from_utf8(k).ok()?.to_owned(),
            std::str::from_utf8(v).ok()?.to_owned(),
        );
        meta = &rest[2 + vlen..];
    }
    Some(tags)
}

/// One member's Serf layer.
pub struct Serf {
    cfg: SerfConfig,
    name: String,
    addr: SocketAddr,
    rng: rand_chacha::ChaCha8Rng,
    member_clock: LamportClock,
    event_clock: LamportClock,
    query_clock: LamportClock,
    event_min_time: u64,
    query_min_time: u64,
    events: RecentRing,
    queries: RecentRing,
    pending: HashMap<u32, Pending>,
    intents: HashMap<String, (IntentStatus, u64)>,
    tags: BTreeMap<String, String>,
    vivaldi: Vivaldi,
    keyring: Option<Keyring>,
    out: VecDeque<SerfEvent>,
    stats: SerfStats,
    encoder: Encoder,
    joining: bool,
    recent: VecDeque<wire::UserEvent>,
    queued_responses: Vec<(QueryHandle, Vec<u8>)>,
    gossip_interval: Duration,
}

impl Serf {
    /// The Serf layer of the member `name` at `addr`. `seed` feeds its RNG (query ids, relay
    /// choice, Vivaldi's tie-breaks). `keyring` is the member's keyring, if encryption is on.
    pub fn new(
        cfg: SerfConfig,
        name: &str,
        addr: SocketAddr,
        seed: u64,
        keyring: Option<Keyring>,
    ) -> Serf {
        Serf {
            events: RecentRing::new(cfg.event_buffer, cfg.per_slot_max),
            queries: RecentRing::new(cfg.query_buffer, cfg.per_slot_max),
            vivaldi: Vivaldi::new(cfg.vivaldi.clone()),
            cfg,
            name: name.to_owned(),
            addr,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            member_clock: LamportClock::default(),
            event_clock: LamportClock::default(),
            query_clock: LamportClock::default(),
            event_min_time: 0,
            query_min_time: 0,
            pending: HashMap::new(),
            intents: HashMap::new(),
            tags: BTreeMap::new(),
            keyring,
            out: VecDeque::new(),
            stats: SerfStats::default(),
            encoder: Encoder::new(b""),
            joining: false,
            recent: VecDeque::new(),
            queued_responses: Vec::new(),
            gossip_interval: Duration::from_millis(200),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &SerfStats {
        &self.stats
    }

    /// This member's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The three clocks: (member, event, query).
    pub fn clocks(&self) -> (u64, u64, u64) {
        (
            self.member_clock.time(),
            self.event_clock.time(),
            self.query_clock.time(),
        )
    }

    /// Events with a Lamport time below this are not delivered (set at join and restore).
    pub fn event_min_time(&self) -> u64 {
        self.event_min_time
    }

    /// This member's Vivaldi coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        self.vivaldi.coordinate()
    }

    /// The keyring, if encryption is on.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// What Serf's intents say of `name`, with the member Lamport time of the intent.
    pub fn intent(&self, name: &str) -> Option<(IntentStatus, u64)> {
        self.intents.get(name).copied()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<SerfEvent> {
        self.out.pop_front()
    }

    fn emit(&mut self, ev: SerfEvent) {
        if self.out.len() >= self.cfg.events_pending_max {
            self.out.pop_front();
            self.stats.events_dropped += 1;
        }
        self.out.push_back(ev);
    }

    /// Starts Serf on a member: announces the join intent and publishes the clocks in the
    /// push-pull state. `joining` (the member joins through seeds rather than founding the
    /// cluster): the clocks of the first push-pull answer set the event and query floors, so
    /// the cluster's past is not replayed here.
    pub fn start<R: Rng>(&mut self, member: &mut Member<R>, joining: bool) {
        self.joining = joining;
        self.gossip_interval = Duration::from_millis(member.config().gossip_interval_ms);
        let ltime = self.member_clock.increment();
        self.intents
            .insert(self.name.clone(), (IntentStatus::Alive, ltime));
        member.broadcast(
            Message::JoinIntent(wire::JoinIntent {
                ltime,
                node: self.name.clone(),
            }),
            Some(self.intent_key()),
        );
        self.publish_state(member);
    }

    fn intent_key(&self) -> u64 {
        digest(&[b"intent", self.name.as_bytes()])
    }

    /// Leaves gracefully: a leave intent with a new member time, then the SWIM leave.
    pub fn leave<R: Rng>(&mut self, now: Time, member: &mut Member<R>) {
        let ltime = self.member_clock.increment();
        self.intents
            .insert(self.name.clone(), (IntentStatus::Leaving, ltime));
        member.broadcast(
            Message::LeaveIntent(wire::LeaveIntent {
                ltime,
                node: self.name.clone(),
                prune: false,
            }),
            Some(self.intent_key()),
        );
        member.leave(now);
    }

    /// Sets this member's tags (carried as SWIM metadata).
    pub fn set_tags<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        tags: BTreeMap<String, String>,
    ) -> Result<(), SerfError> {
        let meta = encode_tags(&tags);
        if meta.len() > self.cfg.tags_bytes_max {
            return Err(SerfError::TagsTooLarge {
                len: meta.len(),
                max: self.cfg.tags_bytes_max,
            });
        }
        member
            .update_meta(now, &meta)
            .map_err(|e| SerfError::Swim(e.to_string()))?;
        self.tags = tags;
        Ok(())
    }

    /// Broadcasts a user event; it is also delivered here. Returns its Lamport time.
    pub fn user_event<R: Rng>(
        &mut self,
        member: &mut Member<R>,
        name: &str,
        payload: &[u8],
        coalesce: bool,
    ) -> Result<u64, SerfError> {
        if name.starts_with(INTERNAL_PREFIX) {
            return Err(SerfError::Reserved);
        }
        let len = name.len() + payload.len();
        if len > self.cfg.event_bytes_max {
            return Err(SerfError::EventTooLarge {
                len,
                max: self.cfg.event_bytes_max,
            });
        }
        let ltime = self.event_clock.time();
        self.event_clock.increment();
        let ev = wire::UserEvent {
            ltime,
            name: name.to_owned(),
            payload: payload.to_vec(),
            coalesce,
        };
        self.accept_event(member, ev);
        Ok(ltime)
    }

    fn accept_event<R: Rng>(&mut self, member: &mut Member<R>, ev: wire::UserEvent) {
        self.event_clock.witness(ev.ltime);
        if ev.ltime < self.event_min_time {
            self.stats.events_too_old += 1;
            return;
        }
        let d = digest(&[ev.name.as_bytes(), &ev.payload]);
        match self.events.check(ev.ltime, d, self.event_clock.time()) {
            Seen::TooOld => self.stats.events_too_old += 1,
            Seen::Duplicate => self.stats.events_duplicate += 1,
            Seen::New => {
                self.stats.events_delivered += 1;
                if self.recent.len() >= RECENT_EVENTS_MAX {
                    self.recent.pop_front();
                }
                self.recent.push_back(ev.clone());
                let key = ev
                    .coalesce
                    .then(|| digest(&[b"coalesce", ev.name.as_bytes()]));
                self.emit(SerfEvent::User {
                    ltime: ev.ltime,
                    name: ev.name.clone(),
                    payload: ev.payload.clone(),
                });
                // Coalescing: a newer event of the same name replaces an older one still
                // queued for retransmission (the older one was delivered here already).
                member.broadcast(Message::UserEvent(ev), key);
            }
        }
    }

    fn query_timeout<R: Rng>(&self, member: &Member<R>) -> Duration {
        let n = member.known().max(1) as f64;
        let scale = (n + 1.0).log10().ceil().max(1.0);
        self.gossip_interval * self.cfg.query_timeout_mult * scale as u32
    }

    /// Issues a query; responses arrive as [`SerfEvent::Response`] until
    /// [`SerfEvent::QueryDone`]. `timeout` defaults to Serf's formula. Returns the query id.
    pub fn query<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        name: &str,
        payload: &[u8],
        filters: Vec<wire::QueryFilter>,
        timeout: Option<Duration>,
    ) -> Result<u32, SerfError> {
        if name.starts_with(INTERNAL_PREFIX) {
            return Err(SerfError::Reserved);
        }
        self.query_inner(now, member, name, payload, filters, timeout, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn query_inner<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        name: &str,
        payload: &[u8],
        filters: Vec<wire::QueryFilter>,
        timeout: Option<Duration>,
        key: Option<KeyPending>,
    ) -> Result<u32, SerfError> {
        if payload.len() > self.cfg.query_bytes_max {
            return Err(SerfError::PayloadTooLarge {
                len: payload.len(),
                max: self.cfg.query_bytes_max,
            });
        }
        if self.pending.len() >= self.cfg.queries_pending_max {
            return Err(SerfError::QueriesFull(self.pending.len()));
        }
        let timeout = timeout.unwrap_or_else(|| self.query_timeout(member));
        let mut id: u32 = self.rng.random();
        while self.pending.contains_key(&id) {
            id = self.rng.random();
        }
        let ltime = self.query_clock.time();
        self.query_clock.increment();
        self.pending.insert(
            id,
            Pending {
                deadline: now + timeout,
                responders: HashSet::new(),
                ackers: HashSet::new(),
                key,
            },
        );
        let q = wire::Query {
            ltime,
            id,
            addr: self.addr,
            source: self.name.clone(),
            filters,
            flags: QUERY_FLAG_ACK,
            relay_factor: self.cfg.relay_factor,
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            name: name.to_owned(),
            payload: payload.to_vec(),
        };
        self.accept_query(now, member, q);
        Ok(id)
    }

    fn matches(&self, filters: &[wire::QueryFilter]) -> bool {
        filters.iter().all(|f| match f {
            wire::QueryFilter::Nodes(names) => names.iter().any(|n| n == &self.name),
            wire::QueryFilter::Tag(t) => {
                let Some(value) = self.tags.get(&t.tag) else {
                    return false;
                };
                // Untrusted pattern: bounded compile size; an invalid one matches nothing.
                regex::RegexBuilder::new(&t.expr)
                    .size_limit(1 << 16)
                    .dfa_size_limit(1 << 16)
                    .build()
                    .map(|re| re.is_match(value))
                    .unwrap_or(false)
            }
        })
    }

    fn accept_query<R: Rng>(&mut self, now: Time, member: &mut Member<R>, q: wire::Query) {
        self.query_clock.witness(q.ltime);
        if q.ltime < self.query_min_time {
            self.stats.events_too_old += 1;
            return;
        }
        let d = digest(&[&q.id.to_le_bytes(), q.source.as_bytes()]);
        match self.queries.check(q.ltime, d, self.query_clock.time()) {
            Seen::TooOld | Seen::Duplicate => {
                self.stats.queries_duplicate += 1;
                return;
            }
            Seen::New => {}
        }
        if q.flags & QUERY_FLAG_NO_BROADCAST == 0 {
            member.broadcast(Message::Query(q.clone()), None);
        }
        if !self.matches(&q.filters) {
            return;
        }
        self.stats.queries_delivered += 1;
        let deadline = now + Duration::from_millis(u64::from(q.timeout_ms));
        let handle = QueryHandle {
            id: q.id,
            ltime: q.ltime,
            name: q.name.clone(),
            payload: q.payload.clone(),
            source: q.source.clone(),
            addr: q.addr,
            deadline,
        };
        if q.flags & QUERY_FLAG_ACK != 0 {
            self.send_response(
                member,
                &handle,
                q.relay_factor,
                RESPONSE_FLAG_ACK,
                Vec::new(),
            );
        }
        if q.name.starts_with(INTERNAL_PREFIX) {
            let payload = self.handle_internal(&q.name, &q.payload);
            self.send_response(member, &handle, q.relay_factor, 0, payload);
        } else {
            self.emit(SerfEvent::Query(handle));
        }
    }

    /// Queues an answer to a query, sent by the next [`Serf::flush`] (for drivers that
    /// observe events where the member is not at hand). Bounded by `queries_pending_max`.
    pub fn queue_response(&mut self, query: QueryHandle, payload: Vec<u8>) {
        if self.queued_responses.len() >= self.cfg.queries_pending_max {
            self.stats.refused += 1;
            return;
        }
        self.queued_responses.push((query, payload));
    }

    /// Sends the answers queued with [`Serf::queue_response`].
    pub fn flush<R: Rng>(&mut self, now: Time, member: &mut Member<R>) {
        for (q, payload) in std::mem::take(&mut self.queued_responses) {
            if self.respond(now, member, &q, &payload).is_err() {
                self.stats.refused += 1;
            }
        }
    }

    /// Answers a query delivered as [`SerfEvent::Query`].
    pub fn respond<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        query: &QueryHandle,
        payload: &[u8],
    ) -> Result<(), SerfError> {
        if payload.len() > self.cfg.response_bytes_max {
            return Err(SerfError::PayloadTooLarge {
                len: payload.len(),
                max: self.cfg.response_bytes_max,
            });
        }
        if now > query.deadline {
            return Ok(()); // Too late to matter; the originator has stopped listening.
        }
        self.send_response(member, query, self.cfg.relay_factor, 0, payload.to_vec());
        Ok(())
    }

    fn send_response<R: Rng>(
        &mut self,
        member: &mut Member<R>,
        q: &QueryHandle,
        relay_factor: u8,
        flags: u32,
        payload: Vec<u8>,
    ) {
        let resp = wire::QueryResponse {
            ltime: q.ltime,
            id: q.id,
            from: self.name.clone(),
            flags,
            payload,
        };
        if q.addr == self.addr {
            // Our own query: no network.
            self.accept_response(resp);
            return;
        }
        self.stats.responses_sent += 1;
        let msg = Message::QueryResponse(resp);
        if relay_factor > 0 {
            if let Ok(frame) = self.encoder.encode_message(
                &msg,
                None,
                ringleader_wire::frame::DATAGRAM_BYTES_MAX_DEFAULT,
            ) {
                let frame = frame.to_vec();
                let relays = self.pick_relays(member, relay_factor as usize, q.addr);
                for via in relays {
                    member.send_to(
                        via,
                        Message::Relay(wire::Relay {
                            dest: q.addr,
                            dest_name: q.source.clone(),
                            frame: frame.clone(),
                        }),
                    );
                }
            }
        }
        member.send_to(q.addr, msg);
    }

    fn pick_relays<R: Rng>(
        &mut self,
        member: &Member<R>,
        k: usize,
        not: SocketAddr,
    ) -> Vec<SocketAddr> {
        let dir = member.directory().clone();
        let dir = dir.borrow();
        let alive: Vec<SocketAddr> = member
            .members()
            .filter(|&(node, state, _)| state == MemberState::Alive && node != member.id())
            .filter_map(|(node, _, _)| member.member(node).map(|(_, _, info)| dir.info(info).addr))
            .filter(|&a| a != not && a != self.addr)
            .collect();
        let mut out = Vec::with_capacity(k);
        for _ in 0..k.min(alive.len()) * 4 {
            if out.len() >= k {
                break;
            }
            let a = alive[self.rng.random_range(0..alive.len())];
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    fn accept_response(&mut self, r: wire::QueryResponse) {
        let Some(p) = self.pending.get_mut(&r.id) else {
            return;
        };
        if p.responders.len() + p.ackers.len() >= self.cfg.responses_max {
            self.stats.refused += 1;
            return;
        }
        let ack = r.flags & RESPONSE_FLAG_ACK != 0;
        let fresh = if ack {
            p.ackers.insert(r.from.clone())
        } else {
            p.responders.insert(r.from.clone())
        };
        if !fresh {
            return; // A relayed copy of a response already counted.
        }
        if let (false, Some(k)) = (ack, p.key.as_mut()) {
            k.result.responses += 1;
            match decode_key_response(&r.payload) {
                Some(resp) if resp.ok => {
                    k.result.ok += 1;
                    for key in resp.keys {
                        *k.result.keys.entry(key).or_default() += 1;
                    }
                }
                Some(resp) => k.result.failed.push((r.from.clone(), resp.message)),
                None => k
                    .result
                    .failed
                    .push((r.from.clone(), "malformed key response".into())),
            }
            return;
        }
        self.emit(SerfEvent::Response {
            id: r.id,
            from: r.from,
            payload: r.payload,
            ack,
        });
    }

    fn handle_internal(&mut self, name: &str, payload: &[u8]) -> Vec<u8> {
        let resp = match decode_key_request(payload) {
            None => wire::KeyResponse {
                ok: false,
                message: "malformed key request".into(),
                keys: vec![],
                primary: None,
            },
            Some(req) => self.apply_key_op(name, req),
        };
        encode_msg(&mut self.encoder, &Message::KeyResponse(resp))
    }

    fn apply_key_op(&mut self, name: &str, req: wire::KeyRequest) -> wire::KeyResponse {
        let fail = |m: String| wire::KeyResponse {
            ok: false,
            message: m,
            keys: vec![],
            primary: None,
        };
        let Some(ring) = self.keyring.as_mut() else {
            return fail("encryption is not enabled on this member".into());
        };
        let r = match (name, req.key) {
            (KEY_INSTALL, Some(k)) => ring.install(k),
            (KEY_USE, Some(k)) => ring.use_key(&k),
            (KEY_REMOVE, Some(k)) => ring.remove(&k),
            (KEY_LIST, _) => Ok(()),
            _ => return fail(format!("bad key request for {name}")),
        };
        match r {
            Ok(()) => wire::KeyResponse {
                ok: true,
                message: String::new(),
                keys: ring.list(),
                primary: Some(ring.primary()),
            },
            Err(e) => fail(e.to_string()),
        }
    }

    /// Installs `key` on every member (as a secondary key). The rotation is: install the new
    /// key everywhere, [`Serf::use_key`] it everywhere, then [`Serf::remove_key`] the old one
    /// once every member reports the new primary; [`SerfEvent::KeyResult`] names the members
    /// that failed or did not answer at each step. A member that was offline keeps only the
    /// old key: before it rejoins, install the new key on it locally (it is kept in its
    /// snapshot), or do not remove the old key until it has rejoined and been rotated.
    pub fn install_key<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        key: [u8; 32],
    ) -> Result<u32, SerfError> {
        self.key_op(now, member, KEY_INSTALL, Some(key))
    }

    /// Makes `key` the primary on every member.
    pub fn use_key<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        key: [u8; 32],
    ) -> Result<u32, SerfError> {
        self.key_op(now, member, KEY_USE, Some(key))
    }

    /// Removes `key` from every member (refused where it is the primary).
    pub fn remove_key<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        key: [u8; 32],
    ) -> Result<u32, SerfError> {
        self.key_op(now, member, KEY_REMOVE, Some(key))
    }

    /// Lists the keys of every member.
    pub fn list_keys<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
    ) -> Result<u32, SerfError> {
        self.key_op(now, member, KEY_LIST, None)
    }

    fn key_op<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        op: &str,
        key: Option<[u8; 32]>,
    ) -> Result<u32, SerfError> {
        let kop = match op {
            KEY_INSTALL => wire::KeyOp::Install,
            KEY_USE => wire::KeyOp::Use,
            KEY_REMOVE => wire::KeyOp::Remove,
            _ => wire::KeyOp::List,
        };
        let payload = encode_msg(
            &mut self.encoder,
            &Message::KeyRequest(wire::KeyRequest { op: kop, key }),
        );
        let expected = {
            let dir = member.directory().clone();
            let dir = dir.borrow();
            member
                .members()
                .filter(|&(_, state, _)| state == MemberState::Alive)
                .map(|(node, _, _)| dir.name(node).to_owned())
                .collect()
        };
        let pending = KeyPending {
            expected,
            result: KeyResult::default(),
        };
        self.query_inner(now, member, op, &payload, Vec::new(), None, Some(pending))
    }

    /// Feeds one SWIM event to Serf.
    pub fn handle_event<R: Rng>(&mut self, now: Time, member: &mut Member<R>, ev: &Event) {
        match ev {
            Event::Message { msg, .. } => self.handle_message(now, member, msg),
            Event::Rtt {
                node,
                rtt,
                coordinate: Some(c),
            } => {
                let rtt_s = rtt.as_secs_f64();
                if self
                    .vivaldi
                    .update(u64::from(*node), c, rtt_s, &mut self.rng)
                    .is_ok()
                {
                    member.set_coordinate(Some(self.vivaldi.coordinate().clone()));
                }
            }
            Event::UserState { state, join, .. } => {
                if let Some(((m, e, q), events)) = decode_state(state, self.cfg.event_bytes_max) {
                    self.member_clock.witness(m);
                    self.event_clock.witness(e);
                    self.query_clock.witness(q);
                    if self.joining && !*join {
                        // The answer to our join: do not replay what the cluster did before.
                        self.joining = false;
                        self.event_min_time = self.event_min_time.max(e);
                        self.query_min_time = self.query_min_time.max(q);
                    }
                    // Anti-entropy: events this member missed in gossip (duplicates and
                    // events from before the join are refused as usual).
                    for ev in events {
                        self.accept_event(member, ev);
                    }
                } else {
                    self.stats.refused += 1;
                }
            }
            _ => {}
        }
    }

    fn handle_message<R: Rng>(&mut self, now: Time, member: &mut Member<R>, msg: &Message) {
        match msg {
            Message::UserEvent(ev) => {
                if ev.name.len() + ev.payload.len() > self.cfg.event_bytes_max {
                    self.stats.refused += 1;
                    return;
                }
                self.accept_event(member, ev.clone());
            }
            Message::Query(q) => {
                if q.payload.len() > self.cfg.query_bytes_max {
                    self.stats.refused += 1;
                    return;
                }
                self.accept_query(now, member, q.clone());
            }
            Message::QueryResponse(r) => {
                if r.payload.len() > self.cfg.response_bytes_max {
                    self.stats.refused += 1;
                    return;
                }
                self.accept_response(r.clone());
            }
            Message::Relay(r) => {
                // Forward the wrapped response; it must be a query response, nothing else.
                let mut buf = rkyv::util::AlignedVec::<16>::with_capacity(r.frame.len());
                buf.extend_from_slice(&r.frame);
                let inner = Decoder::new(b"", ringleader_wire::frame::DATAGRAM_BYTES_MAX_DEFAULT)
                    .decode(&mut buf, None)
                    .ok()
                    .and_then(|f| f.messages().next())
                    .and_then(|m| m.ok())
                    .and_then(|m| match m {
                        MessageRef::QueryResponse(_) => m.to_owned().ok(),
                        _ => None,
                    });
                match inner {
                    Some(resp) => {
                        self.stats.relays += 1;
                        if r.dest == self.addr {
                            if let Message::QueryResponse(resp) = resp {
                                self.accept_response(resp);
                            }
                        } else {
                            member.send_to(r.dest, resp);
                        }
                    }
                    None => self.stats.refused += 1,
                }
            }
            Message::JoinIntent(j) => {
                self.apply_intent(member, &j.node, j.ltime, IntentStatus::Alive)
            }
            Message::LeaveIntent(l) => {
                self.apply_intent(member, &l.node, l.ltime, IntentStatus::Leaving)
            }
            _ => {}
        }
    }

    fn apply_intent<R: Rng>(
        &mut self,
        member: &mut Member<R>,
        node: &str,
        ltime: u64,
        status: IntentStatus,
    ) {
        self.member_clock.witness(ltime);
        match self.intents.get(node) {
            Some(&(_, seen)) if ltime <= seen => {
                self.stats.stale_intents += 1;
                return;
            }
            None if self.intents.len() >= self.cfg.intents_max => {
                self.stats.refused += 1;
                return;
            }
            _ => {}
        }
        self.intents.insert(node.to_owned(), (status, ltime));
        let msg = match status {
            IntentStatus::Alive => Message::JoinIntent(wire::JoinIntent {
                ltime,
                node: node.to_owned(),
            }),
            IntentStatus::Leaving => Message::LeaveIntent(wire::LeaveIntent {
                ltime,
                node: node.to_owned(),
                prune: false,
            }),
        };
        member.broadcast(msg, Some(digest(&[b"intent", node.as_bytes()])));
    }

    /// Expires queries and refreshes the clocks in the push-pull state. Call at least every
    /// gossip interval.
    pub fn tick<R: Rng>(&mut self, now: Time, member: &mut Member<R>) {
        let expired: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let Some(p) = self.pending.remove(&id) else {
                continue;
            };
            match p.key {
                Some(mut k) => {
                    k.result.id = id;
                    k.result.no_response = k
                        .expected
                        .into_iter()
                        .filter(|n| !p.responders.contains(n))
                        .collect();
                    self.emit(SerfEvent::KeyResult(k.result));
                }
                None => self.emit(SerfEvent::QueryDone {
                    id,
                    responses: p.responders.len(),
                    acks: p.ackers.len(),
                }),
            }
        }
        self.publish_state(member);
    }

    fn publish_state<R: Rng>(&mut self, member: &mut Member<R>) {
        member.set_user_state(encode_state(self.clocks(), &self.recent));
    }

    /// The state a snapshot keeps.
    pub fn snapshot_state<R: Rng>(&self, member: &Member<R>) -> snapshot::SnapshotState {
        let dir = member.directory().clone();
        let dir = dir.borrow();
        let members = member
            .members()
            .filter(|&(node, state, _)| state == MemberState::Alive && node != member.id())
            .filter_map(|(node, _, _)| {
                member
                    .member(node)
                    .map(|(_, _, info)| (dir.name(node).to_owned(), dir.info(info).addr))
            })
            .collect();
        snapshot::SnapshotState {
            member_clock: self.member_clock.time(),
            event_clock: self.event_clock.time(),
            query_clock: self.query_clock.time(),
            members,
            keys: self.keyring.as_ref().map(|k| k.list()).unwrap_or_default(),
        }
    }

    /// Restores clocks from a snapshot: old events and queries are not replayed after a
    /// restart. Returns the addresses to rejoin.
    pub fn restore(&mut self, s: &snapshot::SnapshotState) -> Vec<SocketAddr> {
        self.member_clock.witness(s.member_clock);
        self.event_clock.witness(s.event_clock);
        self.query_clock.witness(s.query_clock);
        self.event_min_time = self.event_min_time.max(s.event_clock.saturating_add(1));
        self.query_min_time = self.query_min_time.max(s.query_clock.saturating_add(1));
        if let (Some(ring), Some((&primary, rest))) = (self.keyring.as_mut(), s.keys.split_first())
        {
            for &k in rest {
                let _ = ring.install(k);
            }
            let _ = ring.install(primary);
            let _ = ring.use_key(&primary);
        }
        s.members.iter().map(|&(_, a)| a).collect()
    }
}

/// Push-pull state: version 2, the three clocks, then the most recent user events (Serf
/// carries them too, so a member that missed an event in gossip catches up at the next
/// push-pull): `count(1)` and per event `ltime(8) coalesce(1) name_len(2) name
/// payload_len(2) payload`, little-endian.
fn encode_state((m, e, q): (u64, u64, u64), recent: &VecDeque<wire::UserEvent>) -> Vec<u8> {
    let mut v = Vec::with_capacity(26 + recent.len() * 64);
    v.push(2u8);
    v.extend_from_slice(&m.to_le_bytes());
    v.extend_from_slice(&e.to_le_bytes());
    v.extend_from_slice(&q.to_le_bytes());
    let n = recent.len().min(u8::MAX as usize);
    v.push(n as u8);
    for ev in recent.iter().take(n) {
        v.extend_from_slice(&ev.ltime.to_le_bytes());
        v.push(u8::from(ev.coalesce));
        v.extend_from_slice(&(ev.name.len() as u16).to_le_bytes());
        v.extend_from_slice(ev.name.as_bytes());
        v.extend_from_slice(&(ev.payload.len() as u16).to_le_bytes());
        v.extend_from_slice(&ev.payload);
    }
    v
}

/// Decodes push-pull state from a peer (untrusted): `None` if malformed or if an event is
/// larger than `event_bytes_max`.
fn decode_state(
    b: &[u8],
    event_bytes_max: usize,
) -> Option<((u64, u64, u64), Vec<wire::UserEvent>)> {
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = b.get(*at..at.checked_add(n)?)?;
        *at += n;
        Some(s)
    };
    let mut at = 0;
    if take(&mut at, 1)? != [2] {
        return None;
    }
    let word = |at: &mut usize| -> Option<u64> {
        let mut w = [0u8; 8];
        w.copy_from_slice(take(at, 8)?);
        Some(u64::from_le_bytes(w))
    };
    let clocks = (word(&mut at)?, word(&mut at)?, word(&mut at)?);
    let count = take(&mut at, 1)?[0] as usize;
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let mut w = [0u8; 8];
        w.copy_from_slice(take(&mut at, 8)?);
        let ltime = u64::from_le_bytes(w);
        let coalesce = take(&mut at, 1)?[0] != 0;
        let nl = take(&mut at, 2)?;
        let nl = u16::from_le_bytes([nl[0], nl[1]]) as usize;
        let name = std::str::from_utf8(take(&mut at, nl)?).ok()?.to_owned();
        let pl = take(&mut at, 2)?;
        let pl = u16::from_le_bytes([pl[0], pl[1]]) as usize;
        let payload = take(&mut at, pl)?.to_vec();
        if name.len() + payload.len() > event_bytes_max {
            return None;
        }
        events.push(wire::UserEvent {
            ltime,
            name,
            payload,
            coalesce,
        });
    }
    if at != b.len() {
        return None;
    }
    Some((clocks, events))
}

fn encode_msg(encoder: &mut Encoder, msg: &Message) -> Vec<u8> {
    encoder
        .encode_message(msg, None, 64 * 1024)
        .map(|f| f.to_vec())
        .unwrap_or_default()
}

fn decode_one(bytes: &[u8]) -> Option<Message> {
    let mut buf = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    buf.extend_from_slice(bytes);
    let frame = Decoder::new(b"", 64 * 1024).decode(&mut buf, None).ok()?;
    frame.messages().next()?.ok()?.to_owned().ok()
}

fn decode_key_request(bytes: &[u8]) -> Option<wire::KeyRequest> {
    match decode_one(bytes)? {
        Message::KeyRequest(r) => Some(r),
        _ => None,
    }
}

fn decode_key_response(bytes: &[u8]) -> Option<wire::KeyResponse> {
    match decode_one(bytes)? {
        Message::KeyResponse(r) => Some(r),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_malformed_meta_is_refused() {
        let mut t = BTreeMap::new();
        t.insert("role".to_owned(), "web".to_owned());
        t.insert("dc".to_owned(), "eu-1".to_owned());
        assert_eq!(decode_tags(&encode_tags(&t)), Some(t));
        assert_eq!(decode_tags(&[5, b'a']), None);
        assert_eq!(decode_tags(&[1, b'a', 9, 0]), None);
        assert_eq!(decode_tags(&[]), Some(BTreeMap::new()));
    }

    #[test]
    fn the_recent_ring_dedups_and_refuses_the_too_old() {
        let mut r = RecentRing::new(4, 8);
        assert!(matches!(r.check(10, 1, 11), Seen::New));
        assert!(matches!(r.check(10, 1, 11), Seen::Duplicate));
        assert!(matches!(r.check(10, 2, 11), Seen::New));
        assert!(matches!(r.check(3, 1, 11), Seen::TooOld));
        // Slot 14 % 4 == 10 % 4: the newer time takes the slot; the older is then too old.
        assert!(matches!(r.check(14, 1, 15), Seen::New));
        assert!(matches!(r.check(10, 3, 15), Seen::TooOld));
    }

    #[test]
    fn state_encoding_round_trips_and_refuses_garbage() {
        let mut recent = VecDeque::new();
        recent.push_back(wire::UserEvent {
            ltime: 9,
            name: "deploy".into(),
            payload: vec![1, 2],
            coalesce: true,
        });
        let state = encode_state((1, 2, 3), &recent);
        let (clocks, events) = decode_state(&state, 512).expect("decodes");
        assert_eq!(clocks, (1, 2, 3));
        assert_eq!(events, recent.iter().cloned().collect::<Vec<_>>());
        // Over the event bound, truncated anywhere, or with trailing bytes: refused.
        assert_eq!(decode_state(&state, 4), None);
        for cut in 0..state.len() {
            assert_eq!(decode_state(&state[..cut], 512), None, "cut at {cut}");
        }
        let mut long = state.clone();
        long.push(0);
        assert_eq!(decode_state(&long, 512), None);
        assert_eq!(decode_state(&[1; 25], 512), None);
    }
}

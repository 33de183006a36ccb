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
//!   (`event_min_time`, learned from the push-pull of the join or from the snapshot; events
//!   that gossip brings while the join is unanswered are held, a bounded few, until it is).
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

mod codec;
mod config;
mod events;
mod keys;
mod query;

pub use clock::LamportClock;
pub use codec::{decode_tags, encode_tags};
pub use config::SerfConfig;
pub use keys::{INTERNAL_PREFIX, KeyOp, KeyResult};
pub use query::{
    QUERY_FLAG_ACK, QUERY_FLAG_NO_BROADCAST, QueryHandle, QueryOptions, RESPONSE_FLAG_ACK,
};
pub use vivaldi::{Vivaldi, VivaldiConfig};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use ringleader_swim::{Event, Member, MemberState};
use ringleader_time::Time;
use ringleader_wire::msg::serf as wire;
use ringleader_wire::msg::swim::Coordinate;
use ringleader_wire::{Decoder, Encoder, Keyring, Message, MessageRef};

use crate::codec::{decode_state, encode_state};
use crate::events::{RecentRing, digest};

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
    /// Force-leave of a member this member does not know.
    #[error("no member named {0:?} is known here")]
    UnknownMember(String),
    /// Force-leave of a member that has not failed (only a failed member can be forced
    /// out; a live one would answer with a newer join).
    #[error("member {0:?} has not failed; force-leave applies to failed members only")]
    NotFailed(String),
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
    /// User events that arrived while joining, before the floors were known (at most
    /// `event_buffer`): judged once the join's answer (or its failure) comes.
    held: Vec<wire::UserEvent>,
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
            held: Vec::new(),
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

    /// A join through seeds begins after [`Serf::start`] (a member that founded its
    /// cluster joins another): as at a start with `joining`, the first push-pull answer sets
    /// the event and query floors, so the other cluster's past is not replayed here.
    pub fn join_started(&mut self) {
        self.joining = true;
    }

    /// The join is answered (floors set) or over: events held meanwhile are judged now.
    fn end_join<R: Rng>(&mut self, member: &mut Member<R>) {
        self.joining = false;
        for ev in std::mem::take(&mut self.held) {
            self.accept_event(member, ev);
        }
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

    /// Serf's `force-leave`: marks the failed member `name` as left across the cluster (a
    /// leave intent with a new member time, gossiped like the member's own leave would be),
    /// so that it is no longer reconnected to or reported as failed.
    pub fn force_leave<R: Rng>(
        &mut self,
        member: &mut Member<R>,
        name: &str,
    ) -> Result<(), SerfError> {
        let state = {
            let dir = member.directory().clone();
            let dir = dir.borrow();
            member
                .members()
                .find(|&(node, _, _)| dir.name(node) == name)
                .map(|(_, state, _)| state)
        };
        match state {
            None => return Err(SerfError::UnknownMember(name.to_owned())),
            Some(MemberState::Dead | MemberState::Left) => {}
            Some(_) => return Err(SerfError::NotFailed(name.to_owned())),
        }
        let ltime = self.member_clock.increment();
        self.apply_intent(member, name, ltime, IntentStatus::Leaving);
        Ok(())
    }

    /// This member's tags.
    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
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
                        self.event_min_time = self.event_min_time.max(e);
                        self.query_min_time = self.query_min_time.max(q);
                        self.end_join(member);
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
            // The member forgot this peer: its name id may be reclaimed and given to
            // another member, which must not inherit the peer's latency samples.
            Event::Reaped { node } => self.vivaldi.forget(u64::from(*node)),
            // A join that ends without a state from the other side (it failed, or the peer
            // runs no Serf): the held events are judged with the floors there are.
            Event::Joined { .. } if self.joining => self.end_join(member),
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

    pub(crate) fn publish_state<R: Rng>(&mut self, member: &mut Member<R>) {
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
        // A clock's time is one past the newest Lamport time it has witnessed, and the next
        // event anyone fires can carry exactly that time: it is the floor (one more would
        // refuse the cluster's next event as old, as the join's floor does not).
        self.event_min_time = self.event_min_time.max(s.event_clock);
        self.query_min_time = self.query_min_time.max(s.query_clock);
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

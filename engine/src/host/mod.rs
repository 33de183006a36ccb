//! Live SWIM members on the shards: the engine that runs [`crate::swim::Member`]s on real
//! sockets, from one member per process (production, see [`Node`]) to 10,000+ in one
//! process (load tests, see [`Host`]).
//!
//! # How it is wired
//! - A member lives on shard [`shard_of`]`(name)`; only that shard touches it. The
//!   application sends commands ([`Host::add`], [`Host::kill`], ...) to the owning shard
//!   and waits for the reply on a one-shot channel.
//! - Each member binds its own UDP socket on its shard's [`UdpRing`] and takes TCP
//!   connections (push-pull and the TCP-fallback probe) on the same address: through a
//!   listener of its own ([`StreamListeners::PerMember`], production), or through one
//!   wildcard listener per shard and port that routes each accepted connection by its local
//!   address ([`StreamListeners::PerShard`], load tests: one descriptor per member instead of
//!   two, so 10,000 members fit in a 20,000-descriptor limit). Every shard has one
//!   [`Directory`] for all its members, one [`Timers`] heap keyed by member slot, one
//!   [`Encoder`] and (when keys are configured) one keyring for sealing.
//! - Receive: the ring hands each validated datagram to the shard, which converts every
//!   message through the directory into the member's compact items and runs them; the
//!   member's outputs are sent from inside the same callback (an ack leaves in the same
//!   submit as the ping's receive), its events go to the application's channel (filtered
//!   by [`EventMask`]), its next deadline goes to the timer heap.
//! - Streams: each exchange is one glommio task (connect, send one frame, read one frame,
//!   all under `stream_timeout_ms`); the answer is read in place (a push-pull state is
//!   interned into the directory straight from its archive, and the shard's own state is
//!   encoded from the directory through borrowed [`ringleader_wire::msg::borrowed`] types:
//!   no per-member allocation either way) and queued for the shard loop, which hands it to
//!   the member. Inbound exchanges are served by a task per connection, at most
//!   [`HostConfig::inbound_streams_max`] per shard at once; a request that does not decode
//!   ends the connection and is counted.
//! - Kill (a crash) drops the member without a word: its sockets close, peers stop hearing
//!   it. Leave broadcasts the leave and keeps the member running until its broadcast
//!   queue drains or [`HostConfig::leave_linger_ms`] passes.
//!
//! - Serf (optional per member, [`Host::add_with`], [`NodeBuilder::serf`]): the shard keeps
//!   a [`ringleader_serf::Serf`] beside the member and drives it (`shard/serf_io.rs`); the
//!   API is in `serf_api.rs`, its types and files in [`serf`].
//!
//! Bad input never panics a shard: datagrams are validated by the transport (counted by
//! cause in [`UdpCounters`]), messages the directory refuses are counted in the member's
//! [`Stats::dropped`](crate::swim::Stats), and stream frames that do not decode end their
//! connection (counted in [`ShardCensus::streams_refused`]).

mod node;
pub mod serf;
mod serf_api;
mod shard;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringleader_wire::keyring::KEY_LEN;
use ringleader_wire::msg::swim::MemberState;
use serde::Serialize;

pub use node::{Node, NodeBuilder};
pub use serf::{
    Coordinates, IncomingQuery, KeyOp, KeyReport, MemberStatus, QueryParams, QueryReply,
    QueryStream, SerfConfig, SerfCounters, SerfOptions,
};

use crate::runtime::{Runtime, RuntimeConfig, RuntimeError, shard_of};
use crate::swim::{Config, Stats};
use crate::transport::{UdpConfig, UdpCounters};

#[allow(unused_imports)] // for doc links
use crate::{runtime::Timers, swim::Directory, transport::UdpRing};
#[allow(unused_imports)] // for doc links
use ringleader_wire::Encoder;

/// How long a listener waits after a failed accept (EMFILE and friends) before the next.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// What a [`Host`] runs with. Every bound is a field; [`HostConfig::check`] refuses bad
/// values with a message saying what to change.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The SWIM configuration of every member (presets: `Config::lan()`, `local()`, `wan()`).
    pub swim: Config,
    /// Cluster label: frames of other clusters are refused (empty: none).
    pub label: Vec<u8>,
    /// AES-256-GCM keys, primary first; empty means frames are not sealed. Members holding
    /// none of the keys a frame was sealed with cannot talk to this host (counted as
    /// `no_key` drops).
    pub keys: Vec<[u8; KEY_LEN]>,
    /// Shards and executors.
    pub runtime: RuntimeConfig,
    /// Each shard's UDP ring.
    pub udp: UdpConfig,
    /// Members in the whole cluster, at most, live at once: each shard's directory holds
    /// this many names plus `swim.reconnect_memory_max` failed ones it still remembers
    /// (reaped members' names are reclaimed, so churn over time does not count).
    pub cluster_members_max: usize,
    /// Members hosted by one shard, at most.
    pub members_per_shard_max: usize,
    /// Largest stream frame (a push-pull state of the whole cluster must fit).
    pub stream_frame_bytes_max: usize,
    /// Inbound stream exchanges served by one shard at once; more are closed unanswered.
    pub inbound_streams_max: usize,
    /// Inbound stream exchanges from one source IP address served by one shard at once;
    /// more from that address are closed unanswered and counted in
    /// [`ShardCensus::streams_refused_per_ip`], so that one address cannot take every slot
    /// of `inbound_streams_max` from the other peers. At most `inbound_streams_max`; 0: no
    /// per-IP bound. [`Host`] defaults to 0: the members of a loopback test cluster all
    /// connect from 127.0.0.1, and a per-IP bound would throttle them as one peer; a
    /// [`Node`] (one member, real peers on their own addresses) sets 8, since a peer needs
    /// only a few concurrent exchanges (push-pull, fallback probe) with one member.
    pub inbound_streams_per_ip_max: usize,
    /// Bytes the frames of one shard's inbound streams may hold at once (a frame is read
    /// into memory only as its bytes arrive; past this, the stream that needs more is
    /// closed and counted in [`ShardCensus::streams_over_budget`]). At least
    /// `stream_frame_bytes_max`, so one largest frame always fits.
    pub inbound_stream_bytes_max: usize,
    /// Outbound stream exchanges (push-pull, fallback pings) of one shard in flight at
    /// once; more fail at once, as if the peer were unreachable (each holds a descriptor).
    pub outbound_streams_max: usize,
    /// After [`Host::leave`], the member keeps gossiping its leave this long at most.
    pub leave_linger_ms: u64,
    /// Broadcasts each member remembers (to deliver and relay each once); one older than
    /// the last this many is delivered again if it is still circulating. Sets
    /// `swim.gossip_seen_max` (the decision is the SWIM core's).
    pub gossip_seen_max: usize,
    /// Which member events reach [`Host::events`].
    pub events: EventMask,
    /// How members take TCP connections.
    pub stream_listeners: StreamListeners,
    /// Members' timers fire on a grid of this many milliseconds (a deadline is rounded up
    /// to the next multiple): the members of a shard that are due within one grid step are
    /// served by one wake-up of the shard, and their datagrams leave (and their answers come
    /// back) in bursts instead of one wake-up each. SWIM's timings are hundreds of
    /// milliseconds; 0 fires every deadline exactly. At most a fifth of
    /// `swim.probe_timeout_ms`. [`Host`] defaults to 25 (it hosts many members);
    /// [`Node`] to 0.
    pub timer_slack_ms: u64,
}

/// How hosted members take TCP connections (push-pull, the fallback probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamListeners {
    /// Each member listens on its own address: two descriptors per member (UDP socket and
    /// listener). What a production node uses.
    #[default]
    PerMember,
    /// Each shard listens once per port on the wildcard address (`0.0.0.0:port` or
    /// `[::]:port`) and hands each accepted connection to the member bound to its local
    /// address; a connection to an address no member holds is closed and counted
    /// ([`ShardCensus::streams_unrouted`]). One descriptor per member, for load tests of
    /// thousands of members in one process. Members on different shards need different
    /// ports (pick the port from [`Host::shard_of`]): a port already listened on by
    /// another shard, or by anything else, is refused with a bind error. The wildcard also
    /// accepts connections on the host's other interfaces (closed, since no member holds
    /// those addresses): use it on test hosts.
    PerShard,
}

impl StreamListeners {
    /// Descriptors one hosted member holds (its UDP socket, and a listener of its own with
    /// `PerMember`), streams in flight not counted.
    pub fn descriptors_per_member(self) -> usize {
        match self {
            StreamListeners::PerMember => 2,
            StreamListeners::PerShard => 1,
        }
    }

    /// The layout's name: `member` or `shard`.
    pub fn name(self) -> &'static str {
        match self {
            StreamListeners::PerMember => "member",
            StreamListeners::PerShard => "shard",
        }
    }
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            swim: Config::lan(),
            label: Vec::new(),
            keys: Vec::new(),
            runtime: RuntimeConfig {
                name: "ringleader-host".to_string(),
                ..RuntimeConfig::default()
            },
            udp: UdpConfig::default(),
            cluster_members_max: 65_536,
            members_per_shard_max: 16_384,
            stream_frame_bytes_max: 16 << 20,
            inbound_stream_bytes_max: 64 << 20,
            inbound_streams_max: 512,
            inbound_streams_per_ip_max: 0,
            outbound_streams_max: 512,
            leave_linger_ms: 3_000,
            gossip_seen_max: 4_096,
            events: EventMask::ALL,
            stream_listeners: StreamListeners::PerMember,
            timer_slack_ms: 25,
        }
    }
}

impl HostConfig {
    /// Refuses a configuration that cannot work, saying which field to change.
    pub fn check(&self) -> Result<(), HostError> {
        let bad = |what: String| Err(HostError::Config(what));
        if self.timer_slack_ms.saturating_mul(5) > self.swim.probe_timeout_ms {
            return bad(format!(
                "timer_slack_ms ({}) is over a fifth of swim.probe_timeout_ms ({}): lower it (0 fires every timer exactly)",
                self.timer_slack_ms, self.swim.probe_timeout_ms
            ));
        }
        if self.swim.datagram_bytes_max > self.udp.datagram_bytes_max {
            return bad(format!(
                "swim.datagram_bytes_max ({}) exceeds udp.datagram_bytes_max ({}): lower the first or raise the second",
                self.swim.datagram_bytes_max, self.udp.datagram_bytes_max
            ));
        }
        if self.swim.encrypted == self.keys.is_empty() {
            return bad(format!(
                "swim.encrypted is {} but {} keys are configured: leave swim.encrypted to Host (it is set from keys)",
                self.swim.encrypted,
                self.keys.len()
            ));
        }
        if self.keys.len() > ringleader_wire::keyring::KEYS_MAX {
            return bad(format!(
                "{} keys configured; a keyring holds at most {}",
                self.keys.len(),
                ringleader_wire::keyring::KEYS_MAX
            ));
        }
        if self.cluster_members_max < 2 {
            return bad("cluster_members_max must be at least 2".into());
        }
        if self.members_per_shard_max == 0 || self.members_per_shard_max > self.udp.sockets_max {
            return bad(format!(
                "members_per_shard_max ({}) must be in 1..=udp.sockets_max ({})",
                self.members_per_shard_max, self.udp.sockets_max
            ));
        }
        if self.stream_frame_bytes_max < 4096 {
            return bad("stream_frame_bytes_max must be at least 4096".into());
        }
        if self.gossip_seen_max == 0 {
            return bad("gossip_seen_max must be at least 1".into());
        }
        if self.outbound_streams_max == 0 {
            return bad("outbound_streams_max must be at least 1".into());
        }
        if self.inbound_streams_max == 0 {
            return bad("inbound_streams_max must be at least 1".into());
        }
        if self.inbound_streams_per_ip_max > self.inbound_streams_max {
            return bad(format!(
                "inbound_streams_per_ip_max ({}) exceeds inbound_streams_max ({}): lower the \
                 first (0 turns the per-IP bound off) or raise the second",
                self.inbound_streams_per_ip_max, self.inbound_streams_max
            ));
        }
        if self.inbound_stream_bytes_max < self.stream_frame_bytes_max {
            return bad(format!(
                "inbound_stream_bytes_max ({}) must be at least stream_frame_bytes_max ({}): \
                 one largest frame must fit",
                self.inbound_stream_bytes_max, self.stream_frame_bytes_max
            ));
        }
        Ok(())
    }

    /// This configuration with `swim.encrypted` set from `keys`.
    fn normalized(mut self) -> HostConfig {
        self.swim.encrypted = !self.keys.is_empty();
        self.swim.gossip_seen_max = self.gossip_seen_max;
        self
    }
}

/// Which member events are delivered (a load test with 10,000 members does not want the
/// 10⁸ "up" events of its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMask(u16);

impl EventMask {
    /// A member joined or came back.
    pub const UP: EventMask = EventMask(1);
    /// A member is suspected.
    pub const SUSPECT: EventMask = EventMask(2);
    /// A suspected member refuted.
    pub const ALIVE_AGAIN: EventMask = EventMask(4);
    /// A member was declared dead.
    pub const DOWN: EventMask = EventMask(8);
    /// A member left.
    pub const LEFT: EventMask = EventMask(16);
    /// A member's metadata or address changed.
    pub const UPDATED: EventMask = EventMask(32);
    /// A failed member was removed from the table.
    pub const REAPED: EventMask = EventMask(64);
    /// User messages.
    pub const MESSAGE: EventMask = EventMask(128);
    /// Joins finished.
    pub const JOINED: EventMask = EventMask(256);
    /// Serf user events.
    pub const USER: EventMask = EventMask(512);
    /// Serf queries to answer.
    pub const QUERY: EventMask = EventMask(1024);
    /// Nothing.
    pub const NONE: EventMask = EventMask(0);
    /// Everything.
    pub const ALL: EventMask = EventMask(0x7ff);
    /// Failures only (suspect, alive again, down, left).
    pub const FAILURES: EventMask = EventMask(2 | 4 | 8 | 16);

    /// Whether every kind of `other` is in `self`.
    pub fn contains(self, other: EventMask) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets.
    pub fn union(self, other: EventMask) -> EventMask {
        EventMask(self.0 | other.0)
    }
}

/// A member as another member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberInfo {
    /// Its name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Its metadata (tags).
    pub meta: Vec<u8>,
    /// Its state as seen.
    #[serde(serialize_with = "state_name")]
    pub state: MemberState,
    /// Its incarnation as seen.
    pub incarnation: u64,
    /// Its tags, decoded from its metadata when Serf runs (empty otherwise).
    pub tags: std::collections::BTreeMap<String, String>,
    /// Its status: the state, with Serf's leave intents when Serf runs (a failed member
    /// that was forced out is `left`).
    pub status: MemberStatus,
    /// Its Vivaldi coordinate, when Serf runs and one is known (this member's own, or a
    /// peer's from its last ack).
    pub coordinate: Option<Coordinates>,
}

fn state_name<S: serde::Serializer>(s: &MemberState, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(member_state_name(*s))
}

/// `alive`, `suspect`, `dead` or `left`.
pub fn member_state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Alive => "alive",
        MemberState::Suspect => "suspect",
        MemberState::Dead => "dead",
        MemberState::Left => "left",
    }
}

/// What happened, as seen by one hosted member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A member joined, or came back after being dead or left.
    Up(MemberInfo),
    /// A member is suspected by `by`.
    Suspect {
        /// The member.
        member: MemberInfo,
        /// The accuser.
        by: String,
    },
    /// A suspected member refuted the suspicion.
    AliveAgain(MemberInfo),
    /// A member was declared dead by `by`.
    Down {
        /// The member.
        member: MemberInfo,
        /// Who declared it.
        by: String,
    },
    /// A member left gracefully.
    Left(MemberInfo),
    /// A member's metadata or address changed.
    Updated(MemberInfo),
    /// A failed member was removed from the table.
    Reaped(MemberInfo),
    /// A user message arrived: a [`Host::broadcast`] (delivered once per member, with its
    /// `origin`), or a best-effort `UserMsg` sent to this member alone (`origin` `None`).
    Message {
        /// The address it came from (for a broadcast: the member that relayed it here).
        from: SocketAddr,
        /// The member that broadcast it.
        origin: Option<String>,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A join through `seed` finished.
    Joined {
        /// The seed.
        seed: SocketAddr,
        /// Whether the seed answered.
        ok: bool,
    },
    /// A Serf user event, delivered once per member.
    User {
        /// Its Lamport time.
        ltime: u64,
        /// Its name.
        name: String,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// A Serf query this member matches: answer with [`IncomingQuery::respond`].
    Query(IncomingQuery),
}

impl Event {
    /// The mask bit of this event.
    pub fn mask(&self) -> EventMask {
        match self {
            Event::Up(_) => EventMask::UP,
            Event::Suspect { .. } => EventMask::SUSPECT,
            Event::AliveAgain(_) => EventMask::ALIVE_AGAIN,
            Event::Down { .. } => EventMask::DOWN,
            Event::Left(_) => EventMask::LEFT,
            Event::Updated(_) => EventMask::UPDATED,
            Event::Reaped(_) => EventMask::REAPED,
            Event::Message { .. } => EventMask::MESSAGE,
            Event::Joined { .. } => EventMask::JOINED,
            Event::User { .. } => EventMask::USER,
            Event::Query(_) => EventMask::QUERY,
        }
    }

    /// The member this event is about, if it is about one.
    pub fn member(&self) -> Option<&MemberInfo> {
        match self {
            Event::Up(m)
            | Event::AliveAgain(m)
            | Event::Left(m)
            | Event::Updated(m)
            | Event::Reaped(m)
            | Event::Suspect { member: m, .. }
            | Event::Down { member: m, .. } => Some(m),
            Event::Message { .. } | Event::Joined { .. } | Event::User { .. } | Event::Query(_) => {
                None
            }
        }
    }
}

/// An [`Event`] with when it happened and which hosted member saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEvent {
    /// When the member saw it.
    pub at: Instant,
    /// The hosted member that saw it.
    pub local: Arc<str>,
    /// What happened.
    pub event: Event,
}

/// A member to start on a [`Host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// Unique name in the cluster (at most [`crate::swim::NAME_BYTES_MAX`] bytes).
    pub name: String,
    /// UDP and TCP address to bind (port 0 picks a free port for both).
    pub bind: SocketAddr,
    /// Members to join through (none: start a cluster of one).
    pub seeds: Vec<SocketAddr>,
    /// Metadata (tags), at most `swim.meta_bytes_max` bytes.
    pub meta: Vec<u8>,
}

/// Errors of a [`Host`] or a [`Node`].
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A configuration value is refused.
    #[error("invalid host configuration: {0}")]
    Config(String),
    /// The runtime could not start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A shard could not set up its transport.
    #[error("shard {shard}: {what}")]
    Transport {
        /// The shard.
        shard: usize,
        /// What failed.
        what: String,
    },
    /// Binding a member's sockets failed.
    #[error("member {name}: cannot bind {addr}: {what}")]
    Bind {
        /// The member.
        name: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        what: String,
    },
    /// No hosted member has this name.
    #[error("no member named {0:?} on this host")]
    NoSuchMember(String),
    /// A member with this name is already hosted.
    #[error("a member named {0:?} is already hosted")]
    Duplicate(String),
    /// The member refused (bad name or metadata, or it has left).
    #[error("member {name}: {what}")]
    Member {
        /// The member.
        name: String,
        /// Why.
        what: String,
    },
    /// A shard is full (`members_per_shard_max`) or its command queue is.
    #[error("shard {0} is full or busy")]
    Busy(usize),
    /// The host is shutting down or a shard stopped.
    #[error("the host has stopped")]
    Stopped,
    /// A reply did not come in time.
    #[error("no reply from shard {0} within {1:?}")]
    Timeout(usize, Duration),
    /// The member runs without Serf (start it with Serf options).
    #[error("member {0:?} runs without the Serf layer; start it with SerfOptions")]
    NoSerf(String),
    /// The Serf layer refused.
    #[error("member {name}: {what}")]
    Serf {
        /// The member.
        name: String,
        /// The Serf layer's reason.
        what: String,
    },
    /// A snapshot file is damaged or cannot be read or written.
    #[error("snapshot {}: {what}", path.display())]
    Snapshot {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A keyring file is damaged or cannot be read or written.
    #[error("keyring file {}: {what}", path.display())]
    Keyring {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// One shard's account of its members and transport (see [`Host::census`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardCensus {
    /// The shard.
    pub shard: usize,
    /// Members hosted (not left).
    pub members: usize,
    /// Of those, members that see exactly `expected` members alive and none suspect.
    pub converged: usize,
    /// Fewest members alive seen by one hosted member.
    pub alive_seen_min: usize,
    /// Most members alive seen by one hosted member.
    pub alive_seen_max: usize,
    /// Sum of the hosted members' counters.
    #[serde(skip)]
    pub stats: Stats,
    /// The shard's UDP ring counters.
    pub udp: UdpCounters,
    /// Stream exchanges started / answered by peers.
    pub streams_out: u64,
    /// Stream exchanges that failed (unreachable, timeout, bad answer).
    pub streams_failed: u64,
    /// Inbound stream exchanges served.
    pub streams_served: u64,
    /// Inbound streams closed unanswered (bad frame, over the limit, unknown member); the
    /// causes follow.
    pub streams_refused: u64,
    /// ... of which: more than `inbound_streams_max` were being served.
    pub streams_refused_busy: u64,
    /// ... of which: `inbound_streams_per_ip_max` streams from the same source IP were
    /// being served.
    pub streams_refused_per_ip: u64,
    /// ... of which: the exchange did not finish within `stream_timeout_ms` (a slow or
    /// idle peer).
    pub streams_timed_out: u64,
    /// ... of which: the frame needed more than the shard's `inbound_stream_bytes_max`.
    pub streams_over_budget: u64,
    /// ... of which: the frame did not decode (bad header, wrong label, sealed or not as
    /// expected, checksum, no key) or the connection ended inside it.
    pub streams_bad_frame: u64,
    /// Inbound connections to an address no hosted member holds (with
    /// [`StreamListeners::PerShard`]), closed.
    pub streams_unrouted: u64,
    /// Shared TCP listeners open ([`StreamListeners::PerShard`]).
    pub stream_listeners: usize,
    /// Failed accepts (descriptor limits, a listener that cannot wait); each backs its
    /// listener off for [`ACCEPT_BACKOFF`].
    pub accept_errors: u64,
    /// Events the application's channel had no room for.
    pub events_dropped: u64,
    /// The Serf layers' counters.
    pub serf: SerfCounters,
    /// Datagrams the shard could not send (no send slot, encoding failed).
    pub sends_dropped: u64,
}

/// Every shard's census, summed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Census {
    /// Per shard.
    pub shards: Vec<ShardCensus>,
}

impl Census {
    /// Members hosted.
    pub fn members(&self) -> usize {
        self.shards.iter().map(|s| s.members).sum()
    }

    /// Hosted members that see exactly the expected members alive.
    pub fn converged(&self) -> usize {
        self.shards.iter().map(|s| s.converged).sum()
    }

    /// Every shard's UDP ring counters, summed.
    pub fn udp(&self) -> UdpCounters {
        let mut t = UdpCounters::default();
        for s in &self.shards {
            t.add(&s.udp);
        }
        t
    }

    /// Datagrams dropped for `cause` (one of [`crate::transport::DROP_CAUSES`]).
    pub fn dropped(&self, cause: &str) -> u64 {
        let i = crate::transport::DROP_CAUSES
            .iter()
            .position(|c| *c == cause);
        i.map_or(0, |i| self.shards.iter().map(|s| s.udp.dropped[i]).sum())
    }

    /// Stream counters summed: (out, failed, served, refused).
    pub fn streams(&self) -> (u64, u64, u64, u64) {
        self.shards.iter().fold((0, 0, 0, 0), |a, s| {
            (
                a.0 + s.streams_out,
                a.1 + s.streams_failed,
                a.2 + s.streams_served,
                a.3 + s.streams_refused,
            )
        })
    }

    /// The members' counters summed.
    pub fn stats(&self) -> Stats {
        let mut t = Stats::default();
        for s in &self.shards {
            add_stats(&mut t, &s.stats);
        }
        t
    }
}

pub(crate) fn add_stats(t: &mut Stats, s: &Stats) {
    t.datagrams_out += s.datagrams_out;
    t.datagram_bytes_out += s.datagram_bytes_out;
    t.items_out += s.items_out;
    t.streams_out += s.streams_out;
    t.stream_bytes_out += s.stream_bytes_out;
    t.probes += s.probes;
    t.probes_failed += s.probes_failed;
    t.refutations += s.refutations;
    t.events_dropped += s.events_dropped;
    t.dropped += s.dropped;
    t.push_pull_refused += s.push_pull_refused;
    t.reconnects += s.reconnects;
    t.rumors_new += s.rumors_new;
    t.rumors_redundant += s.rumors_redundant;
    t.rumors_damped += s.rumors_damped;
    t.gossip_duplicates += s.gossip_duplicates;
}

/// How long the application waits for a shard's reply to a command.
pub(crate) const REPLY_WAIT: Duration = Duration::from_secs(30);

/// Many SWIM members on the shards of one process. For one member per process, use
/// [`Node`].
pub struct Host {
    runtime: Runtime<shard::Command, HostEvent, Result<(), HostError>>,
    config: Arc<HostConfig>,
}

impl Host {
    /// Starts the shards (no members yet). Fails with a message naming what to change when
    /// the configuration, the kernel (io_uring features) or a resource limit is not enough.
    pub fn start(config: HostConfig) -> Result<Host, HostError> {
        let config = config.normalized();
        config.check()?;
        let mut rc = config.runtime.clone();
        rc.extra_locked_bytes = rc.extra_locked_bytes.max(config.udp.locked_bytes());
        let shards = rc.shard_count();
        // Each member's own descriptors, plus streams in flight.
        let per_member = config.stream_listeners.descriptors_per_member();
        let want =
            (config.members_per_shard_max.min(config.cluster_members_max) * shards * per_member
                + shards * (config.inbound_streams_max + config.outbound_streams_max)
                + 1024) as u64;
        if let Err(e) = crate::transport::raise_nofile(want) {
            tracing::warn!("{e}");
        }
        let config = Arc::new(config);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(shards);
        let shard_config = Arc::clone(&config);
        let runtime = Runtime::start(rc, move |ctx| {
            shard::run(ctx, Arc::clone(&shard_config), ready_tx.clone())
        })?;
        for _ in 0..shards {
            match ready_rx.recv_timeout(REPLY_WAIT) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(HostError::Timeout(0, REPLY_WAIT)),
            }
        }
        // Each shard gets a handle to itself, for the responders of the queries it hands
        // out (commands are served in order: before any member is added).
        for s in 0..shards {
            if let Some(me) = runtime.command_sender(s) {
                let _ = runtime.send(s, shard::Command::Init { me });
            }
        }
        Ok(Host { runtime, config })
    }

    /// The configuration (with `swim.encrypted` set from the keys).
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.runtime.shards()
    }

    /// The shard that hosts (or would host) the member `name`.
    pub fn shard_of(&self, name: &str) -> usize {
        shard_of(name, self.runtime.shards())
    }

    /// Events of every hosted member, as selected by [`HostConfig::events`]. The channel is
    /// bounded (`runtime.events_capacity`): a shard never waits for the application, so
    /// events that find it full are dropped and counted ([`ShardCensus::events_dropped`]).
    pub fn events(&self) -> &crossbeam_channel::Receiver<HostEvent> {
        self.runtime.events()
    }

    pub(crate) fn ask<T>(
        &self,
        shard: usize,
        make: impl FnOnce(crossbeam_channel::Sender<T>) -> shard::Command,
    ) -> Result<T, HostError> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.runtime.send(shard, make(tx)).is_err() {
            return Err(HostError::Busy(shard));
        }
        match rx.recv_timeout(REPLY_WAIT) {
            Ok(v) => Ok(v),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                Err(HostError::Timeout(shard, REPLY_WAIT))
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(HostError::Stopped),
        }
    }

    /// Starts a member on its shard: binds its sockets, then joins through its seeds (the
    /// join runs in the background: watch for [`Event::Joined`] or use [`Host::census`]).
    /// Returns the bound address.
    pub fn add(&self, spec: MemberSpec) -> Result<SocketAddr, HostError> {
        self.add_with(spec, None)
    }

    /// Crashes a member: its sockets close and it says nothing (peers must detect it).
    pub fn kill(&self, name: &str) -> Result<(), HostError> {
        let shard = self.shard_of(name);
        self.ask(shard, |reply| shard::Command::Kill {
            name: name.to_string(),
            reply,
        })?
    }

    /// Leaves gracefully: broadcasts the leave, keeps gossiping until it has been sent
    /// enough times (or `leave_linger_ms` passes), then stops the member. Blocks until then.
    pub fn leave(&self, name: &str) -> Result<(), HostError> {
        let shard = self.shard_of(name);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let cmd = shard::Command::Leave {
            name: name.to_string(),
            reply: tx,
        };
        if self.runtime.send(shard, cmd).is_err() {
            return Err(HostError::Busy(shard));
        }
        let wait = REPLY_WAIT + Duration::from_millis(self.config.leave_linger_ms);
        rx.recv_timeout(wait)
            .map_err(|_| HostError::Timeout(shard, wait))?
    }

    /// Gossips a user message from member `name` to every member: it rides the piggyback
    /// queue of the origin and of every member that receives it (each relays it
    /// `user_retransmit_mult × ⌈log10(n+1)⌉` times), and each member delivers it once
    /// ([`Event::Message`] with `origin`). Best effort like all gossip: a member that is
    /// partitioned away for the whole spread misses it (a push-pull does not carry it).
    pub fn broadcast(&self, name: &str, payload: Vec<u8>) -> Result<(), HostError> {
        let shard = self.shard_of(name);
        self.ask(shard, |reply| shard::Command::Broadcast {
            name: name.to_string(),
            payload,
            reply,
        })?
    }

    /// Every member that member `name` knows, with its state (itself included).
    pub fn members(&self, name: &str) -> Result<Vec<MemberInfo>, HostError> {
        let shard = self.shard_of(name);
        self.ask(shard, |reply| shard::Command::Members {
            name: name.to_string(),
            reply,
        })?
    }

    /// Every shard's account; `expected` is the cluster size a converged member sees.
    pub fn census(&self, expected: usize) -> Result<Census, HostError> {
        let mut shards = Vec::with_capacity(self.shards());
        for s in 0..self.shards() {
            shards.push(self.ask(s, |reply| shard::Command::Census { expected, reply })?);
        }
        Ok(Census { shards })
    }

    /// Stops every member (without leaving) and every shard; joins the threads.
    pub fn shutdown(self) -> Result<(), HostError> {
        let Host { runtime, .. } = self;
        for r in runtime.join() {
            r??;
        }
        Ok(())
    }
}

/// `n` distinct loopback addresses for members of a load test, all on `port`:
/// `127.{base}.{i / 250}.{1 + i % 250}` (127.0.0.0/8 is all loopback on Linux).
pub fn loopback_addrs(n: usize, base: u8, port: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| {
            let ip = std::net::Ipv4Addr::new(127, base, (i / 250) as u8, (1 + i % 250) as u8);
            SocketAddr::from((ip, port))
        })
        .collect()
}

#[cfg(test)]
mod config_tests {
    use super::{HostConfig, HostError};
    use crate::swim::Config;

    #[test]
    fn timer_slack_is_refused_past_a_fifth_of_the_probe_timeout_naming_the_fields() {
        for swim in [Config::lan(), Config::local(), Config::wan()] {
            let c = HostConfig {
                swim,
                ..HostConfig::default()
            };
            assert!(c.check().is_ok(), "the default slack fits every preset");
        }
        let c = HostConfig {
            swim: Config::local(),
            timer_slack_ms: 41,
            ..HostConfig::default()
        };
        match c.check() {
            Err(HostError::Config(m)) => {
                assert!(m.contains("timer_slack_ms (41)") && m.contains("probe_timeout_ms (200)"))
            }
            other => panic!("not refused: {other:?}"),
        }
    }
}

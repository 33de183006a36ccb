//! SWIM + Lifeguard messages, with memberlist's semantics.
//!
//! Members are named; the name is the identity, the address is where to reach it. Every
//! message that can be forwarded carries enough to answer it without a lookup.

use std::net::{IpAddr, SocketAddr};

use rkyv::{Archive, Deserialize, Serialize};

/// A hash of bytes that is the same in every process, build and platform (FNV-1a from
/// `seed`, then splitmix64's finalizer): what members compare across the network, as a
/// probe's target or anti-entropy digests.
pub fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// splitmix64's finalizer: every input bit reaches every output bit.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a [`Ping`] names its target by: the low 32 bits of the [`stable_hash`] of the
/// target's name.
pub fn name_hash(name: &str) -> u32 {
    stable_hash(name.as_bytes(), 0) as u32
}

/// A socket address in as few bytes as an archive allows: the 4 (IPv4) or 16 (IPv6)
/// bytes of the address, and the port (IPv6 flow information and scope are not carried).
/// Any other length does not convert ([`CompactAddr::to_socket_addr`] is `None`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug))]
pub struct CompactAddr {
    /// The address's bytes, network order.
    pub ip: Vec<u8>,
    /// The port.
    pub port: u16,
}

fn socket_addr(ip: &[u8], port: u16) -> Option<SocketAddr> {
    let ip = match ip.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(ip).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(ip).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

impl From<SocketAddr> for CompactAddr {
    fn from(a: SocketAddr) -> CompactAddr {
        let ip = match a.ip() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        CompactAddr { ip, port: a.port() }
    }
}

impl CompactAddr {
    /// The address, if it has 4 or 16 bytes.
    pub fn to_socket_addr(&self) -> Option<SocketAddr> {
        socket_addr(&self.ip, self.port)
    }
}

impl ArchivedCompactAddr {
    /// The address, if it has 4 or 16 bytes.
    pub fn to_socket_addr(&self) -> Option<SocketAddr> {
        socket_addr(self.ip.as_slice(), self.port.to_native())
    }
}

/// A member's state as gossiped in push-pull.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum MemberState {
    /// Answering probes.
    Alive = 0,
    /// Suspected of having failed; not yet confirmed.
    Suspect = 1,
    /// Confirmed failed.
    Dead = 2,
    /// Left gracefully.
    Left = 3,
}

impl ArchivedMemberState {
    /// The state, read from its archive.
    pub fn to_native(&self) -> MemberState {
        match self {
            ArchivedMemberState::Alive => MemberState::Alive,
            ArchivedMemberState::Suspect => MemberState::Suspect,
            ArchivedMemberState::Dead => MemberState::Dead,
            ArchivedMemberState::Left => MemberState::Left,
        }
    }
}

/// Direct probe. `target` lets a member that was restarted under another name at the
/// same address refuse a probe meant for its predecessor.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Ping {
    /// Sequence number echoed in the ack.
    pub seq_no: u32,
    /// [`name_hash`] of the member this probe is meant for.
    pub target: u32,
    /// Name of the prober.
    pub source: String,
    /// Address the prober listens on.
    pub source_addr: CompactAddr,
}

/// Indirect probe request (ping-req): probe `target` on my behalf.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct IndirectPing {
    /// Sequence number the helper echoes in its ack or nack.
    pub seq_no: u32,
    /// Name of the member to probe.
    pub target: String,
    /// Its address.
    pub target_addr: CompactAddr,
    /// Lifeguard: send a nack if the target does not answer in time.
    pub nack: bool,
    /// Name of the member that asked.
    pub source: String,
    /// Its address, where the ack or nack goes.
    pub source_addr: CompactAddr,
}

/// Vivaldi network coordinate (Serf's, with height and adjustment).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Coordinate {
    /// Euclidean part of the position, in seconds.
    pub vec: [f64; 8],
    /// Confidence in the position (lower is better).
    pub error: f64,
    /// Adjustment term averaged over recent samples, in seconds.
    pub adjustment: f64,
    /// Height: the access-link part of the latency, in seconds.
    pub height: f64,
}

/// Answer to a ping or an indirect ping.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Ack {
    /// Sequence number of the probe being answered.
    pub seq_no: u32,
    /// The responder's network coordinate, when coordinates are enabled (boxed: an ack
    /// without one archives in 12 bytes, not 100).
    pub coordinate: Option<Box<Coordinate>>,
}

/// Lifeguard's negative acknowledgement: "I asked, the target did not answer in time".
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Nack {
    /// Sequence number of the indirect probe being answered.
    pub seq_no: u32,
}

/// `from` suspects `node` at `incarnation`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Suspect {
    /// Incarnation of `node` being suspected.
    pub incarnation: u64,
    /// The suspected member.
    pub node: String,
    /// The member that suspects it.
    pub from: String,
}

/// `node` is alive at `incarnation` (also: joins, refutations, metadata updates).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Alive {
    /// Incarnation; only a higher one overrides a suspicion.
    pub incarnation: u64,
    /// The member.
    pub node: String,
    /// Its address.
    pub addr: CompactAddr,
    /// Its metadata (tags), at most the configured limit (512 bytes by default).
    pub meta: Vec<u8>,
    /// Protocol versions: [min, max, current].
    pub protocol: [u8; 3],
}

/// `from` declares `node` dead at `incarnation`; when `from == node` the member left.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Dead {
    /// Incarnation of `node` being declared dead.
    pub incarnation: u64,
    /// The member.
    pub node: String,
    /// Who declares it.
    pub from: String,
}

/// One member's full state in a push-pull exchange.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PushNodeState {
    /// The member.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Its metadata.
    pub meta: Vec<u8>,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its state as the sender sees it.
    pub state: MemberState,
    /// Protocol versions: [min, max, current].
    pub protocol: [u8; 3],
}

/// What a push-pull message is in an anti-entropy exchange.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum PushPullMode {
    /// Every member the sender knows (the join, and its answer; memberlist's push-pull).
    #[default]
    Full = 0,
    /// A request: the sender's own entry and the digests of its member table by bucket;
    /// the receiver answers with a [`PushPullMode::Delta`].
    Digest = 1,
    /// The answer to a digest: the receiver's entries in the buckets whose digests
    /// differed (changed since `since`, if the request gave one), and which buckets those
    /// were.
    Delta = 2,
    /// The requester's entries the answerer lacked (after a delta); the answer is an empty
    /// [`PushPullMode::Delta`].
    Push = 3,
}

impl ArchivedPushPullMode {
    /// The mode, read from its archive.
    pub fn to_native(&self) -> PushPullMode {
        match self {
            ArchivedPushPullMode::Full => PushPullMode::Full,
            ArchivedPushPullMode::Digest => PushPullMode::Digest,
            ArchivedPushPullMode::Delta => PushPullMode::Delta,
            ArchivedPushPullMode::Push => PushPullMode::Push,
        }
    }
}

/// Delta anti-entropy: what a push-pull carries besides member states, so that two
/// members that agree exchange a few hundred bytes instead of their whole tables.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct PushPullDelta {
    /// What this message is.
    pub mode: PushPullMode,
    /// [`PushPullMode::Digest`]: one digest per bucket (a power of two of them); a
    /// member's bucket is the low bits of the stable hash of its name.
    pub digest: Vec<u32>,
    /// [`PushPullMode::Delta`]: the buckets whose digests differed.
    pub differing: Vec<u16>,
    /// [`PushPullMode::Digest`]: send only entries changed at or after this second of the
    /// receiver's clock (what the receiver's last delta to the sender said its clock
    /// was); `u32::MAX`: everything that differs.
    pub since: u32,
    /// [`PushPullMode::Delta`]: the sender's clock in seconds when it answered.
    pub clock: u32,
}

/// Push-pull anti-entropy (over a stream): the full state (also the join handshake), or a
/// digest exchange that carries only what differs (see [`PushPullMode`]).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PushPull {
    /// True when the sender is joining (the receiver answers with its own state).
    pub join: bool,
    /// Name of the sender.
    pub source: String,
    /// The members this message carries, with their states: every one the sender knows
    /// ([`PushPullMode::Full`]), or only those [`PushPull::delta`] says.
    pub states: Vec<PushNodeState>,
    /// Opaque state of the layer above (Serf: clocks, recent events).
    pub user_state: Vec<u8>,
    /// The digest exchange's part; default for a full state.
    pub delta: PushPullDelta,
}

/// An application message gossiped to every member: each member delivers it once (by
/// `(origin, seq)`) and relays it on its own piggyback queue, so it spreads epidemically
/// instead of depending on the origin's retransmissions alone.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Gossip {
    /// The member that broadcast it.
    pub origin: String,
    /// The origin's sequence number (with `origin`, the identity of the message).
    pub seq: u64,
    /// The application's bytes.
    pub payload: Vec<u8>,
}

/// An application message to one member, outside the gossip (best effort).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct UserMsg {
    /// The application's bytes.
    pub payload: Vec<u8>,
}

//! SWIM + Lifeguard messages, with memberlist's semantics.
//!
//! Members are named; the name is the identity, the address is where to reach it. Every
//! message that can be forwarded carries enough to answer it without a lookup.

use std::net::SocketAddr;

use rkyv::{Archive, Deserialize, Serialize};

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
    /// Name of the member this probe is meant for.
    pub target: String,
    /// Name of the prober.
    pub source: String,
    /// Address the prober listens on.
    pub source_addr: SocketAddr,
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
    pub target_addr: SocketAddr,
    /// Lifeguard: send a nack if the target does not answer in time.
    pub nack: bool,
    /// Name of the member that asked.
    pub source: String,
    /// Its address, where the ack or nack goes.
    pub source_addr: SocketAddr,
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
    /// The responder's network coordinate, when coordinates are enabled.
    pub coordinate: Option<Coordinate>,
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
    pub addr: SocketAddr,
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

/// Push-pull full-state anti-entropy (over a stream). Also the join handshake.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PushPull {
    /// True when the sender is joining (the receiver answers with its own state).
    pub join: bool,
    /// Name of the sender.
    pub source: String,
    /// Every member the sender knows, with its state.
    pub states: Vec<PushNodeState>,
    /// Opaque state of the layer above (Serf: clocks, recent events).
    pub user_state: Vec<u8>,
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

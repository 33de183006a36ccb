//! The core's compact form of SWIM messages: names and addresses are interned in a
//! [`Directory`](super::Directory), so a message is a few integers and moving one costs no
//! allocation. [`Directory::to_wire`](super::Directory::to_wire) and
//! [`Directory::from_wire`](super::Directory::from_wire) convert to and from
//! `ringleader_wire` messages at the edge; a driver whose members share one directory (the
//! simulator, or many members on one shard) can pass items between them directly.

use std::rc::Rc;

use ringleader_wire::Message;
use ringleader_wire::msg::swim::{Coordinate, MemberState, PushPullDelta};

/// A member's name, interned in a [`Directory`](super::Directory).
pub type NodeId = u32;
/// A member's (name, address, metadata), interned in a [`Directory`](super::Directory).
pub type InfoId = u32;
/// What a probe names its target by: `ringleader_wire::msg::swim::name_hash` of its name
/// ([`Directory::node_hash`](super::Directory::node_hash)'s low 32 bits).
pub type NameHash = u32;

/// One SWIM message, compact.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// Direct probe of `target` by `source`.
    Ping {
        /// Echoed in the ack.
        seq: u32,
        /// The member the probe is meant for (a member restarted under another name at
        /// the same address refuses it).
        target: NameHash,
        /// The prober (name and the address the ack goes to).
        source: InfoId,
    },
    /// Ping-req: probe `target` on behalf of `source`.
    IndirectPing {
        /// Echoed in the ack or nack.
        seq: u32,
        /// The member to probe.
        target: InfoId,
        /// Lifeguard: answer with a nack if the target stays silent.
        nack: bool,
        /// The member that asked.
        source: InfoId,
    },
    /// Answer to a probe.
    Ack {
        /// Sequence number of the probe.
        seq: u32,
        /// The responder's Vivaldi coordinate, if the layer above supplies one.
        coordinate: Option<Rc<Coordinate>>,
    },
    /// Lifeguard's negative acknowledgement from an indirect prober.
    Nack {
        /// Sequence number of the indirect probe.
        seq: u32,
    },
    /// `from` suspects `node` at `incarnation`.
    Suspect {
        /// Incarnation suspected.
        incarnation: u64,
        /// Suspected member.
        node: NodeId,
        /// Accuser.
        from: NodeId,
    },
    /// The member of `info` is alive at `incarnation`.
    Alive {
        /// Incarnation.
        incarnation: u64,
        /// Name, address and metadata.
        info: InfoId,
    },
    /// `from` declares `node` dead (left, when `from == node`).
    Dead {
        /// Incarnation declared dead.
        incarnation: u64,
        /// The member.
        node: NodeId,
        /// Who declares it.
        from: NodeId,
    },
    /// Any other message (the layer above's: user messages, Serf events and queries).
    Other(Rc<Message>),
}

/// One member's state in a push-pull exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    /// Name, address and metadata.
    pub info: InfoId,
    /// Incarnation.
    pub incarnation: u64,
    /// State as the sender sees it.
    pub state: MemberState,
}

/// A push-pull message: a full state, or one step of a digest exchange (`delta`).
#[derive(Debug, Clone, PartialEq)]
pub struct PushPullState {
    /// Whether the sender is joining.
    pub join: bool,
    /// The sender.
    pub source: InfoId,
    /// Every member the sender knows (a full state), or those `delta` says.
    pub states: Vec<NodeState>,
    /// The layer above's opaque state.
    pub user_state: Vec<u8>,
    /// The digest exchange's part (default: a full state).
    pub delta: PushPullDelta,
}

/// What a member asks of a peer over the reliable stream transport.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamRequest {
    /// Push-pull: my state; answer with yours.
    PushPull(Rc<PushPullState>),
    /// TCP-fallback probe: answer with an ack if you are `target`.
    Ping {
        /// Sequence number of the probe.
        seq: u32,
        /// The member the probe is meant for.
        target: NameHash,
        /// The prober.
        source: InfoId,
    },
}

/// A peer's answer over the stream transport.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamResponse {
    /// The peer's state.
    PushPull(Rc<PushPullState>),
    /// The fallback probe reached its target.
    Ack {
        /// Sequence number of the probe.
        seq: u32,
    },
    /// The peer refused (wrong target, over a bound, leaving).
    Refused,
}

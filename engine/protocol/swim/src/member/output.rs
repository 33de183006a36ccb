//! What a member hands out: datagrams and stream exchanges to send ([`Output`]) and
//! events for the application or the layer above ([`Event`]).

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use ringleader_wire::Message;
use ringleader_wire::msg::swim::Coordinate;

use crate::item::{InfoId, Item, NodeId, StreamRequest};

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

/// A stream exchange to start; answer with
/// [`Member::handle_stream_response`](super::Member::handle_stream_response) and `id`.
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

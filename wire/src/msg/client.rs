//! The key-value client protocol: requests and responses between a client and a node of a
//! replicated key-value service (many Raft groups, each owning the keys that hash to it).
//!
//! A client connection carries frames of [`ClientRequest`]s (one per frame, or many in a
//! batch frame) and gets frames of [`ClientResponse`]s back, matched by `id`: many requests
//! may be in flight on one connection and responses may come back in any order.
//!
//! Routing is the client's job, with the server's help:
//! - keys map to groups by [`group_of_key`]; groups map to shards by [`shard_of_group`];
//!   shard `s` of a node listens on the node's base port + `s`;
//! - [`ClientOp::Info`] returns the cluster's shape ([`ClusterInfo`]);
//! - a request for a group this node does not lead comes back as
//!   [`ClientResult::NotLeader`] with the leader's id and base address when known;
//! - a request that reaches the wrong shard comes back as [`ErrorCode::WrongShard`].
//!
//! Every field is untrusted on both sides: a server checks sizes against its bounds and
//! answers [`ErrorCode::TooLarge`] / [`ErrorCode::Malformed`]; it never panics.

use rkyv::{Archive, Deserialize, Serialize};

use crate::error::DecodeError;
use crate::frame::{Decoder, HEADER_LEN, Header};

/// The largest client frame, header included, in either direction. Clients and servers
/// both refuse (and close the connection on) a frame whose header claims more, before
/// reserving any memory for it.
pub const CLIENT_FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The largest body of a client frame (the frame limit less the fixed header).
pub const CLIENT_BODY_BYTES_MAX: usize = CLIENT_FRAME_BYTES_MAX - HEADER_LEN;

/// Client frames carry no cluster label (clients do not know it) and no keyring.
pub const CLIENT_LABEL: &[u8] = b"";

/// Checks the first [`HEADER_LEN`] bytes of a client frame read from a stream, against
/// [`CLIENT_BODY_BYTES_MAX`]; the caller then reads `frame_len() - HEADER_LEN` more bytes.
pub fn parse_client_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    Header::parse(bytes, CLIENT_BODY_BYTES_MAX)
}

/// The decoder of client frames: empty label, [`CLIENT_BODY_BYTES_MAX`].
pub fn client_decoder() -> Decoder {
    Decoder::new(CLIENT_LABEL, CLIENT_BODY_BYTES_MAX)
}

impl ClientOp {
    /// The key the operation addresses (`None` for [`ClientOp::Info`]).
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            ClientOp::Put { key, .. }
            | ClientOp::Get { key, .. }
            | ClientOp::Delete { key }
            | ClientOp::Cas { key, .. } => Some(key),
            ClientOp::Info => None,
        }
    }

    /// Whether the operation changes state (so an interrupted one has an unknown outcome).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            ClientOp::Put { .. } | ClientOp::Delete { .. } | ClientOp::Cas { .. }
        )
    }

    /// The operation's name, for messages and counters.
    pub fn name(&self) -> &'static str {
        match self {
            ClientOp::Put { .. } => "put",
            ClientOp::Get { .. } => "get",
            ClientOp::Delete { .. } => "delete",
            ClientOp::Cas { .. } => "cas",
            ClientOp::Info => "info",
        }
    }
}

/// How a read is served.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum Consistency {
    /// ReadIndex: the leader confirms its leadership with a heartbeat round, then serves
    /// once it applied up to the read index. Linearizable without clock assumptions.
    Linearizable = 0,
    /// Leader lease: served by the leader without a round while its lease holds;
    /// linearizable as long as clocks drift within the configured bound.
    Lease = 1,
    /// Any replica answers from what it has applied; may be stale.
    Stale = 2,
}

pub use self::enums::{ClientOp, ClientResult};

/// The enums with struct variants: rkyv derives resolver types for them whose fields carry
/// no docs, hence the allowance (the types themselves are documented).
#[allow(missing_docs)]
mod enums {
    use rkyv::{Archive, Deserialize, Serialize};

    use super::{ClusterInfo, Consistency, ErrorCode};

    /// What a request asks for.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    #[rkyv(derive(Debug))]
    pub enum ClientOp {
        /// Sets `key` to `value`.
        Put {
            /// Key.
            key: Vec<u8>,
            /// Value.
            value: Vec<u8>,
        },
        /// Reads `key`.
        Get {
            /// Key.
            key: Vec<u8>,
            /// How the read is served.
            consistency: Consistency,
        },
        /// Removes `key`.
        Delete {
            /// Key.
            key: Vec<u8>,
        },
        /// Sets `key` to `new` if its current value is `expected` (`None`: absent).
        Cas {
            /// Key.
            key: Vec<u8>,
            /// The value required.
            expected: Option<Vec<u8>>,
            /// The value set on success.
            new: Vec<u8>,
        },
        /// The cluster's shape ([`ClientResult::Info`]).
        Info,
    }

    /// The outcome of a request.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    #[rkyv(derive(Debug))]
    pub enum ClientResult {
        /// A put or delete was applied.
        Done,
        /// The value read (`None`: absent).
        Value(Option<Vec<u8>>),
        /// A compare-and-swap was applied; whether it swapped.
        Cas {
            /// The expected value matched and the new one was set.
            swapped: bool,
        },
        /// This node does not lead the key's group: definitely not done here.
        NotLeader {
            /// The group.
            group: u64,
            /// Leader hint (0: unknown).
            leader: u64,
            /// The leader's base address (empty: unknown).
            leader_addr: String,
        },
        /// Answer to [`ClientOp::Info`].
        Info(ClusterInfo),
        /// A failure: see the code.
        Error {
            /// What kind of failure.
            code: ErrorCode,
            /// What happened, for a human.
            message: String,
        },
    }
}

/// One request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ClientRequest {
    /// Chosen by the client, echoed in the response (unique among its requests in flight
    /// on the connection).
    pub id: u64,
    /// The operation.
    pub op: ClientOp,
}

/// Why a request failed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum ErrorCode {
    /// No leader is known for the group yet (an election is running): retry shortly.
    Unavailable = 0,
    /// A bound was reached (requests in flight on the connection, uncommitted entries, reads
    /// waiting): retry after some requests complete.
    Busy = 1,
    /// A key or value exceeds the server's bound.
    TooLarge = 2,
    /// The request does not make sense (empty key, unknown operation).
    Malformed = 3,
    /// The request reached a shard that does not own its group: see [`shard_of_group`].
    WrongShard = 4,
    /// The node is shutting down.
    ShuttingDown = 5,
    /// The outcome is unknown: the write may or may not have taken effect (leadership was
    /// lost before it was applied, or it took too long).
    Unknown = 6,
    /// A failure inside the node (its log failed); the message says what.
    Internal = 7,
}

/// A member of the cluster and where its clients connect (shard 0's address; shard `s`
/// is at the same host, port + `s`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct NodeAddr {
    /// Node id.
    pub id: u64,
    /// `host:port` of the node's base address.
    pub addr: String,
}

/// The cluster's shape, as one node sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ClusterInfo {
    /// The answering node's id.
    pub node: u64,
    /// Raft groups, numbered `1..=groups`.
    pub groups: u64,
    /// Shards of every node.
    pub shards: u32,
    /// Every node of the cluster.
    pub nodes: Vec<NodeAddr>,
}

/// One response.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ClientResponse {
    /// The request's id.
    pub id: u64,
    /// The outcome.
    pub result: ClientResult,
}

/// The group (`1..=groups`) that owns `key`: CRC32C of the key modulo the group count.
/// Clients and servers must agree on it; it is part of the protocol.
pub fn group_of_key(key: &[u8], groups: u64) -> u64 {
    1 + u64::from(crc32c::crc32c(key)) % groups.max(1)
}

/// The shard (`0..shards`) that hosts `group` on every node. Groups are numbered densely,
/// so the remainder spreads them evenly over the shards.
pub fn shard_of_group(group: u64, shards: u32) -> u32 {
    (group.saturating_sub(1) % u64::from(shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_round_trip_under_the_limit() {
        let req = ClientRequest {
            id: 7,
            op: ClientOp::Cas {
                key: b"k".to_vec(),
                expected: None,
                new: b"v".to_vec(),
            },
        };
        assert_eq!(req.op.key(), Some(&b"k"[..]));
        assert!(req.op.is_write());
        assert!(!ClientOp::Info.is_write());
        let mut enc = crate::Encoder::new(CLIENT_LABEL);
        let mut batch = enc.batch(None, CLIENT_FRAME_BYTES_MAX);
        assert!(batch.push(&req).unwrap());
        let frame = batch.finish().unwrap();
        let header = parse_client_header(frame).unwrap();
        assert_eq!(header.frame_len(), frame.len());
        let mut buf = rkyv::util::AlignedVec::<16>::new();
        buf.extend_from_slice(frame);
        let decoded = client_decoder().decode(&mut buf, None).unwrap();
        let got: Vec<_> = decoded
            .messages()
            .map(|m| m.unwrap().to_owned().unwrap())
            .collect();
        assert_eq!(got, vec![crate::Message::ClientRequest(req)]);
        // A header claiming more than the limit is refused before anything is read.
        let mut big = frame[..HEADER_LEN].to_vec();
        big[16..20].copy_from_slice(&(CLIENT_BODY_BYTES_MAX as u32 + 1).to_le_bytes());
        assert!(matches!(
            parse_client_header(&big),
            Err(DecodeError::Oversized { .. })
        ));
    }

    #[test]
    fn groups_and_shards_are_in_range() {
        for groups in [1u64, 2, 8, 1000] {
            for k in 0..200u32 {
                let g = group_of_key(&k.to_le_bytes(), groups);
                assert!((1..=groups).contains(&g));
                for shards in [1u32, 2, 3, 16] {
                    assert!(shard_of_group(g, shards) < shards);
                }
            }
        }
        assert_eq!(group_of_key(b"x", 0), 1);
        assert_eq!(shard_of_group(0, 0), 0);
        // Dense groups spread evenly.
        let per_shard: Vec<usize> = (0..4)
            .map(|s| (1..=8).filter(|&g| shard_of_group(g, 4) == s).count())
            .collect();
        assert_eq!(per_shard, vec![2, 2, 2, 2]);
    }
}

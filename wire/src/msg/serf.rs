//! Serf-level messages: user events, queries, intents and key management, ordered by
//! Lamport clocks.

use std::net::SocketAddr;

use rkyv::{Archive, Deserialize, Serialize};

/// A member intends to join (Serf): carries the member's Lamport time so that a stale leave
/// cannot override a newer join.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct JoinIntent {
    /// Member Lamport time of the intent.
    pub ltime: u64,
    /// The member.
    pub node: String,
}

/// A member intends to leave (Serf).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct LeaveIntent {
    /// Member Lamport time of the intent.
    pub ltime: u64,
    /// The member.
    pub node: String,
    /// Remove it from the member list at once rather than after the reap time.
    pub prune: bool,
}

/// A user event, disseminated by gossip and delivered once per member.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct UserEvent {
    /// Event Lamport time.
    pub ltime: u64,
    /// Event name.
    pub name: String,
    /// Event payload (bounded by configuration; 512 bytes by default).
    pub payload: Vec<u8>,
    /// Whether events of the same name may be coalesced.
    pub coalesce: bool,
}

/// A filter restricting which members answer a query.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum QueryFilter {
    /// Only these members.
    Nodes(Vec<String>),
    /// Only members whose tag matches a regular expression.
    Tag(TagFilter),
}

/// Members whose tag `tag` matches the regular expression `expr`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TagFilter {
    /// Tag name.
    pub tag: String,
    /// Regular expression the tag value must match.
    pub expr: String,
}

/// A query: delivered like an event, answered by each matching member.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Query {
    /// Query Lamport time.
    pub ltime: u64,
    /// Query id, unique per originator.
    pub id: u32,
    /// Where responses go.
    pub addr: SocketAddr,
    /// Name of the originator.
    pub source: String,
    /// Filters; all must match.
    pub filters: Vec<QueryFilter>,
    /// Bit flags: 1 = ack requested, 2 = do not rebroadcast.
    pub flags: u32,
    /// How many members relay each response (in addition to the direct send).
    pub relay_factor: u8,
    /// Deadline after which responses are ignored, in milliseconds from issue.
    pub timeout_ms: u32,
    /// Query name (internal queries start with `_serf_`).
    pub name: String,
    /// Query payload.
    pub payload: Vec<u8>,
}

/// A response (or ack) to a query.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct QueryResponse {
    /// Lamport time of the query being answered.
    pub ltime: u64,
    /// Id of the query being answered.
    pub id: u32,
    /// Name of the responder.
    pub from: String,
    /// Bit flags: 1 = this is an ack, not a response.
    pub flags: u32,
    /// Response payload (bounded by configuration).
    pub payload: Vec<u8>,
}

/// A message to be forwarded to `dest` by the receiver (query response relay).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Relay {
    /// Final destination.
    pub dest: SocketAddr,
    /// Name of the final destination.
    pub dest_name: String,
    /// The framed message to forward, as bytes.
    pub frame: Vec<u8>,
}

/// A keyring operation, carried in an internal query.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum KeyOp {
    /// Add a key to the keyring.
    Install = 0,
    /// Make a key the primary (encrypting) key.
    Use = 1,
    /// Remove a key (never the primary).
    Remove = 2,
    /// List the keys.
    List = 3,
}

/// Key-management request (payload of an internal query).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct KeyRequest {
    /// What to do.
    pub op: KeyOp,
    /// The key, for install, use and remove.
    pub key: Option<[u8; 32]>,
}

/// Key-management response from one member.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct KeyResponse {
    /// Whether the operation succeeded on this member.
    pub ok: bool,
    /// Why not, when it did not.
    pub message: String,
    /// The member's keys (for list).
    pub keys: Vec<[u8; 32]>,
    /// The member's primary key (for list).
    pub primary: Option<[u8; 32]>,
}

//! Raft messages. Every message names its group (multi-raft: many groups share a transport),
//! its sender and receiver (node ids), and the sender's term.

use rkyv::{Archive, Deserialize, Serialize};

/// What an entry carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[rkyv(derive(Debug, PartialEq, Eq))]
#[repr(u8)]
pub enum EntryKind {
    /// An application command.
    Normal = 0,
    /// A configuration change (the payload encodes it).
    Config = 1,
    /// The no-op a new leader appends to commit entries of earlier terms.
    Noop = 2,
}

/// One log entry.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Entry {
    /// Log index (1-based).
    pub index: u64,
    /// Term in which the entry was created.
    pub term: u64,
    /// What the payload is.
    pub kind: EntryKind,
    /// The command.
    pub payload: Vec<u8>,
}

/// Routing fields every Raft message carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct RaftHeader {
    /// The Raft group.
    pub group: u64,
    /// Sender node id.
    pub from: u64,
    /// Receiver node id.
    pub to: u64,
    /// Sender's current term.
    pub term: u64,
}

/// AppendEntries (also the heartbeat when `entries` is empty).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct AppendEntries {
    /// Routing.
    pub header: RaftHeader,
    /// Index of the entry before `entries`.
    pub prev_log_index: u64,
    /// Its term.
    pub prev_log_term: u64,
    /// Leader's commit index.
    pub leader_commit: u64,
    /// The entries, in index order.
    pub entries: Vec<Entry>,
}

/// Answer to AppendEntries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct AppendResponse {
    /// Routing.
    pub header: RaftHeader,
    /// Whether the entries were accepted.
    pub success: bool,
    /// On success: the highest index the follower now matches. On rejection: the
    /// `prev_log_index` that was rejected (lets the leader drop stale rejections).
    pub match_index: u64,
    /// On rejection: fast back-off hint, the index to retry from.
    pub reject_hint_index: u64,
    /// On rejection: the term of the follower's entry at `reject_hint_index` (0 if none).
    pub reject_hint_term: u64,
}

/// RequestVote, or PreVote when `pre_vote` is set (a PreVote changes no state).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct VoteRequest {
    /// Routing; for a PreVote the term is the one the candidate would campaign in.
    pub header: RaftHeader,
    /// Index of the candidate's last entry.
    pub last_log_index: u64,
    /// Its term.
    pub last_log_term: u64,
    /// This is a PreVote.
    pub pre_vote: bool,
    /// Sent after TimeoutNow: voters may disregard their leader lease.
    pub leadership_transfer: bool,
}

/// Answer to a VoteRequest.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct VoteResponse {
    /// Routing.
    pub header: RaftHeader,
    /// Whether the vote is granted.
    pub granted: bool,
    /// Answer to a PreVote.
    pub pre_vote: bool,
}

/// The membership of a group, as stored in snapshots and config entries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct ConfState {
    /// Voting members.
    pub voters: Vec<u64>,
    /// Non-voting members that receive the log.
    pub learners: Vec<u64>,
    /// During joint consensus: the outgoing voters (empty otherwise).
    pub voters_outgoing: Vec<u64>,
}

/// One chunk of a snapshot.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct InstallSnapshot {
    /// Routing.
    pub header: RaftHeader,
    /// Last index the snapshot covers.
    pub last_included_index: u64,
    /// Its term.
    pub last_included_term: u64,
    /// Membership as of the snapshot.
    pub conf: ConfState,
    /// Byte offset of this chunk in the snapshot.
    pub offset: u64,
    /// Total size of the snapshot in bytes.
    pub total_bytes: u64,
    /// The chunk.
    pub data: Vec<u8>,
    /// This is the last chunk.
    pub done: bool,
}

/// Answer to an InstallSnapshot chunk.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct SnapshotResponse {
    /// Routing.
    pub header: RaftHeader,
    /// Byte offset the follower expects next (the whole size when done).
    pub next_offset: u64,
    /// Whether the chunk was accepted.
    pub success: bool,
}

/// Leadership transfer: the receiver should campaign at once.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TimeoutNow {
    /// Routing.
    pub header: RaftHeader,
}

/// ReadIndex: a follower asks the leader for a read index (or the leader confirms its
/// leadership with a heartbeat round carrying `ctx`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ReadIndexRequest {
    /// Routing.
    pub header: RaftHeader,
    /// Opaque request context, echoed back.
    pub ctx: u64,
}

/// Answer to a ReadIndex request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct ReadIndexResponse {
    /// Routing.
    pub header: RaftHeader,
    /// The request context.
    pub ctx: u64,
    /// The read index: reads may be served once this index is applied. 0 = refused.
    pub index: u64,
}

/// Leader heartbeat (etcd's MsgHeartbeat): keeps followers from campaigning, carries a
/// commit index the follower is known to match, and a round number (`ctx`) that ReadIndex
/// and the leader lease count acknowledgements by.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct Heartbeat {
    /// Routing.
    pub header: RaftHeader,
    /// `min(leader commit, follower's match index)`.
    pub commit: u64,
    /// The leader's heartbeat round, echoed back.
    pub ctx: u64,
}

/// Answer to a [`Heartbeat`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct HeartbeatResponse {
    /// Routing.
    pub header: RaftHeader,
    /// The round being acknowledged.
    pub ctx: u64,
}

/// The first frame a node sends on a peer link (one TCP connection per shard and peer,
/// carrying every group's messages from that shard): who connects, and what it expects of
/// the node it reached. The receiver refuses the link (closes it, and logs why) when any
/// field disagrees with its own configuration.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct PeerHello {
    /// The connecting node's id.
    pub from: u64,
    /// The node id the connector believes it reached.
    pub to: u64,
    /// The shard both ends of the link serve (groups are placed on the same shard on
    /// every node).
    pub shard: u32,
    /// The connector's shard count (every node of a cluster must run the same number).
    pub shards: u32,
    /// The connector's group count (every node must host the same groups).
    pub groups: u64,
}

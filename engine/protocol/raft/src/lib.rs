//! Raft consensus core (sans-IO, deterministic), in the Ready style of etcd-io/raft and
//! raft-rs.
//!
//! [`Raft`] takes inputs — [`Raft::step`] (a message), [`Raft::tick`] (the time),
//! [`Raft::propose`], [`Raft::read_index`] / [`Raft::read_lease`],
//! [`Raft::transfer_leader`], [`Raft::change_membership`], [`Raft::persisted`],
//! [`Raft::applied`], [`Raft::snapshot_done`] — and hands back a [`Ready`]: messages that
//! may leave now, messages that may leave only once this Ready's writes are durable, the
//! hard state and entries to persist, a received snapshot to install, committed entries to
//! apply and read states to serve. It never does IO, never reads a clock (time comes with
//! every call) and draws randomness (the election timeout) only from the RNG it is given.
//!
//! Durability contract (what the driver must do with each [`Ready`], in order):
//! 1. send `messages` at once (the leader's appends go out in parallel with its own write,
//!    thesis §10.2.1);
//! 2. write `hard_state`, `snapshot` and `entries` (an entry at index `i` replaces the
//!    durable log from `i` on) — one write, in Ready order after earlier writes;
//! 3. once that write and every earlier one is durable: send `persisted_messages` and call
//!    [`Raft::persisted`] with the (index, term) of the last entry durable;
//! 4. restore the state machine from `snapshot` if any, apply `committed_entries`, serve
//!    `read_states` once applied up to their index, and call [`Raft::applied`].
//!
//! The leader counts itself in a quorum only up to its own durable index, votes and
//! acknowledgements leave only after the state they promise is durable, and a candidate's
//! requests leave only after its vote for itself is durable.
//!
//! Time: every input carries `now` (it only moves forward), and [`Raft::deadline`] says when
//! [`Raft::tick`] next has work, so a driver arms one timer instead of ticking at a period.
//!
//! Untrusted input: nothing a peer sends can make the core panic. A message that no correct
//! peer could have sent (entries that do not follow `prev_log_index`, terms or indexes past
//! [`TERM_MAX`] / [`INDEX_MAX`], acknowledgements of entries never sent, a second leader in
//! one term, ...) is refused with [`RaftError::Malformed`] before anything changes, not
//! even the clock. Assertions in the core guard only this node's own invariants.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod core;
pub mod driver;
pub mod kv;
pub mod log;
pub mod membership;
pub mod progress;

use std::sync::Arc;

use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{ConfState, Entry};

pub use self::core::Raft;
pub use self::membership::{ConfDecodeError, Membership, VoteResult, decode_conf, encode_conf};
pub use self::progress::{Progress, ProgressState};

/// Highest term a node adopts or campaigns in: a message carrying a larger term is refused
/// as [`RaftError::Malformed`] and never adopted, and a node whose term reached the bound
/// stays a follower instead of campaigning past it. Unbounded, one message with term
/// `u64::MAX` would leave its receiver in a term it could never campaign past, and every
/// `term + 1` could overflow. Honest groups never reach the bound (2^63 - 1 elections at
/// one per millisecond take 292 million years); a lying peer still can push a group to it,
/// as it can to any term (a term cannot be checked against anything), which then costs
/// liveness, never safety. A constant, not a [`Config`] field: every node of a group must
/// agree on it.
pub const TERM_MAX: u64 = i64::MAX as u64;

/// Highest log index a node accepts from a peer or appends itself (proposals past it are
/// refused with [`RaftError::Backpressure`]). Any index a node holds can be incremented, or
/// have a batch length added, without overflow.
pub const INDEX_MAX: u64 = i64::MAX as u64;

/// The routing header of a Raft message (group, sender, receiver, term); `None` for a
/// message that is not Raft's.
pub fn header_of(m: &Message) -> Option<ringleader_wire::msg::raft::RaftHeader> {
    Some(match m {
        Message::AppendEntries(x) => x.header,
        Message::AppendResponse(x) => x.header,
        Message::VoteRequest(x) => x.header,
        Message::VoteResponse(x) => x.header,
        Message::InstallSnapshot(x) => x.header,
        Message::SnapshotResponse(x) => x.header,
        Message::TimeoutNow(x) => x.header,
        Message::ReadIndexRequest(x) => x.header,
        Message::ReadIndexResponse(x) => x.header,
        Message::Heartbeat(x) => x.header,
        Message::HeartbeatResponse(x) => x.header,
        _ => return None,
    })
}

/// Tunables of one Raft group. Every bound is here, with its unit in its name.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Raft group (multi-raft: every message names it).
    pub group: u64,
    /// Minimum election timeout; each timeout is drawn uniformly from `[t, 2t)`.
    pub election_timeout_ms: u64,
    /// Leader heartbeat interval (well below the election timeout).
    pub heartbeat_interval_ms: u64,
    /// PreVote (thesis §9.6): a node that cannot win does not bump terms.
    pub pre_vote: bool,
    /// CheckQuorum: a leader that has not heard from a quorum for an election timeout
    /// steps down, and followers that heard from a leader recently refuse votes.
    pub check_quorum: bool,
    /// Appends in flight per follower in Replicate state.
    pub inflight_msgs_max: usize,
    /// Bytes of entries in flight per follower.
    pub inflight_bytes_max: u64,
    /// Entries in one append message.
    pub msg_entries_max: usize,
    /// Bytes of entries in one append message (at least one entry is always sent).
    pub msg_bytes_max: u64,
    /// Uncommitted entries the leader accepts before refusing proposals.
    pub uncommitted_entries_max: u64,
    /// Committed entries handed out in one Ready.
    pub apply_entries_max: usize,
    /// ReadIndex requests waiting for a heartbeat quorum.
    pub pending_reads_max: usize,
    /// Bytes of one InstallSnapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Largest snapshot a follower accepts.
    pub snapshot_bytes_max: u64,
    /// Clock drift bound for lease reads, in parts per thousand: the lease lasts
    /// `election_timeout × (1 − drift)` from the send time of the heartbeat round a quorum
    /// acknowledged. Lease reads assume no clock runs slower than that bound.
    pub lease_clock_drift_permille: u64,
    /// How long a leader waits, after its commit index advances, before it tells followers
    /// that have nothing else coming a new commit index with an append of its own (a
    /// commit-only append). Every append and heartbeat carries the commit index anyway;
    /// under load the next append does it and the notice is never sent, which saves every
    /// follower a turn and an answer per commit. Followers' state machines lag the
    /// leader's by at most this (plus a message delay) when the group goes quiet.
    pub commit_notice_delay_us: u64,
    /// This node lost its durable state (a wiped or replaced disk) and rejoins under its old
    /// id: it forgot its log and its votes, so counting it in a quorum could commit a
    /// leader that misses acknowledged writes. Until it is caught up it neither votes nor
    /// campaigns. Caught up means: two election timeouts have passed since it started
    /// (messages sent to its former self have drained), and its commit index has reached
    /// the highest commit index the current term's leader has told it, at an entry of that
    /// term (so every entry committed before the loss, in this term or an earlier one, is
    /// in its log). See [`Raft::catching_up`].
    pub catch_up_before_voting: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            group: 1,
            election_timeout_ms: 150,
            heartbeat_interval_ms: 30,
            pre_vote: true,
            check_quorum: true,
            inflight_msgs_max: 64,
            inflight_bytes_max: 4 << 20,
            msg_entries_max: 1024,
            msg_bytes_max: 1 << 20,
            uncommitted_entries_max: 16 * 1024,
            apply_entries_max: 4096,
            pending_reads_max: 4096,
            snapshot_chunk_bytes: 64 * 1024,
            snapshot_bytes_max: 1 << 30,
            lease_clock_drift_permille: 100,
            commit_notice_delay_us: 2_000,
            catch_up_before_voting: false,
        }
    }
}

/// What must be durable before a vote or an acknowledgement leaves: the current term and
/// the vote cast in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Candidate voted for in `term` (0 = none).
    pub vote: u64,
}

/// A snapshot of the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Last index covered.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Membership as of `index`.
    pub conf: ConfState,
    /// The state machine's bytes.
    pub data: Arc<[u8]>,
}

/// A read that may be served once the state machine has applied `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's context.
    pub ctx: u64,
    /// The read index; 0 means refused (no leader, leadership lost): retry elsewhere.
    pub index: u64,
}

/// The role of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes (no term change yet).
    PreCandidate,
    /// Asking for votes in a new term.
    Candidate,
    /// Leads its term.
    Leader,
}

/// A membership change (one server at a time, thesis §4.1; the quorum code also handles
/// joint configurations carried in snapshots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfChange {
    /// Add a voter, or promote a learner.
    AddVoter(u64),
    /// Add a non-voting learner.
    AddLearner(u64),
    /// Remove a member.
    Remove(u64),
}

/// The outputs of the core since the last [`Raft::ready`].
#[derive(Debug, Default)]
pub struct Ready {
    /// Messages that may leave now.
    pub messages: Vec<Message>,
    /// Term and vote to persist (when changed).
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader: persist it and restore the state machine.
    pub snapshot: Option<Snapshot>,
    /// Entries to persist; the first one's index says where the durable log is replaced.
    pub entries: Vec<Entry>,
    /// Messages that may leave only after this Ready's writes (and all earlier) are durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads to serve once applied up to their index.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// Whether this Ready asks for a write.
    pub fn must_write(&self) -> bool {
        self.hard_state.is_some() || self.snapshot.is_some() || !self.entries.is_empty()
    }
}

/// Durable state a node restarts from.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// Term and vote.
    pub hard_state: HardState,
    /// The latest durable snapshot.
    pub snapshot: Option<Snapshot>,
    /// Durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// Errors of the core's inputs. None of them changes the core's state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RaftError {
    /// Only the leader accepts this.
    #[error("not the leader (leader hint {0})")]
    NotLeader(u64),
    /// A leadership transfer is in progress.
    #[error("leadership transfer in progress")]
    Transferring,
    /// The uncommitted log is at its bound.
    #[error("too many uncommitted entries")]
    Backpressure,
    /// The leader has not committed an entry of its term yet.
    #[error("leader has not committed in its term yet")]
    NotReady,
    /// Too many reads wait already.
    #[error("too many pending reads")]
    TooManyReads,
    /// A configuration change is still uncommitted, or the change is invalid.
    #[error("invalid or concurrent membership change")]
    BadConfChange,
    /// The message is for another group or node, or is not a Raft message.
    #[error("message not for this group/node")]
    Misrouted,
    /// Durable state handed to a restart is inconsistent.
    #[error("corrupt recovered state: {0}")]
    Corrupt(&'static str),
    /// The snapshot index is not applied or not durable yet.
    #[error("snapshot index not applied and durable")]
    SnapshotAhead,
    /// A peer's message that no correct peer sends (says what is wrong). The node's state,
    /// clock included, is exactly as before.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}

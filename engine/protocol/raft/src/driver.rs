//! The Ready driver: the one piece of code that turns a group's [`Ready`](crate::Ready)
//! into sends, writes, applies and replies, in the order of the core's durability contract
//! (see [`crate`]). The live shards (`ringleader_engine::multiraft`) and the simulator
//! (`ringleader_sim::raft`) both run every group through it, so every simulated seed
//! exercises the code that runs in production.
//!
//! It does no IO: each call appends what must happen to an [`Outbox`] — messages to send
//! now, writes to make durable, snapshots to store, replies to clients — and the caller
//! carries them out (the live shard gathers the writes of all its groups into one group
//! commit; the simulator queues them on its simulated disk). When writes become durable
//! the caller reports it with [`GroupDriver::durable`], and the driver releases what was
//! waiting for them: the messages that promise durability and the core's `persisted`.
//!
//! It must never send a message from `persisted_messages` before the write it follows is
//! durable, never acknowledge a write before the entry is applied in the term it was
//! proposed in, and never serve a read before the state machine applied its read index.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use rand::RngCore;
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{ConfState, Entry, EntryKind};

use super::{Config, HardState, Raft, RaftError, Recovered, Role, Snapshot};

/// A replicated state machine: what a Raft group replicates. The key-value store
/// ([`crate::kv::Kv`]) is one; an embedding program plugs in its own.
pub trait StateMachine {
    /// The result of applying one command, handed back to whoever proposed it.
    type Output;
    /// A read query.
    type Read;
    /// The answer to a read.
    type ReadOutput;

    /// Applies committed commands (entries of kind `Normal`, in log order, indexes
    /// increasing) and pushes exactly one output per entry onto `out`. The same entries
    /// are applied in the same order on every replica: the outcome must depend on nothing
    /// else (no clock, no randomness). A payload this machine cannot decode must produce an
    /// error output, never a panic.
    fn apply(&mut self, entries: &[Entry], out: &mut Vec<Self::Output>);

    /// Answers a read from the applied state.
    fn read(&self, query: &Self::Read) -> Self::ReadOutput;

    /// The whole applied state as bytes (for a snapshot).
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state with a snapshot's bytes (untrusted: from a peer or the disk).
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
}

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadConsistency {
    /// ReadIndex (thesis §6.4): linearizable with no clock assumption.
    Linearizable,
    /// Leader lease (thesis §6.4.1): linearizable while clocks drift within the bound.
    Lease,
    /// Whatever this replica applied: may be stale.
    Stale,
}

/// Why a request was definitely not carried out: the caller may retry elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This node does not lead the group; the hint is the leader it knows (0: none).
    NotLeader(u64),
    /// A bound was reached (uncommitted entries, pending reads) or a leadership transfer
    /// is running: retry shortly.
    Busy,
    /// The leader has not committed an entry of its term yet: retry shortly.
    NotReady,
}

impl Refusal {
    fn of(e: &RaftError) -> Refusal {
        match e {
            RaftError::NotLeader(hint) => Refusal::NotLeader(*hint),
            RaftError::NotReady => Refusal::NotReady,
            _ => Refusal::Busy,
        }
    }
}

/// The outcome of a proposal or a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<O, R> {
    /// The command was committed and applied at (`index`, `term`).
    Applied {
        /// Log index.
        index: u64,
        /// Term.
        term: u64,
        /// What the state machine returned.
        output: O,
    },
    /// The read's answer.
    Read(R),
    /// Definitely not done.
    Refused(Refusal),
    /// The outcome is unknown (the request outlived its deadline).
    Unknown,
}

/// One write a group asks for: make it durable, in order after the group's earlier writes,
/// then report its `seq` to [`GroupDriver::durable`].
#[derive(Debug)]
pub struct GroupWrite {
    /// The group.
    pub group: u64,
    /// Per-group write sequence number (1, 2, ...).
    pub seq: u64,
    /// New term and vote.
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader (store it before or with this write's entries).
    pub snapshot: Option<Snapshot>,
    /// Entries; the first one's index says where the durable log is replaced.
    pub entries: Vec<Entry>,
}

/// What the caller must carry out, gathered over any number of driver calls (of any
/// number of groups).
#[derive(Debug)]
pub struct Outbox<T, O, R> {
    /// Messages to send now, in order.
    pub sends: Vec<Message>,
    /// Writes to make durable.
    pub writes: Vec<GroupWrite>,
    /// Snapshots this node took: store them durably (the log may be compacted up to a
    /// snapshot only once it is stored).
    pub snapshots: Vec<(u64, Snapshot)>,
    /// Replies to deliver.
    pub replies: Vec<(T, Reply<O, R>)>,
    /// When `trace_applied` is set: every entry applied, with the term the node was in.
    pub applied: Vec<(u64, Entry, u64)>,
    /// Record applied entries in `applied` (the simulator's checks; off in production).
    pub trace_applied: bool,
    /// Snapshots received from a leader and restored into the state machine.
    pub snapshots_restored: u64,
}

impl<T, O, R> Default for Outbox<T, O, R> {
    fn default() -> Self {
        Outbox {
            sends: Vec::new(),
            writes: Vec::new(),
            snapshots: Vec::new(),
            replies: Vec::new(),
            applied: Vec::new(),
            trace_applied: false,
            snapshots_restored: 0,
        }
    }
}

impl<T, O, R> Outbox<T, O, R> {
    /// Whether there is anything to carry out.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
            && self.writes.is_empty()
            && self.snapshots.is_empty()
            && self.replies.is_empty()
    }
}

/// Bounds and policies of a driver. Units are in the names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// Take a snapshot once this many entries were applied since the last one (0: never).
    pub snapshot_every_entries: u64,
    /// Proposals and reads waiting for an outcome, at most (beyond: refused as busy).
    pub pending_max: usize,
    /// Ready rounds one call may run before it stops (a bound, never reached in practice:
    /// each round drains the core).
    pub ready_rounds_max: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            snapshot_every_entries: 100_000,
            pending_max: 1 << 16,
            ready_rounds_max: 64,
        }
    }
}

/// Messages from peers the driver dropped, by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// Messages for another group or node, or not Raft messages.
    pub dropped_misrouted: u64,
    /// Messages the core refused as malformed or inconsistent.
    pub dropped_malformed: u64,
    /// Snapshots from a leader that the state machine could not restore.
    pub snapshot_restore_failures: u64,
    /// Proposals accepted.
    pub proposals: u64,
    /// Reads served.
    pub reads: u64,
    /// Snapshots taken.
    pub snapshots_taken: u64,
}

#[derive(Debug)]
struct Unsynced {
    seq: u64,
    /// The last entry this write leaves at the end of the durable log, if it wrote any.
    last: Option<(u64, u64)>,
    /// Messages that may leave once this write is durable.
    msgs: Vec<Message>,
}

struct PendingRead<T, Q> {
    token: T,
    query: Q,
    deadline: Time,
}

/// One Raft group with its state machine, its pending client operations and its writes in
/// flight. `R` is the core's RNG, `S` the state machine, `T` the caller's reply token.
pub struct GroupDriver<R: RngCore, S: StateMachine, T> {
    raft: Raft<R>,
    sm: S,
    cfg: DriverConfig,
    write_seq: u64,
    durable_seq: u64,
    unsynced: VecDeque<Unsynced>,
    /// index -> (term proposed in, token, deadline)
    proposals: HashMap<u64, (u64, T, Time)>,
    /// ctx -> read waiting for its read index
    reads: HashMap<u64, PendingRead<T, S::Read>>,
    /// (read index, read) waiting to be applied up to
    ready_reads: Vec<(u64, PendingRead<T, S::Read>)>,
    next_ctx: u64,
    applied_since_snapshot: u64,
    counters: DriverCounters,
    outputs: Vec<S::Output>,
}

impl<R: RngCore, S: StateMachine, T> GroupDriver<R, S, T> {
    /// A group restarting from `recovered` durable state (empty for a new one), with the
    /// state machine restored from `recovered.snapshot` (if any) by this call.
    #[allow(clippy::too_many_arguments)] // each is one of the core's own inputs
    pub fn new(
        raft_cfg: Config,
        cfg: DriverConfig,
        id: u64,
        bootstrap: ConfState,
        recovered: Recovered,
        mut sm: S,
        rng: R,
        now: Time,
    ) -> Result<Self, RaftError> {
        if let Some(s) = &recovered.snapshot {
            sm.restore(&s.data)
                .map_err(|_| RaftError::Corrupt("durable snapshot does not restore"))?;
        }
        let snap_index = recovered.snapshot.as_ref().map_or(0, |s| s.index);
        let mut raft = Raft::new(raft_cfg, id, bootstrap, recovered, rng, now)?;
        // The state machine holds the snapshot: nothing before it is applied again.
        raft.applied(snap_index);
        Ok(GroupDriver {
            raft,
            sm,
            cfg,
            write_seq: 0,
            durable_seq: 0,
            unsynced: VecDeque::new(),
            proposals: HashMap::new(),
            reads: HashMap::new(),
            ready_reads: Vec::new(),
            next_ctx: 0,
            applied_since_snapshot: 0,
            counters: DriverCounters::default(),
            outputs: Vec::new(),
        })
    }

    /// The core (read-only: every input goes through the driver).
    pub fn raft(&self) -> &Raft<R> {
        &self.raft
    }

    /// The state machine.
    pub fn state_machine(&self) -> &S {
        &self.sm
    }

    /// Counters since start.
    pub fn counters(&self) -> DriverCounters {
        self.counters
    }

    /// The group id.
    pub fn group(&self) -> u64 {
        self.raft.config().group
    }

    /// When [`GroupDriver::tick`] must next be called.
    pub fn deadline(&self) -> Time {
        self.raft.deadline()
    }

    /// Proposals and reads waiting for an outcome.
    pub fn pending(&self) -> usize {
        self.proposals.len() + self.reads.len() + self.ready_reads.len()
    }

    /// Writes handed out and not yet reported durable.
    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    /// A message from a peer. Misrouted and malformed messages are counted and dropped.
    pub fn step(&mut self, now: Time, msg: Message, out: &mut Outbox<T, S::Output, S::ReadOutput>) {
        match self.raft.step(now, msg) {
            Ok(()) => {}
            Err(RaftError::Misrouted) => self.counters.dropped_misrouted += 1,
            Err(_) => self.counters.dropped_malformed += 1,
        }
        self.process(now, out);
    }

    /// Time passes: timers due by `now` fire; requests past their deadline are answered
    /// [`Reply::Unknown`] (proposals) or refused (reads).
    pub fn tick(&mut self, now: Time, out: &mut Outbox<T, S::Output, S::ReadOutput>) {
        self.raft.tick(now);
        self.expire(now, out);
        self.process(now, out);
    }

    /// Proposes a command; its outcome comes back as a reply with `token`, at the latest
    /// by `deadline` (then [`Reply::Unknown`]).
    pub fn propose(
        &mut self,
        now: Time,
        command: Vec<u8>,
        token: T,
        deadline: Time,
        out: &mut Outbox<T, S::Output, S::ReadOutput>,
    ) {
        if self.pending() >= self.cfg.pending_max {
            out.replies.push((token, Reply::Refused(Refusal::Busy)));
            return;
        }
        match self.raft.propose([command]) {
            Ok((index, _)) => {
                self.counters.proposals += 1;
                let term = self.raft.term();
                self.track(index, term, token, deadline, out);
            }
            Err(e) => out.replies.push((token, Reply::Refused(Refusal::of(&e)))),
        }
        self.process(now, out);
    }

    /// Proposes a batch of commands (one core call, one Ready): each gets its own reply.
    pub fn propose_batch(
        &mut self,
        now: Time,
        batch: Vec<(Vec<u8>, T, Time)>,
        out: &mut Outbox<T, S::Output, S::ReadOutput>,
    ) {
        let room = self.cfg.pending_max.saturating_sub(self.pending());
        let mut batch = batch;
        if batch.len() > room {
            for (_, token, _) in batch.drain(room..) {
                out.replies.push((token, Reply::Refused(Refusal::Busy)));
            }
        }
        if batch.is_empty() {
            return;
        }
        let mut commands = Vec::with_capacity(batch.len());
        let mut tokens = Vec::with_capacity(batch.len());
        for (c, t, d) in batch {
            commands.push(c);
            tokens.push((t, d));
        }
        match self.raft.propose(commands) {
            Ok((first, _)) => {
                let term = self.raft.term();
                self.counters.proposals += tokens.len() as u64;
                for (i, (t, d)) in tokens.into_iter().enumerate() {
                    self.track(first + i as u64, term, t, d, out);
                }
            }
            Err(e) => {
                let r = Refusal::of(&e);
                for (t, _) in tokens {
                    out.replies.push((t, Reply::Refused(r)));
                }
            }
        }
        self.process(now, out);
    }

    /// Remembers who waits for the entry at `index`. A proposal still waiting there was
    /// overwritten (a new leader truncated this node's log, and this node, leading now,
    /// reused the index): the entry at that index is another one, so the old proposal can
    /// never commit and is refused.
    fn track(
        &mut self,
        index: u64,
        term: u64,
        token: T,
        deadline: Time,
        out: &mut Outbox<T, S::Output, S::ReadOutput>,
    ) {
        if let Some((_, old, _)) = self.proposals.insert(index, (term, token, deadline)) {
            let hint = self.raft.leader_id();
            out.replies
                .push((old, Reply::Refused(Refusal::NotLeader(hint))));
        }
    }

    /// A read, answered once `consistency` allows (stale reads at once).
    pub fn read(
        &mut self,
        now: Time,
        query: S::Read,
        consistency: ReadConsistency,
        token: T,
        deadline: Time,
        out: &mut Outbox<T, S::Output, S::ReadOutput>,
    ) {
        if consistency == ReadConsistency::Stale {
            self.counters.reads += 1;
            out.replies.push((token, Reply::Read(self.sm.read(&query))));
            return;
        }
        if self.pending() >= self.cfg.pending_max {
            out.replies.push((token, Reply::Refused(Refusal::Busy)));
            return;
        }
        self.next_ctx += 1;
        let ctx = self.next_ctx;
        let res = match consistency {
            ReadConsistency::Lease if self.raft.role() == Role::Leader => self.raft.read_lease(ctx),
            ReadConsistency::Lease => Err(RaftError::NotLeader(self.raft.leader_id())),
            _ => self.raft.read_index(ctx),
        };
        match res {
            Ok(()) => {
                self.reads.insert(
                    ctx,
                    PendingRead {
                        token,
                        query,
                        deadline,
                    },
                );
            }
            Err(e) => out.replies.push((token, Reply::Refused(Refusal::of(&e)))),
        }
        self.process(now, out);
    }

    /// Proposes a one-server membership change (leader only); returns the index of its
    /// config entry. It takes effect when that entry is appended (thesis §4.1).
    pub fn change_membership(
        &mut self,
        now: Time,
        change: super::ConfChange,
        out: &mut Outbox<T, S::Output, S::ReadOutput>,
    ) -> Result<u64, RaftError> {
        let r = self.raft.change_membership(change);
        self.process(now, out);
        r
    }

    /// Starts handing leadership to `to` (leader only).
    pub fn transfer_leader(
        &mut self,
        now: Time,
        to: u64,
        out: &mut Outbox<T, S::Output, S::ReadOutput>,
    ) -> Result<(), RaftError> {
        let r = self.raft.transfer_leader(to);
        self.process(now, out);
        r
    }

    /// Writes up to `seq` are durable.
    pub fn durable(&mut self, now: Time, seq: u64, out: &mut Outbox<T, S::Output, S::ReadOutput>) {
        let mut last = None;
        while let Some(w) = self.unsynced.front() {
            if w.seq > seq {
                break;
            }
            let Some(w) = self.unsynced.pop_front() else {
                break;
            };
            if w.last.is_some() {
                last = w.last;
            }
            out.sends.extend(w.msgs);
        }
        self.durable_seq = self.durable_seq.max(seq);
        if let Some((index, term)) = last {
            self.raft.persisted(index, term);
        }
        self.process(now, out);
    }

    /// Drains the core's outputs into `out`, then takes a snapshot if one is due.
    fn process(&mut self, now: Time, out: &mut Outbox<T, S::Output, S::ReadOutput>) {
        for _ in 0..self.cfg.ready_rounds_max {
            if !self.raft.has_ready() {
                break;
            }
            let rd = self.raft.ready();
            out.sends.extend(rd.messages);
            if let Some(s) = &rd.snapshot {
                match self.sm.restore(&s.data) {
                    Ok(()) => out.snapshots_restored += 1,
                    Err(_) => self.counters.snapshot_restore_failures += 1,
                }
                self.applied_since_snapshot = 0;
                // Reads waiting for an index the snapshot covers can be served from it.
            }
            let must_write =
                rd.hard_state.is_some() || rd.snapshot.is_some() || !rd.entries.is_empty();
            if must_write {
                self.write_seq += 1;
                let last = match (rd.entries.last(), &rd.snapshot) {
                    (Some(e), _) => Some((e.index, e.term)),
                    (None, Some(s)) => Some((s.index, s.term)),
                    (None, None) => None,
                };
                self.unsynced.push_back(Unsynced {
                    seq: self.write_seq,
                    last,
                    msgs: rd.persisted_messages,
                });
                out.writes.push(GroupWrite {
                    group: self.group(),
                    seq: self.write_seq,
                    hard_state: rd.hard_state,
                    snapshot: rd.snapshot,
                    entries: rd.entries,
                });
            } else if !rd.persisted_messages.is_empty() {
                // They promise what earlier writes hold: they wait for those.
                match self.unsynced.back_mut() {
                    Some(w) => w.msgs.extend(rd.persisted_messages),
                    None => out.sends.extend(rd.persisted_messages),
                }
            }
            self.apply(rd.committed_entries, out);
            for rs in rd.read_states {
                let Some(r) = self.reads.remove(&rs.ctx) else {
                    continue;
                };
                if rs.index == 0 {
                    let hint = self.raft.leader_id();
                    out.replies
                        .push((r.token, Reply::Refused(Refusal::NotLeader(hint))));
                } else {
                    self.ready_reads.push((rs.index, r));
                }
            }
            self.serve_reads(out);
        }
        self.maybe_snapshot(now, out);
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Outbox<T, S::Output, S::ReadOutput>) {
        let Some(last) = entries.last().map(|e| e.index) else {
            return;
        };
        let term_now = self.raft.term();
        if out.trace_applied {
            for e in &entries {
                out.applied.push((self.group(), e.clone(), term_now));
            }
        }
        // Runs of normal entries go to the state machine as one batch.
        let mut i = 0;
        while i < entries.len() {
            if entries[i].kind != EntryKind::Normal {
                self.answer(entries[i].index, entries[i].term, None, out);
                i += 1;
                continue;
            }
            let start = i;
            while i < entries.len() && entries[i].kind == EntryKind::Normal {
                i += 1;
            }
            let run = &entries[start..i];
            self.outputs.clear();
            self.sm.apply(run, &mut self.outputs);
            let mut outputs = std::mem::take(&mut self.outputs);
            let mut it = outputs.drain(..);
            for e in run {
                let o = it.next();
                self.answer(e.index, e.term, o, out);
            }
            drop(it);
            self.outputs = outputs;
        }
        self.applied_since_snapshot += entries.len() as u64;
        self.raft.applied(last);
    }

    /// Answers the proposal waiting for `index`, if any.
    fn answer(
        &mut self,
        index: u64,
        term: u64,
        output: Option<S::Output>,
        out: &mut Outbox<T, S::Output, S::ReadOutput>,
    ) {
        let Some((proposed_term, token, _)) = self.proposals.remove(&index) else {
            return;
        };
        let reply = match output {
            // Another leader's entry took the index: ours never takes effect.
            _ if proposed_term != term => Reply::Refused(Refusal::NotLeader(self.raft.leader_id())),
            Some(output) => Reply::Applied {
                index,
                term,
                output,
            },
            // A command the state machine gave no output for (a broken implementation):
            // its effect is unknown to the caller.
            None => Reply::Unknown,
        };
        out.replies.push((token, reply));
    }

    fn serve_reads(&mut self, out: &mut Outbox<T, S::Output, S::ReadOutput>) {
        if self.ready_reads.is_empty() {
            return;
        }
        let applied = self.raft.log().applied();
        let mut i = 0;
        while i < self.ready_reads.len() {
            if self.ready_reads[i].0 <= applied {
                let (_, r) = self.ready_reads.swap_remove(i);
                self.counters.reads += 1;
                let answer = self.sm.read(&r.query);
                out.replies.push((r.token, Reply::Read(answer)));
            } else {
                i += 1;
            }
        }
    }

    fn expire(&mut self, now: Time, out: &mut Outbox<T, S::Output, S::ReadOutput>) {
        if self.proposals.values().any(|p| p.2 <= now) {
            let expired: Vec<u64> = self
                .proposals
                .iter()
                .filter(|(_, p)| p.2 <= now)
                .map(|(&i, _)| i)
                .collect();
            for i in expired {
                if let Some((_, token, _)) = self.proposals.remove(&i) {
                    out.replies.push((token, Reply::Unknown));
                }
            }
        }
        if self.reads.values().any(|r| r.deadline <= now) {
            let expired: Vec<u64> = self
                .reads
                .iter()
                .filter(|(_, r)| r.deadline <= now)
                .map(|(&c, _)| c)
                .collect();
            for c in expired {
                if let Some(r) = self.reads.remove(&c) {
                    let hint = self.raft.leader_id();
                    out.replies
                        .push((r.token, Reply::Refused(Refusal::NotLeader(hint))));
                }
            }
        }
        let mut i = 0;
        while i < self.ready_reads.len() {
            if self.ready_reads[i].1.deadline <= now {
                let (_, r) = self.ready_reads.swap_remove(i);
                let hint = self.raft.leader_id();
                out.replies
                    .push((r.token, Reply::Refused(Refusal::NotLeader(hint))));
            } else {
                i += 1;
            }
        }
    }

    /// The earliest deadline of a pending request (for the caller's timer).
    pub fn request_deadline(&self) -> Option<Time> {
        let p = self.proposals.values().map(|p| p.2);
        let r = self.reads.values().map(|r| r.deadline);
        let rr = self.ready_reads.iter().map(|(_, r)| r.deadline);
        p.chain(r).chain(rr).min()
    }

    fn maybe_snapshot(&mut self, _now: Time, out: &mut Outbox<T, S::Output, S::ReadOutput>) {
        let every = self.cfg.snapshot_every_entries;
        if every == 0 || self.applied_since_snapshot < every {
            return;
        }
        let log = self.raft.log();
        let applied = log.applied();
        if applied > log.persisted() || applied <= log.offset() {
            return;
        }
        let data: Arc<[u8]> = self.sm.snapshot().into();
        if self.raft.snapshot_done(applied, data).is_ok()
            && let Some(s) = self.raft.snapshot().cloned()
            && s.index == applied
        {
            self.counters.snapshots_taken += 1;
            self.applied_since_snapshot = 0;
            out.snapshots.push((self.group(), s));
        }
    }
}

//! The Raft state machine proper: roles, elections, replication, reads, transfers,
//! snapshots and membership. See the module docs of [`super`] for the contract.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore};
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{
    AppendEntries, AppendResponse, ConfState, Entry, EntryKind, Heartbeat, HeartbeatResponse,
    InstallSnapshot, RaftHeader, ReadIndexRequest, ReadIndexResponse, SnapshotResponse, TimeoutNow,
    VoteRequest, VoteResponse,
};

use super::log::{RaftLog, entry_bytes};
use super::membership::{MEMBERS_MAX, Membership, VoteResult, decode_conf, encode_conf};
use super::progress::{Progress, ProgressState, SnapshotSend};
use super::{
    ConfChange, Config, HardState, INDEX_MAX, RaftError, ReadState, Ready, Recovered, Role,
    Snapshot, TERM_MAX, header_of,
};

/// Heartbeat rounds whose send time is remembered (for the lease).
const ROUND_HISTORY_MAX: usize = 256;

#[derive(Debug)]
struct PendingRead {
    ctx: u64,
    from: u64,
    index: u64,
    round: u64,
}

#[derive(Debug)]
struct Incoming {
    index: u64,
    term: u64,
    total: u64,
    conf: ConfState,
    buf: Vec<u8>,
}

/// One Raft node of one group. `R` is the injected RNG (election timeouts).
pub struct Raft<R: RngCore> {
    cfg: Config,
    id: u64,
    rng: R,
    now: Time,
    term: u64,
    vote: u64,
    last_hard: HardState,
    role: Role,
    leader: u64,
    log: RaftLog,
    members: Membership,
    conf_at_offset: ConfState,
    conf_index: u64,
    progress: BTreeMap<u64, Progress>,
    votes: BTreeMap<u64, bool>,
    election_deadline: Time,
    heartbeat_deadline: Time,
    check_quorum_deadline: Time,
    leader_contact_at: Time,
    round: u64,
    round_sent: VecDeque<(u64, Time)>,
    read_round_needed: bool,
    lease_round: u64,
    lease_until: Time,
    lease_disabled: bool,
    pending_reads: VecDeque<PendingRead>,
    transferee: Option<(u64, Time)>,
    pending_conf_index: u64,
    snapshot: Option<Snapshot>,
    incoming: Option<Incoming>,
    dirty: BTreeSet<u64>,
    msgs: Vec<Message>,
    msgs_persisted: Vec<Message>,
    read_states: Vec<ReadState>,
    snapshot_to_install: Option<Snapshot>,
}

impl<R: RngCore> Raft<R> {
    /// A node restarting from `recovered` durable state (empty for a new node).
    /// `bootstrap` is the membership used when neither a snapshot nor a config entry says
    /// otherwise. Inconsistent durable state is refused, never trusted.
    pub fn new(
        cfg: Config,
        id: u64,
        bootstrap: ConfState,
        recovered: Recovered,
        rng: R,
        now: Time,
    ) -> Result<Raft<R>, RaftError> {
        if id == 0 {
            return Err(RaftError::Corrupt("node id 0 is reserved"));
        }
        let Recovered {
            hard_state,
            snapshot,
            entries,
        } = recovered;
        let (offset, offset_term, conf) = match &snapshot {
            Some(s) => (s.index, s.term, s.conf.clone()),
            None => (0, 0, bootstrap),
        };
        let mut prev = (offset, offset_term);
        for e in &entries {
            if e.index != prev.0 + 1 {
                return Err(RaftError::Corrupt("log entries not contiguous"));
            }
            if e.term < prev.1 {
                return Err(RaftError::Corrupt("log terms decrease"));
            }
            prev = (e.index, e.term);
        }
        if prev.0 > INDEX_MAX || prev.1 > TERM_MAX || hard_state.term > TERM_MAX {
            return Err(RaftError::Corrupt(
                "term or index beyond TERM_MAX / INDEX_MAX",
            ));
        }
        // A torn write may keep entries of a term whose hard state was lost: the term moves
        // up to the log's and the vote (never announced: votes leave after durability) is
        // forgotten.
        let (term, vote) = if prev.1 > hard_state.term {
            (prev.1, 0)
        } else {
            (hard_state.term, hard_state.vote)
        };
        let mut raft = Raft {
            cfg,
            id,
            rng,
            now,
            term,
            vote,
            last_hard: HardState { term, vote },
            role: Role::Follower,
            leader: 0,
            log: RaftLog::new(offset, offset_term, entries),
            members: Membership::new(conf.clone()),
            conf_at_offset: conf,
            conf_index: 0,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_deadline: now,
            heartbeat_deadline: now,
            check_quorum_deadline: now,
            leader_contact_at: now,
            round: 0,
            round_sent: VecDeque::new(),
            read_round_needed: false,
            lease_round: 0,
            lease_until: Time::ZERO,
            lease_disabled: false,
            pending_reads: VecDeque::new(),
            transferee: None,
            pending_conf_index: 0,
            snapshot,
            incoming: None,
            dirty: BTreeSet::new(),
            msgs: Vec::new(),
            msgs_persisted: Vec::new(),
            read_states: Vec::new(),
            snapshot_to_install: None,
        };
        if hard_state.term != term {
            raft.last_hard = hard_state;
        }
        raft.recompute_conf();
        raft.reset_election_deadline();
        Ok(raft)
    }

    // ----- accessors -----

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Current term.
    pub fn term(&self) -> u64 {
        self.term
    }
    /// Vote in the current term (0 = none).
    pub fn vote(&self) -> u64 {
        self.vote
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// Known leader (0 = none).
    pub fn leader_id(&self) -> u64 {
        self.leader
    }
    /// The log.
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    /// The current membership (the latest in the log, committed or not).
    pub fn membership(&self) -> &Membership {
        &self.members
    }
    /// The leader's view of a follower.
    pub fn progress(&self, id: u64) -> Option<&Progress> {
        self.progress.get(&id)
    }
    /// The latest snapshot this node holds.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Whether a leader lease currently allows reads without a heartbeat round.
    pub fn lease_valid(&self) -> bool {
        self.role == Role::Leader
            && self.cfg.check_quorum
            && !self.lease_disabled
            && self.transferee.is_none()
            && self.now < self.lease_until
    }
    /// The leadership transfer in progress (target).
    pub fn transferee(&self) -> Option<u64> {
        self.transferee.map(|(t, _)| t)
    }

    fn et(&self) -> Duration {
        Duration::from_millis(self.cfg.election_timeout_ms)
    }

    fn hdr(&self, to: u64, term: u64) -> RaftHeader {
        RaftHeader {
            group: self.cfg.group,
            from: self.id,
            to,
            term,
        }
    }

    fn promotable(&self) -> bool {
        self.members.is_voter(self.id)
    }

    fn reset_election_deadline(&mut self) {
        let et = self.cfg.election_timeout_ms.max(1);
        let ms = et.saturating_add(self.rng.random_range(0..et));
        self.election_deadline = self.now + Duration::from_millis(ms);
    }

    // ----- validation -----

    /// Refuses what no correct peer sends, before anything changes: every check here is a
    /// pure function of the message and this node's state. Returns the header. What may be
    /// legitimate is let through: a leader or candidate this node has not heard of (a
    /// learner being added knows no one yet); responses from non-members are ignored later.
    fn check(&self, msg: &Message) -> Result<RaftHeader, RaftError> {
        use RaftError::Malformed;
        let h = header_of(msg).ok_or(RaftError::Misrouted)?;
        if h.group != self.cfg.group || h.to != self.id {
            return Err(RaftError::Misrouted);
        }
        if h.from == 0 {
            return Err(Malformed("sender is node 0"));
        }
        if h.from == self.id {
            return Err(Malformed("sender is this node"));
        }
        if h.term > TERM_MAX {
            return Err(Malformed("term beyond TERM_MAX"));
        }
        let current = h.term == self.term;
        let leading = current && self.role == Role::Leader;
        // In one term there is one leader: once this node leads or follows someone in `h`'s
        // term, leader-only messages from anyone else are forged.
        let other_leader =
            current && (self.role == Role::Leader || (self.leader != 0 && self.leader != h.from));
        match msg {
            Message::AppendEntries(a) => {
                if other_leader {
                    return Err(Malformed("a second leader in one term"));
                }
                check_append(a)?;
            }
            Message::Heartbeat(_) if other_leader => {
                return Err(Malformed("a second leader in one term"));
            }
            Message::InstallSnapshot(s) => {
                if other_leader {
                    return Err(Malformed("a second leader in one term"));
                }
                check_snapshot(s)?;
            }
            Message::VoteRequest(v) => {
                if v.last_log_index > INDEX_MAX {
                    return Err(Malformed("last_log_index beyond INDEX_MAX"));
                }
                if v.last_log_term > h.term {
                    return Err(Malformed("last_log_term above the candidate's term"));
                }
            }
            Message::AppendResponse(r) => {
                if r.match_index > INDEX_MAX {
                    return Err(Malformed("match_index beyond INDEX_MAX"));
                }
                // The hint is the follower's entry at or before the rejected index, of a term
                // no later than the follower's own.
                if !r.success
                    && (r.reject_hint_index > r.match_index || r.reject_hint_term > h.term)
                {
                    return Err(Malformed("reject hint beyond the rejected index or term"));
                }
                // A leader's log only grows in its term: nothing past its end was ever sent.
                if leading && r.match_index > self.log.last_index() {
                    return Err(Malformed("answers an index this leader never sent"));
                }
            }
            Message::HeartbeatResponse(r) if leading && r.ctx > self.round => {
                return Err(Malformed("acknowledges a heartbeat round never sent"));
            }
            Message::TimeoutNow(_) => {
                // The leader sends it once this node acknowledged all its log in its term,
                // and that acknowledgement left only once the term was durable here.
                if h.term > self.term {
                    return Err(Malformed("TimeoutNow from a term this node never had"));
                }
                if other_leader {
                    return Err(Malformed("TimeoutNow from a node that is not the leader"));
                }
            }
            Message::ReadIndexResponse(r) => {
                if r.index > INDEX_MAX {
                    return Err(Malformed("read index beyond INDEX_MAX"));
                }
                if other_leader {
                    return Err(Malformed("read index from a node that is not the leader"));
                }
            }
            _ => {}
        }
        Ok(h)
    }

    // ----- inputs -----

    /// Advances time to `now`: heartbeats, election timeouts, CheckQuorum, transfer and
    /// snapshot-chunk timeouts.
    pub fn tick(&mut self, now: Time) {
        self.now = self.now.max(now);
        let now = self.now;
        if self.role == Role::Leader {
            if now >= self.heartbeat_deadline {
                self.heartbeat_deadline =
                    now + Duration::from_millis(self.cfg.heartbeat_interval_ms);
                self.broadcast_heartbeat();
            }
            if self.cfg.check_quorum && now >= self.check_quorum_deadline {
                self.check_quorum_deadline = now + self.et();
                let active = |id: u64| {
                    id == self.id || self.progress.get(&id).is_some_and(|p| p.recent_active)
                };
                if self.members.committed_index(&|id| u64::from(active(id))) == 0 {
                    self.become_follower(self.term, 0);
                    return;
                }
                for p in self.progress.values_mut() {
                    p.recent_active = false;
                }
            }
            if let Some((_, deadline)) = self.transferee
                && now >= deadline
            {
                self.transferee = None;
            }
            let et = self.et();
            let stuck: Vec<u64> = self
                .progress
                .iter()
                .filter(|(_, p)| p.snapshot.as_ref().is_some_and(|s| s.sent_at + et <= now))
                .map(|(&id, _)| id)
                .collect();
            for id in stuck {
                self.send_snapshot_chunk(id);
            }
        } else if now >= self.election_deadline {
            if self.promotable() {
                self.campaign(self.cfg.pre_vote, false);
            } else {
                self.reset_election_deadline();
            }
        }
    }

    /// The earliest time at which [`Raft::tick`] has something to do: the leader's next
    /// heartbeat, CheckQuorum check, transfer timeout or snapshot-chunk resend; anyone
    /// else's election deadline. A driver arms one timer at this time after every input,
    /// instead of ticking at a fixed period.
    pub fn deadline(&self) -> Time {
        if self.role != Role::Leader {
            return self.election_deadline;
        }
        let mut at = self.heartbeat_deadline;
        if self.cfg.check_quorum {
            at = at.min(self.check_quorum_deadline);
        }
        if let Some((_, t)) = self.transferee {
            at = at.min(t);
        }
        let et = self.et();
        for p in self.progress.values() {
            if let Some(s) = &p.snapshot {
                at = at.min(s.sent_at + et);
            }
        }
        at
    }

    /// Handles one message from a peer, received at `now` (time only moves forward; no
    /// timer fires here: that is [`Raft::tick`]'s job). A message no correct peer sends is
    /// refused with [`RaftError::Malformed`] and changes nothing, not even the clock.
    pub fn step(&mut self, now: Time, msg: Message) -> Result<(), RaftError> {
        let h = self.check(&msg)?;
        self.now = self.now.max(now);
        if h.term > self.term {
            match &msg {
                Message::VoteRequest(v) => {
                    let in_lease = self.cfg.check_quorum
                        && !v.leadership_transfer
                        && (self.role == Role::Leader
                            || self.now < self.leader_contact_at + self.et());
                    if in_lease {
                        return Ok(());
                    }
                    if !v.pre_vote {
                        self.become_follower(h.term, 0);
                    }
                }
                Message::VoteResponse(v) if v.pre_vote && v.granted => {}
                Message::AppendEntries(_) | Message::Heartbeat(_) | Message::InstallSnapshot(_) => {
                    self.become_follower(h.term, h.from)
                }
                _ => self.become_follower(h.term, 0),
            }
        } else if h.term < self.term {
            match &msg {
                Message::AppendEntries(_) | Message::Heartbeat(_)
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    // Tell a stale leader about the newer term so it steps down.
                    self.msgs.push(Message::AppendResponse(AppendResponse {
                        header: self.hdr(h.from, self.term),
                        success: false,
                        match_index: 0,
                        reject_hint_index: 0,
                        reject_hint_term: 0,
                    }));
                }
                Message::VoteRequest(v) if v.pre_vote => {
                    self.msgs.push(Message::VoteResponse(VoteResponse {
                        header: self.hdr(h.from, self.term),
                        granted: false,
                        pre_vote: true,
                    }));
                }
                _ => {}
            }
            return Ok(());
        }
        match msg {
            Message::VoteRequest(v) => self.handle_vote_request(v),
            Message::VoteResponse(v) => self.handle_vote_response(v),
            Message::AppendEntries(a) => {
                if self.role == Role::Leader {
                    return Ok(()); // `check` refuses it: one leader per term
                }
                self.follow(h.from);
                self.handle_append(a)?;
            }
            Message::Heartbeat(hb) => {
                if self.role == Role::Leader {
                    return Ok(());
                }
                self.follow(h.from);
                if hb.commit > self.log.last_index() {
                    // The leader sends at most what this node acknowledged: this node lost
                    // entries it had acknowledged (its storage was wiped or replaced). Commit
                    // nothing on that word, and tell the leader where this log really ends
                    // so it probes (and sends a snapshot) from there.
                    let (last, last_term) = (self.log.last_index(), self.log.last_term());
                    self.msgs.push(Message::AppendResponse(AppendResponse {
                        header: self.hdr(h.from, self.term),
                        success: false,
                        match_index: hb.commit,
                        reject_hint_index: last,
                        reject_hint_term: last_term,
                    }));
                } else {
                    self.log.commit_to(hb.commit);
                }
                self.msgs
                    .push(Message::HeartbeatResponse(HeartbeatResponse {
                        header: self.hdr(h.from, self.term),
                        ctx: hb.ctx,
                    }));
            }
            Message::InstallSnapshot(s) => {
                if self.role == Role::Leader {
                    return Ok(());
                }
                self.follow(h.from);
                self.handle_install_snapshot(s);
            }
            Message::AppendResponse(r) => self.handle_append_response(r),
            Message::HeartbeatResponse(r) => self.handle_heartbeat_response(r),
            Message::SnapshotResponse(r) => self.handle_snapshot_response(r),
            Message::TimeoutNow(_) => {
                if self.role != Role::Leader && self.promotable() {
                    self.campaign(false, true);
                }
            }
            Message::ReadIndexRequest(r) => {
                let refused = self.role != Role::Leader || self.leader_read(r.ctx, h.from).is_err();
                if refused {
                    self.msgs
                        .push(Message::ReadIndexResponse(ReadIndexResponse {
                            header: self.hdr(h.from, self.term),
                            ctx: r.ctx,
                            index: 0,
                        }));
                }
            }
            Message::ReadIndexResponse(r) => self.read_states.push(ReadState {
                ctx: r.ctx,
                index: r.index,
            }),
            _ => return Err(RaftError::Misrouted),
        }
        Ok(())
    }

    /// Appends a batch of commands (leader only). Returns the indexes given (first, last);
    /// they carry the current [`Raft::term`].
    pub fn propose<I>(&mut self, batch: I) -> Result<(u64, u64), RaftError>
    where
        I: IntoIterator<Item = Vec<u8>>,
        I::IntoIter: ExactSizeIterator,
    {
        let batch = batch.into_iter();
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader(self.leader));
        }
        if self.transferee.is_some() {
            return Err(RaftError::Transferring);
        }
        let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
        let uncommitted = self.log.last_index().saturating_sub(self.log.committed());
        if uncommitted.saturating_add(n) > self.cfg.uncommitted_entries_max
            || self.log.last_index().saturating_add(n) > INDEX_MAX
        {
            return Err(RaftError::Backpressure);
        }
        let first = self.log.last_index() + 1;
        let term = self.term;
        let mut index = first;
        self.log.append(batch.map(|payload| {
            let e = Entry {
                index,
                term,
                kind: EntryKind::Normal,
                payload,
            };
            index += 1;
            e
        }));
        self.after_append();
        Ok((first, self.log.last_index()))
    }

    /// A linearizable read (ReadIndex, thesis §6.4): a [`ReadState`] comes back once a
    /// heartbeat round confirms leadership (on a follower, via the leader).
    pub fn read_index(&mut self, ctx: u64) -> Result<(), RaftError> {
        if self.role == Role::Leader {
            return self.leader_read(ctx, self.id);
        }
        if self.leader == 0 {
            return Err(RaftError::NotLeader(0));
        }
        self.msgs.push(Message::ReadIndexRequest(ReadIndexRequest {
            header: self.hdr(self.leader, self.term),
            ctx,
        }));
        Ok(())
    }

    /// A lease read (thesis §6.4.1): served at once while the leader lease holds, otherwise
    /// falls back to [`Raft::read_index`]. Assumes clocks drift by at most
    /// `lease_clock_drift_permille`.
    pub fn read_lease(&mut self, ctx: u64) -> Result<(), RaftError> {
        if self.lease_valid() && self.log.term(self.log.committed()) == Some(self.term) {
            self.read_states.push(ReadState {
                ctx,
                index: self.log.committed(),
            });
            return Ok(());
        }
        self.read_index(ctx)
    }

    /// Starts handing leadership to `to` (TimeoutNow once it has caught up; §3.10).
    /// Proposals are refused until it completes or an election timeout passes.
    pub fn transfer_leader(&mut self, to: u64) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader(self.leader));
        }
        if to == self.id {
            return Ok(());
        }
        if !self.members.is_voter(to) || !self.progress.contains_key(&to) {
            return Err(RaftError::BadConfChange);
        }
        self.transferee = Some((to, self.now + self.et()));
        if self
            .progress
            .get(&to)
            .is_some_and(|p| p.match_index == self.log.last_index())
        {
            self.send_timeout_now(to);
        } else {
            self.dirty.insert(to);
        }
        Ok(())
    }

    /// Proposes a one-server membership change (leader only; one uncommitted at a time,
    /// and only once an entry of this term committed — the fix of thesis §4.1's bug).
    pub fn change_membership(&mut self, change: ConfChange) -> Result<u64, RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader(self.leader));
        }
        if self.log.term(self.log.committed()) != Some(self.term) {
            return Err(RaftError::NotReady);
        }
        if self.pending_conf_index > self.log.committed() || self.transferee.is_some() {
            return Err(RaftError::BadConfChange);
        }
        let mut conf = self.members.conf().clone();
        if !conf.voters_outgoing.is_empty() {
            return Err(RaftError::BadConfChange);
        }
        match change {
            ConfChange::AddVoter(id) => {
                if id == 0 || conf.voters.contains(&id) {
                    return Err(RaftError::BadConfChange);
                }
                conf.learners.retain(|&l| l != id);
                conf.voters.push(id);
            }
            ConfChange::AddLearner(id) => {
                if id == 0 || conf.voters.contains(&id) || conf.learners.contains(&id) {
                    return Err(RaftError::BadConfChange);
                }
                conf.learners.push(id);
            }
            ConfChange::Remove(id) => {
                let before = conf.voters.len() + conf.learners.len();
                conf.voters.retain(|&v| v != id);
                conf.learners.retain(|&l| l != id);
                if conf.voters.len() + conf.learners.len() == before || conf.voters.is_empty() {
                    return Err(RaftError::BadConfChange);
                }
            }
        }
        let index = self.append_entry(EntryKind::Config, encode_conf(&conf));
        self.pending_conf_index = index;
        self.set_members(Membership::new(conf), index);
        Ok(index)
    }

    /// Reports that the driver's writes are durable up to the entry (`index`, `term`).
    pub fn persisted(&mut self, index: u64, term: u64) {
        if self.log.persisted_to(index, term) && self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Reports that the state machine applied up to `index`.
    pub fn applied(&mut self, index: u64) {
        self.log.applied_to(index);
    }

    /// The application took a snapshot at `index` (applied and durable) and stored `data`
    /// durably: the log is compacted up to it and it is what lagging followers receive.
    pub fn snapshot_done(&mut self, index: u64, data: Arc<[u8]>) -> Result<(), RaftError> {
        if index > self.log.applied() || index > self.log.persisted() {
            return Err(RaftError::SnapshotAhead);
        }
        if index <= self.log.offset() || self.snapshot.as_ref().is_some_and(|s| s.index >= index) {
            return Ok(());
        }
        let term = self.log.term(index).ok_or(RaftError::SnapshotAhead)?;
        let conf = self.conf_at(index);
        self.snapshot = Some(Snapshot {
            index,
            term,
            conf: conf.clone(),
            data,
        });
        self.log.compact_to(index);
        self.conf_at_offset = conf;
        Ok(())
    }

    /// Whether [`Raft::ready`] has anything.
    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || !self.msgs_persisted.is_empty()
            || !self.read_states.is_empty()
            || !self.dirty.is_empty()
            || self.read_round_needed
            || self.snapshot_to_install.is_some()
            || self.log.has_unstable()
            || self.log.has_committed()
            || HardState {
                term: self.term,
                vote: self.vote,
            } != self.last_hard
    }

    /// Collects every output since the last call (sending batched appends first).
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            if self.read_round_needed {
                self.broadcast_heartbeat();
            }
            let dirty = std::mem::take(&mut self.dirty);
            for id in dirty {
                self.send_appends(id);
            }
        } else {
            self.dirty.clear();
            self.read_round_needed = false;
        }
        let hs = HardState {
            term: self.term,
            vote: self.vote,
        };
        let hard_state = (hs != self.last_hard).then(|| {
            self.last_hard = hs;
            hs
        });
        Ready {
            messages: std::mem::take(&mut self.msgs),
            hard_state,
            snapshot: self.snapshot_to_install.take(),
            entries: self.log.take_unstable(),
            persisted_messages: std::mem::take(&mut self.msgs_persisted),
            committed_entries: self.log.take_committed(self.cfg.apply_entries_max),
            read_states: std::mem::take(&mut self.read_states),
        }
    }

    // ----- roles -----

    fn follow(&mut self, leader: u64) {
        if self.role != Role::Follower {
            self.become_follower(self.term, leader);
        }
        self.leader = leader;
        self.leader_contact_at = self.now;
        self.reset_election_deadline();
    }

    fn become_follower(&mut self, term: u64, leader: u64) {
        if self.role == Role::Leader {
            for r in std::mem::take(&mut self.pending_reads) {
                if r.from == self.id {
                    self.read_states.push(ReadState {
                        ctx: r.ctx,
                        index: 0,
                    });
                }
            }
        }
        if term > self.term {
            self.term = term;
            self.vote = 0;
            // What waits for the write and promises something in an older term goes: an
            // acknowledgement the new leader's entries may already have overwritten, a vote
            // whose hard state will never be written (the new term replaces it).
            self.msgs_persisted
                .retain(|m| header_of(m).is_some_and(|h| h.term >= term));
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
        self.votes.clear();
        self.transferee = None;
        self.dirty.clear();
        self.read_round_needed = false;
        self.reset_election_deadline();
    }

    fn campaign(&mut self, pre: bool, transfer: bool) {
        if self.term >= TERM_MAX {
            // No term past the bound exists (see TERM_MAX): wait for a leader of this one.
            self.reset_election_deadline();
            return;
        }
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.leader = 0;
        self.reset_election_deadline();
        let term = if pre {
            self.role = Role::PreCandidate;
            self.term + 1
        } else {
            self.term += 1;
            self.vote = self.id;
            self.role = Role::Candidate;
            self.term
        };
        if self.evaluate_votes() {
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for id in self.members.voters() {
            if id == self.id {
                continue;
            }
            let m = Message::VoteRequest(VoteRequest {
                header: self.hdr(id, term),
                last_log_index,
                last_log_term,
                pre_vote: pre,
                leadership_transfer: transfer,
            });
            // A real vote request leaves only once the vote for ourselves is durable.
            if pre {
                self.msgs.push(m)
            } else {
                self.msgs_persisted.push(m)
            }
        }
    }

    /// Acts on the election result so far; returns whether the role changed.
    fn evaluate_votes(&mut self) -> bool {
        match self.members.vote_result(&|id| self.votes.get(&id).copied()) {
            VoteResult::Won => {
                if self.role == Role::PreCandidate {
                    self.campaign(false, false);
                } else {
                    self.become_leader();
                }
                true
            }
            VoteResult::Lost => {
                self.become_follower(self.term, 0);
                true
            }
            VoteResult::Pending => false,
        }
    }

    fn become_leader(&mut self) {
        debug_assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.leader = self.id;
        self.votes.clear();
        let next = self.log.last_index() + 1;
        self.progress.clear();
        for id in self.members.members() {
            if id != self.id {
                let mut p = Progress::new(next);
                p.recent_active = true;
                self.progress.insert(id, p);
            }
        }
        self.round = 0;
        self.round_sent.clear();
        self.lease_round = 0;
        self.lease_until = Time::ZERO;
        self.lease_disabled = false;
        self.pending_reads.clear();
        self.transferee = None;
        self.heartbeat_deadline = self.now + Duration::from_millis(self.cfg.heartbeat_interval_ms);
        self.check_quorum_deadline = self.now + self.et();
        let noop = self.append_entry(EntryKind::Noop, Vec::new());
        self.pending_conf_index = noop;
    }

    fn append_entry(&mut self, kind: EntryKind, payload: Vec<u8>) -> u64 {
        let index = self.log.last_index() + 1;
        self.log.append([Entry {
            index,
            term: self.term,
            kind,
            payload,
        }]);
        self.after_append();
        index
    }

    /// Followers have something new to receive; a lone voter commits on its own write.
    fn after_append(&mut self) {
        self.dirty.extend(self.progress.keys().copied());
        if self.progress.is_empty() {
            self.maybe_commit();
        }
    }

    // ----- membership -----

    fn set_members(&mut self, members: Membership, conf_index: u64) {
        self.members = members;
        self.conf_index = conf_index;
        if self.role == Role::Leader {
            let next = self.log.last_index();
            let all = self.members.members();
            self.progress.retain(|id, _| all.contains(id));
            for id in all {
                if id != self.id {
                    self.progress.entry(id).or_insert_with(|| {
                        let mut p = Progress::new(next.max(1));
                        p.recent_active = true;
                        p
                    });
                }
            }
            self.dirty.extend(self.progress.keys().copied());
        }
    }

    fn conf_at(&self, index: u64) -> ConfState {
        let mut i = index.min(self.log.last_index());
        while i > self.log.offset() {
            if let Some(e) = self.log.get(i)
                && e.kind == EntryKind::Config
                && let Ok(c) = decode_conf(&e.payload)
            {
                return c;
            }
            i -= 1;
        }
        self.conf_at_offset.clone()
    }

    fn latest_conf_index(&self) -> u64 {
        self.log
            .iter()
            .rev()
            .find(|e| e.kind == EntryKind::Config && decode_conf(&e.payload).is_ok())
            .map_or(0, |e| e.index)
    }

    fn recompute_conf(&mut self) {
        let idx = self.latest_conf_index();
        let conf = if idx == 0 {
            self.conf_at_offset.clone()
        } else {
            self.conf_at(idx)
        };
        if conf != *self.members.conf() || idx != self.conf_index {
            self.set_members(Membership::new(conf), idx);
        }
    }

    // ----- elections -----

    fn handle_vote_request(&mut self, v: VoteRequest) {
        let from = v.header.from;
        let can_vote = self.vote == from
            || (self.vote == 0 && self.leader == 0)
            || (v.pre_vote && v.header.term > self.term);
        let grant = can_vote && self.log.is_up_to_date(v.last_log_index, v.last_log_term);
        if grant && !v.pre_vote {
            self.vote = from;
            self.reset_election_deadline();
        }
        let term = if v.pre_vote && grant {
            v.header.term
        } else {
            self.term
        };
        let m = Message::VoteResponse(VoteResponse {
            header: self.hdr(from, term),
            granted: grant,
            pre_vote: v.pre_vote,
        });
        if grant && !v.pre_vote {
            self.msgs_persisted.push(m)
        } else {
            self.msgs.push(m)
        }
    }

    fn handle_vote_response(&mut self, v: VoteResponse) {
        let counts = match self.role {
            Role::PreCandidate => {
                v.pre_vote && (v.header.term == self.term.saturating_add(1) || !v.granted)
            }
            Role::Candidate => !v.pre_vote && v.header.term == self.term,
            _ => false,
        };
        if counts && self.members.is_voter(v.header.from) {
            self.votes.insert(v.header.from, v.granted);
            self.evaluate_votes();
        }
    }

    // ----- follower side -----

    fn handle_append(&mut self, a: AppendEntries) -> Result<(), RaftError> {
        let from = a.header.from;
        let committed = self.log.committed();
        let (mut prev, mut prev_term, mut entries) = (a.prev_log_index, a.prev_log_term, a.entries);
        if prev < committed {
            // Entries up to our commit index match by Log Matching: skip them.
            entries.retain(|e| e.index > committed);
            prev = committed;
            prev_term = self.log.term(committed).unwrap_or(0);
            if let Some(first) = entries.first()
                && first.index != committed + 1
            {
                entries.clear();
            }
        }
        let touches_conf =
            entries.iter().any(|e| e.kind == EntryKind::Config) || self.conf_index > prev;
        let n = entries.len();
        let conflict = self.log.first_conflict(&entries);
        match self.log.maybe_append(prev, prev_term, entries)? {
            Some(last_new) => {
                if let Some(at) = conflict {
                    self.drop_acks_from(at);
                }
                self.log.commit_to(a.leader_commit.min(last_new));
                if touches_conf && n > 0 {
                    self.recompute_conf();
                }
                // The acknowledgement promises durability: it waits for the write.
                self.msgs_persisted
                    .push(Message::AppendResponse(AppendResponse {
                        header: self.hdr(from, self.term),
                        success: true,
                        match_index: last_new,
                        reject_hint_index: 0,
                        reject_hint_term: 0,
                    }));
            }
            None => {
                let (hint_index, hint_term) = self
                    .log
                    .find_conflict_by_term(prev.min(self.log.last_index()), prev_term);
                self.msgs.push(Message::AppendResponse(AppendResponse {
                    header: self.hdr(from, self.term),
                    success: false,
                    match_index: prev,
                    reject_hint_index: hint_index,
                    reject_hint_term: hint_term,
                }));
            }
        }
        Ok(())
    }

    /// Acknowledgements still waiting for the write that name entries from `index` on,
    /// which were just replaced: they would promise what the disk will not hold.
    fn drop_acks_from(&mut self, index: u64) {
        self.msgs_persisted.retain(
            |m| !matches!(m, Message::AppendResponse(r) if r.success && r.match_index >= index),
        );
    }

    fn handle_install_snapshot(&mut self, s: InstallSnapshot) {
        let from = s.header.from;
        let total = s.total_bytes;
        let respond = |raft: &mut Self, success: bool, next_offset: u64, persisted: bool| {
            let m = Message::SnapshotResponse(SnapshotResponse {
                header: raft.hdr(from, raft.term),
                next_offset,
                success,
            });
            if persisted {
                raft.msgs_persisted.push(m)
            } else {
                raft.msgs.push(m)
            }
        };
        if s.last_included_index <= self.log.committed() {
            self.incoming = None;
            respond(self, true, total, true);
            return;
        }
        if total > self.cfg.snapshot_bytes_max || s.data.len() as u64 > total {
            respond(self, false, 0, false);
            return;
        }
        if s.offset == 0 {
            self.incoming = Some(Incoming {
                index: s.last_included_index,
                term: s.last_included_term,
                total,
                conf: s.conf.clone(),
                buf: Vec::new(),
            });
        }
        let Some(inc) = self.incoming.as_mut() else {
            respond(self, false, 0, false);
            return;
        };
        if inc.index != s.last_included_index
            || inc.term != s.last_included_term
            || inc.total != total
        {
            respond(self, false, 0, false);
            return;
        }
        if s.offset != inc.buf.len() as u64 || inc.buf.len() as u64 + s.data.len() as u64 > total {
            let have = inc.buf.len() as u64;
            respond(self, false, have, false);
            return;
        }
        inc.buf.extend_from_slice(&s.data);
        if (inc.buf.len() as u64) < total {
            let have = inc.buf.len() as u64;
            respond(self, true, have, false);
            return;
        }
        let Some(inc) = self.incoming.take() else {
            return;
        };
        let snap = Snapshot {
            index: inc.index,
            term: inc.term,
            conf: inc.conf,
            data: inc.buf.into(),
        };
        if self.log.term(snap.index) != Some(snap.term) {
            self.drop_acks_from(snap.index.saturating_add(1)); // the log goes with them
        }
        self.log.restore(snap.index, snap.term);
        self.conf_at_offset = snap.conf.clone();
        self.snapshot = Some(snap.clone());
        self.snapshot_to_install = Some(snap);
        self.conf_index = 0;
        self.recompute_conf();
        respond(self, true, total, true);
    }

    // ----- leader side -----

    fn maybe_commit(&mut self) -> bool {
        let me = self.id;
        let persisted = self.log.persisted();
        let idx = self.members.committed_index(&|id| {
            if id == me {
                persisted
            } else {
                self.progress.get(&id).map_or(0, |p| p.match_index)
            }
        });
        if idx <= self.log.committed() || self.log.term(idx) != Some(self.term) {
            return false;
        }
        self.log.commit_to(idx);
        self.dirty.extend(self.progress.keys().copied());
        if !self.members.is_voter(self.id) && self.log.committed() >= self.conf_index {
            self.become_follower(self.term, 0);
        }
        true
    }

    fn handle_append_response(&mut self, r: AppendResponse) {
        let from = r.header.from;
        let last = self.log.last_index();
        let retry_from = if r.success {
            0
        } else if r.reject_hint_term > 0 {
            self.log
                .find_conflict_by_term(r.reject_hint_index, r.reject_hint_term)
                .0
                + 1
        } else {
            r.reject_hint_index + 1
        };
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if !r.success {
            if r.reject_hint_index < pr.match_index && pr.state != ProgressState::Snapshot {
                // The follower's log now ends before what it acknowledged: its storage was
                // wiped or replaced (or this rejection is older than those
                // acknowledgements). Probe again from where it says its log ends; what is
                // committed stays committed (the commit index never moves back), only
                // where to send from changes.
                pr.match_index = r.reject_hint_index;
                pr.become_probe();
                pr.next_index = retry_from.clamp(1, pr.match_index + 1);
                self.dirty.insert(from);
                return;
            }
            if pr.maybe_decrease(r.match_index, retry_from) {
                self.dirty.insert(from);
            }
            return;
        }
        if r.match_index > last {
            return; // claims entries we never sent
        }
        if pr.maybe_update(r.match_index) {
            match pr.state {
                ProgressState::Probe => pr.become_replicate(),
                ProgressState::Replicate => pr.free_to(r.match_index),
                ProgressState::Snapshot => {
                    if pr
                        .snapshot
                        .as_ref()
                        .is_none_or(|s| pr.match_index >= s.index)
                    {
                        pr.become_probe();
                    }
                }
            }
            let caught_up = pr.match_index == last;
            self.maybe_commit();
            if caught_up && self.transferee.is_some_and(|(t, _)| t == from) {
                self.send_timeout_now(from);
            }
        }
        self.dirty.insert(from);
    }

    fn handle_heartbeat_response(&mut self, r: HeartbeatResponse) {
        let from = r.header.from;
        let (max_msgs, max_bytes) = (self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.acked_round = pr.acked_round.max(r.ctx.min(self.round));
        match pr.state {
            ProgressState::Probe => pr.paused = false,
            ProgressState::Replicate => {
                if pr.is_full(max_msgs, max_bytes) {
                    pr.free_first();
                }
                if pr.match_index < last && pr.match_index == pr.match_at_heartbeat {
                    pr.tail_probe = true;
                }
            }
            _ => {}
        }
        pr.match_at_heartbeat = pr.match_index;
        if pr.match_index < last {
            self.dirty.insert(from);
        }
        self.advance_reads();
    }

    fn handle_snapshot_response(&mut self, r: SnapshotResponse) {
        let from = r.header.from;
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        let Some(s) = pr.snapshot.as_mut() else {
            return;
        };
        let len = s.data.len() as u64;
        if r.success && r.next_offset >= len {
            pr.match_index = pr.match_index.max(s.index);
            pr.become_probe();
            self.dirty.insert(from);
            self.maybe_commit();
            return;
        }
        if r.next_offset == s.offset && r.success {
            return; // duplicate answer
        }
        s.offset = r.next_offset.min(len);
        self.send_snapshot_chunk(from);
    }

    fn send_timeout_now(&mut self, to: u64) {
        // The target campaigns past every follower's lease: ours is void for this term.
        self.lease_disabled = true;
        self.msgs.push(Message::TimeoutNow(TimeoutNow {
            header: self.hdr(to, self.term),
        }));
    }

    /// Sends what the follower's state allows: pipelined appends in Replicate, one probe in
    /// Probe, a commit-only append when the follower's commit index lags.
    fn send_appends(&mut self, id: u64) {
        let (max_msgs, max_bytes) = (self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
        let committed = self.log.committed();
        let last = self.log.last_index();
        let term = self.term;
        loop {
            let Some(pr) = self.progress.get_mut(&id) else {
                return;
            };
            match pr.state {
                ProgressState::Snapshot => return,
                ProgressState::Probe if pr.paused => break,
                ProgressState::Replicate if pr.is_full(max_msgs, max_bytes) => break,
                _ => {}
            }
            if pr.state == ProgressState::Replicate && pr.next_index > last {
                break;
            }
            let prev = pr.next_index - 1;
            let Some(prev_term) = self.log.term(prev) else {
                self.start_snapshot(id);
                return;
            };
            let entries = self.log.slice(
                prev + 1,
                last,
                self.cfg.msg_entries_max,
                self.cfg.msg_bytes_max,
            );
            let bytes: u64 = entries.iter().map(entry_bytes).sum();
            let sent_last = prev + entries.len() as u64;
            let n = entries.len();
            match pr.state {
                ProgressState::Replicate => pr.sent(sent_last, bytes),
                _ => pr.paused = true,
            }
            pr.sent_commit = committed;
            let header = RaftHeader {
                group: self.cfg.group,
                from: self.id,
                to: id,
                term,
            };
            self.msgs.push(Message::AppendEntries(AppendEntries {
                header,
                prev_log_index: prev,
                prev_log_term: prev_term,
                leader_commit: committed,
                entries,
            }));
            if n == 0 || pr.state != ProgressState::Replicate {
                return;
            }
        }
        let Some(pr) = self.progress.get_mut(&id) else {
            return;
        };
        if pr.tail_probe && pr.state == ProgressState::Replicate {
            pr.tail_probe = false;
            let prev = pr.next_index - 1;
            if let Some(prev_term) = self.log.term(prev) {
                pr.sent_commit = committed;
                let header = RaftHeader {
                    group: self.cfg.group,
                    from: self.id,
                    to: id,
                    term,
                };
                self.msgs
                    .push(empty_append(header, prev, prev_term, committed));
                return;
            }
        }
        // Nothing more may be sent: still tell a lagging follower the commit index, with a
        // previous index it is known to hold (so reordering cannot make it reject).
        if pr.sent_commit < committed && pr.match_index > 0 && pr.state != ProgressState::Snapshot {
            let prev = pr.match_index;
            let Some(prev_term) = self.log.term(prev) else {
                return;
            };
            pr.sent_commit = committed;
            let header = RaftHeader {
                group: self.cfg.group,
                from: self.id,
                to: id,
                term,
            };
            self.msgs
                .push(empty_append(header, prev, prev_term, committed));
        }
    }

    fn start_snapshot(&mut self, id: u64) {
        let Some(snap) = self.snapshot.as_ref() else {
            return;
        };
        let send = SnapshotSend {
            index: snap.index,
            term: snap.term,
            conf: snap.conf.clone(),
            data: snap.data.clone(),
            offset: 0,
            sent_at: self.now,
        };
        let Some(pr) = self.progress.get_mut(&id) else {
            return;
        };
        pr.become_snapshot(send);
        self.send_snapshot_chunk(id);
    }

    fn send_snapshot_chunk(&mut self, id: u64) {
        let chunk = self.cfg.snapshot_chunk_bytes.max(1);
        let header = self.hdr(id, self.term);
        let now = self.now;
        let Some(s) = self.progress.get_mut(&id).and_then(|p| p.snapshot.as_mut()) else {
            return;
        };
        let len = s.data.len();
        let start = (s.offset as usize).min(len);
        let end = start.saturating_add(chunk).min(len);
        s.sent_at = now;
        self.msgs.push(Message::InstallSnapshot(InstallSnapshot {
            header,
            last_included_index: s.index,
            last_included_term: s.term,
            conf: s.conf.clone(),
            offset: start as u64,
            total_bytes: len as u64,
            data: s.data[start..end].to_vec(),
            done: end == len,
        }));
    }

    fn broadcast_heartbeat(&mut self) {
        self.read_round_needed = false;
        self.round += 1;
        self.round_sent.push_back((self.round, self.now));
        if self.round_sent.len() > ROUND_HISTORY_MAX {
            self.round_sent.pop_front();
        }
        let committed = self.log.committed();
        let term = self.term;
        for (&id, pr) in &self.progress {
            self.msgs.push(Message::Heartbeat(Heartbeat {
                header: RaftHeader {
                    group: self.cfg.group,
                    from: self.id,
                    to: id,
                    term,
                },
                commit: committed.min(pr.match_index),
                ctx: self.round,
            }));
        }
        self.advance_reads();
    }

    fn leader_read(&mut self, ctx: u64, from: u64) -> Result<(), RaftError> {
        let committed = self.log.committed();
        if self.log.term(committed) != Some(self.term) {
            return Err(RaftError::NotReady);
        }
        if self.pending_reads.len() >= self.cfg.pending_reads_max {
            return Err(RaftError::TooManyReads);
        }
        self.pending_reads.push_back(PendingRead {
            ctx,
            from,
            index: committed,
            round: self.round + 1,
        });
        self.read_round_needed = true;
        if self.members.voters() == [self.id] {
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    fn advance_reads(&mut self) {
        let me = self.id;
        let round = self.round;
        let quorum_round = self.members.committed_index(&|id| {
            if id == me {
                round
            } else {
                self.progress.get(&id).map_or(0, |p| p.acked_round)
            }
        });
        if quorum_round > self.lease_round {
            self.lease_round = quorum_round;
            if let Some(&(_, sent)) = self.round_sent.iter().find(|(r, _)| *r == quorum_round) {
                let ms =
                    self.cfg.election_timeout_ms.saturating_mul(
                        1000u64.saturating_sub(self.cfg.lease_clock_drift_permille),
                    ) / 1000;
                self.lease_until = self.lease_until.max(sent + Duration::from_millis(ms));
            }
        }
        while let Some(r) = self.pending_reads.front() {
            if r.round > quorum_round {
                break;
            }
            let Some(r) = self.pending_reads.pop_front() else {
                break;
            };
            if r.from == self.id {
                self.read_states.push(ReadState {
                    ctx: r.ctx,
                    index: r.index,
                });
            } else {
                self.msgs
                    .push(Message::ReadIndexResponse(ReadIndexResponse {
                        header: self.hdr(r.from, self.term),
                        ctx: r.ctx,
                        index: r.index,
                    }));
            }
        }
    }
}

/// An AppendEntries without entries: it carries the commit index (and probes `prev`).
fn empty_append(header: RaftHeader, prev: u64, prev_term: u64, commit: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        header,
        prev_log_index: prev,
        prev_log_term: prev_term,
        leader_commit: commit,
        entries: Vec::new(),
    })
}

/// The shape of an AppendEntries, whoever this node is: entries numbered one by one after
/// `prev_log_index`, terms never decreasing from `prev_log_term` and never above the
/// leader's, indexes within [`INDEX_MAX`], configuration entries that decode.
fn check_append(a: &AppendEntries) -> Result<(), RaftError> {
    use RaftError::Malformed;
    let term = a.header.term;
    if a.prev_log_index > INDEX_MAX || a.leader_commit > INDEX_MAX {
        return Err(Malformed("index beyond INDEX_MAX"));
    }
    if a.prev_log_term > term {
        return Err(Malformed("prev_log_term above the leader's term"));
    }
    if a.prev_log_index == 0 && a.prev_log_term != 0 {
        return Err(Malformed("prev_log_term of index 0 is not 0"));
    }
    let (mut index, mut last_term) = (a.prev_log_index, a.prev_log_term);
    for e in &a.entries {
        if index >= INDEX_MAX || e.index != index + 1 {
            return Err(Malformed("entries do not follow prev_log_index"));
        }
        if e.term < last_term {
            return Err(Malformed("entry terms decrease"));
        }
        if e.term > term {
            return Err(Malformed("entry term above the leader's term"));
        }
        if e.kind == EntryKind::Config {
            let conf = decode_conf(&e.payload)
                .map_err(|_| Malformed("configuration entry does not decode"))?;
            check_conf(&conf)?;
        }
        (index, last_term) = (e.index, e.term);
    }
    Ok(())
}

/// The shape of an InstallSnapshot chunk: an index within [`INDEX_MAX`] of a term no later
/// than the leader's, a chunk that lies inside `total_bytes` (`done` on the last one only),
/// and a configuration a group can have.
fn check_snapshot(s: &InstallSnapshot) -> Result<(), RaftError> {
    use RaftError::Malformed;
    if s.last_included_index == 0 || s.last_included_index > INDEX_MAX {
        return Err(Malformed("snapshot index 0 or beyond INDEX_MAX"));
    }
    if s.last_included_term > s.header.term {
        return Err(Malformed("snapshot term above the leader's term"));
    }
    let end = u64::try_from(s.data.len())
        .ok()
        .and_then(|len| s.offset.checked_add(len))
        .filter(|&end| end <= s.total_bytes)
        .ok_or(Malformed("snapshot chunk beyond total_bytes"))?;
    if s.done != (end == s.total_bytes) {
        return Err(Malformed(
            "snapshot done flag disagrees with the chunk's end",
        ));
    }
    check_conf(&s.conf)
}

/// A configuration a group can have: at least one voter, no node 0, lists within
/// [`MEMBERS_MAX`].
fn check_conf(c: &ConfState) -> Result<(), RaftError> {
    use RaftError::Malformed;
    let lists = [&c.voters, &c.learners, &c.voters_outgoing];
    if lists.iter().any(|l| l.len() > MEMBERS_MAX) {
        return Err(Malformed(
            "configuration lists more than MEMBERS_MAX members",
        ));
    }
    if c.voters.is_empty() {
        return Err(Malformed("configuration without voters"));
    }
    if lists.iter().any(|l| l.contains(&0)) {
        return Err(Malformed("configuration names node 0"));
    }
    Ok(())
}

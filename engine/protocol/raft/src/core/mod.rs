//! The Raft state machine proper: roles, elections, replication, reads, transfers,
//! snapshots and membership. See the module docs of [`super`] for the contract.
//!
//! The node's state and its inputs are here; what the inputs set in motion is split by
//! role: `validate` (what is refused before anything changes), `roles` (following,
//! campaigning, voting, becoming leader), `conf` (the configuration in force), `follower`
//! (appends and snapshots received) and `leader` (commit, replication, heartbeats, reads).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, RngCore};
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{
    AppendResponse, ConfState, Entry, EntryKind, HeartbeatResponse, RaftHeader, ReadIndexRequest,
    ReadIndexResponse, VoteResponse,
};

use crate::log::RaftLog;
use crate::membership::{Membership, encode_conf};
use crate::progress::Progress;
use crate::{
    ConfChange, Config, HardState, INDEX_MAX, RaftError, ReadState, Ready, Recovered, Role,
    Snapshot, TERM_MAX,
};

mod conf;
mod follower;
mod leader;
mod roles;
mod validate;

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
    /// When followers whose commit index lags get a commit-only append (leader only).
    commit_notice_at: Option<Time>,
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
    /// Rejoining after a loss of state: no vote, no campaign (`Config::catch_up_before_voting`).
    catching_up: bool,
    /// While catching up: the highest commit index this term's leader has sent, and the
    /// time before which the node stays out of elections whatever it has caught up.
    catch_up_target: u64,
    catch_up_not_before: Time,
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
        let catch_up = cfg.catch_up_before_voting;
        let catch_up_not_before =
            now + Duration::from_millis(cfg.election_timeout_ms.saturating_mul(2));
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
            commit_notice_at: None,
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
            catching_up: catch_up,
            catch_up_target: 0,
            catch_up_not_before,
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
        self.members.is_voter(self.id) && !self.catching_up
    }

    /// Whether this node is still catching up after a loss of state (it neither votes nor
    /// campaigns): see `Config::catch_up_before_voting`.
    pub fn catching_up(&self) -> bool {
        self.catching_up
    }

    /// While catching up: remembers the commit index this term's leader sent, and ends the
    /// catching up once it is reached at an entry of this term.
    fn note_leader_commit(&mut self, leader_commit: u64) {
        if !self.catching_up {
            return;
        }
        self.catch_up_target = self.catch_up_target.max(leader_commit);
        let committed = self.log.committed();
        if self.now >= self.catch_up_not_before
            && self.leader != 0
            && committed >= self.catch_up_target
            && self.log.term(committed) == Some(self.term)
        {
            self.catching_up = false;
        }
    }

    fn reset_election_deadline(&mut self) {
        let et = self.cfg.election_timeout_ms.max(1);
        let ms = et.saturating_add(self.rng.random_range(0..et));
        self.election_deadline = self.now + Duration::from_millis(ms);
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
            if self.commit_notice_at.is_some_and(|t| now >= t) {
                self.commit_notice_at = None;
                let ids: Vec<u64> = self.progress.keys().copied().collect();
                for id in ids {
                    self.send_commit_notice(id);
                }
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
        if let Some(t) = self.commit_notice_at {
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
                let leader_commit = a.leader_commit;
                self.handle_append(a)?;
                self.note_leader_commit(leader_commit);
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
                self.note_leader_commit(hb.commit);
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
}

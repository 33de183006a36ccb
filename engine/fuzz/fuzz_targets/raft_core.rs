//! Drives one Raft node (id 1 of voters 1, 2, 3; node 4 may join as a learner) with an
//! arbitrary sequence of peer messages, ticks, proposals, durability reports (for what the
//! harness wrote from earlier Readys, and sometimes bogus ones), `applied` and
//! `snapshot_done`. Message fields are drawn mostly relative to the node's own state (its
//! term, last, committed, persisted index, ...) so the node gets elected, replicates,
//! compacts and streams snapshots; raw values reach the refusal paths.
//!
//! Besides "no panic", after every input: the term and the commit index never decrease,
//! the commit index never passes the last index, a refused message changes nothing (not
//! even the clock), entries handed out to write continue what was written, an
//! acknowledgement never claims more than the harness wrote and leaves only with
//! `persisted_messages`, as does a granted vote (whose hard state was written), and no
//! node votes twice in one term.

#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringleader_raft::{ConfChange, Config, HardState, Raft, Ready, Recovered, Role, encode_conf};
use ringleader_sim::{SimRng, sched};
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{
    AppendEntries, AppendResponse, ConfState, Entry, EntryKind, Heartbeat, HeartbeatResponse,
    InstallSnapshot, RaftHeader, ReadIndexRequest, ReadIndexResponse, SnapshotResponse, TimeoutNow,
    VoteRequest, VoteResponse,
};

const ME: u64 = 1;
const GROUP: u64 = 1;

#[derive(Arbitrary, Debug)]
struct Case {
    pre_vote: bool,
    check_quorum: bool,
    /// The node rejoins after a loss of state (no vote, no campaign until caught up).
    catch_up: bool,
    seed: u8,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Msg(Msg),
    /// Several messages before the next Ready.
    Batch(Vec<Msg>),
    Tick(u8),
    TickToDeadline,
    Propose(u8),
    /// Makes this many (+1) of the oldest pending writes durable and reports them.
    Persist(u8),
    BogusPersisted(Idx, Trm),
    Applied,
    BogusApplied(Idx),
    SnapshotDone(Idx, u8),
    ReadIndex(u64),
    ReadLease(u64),
    Transfer(Peer),
    Change(u8, Peer),
}

/// A term relative to the node's.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Trm {
    Current,
    Next,
    Prev,
    Ahead(u8),
    Behind(u8),
    Raw(u64),
}

/// An index relative to the node's log.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Idx {
    Last,
    Committed,
    Persisted,
    Applied,
    Offset,
    Ahead(u8),
    Behind(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Peer {
    Two,
    Three,
    Four,
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Hdr {
    from: Peer,
    term: Trm,
    /// 255: another group or another receiver.
    route: u8,
}

#[derive(Arbitrary, Debug, Clone)]
enum Conf {
    Three,
    WithLearner,
    WithoutMe,
    Raw(Vec<u64>, Vec<u64>, Vec<u64>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum PrevTerm {
    /// The node's own term at `prev` (a leader whose log matches).
    Matching,
    T(Trm),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum EntTerm {
    /// The message's term.
    Msg,
    /// The previous entry's.
    Keep,
    T(Trm),
}

#[derive(Arbitrary, Debug, Clone)]
struct EntSpec {
    term: EntTerm,
    config: Option<Conf>,
    payload: u8,
}

#[derive(Arbitrary, Debug, Clone)]
enum Ents {
    /// Numbered one by one after `prev`.
    Follow(Vec<EntSpec>),
    Raw(Vec<(Idx, Trm, u8)>),
}

#[derive(Arbitrary, Debug, Clone)]
enum Msg {
    Append {
        h: Hdr,
        prev: Idx,
        prev_term: PrevTerm,
        commit: Idx,
        entries: Ents,
    },
    AppendResp {
        h: Hdr,
        success: bool,
        matched: Idx,
        hint: Idx,
        hint_term: Trm,
    },
    Vote {
        h: Hdr,
        last: Idx,
        last_term: PrevTerm,
        pre: bool,
        transfer: bool,
    },
    VoteResp {
        h: Hdr,
        granted: bool,
        pre: bool,
    },
    Snap {
        h: Hdr,
        index: Idx,
        term: Trm,
        conf: Conf,
        total: u8,
        offset: u8,
        len: u8,
        bogus_done: bool,
    },
    RawSnap {
        h: Hdr,
        index: Idx,
        term: Trm,
        offset: u64,
        total: u64,
        len: u8,
        done: bool,
    },
    SnapResp {
        h: Hdr,
        next_offset: u64,
        success: bool,
    },
    TimeoutNow {
        h: Hdr,
    },
    ReadReq {
        h: Hdr,
        ctx: u64,
    },
    ReadResp {
        h: Hdr,
        ctx: u64,
        index: Idx,
    },
    Heartbeat {
        h: Hdr,
        commit: Idx,
        ctx: u64,
    },
    HeartbeatResp {
        h: Hdr,
        ctx: u64,
    },
}

/// What a refused input must leave exactly as it was.
#[derive(Debug, PartialEq, Eq)]
struct Visible {
    term: u64,
    vote: u64,
    role: Role,
    leader: u64,
    last: (u64, u64),
    committed: u64,
    persisted: u64,
    applied: u64,
    has_ready: bool,
    deadline: Time,
    lease: bool,
}

fn visible(r: &Raft<SimRng>) -> Visible {
    Visible {
        term: r.term(),
        vote: r.vote(),
        role: r.role(),
        leader: r.leader_id(),
        last: (r.log().last_index(), r.log().last_term()),
        committed: r.log().committed(),
        persisted: r.log().persisted(),
        applied: r.log().applied(),
        has_ready: r.has_ready(),
        deadline: r.deadline(),
        lease: r.lease_valid(),
    }
}

struct Harness {
    raft: Raft<SimRng>,
    now: Time,
    /// The log as written (every Ready's write applied in order): index -> term.
    written: BTreeMap<u64, u64>,
    written_snap: (u64, u64),
    written_hard: HardState,
    /// Writes handed out and not yet durable: the last (index, term) each wrote.
    pending: VecDeque<Option<(u64, u64)>>,
    /// The last committed index handed out to apply.
    handed_out: u64,
    /// Term -> the candidate this node voted for in it.
    votes: BTreeMap<u64, u64>,
    term: u64,
    committed: u64,
}

impl Harness {
    fn term(&self, t: Trm) -> u64 {
        let cur = self.raft.term();
        match t {
            Trm::Current => cur,
            Trm::Next => cur.saturating_add(1),
            Trm::Prev => cur.saturating_sub(1),
            Trm::Ahead(k) => cur.saturating_add(u64::from(k)),
            Trm::Behind(k) => cur.saturating_sub(u64::from(k)),
            Trm::Raw(v) => v,
        }
    }

    fn index(&self, i: Idx) -> u64 {
        let log = self.raft.log();
        match i {
            Idx::Last => log.last_index(),
            Idx::Committed => log.committed(),
            Idx::Persisted => log.persisted(),
            Idx::Applied => log.applied(),
            Idx::Offset => log.offset(),
            Idx::Ahead(k) => log.last_index().saturating_add(u64::from(k)),
            Idx::Behind(k) => log.last_index().saturating_sub(u64::from(k)),
            Idx::Raw(v) => v,
        }
    }

    fn prev_term(&self, p: PrevTerm, index: u64) -> u64 {
        match p {
            PrevTerm::Matching => self.raft.log().term(index).unwrap_or(0),
            PrevTerm::T(t) => self.term(t),
        }
    }

    fn hdr(&self, h: Hdr) -> RaftHeader {
        let from = peer(h.from);
        let (group, to) = match h.route {
            255 => (GROUP + 1, ME),
            254 => (GROUP, 7),
            _ => (GROUP, ME),
        };
        RaftHeader {
            group,
            from,
            to,
            term: self.term(h.term),
        }
    }

    fn message(&self, m: Msg) -> Message {
        match m {
            Msg::Append {
                h,
                prev,
                prev_term,
                commit,
                entries,
            } => {
                let header = self.hdr(h);
                let prev_log_index = self.index(prev);
                let prev_log_term = self.prev_term(prev_term, prev_log_index);
                let entries = match entries {
                    Ents::Follow(specs) => {
                        let mut out = Vec::new();
                        let mut last_term = prev_log_term;
                        for (i, s) in specs.into_iter().enumerate() {
                            let term = match s.term {
                                EntTerm::Msg => header.term,
                                EntTerm::Keep => last_term,
                                EntTerm::T(t) => self.term(t),
                            };
                            last_term = term;
                            let (kind, payload) = match s.config {
                                Some(c) => (EntryKind::Config, encode_conf(&conf(c))),
                                None => (EntryKind::Normal, vec![s.payload]),
                            };
                            out.push(Entry {
                                index: prev_log_index.wrapping_add(1 + i as u64),
                                term,
                                kind,
                                payload,
                            });
                        }
                        out
                    }
                    Ents::Raw(raw) => raw
                        .into_iter()
                        .map(|(i, t, k)| Entry {
                            index: self.index(i),
                            term: self.term(t),
                            kind: match k % 3 {
                                0 => EntryKind::Normal,
                                1 => EntryKind::Config,
                                _ => EntryKind::Noop,
                            },
                            payload: vec![k; usize::from(k % 32)],
                        })
                        .collect(),
                };
                Message::AppendEntries(AppendEntries {
                    header,
                    prev_log_index,
                    prev_log_term,
                    leader_commit: self.index(commit),
                    entries,
                })
            }
            Msg::AppendResp {
                h,
                success,
                matched,
                hint,
                hint_term,
            } => Message::AppendResponse(AppendResponse {
                header: self.hdr(h),
                success,
                match_index: self.index(matched),
                reject_hint_index: self.index(hint),
                reject_hint_term: self.term(hint_term),
            }),
            Msg::Vote {
                h,
                last,
                last_term,
                pre,
                transfer,
            } => {
                let last_log_index = self.index(last);
                Message::VoteRequest(VoteRequest {
                    header: self.hdr(h),
                    last_log_index,
                    last_log_term: self.prev_term(last_term, last_log_index),
                    pre_vote: pre,
                    leadership_transfer: transfer,
                })
            }
            Msg::VoteResp { h, granted, pre } => Message::VoteResponse(VoteResponse {
                header: self.hdr(h),
                granted,
                pre_vote: pre,
            }),
            Msg::Snap {
                h,
                index,
                term,
                conf: c,
                total,
                offset,
                len,
                bogus_done,
            } => {
                let total = u64::from(total % 48);
                let offset = u64::from(offset) % (total + 1);
                let len = u64::from(len) % (total - offset + 1);
                let end = offset + len;
                Message::InstallSnapshot(InstallSnapshot {
                    header: self.hdr(h),
                    last_included_index: self.index(index),
                    last_included_term: self.term(term),
                    conf: conf(c),
                    offset,
                    total_bytes: total,
                    data: vec![7; len as usize],
                    done: (end == total) != bogus_done,
                })
            }
            Msg::RawSnap {
                h,
                index,
                term,
                offset,
                total,
                len,
                done,
            } => Message::InstallSnapshot(InstallSnapshot {
                header: self.hdr(h),
                last_included_index: self.index(index),
                last_included_term: self.term(term),
                conf: conf(Conf::Three),
                offset,
                total_bytes: total,
                data: vec![7; usize::from(len)],
                done,
            }),
            Msg::SnapResp {
                h,
                next_offset,
                success,
            } => Message::SnapshotResponse(SnapshotResponse {
                header: self.hdr(h),
                next_offset,
                success,
            }),
            Msg::TimeoutNow { h } => Message::TimeoutNow(TimeoutNow {
                header: self.hdr(h),
            }),
            Msg::ReadReq { h, ctx } => Message::ReadIndexRequest(ReadIndexRequest {
                header: self.hdr(h),
                ctx,
            }),
            Msg::ReadResp { h, ctx, index } => Message::ReadIndexResponse(ReadIndexResponse {
                header: self.hdr(h),
                ctx,
                index: self.index(index),
            }),
            Msg::Heartbeat { h, commit, ctx } => Message::Heartbeat(Heartbeat {
                header: self.hdr(h),
                commit: self.index(commit),
                ctx,
            }),
            Msg::HeartbeatResp { h, ctx } => Message::HeartbeatResponse(HeartbeatResponse {
                header: self.hdr(h),
                ctx,
            }),
        }
    }

    fn step(&mut self, m: Msg) {
        let msg = self.message(m);
        let before = visible(&self.raft);
        let now = self.now;
        if let Err(e) = self.raft.step(now, msg) {
            assert_eq!(before, visible(&self.raft), "refused ({e}) yet changed");
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Msg(m) => self.step(m),
            Op::Batch(ms) => {
                for m in ms {
                    self.step(m);
                }
            }
            Op::Tick(ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                self.raft.tick(self.now);
            }
            Op::TickToDeadline => {
                let before = visible(&self.raft);
                let early = self.raft.deadline().as_nanos().saturating_sub(1);
                if early > self.now.as_nanos() {
                    // Ticking before the deadline does nothing.
                    self.raft.tick(Time::from_nanos(early));
                    let mut after = visible(&self.raft);
                    after.lease = before.lease; // the lease is the one thing time wears out
                    assert_eq!(before, after, "a tick before the deadline acted");
                    self.now = Time::from_nanos(early);
                }
                self.now = self.now.max(self.raft.deadline());
                self.raft.tick(self.now);
            }
            Op::Propose(n) => {
                let batch: Vec<Vec<u8>> = (0..n % 5).map(|i| vec![i; 3]).collect();
                let _ = self.raft.propose(batch);
            }
            Op::Persist(k) => {
                for _ in 0..=k {
                    let Some(w) = self.pending.pop_front() else {
                        break;
                    };
                    if let Some((i, t)) = w {
                        self.raft.persisted(i, t);
                    }
                }
            }
            Op::BogusPersisted(i, t) => {
                let (i, t) = (self.index(i), self.term(t));
                // Only values the harness never handed out: a lie about a pending write is
                // indistinguishable from the truth.
                if !self
                    .pending
                    .iter()
                    .any(|w| w.is_some_and(|(pi, _)| pi >= i))
                {
                    self.raft.persisted(i, t);
                }
            }
            Op::Applied => self.raft.applied(self.handed_out),
            Op::BogusApplied(i) => {
                let i = self.index(i);
                self.raft.applied(i);
            }
            Op::SnapshotDone(i, len) => {
                let i = self.index(i);
                let data: Arc<[u8]> = vec![9u8; usize::from(len % 40)].into();
                let _ = self.raft.snapshot_done(i, data);
            }
            Op::ReadIndex(ctx) => {
                let _ = self.raft.read_index(ctx);
            }
            Op::ReadLease(ctx) => {
                let _ = self.raft.read_lease(ctx);
            }
            Op::Transfer(p) => {
                let _ = self.raft.transfer_leader(peer(p));
            }
            Op::Change(k, p) => {
                let id = peer(p);
                let change = match k % 3 {
                    0 => ConfChange::AddVoter(id),
                    1 => ConfChange::AddLearner(id),
                    _ => ConfChange::Remove(id),
                };
                let _ = self.raft.change_membership(change);
            }
        }
        for _ in 0..8 {
            if !self.raft.has_ready() {
                break;
            }
            let rd = self.raft.ready();
            self.handle(rd);
        }
        self.invariants();
    }

    fn invariants(&mut self) {
        let r = &self.raft;
        assert!(r.term() >= self.term, "term went back");
        assert!(r.log().committed() >= self.committed, "commit went back");
        assert!(
            r.log().committed() <= r.log().last_index(),
            "commit past the last index"
        );
        assert!(r.term() <= ringleader_raft::TERM_MAX);
        assert!(r.log().last_index() <= ringleader_raft::INDEX_MAX);
        self.term = r.term();
        self.committed = r.log().committed();
    }

    fn written_last(&self) -> u64 {
        self.written
            .last_key_value()
            .map_or(self.written_snap.0, |(&i, _)| i)
    }

    fn record_vote(&mut self, term: u64, candidate: u64) {
        let v = *self.votes.entry(term).or_insert(candidate);
        assert_eq!(v, candidate, "two votes in term {term}");
    }

    fn handle(&mut self, rd: Ready) {
        for m in &rd.messages {
            match m {
                Message::AppendResponse(r) => {
                    assert!(!r.success, "an acknowledgement left before the write")
                }
                Message::VoteResponse(v) => {
                    assert!(!v.granted || v.pre_vote, "a vote left before the write")
                }
                Message::VoteRequest(v) => assert!(v.pre_vote, "a candidacy left before the write"),
                _ => {}
            }
        }
        // The write, in Ready order.
        if let Some(hs) = rd.hard_state {
            let old = self.written_hard;
            assert!(hs.term >= old.term, "durable term went back");
            if hs.term == old.term && old.vote != 0 {
                assert_eq!(hs.vote, old.vote, "vote changed within a term");
            }
            if hs.vote != 0 {
                self.record_vote(hs.term, hs.vote);
            }
            self.written_hard = hs;
        }
        let mut last = None;
        if let Some(s) = &rd.snapshot {
            if self.written.get(&s.index) == Some(&s.term) {
                self.written = self.written.split_off(&(s.index + 1));
            } else {
                self.written.clear();
            }
            self.written_snap = (s.index, s.term);
            last = Some((s.index, s.term));
        }
        if let Some(first) = rd.entries.first() {
            assert!(
                first.index > self.written_snap.0 && first.index <= self.written_last() + 1,
                "entries to write leave a gap after what was written"
            );
            let _ = self.written.split_off(&first.index);
            for e in &rd.entries {
                self.written.insert(e.index, e.term);
            }
            last = rd.entries.last().map(|e| (e.index, e.term));
        }
        if rd.must_write() {
            self.pending.push_back(last);
        }
        for m in &rd.persisted_messages {
            match m {
                Message::AppendResponse(r) if r.success => {
                    assert!(
                        r.match_index <= self.written_last(),
                        "acknowledges {} beyond what was written ({})",
                        r.match_index,
                        self.written_last()
                    );
                    assert!(r.header.term <= self.written_hard.term);
                }
                Message::VoteResponse(v) if v.granted && !v.pre_vote => {
                    // Its hard state is written, or a later term's is (which rules out
                    // voting again in this one).
                    let hs = self.written_hard;
                    assert!(
                        hs.term > v.header.term
                            || (hs.term, hs.vote) == (v.header.term, v.header.to),
                        "a granted vote whose hard state was not written"
                    );
                    self.record_vote(v.header.term, v.header.to);
                }
                _ => {}
            }
        }
        if let Some(e) = rd.committed_entries.last() {
            self.handed_out = e.index;
        }
    }
}

fn peer(p: Peer) -> u64 {
    match p {
        Peer::Two => 2,
        Peer::Three => 3,
        Peer::Four => 4,
        Peer::Raw(v) => v,
    }
}

fn conf(c: Conf) -> ConfState {
    let (voters, learners) = match c {
        Conf::Three => (vec![1, 2, 3], vec![]),
        Conf::WithLearner => (vec![1, 2, 3], vec![4]),
        Conf::WithoutMe => (vec![2, 3, 4], vec![]),
        Conf::Raw(v, l, o) => {
            return ConfState {
                voters: v,
                learners: l,
                voters_outgoing: o,
            };
        }
    };
    ConfState {
        voters,
        learners,
        voters_outgoing: vec![],
    }
}

fuzz_target!(|case: Case| {
    let cfg = Config {
        group: GROUP,
        election_timeout_ms: 10,
        heartbeat_interval_ms: 3,
        pre_vote: case.pre_vote,
        check_quorum: case.check_quorum,
        inflight_msgs_max: 3,
        inflight_bytes_max: 256,
        msg_entries_max: 3,
        msg_bytes_max: 128,
        uncommitted_entries_max: 32,
        apply_entries_max: 4,
        pending_reads_max: 4,
        snapshot_chunk_bytes: 8,
        snapshot_bytes_max: 40,
        lease_clock_drift_permille: 100,
        commit_notice_delay_us: 2_000,
        catch_up_before_voting: case.catch_up,
    };
    let Ok(raft) = Raft::new(
        cfg,
        ME,
        conf(Conf::Three),
        Recovered::default(),
        sched::rng(u64::from(case.seed)),
        Time::ZERO,
    ) else {
        return;
    };
    let mut h = Harness {
        raft,
        now: Time::ZERO,
        written: BTreeMap::new(),
        written_snap: (0, 0),
        written_hard: HardState::default(),
        pending: VecDeque::new(),
        handed_out: 0,
        votes: BTreeMap::new(),
        term: 0,
        committed: 0,
    };
    for op in case.ops {
        h.run(op);
    }
});

//! The Raft core against the rules of the paper (Ongaro & Ousterhout 2014) and the thesis,
//! one test per rule, driven through a small deterministic in-memory network.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ringleader_engine::Time;
use ringleader_engine::raft::{
    ConfChange, Config, HardState, INDEX_MAX, Raft, RaftError, Recovered, Role, TERM_MAX,
    encode_conf,
};
use ringleader_sim::{SimRng, sched};
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{
    AppendEntries, AppendResponse, ConfState, Entry, EntryKind, Heartbeat, HeartbeatResponse,
    InstallSnapshot, RaftHeader, ReadIndexResponse, TimeoutNow, VoteRequest,
};

fn ends(m: &Message) -> (u64, u64) {
    match m {
        Message::AppendEntries(x) => (x.header.from, x.header.to),
        Message::AppendResponse(x) => (x.header.from, x.header.to),
        Message::VoteRequest(x) => (x.header.from, x.header.to),
        Message::VoteResponse(x) => (x.header.from, x.header.to),
        Message::InstallSnapshot(x) => (x.header.from, x.header.to),
        Message::SnapshotResponse(x) => (x.header.from, x.header.to),
        Message::TimeoutNow(x) => (x.header.from, x.header.to),
        Message::ReadIndexRequest(x) => (x.header.from, x.header.to),
        Message::ReadIndexResponse(x) => (x.header.from, x.header.to),
        Message::Heartbeat(x) => (x.header.from, x.header.to),
        Message::HeartbeatResponse(x) => (x.header.from, x.header.to),
        _ => (0, 0),
    }
}

fn cfg() -> Config {
    Config {
        election_timeout_ms: 100,
        heartbeat_interval_ms: 20,
        ..Config::default()
    }
}

fn voters(n: u64) -> ConfState {
    ConfState {
        voters: (1..=n).collect(),
        learners: vec![],
        voters_outgoing: vec![],
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        payload: vec![index as u8],
    }
}

fn hdr(from: u64, to: u64, term: u64) -> RaftHeader {
    RaftHeader {
        group: 1,
        from,
        to,
        term,
    }
}

/// Nodes, a FIFO network with cuttable links, and storage that persists at once unless a
/// node's persistence is held.
struct Cluster {
    nodes: BTreeMap<u64, Raft<SimRng>>,
    now: Time,
    net: VecDeque<Message>,
    cut: BTreeSet<(u64, u64)>,
    applied: BTreeMap<u64, Vec<Entry>>,
    sent: Vec<Message>,
    snapshots_installed: BTreeMap<u64, u64>,
    reads: BTreeMap<u64, Vec<(u64, u64)>>,
    held: BTreeMap<u64, Vec<(u64, u64)>>,
    held_msgs: BTreeMap<u64, Vec<Message>>,
}

impl Cluster {
    fn new(n: u64, cfg: Config) -> Cluster {
        let mut c = Cluster::empty();
        for id in 1..=n {
            c.add(id, cfg.clone(), voters(n), Recovered::default());
        }
        c
    }

    fn empty() -> Cluster {
        Cluster {
            nodes: BTreeMap::new(),
            now: Time::ZERO,
            net: VecDeque::new(),
            cut: BTreeSet::new(),
            applied: BTreeMap::new(),
            sent: Vec::new(),
            snapshots_installed: BTreeMap::new(),
            reads: BTreeMap::new(),
            held: BTreeMap::new(),
            held_msgs: BTreeMap::new(),
        }
    }

    fn add(&mut self, id: u64, cfg: Config, conf: ConfState, rec: Recovered) {
        let r =
            Raft::new(cfg, id, conf, rec, sched::rng(1000 + id), self.now).expect("valid state");
        self.nodes.insert(id, r);
        self.applied.insert(id, Vec::new());
    }

    fn node(&mut self, id: u64) -> &mut Raft<SimRng> {
        self.nodes.get_mut(&id).expect("node exists")
    }

    fn hold(&mut self, id: u64) {
        self.held.insert(id, Vec::new());
        self.held_msgs.insert(id, Vec::new());
    }

    /// Makes a held node's writes durable.
    fn release(&mut self, id: u64) {
        for (i, t) in self.held.remove(&id).unwrap_or_default() {
            self.node(id).persisted(i, t);
        }
        let msgs = self.held_msgs.remove(&id).unwrap_or_default();
        self.net.extend(msgs);
        self.drain(id);
    }

    fn drain(&mut self, id: u64) {
        for _ in 0..1000 {
            let r = self.nodes.get_mut(&id).expect("node exists");
            if !r.has_ready() {
                return;
            }
            let rd = r.ready();
            self.sent.extend(rd.messages.iter().cloned());
            self.net.extend(rd.messages);
            let last = rd
                .entries
                .last()
                .map(|e| (e.index, e.term))
                .or(rd.snapshot.as_ref().map(|s| (s.index, s.term)));
            if rd.snapshot.is_some() {
                *self.snapshots_installed.entry(id).or_default() += 1;
            }
            if let Some(h) = self.held.get_mut(&id) {
                h.extend(last);
                if let Some(m) = self.held_msgs.get_mut(&id) {
                    m.extend(rd.persisted_messages);
                }
            } else {
                if let Some((i, t)) = last {
                    r.persisted(i, t);
                }
                self.sent.extend(rd.persisted_messages.iter().cloned());
                self.net.extend(rd.persisted_messages);
            }
            if let Some(e) = rd.committed_entries.last() {
                r.applied(e.index);
            }
            self.applied
                .get_mut(&id)
                .expect("node")
                .extend(rd.committed_entries);
            self.reads
                .entry(id)
                .or_default()
                .extend(rd.read_states.iter().map(|s| (s.ctx, s.index)));
        }
        panic!("node {id} never settles");
    }

    fn deliver(&mut self) {
        for _ in 0..1_000_000 {
            let Some(m) = self.net.pop_front() else {
                return;
            };
            let (from, to) = ends(&m);
            if self.cut.contains(&(from, to)) || !self.nodes.contains_key(&to) {
                continue;
            }
            let now = self.now;
            let _ = self.node(to).step(now, m);
            self.drain(to);
        }
        panic!("messages never settle");
    }

    fn settle(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.drain(id);
        }
        self.deliver();
    }

    /// Advances every clock by `ms`, in 5 ms steps, delivering everything after each.
    fn tick(&mut self, ms: u64) {
        for _ in 0..ms.div_ceil(5) {
            self.now += Duration::from_millis(5);
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in ids {
                let now = self.now;
                self.node(id).tick(now);
                self.drain(id);
            }
            self.deliver();
        }
    }

    fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    fn elect(&mut self) -> u64 {
        for _ in 0..200 {
            if let Some(l) = self.leader() {
                self.settle();
                return l;
            }
            self.tick(5);
        }
        panic!("no leader elected");
    }

    fn isolate(&mut self, id: u64) {
        for &o in self.nodes.keys() {
            if o != id {
                self.cut.insert((id, o));
                self.cut.insert((o, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn propose(&mut self, leader: u64, n: usize, bytes: usize) {
        let batch: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; bytes]).collect();
        self.node(leader).propose(batch).expect("leader accepts");
        self.drain(leader);
    }

    fn leaders_per_term(&self) -> BTreeMap<u64, BTreeSet<u64>> {
        let mut m: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for r in self.nodes.values() {
            if r.role() == Role::Leader {
                m.entry(r.term()).or_default().insert(r.id());
            }
        }
        m
    }

    /// State-machine safety over everything applied so far.
    fn assert_applied_agree(&self) {
        let longest = self
            .applied
            .values()
            .max_by_key(|v| v.len())
            .expect("nodes");
        for (id, log) in &self.applied {
            for e in log {
                if let Some(o) = longest.iter().find(|o| o.index == e.index) {
                    assert_eq!(
                        (o.term, &o.payload),
                        (e.term, &e.payload),
                        "node {id} applied a different entry {}",
                        e.index
                    );
                }
            }
        }
    }
}

// ----- §5.2 leader election -----

#[test]
fn s5_2_one_leader_per_term_and_one_vote_per_term() {
    let mut c = Cluster::new(5, cfg());
    let l = c.elect();
    c.tick(500);
    assert!(c.leaders_per_term().values().all(|s| s.len() == 1));
    assert_eq!(c.leader(), Some(l), "a stable cluster keeps its leader");

    // A voter grants at most one vote per term, and only once the vote is durable.
    let mut n = Raft::new(
        Config {
            check_quorum: false,
            ..cfg()
        },
        1,
        voters(3),
        Recovered::default(),
        sched::rng(1),
        Time::ZERO,
    )
    .unwrap();
    let req = |from| {
        Message::VoteRequest(VoteRequest {
            header: hdr(from, 1, 1),
            last_log_index: 0,
            last_log_term: 0,
            pre_vote: false,
            leadership_transfer: false,
        })
    };
    n.step(Time::ZERO, req(2)).unwrap();
    let rd = n.ready();
    assert_eq!(rd.hard_state, Some(HardState { term: 1, vote: 2 }));
    assert!(
        rd.messages.is_empty(),
        "a vote never leaves before it is durable"
    );
    assert!(matches!(&rd.persisted_messages[..], [Message::VoteResponse(v)] if v.granted));
    n.step(Time::ZERO, req(3)).unwrap();
    let rd = n.ready();
    assert!(matches!(&rd.messages[..], [Message::VoteResponse(v)] if !v.granted));
    // The same candidate asking again gets the same answer (a retransmission).
    n.step(Time::ZERO, req(2)).unwrap();
    assert!(matches!(&n.ready().persisted_messages[..], [Message::VoteResponse(v)] if v.granted));
}

#[test]
fn s5_2_candidate_requests_leave_after_its_own_vote_is_durable() {
    let mut c = Cluster::new(
        3,
        Config {
            pre_vote: false,
            ..cfg()
        },
    );
    c.hold(1);
    for _ in 0..100 {
        c.now += Duration::from_millis(5);
        let now = c.now;
        c.node(1).tick(now);
        c.drain(1);
        if c.node(1).role() == Role::Candidate {
            break;
        }
    }
    assert_eq!(c.node(1).role(), Role::Candidate);
    assert!(c.net.iter().all(|m| !matches!(m, Message::VoteRequest(_))));
    c.release(1);
    assert!(c.net.iter().any(|m| matches!(m, Message::VoteRequest(_))));
}

// ----- §5.4.1 election restriction -----

#[test]
fn s5_4_1_voters_refuse_candidates_with_older_logs() {
    let rec = Recovered {
        hard_state: HardState { term: 2, vote: 0 },
        snapshot: None,
        entries: vec![entry(1, 1), entry(2, 2)],
    };
    let mut n = Raft::new(
        Config {
            check_quorum: false,
            ..cfg()
        },
        1,
        voters(3),
        rec,
        sched::rng(1),
        Time::ZERO,
    )
    .unwrap();
    let req = |from, last_log_index, last_log_term| {
        Message::VoteRequest(VoteRequest {
            header: hdr(from, 1, 3),
            last_log_index,
            last_log_term,
            pre_vote: false,
            leadership_transfer: false,
        })
    };
    // Longer log but older last term: refused.
    n.step(Time::ZERO, req(2, 9, 1)).unwrap();
    let rd = n.ready();
    assert!(matches!(&rd.messages[..], [Message::VoteResponse(v)] if !v.granted));
    // Same last term, shorter: refused. Same term and length: granted.
    n.step(Time::ZERO, req(3, 1, 2)).unwrap();
    assert!(matches!(&n.ready().messages[..], [Message::VoteResponse(v)] if !v.granted));
    n.step(Time::ZERO, req(3, 2, 2)).unwrap();
    assert!(matches!(&n.ready().persisted_messages[..], [Message::VoteResponse(v)] if v.granted));
}

// ----- §5.3 log replication -----

#[test]
fn s5_3_consistency_check_truncates_conflicts_and_fast_backoff_converges() {
    let mut f = Raft::new(
        Config {
            check_quorum: false,
            ..cfg()
        },
        2,
        voters(3),
        Recovered {
            hard_state: HardState { term: 2, vote: 0 },
            snapshot: None,
            entries: vec![entry(1, 1), entry(2, 1), entry(3, 2)],
        },
        sched::rng(2),
        Time::ZERO,
    )
    .unwrap();
    let app = |prev_log_index, prev_log_term, entries: Vec<Entry>| {
        Message::AppendEntries(AppendEntries {
            header: hdr(1, 2, 3),
            prev_log_index,
            prev_log_term,
            leader_commit: 0,
            entries,
        })
    };
    // Mismatch at prev: rejected, with a hint.
    f.step(Time::ZERO, app(3, 3, vec![entry(4, 3)])).unwrap();
    let rd = f.ready();
    assert!(
        matches!(&rd.messages[..], [Message::AppendResponse(r)] if !r.success && r.reject_hint_index == 3 && r.reject_hint_term == 2)
    );
    // Match at 2: the conflicting 3@2 is replaced; the ack waits for durability.
    f.step(Time::ZERO, app(2, 1, vec![entry(3, 3), entry(4, 3)]))
        .unwrap();
    let rd = f.ready();
    assert_eq!(rd.entries.first().map(|e| (e.index, e.term)), Some((3, 3)));
    assert!(
        matches!(&rd.persisted_messages[..], [Message::AppendResponse(r)] if r.success && r.match_index == 4)
    );
    assert_eq!(f.log().term(3), Some(3));

    // A cluster where one follower holds a long divergent suffix: the leader finds the
    // match point in a few round trips, not one per entry.
    let mut c = Cluster::empty();
    let good: Vec<Entry> = (1..=60)
        .map(|i| entry(i, if i <= 20 { 1 } else { 3 }))
        .collect();
    let bad: Vec<Entry> = (1..=80)
        .map(|i| entry(i, if i <= 20 { 1 } else { 2 }))
        .collect();
    for id in 1..=3 {
        let entries = if id == 3 { bad.clone() } else { good.clone() };
        c.add(
            id,
            cfg(),
            voters(3),
            Recovered {
                hard_state: HardState { term: 3, vote: 0 },
                snapshot: None,
                entries,
            },
        );
    }
    let l = c.elect();
    assert_ne!(l, 3, "node 3's log is not up to date");
    c.tick(200);
    let rejects = c
        .sent
        .iter()
        .filter(|m| matches!(m, Message::AppendResponse(r) if !r.success && r.header.from == 3 && r.header.term > 0 && r.match_index > 0))
        .count();
    assert!(rejects <= 3, "{rejects} rejections");
    let last = c.node(l).log().last_index();
    assert_eq!(c.node(3).log().last_index(), last);
    for i in 1..=last {
        let t = c.node(l).log().term(i);
        assert_eq!(c.node(3).log().term(i), t, "index {i}");
    }
}

// ----- §5.4.2 committing entries from previous terms (Figure 8) -----

#[test]
fn s5_4_2_figure8_old_term_entries_commit_only_with_a_current_term_entry() {
    // Node 1 holds 2@2, replicated to node 2 only, never committed (Figure 8 (b)/(c)).
    let c_cfg = Config {
        pre_vote: false,
        check_quorum: false,
        ..cfg()
    };
    let mut c = Cluster::empty();
    c.add(
        1,
        c_cfg.clone(),
        voters(3),
        Recovered {
            hard_state: HardState { term: 2, vote: 1 },
            snapshot: None,
            entries: vec![entry(1, 1), entry(2, 2)],
        },
    );
    c.add(
        2,
        c_cfg.clone(),
        voters(3),
        Recovered {
            hard_state: HardState { term: 2, vote: 1 },
            snapshot: None,
            entries: vec![entry(1, 1)],
        },
    );
    c.add(
        3,
        c_cfg,
        voters(3),
        Recovered {
            hard_state: HardState { term: 2, vote: 0 },
            snapshot: None,
            entries: vec![entry(1, 1)],
        },
    );
    // Node 1 campaigns in term 3; appends go nowhere yet (we play the followers by hand).
    c.cut.extend([(1, 2), (1, 3)]);
    while c.node(1).role() != Role::Candidate {
        c.now += Duration::from_millis(5);
        let now = c.now;
        c.node(1).tick(now);
        c.drain(1);
    }
    let term = c.node(1).term();
    for from in [2, 3] {
        let m = Message::VoteResponse(ringleader_wire::msg::raft::VoteResponse {
            header: hdr(from, 1, term),
            granted: true,
            pre_vote: false,
        });
        let now = c.now;
        c.node(1).step(now, m).unwrap();
    }
    c.drain(1);
    assert_eq!(c.node(1).role(), Role::Leader);
    assert_eq!(
        c.node(1).log().term(3),
        Some(term),
        "the new leader appends a no-op of its term"
    );
    // Node 2 acknowledges 2@2: a majority holds it, but it is not of the current term.
    let ack = |from, match_index| {
        Message::AppendResponse(AppendResponse {
            header: hdr(from, 1, term),
            success: true,
            match_index,
            reject_hint_index: 0,
            reject_hint_term: 0,
        })
    };
    let now = c.now;
    c.node(1).step(now, ack(2, 2)).unwrap();
    c.drain(1);
    assert_eq!(
        c.node(1).log().committed(),
        0,
        "2@2 must not commit by counting replicas (Figure 8)"
    );
    // Once the current term's no-op is on a majority, everything before it commits.
    c.node(1).step(now, ack(2, 3)).unwrap();
    c.drain(1);
    assert_eq!(c.node(1).log().committed(), 3);
}

// ----- §10.2.1 the leader writes in parallel, counting itself only once durable -----

#[test]
fn s10_2_1_leader_counts_itself_only_up_to_its_durable_index() {
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    let others: Vec<u64> = (1..=3).filter(|&i| i != l).collect();
    c.isolate(others[1]);
    c.hold(l);
    c.propose(l, 1, 8);
    let idx = c.node(l).log().last_index();
    // The append left before the leader's own write finished.
    assert!(c.net.iter().any(
        |m| matches!(m, Message::AppendEntries(a) if a.entries.iter().any(|e| e.index == idx))
    ));
    c.deliver();
    assert!(
        c.node(l)
            .progress(others[0])
            .is_some_and(|p| p.match_index == idx)
    );
    assert!(
        c.node(l).log().committed() < idx,
        "one follower plus a non-durable leader is no majority"
    );
    c.release(l);
    assert_eq!(c.node(l).log().committed(), idx);
}

// ----- PreVote (thesis §9.6) -----

#[test]
fn prevote_stops_a_rejoining_partitioned_node_from_disrupting() {
    for pre_vote in [true, false] {
        let mut c = Cluster::new(3, Config { pre_vote, ..cfg() });
        let l = c.elect();
        let term = c.node(l).term();
        let x = if l == 1 { 2 } else { 1 };
        c.isolate(x);
        c.tick(2000);
        c.heal();
        c.tick(300);
        if pre_vote {
            assert_eq!(c.node(x).term(), term, "pre-votes never bump the term");
            assert_eq!(c.leader(), Some(l));
            assert_eq!(c.node(l).term(), term, "the leader was not disturbed");
        } else {
            assert!(
                c.node(l).term() > term,
                "without PreVote the rejoining node forces a new term"
            );
        }
    }
}

// ----- CheckQuorum -----

#[test]
fn check_quorum_makes_a_cut_off_leader_step_down() {
    for check_quorum in [true, false] {
        let mut c = Cluster::new(
            3,
            Config {
                check_quorum,
                ..cfg()
            },
        );
        let l = c.elect();
        c.isolate(l);
        c.tick(500);
        if check_quorum {
            assert_ne!(
                c.node(l).role(),
                Role::Leader,
                "a leader that hears from no quorum steps down"
            );
            let others = c.leaders_per_term();
            assert!(
                others.iter().any(|(_, s)| !s.contains(&l)),
                "the majority side elects a new leader"
            );
        } else {
            assert_eq!(
                c.node(l).role(),
                Role::Leader,
                "without CheckQuorum it never learns"
            );
        }
    }
}

// ----- leadership transfer (thesis §3.10) -----

#[test]
fn leader_transfer_catches_the_target_up_then_hands_over() {
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    let term = c.node(l).term();
    let t = if l == 3 { 2 } else { 3 };
    c.cut.insert((l, t));
    c.propose(l, 10, 16);
    c.tick(20);
    c.heal();
    let last = c.node(l).log().last_index();
    assert!(c.node(t).log().last_index() < last, "the target lags");
    c.node(l).transfer_leader(t).unwrap();
    assert_eq!(c.node(l).propose([vec![1]]), Err(RaftError::Transferring));
    assert!(!c.node(l).lease_valid());
    c.settle();
    c.tick(50);
    assert_eq!(c.leader(), Some(t));
    assert_eq!(c.node(t).term(), term + 1);
    assert!(c.node(t).log().last_index() > last);
    assert_eq!(c.node(l).role(), Role::Follower);
    c.assert_applied_agree();
}

// ----- membership change with a learner catching up by snapshot -----

#[test]
fn learner_catches_up_by_chunked_snapshot_then_is_promoted() {
    let small = Config {
        snapshot_chunk_bytes: 256,
        ..cfg()
    };
    let mut c = Cluster::new(3, small.clone());
    let l = c.elect();
    for _ in 0..10 {
        c.propose(l, 20, 32);
        c.tick(20);
    }
    // Every node snapshots its state and compacts its log.
    for id in 1..=3 {
        let applied = c.node(id).log().applied();
        c.node(id)
            .snapshot_done(applied, Arc::from(vec![id as u8; 2000]))
            .unwrap();
    }
    assert!(
        c.node(l).log().first_index() > 100,
        "the leader's log was compacted"
    );
    c.add(
        4,
        small,
        ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            voters_outgoing: vec![],
        },
        Recovered::default(),
    );
    c.node(l)
        .change_membership(ConfChange::AddLearner(4))
        .unwrap();
    c.drain(l);
    c.tick(300);
    let chunks = c
        .sent
        .iter()
        .filter(|m| matches!(m, Message::InstallSnapshot(s) if s.header.to == 4))
        .count();
    assert!(
        chunks >= 8,
        "a 2000-byte snapshot in 256-byte chunks: {chunks}"
    );
    assert_eq!(c.snapshots_installed.get(&4), Some(&1));
    assert_eq!(c.node(4).log().last_index(), c.node(l).log().last_index());
    assert_ne!(c.node(4).role(), Role::Leader);
    assert!(c.node(4).membership().is_learner(4));
    // Promote it; the change commits and every node sees four voters.
    c.node(l)
        .change_membership(ConfChange::AddVoter(4))
        .unwrap();
    assert_eq!(
        c.node(l).change_membership(ConfChange::Remove(2)),
        Err(RaftError::BadConfChange),
        "one change at a time"
    );
    c.drain(l);
    c.tick(100);
    for id in 1..=4 {
        assert_eq!(
            c.node(id).membership().voters(),
            vec![1, 2, 3, 4],
            "node {id}"
        );
    }
    assert!(c.node(l).log().committed() >= c.node(l).log().last_index() - 1);
    // With 4 voters, two nodes down stop progress; one down does not.
    let f = (1..=4).find(|&i| i != l).unwrap();
    c.isolate(f);
    c.propose(l, 1, 8);
    c.tick(50);
    assert_eq!(c.node(l).log().committed(), c.node(l).log().last_index());
    c.assert_applied_agree();
}

// ----- flow control -----

#[test]
fn flow_control_bounds_the_in_flight_window_in_messages_and_bytes() {
    for (msgs_max, bytes_max) in [(4usize, u64::MAX), (64, 3000)] {
        let cfg = Config {
            inflight_msgs_max: msgs_max,
            inflight_bytes_max: bytes_max,
            msg_entries_max: 8,
            ..cfg()
        };
        let mut c = Cluster::new(3, cfg);
        let l = c.elect();
        let f = if l == 1 { 2 } else { 1 };
        c.propose(l, 1, 8);
        c.tick(30);
        assert_eq!(
            c.node(l).progress(f).map(|p| p.state),
            Some(ringleader_engine::raft::ProgressState::Replicate)
        );
        // The follower's answers are lost from now on: the leader must stop at the window.
        c.cut.insert((f, l));
        let before = c.sent.len();
        for _ in 0..20 {
            c.propose(l, 10, 200);
            c.deliver();
        }
        let appends: Vec<usize> = c.sent[before..]
            .iter()
            .filter_map(|m| match m {
                Message::AppendEntries(a) if a.header.to == f && !a.entries.is_empty() => {
                    Some(a.entries.len())
                }
                _ => None,
            })
            .collect();
        assert!(appends.iter().all(|&n| n <= 8));
        let p = c.nodes[&l].progress(f).unwrap();
        assert!(p.inflight_count() <= msgs_max);
        if bytes_max != u64::MAX {
            let msg_bytes_max = 8 * (200 + 24);
            assert!(
                p.inflight_bytes() < bytes_max + msg_bytes_max,
                "{}",
                p.inflight_bytes()
            );
            assert!(
                appends.len() <= 3000 / (200 + 24) + 1,
                "{} appends",
                appends.len()
            );
        } else {
            assert!(appends.len() <= msgs_max, "{} appends", appends.len());
        }
        // Healed, the follower catches up completely.
        c.heal();
        c.tick(500);
        assert_eq!(c.node(f).log().last_index(), c.node(l).log().last_index());
        assert_eq!(c.node(l).log().committed(), c.node(l).log().last_index());
    }
}

// ----- reads (thesis §6.4) -----

#[test]
fn read_index_waits_for_a_heartbeat_quorum() {
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    c.propose(l, 3, 8);
    c.tick(20);
    let committed = c.node(l).log().committed();
    c.node(l).read_index(7).unwrap();
    let rd = c.node(l).ready();
    assert!(
        rd.read_states.is_empty(),
        "not before a quorum confirms leadership"
    );
    assert!(
        rd.messages
            .iter()
            .any(|m| matches!(m, Message::Heartbeat(_))),
        "a heartbeat round confirms it"
    );
    c.net.extend(rd.messages);
    c.settle();
    assert!(c.reads[&l].contains(&(7, committed)));
    // A follower's read goes through the leader.
    let f = if l == 1 { 2 } else { 1 };
    c.node(f).read_index(9).unwrap();
    c.settle();
    assert!(c.reads[&f].contains(&(9, committed)));
    // A cut-off leader cannot confirm: no read state until it steps down (then refused).
    c.isolate(l);
    c.node(l).read_index(8).unwrap();
    c.settle();
    c.tick(50);
    assert!(!c.reads[&l].iter().any(|&(ctx, _)| ctx == 8));
    c.tick(500);
    assert!(
        c.reads[&l].contains(&(8, 0)),
        "refused once leadership is lost"
    );
}

#[test]
fn lease_reads_are_local_while_the_lease_holds_and_void_after_transfer() {
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    c.tick(40);
    assert!(c.node(l).lease_valid());
    let committed = c.node(l).log().committed();
    c.node(l).read_lease(1).unwrap();
    let rd = c.node(l).ready();
    assert_eq!(
        rd.read_states.first().map(|s| (s.ctx, s.index)),
        Some((1, committed))
    );
    assert!(rd.messages.is_empty(), "a lease read sends nothing");
    // Isolated past the lease: reads fall back to ReadIndex and do not complete.
    c.isolate(l);
    c.tick(120);
    assert!(!c.node(l).lease_valid());
    c.heal();
    c.tick(40);
    let l = c.elect();
    let t = if l == 1 { 2 } else { 1 };
    c.node(l).transfer_leader(t).unwrap();
    assert!(!c.node(l).lease_valid(), "a transfer voids the lease");
}

// ----- robustness -----

#[test]
fn corrupt_recovered_state_and_misrouted_messages_are_refused() {
    let bad = Recovered {
        hard_state: HardState::default(),
        snapshot: None,
        entries: vec![entry(1, 1), entry(3, 1)],
    };
    assert!(matches!(
        Raft::new(cfg(), 1, voters(3), bad, sched::rng(1), Time::ZERO),
        Err(RaftError::Corrupt(_))
    ));
    let mut n = Raft::new(
        cfg(),
        1,
        voters(3),
        Recovered::default(),
        sched::rng(1),
        Time::ZERO,
    )
    .unwrap();
    let m = Message::AppendEntries(AppendEntries {
        header: RaftHeader {
            group: 9,
            from: 2,
            to: 1,
            term: 1,
        },
        prev_log_index: 0,
        prev_log_term: 0,
        leader_commit: 0,
        entries: vec![],
    });
    assert_eq!(n.step(Time::ZERO, m), Err(RaftError::Misrouted));
    // Entries of a term whose hard state was torn away raise the term on recovery.
    let torn = Recovered {
        hard_state: HardState { term: 1, vote: 2 },
        snapshot: None,
        entries: vec![entry(1, 1), entry(2, 4)],
    };
    let n = Raft::new(cfg(), 1, voters(3), torn, sched::rng(1), Time::ZERO).unwrap();
    assert_eq!((n.term(), n.vote()), (4, 0));
}

#[test]
fn an_aborted_transfer_leaves_the_lease_void_for_the_rest_of_the_term() {
    // The TimeoutNow may still be in flight when the transfer times out: the target could
    // win an election past every follower's lease at any later moment, so the old leader
    // must not serve lease reads again in this term.
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    let t = if l == 1 { 2 } else { 1 };
    c.tick(40);
    assert!(c.node(l).lease_valid());
    c.cut.insert((l, t)); // the TimeoutNow is lost
    c.node(l).transfer_leader(t).unwrap();
    c.settle();
    c.tick(300); // the transfer aborts; heartbeats to the third node keep a quorum
    let term = c.node(l).term();
    assert_eq!(c.node(l).role(), Role::Leader);
    assert_eq!(c.node(l).transferee(), None, "the transfer timed out");
    assert!(
        !c.node(l).lease_valid(),
        "no lease reads for the rest of term {term}"
    );
    c.node(l).read_lease(5).unwrap();
    let rd = c.node(l).ready();
    assert!(
        rd.read_states.is_empty(),
        "the read falls back to a ReadIndex round"
    );
    assert!(
        rd.messages
            .iter()
            .any(|m| matches!(m, Message::Heartbeat(_)))
    );
}

// ----- the deadline-driven driver -----

/// What an input that must do nothing leaves unchanged.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    term: u64,
    vote: u64,
    role: Role,
    leader: u64,
    last: (u64, u64),
    committed: u64,
    persisted: u64,
    has_ready: bool,
}

fn seen(r: &Raft<SimRng>) -> Seen {
    Seen {
        term: r.term(),
        vote: r.vote(),
        role: r.role(),
        leader: r.leader_id(),
        last: (r.log().last_index(), r.log().last_term()),
        committed: r.log().committed(),
        persisted: r.log().persisted(),
        has_ready: r.has_ready(),
    }
}

impl Cluster {
    /// Moves time to the earliest `deadline()` of any node and ticks exactly the nodes
    /// due then, after checking that a tick just before its deadline does nothing.
    fn tick_to_next_deadline(&mut self) {
        let next = self
            .nodes
            .values()
            .map(|r| r.deadline())
            .min()
            .expect("nodes");
        assert!(next > self.now, "a deadline in the past was left unticked");
        let just_before = Time::from_nanos(next.as_nanos() - 1);
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for &id in &ids {
            let before = seen(self.node(id));
            self.node(id).tick(just_before);
            assert_eq!(
                seen(self.node(id)),
                before,
                "node {id} acted before its deadline"
            );
        }
        self.now = next;
        for id in ids {
            if self.node(id).deadline() <= next {
                self.node(id).tick(next);
                self.drain(id);
            }
        }
        self.deliver();
    }
}

#[test]
fn a_cluster_driven_only_by_deadlines_elects_and_replicates() {
    let mut c = Cluster::new(3, cfg());
    let mut rounds = 0;
    while c.leader().is_none() {
        c.tick_to_next_deadline();
        rounds += 1;
        assert!(rounds < 100, "no leader after {rounds} deadlines");
    }
    let l = c.leader().expect("leader");
    c.propose(l, 3, 8);
    c.deliver();
    for _ in 0..20 {
        c.tick_to_next_deadline();
    }
    assert_eq!(
        c.leader(),
        Some(l),
        "heartbeats at the deadline keep the leader"
    );
    for id in 1..=3 {
        assert_eq!(
            c.applied[&id].len(),
            4,
            "node {id} applied the no-op and 3 entries"
        );
    }
    c.assert_applied_agree();
}

// ----- malformed and adversarial messages -----

/// Node 1, following node 2 in term 2, holding 1@1 2@2 3@2 with 2 committed.
fn follower() -> Raft<SimRng> {
    let mut n = Raft::new(
        cfg(),
        1,
        voters(3),
        Recovered {
            hard_state: HardState { term: 2, vote: 2 },
            snapshot: None,
            entries: vec![entry(1, 1), entry(2, 2), entry(3, 2)],
        },
        sched::rng(1),
        Time::ZERO,
    )
    .unwrap();
    n.step(Time::ZERO, append(2, 2, 2, 2, 2, vec![])).unwrap();
    let _ = n.ready();
    assert_eq!((n.leader_id(), n.log().committed()), (2, 2));
    n
}

fn append(
    from: u64,
    term: u64,
    prev: u64,
    prev_term: u64,
    commit: u64,
    entries: Vec<Entry>,
) -> Message {
    Message::AppendEntries(AppendEntries {
        header: hdr(from, 1, term),
        prev_log_index: prev,
        prev_log_term: prev_term,
        leader_commit: commit,
        entries,
    })
}

/// `m` is refused as malformed and nothing changes.
fn refused(n: &mut Raft<SimRng>, m: Message) {
    let before = seen(n);
    let what = format!("{m:?}");
    match n.step(Time::from_millis(1), m) {
        Err(RaftError::Malformed(_)) => {}
        other => panic!("{what} gave {other:?}"),
    }
    assert_eq!(seen(n), before, "{what} changed the node");
}

#[test]
fn append_entries_that_do_not_follow_prev_log_index_are_refused() {
    let mut n = follower();
    refused(&mut n, append(2, 2, 3, 2, 2, vec![entry(5, 2)])); // a gap after prev
    refused(
        &mut n,
        append(2, 2, 3, 2, 2, vec![entry(4, 2), entry(6, 2)]),
    ); // a gap inside
    refused(
        &mut n,
        append(2, 2, 3, 2, 2, vec![entry(4, 2), entry(3, 2)]),
    ); // decreasing
    refused(
        &mut n,
        append(2, 2, 3, 2, 2, vec![entry(4, 2), entry(4, 2)]),
    ); // repeated
    refused(&mut n, append(2, 2, 1, 1, 2, vec![entry(1, 1)])); // before prev
}

#[test]
fn append_entries_whose_terms_decrease_or_pass_the_leaders_are_refused() {
    let mut n = follower();
    refused(&mut n, append(2, 2, 3, 2, 2, vec![entry(4, 1)])); // below prev_log_term
    refused(
        &mut n,
        append(2, 2, 2, 2, 2, vec![entry(3, 2), entry(4, 1)]),
    ); // decreasing
    refused(&mut n, append(2, 2, 3, 2, 2, vec![entry(4, 3)])); // above the message's term
    refused(&mut n, append(2, 2, 3, 3, 2, vec![])); // prev_log_term above it
    refused(&mut n, append(2, 2, 0, 1, 2, vec![])); // index 0 has term 0
    // A configuration entry that does not decode, or names no voter.
    let mut bad = entry(4, 2);
    bad.kind = EntryKind::Config;
    refused(&mut n, append(2, 2, 3, 2, 2, vec![bad.clone()]));
    bad.payload = encode_conf(&ConfState::default());
    refused(&mut n, append(2, 2, 3, 2, 2, vec![bad]));
}

#[test]
fn indexes_near_u64_max_are_refused() {
    let mut n = follower();
    let e = |index| Entry {
        index,
        ..entry(1, 2)
    };
    // prev + len overflows.
    refused(&mut n, append(2, 2, u64::MAX, 2, 2, vec![e(0)]));
    refused(
        &mut n,
        append(2, 2, u64::MAX - 1, 2, 2, vec![e(u64::MAX), e(0)]),
    );
    // Within u64 but past INDEX_MAX.
    refused(
        &mut n,
        append(2, 2, INDEX_MAX, 2, 2, vec![e(INDEX_MAX + 1)]),
    );
    refused(&mut n, append(2, 2, u64::MAX, 2, 2, vec![]));
    refused(&mut n, append(2, 2, 3, 2, u64::MAX, vec![]));
    refused(
        &mut n,
        Message::VoteRequest(VoteRequest {
            header: hdr(3, 1, 3),
            last_log_index: u64::MAX,
            last_log_term: 2,
            pre_vote: false,
            leadership_transfer: true,
        }),
    );
    refused(
        &mut n,
        Message::ReadIndexResponse(ReadIndexResponse {
            header: hdr(2, 1, 2),
            ctx: 1,
            index: u64::MAX,
        }),
    );
}

#[test]
fn terms_past_term_max_are_never_adopted_and_term_max_is_never_passed() {
    let mut n = follower();
    for term in [TERM_MAX + 1, u64::MAX] {
        refused(&mut n, append(2, term, 3, 2, 2, vec![]));
        refused(
            &mut n,
            Message::VoteRequest(VoteRequest {
                header: hdr(3, 1, term),
                last_log_index: 3,
                last_log_term: 2,
                pre_vote: false,
                leadership_transfer: true,
            }),
        );
    }
    // A candidate's log cannot end in a term later than its own.
    refused(
        &mut n,
        Message::VoteRequest(VoteRequest {
            header: hdr(3, 1, 3),
            last_log_index: 3,
            last_log_term: 4,
            pre_vote: false,
            leadership_transfer: true,
        }),
    );
    // TERM_MAX itself is a term like another, but no node campaigns past it.
    n.step(Time::from_millis(1), append(3, TERM_MAX, 3, 2, 2, vec![]))
        .unwrap();
    assert_eq!((n.term(), n.leader_id()), (TERM_MAX, 3));
    let _ = n.ready();
    for ms in (100..2000).step_by(100) {
        n.tick(Time::from_millis(ms));
    }
    assert_eq!((n.term(), n.role()), (TERM_MAX, Role::Follower));
    assert!(n.ready().messages.is_empty(), "no candidacy past TERM_MAX");
}

#[test]
fn answers_beyond_anything_the_leader_sent_are_refused() {
    let mut c = Cluster::new(3, cfg());
    let l = c.elect();
    let f = if l == 1 { 2 } else { 1 };
    let (term, last) = (c.node(l).term(), c.node(l).log().last_index());
    let resp = |success, match_index, reject_hint_index, reject_hint_term| {
        Message::AppendResponse(AppendResponse {
            header: hdr(f, l, term),
            success,
            match_index,
            reject_hint_index,
            reject_hint_term,
        })
    };
    let mut leader = c.nodes.remove(&l).expect("leader");
    refused(&mut leader, resp(true, last + 1, 0, 0)); // acknowledges entries never sent
    refused(&mut leader, resp(false, last + 1, 0, 0)); // rejects a prev never sent
    refused(&mut leader, resp(false, last, last + 1, 1)); // hint past the rejected index
    refused(&mut leader, resp(false, last, 1, term + 1)); // hint term past the follower's
    refused(&mut leader, resp(true, u64::MAX, 0, 0));
    refused(
        &mut leader,
        Message::HeartbeatResponse(HeartbeatResponse {
            header: hdr(f, l, term),
            ctx: u64::MAX, // a heartbeat round never sent
        }),
    );
    // A second leader in this leader's own term.
    let mut forged = append(f, term, last, term, 0, vec![]);
    if let Message::AppendEntries(a) = &mut forged {
        a.header.to = l;
    }
    refused(&mut leader, forged);
}

/// A heartbeat's commit is at most what this node acknowledged; one past its log means the
/// node lost acknowledged entries (wiped storage): it commits nothing on that word and
/// answers with a rejection naming where its log really ends, so the leader probes (and
/// sends a snapshot) from there.
#[test]
fn heartbeat_commit_beyond_the_log_commits_nothing_and_says_where_the_log_ends() {
    let mut n = follower();
    let _ = n.ready();
    let (last, committed) = (n.log().last_index(), n.log().committed());
    for commit in [last + 1, last + 100] {
        n.step(
            Time::ZERO,
            Message::Heartbeat(Heartbeat {
                header: hdr(2, 1, 2),
                commit,
                ctx: 1,
            }),
        )
        .unwrap();
        assert_eq!(
            n.log().committed(),
            committed,
            "nothing commits on that word"
        );
        let rd = n.ready();
        assert!(
            rd.messages.iter().any(|m| matches!(m,
                Message::AppendResponse(r)
                    if !r.success && r.match_index == commit && r.reject_hint_index == last)),
            "the node says where its log ends: {:?}",
            rd.messages
        );
    }
}

#[test]
fn snapshot_chunks_that_overflow_or_lie_are_refused() {
    let mut n = follower();
    let snap = |index, term, offset, total_bytes, data: Vec<u8>, done, conf| {
        Message::InstallSnapshot(InstallSnapshot {
            header: hdr(2, 1, 2),
            last_included_index: index,
            last_included_term: term,
            conf,
            offset,
            total_bytes,
            data,
            done,
        })
    };
    let ok = voters(3);
    refused(
        &mut n,
        snap(5, 2, u64::MAX - 1, u64::MAX, vec![1; 4], true, ok.clone()),
    ); // offset + len overflows
    refused(&mut n, snap(5, 2, 8, 10, vec![1; 4], true, ok.clone())); // past total_bytes
    refused(&mut n, snap(5, 2, 0, 10, vec![1; 4], true, ok.clone())); // `done` mid-way
    refused(&mut n, snap(5, 2, 0, 4, vec![1; 4], false, ok.clone())); // not `done` at the end
    refused(
        &mut n,
        snap(u64::MAX, 2, 0, 4, vec![1; 4], true, ok.clone()),
    );
    refused(
        &mut n,
        snap(INDEX_MAX + 1, 2, 0, 4, vec![1; 4], true, ok.clone()),
    );
    refused(&mut n, snap(0, 0, 0, 4, vec![1; 4], true, ok.clone()));
    refused(&mut n, snap(5, 3, 0, 4, vec![1; 4], true, ok)); // term past the leader's
    refused(
        &mut n,
        snap(5, 2, 0, 4, vec![1; 4], true, ConfState::default()),
    );
    let with_zero = ConfState {
        voters: vec![0, 1, 2],
        ..ConfState::default()
    };
    refused(&mut n, snap(5, 2, 0, 4, vec![1; 4], true, with_zero));
}

#[test]
fn forged_senders_are_refused_but_an_unknown_leader_is_followed() {
    let mut n = follower();
    refused(&mut n, append(0, 2, 3, 2, 2, vec![])); // node 0
    refused(&mut n, append(1, 2, 3, 2, 2, vec![])); // this node
    refused(&mut n, append(3, 2, 3, 2, 2, vec![])); // a second leader in term 2
    let timeout_now = |from, term| {
        Message::TimeoutNow(TimeoutNow {
            header: hdr(from, 1, term),
        })
    };
    refused(&mut n, timeout_now(3, 2)); // not the leader
    refused(&mut n, timeout_now(2, 3)); // a term this node never acknowledged
    refused(
        &mut n,
        Message::ReadIndexResponse(ReadIndexResponse {
            header: hdr(3, 1, 2),
            ctx: 1,
            index: 2,
        }),
    );
    // A learner being added may hear from a leader (here node 9) that its bootstrap
    // configuration does not name, and must follow it.
    let mut learner = Raft::new(
        cfg(),
        4,
        voters(3),
        Recovered::default(),
        sched::rng(4),
        Time::ZERO,
    )
    .unwrap();
    let from_9 = Message::AppendEntries(AppendEntries {
        header: hdr(9, 4, 5),
        prev_log_index: 0,
        prev_log_term: 0,
        leader_commit: 0,
        entries: vec![entry(1, 5)],
    });
    learner.step(Time::ZERO, from_9).unwrap();
    assert_eq!((learner.term(), learner.leader_id()), (5, 9));
    assert!(matches!(
        &learner.ready().persisted_messages[..],
        [Message::AppendResponse(r)] if r.success && r.match_index == 1
    ));
}

#[test]
fn an_acknowledgement_of_entries_replaced_before_the_write_never_leaves() {
    let mut n = follower();
    // Acknowledged (held until the write), then replaced by a newer leader before any
    // Ready: the old acknowledgement must not leave, it no longer describes the disk.
    n.step(Time::ZERO, append(2, 2, 3, 2, 2, vec![entry(4, 2)]))
        .unwrap();
    n.step(Time::ZERO, append(3, 3, 2, 2, 2, vec![entry(3, 3)]))
        .unwrap();
    let rd = n.ready();
    assert_eq!(n.log().last_index(), 3);
    let acks: Vec<(u64, u64)> = rd
        .persisted_messages
        .iter()
        .filter_map(|m| match m {
            Message::AppendResponse(r) if r.success => Some((r.header.to, r.match_index)),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![(3, 3)]);
}

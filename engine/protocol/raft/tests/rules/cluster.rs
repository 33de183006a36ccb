//! A small deterministic in-memory network of Raft nodes that the tests drive, and the
//! helpers they share.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::SeedableRng;
use ringleader_raft::{Config, Raft, Recovered, Role};
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{ConfState, Entry, EntryKind, RaftHeader};

/// The RNG every node draws its election timeouts from: the simulator's (ChaCha8), seeded
/// per node, so every run of a test is the same run.
pub type TestRng = rand_chacha::ChaCha8Rng;

/// A [`TestRng`] seeded with `seed`.
pub fn test_rng(seed: u64) -> TestRng {
    TestRng::seed_from_u64(seed)
}

pub fn ends(m: &Message) -> (u64, u64) {
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

pub fn cfg() -> Config {
    Config {
        election_timeout_ms: 100,
        heartbeat_interval_ms: 20,
        ..Config::default()
    }
}

pub fn voters(n: u64) -> ConfState {
    ConfState {
        voters: (1..=n).collect(),
        learners: vec![],
        voters_outgoing: vec![],
    }
}

pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        payload: vec![index as u8],
    }
}

pub fn hdr(from: u64, to: u64, term: u64) -> RaftHeader {
    RaftHeader {
        group: 1,
        from,
        to,
        term,
    }
}

/// Nodes, a FIFO network with cuttable links, and storage that persists at once unless a
/// node's persistence is held.
pub struct Cluster {
    pub nodes: BTreeMap<u64, Raft<TestRng>>,
    pub now: Time,
    pub net: VecDeque<Message>,
    pub cut: BTreeSet<(u64, u64)>,
    pub applied: BTreeMap<u64, Vec<Entry>>,
    pub sent: Vec<Message>,
    pub snapshots_installed: BTreeMap<u64, u64>,
    pub reads: BTreeMap<u64, Vec<(u64, u64)>>,
    pub held: BTreeMap<u64, Vec<(u64, u64)>>,
    pub held_msgs: BTreeMap<u64, Vec<Message>>,
}

impl Cluster {
    pub fn new(n: u64, cfg: Config) -> Cluster {
        let mut c = Cluster::empty();
        for id in 1..=n {
            c.add(id, cfg.clone(), voters(n), Recovered::default());
        }
        c
    }

    pub fn empty() -> Cluster {
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

    pub fn add(&mut self, id: u64, cfg: Config, conf: ConfState, rec: Recovered) {
        let r = Raft::new(cfg, id, conf, rec, test_rng(1000 + id), self.now).expect("valid state");
        self.nodes.insert(id, r);
        self.applied.insert(id, Vec::new());
    }

    pub fn node(&mut self, id: u64) -> &mut Raft<TestRng> {
        self.nodes.get_mut(&id).expect("node exists")
    }

    pub fn hold(&mut self, id: u64) {
        self.held.insert(id, Vec::new());
        self.held_msgs.insert(id, Vec::new());
    }

    /// Makes a held node's writes durable.
    pub fn release(&mut self, id: u64) {
        for (i, t) in self.held.remove(&id).unwrap_or_default() {
            self.node(id).persisted(i, t);
        }
        let msgs = self.held_msgs.remove(&id).unwrap_or_default();
        self.net.extend(msgs);
        self.drain(id);
    }

    pub fn drain(&mut self, id: u64) {
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

    pub fn deliver(&mut self) {
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

    pub fn settle(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.drain(id);
        }
        self.deliver();
    }

    /// Advances every clock by `ms`, in 5 ms steps, delivering everything after each.
    pub fn tick(&mut self, ms: u64) {
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

    pub fn leader(&self) -> Option<u64> {
        self.nodes
            .values()
            .filter(|r| r.role() == Role::Leader)
            .max_by_key(|r| r.term())
            .map(|r| r.id())
    }

    pub fn elect(&mut self) -> u64 {
        for _ in 0..200 {
            if let Some(l) = self.leader() {
                self.settle();
                return l;
            }
            self.tick(5);
        }
        panic!("no leader elected");
    }

    pub fn isolate(&mut self, id: u64) {
        for &o in self.nodes.keys() {
            if o != id {
                self.cut.insert((id, o));
                self.cut.insert((o, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn propose(&mut self, leader: u64, n: usize, bytes: usize) {
        let batch: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; bytes]).collect();
        self.node(leader).propose(batch).expect("leader accepts");
        self.drain(leader);
    }

    pub fn leaders_per_term(&self) -> BTreeMap<u64, BTreeSet<u64>> {
        let mut m: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for r in self.nodes.values() {
            if r.role() == Role::Leader {
                m.entry(r.term()).or_default().insert(r.id());
            }
        }
        m
    }

    /// State-machine safety over everything applied so far.
    pub fn assert_applied_agree(&self) {
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

/// What an input that must do nothing leaves unchanged.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub term: u64,
    pub vote: u64,
    pub role: Role,
    pub leader: u64,
    pub last: (u64, u64),
    pub committed: u64,
    pub persisted: u64,
    pub has_ready: bool,
}

pub fn seen(r: &Raft<TestRng>) -> Seen {
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

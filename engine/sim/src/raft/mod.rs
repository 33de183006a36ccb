//! Raft clusters in the simulator. Every node runs the production Ready driver
//! ([`GroupDriver`]) around the real core with the [`ringleader_raft::kv`] state machine — the
//! code a live shard runs — on a simulated disk ([`disk`]), with a network with loss,
//! duplication, reordering, delay and partitions, crashes and restarts, and clients that issue
//! key-value operations and record a history for the linearizability checker ([`check`]). Nodes
//! are driven by deadlines, as a live shard is: after every input a timer is armed at the
//! driver's next deadline, and time reaches the driver only when it fires. Writes reach a
//! driver one by one (`propose`) or, in half of the seeds, gathered over a short window
//! (`propose_batch`), as a shard gathering a poll's requests would.
//!
//! After every simulated step the invariants of the Raft paper are checked: election safety,
//! log matching (on the entries the driver hands out to persist), leader completeness,
//! state-machine safety (on the entries it applied); after every crash, that every
//! acknowledged write is still durable on a voter of every quorum (a majority, for odd
//! voter counts). The driver's own contract is checked too: every request it took is
//! answered exactly once, by its deadline while its node lives. Five-node runs under all
//! faults also churn the membership. A run is a function of its seed.
//!
//! The simulator must never hand a node an input that bypasses the driver, nor keep Raft
//! bookkeeping of its own that the driver keeps: a bug of the driver must be findable by a
//! seed. Membership changes go through the driver too
//! ([`GroupDriver::change_membership`]).

pub mod check;
pub mod disk;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use rand::Rng;
use ringleader_raft::driver::{DriverConfig, GroupDriver, Outbox, ReadConsistency, Refusal};
use ringleader_raft::kv::{Command, Get, Kv, KvError, Output, ReadMode};
use ringleader_raft::{ConfChange, Config, Role, decode_conf};
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{ConfState, Entry, EntryKind};

use self::check::{CheckResult, KvOp, KvRet, Operation};
use self::disk::{Disk, Write};
use crate::{Scheduler, SimRng, sched};

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    /// None: a perfect network, no crashes.
    None,
    /// Loss, duplication, reordering, delay spikes and partitions.
    Net,
    /// Process crashes and restarts (leader included); issued writes survive.
    Crash,
    /// Power loss: crashes that lose un-synced writes and may tear the last one.
    Disk,
    /// All of the above.
    All,
}

impl std::str::FromStr for Faults {
    type Err = String;
    fn from_str(s: &str) -> Result<Faults, String> {
        Ok(match s {
            "none" => Faults::None,
            "net" => Faults::Net,
            "crash" => Faults::Crash,
            "disk" => Faults::Disk,
            "all" => Faults::All,
            _ => return Err(format!("unknown faults `{s}` (none|net|crash|disk|all)")),
        })
    }
}

impl Faults {
    fn net(self) -> bool {
        matches!(self, Faults::Net | Faults::All)
    }
    fn crashes(self) -> bool {
        matches!(self, Faults::Crash | Faults::Disk | Faults::All)
    }
}

/// A simulation's parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Voters in the cluster.
    pub nodes: usize,
    /// Client operations per seed.
    pub ops: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct keys (few, so operations contend).
    pub keys: u64,
    /// Faults injected.
    pub faults: Faults,
    /// The Raft configuration of every node.
    pub raft: Config,
    /// A client gives up on an operation after this long (its outcome is then unknown).
    pub op_timeout_ms: u64,
    /// The deadline a node's driver gets for a request: by then it answers (a proposal
    /// with an unknown outcome, a read refused). Below `op_timeout_ms`, so that the
    /// driver's answer usually reaches the client before the client gives up.
    pub request_timeout_ms: u64,
    /// Take a snapshot after this many applied entries.
    pub snapshot_every_entries: u64,
    /// Half the seeds gather the writes reaching a node for a window of 1 to this many
    /// milliseconds into one `propose_batch`; the others propose each write alone.
    pub batch_window_ms_max: u64,
    /// Linearizability search bound per key.
    pub check_step_limit: u64,
    /// Virtual time limit of one seed.
    pub time_limit_ms: u64,
}

impl SimConfig {
    /// Defaults for `nodes` voters, `ops` operations and `faults`.
    pub fn new(nodes: usize, ops: usize, faults: Faults) -> SimConfig {
        SimConfig {
            nodes,
            ops,
            clients: 3,
            keys: 4,
            faults,
            raft: Config {
                election_timeout_ms: 150,
                heartbeat_interval_ms: 30,
                inflight_msgs_max: 8,
                msg_entries_max: 16,
                snapshot_chunk_bytes: 256,
                ..Config::default()
            },
            op_timeout_ms: 500,
            request_timeout_ms: 400,
            snapshot_every_entries: 40,
            batch_window_ms_max: 3,
            check_step_limit: 2_000_000,
            time_limit_ms: 120_000,
        }
    }
}

/// The outcome of one seed.
#[derive(Debug, Clone, Default)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Operations acknowledged to clients (writes and linearizable reads).
    pub ops_acked: u64,
    /// Operations whose outcome stayed unknown.
    pub ops_unknown: u64,
    /// Requests a driver answered with an unknown outcome (their deadline passed).
    pub ops_expired: u64,
    /// Invariant violations, described.
    pub violations: Vec<String>,
    /// The linearizability verdict (None when the history was not checked).
    pub linearizability: Option<CheckResult>,
    /// Leaders elected (distinct (term, leader) pairs).
    pub elections: u64,
    /// Longest stretch of virtual time with no leader.
    pub max_leader_gap_ms: u64,
    /// Crashes injected.
    pub crashes: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Snapshots nodes took of their own state machine.
    pub snapshots_taken: u64,
    /// Membership changes committed (remove a voter, re-add it as a learner, promote it).
    pub conf_changes: u64,
    /// Virtual time simulated.
    pub virtual_ms: u64,
    /// Whether every client finished its operations.
    pub finished: bool,
}

impl SeedReport {
    /// Whether the history was found not linearizable.
    pub fn non_linearizable(&self) -> bool {
        matches!(
            self.linearizability,
            Some(CheckResult::NotLinearizable { .. })
        )
    }
}

#[derive(Debug, Clone)]
enum Req {
    Write { cmd: Command },
    Read { key: u64, mode: ReadMode },
}

#[derive(Debug, Clone)]
enum Reply {
    Written(Output),
    Value(Option<u64>),
    /// Definitely not done; try another node.
    Refused {
        leader_hint: u64,
    },
    /// The node gave up on it: it may or may not take effect.
    Unknown,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: u64,
        msg: Message,
    },
    Tick {
        node: u64,
        incarnation: u64,
    },
    Sync {
        node: u64,
        incarnation: u64,
    },
    Crash,
    Restart {
        node: u64,
    },
    Partition,
    Heal,
    Reconfig,
    ProposeBatch {
        node: u64,
        incarnation: u64,
    },
    ClientNext {
        client: usize,
    },
    ToNode {
        node: u64,
        client: usize,
        attempt: u64,
        req: Req,
    },
    ToClient {
        client: usize,
        attempt: u64,
        reply: Reply,
    },
    ClientTimeout {
        client: usize,
        attempt: u64,
    },
    ClientResend {
        client: usize,
        attempt: u64,
    },
}

/// What a client's request is called in its node's driver: (client, attempt).
type Token = (usize, u64);
type Driver = GroupDriver<SimRng, Kv, Token>;
type SimOutbox = Outbox<Token, Result<Output, KvError>, Option<Vec<u8>>>;

/// Ticks in a row at one instant after which a node whose deadline does not move past it
/// is reported (and its timer pushed on, so that virtual time keeps going).
const STUCK_TICKS_MAX: u32 = 64;

struct Node {
    id: u64,
    /// None while the node is down.
    driver: Option<Driver>,
    incarnation: u64,
    disk: Disk,
    last_role: Role,
    /// The time of the earliest tick event armed for this incarnation, until it fires.
    timer_at: Option<Time>,
    /// Ticks in a row at the same instant that left a deadline at or before it.
    stuck_ticks: u32,
    /// Requests the driver took and has not answered: token -> the deadline it was given.
    unanswered: BTreeMap<Token, Time>,
    /// The driver's snapshot restore failures already reported.
    restore_failures: u64,
    /// Writes gathered for the next `propose_batch`.
    batch: Vec<(Vec<u8>, Token, Time)>,
}

struct ClientState {
    attempt: u64,
    /// (history index, request, tries)
    current: Option<(usize, Req, u32)>,
    leader_guess: u64,
    done: u64,
    seq: u64,
}

struct Sim {
    cfg: SimConfig,
    rng: SimRng,
    sched: Scheduler<Ev>,
    nodes: Vec<Node>,
    clients: Vec<ClientState>,
    history: Vec<Operation>,
    /// Whether a history entry is void (definitely never took effect).
    void: Vec<bool>,
    invoked: usize,
    blocked: BTreeSet<(u64, u64)>,
    loss: f64,
    dup: f64,
    delay_ms_max: u64,
    /// This seed's write-gathering window (0: none).
    batch_window_ms: u64,
    faults_on: bool,
    leaders: BTreeMap<u64, u64>,
    /// index -> (term, payload hash, estimated commit term)
    applied: HashMap<u64, (u64, u64, u64)>,
    /// (index, term) -> (payload hash, previous term)
    entries_seen: HashMap<(u64, u64), (u64, Option<u64>)>,
    /// Acknowledged writes: (index, term).
    acked_writes: Vec<(u64, u64)>,
    written_values: BTreeSet<u64>,
    report: SeedReport,
    no_leader_since: Option<Time>,
    down: usize,
    /// The latest committed configuration: (index of its entry, voters).
    committed_conf: (u64, Vec<u64>),
    /// Where every driver call puts its work; drained after each call.
    out: SimOutbox,
}

fn hash_of(e: &Entry) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (e.kind as u8).hash(&mut h);
    e.payload.hash(&mut h);
    h.finish()
}

fn key_bytes(k: u64) -> Vec<u8> {
    k.to_le_bytes().to_vec()
}

fn value_of(b: Option<&[u8]>) -> Option<u64> {
    b.map(|b| b.try_into().map(u64::from_le_bytes).unwrap_or(u64::MAX))
}

/// Runs one seed.
pub fn run_seed(cfg: &SimConfig, seed: u64) -> SeedReport {
    let mut sim = Sim::new(cfg.clone(), seed);
    sim.run();
    sim.report
}

impl Sim {
    fn new(cfg: SimConfig, seed: u64) -> Sim {
        let mut rng = sched::rng(seed);
        let faults = cfg.faults;
        let (loss, dup, delay_ms_max) = if faults.net() {
            (
                rng.random_range(0.0..0.1),
                rng.random_range(0.0..0.05),
                rng.random_range(5..30),
            )
        } else {
            (0.0, 0.0, 5)
        };
        let batch_window_ms = if rng.random_bool(0.5) {
            0
        } else {
            rng.random_range(1..=cfg.batch_window_ms_max.max(1))
        };
        let nodes = (1..=cfg.nodes as u64)
            .map(|id| Node {
                id,
                driver: None,
                incarnation: 0,
                disk: Disk::default(),
                last_role: Role::Follower,
                timer_at: None,
                stuck_ticks: 0,
                unanswered: BTreeMap::new(),
                restore_failures: 0,
                batch: Vec::new(),
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|_| ClientState {
                attempt: 0,
                current: None,
                leader_guess: 0,
                done: 0,
                seq: 0,
            })
            .collect();
        Sim {
            rng,
            sched: Scheduler::new(),
            nodes,
            clients,
            history: Vec::new(),
            void: Vec::new(),
            invoked: 0,
            blocked: BTreeSet::new(),
            loss,
            dup,
            delay_ms_max,
            batch_window_ms,
            faults_on: faults != Faults::None,
            leaders: BTreeMap::new(),
            applied: HashMap::new(),
            entries_seen: HashMap::new(),
            acked_writes: Vec::new(),
            written_values: BTreeSet::new(),
            report: SeedReport {
                seed,
                ..SeedReport::default()
            },
            no_leader_since: Some(Time::ZERO),
            down: 0,
            committed_conf: (0, (1..=cfg.nodes as u64).collect()),
            out: Outbox {
                trace_applied: true,
                ..Outbox::default()
            },
            cfg,
        }
    }

    fn conf(&self) -> ConfState {
        ConfState {
            voters: (1..=self.cfg.nodes as u64).collect(),
            learners: vec![],
            voters_outgoing: vec![],
        }
    }

    fn violation(&mut self, what: String) {
        if self.report.violations.len() < 16 {
            self.report
                .violations
                .push(format!("t={}ms: {what}", self.sched.now().as_millis()));
        }
    }

    /// Starts node `i` from what its disk recovers: a new driver, which restores the state
    /// machine from the durable snapshot.
    fn start_node(&mut self, i: usize) {
        let now = self.sched.now();
        let conf = self.conf();
        let node_rng = sched::rng(self.rng.random());
        let driver_cfg = DriverConfig {
            snapshot_every_entries: self.cfg.snapshot_every_entries,
            ..DriverConfig::default()
        };
        let n = &mut self.nodes[i];
        let recovered = n.disk.recover();
        let driver = GroupDriver::new(
            self.cfg.raft.clone(),
            driver_cfg,
            n.id,
            conf,
            recovered,
            Kv::new(),
            node_rng,
            now,
        );
        match driver {
            Ok(d) => n.driver = Some(d),
            Err(e) => {
                let id = n.id;
                self.violation(format!("node {id}: restart refused: {e}"));
                return;
            }
        }
        n.incarnation += 1;
        n.last_role = Role::Follower;
        n.timer_at = None;
        n.stuck_ticks = 0;
        n.unanswered.clear();
        n.restore_failures = 0;
        n.batch.clear();
        self.arm(i);
    }

    /// Arms node `i`'s timer at its driver's next deadline (the core's, or a pending
    /// request's), unless an earlier tick is armed already: that one re-arms when it fires.
    fn arm(&mut self, i: usize) {
        let now = self.sched.now();
        let n = &mut self.nodes[i];
        let Some(d) = n.driver.as_ref() else { return };
        let mut at = d
            .request_deadline()
            .map_or(d.deadline(), |r| r.min(d.deadline()));
        if n.stuck_ticks >= STUCK_TICKS_MAX {
            at = at.max(now + Duration::from_millis(1));
        }
        let at = at.max(now);
        if n.timer_at.is_some_and(|t| t <= at) {
            return;
        }
        n.timer_at = Some(at);
        let ev = Ev::Tick {
            node: n.id,
            incarnation: n.incarnation,
        };
        self.sched.schedule(at, ev);
    }

    /// A timer of node `i` fired: if it is the one armed and something is due, time reaches
    /// the driver.
    fn timer(&mut self, i: usize, incarnation: u64) {
        let now = self.sched.now();
        let n = &mut self.nodes[i];
        if n.incarnation != incarnation || n.timer_at != Some(now) {
            return; // a timer an earlier one superseded, or of an earlier incarnation
        }
        n.timer_at = None;
        let Some(d) = n.driver.as_mut() else { return };
        let due =
            |d: &Driver| d.deadline() <= now || d.request_deadline().is_some_and(|r| r <= now);
        if due(d) {
            d.tick(now, &mut self.out);
            if due(d) {
                n.stuck_ticks += 1;
            } else {
                n.stuck_ticks = 0;
            }
            let (id, stuck) = (n.id, n.stuck_ticks);
            if stuck == STUCK_TICKS_MAX {
                self.violation(format!(
                    "node {id}: {stuck} ticks at one instant leave a deadline due"
                ));
            }
            self.flush(i);
        }
        self.check_overdue(i);
        self.arm(i);
    }

    /// The driver's contract: every request it took is answered by its deadline.
    fn check_overdue(&mut self, i: usize) {
        let now = self.sched.now();
        let n = &self.nodes[i];
        let overdue = n.unanswered.iter().find(|(_, at)| **at < now);
        if let Some((&(client, attempt), &at)) = overdue {
            let id = n.id;
            self.violation(format!(
                "node {id}: request ({client}, {attempt}) unanswered past its deadline {}ms",
                at.as_millis()
            ));
            self.nodes[i].unanswered.remove(&(client, attempt));
        }
    }

    fn run(&mut self) {
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        for c in 0..self.clients.len() {
            let at = self.rng.random_range(0..50);
            self.sched
                .schedule_in(Duration::from_millis(at), Ev::ClientNext { client: c });
        }
        if self.cfg.faults.crashes() {
            let at = self.rng.random_range(200..1000);
            self.sched.schedule_in(Duration::from_millis(at), Ev::Crash);
        }
        if self.cfg.faults == Faults::All && self.cfg.nodes >= 5 {
            let at = self.rng.random_range(300..1500);
            self.sched
                .schedule_in(Duration::from_millis(at), Ev::Reconfig);
        }
        if self.cfg.faults.net() {
            let at = self.rng.random_range(200..1000);
            self.sched
                .schedule_in(Duration::from_millis(at), Ev::Partition);
        }
        let limit = Time::from_millis(self.cfg.time_limit_ms);
        while let Some((now, ev)) = self.sched.pop() {
            if now > limit {
                break;
            }
            self.handle(ev);
            self.check_step();
            if self.all_done() {
                self.report.finished = true;
                break;
            }
            if self.faults_on && self.invoked >= self.cfg.ops {
                self.stop_faults();
            }
        }
        self.report.virtual_ms = self.sched.now().as_millis();
        if let Some(since) = self.no_leader_since {
            self.report.max_leader_gap_ms = self
                .report
                .max_leader_gap_ms
                .max((self.sched.now() - since).as_millis() as u64);
        }
        self.finish_history();
    }

    fn all_done(&self) -> bool {
        self.invoked >= self.cfg.ops && self.clients.iter().all(|c| c.current.is_none())
    }

    /// The last ops run on a healed cluster: every fault stops, every node restarts.
    fn stop_faults(&mut self) {
        self.faults_on = false;
        self.blocked.clear();
        self.loss = 0.0;
        self.dup = 0.0;
        for i in 0..self.nodes.len() {
            if self.nodes[i].driver.is_none() {
                self.down -= 1;
                self.start_node(i);
            }
        }
    }

    fn finish_history(&mut self) {
        let mut ops = Vec::with_capacity(self.history.len());
        for (i, op) in self.history.iter().enumerate() {
            if self.void[i] {
                continue;
            }
            if op.ret == KvRet::Unknown && op.op == KvOp::Get {
                continue; // a read without an answer constrains nothing
            }
            ops.push(*op);
        }
        self.report.linearizability = Some(check::check(&ops, self.cfg.check_step_limit));
    }

    // ----- invariants -----

    fn check_step(&mut self) {
        let now = self.sched.now();
        let mut has_leader = false;
        let mut new_leaders = Vec::new();
        for n in &mut self.nodes {
            let Some(r) = n.driver.as_ref().map(Driver::raft) else {
                continue;
            };
            if r.role() == Role::Leader {
                has_leader = true;
                if n.last_role != Role::Leader {
                    new_leaders.push((n.id, r.term()));
                }
            }
            n.last_role = r.role();
        }
        for (id, term) in new_leaders {
            match self.leaders.get(&term) {
                Some(&other) if other != id => self.violation(format!(
                    "election safety: nodes {other} and {id} both lead term {term}"
                )),
                Some(_) => {}
                None => {
                    self.leaders.insert(term, id);
                    self.report.elections += 1;
                    self.check_leader_completeness(id, term);
                }
            }
        }
        match (has_leader, self.no_leader_since) {
            (true, Some(since)) => {
                self.report.max_leader_gap_ms = self
                    .report
                    .max_leader_gap_ms
                    .max((now - since).as_millis() as u64);
                self.no_leader_since = None;
            }
            (false, None) => self.no_leader_since = Some(now),
            _ => {}
        }
    }

    fn check_leader_completeness(&mut self, id: u64, term: u64) {
        let Some(d) = self.nodes[(id - 1) as usize].driver.as_ref() else {
            return;
        };
        let log = d.raft().log();
        let mut missing = None;
        for (&index, &(t, _, commit_term)) in &self.applied {
            if commit_term >= term || index <= log.offset() {
                continue;
            }
            if log.term(index) != Some(t) {
                missing = Some((index, t));
                break;
            }
        }
        if let Some((index, t)) = missing {
            self.violation(format!(
                "leader completeness: leader {id} of term {term} lacks committed entry {index}@{t}"
            ));
        }
    }

    /// Log matching, on entries the driver hands out to persist: an (index, term) always
    /// names the same entry, following the same term.
    fn check_entries(&mut self, i: usize, entries: &[Entry]) {
        let Some(d) = self.nodes[i].driver.as_ref() else {
            return;
        };
        let log = d.raft().log();
        let mut bad = Vec::new();
        let mut before: Option<&Entry> = None;
        for e in entries {
            let prev = match before {
                Some(b) if b.index + 1 == e.index => Some(b.term),
                _ if e.index == 1 => Some(0),
                _ => log.term(e.index - 1),
            };
            before = Some(e);
            let h = hash_of(e);
            match self.entries_seen.get(&(e.index, e.term)) {
                None => {
                    self.entries_seen.insert((e.index, e.term), (h, prev));
                }
                Some(&(h0, p0)) => {
                    if h0 != h || (p0.is_some() && prev.is_some() && p0 != prev) {
                        bad.push((e.index, e.term));
                    }
                }
            }
        }
        let id = self.nodes[i].id;
        for (index, term) in bad {
            self.violation(format!(
                "log matching: node {id} holds a different entry {index}@{term}"
            ));
        }
    }

    /// Every acknowledged (so committed) write is durable on enough voters of the latest
    /// committed configuration that every quorum of it holds one — so any future leader
    /// has it. (A majority when the voters are odd; with one-server changes an entry may
    /// commit under the next, uncommitted configuration, which only guarantees overlap.)
    fn check_acked_durable(&mut self) {
        let voters = &self.committed_conf.1;
        let needed = voters.len() - (voters.len() / 2 + 1) + 1;
        let mut lost = None;
        for &(index, term) in &self.acked_writes {
            let holders = self
                .nodes
                .iter()
                .filter(|n| voters.contains(&n.id) && n.disk.durable.holds(index, term))
                .count();
            if holders < needed {
                lost = Some((index, term, holders));
                break;
            }
        }
        if let Some((index, term, holders)) = lost {
            self.violation(format!(
                "acknowledged write {index}@{term} durable on only {holders} voters after a crash"
            ));
        }
    }

    // ----- events -----

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, msg } => {
                let i = (to - 1) as usize;
                let now = self.sched.now();
                if let Some(d) = self.nodes[i].driver.as_mut() {
                    d.step(now, msg, &mut self.out);
                    self.after_input(i);
                }
            }
            Ev::Tick { node, incarnation } => self.timer((node - 1) as usize, incarnation),
            Ev::Sync { node, incarnation } => {
                let i = (node - 1) as usize;
                if self.nodes[i].incarnation != incarnation || self.nodes[i].driver.is_none() {
                    return;
                }
                let now = self.sched.now();
                let seq = self.nodes[i].disk.complete_sync();
                if let (Some(seq), Some(d)) = (seq, self.nodes[i].driver.as_mut()) {
                    d.durable(now, seq, &mut self.out);
                }
                self.after_input(i);
                self.start_sync(i);
            }
            Ev::Crash => self.crash(),
            Ev::Restart { node } => {
                let i = (node - 1) as usize;
                if self.nodes[i].driver.is_none() {
                    self.down -= 1;
                    self.start_node(i);
                }
            }
            Ev::Partition => self.partition(),
            Ev::Heal => self.blocked.clear(),
            Ev::Reconfig => self.reconfig(),
            Ev::ProposeBatch { node, incarnation } => {
                let i = (node - 1) as usize;
                let now = self.sched.now();
                let n = &mut self.nodes[i];
                if n.incarnation != incarnation {
                    return;
                }
                let batch = std::mem::take(&mut n.batch);
                if let Some(d) = n.driver.as_mut() {
                    d.propose_batch(now, batch, &mut self.out);
                    self.after_input(i);
                }
            }
            Ev::ClientNext { client } => self.client_next(client),
            Ev::ToNode {
                node,
                client,
                attempt,
                req,
            } => self.node_request((node - 1) as usize, client, attempt, req),
            Ev::ToClient {
                client,
                attempt,
                reply,
            } => self.client_reply(client, attempt, reply),
            Ev::ClientResend { client, attempt } => {
                if self.clients[client].attempt == attempt {
                    self.client_send(client);
                }
            }
            Ev::ClientTimeout { client, attempt } => self.give_up(client, attempt),
        }
    }

    fn send(&mut self, m: Message) {
        let (from, to) = ringleader_raft::header_of(&m).map_or((0, 0), |h| (h.from, h.to));
        if to == 0 || to as usize > self.nodes.len() || self.blocked.contains(&(from, to)) {
            return;
        }
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            return;
        }
        let mut delay = self.rng.random_range(1..=self.delay_ms_max);
        if self.faults_on && self.cfg.faults.net() && self.rng.random_bool(0.01) {
            delay += self.rng.random_range(50..300);
        }
        if self.dup > 0.0 && self.rng.random_bool(self.dup) {
            let d2 = self.rng.random_range(1..=self.delay_ms_max * 2);
            self.sched.schedule_in(
                Duration::from_micros(d2 * 1000 + 7),
                Ev::Deliver { to, msg: m.clone() },
            );
        }
        self.sched
            .schedule_in(Duration::from_millis(delay), Ev::Deliver { to, msg: m });
    }

    fn start_sync(&mut self, i: usize) {
        let d = &mut self.nodes[i].disk;
        if d.syncing > 0 || d.pending.is_empty() {
            return;
        }
        d.syncing = d.pending.len();
        // Mostly fast, sometimes a stall longer than a network round trip: the leader's own
        // write must not be assumed to win the race with its followers' acknowledgements.
        let lat = if self.rng.random_bool(0.15) {
            self.rng.random_range(5_000..60_000)
        } else {
            self.rng.random_range(200..3000)
        };
        let (node, incarnation) = (self.nodes[i].id, self.nodes[i].incarnation);
        self.sched
            .schedule_in(Duration::from_micros(lat), Ev::Sync { node, incarnation });
    }

    /// After a driver call on node `i`: carries out its outbox and re-arms its timer.
    fn after_input(&mut self, i: usize) {
        self.flush(i);
        self.arm(i);
    }

    /// Carries out what node `i`'s driver put in the outbox, checking it on the way:
    /// entries to persist (log matching) go to the disk, its own snapshots are stored,
    /// messages go to the network, applied entries are checked (state-machine safety) and
    /// replies go back to the clients.
    fn flush(&mut self, i: usize) {
        let writes = std::mem::take(&mut self.out.writes);
        for w in writes {
            self.check_entries(i, &w.entries);
            self.nodes[i].disk.push(Write {
                seq: w.seq,
                hard: w.hard_state,
                snapshot: w.snapshot,
                entries: w.entries,
            });
            self.start_sync(i);
        }
        for (_, s) in std::mem::take(&mut self.out.snapshots) {
            // Written atomically by the application, before the log is compacted past it.
            self.report.snapshots_taken += 1;
            self.nodes[i].disk.durable.install_own_snapshot(s);
        }
        for m in std::mem::take(&mut self.out.sends) {
            self.send(m);
        }
        let applied = std::mem::take(&mut self.out.applied);
        self.check_applied(i, &applied);
        self.report.snapshots_installed += std::mem::take(&mut self.out.snapshots_restored);
        if let Some(d) = self.nodes[i].driver.as_ref() {
            let failures = d.counters().snapshot_restore_failures;
            if failures > self.nodes[i].restore_failures {
                self.nodes[i].restore_failures = failures;
                self.violation(format!("node {}: a snapshot does not restore", i + 1));
            }
        }
        for (token, reply) in std::mem::take(&mut self.out.replies) {
            self.driver_reply(i, token, reply);
        }
    }

    /// State-machine safety: no two nodes apply different entries at one index. Also
    /// follows the latest committed configuration (for the durability check).
    fn check_applied(&mut self, i: usize, applied: &[(u64, Entry, u64)]) {
        let id = self.nodes[i].id;
        for (_, e, term_now) in applied {
            let h = hash_of(e);
            match self.applied.get(&e.index) {
                Some(&(t, h0, _)) if t != e.term || h0 != h => {
                    self.violation(format!(
                        "state-machine safety: node {id} applies {}@{} over {}@{t}",
                        e.index, e.term, e.index
                    ));
                }
                Some(_) => {}
                None => {
                    self.applied.insert(e.index, (e.term, h, *term_now));
                }
            }
            if e.kind == EntryKind::Config
                && e.index > self.committed_conf.0
                && let Ok(conf) = decode_conf(&e.payload)
            {
                self.committed_conf = (
                    e.index,
                    conf.voters
                        .iter()
                        .chain(&conf.voters_outgoing)
                        .copied()
                        .collect(),
                );
            }
        }
    }

    /// One reply of node `i`'s driver, on its way back to the client.
    fn driver_reply(
        &mut self,
        i: usize,
        (client, attempt): Token,
        reply: ringleader_raft::driver::Reply<Result<Output, KvError>, Option<Vec<u8>>>,
    ) {
        use ringleader_raft::driver::Reply as R;
        let id = self.nodes[i].id;
        if self.nodes[i]
            .unanswered
            .remove(&(client, attempt))
            .is_none()
        {
            self.violation(format!(
                "node {id}: a reply to request ({client}, {attempt}), not pending there"
            ));
            return;
        }
        let reply = match reply {
            R::Applied {
                index,
                term,
                output: Ok(out),
            } => {
                self.acked_writes.push((index, term));
                Reply::Written(out)
            }
            R::Applied {
                index,
                term,
                output: Err(e),
            } => {
                self.violation(format!(
                    "node {id}: a client's command at {index}@{term} does not apply: {e}"
                ));
                return;
            }
            R::Read(v) => Reply::Value(value_of(v.as_deref())),
            R::Refused(Refusal::NotLeader(hint)) => Reply::Refused { leader_hint: hint },
            R::Refused(_) => Reply::Refused { leader_hint: 0 },
            R::Unknown => {
                self.report.ops_expired += 1;
                Reply::Unknown
            }
        };
        self.reply(client, attempt, reply);
    }

    fn reply(&mut self, client: usize, attempt: u64, reply: Reply) {
        let d = self.rng.random_range(1..=3);
        self.sched.schedule_in(
            Duration::from_millis(d),
            Ev::ToClient {
                client,
                attempt,
                reply,
            },
        );
    }

    // ----- faults -----

    fn crash(&mut self) {
        if !self.faults_on {
            return;
        }
        let n = self.nodes.len();
        let max_down = (n - 1) / 2;
        if self.down < max_down {
            let leader = self.nodes.iter().position(Node::leads);
            let i = match leader {
                Some(l) if self.rng.random_bool(0.5) => l,
                _ => self.rng.random_range(0..n),
            };
            if self.nodes[i].driver.is_some() {
                let power_loss = match self.cfg.faults {
                    Faults::Disk => true,
                    Faults::All => self.rng.random_bool(0.5),
                    _ => false,
                };
                let node = &mut self.nodes[i];
                node.driver = None;
                node.unanswered.clear();
                node.batch.clear();
                node.disk.crash(power_loss, &mut self.rng);
                self.down += 1;
                self.report.crashes += 1;
                self.check_acked_durable();
                // Some restarts are quick enough to rejoin the same election.
                let back = if self.rng.random_bool(0.3) {
                    self.rng.random_range(5..40)
                } else {
                    self.rng.random_range(50..1500)
                };
                let id = self.nodes[i].id;
                self.sched
                    .schedule_in(Duration::from_millis(back), Ev::Restart { node: id });
            }
        }
        let next = self.rng.random_range(100..800);
        self.sched
            .schedule_in(Duration::from_millis(next), Ev::Crash);
    }

    fn partition(&mut self) {
        if !self.faults_on {
            return;
        }
        self.blocked.clear();
        let n = self.nodes.len() as u64;
        let leader = self.nodes.iter().find(|x| x.leads()).map(|x| x.id);
        let side: BTreeSet<u64> = match (leader, self.rng.random_range(0..3)) {
            (Some(l), 0) => [l].into(),
            (_, 1) => (1..=n).filter(|_| self.rng.random_bool(0.5)).collect(),
            _ => [self.rng.random_range(1..=n)].into(),
        };
        let one_way = self.rng.random_bool(0.2);
        for a in 1..=n {
            for b in 1..=n {
                if side.contains(&a) && !side.contains(&b) {
                    self.blocked.insert((a, b));
                    if !one_way {
                        self.blocked.insert((b, a));
                    }
                }
            }
        }
        let heal = self.rng.random_range(100..1200);
        self.sched
            .schedule_in(Duration::from_millis(heal), Ev::Heal);
        let next = heal + self.rng.random_range(100..1000);
        self.sched
            .schedule_in(Duration::from_millis(next), Ev::Partition);
    }

    /// Membership churn (5-node clusters under all faults): the leader removes a voter,
    /// re-adds it as a learner (it catches up, by snapshot if compacted past it), then
    /// promotes it — one server at a time, the next step only once the last committed.
    fn reconfig(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = self.rng.random_range(200..800);
        self.sched
            .schedule_in(Duration::from_millis(next), Ev::Reconfig);
        let Some(li) = self.nodes.iter().position(Node::leads) else {
            return;
        };
        let n = self.nodes.len() as u64;
        let pick = self.rng.random_range(1..=n);
        let Some(d) = self.nodes[li].driver.as_mut() else {
            return;
        };
        let r = d.raft();
        // Decided from the leader's own (latest) configuration, so a change that was lost
        // with a deposed leader is simply redone.
        let m = r.membership();
        let missing = (1..=n).find(|&id| !m.is_voter(id) && !m.is_learner(id));
        let learner = (1..=n).find(|&id| m.is_learner(id));
        let change = if let Some(id) = missing {
            ConfChange::AddLearner(id)
        } else if let Some(id) = learner {
            let caught_up = r
                .progress(id)
                .is_some_and(|p| p.match_index >= r.log().committed());
            if !caught_up {
                return;
            }
            ConfChange::AddVoter(id)
        } else if pick != r.id() {
            ConfChange::Remove(pick)
        } else {
            return;
        };
        let now = self.sched.now();
        if d.change_membership(now, change, &mut self.out).is_ok() {
            self.report.conf_changes += 1;
        }
        self.after_input(li);
    }

    // ----- clients -----

    fn client_next(&mut self, c: usize) {
        if self.clients[c].current.is_some() || self.invoked >= self.cfg.ops {
            return;
        }
        self.invoked += 1;
        let key = self.rng.random_range(0..self.cfg.keys);
        let cl = &mut self.clients[c];
        cl.seq += 1;
        let value = ((c as u64 + 1) << 32) | cl.seq;
        let roll = self.rng.random_range(0..100);
        let (op, req) = match roll {
            0..30 => (
                KvOp::Put(value),
                Req::Write {
                    cmd: Command::Put {
                        key: key_bytes(key),
                        value: value.to_le_bytes().to_vec(),
                    },
                },
            ),
            30..40 => (
                KvOp::Delete,
                Req::Write {
                    cmd: Command::Delete {
                        key: key_bytes(key),
                    },
                },
            ),
            40..55 => {
                let expected = if self.rng.random_bool(0.2) {
                    None
                } else {
                    self.written_values
                        .iter()
                        .rev()
                        .nth(self.rng.random_range(0..3))
                        .copied()
                };
                (
                    KvOp::Cas {
                        expected,
                        new: value,
                    },
                    Req::Write {
                        cmd: Command::Cas {
                            key: key_bytes(key),
                            expected: expected.map(|v| v.to_le_bytes().to_vec()),
                            new: value.to_le_bytes().to_vec(),
                        },
                    },
                )
            }
            55..75 => (
                KvOp::Get,
                Req::Read {
                    key,
                    mode: ReadMode::Consistent,
                },
            ),
            75..92 => (
                KvOp::Get,
                Req::Read {
                    key,
                    mode: ReadMode::Default,
                },
            ),
            _ => (
                KvOp::Get,
                Req::Read {
                    key,
                    mode: ReadMode::Stale,
                },
            ),
        };
        if matches!(op, KvOp::Put(_) | KvOp::Cas { .. }) {
            self.written_values.insert(value);
        }
        let now = self.sched.now().as_nanos();
        self.history.push(Operation {
            key,
            op,
            ret: KvRet::Unknown,
            invoke: now,
            ret_time: u64::MAX,
        });
        // Stale reads are not linearizable by design: kept out of the checked history.
        self.void.push(matches!(
            req,
            Req::Read {
                mode: ReadMode::Stale,
                ..
            }
        ));
        let h = self.history.len() - 1;
        self.clients[c].current = Some((h, req, 0));
        self.clients[c].attempt += 1;
        let attempt = self.clients[c].attempt;
        self.sched.schedule_in(
            Duration::from_millis(self.cfg.op_timeout_ms),
            Ev::ClientTimeout { client: c, attempt },
        );
        self.client_send(c);
    }

    fn client_send(&mut self, c: usize) {
        let Some((_, req, _)) = self.clients[c].current.clone() else {
            return;
        };
        let n = self.nodes.len() as u64;
        let guess = self.clients[c].leader_guess;
        // Mostly the node believed to lead; sometimes any node (a deposed leader included).
        let sticky = self.rng.random_bool(0.75);
        let node = if sticky
            && guess != 0
            && !matches!(
                req,
                Req::Read {
                    mode: ReadMode::Stale,
                    ..
                }
            ) {
            guess
        } else {
            self.rng.random_range(1..=n)
        };
        let attempt = self.clients[c].attempt;
        let d = self.rng.random_range(1..=3);
        self.sched.schedule_in(
            Duration::from_millis(d),
            Ev::ToNode {
                node,
                client: c,
                attempt,
                req,
            },
        );
    }

    /// A client's request reaches node `i`: into its driver (dropped if the node is down).
    fn node_request(&mut self, i: usize, client: usize, attempt: u64, req: Req) {
        let now = self.sched.now();
        let deadline = now + Duration::from_millis(self.cfg.request_timeout_ms);
        let n = &mut self.nodes[i];
        let Some(d) = n.driver.as_mut() else { return };
        let token = (client, attempt);
        n.unanswered.insert(token, deadline);
        match req {
            Req::Write { cmd } if self.batch_window_ms > 0 => {
                n.batch.push((cmd.encode(), token, deadline));
                if n.batch.len() == 1 {
                    let ev = Ev::ProposeBatch {
                        node: n.id,
                        incarnation: n.incarnation,
                    };
                    self.sched
                        .schedule_in(Duration::from_millis(self.batch_window_ms), ev);
                }
                return;
            }
            Req::Write { cmd } => d.propose(now, cmd.encode(), token, deadline, &mut self.out),
            Req::Read { key, mode } => {
                let consistency = match mode {
                    ReadMode::Consistent => ReadConsistency::Linearizable,
                    ReadMode::Default => ReadConsistency::Lease,
                    ReadMode::Stale => ReadConsistency::Stale,
                };
                let query = Get {
                    key: key_bytes(key),
                };
                d.read(now, query, consistency, token, deadline, &mut self.out);
            }
        }
        self.after_input(i);
    }

    /// The client gives up on attempt `attempt` (its own timeout, or its node's driver
    /// gave up): the operation stays in the history with an unknown outcome and an
    /// infinite return time.
    fn give_up(&mut self, c: usize, attempt: u64) {
        if self.clients[c].attempt != attempt || self.clients[c].current.take().is_none() {
            return;
        }
        self.report.ops_unknown += 1;
        self.clients[c].attempt += 1;
        self.clients[c].leader_guess = 0;
        self.sched
            .schedule_in(Duration::from_millis(1), Ev::ClientNext { client: c });
    }

    fn client_reply(&mut self, c: usize, attempt: u64, reply: Reply) {
        if self.clients[c].attempt != attempt {
            return;
        }
        if let Reply::Unknown = reply {
            self.give_up(c, attempt);
            return;
        }
        let Some((h, req, tries)) = self.clients[c].current.take() else {
            return;
        };
        let now = self.sched.now().as_nanos();
        match reply {
            Reply::Refused { leader_hint } => {
                if tries >= 30 {
                    // Definitely never happened: drop it from the history.
                    self.void[h] = true;
                    self.clients[c].attempt += 1;
                    self.sched
                        .schedule_in(Duration::from_millis(1), Ev::ClientNext { client: c });
                    return;
                }
                self.clients[c].leader_guess = leader_hint;
                self.clients[c].current = Some((h, req, tries + 1));
                let backoff = self.rng.random_range(5..30);
                self.clients[c].attempt += 1;
                let attempt = self.clients[c].attempt;
                // The timeout restarts with the new attempt.
                self.sched.schedule_in(
                    Duration::from_millis(self.cfg.op_timeout_ms),
                    Ev::ClientTimeout { client: c, attempt },
                );
                self.sched.schedule_in(
                    Duration::from_millis(backoff),
                    Ev::ClientResend { client: c, attempt },
                );
            }
            Reply::Written(out) => {
                self.history[h].ret = match out {
                    Output::Done => KvRet::Done,
                    Output::Cas(ok) => KvRet::Cas(ok),
                };
                self.history[h].ret_time = now;
                self.report.ops_acked += 1;
                self.clients[c].done += 1;
                self.sched
                    .schedule_in(Duration::from_millis(1), Ev::ClientNext { client: c });
            }
            Reply::Unknown => {}
            Reply::Value(v) => {
                if let Some(x) = v
                    && !self.written_values.contains(&x)
                {
                    self.violation(format!("read returned {x:#x}, a value never written"));
                }
                self.history[h].ret = KvRet::Value(v);
                self.history[h].ret_time = now;
                if !self.void[h] {
                    self.report.ops_acked += 1;
                }
                self.clients[c].done += 1;
                self.sched
                    .schedule_in(Duration::from_millis(1), Ev::ClientNext { client: c });
            }
        }
    }
}

impl Node {
    /// Whether the node is up and leads.
    fn leads(&self) -> bool {
        self.driver
            .as_ref()
            .is_some_and(|d| d.raft().role() == Role::Leader)
    }
}

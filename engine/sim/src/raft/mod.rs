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
//!
//! Here: the run's configuration, its report and the event loop. Around it: `harness`
//! (each node's Ready driver and what it hands out), `invariants` (the checks after every
//! step), `faults` (crashes, partitions, membership churn) and `clients`.

pub mod check;
mod clients;
pub mod disk;
mod faults;
mod harness;
mod invariants;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use rand::Rng;
use ringleader_raft::driver::{DriverConfig, GroupDriver, Outbox};
use ringleader_raft::kv::{Command, Kv, KvError, Output, ReadMode};
use ringleader_raft::{Config, Role};
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{ConfState, Entry};

use self::check::{CheckResult, KvOp, KvRet, Operation};
use self::disk::Disk;
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
    /// All of the above, and now and then a node whose disk is wiped: it restarts empty
    /// under its old id and catches up before it votes (`Config::catch_up_before_voting`).
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
    /// With `Faults::All`, whether a wiped node restarts with
    /// `Config::catch_up_before_voting` (true; false shows what a wipe does without it).
    pub wipe_catch_up: bool,
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
            wipe_catch_up: true,
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
    /// Of those, crashes that wiped the node's disk.
    pub wipes: u64,
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
    /// Its disk was wiped and it has not caught up since (it holds none of what it held).
    wiped: bool,
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
                wiped: false,
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
        let mut raft_cfg = self.cfg.raft.clone();
        raft_cfg.catch_up_before_voting = n.wiped && self.cfg.wipe_catch_up;
        let driver = GroupDriver::new(
            raft_cfg,
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
}

impl Node {
    /// Whether the node is up and leads.
    fn leads(&self) -> bool {
        self.driver
            .as_ref()
            .is_some_and(|d| d.raft().role() == Role::Leader)
    }
}

//! `ringleader-tools raft-crash`: a 3-node replicated key-value cluster (three `server`
//! processes on loopback) under concurrent writes; each cycle SIGKILLs the current leader
//! (some cycles a follower, some cycles two nodes at once) while writes are being
//! acknowledged, restarts it on its directory, and goes on. Every client operation is
//! recorded; at the end the tool checks that no acknowledged write is lost and that the
//! whole history is linearizable (the simulator's checker).
//!
//! One cycle in ten (when no node is still catching up) wipes a follower instead: its
//! directory is deleted and it restarts empty with `--rejoin`, so it must catch up before
//! it counts towards a quorum again.
//!
//! Workload: `--workers` clients on a few contended keys (puts of unique values,
//! compare-and-swaps, linearizable gets), plus one client putting unique keys that are
//! never overwritten; after the last cycle every node is up again and every acknowledged
//! unique key is read back (`lost` counts those missing or wrong).
//!
//! A request whose answer never came (timeout, connection lost) is recorded with an
//! unknown outcome and never retried (a retry could apply it twice); a request refused
//! (not the leader, no leader yet) definitely did not happen and is retried.
//!
//! A kill lands only after the cluster acknowledged a write since the last restart (then
//! at a random point 20–200 ms later); a cycle with no acknowledgement within 30 s is
//! counted in `cycles_idle`.
//!
//! The run stops by itself: past `--deadline-s` (or once the cluster has answered nothing
//! for 60 s during the read-back) what is left unread counts as `unreadable` and the run
//! fails. Each node's log (`--log-level info`) is appended to `DIR/node-N.log`; a failing
//! run prints the tail of each.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::{Rng, SeedableRng};
use ringleader_engine::multiraft::CATCHING_UP_FILE;
use ringleader_sim::raft::check::{self, CheckResult, KvOp, KvRet, Operation};
use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::msg::client::{
    CLIENT_FRAME_BYTES_MAX, ClientOp, ClientRequest, ClientResponse, ClientResult, Consistency,
    ErrorCode,
};
use ringleader_wire::{Decoder, Encoder, Header, MessageRef, WireMessage};
use serde_json::json;

const NODES: usize = 3;
/// Keys the contended workers share.
const CONTENDED_KEYS: u64 = 4;
/// Unique keys start here.
const UNIQUE_BASE: u64 = 1 << 40;

/// Arguments of `raft-crash`.
#[derive(Parser, Debug)]
pub struct Args {
    /// Kill/restart cycles.
    #[arg(long, default_value_t = 50)]
    pub cycles: u32,
    /// Working directory (the nodes' data; created, left in place for inspection).
    #[arg(long)]
    pub dir: PathBuf,
    /// Clients on the contended keys.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Raft groups of the cluster.
    #[arg(long, default_value_t = 1)]
    pub groups: u64,
    /// First port (node i listens on port + i); default: from the pid, below the
    /// ephemeral range (the clients' own connections cannot hold it).
    #[arg(long)]
    pub port: Option<u16>,
    /// Seed of the kill schedule.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
    /// Wall-clock bound of the whole run, in seconds: past it the load stops and what is
    /// not yet read back counts as unreadable.
    #[arg(long, default_value_t = 900)]
    pub deadline_s: u64,
}

fn key_bytes(k: u64) -> Vec<u8> {
    k.to_be_bytes().to_vec()
}

fn value_of(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_le_bytes)
}

struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    addrs: Vec<SocketAddr>,
    groups: u64,
    kids: Vec<Option<Child>>,
    born: Instant,
}

impl Cluster {
    /// Whether some node's shard has not caught up since it rejoined after a wipe.
    fn catching_up(&self) -> bool {
        (0..NODES).any(|i| {
            std::fs::read_dir(self.dir.join(format!("node-{}", i + 1)))
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .any(|e| e.path().join(CATCHING_UP_FILE).exists())
                })
                .unwrap_or(false)
        })
    }

    /// Kills node `i`, deletes its directory and starts it again with `--rejoin`.
    fn wipe(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        let d = self.dir.join(format!("node-{}", i + 1));
        std::fs::remove_dir_all(&d).with_context(|| format!("wiping {}", d.display()))?;
        self.spawn_as(i, true)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn_as(i, false)
    }

    fn spawn_as(&mut self, i: usize, rejoin: bool) -> anyhow::Result<()> {
        let peers: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .map(|(j, a)| format!("{}={a}", j + 1))
            .collect();
        let log_path = self.dir.join(format!("node-{}.log", i + 1));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut marker = &log;
        let _ = writeln!(
            marker,
            "--- raft-crash: node {} starts ({} ms into the run)",
            i + 1,
            self.born.elapsed().as_millis()
        );
        let child = Command::new(&self.exe)
            .args(["--log-level", "info"])
            .args(["server", "--id", &(i + 1).to_string()])
            .args([
                "--listen",
                &self.addrs[i].to_string(),
                "--peers",
                &peers.join(","),
            ])
            .arg("--dir")
            .arg(self.dir.join(format!("node-{}", i + 1)))
            .args(["--groups", &self.groups.to_string()])
            .args([
                "--snapshot-every",
                "500",
                "--election-timeout-ms",
                "300",
                "--segment-mib",
                "4",
            ])
            .args(["--request-timeout-ms", "2000"])
            .args(rejoin.then_some("--rejoin"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env_remove("RUST_LOG")
            .spawn()
            .context("starting a server")?;
        self.kids[i] = Some(child);
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.kids[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.kids.len() {
            self.kill(i);
        }
    }
}

/// A blocking client with one request in flight, following the leader.
struct Client {
    addrs: Vec<SocketAddr>,
    target: usize,
    conn: Option<(TcpStream, Decoder)>,
    enc: Encoder,
    next_id: u64,
}

/// What one attempt came to.
enum Attempt {
    /// The answer.
    Answer(ClientResult),
    /// Definitely not done (refused, or never sent): retry.
    Refused,
    /// Sent, no answer: the outcome is unknown.
    Lost,
}

impl Client {
    fn new(addrs: Vec<SocketAddr>, start: usize) -> Client {
        Client {
            addrs,
            target: start,
            conn: None,
            enc: Encoder::new(b""),
            next_id: 1,
        }
    }

    fn attempt(&mut self, op: &ClientOp) -> Attempt {
        if self.conn.is_none() {
            match TcpStream::connect_timeout(&self.addrs[self.target], Duration::from_millis(500)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_millis(2500)));
                    self.conn = Some((s, Decoder::new(b"", CLIENT_FRAME_BYTES_MAX - HEADER_LEN)));
                }
                Err(_) => {
                    self.target = (self.target + 1) % self.addrs.len();
                    return Attempt::Refused;
                }
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        let Ok(frame) = self.enc.encode(
            &ClientRequest { id, op: op.clone() },
            None,
            CLIENT_FRAME_BYTES_MAX,
        ) else {
            return Attempt::Refused;
        };
        let Some((s, dec)) = self.conn.as_mut() else {
            return Attempt::Refused;
        };
        if s.write_all(frame).is_err() {
            // Maybe sent in part: a write may have arrived.
            self.conn = None;
            self.target = (self.target + 1) % self.addrs.len();
            return Attempt::Lost;
        }
        let got = (|| -> std::io::Result<ClientResponse> {
            loop {
                let mut head = [0u8; HEADER_LEN];
                s.read_exact(&mut head)?;
                let h = Header::parse(&head, CLIENT_FRAME_BYTES_MAX - HEADER_LEN)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let mut buf = rkyv::util::AlignedVec::<16>::new();
                buf.extend_from_slice(&head);
                buf.resize(h.frame_len(), 0);
                s.read_exact(&mut buf[HEADER_LEN..])?;
                let f = dec
                    .decode(&mut buf, None)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                for m in f.messages() {
                    if let Ok(MessageRef::ClientResponse(r)) = m
                        && let Ok(r) = <ClientResponse as WireMessage>::to_owned(r)
                        && r.id == id
                    {
                        return Ok(r);
                    }
                }
            }
        })();
        match got {
            Err(_) => {
                self.conn = None;
                self.target = (self.target + 1) % self.addrs.len();
                Attempt::Lost
            }
            Ok(r) => match r.result {
                ClientResult::NotLeader { leader, .. } => {
                    if leader >= 1 && leader as usize <= self.addrs.len() {
                        self.target = leader as usize - 1;
                    } else {
                        self.target = (self.target + 1) % self.addrs.len();
                    }
                    self.conn = None;
                    Attempt::Refused
                }
                ClientResult::Error {
                    code: ErrorCode::Unavailable | ErrorCode::Busy | ErrorCode::ShuttingDown,
                    ..
                } => {
                    self.conn = None;
                    self.target = (self.target + 1) % self.addrs.len();
                    Attempt::Refused
                }
                other => Attempt::Answer(other),
            },
        }
    }
}

struct Shared {
    start: Instant,
    stop: AtomicBool,
    acked: AtomicU64,
    leader: AtomicUsize,
    history: Mutex<Vec<Operation>>,
    unique_acked: Mutex<Vec<(u64, u64)>>,
    unknown: AtomicU64,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Runs one logical operation to an outcome: retried while refused (with a short pause),
/// at most until `give_up`. Returns the result (None: unknown outcome) and the node that
/// answered.
fn perform(
    c: &mut Client,
    op: &ClientOp,
    sh: &Shared,
    give_up: Duration,
) -> Option<(ClientResult, usize)> {
    let t0 = Instant::now();
    loop {
        match c.attempt(op) {
            Attempt::Answer(r) => return Some((r, c.target)),
            Attempt::Lost => return None,
            Attempt::Refused => {
                if t0.elapsed() > give_up
                    || sh.stop.load(Ordering::SeqCst) && t0.elapsed() > give_up / 4
                {
                    return Some((
                        ClientResult::Error {
                            code: ErrorCode::Unavailable,
                            message: String::new(),
                        },
                        c.target,
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn contended_worker(w: usize, addrs: Vec<SocketAddr>, sh: Arc<Shared>, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ (w as u64) << 32);
    let mut c = Client::new(addrs, w % NODES);
    let mut seq = 0u64;
    let mut written: Vec<u64> = Vec::new();
    while !sh.stop.load(Ordering::SeqCst) {
        let key = rng.random_range(0..CONTENDED_KEYS);
        seq += 1;
        let value = ((w as u64 + 1) << 32) | seq;
        let roll = rng.random_range(0..100);
        let (kop, op) = match roll {
            0..45 => (
                KvOp::Put(value),
                ClientOp::Put {
                    key: key_bytes(key),
                    value: value.to_le_bytes().to_vec(),
                },
            ),
            45..65 => {
                let expected = if rng.random_bool(0.2) || written.is_empty() {
                    None
                } else {
                    Some(written[rng.random_range(0..written.len())])
                };
                (
                    KvOp::Cas {
                        expected,
                        new: value,
                    },
                    ClientOp::Cas {
                        key: key_bytes(key),
                        expected: expected.map(|v| v.to_le_bytes().to_vec()),
                        new: value.to_le_bytes().to_vec(),
                    },
                )
            }
            _ => (
                KvOp::Get,
                ClientOp::Get {
                    key: key_bytes(key),
                    consistency: Consistency::Linearizable,
                },
            ),
        };
        if matches!(kop, KvOp::Put(_) | KvOp::Cas { .. }) {
            written.push(value);
            if written.len() > 16 {
                written.remove(0);
            }
        }
        let invoke = sh.now();
        let r = perform(&mut c, &op, &sh, Duration::from_secs(20));
        let ret_time = sh.now();
        let ret = match r {
            None => {
                sh.unknown.fetch_add(1, Ordering::Relaxed);
                if kop == KvOp::Get {
                    continue; // an unanswered read constrains nothing
                }
                KvRet::Unknown
            }
            Some((res, at)) => match res {
                ClientResult::Done => {
                    sh.acked.fetch_add(1, Ordering::SeqCst);
                    sh.leader.store(at, Ordering::SeqCst);
                    KvRet::Done
                }
                ClientResult::Cas { swapped } => {
                    sh.acked.fetch_add(1, Ordering::SeqCst);
                    sh.leader.store(at, Ordering::SeqCst);
                    KvRet::Cas(swapped)
                }
                ClientResult::Value(v) => KvRet::Value(v.as_deref().and_then(value_of)),
                ClientResult::Error {
                    code: ErrorCode::Unknown,
                    ..
                } => {
                    sh.unknown.fetch_add(1, Ordering::Relaxed);
                    if kop == KvOp::Get {
                        continue;
                    }
                    KvRet::Unknown
                }
                // Refused until we gave up: it never happened.
                _ => continue,
            },
        };
        let ret_time = if ret == KvRet::Unknown {
            u64::MAX
        } else {
            ret_time
        };
        if let Ok(mut h) = sh.history.lock() {
            h.push(Operation {
                key,
                op: kop,
                ret,
                invoke,
                ret_time,
            });
        }
    }
}

fn unique_worker(addrs: Vec<SocketAddr>, sh: Arc<Shared>) {
    let mut c = Client::new(addrs, 0);
    let mut i = 0u64;
    while !sh.stop.load(Ordering::SeqCst) {
        i += 1;
        let key = UNIQUE_BASE + i;
        let op = ClientOp::Put {
            key: key_bytes(key),
            value: i.to_le_bytes().to_vec(),
        };
        if let Some((ClientResult::Done, at)) = perform(&mut c, &op, &sh, Duration::from_secs(20)) {
            sh.acked.fetch_add(1, Ordering::SeqCst);
            sh.leader.store(at, Ordering::SeqCst);
            if let Ok(mut u) = sh.unique_acked.lock() {
                u.push((key, i));
            }
        }
    }
}

/// Runs the crash test.
pub fn run(a: Args) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let port = a
        .port
        .unwrap_or_else(|| ringleader_engine::transport::port_base_below_ephemeral(NODES as u16));
    let addrs: Vec<SocketAddr> = (0..NODES)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], port + i as u16)))
        .collect();
    let mut cluster = Cluster {
        exe: std::env::current_exe().context("finding this program")?,
        dir: a.dir.clone(),
        addrs: addrs.clone(),
        groups: a.groups,
        kids: (0..NODES).map(|_| None).collect(),
        born: Instant::now(),
    };
    for i in 0..NODES {
        cluster.spawn(i)?;
    }
    let sh = Arc::new(Shared {
        start: Instant::now(),
        stop: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        leader: AtomicUsize::new(usize::MAX),
        history: Mutex::new(Vec::new()),
        unique_acked: Mutex::new(Vec::new()),
        unknown: AtomicU64::new(0),
    });
    let mut threads = Vec::new();
    for w in 0..a.workers {
        let (addrs, sh) = (addrs.clone(), Arc::clone(&sh));
        let seed = a.seed;
        threads.push(std::thread::spawn(move || {
            contended_worker(w, addrs, sh, seed)
        }));
    }
    {
        let (addrs, sh) = (addrs.clone(), Arc::clone(&sh));
        threads.push(std::thread::spawn(move || unique_worker(addrs, sh)));
    }

    let mut rng = rand::rngs::SmallRng::seed_from_u64(a.seed);
    let mut cycles_idle = 0u32;
    let mut leader_changes = 0u64;
    let mut last_leader = usize::MAX;
    let mut kinds: BTreeMap<&'static str, u32> = BTreeMap::new();
    let deadline = cluster.born + Duration::from_secs(a.deadline_s);
    let mut deadline_hit = false;
    let mut cycles_done = 0u32;
    for cycle in 0..a.cycles {
        if Instant::now() >= deadline {
            deadline_hit = true;
            break;
        }
        cycles_done += 1;
        // Wait for a write acknowledged since the last restart.
        let base = sh.acked.load(Ordering::SeqCst);
        let wait_until = Instant::now() + Duration::from_secs(30);
        while sh.acked.load(Ordering::SeqCst) == base && Instant::now() < wait_until {
            std::thread::sleep(Duration::from_millis(2));
        }
        if sh.acked.load(Ordering::SeqCst) == base {
            cycles_idle += 1;
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(20..200)));
        let leader = sh.leader.load(Ordering::SeqCst);
        if leader != last_leader && leader < NODES {
            if last_leader != usize::MAX {
                leader_changes += 1;
            }
            last_leader = leader;
        }
        let leader = if leader < NODES { leader } else { 0 };
        let roll = rng.random_range(0..100);
        if roll >= 90 && !cluster.catching_up() {
            // A follower's disk is lost: it rejoins empty under its old id (`--rejoin`) and
            // must not count towards a quorum until it has caught up.
            *kinds.entry("wipe").or_default() += 1;
            let v = (leader + 1 + rng.random_range(0..NODES - 1)) % NODES;
            cluster.wipe(v)?;
            if !a.json {
                eprintln!("cycle {}: wiped {}", cycle + 1, v + 1);
            }
            continue;
        }
        let roll = roll % 90 * 100 / 90;
        let victims: Vec<usize> = if roll < 60 {
            *kinds.entry("leader").or_default() += 1;
            vec![leader]
        } else if roll < 85 {
            *kinds.entry("follower").or_default() += 1;
            vec![(leader + 1 + rng.random_range(0..NODES - 1)) % NODES]
        } else {
            *kinds.entry("two").or_default() += 1;
            vec![
                leader,
                (leader + 1 + rng.random_range(0..NODES - 1)) % NODES,
            ]
        };
        for &v in &victims {
            cluster.kill(v);
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        for &v in &victims {
            cluster.spawn(v)?;
        }
        if !a.json {
            eprintln!(
                "cycle {}: killed {:?}, acknowledged so far {}",
                cycle + 1,
                victims.iter().map(|v| v + 1).collect::<Vec<_>>(),
                sh.acked.load(Ordering::SeqCst)
            );
        }
    }
    // Let the cluster settle with every node up, then stop the load.
    let base = sh.acked.load(Ordering::SeqCst);
    let until = (Instant::now() + Duration::from_secs(30)).min(deadline);
    while sh.acked.load(Ordering::SeqCst) < base + 20 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    sh.stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }

    // Read back: every acknowledged unique key, and every contended key (into the history).
    let mut c = Client::new(addrs.clone(), 0);
    let unique = sh
        .unique_acked
        .lock()
        .map(|u| u.clone())
        .unwrap_or_default();
    let mut lost = 0u64;
    let mut unreadable = 0u64;
    // The read-back gives up once the cluster has answered nothing for this long (or at the
    // deadline): one request at a time over thousands of keys must not turn a dead cluster
    // into an endless run.
    let silence_max = Duration::from_secs(60);
    let mut answered_at = Instant::now();
    for (n, &(key, v)) in unique.iter().enumerate() {
        let now = Instant::now();
        if now >= deadline || now.duration_since(answered_at) >= silence_max {
            deadline_hit |= now >= deadline;
            unreadable += (unique.len() - n) as u64;
            eprintln!(
                "read-back stopped with {} keys left: {}",
                unique.len() - n,
                if now >= deadline {
                    "past --deadline-s"
                } else {
                    "the cluster answered nothing for 60 s"
                }
            );
            break;
        }
        let op = ClientOp::Get {
            key: key_bytes(key),
            consistency: Consistency::Linearizable,
        };
        let give_up = Duration::from_secs(30).min(deadline.saturating_duration_since(now));
        match perform(&mut c, &op, &sh, give_up) {
            Some((ClientResult::Value(Some(got)), _)) if value_of(&got) == Some(v) => {
                answered_at = Instant::now();
            }
            Some((ClientResult::Value(_), _)) => {
                answered_at = Instant::now();
                lost += 1;
            }
            _ => unreadable += 1,
        }
    }
    let mut history = sh.history.lock().map(|h| h.clone()).unwrap_or_default();
    for key in 0..CONTENDED_KEYS {
        let op = ClientOp::Get {
            key: key_bytes(key),
            consistency: Consistency::Linearizable,
        };
        let invoke = sh.now();
        let give_up = Duration::from_secs(30)
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_secs(1));
        if let Some((ClientResult::Value(v), _)) = perform(&mut c, &op, &sh, give_up) {
            history.push(Operation {
                key,
                op: KvOp::Get,
                ret: KvRet::Value(v.as_deref().and_then(value_of)),
                invoke,
                ret_time: sh.now(),
            });
        }
    }
    drop(cluster);
    let verdict = check::check(&history, 5_000_000);
    let linearizable = verdict == CheckResult::Linearizable;
    let acknowledged = sh.acked.load(Ordering::SeqCst);
    let failed = lost > 0 || unreadable > 0 || !linearizable || deadline_hit;
    if failed {
        print_log_tails(&a.dir);
    }
    let out = json!({
        "cycles": cycles_done,
        "cycles_requested": a.cycles,
        "deadline_hit": deadline_hit,
        "acknowledged": acknowledged,
        "lost": lost,
        "unreadable": unreadable,
        "linearizable": linearizable,
        "verdict": format!("{verdict:?}"),
        "history_ops": history.len(),
        "unknown_outcomes": sh.unknown.load(Ordering::Relaxed),
        "unique_acknowledged": unique.len(),
        "leader_changes": leader_changes,
        "cycles_idle": cycles_idle,
        "kills": kinds,
        "dir": a.dir.display().to_string(),
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    anyhow::ensure!(lost == 0, "{lost} acknowledged writes were lost");
    anyhow::ensure!(
        unreadable == 0,
        "{unreadable} acknowledged writes could not be read back after the last restart"
    );
    anyhow::ensure!(linearizable, "the history is not linearizable: {verdict:?}");
    anyhow::ensure!(
        !deadline_hit,
        "the run passed --deadline-s {} (cycles done: {cycles_done} of {})",
        a.deadline_s,
        a.cycles
    );
    Ok(())
}

/// The last lines of each node's log, on stderr, for a failing run.
fn print_log_tails(dir: &std::path::Path) {
    for i in 1..=NODES {
        let path = dir.join(format!("node-{i}.log"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("--- last lines of {}:", path.display());
        for l in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{l}");
        }
    }
}

//! The key-value workload of the live Raft tests (`raft-crash`, the Raft fault suites): a
//! cluster of `server` processes (on loopback, or one per network namespace), blocking
//! clients that follow the leader, contended workers and a unique-key writer recording
//! every operation, and the read-back that checks no acknowledged write was lost and the
//! history is linearizable (the simulator's checker).
//!
//! A request whose answer never came (timeout, connection lost) is recorded with an
//! unknown outcome and never retried (a retry could apply it twice); a request refused
//! (not the leader, no leader yet) definitely did not happen and is retried.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, SeedableRng};
use ringleader_engine::multiraft::CATCHING_UP_FILE;
use ringleader_sim::raft::check::{KvOp, KvRet, Operation};
use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::msg::client::{
    CLIENT_FRAME_BYTES_MAX, ClientOp, ClientRequest, ClientResponse, ClientResult, Consistency,
    ErrorCode,
};
use ringleader_wire::{Decoder, Encoder, Header, MessageRef, WireMessage};

/// Keys the contended workers share.
pub const CONTENDED_KEYS: u64 = 4;
/// Unique keys start here.
pub const UNIQUE_BASE: u64 = 1 << 40;

/// A key as the workload writes it.
pub fn key_bytes(k: u64) -> Vec<u8> {
    k.to_be_bytes().to_vec()
}

/// A value as the workload wrote it.
pub fn value_of(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_le_bytes)
}

/// `server` processes, node `i` (0-based) with id `i + 1`, data in `DIR/node-{i+1}` and its
/// log (`--log-level info`) appended to `DIR/node-{i+1}.log`; killed when dropped.
pub struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    addrs: Vec<SocketAddr>,
    groups: u64,
    /// Node `i` runs inside host `i + 1`'s network namespace (`crate::netns`).
    in_netns: bool,
    kids: Vec<Option<Child>>,
    born: Instant,
}

impl Cluster {
    /// A cluster of `addrs.len()` nodes, none started yet.
    pub fn new(
        dir: PathBuf,
        addrs: Vec<SocketAddr>,
        groups: u64,
        in_netns: bool,
    ) -> anyhow::Result<Cluster> {
        Ok(Cluster {
            exe: std::env::current_exe().context("finding this program")?,
            dir,
            kids: addrs.iter().map(|_| None).collect(),
            addrs,
            groups,
            in_netns,
            born: Instant::now(),
        })
    }

    /// When the cluster was created.
    pub fn born(&self) -> Instant {
        self.born
    }

    /// Whether some node's shard has not caught up since it rejoined after a wipe.
    pub fn catching_up(&self) -> bool {
        (0..self.addrs.len()).any(|i| {
            std::fs::read_dir(self.dir.join(format!("node-{}", i + 1)))
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .any(|e| e.path().join(CATCHING_UP_FILE).exists())
                })
                .unwrap_or(false)
        })
    }

    /// Kills node `i`, deletes its directory and starts it again with `--rejoin`.
    pub fn wipe(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        let d = self.dir.join(format!("node-{}", i + 1));
        std::fs::remove_dir_all(&d).with_context(|| format!("wiping {}", d.display()))?;
        self.spawn_as(i, true)
    }

    /// Starts node `i` on its directory.
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
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
            "--- node {} starts ({} ms into the run)",
            i + 1,
            self.born.elapsed().as_millis()
        );
        let mut cmd = if self.in_netns {
            crate::netns::exec_in(i + 1, &self.exe)
        } else {
            Command::new(&self.exe)
        };
        let child = cmd
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

    /// SIGKILLs node `i` (if it runs).
    pub fn kill(&mut self, i: usize) {
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
pub struct Client {
    addrs: Vec<SocketAddr>,
    target: usize,
    conn: Option<(TcpStream, Decoder)>,
    enc: Encoder,
    next_id: u64,
}

/// What one attempt came to.
pub enum Attempt {
    /// The answer.
    Answer(ClientResult),
    /// Definitely not done (refused, or never sent): retry.
    Refused,
    /// Sent, no answer: the outcome is unknown.
    Lost,
}

impl Client {
    /// A client of the nodes at `addrs` (node `i` has id `i + 1`), trying `start` first.
    pub fn new(addrs: Vec<SocketAddr>, start: usize) -> Client {
        Client {
            addrs,
            target: start,
            conn: None,
            enc: Encoder::new(b""),
            next_id: 1,
        }
    }

    /// Sends the next attempt to node `i` (reconnecting if it is another node).
    pub fn retarget(&mut self, i: usize) {
        if i != self.target {
            self.conn = None;
            self.target = i;
        }
    }

    /// One request, one answer (or none): a refusal moves to the leader it names.
    pub fn attempt(&mut self, op: &ClientOp) -> Attempt {
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

/// What the clients share: the history, the acknowledged unique keys, counters.
pub struct Shared {
    /// Time zero of the history.
    pub start: Instant,
    /// Set to stop the workers.
    pub stop: AtomicBool,
    /// Writes acknowledged.
    pub acked: AtomicU64,
    /// The node that acknowledged the latest write (`usize::MAX`: none yet).
    pub leader: AtomicUsize,
    /// Every operation with a known invocation, for the checker.
    pub history: Mutex<Vec<Operation>>,
    /// Unique keys acknowledged, with their values.
    pub unique_acked: Mutex<Vec<(u64, u64)>>,
    /// Operations whose outcome is unknown.
    pub unknown: AtomicU64,
}

impl Shared {
    /// Fresh, with time zero now.
    pub fn new() -> Shared {
        Shared {
            start: Instant::now(),
            stop: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            leader: AtomicUsize::new(usize::MAX),
            history: Mutex::new(Vec::new()),
            unique_acked: Mutex::new(Vec::new()),
            unknown: AtomicU64::new(0),
        }
    }

    /// Nanoseconds since time zero.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// Runs one logical operation to an outcome: retried while refused (with a short pause),
/// at most until `give_up`. Returns the result (None: unknown outcome) and the node that
/// answered.
pub fn perform(
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

/// Puts, compare-and-swaps and linearizable gets on the contended keys until stopped,
/// each recorded in the history; worker `w` starts at node `w mod n`.
pub fn contended_worker(w: usize, addrs: Vec<SocketAddr>, sh: Arc<Shared>, seed: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed ^ (w as u64) << 32);
    let n = addrs.len();
    let mut c = Client::new(addrs, w % n);
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

/// Puts of keys never overwritten until stopped; each acknowledged one is remembered for
/// the read-back.
pub fn unique_worker(addrs: Vec<SocketAddr>, sh: Arc<Shared>) {
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

/// The last lines of each node's log, on stderr, for a failing run.
pub fn print_log_tails(dir: &std::path::Path, nodes: usize) {
    for i in 1..=nodes {
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

/// What the read-back found.
pub struct ReadBack {
    /// Acknowledged unique keys missing or wrong.
    pub lost: u64,
    /// Acknowledged unique keys that could not be read.
    pub unreadable: u64,
    /// Unique keys acknowledged.
    pub unique: usize,
    /// The recorded history plus a final linearizable read of every contended key.
    pub history: Vec<Operation>,
    /// Whether it stopped at `deadline`.
    pub deadline_hit: bool,
}

/// Stops the workers, waits for them, and reads back (see [`read_back`]).
pub fn stop_and_read_back(
    sh: &Shared,
    threads: Vec<std::thread::JoinHandle<()>>,
    addrs: &[SocketAddr],
    deadline: Instant,
) -> ReadBack {
    sh.stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    read_back(addrs, sh, deadline)
}

/// Once the workers have stopped: reads back every acknowledged unique key, and every
/// contended key into the history. It gives up once the cluster has answered nothing for
/// 60 s or at `deadline`: one request at a time over thousands of keys must not turn a
/// dead cluster into an endless run.
pub fn read_back(addrs: &[SocketAddr], sh: &Shared, deadline: Instant) -> ReadBack {
    let mut deadline_hit = false;
    let mut c = Client::new(addrs.to_vec(), 0);
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
        match perform(&mut c, &op, sh, give_up) {
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
        if let Some((ClientResult::Value(v), _)) = perform(&mut c, &op, sh, give_up) {
            history.push(Operation {
                key,
                op: KvOp::Get,
                ret: KvRet::Value(v.as_deref().and_then(value_of)),
                invoke,
                ret_time: sh.now(),
            });
        }
    }
    ReadBack {
        lost,
        unreadable,
        unique: unique.len(),
        history,
        deadline_hit,
    }
}

/// Starts contended workers `ws` (and, with `unique`, the one unique-key writer) against
/// `addrs`; with `host`, each thread first moves into that host's network namespace, so
/// its connections start there (`crate::netns::enter`).
pub fn spawn_workers(
    addrs: &[SocketAddr],
    sh: &Arc<Shared>,
    ws: std::ops::Range<usize>,
    seed: u64,
    host: Option<usize>,
    unique: bool,
) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut threads = Vec::new();
    let enter = move || -> bool {
        match host.map(crate::netns::enter) {
            Some(Err(e)) => {
                eprintln!("a client could not enter its namespace: {e:#}");
                false
            }
            _ => true,
        }
    };
    for w in ws {
        let (addrs, sh) = (addrs.to_vec(), Arc::clone(sh));
        threads.push(
            std::thread::Builder::new()
                .name(format!("kv-worker-{w}"))
                .spawn(move || {
                    if enter() {
                        contended_worker(w, addrs, sh, seed)
                    }
                })
                .context("starting a client thread")?,
        );
    }
    if unique {
        let (addrs, sh) = (addrs.to_vec(), Arc::clone(sh));
        threads.push(
            std::thread::Builder::new()
                .name("kv-unique".into())
                .spawn(move || {
                    if enter() {
                        unique_worker(addrs, sh)
                    }
                })
                .context("starting a client thread")?,
        );
    }
    Ok(threads)
}

//! The key-value client: a blocking, thread-safe client of the replicated key-value
//! service, with an asynchronous form for many requests in flight.
//!
//! [`KvClient::connect`] asks a seed for the cluster's shape ([`ClusterInfo`]); each request
//! then goes to the node that leads its key's group (`group_of_key`), on the shard that
//! hosts the group (`shard_of_group`, at the node's base port + shard). Leaders are learned
//! from `NotLeader` hints and forgotten when their connection fails; until one is known the
//! nodes are tried in turn.
//!
//! # Threads
//! The client uses std sockets and threads, never an async runtime, so it can be called
//! from any thread of any program: one timer thread per client (back-offs and deadlines),
//! and per connection (one per node and shard used) a writer thread that packs whatever is
//! queued into batch frames and a reader thread that completes requests by response id.
//! [`KvClient::submit`] returns a [`Pending`] at once, without a thread per request; the
//! blocking methods are `submit(..).wait()`. Dropping the last handle closes every
//! connection, completes what was pending with [`ClientError::Closed`] and joins the
//! threads.
//!
//! # Retries and outcomes
//! Every request has a deadline (`request_timeout_ms` after submission) and ends by it
//! (within about [`DEADLINE_CHECK_MS`]). Until then: `NotLeader` with a hint is followed at
//! once (a few times, then with back-off); `NotLeader` without one, `Unavailable`, `Busy`,
//! `ShuttingDown`, an unreachable node and a full connection are retried with exponential
//! back-off on the next node; `WrongShard` refreshes the cluster's shape and retries. A
//! write whose outcome became unknown (`Error{Unknown}`, or its connection dropped after
//! it was sent) is reported as [`ClientError::Unknown`], never retried silently — unless
//! [`ClientConfig::retry_unknown_writes`] allows it for puts and deletes (never for
//! compare-and-swap). Reads are retried after a dropped connection.
//!
//! # Bounds
//! At most [`ClientConfig::pending_max`] requests pending in the client: beyond it
//! `submit` does not block, it fails at once with [`ClientError::Busy`]. At most
//! [`ClientConfig::inflight_max`] requests queued or in flight per connection: a request
//! routed to a full connection waits with back-off (it counts against `pending_max`
//! meanwhile). Frames are at most `CLIENT_FRAME_BYTES_MAX` both ways; a frame from the
//! server that does not decode closes its connection (reads retried, writes `Unknown`).
//!
//! This module must never panic on what a server sends, never block a caller of `submit`
//! on the network, and never retry a write whose outcome is unknown unless allowed.

mod conn;
mod frames;
mod pending;
mod route;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringleader_wire::EncodeError;
use ringleader_wire::msg::client::{
    ClientOp, ClientRequest, ClientResult, ClusterInfo, Consistency, ErrorCode,
};

use self::conn::{Conn, ConnFailure, Refused, run_writer};
pub use self::frames::{FrameError, FrameReader, client_encoder, pack_frames};
use self::pending::Slot;
pub use self::pending::{Outcome, Pending};
use self::route::{Target, Topology};

/// How often, at most, the timer looks for requests past their deadline while some are
/// pending: deadlines are kept within about this much.
pub const DEADLINE_CHECK_MS: u64 = 5;

/// Hint-following redirects of one request made at once; later ones wait a back-off (two
/// nodes naming each other as leader must not spin).
const REDIRECTS_AT_ONCE_MAX: u32 = 3;

/// Longest server message kept in an error (the rest is cut).
const SERVER_MESSAGE_CHARS_MAX: usize = 200;

/// Unreachable addresses named in one error.
const UNREACHABLE_NAMED_MAX: usize = 8;

/// Settings of a [`KvClient`]; every bound is here, with its unit in its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Each request ends by this long after its submission, answered or not.
    pub request_timeout_ms: u64,
    /// Longest wait for a TCP connect to a node.
    pub connect_timeout_ms: u64,
    /// Requests queued or in flight on one connection, at most.
    pub inflight_max: usize,
    /// Requests pending in the whole client, at most (`submit` fails beyond).
    pub pending_max: usize,
    /// First back-off before a retry; it doubles with each retry of a request.
    pub retry_backoff_ms_min: u64,
    /// Longest back-off before a retry.
    pub retry_backoff_ms_max: u64,
    /// Retry a put or delete whose outcome became unknown (both are idempotent: applying
    /// one twice leaves the same state, though another client's write in between can be
    /// overwritten). Compare-and-swap is never retried after an unknown outcome.
    pub retry_unknown_writes: bool,
    /// Nodes kept from the server's cluster info and redirect hints, at most.
    pub cluster_nodes_max: usize,
    /// Groups whose leader is cached, at most.
    pub leader_cache_entries_max: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            inflight_max: 1_024,
            pending_max: 65_536,
            retry_backoff_ms_min: 5,
            retry_backoff_ms_max: 200,
            retry_unknown_writes: false,
            cluster_nodes_max: 1_024,
            leader_cache_entries_max: 65_536,
        }
    }
}

/// A successful outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A put or delete was applied.
    Done,
    /// The value read (`None`: absent).
    Value(Option<Vec<u8>>),
    /// A compare-and-swap was applied; whether it swapped.
    Cas {
        /// The expected value matched and the new one was set.
        swapped: bool,
    },
    /// The cluster's shape.
    Info(ClusterInfo),
}

/// Why no node could serve a request by its deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// Connecting failed everywhere the request was tried.
    #[error(
        "no node reachable at {}: is the server (`ringleader-tools server`) running there?",
        join_addrs(.addrs)
    )]
    NoNodeReachable {
        /// The addresses tried (shard addresses: base port + shard).
        addrs: Vec<SocketAddr>,
    },
    /// The group had no leader (an election was running, or the nodes asked did not know).
    #[error("no leader elected for group {group} yet: retry")]
    NoLeader {
        /// The key's group.
        group: u64,
    },
    /// The cluster (or this client's connection) stayed at its bounds.
    #[error(
        "the cluster stayed busy until the deadline (requests in flight at their bound): retry later, or send fewer at once"
    )]
    Busy,
    /// The nodes asked were shutting down.
    #[error("the nodes asked are shutting down: retry once they are back")]
    ShuttingDown,
    /// The request kept reaching shards that do not host its group.
    #[error("the cluster's shape keeps changing (wrong shard for group {group}): retry")]
    WrongShard {
        /// The key's group.
        group: u64,
    },
}

fn join_addrs(addrs: &[SocketAddr]) -> String {
    let s: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    s.join(", ")
}

/// Why a request failed. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No node could serve the request by its deadline.
    #[error("{0}")]
    Unavailable(Unavailable),
    /// The request was sent and no answer came by its deadline.
    #[error(
        "no answer to the {op} within {timeout_ms} ms{}",
        if *maybe_applied {
            ": it may or may not have been applied (read the key before retrying)"
        } else {
            ": retry, or allow more time (--timeout-ms)"
        }
    )]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The deadline that passed.
        timeout_ms: u64,
        /// A write that may have been applied.
        maybe_applied: bool,
    },
    /// A write may or may not have taken effect.
    #[error(
        "the {op}'s outcome is unknown ({why}): read the key to see whether it was applied before retrying"
    )]
    Unknown {
        /// The operation.
        op: &'static str,
        /// What happened.
        why: String,
    },
    /// The server refused the request for good (too large, malformed, an internal failure).
    #[error("the server refused the {op} ({code:?}): {message}")]
    Rejected {
        /// The operation.
        op: &'static str,
        /// The server's code.
        code: ErrorCode,
        /// The server's message (cut to a line).
        message: String,
    },
    /// The server sent something this client cannot use.
    #[error("protocol error: {0}: are the client and the server the same version?")]
    Protocol(String),
    /// A local failure (a thread could not start, a bad argument).
    #[error("local I/O: {0}")]
    Io(#[from] std::io::Error),
    /// `pending_max` requests are pending already.
    #[error(
        "{pending_max} requests are pending in this client already: wait for some to complete, or raise ClientConfig::pending_max"
    )]
    Busy {
        /// The bound.
        pending_max: usize,
    },
    /// The client was dropped while the request was pending.
    #[error("the client was closed")]
    Closed,
}

/// Counters of a client, read with [`KvClient::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests submitted (refused ones included).
    pub requests: u64,
    /// Attempts after a retryable failure (server error, unreachable node, lost
    /// connection, full connection).
    pub retries: u64,
    /// `NotLeader` answers.
    pub redirects: u64,
    /// Connections opened to an address this client had been connected to before.
    pub reconnects: u64,
    /// Connections opened.
    pub connections: u64,
    /// Requests that ended past their deadline.
    pub timeouts: u64,
    /// Writes reported with an unknown outcome.
    pub unknown_outcomes: u64,
    /// Frames from servers that did not decode (each closed its connection).
    pub bad_frames: u64,
    /// Responses whose request had ended already (deadline) or that no request had.
    pub late_responses: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    redirects: AtomicU64,
    reconnects: AtomicU64,
    connections: AtomicU64,
    timeouts: AtomicU64,
    unknown_outcomes: AtomicU64,
    bad_frames: AtomicU64,
    late_responses: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Why a request was last retried: what its deadline reports if no later attempt does
/// better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Unreachable,
    NoLeader,
    Busy,
    ShuttingDown,
    WrongShard,
    ConnectionLost,
}

/// Who waits for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// A caller, through a [`Pending`].
    User,
    /// The client itself: an `Info` that refreshes the cluster's shape. Never retried.
    Refresh,
}

/// One request and everything its retries need. Exactly one place holds it at a time (a
/// connection, the timer, or the thread handling it), and only the holder ends it.
pub(crate) struct Call {
    req: ClientRequest,
    slot: Arc<Slot>,
    deadline: Instant,
    purpose: Purpose,
    /// `Info` to this node only.
    pin: Option<SocketAddr>,
    /// Turns of the node rotation (moves on when a node failed the request).
    attempt: u32,
    /// Retries so far (the back-off's exponent).
    retries: u32,
    /// Hint-following redirects so far.
    redirects: u32,
    /// The key's group at the last attempt.
    group: u64,
    last_failure: Option<Failure>,
    unreachable: Vec<SocketAddr>,
    /// A write that may have been applied by an earlier attempt.
    maybe_applied: bool,
}

impl Call {
    fn op_name(&self) -> &'static str {
        self.req.op.name()
    }

    fn is_write(&self) -> bool {
        self.req.op.is_write()
    }

    /// What the request reports when its deadline passes outside a connection.
    fn expiry_error(&self, timeout_ms: u64) -> ClientError {
        let group = self.group;
        let unavailable = |u| ClientError::Unavailable(u);
        match self.last_failure {
            Some(Failure::Unreachable) if !self.maybe_applied => {
                unavailable(Unavailable::NoNodeReachable {
                    addrs: self.unreachable.clone(),
                })
            }
            Some(Failure::NoLeader) if !self.maybe_applied => {
                unavailable(Unavailable::NoLeader { group })
            }
            Some(Failure::Busy) if !self.maybe_applied => unavailable(Unavailable::Busy),
            Some(Failure::ShuttingDown) if !self.maybe_applied => {
                unavailable(Unavailable::ShuttingDown)
            }
            Some(Failure::WrongShard) if !self.maybe_applied => {
                unavailable(Unavailable::WrongShard { group })
            }
            _ => ClientError::Timeout {
                op: self.op_name(),
                timeout_ms,
                maybe_applied: self.maybe_applied,
            },
        }
    }

    fn note_unreachable(&mut self, addr: SocketAddr) {
        self.last_failure = Some(Failure::Unreachable);
        if !self.unreachable.contains(&addr) && self.unreachable.len() < UNREACHABLE_NAMED_MAX {
            self.unreachable.push(addr);
        }
    }
}

/// A request waiting for its back-off, ordered by when it is due.
struct Timed {
    at: Instant,
    seq: u64,
    call: Call,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<Timed>>,
    seq: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked while holding it; the data is still whole
    // (every critical section leaves it consistent at each step).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything the client's threads share.
pub(crate) struct Shared {
    config: ClientConfig,
    topology: RwLock<Topology>,
    /// Live connections by shard address.
    pool: Mutex<HashMap<SocketAddr, Arc<Conn>>>,
    timers: Mutex<Timers>,
    timers_wake: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
    connected_before: Mutex<HashSet<SocketAddr>>,
    counters: Counters,
    /// Requests admitted and not yet ended.
    pending: AtomicUsize,
    closing: AtomicBool,
    refreshing: AtomicBool,
}

impl Shared {
    fn topology(&self) -> std::sync::RwLockReadGuard<'_, Topology> {
        self.topology.read().unwrap_or_else(|e| e.into_inner())
    }

    fn topology_mut(&self) -> std::sync::RwLockWriteGuard<'_, Topology> {
        self.topology.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a thread of this client (joined on close).
    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), std::io::Error> {
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(f)?;
        let mut threads = lock(&self.threads);
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
        Ok(())
    }

    /// Admits a new request (not counted against `pending_max`: the caller checked).
    fn new_call(&self, op: ClientOp, purpose: Purpose, pin: Option<SocketAddr>) -> Call {
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        Call {
            req: ClientRequest { id: 0, op },
            slot: Arc::new(Slot::default()),
            deadline: Instant::now() + timeout,
            purpose,
            pin,
            attempt: 0,
            retries: 0,
            redirects: 0,
            group: 0,
            last_failure: None,
            unreachable: Vec::new(),
            maybe_applied: false,
        }
    }

    /// Counts a request as pending; wakes the timer if it was idle.
    fn admit(&self) {
        if self.pending.fetch_add(1, Ordering::AcqRel) == 0 {
            let _t = lock(&self.timers);
            self.timers_wake.notify_all();
        }
    }

    /// Ends `call` with `outcome`.
    fn finish(&self, call: Call, outcome: Outcome) {
        if call.purpose == Purpose::Refresh {
            self.refreshing.store(false, Ordering::Release);
        }
        match &outcome {
            Err(ClientError::Timeout { .. }) => bump(&self.counters.timeouts),
            Err(ClientError::Unknown { .. }) => bump(&self.counters.unknown_outcomes),
            _ => {}
        }
        call.slot.complete(outcome, || {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Sends `call` on its next attempt, or ends it if its time is up.
    fn dispatch(self: &Arc<Self>, mut call: Call) {
        if self.closing.load(Ordering::Acquire) {
            self.finish(call, Err(ClientError::Closed));
            return;
        }
        if Instant::now() >= call.deadline {
            let err = call.expiry_error(self.config.request_timeout_ms);
            self.finish(call, Err(err));
            return;
        }
        let target = self.topology().target(&call.req.op, call.pin, call.attempt);
        let Some(Target { conn, base, group }) = target else {
            let err = ClientError::Protocol(
                "the cluster's shard ports do not fit (base port + shard > 65535)".to_string(),
            );
            self.finish(call, Err(err));
            return;
        };
        call.group = group;
        let conn = match self.conn_for(conn, base) {
            Ok(c) => c,
            Err(e) => {
                self.finish(call, Err(e));
                return;
            }
        };
        let Err(refused) = conn.enqueue(call, self.config.inflight_max) else {
            return;
        };
        match *refused {
            (call, Refused::Dead) => self.schedule(call, Duration::ZERO),
            (mut call, Refused::Full) => {
                call.last_failure = Some(Failure::Busy);
                self.retry(call);
            }
        }
    }

    /// The live connection to `addr`, opened on demand.
    fn conn_for(
        self: &Arc<Self>,
        addr: SocketAddr,
        base: SocketAddr,
    ) -> Result<Arc<Conn>, ClientError> {
        let mut pool = lock(&self.pool);
        if self.closing.load(Ordering::Acquire) {
            return Err(ClientError::Closed);
        }
        if let Some(c) = pool.get(&addr) {
            if !c.is_dead() {
                return Ok(c.clone());
            }
        }
        let conn = Arc::new(Conn::new(addr, base));
        let (s, c) = (self.clone(), conn.clone());
        // Under the pool lock, so that a close that drains the pool joins this thread.
        self.spawn("kv-client-write", move || run_writer(s, c))?;
        pool.insert(addr, conn.clone());
        Ok(conn)
    }

    /// A connection to `addr` is up.
    fn note_connected(&self, addr: SocketAddr) {
        bump(&self.counters.connections);
        if !lock(&self.connected_before).insert(addr) {
            bump(&self.counters.reconnects);
        }
    }

    /// Retries `call` after its back-off (or ends it: internal requests are not retried).
    fn retry(self: &Arc<Self>, mut call: Call) {
        if call.purpose == Purpose::Refresh {
            let err = call.expiry_error(self.config.request_timeout_ms);
            self.finish(call, Err(err));
            return;
        }
        bump(&self.counters.retries);
        let c = &self.config;
        let shift = call.retries.min(20);
        let full = c
            .retry_backoff_ms_min
            .max(1)
            .saturating_mul(1 << shift)
            .min(c.retry_backoff_ms_max.max(1));
        call.retries += 1;
        // Jitter in [full/2, full], so that requests failed together do not retry together.
        let spread = (Arc::as_ptr(&call.slot) as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ u64::from(call.retries);
        let ms = full / 2 + spread % (full / 2 + 1);
        self.schedule(call, Duration::from_millis(ms));
    }

    /// Dispatches `call` after `delay` (at its deadline at the latest).
    fn schedule(self: &Arc<Self>, call: Call, delay: Duration) {
        if delay.is_zero() {
            self.dispatch(call);
            return;
        }
        let at = (Instant::now() + delay).min(call.deadline);
        let mut t = lock(&self.timers);
        if self.closing.load(Ordering::Acquire) {
            drop(t);
            self.finish(call, Err(ClientError::Closed));
            return;
        }
        t.seq += 1;
        let seq = t.seq;
        let earliest = t.heap.peek().is_none_or(|top| at < top.0.at);
        t.heap.push(Reverse(Timed { at, seq, call }));
        if earliest {
            self.timers_wake.notify_all();
        }
    }

    /// A connection died: its requests go elsewhere, or end if their outcome is unknown.
    fn conn_failed(self: &Arc<Self>, conn: &Arc<Conn>, why: ConnFailure) {
        let entries = conn.kill();
        {
            let mut pool = lock(&self.pool);
            if pool.get(&conn.addr).is_some_and(|c| Arc::ptr_eq(c, conn)) {
                pool.remove(&conn.addr);
            }
        }
        self.topology_mut().forget_node(conn.base);
        let why_text = match &why {
            ConnFailure::Connect(e) => format!("connecting to {} failed: {e}", conn.addr),
            ConnFailure::Lost(e) => format!("the connection to {} was {e}", conn.addr),
            ConnFailure::Protocol(e) => format!("{e} (from {})", conn.addr),
        };
        for e in entries {
            let mut call = e.call;
            call.attempt = call.attempt.wrapping_add(1);
            if let ConnFailure::Connect(_) = why {
                call.note_unreachable(conn.addr);
                self.retry(call);
                continue;
            }
            if !e.sent || !call.is_write() {
                call.last_failure = Some(Failure::ConnectionLost);
                self.retry(call);
                continue;
            }
            call.maybe_applied = true;
            if self.may_retry_unknown(&call) {
                self.retry(call);
            } else {
                let op = call.op_name();
                self.finish(
                    call,
                    Err(ClientError::Unknown {
                        op,
                        why: why_text.clone(),
                    }),
                );
            }
        }
    }

    fn may_retry_unknown(&self, call: &Call) -> bool {
        self.config.retry_unknown_writes
            && matches!(call.req.op, ClientOp::Put { .. } | ClientOp::Delete { .. })
    }

    /// A request too large for any frame.
    fn refuse_unsendable(&self, call: Call, err: EncodeError) {
        let op = call.op_name();
        let outcome = match err {
            EncodeError::TooLarge { .. } => ClientError::Rejected {
                op,
                code: ErrorCode::TooLarge,
                message: format!("{err}: send smaller keys and values"),
            },
            other => ClientError::Protocol(format!("could not encode the {op}: {other}")),
        };
        self.finish(call, Err(outcome));
    }

    fn count_bad_frame(&self) {
        bump(&self.counters.bad_frames);
    }

    fn count_late_response(&self) {
        bump(&self.counters.late_responses);
    }

    /// The server answered `call` on `conn`.
    fn on_response(self: &Arc<Self>, conn: &Arc<Conn>, mut call: Call, result: ClientResult) {
        let op = call.op_name();
        let reply = match (&call.req.op, result) {
            (ClientOp::Put { .. } | ClientOp::Delete { .. }, ClientResult::Done) => Reply::Done,
            (ClientOp::Get { .. }, ClientResult::Value(v)) => Reply::Value(v),
            (ClientOp::Cas { .. }, ClientResult::Cas { swapped }) => Reply::Cas { swapped },
            (ClientOp::Info, ClientResult::Info(info)) => {
                // The guard must be gone before `finish` runs a waker.
                let applied = self.topology_mut().apply(&info);
                if let Err(e) = applied {
                    self.finish(call, Err(ClientError::Protocol(e)));
                    return;
                }
                Reply::Info(info)
            }
            (
                _,
                ClientResult::NotLeader {
                    leader,
                    leader_addr,
                    ..
                },
            ) => {
                bump(&self.counters.redirects);
                let hint = self
                    .topology_mut()
                    .learn_leader(call.group, leader, &leader_addr);
                call.last_failure = Some(Failure::NoLeader);
                match hint {
                    Some(base) if base != conn.base && call.redirects < REDIRECTS_AT_ONCE_MAX => {
                        call.redirects += 1;
                        self.dispatch(call);
                    }
                    Some(base) if base != conn.base => {
                        call.redirects += 1;
                        self.retry(call);
                    }
                    _ => {
                        // No hint, or one naming the node that just refused: ask another.
                        self.topology_mut().forget_leader(call.group);
                        call.attempt = call.attempt.wrapping_add(1);
                        self.retry(call);
                    }
                }
                return;
            }
            (_, ClientResult::Error { code, message }) => {
                self.on_error(conn, call, code, message);
                return;
            }
            (_, other) => {
                let err = ClientError::Protocol(format!(
                    "the server answered a {op} with {}",
                    result_name(&other)
                ));
                self.finish(call, Err(err));
                return;
            }
        };
        self.finish(call, Ok(reply));
    }

    fn on_error(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        mut call: Call,
        code: ErrorCode,
        message: String,
    ) {
        let op = call.op_name();
        let retry_as = |call: &mut Call, f: Failure, rotate: bool| {
            call.last_failure = Some(f);
            if rotate {
                call.attempt = call.attempt.wrapping_add(1);
            }
        };
        match code {
            ErrorCode::Unavailable => {
                self.topology_mut().forget_leader(call.group);
                retry_as(&mut call, Failure::NoLeader, true);
            }
            ErrorCode::Busy => retry_as(&mut call, Failure::Busy, false),
            ErrorCode::ShuttingDown => {
                self.topology_mut().forget_node(conn.base);
                retry_as(&mut call, Failure::ShuttingDown, true);
            }
            ErrorCode::WrongShard => {
                self.refresh(conn.base);
                retry_as(&mut call, Failure::WrongShard, false);
            }
            ErrorCode::Unknown if call.is_write() => {
                call.maybe_applied = true;
                if !self.may_retry_unknown(&call) {
                    let why = format!("the server said: {}", one_line(&message));
                    self.finish(call, Err(ClientError::Unknown { op, why }));
                    return;
                }
                retry_as(&mut call, Failure::ConnectionLost, false);
            }
            ErrorCode::Unknown => retry_as(&mut call, Failure::ConnectionLost, false),
            ErrorCode::TooLarge | ErrorCode::Malformed | ErrorCode::Internal => {
                let message = one_line(&message);
                self.finish(call, Err(ClientError::Rejected { op, code, message }));
                return;
            }
        }
        self.retry(call);
    }

    /// Asks the node at `base` for the cluster's shape (one refresh at a time).
    fn refresh(self: &Arc<Self>, base: SocketAddr) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.admit();
        let call = self.new_call(ClientOp::Info, Purpose::Refresh, Some(base));
        self.dispatch(call);
    }

    /// Ends the requests of every connection whose deadline passed.
    fn expire_inflight(&self, now: Instant) {
        let conns: Vec<Arc<Conn>> = lock(&self.pool).values().cloned().collect();
        for conn in conns {
            for e in conn.take_expired(now) {
                let mut call = e.call;
                let err = if e.sent {
                    call.maybe_applied |= call.is_write();
                    ClientError::Timeout {
                        op: call.op_name(),
                        timeout_ms: self.config.request_timeout_ms,
                        maybe_applied: call.maybe_applied,
                    }
                } else {
                    // Still queued: the connection never came up, or never drained. An
                    // earlier attempt's answer (no leader, busy, ...) says more than a
                    // connection that was still coming up when the deadline passed.
                    if matches!(call.last_failure, None | Some(Failure::Unreachable)) {
                        call.note_unreachable(conn.addr);
                    }
                    call.expiry_error(self.config.request_timeout_ms)
                };
                self.finish(call, Err(err));
            }
        }
    }

    /// The timer thread: dispatches retries when due and ends requests past their
    /// deadline, until the client closes.
    fn run_timer(self: Arc<Self>) {
        let check = Duration::from_millis(DEADLINE_CHECK_MS);
        loop {
            let mut due = Vec::new();
            {
                let mut t = lock(&self.timers);
                if self.closing.load(Ordering::Acquire) {
                    return;
                }
                let now = Instant::now();
                while t.heap.peek().is_some_and(|top| top.0.at <= now) {
                    if let Some(Reverse(timed)) = t.heap.pop() {
                        due.push(timed.call);
                    }
                }
                if due.is_empty() {
                    let next = t
                        .heap
                        .peek()
                        .map(|top| top.0.at.saturating_duration_since(now));
                    let busy = self.pending.load(Ordering::Acquire) > 0;
                    let wait = match (next, busy) {
                        (Some(n), true) => Some(n.min(check)),
                        (Some(n), false) => Some(n),
                        (None, true) => Some(check),
                        (None, false) => None,
                    };
                    let _t = match wait {
                        Some(d) => {
                            self.timers_wake
                                .wait_timeout(t, d)
                                .unwrap_or_else(|e| e.into_inner())
                                .0
                        }
                        None => self.timers_wake.wait(t).unwrap_or_else(|e| e.into_inner()),
                    };
                }
            }
            for call in due {
                self.dispatch(call);
            }
            self.expire_inflight(Instant::now());
        }
    }

    /// Closes every connection, ends every pending request with [`ClientError::Closed`]
    /// and joins the client's threads.
    fn close(self: &Arc<Self>) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        {
            let _t = lock(&self.timers);
            self.timers_wake.notify_all();
        }
        let conns: Vec<Arc<Conn>> = lock(&self.pool).drain().map(|(_, c)| c).collect();
        for conn in conns {
            for e in conn.kill() {
                self.finish(e.call, Err(ClientError::Closed));
            }
        }
        let waiting: Vec<Call> = lock(&self.timers)
            .heap
            .drain()
            .map(|Reverse(t)| t.call)
            .collect();
        for call in waiting {
            self.finish(call, Err(ClientError::Closed));
        }
        let me = std::thread::current().id();
        // Threads may still start connections that die at once; join until none is left.
        loop {
            let threads = std::mem::take(&mut *lock(&self.threads));
            if threads.is_empty() {
                break;
            }
            for t in threads {
                if t.thread().id() != me {
                    let _ = t.join();
                }
            }
        }
    }
}

fn result_name(r: &ClientResult) -> &'static str {
    match r {
        ClientResult::Done => "Done",
        ClientResult::Value(_) => "Value",
        ClientResult::Cas { .. } => "Cas",
        ClientResult::NotLeader { .. } => "NotLeader",
        ClientResult::Info(_) => "Info",
        ClientResult::Error { .. } => "Error",
    }
}

/// A server's message as one short line.
fn one_line(message: &str) -> String {
    let mut out: String = message
        .chars()
        .take(SERVER_MESSAGE_CHARS_MAX)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if message.chars().count() > SERVER_MESSAGE_CHARS_MAX {
        out.push_str("...");
    }
    out
}

/// The handle users hold; the last one to go closes the client.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// A client of the replicated key-value service. Cheap to clone (clones share the
/// connections); `Send + Sync`. See the module documentation for routing, retries and
/// bounds.
#[derive(Clone)]
pub struct KvClient {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for KvClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.handle.shared.topology();
        f.debug_struct("KvClient")
            .field("groups", &t.groups())
            .field("shards", &t.shards())
            .field("nodes", &t.addrs().collect::<Vec<_>>())
            .finish()
    }
}

impl KvClient {
    /// Connects: asks the seeds in turn for the cluster's shape, within
    /// `request_timeout_ms`. Fails with [`Unavailable::NoNodeReachable`] when no seed
    /// answers.
    pub fn connect(seeds: &[SocketAddr], config: ClientConfig) -> Result<KvClient, ClientError> {
        let invalid = |what: &str| {
            ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                what.to_string(),
            ))
        };
        if seeds.is_empty() {
            return Err(invalid("no seed address: give at least one node's address"));
        }
        if config.inflight_max == 0 || config.pending_max == 0 || config.cluster_nodes_max == 0 {
            return Err(invalid(
                "inflight_max, pending_max and cluster_nodes_max must be at least 1",
            ));
        }
        let topology = Topology::from_seeds(
            seeds,
            config.cluster_nodes_max,
            config.leader_cache_entries_max,
        );
        let shared = Arc::new(Shared {
            config,
            topology: RwLock::new(topology),
            pool: Mutex::new(HashMap::new()),
            timers: Mutex::new(Timers::default()),
            timers_wake: Condvar::new(),
            threads: Mutex::new(Vec::new()),
            connected_before: Mutex::new(HashSet::new()),
            counters: Counters::default(),
            pending: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
        });
        let timer = shared.clone();
        shared.spawn("kv-client-timer", move || timer.run_timer())?;
        let client = KvClient {
            handle: Arc::new(Handle { shared }),
        };
        client.info()?;
        Ok(client)
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Sends `op` and returns at once; the [`Pending`] completes with the outcome. Never
    /// blocks: with `pending_max` requests pending already it completes at once with
    /// [`ClientError::Busy`].
    pub fn submit(&self, op: ClientOp) -> Pending {
        let s = self.shared();
        bump(&s.counters.requests);
        if s.closing.load(Ordering::Acquire) {
            return Pending::failed(ClientError::Closed);
        }
        let prev = s.pending.fetch_add(1, Ordering::AcqRel);
        if prev >= s.config.pending_max {
            s.pending.fetch_sub(1, Ordering::AcqRel);
            return Pending::failed(ClientError::Busy {
                pending_max: s.config.pending_max,
            });
        }
        if prev == 0 {
            let _t = lock(&s.timers);
            s.timers_wake.notify_all();
        }
        let call = s.new_call(op, Purpose::User, None);
        let pending = Pending::new(call.slot.clone());
        s.dispatch(call);
        pending
    }

    /// Sets `key` to `value`.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), ClientError> {
        let op = ClientOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        expect(self.submit(op).wait(), "put", |r| match r {
            Reply::Done => Some(()),
            _ => None,
        })
    }

    /// Reads `key` (`None`: absent).
    pub fn get(
        &self,
        key: &[u8],
        consistency: Consistency,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        let op = ClientOp::Get {
            key: key.to_vec(),
            consistency,
        };
        expect(self.submit(op).wait(), "get", |r| match r {
            Reply::Value(v) => Some(v),
            _ => None,
        })
    }

    /// Removes `key`.
    pub fn delete(&self, key: &[u8]) -> Result<(), ClientError> {
        let op = ClientOp::Delete { key: key.to_vec() };
        expect(self.submit(op).wait(), "delete", |r| match r {
            Reply::Done => Some(()),
            _ => None,
        })
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: absent); whether it did.
    pub fn cas(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, ClientError> {
        let op = ClientOp::Cas {
            key: key.to_vec(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.to_vec(),
        };
        expect(self.submit(op).wait(), "cas", |r| match r {
            Reply::Cas { swapped } => Some(swapped),
            _ => None,
        })
    }

    /// The cluster's shape, from any node (the client routes by the answer from then on).
    pub fn info(&self) -> Result<ClusterInfo, ClientError> {
        expect(self.submit(ClientOp::Info).wait(), "info", |r| match r {
            Reply::Info(i) => Some(i),
            _ => None,
        })
    }

    /// The client's counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.shared().counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            requests: r(&c.requests),
            retries: r(&c.retries),
            redirects: r(&c.redirects),
            reconnects: r(&c.reconnects),
            connections: r(&c.connections),
            timeouts: r(&c.timeouts),
            unknown_outcomes: r(&c.unknown_outcomes),
            bad_frames: r(&c.bad_frames),
            late_responses: r(&c.late_responses),
        }
    }

    /// Requests pending (submitted, not yet ended).
    pub fn pending(&self) -> usize {
        self.shared().pending.load(Ordering::Acquire)
    }

    /// Groups whose leader the client knows now.
    pub fn leaders_known(&self) -> usize {
        self.shared().topology().leaders_known()
    }

    /// Connections open now.
    pub fn connections_open(&self) -> usize {
        lock(&self.shared().pool).len()
    }
}

/// The typed value of a reply, or a protocol error if the reply does not fit the request.
fn expect<T>(
    outcome: Outcome,
    op: &str,
    pick: impl FnOnce(Reply) -> Option<T>,
) -> Result<T, ClientError> {
    let reply = outcome?;
    let name = format!("{reply:?}");
    pick(reply).ok_or_else(|| ClientError::Protocol(format!("a {op} was answered with {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn the_client_is_shareable_and_pending_is_sendable() {
        assert_send_sync::<KvClient>();
        fn assert_send<T: Send>() {}
        assert_send::<Pending>();
    }

    #[test]
    fn server_messages_become_one_short_line() {
        assert_eq!(one_line("a\nb"), "a b");
        let long = "x".repeat(SERVER_MESSAGE_CHARS_MAX + 10);
        assert_eq!(one_line(&long).len(), SERVER_MESSAGE_CHARS_MAX + 3);
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = ClientError::Unavailable(Unavailable::NoNodeReachable {
            addrs: vec!["127.0.0.1:7000".parse().unwrap()],
        });
        assert_eq!(
            e.to_string(),
            "no node reachable at 127.0.0.1:7000: is the server (`ringleader-tools server`) running there?"
        );
        let e = ClientError::Unavailable(Unavailable::NoLeader { group: 3 });
        assert_eq!(e.to_string(), "no leader elected for group 3 yet: retry");
    }
}

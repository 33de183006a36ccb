//! The dispatcher: routes each request to a connection, follows redirects, retries with
//! back-off on the next node, and ends every request exactly once with its outcome.
//!
//! It must never retry a write whose outcome is unknown unless
//! [`ClientConfig::retry_unknown_writes`] allows it (and never a compare-and-swap).

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringleader_wire::EncodeError;
use ringleader_wire::msg::client::{ClientOp, ClientRequest, ClientResult, ErrorCode};

use super::call::{Call, Failure, Purpose};
use super::conn::{Conn, ConnFailure, Refused, run_writer};
use super::pending::Slot;
use super::route::{Target, Topology};
use super::timer::Timers;
use super::{ClientConfig, ClientError, Outcome, Reply};

/// Hint-following redirects of one request made at once; later ones wait a back-off (two
/// nodes naming each other as leader must not spin).
const REDIRECTS_AT_ONCE_MAX: u32 = 3;

/// Longest server message kept in an error (the rest is cut).
const SERVER_MESSAGE_CHARS_MAX: usize = 200;

#[derive(Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) redirects: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) connections: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) unknown_outcomes: AtomicU64,
    pub(super) bad_frames: AtomicU64,
    pub(super) late_responses: AtomicU64,
}

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked while holding it; the data is still whole
    // (every critical section leaves it consistent at each step).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything the client's threads share.
pub(crate) struct Shared {
    pub(super) config: ClientConfig,
    pub(super) topology: RwLock<Topology>,
    /// Live connections by shard address.
    pub(super) pool: Mutex<HashMap<SocketAddr, Arc<Conn>>>,
    pub(super) timers: Mutex<Timers>,
    pub(super) timers_wake: Condvar,
    pub(super) threads: Mutex<Vec<JoinHandle<()>>>,
    pub(super) connected_before: Mutex<HashSet<SocketAddr>>,
    pub(super) counters: Counters,
    /// Requests admitted and not yet ended.
    pub(super) pending: AtomicUsize,
    pub(super) closing: AtomicBool,
    pub(super) refreshing: AtomicBool,
}

impl Shared {
    pub(super) fn topology(&self) -> std::sync::RwLockReadGuard<'_, Topology> {
        self.topology.read().unwrap_or_else(|e| e.into_inner())
    }

    fn topology_mut(&self) -> std::sync::RwLockWriteGuard<'_, Topology> {
        self.topology.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a thread of this client (joined on close).
    pub(super) fn spawn(
        &self,
        name: &str,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), std::io::Error> {
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(f)?;
        let mut threads = lock(&self.threads);
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
        Ok(())
    }

    /// Admits a new request (not counted against `pending_max`: the caller checked).
    pub(super) fn new_call(&self, op: ClientOp, purpose: Purpose, pin: Option<SocketAddr>) -> Call {
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
    pub(super) fn finish(&self, call: Call, outcome: Outcome) {
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
    pub(super) fn dispatch(self: &Arc<Self>, mut call: Call) {
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
    pub(super) fn note_connected(&self, addr: SocketAddr) {
        bump(&self.counters.connections);
        if !lock(&self.connected_before).insert(addr) {
            bump(&self.counters.reconnects);
        }
    }

    /// Retries `call` after its back-off (or ends it: internal requests are not retried).
    pub(super) fn retry(self: &Arc<Self>, mut call: Call) {
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

    /// A connection died: its requests go elsewhere, or end if their outcome is unknown.
    pub(super) fn conn_failed(self: &Arc<Self>, conn: &Arc<Conn>, why: ConnFailure) {
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
    pub(super) fn refuse_unsendable(&self, call: Call, err: EncodeError) {
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

    pub(super) fn count_bad_frame(&self) {
        bump(&self.counters.bad_frames);
    }

    pub(super) fn count_late_response(&self) {
        bump(&self.counters.late_responses);
    }

    /// The server answered `call` on `conn`.
    pub(super) fn on_response(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        mut call: Call,
        result: ClientResult,
    ) {
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

    /// Closes every connection, ends every pending request with [`ClientError::Closed`]
    /// and joins the client's threads.
    pub(super) fn close(self: &Arc<Self>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_become_one_short_line() {
        assert_eq!(one_line("a\nb"), "a b");
        let long = "x".repeat(SERVER_MESSAGE_CHARS_MAX + 10);
        assert_eq!(one_line(&long).len(), SERVER_MESSAGE_CHARS_MAX + 3);
    }
}

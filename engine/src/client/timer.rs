//! The timer thread: dispatches retries when their back-off is over and ends requests
//! past their deadline.
//!
//! It never touches a socket itself: a retry that is due goes back through the dispatcher,
//! whose connection threads do the network work.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::call::{Call, Failure};
use super::conn::Conn;
use super::dispatch::{Shared, lock};
use super::{ClientError, DEADLINE_CHECK_MS};

/// A request waiting for its back-off, ordered by when it is due.
pub(super) struct Timed {
    at: Instant,
    seq: u64,
    pub(super) call: Call,
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
pub(super) struct Timers {
    pub(super) heap: BinaryHeap<Reverse<Timed>>,
    seq: u64,
}

impl Shared {
    /// Dispatches `call` after `delay` (at its deadline at the latest).
    pub(super) fn schedule(self: &Arc<Self>, call: Call, delay: Duration) {
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
    pub(super) fn run_timer(self: Arc<Self>) {
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
}

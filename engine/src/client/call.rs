//! One request as the client carries it between attempts: where it stands in its
//! retries, why it last failed, and what its deadline reports.
//!
//! A [`Call`] is never copied: exactly one place holds it, and only that place ends it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ringleader_wire::msg::client::ClientRequest;

use super::pending::Slot;
use super::{ClientError, Unavailable};

/// Unreachable addresses named in one error.
const UNREACHABLE_NAMED_MAX: usize = 8;

/// Why a request was last retried: what its deadline reports if no later attempt does
/// better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    Unreachable,
    NoLeader,
    Busy,
    ShuttingDown,
    WrongShard,
    ConnectionLost,
}

/// Who waits for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A caller, through a [`Pending`](super::Pending).
    User,
    /// The client itself: an `Info` that refreshes the cluster's shape. Never retried.
    Refresh,
}

/// One request and everything its retries need. Exactly one place holds it at a time (a
/// connection, the timer, or the thread handling it), and only the holder ends it.
pub(crate) struct Call {
    pub(super) req: ClientRequest,
    pub(super) slot: Arc<Slot>,
    pub(super) deadline: Instant,
    pub(super) purpose: Purpose,
    /// `Info` to this node only.
    pub(super) pin: Option<SocketAddr>,
    /// Turns of the node rotation (moves on when a node failed the request).
    pub(super) attempt: u32,
    /// Retries so far (the back-off's exponent).
    pub(super) retries: u32,
    /// Hint-following redirects so far.
    pub(super) redirects: u32,
    /// The key's group at the last attempt.
    pub(super) group: u64,
    pub(super) last_failure: Option<Failure>,
    pub(super) unreachable: Vec<SocketAddr>,
    /// A write that may have been applied by an earlier attempt.
    pub(super) maybe_applied: bool,
}

impl Call {
    pub(super) fn op_name(&self) -> &'static str {
        self.req.op.name()
    }

    pub(super) fn is_write(&self) -> bool {
        self.req.op.is_write()
    }

    /// What the request reports when its deadline passes outside a connection.
    pub(super) fn expiry_error(&self, timeout_ms: u64) -> ClientError {
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

    pub(super) fn note_unreachable(&mut self, addr: SocketAddr) {
        self.last_failure = Some(Failure::Unreachable);
        if !self.unreachable.contains(&addr) && self.unreachable.len() < UNREACHABLE_NAMED_MAX {
            self.unreachable.push(addr);
        }
    }
}

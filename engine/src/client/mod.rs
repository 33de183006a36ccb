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

mod call;
mod conn;
mod dispatch;
mod error;
mod frames;
mod pending;
mod route;
mod timer;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use ringleader_wire::msg::client::{ClientOp, ClusterInfo, Consistency};

use self::call::Purpose;
use self::dispatch::{Counters, Shared, bump, lock};
pub use self::error::{ClientError, Unavailable};
pub use self::frames::{FrameError, FrameReader, client_encoder, pack_frames};
pub use self::pending::{Outcome, Pending};
use self::route::Topology;
use self::timer::Timers;

/// How often, at most, the timer looks for requests past their deadline while some are
/// pending: deadlines are kept within about this much.
pub const DEADLINE_CHECK_MS: u64 = 5;

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
}

//! Inbound connections of a shard: a peer's link (first frame a [`PeerHello`]) or a
//! key-value client (first frame a request). Reading happens here; what was read goes to
//! the shard's loop through bounded queues ([`Inbox`]), and a client's responses come back
//! through its [`ClientConn`] and are written by the connection's writer task.
//!
//! Bounds: requests in flight per client connection, client connections per shard,
//! unauthenticated connections (clients, and connections that have not said who they are)
//! per source IP, messages queued from peers per shard, frame sizes. What exceeds a bound is
//! refused (a client gets `Busy`) or dropped and counted; a frame that does not decode
//! closes the connection (the framing cannot be trusted past it). Nothing here panics on
//! input.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;

use futures_lite::io::BufReader;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::msg::client::{
    CLIENT_FRAME_BYTES_MAX, ClientRequest, ClientResponse, ClientResult, ErrorCode,
};
use ringleader_wire::msg::raft::PeerHello;
use ringleader_wire::msg::{Message, MessageRef};
use ringleader_wire::{Encoder, WireMessage};

use super::peers::FrameReader;
use crate::runtime::LocalNotify;
use crate::transport::PerIpCount;

/// Counters of a shard's inbound side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxStats {
    /// Peer messages queued for the loop.
    pub peer_messages: u64,
    /// Peer messages dropped: the queue was full.
    pub peer_dropped_full: u64,
    /// Peer links refused (a hello that disagrees with this node's configuration).
    pub peers_refused: u64,
    /// Connections closed for a frame that did not decode, or a message of the wrong kind.
    pub bad_frames: u64,
    /// Client connections accepted.
    pub clients_accepted: u64,
    /// Client connections closed at once: too many.
    pub clients_refused: u64,
    /// Connections closed as soon as they were accepted: their source IP already held
    /// `client_connections_per_ip_max` connections that are not authenticated peer links
    /// (clients, and connections that have not sent their first frame or hello).
    pub clients_refused_per_ip: u64,
    /// Client requests queued for the loop.
    pub requests: u64,
    /// Client requests refused as busy: too many in flight on their connection.
    pub requests_busy: u64,
    /// Connections closed because their frame would take the shard past
    /// `frame_bytes_held_max`.
    pub frames_over_budget: u64,
    /// Connections closed because their first frame (a peer's hello or a client's first
    /// request header) did not arrive within [`HELLO_TIMEOUT`].
    pub hello_timeouts: u64,
}

/// The largest first frame of a peer connection (its hello): nothing bigger is read from a
/// connection that has not said who it is.
pub const HELLO_FRAME_BYTES_MAX: usize = 4096;

/// How long a new connection may take to send its first header (and a peer its hello).
pub const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A client connection as the loop sees it: where its responses go.
pub struct ClientConn {
    out: RefCell<VecDeque<ClientResponse>>,
    notify: LocalNotify,
    inflight: Cell<usize>,
    closed: Cell<bool>,
}

impl ClientConn {
    fn new() -> ClientConn {
        ClientConn {
            out: RefCell::new(VecDeque::new()),
            notify: LocalNotify::new(),
            inflight: Cell::new(0),
            closed: Cell::new(false),
        }
    }

    /// Queues the response to a request taken from the inbox.
    pub fn respond(&self, r: ClientResponse) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
        if self.closed.get() {
            return;
        }
        let mut q = self.out.borrow_mut();
        q.push_back(r);
        if q.len() == 1 {
            self.notify.notify();
        }
    }
}

/// What the sockets hand the shard's loop.
pub struct Inbox {
    /// Raft messages from peers.
    pub messages: RefCell<VecDeque<Message>>,
    /// Client requests, with their connection id.
    pub requests: RefCell<VecDeque<(u64, ClientRequest)>>,
    /// Live client connections by id.
    pub conns: RefCell<HashMap<u64, Rc<ClientConn>>>,
    next_conn: Cell<u64>,
    /// Wakes the loop.
    pub wake: LocalNotify,
    stats: Cell<InboxStats>,
    /// Set when the shard stops: connection tasks end.
    pub stopping: Cell<bool>,
    /// Open connections not (yet) authenticated as peer links, by source IP: one entry per
    /// address with such a connection, removed when its last one closes or authenticates.
    by_ip: RefCell<PerIpCount>,
}

/// What a shard checks a peer's hello against, and its bounds.
#[derive(Debug, Clone)]
pub struct Accept {
    /// This node.
    pub node: u64,
    /// This shard.
    pub shard: u32,
    /// Shards per node.
    pub shards: u32,
    /// Groups per node.
    pub groups: u64,
    /// Node ids allowed to connect as peers.
    pub peers: Vec<u64>,
    /// Cluster label of peer frames.
    pub label: Vec<u8>,
    /// Largest peer frame.
    pub peer_frame_bytes_max: usize,
    /// Peer messages queued at most.
    pub inbound_queue_max: usize,
    /// Requests in flight per client connection.
    pub client_inflight_max: usize,
    /// Client connections at most.
    pub client_connections_max: usize,
    /// Unauthenticated connections from one source IP at most (0: no bound).
    pub client_connections_per_ip_max: usize,
    /// What the frames being read on the shard's connections may hold at once.
    pub budget: crate::transport::ByteBudget,
}

impl Inbox {
    /// An empty inbox that wakes `wake`.
    pub fn new(wake: LocalNotify) -> Inbox {
        Inbox {
            messages: RefCell::new(VecDeque::new()),
            requests: RefCell::new(VecDeque::new()),
            conns: RefCell::new(HashMap::new()),
            next_conn: Cell::new(1),
            wake,
            stats: Cell::new(InboxStats::default()),
            stopping: Cell::new(false),
            by_ip: RefCell::new(PerIpCount::default()),
        }
    }

    /// Counters.
    pub fn stats(&self) -> InboxStats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut InboxStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }
}

/// One unauthenticated connection counted against its source IP until dropped.
struct IpSlot {
    inbox: Rc<Inbox>,
    ip: IpAddr,
}

impl IpSlot {
    /// Counts a connection from `ip`, unless that address holds `max` already (0: no
    /// bound).
    fn take(inbox: &Rc<Inbox>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        inbox.by_ip.borrow_mut().take(ip, max).then(|| IpSlot {
            inbox: Rc::clone(inbox),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.inbox.by_ip.borrow_mut().release(self.ip);
    }
}

/// `fut`'s output, or `None` if [`HELLO_TIMEOUT`] passes first.
async fn within_hello_timeout<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(fut.await) }, async {
        glommio::timer::sleep(HELLO_TIMEOUT).await;
        None
    })
    .await
}

/// Serves one accepted connection until it closes or the shard stops. Peer frames carry
/// the cluster label and client frames none: the first header's label says which.
pub async fn serve(stream: TcpStream, inbox: Rc<Inbox>, acc: Rc<Accept>) {
    // Held until the connection closes, or until it authenticates as a peer link. (A
    // connection whose address cannot be read is already gone: its first read fails.)
    let mut slot = None;
    if let Ok(from) = stream.peer_addr() {
        slot = IpSlot::take(&inbox, from.ip(), acc.client_connections_per_ip_max);
        if slot.is_none() {
            inbox.count(|s| s.clients_refused_per_ip += 1);
            return;
        }
    }
    let _ = stream.set_nodelay(true);
    let (rd, wr) = futures_lite::io::split(stream);
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut head = [0u8; HEADER_LEN];
    let first = within_hello_timeout(rd.read_exact(&mut head)).await;
    match first {
        Some(Ok(())) => {}
        Some(Err(_)) => return,
        None => {
            inbox.count(|s| s.hello_timeouts += 1);
            return;
        }
    }
    let label_hash = u32::from_le_bytes([head[12], head[13], head[14], head[15]]);
    if label_hash == 0 {
        let reader =
            FrameReader::with_header(rd, b"", CLIENT_FRAME_BYTES_MAX, acc.budget.clone(), head);
        return serve_client(reader, wr, inbox, acc).await;
    }
    let mut reader = FrameReader::with_header(
        rd,
        &acc.label,
        HELLO_FRAME_BYTES_MAX,
        acc.budget.clone(),
        head,
    );
    let hello = within_hello_timeout(async {
        match reader.next().await {
            Ok(Some(f)) => match f.messages().next() {
                Some(Ok(MessageRef::PeerHello(h))) => <PeerHello as WireMessage>::to_owned(h).ok(),
                _ => None,
            },
            _ => None,
        }
    })
    .await;
    let h = match hello {
        Some(Some(h)) => h,
        Some(None) => {
            inbox.count(|s| s.bad_frames += 1);
            return;
        }
        None => {
            inbox.count(|s| s.hello_timeouts += 1);
            return;
        }
    };
    reader.set_frame_bytes_max(&acc.label, acc.peer_frame_bytes_max);
    let ok = h.to == acc.node
        && h.shard == acc.shard
        && h.shards == acc.shards
        && h.groups == acc.groups
        && acc.peers.contains(&h.from)
        && h.from != acc.node;
    if !ok {
        inbox.count(|s| s.peers_refused += 1);
        tracing::warn!(
            node = acc.node,
            shard = acc.shard,
            "refused a peer link: it says from={} to={} shard={} shards={} groups={}, \
             this node is {} with {} shards and {} groups",
            h.from,
            h.to,
            h.shard,
            h.shards,
            h.groups,
            acc.node,
            acc.shards,
            acc.groups
        );
        return;
    }
    drop(wr);
    // An authenticated peer link no longer counts against its address.
    drop(slot);
    serve_peer(reader, &inbox, &acc).await;
}

async fn serve_peer<R: futures_lite::AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    inbox: &Inbox,
    acc: &Accept,
) {
    loop {
        if inbox.stopping.get() {
            return;
        }
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(super::peers::ReadError::OverBudget(_)) => {
                inbox.count(|s| s.frames_over_budget += 1);
                return;
            }
            Err(_) => {
                inbox.count(|s| s.bad_frames += 1);
                return;
            }
        };
        let mut queued = 0u64;
        let mut full = 0u64;
        let mut bad = false;
        {
            let mut q = inbox.messages.borrow_mut();
            for m in frame.messages() {
                let Ok(m) = m.and_then(|m| m.to_owned()) else {
                    bad = true;
                    break;
                };
                if q.len() >= acc.inbound_queue_max {
                    full += 1;
                    continue;
                }
                q.push_back(m);
                queued += 1;
            }
        }
        inbox.count(|s| {
            s.peer_messages += queued;
            s.peer_dropped_full += full;
        });
        if queued > 0 {
            inbox.wake.notify();
        }
        if bad {
            inbox.count(|s| s.bad_frames += 1);
            return;
        }
    }
}

type Rd = BufReader<futures_lite::io::ReadHalf<TcpStream>>;
type Wr = futures_lite::io::WriteHalf<TcpStream>;

/// Serves a client connection (whose frames carry no label).
async fn serve_client(mut reader: FrameReader<Rd>, mut wr: Wr, inbox: Rc<Inbox>, acc: Rc<Accept>) {
    if inbox.conns.borrow().len() >= acc.client_connections_max {
        inbox.count(|s| s.clients_refused += 1);
        return;
    }
    let id = inbox.next_conn.get();
    inbox.next_conn.set(id + 1);
    let conn = Rc::new(ClientConn::new());
    inbox.conns.borrow_mut().insert(id, Rc::clone(&conn));
    inbox.count(|s| s.clients_accepted += 1);
    // The writer: drains the connection's responses into batch frames.
    let writer = {
        let conn = Rc::clone(&conn);
        let inbox = Rc::clone(&inbox);
        glommio::spawn_local(async move {
            let mut enc = Encoder::new(b"");
            let mut out = Vec::new();
            loop {
                if conn.closed.get() || inbox.stopping.get() {
                    return;
                }
                out.clear();
                {
                    let mut q = conn.out.borrow_mut();
                    while !q.is_empty() && out.len() < CLIENT_FRAME_BYTES_MAX {
                        let mut batch = enc.batch(None, CLIENT_FRAME_BYTES_MAX);
                        let mut n = 0;
                        while let Some(r) = q.front() {
                            match batch.push(r) {
                                Ok(true) => {
                                    q.pop_front();
                                    n += 1;
                                }
                                Ok(false) if n > 0 => break,
                                _ => {
                                    // A response too large for a frame: say so instead.
                                    if let Some(r) = q.pop_front() {
                                        q.push_front(ClientResponse {
                                            id: r.id,
                                            result: ClientResult::Error {
                                                code: ErrorCode::TooLarge,
                                                message: "the response exceeds the frame limit"
                                                    .into(),
                                            },
                                        });
                                    }
                                }
                            }
                        }
                        if let Ok(f) = batch.finish() {
                            out.extend_from_slice(f);
                        }
                    }
                }
                if out.is_empty() {
                    conn.notify.notified().await;
                    continue;
                }
                if wr.write_all(&out).await.is_err() {
                    conn.closed.set(true);
                    return;
                }
            }
        })
    };
    loop {
        if inbox.stopping.get() {
            break;
        }
        let frame = match reader.next().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(_) => {
                inbox.count(|s| s.bad_frames += 1);
                break;
            }
        };
        let mut bad = false;
        let mut queued = 0u64;
        let mut busy = Vec::new();
        {
            let mut q = inbox.requests.borrow_mut();
            for m in frame.messages() {
                let req = match m {
                    Ok(MessageRef::ClientRequest(r)) => <ClientRequest as WireMessage>::to_owned(r),
                    _ => {
                        bad = true;
                        break;
                    }
                };
                let Ok(req) = req else {
                    bad = true;
                    break;
                };
                if conn.inflight.get() >= acc.client_inflight_max {
                    busy.push(req.id);
                    continue;
                }
                conn.inflight.set(conn.inflight.get() + 1);
                q.push_back((id, req));
                queued += 1;
            }
        }
        for rid in &busy {
            conn.inflight.set(conn.inflight.get() + 1);
            conn.respond(ClientResponse {
                id: *rid,
                result: ClientResult::Error {
                    code: ErrorCode::Busy,
                    message: format!(
                        "more than {} requests in flight on this connection",
                        acc.client_inflight_max
                    ),
                },
            });
        }
        inbox.count(|s| {
            s.requests += queued;
            s.requests_busy += busy.len() as u64;
        });
        if queued > 0 {
            inbox.wake.notify();
        }
        if bad {
            inbox.count(|s| s.bad_frames += 1);
            // Tell the client why before closing.
            conn.inflight.set(conn.inflight.get() + 1);
            conn.respond(ClientResponse {
                id: 0,
                result: ClientResult::Error {
                    code: ErrorCode::Malformed,
                    message: "a frame held something other than a valid request: closing".into(),
                },
            });
            break;
        }
    }
    // Let the writer flush what is queued, then close.
    let flush_deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
    while !conn.out.borrow().is_empty()
        && !conn.closed.get()
        && std::time::Instant::now() < flush_deadline
    {
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    conn.closed.set(true);
    conn.notify.notify();
    let _ = writer.await;
    inbox.conns.borrow_mut().remove(&id);
}

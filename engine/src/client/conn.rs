//! One connection to one shard of one node: a queue of requests, the requests in flight
//! (by the id this connection gave them), a writer thread that connects, then packs what
//! is queued into batch frames, and a reader thread that hands each response to the
//! client by id.
//!
//! A connection holds at most `inflight_max` requests (queued or sent). It dies on the
//! first failure (connect, write, read, or a frame that does not decode) and gives every
//! request it held back to the client, marked sent or not; it is never reused after that.
//! It never panics on what the server sends.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io::Write as _;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ringleader_wire::msg::client::{
    CLIENT_FRAME_BYTES_MAX, ClientOp, ClientRequest, ClientResponse,
};
use ringleader_wire::{EncodeError, Encoder, MessageRef, WireMessage};

use super::call::Call;
use super::dispatch::Shared;
use super::frames::{FrameError, FrameReader, client_encoder, pack_frames};

/// A request held by a connection.
pub(crate) struct Entry {
    pub call: Call,
    /// Whether its bytes were handed to the socket (its outcome is unknown if the
    /// connection dies now).
    pub sent: bool,
}

/// Why a connection did not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It died: a new one takes its place.
    Dead,
    /// `inflight_max` requests are queued or in flight on it.
    Full,
}

/// Why a connection died.
#[derive(Debug, Clone)]
pub(crate) enum ConnFailure {
    /// The connect failed: nothing was sent.
    Connect(String),
    /// The stream ended or failed: what was sent has an unknown outcome.
    Lost(String),
    /// The server sent bytes that are not a client frame (or not a response).
    Protocol(String),
}

struct State {
    queue: VecDeque<u64>,
    entries: HashMap<u64, Entry>,
    /// `(deadline, id)` of every entry, so the earliest expire first.
    deadlines: BTreeSet<(Instant, u64)>,
    next_id: u64,
    dead: bool,
    /// A handle on the socket, to shut it down (which wakes the reader) when killed.
    stream: Option<TcpStream>,
}

/// A connection to `addr`.
pub(crate) struct Conn {
    /// The shard's address.
    pub addr: SocketAddr,
    /// The node's base address.
    pub base: SocketAddr,
    state: Mutex<State>,
    wake: Condvar,
}

/// What one round of the writer found.
enum Round {
    /// Frames in the output buffer (possibly none, if every request was refused).
    Frames,
    /// The connection is dead: the writer stops.
    Dead,
}

impl Conn {
    pub fn new(addr: SocketAddr, base: SocketAddr) -> Conn {
        Conn {
            addr,
            base,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                entries: HashMap::new(),
                deadlines: BTreeSet::new(),
                next_id: 1,
                dead: false,
                stream: None,
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Queues `call` for the writer, under a fresh id; gives it back if refused.
    pub fn enqueue(&self, mut call: Call, inflight_max: usize) -> Result<(), Box<(Call, Refused)>> {
        let mut s = self.lock();
        if s.dead {
            return Err(Box::new((call, Refused::Dead)));
        }
        if s.entries.len() >= inflight_max {
            return Err(Box::new((call, Refused::Full)));
        }
        let id = s.next_id;
        s.next_id = s.next_id.wrapping_add(1).max(1);
        call.req.id = id;
        s.deadlines.insert((call.deadline, id));
        s.queue.push_back(id);
        s.entries.insert(id, Entry { call, sent: false });
        drop(s);
        self.wake.notify_one();
        Ok(())
    }

    /// Takes the request answered by response `id`.
    pub fn take(&self, id: u64) -> Option<Entry> {
        let mut s = self.lock();
        let e = s.entries.remove(&id)?;
        s.deadlines.remove(&(e.call.deadline, id));
        Some(e)
    }

    /// Takes every request whose deadline passed by `now`.
    pub fn take_expired(&self, now: Instant) -> Vec<Entry> {
        let mut s = self.lock();
        let mut out = Vec::new();
        while let Some(&(at, id)) = s.deadlines.first() {
            if at > now {
                break;
            }
            s.deadlines.pop_first();
            if let Some(e) = s.entries.remove(&id) {
                out.push(e);
            }
        }
        out
    }

    /// Marks the connection dead, shuts its socket down and takes every request it held.
    pub fn kill(&self) -> Vec<Entry> {
        let mut s = self.lock();
        s.dead = true;
        if let Some(stream) = s.stream.take() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        s.queue.clear();
        s.deadlines.clear();
        let out = s.entries.drain().map(|(_, e)| e).collect();
        drop(s);
        self.wake.notify_all();
        out
    }

    /// Keeps `stream` to shut down on kill and runs `start_reader`, unless the connection
    /// died while it was connecting (then the socket is closed and `false` returned).
    fn attach(&self, stream: TcpStream, start_reader: impl FnOnce() -> bool) -> bool {
        let mut s = self.lock();
        if s.dead {
            let _ = stream.shutdown(Shutdown::Both);
            return false;
        }
        s.stream = Some(stream);
        // Under the lock, so that a kill (and the client's close, which joins the
        // threads it finds) cannot come between the check and the start.
        start_reader()
    }

    /// Waits for queued requests and packs them into `out`, marking them sent. Requests
    /// that can never be sent (too large for a frame) go to `refused`.
    fn next_round(
        &self,
        enc: &mut Encoder,
        out: &mut Vec<u8>,
        refused: &mut Vec<(Entry, EncodeError)>,
    ) -> Round {
        let mut s = self.lock();
        while s.queue.is_empty() && !s.dead {
            s = self.wake.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.dead {
            return Round::Dead;
        }
        // One frame's worth per round, so that the output buffer stays bounded.
        let mut ids = Vec::new();
        let mut budget = 0usize;
        while let Some(&id) = s.queue.front() {
            let Some(e) = s.entries.get_mut(&id) else {
                s.queue.pop_front(); // expired while queued
                continue;
            };
            let size = op_bytes(&e.call.req.op);
            if !ids.is_empty() && budget + size > CLIENT_FRAME_BYTES_MAX {
                break;
            }
            budget += size;
            e.sent = true;
            ids.push(id);
            s.queue.pop_front();
        }
        let mut too_large = Vec::new();
        let packed = {
            let entries = &s.entries;
            let reqs = ids
                .iter()
                .filter_map(|id| entries.get(id).map(|e| &e.call.req));
            pack_frames(enc, reqs, out, |r: &ClientRequest| too_large.push(r.id))
        };
        let failed: Vec<(u64, EncodeError)> = match packed {
            Ok(_) => too_large
                .into_iter()
                .map(|id| {
                    let len = s.entries.get(&id).map_or(0, |e| op_bytes(&e.call.req.op));
                    let limit = CLIENT_FRAME_BYTES_MAX;
                    (id, EncodeError::TooLarge { len, limit })
                })
                .collect(),
            Err(e) => {
                // Nothing of this round can be trusted to have been packed whole.
                out.clear();
                ids.iter().map(|&id| (id, e)).collect()
            }
        };
        for (id, err) in failed {
            if let Some(mut e) = s.entries.remove(&id) {
                s.deadlines.remove(&(e.call.deadline, id));
                e.sent = false;
                refused.push((e, err));
            }
        }
        Round::Frames
    }
}

/// About how many bytes `op` takes in a frame.
fn op_bytes(op: &ClientOp) -> usize {
    const OVERHEAD: usize = 64;
    OVERHEAD
        + match op {
            ClientOp::Put { key, value } => key.len() + value.len(),
            ClientOp::Get { key, .. } | ClientOp::Delete { key } => key.len(),
            ClientOp::Cas { key, expected, new } => {
                key.len() + expected.as_ref().map_or(0, Vec::len) + new.len()
            }
            ClientOp::Info => 0,
        }
}

/// The writer thread: connects, starts the reader, then sends what is queued until the
/// connection dies.
pub(crate) fn run_writer(shared: Arc<Shared>, conn: Arc<Conn>) {
    let connect_timeout = Duration::from_millis(shared.config.connect_timeout_ms.max(1));
    let mut stream = match TcpStream::connect_timeout(&conn.addr, connect_timeout) {
        Ok(s) => s,
        Err(e) => {
            shared.conn_failed(&conn, ConnFailure::Connect(e.to_string()));
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    // A server that stops reading must not hold the writer forever.
    let write_timeout = Duration::from_millis(shared.config.request_timeout_ms.max(1));
    let _ = stream.set_write_timeout(Some(write_timeout));
    let (handle, reader_stream) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(h), Ok(r)) => (h, r),
        (Err(e), _) | (_, Err(e)) => {
            shared.conn_failed(&conn, ConnFailure::Connect(e.to_string()));
            return;
        }
    };
    let started = conn.attach(handle, || {
        let (s, c) = (shared.clone(), conn.clone());
        shared
            .spawn("kv-client-read", move || run_reader(s, c, reader_stream))
            .is_ok()
    });
    if !started {
        shared.conn_failed(&conn, ConnFailure::Connect("no reader thread".to_string()));
        return;
    }
    shared.note_connected(conn.addr);
    let mut enc = client_encoder();
    let mut out = Vec::new();
    let mut refused = Vec::new();
    loop {
        out.clear();
        let round = conn.next_round(&mut enc, &mut out, &mut refused);
        for (e, err) in refused.drain(..) {
            shared.refuse_unsendable(e.call, err);
        }
        if let Round::Dead = round {
            return;
        }
        if out.is_empty() {
            continue;
        }
        if let Err(e) = stream.write_all(&out) {
            shared.conn_failed(&conn, ConnFailure::Lost(format!("write failed: {e}")));
            return;
        }
    }
}

/// The reader thread: hands each response to the client until the connection dies.
fn run_reader(shared: Arc<Shared>, conn: Arc<Conn>, mut stream: TcpStream) {
    let mut reader = FrameReader::new();
    let mut responses = Vec::new();
    loop {
        let failure = match reader.read(&mut stream) {
            Ok(None) => Some(ConnFailure::Lost("closed by the server".to_string())),
            Err(FrameError::Io(e)) => Some(ConnFailure::Lost(format!("read failed: {e}"))),
            Err(FrameError::Decode(e)) => Some(ConnFailure::Protocol(format!(
                "the server sent a frame that does not decode ({e})"
            ))),
            Ok(Some(frame)) => frame.messages().find_map(|m| {
                let owned = match m {
                    Ok(MessageRef::ClientResponse(r)) => {
                        <ClientResponse as WireMessage>::to_owned(r)
                    }
                    Ok(other) => {
                        return Some(ConnFailure::Protocol(format!(
                            "the server sent a {} message where responses go",
                            other.kind().name()
                        )));
                    }
                    Err(e) => Err(e),
                };
                match owned {
                    Ok(r) => {
                        responses.push(r);
                        None
                    }
                    Err(e) => Some(ConnFailure::Protocol(format!(
                        "the server sent a response that does not decode ({e})"
                    ))),
                }
            }),
        };
        if let Some(f) = failure {
            // A bad frame spoils the whole frame: none of its responses is taken.
            responses.clear();
            if let ConnFailure::Protocol(_) = f {
                shared.count_bad_frame();
            }
            shared.conn_failed(&conn, f);
            return;
        }
        for r in responses.drain(..) {
            match conn.take(r.id) {
                Some(e) => shared.on_response(&conn, e.call, r.result),
                None => shared.count_late_response(),
            }
        }
    }
}

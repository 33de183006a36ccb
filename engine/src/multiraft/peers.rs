//! Peer links and the frame reader shared by every connection of a shard.
//!
//! A shard keeps one outgoing TCP connection per peer node ([`PeerLink`], [`run_link`]),
//! to the same shard of that peer, carrying every group's messages: queued by the shard's
//! loop, batched into frames by the link's task, written back to back (pipelined: nothing
//! waits for an answer). Messages arrive on the connections peers opened to us
//! ([`super::clients::serve`] reads them after the peer's [`PeerHello`]).
//!
//! A link never queues more than its bound (what does not fit is dropped and counted:
//! Raft retransmits), drops its queue while disconnected (a reconnect starts clean; the
//! core resends what matters), and reconnects with exponential back-off.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;
use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::PeerHello;
use ringleader_wire::{DecodeError, Decoder, Encoder, Frame};

use crate::runtime::LocalNotify;
use crate::transport::{ByteBudget, FrameBuf, StreamError, read_frame};

/// Reads wire frames from a byte stream into one reusable aligned buffer, through
/// [`crate::transport::read_frame`]: the header is checked (limit, label) before anything
/// is reserved, and the body is held only as it arrives, charged to the shard's budget.
pub struct FrameReader<R> {
    r: R,
    buf: FrameBuf,
    decoder: Decoder,
    body_bytes_max: usize,
    /// A header already read from the stream (to tell a peer from a client).
    prefix: Option<[u8; HEADER_LEN]>,
}

/// Why a connection's frames stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed or closed inside a frame.
    #[error("stream: {0}")]
    Io(#[from] io::Error),
    /// A frame does not decode: the stream cannot be trusted past it.
    #[error("bad frame: {0}")]
    Decode(DecodeError),
    /// The frame would take the shard's connections past their byte budget.
    #[error("{0}")]
    OverBudget(StreamError),
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames of cluster `label`, at most `frame_bytes_max` bytes each, held against
    /// `budget`.
    pub fn new(r: R, label: &[u8], frame_bytes_max: usize, budget: ByteBudget) -> FrameReader<R> {
        let body_bytes_max = frame_bytes_max.max(HEADER_LEN) - HEADER_LEN;
        FrameReader {
            r,
            buf: FrameBuf::new(budget),
            decoder: Decoder::new(label, body_bytes_max),
            body_bytes_max,
            prefix: None,
        }
    }

    /// Like [`FrameReader::new`], for a stream whose first frame header was read already.
    pub fn with_header(
        r: R,
        label: &[u8],
        frame_bytes_max: usize,
        budget: ByteBudget,
        header: [u8; HEADER_LEN],
    ) -> FrameReader<R> {
        let mut f = FrameReader::new(r, label, frame_bytes_max, budget);
        f.prefix = Some(header);
        f
    }

    /// Changes the largest frame accepted from now on (a connection's first frame, before
    /// it says who it is, gets a small limit).
    pub fn set_frame_bytes_max(&mut self, label: &[u8], frame_bytes_max: usize) {
        self.body_bytes_max = frame_bytes_max.max(HEADER_LEN) - HEADER_LEN;
        self.decoder = Decoder::new(label, self.body_bytes_max);
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame<'_>>, ReadError> {
        let whole = read_frame(
            &mut self.r,
            &mut self.buf,
            self.prefix.take(),
            &self.decoder,
            self.body_bytes_max,
            false,
        )
        .await
        .map_err(|e| match e {
            StreamError::Io(e) => ReadError::Io(e),
            StreamError::Decode(e) => ReadError::Decode(e),
            other => ReadError::OverBudget(other),
        })?;
        if !whole {
            return Ok(None);
        }
        self.decoder
            .decode(self.buf.bytes_mut(), None)
            .map(Some)
            .map_err(ReadError::Decode)
    }
}

/// Counters of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Messages written to the socket.
    pub sent: u64,
    /// Frames written.
    pub frames: u64,
    /// Messages dropped: queue full, disconnected, or too large for a frame.
    pub dropped: u64,
    /// Connections established.
    pub connects: u64,
    /// Connection attempts that failed, and connections lost.
    pub failures: u64,
}

/// The outgoing link to one peer node's shard.
pub struct PeerLink {
    /// The peer's node id.
    pub node: u64,
    /// Where its shard listens.
    pub addr: SocketAddr,
    queue: RefCell<VecDeque<Message>>,
    queue_max: usize,
    notify: LocalNotify,
    connected: Cell<bool>,
    stopping: Cell<bool>,
    stats: Cell<LinkStats>,
}

impl PeerLink {
    /// A link to `node` at `addr`, queueing at most `queue_max` messages.
    pub fn new(node: u64, addr: SocketAddr, queue_max: usize) -> PeerLink {
        PeerLink {
            node,
            addr,
            queue: RefCell::new(VecDeque::new()),
            queue_max,
            notify: LocalNotify::new(),
            connected: Cell::new(false),
            stopping: Cell::new(false),
            stats: Cell::new(LinkStats::default()),
        }
    }

    fn count(&self, f: impl FnOnce(&mut LinkStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// Queues a message; drops it (counted) when disconnected or full.
    pub fn push(&self, m: Message) {
        let mut q = self.queue.borrow_mut();
        if !self.connected.get() || q.len() >= self.queue_max {
            drop(q);
            self.count(|s| s.dropped += 1);
            return;
        }
        q.push_back(m);
        if q.len() == 1 {
            self.notify.notify();
        }
    }

    /// Whether the link is connected.
    pub fn connected(&self) -> bool {
        self.connected.get()
    }

    /// Counters.
    pub fn stats(&self) -> LinkStats {
        self.stats.get()
    }

    /// Stops the link's task.
    pub fn stop(&self) {
        self.stopping.set(true);
        self.notify.notify();
    }
}

/// Runs `link` until [`PeerLink::stop`]: connect (with back-off), introduce ourselves with
/// `hello`, then write queued messages as batch frames.
pub async fn run_link(
    link: Rc<PeerLink>,
    hello: PeerHello,
    label: Vec<u8>,
    frame_bytes_max: usize,
    backoff_ms: (u64, u64),
) {
    let mut enc = Encoder::new(&label);
    let mut backoff = backoff_ms.0.max(1);
    while !link.stopping.get() {
        let stream = match TcpStream::connect(link.addr).await {
            Ok(s) => s,
            Err(_) => {
                link.count(|s| s.failures += 1);
                sleep_or_stop(&link, Duration::from_millis(backoff)).await;
                backoff = (backoff * 2).min(backoff_ms.1.max(1));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        let hello_frame = match enc.encode(&hello, None, frame_bytes_max) {
            Ok(f) => f.to_vec(),
            Err(_) => return,
        };
        if stream.write_all(&hello_frame).await.is_err() {
            link.count(|s| s.failures += 1);
            sleep_or_stop(&link, Duration::from_millis(backoff)).await;
            backoff = (backoff * 2).min(backoff_ms.1.max(1));
            continue;
        }
        link.count(|s| s.connects += 1);
        link.connected.set(true);
        backoff = backoff_ms.0.max(1);
        let mut out: Vec<u8> = Vec::new();
        loop {
            if link.stopping.get() {
                break;
            }
            // Take what is queued (a bounded amount per write).
            out.clear();
            let mut sent = 0u64;
            let mut frames = 0u64;
            let mut dropped = 0u64;
            {
                let mut q = link.queue.borrow_mut();
                while !q.is_empty() && out.len() < frame_bytes_max {
                    let mut batch = enc.batch(None, frame_bytes_max);
                    let mut n = 0;
                    while let Some(m) = q.front() {
                        match batch.push_message(m) {
                            Ok(true) => {
                                q.pop_front();
                                n += 1;
                            }
                            Ok(false) if n > 0 => break,
                            _ => {
                                // Too large for any frame, or unencodable.
                                q.pop_front();
                                dropped += 1;
                            }
                        }
                    }
                    if n == 0 {
                        continue;
                    }
                    match batch.finish() {
                        Ok(f) => {
                            out.extend_from_slice(f);
                            sent += n;
                            frames += 1;
                        }
                        Err(_) => dropped += n,
                    }
                }
            }
            if dropped > 0 {
                link.count(|s| s.dropped += dropped);
            }
            if out.is_empty() {
                link.notify.notified().await;
                continue;
            }
            if stream.write_all(&out).await.is_err() {
                link.count(|s| s.failures += 1);
                break;
            }
            link.count(|s| {
                s.sent += sent;
                s.frames += frames;
            });
        }
        link.connected.set(false);
        let lost = {
            let mut q = link.queue.borrow_mut();
            let n = q.len() as u64;
            q.clear();
            n
        };
        link.count(|s| s.dropped += lost);
        let _ = stream.shutdown(std::net::Shutdown::Both).await;
        if !link.stopping.get() {
            sleep_or_stop(&link, Duration::from_millis(backoff)).await;
        }
    }
}

async fn sleep_or_stop(link: &PeerLink, d: Duration) {
    if link.stopping.get() {
        return;
    }
    let sleep = glommio::timer::sleep(d);
    futures_lite::future::or(link.notify.notified(), async {
        sleep.await;
    })
    .await;
}

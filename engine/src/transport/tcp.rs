//! TCP streams carrying wire frames back to back (push-pull state, the TCP fallback probe,
//! Raft append batches), on glommio's `TcpStream`.
//!
//! A frame is self-delimiting: its 32-byte header carries the body length, so a reader
//! reads the header, checks it with [`Header::parse`] against the stream limit and with
//! [`Decoder::check_header`] (cluster label, sealed or not) before reserving anything, reads
//! exactly the body into a reusable 16-byte-aligned buffer, and decodes in place. A bad
//! frame ends the stream: after it the framing cannot be trusted.
//!
//! Nothing is authenticated until the whole body is in (the checksum and the seal cover
//! it), so what a peer can make a reader hold before that is bounded by what the peer
//! actually sends, never by what its header announces: the buffer grows with the bytes
//! received ([`read_frame`]: doubling from [`FRAME_GROWTH_BYTES_MIN`], capped at the
//! announced length), and a [`ByteBudget`] shared by the streams of a shard caps the bytes
//! all of them hold at once. A header that announces 16 MiB followed by a trickle costs
//! a few KiB, and a peer that trickles is cut off by its caller's exchange timeout.
//! Between frames a stream keeps at most [`FRAME_RETAINED_BYTES_MAX`] of its buffer, so a
//! long-lived connection that once carried a large frame does not hold that budget idle.
//!
//! This module never allocates more than `frame_bytes_max` for one frame, never more than
//! its budget across streams, and never panics on received bytes.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::{DecodeError, Decoder, Frame, Header, Keyring};
use rkyv::util::AlignedVec;

/// Errors of a frame stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The socket failed, or closed in the middle of a frame.
    #[error("stream I/O: {0}")]
    Io(#[from] io::Error),
    /// The peer sent a frame that does not decode; the stream must be dropped.
    #[error("bad frame on stream: {0}")]
    Decode(DecodeError),
    /// The frame to send exceeds the stream limit.
    #[error("frame of {0} bytes exceeds the stream limit")]
    TooLarge(usize),
    /// Receiving the frame would take the shard's streams past their [`ByteBudget`]: the
    /// stream is dropped (its peer retries later, as after any failed exchange).
    #[error(
        "receiving a frame of {frame} bytes would exceed the streams' budget of {budget} bytes"
    )]
    OverBudget {
        /// The frame's announced length.
        frame: usize,
        /// The budget.
        budget: usize,
    },
}

/// The first step of a frame buffer's growth while its body arrives.
pub const FRAME_GROWTH_BYTES_MIN: usize = 64 * 1024;

/// Most bytes a stream's buffer keeps (and keeps charged to its budget) between frames:
/// a stream that once received a large frame (a snapshot chunk, a big append batch) gives
/// the rest back before it reads the next one, so long-lived idle connections do not hold
/// the budget that other streams need.
pub const FRAME_RETAINED_BYTES_MAX: usize = 1 << 20;

/// Bytes that the frame buffers of a set of streams (one shard's) may hold at once, before
/// and after authentication alike. Cheap to clone (shared); single-threaded.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    held: Rc<Cell<usize>>,
    max: usize,
}

impl ByteBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> ByteBudget {
        ByteBudget {
            held: Rc::new(Cell::new(0)),
            max,
        }
    }

    /// No bound (a stream of our own making, or a test).
    pub fn unbounded() -> ByteBudget {
        ByteBudget::new(usize::MAX)
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.get()
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    fn charge(&self, n: usize) -> bool {
        match self.held.get().checked_add(n) {
            Some(t) if t <= self.max => {
                self.held.set(t);
                true
            }
            _ => false,
        }
    }

    fn release(&self, n: usize) {
        self.held.set(self.held.get().saturating_sub(n));
    }
}

/// A frame buffer charged to a [`ByteBudget`]: what it holds is released when it drops.
pub struct FrameBuf {
    buf: AlignedVec<16>,
    budget: ByteBudget,
    charged: usize,
}

impl FrameBuf {
    /// An empty buffer charged to `budget`.
    pub fn new(budget: ByteBudget) -> FrameBuf {
        FrameBuf {
            buf: AlignedVec::new(),
            budget,
            charged: 0,
        }
    }

    /// Grows the buffer to `len` bytes (zero-filled past what it held), charging the
    /// budget for capacity it did not hold yet.
    fn grow(&mut self, len: usize, frame: usize) -> Result<(), StreamError> {
        if len > self.charged {
            let more = len - self.charged;
            if !self.budget.charge(more) {
                return Err(StreamError::OverBudget {
                    frame,
                    budget: self.budget.max,
                });
            }
            self.charged = len;
        }
        self.buf.resize(len, 0);
        Ok(())
    }

    /// The bytes of the last frame read.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// When the buffer holds more than `keep` bytes, gives them all back to the allocator
    /// and to the budget; called between frames, when the last frame has been consumed.
    /// Buffers of at most `keep` bytes are kept, so that a stream of ordinary frames
    /// reallocates nothing.
    fn trim(&mut self, keep: usize) {
        if self.charged > keep {
            self.buf.clear();
            self.buf.shrink_to_fit();
            self.budget.release(self.charged);
            self.charged = 0;
        }
    }
}

impl Drop for FrameBuf {
    fn drop(&mut self) {
        self.budget.release(self.charged);
    }
}

/// Reads one frame from `r` into `buf` (`prefix`: its header, already read from the
/// stream). Returns `Ok(false)` when the stream ended cleanly before a frame, `Ok(true)`
/// when `buf` holds a whole frame whose header passed [`Header::parse`] against
/// `body_bytes_max` and [`Decoder::check_header`] (the caller decodes it). The body is read
/// in steps that double from [`FRAME_GROWTH_BYTES_MIN`]: the buffer never holds more than
/// about twice what the peer sent (and at most the announced length).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut FrameBuf,
    prefix: Option<[u8; HEADER_LEN]>,
    decoder: &Decoder,
    body_bytes_max: usize,
    keyring: bool,
) -> Result<bool, StreamError> {
    buf.trim(FRAME_RETAINED_BYTES_MAX);
    buf.grow(HEADER_LEN, HEADER_LEN)?;
    let mut got = 0;
    if let Some(h) = prefix {
        buf.buf[..HEADER_LEN].copy_from_slice(&h);
        got = HEADER_LEN;
    }
    while got < HEADER_LEN {
        let n = r.read(&mut buf.buf[got..HEADER_LEN]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(StreamError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        got += n;
    }
    let header =
        Header::parse(&buf.buf[..HEADER_LEN], body_bytes_max).map_err(StreamError::Decode)?;
    decoder
        .check_header(&header, keyring)
        .map_err(StreamError::Decode)?;
    let len = header.frame_len();
    while got < len {
        if got == buf.buf.len() {
            // Full: grow by doubling (what arrived so far pays for what is reserved next).
            let step = (buf.buf.len() * 2).max(FRAME_GROWTH_BYTES_MIN).min(len);
            buf.grow(step, len)?;
        }
        let upto = buf.buf.len();
        let n = r.read(&mut buf.buf[got..upto]).await?;
        if n == 0 {
            return Err(StreamError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        got += n;
    }
    Ok(true)
}

/// A TCP connection exchanging wire frames.
pub struct FrameStream {
    stream: TcpStream,
    buf: FrameBuf,
    decoder: Decoder,
    frame_bytes_max: usize,
}

impl FrameStream {
    /// Connects to `addr`; frames of cluster `label`, at most `frame_bytes_max` bytes.
    pub async fn connect(
        addr: SocketAddr,
        label: &[u8],
        frame_bytes_max: usize,
    ) -> Result<FrameStream, StreamError> {
        let stream = TcpStream::connect(addr).await.map_err(io::Error::from)?;
        Ok(FrameStream::new(stream, label, frame_bytes_max))
    }

    /// Wraps an accepted or connected stream (its frames charged to no budget).
    pub fn new(stream: TcpStream, label: &[u8], frame_bytes_max: usize) -> FrameStream {
        FrameStream::with_budget(stream, label, frame_bytes_max, ByteBudget::unbounded())
    }

    /// Wraps a stream whose received frames are charged to `budget`.
    pub fn with_budget(
        stream: TcpStream,
        label: &[u8],
        frame_bytes_max: usize,
        budget: ByteBudget,
    ) -> FrameStream {
        let _ = stream.set_nodelay(true);
        let frame_bytes_max = frame_bytes_max.max(HEADER_LEN);
        FrameStream {
            stream,
            buf: FrameBuf::new(budget),
            decoder: Decoder::new(label, frame_bytes_max - HEADER_LEN),
            frame_bytes_max,
        }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr().map_err(io::Error::from)
    }

    /// This end's address (on a wildcard listener: the address the peer connected to).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr().map_err(io::Error::from)
    }

    /// Writes one frame (as built by `ringleader_wire::Encoder`).
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), StreamError> {
        if frame.len() > self.frame_bytes_max {
            return Err(StreamError::TooLarge(frame.len()));
        }
        self.stream.write_all(frame).await?;
        Ok(())
    }

    /// Reads the next frame, decoded (and opened with `keyring`) in place. `Ok(None)` when
    /// the peer closed cleanly between frames.
    pub async fn recv(
        &mut self,
        keyring: Option<&Keyring>,
    ) -> Result<Option<Frame<'_>>, StreamError> {
        let whole = read_frame(
            &mut self.stream,
            &mut self.buf,
            None,
            &self.decoder,
            self.frame_bytes_max - HEADER_LEN,
            keyring.is_some(),
        )
        .await?;
        if !whole {
            return Ok(None);
        }
        self.decoder
            .decode(self.buf.bytes_mut(), keyring)
            .map(Some)
            .map_err(StreamError::Decode)
    }

    /// Shuts the connection down and closes it.
    pub async fn close(self) -> io::Result<()> {
        let _ = self.stream.shutdown(std::net::Shutdown::Both).await;
        Ok(())
    }
}

/// Connections a listener queues before they are accepted (a mass join connects to the
/// seeds' listeners all at once).
pub const LISTEN_BACKLOG: i32 = 4096;

/// Listens for frame streams.
pub struct FrameListener {
    listener: TcpListener,
    label: Vec<u8>,
    frame_bytes_max: usize,
    budget: ByteBudget,
}

impl FrameListener {
    /// Binds `addr` (port 0 picks one) with `SO_REUSEADDR` (a restarted member can rebind
    /// while old connections linger in TIME_WAIT) but not `SO_REUSEPORT`: an address some
    /// other listener holds is refused (`EADDRINUSE`) rather than silently shared, as
    /// glommio's own `TcpListener::bind` would. Backlog [`LISTEN_BACKLOG`] (the kernel
    /// caps it at `net.core.somaxconn`).
    pub fn bind(
        addr: SocketAddr,
        label: &[u8],
        frame_bytes_max: usize,
    ) -> io::Result<FrameListener> {
        let domain = socket2::Domain::for_address(addr);
        let sk = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        sk.set_reuse_address(true)?;
        // Left blocking: io_uring's accept on an O_NONBLOCK listener fails with EAGAIN
        // instead of waiting for a connection (glommio's accept relies on that).
        sk.bind(&addr.into())?;
        sk.listen(LISTEN_BACKLOG)?;
        // SAFETY: the descriptor is a bound, listening TCP socket that nothing else owns
        // (`into_raw_fd` gives up socket2's ownership).
        let listener = unsafe { TcpListener::from_raw_fd(sk.into_raw_fd()) };
        Ok(FrameListener {
            listener,
            label: label.to_vec(),
            frame_bytes_max,
            budget: ByteBudget::unbounded(),
        })
    }

    /// Charges the frames of every stream it accepts to `budget` (shared with others).
    pub fn with_budget(mut self, budget: ByteBudget) -> FrameListener {
        self.budget = budget;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr().map_err(io::Error::from)
    }

    /// Accepts the next connection as a bare stream (for a caller that frames it itself).
    pub async fn accept_stream(&self) -> io::Result<TcpStream> {
        self.listener.accept().await.map_err(io::Error::from)
    }

    /// Accepts the next connection.
    pub async fn accept(&self) -> io::Result<FrameStream> {
        let s = self.listener.accept().await.map_err(io::Error::from)?;
        Ok(FrameStream::with_budget(
            s,
            &self.label,
            self.frame_bytes_max,
            self.budget.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;
    use ringleader_wire::msg::client::{ClientOp, ClientRequest};
    use ringleader_wire::{Encoder, Keyring, MessageRef};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A reader that hands out at most `chunk` bytes per read, then EOF.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            out: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = out.len().min(self.chunk).min(self.bytes.len() - self.at);
            let at = self.at;
            out[..n].copy_from_slice(&self.bytes[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    fn put_frame(value_len: usize, label: &[u8], key: Option<&Keyring>) -> Vec<u8> {
        let req = ClientRequest {
            id: 7,
            op: ClientOp::Put {
                key: b"k".to_vec(),
                value: vec![0xab; value_len],
            },
        };
        Encoder::new(label)
            .encode(&req, key, 32 << 20)
            .expect("encodes")
            .to_vec()
    }

    const MAX: usize = 16 << 20;

    fn read(
        bytes: Vec<u8>,
        chunk: usize,
        budget: &ByteBudget,
        label: &[u8],
        keyring: bool,
    ) -> (Result<bool, StreamError>, FrameBuf) {
        let mut r = Trickle {
            bytes,
            at: 0,
            chunk,
        };
        let mut buf = FrameBuf::new(budget.clone());
        let dec = Decoder::new(label, MAX - HEADER_LEN);
        let got = block_on(read_frame(
            &mut r,
            &mut buf,
            None,
            &dec,
            MAX - HEADER_LEN,
            keyring,
        ));
        (got, buf)
    }

    /// A header announcing a 16 MiB body followed by 16 bytes holds about one growth step,
    /// not 16 MiB; the budget is released when the buffer goes.
    #[test]
    fn an_announced_body_costs_only_what_arrives() {
        let whole = put_frame(MAX - 4096, b"", None);
        let teaser = whole[..HEADER_LEN + 16].to_vec();
        let budget = ByteBudget::unbounded();
        let (got, buf) = read(teaser, 4096, &budget, b"", false);
        assert!(
            matches!(got, Err(StreamError::Io(ref e)) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
        assert!(
            budget.held() <= FRAME_GROWTH_BYTES_MIN,
            "held {} bytes for 48 received",
            budget.held()
        );
        drop(buf);
        assert_eq!(budget.held(), 0);
    }

    /// A stream that received a frame larger than `FRAME_RETAINED_BYTES_MAX` gives that
    /// charge back before it reads the next frame, and still reads the next frame whole.
    #[test]
    fn a_large_frame_is_given_back_before_the_next_one() {
        let big = put_frame(8 << 20, b"", None);
        let small = put_frame(100, b"", None);
        let budget = ByteBudget::new(12 << 20);
        let mut r = Trickle {
            bytes: [big.clone(), small.clone()].concat(),
            at: 0,
            chunk: 1 << 20,
        };
        let mut buf = FrameBuf::new(budget.clone());
        let dec = Decoder::new(b"", MAX - HEADER_LEN);
        let next = |r: &mut Trickle, buf: &mut FrameBuf| {
            block_on(read_frame(r, buf, None, &dec, MAX - HEADER_LEN, false)).expect("frame")
        };
        assert!(next(&mut r, &mut buf));
        assert_eq!(&buf.bytes_mut()[..big.len()], &big[..]);
        assert!(budget.held() >= big.len(), "held {}", budget.held());
        assert!(next(&mut r, &mut buf));
        assert_eq!(&buf.bytes_mut()[..small.len()], &small[..]);
        assert!(
            budget.held() <= FRAME_RETAINED_BYTES_MAX,
            "held {} bytes between frames",
            budget.held()
        );
        assert_eq!(budget.held(), buf.charged);
        drop(buf);
        assert_eq!(budget.held(), 0);
    }

    /// A frame of another cluster, or unsealed where a keyring is expected, is refused on
    /// its header: nothing of its body is read or held.
    #[test]
    fn header_checks_come_before_the_body() {
        let budget = ByteBudget::unbounded();
        let (got, _buf) = read(
            put_frame(1 << 20, b"other", None),
            1 << 20,
            &budget,
            b"ours",
            false,
        );
        assert!(matches!(
            got,
            Err(StreamError::Decode(DecodeError::WrongLabel { .. }))
        ));
        assert_eq!(budget.held(), HEADER_LEN);
        let (got, _buf) = read(
            put_frame(1 << 20, b"ours", None),
            1 << 20,
            &budget,
            b"ours",
            true,
        );
        assert!(matches!(
            got,
            Err(StreamError::Decode(DecodeError::Unencrypted))
        ));
        let key = Keyring::new([7; 32]);
        let (got, _buf) = read(
            put_frame(100, b"ours", Some(&key)),
            1 << 20,
            &budget,
            b"ours",
            false,
        );
        assert!(matches!(
            got,
            Err(StreamError::Decode(DecodeError::EncryptedWithoutKeyring))
        ));
    }

    /// Frames held across streams stay within the shared budget: the stream that would
    /// pass it is refused, and a frame that fits is read whole through the growth steps.
    #[test]
    fn the_budget_bounds_frames_across_streams_and_whole_frames_decode() {
        let budget = ByteBudget::new(1 << 20);
        let big = put_frame(900 << 10, b"", None);
        let (got, first) = read(big.clone(), 1500, &budget, b"", false);
        assert!(got.unwrap());
        let held = budget.held();
        assert!(held >= big.len() && held <= budget.max(), "held {held}");
        // A second stream while the first still holds its frame: over the budget.
        let (got, second) = read(big.clone(), 1500, &budget, b"", false);
        assert!(matches!(got, Err(StreamError::OverBudget { .. })));
        drop(second);
        assert_eq!(budget.held(), held);
        // The first frame is whole and decodes.
        let mut first = first;
        let dec = Decoder::new(b"", MAX - HEADER_LEN);
        let f = dec.decode(first.bytes_mut(), None).expect("decodes");
        match f.messages().next() {
            Some(Ok(MessageRef::ClientRequest(r))) => assert_eq!(r.id, 7),
            other => panic!("unexpected {other:?}"),
        }
        drop(first);
        assert_eq!(budget.held(), 0);
        // A clean end between frames is not an error.
        let (got, _b) = read(Vec::new(), 10, &budget, b"", false);
        assert!(!got.unwrap());
    }
}

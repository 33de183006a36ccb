//! TCP streams carrying wire frames back to back (push-pull state, the TCP fallback probe,
//! Raft append batches), on glommio's `TcpStream`.
//!
//! A frame is self-delimiting: its 32-byte header carries the body length, so a reader
//! reads the header, checks it with [`Header::parse`] against the stream limit (before
//! reserving anything), reads exactly the body into a reusable 16-byte-aligned buffer, and
//! decodes in place. A bad frame ends the stream: after it the framing cannot be trusted.
//!
//! This module never allocates more than `frame_bytes_max` for one frame, and never panics
//! on received bytes.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
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
}

/// A TCP connection exchanging wire frames.
pub struct FrameStream {
    stream: TcpStream,
    buf: AlignedVec<16>,
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

    /// Wraps an accepted or connected stream.
    pub fn new(stream: TcpStream, label: &[u8], frame_bytes_max: usize) -> FrameStream {
        let _ = stream.set_nodelay(true);
        let frame_bytes_max = frame_bytes_max.max(HEADER_LEN);
        FrameStream {
            stream,
            buf: AlignedVec::with_capacity(4096.min(frame_bytes_max)),
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
        self.buf.clear();
        self.buf.resize(HEADER_LEN, 0);
        let mut got = 0;
        while got < HEADER_LEN {
            let n = self.stream.read(&mut self.buf[got..HEADER_LEN]).await?;
            if n == 0 {
                if got == 0 {
                    return Ok(None);
                }
                return Err(StreamError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            got += n;
        }
        let header = Header::parse(&self.buf[..HEADER_LEN], self.frame_bytes_max - HEADER_LEN)
            .map_err(StreamError::Decode)?;
        let len = header.frame_len();
        self.buf.resize(len, 0);
        self.stream
            .read_exact(&mut self.buf[HEADER_LEN..len])
            .await?;
        self.decoder
            .decode(&mut self.buf[..len], keyring)
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
        })
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
        Ok(FrameStream::new(s, &self.label, self.frame_bytes_max))
    }
}

//! Client frames over blocking std streams: reading one frame at a time from any
//! [`Read`], and packing many messages into batch frames.
//!
//! The reader checks the header against [`CLIENT_FRAME_BYTES_MAX`] before it reserves
//! anything, reads exactly the body, and decodes in place; it never allocates more than
//! one frame's worth and never panics on what it reads. A frame that does not decode ends
//! the stream: after it, the framing cannot be trusted.

use std::io::{self, Read};

use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::msg::client::{
    CLIENT_FRAME_BYTES_MAX, CLIENT_LABEL, client_decoder, parse_client_header,
};
use ringleader_wire::{DecodeError, Decoder, EncodeError, Encoder, Frame, WireMessage};
use rkyv::util::AlignedVec;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed, or ended in the middle of a frame.
    #[error("stream I/O: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a client frame; the stream must be dropped.
    #[error("bad frame: {0}")]
    Decode(DecodeError),
}

/// Reads client frames from a blocking stream into one reusable, 16-byte-aligned buffer.
pub struct FrameReader {
    buf: AlignedVec<16>,
    decoder: Decoder,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new()
    }
}

impl FrameReader {
    /// A reader with an empty buffer (it grows to the largest frame read).
    pub fn new() -> FrameReader {
        FrameReader {
            buf: AlignedVec::new(),
            decoder: client_decoder(),
        }
    }

    /// Reads the next frame. `Ok(None)` when the stream ended cleanly between frames.
    pub fn read<R: Read>(&mut self, stream: &mut R) -> Result<Option<Frame<'_>>, FrameError> {
        self.buf.clear();
        self.buf.resize(HEADER_LEN, 0);
        let mut got = 0;
        while got < HEADER_LEN {
            match stream.read(&mut self.buf[got..HEADER_LEN]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
        let header = parse_client_header(&self.buf[..HEADER_LEN]).map_err(FrameError::Decode)?;
        let len = header.frame_len();
        self.buf.resize(len, 0);
        stream.read_exact(&mut self.buf[HEADER_LEN..len])?;
        self.decoder
            .decode(&mut self.buf[..len], None)
            .map(Some)
            .map_err(FrameError::Decode)
    }
}

/// A new encoder for client frames (no label).
pub fn client_encoder() -> Encoder {
    Encoder::new(CLIENT_LABEL)
}

/// Appends `msgs` to `out` as batch frames of at most [`CLIENT_FRAME_BYTES_MAX`] bytes, in
/// order, as few frames as fit. A message too large for a frame of its own is left out and
/// handed to `too_large`. Returns how many messages went into `out`.
pub fn pack_frames<'m, M: WireMessage + 'm>(
    enc: &mut Encoder,
    msgs: impl IntoIterator<Item = &'m M>,
    out: &mut Vec<u8>,
    mut too_large: impl FnMut(&'m M),
) -> Result<usize, EncodeError> {
    let mut msgs = msgs.into_iter().peekable();
    let mut packed = 0;
    while msgs.peek().is_some() {
        let mut batch = enc.batch(None, CLIENT_FRAME_BYTES_MAX);
        while let Some(&m) = msgs.peek() {
            if batch.push(m)? {
                packed += 1;
            } else if batch.is_empty() {
                too_large(m);
            } else {
                break; // the frame is full: this message starts the next one
            }
            msgs.next();
        }
        if !batch.is_empty() {
            out.extend_from_slice(batch.finish()?);
        }
    }
    Ok(packed)
}

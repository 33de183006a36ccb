//! Frames: a fixed 32-byte little-endian header, then the body.
//!
//! ```text
//! offset size field
//!  0     4    magic  "RLDR"
//!  4     4    crc32c      over everything after it: frame[8..]
//!  8     1    version (1)
//!  9     1    kind    message kind code (0 in a batch frame)
//! 10     1    flags   bit 0 encrypted, bit 1 batch; others must be zero
//! 11     1    reserved, zero
//! 12     4    label_hash  CRC32C of the cluster label (0 without a label)
//! 16     4    body_len    bytes after the header
//! 20    12    reserved, zero
//! ```
//!
//! The checksum sits right after the magic so that it covers one contiguous range: a
//! single CRC32C call per frame (a split range would take three, a large share of a small
//! frame's decode: see `docs/BENCHMARKS.md`). The magic is compared exactly, so it needs
//! no checksum. Sealed frames authenticate `frame[8..24]` and the cluster label (see
//! [`crate::keyring`]).
//!
//! A plain body is the rkyv archive (single frame) or a sequence of batch items. An
//! encrypted body is `nonce(12) ++ zero(4) ++ ciphertext ++ tag(16)`, so the plaintext
//! starts 48 bytes into the frame and decrypts in place, 16-byte aligned.
//!
//! A batch item is `kind(1) ++ zero(1) ++ zero(2) ++ len(4 LE) ++ archive(len)`, padded with
//! zeros to a multiple of [`ITEM_ALIGN`]. Every archived message type has an alignment of at
//! most [`ITEM_ALIGN`] (checked at compile time), so each archive can be read in place.
//!
//! This module must never panic on received bytes and never allocate while decoding.

use rkyv::util::AlignedVec;

use crate::error::{DecodeError, EncodeError};
use crate::keyring::{Keyring, NONCE_LEN, TAG_LEN};
use crate::msg::{Message, MessageKind, MessageRef, WireMessage};

/// Frame magic, "RLDR" read as little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RLDR");
/// The wire version this build speaks.
pub const VERSION: u8 = 1;
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 32;
/// Extra bytes before the plaintext of an encrypted body (nonce and padding).
pub const SEAL_PREFIX_LEN: usize = 16;
/// Alignment of every archive in a batch, and the padding unit of batch items.
pub const ITEM_ALIGN: usize = 8;
/// Size of a batch item header.
pub const ITEM_HEADER_LEN: usize = 8;
/// Flag: the body is encrypted.
pub const FLAG_ENCRYPTED: u8 = 1;
/// Flag: the body is a batch of items.
pub const FLAG_BATCH: u8 = 2;
const KNOWN_FLAGS: u8 = FLAG_ENCRYPTED | FLAG_BATCH;

/// Default limit of a datagram frame, as memberlist's UDP buffer size.
pub const DATAGRAM_BYTES_MAX_DEFAULT: usize = 1400;
/// Default limit of a stream frame (push-pull state, Raft append batches, snapshot chunks).
pub const STREAM_FRAME_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// The CRC32C of a cluster label, as carried in every header (0 for no label).
pub fn label_hash(label: &[u8]) -> u32 {
    if label.is_empty() {
        0
    } else {
        crc32c::crc32c(label)
    }
}

/// A writer that appends an rkyv archive to a frame buffer, with positions relative to
/// where the archive starts (so relative pointers and alignment padding come out right
/// wherever the archive sits in the frame).
pub struct BodyWriter<'a> {
    buf: &'a mut AlignedVec<16>,
    base: usize,
}

impl rkyv::ser::Positional for BodyWriter<'_> {
    fn pos(&self) -> usize {
        self.buf.len() - self.base
    }
}

impl<E> rkyv::ser::Writer<E> for BodyWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// Builds frames into one reusable, 16-byte-aligned buffer: steady state allocates nothing.
pub struct Encoder {
    buf: AlignedVec<16>,
    label: Vec<u8>,
    label_hash: u32,
    nonces: crate::keyring::NonceSource,
}

impl Encoder {
    /// An encoder for frames of the cluster `label` (empty for none).
    pub fn new(label: &[u8]) -> Encoder {
        Encoder {
            buf: AlignedVec::with_capacity(DATAGRAM_BYTES_MAX_DEFAULT + 64),
            label: label.to_vec(),
            label_hash: label_hash(label),
            nonces: crate::keyring::NonceSource::from_os(),
        }
    }

    /// One message in one frame of at most `limit` bytes, sealed when `keyring` is given.
    pub fn encode<M: WireMessage>(
        &mut self,
        msg: &M,
        keyring: Option<&Keyring>,
        limit: usize,
    ) -> Result<&[u8], EncodeError> {
        self.single(M::KIND, keyring, limit, |w| M::write_archive(msg, w))
    }

    /// Like [`Encoder::encode`], for an owned [`Message`] of any kind.
    pub fn encode_message(
        &mut self,
        msg: &Message,
        keyring: Option<&Keyring>,
        limit: usize,
    ) -> Result<&[u8], EncodeError> {
        self.single(msg.kind(), keyring, limit, |w| msg.write_archive(w))
    }

    /// Encodes a push-pull state borrowed from the sender's tables as a frame of kind
    /// `PushPull`: the same bytes as [`Encoder::encode_message`] of the owned
    /// [`crate::msg::swim::PushPull`], without building it.
    pub fn encode_push_pull(
        &mut self,
        msg: &crate::msg::borrowed::PushPullRef<'_>,
        keyring: Option<&Keyring>,
        limit: usize,
    ) -> Result<&[u8], EncodeError> {
        self.single(crate::MessageKind::PushPull, keyring, limit, |w| {
            msg.write_archive(w)
        })
    }

    /// A frame of one message of `kind`, whose archive `write` puts in the body.
    fn single(
        &mut self,
        kind: crate::MessageKind,
        keyring: Option<&Keyring>,
        limit: usize,
        write: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), EncodeError>,
    ) -> Result<&[u8], EncodeError> {
        let body_start = self.start(keyring.is_some());
        write(&mut BodyWriter {
            buf: &mut self.buf,
            base: body_start,
        })?;
        self.finish(kind as u8, 0, body_start, keyring, limit)
    }

    /// Starts a batch frame of at most `limit` bytes (piggybacking: push until it is full).
    pub fn batch<'e, 'k>(
        &'e mut self,
        keyring: Option<&'k Keyring>,
        limit: usize,
    ) -> Batch<'e, 'k> {
        let body_start = self.start(keyring.is_some());
        Batch {
            enc: self,
            keyring,
            limit,
            body_start,
            count: 0,
        }
    }

    fn start(&mut self, sealed: bool) -> usize {
        self.buf.clear();
        let prefix = HEADER_LEN + if sealed { SEAL_PREFIX_LEN } else { 0 };
        self.buf.resize(prefix, 0);
        prefix
    }

    /// Size of the frame if it were finished now.
    fn frame_len(&self, sealed: bool) -> usize {
        self.buf.len() + if sealed { TAG_LEN } else { 0 }
    }

    fn finish(
        &mut self,
        kind: u8,
        flags: u8,
        body_start: usize,
        keyring: Option<&Keyring>,
        limit: usize,
    ) -> Result<&[u8], EncodeError> {
        let len = self.frame_len(keyring.is_some());
        if len > limit {
            return Err(EncodeError::TooLarge { len, limit });
        }
        let mut flags = flags;
        if keyring.is_some() {
            flags |= FLAG_ENCRYPTED;
        }
        let body_len = u32::try_from(len - HEADER_LEN).map_err(|_| EncodeError::TooLarge {
            len,
            limit: u32::MAX as usize,
        })?;
        let header = &mut self.buf[..HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4..8].fill(0);
        header[8] = VERSION;
        header[9] = kind;
        header[10] = flags;
        header[11] = 0;
        header[12..16].copy_from_slice(&self.label_hash.to_le_bytes());
        header[16..20].copy_from_slice(&body_len.to_le_bytes());
        header[20..32].fill(0);
        if let Some(keyring) = keyring {
            let nonce = self.nonces.next();
            let mut aad = [0u8; 16];
            aad.copy_from_slice(&self.buf[AAD_RANGE]);
            self.buf[HEADER_LEN..HEADER_LEN + NONCE_LEN].copy_from_slice(&nonce);
            let tag = keyring.seal(&nonce, &aad, &self.label, &mut self.buf[body_start..])?;
            self.buf.extend_from_slice(&tag);
        }
        let crc = frame_crc(&self.buf);
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(self.buf.len(), len);
        Ok(&self.buf[..])
    }
}

/// A batch frame being filled. Dropping it without [`Batch::finish`] discards it.
pub struct Batch<'e, 'k> {
    enc: &'e mut Encoder,
    keyring: Option<&'k Keyring>,
    limit: usize,
    body_start: usize,
    count: usize,
}

impl<'e> Batch<'e, '_> {
    /// Appends `msg` if it fits. Returns `Ok(false)`, with the batch unchanged, if not.
    pub fn push<M: WireMessage>(&mut self, msg: &M) -> Result<bool, EncodeError> {
        self.push_with(M::KIND, |w| M::write_archive(msg, w))
    }

    /// Appends an owned [`Message`] of any kind if it fits.
    pub fn push_message(&mut self, msg: &Message) -> Result<bool, EncodeError> {
        self.push_with(msg.kind(), |w| msg.write_archive(w))
    }

    fn push_with(
        &mut self,
        kind: MessageKind,
        write: impl FnOnce(&mut BodyWriter<'_>) -> Result<(), EncodeError>,
    ) -> Result<bool, EncodeError> {
        let sealed = self.keyring.is_some();
        let item_start = self.enc.buf.len();
        debug_assert_eq!(item_start % ITEM_ALIGN, 0);
        self.enc
            .buf
            .extend_from_slice(&[kind as u8, 0, 0, 0, 0, 0, 0, 0]);
        let archive_start = self.enc.buf.len();
        write(&mut BodyWriter {
            buf: &mut self.enc.buf,
            base: archive_start,
        })?;
        let archive_len = self.enc.buf.len() - archive_start;
        let padded = archive_len.next_multiple_of(ITEM_ALIGN);
        self.enc.buf.resize(archive_start + padded, 0);
        let len_ok = u32::try_from(archive_len).ok();
        if self.enc.frame_len(sealed) > self.limit || len_ok.is_none() {
            self.enc.buf.resize(item_start, 0); // shrinks: truncates
            return Ok(false);
        }
        let len = len_ok.unwrap_or_default().to_le_bytes();
        self.enc.buf[item_start + 4..item_start + 8].copy_from_slice(&len);
        self.count += 1;
        Ok(true)
    }

    /// Messages in the batch so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the batch holds no message yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes still free under the limit (an item needs its 8-byte header too).
    pub fn remaining(&self) -> usize {
        self.limit
            .saturating_sub(self.enc.frame_len(self.keyring.is_some()))
    }

    /// Seals and checksums the frame; returns its bytes.
    pub fn finish(self) -> Result<&'e [u8], EncodeError> {
        if self.count == 0 {
            return Err(EncodeError::EmptyBatch);
        }
        let Batch {
            enc,
            keyring,
            limit,
            body_start,
            ..
        } = self;
        enc.finish(0, FLAG_BATCH, body_start, keyring, limit)
    }
}

/// Header bytes that sealed frames authenticate: version to body length, and 4 reserved.
const AAD_RANGE: std::ops::Range<usize> = 8..24;

/// The checksum of a whole frame (everything after the checksum field).
pub fn frame_crc(frame: &[u8]) -> u32 {
    crc32c::crc32c(frame.get(8..).unwrap_or_default())
}

/// What a frame's header says, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message kind code (0 for a batch).
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Cluster label hash.
    pub label_hash: u32,
    /// Bytes after the header.
    pub body_len: usize,
    /// Checksum from the header.
    pub crc: u32,
}

impl Header {
    /// Parses and checks the fixed header: magic, version, reserved bytes, flags and
    /// `body_len <= body_bytes_max`. Stream readers call this on the first 32 bytes to learn
    /// how many more to read.
    pub fn parse(bytes: &[u8], body_bytes_max: usize) -> Result<Header, DecodeError> {
        let Some(h) = bytes.get(..HEADER_LEN) else {
            return Err(DecodeError::Truncated {
                need: HEADER_LEN,
                have: bytes.len(),
            });
        };
        let magic = read_u32(h, 0);
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        if h[8] != VERSION {
            return Err(DecodeError::UnsupportedVersion(h[8]));
        }
        let (kind, flags) = (h[9], h[10]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::MalformedHeader("unknown flags"));
        }
        if h[11] != 0 || h[20..32].iter().any(|&b| b != 0) {
            return Err(DecodeError::MalformedHeader("reserved bytes are not zero"));
        }
        if flags & FLAG_BATCH != 0 && kind != 0 {
            return Err(DecodeError::MalformedHeader(
                "batch frame with a message kind",
            ));
        }
        if flags & FLAG_BATCH == 0 && MessageKind::from_u8(kind).is_none() {
            return Err(DecodeError::UnknownKind(kind));
        }
        let body_len = read_u32(h, 16) as usize;
        if body_len > body_bytes_max {
            return Err(DecodeError::Oversized {
                len: body_len,
                limit: body_bytes_max,
            });
        }
        Ok(Header {
            kind,
            flags,
            label_hash: read_u32(h, 12),
            body_len,
            crc: read_u32(h, 4),
        })
    }

    /// Total frame length, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

/// Checks frames from the network: limits, checksum, cluster label, keyring.
#[derive(Debug, Clone)]
pub struct Decoder {
    label: Vec<u8>,
    label_hash: u32,
    body_bytes_max: usize,
}

impl Decoder {
    /// A decoder for the cluster `label` that accepts bodies up to `body_bytes_max` bytes.
    pub fn new(label: &[u8], body_bytes_max: usize) -> Decoder {
        Decoder {
            label: label.to_vec(),
            label_hash: label_hash(label),
            body_bytes_max,
        }
    }

    /// The checks a stream reader can make on a header alone, before it reads (and holds)
    /// the body: the cluster label, and whether the frame is sealed when a keyring is
    /// expected (and not sealed when none is). [`Decoder::decode`] makes them again.
    pub fn check_header(&self, header: &Header, keyring: bool) -> Result<(), DecodeError> {
        if header.label_hash != self.label_hash {
            return Err(DecodeError::WrongLabel {
                got: header.label_hash,
                expected: self.label_hash,
            });
        }
        match (header.flags & FLAG_ENCRYPTED != 0, keyring) {
            (true, false) => Err(DecodeError::EncryptedWithoutKeyring),
            (false, true) => Err(DecodeError::Unencrypted),
            _ => Ok(()),
        }
    }

    /// Checks the frame that fills `buf` exactly (one datagram, or one stream frame) and,
    /// if `keyring` is given, authenticates and decrypts it in place.
    ///
    /// `buf` should start 16-byte aligned so that archives can be read in place; a
    /// misaligned buffer makes every message fail validation rather than misread.
    pub fn decode<'a>(
        &self,
        buf: &'a mut [u8],
        keyring: Option<&Keyring>,
    ) -> Result<Frame<'a>, DecodeError> {
        let header = Header::parse(buf, self.body_bytes_max)?;
        let frame_len = header.frame_len();
        if buf.len() < frame_len {
            return Err(DecodeError::Truncated {
                need: frame_len,
                have: buf.len(),
            });
        }
        if buf.len() > frame_len {
            return Err(DecodeError::Trailing {
                frame: frame_len,
                have: buf.len(),
            });
        }
        let actual = frame_crc(buf);
        if actual != header.crc {
            return Err(DecodeError::Checksum {
                expected: header.crc,
                actual,
            });
        }
        if header.label_hash != self.label_hash {
            return Err(DecodeError::WrongLabel {
                got: header.label_hash,
                expected: self.label_hash,
            });
        }
        let encrypted = header.flags & FLAG_ENCRYPTED != 0;
        let (body, key_index) = match (encrypted, keyring) {
            (false, None) => (&buf[HEADER_LEN..], None),
            (true, None) => return Err(DecodeError::EncryptedWithoutKeyring),
            (false, Some(_)) => return Err(DecodeError::Unencrypted),
            (true, Some(keyring)) => {
                let need = HEADER_LEN + SEAL_PREFIX_LEN + TAG_LEN;
                if frame_len < need {
                    return Err(DecodeError::Truncated {
                        need,
                        have: frame_len,
                    });
                }
                if buf[HEADER_LEN + NONCE_LEN..HEADER_LEN + SEAL_PREFIX_LEN]
                    .iter()
                    .any(|&b| b != 0)
                {
                    return Err(DecodeError::MalformedHeader("seal padding is not zero"));
                }
                let mut aad = [0u8; 16];
                aad.copy_from_slice(&buf[AAD_RANGE]);
                let mut nonce = [0u8; NONCE_LEN];
                nonce.copy_from_slice(&buf[HEADER_LEN..HEADER_LEN + NONCE_LEN]);
                let (rest, tag) = buf.split_at_mut(frame_len - TAG_LEN);
                let ciphertext = &mut rest[HEADER_LEN + SEAL_PREFIX_LEN..];
                let index = keyring.open(&nonce, &aad, &self.label, ciphertext, tag)?;
                (&*ciphertext, Some(index))
            }
        };
        let kind = if header.flags & FLAG_BATCH != 0 {
            FrameKind::Batch
        } else {
            // Header::parse checked the code.
            FrameKind::Single(
                MessageKind::from_u8(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?,
            )
        };
        Ok(Frame {
            kind,
            body,
            key_index,
        })
    }
}

/// Whether a frame carries one message or a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// One message of this kind; the body is its archive.
    Single(MessageKind),
    /// A batch of items.
    Batch,
}

/// A checked (and, if sealed, authenticated and decrypted) frame, borrowing the buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Single or batch.
    pub kind: FrameKind,
    /// The plaintext body.
    pub body: &'a [u8],
    /// Which key of the keyring opened it (0 = primary), if it was sealed.
    pub key_index: Option<usize>,
}

impl<'a> Frame<'a> {
    /// The messages of the frame, each validated in place when reached. A malformed item
    /// ends the iteration after yielding its error (the rest cannot be located).
    pub fn messages(&self) -> Messages<'a> {
        Messages {
            frame: *self,
            offset: 0,
            done: false,
        }
    }
}

/// Iterator over a frame's messages.
pub struct Messages<'a> {
    frame: Frame<'a>,
    offset: usize,
    done: bool,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<MessageRef<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let body = self.frame.body;
        match self.frame.kind {
            FrameKind::Single(kind) => {
                self.done = true;
                Some(MessageRef::access(kind, body))
            }
            FrameKind::Batch => {
                if self.offset >= body.len() {
                    self.done = true;
                    return None;
                }
                let item = next_item(body, self.offset);
                match item {
                    Ok((kind, archive, next)) => {
                        self.offset = next;
                        Some(MessageRef::access(kind, archive))
                    }
                    Err(e) => {
                        self.done = true;
                        Some(Err(e))
                    }
                }
            }
        }
    }
}

fn next_item(body: &[u8], offset: usize) -> Result<(MessageKind, &[u8], usize), DecodeError> {
    let bad = DecodeError::MalformedBatch { offset };
    let h = body.get(offset..offset + ITEM_HEADER_LEN).ok_or(bad)?;
    if h[1] != 0 || h[2] != 0 || h[3] != 0 {
        return Err(bad);
    }
    let kind = MessageKind::from_u8(h[0]).ok_or(DecodeError::UnknownKind(h[0]))?;
    let len = read_u32(h, 4) as usize;
    let start = offset + ITEM_HEADER_LEN;
    let end = start.checked_add(len).ok_or(bad)?;
    let archive = body.get(start..end).ok_or(bad)?;
    let next = end.checked_next_multiple_of(ITEM_ALIGN).ok_or(bad)?;
    let padding = body.get(end..next).ok_or(bad)?;
    if padding.iter().any(|&b| b != 0) {
        return Err(bad);
    }
    Ok((kind, archive, next))
}

//! Typed errors of encoding and decoding. Every decode failure names what was wrong, so a
//! receiver can count drops by cause.

use crate::msg::MessageKind;

/// Why a frame could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// rkyv could not serialize the message.
    #[error("could not serialize a {0:?} message")]
    Serialize(MessageKind),
    /// The frame would exceed the configured limit.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size the frame would have had.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A batch frame was finished with no message in it.
    #[error("a batch frame needs at least one message")]
    EmptyBatch,
    /// Encryption failed (the keyring has no primary key, or the cipher refused).
    #[error("encryption failed: {0}")]
    Seal(&'static str),
}

/// Why received bytes were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than a frame header, or than the header says follow.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// More bytes than the header says (datagrams must hold exactly one frame).
    #[error("trailing bytes: frame is {frame} bytes, datagram has {have}")]
    Trailing {
        /// Frame length.
        frame: usize,
        /// Bytes present.
        have: usize,
    },
    /// Not a Ringleader frame.
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    /// A protocol version this build does not speak.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// A header field that must be zero is not, or flags this build does not know.
    #[error("malformed header: {0}")]
    MalformedHeader(&'static str),
    /// The body length exceeds the limit for this transport.
    #[error("body of {len} bytes exceeds the limit of {limit} bytes")]
    Oversized {
        /// Length the header claims.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The checksum does not match: corruption in transit.
    #[error("checksum mismatch: header says {expected:#010x}, computed {actual:#010x}")]
    Checksum {
        /// CRC32C in the header.
        expected: u32,
        /// CRC32C of the bytes.
        actual: u32,
    },
    /// The frame belongs to another cluster.
    #[error("cluster label mismatch: frame has {got:#010x}, expected {expected:#010x}")]
    WrongLabel {
        /// Label hash in the frame.
        got: u32,
        /// Our label hash.
        expected: u32,
    },
    /// Unknown message kind code.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The archive failed validation for its kind.
    #[error("invalid archive for a {0:?} message")]
    InvalidArchive(MessageKind),
    /// A batch item header is malformed or runs past the body.
    #[error("malformed batch item at body offset {offset}")]
    MalformedBatch {
        /// Offset of the bad item in the body.
        offset: usize,
    },
    /// The frame is encrypted and no keyring is configured.
    #[error("frame is encrypted but no keyring is configured")]
    EncryptedWithoutKeyring,
    /// A keyring is configured and the frame is not encrypted.
    #[error("frame is not encrypted but this member requires encryption")]
    Unencrypted,
    /// No key in the keyring authenticates the frame.
    #[error("no key in the keyring authenticates this frame (tried {tried})")]
    NoKeyAuthenticates {
        /// How many keys were tried.
        tried: usize,
    },
}

impl DecodeError {
    /// A short, stable name for counters (`drops{cause=...}`).
    pub fn cause(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::Trailing { .. } => "trailing",
            DecodeError::BadMagic(_) => "bad_magic",
            DecodeError::UnsupportedVersion(_) => "version",
            DecodeError::MalformedHeader(_) => "malformed_header",
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::Checksum { .. } => "checksum",
            DecodeError::WrongLabel { .. } => "label",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::InvalidArchive(_) => "invalid_archive",
            DecodeError::MalformedBatch { .. } => "malformed_batch",
            DecodeError::EncryptedWithoutKeyring => "encrypted_without_keyring",
            DecodeError::Unencrypted => "unencrypted",
            DecodeError::NoKeyAuthenticates { .. } => "no_key",
        }
    }
}

//! Ringleader's bytes on the network and on disk.
//!
//! - [`msg`]: every message, as rkyv types, and the registry of message kinds.
//! - [`frame`]: the frame header, batch frames (piggybacking), checksums, and the
//!   [`frame::Decoder`] that checks untrusted bytes and reads archives in place.
//! - [`keyring`]: AES-256-GCM with key rotation.
//!
//! Every byte that arrives from the network is untrusted: decoding never panics, never
//! allocates, and never reads an archive that has not been validated (and, with a keyring,
//! authenticated).
#![warn(missing_docs)]

pub mod error;
pub mod frame;
pub mod keyring;
pub mod msg;

pub use error::{DecodeError, EncodeError};
pub use frame::{Batch, Decoder, Encoder, Frame, FrameKind, Header};
pub use keyring::{Keyring, KeyringError};
pub use msg::{Message, MessageKind, MessageRef, WireMessage};

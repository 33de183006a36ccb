//! UDP on an io_uring ring owned by one shard.
//!
//! Receive: every socket has one multishot `recvmsg` in flight that picks buffers from the
//! shard's provided buffer ring (shared by all sockets of the shard), so thousands of
//! member sockets cost one SQE each, not one buffer each. A completion names the buffer;
//! the payload (16-byte aligned, see [`super::bufring`]) goes through
//! [`ringleader_wire::Decoder::decode`] and every message is validated in place before the
//! handler sees any of them; a datagram that fails anywhere is counted by cause and dropped
//! whole.
//!
//! Send: a frame is copied into a send slot (bounded, [`UdpConfig::send_slots`]) and queued
//! as an `IORING_OP_SEND` with a destination address; SQEs are submitted in batches, so one
//! `io_uring_enter` carries many datagrams. A slot is reused once the kernel has consumed
//! its SQE: the ring is set up so that every send is issued, and done with the slot, inside
//! the `io_uring_enter` that consumes it (the property and its checks are in `send`).
//!
//! This module must never panic on received bytes, never free memory the kernel may still
//! use, and never block except in [`UdpRing::close`] (bounded).
//!
//! The code follows its seams, one file each:
//! - `config`: [`UdpConfig`], every bound of a ring, and its checks;
//! - `ring`: a [`UdpRing`]'s life: set-up, sockets, wake-up eventfds, close;
//! - `send`: send slots, GSO runs and the [`Sender`] that fills them;
//! - `poll`: submitting queued entries and reaping completions ([`UdpRing::poll`]);
//! - `recv`: one received buffer, parsed, decoded and validated before the [`UdpHandler`]
//!   sees it;
//! - `park`: sleeping inside the ring ([`RingParker`]);
//! - `spin`: busy-polling before a park ([`UdpRing::spin_adaptive`]);
//! - `sockaddr`: socket addresses to and from the kernel's bytes.

mod config;
mod park;
mod poll;
mod recv;
mod ring;
mod send;
mod sockaddr;
mod spin;

use std::io;
use std::net::SocketAddr;

use ringleader_wire::{Frame, MessageRef};

pub use config::{RECV_PREFIX_BYTES_MAX, UdpConfig};
pub use park::{Parked, RingParker};
pub use ring::{CloseReport, SocketOptions, UdpRing};
pub use send::{GSO_SEGMENTS_MAX, Sender};

use super::features::MissingFeature;

/// Errors of the UDP ring.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// The kernel lacks a feature the transport needs.
    #[error(transparent)]
    Missing(#[from] MissingFeature),
    /// A config value is out of range.
    #[error("invalid UdpConfig: {0}")]
    Config(&'static str),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// `sockets_max` sockets are open already.
    #[error("this ring already holds its maximum of {0} sockets")]
    TooManySockets(usize),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> UdpError {
    move |source| UdpError::Io { what, source }
}

/// Why a send was refused (nothing was queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Every send slot is in flight; poll to reap completions, then retry or drop.
    #[error("all send slots are in flight")]
    QueueFull,
    /// The frame is larger than `datagram_bytes_max`.
    #[error("datagram of {0} bytes exceeds the configured maximum")]
    TooLarge(usize),
    /// No such socket on this ring.
    #[error("unknown socket")]
    UnknownSocket,
    /// The socket's family cannot reach this address.
    #[error("address family of the destination does not match the socket")]
    FamilyMismatch,
}

/// A socket on a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(pub u32);

/// Receives validated datagrams, and may send from inside the callback.
pub trait UdpHandler {
    /// `frame` decoded (checksum, label, keyring) and every one of `messages` validated in
    /// place; they borrow the receive buffer, which goes back to the kernel on return.
    fn on_datagram(
        &mut self,
        out: &mut Sender<'_, '_>,
        socket: SocketId,
        from: SocketAddr,
        frame: &Frame<'_>,
        messages: &[MessageRef<'_>],
    );
}

/// A handler that drops every datagram (for draining a ring, or a side that only sends).
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl UdpHandler for Discard {
    fn on_datagram(
        &mut self,
        _: &mut Sender<'_, '_>,
        _: SocketId,
        _: SocketAddr,
        _: &Frame<'_>,
        _: &[MessageRef<'_>],
    ) {
    }
}

/// `IORING_ENTER_GETEVENTS` (linux/io_uring.h): also run deferred completions.
const IORING_ENTER_GETEVENTS: u32 = 1;
/// User data: kind in the top 4 bits; a send's use generation in the next 4 (see
/// `send::UseTrack`); the slot, train, socket or eventfd index in the low 32.
const KIND_SHIFT: u32 = 60;
const GEN_SHIFT: u32 = 56;
const GEN_MASK: u64 = 0xf;
const KIND_RECV: u64 = 1;
const KIND_SEND: u64 = 2;
/// A GSO send of several datagrams; the index names its train record.
const KIND_TRAIN: u64 = 5;
const KIND_CANCEL: u64 = 3;
/// A multishot poll of a wake-up eventfd ([`UdpRing::wake_on`]).
const KIND_WAKE: u64 = 4;
/// `IORING_ENTER_EXT_ARG` (linux/io_uring.h, 5.11): the argument is an
/// `io_uring_getevents_arg` carrying a timeout.
const IORING_ENTER_EXT_ARG: u32 = 1 << 3;
/// Wake-up eventfds one ring polls at most.
const WAKES_MAX: usize = 16;
const SLOT_INDEX_MASK: u64 = 0xffff_ffff;

fn user_data(kind: u64, index: u32) -> u64 {
    (kind << KIND_SHIFT) | index as u64
}

/// A send's user data: kind, use generation (4 bits), datagrams (8 bits), payload bytes
/// (16 bits), slot or train.
fn send_user_data(kind: u64, index: u32, generation: u8, datagrams: usize, bytes: usize) -> u64 {
    debug_assert!(datagrams <= 255 && bytes <= 0xffff);
    user_data(kind, index)
        | ((generation as u64 & GEN_MASK) << GEN_SHIFT)
        | ((datagrams as u64 & 0xff) << 48)
        | ((bytes as u64 & 0xffff) << 32)
}

/// The use generation a send's user data carries.
fn send_gen(ud: u64) -> u8 {
    ((ud >> GEN_SHIFT) & GEN_MASK) as u8
}

/// Datagrams and payload bytes a send's user data carries.
fn send_size(ud: u64) -> (u64, u64) {
    ((ud >> 48) & 0xff, (ud >> 32) & 0xffff)
}

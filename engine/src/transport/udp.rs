//! UDP on an io_uring ring owned by one shard.
//!
//! Receive: every socket has one multishot `recvmsg` in flight that picks buffers from the
//! shard's provided buffer ring (shared by all sockets of the shard), so thousands of
//! member sockets cost one SQE each, not one buffer each. A completion names the buffer;
//! the payload (16-byte aligned, see [`super::bufring`]) goes through
//! [`Decoder::decode`] and every message is validated in place before the handler sees
//! any of them; a datagram that fails anywhere is counted by cause and dropped whole.
//!
//! Send: a frame is copied into a send slot (bounded, [`UdpConfig::send_slots`]) and
//! queued as an `IORING_OP_SEND` with a destination address; SQEs are submitted in
//! batches, so one `io_uring_enter` carries many datagrams.
//!
//! This module must never panic on received bytes, never free memory the kernel may still
//! use, and never block except in [`UdpRing::close`] (bounded).

use std::cell::Cell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, Submitter, cqueue, opcode, squeue};
use ringleader_wire::frame::{DATAGRAM_BYTES_MAX_DEFAULT, HEADER_LEN};
use ringleader_wire::{Decoder, Frame, Keyring, MessageRef};
use socket2::{Domain, Protocol, Socket, Type};

use super::bufring::BufRing;
use super::counters::UdpCounters;
use super::eventfd::EventFd;
use super::features::{self, Features, MissingFeature};

/// Bounds and sizes of one shard's UDP ring. Every queue here is bounded by a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Completion queue entries; at least `recv_buffers + send_slots` so the queue cannot
    /// overflow between two polls.
    pub cq_entries: u32,
    /// Receive buffers in the provided buffer ring (power of two).
    pub recv_buffers: u16,
    /// Bytes per receive buffer (multiple of 16, at least `datagram_bytes_max + 48`).
    pub recv_buffer_bytes: usize,
    /// Sends in flight at most; beyond it [`Sender::send`] refuses with `QueueFull`.
    /// (Sends are done once the kernel has taken their SQEs, so slots come back at every
    /// submit.)
    pub send_slots: usize,
    /// Largest datagram sent or accepted.
    pub datagram_bytes_max: usize,
    /// SO_RCVBUF / SO_SNDBUF asked for on every socket (the kernel caps at
    /// net.core.rmem_max / wmem_max).
    pub socket_buffer_bytes: usize,
    /// Sockets on this ring at most.
    pub sockets_max: usize,
    /// Queued SQEs that trigger a submit on their own.
    pub submit_batch: usize,
    /// How long [`UdpRing::close`] waits for the kernel to finish in-flight requests
    /// before leaking their memory instead of freeing it.
    pub close_timeout_ms: u64,
    /// Datagrams one GSO send (`UDP_SEGMENT`) may carry: consecutive sends from one socket
    /// to one peer of one size go down the stack as one buffer, and the kernel splits them
    /// back into separate datagrams. 0 or 1 sends every datagram on its own; at most 64.
    /// Ignored where the kernel lacks UDP GSO ([`Features::udp_gso`]).
    pub gso_segments_max: usize,
    /// Longest busy-poll of [`UdpRing::spin_adaptive`] before the shard parks, in µs; 0
    /// never spins.
    pub spin_us_max: u64,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            sq_entries: 512,
            cq_entries: 8192,
            recv_buffers: 2048,
            recv_buffer_bytes: 2048,
            send_slots: 1024,
            datagram_bytes_max: DATAGRAM_BYTES_MAX_DEFAULT,
            socket_buffer_bytes: 4 << 20,
            sockets_max: 16384,
            submit_batch: 64,
            close_timeout_ms: 2000,
            gso_segments_max: GSO_SEGMENTS_MAX,
            spin_us_max: 50,
        }
    }
}

/// Room the kernel's `io_uring_recvmsg_out` and the reserved source address take before
/// the payload, at most (IPv6).
pub const RECV_PREFIX_BYTES_MAX: usize = 16 + 32;

impl UdpConfig {
    /// Bytes of ring memory the kernel pins for this config (accounted to RLIMIT_MEMLOCK
    /// without CAP_IPC_LOCK): the buffer ring entries.
    pub fn locked_bytes(&self) -> u64 {
        (self.recv_buffers as u64 * 16).next_multiple_of(4096)
    }

    fn check(&self) -> Result<(), UdpError> {
        let bad = |what: &'static str| Err(UdpError::Config(what));
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 32768 {
            return bad("recv_buffers must be a power of two <= 32768");
        }
        if self.recv_buffer_bytes % 16 != 0
            || self.recv_buffer_bytes < self.datagram_bytes_max + RECV_PREFIX_BYTES_MAX
        {
            return bad(
                "recv_buffer_bytes must be a multiple of 16 and hold datagram_bytes_max + 48",
            );
        }
        if self.datagram_bytes_max <= HEADER_LEN || self.datagram_bytes_max > 65507 {
            return bad("datagram_bytes_max must be in (32, 65507]");
        }
        if self.send_slots == 0 || self.send_slots > SLOT_INDEX_MASK as usize {
            return bad("send_slots must be in [1, 2^32)");
        }
        if (self.cq_entries as usize) < self.recv_buffers as usize + self.send_slots {
            return bad("cq_entries must be >= recv_buffers + send_slots");
        }
        if self.sockets_max == 0 || self.sockets_max > SLOT_INDEX_MASK as usize {
            return bad("sockets_max must be in [1, 2^32)");
        }
        if self.submit_batch == 0 || self.submit_batch > self.sq_entries as usize {
            return bad("submit_batch must be in [1, sq_entries]");
        }
        if self.spin_us_max > 1000 {
            return bad("spin_us_max must be at most 1000");
        }
        if self.gso_segments_max > GSO_SEGMENTS_MAX {
            return bad("gso_segments_max must be at most 64");
        }
        Ok(())
    }
}

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
const KIND_SHIFT: u32 = 56;
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

/// A send's user data: kind, datagrams (8 bits), payload bytes (16 bits), slot or train.
fn send_user_data(kind: u64, index: u32, datagrams: usize, bytes: usize) -> u64 {
    debug_assert!(datagrams <= 255 && bytes <= 0xffff);
    user_data(kind, index) | ((datagrams as u64 & 0xff) << 48) | ((bytes as u64 & 0xffff) << 32)
}

/// Datagrams and payload bytes a send's user data carries.
fn send_size(ud: u64) -> (u64, u64) {
    ((ud >> 48) & 0xff, (ud >> 32) & 0xffff)
}

struct Sock {
    socket: Socket,
    local: SocketAddr,
    /// The multishot recvmsg template; the kernel reads it at submission. Boxed so its
    /// address is stable while the request that names it is being prepared.
    msghdr: Box<libc::msghdr>,
    /// A multishot receive is in flight (a completion without F_MORE will end it).
    armed: bool,
    /// Removal was asked: do not re-arm; free the slot when the receive has ended.
    closing: bool,
    /// The peer this socket is connected to, if any: sends to it carry no address, so the
    /// kernel reuses the socket's cached route instead of looking one up per datagram.
    connected: Option<SocketAddr>,
}

/// Send slots: bounded, preallocated, each a datagram buffer and a destination address;
/// and the GSO trains that carry runs of them.
struct SendSlots {
    bytes: Box<[u8]>,
    slot_bytes: usize,
    addrs: Box<[libc::sockaddr_storage]>,
    free: Vec<u32>,
    /// Datagrams queued or submitted and not yet completed (a train counts each of its
    /// datagrams).
    in_flight: usize,
    /// Datagrams one GSO send carries at most (the layout of the train records); 0 when
    /// GSO is off.
    segments_max: usize,
    /// Datagrams a run may gather now: `segments_max`, or 1 once GSO is off (also after the
    /// kernel refused a GSO send).
    run_max: usize,
    /// The run of datagrams being gathered for one send (not yet an SQE).
    open: Option<OpenTrain>,
    /// Slots of the open run, in order (capacity `segments_max`, never reallocated).
    open_slots: Vec<u32>,
    /// Submitted GSO sends; each record's memory is read by the kernel until its
    /// completion. `send_slots / 2` of them: every train holds at least two slots.
    trains: Box<[TrainRec]>,
    /// `segments_max` iovecs per train record.
    train_iovs: Box<[libc::iovec]>,
    /// `segments_max` slot indexes per train record.
    train_slots: Box<[u32]>,
    train_free: Vec<u32>,
    /// User data of the sends pushed to the submission queue and not yet released: every
    /// send is `MSG_DONTWAIT` and posts no completion when it succeeds
    /// (`IOSQE_CQE_SKIP_SUCCESS`), so once the kernel has consumed its SQE it is done
    /// (see [`SendSlots::release_issued`]). At most one entry per slot.
    issued: Vec<u64>,
}

/// A run of datagrams from one socket to one peer, all `segment_bytes` long except
/// possibly the last: the kernel sends it as one GSO (`UDP_SEGMENT`) buffer and splits it
/// back into those datagrams.
#[derive(Debug, Clone, Copy)]
struct OpenTrain {
    socket: u32,
    fd: RawFd,
    to: SocketAddr,
    connected: bool,
    segment_bytes: usize,
    /// Bytes of the last datagram (`segment_bytes` unless a shorter one ended the run).
    last_bytes: usize,
    /// A shorter datagram ended the run: nothing more may join.
    ended: bool,
}

/// The kernel's view of one GSO send: a `sendmsg` header, the destination, and the
/// `UDP_SEGMENT` control message. `cmsg` is 8-byte aligned as `cmsghdr` requires.
#[repr(C)]
struct TrainRec {
    msghdr: libc::msghdr,
    addr: libc::sockaddr_storage,
    cmsg: [u64; 4],
    count: u32,
}

/// Bytes of a GSO send at most (payload; the IP length field caps the whole at 65535).
const TRAIN_BYTES_MAX: usize = 60_000;
/// Datagrams per GSO send at most: the kernel's `UDP_MAX_SEGMENTS` (64 before 6.10).
pub const GSO_SEGMENTS_MAX: usize = 64;

impl SendSlots {
    fn new(count: usize, datagram_bytes_max: usize, segments_max: usize) -> SendSlots {
        let slot_bytes = datagram_bytes_max.next_multiple_of(16);
        let segments_max = if segments_max >= 2 {
            segments_max.min(GSO_SEGMENTS_MAX)
        } else {
            0
        };
        let trains = if segments_max == 0 { 0 } else { count / 2 };
        SendSlots {
            bytes: vec![0u8; count * slot_bytes].into_boxed_slice(),
            slot_bytes,
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: vec![unsafe { std::mem::zeroed::<libc::sockaddr_storage>() }; count]
                .into_boxed_slice(),
            free: (0..count as u32).rev().collect(),
            in_flight: 0,
            segments_max,
            run_max: segments_max.max(1),
            open: None,
            open_slots: Vec::with_capacity(segments_max.max(1)),
            // SAFETY: TrainRec is plain old data (pointers, integers); all-zero is valid.
            trains: (0..trains)
                .map(|_| unsafe { std::mem::zeroed::<TrainRec>() })
                .collect(),
            train_iovs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                trains * segments_max
            ]
            .into_boxed_slice(),
            train_slots: vec![0u32; trains * segments_max].into_boxed_slice(),
            train_free: (0..trains as u32).rev().collect(),
            issued: Vec::with_capacity(count),
        }
    }

    /// Releases every issued send. Call only when the submission queue was seen empty
    /// after a sync: the kernel has then consumed every SQE pushed so far, and a
    /// `MSG_DONTWAIT` send is issued inline while its SQE is consumed (it never waits for
    /// socket space: `REQ_F_NOWAIT` fails it with EAGAIN instead of arming a poll), so the
    /// kernel has copied its bytes and reads its slot no more. A failed send still posts
    /// a completion, which only corrects the counters (see `poll_once`).
    fn release_issued(&mut self, counters: &mut UdpCounters) {
        for k in 0..self.issued.len() {
            let ud = self.issued[k];
            let (datagrams, bytes) = send_size(ud);
            let index = (ud & SLOT_INDEX_MASK) as u32;
            if ud >> KIND_SHIFT == KIND_TRAIN {
                self.release_train(index);
            } else {
                self.free.push(index);
                self.in_flight -= 1;
            }
            counters.datagrams_sent += datagrams;
            counters.bytes_sent += bytes;
        }
        self.issued.clear();
    }

    /// Whether a datagram of `len` bytes from `socket` to `to` may join the open run.
    fn joins(&self, socket: u32, to: SocketAddr, len: usize) -> bool {
        let Some(o) = self.open.as_ref() else {
            return false;
        };
        !o.ended
            && o.socket == socket
            && o.to == to
            && len <= o.segment_bytes
            && self.open_slots.len() < self.run_max
            && (self.open_slots.len() + 1) * o.segment_bytes <= TRAIN_BYTES_MAX
    }

    /// Frees the slots of train `t` after its completion; returns how many datagrams it
    /// carried.
    fn release_train(&mut self, t: u32) -> usize {
        let Some(rec) = self.trains.get(t as usize) else {
            return 0;
        };
        let count = rec.count as usize;
        let base = t as usize * self.segments_max;
        for k in 0..count {
            self.free.push(self.train_slots[base + k]);
        }
        self.in_flight -= count;
        self.train_free.push(t);
        count
    }
}

/// Sends datagrams on a ring; handed to [`UdpHandler::on_datagram`] and returned by
/// [`UdpRing::with_sender`].
///
/// Consecutive datagrams from one socket to one peer of the same size (the last of a run
/// may be shorter) are gathered into one GSO send when the kernel offers `UDP_SEGMENT`
/// ([`UdpConfig::gso_segments_max`]): one SQE and one pass down the network stack for the
/// run, while the peer still receives every datagram on its own.
pub struct Sender<'a, 'r> {
    sq: &'a mut squeue::SubmissionQueue<'r>,
    submitter: &'a Submitter<'r>,
    slots: &'a mut SendSlots,
    sockets: &'a [Option<Sock>],
    counters: &'a mut UdpCounters,
    datagram_bytes_max: usize,
    submit_batch: usize,
}

impl Sender<'_, '_> {
    /// Queues `frame` to `to` from `socket`. The bytes are copied; the kernel sees the send
    /// at the next submit (a full batch, or the next poll).
    pub fn send(
        &mut self,
        socket: SocketId,
        to: SocketAddr,
        frame: &[u8],
    ) -> Result<(), SendError> {
        if frame.len() > self.datagram_bytes_max {
            return Err(SendError::TooLarge(frame.len()));
        }
        let Some(Some(sock)) = self.sockets.get(socket.0 as usize) else {
            return Err(SendError::UnknownSocket);
        };
        if sock.local.is_ipv4() != to.is_ipv4() {
            return Err(SendError::FamilyMismatch);
        }
        let joins = self.slots.joins(socket.0, to, frame.len());
        // Room for the SQE that will carry this datagram (or the run it ends): checked now,
        // so that a datagram accepted here always reaches the kernel.
        if !joins && !self.sq_room() {
            self.counters.send_queue_full += 1;
            return Err(SendError::QueueFull);
        }
        let Some(slot) = self.slots.free.pop() else {
            self.counters.send_queue_full += 1;
            return Err(SendError::QueueFull);
        };
        let i = slot as usize;
        let start = i * self.slots.slot_bytes;
        self.slots.bytes[start..start + frame.len()].copy_from_slice(frame);
        self.slots.in_flight += 1;
        self.counters.datagrams_queued += 1;
        let connected = sock.connected == Some(to);
        let fd = sock.socket.as_raw_fd();
        if joins {
            self.slots.open_slots.push(slot);
            if let Some(o) = self.slots.open.as_mut() {
                o.last_bytes = frame.len();
                o.ended = frame.len() < o.segment_bytes;
            }
        } else {
            self.emit_open();
            if !connected {
                write_sockaddr(&mut self.slots.addrs[i], to);
            }
            self.slots.open = Some(OpenTrain {
                socket: socket.0,
                fd,
                to,
                connected,
                segment_bytes: frame.len(),
                last_bytes: frame.len(),
                ended: false,
            });
            self.slots.open_slots.push(slot);
        }
        let full = self.slots.open_slots.len() >= self.slots.run_max
            || self.slots.open.is_some_and(|o| o.ended);
        if full {
            self.emit_open();
        }
        if self.sq.len() >= self.submit_batch {
            self.emit_open();
            // A failed submit leaves the entries queued for the next poll.
            self.submit();
        }
        Ok(())
    }

    /// Send slots free right now.
    pub fn slots_free(&self) -> usize {
        self.slots.free.len()
    }

    /// Makes room for one SQE (submitting if the queue is full); false if there is none.
    fn sq_room(&mut self) -> bool {
        if self.sq.is_full() {
            self.submit();
        }
        !self.sq.is_full()
    }

    /// Submits what is queued, and releases the sends the kernel is done with.
    fn submit(&mut self) {
        let _ = submit(self.sq, self.submitter, self.counters);
        if self.sq.is_empty() {
            self.slots.release_issued(self.counters);
        }
    }

    /// Turns the open run into an SQE: a plain `send` for one datagram, a `sendmsg` with
    /// `UDP_SEGMENT` for several. Called whenever the run ends and before anything enters
    /// the kernel, so a run never outlives the [`Sender`] that gathered it.
    fn emit_open(&mut self) {
        let Some(o) = self.slots.open.take() else {
            return;
        };
        let n = self.slots.open_slots.len();
        debug_assert!(n >= 1);
        if n >= 2
            && let Some(t) = self.slots.train_free.pop()
        {
            let entry = self.train_entry(t, &o);
            if self.push(&entry) {
                self.counters.send_trains += 1;
                let bytes = o.segment_bytes * (n - 1) + o.last_bytes;
                self.slots
                    .issued
                    .push(send_user_data(KIND_TRAIN, t, n, bytes));
            } else {
                self.slots.release_train(t);
                self.counters.send_queue_full += n as u64;
            }
            self.slots.open_slots.clear();
            return;
        }
        // One datagram (or, should the train records run out, each on its own).
        for k in 0..n {
            let slot = self.slots.open_slots[k];
            let len = if k + 1 == n {
                o.last_bytes
            } else {
                o.segment_bytes
            };
            let entry = self.single_entry(slot, len, &o);
            if self.push(&entry) {
                self.slots
                    .issued
                    .push(send_user_data(KIND_SEND, slot, 1, len));
            } else {
                self.slots.free.push(slot);
                self.slots.in_flight -= 1;
                self.counters.send_queue_full += 1;
            }
        }
        self.slots.open_slots.clear();
    }

    fn single_entry(&mut self, slot: u32, len: usize, o: &OpenTrain) -> squeue::Entry {
        let i = slot as usize;
        let start = i * self.slots.slot_bytes;
        let send = opcode::Send::new(Fd(o.fd), self.slots.bytes[start..].as_ptr(), len as u32)
            .flags(libc::MSG_DONTWAIT);
        let send = if o.connected {
            send
        } else {
            if i != self.slots.open_slots[0] as usize {
                write_sockaddr(&mut self.slots.addrs[i], o.to);
            }
            let addr_len = if o.to.is_ipv4() {
                std::mem::size_of::<libc::sockaddr_in>()
            } else {
                std::mem::size_of::<libc::sockaddr_in6>()
            } as libc::socklen_t;
            send.dest_addr((&self.slots.addrs[i] as *const libc::sockaddr_storage).cast())
                .dest_addr_len(addr_len)
        };
        send.build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(send_user_data(KIND_SEND, slot, 1, len))
    }

    /// Fills train record `t` with the open run (its slots move into the record).
    fn train_entry(&mut self, t: u32, o: &OpenTrain) -> squeue::Entry {
        let s = &mut *self.slots;
        let n = s.open_slots.len();
        let base = t as usize * s.segments_max;
        for (k, &slot) in s.open_slots.iter().enumerate() {
            let len = if k + 1 == n {
                o.last_bytes
            } else {
                o.segment_bytes
            };
            s.train_iovs[base + k] = libc::iovec {
                iov_base: s.bytes[slot as usize * s.slot_bytes..].as_mut_ptr().cast(),
                iov_len: len,
            };
            s.train_slots[base + k] = slot;
        }
        let iov = s.train_iovs[base..].as_mut_ptr();
        let rec = &mut s.trains[t as usize];
        rec.count = n as u32;
        // SAFETY: msghdr is plain old data; all-zero is "no name, no iov, no control".
        rec.msghdr = unsafe { std::mem::zeroed() };
        if !o.connected {
            let len = write_sockaddr(&mut rec.addr, o.to);
            rec.msghdr.msg_name = (&mut rec.addr as *mut libc::sockaddr_storage).cast();
            rec.msghdr.msg_namelen = len;
        }
        rec.msghdr.msg_iov = iov;
        rec.msghdr.msg_iovlen = n as _;
        rec.cmsg = [0; 4];
        // SAFETY: CMSG_SPACE of a u16 (24) fits the 32 bytes of `cmsg`, which is 8-byte
        // aligned; CMSG_FIRSTHDR of a header whose control area is that large is non-null.
        unsafe {
            rec.msghdr.msg_control = rec.cmsg.as_mut_ptr().cast();
            rec.msghdr.msg_controllen = libc::CMSG_SPACE(2) as _;
            let c = libc::CMSG_FIRSTHDR(&rec.msghdr);
            (*c).cmsg_level = libc::SOL_UDP;
            (*c).cmsg_type = libc::UDP_SEGMENT;
            (*c).cmsg_len = libc::CMSG_LEN(2) as _;
            libc::CMSG_DATA(c)
                .cast::<u16>()
                .write_unaligned(o.segment_bytes as u16);
        }
        let bytes = o.segment_bytes * (n - 1) + o.last_bytes;
        opcode::SendMsg::new(Fd(o.fd), &rec.msghdr)
            .flags(libc::MSG_DONTWAIT as u32)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(send_user_data(KIND_TRAIN, t, n, bytes))
    }

    /// Pushes one SQE, submitting first if the queue is full.
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        if !self.sq_room() {
            return false;
        }
        // SAFETY: every send SQE points into `slots` (bytes, addrs, train records, iovecs):
        // boxed slices that are never reallocated and live as long as the ring (or are
        // leaked by `close` if the kernel does not finish in time). The slots and the
        // record are off their free lists until the completion is reaped, so nothing
        // overwrites them meanwhile.
        unsafe { self.sq.push(entry) }.is_ok()
    }
}

impl Drop for Sender<'_, '_> {
    fn drop(&mut self) {
        // A run gathered by this sender must reach the submission queue before anyone
        // enters the kernel (or the ring closes).
        self.emit_open();
    }
}

fn submit(
    sq: &mut squeue::SubmissionQueue<'_>,
    submitter: &Submitter<'_>,
    counters: &mut UdpCounters,
) -> io::Result<usize> {
    sq.sync();
    let n = sq.len();
    let r = submitter.submit();
    counters.enter_calls += 1;
    sq.sync();
    if let Ok(done) = r {
        counters.sqes_submitted += done as u64;
    } else if n > 0 && sq.len() < n {
        counters.sqes_submitted += (n - sq.len()) as u64;
    }
    r
}

fn write_sockaddr(storage: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    let sa: socket2::SockAddr = addr.into();
    let len = sa.len();
    // SAFETY: `SockAddr` holds a valid sockaddr of `len <= sizeof(sockaddr_storage)` bytes;
    // both are plain old data and do not overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        );
    }
    len
}

fn parse_sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
    let port = u16::from_be_bytes([*name.get(2)?, *name.get(3)?]);
    match family as i32 {
        libc::AF_INET => {
            let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// An eventfd polled in the ring (multishot `POLL_ADD`).
struct WakeFd {
    fd: Arc<EventFd>,
    /// The poll is in flight (a completion without F_MORE ends it).
    armed: bool,
}

/// State a ring shares with its [`RingParker`] (same thread).
#[derive(Debug, Default)]
struct ParkState {
    /// A wake-up eventfd fired since [`RingParker::take_woken`] last looked.
    woken: Cell<bool>,
    /// Datagrams received by the last [`UdpRing::poll`].
    last_receives: Cell<u32>,
    /// SQEs the ring left queued, not yet submitted: the next park submits them in the
    /// same `io_uring_enter` that waits. Exact: the kernel waits only if it submitted
    /// every entry it was asked to.
    sq_pending: Cell<u32>,
    /// `io_uring_enter` calls the parker made (folded into the ring's counters at poll).
    enters: Cell<u64>,
    /// SQEs the parker submitted (likewise).
    sqes: Cell<u64>,
}

/// How a [`RingParker::park`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// Completions are ready (or deferred work ran): poll the ring.
    Ready,
    /// The timeout passed with fewer completions than asked for (maybe none).
    TimedOut,
    /// A signal interrupted the wait.
    Interrupted,
}

/// Puts the shard's thread to sleep inside its [`UdpRing`] (`io_uring_enter` with
/// `GETEVENTS` and a timeout), so that a datagram, a send completion or a signal of a
/// [`UdpRing::wake_on`] eventfd wakes it in one hop: no eventfd, no glommio reactor in
/// between. Made by [`UdpRing::parker`]; holds its own reference to the ring's file, so it
/// stays valid (and merely waits out its timeout) after the ring is closed. It does not
/// submit: call [`UdpRing::flush`] or [`UdpRing::poll`] before parking. Not `Send`: the
/// ring is single-issuer.
#[derive(Debug)]
pub struct RingParker {
    fd: OwnedFd,
    state: Rc<ParkState>,
    /// Submission queue entries of the ring: the most one park submits.
    sq_entries: u32,
}

/// `struct io_uring_getevents_arg` (linux/io_uring.h).
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    ts: u64,
}

impl RingParker {
    /// Sleeps until at least `min_complete` completions are ready, a wake-up eventfd fires,
    /// or `timeout` passes (`None`: no timeout). Returns at once if completions are
    /// already waiting. Sends the ring left queued (see [`UdpRing::poll`]) are submitted by
    /// the same system call before it sleeps; then it may report `Ready` after a timeout.
    pub fn park(&self, timeout: Option<Duration>, min_complete: u32) -> io::Result<Parked> {
        let to_submit = self.state.sq_pending.replace(0).min(self.sq_entries);
        let ts = timeout.map(|t| {
            let secs = t.as_secs().min(i64::MAX as u64) as i64;
            libc::timespec {
                tv_sec: secs,
                tv_nsec: t.subsec_nanos() as _,
            }
        });
        let arg = GeteventsArg {
            sigmask: 0,
            sigmask_sz: 0,
            min_wait_usec: 0,
            ts: ts
                .as_ref()
                .map_or(0, |t| t as *const libc::timespec as usize as u64),
        };
        // SAFETY: io_uring_enter on a ring file we hold a reference to; with EXT_ARG the
        // kernel reads `arg` (and the timespec it points at), both alive for the call. The
        // SQEs it submits were pushed by the ring (same thread), which keeps their memory
        // alive until it sees them consumed; after the ring is closed nothing is queued.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd.as_raw_fd(),
                to_submit,
                min_complete.max(1),
                IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                &arg as *const GeteventsArg,
                std::mem::size_of::<GeteventsArg>(),
            )
        };
        self.state.enters.set(self.state.enters.get() + 1);
        if r >= 0 {
            if to_submit > 0 {
                // The count submitted (the wait's own result is not reported then).
                self.state.sqes.set(self.state.sqes.get() + r as u64);
            }
            return Ok(Parked::Ready);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ETIME) => Ok(Parked::TimedOut),
            Some(libc::EINTR) => Ok(Parked::Interrupted),
            // The CQ overflowed (EBUSY) or the kernel is short of memory (EAGAIN): there is
            // work to reap, so report ready and let the caller poll.
            Some(libc::EBUSY) | Some(libc::EAGAIN) => Ok(Parked::Ready),
            _ => Err(e),
        }
    }

    /// Submits the sends the ring left queued, if any, without waiting (for a shard about
    /// to do something else before it parks, such as giving glommio a turn).
    pub fn submit_queued(&self) {
        let to_submit = self.state.sq_pending.replace(0).min(self.sq_entries);
        if to_submit == 0 {
            return;
        }
        // SAFETY: as in `park`, without the wait (no argument is read).
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd.as_raw_fd(),
                to_submit,
                0u32,
                0u32,
                std::ptr::null::<libc::c_void>(),
                0usize,
            )
        };
        self.state.enters.set(self.state.enters.get() + 1);
        if r > 0 {
            self.state.sqes.set(self.state.sqes.get() + r as u64);
        }
        // Whatever was not submitted (EBUSY, EAGAIN) the next poll submits.
    }

    /// Whether a wake-up eventfd fired since the last call (and clears the flag). Set when
    /// [`UdpRing::poll`] reaps the poll's completion.
    pub fn take_woken(&self) -> bool {
        self.state.woken.replace(false)
    }

    /// Datagrams received by the ring's last poll (a hint of the load).
    pub fn last_receives(&self) -> u32 {
        self.state.last_receives.get()
    }
}

/// Options of a socket added to a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SocketOptions {
    /// SO_REUSEPORT: several sockets (one per shard) share the address, and the kernel
    /// spreads datagrams over them by flow hash.
    pub reuse_port: bool,
}

/// One shard's UDP transport: an io_uring, a provided buffer ring, sockets and send slots.
/// Not `Send`: it lives and dies on its shard's thread (the ring is single-issuer).
pub struct UdpRing {
    // Field order matters only for documentation: `Drop` tears down explicitly.
    ring: IoUring,
    bufs: Option<BufRing>,
    slots: Option<SendSlots>,
    sockets: Vec<Option<Sock>>,
    free_sockets: Vec<u32>,
    socket_count: usize,
    decoder: Decoder,
    keyring: Option<Keyring>,
    counters: UdpCounters,
    config: UdpConfig,
    features: Features,
    eventfd: Arc<EventFd>,
    /// Reused storage for the validated messages of one datagram (empty between uses).
    refs: Vec<MessageRef<'static>>,
    /// Eventfds polled in this ring so that their signals end a [`RingParker::park`].
    wakes: Vec<WakeFd>,
    /// Shared with the [`RingParker`], if one was made.
    park: Rc<ParkState>,
    /// A [`RingParker`] exists: the shard sleeps in this ring, so the ring's eventfd is
    /// left disabled (nobody waits on it, and signalling it costs the kernel a wake-up).
    parked: bool,
    closed: bool,
    /// Datagrams the last [`UdpRing::poll`] received, and sends it queued (the adaptive
    /// spin's hint that an exchange is in flight).
    last_poll_received: u64,
    last_poll_sent: u64,
    spin: SpinState,
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Spins in a row that did not pay before the adaptive spin backs off.
const SPIN_FAILS_MAX: u32 = 2;
/// Chances to spin the adaptive spin skips at most after spins that did not pay.
const SPIN_BACKOFF_MAX: u32 = 1024;

/// The adaptive spin's state ([`UdpRing::spin_adaptive`]).
#[derive(Debug, Clone, Copy)]
struct SpinState {
    /// Chances left to skip.
    skip: u32,
    /// Chances to skip after the next failed pair.
    backoff: u32,
    /// Spins in a row that did not pay.
    fails: u32,
}

/// What [`UdpRing::close`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReport {
    /// Requests still in flight when the wait gave up (0 on a clean close).
    pub in_flight_left: usize,
    /// Whether buffer memory had to be leaked because the kernel might still use it.
    pub leaked: bool,
}

impl UdpRing {
    /// A ring for frames of cluster `label`, opened with `keyring` when given. Checks the
    /// kernel's features first.
    pub fn new(
        config: UdpConfig,
        label: &[u8],
        keyring: Option<Keyring>,
    ) -> Result<UdpRing, UdpError> {
        config.check()?;
        let features = features::detect()?;
        let mut builder = IoUring::builder();
        builder.setup_cqsize(config.cq_entries).setup_submit_all();
        if features.defer_taskrun {
            builder
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_taskrun_flag();
        } else {
            builder.setup_coop_taskrun().setup_taskrun_flag();
        }
        let ring = builder
            .build(config.sq_entries)
            .map_err(io_err("io_uring_setup"))?;
        let eventfd = Arc::new(EventFd::new().map_err(io_err("eventfd"))?);
        ring.submitter()
            .register_eventfd(eventfd.raw())
            .map_err(io_err("IORING_REGISTER_EVENTFD"))?;
        let bufs = BufRing::new(config.recv_buffers, config.recv_buffer_bytes, 0)
            .map_err(io_err("buffer ring mmap"))?;
        // SAFETY: the ring entries live in `bufs`, which outlives the registration: `Drop`
        // unregisters the group and drops the io_uring before `bufs`.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.ring_addr(), bufs.count(), bufs.bgid(), 0)
                .map_err(|e| {
                    UdpError::Missing(MissingFeature {
                        feature: "provided buffer ring (IORING_REGISTER_PBUF_RING)",
                        since: "5.19",
                        kernel: features.kernel.clone(),
                        detail: e.to_string(),
                    })
                })?;
        }
        let body_max = config.datagram_bytes_max - HEADER_LEN;
        Ok(UdpRing {
            ring,
            bufs: Some(bufs),
            slots: Some(SendSlots::new(
                config.send_slots,
                config.datagram_bytes_max,
                if features.udp_gso {
                    config.gso_segments_max
                } else {
                    0
                },
            )),
            sockets: Vec::new(),
            free_sockets: Vec::new(),
            socket_count: 0,
            decoder: Decoder::new(label, body_max),
            keyring,
            counters: UdpCounters::default(),
            config,
            features,
            eventfd,
            refs: Vec::new(),
            wakes: Vec::new(),
            park: Rc::new(ParkState::default()),
            parked: false,
            closed: false,
            last_poll_received: 0,
            last_poll_sent: 0,
            spin: SpinState {
                skip: 0,
                backoff: 1,
                fails: 0,
            },
            _not_send: std::marker::PhantomData,
        })
    }

    /// The eventfd the kernel signals when completions are ready; the shard awaits it.
    pub fn eventfd(&self) -> &Arc<EventFd> {
        &self.eventfd
    }

    /// What the kernel offers.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// Counters so far.
    pub fn counters(&self) -> &UdpCounters {
        &self.counters
    }

    /// Sockets open on this ring.
    pub fn socket_count(&self) -> usize {
        self.socket_count
    }

    /// The address `socket` is bound to.
    pub fn local_addr(&self, socket: SocketId) -> Option<SocketAddr> {
        self.sockets
            .get(socket.0 as usize)
            .and_then(|s| s.as_ref())
            .map(|s| s.local)
    }

    /// Binds a UDP socket to `addr` (port 0 picks one) and starts receiving on it.
    pub fn bind(&mut self, addr: SocketAddr, options: SocketOptions) -> Result<SocketId, UdpError> {
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(
            domain,
            Type::DGRAM.nonblocking().cloexec(),
            Some(Protocol::UDP),
        )
        .map_err(io_err("socket"))?;
        if options.reuse_port {
            socket
                .set_reuse_port(true)
                .map_err(io_err("SO_REUSEPORT"))?;
        }
        // A request: the kernel caps it at net.core.[rw]mem_max, which is fine.
        let _ = socket.set_recv_buffer_size(self.config.socket_buffer_bytes);
        let _ = socket.set_send_buffer_size(self.config.socket_buffer_bytes);
        socket.bind(&addr.into()).map_err(io_err("bind"))?;
        self.add_socket(socket)
    }

    /// Adds a bound, non-blocking UDP socket and starts receiving on it.
    pub fn add_socket(&mut self, socket: Socket) -> Result<SocketId, UdpError> {
        if self.socket_count >= self.config.sockets_max {
            return Err(UdpError::TooManySockets(self.config.sockets_max));
        }
        let local = socket
            .local_addr()
            .map_err(io_err("getsockname"))?
            .as_socket()
            .ok_or(UdpError::Config("socket is not an inet socket"))?;
        socket.set_nonblocking(true).map_err(io_err("O_NONBLOCK"))?;
        // SAFETY: msghdr is plain old data; all-zero is "no name, no iov, no control".
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        // Reserved source-address room: 16 (IPv4) or 32 (IPv6, sockaddr_in6 is 28) so the
        // payload starts at 32 or 48, a multiple of 16.
        msghdr.msg_namelen = if local.is_ipv4() { 16 } else { 32 };
        let sock = Sock {
            socket,
            local,
            msghdr,
            armed: false,
            closing: false,
            connected: None,
        };
        let id = match self.free_sockets.pop() {
            Some(id) => {
                self.sockets[id as usize] = Some(sock);
                id
            }
            None => {
                self.sockets.push(Some(sock));
                (self.sockets.len() - 1) as u32
            }
        };
        self.socket_count += 1;
        self.arm(id)?;
        self.submit_pending()?;
        Ok(SocketId(id))
    }

    /// Polls `fd` in this ring (multishot `POLL_ADD`): each signal of it posts a completion
    /// that ends a [`RingParker::park`] (and sets [`RingParker::take_woken`]); the
    /// completion is counted in `wake_ups`, never shown to the handler. The eventfd is not
    /// read here (whoever else watches it still sees the signal). At most 16 per ring; the
    /// ring's own [`UdpRing::eventfd`] is refused (it would wake itself forever).
    pub fn wake_on(&mut self, fd: Arc<EventFd>) -> Result<(), UdpError> {
        if Arc::ptr_eq(&fd, &self.eventfd) || fd.raw() == self.eventfd.raw() {
            return Err(UdpError::Config(
                "a ring cannot be woken by its own eventfd",
            ));
        }
        if self.wakes.len() >= WAKES_MAX {
            return Err(UdpError::Config("too many wake-up eventfds on one ring"));
        }
        if self.closed {
            return Err(UdpError::Config("ring is closed"));
        }
        self.wakes.push(WakeFd { fd, armed: false });
        self.arm_wake((self.wakes.len() - 1) as u32)?;
        self.submit_pending()
    }

    fn arm_wake(&mut self, i: u32) -> Result<(), UdpError> {
        let Some(w) = self.wakes.get(i as usize) else {
            return Ok(());
        };
        let entry = opcode::PollAdd::new(Fd(w.fd.raw()), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(user_data(KIND_WAKE, i));
        // SAFETY: a poll SQE references no memory; the eventfd stays open while the poll
        // is armed (`wakes` holds an `Arc` to it until the ring is dropped).
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.submit_pending()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| UdpError::Config("submission queue full"))?;
        }
        if let Some(w) = self.wakes.get_mut(i as usize) {
            w.armed = true;
        }
        Ok(())
    }

    /// A [`RingParker`] for this ring: from now on the shard is expected to sleep in the
    /// ring, so the ring's eventfd is no longer signalled (nobody needs it, and each signal
    /// costs the kernel a wake-up of whoever polls it).
    pub fn parker(&mut self) -> Result<RingParker, UdpError> {
        // SAFETY: the ring's descriptor is open for as long as `self.ring` lives, which
        // covers this borrow; the clone is a new descriptor of our own.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.ring.as_raw_fd()) }
            .try_clone_to_owned()
            .map_err(io_err("dup of the ring descriptor"))?;
        self.parked = true;
        self.ring.completion().disable_eventfd();
        Ok(RingParker {
            fd,
            state: Rc::clone(&self.park),
            sq_entries: self.config.sq_entries,
        })
    }

    /// Connects `socket` to `peer` (`connect(2)`): the kernel then delivers only `peer`'s
    /// datagrams to it, and sends to `peer` skip the per-datagram route lookup. For
    /// point-to-point links (a Raft peer pair, a benchmark flood); SWIM members stay
    /// unconnected.
    pub fn connect(&mut self, socket: SocketId, peer: SocketAddr) -> Result<(), UdpError> {
        let Some(Some(sock)) = self.sockets.get_mut(socket.0 as usize) else {
            return Err(UdpError::Config("unknown socket"));
        };
        sock.socket
            .connect(&peer.into())
            .map_err(io_err("connect"))?;
        sock.connected = Some(peer);
        Ok(())
    }

    /// Stops receiving on `socket`; it is closed once the kernel has ended its receive.
    pub fn remove_socket(&mut self, socket: SocketId) {
        let Some(Some(sock)) = self.sockets.get_mut(socket.0 as usize) else {
            return;
        };
        if sock.closing {
            return;
        }
        sock.closing = true;
        if sock.armed {
            let cancel = opcode::AsyncCancel::new(user_data(KIND_RECV, socket.0))
                .build()
                .user_data(user_data(KIND_CANCEL, socket.0));
            // SAFETY: a cancel SQE references no memory.
            let mut sq = self.ring.submission();
            if unsafe { sq.push(&cancel) }.is_err() {
                drop(sq);
                let _ = self.submit_pending();
                // SAFETY: as above.
                let _ = unsafe { self.ring.submission().push(&cancel) };
            }
        } else {
            self.release_socket(socket.0);
        }
    }

    fn release_socket(&mut self, id: u32) {
        if let Some(slot) = self.sockets.get_mut(id as usize)
            && slot.take().is_some()
        {
            self.socket_count -= 1;
            self.free_sockets.push(id);
        }
    }

    fn arm(&mut self, id: u32) -> Result<(), UdpError> {
        let Some(Some(sock)) = self.sockets.get(id as usize) else {
            return Ok(());
        };
        let bgid = self.bufs.as_ref().map_or(0, |b| b.bgid());
        let entry = opcode::RecvMsgMulti::new(Fd(sock.socket.as_raw_fd()), &*sock.msghdr, bgid)
            .build()
            .user_data(user_data(KIND_RECV, id));
        // SAFETY: the SQE points at `sock.msghdr`, boxed (stable address) and alive until
        // the socket is released, which happens only after the receive has ended. The
        // buffers it will pick belong to the registered buffer ring (see bufring).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.submit_pending()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| UdpError::Config("submission queue full"))?;
        }
        if let Some(Some(sock)) = self.sockets.get_mut(id as usize) {
            sock.armed = true;
        }
        Ok(())
    }

    fn submit_pending(&mut self) -> Result<(), UdpError> {
        let (submitter, mut sq, _) = self.ring.split();
        let r = submit(&mut sq, &submitter, &mut self.counters);
        if sq.is_empty()
            && let Some(slots) = self.slots.as_mut()
        {
            slots.release_issued(&mut self.counters);
        }
        self.park.sq_pending.set(sq.len() as u32);
        r.map_err(io_err("io_uring_enter"))?;
        Ok(())
    }

    /// Runs `f` with a [`Sender`] on this ring, then submits what it queued if a batch is
    /// full (call [`UdpRing::poll`] or [`UdpRing::flush`] to submit the rest; a shard
    /// parked in the ring also submits it when it parks).
    pub fn with_sender<R>(&mut self, f: impl FnOnce(&mut Sender<'_, '_>) -> R) -> R {
        let Some(slots) = self.slots.as_mut() else {
            // Closed: a sender with no slots refuses everything.
            let mut empty = SendSlots::new(0, 64, 0);
            let (submitter, mut sq, _) = self.ring.split();
            let mut s = Sender {
                sq: &mut sq,
                submitter: &submitter,
                slots: &mut empty,
                sockets: &[],
                counters: &mut self.counters,
                datagram_bytes_max: 0,
                submit_batch: 1,
            };
            return f(&mut s);
        };
        let (submitter, mut sq, _) = self.ring.split();
        let r = {
            let mut s = Sender {
                sq: &mut sq,
                submitter: &submitter,
                slots: &mut *slots,
                sockets: &self.sockets,
                counters: &mut self.counters,
                datagram_bytes_max: self.config.datagram_bytes_max,
                submit_batch: self.config.submit_batch,
            };
            f(&mut s)
        };
        if sq.len() >= self.config.submit_batch {
            let _ = submit(&mut sq, &submitter, &mut self.counters);
        }
        if sq.is_empty() {
            slots.release_issued(&mut self.counters);
        }
        self.park.sq_pending.set(sq.len() as u32);
        r
    }

    /// Submits every queued SQE now.
    pub fn flush(&mut self) -> Result<(), UdpError> {
        self.submit_pending()
    }

    /// Sends in flight (queued or submitted, not yet completed).
    pub fn sends_in_flight(&self) -> usize {
        self.slots.as_ref().map_or(0, |s| s.in_flight)
    }

    /// Submits queued sends, reaps every completion (running `handler` on each valid
    /// datagram) and returns the number of completions seen. Never blocks.
    ///
    /// Sends the handler queues are submitted before it returns, except on a ring with a
    /// [`RingParker`]: there they stay queued (up to `submit_batch` of them) for the
    /// shard's next park, which submits them and waits in the same `io_uring_enter`, or
    /// for the next `poll` / `flush`, whichever comes first.
    pub fn poll<H: UdpHandler>(&mut self, handler: &mut H) -> Result<usize, UdpError> {
        let mut seen = 0;
        let receives_before = self.counters.datagrams_received;
        let queued_before = self.counters.datagrams_queued;
        self.counters.enter_calls += self.park.enters.take();
        self.counters.sqes_submitted += self.park.sqes.take();
        // Passes in a row that entered the kernel and reaped nothing.
        let mut idle_passes = 0u32;
        // Completions we produce ourselves while polling need not wake us again.
        self.ring.completion().disable_eventfd();
        let mut first = true;
        loop {
            let submit_now = first || !self.parked;
            first = false;
            let n = self.poll_once(handler, submit_now)?;
            seen += n;
            if n > 0 {
                idle_passes = 0;
                continue;
            }
            idle_passes += 1;
            // Re-enable, then look once more: work queued while disabled did not signal.
            // A parked ring keeps it disabled: its shard sleeps in the ring itself.
            if !self.parked {
                self.ring.completion().enable_eventfd();
            }
            // A second idle pass in a row entered the kernel with GETEVENTS (which runs any
            // deferred work) because of the TASKRUN flag or queued SQEs, and found nothing:
            // the flag is stale (seen on 6.x kernels under load: both shards of a
            // 1,000-member swim run spun here forever) or the kernel refuses the SQEs for
            // now (EBUSY). Looping on either would spin forever: return, the next poll
            // tries again.
            let (pending, queued) = {
                let mut sq = self.ring.submission();
                sq.sync();
                let queued = sq.len() as u32;
                (
                    idle_passes < 2 && (sq.taskrun() || (queued > 0 && !self.parked)),
                    queued,
                )
            };
            if !pending && self.ring.completion().is_empty() {
                let receives = self.counters.datagrams_received - receives_before;
                self.park
                    .last_receives
                    .set(u32::try_from(receives).unwrap_or(u32::MAX));
                self.park.sq_pending.set(queued);
                // An empty poll (the caller polling again right after a spin that
                // already reaped) says nothing about whether an exchange is in flight.
                if seen > 0 {
                    self.last_poll_received = receives;
                    self.last_poll_sent = self.counters.datagrams_queued - queued_before;
                }
                return Ok(seen);
            }
            self.ring.completion().disable_eventfd();
        }
    }

    /// Busy-polls for up to `spin` before the caller parks: watches the ring's flags (no
    /// system call) and polls as soon as work is pending. Returns the completions seen (0
    /// if none came in time). Trades CPU for wake-up latency; `spin` zero returns at once.
    pub fn spin_poll<H: UdpHandler>(
        &mut self,
        handler: &mut H,
        spin: Duration,
    ) -> Result<usize, UdpError> {
        if spin.is_zero() {
            return Ok(0);
        }
        if self.spin_until_ready(spin)?.is_some() {
            return self.poll(handler);
        }
        Ok(0)
    }

    /// Submits what the last poll left for the park (the spin may find its answer), then
    /// watches the ring's flags for up to `spin` (no system call); returns how long it took
    /// for work to show up, if it did.
    fn spin_until_ready(&mut self, spin: Duration) -> Result<Option<Duration>, UdpError> {
        if self.park.sq_pending.get() > 0 {
            self.submit_pending()?;
        }
        let started = Instant::now();
        loop {
            let pending = {
                let mut sq = self.ring.submission();
                sq.sync();
                sq.taskrun()
            } || !self.ring.completion().is_empty();
            let waited = started.elapsed();
            if pending {
                return Ok(Some(waited));
            }
            if waited >= spin {
                return Ok(None);
            }
            std::hint::spin_loop();
        }
    }

    /// [`UdpRing::spin_poll`] for at most `UdpConfig::spin_us_max`, but only while a
    /// request/response exchange is in flight and only while spinning pays. Call it after
    /// [`UdpRing::poll`], right before parking.
    ///
    /// It spins only if the last poll that reaped anything both received and sent
    /// datagrams (an answer or the next request is likely on its way; a spin that finds
    /// nothing ends that until the next such poll), and backs off when spins do not pay: after two
    /// spins in a row that found nothing within the budget (or were preempted past it), it
    /// skips the next 1, 2, 4, ... 1,024 chances, and a spin that pays resets that. So an
    /// idle shard never spins, and a shard whose peers answer slowly (or share its CPU,
    /// where spinning only delays the answer) spins on at most one park in a thousand.
    pub fn spin_adaptive<H: UdpHandler>(&mut self, handler: &mut H) -> Result<usize, UdpError> {
        let budget = Duration::from_micros(self.config.spin_us_max);
        if budget.is_zero() || self.last_poll_received == 0 || self.last_poll_sent == 0 {
            return Ok(0);
        }
        if self.spin.skip > 0 {
            self.spin.skip -= 1;
            return Ok(0);
        }
        self.counters.spins += 1;
        match self.spin_until_ready(budget)? {
            Some(waited) if waited < budget => {
                self.spin.fails = 0;
                self.spin.backoff = 1;
                self.counters.spins_paid += 1;
                self.poll(handler)
            }
            found => {
                // Nothing came in time: the exchange is over (or the peer shares this CPU).
                // Spin again only after a poll that both receives and sends.
                self.last_poll_received = 0;
                self.last_poll_sent = 0;
                self.spin.fails += 1;
                if self.spin.fails >= SPIN_FAILS_MAX {
                    self.spin.fails = 0;
                    self.spin.skip = self.spin.backoff;
                    self.spin.backoff = (self.spin.backoff * 2).min(SPIN_BACKOFF_MAX);
                }
                if found.is_some() {
                    return self.poll(handler);
                }
                Ok(0)
            }
        }
    }

    /// One pass: enters the kernel if deferred work is pending (or, with `submit`, SQEs are
    /// queued; also when a full batch is queued), releases the sends the kernel is done
    /// with, and reaps every completion.
    fn poll_once<H: UdpHandler>(
        &mut self,
        handler: &mut H,
        submit: bool,
    ) -> Result<usize, UdpError> {
        if let Some(b) = self.bufs.as_mut() {
            b.publish();
        }
        let mut rearm: Vec<u32> = Vec::new();
        let mut rewake: Vec<u32> = Vec::new();
        let mut seen = 0;
        {
            let (submitter, mut sq, mut cq) = self.ring.split();
            sq.sync();
            let queued = sq.len();
            if (submit && queued > 0)
                || queued >= self.config.submit_batch
                || sq.taskrun()
                || !self.features.defer_taskrun
            {
                // SAFETY: enter with GETEVENTS and min_complete 0 only submits what is
                // queued (every SQE's memory is kept alive as documented where pushed) and
                // runs deferred completions; it waits for nothing.
                let r = unsafe {
                    submitter.enter::<libc::sigset_t>(
                        sq.len() as u32,
                        0,
                        IORING_ENTER_GETEVENTS,
                        None,
                    )
                };
                self.counters.enter_calls += 1;
                match r {
                    Ok(n) => self.counters.sqes_submitted += n as u64,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            || e.raw_os_error() == Some(libc::EAGAIN)
                            || e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => {
                        return Err(UdpError::Io {
                            what: "io_uring_enter",
                            source: e,
                        });
                    }
                }
                sq.sync();
            }
            cq.sync();
            let (Some(bufs), Some(slots)) = (self.bufs.as_mut(), self.slots.as_mut()) else {
                return Ok(0);
            };
            if sq.is_empty() {
                slots.release_issued(&mut self.counters);
            }
            for cqe in &mut cq {
                seen += 1;
                let ud = cqe.user_data();
                let index = (ud & SLOT_INDEX_MASK) as u32;
                match ud >> KIND_SHIFT {
                    // Sends post a completion only when they fail (IOSQE_CQE_SKIP_SUCCESS);
                    // their slots were released when the kernel consumed their SQEs and
                    // counted as sent, which this corrects.
                    KIND_SEND | KIND_TRAIN if cqe.result() < 0 => {
                        let (datagrams, bytes) = send_size(ud);
                        self.counters.datagrams_sent =
                            self.counters.datagrams_sent.wrapping_sub(datagrams);
                        self.counters.bytes_sent = self.counters.bytes_sent.wrapping_sub(bytes);
                        self.counters.send_errors += datagrams;
                        self.counters.send_errno_last = -cqe.result();
                        // A device that cannot segment (no checksum offload: EIO) or a route
                        // that refuses GSO: send every datagram alone from now on.
                        let refused = [libc::EIO, libc::EINVAL, libc::EOPNOTSUPP, libc::EMSGSIZE];
                        if ud >> KIND_SHIFT == KIND_TRAIN
                            && refused.contains(&-cqe.result())
                            && slots.run_max > 1
                        {
                            slots.run_max = 1;
                            self.counters.gso_disabled += 1;
                            tracing::warn!(
                                errno = -cqe.result(),
                                "UDP GSO send refused; sending datagrams one by one from now on"
                            );
                        }
                    }
                    KIND_RECV => {
                        let flags = cqe.flags();
                        let res = cqe.result();
                        if res >= 0 {
                            if let Some(bid) = cqueue::buffer_select(flags) {
                                let mut sender = Sender {
                                    sq: &mut sq,
                                    submitter: &submitter,
                                    slots,
                                    sockets: &self.sockets,
                                    counters: &mut self.counters,
                                    datagram_bytes_max: self.config.datagram_bytes_max,
                                    submit_batch: self.config.submit_batch,
                                };
                                let (ipv4, known) = match self.sockets.get(index as usize) {
                                    Some(Some(s)) => (s.local.is_ipv4(), true),
                                    _ => (true, false),
                                };
                                let refs = std::mem::take(&mut self.refs);
                                let refs = receive_one(
                                    bufs,
                                    bid,
                                    res as usize,
                                    ipv4,
                                    known,
                                    SocketId(index),
                                    &self.decoder,
                                    self.keyring.as_ref(),
                                    refs,
                                    handler,
                                    &mut sender,
                                );
                                self.refs = refs;
                                bufs.recycle(bid);
                            }
                        } else if res == -libc::ENOBUFS {
                            self.counters.recv_no_buffers += 1;
                        } else if res != -libc::ECANCELED {
                            self.counters.recv_errors += 1;
                        }
                        if !cqueue::more(flags) {
                            rearm.push(index);
                        }
                    }
                    KIND_WAKE => {
                        if cqe.result() >= 0 {
                            self.counters.wake_ups += 1;
                            self.park.woken.set(true);
                        }
                        if !cqueue::more(cqe.flags()) {
                            rewake.push(index);
                        }
                    }
                    _ => {}
                }
            }
            cq.sync();
        }
        for id in rearm {
            let Some(Some(sock)) = self.sockets.get_mut(id as usize) else {
                continue;
            };
            sock.armed = false;
            if sock.closing || self.closed {
                self.release_socket(id);
            } else {
                self.counters.recv_rearmed += 1;
                self.arm(id)?;
            }
        }
        for i in rewake {
            let Some(w) = self.wakes.get_mut(i as usize) else {
                continue;
            };
            w.armed = false;
            if !self.closed {
                self.arm_wake(i)?;
            }
        }
        if let Some(b) = self.bufs.as_mut() {
            b.publish();
        }
        Ok(seen)
    }

    /// Cancels every receive, waits (at most `close_timeout_ms`) for every request to
    /// complete, then closes the sockets. If the kernel does not finish in time the receive
    /// and send memory is leaked rather than freed under it. Idempotent.
    pub fn close(&mut self) -> CloseReport {
        if self.closed {
            return CloseReport {
                in_flight_left: 0,
                leaked: false,
            };
        }
        self.closed = true;
        let ids: Vec<u32> = (0..self.sockets.len() as u32).collect();
        for id in ids {
            self.remove_socket(SocketId(id));
        }
        for i in 0..self.wakes.len() as u32 {
            if self.wakes[i as usize].armed {
                let cancel = opcode::AsyncCancel::new(user_data(KIND_WAKE, i))
                    .build()
                    .user_data(user_data(KIND_CANCEL, i));
                // SAFETY: a cancel SQE references no memory.
                if unsafe { self.ring.submission().push(&cancel) }.is_err() {
                    let _ = self.submit_pending();
                    // SAFETY: as above.
                    let _ = unsafe { self.ring.submission().push(&cancel) };
                }
            }
        }
        let deadline = Instant::now() + Duration::from_millis(self.config.close_timeout_ms);
        loop {
            let _ = self.poll_once(&mut Discard, true);
            let left = self.in_flight();
            if left == 0 || Instant::now() >= deadline {
                break;
            }
            let ts = Timespec::new().nsec(1_000_000);
            let args = SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
        }
        let left = self.in_flight();
        let leaked = left > 0;
        if leaked {
            // The kernel may still write into receive buffers or read send slots: never free
            // them. This is a bounded, one-off leak at shutdown of a misbehaving kernel.
            std::mem::forget(self.bufs.take());
            std::mem::forget(self.slots.take());
        } else if let Some(b) = self.bufs.as_ref() {
            let _ = self.ring.submitter().unregister_buf_ring(b.bgid());
        }
        let _ = self.ring.submitter().unregister_eventfd();
        for s in self.sockets.iter_mut() {
            if s.take().is_some() {
                self.socket_count -= 1;
            }
        }
        CloseReport {
            in_flight_left: left,
            leaked,
        }
    }

    /// Requests in flight: armed receives plus sends.
    pub fn in_flight(&self) -> usize {
        self.sockets.iter().flatten().filter(|s| s.armed).count()
            + self.wakes.iter().filter(|w| w.armed).count()
            + self.sends_in_flight()
    }

    /// Receive buffers currently held by the shard (0 between polls).
    pub fn buffers_held(&self) -> usize {
        self.bufs.as_ref().map_or(0, |b| b.held_count())
    }
}

impl Drop for UdpRing {
    fn drop(&mut self) {
        self.close();
        // `ring` is dropped with the struct; the fields drop in declaration order, so the
        // io_uring (and its registration of the buffer ring) goes before `bufs` and `slots`.
    }
}

/// Decodes and validates one received buffer and runs the handler on it. Returns the
/// message storage (emptied) for reuse.
///
/// `filter_map(|_| None)` below changes the element lifetime of an empty Vec while
/// keeping its allocation (std collects in place): `filter` could not change the type.
#[allow(clippy::too_many_arguments, clippy::unnecessary_filter_map)]
fn receive_one<H: UdpHandler>(
    bufs: &mut BufRing,
    bid: u16,
    len: usize,
    ipv4: bool,
    known_socket: bool,
    socket: SocketId,
    decoder: &Decoder,
    keyring: Option<&Keyring>,
    storage: Vec<MessageRef<'static>>,
    handler: &mut H,
    out: &mut Sender<'_, '_>,
) -> Vec<MessageRef<'static>> {
    out.counters.datagrams_received += 1;
    let Some(buf) = bufs.take(bid) else {
        out.counters.drop_cause("bad_buffer_id");
        return storage;
    };
    let name_len = if ipv4 { 16 } else { 32 };
    let payload_at = 16 + name_len;
    if len < payload_at || len > buf.len() || !known_socket {
        out.counters.drop_cause("truncated");
        return storage;
    }
    let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let (payload_len, msg_flags) = (word(8) as usize, word(12) as i32);
    let from = parse_sockaddr(&buf[16..16 + name_len]);
    if msg_flags & libc::MSG_TRUNC != 0 || payload_at + payload_len > len {
        out.counters.drop_cause("recv_truncated");
        return storage;
    }
    out.counters.bytes_received += payload_len as u64;
    let Some(from) = from else {
        out.counters.drop_cause("truncated");
        return storage;
    };
    let payload = &mut buf[payload_at..payload_at + payload_len];
    debug_assert_eq!(
        payload.as_ptr() as usize % 16,
        0,
        "payload must be 16-byte aligned"
    );
    let frame = match decoder.decode(payload, keyring) {
        Ok(f) => f,
        Err(e) => {
            out.counters.drop_decode(&e);
            return storage;
        }
    };
    // Reuse the allocation across datagrams: an empty Vec of the same layout, collected in
    // place (no allocation, no unsafe).
    let mut refs: Vec<MessageRef<'_>> = storage.into_iter().filter_map(|_| None).collect();
    for m in frame.messages() {
        match m {
            Ok(r) => refs.push(r),
            Err(e) => {
                out.counters.drop_decode(&e);
                return refs.into_iter().filter_map(|_| None).collect();
            }
        }
    }
    if refs.is_empty() {
        out.counters.drop_cause("empty_batch");
    } else {
        out.counters.datagrams_delivered += 1;
        out.counters.messages_delivered += refs.len() as u64;
        handler.on_datagram(out, socket, from, &frame, &refs);
    }
    refs.clear();
    refs.into_iter().filter_map(|_| None).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip() {
        for a in ["127.0.0.7:4000", "[::1]:9", "[fe80::1%2]:77"] {
            let addr: SocketAddr = a.parse().expect("addr");
            // SAFETY: all-zero sockaddr_storage is valid.
            let mut s: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = write_sockaddr(&mut s, addr) as usize;
            // SAFETY: reading `len` initialized bytes of `s`.
            let bytes = unsafe {
                std::slice::from_raw_parts((&s as *const libc::sockaddr_storage).cast::<u8>(), len)
            };
            assert_eq!(parse_sockaddr(bytes), Some(addr));
        }
        assert_eq!(parse_sockaddr(&[0, 0]), None);
    }

    #[test]
    fn default_config_is_valid() {
        UdpConfig::default().check().expect("default config");
        let bad = UdpConfig {
            recv_buffer_bytes: 1000,
            ..UdpConfig::default()
        };
        assert!(bad.check().is_err());
    }
}

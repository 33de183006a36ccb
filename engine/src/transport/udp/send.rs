//! Sending: bounded, preallocated send slots; runs of datagrams gathered into one GSO send
//! ("trains"); and the [`Sender`] a handler or the shard fills them through.
//!
//! A slot or a train record is off its free list from the moment a datagram is copied in
//! until the kernel has consumed its SQE, and the kernel reads it only while it consumes the
//! SQE. That second half is a property of how the ring and the sends are set up, which
//! this module states and checks:
//!
//! 1. The kernel issues every send inline, inside the `io_uring_enter` that consumes its
//!    SQE, and copies the datagram into a socket buffer there (UDP copies on `sendmsg`;
//!    no `MSG_ZEROCOPY`). Nothing defers the issue: the ring has no SQPOLL thread and no
//!    IOPOLL (checked at set-up, [`inline_issue_ring`]); no SQE of the ring carries
//!    `IOSQE_ASYNC` (io-wq), `IOSQE_IO_LINK`/`IO_HARDLINK` (held until the previous SQE
//!    completes) or `IOSQE_IO_DRAIN` (held until everything before it completes)
//!    ([`SEND_SQE_FLAGS`], checked at compile time; receive, poll and cancel SQEs carry no
//!    flags). A send that would block cannot be parked for a retry either: it carries
//!    `MSG_DONTWAIT`, for which `io_sendmsg_prep` (io_uring/net.c, both `SEND` and
//!    `SENDMSG`) sets `REQ_F_NOWAIT`, and `io_queue_async` (io_uring/io_uring.c) fails a
//!    `REQ_F_NOWAIT` request with `-EAGAIN` instead of arming a poll or punting it to io-wq.
//! 2. `io_submit_sqes` stores the new SQ head only after it has issued every SQE it
//!    consumed and flushed their inline completions into the CQ. So once this thread sees
//!    the SQ empty after a sync, every send it pushed has been issued and is done with its
//!    memory ([`SendSlots::release_issued`]), and a send that failed has already posted its
//!    completion (it is never skipped: `IOSQE_CQE_SKIP_SUCCESS` skips only successes).
//!
//! The debug check of the property: a failed send's completion must be in the CQ once the
//! SQ is seen empty, so it is reaped no later than from the first CQ snapshot (`cq.sync`
//! before reaping) taken after that: the one `poll_once` takes right after it sees the SQ
//! empty, or the next one if a submit elsewhere saw it. One that comes later was issued
//! after its slot was released, while the slot could already hold another datagram: [`SendSlots::completion_in_time`] says so and
//! `poll_once` asserts it (debug builds). Each use of a slot or train carries a 4-bit
//! generation in its user data so that a completion of the current, not yet released use
//! is told apart from a late one of an earlier use. A CQ overflow delays completions
//! through no fault of the send and turns the check off.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::types::Fd;
use io_uring::{Submitter, opcode, squeue};

use super::ring::Sock;
use super::sockaddr::write_sockaddr;
use super::{GEN_MASK, KIND_SEND, KIND_SHIFT, KIND_TRAIN, SLOT_INDEX_MASK, SendError, SocketId};
use super::{send_gen, send_size, send_user_data};
use crate::transport::counters::UdpCounters;

/// Send slots: bounded, preallocated, each a datagram buffer and a destination address;
/// and the GSO trains that carry runs of them.
pub(super) struct SendSlots {
    bytes: Box<[u8]>,
    slot_bytes: usize,
    addrs: Box<[libc::sockaddr_storage]>,
    free: Vec<u32>,
    /// Datagrams queued or submitted and not yet released (a train counts each of its
    /// datagrams).
    pub(super) in_flight: usize,
    /// Datagrams one GSO send carries at most (the layout of the train records); 0 when
    /// GSO is off.
    segments_max: usize,
    /// Datagrams a run may gather now: `segments_max`, or 1 once GSO is off (also after the
    /// kernel refused a GSO send).
    pub(super) run_max: usize,
    /// The run of datagrams being gathered for one send (not yet an SQE).
    open: Option<OpenTrain>,
    /// Slots of the open run, in order (capacity `segments_max`, never reallocated).
    open_slots: Vec<u32>,
    /// Submitted GSO sends; the kernel reads a record's memory while it consumes its SQE.
    /// `send_slots / 2` of them: every train holds at least two slots.
    trains: Box<[TrainRec]>,
    /// `segments_max` iovecs per train record.
    train_iovs: Box<[libc::iovec]>,
    /// `segments_max` slot indexes per train record.
    train_slots: Box<[u32]>,
    train_free: Vec<u32>,
    /// User data of the sends pushed to the submission queue and not yet released: every
    /// send is issued inline when its SQE is consumed (module docs) and posts no completion
    /// when it succeeds (`IOSQE_CQE_SKIP_SUCCESS`), so once the kernel has consumed its SQE
    /// it is done (see [`SendSlots::release_issued`]). At most one entry per slot.
    issued: Vec<u64>,
    /// Per slot: its current use and when it was last released (the late-completion check).
    slot_uses: Box<[UseTrack]>,
    /// The same per train record.
    train_uses: Box<[UseTrack]>,
    /// CQ snapshots `poll_once` has reaped from so far (each `cq.sync` before reaping).
    pub(super) cq_snapshots: u64,
    /// The late-completion check holds: no CQ overflow was seen (an overflowed completion
    /// reaches the ring late through no fault of the send).
    pub(super) late_check: bool,
}

/// One slot's (or train record's) uses, for [`SendSlots::completion_in_time`].
#[derive(Debug, Clone, Copy, Default)]
struct UseTrack {
    /// Generation of the current (or last) use, 4 bits; it goes into the send's user data.
    generation: u8,
    /// Off its free list.
    in_use: bool,
    /// Completions of every released use are reaped from a CQ snapshot numbered at most
    /// this (named by the last release).
    reaped_by: u64,
}

impl UseTrack {
    fn take(&mut self) {
        debug_assert!(!self.in_use, "a send slot or train record taken twice");
        self.generation = (self.generation + 1) & GEN_MASK as u8;
        self.in_use = true;
    }

    fn release(&mut self, reaped_by: u64) {
        self.in_use = false;
        self.reaped_by = reaped_by;
    }
}

/// Flags of every send SQE. Never `ASYNC`, `IO_LINK`, `IO_HARDLINK` or `IO_DRAIN`: each
/// would let the kernel consume the SQE and issue the send later, after its slot is reused
/// (module docs).
pub(super) const SEND_SQE_FLAGS: squeue::Flags = squeue::Flags::SKIP_SUCCESS;
const _: () = assert!(
    !SEND_SQE_FLAGS.intersects(
        squeue::Flags::ASYNC
            .union(squeue::Flags::IO_LINK)
            .union(squeue::Flags::IO_HARDLINK)
            .union(squeue::Flags::IO_DRAIN)
    ),
    "send SQEs must be issued inline"
);
/// `msg_flags` of every send: `MSG_DONTWAIT` makes the kernel fail a send that would block
/// with `-EAGAIN` rather than retry it after the SQE was consumed; never `MSG_ZEROCOPY`,
/// which keeps reading the bytes after the send returns (module docs).
const SEND_MSG_FLAGS: libc::c_int = libc::MSG_DONTWAIT;
const _: () = assert!(
    SEND_MSG_FLAGS & libc::MSG_DONTWAIT != 0 && SEND_MSG_FLAGS & libc::MSG_ZEROCOPY == 0,
    "sends must not block and must copy their bytes"
);

/// Whether `ring` issues every SQE in the `io_uring_enter` that consumes it: no SQPOLL
/// thread consumes SQEs on its own, no IOPOLL completes them by polling later.
pub(super) fn inline_issue_ring(params: &io_uring::Parameters) -> bool {
    !params.is_setup_sqpoll() && !params.is_setup_iopoll()
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
    pub(super) fn new(count: usize, datagram_bytes_max: usize, segments_max: usize) -> SendSlots {
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
            slot_uses: vec![UseTrack::default(); count].into_boxed_slice(),
            train_uses: vec![UseTrack::default(); trains].into_boxed_slice(),
            cq_snapshots: 0,
            late_check: true,
        }
    }

    /// Takes a free slot for a datagram.
    fn take_slot(&mut self) -> Option<u32> {
        let slot = self.free.pop()?;
        if let Some(u) = self.slot_uses.get_mut(slot as usize) {
            u.take();
        }
        self.in_flight += 1;
        Some(slot)
    }

    /// The CQ snapshot that will hold the completions of sends whose SQEs were consumed
    /// since the last one was taken: the next.
    pub(super) fn next_snapshot(&self) -> u64 {
        self.cq_snapshots + 1
    }

    /// Puts `slot` back on its free list: the kernel reads it no more, or never saw it. A
    /// completion of its use is reaped from CQ snapshot `reaped_by` at the latest.
    fn free_slot(&mut self, slot: u32, reaped_by: u64) {
        if let Some(u) = self.slot_uses.get_mut(slot as usize) {
            u.release(reaped_by);
        }
        self.free.push(slot);
        self.in_flight -= 1;
    }

    /// Whether the completion of a failed send `ud`, reaped from CQ snapshot number
    /// `cq_snapshots`, came in time (module docs): it is of the slot's (or train's)
    /// current use, not yet released, or it is reaped no later than the snapshot its last
    /// release named (an earlier use's completion is due no later than that either). False means the kernel issued the send after its SQE was consumed,
    /// when its memory may already hold another datagram.
    pub(super) fn completion_in_time(&self, ud: u64) -> bool {
        if !self.late_check {
            return true;
        }
        let index = (ud & SLOT_INDEX_MASK) as usize;
        let uses = if ud >> KIND_SHIFT == KIND_TRAIN {
            &self.train_uses
        } else {
            &self.slot_uses
        };
        let Some(u) = uses.get(index) else {
            return false;
        };
        (u.in_use && u.generation == send_gen(ud)) || self.cq_snapshots <= u.reaped_by
    }

    /// Releases every issued send, given the submission queue `sq` seen empty right after
    /// a sync (else it does nothing): the kernel has then consumed every SQE pushed so far
    /// and, by the inline-issue property (module docs), issued each send in that same
    /// `io_uring_enter` and copied its bytes, so it reads its slot, address and train
    /// record no more. A failed send's completion, already in the CQ, only corrects the
    /// counters (see `poll_once`). That completion is reaped from CQ snapshot `reaped_by`
    /// at the latest: the current one if `sq` was seen empty before it was taken, else
    /// [`SendSlots::next_snapshot`].
    pub(super) fn release_issued(
        &mut self,
        sq: &squeue::SubmissionQueue<'_>,
        counters: &mut UdpCounters,
        reaped_by: u64,
    ) {
        if !sq.is_empty() {
            return;
        }
        for k in 0..self.issued.len() {
            let ud = self.issued[k];
            let (datagrams, bytes) = send_size(ud);
            let index = (ud & SLOT_INDEX_MASK) as u32;
            if ud >> KIND_SHIFT == KIND_TRAIN {
                self.release_train(index, reaped_by);
            } else {
                self.free_slot(index, reaped_by);
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

    /// Frees train record `t` and its slots (`reaped_by` as for [`SendSlots::free_slot`]);
    /// returns how many datagrams it carried.
    fn release_train(&mut self, t: u32, reaped_by: u64) -> usize {
        let Some(rec) = self.trains.get(t as usize) else {
            return 0;
        };
        let count = rec.count as usize;
        let base = t as usize * self.segments_max;
        for k in 0..count {
            self.free_slot(self.train_slots[base + k], reaped_by);
        }
        if let Some(u) = self.train_uses.get_mut(t as usize) {
            u.release(reaped_by);
        }
        self.train_free.push(t);
        count
    }
}

/// Sends datagrams on a ring; handed to
/// [`UdpHandler::on_datagram`](super::UdpHandler::on_datagram) and returned by
/// [`UdpRing::with_sender`](super::UdpRing::with_sender).
///
/// Consecutive datagrams from one socket to one peer of the same size (the last of a run
/// may be shorter) are gathered into one GSO send when the kernel offers `UDP_SEGMENT`
/// ([`UdpConfig::gso_segments_max`](super::UdpConfig::gso_segments_max)): one SQE and one
/// pass down the network stack for the run, while the peer still receives every datagram on
/// its own.
pub struct Sender<'a, 'r> {
    pub(super) sq: &'a mut squeue::SubmissionQueue<'r>,
    pub(super) submitter: &'a Submitter<'r>,
    pub(super) slots: &'a mut SendSlots,
    pub(super) sockets: &'a [Option<Sock>],
    pub(super) counters: &'a mut UdpCounters,
    pub(super) datagram_bytes_max: usize,
    pub(super) submit_batch: usize,
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
        let Some(slot) = self.slots.take_slot() else {
            self.counters.send_queue_full += 1;
            return Err(SendError::QueueFull);
        };
        let i = slot as usize;
        let start = i * self.slots.slot_bytes;
        self.slots.bytes[start..start + frame.len()].copy_from_slice(frame);
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
        let by = self.slots.next_snapshot();
        self.slots.release_issued(self.sq, self.counters, by);
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
            if let Some(u) = self.slots.train_uses.get_mut(t as usize) {
                u.take();
            }
            let entry = self.train_entry(t, &o);
            if self.push(&entry) {
                self.counters.send_trains += 1;
                self.slots.issued.push(entry.get_user_data());
            } else {
                let by = self.slots.next_snapshot();
                self.slots.release_train(t, by);
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
                self.slots.issued.push(entry.get_user_data());
            } else {
                let by = self.slots.next_snapshot();
                self.slots.free_slot(slot, by);
                self.counters.send_queue_full += 1;
            }
        }
        self.slots.open_slots.clear();
    }

    fn single_entry(&mut self, slot: u32, len: usize, o: &OpenTrain) -> squeue::Entry {
        let i = slot as usize;
        let start = i * self.slots.slot_bytes;
        let send = opcode::Send::new(Fd(o.fd), self.slots.bytes[start..].as_ptr(), len as u32)
            .flags(SEND_MSG_FLAGS);
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
        let generation = self.slots.slot_uses.get(i).map_or(0, |u| u.generation);
        send.build()
            .flags(SEND_SQE_FLAGS)
            .user_data(send_user_data(KIND_SEND, slot, generation, 1, len))
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
        let generation = s.train_uses.get(t as usize).map_or(0, |u| u.generation);
        opcode::SendMsg::new(Fd(o.fd), &rec.msghdr)
            .flags(SEND_MSG_FLAGS as u32)
            .build()
            .flags(SEND_SQE_FLAGS)
            .user_data(send_user_data(KIND_TRAIN, t, generation, n, bytes))
    }

    /// Pushes one SQE, submitting first if the queue is full.
    fn push(&mut self, entry: &squeue::Entry) -> bool {
        if !self.sq_room() {
            return false;
        }
        // SAFETY: every send SQE points into `slots` (bytes, addrs, train records, iovecs):
        // boxed slices that are never reallocated and live as long as the ring (or are
        // leaked by `close` if the kernel does not finish in time). The kernel reads that
        // memory only while the `io_uring_enter` that consumes this SQE issues the send
        // (the inline-issue property, module docs: no SQPOLL/IOPOLL, `SEND_SQE_FLAGS`,
        // `MSG_DONTWAIT`), and the slots and the record stay off their free lists until
        // this thread has seen the SQ empty after that enter (`release_issued`), so nothing
        // overwrites them while the kernel may read them. Debug builds assert that no
        // failed send completes after its release (`completion_in_time`).
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

pub(super) fn submit(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_send_completion_is_in_time_until_the_snapshot_after_its_release() {
        let mut s = SendSlots::new(4, 64, 0);
        s.cq_snapshots = 5;
        let slot = s.take_slot().expect("a free slot");
        let generation = s.slot_uses[slot as usize].generation;
        let ud = send_user_data(KIND_SEND, slot, generation, 1, 10);
        // Consumed but not released (the SQ was not seen empty): its completion may come
        // from any later snapshot.
        s.cq_snapshots = 9;
        assert!(s.completion_in_time(ud));
        // Released by a submit after snapshot 9 was taken: snapshot 10 holds its completion.
        s.free_slot(slot, s.next_snapshot());
        assert!(
            s.completion_in_time(ud),
            "reaped from the snapshot it was released in"
        );
        s.cq_snapshots = 10;
        assert!(s.completion_in_time(ud), "reaped from the next snapshot");
        s.cq_snapshots = 11;
        assert!(
            !s.completion_in_time(ud),
            "posted after the release: the kernel issued the send late"
        );
        s.late_check = false;
        assert!(
            s.completion_in_time(ud),
            "no verdict once the CQ overflowed"
        );
    }

    #[test]
    fn a_late_completion_of_an_earlier_use_is_caught_while_the_slot_holds_another() {
        let mut s = SendSlots::new(1, 64, 0);
        let slot = s.take_slot().expect("a free slot");
        let first = send_user_data(KIND_SEND, slot, s.slot_uses[0].generation, 1, 10);
        s.free_slot(slot, s.next_snapshot());
        assert_eq!(s.take_slot(), Some(slot), "the only slot, reused");
        let second = send_user_data(KIND_SEND, slot, s.slot_uses[0].generation, 1, 10);
        assert_ne!(first, second, "each use of a slot has its own user data");
        assert!(
            s.completion_in_time(first),
            "in the snapshot after its release"
        );
        s.cq_snapshots += 2;
        assert!(
            s.completion_in_time(second),
            "the current use: not released yet"
        );
        assert!(
            !s.completion_in_time(first),
            "the earlier use failed after its slot was given to the next datagram"
        );
        assert_eq!(s.in_flight, 1);
        s.free_slot(slot, s.next_snapshot());
        assert_eq!(s.in_flight, 0);
    }

    #[test]
    fn train_records_are_tracked_apart_from_slots() {
        let mut s = SendSlots::new(4, 64, 4);
        assert_eq!(s.trains.len(), 2);
        let t = s.train_free.pop().expect("a train record");
        s.train_uses[t as usize].take();
        for _ in 0..2 {
            let slot = s.take_slot().expect("a free slot");
            s.open_slots.push(slot);
        }
        let base = t as usize * s.segments_max;
        for (k, &slot) in s.open_slots.iter().enumerate() {
            s.train_slots[base + k] = slot;
        }
        s.trains[t as usize].count = 2;
        s.open_slots.clear();
        let ud = send_user_data(KIND_TRAIN, t, s.train_uses[t as usize].generation, 2, 20);
        // Released by `poll_once` right after it took snapshot 0: that snapshot holds it.
        assert_eq!(s.release_train(t, s.cq_snapshots), 2);
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.free.len(), 4);
        assert!(s.completion_in_time(ud));
        s.cq_snapshots += 1;
        assert!(
            !s.completion_in_time(ud),
            "not in the snapshot taken right before its release"
        );
        // A user data naming no record is no completion of ours.
        assert!(!s.completion_in_time(send_user_data(KIND_TRAIN, 7, 0, 2, 20)));
    }

    #[test]
    fn only_a_ring_without_sqpoll_or_iopoll_issues_inline() {
        let plain = io_uring::IoUring::new(8).expect("io_uring");
        assert!(inline_issue_ring(plain.params()));
        // SQPOLL needs no privilege since 5.11; where it is refused there is nothing to ask.
        match io_uring::IoUring::<squeue::Entry>::builder()
            .setup_sqpoll(10)
            .build(8)
        {
            Ok(sqpoll) => assert!(!inline_issue_ring(sqpoll.params())),
            Err(e) => eprintln!("SQPOLL ring refused ({e}); its half of the check not run"),
        }
    }
}

//! Sending: bounded, preallocated send slots; runs of datagrams gathered into one GSO send
//! ("trains"); and the [`Sender`] a handler or the shard fills them through.
//!
//! A slot or a train record is off its free list from the moment a datagram is copied in
//! until the kernel has consumed its SQE (sends never wait for socket space, see
//! [`SendSlots::release_issued`]), so nothing overwrites memory the kernel may still read.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::types::Fd;
use io_uring::{Submitter, opcode, squeue};

use super::ring::Sock;
use super::sockaddr::write_sockaddr;
use super::{KIND_SEND, KIND_SHIFT, KIND_TRAIN, SLOT_INDEX_MASK, SendError, SocketId};
use super::{send_size, send_user_data};
use crate::transport::counters::UdpCounters;

/// Send slots: bounded, preallocated, each a datagram buffer and a destination address;
/// and the GSO trains that carry runs of them.
pub(super) struct SendSlots {
    bytes: Box<[u8]>,
    slot_bytes: usize,
    addrs: Box<[libc::sockaddr_storage]>,
    free: Vec<u32>,
    /// Datagrams queued or submitted and not yet completed (a train counts each of its
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
        }
    }

    /// Releases every issued send. Call only when the submission queue was seen empty
    /// after a sync: the kernel has then consumed every SQE pushed so far, and a
    /// `MSG_DONTWAIT` send is issued inline while its SQE is consumed (it never waits for
    /// socket space: `REQ_F_NOWAIT` fails it with EAGAIN instead of arming a poll), so the
    /// kernel has copied its bytes and reads its slot no more. A failed send still posts
    /// a completion, which only corrects the counters (see `poll_once`).
    pub(super) fn release_issued(&mut self, counters: &mut UdpCounters) {
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

//! A [`UdpRing`]'s life: the io_uring and its buffer ring are set up, sockets are bound,
//! connected and removed, wake-up eventfds are polled, and at the end every request is
//! cancelled and waited for (bounded) before any memory the kernel may touch is freed.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{IoUring, opcode};
use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::{Decoder, Keyring, MessageRef};
use socket2::{Domain, Protocol, Socket, Type};

use super::park::ParkState;
use super::send::{SendSlots, Sender, inline_issue_ring, submit};
use super::spin::SpinState;
use super::{
    Discard, KIND_CANCEL, KIND_RECV, KIND_WAKE, SocketId, UdpConfig, UdpError, WAKES_MAX, io_err,
    user_data,
};
use crate::transport::bufring::BufRing;
use crate::transport::counters::UdpCounters;
use crate::transport::eventfd::EventFd;
use crate::transport::features::{self, Features, MissingFeature};

pub(super) struct Sock {
    pub(super) socket: Socket,
    pub(super) local: SocketAddr,
    /// The multishot recvmsg template; the kernel reads it at submission. Boxed so its
    /// address is stable while the request that names it is being prepared.
    pub(super) msghdr: Box<libc::msghdr>,
    /// A multishot receive is in flight (a completion without F_MORE will end it).
    pub(super) armed: bool,
    /// Removal was asked: do not re-arm; free the slot when the receive has ended.
    pub(super) closing: bool,
    /// The peer this socket is connected to, if any: sends to it carry no address, so the
    /// kernel reuses the socket's cached route instead of looking one up per datagram.
    pub(super) connected: Option<SocketAddr>,
}

/// An eventfd polled in the ring (multishot `POLL_ADD`).
pub(super) struct WakeFd {
    pub(super) fd: Arc<EventFd>,
    /// The poll is in flight (a completion without F_MORE ends it).
    pub(super) armed: bool,
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
///
/// Drop order matters, and it is the order of the fields: `Drop` runs [`UdpRing::close`]
/// (every request cancelled and waited for, or `bufs` and `slots` forgotten if the kernel
/// does not finish in time), then the fields drop top to bottom. `ring` comes first so
/// that the io_uring, which holds the buffer ring's registration and is the only thing
/// that can still write into receive buffers or read send slots, is gone before `bufs` is
/// unmapped and `slots` is freed.
pub struct UdpRing {
    // Must stay the first field: see the drop order above.
    pub(super) ring: IoUring,
    pub(super) bufs: Option<BufRing>,
    pub(super) slots: Option<SendSlots>,
    pub(super) sockets: Vec<Option<Sock>>,
    pub(super) free_sockets: Vec<u32>,
    pub(super) socket_count: usize,
    pub(super) decoder: Decoder,
    pub(super) keyring: Option<Keyring>,
    pub(super) counters: UdpCounters,
    pub(super) config: UdpConfig,
    pub(super) features: Features,
    pub(super) eventfd: Arc<EventFd>,
    /// Reused storage for the validated messages of one datagram (empty between uses).
    pub(super) refs: Vec<MessageRef<'static>>,
    /// Eventfds polled in this ring so that their signals end a
    /// [`RingParker::park`](super::RingParker::park).
    pub(super) wakes: Vec<WakeFd>,
    /// Shared with the [`RingParker`](super::RingParker), if one was made.
    pub(super) park: Rc<ParkState>,
    /// A [`RingParker`](super::RingParker) exists: the shard sleeps in this ring, so the
    /// ring's eventfd is left disabled (nobody waits on it, and signalling it costs the
    /// kernel a wake-up).
    pub(super) parked: bool,
    pub(super) closed: bool,
    /// Datagrams the last [`UdpRing::poll`] received, and sends it queued (the adaptive
    /// spin's hint that an exchange is in flight).
    pub(super) last_poll_received: u64,
    pub(super) last_poll_sent: u64,
    pub(super) spin: SpinState,
    pub(super) _not_send: std::marker::PhantomData<*const ()>,
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
        // Send slots are reused as soon as their SQEs are consumed, which is sound only on
        // a ring that issues every SQE inside the enter that consumes it (see `send`).
        if !inline_issue_ring(ring.params()) {
            return Err(UdpError::Config(
                "the UDP ring must not be set up with SQPOLL or IOPOLL: send slots are reused \
                 once their SQEs are consumed",
            ));
        }
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
    /// that ends a [`RingParker::park`](super::RingParker::park) (and sets
    /// [`RingParker::take_woken`](super::RingParker::take_woken)); the completion is
    /// counted in `wake_ups`, never shown to the handler. The eventfd is not read here
    /// (whoever else watches it still sees the signal). At most 16 per ring; the ring's own
    /// [`UdpRing::eventfd`] is refused (it would wake itself forever).
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

    pub(super) fn arm_wake(&mut self, i: u32) -> Result<(), UdpError> {
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

    /// Replaces the keyring that opens received datagrams (a key rotation): datagrams that
    /// none of the new keys opens are dropped and counted as `no_key`. `None` is refused
    /// where frames are expected sealed, as before.
    pub fn set_keyring(&mut self, keyring: Option<Keyring>) {
        self.keyring = keyring;
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

    pub(super) fn release_socket(&mut self, id: u32) {
        if let Some(slot) = self.sockets.get_mut(id as usize)
            && slot.take().is_some()
        {
            self.socket_count -= 1;
            self.free_sockets.push(id);
        }
    }

    pub(super) fn arm(&mut self, id: u32) -> Result<(), UdpError> {
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

    pub(super) fn submit_pending(&mut self) -> Result<(), UdpError> {
        let (submitter, mut sq, _) = self.ring.split();
        let r = submit(&mut sq, &submitter, &mut self.counters);
        if let Some(slots) = self.slots.as_mut() {
            let by = slots.next_snapshot();
            slots.release_issued(&sq, &mut self.counters, by);
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
        sq.sync();
        let by = slots.next_snapshot();
        slots.release_issued(&sq, &mut self.counters, by);
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
            // The kernel may still write into receive buffers or read send slots: never
            // free them. This is a bounded, one-off leak at shutdown of a misbehaving
            // kernel.
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
        // io_uring (and its registration of the buffer ring) goes before `bufs` and
        // `slots`.
    }
}

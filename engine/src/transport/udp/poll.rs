//! Submitting and reaping: [`UdpRing::poll`] enters the kernel when something is queued or
//! deferred, releases the sends the kernel is done with, and reaps every completion:
//! receives go to `recv`, failed sends correct the counters (and may turn GSO off),
//! wake-up polls set the parker's flag, and ended multishot requests are re-armed.

use io_uring::cqueue;

use super::recv::receive_one;
use super::send::Sender;
use super::{
    IORING_ENTER_GETEVENTS, KIND_RECV, KIND_SEND, KIND_SHIFT, KIND_TRAIN, KIND_WAKE,
    SLOT_INDEX_MASK, SocketId, UdpError, UdpHandler, UdpRing, send_size,
};

impl UdpRing {
    /// Submits queued sends, reaps every completion (running `handler` on each valid
    /// datagram) and returns the number of completions seen. Never blocks.
    ///
    /// Sends the handler queues are submitted before it returns, except on a ring with a
    /// [`RingParker`](super::RingParker): there they stay queued (up to `submit_batch` of
    /// them) for the shard's next park, which submits them and waits in the same
    /// `io_uring_enter`, or for the next `poll` / `flush`, whichever comes first.
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

    /// One pass: enters the kernel if deferred work is pending (or, with `submit`, SQEs are
    /// queued; also when a full batch is queued), releases the sends the kernel is done
    /// with, and reaps every completion.
    pub(super) fn poll_once<H: UdpHandler>(
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
            let (Some(bufs), Some(slots)) = (self.bufs.as_mut(), self.slots.as_mut()) else {
                cq.sync();
                return Ok(0);
            };
            // Checked before every store of the CQ head (each `sync`): an overflow keeps
            // the CQ full until the head moves, so none goes unseen.
            if sq.cq_overflow() {
                slots.late_check = false;
            }
            cq.sync();
            slots.cq_snapshots += 1;
            // The SQ was seen empty before this snapshot was taken: the completions of the
            // sends released now are in it.
            let by = slots.cq_snapshots;
            slots.release_issued(&sq, &mut self.counters, by);
            for cqe in &mut cq {
                seen += 1;
                let ud = cqe.user_data();
                let index = (ud & SLOT_INDEX_MASK) as u32;
                match ud >> KIND_SHIFT {
                    // Sends post a completion only when they fail (IOSQE_CQE_SKIP_SUCCESS);
                    // their slots were released when the kernel consumed their SQEs and
                    // counted as sent, which this corrects.
                    KIND_SEND | KIND_TRAIN if cqe.result() < 0 => {
                        debug_assert!(
                            slots.completion_in_time(ud),
                            "a send failed (errno {}) after its slot was released: the kernel \
                             issued it outside the io_uring_enter that consumed its SQE",
                            -cqe.result()
                        );
                        let (datagrams, bytes) = send_size(ud);
                        self.counters.datagrams_sent =
                            self.counters.datagrams_sent.wrapping_sub(datagrams);
                        self.counters.bytes_sent = self.counters.bytes_sent.wrapping_sub(bytes);
                        self.counters.send_errors += datagrams;
                        self.counters.send_errno_last = -cqe.result();
                        // A device that cannot segment (no checksum offload: EIO) or a
                        // route that refuses GSO: send every datagram alone from now on.
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
                                sender.counters.datagrams_received += 1;
                                let refs = std::mem::take(&mut self.refs);
                                let (decoder, keyring) = (&self.decoder, self.keyring.as_ref());
                                // SAFETY: a completion of this ring's multishot receive,
                                // which picks from `bufs` (registered as its buffer group),
                                // named `bid`, and each completion is reaped once.
                                let refs = unsafe {
                                    bufs.with_buffer(bid, |buf| {
                                        receive_one(
                                            buf,
                                            res as usize,
                                            ipv4,
                                            known,
                                            SocketId(index),
                                            decoder,
                                            keyring,
                                            refs,
                                            handler,
                                            &mut sender,
                                        )
                                    })
                                };
                                // A refused id ran nothing and gave nothing back.
                                self.refs = refs.unwrap_or_else(|| {
                                    sender.counters.drop_cause("bad_buffer_id");
                                    Vec::new()
                                });
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
            if sq.cq_overflow() {
                slots.late_check = false;
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
}

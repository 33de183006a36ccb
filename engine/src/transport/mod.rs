//! UDP and TCP for the shards: an io_uring ring per shard for datagrams, glommio streams
//! for frames over TCP. Every received byte goes through `ringleader_wire`'s decoder before
//! anything reads it; bad input is counted by cause and dropped.
//!
//! # Why a ring of our own, woken through an eventfd
//!
//! glommio 0.9 owns its io_uring rings and exposes no way to submit arbitrary SQEs
//! (multishot `recvmsg`, provided buffer rings, `send` with an address): its `UdpSocket`
//! copies each datagram through its own buffers, one SQE and one wake-up per datagram.
//! So each shard creates its own io_uring ([`UdpRing`]) on the shard thread, with
//! `SINGLE_ISSUER | DEFER_TASKRUN` when the kernel has them (6.1): the kernel does
//! receive work only when the shard enters the ring, in batches, with no interrupts of
//! the executor thread. The ring has an eventfd registered (`IORING_REGISTER_EVENTFD`);
//! the shard keeps one glommio read of that eventfd in flight
//! ([`crate::runtime::Watch`]), so "our ring has work" is just another glommio I/O
//! completion and the executor sleeps and wakes as usual, with no polling thread and no
//! busy loop. While the shard is draining the ring it disables the eventfd
//! (`IORING_CQ_EVENTFD_DISABLED`) so its own completions do not wake it again, and it
//! re-checks the ring after re-enabling so no completion can slip between the two.
//! Alternatives considered: busy-polling our ring from a glommio task (burns a core that
//! other shards or processes need: the benchmark host has two cores for everyone);
//! `IORING_OP_MSG_RING` into glommio's ring (glommio would not know the completion);
//! a thread blocked in `io_uring_enter` (a second thread per shard, breaking
//! thread-per-core and single-issuer).
//!
//! # Parking in the ring (what a shard should use)
//!
//! The eventfd path costs a wake-up four hops (kernel -> eventfd -> glommio's ring ->
//! glommio task -> our ring) and glommio's sleep/wake bookkeeping (a `membarrier`, timer
//! re-arming: several system calls). So a shard can instead sleep in its own ring:
//! [`crate::runtime::ShardContext::park_in`] (a one-line replacement for
//! `ctx.watch(ring.eventfd())`) makes [`crate::runtime::ShardContext::wait`] block in
//! `io_uring_enter(GETEVENTS, min_complete 1, timeout)` on the UdpRing through a
//! [`RingParker`]; a datagram wakes the thread in one hop, and the ring's eventfd is no
//! longer signalled. What glommio drove before still gets through:
//! - commands: the command eventfd is polled in the ring ([`UdpRing::wake_on`], multishot
//!   `POLL_ADD`), so a command ends the park at once;
//! - mesh messages: glommio's channels wake only a shard asleep in glommio, so `mesh_send`
//!   to a parked shard also signals its command eventfd; the woken shard then gives glommio
//!   a turn, which moves the message into the inbox;
//! - everything else glommio owns (TCP streams, other watches, glommio timers): the park
//!   never lasts longer than `ParkConfig::glommio_turn_interval_us` (default 10 ms) before
//!   glommio gets a turn (the shard's task goes pending on an already-due glommio timer, so
//!   the executor polls its rings, timers and channels and resumes it without sleeping),
//!   so such work is late by at most that interval.
//!
//! Measured (bench `transport --duration 5s`, shared 2-core host at load average 4-5,
//! three runs back to back; each divided by the raw baseline of the same run):
//! flood `ratio_pps` 1.26, 1.50, 1.33 (every round >= 1.08); ping-pong p50 25/32/21 µs
//! against raw 17/17/18 µs, p99 65/1005/62 µs against raw 47/43/53 µs. The eventfd path in
//! the same conditions (`--park glommio`): ratio 0.80, p50 62 µs, p99 277 µs. So the flood
//! check holds and the round trip is 2-3x faster at p50 than before, but its p99 is still
//! 1.2-1.4x the raw one on this host (and about one run in three hits the host's ms-scale
//! scheduling tail, as the 1005 µs run did). What was tried:
//! - turn interval 1 ms instead of 10 ms: p99 171-263 µs against 61-89 µs (a turn costs
//!   15-20 µs of glommio reactor work);
//! - busy-polling the ring before parking (`--spin-us 30`): p50 15 µs (below raw) but p99
//!   1 ms: on a host shared with busy processes a spinning thread is preempted for a slice;
//! - pinning the shards (`--pin true`): p99 2 ms (a pinned thread cannot leave a busy CPU);
//! - parking in `epoll_pwait2` on the sockets (so the socket's synchronous wake-up hint
//!   reaches the scheduler): same p50, no better p99; removed;
//! - waiting for a batch of completions when the last poll saw many (fewer wake-ups for
//!   the flood's sender): ratio 0.64 (the timed-out batches cost more enters); removed.
//!
//! What is left of the gap is the scheduler: raw's blocking `recv` is woken with the
//! sender's sync hint and usually runs on the sender's CPU, io_uring's wake-up carries no
//! hint, so under load the woken shard more often waits behind another process.
//!
//! # What the kernel must have
//!
//! [`features::detect`] runs before any ring is built: provided buffer rings (5.19),
//! multishot `recvmsg` (6.0); a missing one is a [`MissingFeature`] error naming it and
//! the version needed. `DEFER_TASKRUN` (6.1) is optional (fallback: `COOP_TASKRUN`).

pub mod bufring;
pub mod counters;
pub mod features;
pub mod limits;
pub mod tcp;
pub mod udp;

pub use counters::{DROP_CAUSES, UdpCounters};
pub use features::{Features, MissingFeature};
pub use limits::{LimitError, raise_nofile};
pub use tcp::{FrameListener, FrameStream, StreamError};
pub use udp::{
    CloseReport, Discard, Parked, RingParker, SendError, Sender, SocketId, SocketOptions,
    UdpConfig, UdpError, UdpHandler, UdpRing,
};

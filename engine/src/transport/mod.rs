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
//! # Sending: GSO runs, no completions, submit with the park
//!
//! - **UDP GSO.** Consecutive sends from one socket to one peer of one size (the last of a
//!   run may be shorter) are gathered into one `sendmsg` with a `UDP_SEGMENT` control
//!   message (at most [`udp::UdpConfig::gso_segments_max`] = 64 datagrams, 60,000 bytes):
//!   one SQE and one pass down the network stack for the run; the kernel splits it back
//!   into separate datagrams, so the receiver gets, decodes and validates every datagram on
//!   its own, and `datagrams_queued` / `datagrams_sent` / `datagrams_received` count real
//!   datagrams (`send_trains` counts the GSO sends). A run never outlives the [`Sender`]
//!   that gathered it (it becomes an SQE before anything enters the kernel), so datagrams
//!   keep their order. Detected at start-up ([`Features::udp_gso`], 4.18); a GSO send the
//!   kernel refuses (EIO from a device without checksum offload, EINVAL, EMSGSIZE) turns
//!   runs off for that ring (`gso_disabled`), and those datagrams count as send errors.
//!   The receiving side does not use GRO: a coalesced receive needs a buffer as large as
//!   the sender's whole run (64 KiB), which a buffer ring shared by thousands of member
//!   sockets cannot afford; the kernel splits a GSO skb at a socket without `UDP_GRO`.
//! - **Sends post no completion.** Every send is `MSG_DONTWAIT` (the kernel's
//!   `REQ_F_NOWAIT`: it is tried once, inline, while its SQE is consumed, and fails with
//!   EAGAIN instead of arming a poll) and `IOSQE_CQE_SKIP_SUCCESS`; so once the submission
//!   queue is seen empty after an enter, every send pushed before is done and its slot is
//!   free again. Only failures post completions, which correct the counters.
//! - **Submit and wait in one system call.** On a ring with a [`RingParker`], what a
//!   poll's handler sends (an answer) stays queued; the shard's next park submits it in
//!   the same `io_uring_enter(GETEVENTS)` that sleeps (the count must be exact: the kernel
//!   skips the wait when it submitted fewer than asked). Before a glommio turn the parker
//!   submits first, so a turn never delays an answer. The SWIM host flushes after every
//!   poll and keeps its old behaviour.
//! - **Adaptive spin** ([`UdpRing::spin_adaptive`], opt-in by calling it): busy-polls the
//!   ring's flags for up to `spin_us_max` (50 µs) before parking, only when the last poll
//!   that reaped anything both received and sent (an exchange is in flight); a spin that
//!   finds nothing ends that until the next such poll, and after two spins in a row that
//!   found nothing in time it skips the next 1, 2, 4, ... 1,024 chances; an idle shard
//!   never spins. In a ping-pong the two spinning shards end up on two CPUs, and an answer
//!   is seen in user space with no wake-up at all: the round trip is then the two sends'
//!   kernel work plus the two receives' task work. The bench's transport scenario uses it
//!   (`--spin-max-us`, default 50); the SWIM host does not (thousands of members per core
//!   exchange all the time, and a core spent spinning is a core not probing).
//!
//! Session 4 (bench `transport --duration 5s --json`, three runs back to back, load
//! average 1.5-1.6): with the adaptive spin, ping-pong p99 **0.85x, 0.94x, 0.85x** raw's
//! (engine p50/p99 20/53, 17/51, 16/46 µs; raw 25/62, 25/54, 25/54) and flood
//! `ratio_pps` 4.45, 3.93, 3.61. Until then the spin never paid for a loop that polls
//! once more after a spin: that empty poll reset "an exchange is in flight", so every
//! other park slept (adaptive 50 µs gave p50 28 µs, the same as not spinning); now only a
//! poll that reaps something updates it. The older measurements below are without the
//! spin.
//!
//! Measured (bench `transport --duration 5s --json`, shared 2-core host, load average
//! 2.0-3.1 from another agent's work; each figure is a ratio against the raw baseline of
//! the same run; three runs back to back from 03:12 UTC): flood `ratio_pps` 4.36, 3.11,
//! 4.01 (every round >= 2.82; 64 datagrams per SQE, ~22 per `io_uring_enter`, no drops);
//! ping-pong p99 1.31x, 1.41x, 1.40x raw's, p50 1.28x, 1.43x, 1.40x (1.07 enters per
//! answer, down from 2). An earlier set at load 3.8-6.0 (partly overlapping this
//! session's own test loop): flood 1.28, 1.89, 4.46 (one round at 1.00), p99 1.37x,
//! 3.27x, 1.34x. So the flood check holds; the round-trip check does not: the engine's
//! answer path costs more CPU than a blocking `recv` + `send` (below), and on this host
//! both sides of a ping-pong mostly share one CPU, where every microsecond of CPU is a
//! microsecond of round trip.
//!
//! Where the time went (perf, cpu-clock, before these changes): the engine's flood sender
//! spent 82% of its CPU in `udp_sendmsg` (the loopback path including the receiver's
//! softirq), 5% in user space; io_uring's own per-SQE cost was ~3%. One SQE per datagram
//! therefore could not beat `sendmmsg` however the SQEs were batched (5.4 datagrams per
//! enter already); only GSO removes per-datagram stack work: flood ratio 3.4 in the first
//! run with it (engine 684k pps, raw 203k). In the ping-pong both shards run on the same CPU
//! most of the time (perf sched: 94% of switches, as raw's two threads), so a round trip
//! costs the sum of both sides' CPU work: ~32 µs of CPU per round trip for the engine
//! against ~23 µs for raw, of which io_uring's receive path (poll wake-up, task work,
//! multishot recvmsg into a provided buffer) ~2 µs more than a blocking `recv`, the
//! waiting path ~1.5 µs, two `io_uring_enter` per answer ~1 µs (now one), and framing,
//! checksum and validation ~1.4 µs of user space.
//!
//! Tried and not kept:
//! - a fixed busy-poll before parking (`--spin-us`): 15 µs once gave p50 16 / p99 55 µs
//!   against raw 25 / 56; 40 µs gave p50 58 / p99 169 (a spinning shard on its peer's CPU
//!   only delays the answer) and under load the spinner is preempted for a whole slice;
//! - glommio turn every 200 ms instead of 10 ms: p99 87 -> 73 µs in back-to-back runs, not
//!   enough to matter and it delays glommio-driven work; kept at 10 ms;
//! - from the previous session: 1 ms turns, pinning, epoll parking, waiting for batches of
//!   completions (see git history of this note).
//!
//! # What the kernel must have
//!
//! [`features::detect`] runs before any ring is built: provided buffer rings (5.19),
//! multishot `recvmsg` (6.0); a missing one is a [`MissingFeature`] error naming it and
//! the version needed. `DEFER_TASKRUN` (6.1) is optional (fallback: `COOP_TASKRUN`).

pub mod bufring;
pub mod counters;
pub mod eventfd;
pub mod features;
pub mod limits;
pub mod tcp;
pub mod udp;

pub use counters::{DROP_CAUSES, UdpCounters};
pub use eventfd::EventFd;
pub use features::{Features, MissingFeature};
pub use limits::{LimitError, raise_nofile};
pub use tcp::{FrameListener, FrameStream, StreamError};
pub use udp::{
    CloseReport, Discard, Parked, RingParker, SendError, Sender, SocketId, SocketOptions,
    UdpConfig, UdpError, UdpHandler, UdpRing,
};

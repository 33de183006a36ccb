//! UDP and TCP for the shards: an io_uring ring per shard for datagrams ([`udp`]), glommio
//! streams for frames over TCP ([`tcp`]), and what both need from the kernel: the
//! features checked at start-up ([`features`]), resource limits ([`limits`]), provided
//! buffer rings ([`bufring`]) and eventfds ([`eventfd`]). Every received byte goes through
//! `ringleader_wire`'s decoder before anything reads it; bad input is counted by cause
//! ([`counters`]) and dropped.
//!
//! This module must never block a shard (the one bounded wait is [`UdpRing::close`]),
//! queue without a bound, hold protocol state, panic on received bytes, or free memory the
//! kernel may still use. It never depends on the runtime: the runtime drives the transport
//! and builds its wake-ups from the transport's [`EventFd`], not the other way round.
//!
//! # Why a ring of our own
//!
//! glommio 0.9 owns its io_uring rings and exposes no way to submit arbitrary SQEs
//! (multishot `recvmsg`, provided buffer rings, `send` with an address): its `UdpSocket`
//! copies each datagram through its own buffers, one SQE and one wake-up per datagram.
//! So each shard creates its own io_uring ([`UdpRing`]) on the shard thread, with
//! `SINGLE_ISSUER | DEFER_TASKRUN` when the kernel has them (6.1): the kernel does
//! receive work only when the shard enters the ring, in batches, with no interrupts of
//! the executor thread. Alternatives considered: busy-polling our ring from a glommio task
//! (burns a core that other shards or processes need); `IORING_OP_MSG_RING` into glommio's
//! ring (glommio would not know the completion); a thread blocked in `io_uring_enter` (a
//! second thread per shard, breaking thread-per-core and single-issuer).
//!
//! # Waking the shard: the ring's eventfd, or parking in the ring
//!
//! The ring has an eventfd registered (`IORING_REGISTER_EVENTFD`, [`UdpRing::eventfd`]): a
//! shard that sleeps in glommio keeps one glommio read of it in flight, so "our ring has
//! work" is just another glommio I/O completion and the executor sleeps and wakes as
//! usual, with no polling thread and no busy loop. While a poll drains the ring it
//! disables the eventfd (`IORING_CQ_EVENTFD_DISABLED`) so its own completions do not wake
//! it again, and it re-checks the ring after re-enabling so no completion can slip between
//! the two.
//!
//! That path costs a wake-up four hops (kernel -> eventfd -> glommio's ring -> glommio
//! task -> our ring) and glommio's sleep/wake bookkeeping (a `membarrier`, timer
//! re-arming: several system calls). So a shard can instead sleep in its own ring through
//! a [`RingParker`] (`io_uring_enter(GETEVENTS, min_complete 1, timeout)`): a datagram
//! wakes the thread in one hop, and the ring's eventfd is no longer signalled. Other
//! wake-ups reach a parked shard through eventfds polled in the ring
//! ([`UdpRing::wake_on`], a multishot `POLL_ADD`): a signal of one ends the park at once.
//! Whatever else the shard's executor owns (TCP streams, timers, channels) is the caller's
//! to interleave with the park; the ring only promises that a park never outlasts its
//! timeout.
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
//!   skips the wait when it submitted fewer than asked). [`RingParker::submit_queued`]
//!   sends it without waiting, for a shard about to do something else first. On a ring
//!   without a parker, every poll submits what its handler queued before it returns.
//! - **Adaptive spin** ([`UdpRing::spin_adaptive`], opt-in by calling it): busy-polls the
//!   ring's flags for up to `spin_us_max` (default 50 µs) before parking, only when the
//!   last poll that reaped anything both received and sent (an exchange is in flight); a
//!   spin that finds nothing ends that until the next such poll, and after two spins in a
//!   row that found nothing in time it skips the next 1, 2, 4, ... 1,024 chances; an idle
//!   shard never spins. In a ping-pong the two spinning shards end up on two CPUs, and an
//!   answer is seen in user space with no wake-up at all. A fixed spin does not do this:
//!   a shard spinning on its peer's CPU only delays the answer. A shard whose thousands of
//!   members exchange all the time should not spin (a core spent spinning is a core not
//!   probing).
//!
//! What these choices measured, and what was tried and not kept, is in
//! `docs/BENCHMARKS.md` (section "Transport").
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
pub mod per_ip;
pub mod tcp;
pub mod udp;

pub use counters::{DROP_CAUSES, UdpCounters};
pub use eventfd::EventFd;
pub use features::{Features, MissingFeature};
pub use limits::{LimitError, port_base_below_ephemeral, raise_nofile};
pub use per_ip::PerIpCount;
pub use tcp::{ByteBudget, FrameBuf, FrameListener, FrameStream, StreamError, read_frame};
pub use udp::{
    CloseReport, Discard, Parked, RingParker, SendError, Sender, SocketId, SocketOptions,
    UdpConfig, UdpError, UdpHandler, UdpRing,
};

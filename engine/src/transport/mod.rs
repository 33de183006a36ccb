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
//! Measured cost (bench `transport`, shared 2-core host under load): throughput is at par
//! with raw sendmmsg/recvmmsg, but a ping-pong round trip pays the extra hops (kernel ->
//! eventfd -> glommio's ring -> glommio task -> our ring): p50 tens of microseconds more than
//! blocking sockets, and a p99 in milliseconds under load. [`UdpRing::spin_poll`] (busy-poll
//! the ring's flags before parking) removes the p50 gap at the price of CPU. The next step,
//! not done here: let the shard park in its own ring (`io_uring_enter` with a timeout at the
//! next glommio timer) whenever glommio has no runnable task, so a datagram wakes the thread
//! in one hop.
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
    CloseReport, Parked, RingParker, SendError, Sender, SocketId, SocketOptions, UdpConfig,
    UdpError, UdpHandler, UdpRing,
};

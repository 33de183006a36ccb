//! Ringleader's engine: SWIM membership with the Lifeguard extensions and Raft replicated
//! logs, thread-per-core on io_uring.
//!
//! The protocol cores ([`swim`], [`serf`], [`raft`], with [`time`]) are sans-IO crates of
//! their own (`ringleader-swim`, `ringleader-serf`, `ringleader-raft`, `ringleader-time`),
//! re-exported here under their old paths: they take inputs with the current time and
//! return outputs. They never read a clock, never touch a socket or a file, and draw
//! randomness only from an RNG handed to them. The simulator (`ringleader-sim`) drives the
//! same code on a virtual clock; [`runtime`] and [`transport`] drive it on real cores and
//! sockets.
#![warn(missing_docs)]

pub mod client;
pub mod host;
pub mod log;
pub mod multiraft;
pub mod runtime;
pub mod transport;

pub use ringleader_raft as raft;
pub use ringleader_raft::kv;
pub use ringleader_serf as serf;
pub use ringleader_swim as swim;
pub use ringleader_time as time;

pub use host::{Host, HostConfig, HostEvent, Node, NodeBuilder, StreamListeners};
pub use time::{Clock, Time};

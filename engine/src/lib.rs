//! Ringleader's engine: SWIM membership with the Lifeguard extensions and Raft replicated
//! logs, thread-per-core on io_uring.
//!
//! The protocol cores ([`swim`], [`raft`]) are sans-IO: they take inputs with the current
//! time and return outputs. They never read a clock, never touch a socket or a file, and
//! draw randomness only from an RNG handed to them. [`sim`] drives the same code on a
//! virtual clock; [`runtime`] and [`transport`] drive it on real cores and sockets.
#![warn(missing_docs)]

pub mod client;
pub mod host;
pub mod kv;
pub mod log;
pub mod multiraft;
pub mod raft;
pub mod runtime;
pub mod serf;
pub mod sim;
pub mod swim;
pub mod time;
pub mod transport;

pub use host::{Host, HostConfig, HostEvent, Node, NodeBuilder, StreamListeners};
pub use time::{Clock, Time};

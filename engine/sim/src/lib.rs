//! Deterministic simulator: virtual clock, network and disk with faults.
//!
//! Single-threaded and seeded: the same seed replays the same run, event for event. The
//! protocol cores run here exactly as they run under the engine's runtime
//! (`ringleader_engine::runtime`); only time, the network and the disk are simulated.
//!
//! What it must never be: a dependency of a protocol crate or of the engine's library.
//! Only tests, benchmarks, the bench harness and the tools use it, so the simulator is not
//! compiled into what runs in production.
//!
//! - [`sched`]: the virtual clock and event queue every simulation is built on.
//! - [`net`]: a network model with latency, loss, duplication, reordering and partitions.
//! - [`swim`]: SWIM clusters.
//! - [`raft`]: Raft clusters with clients, disks and a linearizability check.
//! - [`serf`]: Serf layers over SWIM clusters: events, queries, Vivaldi.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod net;
pub mod raft;
pub mod sched;
pub mod serf;
pub mod swim;

pub use sched::{Scheduler, SimRng};

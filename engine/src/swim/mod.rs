//! SWIM + Lifeguard membership core (sans-IO, deterministic).
//!
//! What it is for: deciding who is in the cluster, with memberlist's semantics — randomized
//! round-robin probes, indirect probes with Lifeguard's nacks, a TCP-fallback probe,
//! suspicion with incarnation numbers and refutation, Lifeguard's local health (awareness)
//! and dynamic suspicion timeouts, the buddy system, a bounded piggyback broadcast queue,
//! push-pull anti-entropy (also the join), graceful leave, reaping, and reconnecting to
//! failed members so that both sides of a healed partition merge again.
//!
//! What it must never do: read a clock, touch a socket, draw randomness from anywhere but
//! the RNG it was given, panic on anything a peer sends, or grow a buffer past a bound
//! named in [`Config`].
//!
//! - [`Member`]: one member; inputs in, [`Output`]s and [`Event`]s out.
//! - [`Directory`]: interned names and addresses shared by the members of a shard or a
//!   simulation, exact wire sizes, conversion to and from `ringleader_wire`.
//! - [`Item`]: the compact form of SWIM messages that members exchange.
//! - [`config`]: presets (`lan`, `wan`, `local`) and the Lifeguard formulas.
//! - [`BroadcastQueue`]: the bounded retransmit queue.
//!
//! # Extension points for the layer above (Serf)
//! - [`Member::broadcast`] queues the layer's own messages (a second bounded queue with its
//!   own retransmit multiplier and key invalidation), piggybacked after membership updates.
//! - Non-SWIM messages that arrive come out as [`Event::Message`].
//! - [`Member::set_user_state`] supplies the opaque push-pull state; [`Event::UserState`]
//!   delivers the peer's.
//! - [`Member::set_coordinate`] attaches a Vivaldi coordinate to acks; every answered probe
//!   yields [`Event::Rtt`] with the peer's coordinate.
//!
//! # Improvements over memberlist (with the reason)
//! - Members learned from a push-pull are not re-broadcast (only the peer itself is): the
//!   other side knows them already, and re-broadcasting turns a join of thousands of
//!   members into an n² gossip storm.
//! - Reconnect: every `reconnect_interval_ms` a member tries a push-pull with one failed
//!   member (dead, or reaped within `reconnect_timeout_ms`), and with its seeds when it is
//!   alone, so that a healed partition re-merges (memberlist forgets reaped members).

pub mod config;
mod directory;
mod hash;
mod item;
mod member;
mod queue;
mod suspicion;

pub use config::{Awareness, Config};
pub use directory::{Directory, DirectoryError, Info, NAME_BYTES_MAX, PROTOCOL, SharedDirectory};
pub use hash::{FxHashMap, FxHasher};
pub use item::{InfoId, Item, NodeId, NodeState, PushPullState, StreamRequest, StreamResponse};
pub use member::{
    Event, Member, Output, Stats, Status, StreamError, StreamTransmit, SwimError, Transmit,
};
pub use queue::BroadcastQueue;
pub use ringleader_wire::msg::swim::MemberState;
pub use suspicion::Suspicion;

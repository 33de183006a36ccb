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
//!   simulation, exact wire sizes, conversion to and from `ringleader_wire`; its owner
//!   reclaims what no member holds any more ([`Directory::collect`] with
//!   [`Member::mark_ids`]).
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
//! # Where it departs from memberlist (and why)
//! - Join rumors (a member new to the relaying member) are the lowest priority class, ride
//!   only on probes and acks (they never start a gossip round), are retransmitted at most
//!   `join_rumor_retransmit_mult` times and stop when heard back (`join_rumor_damping`,
//!   Demers et al.'s counter). Members learned from a push-pull are not re-broadcast at
//!   all. With memberlist's rules a join of 10,000 members is an n² × limit gossip storm
//!   that saturates every queue for minutes; here push-pull carries the bulk instead.
//! - Push-pull is a digest exchange, not a swap of whole tables: per-bucket digests of the
//!   member table travel, the answer carries the differing buckets' entries (only those
//!   changed since the last exchange with that peer, when known), and a push sends back
//!   what the answerer lacked; members that agree exchange a few hundred bytes whatever
//!   the cluster's size (DESIGN.md, "Anti-entropy and joins"). A join is still a full
//!   exchange; `push_pull_digest = false` restores memberlist's full exchanges.
//! - After a join has been answered, catch-up push-pulls go to a seed (seeds saw every
//!   join) `catch_up_interval_ms` later and then at doubling intervals while they bring
//!   members no rumor had (`seed_catch_up`), so a cluster started at once converges about
//!   a second after its last join. An exchange that finds two tables equal retires the
//!   join rumors still queued. A probe from an unknown member triggers a push-pull (it
//!   takes the place of the next periodic one).
//! - Accusations (suspect, dead) count only from a member this one sees up, or about this
//!   member itself: after a healed partition the other side's accusations only say it
//!   could not reach this side. Refutations, and alives that clear a suspicion, go in the
//!   first priority class with the suspicions, and every new suspicion is also sent to the
//!   suspect at once (the buddy system at the start, not only at the next probe), so a
//!   live suspect refutes within a round trip.
//! - Join rumors can also start gossip rounds of their own (`join_rumor_gossip_nodes`, off
//!   in the presets): faster dissemination at the price of datagrams, which a host
//!   simulating thousands of members on two cores cannot pay (measured at 3,000 members
//!   joining at 25 per second: the broadcast queue's scans and the extra sends took the
//!   process to 1.4 cores).
//! - Reconnect: every `reconnect_interval_ms` a member stream-pings one failed member
//!   (dead, or reaped within `reconnect_timeout_ms`) and push-pulls with it if it answers;
//!   alone, it re-joins its seeds. memberlist forgets reaped members, so a healed partition
//!   never re-merges without an outside join.
//! - Otherwise failure news (suspect, dead, refutations, leaves) keeps memberlist's rules.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
mod directory;
mod hash;
mod item;
mod member;
mod queue;
mod suspicion;

pub use config::{Awareness, Config};
pub use directory::{
    COLLECT_INTERVAL_MS_DEFAULT, CollectStats, Directory, DirectoryError, Footprint, Info, Marks,
    NAME_BYTES_MAX, PROTOCOL, SharedDirectory,
};
pub use hash::{FxHashMap, FxHasher};
pub use item::{
    InfoId, Item, NameHash, NodeId, NodeState, PushPullState, StreamRequest, StreamResponse,
};
pub use member::{
    Event, Member, Output, Stats, Status, StreamError, StreamTransmit, SwimError, Transmit,
};
pub use queue::BroadcastQueue;
pub use ringleader_wire::msg::swim::MemberState;
pub use suspicion::Suspicion;

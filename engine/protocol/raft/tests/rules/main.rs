//! The Raft core against the rules of the paper (Ongaro & Ousterhout 2014) and the thesis,
//! one test per rule, driven through a small deterministic in-memory network.
//!
//! `cluster` holds the in-memory network and the helpers; each other module covers a part of
//! the paper or the thesis, or the refusal of what no correct peer sends.

mod cluster;
mod deadlines;
mod election;
mod malformed;
mod membership;
mod reads;
mod replication;
mod robustness;

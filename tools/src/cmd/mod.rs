//! One module per subcommand; each exports `Args` and `run`.

pub mod agent;
pub mod agent_cli;
pub mod compare;
pub mod faults;
pub mod flamegraph;
pub mod flood;
pub mod kv;
pub mod netns;
pub mod node;
pub mod raft_crash;
pub mod server;
pub mod swim_members;
pub mod wal_crash;

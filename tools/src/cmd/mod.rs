//! One module per subcommand; each exports `Args` and `run`.

pub mod compare;
pub mod flamegraph;
pub mod node;
pub mod server;
pub mod wal_crash;

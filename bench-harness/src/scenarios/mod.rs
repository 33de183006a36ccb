//! One module per scenario; each exports `Args` and `run`.

pub mod baseline;
pub mod cluster;
pub mod quick;
pub mod raft;
pub mod sim_raft;
pub mod sim_serf;
pub mod sim_swim;
pub mod swim;
pub mod transport;
pub mod wal;

//! `ringleader-bench`: one subcommand per scenario. See the crate docs of `ringleader_bench`.

use clap::{Parser, Subcommand};
use ringleader_bench::scenarios;

#[derive(Parser, Debug)]
#[command(
    name = "ringleader-bench",
    version,
    about = "Ringleader load benchmarks with same-run baselines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The denominators: raw loopback UDP, raw fdatasync, raw TCP.
    Baseline(scenarios::baseline::Args),
    /// Every scenario briefly, with one summary table (the README's main job).
    Quick(scenarios::quick::Args),
    /// Write-ahead log appends with group commit, against raw and naive fdatasync.
    Wal(scenarios::wal::Args),
    /// The io_uring transport against raw sendmmsg/recvmmsg and glommio's UdpSocket.
    Transport(scenarios::transport::Args),
    /// A live SWIM cluster on loopback.
    Swim(scenarios::swim::Args),
    /// A replicated key-value service: separate node processes, real sockets and disks.
    Raft(scenarios::raft::Args),
    /// One node of the `raft` scenario's cluster (started by it).
    #[command(hide = true)]
    RaftNode(scenarios::raft::NodeArgs),
    /// Runs on each host of a benchmark across machines; does what `cluster` asks.
    Agent(scenarios::cluster::AgentArgs),
    /// A benchmark across machines: `swim` or `raft` on the agents given, results merged.
    Cluster(scenarios::cluster::Args),
    /// Deterministic simulations of the protocol cores.
    #[command(subcommand)]
    Sim(SimCommand),
}

#[derive(Subcommand, Debug)]
enum SimCommand {
    /// SWIM + Lifeguard membership in the simulator.
    Swim(scenarios::sim_swim::Args),
    /// Raft with faults and a linearizability check in the simulator.
    Raft(scenarios::sim_raft::Args),
    /// Serf events, queries and Vivaldi coordinates in the simulator.
    Serf(scenarios::sim_serf::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Baseline(a) => scenarios::baseline::run(a),
        Command::Quick(a) => scenarios::quick::run(a),
        Command::Wal(a) => scenarios::wal::run(a),
        Command::Transport(a) => scenarios::transport::run(a),
        Command::Swim(a) => scenarios::swim::run(a),
        Command::Raft(a) => scenarios::raft::run(a),
        Command::RaftNode(a) => scenarios::raft::node_main(a),
        Command::Agent(a) => scenarios::cluster::agent::run(a),
        Command::Cluster(a) => scenarios::cluster::run(a),
        Command::Sim(SimCommand::Swim(a)) => scenarios::sim_swim::run(a),
        Command::Sim(SimCommand::Raft(a)) => scenarios::sim_raft::run(a),
        Command::Sim(SimCommand::Serf(a)) => scenarios::sim_serf::run(a),
    }
}

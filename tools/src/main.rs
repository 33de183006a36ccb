//! `ringleader-tools`: histogram compare and plots, flamegraphs, WAL crash tests, node agent,
//! key-value client.

use clap::{Parser, Subcommand};

mod cmd;

#[derive(Parser, Debug)]
#[command(name = "ringleader-tools", version, about = "Ringleader tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Side-by-side percentile table of .hgrm files or result folders, with an SVG overlay.
    Compare(cmd::compare::Args),
    /// Run a bench under `perf record` and write a flamegraph SVG.
    Flamegraph(cmd::flamegraph::Args),
    /// Kill a writing process at random moments and check no acknowledged entry was lost.
    WalCrash(cmd::wal_crash::Args),
    /// A single-member node that prints membership events as lines.
    Node(cmd::node::Args),
    /// One node of the replicated key-value service (multi-raft on the shards).
    Server(cmd::server::Args),
    /// Kill -9 nodes of a live 3-node cluster under writes; check nothing acknowledged is
    /// lost and the history is linearizable.
    RaftCrash(cmd::raft_crash::Args),
    /// One request to the replicated key-value service: put, get, del, cas or info.
    Kv(cmd::kv::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Compare(a) => cmd::compare::run(a),
        Command::Flamegraph(a) => cmd::flamegraph::run(a),
        Command::WalCrash(a) => cmd::wal_crash::run(a),
        Command::Node(a) => cmd::node::run(a),
        Command::Server(a) => cmd::server::run(a),
        Command::RaftCrash(a) => cmd::raft_crash::run(a),
        Command::Kv(a) => cmd::kv::run(a),
    }
}

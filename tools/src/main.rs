//! `ringleader-tools`: histogram compare and plots, flamegraphs, WAL crash tests, node agent,
//! key-value client, network-namespace test clusters and fault suites.

use clap::{Parser, Subcommand};

mod cmd;
mod kvload;
mod netns;

#[derive(Parser, Debug)]
#[command(name = "ringleader-tools", version, about = "Ringleader tools")]
struct Cli {
    /// What the engine's log says, on stderr: error, warn, info, debug or trace, or a
    /// `tracing` filter such as `ringleader_engine=debug`. `RUST_LOG`, when set, wins.
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
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
    /// Hostile traffic against one member of a live cluster (its own, or --target): what
    /// it refused by cause, its memory, and false positives (must be 0).
    Flood(cmd::flood::Args),
    /// A cluster member with a local HTTP/JSON API (what `serf agent` is to Serf).
    Agent(cmd::agent::Args),
    /// The members a running agent knows, with status and tags.
    Members(cmd::agent_cli::MembersArgs),
    /// Send a user event to every member through a running agent.
    Event(cmd::agent_cli::EventArgs),
    /// Ask the members a question through a running agent; prints answers as they come.
    Query(cmd::agent_cli::QueryArgs),
    /// Install, use, remove or list the cluster's encryption keys through a running agent.
    Keys(cmd::agent_cli::KeysArgs),
    /// Estimated round trip between two members, from their network coordinates.
    Rtt(cmd::agent_cli::RttArgs),
    /// Make a running agent leave the cluster gracefully and exit.
    Leave(cmd::agent_cli::LeaveArgs),
    /// Make a running agent join more seeds (another cluster, or its own after a partition).
    Join(cmd::agent_cli::JoinArgs),
    /// Mark a failed member left, cluster-wide.
    ForceLeave(cmd::agent_cli::ForceLeaveArgs),
    /// Stream a running agent's events (NDJSON with --json).
    Monitor(cmd::agent_cli::MonitorArgs),
    /// An emulated network in namespaces rlh1..rlhN (bridge in rlbr), and faults on it.
    Netns(cmd::netns::Args),
    /// A fault scenario on an emulated network (namespaces set up and torn down by
    /// itself); the last stdout line is its JSON report, `"ok": true|false`.
    Faults(cmd::faults::Args),
    /// The part of `faults` that runs inside the checker's namespace.
    #[command(hide = true)]
    FaultsDriver(cmd::faults::Args),
    /// N SWIM members on one host, their failure events and views as JSON lines (for the
    /// fault suites).
    #[command(hide = true)]
    SwimMembers(cmd::swim_members::Args),
}

/// Sends the engine's `tracing` events to stderr, filtered by `RUST_LOG` or `--log-level`.
fn init_log(level: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(&env)
            .map_err(|e| anyhow::anyhow!("RUST_LOG={env:?} is not a log filter: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| {
            anyhow::anyhow!(
                "--log-level {level:?} is not a log filter ({e}); give error, warn, info, \
                 debug, trace or a filter such as ringleader_engine=debug"
            )
        })?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(true)
        .init();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_log(&cli.log_level)?;
    match cli.command {
        Command::Compare(a) => cmd::compare::run(a),
        Command::Flamegraph(a) => cmd::flamegraph::run(a),
        Command::WalCrash(a) => cmd::wal_crash::run(a),
        Command::Node(a) => cmd::node::run(a),
        Command::Server(a) => cmd::server::run(a),
        Command::RaftCrash(a) => cmd::raft_crash::run(a),
        Command::Kv(a) => cmd::kv::run(a),
        Command::Flood(a) => cmd::flood::run(a),
        Command::Agent(a) => cmd::agent::run(a),
        Command::Members(a) => cmd::agent_cli::run(cmd::agent_cli::Cmd::Members(a)),
        Command::Event(a) => cmd::agent_cli::run(cmd::agent_cli::Cmd::Event(a)),
        Command::Query(a) => cmd::agent_cli::run(cmd::agent_cli::Cmd::Query(a)),
        Command::Keys(a) => cmd::agent_cli::run(cmd::agent_cli::Cmd::Keys(a)),
        Command::Rtt(a) => cmd::agent_cli::run(cmd::agent_cli::Cmd::Rtt(a)),
        Command::Leave(a) => cmd::agent_cli::run(cmd::agent_cli::Cmd::Leave(a)),
        Command::Join(a) => cmd::agent_cli::run(cmd::agent_cli::Cmd::Join(a)),
        Command::ForceLeave(a) => cmd::agent_cli::run(cmd::agent_cli::Cmd::ForceLeave(a)),
        Command::Monitor(a) => cmd::agent_cli::run(cmd::agent_cli::Cmd::Monitor(a)),
        Command::Netns(a) => cmd::netns::run(a),
        Command::Faults(a) => cmd::faults::run(a),
        Command::FaultsDriver(a) => cmd::faults::run_driver(a),
        Command::SwimMembers(a) => cmd::swim_members::run(a),
    }
}

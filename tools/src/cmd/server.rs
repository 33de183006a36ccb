//! `ringleader-tools server`: one node of a replicated key-value service — many Raft
//! groups on the shards, one write-ahead log per shard, peer links, the client protocol.
//!
//! ```text
//! ringleader-tools server --id 1 --listen 127.0.0.1:7001 \
//!     --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --dir /tmp/n1 [--groups 8]
//! ```
//!
//! Prints `listening ADDR` once every shard serves, and a summary line per shard when it
//! stops. SIGINT or SIGTERM stops it cleanly (logs closed, every acknowledged write
//! durable); a restart on the same `--dir` recovers. Shard `s` listens on the port of
//! `--listen` + `s` (peers and clients alike), so a node with `--shards 2` takes two ports.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use ringleader_engine::multiraft::{Server, ServerConfig};

/// Arguments of `server`.
#[derive(Parser, Debug)]
pub struct Args {
    /// This node's id (positive, unique in the cluster).
    #[arg(long)]
    pub id: u64,
    /// Base address this node listens on (shard s: port + s).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Every node of the cluster, this one included: ID=ADDR,ID=ADDR,...
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Data directory (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Raft groups hosted (every node must use the same number).
    #[arg(long, default_value_t = 1)]
    pub groups: u64,
    /// Shards (executor threads); every node must use the same number.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Pin shards to CPUs.
    #[arg(long)]
    pub pin: bool,
    /// Raft election timeout (ms); heartbeats go at a sixth of it.
    #[arg(long, default_value_t = 300)]
    pub election_timeout_ms: u64,
    /// Take a snapshot of a group every this many applied entries.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_every: u64,
    /// This node lost its data (a wiped or replaced disk) and rejoins an existing cluster
    /// under its old id: it takes no part in elections until it holds every write the
    /// cluster acknowledged. Never on the first start of a new cluster.
    #[arg(long)]
    pub rejoin: bool,
    /// Request timeout (ms): a request not answered by then gets "outcome unknown".
    #[arg(long, default_value_t = 5_000)]
    pub request_timeout_ms: u64,
    /// Size of each write-ahead-log segment (MiB).
    #[arg(long, default_value_t = 64)]
    pub segment_mib: u64,
}

fn parse_peers(list: &[String]) -> anyhow::Result<BTreeMap<u64, SocketAddr>> {
    let mut out = BTreeMap::new();
    for item in list {
        let Some((id, addr)) = item.split_once('=') else {
            bail!("--peers: `{item}` is not ID=ADDR (for example 2=127.0.0.1:7002)");
        };
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("--peers: `{id}` is not a node id"))?;
        let addr: SocketAddr = addr
            .trim()
            .parse()
            .with_context(|| format!("--peers: `{addr}` is not an address like 127.0.0.1:7002"))?;
        if out.insert(id, addr).is_some() {
            bail!("--peers lists node {id} twice");
        }
    }
    Ok(out)
}

/// Builds the node's configuration from the arguments.
pub fn config(a: &Args) -> anyhow::Result<ServerConfig> {
    let peers = parse_peers(&a.peers)?;
    let mut cfg = ServerConfig::new(a.id, peers, a.dir.clone());
    if let Some(&listed) = cfg.peers.get(&a.id)
        && listed.port() != a.listen.port()
    {
        bail!(
            "--listen {} and --peers {}={listed} disagree on the port: peers connect to the --peers address",
            a.listen,
            a.id
        );
    }
    cfg.listen = a.listen;
    cfg.groups = a.groups;
    cfg.shards = a.shards;
    cfg.pin = a.pin;
    cfg.raft.election_timeout_ms = a.election_timeout_ms;
    cfg.raft.heartbeat_interval_ms = (a.election_timeout_ms / 6).max(1);
    cfg.driver.snapshot_every_entries = a.snapshot_every;
    cfg.request_timeout_ms = a.request_timeout_ms;
    cfg.rejoin = a.rejoin;
    cfg.log.segment_bytes = a.segment_mib << 20;
    cfg.validate().map_err(|e| anyhow::anyhow!(e))?;
    Ok(cfg)
}

/// Runs the node until SIGINT or SIGTERM.
pub fn run(a: Args) -> anyhow::Result<()> {
    let signals = super::node::catch_signals()?;
    let cfg = config(&a)?;
    let listen = cfg.listen;
    let server = Server::start(cfg).context("the node did not start")?;
    println!("listening {listen}");
    while signals.load(Ordering::SeqCst) == 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let sig = signals.load(Ordering::SeqCst);
    println!("stopping {}", super::node::signal_name(sig));
    let mut failed = false;
    for r in server.join() {
        match r {
            Ok(rep) => println!(
                "stopped shard {} groups {} appends {} group-writes {} proposals {} reads {} snapshots {} snapshots-restored {} turns {}",
                rep.shard,
                rep.groups,
                rep.storage.appends,
                rep.storage.group_writes,
                rep.drivers.proposals,
                rep.drivers.reads,
                rep.drivers.snapshots_taken,
                rep.snapshots_restored,
                rep.turns
            ),
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("a shard failed");
    }
    Ok(())
}

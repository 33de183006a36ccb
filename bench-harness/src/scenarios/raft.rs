//! Scenario `raft`: a replicated key-value service of `--nodes` separate processes on
//! loopback (each `ringleader-bench raft-node`, with its own data directory under
//! `--dir`), `--groups` Raft groups, and `--clients` clients over the real client protocol,
//! against the same-run baseline of a raw 4 KiB append + `fdatasync` on the same file
//! system.
//!
//! Closed loop by default (each client waits for its reply before the next put); with
//! `--rate` an open loop whose latencies are measured from each request's intended send
//! time (no coordinated omission). Every write is a put of `--value-bytes` to one of
//! `--keys` keys; it is acknowledged only after it is `fdatasync`ed on a quorum and
//! applied by the leader.
//!
//! Clients are spread over a few connections per leader (`--connections`); each
//! connection is driven by one thread that batches the requests of its idle clients into
//! one frame.
//!
//! The nodes report their counters (fsyncs, batches, entries written) every 100 ms on
//! stdout; the scenario takes the difference over the measured window. A node exits when
//! its stdin closes, so no node outlives the scenario.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ringleader_engine::log::IoMode;
use ringleader_engine::multiraft::{Server, ServerConfig};
use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::msg::client::{
    CLIENT_FRAME_BYTES_MAX, ClientOp, ClientRequest, ClientResponse, ClientResult, Consistency,
    ErrorCode, group_of_key,
};
use ringleader_wire::{Decoder, Encoder, Header, MessageRef, WireMessage};
use serde_json::json;

use crate::harness::{self, CommonArgs, Recorder, Run};

/// Flags of the `raft` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Duration, warm-up, output, `--rate` for an open loop.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Nodes (separate processes).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Raft groups.
    #[arg(long, default_value_t = 1)]
    pub groups: u64,
    /// Closed-loop clients (with `--rate`: the requests in flight are not bounded by it).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Bytes of each value put.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Connections (and load threads) per leader node; 0: one per 64 clients, 1 to 4.
    #[arg(long, default_value_t = 0)]
    pub connections: usize,
    /// Shards per node.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Folder on the file system to test (nodes' data and the baseline file; default: the
    /// current directory). Removed afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// First port: node i listens on port + i × shards.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Snapshot interval (applied entries per group).
    #[arg(long, default_value_t = 200_000)]
    pub snapshot_every: u64,
    /// Skip the fdatasync baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// How the nodes' write-ahead logs write: `direct-sync` (O_DIRECT | O_DSYNC, the
    /// default), `direct` (O_DIRECT, then `fdatasync`, pipelined) or `buffered`.
    #[arg(long, default_value = "direct-sync")]
    pub io_mode: IoMode,
}

/// Flags of the hidden `raft-node` subcommand (one node of the scenario's cluster).
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Node id.
    #[arg(long)]
    pub id: u64,
    /// ID=ADDR,... for every node.
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Data directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Groups.
    #[arg(long)]
    pub groups: u64,
    /// Shards.
    #[arg(long)]
    pub shards: usize,
    /// Snapshot interval.
    #[arg(long)]
    pub snapshot_every: u64,
    /// The write-ahead log's io mode.
    #[arg(long, default_value = "direct-sync")]
    pub io_mode: IoMode,
}

/// Runs one node until its stdin closes, printing its counters every 100 ms as one JSON
/// line (`ready` first).
pub fn node_main(a: NodeArgs) -> anyhow::Result<()> {
    let mut peers = BTreeMap::new();
    for p in &a.peers {
        let (id, addr) = p.split_once('=').context("--peers ID=ADDR")?;
        peers.insert(id.parse::<u64>()?, addr.parse::<SocketAddr>()?);
    }
    let mut cfg = ServerConfig::new(a.id, peers, a.dir.clone());
    cfg.groups = a.groups;
    cfg.shards = a.shards;
    cfg.driver.snapshot_every_entries = a.snapshot_every;
    cfg.log.io_mode = a.io_mode;
    let server = Server::start(cfg).context("starting the node")?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::SeqCst);
        });
    }
    let mut out = std::io::stdout();
    writeln!(out, "ready")?;
    out.flush()?;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        let mut t = NodeStats::default();
        for s in server.stats() {
            t.fsyncs += s.log.fsyncs;
            t.batches += s.log.batches;
            t.pipelined += s.log.batches_pipelined;
            t.entries += s.storage.entries;
            t.appends += s.storage.appends;
            t.group_writes += s.storage.group_writes;
        }
        let line = t.to_json();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    for r in server.join() {
        r.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

/// A node's log and storage counters (what `raft-node` prints every 100 ms).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NodeStats {
    fsyncs: u64,
    batches: u64,
    pipelined: u64,
    entries: u64,
    appends: u64,
    group_writes: u64,
}

impl NodeStats {
    /// One JSON object (what [`NodeStats::parse`] and [`NodeStats::from_json`] read).
    pub(crate) fn to_json(self) -> serde_json::Value {
        json!({
            "fsyncs": self.fsyncs, "batches": self.batches, "pipelined": self.pipelined,
            "entries": self.entries, "appends": self.appends, "group_writes": self.group_writes,
        })
    }

    fn parse(line: &str) -> Option<NodeStats> {
        NodeStats::from_json(&serde_json::from_str(line).ok()?)
    }

    /// The counters of a [`NodeStats::to_json`] object.
    pub(crate) fn from_json(v: &serde_json::Value) -> Option<NodeStats> {
        let g = |k: &str| v.get(k).and_then(|x| x.as_u64());
        Some(NodeStats {
            fsyncs: g("fsyncs")?,
            batches: g("batches")?,
            pipelined: g("pipelined")?,
            entries: g("entries")?,
            appends: g("appends")?,
            group_writes: g("group_writes")?,
        })
    }

    pub(crate) fn plus(self, o: NodeStats) -> NodeStats {
        NodeStats {
            fsyncs: self.fsyncs + o.fsyncs,
            batches: self.batches + o.batches,
            pipelined: self.pipelined + o.pipelined,
            entries: self.entries + o.entries,
            appends: self.appends + o.appends,
            group_writes: self.group_writes + o.group_writes,
        }
    }

    pub(crate) fn minus(self, o: NodeStats) -> NodeStats {
        NodeStats {
            fsyncs: self.fsyncs.saturating_sub(o.fsyncs),
            batches: self.batches.saturating_sub(o.batches),
            pipelined: self.pipelined.saturating_sub(o.pipelined),
            entries: self.entries.saturating_sub(o.entries),
            appends: self.appends.saturating_sub(o.appends),
            group_writes: self.group_writes.saturating_sub(o.group_writes),
        }
    }
}

/// A running `raft-node` process and its latest counters.
pub(crate) struct NodeProc {
    child: Child,
    latest: Arc<Mutex<NodeStats>>,
    pid: u32,
}

/// Kills every node still running when dropped.
pub(crate) struct Nodes(pub(crate) Vec<NodeProc>);

impl Nodes {
    /// Every node's latest counters and its process id, for [`sample`].
    pub(crate) fn gauges(&self) -> Vec<(Arc<Mutex<NodeStats>>, u32)> {
        self.0
            .iter()
            .map(|n| (Arc::clone(&n.latest), n.pid))
            .collect()
    }
}

/// The nodes' counters summed and the CPU seconds their processes have used.
pub(crate) fn sample(gauges: &[(Arc<Mutex<NodeStats>>, u32)]) -> (NodeStats, f64) {
    let mut total = NodeStats::default();
    let mut cpu = 0.0;
    for (l, pid) in gauges {
        total = total.plus(l.lock().map(|s| *s).unwrap_or_default());
        cpu += cpu_seconds(*pid).unwrap_or(0.0);
    }
    (total, cpu)
}

/// How long the fdatasync baseline of a run of `duration` lasts.
pub(crate) fn baseline_length(duration: Duration) -> Duration {
    (duration / 3).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// The same-run baseline: a raw 4 KiB append + `fdatasync` in `work`, one at a time.
pub(crate) fn fdatasync_baseline(
    work: &Path,
    duration: Duration,
    progress: &harness::Progress,
) -> anyhow::Result<Recorder> {
    let cfg = harness::BaselineConfig {
        duration: baseline_length(duration),
        warmup: Duration::from_millis(300),
        pacing: harness::Pacing::Closed { concurrency: 1 },
    };
    let fds = harness::baselines::fdatasync_latency_with(work, &cfg, Some(progress))?;
    progress.finish();
    Ok(fds)
}

/// `fdatasync_us` of the report: {p50, p99}.
pub(crate) fn fdatasync_json(h: &harness::Histogram<u64>) -> serde_json::Value {
    json!({"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99)})
}

/// Samples the nodes at `measure` and at `end` on a thread of its own.
pub(crate) fn sample_window(
    gauges: Vec<(Arc<Mutex<NodeStats>>, u32)>,
    measure: Instant,
    end: Instant,
) -> std::thread::JoinHandle<Vec<(NodeStats, f64)>> {
    std::thread::spawn(move || {
        [measure, end]
            .into_iter()
            .map(|when| {
                std::thread::sleep(when.saturating_duration_since(Instant::now()));
                sample(&gauges)
            })
            .collect()
    })
}

/// Log figures of a window in which the nodes' counters moved by `d` in `secs` seconds.
pub(crate) fn log_figures(d: NodeStats, secs: f64) -> serde_json::Map<String, serde_json::Value> {
    let mut r = serde_json::Map::new();
    r.insert(
        "entries_per_fsync".into(),
        json!(d.entries as f64 / d.fsyncs.max(1) as f64),
    );
    r.insert(
        "pipelined_fraction".into(),
        json!(d.pipelined as f64 / d.batches.max(1) as f64),
    );
    r.insert("fsyncs_per_s".into(), json!(d.fsyncs as f64 / secs));
    r.insert(
        "group_writes_per_append".into(),
        json!(d.group_writes as f64 / d.appends.max(1) as f64),
    );
    r
}

/// `latency_us` of the report: {p50, p99, p999, max}.
pub(crate) fn latency_json(h: &harness::Histogram<u64>) -> serde_json::Value {
    json!({"p50": h.value_at_quantile(0.5), "p99": h.value_at_quantile(0.99),
           "p999": h.value_at_quantile(0.999), "max": h.max()})
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for n in &mut self.0 {
            drop(n.child.stdin.take());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for n in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = n.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = n.child.kill();
            let _ = n.child.wait();
        }
    }
}

/// CPU seconds (user + system) a process has used.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz.max(1.0))
}

/// Removes its folder when dropped.
pub(crate) struct RemoveDirOnDrop(pub(crate) PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port_base(span: u16) -> anyhow::Result<u16> {
    // A base from the pid, checked free for every port the cluster takes.
    for attempt in 0..50u32 {
        let base = 20_000 + ((std::process::id() + attempt * 977) % 30_000) as u16;
        let all_free =
            (0..span).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!("no free range of {span} ports found on 127.0.0.1: pass --port")
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!((1..=7).contains(&args.nodes), "--nodes must be 1 to 7");
    anyhow::ensure!(args.groups >= 1, "--groups must be at least 1");
    anyhow::ensure!(
        args.clients >= 1 && args.clients <= 65_536,
        "--clients must be 1 to 65536"
    );
    anyhow::ensure!(args.keys >= 1, "--keys must be at least 1");
    let common = &args.common;
    let config = json!({
        "nodes": args.nodes, "groups": args.groups, "clients": args.clients,
        "value_bytes": args.value_bytes, "keys": args.keys, "shards": args.shards,
        "io_mode": args.io_mode.name(),
        "duration_s": common.duration.as_secs_f64(), "warmup_s": common.warmup.as_secs_f64(),
        "rate": common.rate,
    });
    let mut run = Run::new("raft", common.out.as_deref(), common.json, config.clone())?;
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    let work = base.join(format!(".ringleader-raft-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _cleanup = RemoveDirOnDrop(work.clone());
    let mut results = serde_json::Map::new();

    // The baseline first, on a quiet machine and the same file system.
    if !args.no_baseline {
        let progress = run.progress("fdatasync baseline", baseline_length(common.duration));
        let fds = fdatasync_baseline(&work, common.duration, &progress)?;
        results.insert("fdatasync_us".into(), fdatasync_json(fds.histogram()));
        run.add(fds);
    }

    let span = (args.nodes * args.shards) as u16;
    let port = if args.port == 0 {
        free_port_base(span)?
    } else {
        args.port
    };
    let addrs: Vec<SocketAddr> = (0..args.nodes)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], port + (i * args.shards) as u16)))
        .collect();
    let nodes = start_nodes(&args, &addrs, &work)?;
    let leaders = find_leaders(&addrs, args.groups, Duration::from_secs(60))?;

    // The load.
    let progress = run.progress("raft", common.warmup + common.duration);
    let load = Load::new(&LoadSpec::of(&args), 0..args.clients, &addrs, &leaders);
    let t0 = Instant::now();
    let measure = t0 + common.warmup;
    let end = measure + common.duration;
    let stats_thread = sample_window(nodes.gauges(), measure, end);
    let outcome = load.run(measure, end, common.rate, &progress);
    progress.finish();
    let samples = stats_thread.join().unwrap_or_default();
    drop(nodes);

    let secs = common.duration.as_secs_f64();
    let ops_per_s = outcome.ok as f64 / secs;
    let h = outcome.latency.histogram();
    results.insert("ops_per_s".into(), json!(ops_per_s));
    results.insert("latency_us".into(), latency_json(h));
    if let [(s0, c0), (s1, c1)] = samples.as_slice() {
        results.extend(log_figures(s1.minus(*s0), secs));
        results.insert("cpu_cores".into(), json!((c1 - c0) / secs));
    }
    results.insert("errors".into(), json!(outcome.errors));
    results.insert("errors_by_kind".into(), json!(outcome.error_kinds));
    if let Some(fp50) = results.get("fdatasync_us").and_then(|v| v["p50"].as_f64()) {
        results.insert(
            "latency_p50_vs_fdatasync_p50".into(),
            json!(h.value_at_quantile(0.5) as f64 / fp50.max(1.0)),
        );
    }
    for (k, v) in config.as_object().into_iter().flatten() {
        results.insert(k.clone(), v.clone());
    }
    run.add(outcome.latency);
    run.finish(serde_json::Value::Object(results))
}

fn start_nodes(args: &Args, addrs: &[SocketAddr], work: &Path) -> anyhow::Result<Nodes> {
    let peers = peer_list(addrs);
    let spec = NodeSpec::of(args);
    let mut nodes = Nodes(Vec::new());
    for i in 0..addrs.len() {
        let id = i as u64 + 1;
        nodes
            .0
            .push(spec.start(id, &peers, &work.join(format!("node-{id}")))?);
    }
    Ok(nodes)
}

/// `1=ADDR,2=ADDR,...`: node `i + 1` at `addrs[i]`.
pub(crate) fn peer_list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// How every node of a run is configured (the flags of `raft-node` but its id, peers and
/// folder).
#[derive(Debug, Clone)]
pub(crate) struct NodeSpec {
    groups: u64,
    shards: usize,
    snapshot_every: u64,
    io_mode: IoMode,
}

impl NodeSpec {
    pub(crate) fn of(args: &Args) -> NodeSpec {
        NodeSpec {
            groups: args.groups,
            shards: args.shards,
            snapshot_every: args.snapshot_every,
            io_mode: args.io_mode,
        }
    }

    /// Starts node `id` (`raft-node`, a child of this process) and waits until it is
    /// ready (at most 60 s).
    pub(crate) fn start(&self, id: u64, peers: &str, dir: &Path) -> anyhow::Result<NodeProc> {
        let exe = std::env::current_exe().context("finding this program to start the nodes")?;
        let mut child = Command::new(&exe)
            .arg("raft-node")
            .args(["--id", &id.to_string(), "--peers", peers])
            .arg("--dir")
            .arg(dir)
            .args([
                "--groups",
                &self.groups.to_string(),
                "--shards",
                &self.shards.to_string(),
            ])
            .args(["--snapshot-every", &self.snapshot_every.to_string()])
            .args(["--io-mode", self.io_mode.name()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a node process")?;
        let pid = child.id();
        let stdout = child.stdout.take().context("node stdout")?;
        let latest = Arc::new(Mutex::new(NodeStats::default()));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        {
            let latest = Arc::clone(&latest);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line == "ready" {
                        let _ = ready_tx.send(());
                    } else if let Some(s) = NodeStats::parse(&line)
                        && let Ok(mut l) = latest.lock()
                    {
                        *l = s;
                    }
                }
            });
        }
        // Dropped on an error below: the node is stopped.
        let node = Nodes(vec![NodeProc { child, latest, pid }]);
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("node {id} did not start within 60 s"))?;
        let mut node = node;
        node.0.pop().context("the node just started")
    }
}

/// A blocking connection speaking the client protocol.
struct Conn {
    s: TcpStream,
    enc: Encoder,
    dec: Decoder,
    out: Vec<u8>,
    buf: rkyv::util::AlignedVec<16>,
}

impl Conn {
    fn open(a: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&a, Duration::from_secs(2))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            s,
            enc: Encoder::new(b""),
            dec: Decoder::new(b"", CLIENT_FRAME_BYTES_MAX - HEADER_LEN),
            out: Vec::new(),
            buf: rkyv::util::AlignedVec::new(),
        })
    }

    /// Sends `reqs` as batch frames.
    fn send(&mut self, reqs: &[ClientRequest]) -> std::io::Result<()> {
        self.out.clear();
        let mut i = 0;
        while i < reqs.len() {
            let mut b = self.enc.batch(None, 256 * 1024);
            let mut n = 0;
            while i < reqs.len() {
                match b.push(&reqs[i]) {
                    Ok(true) => {
                        i += 1;
                        n += 1;
                    }
                    _ if n > 0 => break,
                    _ => return Err(std::io::Error::other("a request does not fit a frame")),
                }
            }
            let f = b
                .finish()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.out.extend_from_slice(f);
        }
        self.s.write_all(&self.out)
    }

    /// Reads one frame of responses.
    fn recv(&mut self, into: &mut Vec<ClientResponse>) -> std::io::Result<()> {
        let mut head = [0u8; HEADER_LEN];
        self.s.read_exact(&mut head)?;
        let h = Header::parse(&head, CLIENT_FRAME_BYTES_MAX - HEADER_LEN)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.buf.clear();
        self.buf.extend_from_slice(&head);
        self.buf.resize(h.frame_len(), 0);
        self.s.read_exact(&mut self.buf[HEADER_LEN..])?;
        let f = self
            .dec
            .decode(&mut self.buf, None)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        for m in f.messages() {
            match m {
                Ok(MessageRef::ClientResponse(r)) => into.push(
                    <ClientResponse as WireMessage>::to_owned(r)
                        .map_err(|e| std::io::Error::other(e.to_string()))?,
                ),
                _ => return Err(std::io::Error::other("not a response")),
            }
        }
        Ok(())
    }
}

/// Finds the leader node (index into `addrs`) of every group.
pub(crate) fn find_leaders(
    addrs: &[SocketAddr],
    groups: u64,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<u64, usize>> {
    let probe_key = |g: u64| -> Vec<u8> {
        (0u64..)
            .map(|i| format!("probe-{i}").into_bytes())
            .find(|k| group_of_key(k, groups) == g)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + timeout;
    let mut leaders = BTreeMap::new();
    let mut conns: Vec<Option<Conn>> = addrs.iter().map(|_| None).collect();
    for g in 1..=groups {
        let key = probe_key(g);
        let mut target = 0;
        loop {
            if Instant::now() > deadline {
                bail!("group {g} has no leader after {timeout:?}");
            }
            if conns[target].is_none() {
                conns[target] = Conn::open(addrs[target]).ok();
            }
            let Some(c) = conns[target].as_mut() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let req = ClientRequest {
                id: g,
                op: ClientOp::Put {
                    key: key.clone(),
                    value: b"probe".to_vec(),
                },
            };
            let mut got = Vec::new();
            if c.send(&[req]).and_then(|()| c.recv(&mut got)).is_err() {
                conns[target] = None;
                continue;
            }
            match got.first().map(|r| &r.result) {
                Some(ClientResult::Done) => {
                    leaders.insert(g, target);
                    break;
                }
                Some(ClientResult::NotLeader { leader, .. })
                    if *leader >= 1 && (*leader as usize) <= addrs.len() =>
                {
                    target = *leader as usize - 1;
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(50));
                    target = (target + 1) % addrs.len();
                }
            }
        }
    }
    Ok(leaders)
}

/// What the clients of a run saw.
pub(crate) struct Outcome {
    pub latency: Recorder,
    pub ok: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            latency: Recorder::new("raft_put_us"),
            ok: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
        }
    }

    /// Adds everything `o` saw.
    fn absorb(&mut self, o: Outcome) {
        self.latency.merge(&o.latency);
        self.ok += o.ok;
        self.errors += o.errors;
        for (k, v) in o.error_kinds {
            *self.error_kinds.entry(k).or_default() += v;
        }
    }

    /// Counts one error of kind `k`.
    fn error(&mut self, k: String) {
        self.errors += 1;
        *self.error_kinds.entry(k).or_default() += 1;
    }
}

/// What the clients do: the flags of the load.
#[derive(Debug, Clone)]
pub(crate) struct LoadSpec {
    pub groups: u64,
    pub keys: usize,
    pub connections: usize,
    pub value_bytes: usize,
}

impl LoadSpec {
    pub(crate) fn of(args: &Args) -> LoadSpec {
        LoadSpec {
            groups: args.groups,
            keys: args.keys,
            connections: args.connections,
            value_bytes: args.value_bytes,
        }
    }
}

/// The clients: assigned to groups round-robin, grouped by their group's leader.
pub(crate) struct Load {
    /// (leader address, keys per client of this connection) per connection.
    conns: Vec<(SocketAddr, Vec<Vec<Vec<u8>>>)>,
    value: Vec<u8>,
}

impl Load {
    /// Clients `clients` (of the run's numbering: client `c` writes to group
    /// `c mod groups + 1`), connected to their group's leader.
    pub(crate) fn new(
        args: &LoadSpec,
        clients: std::ops::Range<usize>,
        addrs: &[SocketAddr],
        leaders: &BTreeMap<u64, usize>,
    ) -> Load {
        // Keys of each group.
        let mut keys: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
        for i in 0..args.keys.max(args.groups as usize) {
            let k = format!("key-{i:08}").into_bytes();
            keys.entry(group_of_key(&k, args.groups))
                .or_default()
                .push(k);
        }
        // Clients per leader node.
        let mut per_node: BTreeMap<usize, Vec<Vec<Vec<u8>>>> = BTreeMap::new();
        for c in clients {
            let g = (c as u64 % args.groups) + 1;
            let node = leaders.get(&g).copied().unwrap_or(0);
            per_node
                .entry(node)
                .or_default()
                .push(keys.get(&g).cloned().unwrap_or_default());
        }
        let mut conns = Vec::new();
        for (node, clients) in per_node {
            let n = if args.connections > 0 {
                args.connections
            } else {
                clients.len().div_ceil(64).clamp(1, 4)
            }
            .min(clients.len());
            let mut split: Vec<Vec<Vec<Vec<u8>>>> = vec![Vec::new(); n];
            for (i, c) in clients.into_iter().enumerate() {
                split[i % n].push(c);
            }
            for s in split {
                conns.push((addrs[node], s));
            }
        }
        Load {
            conns,
            value: vec![0x5a; args.value_bytes],
        }
    }

    pub(crate) fn run(
        self,
        measure: Instant,
        end: Instant,
        rate: Option<u64>,
        progress: &harness::Progress,
    ) -> Outcome {
        let total_clients: usize = self.conns.iter().map(|c| c.1.len()).sum();
        let done = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for (addr, clients) in self.conns {
            let value = self.value.clone();
            let share = rate
                .map(|r| (r as f64 * clients.len() as f64 / total_clients.max(1) as f64).max(1.0));
            let done = Arc::clone(&done);
            threads.push(std::thread::spawn(move || match share {
                None => closed_loop(addr, clients, value, measure, end, &done),
                Some(r) => open_loop(addr, clients, value, measure, end, r, &done),
            }));
        }
        let start = Instant::now();
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(200));
            progress.tick(start.elapsed());
        }
        let mut out = Outcome::new();
        for t in threads {
            match t.join() {
                Ok(o) => out.absorb(o),
                Err(_) => out.error("load thread panicked".into()),
            }
        }
        out
    }
}

fn classify(r: &ClientResult) -> Option<String> {
    match r {
        ClientResult::Done => None,
        ClientResult::NotLeader { .. } => Some("not_leader".into()),
        ClientResult::Error { code, .. } => Some(
            match code {
                ErrorCode::Unavailable => "unavailable",
                ErrorCode::Busy => "busy",
                ErrorCode::Unknown => "unknown",
                ErrorCode::TooLarge => "too_large",
                ErrorCode::Malformed => "malformed",
                ErrorCode::WrongShard => "wrong_shard",
                ErrorCode::ShuttingDown => "shutting_down",
                ErrorCode::Internal => "internal",
            }
            .into(),
        ),
        _ => Some("unexpected_result".into()),
    }
}

fn closed_loop(
    addr: SocketAddr,
    clients: Vec<Vec<Vec<u8>>>,
    value: Vec<u8>,
    measure: Instant,
    end: Instant,
    done: &AtomicU64,
) -> Outcome {
    let mut out = Outcome::new();
    let mut conn = match Conn::open(addr) {
        Ok(c) => c,
        Err(e) => {
            out.error(format!("connect: {e}"));
            return out;
        }
    };
    let n = clients.len();
    // Per client: request start (None: idle), next key position.
    let mut started: Vec<Option<Instant>> = vec![None; n];
    let mut pos: Vec<usize> = (0..n).map(|i| i * 7919).collect();
    let mut reqs = Vec::with_capacity(n);
    let mut resps = Vec::with_capacity(n);
    let mut seq = 0u64;
    let mut ids: HashMap<u64, usize> = HashMap::with_capacity(n);
    loop {
        let now = Instant::now();
        reqs.clear();
        if now < end {
            for c in 0..n {
                if started[c].is_some() || clients[c].is_empty() {
                    continue;
                }
                let keys = &clients[c];
                let key = keys[pos[c] % keys.len()].clone();
                pos[c] += 1;
                seq += 1;
                ids.insert(seq, c);
                started[c] = Some(now);
                reqs.push(ClientRequest {
                    id: seq,
                    op: ClientOp::Put {
                        key,
                        value: value.clone(),
                    },
                });
            }
        }
        if !reqs.is_empty()
            && let Err(e) = conn.send(&reqs)
        {
            out.error(format!("send: {e}"));
            return out;
        }
        if ids.is_empty() {
            return out;
        }
        resps.clear();
        if let Err(e) = conn.recv(&mut resps) {
            out.error(format!("recv: {e}"));
            return out;
        }
        let now = Instant::now();
        for r in &resps {
            let Some(c) = ids.remove(&r.id) else { continue };
            let Some(t) = started[c].take() else { continue };
            let in_window = t >= measure && now <= end;
            match classify(&r.result) {
                None => {
                    if in_window {
                        out.latency.record_duration_at(now, now - t);
                        out.ok += 1;
                    }
                }
                Some(k) => {
                    if in_window {
                        out.error(k);
                    }
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn open_loop(
    addr: SocketAddr,
    clients: Vec<Vec<Vec<u8>>>,
    value: Vec<u8>,
    measure: Instant,
    end: Instant,
    rate: f64,
    done: &AtomicU64,
) -> Outcome {
    let mut out = Outcome::new();
    let conn = match Conn::open(addr) {
        Ok(c) => c,
        Err(e) => {
            out.error(format!("connect: {e}"));
            return out;
        }
    };
    let keys: Vec<Vec<u8>> = clients.into_iter().flatten().collect();
    let intended: Arc<Mutex<HashMap<u64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let reader = {
        let Ok(s) = conn.s.try_clone() else {
            out.error("cloning the socket for the reader".into());
            return out;
        };
        let intended = Arc::clone(&intended);
        let mut rconn = Conn {
            s,
            enc: Encoder::new(b""),
            dec: Decoder::new(b"", CLIENT_FRAME_BYTES_MAX - HEADER_LEN),
            out: Vec::new(),
            buf: rkyv::util::AlignedVec::new(),
        };
        std::thread::spawn(move || {
            let mut o = Outcome::new();
            let mut resps = Vec::new();
            let grace = end + Duration::from_secs(5);
            loop {
                if Instant::now() > grace {
                    break;
                }
                resps.clear();
                if rconn.recv(&mut resps).is_err() {
                    break;
                }
                let now = Instant::now();
                for r in &resps {
                    let Some(t) = intended.lock().ok().and_then(|mut m| m.remove(&r.id)) else {
                        continue;
                    };
                    if t < measure || now > end {
                        continue;
                    }
                    match classify(&r.result) {
                        None => {
                            o.latency.record_duration_at(now, now - t);
                            o.ok += 1;
                        }
                        Some(k) => o.error(k),
                    }
                }
                if Instant::now() > end && intended.lock().map(|m| m.is_empty()).unwrap_or(true) {
                    break;
                }
            }
            o
        })
    };
    let mut conn = conn;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut seq = 0u64;
    let mut reqs = Vec::new();
    while next < end {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
        }
        // Every request whose intended time has come goes out now.
        reqs.clear();
        let now = Instant::now();
        if let Ok(mut m) = intended.lock() {
            while next <= now && next < end {
                seq += 1;
                m.insert(seq, next);
                let key = keys[(seq as usize * 7919) % keys.len().max(1)].clone();
                reqs.push(ClientRequest {
                    id: seq,
                    op: ClientOp::Put {
                        key,
                        value: value.clone(),
                    },
                });
                next += interval;
            }
        }
        if !reqs.is_empty() && conn.send(&reqs).is_err() {
            break;
        }
        done.fetch_add(reqs.len() as u64, Ordering::Relaxed);
    }
    let o = reader.join().unwrap_or_else(|_| {
        let mut o = Outcome::new();
        o.error("reader thread panicked".into());
        o
    });
    // Requests never answered within the window's grace count as errors.
    let lost = intended
        .lock()
        .map(|m| m.values().filter(|&&t| t >= measure && t < end).count() as u64)
        .unwrap_or(0);
    out.absorb(o);
    out.errors += lost;
    if lost > 0 {
        *out.error_kinds.entry("unanswered".into()).or_default() += lost;
    }
    let _ = Consistency::Linearizable;
    out
}

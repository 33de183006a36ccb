//! `cluster raft`: one Raft node per agent (a `raft-node` process the agent starts, at its
//! bind address and `--port`), clients on the agents `--client-hosts` names (default all),
//! `--clients` spread evenly over them. Steps: `prepare` (the fdatasync baseline unless
//! `--no-baseline`, then the node), `leaders` (each client host finds every group's
//! leader), `run` (warm-up and measured window from each agent's own start of the step;
//! latency recorded by the client's host, from the request's start on that host).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};

use super::{Agents, num, parse_flags, shipped, spread};
use crate::harness::{Progress, Recorder, Run};
use crate::scenarios::raft::{
    Args, Load, LoadSpec, NodeSpec, NodeStats, Nodes, RemoveDirOnDrop, baseline_length,
    fdatasync_baseline, fdatasync_json, find_leaders, latency_json, log_figures, peer_list,
    sample_window,
};
use crate::scenarios::swim::process_cpu;

/// The nodes' port when `--port` is not given (shard `s` listens on port + s).
pub const PORT_DEFAULT: u16 = 7600;
/// How long the groups may take to elect their leaders.
const LEADERS_WAIT: Duration = Duration::from_secs(60);
/// How long a node may take to start (what `NodeSpec::start` waits), plus slack.
const NODE_START_WAIT: Duration = Duration::from_secs(70);

#[derive(clap::Parser, Debug)]
#[command(name = "raft")]
pub(super) struct Cli {
    #[command(flatten)]
    args: Args,
    /// Agents (numbered from 1 in --agents order) that run clients; default all.
    #[arg(long, value_delimiter = ',')]
    client_hosts: Vec<usize>,
}

/// The flags of `cluster ... raft ...`, checked.
pub(super) fn parse(raw: &[String]) -> anyhow::Result<Cli> {
    let cli = parse_flags::<Cli>(raw)?;
    let a = &cli.args;
    anyhow::ensure!(a.groups >= 1, "--groups must be at least 1");
    anyhow::ensure!(
        (1..=65_536).contains(&a.clients),
        "--clients must be 1 to 65536"
    );
    anyhow::ensure!(a.keys >= 1, "--keys must be at least 1");
    anyhow::ensure!(a.shards >= 1, "--shards must be at least 1");
    Ok(cli)
}

/// The coordinator's side.
pub(super) fn coordinate(agents: &mut Agents, raw: &[String], cli: Cli) -> anyhow::Result<()> {
    let args = &cli.args;
    let k = agents.len();
    anyhow::ensure!(
        (1..=7).contains(&k),
        "a Raft cluster takes 1 to 7 agents, not {k}"
    );
    let client_hosts: Vec<usize> = if cli.client_hosts.is_empty() {
        (0..k).collect()
    } else {
        let mut h = Vec::new();
        for &c in &cli.client_hosts {
            if !(1..=k).contains(&c) {
                bail!("--client-hosts {c}: agents are numbered 1 to {k}");
            }
            if !h.contains(&(c - 1)) {
                h.push(c - 1);
            }
        }
        h
    };
    let shares = spread(args.clients, client_hosts.len());
    let mut clients: Vec<Range<usize>> = vec![0..0; k];
    for (h, r) in client_hosts.iter().zip(&shares) {
        clients[*h] = r.clone();
    }
    let port = if args.port == 0 {
        PORT_DEFAULT
    } else {
        args.port
    };
    let addrs: Vec<SocketAddr> = agents
        .0
        .iter()
        .map(|a| SocketAddr::new(a.bind_ip, port))
        .collect();
    let peers = peer_list(&addrs);
    let common = &args.common;
    let config = json!({
        "nodes": k, "groups": args.groups, "clients": args.clients,
        "value_bytes": args.value_bytes, "keys": args.keys, "shards": args.shards,
        "io_mode": args.io_mode.name(),
        "duration_s": common.duration.as_secs_f64(), "warmup_s": common.warmup.as_secs_f64(),
        "rate": common.rate,
    });
    let mut run = Run::new(
        "cluster-raft",
        common.out.as_deref(),
        common.json,
        config.clone(),
    )?;
    let all: Vec<usize> = (0..k).collect();
    let baseline = if args.no_baseline {
        Duration::ZERO
    } else {
        baseline_length(common.duration) + Duration::from_secs(1)
    };
    let rate = |i: usize| {
        common
            .rate
            .map(|r| (r as f64 * clients[i].len() as f64 / args.clients as f64).max(1.0))
    };
    let prepared = agents.step(&all, "prepare", baseline + NODE_START_WAIT, |i| {
        json!({"scenario": "raft", "args": raw, "id": i + 1, "peers": peers,
               "clients": [clients[i].start, clients[i].end], "rate": rate(i)})
    })?;
    let leaders = agents.step(&client_hosts, "leaders", LEADERS_WAIT, |_| json!({}))?;
    let window = common.warmup + common.duration;
    let progress = run.progress("raft", window);
    let base = Instant::now();
    let measured = agents.step(&all, "run", window, |_| json!({}))?;
    progress.finish();

    let mut latency = Recorder::new("raft_put_us");
    let mut fdatasync: Option<Recorder> = None;
    let mut log = NodeStats::default();
    let (mut ok, mut errors) = (0u64, 0u64);
    let (mut node_cpu_s, mut client_cpu_s) = (0.0, 0.0);
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut hosts = Vec::with_capacity(k);
    for i in 0..k {
        let label = format!("agent {} ({})", i + 1, agents.0[i].addr);
        let m = &measured[i];
        let rec = shipped(m, "latency", base, &label)?;
        if !args.no_baseline {
            let b = shipped(&prepared[i], "baseline", base, &label)?;
            match fdatasync.as_mut() {
                None => fdatasync = Some(b),
                Some(f) => f.merge(&b),
            }
        }
        let node = NodeStats::from_json(&m["log"])
            .with_context(|| format!("{label}: no log counters in its answer"))?;
        log = log.plus(node);
        let count = |key: &str| {
            m[key]
                .as_u64()
                .with_context(|| format!("{label}: no `{key}` count in its answer"))
        };
        ok += count("ok")?;
        errors += count("errors")?;
        node_cpu_s += num(m, "node_cpu_s");
        client_cpu_s += num(m, "client_cpu_s");
        for (kind, n) in m["errors_by_kind"].as_object().into_iter().flatten() {
            *kinds.entry(kind.clone()).or_default() += n.as_u64().unwrap_or(0);
        }
        let mut host = agents.0[i].about().as_object().cloned().unwrap_or_default();
        host.insert("node".into(), json!(i + 1));
        host.insert("clients".into(), json!(clients[i].len()));
        host.insert(
            "ops_per_s".into(),
            json!(num(m, "ok") / common.duration.as_secs_f64()),
        );
        host.insert("latency_us".into(), latency_json(rec.histogram()));
        host.insert("errors".into(), m["errors"].clone());
        host.insert(
            "node_cpu_cores".into(),
            json!(num(m, "node_cpu_s") / common.duration.as_secs_f64()),
        );
        host.insert(
            "client_cpu_cores".into(),
            json!(num(m, "client_cpu_s") / window.as_secs_f64()),
        );
        host.insert("log".into(), m["log"].clone());
        if let Some(l) = leaders.get(
            client_hosts
                .iter()
                .position(|&h| h == i)
                .unwrap_or(usize::MAX),
        ) {
            host.insert("leaders".into(), l["leaders"].clone());
        }
        hosts.push(Value::Object(host));
        latency.merge(&rec);
    }
    let secs = common.duration.as_secs_f64();
    let h = latency.histogram();
    let mut results = Map::new();
    results.insert("ops_per_s".into(), json!(ok as f64 / secs));
    results.insert("latency_us".into(), latency_json(h));
    results.extend(log_figures(log, secs));
    results.insert("cpu_cores".into(), json!(node_cpu_s / secs));
    results.insert(
        "client_cpu_cores".into(),
        json!(client_cpu_s / window.as_secs_f64()),
    );
    results.insert("errors".into(), json!(errors));
    results.insert("errors_by_kind".into(), json!(kinds));
    if let Some(f) = &fdatasync {
        let fp50 = f.histogram().value_at_quantile(0.5);
        results.insert("fdatasync_us".into(), fdatasync_json(f.histogram()));
        results.insert(
            "latency_p50_vs_fdatasync_p50".into(),
            json!(h.value_at_quantile(0.5) as f64 / (fp50 as f64).max(1.0)),
        );
    }
    for (key, v) in config.as_object().into_iter().flatten() {
        results.insert(key.clone(), v.clone());
    }
    results.insert(
        "client_hosts".into(),
        json!(client_hosts.iter().map(|h| h + 1).collect::<Vec<_>>()),
    );
    results.insert("hosts".into(), json!(hosts));
    run.add(latency);
    if let Some(f) = fdatasync {
        run.add(f);
    }
    run.finish(Value::Object(results))
}

/// An agent's part: its node, its clients and the run's folder.
pub(crate) struct AgentRaft {
    args: Args,
    addrs: Vec<SocketAddr>,
    clients: Range<usize>,
    rate: Option<u64>,
    load: Option<Load>,
    // Field order is drop order: the node stops before its folder is removed.
    node: Nodes,
    _work: RemoveDirOnDrop,
}

impl AgentRaft {
    /// Step `prepare`: the baseline (unless `--no-baseline`), then the node.
    pub fn prepare(data: &Value, bind_ip: IpAddr, dir: &Path) -> anyhow::Result<(Self, Value)> {
        let raw: Vec<String> =
            serde_json::from_value(data["args"].clone()).context("prepare: no `args`")?;
        let args = parse(&raw)?.args;
        let id = data["id"].as_u64().context("prepare: no `id`")?;
        let peers = data["peers"]
            .as_str()
            .context("prepare: no `peers`")?
            .to_owned();
        let mut addrs = Vec::new();
        for (i, p) in peers.split(',').enumerate() {
            let (n, a) = p
                .split_once('=')
                .context("prepare: `peers` is ID=ADDR,...")?;
            anyhow::ensure!(n == (i + 1).to_string(), "prepare: peers out of order");
            addrs.push(
                a.parse::<SocketAddr>()
                    .context("prepare: a peer is not an address")?,
            );
        }
        let me = usize::try_from(id)
            .ok()
            .and_then(|i| addrs.get(i.wrapping_sub(1)));
        let me = *me.context("prepare: `id` is not among the peers")?;
        if me.ip() != bind_ip {
            bail!("prepare: node {id} is to listen on {me}, but this agent binds {bind_ip}");
        }
        let range: [usize; 2] =
            serde_json::from_value(data["clients"].clone()).context("prepare: no `clients`")?;
        let rate = data["rate"].as_f64().map(|r| r.round().max(1.0) as u64);
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // The scenario's `--dir` (a file system to test on every host), else the agent's.
        let dir = args.dir.as_deref().unwrap_or(dir);
        let work = dir.join(format!(
            ".ringleader-cluster-raft-{}-{nonce}",
            std::process::id()
        ));
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let work = RemoveDirOnDrop(work);
        let mut reply = Map::new();
        reply.insert("node".into(), json!(id));
        reply.insert("listen".into(), json!(me.to_string()));
        if !args.no_baseline {
            let progress = Progress::new(
                "fdatasync baseline",
                baseline_length(args.common.duration),
                false,
            );
            let fds = fdatasync_baseline(&work.0, args.common.duration, &progress)?;
            reply.insert("fdatasync_us".into(), fdatasync_json(fds.histogram()));
            reply.insert(
                "baseline".into(),
                serde_json::to_value(fds.ship(Instant::now()))?,
            );
        }
        let node = NodeSpec::of(&args).start(id, &peers, &work.0.join("node"))?;
        Ok((
            AgentRaft {
                args,
                addrs,
                clients: range[0]..range[1],
                rate,
                load: None,
                node: Nodes(vec![node]),
                _work: work,
            },
            Value::Object(reply),
        ))
    }

    /// Steps `leaders` and `run`.
    pub fn step(&mut self, step: &str, _data: &Value, deadline: Instant) -> anyhow::Result<Value> {
        match step {
            "leaders" => {
                let wait = deadline.saturating_duration_since(Instant::now());
                let leaders = find_leaders(&self.addrs, self.args.groups, wait)?;
                self.load = Some(Load::new(
                    &LoadSpec::of(&self.args),
                    self.clients.clone(),
                    &self.addrs,
                    &leaders,
                ));
                let by_group: BTreeMap<String, usize> = leaders
                    .iter()
                    .map(|(g, n)| (g.to_string(), n + 1))
                    .collect();
                Ok(json!({"leaders": by_group}))
            }
            "run" => self.run(),
            other => bail!("raft has no step {other:?}"),
        }
    }

    fn run(&mut self) -> anyhow::Result<Value> {
        let t0 = Instant::now();
        let common = &self.args.common;
        let measure = t0 + common.warmup;
        let end = measure + common.duration;
        let cpu0 = process_cpu()?;
        let sampler = sample_window(self.node.gauges(), measure, end);
        let progress = Progress::new("raft", common.warmup + common.duration, false);
        let outcome = match self.load.take() {
            Some(load) if !self.clients.is_empty() => {
                Some(load.run(measure, end, self.rate, &progress))
            }
            _ => {
                std::thread::sleep(end.saturating_duration_since(Instant::now()));
                None
            }
        };
        progress.finish();
        let client_cpu_s = process_cpu()?.saturating_sub(cpu0).as_secs_f64();
        let samples = sampler
            .join()
            .map_err(|_| anyhow::anyhow!("the sampling thread panicked"))?;
        let [(s0, c0), (s1, c1)] = samples.as_slice() else {
            bail!("the node was sampled {} times, not twice", samples.len());
        };
        let (latency, ok, errors, kinds) = match outcome {
            Some(o) => (o.latency, o.ok, o.errors, o.error_kinds),
            None => (Recorder::new("raft_put_us"), 0, 0, BTreeMap::new()),
        };
        Ok(json!({
            "ok": ok,
            "errors": errors,
            "errors_by_kind": kinds,
            "latency": latency.ship(t0),
            "log": s1.minus(*s0).to_json(),
            "node_cpu_s": c1 - c0,
            "client_cpu_s": client_cpu_s,
        }))
    }
}

//! `cluster swim`: `--members` spread evenly over the agents, each agent's share on one
//! `Host` of its own binding the agent's address (ports `--port`, `--port + 1`, ...), the
//! seeds on the first agent. Steps: `prepare` (one agent after the other, the first one's
//! seeds given to the rest: start the host and add the members), `converge` (every host waits
//! until its members see the whole cluster alive), `run` (steady state, then each agent
//! kills its own victims at the same offset from its own start of the step, and every
//! host waits until its live members have declared every victim down).
//!
//! Detection times are taken on the observing host from its own kill instant (its start of
//! `run` plus the agreed offset), so no two hosts' clocks are compared; the error is the
//! spread of the `run` step's arrival at the agents.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use ringleader_engine::host::Host;
use serde_json::{Map, Value, json};

use super::{Agents, num, parse_flags, shipped, spread};
use crate::harness::{Progress, Run};
use crate::scenarios::swim::{
    self as local, Args, EventThread, SHUTDOWN_WAIT_MAX, add_all, census_json, converge,
    kill_and_detect, lock, shutdown_within, steady_state, tally_results,
};

/// The members' first port when `--port` is not given.
pub const PORT_DEFAULT: u16 = 7946;
/// Time between the end of the steady state and the kills (so every host has finished
/// its last census and kills on time).
const KILL_MARGIN: Duration = Duration::from_secs(1);

#[derive(clap::Parser, Debug)]
#[command(name = "swim")]
struct Cli {
    #[command(flatten)]
    args: Args,
}

/// The flags of `cluster ... swim ...`, checked.
pub(super) fn parse(raw: &[String]) -> anyhow::Result<Args> {
    let args = parse_flags::<Cli>(raw)?.args;
    local::check(&args)?;
    Ok(args)
}

/// The run's kill instant, as an offset from each host's start of `run`.
fn kill_offset(args: &Args) -> Duration {
    args.common.warmup + args.common.duration + KILL_MARGIN
}

/// The coordinator's side.
pub(super) fn coordinate(agents: &mut Agents, raw: &[String], args: Args) -> anyhow::Result<()> {
    let n = args.members;
    let k = agents.len();
    let shares = spread(n, k);
    if shares[0].len() < args.seeds {
        bail!(
            "the first agent holds {} members, fewer than --seeds {}",
            shares[0].len(),
            args.seeds
        );
    }
    let victims = deal_victims(&shares, args.seeds, args.kill, args.seed);
    let port = args.port.unwrap_or(PORT_DEFAULT);
    let converge_timeout = local::converge_timeout(&args);
    let config = json!({
        "agents": agents.0.iter().map(|a| a.addr.to_string()).collect::<Vec<_>>(),
        "members": n, "config": args.config, "set": args.set, "kill": args.kill,
        "shards_per_agent": args.shards, "seeds": args.seeds, "seed": args.seed,
        "duration_s": args.common.duration.as_secs_f64(),
        "warmup_s": args.common.warmup.as_secs_f64(),
        "detect_timeout_s": args.detect_timeout.as_secs_f64(),
        "converge_timeout_s": converge_timeout.as_secs_f64(),
        "port": port, "add_rate": args.add_rate,
    });
    let mut run = Run::new(
        "cluster-swim",
        args.common.out.as_deref(),
        args.common.json,
        config,
    )?;
    let data = |i: usize, seeds: &[String]| {
        json!({"scenario": "swim", "args": raw, "members": [shares[i].start, shares[i].end],
               "seeds": seeds, "victims": victims, "port": port})
    };
    // Adding at `--add-rate` takes time; an unpaced add is quick.
    let add_wait = Duration::from_secs(60)
        + (n as u64)
            .checked_div(args.add_rate)
            .map_or(Duration::from_millis(10) * n as u32, Duration::from_secs);
    // One agent after the other, as a local run adds its members: hundreds of joins at
    // once through the same seeds leave more members to learn of some joins by push-pull.
    let mut prepared = agents.step(&[0], "prepare", add_wait, |i| data(i, &[]))?;
    let seeds: Vec<String> = serde_json::from_value(prepared[0]["seeds"].clone())
        .context("agent 1 did not say where its seeds are")?;
    for i in 1..k {
        prepared.extend(agents.step(&[i], "prepare", add_wait, |i| data(i, &seeds))?);
    }
    let all: Vec<usize> = (0..k).collect();
    let progress = run.progress("converging", converge_timeout);
    let converged = agents.step(&all, "converge", converge_timeout, |_| json!({}))?;
    progress.finish();
    let run_wait = kill_offset(&args) + args.detect_timeout;
    let progress = run.progress("steady state and detection", run_wait);
    let base = Instant::now();
    let measured = agents.step(&all, "run", run_wait, |_| json!({}))?;
    progress.finish();

    let mut detect: Option<crate::harness::Recorder> = None;
    let mut hosts = Vec::with_capacity(k);
    let mut sums: Map<String, Value> = Map::new();
    let count =
        |sums: &Map<String, Value>, key: &str| sums.get(key).and_then(Value::as_u64).unwrap_or(0);
    let mut cpu_s = 0.0;
    let mut events: Map<String, Value> = Map::new();
    let mut examples: Vec<Value> = Vec::new();
    for i in 0..k {
        let a = &agents.0[i];
        let label = format!("agent {} ({})", i + 1, a.addr);
        let rec = shipped(&measured[i], "detect", base, &label)?;
        match detect.as_mut() {
            None => detect = Some(rec),
            Some(d) => d.merge(&rec),
        }
        for key in [
            "datagrams",
            "bytes",
            "stream_bytes",
            "detected",
            "undetected",
            "false_positives",
            "false_positive_events",
            "false_suspicions",
            "false_suspicion_events",
            "false_positives_before_kill",
            "events_dropped",
            "converged_after_steady",
        ] {
            let v = count(&sums, key) + measured[i][key].as_u64().unwrap_or(0);
            sums.insert(key.to_owned(), json!(v));
        }
        cpu_s += num(&measured[i], "cpu_s");
        if let Some(e) = measured[i]["events"].as_object() {
            for (kind, count) in e {
                let v = events.get(kind).and_then(Value::as_u64).unwrap_or(0)
                    + count.as_u64().unwrap_or(0);
                events.insert(kind.clone(), json!(v));
            }
        }
        if let Some(e) = measured[i]["false_positive_examples"].as_array() {
            examples.extend(
                e.iter()
                    .take(20usize.saturating_sub(examples.len()))
                    .cloned(),
            );
        }
        let mut host = a.about().as_object().cloned().unwrap_or_default();
        host.insert("prepare".into(), prepared[i].clone());
        host.insert("converge".into(), converged[i].clone());
        let mut m = measured[i].clone();
        if let Some(o) = m.as_object_mut() {
            o.remove("detect");
        }
        host.insert("run".into(), m);
        hosts.push(Value::Object(host));
    }
    let detect = detect.context("no agents")?;
    let steady_s = measured
        .iter()
        .map(|m| num(m, "steady_s"))
        .fold(f64::INFINITY, f64::min);
    let member_secs = n as f64 * steady_s;
    let count = |key: &str| count(&sums, key);
    let per_member_s = |key: &str| count(key) as f64 / member_secs;
    let all_converged = converged
        .iter()
        .all(|c| c["converged"].as_bool() == Some(true));
    let max_of =
        |vs: &[Value], key: &str| vs.iter().filter_map(|v| v[key].as_u64()).max().unwrap_or(0);
    let results = json!({
        "members": n,
        "agents": k,
        "config": args.config,
        "set": args.set,
        "seeds": args.seeds,
        "kill": args.kill,
        "seed": args.seed,
        "add_ms": max_of(&prepared, "add_ms"),
        "converged": all_converged,
        "converge_ms": max_of(&converged, "converge_ms"),
        "bind_retries": prepared.iter().map(|p| p["bind_retries"].as_u64().unwrap_or(0)).sum::<u64>(),
        "steady_s": steady_s,
        "cpu_s": cpu_s,
        "cpu_s_per_member_per_s": cpu_s / member_secs,
        "cpu_cores_busy": cpu_s / steady_s,
        "msgs_per_member_per_s": per_member_s("datagrams"),
        "bytes_per_member_per_s": per_member_s("bytes"),
        "stream_bytes_per_member_per_s": per_member_s("stream_bytes"),
        "converged_after_steady": count("converged_after_steady"),
        "false_positives_before_kill": count("false_positives_before_kill"),
        "victims": victims.iter().map(|&v| local::member_name(v)).collect::<Vec<_>>(),
        "detect_wall_ms": max_of(&measured, "detect_wall_ms"),
        "events_dropped": count("events_dropped"),
        "detect_ms": detect.summary(),
        "detected": count("detected"),
        "undetected": count("undetected"),
        "false_positives": count("false_positives"),
        "false_positive_events": count("false_positive_events"),
        "false_suspicions": count("false_suspicions"),
        "false_suspicion_events": count("false_suspicion_events"),
        "false_positive_examples": examples,
        "events": events,
        "hosts": hosts,
    });
    run.add(detect);
    run.finish(results)
}

/// `kill` victims dealt over the hosts in turn (victim `j` from host `j mod hosts`), each a
/// random non-seed member of its host's share; a host with none left passes its turn.
/// Sorted; the same for the same `seed`.
fn deal_victims(shares: &[Range<usize>], seeds: usize, kill: usize, seed: u64) -> Vec<usize> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut pools: Vec<Vec<usize>> = shares
        .iter()
        .map(|r| {
            let mut p: Vec<usize> = r.clone().filter(|&i| i >= seeds).collect();
            p.shuffle(&mut rng);
            p
        })
        .collect();
    let mut victims = Vec::with_capacity(kill);
    let hosts = pools.len();
    let mut turn = 0;
    while victims.len() < kill && pools.iter().any(|p| !p.is_empty()) {
        if let Some(v) = pools[turn % hosts].pop() {
            victims.push(v);
        }
        turn += 1;
    }
    victims.sort_unstable();
    victims
}

/// An agent's share of the cluster: its host, its members and what their events said.
pub(crate) struct AgentSwim {
    args: Args,
    host: Option<Host>,
    events: Option<EventThread>,
    /// Cluster indexes of this agent's members.
    members: Range<usize>,
    /// Every victim of the run, and this agent's.
    victims: Vec<usize>,
    mine: Vec<usize>,
}

impl AgentSwim {
    /// Step `prepare`: starts the host and adds this agent's members; answers where the
    /// seeds among them are.
    pub fn prepare(
        data: &Value,
        bind_ip: IpAddr,
        deadline: Instant,
    ) -> anyhow::Result<(Self, Value)> {
        let raw: Vec<String> =
            serde_json::from_value(data["args"].clone()).context("prepare: no `args`")?;
        let args = parse(&raw)?;
        let range: [usize; 2] =
            serde_json::from_value(data["members"].clone()).context("prepare: no `members`")?;
        let members = range[0]..range[1];
        let seeds: Vec<SocketAddr> = serde_json::from_value::<Vec<String>>(data["seeds"].clone())
            .context("prepare: no `seeds`")?
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .context("prepare: a seed is not an address")?;
        let victims: Vec<usize> =
            serde_json::from_value(data["victims"].clone()).context("prepare: no `victims`")?;
        let port = data["port"].as_u64().and_then(|p| u16::try_from(p).ok());
        let port = port.context("prepare: no `port`")?;
        if members.end > args.members || members.is_empty() {
            bail!("prepare: members {members:?} of {}", args.members);
        }
        let here = members.len();
        // One address for every member of this host: each needs its own port and its own
        // listener.
        let hc = local::host_config(&args, here, args.members, "member", "swim-agent")?;
        let host = Host::start(hc).context("starting the host")?;
        let events =
            EventThread::start(host.events().clone()).context("starting the event thread")?;
        let mine = victims
            .iter()
            .copied()
            .filter(|v| members.contains(v))
            .collect();
        let share = AgentSwim {
            args,
            host: Some(host),
            events: Some(events),
            members: members.clone(),
            victims,
            mine,
        };
        let addrs: Vec<(usize, SocketAddr)> = members
            .clone()
            .enumerate()
            .map(|(k, i)| (i, SocketAddr::new(bind_ip, port.wrapping_add(k as u16))))
            .collect();
        let mut seeds = seeds;
        let mut bind_retries = 0;
        let started = Instant::now();
        let progress = Progress::new("adding members", Duration::from_secs(here as u64), false);
        add_all(
            &share.args,
            share.host()?,
            &addrs,
            here as u16,
            &mut seeds,
            &mut bind_retries,
            &progress,
        )
        .map_err(|(k, e)| e.context(format!("{k} of {here} members started")))?;
        if Instant::now() > deadline {
            bail!(
                "adding {here} members took {:?}, past the deadline",
                started.elapsed()
            );
        }
        let reply = json!({
            "members": here, "first": members.start, "add_ms": started.elapsed().as_millis() as u64,
            "bind_retries": bind_retries,
            "seeds": seeds.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "shards": share.host()?.shards(),
        });
        Ok((share, reply))
    }

    fn host(&self) -> anyhow::Result<&Host> {
        self.host.as_ref().context("the host has stopped")
    }

    /// Steps `converge` and `run`.
    pub fn step(&mut self, step: &str, _data: &Value, deadline: Instant) -> anyhow::Result<Value> {
        match step {
            "converge" => self.converge(deadline),
            "run" => self.run(),
            other => bail!("swim has no step {other:?}"),
        }
    }

    fn converge(&self, deadline: Instant) -> anyhow::Result<Value> {
        let here = self.members.len();
        let started = Instant::now();
        let wait = deadline.saturating_duration_since(started);
        let progress = Progress::new("converging", wait, false);
        let (converged, census, _trace, _fds) = converge(
            self.host()?,
            self.args.members,
            here,
            started,
            wait,
            &progress,
        )?;
        Ok(json!({
            "converged": converged,
            "converge_ms": started.elapsed().as_millis() as u64,
            "converged_members": census.converged(),
            "members": here,
        }))
    }

    fn run(&self) -> anyhow::Result<Value> {
        let start = Instant::now();
        let args = &self.args;
        let host = self.host()?;
        let events = self
            .events
            .as_ref()
            .context("the event thread has stopped")?;
        let progress = Progress::new("steady state", args.common.duration, false);
        let steady = steady_state(
            host,
            args.members,
            args.common.warmup,
            args.common.duration,
            &progress,
        )?;
        let fp_before_kill = lock(&events.tally).false_positives.len();
        std::thread::sleep((start + kill_offset(args)).saturating_duration_since(Instant::now()));
        let observers = self.members.len() - self.mine.len();
        let progress = Progress::new("detecting", args.detect_timeout, false);
        let kill_start = kill_and_detect(
            host,
            &events.tally,
            (&self.mine, &self.victims),
            observers * self.victims.len(),
            args.detect_timeout,
            &progress,
        )?;
        let detect_wall_ms = kill_start.elapsed().as_millis() as u64;
        let live = args.members - self.victims.len();
        let c_end = host.census(live).context("census")?;
        let t = lock(&events.tally);
        let (detect, figures) = tally_results(&t, observers);
        drop(t);
        let mut r = figures;
        r.insert("members".into(), json!(self.members.len()));
        r.insert("victims_here".into(), json!(self.mine.len()));
        r.insert("steady_s".into(), json!(steady.elapsed.as_secs_f64()));
        r.insert("cpu_s".into(), json!(steady.cpu_s));
        r.insert(
            "cpu_cores_busy".into(),
            json!(steady.cpu_s / steady.elapsed.as_secs_f64()),
        );
        r.insert("datagrams".into(), json!(steady.datagrams));
        r.insert("bytes".into(), json!(steady.bytes));
        r.insert("stream_bytes".into(), json!(steady.stream_bytes));
        r.insert("rss_mb".into(), json!(steady.rss_kib as f64 / 1024.0));
        r.insert(
            "converged_after_steady".into(),
            json!(steady.census_after.converged()),
        );
        r.insert("false_positives_before_kill".into(), json!(fp_before_kill));
        r.insert("detect_wall_ms".into(), json!(detect_wall_ms));
        r.insert(
            "events_dropped".into(),
            json!(c_end.shards.iter().map(|s| s.events_dropped).sum::<u64>()),
        );
        r.insert("census_at_end".into(), census_json(&c_end));
        r.insert("detect".into(), serde_json::to_value(detect.ship(start))?);
        Ok(Value::Object(r))
    }
}

impl Drop for AgentSwim {
    fn drop(&mut self) {
        if let Some(e) = &self.events {
            e.stop();
        }
        if let Some(host) = self.host.take() {
            shutdown_within(host, SHUTDOWN_WAIT_MAX);
        }
        if let Some(e) = self.events.take() {
            e.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn victims_are_dealt_over_the_hosts_and_never_seeds() {
        let shares = spread(600, 3);
        let v = deal_victims(&shares, 3, 3, 1);
        assert_eq!(v.len(), 3);
        for (share, victim) in shares.iter().zip(&v) {
            assert!(share.contains(victim), "one per host: {v:?}");
        }
        assert_eq!(v, deal_victims(&shares, 3, 3, 1), "replays from the seed");
        let v = deal_victims(&shares, 3, 7, 9);
        let per_host: Vec<usize> = shares
            .iter()
            .map(|s| v.iter().filter(|i| s.contains(i)).count())
            .collect();
        assert_eq!(per_host, vec![3, 2, 2]);
        // The first host holds only seeds and one other member: the rest come from the others.
        let shares = vec![0..4, 4..6, 6..8];
        let v = deal_victims(&shares, 3, 5, 2);
        assert_eq!(v.len(), 5);
        assert!(v.iter().all(|&i| i >= 3), "never a seed: {v:?}");
        assert!(v.windows(2).all(|w| w[0] < w[1]), "distinct: {v:?}");
    }
}

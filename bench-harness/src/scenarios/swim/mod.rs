//! Scenario `swim`: a live SWIM + Lifeguard cluster of `--members` members on loopback, all
//! in this process, spread over the shards of one [`Host`], on the real clock.
//!
//! Phases:
//! 1. Start: every member binds `127.<base>.x.y:<port>` (`host::loopback_addrs`; another port
//!    is tried when an address is taken) and joins through the first `--seeds` members.
//!    Converged = every member sees exactly `--members` alive and none suspect (the
//!    census is polled every [`CENSUS_POLL`]); `--converge-timeout` after the last add, the
//!    run reports `converged: false` and carries on.
//! 2. Steady state: after `--warmup`, `--duration` of process CPU (getrusage utime +
//!    stime), datagrams and bytes sent (the rings' counters), and memory (VmRSS, VmHWM).
//! 3. Failure detection: `--kill` random non-seed members crash ([`Host::kill`]); each
//!    (live observer, victim) pair's first `Down` event gives its detection time, from the
//!    moment just before the victim's kill command. The phase ends when every pair is
//!    detected or at `--detect-timeout` (the rest are `undetected`).
//!
//! A thread drains the event channel for the whole run ([`EventMask::FAILURES`] only: the
//! "up" events of a 10,000-member start would be 10⁸); `Down` events about members that
//! were not killed are false positives (distinct (observer, member) pairs), suspicions of
//! live members are reported as `false_suspicions`. The shards' `events_dropped` is
//! reported: with drops, the event-based figures are not to be trusted.
//!
//! This scenario only observes: it never touches a member's state except by the kills.
//!
//! What it measured, with the commands, is in `docs/BENCHMARKS.md`.
//!
//! If a census times out at shutdown (seen once in ~4 runs of 1,000-2,000 members: both
//! shards spinning in `UdpRing::poll` on a stale IORING_SQ_TASKRUN flag), the report says
//! so and the host is left to the process exit ([`SHUTDOWN_WAIT_MAX`]).
//!
//! Files: this one holds the flags and the run; `measure` the three phases, `tally` what
//! the event thread makes of the events, `process` this process's CPU, memory and
//! descriptors.

mod measure;
mod process;
mod tally;

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ringleader_engine::host::{EventMask, Host, HostConfig, StreamListeners};
use ringleader_engine::swim::Config;
use serde_json::{Map, Value, json};

pub use measure::{pick_victims, thin};
pub use process::{
    fd_report, nofile_limit, open_fds, parse_memory_kib, process_cpu, process_memory_kib, sockstat,
};
pub use tally::Tally;

use crate::harness::{CommonArgs, Recorder, Run, parse_duration};
use measure::measure;
pub(crate) use measure::{
    add_all, census_json, converge, kill_and_detect, member_name, steady_state,
};
pub(crate) use tally::{EventThread, lock};

/// How often the census is asked for while waiting for convergence.
pub const CENSUS_POLL: Duration = Duration::from_millis(250);
/// How often the detection phase looks at what the event thread has seen.
pub const DETECT_POLL: Duration = Duration::from_millis(100);
/// How long the event thread waits for an event before looking at its stop flag.
const DRAIN_WAIT: Duration = Duration::from_millis(50);
/// How long the host may take to shut down before the report is written without it.
pub const SHUTDOWN_WAIT_MAX: Duration = Duration::from_secs(30);
/// Points of the convergence trace in the report, at most.
pub const CONVERGE_TRACE_MAX: usize = 40;
/// Every this many changes of the convergence census, one line goes to stderr.
const CONVERGE_TRACE_REPORT_EVERY: usize = 8;
/// Other ports tried for a member whose address is taken.
pub const BIND_PORT_TRIES_MAX: u16 = 16;
/// Members at most (`loopback_addrs` spreads them over 127.<base>.0-255.1-250).
pub const MEMBERS_MAX: usize = 250 * 256;
/// Convergence bound when `--converge-timeout` is not given: this much ...
const CONVERGE_TIMEOUT_BASE: Duration = Duration::from_secs(60);
/// ... plus this much per member.
const CONVERGE_TIMEOUT_PER_MEMBER: Duration = Duration::from_millis(30);

/// Flags of the `swim` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Steady-state duration (`--duration`), warm-up before it, output folder, `--json`.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Cluster size (all members live in this process).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Member configuration preset: lan, wan or local.
    #[arg(long, default_value = "lan")]
    pub config: String,
    /// Members crashed after the steady state (never a seed).
    #[arg(long, default_value_t = 0)]
    pub kill: usize,
    /// Shards (executor threads); 0 = one per CPU this process may use.
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// Members everyone joins through (the first ones started).
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// Seed of the RNG that picks the victims.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// How long to wait for every live member to declare every victim down.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub detect_timeout: Duration,
    /// How long to wait for convergence after the last member was added (default 60 s +
    /// 30 ms per member). `converge_ms` counts from the first add.
    #[arg(long, value_parser = parse_duration)]
    pub converge_timeout: Option<Duration>,
    /// Second octet of the members' loopback addresses (127.<base>.x.y).
    #[arg(long, default_value_t = 90)]
    pub base_octet: u8,
    /// Port of every member (default: from the pid, below the ephemeral range); a member whose address is
    /// taken tries the next ports.
    #[arg(long)]
    pub port: Option<u16>,
    /// Pin shard `i` to the `i`-th CPU. On a host shared with other busy processes a
    /// pinned shard cannot escape a busy CPU, so the default leaves placement to the
    /// scheduler.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub pin: bool,
    /// Members started per second at most (0: as fast as the shards take them). A real
    /// cluster does not start all at once; pacing keeps the seeds' push-pull load bounded.
    #[arg(long, default_value_t = 0)]
    pub add_rate: u64,
    /// Sends in flight per shard at most (`UdpConfig::send_slots`; beyond it sends are
    /// dropped and counted as `send_queue_full`). Default: the engine's.
    #[arg(long)]
    pub send_slots: Option<usize>,
    /// Receive buffers per shard (`UdpConfig::recv_buffers`, a power of two). Default: the
    /// engine's.
    #[arg(long)]
    pub recv_buffers: Option<u16>,
    /// Capacity of the event channel (all shards together).
    #[arg(long, default_value_t = 1 << 16)]
    pub events_capacity: usize,
    /// TCP listeners: `member` (one per member, as in production: two descriptors per
    /// member), `shard` (one wildcard listener per shard and port, connections routed by
    /// local address: one descriptor per member; shard `s`'s members use port `--port + s`),
    /// or `auto` (`shard` when two descriptors per member would not fit the hard
    /// RLIMIT_NOFILE or a shard would hold more than [`LISTENERS_PER_SHARD_AUTO_MAX`]
    /// listeners).
    #[arg(long, default_value = "auto")]
    pub listeners: String,
    /// Each member after the seeds joins through one seed (member `i` through seed
    /// `i % --seeds`) instead of all of them: a join push-pulls the whole cluster state with
    /// every seed it is given, so this divides the start-up's state transfer by `--seeds`.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub join_via_one: bool,
    /// Overrides one field of the `--config` preset, `key=value` with the field's name in
    /// `ringleader_engine::swim::Config` (repeatable): `--set join_rumor_damping=4`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Applies `--set key=value` overrides to a SWIM config preset.
pub fn apply_sets(cfg: &mut Config, sets: &[String]) -> anyhow::Result<()> {
    for kv in sets {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv}: write KEY=VALUE"))?;
        cfg.set(k, v).map_err(|e| anyhow::anyhow!("--set: {e}"))?;
    }
    Ok(())
}

/// Descriptors kept free for streams, eventfds and rings when `--listeners auto` decides.
const FD_SLACK: u64 = 2_048;

/// With `--listeners auto`, more members than this per shard use shared listeners even
/// when descriptors would allow one each: every listener keeps an accept pending in
/// glommio's ring, the kernel files each as a poll in that ring's small cancel table, and
/// walks the table on every cancellation (glommio cancels each dropped timer and I/O):
/// perf showed `io_poll_find` at 6-9 % of the host's CPU with 3,000-6,000 listeners.
pub const LISTENERS_PER_SHARD_AUTO_MAX: usize = 1_024;

/// The listener layout `--listeners` asks for with `members` members on `shards` shards.
pub fn listeners_for(
    flag: &str,
    members: usize,
    shards: usize,
    fd_hard_limit: u64,
) -> anyhow::Result<StreamListeners> {
    let per_member = StreamListeners::PerMember;
    let fits = |l: StreamListeners| {
        (l.descriptors_per_member() * members) as u64 + FD_SLACK <= fd_hard_limit
            && members.div_ceil(shards.max(1)) <= LISTENERS_PER_SHARD_AUTO_MAX
    };
    match flag {
        "auto" if fits(per_member) => Ok(per_member),
        "auto" => Ok(StreamListeners::PerShard),
        _ => [StreamListeners::PerMember, StreamListeners::PerShard]
            .into_iter()
            .find(|l| l.name() == flag)
            .with_context(|| format!("--listeners {flag}: use member, shard or auto")),
    }
}

/// Shuts `host` down on a thread of its own and waits at most `wait`: a shard that does
/// not stop must not hang the benchmark (its threads end with the process). Whether it
/// stopped cleanly in time.
pub(crate) fn shutdown_within(host: Host, wait: Duration) -> bool {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let spawned = thread::Builder::new()
        .name("swim-shutdown".to_owned())
        .spawn(move || {
            let _ = tx.send(host.shutdown());
        });
    if spawned.is_err() {
        eprintln!("swim: cannot start the shutdown thread; not waiting for the shards");
        return false;
    }
    match rx.recv_timeout(wait) {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            eprintln!("swim: shutdown: {e}");
            false
        }
        Err(_) => {
            eprintln!("swim: the host did not shut down within {wait:?}; leaving it to the exit");
            false
        }
    }
}

/// Checks the cluster-wide flags: `--members`, `--seeds`, `--kill`, `--config`, `--set`.
pub fn check(args: &Args) -> anyhow::Result<()> {
    let n = args.members;
    if !(2..=MEMBERS_MAX).contains(&n) {
        bail!("--members must be in 2..={MEMBERS_MAX}");
    }
    if args.seeds == 0 || args.seeds > n {
        bail!("--seeds must be in 1..=--members");
    }
    if args.kill + args.seeds >= n {
        bail!("--kill must leave the seeds and at least one other member alive");
    }
    swim_config(args).map(drop)
}

fn swim_config(args: &Args) -> anyhow::Result<Config> {
    let mut swim =
        Config::named(&args.config).with_context(|| format!("unknown --config {}", args.config))?;
    apply_sets(&mut swim, &args.set)?;
    Ok(swim)
}

/// The convergence bound `--converge-timeout` gives (or its default for `n` members).
pub fn converge_timeout(args: &Args) -> Duration {
    args.converge_timeout
        .unwrap_or(CONVERGE_TIMEOUT_BASE + CONVERGE_TIMEOUT_PER_MEMBER * args.members as u32)
}

/// The host of a run with `here` of the cluster's `args.members` members in this process,
/// TCP listeners as `listeners` (a `--listeners` value) says, shards named `name`.
pub(crate) fn host_config(
    args: &Args,
    here: usize,
    cluster: usize,
    listeners: &str,
    name: &str,
) -> anyhow::Result<HostConfig> {
    let mut hc = HostConfig {
        swim: swim_config(args)?,
        events: EventMask::FAILURES,
        ..HostConfig::default()
    };
    hc.runtime.shards = args.shards;
    hc.runtime.pin = args.pin;
    hc.runtime.events_capacity = args.events_capacity;
    hc.runtime.name = name.to_owned();
    hc.cluster_members_max = hc.cluster_members_max.max(cluster);
    hc.stream_listeners =
        listeners_for(listeners, here, hc.runtime.shard_count(), nofile_limit().1)?;
    if let Some(slots) = args.send_slots {
        hc.udp.send_slots = slots;
    }
    if let Some(bufs) = args.recv_buffers {
        hc.udp.recv_buffers = bufs;
    }
    // The completion queue must hold every receive and send in flight at once.
    let in_flight = hc.udp.recv_buffers as usize + hc.udp.send_slots;
    hc.udp.cq_entries = hc
        .udp
        .cq_entries
        .max(u32::try_from(in_flight.next_power_of_two()).unwrap_or(u32::MAX));
    Ok(hc)
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<()> {
    check(&args)?;
    let n = args.members;
    let port = args
        .port
        .unwrap_or_else(|| ringleader_engine::transport::port_base_below_ephemeral(64));
    let converge_timeout = converge_timeout(&args);
    let hc = host_config(&args, n, n, &args.listeners, "swim")?;
    let hc_udp = hc.udp.clone();
    let hc_listeners = hc.stream_listeners;
    let host = Host::start(hc).context("starting the host")?;
    let shards = host.shards();
    let config = json!({
        "members": n, "config": args.config, "set": args.set, "kill": args.kill, "shards": shards,
        "seeds": args.seeds, "seed": args.seed, "pin": args.pin,
        "duration_s": args.common.duration.as_secs_f64(),
        "warmup_s": args.common.warmup.as_secs_f64(),
        "detect_timeout_s": args.detect_timeout.as_secs_f64(),
        "converge_timeout_s": converge_timeout.as_secs_f64(),
        "base_octet": args.base_octet, "port": port,
        "events_capacity": args.events_capacity, "add_rate": args.add_rate,
        "send_slots": hc_udp.send_slots, "recv_buffers": hc_udp.recv_buffers,
        "cq_entries": hc_udp.cq_entries,
        "listeners": hc_listeners.name(),
        "join_via_one": args.join_via_one,
    });
    let mut run = Run::new("swim", args.common.out.as_deref(), args.common.json, config)?;

    let drainer = EventThread::start(host.events().clone()).context("starting the event thread")?;
    let tally = Arc::clone(&drainer.tally);
    let result = measure(
        &args,
        &host,
        (n, port, hc_listeners),
        converge_timeout,
        &tally,
        &mut run,
    );
    if let Err(e) = &result {
        // Said now: a host that cannot answer may not shut down either.
        eprintln!("swim: the run failed: {e:#}");
    }
    drainer.stop();
    let shutdown_clean = shutdown_within(host, SHUTDOWN_WAIT_MAX);
    if !drainer.join() {
        bail!("the event thread panicked");
    }
    let mut results = result?;
    results
        .as_object_mut()
        .context("results are an object")?
        .insert("shutdown_clean".into(), json!(shutdown_clean));

    let t = lock(&tally);
    // Observers: the members not killed (none were when the start failed).
    let (detect, figures) = tally_results(&t, n - t.killed.len());
    let r = results.as_object_mut().context("results are an object")?;
    r.extend(figures);
    drop(t);
    run.add(detect);
    run.finish(results)
}

/// What the event thread saw, as the report's fields (`detect_ms`, `detected`,
/// `undetected`, false positives and suspicions, events by kind), and the detection-time
/// histogram. `observers`: the live members whose events were drained.
pub(crate) fn tally_results(t: &Tally, observers: usize) -> (Recorder, Map<String, Value>) {
    let mut detect = Recorder::new("detect_ms");
    let mut detections: Vec<(Instant, u64)> =
        t.detected.values().map(|&(ms, at)| (at, ms)).collect();
    detections.sort_unstable();
    for (at, ms) in detections {
        detect.record_at(at, ms);
    }
    let pairs = observers * t.killed.len();
    let mut r = Map::new();
    r.insert("detect_ms".into(), detect.summary());
    r.insert("detected".into(), json!(t.detected.len()));
    r.insert(
        "undetected".into(),
        json!(pairs.saturating_sub(t.detected.len())),
    );
    r.insert("false_positives".into(), json!(t.false_positives.len()));
    r.insert(
        "false_positive_events".into(),
        json!(t.false_positive_events),
    );
    r.insert("false_suspicions".into(), json!(t.false_suspicions.len()));
    r.insert(
        "false_suspicion_events".into(),
        json!(t.false_suspicion_events),
    );
    let mut fp: Vec<String> = t
        .false_positives
        .iter()
        .take(20)
        .map(|&p| {
            let (o, m) = t.pair_names(p);
            format!("{o} saw {m} down")
        })
        .collect();
    fp.sort();
    r.insert("false_positive_examples".into(), json!(fp));
    let mut kinds: Vec<(&str, u64)> = t.events.iter().map(|(k, v)| (*k, *v)).collect();
    kinds.sort_unstable();
    r.insert(
        "events".into(),
        Value::Object(
            kinds
                .into_iter()
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect(),
        ),
    );
    (detect, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_auto_picks_per_shard_only_when_per_member_does_not_fit() {
        let pick = |flag: &str, n: usize| listeners_for(flag, n, 2, 20_000).ok();
        assert_eq!(pick("auto", 1_000), Some(StreamListeners::PerMember));
        assert_eq!(pick("auto", 2_048), Some(StreamListeners::PerMember));
        assert_eq!(pick("auto", 2_050), Some(StreamListeners::PerShard));
        assert_eq!(pick("auto", 10_000), Some(StreamListeners::PerShard));
        assert_eq!(
            listeners_for("auto", 3_000, 4, 1 << 20).ok(),
            Some(StreamListeners::PerMember),
            "750 per shard"
        );
        assert_eq!(
            listeners_for("auto", 3_000, 2, 1 << 20).ok(),
            Some(StreamListeners::PerShard),
            "1,500 per shard"
        );
        assert_eq!(pick("member", 10_000), Some(StreamListeners::PerMember));
        assert_eq!(pick("shard", 10), Some(StreamListeners::PerShard));
        assert_eq!(pick("bogus", 10), None);
    }
}

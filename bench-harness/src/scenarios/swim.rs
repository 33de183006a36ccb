//! Scenario `swim`: a live SWIM + Lifeguard cluster of `--members` members on loopback, all
//! in this process, spread over the shards of one [`Host`], on the real clock.
//!
//! Phases:
//! 1. Start: every member binds `127.<base>.x.y:<port>` ([`loopback_addrs`]; another port
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

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use ringleader_engine::host::{
    Census, Event, EventMask, Host, HostConfig, HostError, HostEvent, MemberSpec, StreamListeners,
    loopback_addrs,
};
use ringleader_engine::swim::{Config, FxHashMap, FxHasher};
use ringleader_engine::transport::DROP_CAUSES;
use serde_json::{Map, Value, json};

use crate::harness::{CommonArgs, Recorder, Run, parse_duration};

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
    /// Port of every member (default: 21000 + pid % 20000); a member whose address is
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

/// CPU time this process has used (user + system), from getrusage(RUSAGE_SELF).
pub fn process_cpu() -> anyhow::Result<Duration> {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct we own; all-zero bytes
    // are a valid `rusage` (plain integers).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable `rusage` for the duration of the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        bail!("getrusage: {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(tv(ru.ru_utime) + tv(ru.ru_stime))
}

/// This process's resident set and its peak, in KiB (VmRSS, VmHWM of /proc/self/status).
pub fn process_memory_kib() -> anyhow::Result<(u64, u64)> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    parse_memory_kib(&status).context("no VmRSS/VmHWM lines in /proc/self/status")
}

/// VmRSS and VmHWM (KiB) of a /proc/<pid>/status text.
pub fn parse_memory_kib(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// What the event thread makes of the events (shared with the main thread).
#[derive(Debug, Default)]
pub struct Tally {
    /// Killed members and the moment just before each one's kill command.
    pub killed: HashMap<String, Instant>,
    /// Member names seen, by id (pairs are kept as two ids: a 10,000-member run can see
    /// millions of pairs, and hashing two strings per event cost the event thread a core).
    names: Vec<Arc<str>>,
    ids: FxHashMap<Arc<str>, u32>,
    /// First `Down` of each (observer, victim) pair ([`Tally::pair`]): the milliseconds
    /// since the kill, and when it was seen.
    pub detected: FxHashMap<u64, (u64, Instant)>,
    /// Distinct (observer, member) pairs with a `Down` about a member that was not killed
    /// (or about a victim before its kill).
    pub false_positives: HashSet<u64, BuildHasherDefault<FxHasher>>,
    /// `Down` events counted in `false_positives` (repeats included).
    pub false_positive_events: u64,
    /// Distinct (observer, member) pairs with a suspicion of a member that was not killed.
    pub false_suspicions: HashSet<u64, BuildHasherDefault<FxHasher>>,
    /// Suspicions of members that were not killed (repeats included).
    pub false_suspicion_events: u64,
    /// Events seen, by kind.
    pub events: HashMap<&'static str, u64>,
}

impl Tally {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.names.push(Arc::clone(&name));
        self.ids.insert(name, id);
        id
    }

    /// The key of the pair (`observer`, `member`).
    pub fn pair(&mut self, observer: &str, member: &str) -> u64 {
        (u64::from(self.id(observer)) << 32) | u64::from(self.id(member))
    }

    /// The names of a pair key.
    pub fn pair_names(&self, key: u64) -> (&str, &str) {
        let name = |id: u64| self.names.get(id as usize).map_or("?", |n| &**n);
        (name(key >> 32), name(key & 0xffff_ffff))
    }

    /// Accounts for one event.
    pub fn observe(&mut self, e: HostEvent) {
        let kind = match &e.event {
            Event::Up(_) => "up",
            Event::Suspect { .. } => "suspect",
            Event::AliveAgain(_) => "alive_again",
            Event::Down { .. } => "down",
            Event::Left(_) => "left",
            Event::Updated(_) => "updated",
            Event::Reaped(_) => "reaped",
            Event::Message { .. } => "message",
            Event::Joined { .. } => "joined",
        };
        *self.events.entry(kind).or_default() += 1;
        match e.event {
            Event::Down { member, .. } => {
                let killed_at = self.killed.get(&member.name).copied();
                match killed_at {
                    Some(k) if e.at >= k => {
                        let ms = e.at.duration_since(k).as_millis() as u64;
                        let pair = self.pair(&e.local, &member.name);
                        self.detected.entry(pair).or_insert((ms, e.at));
                    }
                    _ => {
                        self.false_positive_events += 1;
                        let pair = self.pair(&e.local, &member.name);
                        self.false_positives.insert(pair);
                    }
                }
            }
            Event::Suspect { member, .. } if !self.killed.contains_key(&member.name) => {
                self.false_suspicion_events += 1;
                let pair = self.pair(&e.local, &member.name);
                self.false_suspicions.insert(pair);
            }
            _ => {}
        }
    }
}

fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    // The tally is plain counters: a panic elsewhere leaves it usable.
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Drains `events` into `tally` until `stop` is set.
fn drain(
    events: crossbeam_channel::Receiver<HostEvent>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(first) = events.recv_timeout(DRAIN_WAIT) else {
            continue;
        };
        let mut t = lock(&tally);
        t.observe(first);
        // Take what else is queued under the same lock.
        for e in events.try_iter().take(4096) {
            t.observe(e);
        }
    }
    let mut t = lock(&tally);
    for e in events.try_iter() {
        t.observe(e);
    }
}

fn member_name(i: usize) -> String {
    format!("m{i}")
}

/// Starts member `i` at `addr`, trying the next ports when the address is taken.
fn add_member(
    host: &Host,
    i: usize,
    addr: SocketAddr,
    port_step: u16,
    seeds: &[SocketAddr],
    retries: &mut u64,
) -> anyhow::Result<SocketAddr> {
    let mut bind = addr;
    for _ in 0..BIND_PORT_TRIES_MAX {
        let spec = MemberSpec {
            name: member_name(i),
            bind,
            seeds: seeds.to_vec(),
            meta: Vec::new(),
        };
        match host.add(spec) {
            Ok(a) => return Ok(a),
            // Only a taken address is worth another port (EADDRINUSE, os error 98).
            Err(HostError::Bind { what, .. }) if what.contains("os error 98") => {
                eprintln!("swim: member {i} cannot bind {bind} ({what}); trying the next port");
                *retries += 1;
                bind.set_port(bind.port().wrapping_add(port_step).max(1024));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("starting member {i} ({})", fd_report()));
            }
        }
    }
    bail!("member {i}: no free port near {addr} after {BIND_PORT_TRIES_MAX} tries")
}

/// Open descriptors and RLIMIT_NOFILE, for an error message: each member holds a UDP
/// socket and, with `--listeners member`, a TCP listener; every stream exchange in flight
/// holds one more on each side.
pub fn fd_report() -> String {
    let open = open_fds();
    let (soft, hard) = nofile_limit();
    format!("{open} descriptors open, RLIMIT_NOFILE soft {soft} hard {hard}")
}

/// Descriptors this process has open (0 if /proc cannot say).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The kernel's socket counts (/proc/net/sockstat: TCP `alloc` counts sockets not yet
/// connected or already closed that still hold a descriptor), one string per line.
pub fn sockstat() -> Vec<String> {
    std::fs::read_to_string("/proc/net/sockstat")
        .map(|t| t.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// RLIMIT_NOFILE (soft, hard); zeros if getrlimit fails.
pub fn nofile_limit() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the `rlimit` we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    if rc != 0 {
        return (0, 0);
    }
    (r.rlim_cur, r.rlim_max)
}

/// Everything the census says that the report uses.
fn census_json(c: &Census) -> Value {
    let u = c.udp();
    let mut dropped = Map::new();
    for cause in DROP_CAUSES {
        let n = c.dropped(cause);
        if n > 0 {
            dropped.insert((*cause).to_owned(), json!(n));
        }
    }
    let (out, failed, served, refused) = c.streams();
    let s = c.stats();
    json!({
        "members": c.members(),
        "converged": c.converged(),
        "alive_seen_min": c.shards.iter().map(|s| s.alive_seen_min).min().unwrap_or(0),
        "alive_seen_max": c.shards.iter().map(|s| s.alive_seen_max).max().unwrap_or(0),
        "udp": {
            "datagrams_received": u.datagrams_received,
            "datagrams_delivered": u.datagrams_delivered,
            "datagrams_sent": u.datagrams_sent,
            "bytes_sent": u.bytes_sent,
            "send_errors": u.send_errors,
            "send_errno_last": c.shards.iter().map(|s| s.udp.send_errno_last).max().unwrap_or(0),
            "send_queue_full": u.send_queue_full,
            "recv_no_buffers": u.recv_no_buffers,
            "recv_rearmed": u.recv_rearmed,
            "recv_errors": u.recv_errors,
            "dropped": dropped,
        },
        "streams": {"out": out, "failed": failed, "served": served, "refused": refused,
            "unrouted": c.shards.iter().map(|s| s.streams_unrouted).sum::<u64>(),
            "accept_errors": c.shards.iter().map(|s| s.accept_errors).sum::<u64>(),
            "shared_listeners": c.shards.iter().map(|s| s.stream_listeners).sum::<usize>()},
        "sends_dropped": c.shards.iter().map(|s| s.sends_dropped).sum::<u64>(),
        "events_dropped": c.shards.iter().map(|s| s.events_dropped).sum::<u64>(),
        "member_stats": {
            "probes": s.probes,
            "probes_failed": s.probes_failed,
            "refutations": s.refutations,
            "events_dropped": s.events_dropped,
            "dropped": s.dropped,
            "push_pull_refused": s.push_pull_refused,
            "reconnects": s.reconnects,
        },
    })
}

/// Datagrams, bytes and stream bytes sent so far.
fn traffic(c: &Census) -> (u64, u64, u64) {
    let u = c.udp();
    (u.datagrams_sent, u.bytes_sent, c.stats().stream_bytes_out)
}

/// Shuts `host` down on a thread of its own and waits at most `wait`: a shard that does
/// not stop must not hang the benchmark (its threads end with the process). Whether it
/// stopped cleanly in time.
fn shutdown_within(host: Host, wait: Duration) -> bool {
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

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut swim =
        Config::named(&args.config).with_context(|| format!("unknown --config {}", args.config))?;
    apply_sets(&mut swim, &args.set)?;
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
    let port = args
        .port
        .unwrap_or(21_000 + (std::process::id() % 20_000) as u16);
    let converge_timeout = args
        .converge_timeout
        .unwrap_or(CONVERGE_TIMEOUT_BASE + CONVERGE_TIMEOUT_PER_MEMBER * n as u32);

    let mut hc = HostConfig {
        swim,
        events: EventMask::FAILURES,
        ..HostConfig::default()
    };
    hc.runtime.shards = args.shards;
    hc.runtime.pin = args.pin;
    hc.runtime.events_capacity = args.events_capacity;
    hc.runtime.name = "swim".to_owned();
    hc.cluster_members_max = hc.cluster_members_max.max(n);
    hc.stream_listeners = listeners_for(
        &args.listeners,
        n,
        hc.runtime.shard_count(),
        nofile_limit().1,
    )?;
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

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let (events, tally, stop) = (host.events().clone(), Arc::clone(&tally), Arc::clone(&stop));
        thread::Builder::new()
            .name("swim-events".to_owned())
            .spawn(move || drain(events, tally, stop))
            .context("starting the event thread")?
    };
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
    stop.store(true, Ordering::Relaxed);
    let shutdown_clean = shutdown_within(host, SHUTDOWN_WAIT_MAX);
    if drainer.join().is_err() {
        bail!("the event thread panicked");
    }
    let mut results = result?;
    results
        .as_object_mut()
        .context("results are an object")?
        .insert("shutdown_clean".into(), json!(shutdown_clean));

    let t = lock(&tally);
    let mut detect = Recorder::new("detect_ms");
    let mut detections: Vec<(Instant, u64)> =
        t.detected.values().map(|&(ms, at)| (at, ms)).collect();
    detections.sort_unstable();
    for (at, ms) in detections {
        detect.record_at(at, ms);
    }
    // Victims actually killed (none when the start failed).
    let killed = t.killed.len();
    let pairs = (n - killed) * killed;
    let r = results.as_object_mut().context("results are an object")?;
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
    drop(t);
    run.add(detect);
    run.finish(results)
}

/// Phases 1-3; the results so far (the event figures are added by the caller).
fn measure(
    args: &Args,
    host: &Host,
    (n, port, listeners): (usize, u16, StreamListeners),
    converge_timeout: Duration,
    tally: &Mutex<Tally>,
    run: &mut Run,
) -> anyhow::Result<Value> {
    // 1. Start and converge.
    let mut addrs = loopback_addrs(n, args.base_octet, port);
    // A shard's wildcard listener owns its port: members of different shards need
    // different ports.
    let port_step = match listeners {
        StreamListeners::PerMember => 1,
        StreamListeners::PerShard => {
            for (i, a) in addrs.iter_mut().enumerate() {
                let shard = host.shard_of(&member_name(i));
                a.set_port(port.wrapping_add(shard as u16));
            }
            host.shards() as u16
        }
    };
    let started = Instant::now();
    let mut seeds: Vec<SocketAddr> = Vec::with_capacity(args.seeds);
    let mut bind_retries = 0u64;
    let progress = run.progress("adding members", Duration::from_secs(n as u64));
    let add_interval =
        (args.add_rate > 0).then(|| Duration::from_secs(1) / args.add_rate.min(1_000_000) as u32);
    for (i, &addr) in addrs.iter().enumerate() {
        if let Some(every) = add_interval {
            let due = started + every * i as u32;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
        // The seeds themselves join those started before them (the first one starts alone;
        // a member left alone retries its seeds later).
        let via = if args.join_via_one && i >= args.seeds {
            &seeds[i % seeds.len()..][..1]
        } else {
            &seeds[..]
        };
        let bound = match add_member(host, i, addr, port_step, via, &mut bind_retries) {
            Ok(b) => b,
            Err(e) if i > 0 => {
                // Report what the host looked like when it could take no more.
                progress.finish();
                eprintln!("swim: {e:#}; stopping with {i} members started");
                let c = host.census(i).context("census")?;
                return Ok(json!({
                    "members": n,
                    "members_started": i,
                    "add_error": format!("{e:#}"),
                    "add_ms": started.elapsed().as_millis() as u64,
                    "converged": false,
                    "kill": args.kill,
                    "fds_open": open_fds(),
                    "fd_limit": nofile_limit().0,
                    "sockstat": sockstat(),
                    "census_at_failure": census_json(&c),
                }));
            }
            Err(e) => return Err(e),
        };
        if i < args.seeds {
            seeds.push(bound);
        }
        if i % 100 == 0 {
            progress.tick(Duration::from_secs(i as u64));
        }
    }
    progress.finish();
    let add_ms = started.elapsed().as_millis() as u64;
    let added = Instant::now();
    let progress = run.progress("converging", converge_timeout);
    // (ms since the first add, members converged, fewest alive seen by one member).
    let mut trace: Vec<(u64, usize, usize)> = Vec::new();
    let mut fds_max = open_fds();
    let (converged, census) = loop {
        let c = host.census(n).context("census")?;
        let seen_min = c.shards.iter().map(|s| s.alive_seen_min).min().unwrap_or(0);
        let ms = started.elapsed().as_millis() as u64;
        fds_max = fds_max.max(open_fds());
        if trace
            .last()
            .is_none_or(|l| (l.1, l.2) != (c.converged(), seen_min))
        {
            if trace.len() % CONVERGE_TRACE_REPORT_EVERY == 0 {
                eprintln!(
                    "swim: {ms} ms: {} of {n} converged, fewest alive seen {seen_min}",
                    c.converged()
                );
            }
            trace.push((ms, c.converged(), seen_min));
        }
        if c.converged() == n {
            break (true, c);
        }
        if added.elapsed() >= converge_timeout {
            break (false, c);
        }
        progress.tick(added.elapsed());
        thread::sleep(CENSUS_POLL);
    };
    progress.finish();
    let converge_ms = started.elapsed().as_millis() as u64;
    if !converged {
        eprintln!(
            "swim: not converged {converge_timeout:?} after the last add: {} of {n} members see everyone; carrying on",
            census.converged()
        );
    }
    let at_converge = census_json(&census);

    // 2. Steady state.
    thread::sleep(args.common.warmup);
    let c0 = host.census(n).context("census")?;
    let cpu0 = process_cpu()?;
    let t0 = Instant::now();
    let progress = run.progress("steady state", args.common.duration);
    while t0.elapsed() < args.common.duration {
        progress.tick(t0.elapsed());
        thread::sleep(
            args.common
                .duration
                .saturating_sub(t0.elapsed())
                .min(Duration::from_secs(1)),
        );
    }
    progress.finish();
    let cpu1 = process_cpu()?;
    let steady = t0.elapsed();
    let c1 = host.census(n).context("census")?;
    let (rss_kib, hwm_kib) = process_memory_kib()?;
    let fds_steady = open_fds();
    let sockstat_steady = sockstat();
    fds_max = fds_max.max(fds_steady);
    let (d0, b0, s0) = traffic(&c0);
    let (d1, b1, s1) = traffic(&c1);
    let member_secs = n as f64 * steady.as_secs_f64();
    let cpu_s = cpu1.saturating_sub(cpu0).as_secs_f64();
    let fp_before_kill = lock(tally).false_positives.len();

    // 3. Kill and detect.
    let victims = pick_victims(n, args.seeds, args.kill, args.seed);
    let kill_start = Instant::now();
    for &v in &victims {
        let name = member_name(v);
        lock(tally).killed.insert(name.clone(), Instant::now());
        host.kill(&name)
            .with_context(|| format!("killing {name}"))?;
    }
    let want = (n - victims.len()) * victims.len();
    let progress = run.progress("detecting", args.detect_timeout);
    while !victims.is_empty() && kill_start.elapsed() < args.detect_timeout {
        if lock(tally).detected.len() >= want {
            break;
        }
        progress.tick(kill_start.elapsed());
        thread::sleep(DETECT_POLL);
    }
    progress.finish();
    let detect_wall_ms = kill_start.elapsed().as_millis() as u64;
    let live = n - victims.len();
    let c_end = host.census(live).context("census")?;

    Ok(json!({
        "members": n,
        "config": args.config,
        "set": args.set,
        "shards": host.shards(),
        "listeners": listeners.name(),
        "seeds": args.seeds,
        "kill": args.kill,
        "seed": args.seed,
        "add_ms": add_ms,
        "add_rate": args.add_rate,
        "converged": converged,
        "converge_ms": converge_ms,
        "bind_retries": bind_retries,
        "steady_s": steady.as_secs_f64(),
        "cpu_s": cpu_s,
        "cpu_s_per_member_per_s": cpu_s / member_secs,
        "cpu_cores_busy": cpu_s / steady.as_secs_f64(),
        "msgs_per_member_per_s": (d1 - d0) as f64 / member_secs,
        "bytes_per_member_per_s": (b1 - b0) as f64 / member_secs,
        "stream_bytes_per_member_per_s": (s1 - s0) as f64 / member_secs,
        "rss_mb": rss_kib as f64 / 1024.0,
        "rss_hwm_mb": hwm_kib as f64 / 1024.0,
        "fds_open_after_steady": fds_steady,
        "fds_open_max": fds_max,
        "sockstat_after_steady": sockstat_steady,
        "fd_limit": nofile_limit().0,
        "converged_after_steady": c1.converged(),
        "false_positives_before_kill": fp_before_kill,
        "victims": victims.iter().map(|&v| member_name(v)).collect::<Vec<_>>(),
        "detect_wall_ms": detect_wall_ms,
        "events_dropped": c_end.shards.iter().map(|s| s.events_dropped).sum::<u64>(),
        "converge_trace": thin(&trace, CONVERGE_TRACE_MAX)
            .iter()
            .map(|&(ms, c, seen)| json!({"ms": ms, "converged": c, "alive_seen_min": seen}))
            .collect::<Vec<_>>(),
        "census_at_converge": at_converge,
        "census_after_steady": census_json(&c1),
        "census_at_end": census_json(&c_end),
    }))
}

/// At most `max` (≥ 2) items of `all`, evenly spread, the first and the last included.
pub fn thin<T: Copy>(all: &[T], max: usize) -> Vec<T> {
    assert!(max >= 2);
    if all.len() <= max {
        return all.to_vec();
    }
    let last = all.len() - 1;
    (0..max).map(|i| all[i * last / (max - 1)]).collect()
}

/// `kill` distinct member indexes in `seeds..n`, from `seed`.
pub fn pick_victims(n: usize, seeds: usize, kill: usize, seed: u64) -> Vec<usize> {
    assert!(seeds + kill <= n, "not enough non-seed members to kill");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut v: Vec<usize> = rand::seq::index::sample(&mut rng, n - seeds, kill)
        .into_iter()
        .map(|i| i + seeds)
        .collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringleader_engine::host::MemberInfo;
    use ringleader_engine::swim::MemberState;

    fn info(name: &str) -> MemberInfo {
        MemberInfo {
            name: name.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            meta: Vec::new(),
            state: MemberState::Dead,
            incarnation: 0,
        }
    }

    fn down(local: &str, member: &str, at: Instant) -> HostEvent {
        HostEvent {
            at,
            local: Arc::from(local),
            event: Event::Down {
                member: info(member),
                by: local.to_owned(),
            },
        }
    }

    #[test]
    fn victims_are_distinct_non_seeds_and_replay_from_the_seed() {
        let v = pick_victims(100, 3, 10, 7);
        assert_eq!(v.len(), 10);
        assert!(v.iter().all(|&i| (3..100).contains(&i)));
        assert!(v.windows(2).all(|w| w[0] < w[1]), "distinct and sorted");
        assert_eq!(v, pick_victims(100, 3, 10, 7));
        assert_ne!(v, pick_victims(100, 3, 10, 8));
        assert_eq!(pick_victims(5, 3, 2, 1), vec![3, 4]);
    }

    #[test]
    fn the_tally_keeps_the_first_down_per_pair_and_counts_false_positives() {
        let t0 = Instant::now();
        let mut t = Tally::default();
        // Before the kill, a down about m5 is a false positive.
        t.observe(down("m1", "m5", t0));
        t.killed.insert("m5".into(), t0 + Duration::from_millis(10));
        t.observe(down("m1", "m5", t0 + Duration::from_millis(1_010)));
        t.observe(down("m1", "m5", t0 + Duration::from_millis(3_010)));
        t.observe(down("m2", "m5", t0 + Duration::from_millis(2_010)));
        t.observe(down("m2", "m7", t0 + Duration::from_millis(2_010)));
        t.observe(down("m2", "m7", t0 + Duration::from_millis(2_020)));
        t.observe(HostEvent {
            at: t0,
            local: Arc::from("m3"),
            event: Event::Suspect {
                member: info("m7"),
                by: "m3".into(),
            },
        });
        t.observe(HostEvent {
            at: t0,
            local: Arc::from("m3"),
            event: Event::Suspect {
                member: info("m5"),
                by: "m3".into(),
            },
        });
        assert_eq!(t.detected.len(), 2);
        let (p15, p25) = (t.pair("m1", "m5"), t.pair("m2", "m5"));
        assert_eq!(t.detected[&p15].0, 1_000);
        assert_eq!(t.detected[&p25].0, 2_000);
        let fp = *t.false_positives.iter().min().expect("some");
        assert_eq!(t.pair_names(fp), ("m1", "m5"));
        assert_eq!(t.false_positives.len(), 2, "(m1, m5) early and (m2, m7)");
        assert_eq!(t.false_positive_events, 3);
        assert_eq!(t.false_suspicions.len(), 1, "only m7: m5 was killed");
        assert_eq!(t.events["down"], 6);
        assert_eq!(t.events["suspect"], 2);
    }

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

    #[test]
    fn thin_keeps_the_ends_and_at_most_max() {
        let all: Vec<u32> = (0..100).collect();
        let t = thin(&all, 5);
        assert_eq!(t, vec![0, 24, 49, 74, 99]);
        assert_eq!(thin(&all[..3], 5), vec![0, 1, 2]);
        assert_eq!(thin(&all, 2), vec![0, 99]);
    }

    #[test]
    fn memory_lines_parse() {
        let s = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t3\n";
        assert_eq!(parse_memory_kib(s), Some((1024, 2048)));
        assert_eq!(parse_memory_kib("Name:\tx\n"), None);
        let (rss, hwm) = process_memory_kib().expect("this process has a status file");
        assert!(rss > 0 && hwm >= rss);
    }

    #[test]
    fn cpu_time_grows_with_work() {
        // Spins until the reading moves (a liveness bound, not a timing claim).
        let a = process_cpu().expect("getrusage");
        let mut x = 0u64;
        let start = Instant::now();
        let mut b = a;
        while b <= a && start.elapsed() < Duration::from_secs(60) {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            b = process_cpu().expect("getrusage");
        }
        std::hint::black_box(x);
        assert!(b > a, "spinning used CPU: {a:?} -> {b:?}");
    }
}

//! Hidden subcommand `swim-members`: N SWIM members on one [`Host`] in this process, for the
//! fault suites (one such process per network namespace). It prints, as JSON lines on
//! stdout, every failure event its members see and, every `--report-ms`, a summary of their
//! views; it stops when stdin closes (its parent is gone) or at `--exit-after-s`.
//!
//! Lines (times `t` are CLOCK_MONOTONIC milliseconds, comparable across processes):
//! - `{"kind":"ready","members":N}` once every member is started;
//! - `{"kind":"ev","t":T,"e":"suspect|down|alive|left","l":LOCAL,"m":MEMBER,"by":BY}`;
//! - `{"kind":"view","t":T,"live_min":A,"live_max":B,"known_min":C}`: over this process's
//!   members, the fewest and most members each sees alive or suspect (itself included),
//!   and the smallest table.

use std::io::{BufRead as _, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ringleader_engine::host::{Event, EventMask, MemberSpec};
use ringleader_engine::swim::{Config, MemberState};
use ringleader_engine::{Host, HostConfig};
use serde_json::json;

/// Arguments of `swim-members`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address every member binds (each on its own port).
    #[arg(long)]
    pub ip: IpAddr,
    /// Member k binds port + k.
    #[arg(long, default_value_t = 7000)]
    pub port: u16,
    /// Members to run.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Member names are PREFIX-(first + k).
    #[arg(long)]
    pub prefix: String,
    /// Index of the first member's name (a second process on a host continues the first's
    /// names).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Seeds to join through (none: member 0 starts the cluster, the others join it).
    #[arg(long = "seed")]
    pub seeds: Vec<SocketAddr>,
    /// SWIM preset.
    #[arg(long, default_value = "lan")]
    pub config: String,
    /// Overrides of the preset, KEY=VALUE (repeatable).
    #[arg(long)]
    pub set: Vec<String>,
    /// Interval of the view lines.
    #[arg(long, default_value_t = 500)]
    pub report_ms: u64,
    /// Stop after this long whatever happens.
    #[arg(long, default_value_t = 900)]
    pub exit_after_s: u64,
}

/// CLOCK_MONOTONIC now, in milliseconds (the clock `Instant` reads on Linux, shared by
/// every process of the machine).
pub fn mono_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

fn emit(line: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Runs `swim-members`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let mut swim = Config::named(&a.config)
        .with_context(|| format!("unknown --config {}: use lan, local or wan", a.config))?;
    ringleader_bench::scenarios::swim::apply_sets(&mut swim, &a.set)?;
    anyhow::ensure!(a.members >= 1, "--members must be at least 1");
    let mut hc = HostConfig {
        swim,
        events: EventMask::FAILURES,
        ..HostConfig::default()
    };
    hc.runtime.shards = 1;
    // Descriptors for this host's members only (the default sizes for 16,384 per shard).
    hc.members_per_shard_max = a.members;
    hc.cluster_members_max = 4_096;
    hc.runtime.name = format!("swim-{}", a.prefix);
    let host = Host::start(hc).context("starting the host")?;
    let names: Vec<String> = (0..a.members)
        .map(|k| format!("{}-{}", a.prefix, a.first + k))
        .collect();
    let first = SocketAddr::new(a.ip, a.port);
    for (k, name) in names.iter().enumerate() {
        let port = a
            .port
            .checked_add(k as u16)
            .context("--port + --members passes 65535")?;
        let seeds = if !a.seeds.is_empty() {
            a.seeds.clone()
        } else if k == 0 {
            Vec::new()
        } else {
            vec![first]
        };
        host.add(MemberSpec {
            name: name.clone(),
            bind: SocketAddr::new(a.ip, port),
            seeds,
            meta: Vec::new(),
        })
        .with_context(|| format!("starting member {name}"))?;
    }
    emit(&json!({"kind": "ready", "members": a.members}));

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // Stdin closes when the parent goes: stop then.
            let mut sink = String::new();
            let mut stdin = std::io::stdin().lock();
            while matches!(stdin.read_line(&mut sink), Ok(n) if n > 0) {
                sink.clear();
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    let events = host.events().clone();
    let printer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(ev) = events.recv_timeout(Duration::from_millis(100)) else {
                    continue;
                };
                let age = ev.at.elapsed().as_millis() as u64;
                let (e, m, by) = match &ev.event {
                    Event::Suspect { member, by } => ("suspect", &member.name, by.as_str()),
                    Event::Down { member, by } => ("down", &member.name, by.as_str()),
                    Event::AliveAgain(m) => ("alive", &m.name, ""),
                    Event::Left(m) => ("left", &m.name, ""),
                    _ => continue,
                };
                emit(&json!({
                    "kind": "ev", "t": mono_ms().saturating_sub(age), "e": e,
                    "l": &*ev.local, "m": m, "by": by,
                }));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(a.exit_after_s);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let (mut live_min, mut live_max, mut known_min) = (usize::MAX, 0, usize::MAX);
        for name in &names {
            let Ok(view) = host.members(name) else {
                continue;
            };
            let live = view
                .iter()
                .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
                .count();
            live_min = live_min.min(live);
            live_max = live_max.max(live);
            known_min = known_min.min(view.len());
        }
        emit(&json!({
            "kind": "view", "t": mono_ms(), "live_min": live_min, "live_max": live_max,
            "known_min": known_min,
        }));
        std::thread::sleep(Duration::from_millis(a.report_ms));
    }
    stop.store(true, Ordering::SeqCst);
    let _ = printer.join();
    host.shutdown().context("stopping the host")?;
    Ok(())
}

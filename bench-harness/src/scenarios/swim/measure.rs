//! The scenario's three phases against a running host: start and converge, steady state,
//! kill and detect. It only observes: it never touches a member's state except by the
//! kills.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use ringleader_engine::host::{
    Census, Host, HostError, MemberSpec, StreamListeners, loopback_addrs,
};
use ringleader_engine::transport::DROP_CAUSES;
use serde_json::{Map, Value, json};

use super::process::{
    fd_report, nofile_limit, open_fds, process_cpu, process_memory_kib, sockstat,
};
use super::tally::{Tally, lock};
use super::{
    Args, BIND_PORT_TRIES_MAX, CENSUS_POLL, CONVERGE_TRACE_MAX, CONVERGE_TRACE_REPORT_EVERY,
    DETECT_POLL,
};
use crate::harness::{Progress, Run};

/// The name of member `i` of the cluster.
pub(crate) fn member_name(i: usize) -> String {
    format!("m{i}")
}

/// Starts member `i` at `addr`, trying the next ports when the address is taken.
pub(crate) fn add_member(
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

/// Everything the census says that the report uses.
pub(crate) fn census_json(c: &Census) -> Value {
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

/// Phases 1-3; the results so far (the event figures are added by the caller).
pub(super) fn measure(
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
    let members: Vec<(usize, SocketAddr)> = addrs.iter().copied().enumerate().collect();
    if let Err((i, e)) = add_all(
        args,
        host,
        &members,
        port_step,
        &mut seeds,
        &mut bind_retries,
        &progress,
    ) {
        if i == 0 {
            return Err(e);
        }
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
    let add_ms = started.elapsed().as_millis() as u64;
    let progress = run.progress("converging", converge_timeout);
    let (converged, census, trace, mut fds_max) =
        converge(host, n, n, started, converge_timeout, &progress)?;
    let converge_ms = started.elapsed().as_millis() as u64;
    if !converged {
        eprintln!(
            "swim: not converged {converge_timeout:?} after the last add: {} of {n} members see everyone; carrying on",
            census.converged()
        );
    }
    let at_converge = census_json(&census);

    // 2. Steady state.
    let progress = run.progress("steady state", args.common.duration);
    let steady = steady_state(host, n, args.common.warmup, args.common.duration, &progress)?;
    fds_max = fds_max.max(steady.fds);
    let fp_before_kill = lock(tally).false_positives.len();

    // 3. Kill and detect.
    let victims = pick_victims(n, args.seeds, args.kill, args.seed);
    let want = (n - victims.len()) * victims.len();
    let progress = run.progress("detecting", args.detect_timeout);
    let kill_start = kill_and_detect(
        host,
        tally,
        (&victims, &victims),
        want,
        args.detect_timeout,
        &progress,
    )?;
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
        "steady_s": steady.elapsed.as_secs_f64(),
        "cpu_s": steady.cpu_s,
        "cpu_s_per_member_per_s": steady.cpu_s / steady.member_secs(n),
        "cpu_cores_busy": steady.cpu_s / steady.elapsed.as_secs_f64(),
        "msgs_per_member_per_s": steady.datagrams as f64 / steady.member_secs(n),
        "bytes_per_member_per_s": steady.bytes as f64 / steady.member_secs(n),
        "stream_bytes_per_member_per_s": steady.stream_bytes as f64 / steady.member_secs(n),
        "rss_mb": steady.rss_kib as f64 / 1024.0,
        "rss_hwm_mb": steady.hwm_kib as f64 / 1024.0,
        "fds_open_after_steady": steady.fds,
        "fds_open_max": fds_max,
        "sockstat_after_steady": steady.sockstat,
        "fd_limit": nofile_limit().0,
        "converged_after_steady": steady.census_after.converged(),
        "false_positives_before_kill": fp_before_kill,
        "victims": victims.iter().map(|&v| member_name(v)).collect::<Vec<_>>(),
        "detect_wall_ms": detect_wall_ms,
        "events_dropped": c_end.shards.iter().map(|s| s.events_dropped).sum::<u64>(),
        "converge_trace": thin(&trace, CONVERGE_TRACE_MAX)
            .iter()
            .map(|&(ms, c, seen)| json!({"ms": ms, "converged": c, "alive_seen_min": seen}))
            .collect::<Vec<_>>(),
        "census_at_converge": at_converge,
        "census_after_steady": census_json(&steady.census_after),
        "census_at_end": census_json(&c_end),
    }))
}

/// Adds `members` (cluster index, address) in order, paced by `--add-rate`; the first
/// `--seeds` of the cluster go into `seeds` as they start and everyone joins through
/// `seeds` (or one of them, `--join-via-one`). On failure: the position in `members` that
/// failed, and why.
pub(crate) fn add_all(
    args: &Args,
    host: &Host,
    members: &[(usize, SocketAddr)],
    port_step: u16,
    seeds: &mut Vec<SocketAddr>,
    bind_retries: &mut u64,
    progress: &Progress,
) -> Result<(), (usize, anyhow::Error)> {
    let started = Instant::now();
    let add_interval =
        (args.add_rate > 0).then(|| Duration::from_secs(1) / args.add_rate.min(1_000_000) as u32);
    for (k, &(i, addr)) in members.iter().enumerate() {
        if let Some(every) = add_interval {
            let due = started + every * k as u32;
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
        }
        // The seeds themselves join those started before them (the first one starts alone;
        // a member left alone retries its seeds later).
        let via = if args.join_via_one && i >= args.seeds && !seeds.is_empty() {
            &seeds[i % seeds.len()..][..1]
        } else {
            &seeds[..]
        };
        let bound = add_member(host, i, addr, port_step, via, bind_retries).map_err(|e| (k, e))?;
        if i < args.seeds {
            seeds.push(bound);
        }
        if k % 100 == 0 {
            progress.tick(Duration::from_secs(k as u64));
        }
    }
    progress.finish();
    Ok(())
}

/// (ms since `started`, members converged, fewest alive seen by one member).
pub(crate) type TracePoint = (u64, usize, usize);

/// Polls the census until the `here` members of this host all see the `expected` members
/// of the cluster alive and none suspect, or `timeout` has passed; whether they did, the
/// last census, the convergence trace and the most descriptors seen open.
pub(crate) fn converge(
    host: &Host,
    expected: usize,
    here: usize,
    started: Instant,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<(bool, Census, Vec<TracePoint>, usize)> {
    let waiting = Instant::now();
    let mut trace: Vec<TracePoint> = Vec::new();
    let mut fds_max = open_fds();
    let (converged, census) = loop {
        let c = host.census(expected).context("census")?;
        let seen_min = c.shards.iter().map(|s| s.alive_seen_min).min().unwrap_or(0);
        let ms = started.elapsed().as_millis() as u64;
        fds_max = fds_max.max(open_fds());
        if trace
            .last()
            .is_none_or(|l| (l.1, l.2) != (c.converged(), seen_min))
        {
            if trace.len() % CONVERGE_TRACE_REPORT_EVERY == 0 {
                eprintln!(
                    "swim: {ms} ms: {} of {here} converged, fewest alive seen {seen_min}",
                    c.converged()
                );
            }
            trace.push((ms, c.converged(), seen_min));
        }
        if c.converged() == here {
            break (true, c);
        }
        if waiting.elapsed() >= timeout {
            break (false, c);
        }
        progress.tick(waiting.elapsed());
        thread::sleep(CENSUS_POLL);
    };
    progress.finish();
    Ok((converged, census, trace, fds_max))
}

/// What the steady state measured on this host.
#[derive(Debug)]
pub(crate) struct Steady {
    /// How long it lasted.
    pub elapsed: Duration,
    /// CPU seconds this process used meanwhile.
    pub cpu_s: f64,
    /// Datagrams, bytes and stream bytes sent meanwhile.
    pub datagrams: u64,
    pub bytes: u64,
    pub stream_bytes: u64,
    /// VmRSS and VmHWM at its end.
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Descriptors open and the kernel's socket counts at its end.
    pub fds: usize,
    pub sockstat: Vec<String>,
    /// The census at its end.
    pub census_after: Census,
}

impl Steady {
    /// Member-seconds of `members` members over the steady state.
    pub fn member_secs(&self, members: usize) -> f64 {
        members as f64 * self.elapsed.as_secs_f64()
    }
}

/// Waits `warmup`, then measures `duration` of steady state.
pub(crate) fn steady_state(
    host: &Host,
    expected: usize,
    warmup: Duration,
    duration: Duration,
    progress: &Progress,
) -> anyhow::Result<Steady> {
    thread::sleep(warmup);
    let c0 = host.census(expected).context("census")?;
    let cpu0 = process_cpu()?;
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        progress.tick(t0.elapsed());
        thread::sleep(
            duration
                .saturating_sub(t0.elapsed())
                .min(Duration::from_secs(1)),
        );
    }
    progress.finish();
    let cpu1 = process_cpu()?;
    let elapsed = t0.elapsed();
    let c1 = host.census(expected).context("census")?;
    let (rss_kib, hwm_kib) = process_memory_kib()?;
    let (d0, b0, s0) = traffic(&c0);
    let (d1, b1, s1) = traffic(&c1);
    Ok(Steady {
        elapsed,
        cpu_s: cpu1.saturating_sub(cpu0).as_secs_f64(),
        datagrams: d1.saturating_sub(d0),
        bytes: b1.saturating_sub(b0),
        stream_bytes: s1.saturating_sub(s0),
        rss_kib,
        hwm_kib,
        fds: open_fds(),
        sockstat: sockstat(),
        census_after: c1,
    })
}

/// Crashes `here` (this host's victims, cluster indexes), after marking every one of
/// `all` killed in the tally from now on, then waits until the tally holds `want`
/// detections or `timeout` has passed. Returns the moment the kills began.
pub(crate) fn kill_and_detect(
    host: &Host,
    tally: &Mutex<Tally>,
    (here, all): (&[usize], &[usize]),
    want: usize,
    timeout: Duration,
    progress: &Progress,
) -> anyhow::Result<Instant> {
    let kill_start = Instant::now();
    {
        let mut t = lock(tally);
        for &v in all {
            t.killed.insert(member_name(v), kill_start);
        }
    }
    for &v in here {
        let name = member_name(v);
        lock(tally).killed.insert(name.clone(), Instant::now());
        host.kill(&name)
            .with_context(|| format!("killing {name}"))?;
    }
    while !all.is_empty() && kill_start.elapsed() < timeout {
        if lock(tally).detected.len() >= want {
            break;
        }
        progress.tick(kill_start.elapsed());
        thread::sleep(DETECT_POLL);
    }
    progress.finish();
    Ok(kill_start)
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
    fn thin_keeps_the_ends_and_at_most_max() {
        let all: Vec<u32> = (0..100).collect();
        let t = thin(&all, 5);
        assert_eq!(t, vec![0, 24, 49, 74, 99]);
        assert_eq!(thin(&all[..3], 5), vec![0, 1, 2]);
        assert_eq!(thin(&all, 2), vec![0, 99]);
    }
}

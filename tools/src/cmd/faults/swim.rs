//! `faults swim-partition`: 3 hosts × 100 SWIM members (one `swim-members` process per
//! host namespace). Once every member sees all 300 alive, host 3 is cut off for 60 s (20 s
//! with `--short`), and longer if need be until both sides have declared the other side
//! failed (every member of the other side declared down by a member of this side; at most
//! 40 s longer, a run where they do not fails); after the heal the
//! cluster must re-merge by itself (the SWIM core's periodic reconnects to failed members;
//! `reconnect_interval_ms`). Checked over the whole run: no member was ever declared failed
//! by a member on its own side of the cut (false positives).

use std::io::BufRead as _;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use super::{Args, say};
use crate::cmd::swim_members::mono_ms;
use crate::netns;

/// Hosts running members.
pub const HOSTS: usize = 3;
/// Members per host.
const MEMBERS: usize = 100;
/// Member k of a host binds this port + k.
const PORT: u16 = 7000;
/// The cut lasts at least the suite's duration, and longer (up to this beyond it) until
/// both sides have declared every member of the other failed.
const CUT_EXTRA_MAX: Duration = Duration::from_secs(40);
/// The host cut off.
const CUT: usize = HOSTS;
/// The suite's own overrides of the lan preset (a `--set` of the same key wins). With lan's
/// timers a 300-member cluster takes up to a minute to declare a member dead
/// (`suspicion_max_timeout_mult` 6 × 4 × log10(300) × 1 s): twice as fast probes and a
/// maximum suspicion timeout of 3× the minimum (15 s) let both sides finish declaring the
/// other failed within a 20 s cut; reconnects every 10 s instead of 30 s bound the re-merge.
const SUITE_SETS: &[&str] = &[
    "probe_interval_ms=500",
    "probe_timeout_ms=250",
    "suspicion_max_timeout_mult=3",
    "reconnect_interval_ms=10000",
];

/// What the member processes reported.
#[derive(Default)]
struct Seen {
    /// The host cut off, if any: members on it and the others are on two sides, and a
    /// down event across is no false positive.
    cut: Option<usize>,
    /// The member killed on purpose, if any: its events are kept apart (`victim_events`).
    victim: Option<String>,
    /// Events about the victim: (t, kind, local member that saw it).
    victim_events: Vec<(u64, String, String)>,
    /// Per member process: (t, live_min, live_max) of each view line.
    views: Vec<Vec<(u64, usize, usize)>>,
    /// Down events whose member and accuser are on the same side.
    false_downs: u64,
    /// When each was seen (CLOCK_MONOTONIC ms).
    false_times: Vec<u64>,
    /// A few of them, for the report.
    false_examples: Vec<String>,
    /// Suspect events on the same side (Lifeguard refutes these; reported, not failed).
    same_side_suspicions: u64,
    /// Down events across the cut.
    downs_across: u64,
    /// Lines that did not parse.
    bad_lines: u64,
    /// Per side (false: the majority, true: the cut host), the members of the other side
    /// some member of this side declared down, and when the last of them was.
    declared: [(std::collections::HashSet<String>, u64); 2],
}

/// The host a member name `hI-K` belongs to.
fn host_of(name: &str) -> Option<usize> {
    name.strip_prefix('h')?.split_once('-')?.0.parse().ok()
}

impl Seen {
    /// Nothing seen yet, from `procs` member processes.
    fn new(procs: usize, cut: Option<usize>, victim: Option<String>) -> Seen {
        Seen {
            cut,
            victim,
            views: vec![Vec::new(); procs],
            ..Seen::default()
        }
    }

    /// Which side of the cut a host is on.
    fn side(&self, host: usize) -> bool {
        self.cut == Some(host)
    }

    /// A line of member process `slot` (0-based).
    fn take(&mut self, slot: usize, line: &str) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            self.bad_lines += 1;
            return;
        };
        let u = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let s = |k: &str| v.get(k).and_then(serde_json::Value::as_str).unwrap_or("");
        match s("kind") {
            "view" => {
                self.views[slot].push((u("t"), u("live_min") as usize, u("live_max") as usize))
            }
            "ev" => {
                if self.victim.as_deref() == Some(s("m")) {
                    self.victim_events
                        .push((u("t"), s("e").to_owned(), s("l").to_owned()));
                    return;
                }
                let (Some(m), Some(by)) = (host_of(s("m")), host_of(s("by"))) else {
                    return;
                };
                let same = self.side(m) == self.side(by);
                match (s("e"), same) {
                    ("down", true) => {
                        self.false_downs += 1;
                        self.false_times.push(u("t"));
                        if self.false_examples.len() < 5 {
                            self.false_examples.push(format!(
                                "{} saw {} declared down by {} at t={}",
                                s("l"),
                                s("m"),
                                s("by"),
                                u("t")
                            ));
                        }
                    }
                    ("down", false) => {
                        self.downs_across += 1;
                        let d = &mut self.declared[usize::from(self.side(by))];
                        if d.0.insert(s("m").to_owned()) {
                            d.1 = d.1.max(u("t"));
                        }
                    }
                    ("suspect", true) => self.same_side_suspicions += 1,
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// The first time at or after `from` when process `h`'s members (1-based: host `h`'s
    /// when there is one process per host) satisfied `pred(live_min, live_max)`, if any.
    fn first(&self, h: usize, from: u64, pred: impl Fn(usize, usize) -> bool) -> Option<u64> {
        self.views[h - 1]
            .iter()
            .find(|&&(t, lo, hi)| t >= from && pred(lo, hi))
            .map(|&(t, _, _)| t)
    }

    /// The time every process satisfied `pred(h, lo, hi)` at least once since `from`.
    fn all_first(&self, from: u64, pred: impl Fn(usize, usize, usize) -> bool) -> Option<u64> {
        (1..=self.views.len())
            .map(|h| self.first(h, from, |lo, hi| pred(h, lo, hi)))
            .collect::<Option<Vec<u64>>>()
            .map(|v| v.into_iter().max().unwrap_or(from))
    }
}

/// A `swim-members` process; dropping it closes its stdin (it stops) and kills it.
struct Members {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Members {
    /// SIGKILLs the process (a crash: its members say nothing) and reaps it.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("killing a member process")?;
        self.child.wait().context("reaping a member process")?;
        Ok(())
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `swim-members` process: `members` members `hHOST-FIRST..` on host `host`, ports
/// from `PORT + first`; its view lines go to slot `slot` of [`Seen::views`].
struct Proc {
    host: usize,
    slot: usize,
    first: usize,
    members: usize,
}

impl Proc {
    /// The usual process of host `h`: its [`MEMBERS`] members.
    fn host(h: usize) -> Proc {
        Proc {
            host: h,
            slot: h - 1,
            first: 0,
            members: MEMBERS,
        }
    }
}

/// Starts `p` with SWIM preset `config` and overrides `sets`, and its reader; the process
/// and a channel that says when its members are started.
fn spawn(
    p: &Proc,
    config: &str,
    sets: &[String],
    seen: &Arc<Mutex<Seen>>,
    exit_after: Duration,
) -> anyhow::Result<(Members, std::sync::mpsc::Receiver<()>)> {
    let (host, slot) = (p.host, p.slot);
    let exe = std::env::current_exe().context("finding this program")?;
    let mut cmd = netns::exec_in(host, exe);
    cmd.arg("swim-members")
        .args(["--ip", &netns::host_addr(host).to_string()])
        .args(["--port", &(PORT as usize + p.first).to_string()])
        .args(["--members", &p.members.to_string()])
        .args(["--prefix", &format!("h{host}")])
        .args(["--first", &p.first.to_string()])
        .args(["--config", config])
        .args(["--exit-after-s", &exit_after.as_secs().to_string()]);
    if host != 1 || p.first != 0 {
        cmd.args(["--seed", &format!("{}:{PORT}", netns::host_addr(1))]);
    }
    for s in sets {
        cmd.args(["--set", s]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting the members of host {host}"))?;
    let stdin = child.stdin.take();
    let out = child.stdout.take().context("members' stdout")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let seen = Arc::clone(seen);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains("\"ready\"") {
                let _ = ready_tx.send(());
            }
            if let Ok(mut s) = seen.lock() {
                s.take(slot, &line);
            }
        }
    });
    Ok((Members { child, stdin }, ready_rx))
}

/// Starts every process of `procs` in turn, each within 30 s.
fn start_all(
    procs: &[Proc],
    config: &str,
    sets: &[String],
    seen: &Arc<Mutex<Seen>>,
    exit_after: Duration,
) -> anyhow::Result<Vec<Members>> {
    let mut started = Vec::new();
    for p in procs {
        let (m, ready) = spawn(p, config, sets, seen, exit_after)?;
        started.push(m);
        ready
            .recv_timeout(Duration::from_secs(30))
            .with_context(|| {
                format!(
                    "the members of host {} (from {}) did not start within 30 s",
                    p.host, p.first
                )
            })?;
    }
    Ok(started)
}

/// Waits until `done` holds or `limit` passes, polling the reports; the time it held.
fn wait_for(
    seen: &Arc<Mutex<Seen>>,
    limit: Duration,
    done: impl Fn(&Seen) -> Option<u64>,
) -> Option<u64> {
    let until = Instant::now() + limit;
    loop {
        if let Some(t) = seen.lock().ok().and_then(|s| done(&s)) {
            return Some(t);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `swim-partition`; the report.
pub fn partition(a: &Args) -> anyhow::Result<serde_json::Value> {
    let total = HOSTS * MEMBERS;
    let cut_for = Duration::from_secs(if a.short { 20 } else { 60 });
    let mut sets: Vec<String> = SUITE_SETS.iter().map(|s| (*s).to_owned()).collect();
    sets.extend(a.set.iter().cloned());
    let mut swim = ringleader_engine::swim::Config::lan();
    ringleader_bench::scenarios::swim::apply_sets(&mut swim, &sets)?;
    let reconnect = Duration::from_millis(swim.reconnect_interval_ms);
    if reconnect.is_zero() {
        bail!("reconnect_interval_ms=0 turns reconnects off: a partition could never heal");
    }
    let converge_limit = Duration::from_secs(90);
    let remerge_limit = reconnect * 3 + Duration::from_secs(60);
    let exit_after =
        converge_limit + cut_for + CUT_EXTRA_MAX + remerge_limit + Duration::from_secs(60);

    let seen = Arc::new(Mutex::new(Seen::new(HOSTS, Some(CUT), None)));
    let t0 = mono_ms();
    let hosts: Vec<Proc> = (1..=HOSTS).map(Proc::host).collect();
    let procs = start_all(&hosts, "lan", &sets, &seen, exit_after)?;
    say(format!(
        "{total} members started on {HOSTS} hosts; converging"
    ));
    let converged = wait_for(&seen, converge_limit, |s| {
        s.all_first(t0, |_, lo, _| lo == total)
    });
    let Some(t_conv) = converged else {
        bail!("the {total} members did not converge within {converge_limit:?}");
    };
    say(format!(
        "converged in {} ms; cutting host {CUT} off for {cut_for:?}",
        t_conv - t0
    ));
    netns::partition(CUT)?;
    let t_cut = mono_ms();
    // Each side declares the other failed: every member of the other side declared down
    // by a member of this side. The cut holds until then (at most CUT_EXTRA_MAX longer):
    // a heal half way through the suspicions is another scenario (docs/BENCHMARKS.md).
    let declared = |s: &Seen| {
        let [(a, ta), (b, tb)] = &s.declared;
        (a.len() == MEMBERS && b.len() == total - MEMBERS).then(|| (*ta).max(*tb))
    };
    let split = wait_for(&seen, cut_for + CUT_EXTRA_MAX, declared);
    // Reported too: when every member's own view showed only its side (a member that
    // missed the rumours learns by probing, which Lifeguard slows on the cut side).
    let views_pred = |h: usize, lo: usize, hi: usize| {
        let own = if h == CUT { MEMBERS } else { total - MEMBERS };
        lo == own && hi == own
    };
    let rest = cut_for.saturating_sub(Duration::from_millis(mono_ms() - t_cut));
    std::thread::sleep(rest);
    let views_split = seen
        .lock()
        .ok()
        .and_then(|s| s.all_first(t_cut, views_pred));
    netns::heal()?;
    let t_heal = mono_ms();
    say(format!(
        "healed after {} ms (split after {:?} ms); waiting for the re-merge",
        t_heal - t_cut,
        split.map(|t| t - t_cut)
    ));
    let remerged = wait_for(&seen, remerge_limit, |s| {
        s.all_first(t_heal, |_, lo, _| lo == total)
    });
    say(format!(
        "re-merge after {:?} ms",
        remerged.map(|t| t.saturating_sub(t_heal))
    ));
    drop(procs);
    let s = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("a reader panicked"))?;
    // When the false positives happened: the phase tells load from a protocol fault.
    let phase = |t: u64| match t {
        t if t < t_conv => "converging",
        t if t < t_cut => "converged",
        t if t < t_heal => "cut",
        _ => "healed",
    };
    let mut by_phase = std::collections::BTreeMap::<&str, u64>::new();
    for &t in &s.false_times {
        *by_phase.entry(phase(t)).or_default() += 1;
    }
    // What each host's members saw last before the heal: (fewest, most) alive or suspect.
    let at_heal: Vec<Option<(usize, usize)>> = s
        .views
        .iter()
        .map(|v| v.iter().rev().find(|x| x.0 < t_heal).map(|x| (x.1, x.2)))
        .collect();
    let ok = split.is_some() && remerged.is_some() && s.false_downs == 0 && s.bad_lines == 0;
    Ok(json!({
        "suite": "swim-partition",
        "ok": ok,
        "hosts": HOSTS,
        "members_per_host": MEMBERS,
        "config": "lan",
        "set": sets,
        "reconnect_interval_ms": swim.reconnect_interval_ms,
        "converge_ms": t_conv - t0,
        "cut_ms": t_heal - t_cut,
        "split": split.is_some(),
        "split_ms": split.map(|t| t.saturating_sub(t_cut)),
        "views_split_ms": views_split.map(|t| t.saturating_sub(t_cut)),
        "remerged": remerged.is_some(),
        "remerge_ms": remerged.map(|t| t.saturating_sub(t_heal)),
        "remerge_limit_ms": remerge_limit.as_millis() as u64,
        "view_interval_ms": 500,
        "false_positives": s.false_downs,
        "false_positive_examples": s.false_examples,
        "false_positives_by_phase": by_phase,
        "live_at_heal": at_heal,
        "same_side_suspicions": s.same_side_suspicions,
        "downs_across_cut": s.downs_across,
        "bad_lines": s.bad_lines,
    }))
}

/// How the others learned of the victim's death.
#[derive(Debug, Default)]
struct Detection {
    /// Members that saw the victim declared down after the kill.
    observers: usize,
    /// Per observer, its first such event after the kill, ms after it (sorted).
    detect_ms: Vec<u64>,
    /// The first suspicion of the victim after the kill, ms after it.
    first_suspect_ms: Option<u64>,
    /// Down events about the victim before the kill: false positives.
    early_downs: u64,
}

/// Sorts the victim's `events` (t, kind, observer) out against the kill at `t_kill`;
/// `expected` observers are awaited (the summary is complete once they all saw it).
fn victim_detection(events: &[(u64, String, String)], t_kill: u64, expected: usize) -> Detection {
    let mut first = std::collections::HashMap::<&str, u64>::new();
    let mut d = Detection::default();
    for (t, e, l) in events {
        match (e.as_str(), *t >= t_kill) {
            ("down", false) => d.early_downs += 1,
            ("down", true) => {
                let f = first.entry(l.as_str()).or_insert(*t);
                *f = (*f).min(*t);
            }
            ("suspect", true) => {
                let ms = t - t_kill;
                d.first_suspect_ms = Some(d.first_suspect_ms.map_or(ms, |x| x.min(ms)));
            }
            _ => {}
        }
    }
    d.observers = first.len().min(expected);
    d.detect_ms = first.values().map(|t| t - t_kill).collect();
    d.detect_ms.sort_unstable();
    d
}

/// `swim-lossy`'s loss on every host's links, percent.
const LOSSY_LOSS_PCT: f64 = 10.0;
/// And its delay and jitter, where the kernel has netem.
const LOSSY_DELAY_MS: u64 = 50;
const LOSSY_JITTER_MS: u64 = 10;
/// The host whose second process runs the member killed at the end.
const VICTIM_HOST: usize = HOSTS;

/// Runs `swim-lossy`: 3 hosts × 100 members with the `wan` preset converge; then
/// `LOSSY_LOSS_PCT` loss (and 50±10 ms delay with netem) on every host's link for 5 min
/// (60 s with `--short`), during which no member may be declared failed; then one more
/// member, alone in a process of its own on host 3, is SIGKILLed, and every other member
/// must declare it failed within the preset's longest suspicion (Lifeguard's maximum
/// timeout) plus two probe intervals and 30 s. The report.
pub fn lossy(a: &Args) -> anyhow::Result<serde_json::Value> {
    let total = HOSTS * MEMBERS + 1;
    let run_for = Duration::from_secs(if a.short { 60 } else { 300 });
    let sets = a.set.clone();
    let mut swim = ringleader_engine::swim::Config::wan();
    ringleader_bench::scenarios::swim::apply_sets(&mut swim, &sets)?;
    let probe = Duration::from_millis(swim.probe_interval_ms);
    let suspicion_max =
        ringleader_engine::swim::config::suspicion_timeout_min(swim.suspicion_mult, total, probe)
            * swim.suspicion_max_timeout_mult.max(1);
    let detect_limit = suspicion_max + probe * 2 + Duration::from_secs(30);
    let converge_limit = Duration::from_secs(120);
    let exit_after = converge_limit + run_for + detect_limit + Duration::from_secs(60);

    let victim = format!("h{VICTIM_HOST}-{MEMBERS}");
    let mut procs: Vec<Proc> = (1..=HOSTS).map(Proc::host).collect();
    procs.push(Proc {
        host: VICTIM_HOST,
        slot: HOSTS,
        first: MEMBERS,
        members: 1,
    });
    let seen = Arc::new(Mutex::new(Seen::new(
        procs.len(),
        None,
        Some(victim.clone()),
    )));
    let t0 = mono_ms();
    let mut members = start_all(&procs, "wan", &sets, &seen, exit_after)?;
    say(format!(
        "{total} members started on {HOSTS} hosts (wan); converging"
    ));
    let Some(t_conv) = wait_for(&seen, converge_limit, |s| {
        s.all_first(t0, |_, lo, _| lo == total)
    }) else {
        bail!("the {total} members did not converge within {converge_limit:?}");
    };
    let imp = netns::Impairment {
        loss_pct: LOSSY_LOSS_PCT,
        delay_ms: LOSSY_DELAY_MS,
        jitter_ms: LOSSY_JITTER_MS,
        ..netns::Impairment::default()
    };
    let applied = netns::impair_all(1..=HOSTS, &imp)?;
    let t_loss = mono_ms();
    say(format!(
        "converged in {} ms; {LOSSY_LOSS_PCT} % loss by {} on every host (delay {}) for \
         {run_for:?}",
        t_conv - t0,
        applied.mechanism.name(),
        if applied.delay_applied {
            format!("{LOSSY_DELAY_MS}±{LOSSY_JITTER_MS} ms")
        } else {
            "not applied: no sch_netem".to_owned()
        }
    ));
    std::thread::sleep(run_for);
    let t_kill = mono_ms();
    members[HOSTS].kill()?;
    say(format!(
        "{} s under loss; {victim} killed, waiting up to {detect_limit:?} for the others to \
         declare it failed",
        (t_kill - t_loss) / 1000
    ));
    let observers = total - 1;
    let detected = wait_for(&seen, detect_limit, |s| {
        (victim_detection(&s.victim_events, t_kill, observers).observers == observers).then(mono_ms)
    });
    let nft_dropped: Vec<Option<u64>> = (1..=HOSTS).map(netns::nft_dropped).collect();
    netns::heal()?;
    drop(members);
    let s = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("a reader panicked"))?;
    let d = victim_detection(&s.victim_events, t_kill, observers);
    let ms: Vec<f64> = d.detect_ms.iter().map(|&x| x as f64).collect();
    let q = |p: f64| (!ms.is_empty()).then(|| crate::cmd::wal_crash::percentile(&ms, p) as u64);
    let false_positives = s.false_downs + d.early_downs;
    let ok = detected.is_some() && false_positives == 0 && s.bad_lines == 0;
    Ok(json!({
        "suite": "swim-lossy",
        "ok": ok,
        "hosts": HOSTS,
        "members": total,
        "config": "wan",
        "set": sets,
        "loss_percent": LOSSY_LOSS_PCT,
        "mechanism": applied.mechanism.name(),
        "delay_applied": applied.delay_applied,
        "delay_ms": applied.delay_applied.then_some(LOSSY_DELAY_MS),
        "jitter_ms": applied.delay_applied.then_some(LOSSY_JITTER_MS),
        "delay_note": (!applied.delay_applied).then_some(
            "no delay: this kernel has no sch_netem; loss only, by nftables"),
        "nft_dropped_packets": nft_dropped,
        "converge_ms": t_conv - t0,
        "duration_s": (t_kill - t_loss) / 1000,
        "false_positives": false_positives,
        "false_positive_examples": s.false_examples,
        "suspicions": s.same_side_suspicions,
        "victim": victim,
        "detected": detected.is_some(),
        "observers": observers,
        "observers_detected": d.observers,
        "first_suspect_ms": d.first_suspect_ms,
        "detect_ms": { "p50": q(50.0), "p99": q(99.0), "max": q(100.0) },
        "detect_limit_ms": detect_limit.as_millis() as u64,
        "bad_lines": s.bad_lines,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_map_to_hosts_and_sides() {
        assert_eq!(host_of("h3-17"), Some(3));
        assert_eq!(host_of("h12-0"), Some(12));
        assert_eq!(host_of("x3-1"), None);
        assert_eq!(host_of("h-1"), None);
        let s = Seen::new(HOSTS, Some(CUT), None);
        assert!(s.side(CUT) && !s.side(1));
        let s = Seen::new(HOSTS, None, None);
        assert!(!s.side(CUT) && !s.side(1));
    }

    #[test]
    fn same_side_downs_are_false_positives_and_across_are_not() {
        let mut s = Seen::new(HOSTS, Some(CUT), None);
        s.take(
            0,
            r#"{"kind":"ev","t":5,"e":"down","l":"h1-0","m":"h3-4","by":"h2-9"}"#,
        );
        s.take(
            2,
            r#"{"kind":"ev","t":6,"e":"down","l":"h3-0","m":"h1-4","by":"h3-9"}"#,
        );
        assert_eq!((s.false_downs, s.downs_across), (0, 2));
        s.take(
            0,
            r#"{"kind":"ev","t":7,"e":"down","l":"h1-0","m":"h2-4","by":"h1-9"}"#,
        );
        s.take(
            0,
            r#"{"kind":"ev","t":7,"e":"suspect","l":"h1-0","m":"h2-4","by":"h1-9"}"#,
        );
        assert_eq!((s.false_downs, s.same_side_suspicions), (1, 1));
        s.take(1, "not json");
        assert_eq!(s.bad_lines, 1);
    }

    #[test]
    fn without_a_cut_every_down_but_the_victims_is_false() {
        let mut s = Seen::new(HOSTS + 1, None, Some("h3-100".into()));
        s.take(
            3,
            r#"{"kind":"ev","t":4,"e":"suspect","l":"h1-0","m":"h3-100","by":"h2-1"}"#,
        );
        s.take(
            0,
            r#"{"kind":"ev","t":5,"e":"down","l":"h1-0","m":"h3-100","by":"h2-1"}"#,
        );
        s.take(
            0,
            r#"{"kind":"ev","t":6,"e":"down","l":"h1-0","m":"h3-4","by":"h2-9"}"#,
        );
        assert_eq!((s.false_downs, s.downs_across), (1, 0));
        let d = victim_detection(&s.victim_events, 5, 2);
        assert_eq!(d.observers, 1);
        assert_eq!(d.detect_ms, vec![0]);
        // Seen down before the kill: not a detection, a false positive.
        let d = victim_detection(&s.victim_events, 6, 2);
        assert_eq!((d.observers, d.early_downs), (0, 1));
        assert_eq!(d.first_suspect_ms, None);
        let d = victim_detection(&s.victim_events, 3, 2);
        assert_eq!(
            (d.first_suspect_ms, d.detect_ms.clone()),
            (Some(1), vec![2])
        );
    }

    #[test]
    fn all_hosts_must_agree_and_the_latest_counts() {
        let mut s = Seen::new(HOSTS, Some(CUT), None);
        for h in 1..=HOSTS {
            s.take(
                h - 1,
                r#"{"kind":"view","t":10,"live_min":299,"live_max":300}"#,
            );
        }
        assert_eq!(s.all_first(0, |_, lo, _| lo == 300), None);
        s.take(0, r#"{"kind":"view","t":20,"live_min":300,"live_max":300}"#);
        s.take(1, r#"{"kind":"view","t":30,"live_min":300,"live_max":300}"#);
        assert_eq!(s.all_first(0, |_, lo, _| lo == 300), None);
        s.take(2, r#"{"kind":"view","t":25,"live_min":300,"live_max":300}"#);
        assert_eq!(s.all_first(0, |_, lo, _| lo == 300), Some(30));
        assert_eq!(s.all_first(26, |_, lo, _| lo == 300), None);
    }
}

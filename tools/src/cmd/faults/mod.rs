//! Subcommand `faults SUITE`: scripted fault scenarios on an emulated network
//! (`crate::netns`), each ending with one JSON line (`"ok": true|false` and what it
//! measured) as its last line of stdout and a non-zero exit status on failure.
//!
//! Two processes split the work so that nothing runs in the root namespace and nothing is
//! left behind:
//! - `faults` (this process, root namespace) creates the hosts — the suite's nodes plus
//!   one more for the checker — starts the driver inside the checker's namespace in a
//!   process group of its own, relays its stdout, bounds it with a deadline, and on every
//!   way out (success, failure, panic, SIGINT/SIGTERM) kills that process group and
//!   removes every namespace, then checks none is left;
//! - the hidden `faults-driver` runs the scenario: it starts the nodes with
//!   `ip netns exec`, talks to them only from inside namespaces (its own, or a client
//!   thread moved into a host's namespace with setns), injects the faults and asserts.

use std::io::BufRead as _;
use std::os::unix::process::CommandExt as _;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::netns;

mod raft;
mod swim;

/// The scenarios.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// 3 hosts × 100 SWIM members; one host cut off, then healed: both sides declare the
    /// other failed, re-merge without an operator, no false positive on either side.
    SwimPartition,
    /// 5 Raft nodes under writes; the leader's host is cut off: a new leader, the old one
    /// serves no lease read past its lease; healed: nothing acknowledged lost, linearizable.
    RaftPartitionLeader,
    /// As raft-partition-leader, but only what the leader sends to the other nodes is
    /// dropped (it still receives).
    RaftAsymmetric,
    /// As raft-partition-leader, but the leader's link goes down and up every 2 s; checked:
    /// nothing acknowledged lost, linearizable, writes acknowledged throughout.
    RaftFlapping,
    /// 3 hosts × 100 SWIM members (wan preset) under 10 % loss on every link (and 50±10 ms
    /// delay where the kernel has netem; loss alone by nftables otherwise) for 5 min: no
    /// false positive; then one more member is killed: how long the others take to declare
    /// it failed.
    SwimLossy,
    /// 5 Raft nodes under writes with 5 % loss on every node's link (and 20±5 ms delay
    /// where the kernel has netem): nothing acknowledged lost, linearizable.
    RaftLossy,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::SwimPartition => "swim-partition",
            Suite::RaftPartitionLeader => "raft-partition-leader",
            Suite::RaftAsymmetric => "raft-asymmetric",
            Suite::RaftFlapping => "raft-flapping",
            Suite::SwimLossy => "swim-lossy",
            Suite::RaftLossy => "raft-lossy",
        }
    }

    /// Hosts that run nodes (the checker gets the next one).
    fn node_hosts(self) -> usize {
        match self {
            Suite::SwimPartition | Suite::SwimLossy => swim::HOSTS,
            Suite::RaftPartitionLeader
            | Suite::RaftAsymmetric
            | Suite::RaftFlapping
            | Suite::RaftLossy => raft::NODES,
        }
    }

    /// Wall-clock bound of a whole run.
    fn deadline(self, short: bool) -> Duration {
        Duration::from_secs(match (self, short) {
            (Suite::SwimPartition, true) => 330,
            (Suite::SwimPartition, false) => 420,
            // Convergence (≤ 120 s), the run, and detection within wan's longest suspicion
            // (≈ 450 s with 301 members) plus 40 s.
            (Suite::SwimLossy, true) => 780,
            (Suite::SwimLossy, false) => 1020,
            (_, true) => 240,
            (_, false) => 420,
        })
    }
}

/// Arguments of `faults` (and of the hidden `faults-driver`, which gets the same ones).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The scenario.
    #[arg(value_enum)]
    pub suite: Suite,
    /// The short version (for CI): shorter faults, same checks.
    #[arg(long)]
    pub short: bool,
    /// JSON output: the last stdout line is always the JSON report (progress goes to
    /// stderr); accepted so every suite is called alike.
    #[arg(long)]
    pub json: bool,
    /// SWIM suites: overrides of the preset, KEY=VALUE (repeatable), after the suite's own.
    #[arg(long)]
    pub set: Vec<String>,
    /// Working directory of Raft suites (node data and logs); default: a temporary one.
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

impl Args {
    fn to_argv(&self) -> Vec<String> {
        let mut v = vec![self.suite.name().to_owned()];
        if self.short {
            v.push("--short".into());
        }
        if self.json {
            v.push("--json".into());
        }
        for s in &self.set {
            v.extend(["--set".into(), s.clone()]);
        }
        if let Some(d) = &self.dir {
            v.extend(["--dir".into(), d.display().to_string()]);
        }
        v
    }
}

/// How long a suite waits for another run's namespaces to go.
const LOCK_WAIT: Duration = Duration::from_secs(900);

/// Progress, on stderr.
pub(crate) fn say(msg: impl std::fmt::Display) {
    eprintln!("faults: {msg}");
}

/// Runs `faults`: set-up, the driver inside a namespace, and teardown on every way out.
pub fn run(a: Args) -> anyhow::Result<()> {
    let suite = a.suite;
    // One run at a time on this machine (CI's included): the namespace names are fixed.
    let _lock = netns::lock(LOCK_WAIT)?;
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(|| outer(&a))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the suite panicked")));
    // Teardown whatever happened; a namespace left behind fails the run.
    let teardown = netns::down().and_then(|_| netns::list());
    let left: Vec<String> = match &teardown {
        Ok(l) => l.clone(),
        Err(e) => vec![format!("teardown failed: {e:#}")],
    };
    match outcome {
        Ok(true) if left.is_empty() => Ok(()),
        Ok(_) if !left.is_empty() => bail!("namespaces left after teardown: {left:?}"),
        // The driver reported the failure; its JSON line stays the last.
        Ok(_) => std::process::exit(1),
        Err(e) => {
            // The driver's own JSON line was printed if it got that far; otherwise say it.
            println!(
                "{}",
                json!({
                    "suite": suite.name(), "ok": false, "error": format!("{e:#}"),
                    "namespaces_left": left, "elapsed_s": started.elapsed().as_secs_f64(),
                })
            );
            Err(e)
        }
    }
}

/// Sets up, runs the driver and kills what it left; `Ok(false)`: the driver ran and
/// reported a failure (its JSON line is printed).
fn outer(a: &Args) -> anyhow::Result<bool> {
    let checker = a.suite.node_hosts() + 1;
    netns::up(checker).context("creating the namespaces of the suite")?;
    let signals = super::node::catch_signals()?;
    let exe = std::env::current_exe().context("finding this program")?;
    let mut child = netns::exec_in(checker, &exe)
        .arg("faults-driver")
        .args(a.to_argv())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .context("starting the driver in the checker's namespace")?;
    let pgid = child.id() as i32;
    let last = Arc::new(Mutex::new(String::new()));
    let relay = {
        let out = child.stdout.take().context("the driver's stdout")?;
        let last = Arc::clone(&last);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                println!("{line}");
                if let Ok(mut l) = last.lock() {
                    *l = line;
                }
            }
        })
    };
    let deadline = Instant::now() + a.suite.deadline(a.short);
    let status = loop {
        if let Some(st) = child.try_wait().context("waiting for the driver")? {
            break Ok(st);
        }
        let sig = signals.load(Ordering::SeqCst);
        if sig != 0 {
            break Err(anyhow::anyhow!(
                "interrupted by {}",
                super::node::signal_name(sig)
            ));
        }
        if Instant::now() >= deadline {
            break Err(anyhow::anyhow!(
                "the suite passed its deadline of {} s",
                a.suite.deadline(a.short).as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Whatever the driver left (nodes, clients), by its process group.
    // SAFETY: kill(2) on the process group of the child we started; no memory involved.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait();
    let _ = relay.join();
    let status = status?;
    if !status.success() {
        let last = last.lock().map(|l| l.clone()).unwrap_or_default();
        if serde_json::from_str::<serde_json::Value>(&last).is_ok_and(|v| v.get("ok").is_some()) {
            return Ok(false);
        }
        bail!("the driver failed ({status})");
    }
    Ok(true)
}

/// Runs `faults-driver` (inside the checker's namespace): the scenario, then its JSON line.
pub fn run_driver(a: Args) -> anyhow::Result<()> {
    let report = match a.suite {
        Suite::SwimPartition => swim::partition(&a),
        Suite::RaftPartitionLeader => raft::leader_fault(&a, raft::LeaderFault::Cut),
        Suite::RaftAsymmetric => raft::leader_fault(&a, raft::LeaderFault::OneWay),
        Suite::RaftFlapping => raft::leader_fault(&a, raft::LeaderFault::Flap),
        Suite::SwimLossy => swim::lossy(&a),
        Suite::RaftLossy => raft::leader_fault(&a, raft::LeaderFault::Lossy),
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => json!({"suite": a.suite.name(), "ok": false, "error": format!("{e:#}")}),
    };
    println!("{report}");
    if report.get("ok") != Some(&json!(true)) {
        std::process::exit(1);
    }
    Ok(())
}

//! End to end across "machines": network namespaces `rlch1`..`rlch4` on a bridge in
//! `rlcbr` (built by `tests/netns.sh` with the prefix `rlc`, so a network that
//! `ringleader-tools netns up` keeps under the standard names is left alone), three
//! agents in rlch1-3, the coordinator in rlch4. Every process of the test runs inside a
//! namespace; nothing in the root namespace holds or sends to a test address.
//!
//! Short versions of both scenarios: SWIM with members on every host converges, kills
//! members on several hosts and every live member on every host detects them, without false
//! positives; Raft with one node per host and clients on two of them puts without errors.
//! The agents serve both runs in turn (a run's end leaves them ready for the next).
//!
//! Needs root and `ip`; without them it prints why and passes. Runs in about a minute.

use std::path::PathBuf;
use std::process::{Child, Command};

use serde_json::Value;

mod common;

const PREFIX: &str = "rlc";
const HOSTS: usize = 4;
const TOKEN: &str = "netns-test-token";
const AGENT_PORT: u16 = 7700;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/netns.sh")
}

/// The namespaces; removed when dropped, whatever happened.
struct Network;

impl Network {
    fn up() -> Network {
        // A network left by a killed run of this test goes first.
        let _ = Command::new(script())
            .args(["down", &HOSTS.to_string()])
            .env("NETNS_PREFIX", PREFIX)
            .status();
        let ok = Command::new(script())
            .args(["up", &HOSTS.to_string()])
            .env("NETNS_PREFIX", PREFIX)
            .status()
            .expect("running netns.sh");
        assert!(ok.success(), "netns.sh up failed");
        Network
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .args(["down", &HOSTS.to_string()])
            .env("NETNS_PREFIX", PREFIX)
            .status();
    }
}

/// `ringleader-bench ARGS` inside namespace host `i`.
fn on_host(i: usize) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &format!("{PREFIX}h{i}")])
        .arg(env!("CARGO_BIN_EXE_ringleader-bench"));
    c
}

/// The agents, killed when dropped (they also stop by themselves).
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and touches no memory of ours.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need CAP_SYS_ADMIN".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no `ip` command (iproute2)".into()),
    }
}

fn coordinator(scenario: &[&str], out: &std::path::Path) -> Value {
    let agents: Vec<String> = (1..HOSTS)
        .map(|i| format!("198.18.0.{i}:{AGENT_PORT}"))
        .collect();
    let output = on_host(HOSTS)
        .args(["cluster", "--agents", &agents.join(","), "--token", TOKEN])
        .args(scenario)
        .args(["--json", "--out"])
        .arg(out)
        .output()
        .expect("running the coordinator");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "coordinator failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("the coordinator printed");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{last:?} is not JSON: {e}"))
}

#[test]
fn swim_and_raft_across_namespaces() {
    if let Some(why) = skip_reason() {
        println!("skipped: {why}");
        return;
    }
    let _net = Network::up();
    let mut agents = Agents(Vec::new());
    for i in 1..HOSTS {
        let mut cmd = on_host(i);
        cmd.args(["agent", "--listen", &format!("198.18.0.{i}:{AGENT_PORT}")])
            .args(["--token", TOKEN, "--exit-after", "150s"]);
        agents.0.push(common::start_agent(cmd));
    }
    let tmp = tempfile::tempdir().expect("tempdir");

    // SWIM: 45 members, 15 per host, 3 killed. A suspicion nobody confirms lasts up to the
    // Lifeguard maximum (`local`, 45 members: 6 × 4 × log10(45) × 1 s ≈ 40 s), so the
    // detection bound is above it; a run that detects everything ends as soon as it has.
    let swim = coordinator(
        &[
            "swim",
            "--members",
            "45",
            "--config",
            "local",
            "--shards",
            "1",
            "--kill",
            "3",
            "--seed",
            "4",
            "--warmup",
            "0s",
            "--duration",
            "2s",
            "--converge-timeout",
            "40s",
            "--detect-timeout",
            "60s",
        ],
        &tmp.path().join("swim"),
    );
    assert_eq!(swim["converged"], true, "{swim}");
    assert_eq!(swim["false_positives"], 0, "{swim}");
    assert_eq!(swim["undetected"], 0, "{swim}");
    // Every one of the 42 live members saw each of the 3 victims down, on its own host.
    assert_eq!(swim["detected"], 42 * 3, "{swim}");
    assert_eq!(swim["detect_ms"]["count"], 42 * 3, "{swim}");
    let hosts = swim["hosts"].as_array().expect("per-host breakdown");
    assert_eq!(hosts.len(), 3);
    let per_host: u64 = hosts
        .iter()
        .map(|h| h["run"]["detected"].as_u64().expect("detected"))
        .sum();
    assert_eq!(per_host, 42 * 3, "the total is the sum of the hosts");
    for h in hosts {
        assert!(h["run"]["cpu_s"].as_f64().expect("cpu_s") >= 0.0);
        assert_eq!(h["run"]["victims_here"], 1, "victims are spread: {h}");
    }
    let swim_dir = tmp.path().join("swim");
    for f in ["detect_ms.hgrm", "detect_ms.hlog", "summary.json"] {
        assert!(swim_dir.join(f).is_file(), "{f} written");
    }

    // Raft: one node per host, clients on hosts 1 and 3.
    let raft = coordinator(
        &[
            "raft",
            "--clients",
            "8",
            "--client-hosts",
            "1,3",
            "--warmup",
            "500ms",
            "--duration",
            "2s",
            "--no-baseline",
        ],
        &tmp.path().join("raft"),
    );
    assert_eq!(raft["errors"], 0, "{raft}");
    assert_eq!(raft["nodes"], 3, "{raft}");
    let n = raft["latency_us"]["p50"].as_u64().expect("p50");
    assert!(n > 0, "{raft}");
    let hosts = raft["hosts"].as_array().expect("per-host breakdown");
    assert_eq!(hosts[1]["clients"], 0, "host 2 runs no clients");
    assert_eq!(
        hosts[0]["clients"].as_u64().unwrap() + hosts[2]["clients"].as_u64().unwrap(),
        8
    );
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("raft/summary.json")).expect("summary"),
    )
    .expect("JSON");
    let count = summary["histograms"]["raft_put_us"]["count"]
        .as_u64()
        .expect("count");
    assert!(count > 0, "puts were measured");
    assert!(raft["ops_per_s"].as_f64().expect("ops") > 0.0);
    assert!(tmp.path().join("raft/raft_put_us.hlog").is_file());
}

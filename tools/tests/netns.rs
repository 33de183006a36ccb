//! `ringleader-tools netns` and `faults` on their error paths, which need neither root nor
//! namespaces: refused input is refused before anything is created, and a missing `ip`
//! is said, in the suite's JSON report too. (The suites themselves run in `.ci/run`: they
//! create namespaces with machine-wide names, which tests running in parallel must not.)

use std::process::Command;

fn tools() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringleader-tools"))
}

#[test]
fn a_fault_netem_would_misread_is_refused_before_anything_runs() {
    let out = tools()
        .args([
            "netns",
            "fault",
            "--host",
            "1",
            "--delay-ms",
            "5",
            "--jitter-ms",
            "6",
        ])
        .env("PATH", "/nonexistent")
        .output()
        .expect("run ringleader-tools");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--jitter-ms (6) exceeds --delay-ms (5)"),
        "{err}"
    );
}

#[test]
fn a_suite_without_ip_fails_and_says_so_in_its_report() {
    let empty = tempfile::tempdir().expect("tempdir");
    let out = tools()
        .args(["faults", "raft-partition-leader", "--short", "--json"])
        .env("PATH", empty.path())
        .output()
        .expect("run ringleader-tools");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(last).expect("JSON");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["suite"], "raft-partition-leader", "{v}");
    let error = v["error"].as_str().expect("an error");
    assert!(error.contains("`ip` is not installed"), "{v}");
    assert!(error.contains("iproute2"), "{v}");
}

//! `ringleader-tools flamegraph` error paths (the happy path needs perf and a bench binary;
//! `flamegraphs/baseline.svg` was made with it). Runs in milliseconds.

use std::process::Command;

#[test]
fn missing_perf_names_the_debian_package() {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringleader-tools"))
        .args(["flamegraph", "--", "baseline"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("linux-perf"), "{stderr}");
}

#[test]
fn missing_bench_binary_is_a_clear_error() {
    // Only meaningful where perf exists; without it the perf error above comes first.
    let perf_exists = Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringleader-tools"))
        .args(["flamegraph", "--bin"])
        .arg(tmp.path().join("nope"))
        .args(["--", "baseline"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    if perf_exists {
        assert!(stderr.contains("does not exist"), "{stderr}");
    } else {
        assert!(stderr.contains("linux-perf"), "{stderr}");
    }
}

#[test]
fn bench_arguments_are_required() {
    let output = Command::new(env!("CARGO_BIN_EXE_ringleader-tools"))
        .args(["flamegraph"])
        .output()
        .unwrap();
    assert!(!output.status.success());
}

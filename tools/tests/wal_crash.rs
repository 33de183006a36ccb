//! `ringleader-tools wal-crash`: kill -9 a writing child at random moments, recover, and
//! check that no acknowledged entry was lost. 12 cycles of at most 250 ms each; about
//! 5–10 s in release mode (each cycle also reopens and verifies the log).

use std::process::Command;

#[test]
fn no_acknowledged_entry_is_lost_across_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_ringleader-tools"))
        .args([
            "wal-crash",
            "--cycles",
            "12",
            "--kill-after-ms-max",
            "250",
            "--seed",
            "42",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run ringleader-tools");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "wal-crash failed: {}\n{stderr}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(last).expect("JSON");
    assert_eq!(v["cycles"], 12, "{v}");
    assert_eq!(v["lost"], 0, "{v}\n{stderr}");
    assert!(
        v["acknowledged"].as_u64().expect("acknowledged") > 0,
        "nothing was acknowledged: {v}\n{stderr}"
    );
    assert!(v["torn_tails_truncated"].as_u64().is_some(), "{v}");
}

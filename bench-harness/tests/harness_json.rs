//! The `--json` last-line contract and the output files, end to end through the binary
//! (`baseline` with a short duration on loopback), and quick's reading of children.
//! Runs in about a second (release).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ringleader_bench::scenarios::quick::{self, Status};
use serde_json::{Value, json};

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringleader-bench"))
}

fn last_line_json(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let last = text.lines().last().expect("stdout is not empty");
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line {last:?} is not JSON: {e}"));
    assert!(v.is_object(), "the last line is one JSON object");
    v
}

#[test]
fn baseline_json_last_line_and_output_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let fs_dir = tmp.path().join("fs");
    std::fs::create_dir(&fs_dir).unwrap();
    let output = bench()
        .args([
            "baseline",
            "--duration",
            "400ms",
            "--warmup",
            "0s",
            "--json",
            "--dir",
        ])
        .arg(&fs_dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let v = last_line_json(&output.stdout);
    assert_eq!(v["scenario"], "baseline");
    assert_eq!(v["out"], out.display().to_string());
    for key in ["udp_rtt_us", "fdatasync_us"] {
        for p in ["p50", "p99", "p999"] {
            assert!(v[key][p].as_u64().is_some(), "{key}.{p} missing in {v}");
        }
        assert!(
            v[key]["count"].as_u64().unwrap() > 0,
            "{key} recorded nothing"
        );
        assert!(v[key]["p50"].as_u64().unwrap() <= v[key]["p99"].as_u64().unwrap());
    }
    for key in ["udp_flood_pps", "tcp_gbps"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key} = {}", v[key]);
    }
    for file in [
        "udp_rtt_us.hgrm",
        "udp_rtt_us.hlog",
        "fdatasync_us.hgrm",
        "fdatasync_us.hlog",
        "summary.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let hgrm = std::fs::read_to_string(out.join("udp_rtt_us.hgrm")).unwrap();
    let spectrum = ringleader_bench::harness::parse_hgrm(&hgrm).unwrap();
    assert_eq!(spectrum.count(), v["udp_rtt_us"]["count"].as_u64().unwrap());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["scenario"], "baseline");
    assert_eq!(summary["udp_rtt_us"], v["udp_rtt_us"]);
    assert!(summary["env"]["cores"].as_u64().unwrap() >= 1);
    assert!(summary["env"]["kernel"].as_str().is_some());
    assert!(summary["env"]["git_commit"].as_str().is_some());
    assert_eq!(summary["config"]["duration_s"], json!(0.4));
    // The fdatasync file was removed from --dir.
    assert_eq!(std::fs::read_dir(&fs_dir).unwrap().count(), 0);
}

#[test]
fn bad_flags_fail_without_a_json_line() {
    let output = bench()
        .args(["baseline", "--duration", "soon", "--json"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let output = bench()
        .args(["baseline", "--rate", "5", "--concurrency", "2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
}

#[test]
fn quick_classifies_children() {
    let ok = quick::classify(true, "progress\n{\"a\":1}\n", "");
    assert_eq!(ok, (Status::Ok, Some(json!({"a": 1}))));
    let not_built = quick::classify(
        false,
        "",
        "Error: scenario `wal` is not built in this version\n",
    );
    assert_eq!(not_built, (Status::NotBuilt, None));
    let failed = quick::classify(false, "", "Error: disk full\n\nCaused by:\n  os error 28\n");
    assert_eq!(failed.0, Status::Failed("Error: disk full".to_owned()));
    let no_json = quick::classify(true, "done\n", "");
    assert!(matches!(no_json.0, Status::Failed(_)));
    assert_eq!(
        quick::last_json_line("[1,2]\n"),
        None,
        "an array is not the contract"
    );
}

#[test]
fn quick_rows_use_each_scenarios_keys_and_baseline_ratio() {
    let wal = json!({"appends_per_s": 50000.0, "latency_us": {"p50": 900, "p99": 2000, "p999": 3000},
                     "naive_appends_per_s": 1000.0, "baseline_fdatasync_us": {"p50": 800, "p99": 1900}});
    let rows = quick::wal_rows(&wal);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].ratio.as_ref().unwrap().value, 50.0);
    assert_eq!(rows[0].p99.as_ref().unwrap().value, 2000.0);
    let transport = json!({"engine_pps": 900000.0, "raw_pps": 1000000.0, "engine_rtt_us": {"p50": 20, "p99": 40}});
    let rows = quick::transport_rows(&transport);
    assert!((rows[0].ratio.as_ref().unwrap().value - 0.9).abs() < 1e-12);
    let raft = json!({"ops_acked": 1000, "violations": 1, "non_linearizable": 0, "wall_ms": 500});
    let rows = quick::sim_raft_rows(&raft);
    assert!(
        matches!(rows[0].status, Status::Failed(_)),
        "a safety violation is a failure"
    );
    assert_eq!(rows[0].throughput.as_ref().unwrap().value, 2000.0);
    let table = quick::render_table(&quick::baseline_rows(&json!({
        "udp_rtt_us": {"p50": 13, "p99": 30}, "udp_flood_pps": 250000.0,
        "fdatasync_us": {"p50": 200, "p99": 400}, "tcp_gbps": 20.0})));
    assert!(table.lines().next().unwrap().starts_with("scenario"));
    assert_eq!(table.lines().count(), 4);
    assert!(table.contains("250.0k pps"), "{table}");
}

/// A stand-in for ringleader-bench: a shell script with the given body.
fn fake_bench(dir: &Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fake-bench");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn quick_marks_a_stub_scenario_as_not_built() {
    // A stub takes no flags: with flags it is a usage error (exit 2), bare it says so.
    let tmp = tempfile::tempdir().unwrap();
    let exe = fake_bench(
        tmp.path(),
        r#"if [ "$#" -gt 1 ]; then echo "error: unexpected argument '--nodes' found" >&2; exit 2; fi
echo "Error: scenario \`sim_raft\` is not built in this version of ringleader-bench" >&2; exit 1"#,
    );
    let args = strings(&["sim", "raft", "--nodes", "3", "--json"]);
    let outcome = quick::run_child(&exe, &args, &["sim"], Duration::from_secs(30)).unwrap();
    assert_eq!(outcome.status, Status::NotBuilt);
    assert!(outcome.result.is_none());
}

#[test]
fn quick_reports_a_usage_error_of_a_built_scenario_as_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = fake_bench(
        tmp.path(),
        r#"if [ "$#" -gt 1 ]; then echo "error: unexpected argument '--bogus' found" >&2; exit 2; fi
echo '{"ok":true}'"#,
    );
    let outcome = quick::run_child(
        &exe,
        &strings(&["wal", "--bogus"]),
        &["wal"],
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(
        outcome.status,
        Status::Failed("error: unexpected argument '--bogus' found".to_owned())
    );
}

#[test]
fn quick_reads_the_last_stdout_line_and_kills_overrunning_children() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = fake_bench(
        tmp.path(),
        r#"echo "human summary"; echo '{"appends_per_s": 5}'"#,
    );
    let outcome =
        quick::run_child(&exe, &strings(&["wal"]), &["wal"], Duration::from_secs(30)).unwrap();
    assert_eq!(outcome.status, Status::Ok);
    assert_eq!(outcome.result, Some(json!({"appends_per_s": 5})));
    let exe = fake_bench(tmp.path(), "exec sleep 30");
    let outcome = quick::run_child(
        &exe,
        &strings(&["wal"]),
        &["wal"],
        Duration::from_millis(200),
    )
    .unwrap();
    assert_eq!(outcome.status, Status::TimedOut);
}

#[test]
fn timestamps_are_utc_rfc3339() {
    use ringleader_bench::harness::rfc3339;
    use std::time::UNIX_EPOCH;
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00Z"
    );
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_164_799)),
        "2024-02-28T23:59:59Z"
    );
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_800)),
        "2100-01-01T00:00:00Z"
    );
}

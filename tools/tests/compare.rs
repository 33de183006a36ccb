//! `ringleader-tools compare`: the right ratios on two synthetic files, folder matching, and
//! an SVG. Runs in well under a second (release).

use std::path::Path;
use std::process::Command;

use ringleader_bench::harness::Recorder;
use serde_json::Value;

fn write_uniform(path: &Path, name: &str, scale: u64, n: u64) {
    let mut rec = Recorder::new(name);
    for v in 1..=n {
        rec.record(v * scale);
    }
    let mut f = std::fs::File::create(path).unwrap();
    rec.write_hgrm(&mut f).unwrap();
}

fn compare(args: &[&std::ffi::OsStr]) -> (String, Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_ringleader-tools"))
        .arg("compare")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap().to_owned();
    (stdout, serde_json::from_str(&last).unwrap())
}

#[test]
fn ratios_of_two_synthetic_files() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.hgrm");
    let b = tmp.path().join("b.hgrm");
    let c = tmp.path().join("c.svg");
    // b is a with every latency doubled (and tripled in a third file): ratios 2 and 3
    // everywhere, to the histogram's 3 significant figures.
    write_uniform(&a, "a_us", 1, 10_000);
    write_uniform(&b, "b_us", 2, 10_000);
    let t = tmp.path().join("t.hgrm");
    write_uniform(&t, "t_us", 3, 10_000);
    let (table, v) = compare(&[
        a.as_os_str(),
        b.as_os_str(),
        t.as_os_str(),
        "--svg".as_ref(),
        c.as_os_str(),
    ]);
    let group = &v["groups"][0];
    assert_eq!(
        v["groups"].as_array().unwrap().len(),
        1,
        "files form one comparison"
    );
    let runs = group["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for p in ["p50", "p90", "p99", "p99.9", "p99.99", "max"] {
        assert_eq!(runs[0]["ratios"][p], 1.0, "{p}");
        let r2 = runs[1]["ratios"][p].as_f64().unwrap();
        let r3 = runs[2]["ratios"][p].as_f64().unwrap();
        assert!((r2 - 2.0).abs() < 0.005, "{p}: ratio {r2}");
        assert!((r3 - 3.0).abs() < 0.008, "{p}: ratio {r3}");
    }
    let p50_ms = runs[0]["values_ms"]["p50"].as_f64().unwrap();
    assert!((p50_ms - 5.0).abs() < 0.01, "a's p50 is 5 ms, got {p50_ms}");
    assert_eq!(runs[1]["count"], 10_000);
    assert!(table.contains("(2.00x)"), "{table}");
    let svg = std::fs::read_to_string(&c).unwrap();
    assert!(svg.starts_with("<svg"), "c.svg is an SVG");
    assert!(svg.trim_end().ends_with("</svg>"));
    for label in ["50%", "90%", "99%", "99.9%", "a.hgrm", "b.hgrm", "t.hgrm"] {
        assert!(svg.contains(label), "the plot shows {label}");
    }
}

#[test]
fn folders_are_matched_by_file_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    std::fs::create_dir_all(&one).unwrap();
    std::fs::create_dir_all(&two).unwrap();
    write_uniform(&one.join("rtt_us.hgrm"), "rtt_us", 1, 1000);
    write_uniform(&two.join("rtt_us.hgrm"), "rtt_us", 4, 1000);
    write_uniform(&one.join("sync_us.hgrm"), "sync_us", 10, 1000);
    std::fs::write(one.join("summary.json"), "{}").unwrap();
    let svg = tmp.path().join("cmp.svg");
    let (_, v) = compare(&[
        one.as_os_str(),
        two.as_os_str(),
        "--svg".as_ref(),
        svg.as_os_str(),
    ]);
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["name"], "rtt_us.hgrm");
    let r = groups[0]["runs"][1]["ratios"]["p99"].as_f64().unwrap();
    assert!((r - 4.0).abs() < 0.02, "ratio {r}");
    assert_eq!(groups[1]["name"], "sync_us.hgrm");
    assert_eq!(groups[1]["runs"][1]["missing"], true);
    assert!(tmp.path().join("cmp-rtt_us.svg").is_file());
    assert!(tmp.path().join("cmp-sync_us.svg").is_file());
}

#[test]
fn unreadable_input_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.hgrm");
    std::fs::write(&bad, "not a histogram\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringleader-tools"))
        .arg("compare")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.hgrm") && stderr.contains("header"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

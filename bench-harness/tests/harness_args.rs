//! Common flags: duration parsing, defaults, open/closed loop, split of a duration.

use std::time::Duration;

use clap::Parser;
use ringleader_bench::harness::{CommonArgs, OutputArgs, Pacing, parse_duration, split_duration};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Parser, Debug)]
struct SimCli {
    #[command(flatten)]
    output: OutputArgs,
}

#[test]
fn durations_parse_exactly() {
    let ok = |s: &str| parse_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(ok("5s"), Duration::from_secs(5));
    assert_eq!(ok("500ms"), Duration::from_millis(500));
    assert_eq!(ok("2m"), Duration::from_secs(120));
    assert_eq!(ok("1h"), Duration::from_secs(3600));
    assert_eq!(ok("250us"), Duration::from_micros(250));
    assert_eq!(ok("250µs"), Duration::from_micros(250));
    assert_eq!(ok("10ns"), Duration::from_nanos(10));
    assert_eq!(ok("1.5s"), Duration::from_millis(1500));
    assert_eq!(ok("0.1s"), Duration::from_millis(100));
    assert_eq!(ok(".25s"), Duration::from_millis(250));
    assert_eq!(ok("3"), Duration::from_secs(3));
    assert_eq!(ok(" 7s "), Duration::from_secs(7));
    assert_eq!(ok("0s"), Duration::ZERO);
    assert_eq!(ok("1.000000001s"), Duration::new(1, 1));
}

#[test]
fn bad_durations_are_errors_not_panics() {
    for bad in [
        "",
        "s",
        "-1s",
        "5x",
        "1.2.3s",
        "ms5",
        "5 parsecs",
        "99999999999999999999999h",
        "1e3s",
        ".",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn defaults_are_ten_seconds_closed_loop_one_client() {
    let cli = Cli::try_parse_from(["x"]).unwrap();
    assert_eq!(cli.common, CommonArgs::default());
    assert_eq!(cli.common.duration, Duration::from_secs(10));
    assert_eq!(cli.common.warmup, Duration::from_secs(1));
    assert!(!cli.common.json);
    assert_eq!(cli.common.pacing(), Pacing::Closed { concurrency: 1 });
}

#[test]
fn rate_is_open_loop_and_concurrency_closed_loop() {
    let cli = Cli::try_parse_from([
        "x",
        "--duration",
        "3s",
        "--rate",
        "1000",
        "--json",
        "--out",
        "d",
    ])
    .unwrap();
    assert_eq!(cli.common.pacing(), Pacing::Open { rate_per_s: 1000 });
    assert_eq!(cli.common.duration, Duration::from_secs(3));
    assert!(cli.common.json);
    assert_eq!(cli.common.out.as_deref(), Some(std::path::Path::new("d")));
    let cli = Cli::try_parse_from(["x", "--concurrency", "8", "--warmup", "0s"]).unwrap();
    assert_eq!(cli.common.pacing(), Pacing::Closed { concurrency: 8 });
    assert_eq!(cli.common.warmup, Duration::ZERO);
}

#[test]
fn conflicting_or_invalid_pacing_is_rejected() {
    assert!(Cli::try_parse_from(["x", "--rate", "10", "--concurrency", "2"]).is_err());
    assert!(Cli::try_parse_from(["x", "--rate", "0"]).is_err());
    assert!(Cli::try_parse_from(["x", "--concurrency", "0"]).is_err());
    assert!(Cli::try_parse_from(["x", "--concurrency", "1000000"]).is_err());
    assert!(Cli::try_parse_from(["x", "--duration", "soon"]).is_err());
}

#[test]
fn simulator_output_args() {
    let cli = SimCli::try_parse_from(["x", "--json", "--out", "o"]).unwrap();
    assert!(cli.output.json);
    assert!(
        SimCli::try_parse_from(["x", "--duration", "1s"]).is_err(),
        "simulations have no wall duration"
    );
}

#[test]
fn split_duration_keeps_the_total() {
    let parts = split_duration(Duration::from_secs(3), [25, 20, 35, 20]);
    assert_eq!(
        parts,
        [
            Duration::from_millis(750),
            Duration::from_millis(600),
            Duration::from_millis(1050),
            Duration::from_millis(600)
        ]
    );
    let odd = split_duration(Duration::from_nanos(10), [1, 1, 1]);
    assert_eq!(odd.iter().sum::<Duration>(), Duration::from_nanos(10));
    assert_eq!(split_duration(Duration::ZERO, [1, 2]), [Duration::ZERO; 2]);
}

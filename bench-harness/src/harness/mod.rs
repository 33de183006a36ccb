//! Shared machinery of every scenario: common flags, recorders, pacing, output files and the
//! same-run baselines.
//!
//! A scenario flattens [`CommonArgs`] (or [`OutputArgs`] for simulations), records latencies
//! into [`Recorder`]s (paced by [`OpenLoop`] or closed loop, see [`drive`]), hands them to a
//! [`Run`], and calls [`Run::finish`] with its results: that writes `<name>.hgrm`,
//! `<name>.hlog` and `summary.json` under the output folder and, with `--json`, prints the
//! results as the last line of stdout.

pub mod args;
pub mod baselines;
pub mod hgrm;
pub mod load;
pub mod recorder;
pub mod run;

pub use args::{CONCURRENCY_MAX, CommonArgs, OutputArgs, Pacing, parse_duration, split_duration};
pub use baselines::{
    BaselineConfig, FloodReport, TcpReport, fdatasync_latency, fdatasync_latency_with,
    tcp_bulk_with, tcp_gbps, udp_flood_pps, udp_flood_with, udp_rtt, udp_rtt_with,
};
pub use hdrhistogram::Histogram;
pub use hgrm::{HgrmError, Spectrum, SpectrumRow, parse_hgrm, write_hgrm};
pub use load::{Clock, LoadReport, OpenLoop, SystemClock, drive};
pub use recorder::{Recorder, Unit};
pub use run::{Progress, Run, environment, git_commit, rfc3339};

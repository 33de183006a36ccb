//! Shared machinery of every scenario: common flags, recorders, pacing, output files and the
//! same-run baselines.
//!
//! A scenario flattens [`CommonArgs`] (or [`OutputArgs`] for simulations), records latencies
//! into [`Recorder`]s (paced by [`OpenLoop`] or closed loop, see [`drive`]), hands them to a
//! [`Run`], and calls [`Run::finish`] with its results: that writes `<name>.hgrm`,
//! `<name>.hlog` and `summary.json` under the output folder and, with `--json`, prints the
//! results as the last line of stdout.
//!
//! ```no_run
//! use std::time::Instant;
//! use ringleader_bench::harness::{self, CommonArgs, OpenLoop, Pacing, Recorder, Run, SystemClock};
//!
//! fn run(common: CommonArgs) -> anyhow::Result<()> {
//!     let mut run = Run::new("example", common.out.as_deref(), common.json, serde_json::json!({}))?;
//!     // Same-run baseline first, then the measurement, paced as the flags say.
//!     let raw = harness::udp_rtt(common.duration)?;
//!     let mut rec = Recorder::new("example_rtt_us");
//!     let end = Instant::now() + common.duration;
//!     let mut open = match common.pacing() {
//!         Pacing::Open { rate_per_s } => Some(OpenLoop::new(rate_per_s, Instant::now())),
//!         Pacing::Closed { .. } => None,
//!     };
//!     harness::drive(&mut SystemClock, open.as_mut(), end, &mut rec, |_| -> anyhow::Result<()> {
//!         Ok(()) // one request
//!     })?;
//!     let results = serde_json::json!({
//!         "rtt_us": rec.summary(),
//!         "raw_rtt_us": raw.summary(),
//!     });
//!     run.add(rec);
//!     run.add(raw);
//!     run.finish(results)
//! }
//! ```

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
pub use recorder::{Recorder, Shipped, ShippedError, ShippedInterval, Unit};
pub use run::{Progress, Run, environment, git_commit, rfc3339};

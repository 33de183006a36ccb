//! Ringleader's load generator: scenarios, same-run baselines and HdrHistogram outputs.
//!
//! Every scenario lives in [`scenarios`] as a module exporting `Args` (a `clap::Args`) and
//! `run(args) -> anyhow::Result<()>`. The shared machinery (common flags, histogram
//! recording, output files, the JSON summary line) is in [`harness`].

pub mod harness;
pub mod scenarios;

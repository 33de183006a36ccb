//! Scenario `wal` (not built yet: its issue is open).

/// Flags of the `wal` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the scenario.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("scenario `wal` is not built in this version of ringleader-bench")
}

//! Scenario `sim_swim` (not built yet: its issue is open).

/// Flags of the `sim_swim` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the scenario.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("scenario `sim_swim` is not built in this version of ringleader-bench")
}

//! Scenario `sim_serf` (not built yet: its issue is open).

/// Flags of the `sim_serf` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the scenario.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("scenario `sim_serf` is not built in this version of ringleader-bench")
}

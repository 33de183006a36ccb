//! Scenario `sim_raft` (not built yet: its issue is open).

/// Flags of the `sim_raft` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the scenario.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("scenario `sim_raft` is not built in this version of ringleader-bench")
}

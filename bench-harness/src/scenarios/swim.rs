//! Scenario `swim` (not built yet: its issue is open).

/// Flags of the `swim` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the scenario.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("scenario `swim` is not built in this version of ringleader-bench")
}

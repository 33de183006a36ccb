//! Subcommand `node` (not built yet: its issue is open).

/// Flags of `node`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`node` is not built in this version of ringleader-tools")
}

//! Subcommand `wal_crash` (not built yet: its issue is open).

/// Flags of `wal_crash`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`wal_crash` is not built in this version of ringleader-tools")
}

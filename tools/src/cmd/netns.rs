//! Subcommand `netns`: an emulated network of hosts `rlh1`..`rlhN` in network namespaces,
//! by hand — set up, tear down, run a command on a host, and inject faults. The logic is
//! `crate::netns`, which the fault suites call too.

use std::time::Duration;

use anyhow::bail;
use clap::{Args as ClapArgs, Subcommand};
use serde_json::json;

use crate::netns;

/// Arguments of `netns`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create hosts rlh1..rlhN (198.18.0.i/24) joined by a bridge in namespace rlbr;
    /// leftovers of an earlier run are removed first.
    Up {
        /// Hosts to create.
        #[arg(long)]
        hosts: usize,
    },
    /// Remove every rlh*/rlbr namespace (and the processes left inside them).
    Down,
    /// The hosts, their addresses, link states and faults.
    List {
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside host H's namespace: `netns exec 2 -- ping 198.18.0.1`.
    Exec {
        /// Host number.
        host: usize,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Loss, delay with jitter, reordering or duplication on a host's egress (tc netem);
    /// on a kernel without sch_netem, loss alone by nftables (needs `nft`), the rest refused.
    Fault {
        /// Host number.
        #[arg(long)]
        host: usize,
        /// Loss, percent.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Added delay, milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Jitter around the delay, milliseconds.
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// Reordered, percent (needs a delay).
        #[arg(long, default_value_t = 0.0)]
        reorder: f64,
        /// Duplicated, percent.
        #[arg(long, default_value_t = 0.0)]
        duplicate: f64,
    },
    /// Cut a host off (its bridge port down), or with --one-way-to drop only what it sends
    /// to that host.
    Partition {
        /// Host number.
        #[arg(long)]
        host: usize,
        /// Drop only this host's packets to that host.
        #[arg(long)]
        one_way_to: Option<usize>,
    },
    /// Take a host's link down and up every --period-ms until --for-s passes, then leave it
    /// up (after an interrupted run, `netns heal` brings it up).
    Flap {
        /// Host number.
        #[arg(long)]
        host: usize,
        /// Time down, then time up.
        #[arg(long, default_value_t = 2000)]
        period_ms: u64,
        /// How long to flap.
        #[arg(long, default_value_t = 30)]
        for_s: u64,
    },
    /// Remove every fault: queueing disciplines, filters and nftables loss gone, every link
    /// up.
    Heal,
}

/// Runs `netns`.
pub fn run(a: Args) -> anyhow::Result<()> {
    // Creating or removing the namespaces under a running suite would wreck it.
    let _lock = match a.cmd {
        Cmd::Up { .. } | Cmd::Down => Some(netns::lock(Duration::ZERO)?),
        _ => None,
    };
    match a.cmd {
        Cmd::Up { hosts } => {
            netns::up(hosts)?;
            println!(
                "up: {hosts} hosts {}1..{} at {}..{}, bridge in {}",
                netns::HOST_PREFIX,
                netns::host_ns(hosts),
                netns::host_addr(1),
                netns::host_addr(hosts),
                netns::BRIDGE_NS
            );
        }
        Cmd::Down => {
            let gone = netns::down()?;
            println!("down: removed {}", gone.len());
        }
        Cmd::List { json } => {
            let hosts = netns::hosts()?;
            let bridge = netns::list()?.iter().any(|n| n == netns::BRIDGE_NS);
            if json {
                println!("{}", json!({ "bridge": bridge, "hosts": hosts }));
            } else {
                println!(
                    "bridge namespace {}: {}",
                    netns::BRIDGE_NS,
                    if bridge { "present" } else { "absent" }
                );
                for h in hosts {
                    println!(
                        "{} {} port {} {}{}",
                        h.name,
                        h.addr.as_deref().unwrap_or("-"),
                        if h.port_up { "up" } else { "down" },
                        h.qdiscs.join(" | "),
                        if h.nft_loss.is_empty() {
                            String::new()
                        } else {
                            format!(" | nft: {}", h.nft_loss.join(" | "))
                        }
                    );
                }
            }
        }
        Cmd::Exec { host, cmd } => {
            if !netns::list()?.contains(&netns::host_ns(host)) {
                bail!(
                    "namespace {} does not exist (run `netns up` first)",
                    netns::host_ns(host)
                );
            }
            let status = netns::exec_in(host, &cmd[0]).args(&cmd[1..]).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Fault {
            host,
            loss,
            delay_ms,
            jitter_ms,
            reorder,
            duplicate,
        } => {
            let applied = netns::impair_best(
                host,
                &netns::Impairment {
                    loss_pct: loss,
                    delay_ms,
                    jitter_ms,
                    reorder_pct: reorder,
                    duplicate_pct: duplicate,
                },
                false,
            )?;
            println!(
                "fault set on {} by {}",
                netns::host_ns(host),
                applied.mechanism.name()
            );
        }
        Cmd::Partition { host, one_way_to } => match one_way_to {
            Some(to) => {
                netns::partition_one_way(host, to)?;
                println!("{} → {} dropped", netns::host_ns(host), netns::host_ns(to));
            }
            None => {
                netns::partition(host)?;
                println!("{} cut off", netns::host_ns(host));
            }
        },
        Cmd::Flap {
            host,
            period_ms,
            for_s,
        } => {
            let f = netns::Flapper::start(host, Duration::from_millis(period_ms))?;
            std::thread::sleep(Duration::from_secs(for_s));
            let flaps = f.stop()?;
            println!("{} flapped {flaps} times, left up", netns::host_ns(host));
        }
        Cmd::Heal => {
            let n = netns::heal()?;
            println!("healed {n} hosts");
        }
    }
    Ok(())
}

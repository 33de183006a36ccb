//! Emulated networks in Linux network namespaces, for the fault suites and by hand
//! (`ringleader-tools netns`): hosts `rlh1`..`rlhN`, each with one veth whose other end is a
//! port of a bridge living in a namespace of its own (`rlbr`), and faults on those links.
//!
//! What it must never do: touch the root namespace. Every link is created directly inside
//! the namespaces (`ip -n`), the bridge has no address, and no route or address is added
//! outside them, so nothing a test sends can leave the machine even if a step fails half
//! way. Commands run `ip` and `tc` (iproute2); a missing tool or a refused step is an error
//! that names the command and what it printed.
//!
//! Faults live on the links:
//! - a full partition of a host takes its bridge port down (both directions stop);
//! - a one-way partition A → B classifies A's packets to B (`u32` on the destination
//!   address) into an HTB class whose leaf queue holds nothing (`pfifo limit 0`), so every
//!   one is dropped at A's egress while B → A still flows;
//! - loss, delay with jitter, reordering and duplication are a `netem` leaf under the
//!   default class of the same HTB root, on the host's egress (kernels without `sch_netem`
//!   refuse it, and the error says so);
//! - without `sch_netem`, loss alone can still be had from nftables (`nft`, package
//!   `nftables`): a table `inet rlfault` in the host's namespace whose output chain drops
//!   `numgen random mod 1000 < PERMILLE` of what leaves through the host's link (packets
//!   between members of one host, over loopback, are spared, as with netem); delay,
//!   reordering and duplication have no such fallback and are refused;
//! - flapping takes a bridge port down and up from a thread until it is stopped;
//! - heal removes every queueing discipline and nftables table of ours and takes every
//!   port up.

use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// The namespace holding the bridge.
pub const BRIDGE_NS: &str = "rlbr";
/// Host namespaces are this prefix and the host number.
pub const HOST_PREFIX: &str = "rlh";
/// The bridge device inside [`BRIDGE_NS`].
pub const BRIDGE_DEV: &str = "rlbr0";
/// Each host's end of its veth pair.
pub const HOST_DEV: &str = "rl0";
/// Hosts at most: addresses are 198.18.0.1..=198.18.0.HOSTS_MAX in one /24.
pub const HOSTS_MAX: usize = 250;

/// The namespace of host `i` (1-based).
pub fn host_ns(i: usize) -> String {
    format!("{HOST_PREFIX}{i}")
}

/// The bridge-side end of host `i`'s veth pair (in [`BRIDGE_NS`]).
pub fn port_dev(i: usize) -> String {
    format!("rlv{i}")
}

/// Host `i`'s address: 198.18.0.i, in the RFC 2544 benchmarking range.
pub fn host_addr(i: usize) -> Ipv4Addr {
    assert!(
        (1..=HOSTS_MAX).contains(&i),
        "host {i} out of 1..={HOSTS_MAX}"
    );
    Ipv4Addr::new(198, 18, 0, i as u8)
}

/// Whether `name` is one of ours: `rlbr` or `rlh` followed by digits only.
pub fn is_ours(name: &str) -> bool {
    name == BRIDGE_NS
        || name
            .strip_prefix(HOST_PREFIX)
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The namespace names in the output of `ip netns list` (`NAME` or `NAME (id: N)` per line).
pub fn parse_netns_list(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Runs `program args`, returning its output; fails with what it printed when it fails.
fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "`{program}` is not installed (it comes with iproute2: apt-get install iproute2)"
                )
            } else {
                anyhow::anyhow!("cannot run `{program}`: {e}")
            }
        })?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `ip args`.
fn ip(args: &[&str]) -> anyhow::Result<Output> {
    run("ip", args)
}

/// Runs `tc args`.
fn tc(args: &[&str]) -> anyhow::Result<Output> {
    run("tc", args)
}

/// Where the runs that create, use and remove our namespaces take turns: their names are
/// fixed, so a second run's set-up would kill the first's processes and its teardown would
/// remove namespaces the other is using.
pub const LOCK_PATH: &str = "/run/lock/ringleader-netns.lock";

/// An exclusive hold on [`LOCK_PATH`] (flock(2)); released on drop or when the process
/// ends. The descriptor is close-on-exec, so children do not keep it.
pub struct Lock {
    _file: std::fs::File,
}

/// Takes [`LOCK_PATH`], waiting at most `wait` for another run to let it go.
pub fn lock(wait: Duration) -> anyhow::Result<Lock> {
    lock_at(std::path::Path::new(LOCK_PATH), wait)
}

/// Takes the lock file `path`, waiting at most `wait`.
pub fn lock_at(path: &std::path::Path, wait: Duration) -> anyhow::Result<Lock> {
    use std::os::fd::AsRawFd as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let until = std::time::Instant::now() + wait;
    let mut said = false;
    loop {
        // SAFETY: flock(2) on a descriptor we own and keep open.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Lock { _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            bail!("locking {}: {e}", path.display());
        }
        if std::time::Instant::now() >= until {
            bail!(
                "another run holds {} (a fault suite or `netns up`/`down` using the same \
                 namespace names); gave up after {wait:?}",
                path.display()
            );
        }
        if !said {
            eprintln!(
                "netns: another run holds {}; waiting up to {wait:?}",
                path.display()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Our namespaces that exist now, hosts in numeric order, the bridge's last.
pub fn list() -> anyhow::Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    let mut ours: Vec<String> = parse_netns_list(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|n| is_ours(n))
        .collect();
    ours.sort_by_key(|n| {
        n.strip_prefix(HOST_PREFIX)
            .and_then(|d| d.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    });
    Ok(ours)
}

/// Removes every namespace of ours (a run's, or a crashed run's leftovers): the processes
/// still inside one are killed first, since a namespace lives on while a process holds
/// it. Idempotent. Returns the names removed.
pub fn down() -> anyhow::Result<Vec<String>> {
    let names = list()?;
    for name in &names {
        if let Ok(out) = ip(&["netns", "pids", name]) {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) with a pid `ip netns pids` reported inside our
                    // namespace; no memory is involved.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
    let mut errors = Vec::new();
    for name in &names {
        if let Err(e) = ip(&["netns", "del", name]) {
            errors.push(format!("{e:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("removing namespaces: {}", errors.join("; "));
    }
    Ok(names)
}

/// Creates hosts `1..=hosts` joined by the bridge (removing leftovers first). On a failed
/// step everything created so far is removed again and the error says which step failed.
pub fn up(hosts: usize) -> anyhow::Result<()> {
    if !(1..=HOSTS_MAX).contains(&hosts) {
        bail!("--hosts must be in 1..={HOSTS_MAX}, got {hosts}");
    }
    down().context("removing leftover namespaces")?;
    let made = (|| -> anyhow::Result<()> {
        ip(&["netns", "add", BRIDGE_NS]).context(
            "cannot create a network namespace (this needs root or CAP_SYS_ADMIN and a kernel \
             with network namespaces)",
        )?;
        ip(&["-n", BRIDGE_NS, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            BRIDGE_NS,
            "link",
            "add",
            BRIDGE_DEV,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["-n", BRIDGE_NS, "link", "set", BRIDGE_DEV, "up"])?;
        for i in 1..=hosts {
            let ns = host_ns(i);
            let port = port_dev(i);
            let addr = format!("{}/24", host_addr(i));
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", BRIDGE_NS, "link", "add", &port, "type", "veth", "peer", "name", HOST_DEV,
                "netns", &ns,
            ])?;
            ip(&["-n", BRIDGE_NS, "link", "set", &port, "master", BRIDGE_DEV])?;
            ip(&["-n", BRIDGE_NS, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "addr", "add", &addr, "dev", HOST_DEV])?;
            ip(&["-n", &ns, "link", "set", HOST_DEV, "up"])?;
        }
        Ok(())
    })();
    if let Err(e) = made {
        let _ = down();
        return Err(e.context(format!("setting up {hosts} hosts")));
    }
    Ok(())
}

/// `ip netns exec NS program`: a command that runs inside host `i`'s namespace (`ip`
/// switches namespace and execs the program, so the child's pid is the program's).
pub fn exec_in(i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &host_ns(i)]).arg(program);
    c
}

/// Moves the calling thread into host `i`'s network namespace: sockets it creates from
/// then on live there (setns(2) acts on the thread, not the process).
pub fn enter(i: usize) -> anyhow::Result<()> {
    let path = format!("/run/netns/{}", host_ns(i));
    let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on a descriptor we own and keep open for the call.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns into {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Loss, delay, reordering and duplication on a host's egress (`netem`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Impairment {
    /// Packets dropped, percent.
    pub loss_pct: f64,
    /// Added one-way delay.
    pub delay_ms: u64,
    /// Uniform jitter around the delay.
    pub jitter_ms: u64,
    /// Packets sent at once (ahead of delayed ones), percent; needs a delay.
    pub reorder_pct: f64,
    /// Packets duplicated, percent.
    pub duplicate_pct: f64,
}

impl Impairment {
    /// The `netem` arguments; refuses what netem would misread.
    pub fn netem_args(&self) -> anyhow::Result<Vec<String>> {
        for (name, v) in [
            ("--loss", self.loss_pct),
            ("--reorder", self.reorder_pct),
            ("--duplicate", self.duplicate_pct),
        ] {
            if !(0.0..=100.0).contains(&v) {
                bail!("{name} is a percentage in 0..=100, got {v}");
            }
        }
        if self.jitter_ms > self.delay_ms {
            bail!(
                "--jitter-ms ({}) exceeds --delay-ms ({}): a delay cannot go negative",
                self.jitter_ms,
                self.delay_ms
            );
        }
        if self.reorder_pct > 0.0 && self.delay_ms == 0 {
            bail!("--reorder needs --delay-ms: netem reorders by sending some packets undelayed");
        }
        let mut a = vec!["netem".to_owned()];
        if self.loss_pct > 0.0 {
            a.extend(["loss".into(), format!("{}%", self.loss_pct)]);
        }
        if self.delay_ms > 0 {
            a.extend(["delay".into(), format!("{}ms", self.delay_ms)]);
            if self.jitter_ms > 0 {
                a.extend([
                    format!("{}ms", self.jitter_ms),
                    "distribution".into(),
                    "normal".into(),
                ]);
            }
        }
        if self.reorder_pct > 0.0 {
            a.extend(["reorder".into(), format!("{}%", self.reorder_pct)]);
        }
        if self.duplicate_pct > 0.0 {
            a.extend(["duplicate".into(), format!("{}%", self.duplicate_pct)]);
        }
        if a.len() == 1 {
            bail!(
                "no fault given: pass at least one of --loss, --delay-ms, --reorder, --duplicate"
            );
        }
        Ok(a)
    }
}

/// HTB classes of the root every fault hangs from: unclassified packets go to the pass
/// class (where a netem leaf may sit), classified ones to the drop class.
const CLASS_PASS: &str = "1:10";
const CLASS_DROP: &str = "1:20";

/// The `tc` argument lists that give host dev `dev` the HTB root with its pass and drop
/// classes (the drop class's leaf queue holds nothing).
pub fn root_commands(dev: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
    vec![
        s(&[
            "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
        ]),
        s(&[
            "class", "replace", "dev", dev, "parent", "1:", "classid", CLASS_PASS, "htb", "rate",
            "10gbit", "quantum", "60000",
        ]),
        s(&[
            "class", "replace", "dev", dev, "parent", "1:", "classid", CLASS_DROP, "htb", "rate",
            "10gbit", "quantum", "60000",
        ]),
        s(&[
            "qdisc", "replace", "dev", dev, "parent", CLASS_DROP, "handle", "20:", "pfifo",
            "limit", "0",
        ]),
    ]
}

/// The `tc` arguments of a filter sending `dev`'s packets to `to` into the drop class.
pub fn drop_to_args(dev: &str, to: Ipv4Addr) -> Vec<String> {
    [
        "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match",
        "ip", "dst",
    ]
    .iter()
    .map(|x| (*x).to_owned())
    .chain([format!("{to}/32"), "flowid".into(), CLASS_DROP.into()])
    .collect()
}

/// Runs `tc -n NS args...`.
fn tc_in(ns: &str, args: &[String]) -> anyhow::Result<()> {
    let mut full: Vec<&str> = vec!["-n", ns];
    full.extend(args.iter().map(String::as_str));
    tc(&full).map(drop)
}

/// Whether host `i`'s root already carries our HTB root.
fn has_root(i: usize) -> anyhow::Result<bool> {
    let out = tc(&["-n", &host_ns(i), "qdisc", "show", "dev", HOST_DEV, "root"])?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("htb 1:"))
}

fn ensure_root(i: usize) -> anyhow::Result<()> {
    if has_root(i)? {
        return Ok(());
    }
    for args in root_commands(HOST_DEV) {
        tc_in(&host_ns(i), &args)?;
    }
    Ok(())
}

fn check_host(i: usize) -> anyhow::Result<()> {
    if !(1..=HOSTS_MAX).contains(&i) {
        bail!("host {i} out of 1..={HOSTS_MAX}");
    }
    if !list()?.contains(&host_ns(i)) {
        bail!(
            "namespace {} does not exist (run `ringleader-tools netns up` first)",
            host_ns(i)
        );
    }
    Ok(())
}

/// Loss, delay, reordering and duplication on host `i`'s egress (replacing what it had).
pub fn impair(i: usize, imp: &Impairment) -> anyhow::Result<()> {
    let netem = imp.netem_args()?;
    check_host(i)?;
    ensure_root(i)?;
    let mut args: Vec<String> = [
        "qdisc", "replace", "dev", HOST_DEV, "parent", CLASS_PASS, "handle", "10:",
    ]
    .iter()
    .map(|x| (*x).to_owned())
    .collect();
    args.extend(netem);
    tc_in(&host_ns(i), &args).map_err(|e| {
        if format!("{e}").contains("qdisc kind is unknown") {
            e.context(NoNetem)
        } else {
            e
        }
    })
}

/// The error context of a netem fault this kernel cannot apply.
#[derive(Debug)]
pub struct NoNetem;

impl std::fmt::Display for NoNetem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "this kernel has no netem queueing discipline (CONFIG_NET_SCH_NETEM / sch_netem)",
        )
    }
}

/// The nftables table of our loss faults, in family `inet` of a host's namespace.
pub const NFT_TABLE: &str = "rlfault";

/// The `nft` command (one transaction) that gives a host's namespace a loss of `loss_pct`
/// percent on what leaves through its link, replacing an earlier one. nft draws a number
/// in 0..1000 per packet, so the loss goes in steps of 0.1 %.
pub fn nft_loss_command(loss_pct: f64) -> anyhow::Result<String> {
    let permille = loss_pct * 10.0;
    if !(loss_pct > 0.0 && loss_pct <= 100.0) || (permille - permille.round()).abs() > 1e-6 {
        bail!("--loss for nftables is a percentage in 0.1..=100 in steps of 0.1, got {loss_pct}");
    }
    let permille = permille.round() as u32;
    Ok(format!(
        "add table inet {NFT_TABLE}; delete table inet {NFT_TABLE}; add table inet {NFT_TABLE}; \
         add chain inet {NFT_TABLE} out {{ type filter hook output priority 0; policy accept; }}; \
         add rule inet {NFT_TABLE} out oifname \"{HOST_DEV}\" numgen random mod 1000 < {permille} \
         counter drop"
    ))
}

/// The `nft` command that removes the loss table (a no-op where there is none).
pub fn nft_clear_command() -> String {
    format!("add table inet {NFT_TABLE}; delete table inet {NFT_TABLE}")
}

/// Whether `nft` is on the PATH (`ip netns exec` looks it up there).
pub fn nft_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("nft").is_file()))
}

/// Runs `nft COMMAND` inside host `i`'s namespace.
fn nft_in(i: usize, command: &str) -> anyhow::Result<Output> {
    if !nft_installed() {
        bail!(
            "`nft` is not installed (loss without sch_netem needs nftables: \
             apt-get install nftables)"
        );
    }
    run("ip", &["netns", "exec", &host_ns(i), "nft", command])
}

/// Loss on host `i`'s link by nftables (see [`nft_loss_command`]).
pub fn nft_loss(i: usize, loss_pct: f64) -> anyhow::Result<()> {
    let command = nft_loss_command(loss_pct)?;
    check_host(i)?;
    nft_in(i, &command).map(drop)
}

/// Packets host `i`'s nftables loss rule has dropped so far; `None` without one.
pub fn nft_dropped(i: usize) -> Option<u64> {
    let out = nft_in(i, &format!("list table inet {NFT_TABLE}")).ok()?;
    parse_nft_dropped(&String::from_utf8_lossy(&out.stdout))
}

/// The packet counter of the loss rule in `nft list table` output.
pub fn parse_nft_dropped(text: &str) -> Option<u64> {
    let rule = text.lines().find(|l| l.contains("numgen"))?;
    let w: Vec<&str> = rule.split_whitespace().collect();
    let p = w.iter().position(|x| *x == "packets")?;
    w.get(p + 1)?.parse().ok()
}

/// Which mechanism carried a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mechanism {
    /// `tc netem`: loss, delay, jitter, reordering, duplication.
    Netem,
    /// nftables `numgen`: loss only.
    Nft,
}

impl Mechanism {
    /// As the JSON reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Netem => "netem",
            Mechanism::Nft => "nft",
        }
    }
}

/// What [`impair_best`] applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// netem, or nftables for loss alone.
    pub mechanism: Mechanism,
    /// Whether the requested delay (and jitter) is in force.
    pub delay_applied: bool,
}

/// Applies `imp` on host `i` with netem if the kernel has it; otherwise its loss with
/// nftables. Without netem, a delay is dropped (and `delay_applied` says so) when
/// `delay_optional`, and refused otherwise, as are reordering and duplication always.
pub fn impair_best(i: usize, imp: &Impairment, delay_optional: bool) -> anyhow::Result<Applied> {
    match impair(i, imp) {
        Ok(()) => Ok(Applied {
            mechanism: Mechanism::Netem,
            delay_applied: imp.delay_ms > 0,
        }),
        Err(e) if e.downcast_ref::<NoNetem>().is_some() => {
            let only_loss = imp.reorder_pct == 0.0
                && imp.duplicate_pct == 0.0
                && (delay_optional || imp.delay_ms == 0);
            if !only_loss || imp.loss_pct == 0.0 {
                return Err(e.context(
                    "without netem only --loss can be applied (by nftables); delay, jitter, \
                     reordering and duplication cannot on this kernel",
                ));
            }
            nft_loss(i, imp.loss_pct)?;
            Ok(Applied {
                mechanism: Mechanism::Nft,
                delay_applied: false,
            })
        }
        Err(e) => Err(e),
    }
}

/// Cuts host `i` off: its bridge port goes down, nothing passes either way.
pub fn partition(i: usize) -> anyhow::Result<()> {
    check_host(i)?;
    ip(&["-n", BRIDGE_NS, "link", "set", &port_dev(i), "down"]).map(drop)
}

/// Drops every packet host `from` sends to host `to`; `to` → `from` still flows.
pub fn partition_one_way(from: usize, to: usize) -> anyhow::Result<()> {
    check_host(from)?;
    check_host(to)?;
    if from == to {
        bail!("a host cannot be partitioned from itself");
    }
    ensure_root(from)?;
    tc_in(&host_ns(from), &drop_to_args(HOST_DEV, host_addr(to)))
}

/// [`impair_best`] with an optional delay on every host of `hosts`: what they got (the
/// same on all, since they share the kernel).
pub fn impair_all(
    hosts: impl IntoIterator<Item = usize>,
    imp: &Impairment,
) -> anyhow::Result<Applied> {
    let mut applied: Option<Applied> = None;
    for h in hosts {
        let a = impair_best(h, imp, true)
            .with_context(|| format!("impairing the link of {}", host_ns(h)))?;
        if applied.is_some_and(|b| b != a) {
            bail!("{} got {a:?}, other hosts {applied:?}", host_ns(h));
        }
        applied = Some(a);
    }
    applied.context("no host to impair")
}

/// Removes every fault: each host's queueing disciplines, filters and nftables loss table,
/// and every bridge port up. Returns the hosts healed.
pub fn heal() -> anyhow::Result<usize> {
    let names = list()?;
    let mut hosts = 0;
    for name in &names {
        let Some(i) = name
            .strip_prefix(HOST_PREFIX)
            .and_then(|d| d.parse::<usize>().ok())
        else {
            continue;
        };
        if has_root(i)? {
            tc(&["-n", name, "qdisc", "del", "dev", HOST_DEV, "root"])?;
        }
        // Without nft no table of ours can exist.
        if nft_installed() {
            nft_in(i, &nft_clear_command())?;
        }
        ip(&["-n", BRIDGE_NS, "link", "set", &port_dev(i), "up"])?;
        hosts += 1;
    }
    Ok(hosts)
}

/// A host's bridge port going down and up from a thread, every `period` each, until
/// [`Flapper::stop`] (or drop); it is left up.
pub struct Flapper {
    stop: Arc<AtomicBool>,
    flaps: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Flapper {
    /// Starts flapping host `i`'s link.
    pub fn start(i: usize, period: Duration) -> anyhow::Result<Flapper> {
        check_host(i)?;
        if period.is_zero() {
            bail!("a flapping period must be above zero");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flaps = Arc::new(AtomicU64::new(0));
        let (s, f) = (Arc::clone(&stop), Arc::clone(&flaps));
        let thread = std::thread::Builder::new()
            .name(format!("flap-{}", host_ns(i)))
            .spawn(move || -> anyhow::Result<()> {
                let port = port_dev(i);
                let mut down = false;
                while !s.load(Ordering::SeqCst) {
                    down = !down;
                    let state = if down { "down" } else { "up" };
                    ip(&["-n", BRIDGE_NS, "link", "set", &port, state])?;
                    if down {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                    // Sleep in slices so that stop is prompt.
                    let until = std::time::Instant::now() + period;
                    while !s.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                ip(&["-n", BRIDGE_NS, "link", "set", &port, "up"]).map(drop)
            })
            .context("starting the flapping thread")?;
        Ok(Flapper {
            stop,
            flaps,
            thread: Some(thread),
        })
    }

    /// Times the link went down so far.
    pub fn flaps(&self) -> u64 {
        self.flaps.load(Ordering::SeqCst)
    }

    /// Stops flapping and leaves the link up.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.halt()?;
        Ok(self.flaps())
    }

    fn halt(&mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the flapping thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Flapper {
    fn drop(&mut self) {
        if let Err(e) = self.halt() {
            eprintln!("netns: stopping a flapping link: {e:#}");
        }
    }
}

/// One host as `netns list` shows it.
#[derive(Debug, serde::Serialize)]
pub struct HostView {
    /// Namespace name.
    pub name: String,
    /// Its address on the bridge, if it has one.
    pub addr: Option<String>,
    /// Whether its bridge port is up.
    pub port_up: bool,
    /// Its egress queueing disciplines (`tc qdisc show`), one per line.
    pub qdiscs: Vec<String>,
    /// Its nftables loss rules (table `inet rlfault`), one per line.
    pub nft_loss: Vec<String>,
}

/// Every host of ours with its address, port state and faults.
pub fn hosts() -> anyhow::Result<Vec<HostView>> {
    let mut v = Vec::new();
    for name in list()? {
        let Some(i) = name
            .strip_prefix(HOST_PREFIX)
            .and_then(|d| d.parse::<usize>().ok())
        else {
            continue;
        };
        let addr = ip(&["-n", &name, "-o", "-4", "addr", "show", "dev", HOST_DEV])
            .ok()
            .and_then(|o| {
                let t = String::from_utf8_lossy(&o.stdout).into_owned();
                let w: Vec<&str> = t.split_whitespace().collect();
                w.iter()
                    .position(|x| *x == "inet")
                    .and_then(|p| w.get(p + 1).map(|s| (*s).to_owned()))
            });
        let port_up = ip(&["-n", BRIDGE_NS, "-o", "link", "show", &port_dev(i)])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(",UP"))
            .unwrap_or(false);
        let qdiscs = tc(&["-n", &name, "qdisc", "show", "dev", HOST_DEV])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let nft_loss = nft_in(i, &format!("list table inet {NFT_TABLE}"))
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.contains("numgen"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        v.push(HostView {
            name,
            addr,
            port_up,
            qdiscs,
            nft_loss,
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert_eq!(host_ns(3), "rlh3");
        assert_eq!(port_dev(12), "rlv12");
        assert_eq!(host_addr(7), Ipv4Addr::new(198, 18, 0, 7));
        assert!(is_ours("rlh1") && is_ours("rlh250") && is_ours("rlbr"));
        assert!(!is_ours("rlh") && !is_ours("rlhx") && !is_ours("rlbr2") && !is_ours("x-rlh1"));
    }

    #[test]
    fn netns_list_is_parsed_with_or_without_ids() {
        let text = "rlh2 (id: 3)\nrlbr (id: 0)\nother\n\nrlh10\n";
        assert_eq!(
            parse_netns_list(text),
            vec!["rlh2", "rlbr", "other", "rlh10"]
        );
    }

    #[test]
    fn netem_arguments() {
        let imp = Impairment {
            loss_pct: 10.0,
            delay_ms: 50,
            jitter_ms: 10,
            ..Impairment::default()
        };
        assert_eq!(
            imp.netem_args().unwrap().join(" "),
            "netem loss 10% delay 50ms 10ms distribution normal"
        );
        let imp = Impairment {
            delay_ms: 5,
            reorder_pct: 25.0,
            duplicate_pct: 1.5,
            ..Impairment::default()
        };
        assert_eq!(
            imp.netem_args().unwrap().join(" "),
            "netem delay 5ms reorder 25% duplicate 1.5%"
        );
    }

    #[test]
    fn netem_refuses_what_it_would_misread() {
        let bad = [
            Impairment::default(),
            Impairment {
                loss_pct: 101.0,
                ..Impairment::default()
            },
            Impairment {
                delay_ms: 5,
                jitter_ms: 6,
                ..Impairment::default()
            },
            Impairment {
                reorder_pct: 5.0,
                ..Impairment::default()
            },
        ];
        for imp in bad {
            assert!(imp.netem_args().is_err(), "{imp:?}");
        }
    }

    #[test]
    fn nft_loss_is_one_transaction_on_the_link_in_permille() {
        let c = nft_loss_command(10.0).unwrap();
        assert_eq!(
            c,
            "add table inet rlfault; delete table inet rlfault; add table inet rlfault; \
             add chain inet rlfault out { type filter hook output priority 0; policy accept; }; \
             add rule inet rlfault out oifname \"rl0\" numgen random mod 1000 < 100 counter drop"
        );
        assert!(
            nft_loss_command(5.0)
                .unwrap()
                .contains("mod 1000 < 50 counter drop")
        );
        assert!(
            nft_loss_command(0.1)
                .unwrap()
                .contains("mod 1000 < 1 counter drop")
        );
        assert!(
            nft_loss_command(100.0)
                .unwrap()
                .contains("mod 1000 < 1000 counter")
        );
        for bad in [0.0, -1.0, 100.1, 0.05, 12.34, f64::NAN] {
            assert!(nft_loss_command(bad).is_err(), "{bad}");
        }
        assert_eq!(
            nft_clear_command(),
            "add table inet rlfault; delete table inet rlfault"
        );
    }

    #[test]
    fn the_lock_admits_one_run_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/netns.lock");
        let first = lock_at(&path, Duration::ZERO).unwrap();
        let refused = lock_at(&path, Duration::from_millis(300));
        assert!(refused.is_err());
        drop(first);
        assert!(lock_at(&path, Duration::ZERO).is_ok());
    }

    #[test]
    fn the_drop_counter_is_read_from_the_rule() {
        let text = "table inet rlfault {\n\tchain out {\n\t\ttype filter hook output priority \
                    filter; policy accept;\n\t\toifname \"rl0\" numgen random mod 1000 < 100 \
                    counter packets 1234 bytes 99 drop\n\t}\n}\n";
        assert_eq!(parse_nft_dropped(text), Some(1234));
        assert_eq!(parse_nft_dropped("table inet rlfault {\n}\n"), None);
    }

    #[test]
    fn no_netem_is_found_in_the_error_chain() {
        let e = anyhow::anyhow!("`tc ...` failed: qdisc kind is unknown").context(NoNetem);
        assert!(e.downcast_ref::<NoNetem>().is_some());
        assert!(format!("{e:#}").contains("sch_netem"));
        assert_eq!(Mechanism::Nft.name(), "nft");
        assert_eq!(serde_json::to_value(Mechanism::Netem).unwrap(), "netem");
    }

    #[test]
    fn one_way_drop_is_a_u32_filter_into_the_drop_class() {
        let a = drop_to_args("rl0", Ipv4Addr::new(198, 18, 0, 2)).join(" ");
        assert_eq!(
            a,
            "filter add dev rl0 parent 1: protocol ip prio 1 u32 match ip dst 198.18.0.2/32 flowid 1:20"
        );
        let root = root_commands("rl0");
        assert!(root[0].join(" ").contains("htb default 10"));
        assert!(
            root[3]
                .join(" ")
                .ends_with("parent 1:20 handle 20: pfifo limit 0")
        );
    }
}

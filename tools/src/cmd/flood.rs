//! `ringleader-tools flood`: hostile traffic against one member of a live cluster, one kind
//! at a time, at the highest rate one sender thread reaches; reports what the victim refused
//! (by cause), its memory before and after, and any false positive (a live member suspected
//! or declared down) — which must be zero.
//!
//! Without `--target`, the tool starts the cluster itself: `--members` members (default 100)
//! in this process on 127.77.x.y, sealed with one key under a cluster label, and floods
//! member 0. Its shards bound inbound streams per source IP (half of the shard's bound):
//! the members' own streams all come from 127.0.0.1, the TCP flood from
//! `--tcp-source` (default 127.66.0.1), so the flood cannot take the slots the members'
//! push-pulls need. The counters are the shards' (every refusal of the flood is counted there; a
//! quiet cluster refuses nothing, and the baseline is taken before each flood), and the
//! memory is this process's resident set (the whole cluster: an upper bound on the victim).
//! With `--target ADDR`, it floods an outside member and reports only what it sent.
//!
//! Kinds:
//! - `random`: random bytes of random length;
//! - `bad-checksum`: a real frame of the cluster with one body byte flipped;
//! - `wrong-label`: a frame sealed with the cluster's key under another cluster's label;
//! - `unknown-key`: a frame of the cluster sealed with a key nobody holds;
//! - `oversized`: a frame whose header announces more than a datagram may carry, padded to
//!   60 KB;
//! - `truncated`: a real frame cut short;
//! - `tcp-trickle`: TCP connections that announce a maximal frame (a 16 MiB body) and then
//!   send one byte at a time (slowloris): each costs the victim only what it sent, and is
//!   cut off by the exchange timeout; past the per-IP bound, the victim closes them at once.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rand::{Rng, RngCore, SeedableRng};
use ringleader_engine::host::{
    Census, Event, EventMask, Host, HostConfig, MemberSpec, loopback_addrs,
};
use ringleader_engine::swim::Config;
use ringleader_engine::transport::DROP_CAUSES;
use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::msg::swim::Ping;
use ringleader_wire::{Encoder, Keyring};
use serde_json::{Value, json};

/// Every kind, in the order `--kind all` runs them.
pub const KINDS: &[&str] = &[
    "random",
    "bad-checksum",
    "wrong-label",
    "unknown-key",
    "oversized",
    "truncated",
    "tcp-trickle",
];

const LABEL: &[u8] = b"flood-test";

/// Arguments of `flood`.
#[derive(Parser, Debug)]
pub struct Args {
    /// A member to flood (UDP and TCP); default: a cluster of `--members` started here.
    #[arg(long)]
    pub target: Option<SocketAddr>,
    /// With `--target`: the process id of the target, whose resident set is reported
    /// before and after each flood.
    #[arg(long)]
    pub target_pid: Option<u32>,
    /// Members of the cluster started here (without `--target`).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// Which flood: one of random, bad-checksum, wrong-label, unknown-key, oversized,
    /// truncated, tcp-trickle; or `all` (each in turn).
    #[arg(long, default_value = "all")]
    pub kind: String,
    /// How long each flood lasts (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// TCP connections a `tcp-trickle` flood keeps open at once.
    #[arg(long, default_value_t = 400)]
    pub tcp_conns: usize,
    /// The address a `tcp-trickle` flood's connections come from; default: 127.66.0.1
    /// against the cluster started here, whatever the kernel picks with `--target`.
    #[arg(long)]
    pub tcp_source: Option<IpAddr>,
    /// Seed of the random bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (say 10s or 500ms)"))?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1000.0,
        "m" => v * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// What one flood sent.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    datagrams: u64,
    bytes: u64,
    send_errors: u64,
    tcp_connections: u64,
    tcp_refused: u64,
}

/// Frames and sockets for the datagram floods.
struct Forge {
    good: Vec<u8>,
    wrong_label: Vec<u8>,
    unknown_key: Vec<u8>,
    rng: rand::rngs::SmallRng,
}

impl Forge {
    fn new(key: [u8; 32], seed: u64) -> anyhow::Result<Forge> {
        let ping = Ping {
            seq_no: 1,
            target: ringleader_wire::msg::swim::name_hash("m0"),
            source: "flooder".into(),
            source_addr: SocketAddr::from(([127, 0, 0, 1], 9)).into(),
        };
        let ours = Keyring::new(key);
        let theirs = Keyring::new([0x5a; 32]);
        let enc = |label: &[u8], k: &Keyring| -> anyhow::Result<Vec<u8>> {
            Ok(Encoder::new(label)
                .encode(&ping, Some(k), 1400)
                .context("encoding a ping")?
                .to_vec())
        };
        Ok(Forge {
            good: enc(LABEL, &ours)?,
            wrong_label: enc(b"another-cluster", &ours)?,
            unknown_key: enc(LABEL, &theirs)?,
            rng: rand::rngs::SmallRng::seed_from_u64(seed),
        })
    }

    /// The next datagram of `kind` into `out`.
    fn next(&mut self, kind: &str, out: &mut Vec<u8>) {
        out.clear();
        match kind {
            "random" => {
                let n = self.rng.random_range(1..1400);
                out.resize(n, 0);
                self.rng.fill_bytes(out);
            }
            "bad-checksum" => {
                out.extend_from_slice(&self.good);
                let i = self.rng.random_range(HEADER_LEN..out.len());
                out[i] ^= 0x01 << self.rng.random_range(0..8);
            }
            "wrong-label" => out.extend_from_slice(&self.wrong_label),
            "unknown-key" => out.extend_from_slice(&self.unknown_key),
            "oversized" => {
                out.extend_from_slice(&self.good[..HEADER_LEN]);
                // Announce a 60 KB body (past any datagram limit) and send it.
                let body = 60_000u32;
                out[16..20].copy_from_slice(&body.to_le_bytes());
                out.resize(HEADER_LEN + body as usize, 0);
            }
            "truncated" => {
                let cut = self.rng.random_range(1..self.good.len());
                out.extend_from_slice(&self.good[..cut]);
            }
            _ => {}
        }
    }
}

/// Sends datagrams of `kind` to `to` until `until`.
fn flood_udp(
    kind: &str,
    to: SocketAddr,
    until: Instant,
    forge: &mut Forge,
) -> anyhow::Result<Sent> {
    let sock = UdpSocket::bind("127.0.0.1:0").context("binding the flood socket")?;
    let mut sent = Sent::default();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut n = 0u32;
    loop {
        // The clock is read every 256 datagrams: the loop is the rate.
        n = n.wrapping_add(1);
        if n % 256 == 0 && Instant::now() >= until {
            break;
        }
        forge.next(kind, &mut buf);
        match sock.send_to(&buf, to) {
            Ok(b) => {
                sent.datagrams += 1;
                sent.bytes += b as u64;
            }
            Err(_) => sent.send_errors += 1,
        }
    }
    Ok(sent)
}

/// A connection to `to`, from `from` if given.
fn connect_from(from: Option<IpAddr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(from) = from else {
        return TcpStream::connect_timeout(&to, Duration::from_millis(200));
    };
    let s = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_millis(200))?;
    Ok(s.into())
}

/// Opens up to `conns` connections to `to` (from `from`, if given), each announcing a
/// maximal frame, and trickles one byte per connection every 100 ms until `until`; reopens
/// what the victim closes.
fn flood_tcp(
    to: SocketAddr,
    from: Option<IpAddr>,
    until: Instant,
    conns: usize,
    forge: &Forge,
) -> Sent {
    let mut sent = Sent::default();
    let mut header = forge.good[..HEADER_LEN].to_vec();
    let body = (16u32 << 20) - HEADER_LEN as u32;
    header[16..20].copy_from_slice(&body.to_le_bytes());
    let mut open: Vec<TcpStream> = Vec::new();
    while Instant::now() < until {
        while open.len() < conns && Instant::now() < until {
            match connect_from(from, to) {
                Ok(mut s) => {
                    sent.tcp_connections += 1;
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(Duration::from_millis(50)));
                    if s.write_all(&header).is_ok() {
                        sent.bytes += header.len() as u64;
                        open.push(s);
                    }
                }
                Err(_) => {
                    sent.tcp_refused += 1;
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        open.retain_mut(|s| match s.write(&[0]) {
            Ok(1) => {
                sent.bytes += 1;
                true
            }
            _ => false,
        });
    }
    sent
}

/// One flood of `kind` against `to`, for `a.duration`; TCP from `tcp_source` if given.
fn flood_one(
    kind: &str,
    to: SocketAddr,
    tcp_source: Option<IpAddr>,
    a: &Args,
    forge: &mut Forge,
) -> anyhow::Result<Sent> {
    let until = Instant::now() + a.duration;
    if kind == "tcp-trickle" {
        Ok(flood_tcp(to, tcp_source, until, a.tcp_conns, forge))
    } else {
        flood_udp(kind, to, until, forge)
    }
}

fn rss_bytes() -> u64 {
    rss_of("self")
}

fn rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// The counters a flood moves: datagram drops by cause and inbound stream outcomes.
fn refusals(c: &Census) -> Value {
    let udp = c.udp();
    let mut by_cause = serde_json::Map::new();
    for (i, cause) in DROP_CAUSES.iter().enumerate() {
        by_cause.insert((*cause).to_string(), json!(udp.dropped[i]));
    }
    let sum = |f: fn(&ringleader_engine::host::ShardCensus) -> u64| -> u64 {
        c.shards.iter().map(f).sum()
    };
    json!({
        "datagrams": by_cause,
        "streams": {
            "refused": sum(|s| s.streams_refused),
            "refused_busy": sum(|s| s.streams_refused_busy),
            "refused_per_ip": sum(|s| s.streams_refused_per_ip),
            "timed_out": sum(|s| s.streams_timed_out),
            "over_budget": sum(|s| s.streams_over_budget),
            "bad_frame": sum(|s| s.streams_bad_frame),
        },
    })
}

/// `after - before` for every number in two objects of the same shape.
fn delta(before: &Value, after: &Value) -> Value {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => Value::Object(
            a.iter()
                .map(|(k, v)| (k.clone(), delta(b.get(k).unwrap_or(&Value::Null), v)))
                .filter(|(_, v)| v.as_u64() != Some(0))
                .collect(),
        ),
        (b, Value::Number(a)) => {
            json!(
                a.as_u64()
                    .unwrap_or(0)
                    .saturating_sub(b.as_u64().unwrap_or(0))
            )
        }
        (_, a) => a.clone(),
    }
}

/// Datagrams dropped (every cause) plus streams refused: `streams.refused` is the streams'
/// total, its siblings only break it down by cause.
fn refused_total(refused: &Value) -> u64 {
    total(&refused["datagrams"]) + refused["streams"]["refused"].as_u64().unwrap_or(0)
}

fn total(v: &Value) -> u64 {
    match v {
        Value::Object(m) => m.values().map(total).sum(),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// Runs the floods.
pub fn run(a: Args) -> anyhow::Result<()> {
    let kinds: Vec<&str> = if a.kind == "all" {
        KINDS.to_vec()
    } else if let Some(k) = KINDS.iter().find(|k| **k == a.kind) {
        vec![*k]
    } else {
        bail!(
            "--kind {:?}: say all or one of {}",
            a.kind,
            KINDS.join(", ")
        );
    };
    let key = {
        let mut k = [0u8; 32];
        rand::rngs::SmallRng::seed_from_u64(a.seed ^ 0x6b6579).fill_bytes(&mut k);
        k
    };
    let mut forge = Forge::new(key, a.seed)?;
    match a.target {
        Some(t) => flood_outside(&a, &kinds, t, &mut forge),
        None => flood_own_cluster(&a, &kinds, key, &mut forge),
    }
}

fn flood_outside(
    a: &Args,
    kinds: &[&str],
    target: SocketAddr,
    forge: &mut Forge,
) -> anyhow::Result<()> {
    let mut floods = Vec::new();
    let rss = || a.target_pid.map(|p| rss_of(&p.to_string()));
    for &kind in kinds {
        let before = rss();
        let s = flood_one(kind, target, a.tcp_source, a, forge)?;
        let during = rss();
        std::thread::sleep(Duration::from_secs(2));
        floods.push(json!({
            "kind": kind,
            "sent": sent_json(&s, a.duration),
            "target_rss_bytes": {"before": before, "end_of_flood": during, "after": rss()},
        }));
    }
    let out = json!({"target": target.to_string(), "floods": floods});
    print_out(a.json, &out)
}

fn sent_json(s: &Sent, d: Duration) -> Value {
    json!({
        "datagrams": s.datagrams,
        "datagrams_per_s": (s.datagrams as f64 / d.as_secs_f64()).round(),
        "bytes": s.bytes,
        "send_errors": s.send_errors,
        "tcp_connections": s.tcp_connections,
        "tcp_refused": s.tcp_refused,
    })
}

fn print_out(as_json: bool, out: &Value) -> anyhow::Result<()> {
    if as_json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(out)?);
    }
    Ok(())
}

fn flood_own_cluster(
    a: &Args,
    kinds: &[&str],
    key: [u8; 32],
    forge: &mut Forge,
) -> anyhow::Result<()> {
    let n = a.members;
    if !(3..=2000).contains(&n) {
        bail!("--members {n}: give 3..=2000");
    }
    let port = ringleader_engine::transport::port_base_below_ephemeral(1);
    let addrs = loopback_addrs(n, 77, port);
    let mut hc = HostConfig {
        swim: Config::local(),
        label: LABEL.to_vec(),
        keys: vec![key],
        events: EventMask::FAILURES,
        ..HostConfig::default()
    };
    hc.runtime.name = "flood".into();
    hc.runtime.pin = false;
    hc.cluster_members_max = hc.cluster_members_max.max(n);
    // Sized for this cluster (two descriptors per member): the defaults ask for more open
    // files than a test host allows.
    hc.members_per_shard_max = n;
    hc.inbound_streams_max = 64;
    // The members' streams (all from 127.0.0.1) and the flood's (from `tcp_source`) get
    // half the slots each.
    hc.inbound_streams_per_ip_max = 32;
    hc.outbound_streams_max = 64;
    let host = Host::start(hc).context("starting the cluster")?;
    for (i, &addr) in addrs.iter().enumerate() {
        host.add(MemberSpec {
            name: format!("m{i}"),
            bind: addr,
            seeds: if i == 0 { vec![] } else { vec![addrs[0]] },
            meta: Vec::new(),
        })
        .with_context(|| format!("starting member {i} at {addr}"))?;
    }
    let t0 = Instant::now();
    loop {
        let c = host.census(n)?;
        if c.converged() == n {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!(
                "the cluster did not converge in 60 s ({} of {n} see everyone)",
                c.converged()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let converge_ms = t0.elapsed().as_millis() as u64;
    // Events of the start (joins) are not failures; drain whatever came.
    while host.events().try_recv().is_ok() {}
    let victim = addrs[0];
    let mut floods = Vec::new();
    let mut false_positives_total = 0u64;
    for &kind in kinds {
        let before = refusals(&host.census(n)?);
        let rss_before = rss_bytes();
        let stop = Arc::new(AtomicBool::new(false));
        // Counts (suspicions, downs) until told to stop.
        let watcher = {
            let stop = stop.clone();
            let events = host.events().clone();
            std::thread::spawn(move || {
                let (mut suspicions, mut downs) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    match events.recv_timeout(Duration::from_millis(50)) {
                        Ok(e) => match e.event {
                            Event::Suspect { .. } => suspicions += 1,
                            Event::Down { .. } => downs += 1,
                            _ => {}
                        },
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        Err(_) => break,
                    }
                }
                (suspicions, downs)
            })
        };
        let tcp_source = a.tcp_source.or(Some(IpAddr::from([127, 66, 0, 1])));
        let sent = flood_one(kind, victim, tcp_source, a, forge)?;
        let rss_during = rss_bytes();
        // Let the victim drain its queues and the members finish a few probe rounds.
        std::thread::sleep(Duration::from_secs(2));
        let census = host.census(n)?;
        let after = refusals(&census);
        stop.store(true, Ordering::SeqCst);
        let (suspicions, downs) = watcher
            .join()
            .map_err(|_| anyhow::anyhow!("the event watcher panicked"))?;
        let refused = delta(&before, &after);
        let fp = suspicions + downs;
        false_positives_total += fp;
        floods.push(json!({
            "kind": kind,
            "sent": sent_json(&sent, a.duration),
            "refused": refused,
            "refused_total": refused_total(&refused),
            "rss_bytes": {"before": rss_before, "end_of_flood": rss_during, "after": rss_bytes()},
            "false_positives": {"suspicions": suspicions, "downs": downs},
            "converged_after": census.converged(),
        }));
        if !a.json {
            eprintln!(
                "flood {kind}: sent {} datagrams, {} connections; {fp} false positives",
                sent.datagrams, sent.tcp_connections
            );
        }
    }
    host.shutdown()?;
    let out = json!({
        "members": n,
        "victim": victim.to_string(),
        "converge_ms": converge_ms,
        "duration_s": a.duration.as_secs_f64(),
        "floods": floods,
        "false_positives": false_positives_total,
    });
    print_out(a.json, &out)?;
    anyhow::ensure!(
        false_positives_total == 0,
        "{false_positives_total} false positives (live members suspected or declared down) during the floods"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_total_counts_each_refusal_once() {
        let r = json!({
            "datagrams": {"checksum": 5, "label": 2},
            "streams": {"refused": 10, "refused_per_ip": 9, "timed_out": 1},
        });
        assert_eq!(
            refused_total(&r),
            17,
            "the stream causes break down its total"
        );
        assert_eq!(refused_total(&json!({"datagrams": {}, "streams": {}})), 0);
    }
}

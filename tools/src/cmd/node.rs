//! Subcommand `node`: one SWIM member in its own process, printing membership events as
//! lines — for multi-process tests, scripts, and people trying Ringleader by hand.
//!
//! It starts a [`Node`] bound to `--bind`, joins through every `--join` seed, and writes
//! one line per event to stdout, flushed at once. On SIGINT or SIGTERM (or when
//! `--exit-after` passes) it leaves gracefully — peers see it as `left`, not `down` — and
//! exits 0. It never stops on its own otherwise.
//!
//! # Output (an interface: scripts rely on it)
//!
//! Text (the default): one event per line, fields separated by one space. Every field is a
//! single token: bytes of names, metadata and payloads that are not printable ASCII, a space
//! or a backslash are written as `\xNN` (so `a b` prints as `a\x20b`).
//!
//! | line                          | meaning                                               |
//! |-------------------------------|-------------------------------------------------------|
//! | `listening ADDR NAME`         | always the first line: bound to ADDR, named NAME      |
//! | `joined SEED ok`              | the join through SEED succeeded (`failed` if not)     |
//! | `up NAME ADDR`                | NAME joined (or came back) at ADDR                    |
//! | `suspect NAME by X`           | X suspects NAME                                       |
//! | `alive NAME`                  | NAME refuted a suspicion                              |
//! | `down NAME by X`              | X declared NAME dead                                  |
//! | `left NAME`                   | NAME left gracefully                                  |
//! | `updated NAME ADDR`           | NAME's metadata or address changed                    |
//! | `reaped NAME`                 | the failed NAME was removed from the table            |
//! | `message ORIGIN FROM PAYLOAD` | a broadcast of member ORIGIN (`-`: a direct message), |
//! |                               | relayed here by address FROM; delivered once          |
//! | `sent PAYLOAD`                | this node broadcast `--broadcast` PAYLOAD             |
//! | `leaving REASON`              | leaving: REASON is `SIGINT`, `SIGTERM` or `exit-after`|
//! | `stopped`                     | always the last line of a clean exit                  |
//!
//! The node never reports itself as `up`. With `--json`, each line is instead one JSON
//! object with an `event` field (the first word above) and `t_ms` (milliseconds since
//! start), plus: `name`, `addr`, `meta` (UTF-8, lossy), `state`, `incarnation` for events
//! about a member; `by` for `suspect`/`down`; `origin`, `from`, `payload` (UTF-8, lossy) and
//! `payload_hex` for `message`; `seed`, `ok` for `joined`; `reason` for `leaving`.
//!
//! Errors go to stderr with a non-zero exit status.
//!
//! # Signals
//! SIGINT and SIGTERM are blocked in every thread before the node starts and taken by one
//! thread with `sigwait(3)`, so no handler runs in signal context and the engine's threads
//! are never interrupted. The first starts the graceful leave (exit status 0); a second one
//! while leaving exits at once with status 130, without waiting for the leave to spread.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ringleader_bench::harness::parse_duration;
use ringleader_engine::host::{Event, MemberInfo, member_state_name};
use ringleader_engine::swim::Config;
use ringleader_engine::{HostEvent, Node};
use serde_json::json;

/// Length of an AES-256 key in hex digits.
const KEY_HEX_LEN: usize = 64;

/// Exit status when a second SIGINT/SIGTERM cuts a graceful leave short.
const EXIT_SECOND_SIGNAL: i32 = 130;

/// How often the event loop looks at the signal flag and the clock while no event comes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Flags of `node`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// UDP and TCP address to bind, e.g. 127.0.0.1:7946.
    #[arg(long)]
    pub bind: SocketAddr,
    /// A member to join through (repeatable; none: start a new cluster).
    #[arg(long = "join", value_name = "ADDR")]
    pub joins: Vec<SocketAddr>,
    #[command(flatten)]
    pub swim: SwimFlags,
    /// Member name, unique in the cluster (default: the bind address as text).
    #[arg(long)]
    pub name: Option<String>,
    /// AES-256-GCM key as 64 hex digits (repeatable; the first seals, any opens).
    #[arg(long = "key", value_name = "HEX64", value_parser = parse_key)]
    pub keys: Vec<[u8; 32]>,
    /// Cluster label: frames of other clusters are refused.
    #[arg(long)]
    pub label: Option<String>,
    /// Metadata (tags) other members see.
    #[arg(long)]
    pub meta: Option<String>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Broadcast this user message once, as soon as another member is up (gossiped: every
    /// member relays it and prints it once).
    #[arg(long)]
    pub broadcast: Option<String>,
    /// Leave and exit after this long (e.g. 90s, 2m); default: run until a signal.
    #[arg(long, value_parser = parse_duration)]
    pub exit_after: Option<Duration>,
}

/// The SWIM flags `node` and `agent` share: a preset and what overrides it.
#[derive(clap::Args, Debug, Clone)]
pub struct SwimFlags {
    /// SWIM preset: lan, local or wan (memberlist's three).
    #[arg(long, default_value = "lan", value_parser = parse_preset)]
    pub config: String,
    /// Override the preset's probe interval (milliseconds).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub probe_interval_ms: Option<u64>,
    /// Override the preset's probe timeout (milliseconds).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub probe_timeout_ms: Option<u64>,
    /// Override the preset's push-pull interval (milliseconds; 0 disables push-pull).
    #[arg(long)]
    pub push_pull_interval_ms: Option<u64>,
}

impl SwimFlags {
    /// The SWIM configuration these flags ask for; refuses a probe timeout over the
    /// interval, saying which flag to change.
    pub fn swim_config(&self) -> anyhow::Result<Config> {
        let Some(mut c) = Config::named(&self.config) else {
            bail!(
                "unknown preset `{}`: use one of lan, local, wan",
                self.config
            );
        };
        if let Some(v) = self.probe_interval_ms {
            c.probe_interval_ms = v;
        }
        if let Some(v) = self.probe_timeout_ms {
            c.probe_timeout_ms = v;
        }
        if let Some(v) = self.push_pull_interval_ms {
            c.push_pull_interval_ms = v;
        }
        if c.probe_timeout_ms > c.probe_interval_ms {
            bail!(
                "probe timeout ({} ms) exceeds the probe interval ({} ms): lower --probe-timeout-ms or raise --probe-interval-ms",
                c.probe_timeout_ms,
                c.probe_interval_ms
            );
        }
        Ok(c)
    }
}

fn parse_preset(s: &str) -> Result<String, String> {
    match Config::named(s) {
        Some(_) => Ok(s.to_string()),
        None => Err(format!("unknown preset `{s}`: use one of lan, local, wan")),
    }
}

/// Parses 64 hex digits into an AES-256 key.
pub fn parse_key(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    if s.len() != KEY_HEX_LEN {
        return Err(format!(
            "a key is {KEY_HEX_LEN} hex digits (32 bytes, AES-256); got {} characters",
            s.len()
        ));
    }
    let digit = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!(
                "a key is hex digits only; `{}` is not one",
                c.escape_ascii()
            )),
        }
    };
    let mut key = [0u8; 32];
    for (k, pair) in key.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *k = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Ok(key)
}

/// Writes `bytes` as one token of the text format (see the module's documentation).
pub fn push_token(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'\\' {
            out.push(b as char);
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread started after) and
/// starts a thread that waits for them; the signal number lands in the returned flag. A
/// second signal exits at once with [`EXIT_SECOND_SIGNAL`] (peers will see a failure).
pub(crate) fn catch_signals() -> anyhow::Result<Arc<AtomicI32>> {
    let got = Arc::new(AtomicI32::new(0));
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before any other use;
    // pthread_sigmask only reads it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!(
                "cannot block SIGINT/SIGTERM: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        set
    };
    let flag = Arc::clone(&got);
    std::thread::Builder::new()
        .name("node-signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is a valid, initialised signal set and `sig` a valid
                // out-pointer; both outlive the call.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    continue;
                }
                if flag.swap(sig, Ordering::SeqCst) != 0 {
                    // A second signal while leaving: the user does not want to wait.
                    eprintln!("second {}: stopping without leaving", signal_name(sig));
                    std::process::exit(EXIT_SECOND_SIGNAL);
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(got)
}

pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Formats events as lines of the chosen format.
struct Printer {
    json: bool,
    start: Instant,
    line: String,
}

impl Printer {
    fn t_ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_millis() as u64
    }

    fn member_json(kind: &str, t_ms: u64, m: &MemberInfo) -> serde_json::Value {
        json!({
            "event": kind,
            "t_ms": t_ms,
            "name": m.name,
            "addr": m.addr.to_string(),
            "meta": String::from_utf8_lossy(&m.meta),
            "state": member_state_name(m.state),
            "incarnation": m.incarnation,
        })
    }

    /// The line of `e` (without the newline) in `self.line`.
    fn event(&mut self, e: &HostEvent) {
        self.line.clear();
        let t_ms = self.t_ms(e.at);
        if self.json {
            let v = match &e.event {
                Event::Up(m) => Self::member_json("up", t_ms, m),
                Event::AliveAgain(m) => Self::member_json("alive", t_ms, m),
                Event::Left(m) => Self::member_json("left", t_ms, m),
                Event::Updated(m) => Self::member_json("updated", t_ms, m),
                Event::Reaped(m) => Self::member_json("reaped", t_ms, m),
                Event::Suspect { member, by } => {
                    let mut v = Self::member_json("suspect", t_ms, member);
                    v["by"] = json!(by);
                    v
                }
                Event::Down { member, by } => {
                    let mut v = Self::member_json("down", t_ms, member);
                    v["by"] = json!(by);
                    v
                }
                Event::Message {
                    from,
                    origin,
                    payload,
                } => {
                    let mut hex = String::with_capacity(payload.len() * 2);
                    for b in payload {
                        let _ = write!(hex, "{b:02x}");
                    }
                    json!({
                        "event": "message",
                        "t_ms": t_ms,
                        "origin": origin,
                        "from": from.to_string(),
                        "payload": String::from_utf8_lossy(payload),
                        "payload_hex": hex,
                    })
                }
                Event::Joined { seed, ok } => json!({
                    "event": "joined",
                    "t_ms": t_ms,
                    "seed": seed.to_string(),
                    "ok": ok,
                }),
                // This node runs without Serf: these never come.
                Event::User { .. } | Event::Query(_) => return,
            };
            self.line.push_str(&v.to_string());
            return;
        }
        let line = &mut self.line;
        match &e.event {
            Event::Up(m) => {
                line.push_str("up ");
                push_token(line, m.name.as_bytes());
                let _ = write!(line, " {}", m.addr);
            }
            Event::Suspect { member, by } => {
                line.push_str("suspect ");
                push_token(line, member.name.as_bytes());
                line.push_str(" by ");
                push_token(line, by.as_bytes());
            }
            Event::AliveAgain(m) => {
                line.push_str("alive ");
                push_token(line, m.name.as_bytes());
            }
            Event::Down { member, by } => {
                line.push_str("down ");
                push_token(line, member.name.as_bytes());
                line.push_str(" by ");
                push_token(line, by.as_bytes());
            }
            Event::Left(m) => {
                line.push_str("left ");
                push_token(line, m.name.as_bytes());
            }
            Event::Updated(m) => {
                line.push_str("updated ");
                push_token(line, m.name.as_bytes());
                let _ = write!(line, " {}", m.addr);
            }
            Event::Reaped(m) => {
                line.push_str("reaped ");
                push_token(line, m.name.as_bytes());
            }
            Event::Message {
                from,
                origin,
                payload,
            } => {
                line.push_str("message ");
                match origin {
                    Some(o) => push_token(line, o.as_bytes()),
                    None => line.push('-'),
                }
                let _ = write!(line, " {from} ");
                push_token(line, payload);
            }
            Event::Joined { seed, ok } => {
                let ok = if *ok { "ok" } else { "failed" };
                let _ = write!(line, "joined {seed} {ok}");
            }
            Event::User { .. } | Event::Query(_) => {}
        }
    }

    /// A line of this tool's own (not a member event): `text` in text mode, `value` as JSON.
    fn own(&mut self, text: &[&[u8]], value: serde_json::Value) {
        self.line.clear();
        if self.json {
            let mut value = value;
            value["t_ms"] = json!(self.t_ms(Instant::now()));
            self.line.push_str(&value.to_string());
        } else {
            for (i, t) in text.iter().enumerate() {
                if i > 0 {
                    self.line.push(' ');
                }
                push_token(&mut self.line, t);
            }
        }
    }
}

/// Writes the printer's line and flushes.
fn emit(out: &mut std::io::StdoutLock<'_>, p: &Printer) -> anyhow::Result<()> {
    out.write_all(p.line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    let swim = args.swim.swim_config()?;
    let name = args.name.clone().unwrap_or_else(|| args.bind.to_string());
    if args.name.is_none() && args.bind.port() == 0 {
        bail!("--bind with port 0 needs --name (the default name is the bind address)");
    }
    let signals = catch_signals()?;
    let start = Instant::now();
    let mut builder = Node::builder(&name)
        .bind(args.bind)
        .seeds(args.joins.iter().copied())
        .config(swim)
        .keys(args.keys.clone());
    if let Some(label) = &args.label {
        builder = builder.label(label.as_bytes());
    }
    if let Some(meta) = &args.meta {
        builder = builder.meta(meta.as_bytes().to_vec());
    }
    let node = builder
        .start()
        .with_context(|| format!("cannot start node {name} on {}", args.bind))?;

    let mut p = Printer {
        json: args.json,
        start,
        line: String::with_capacity(256),
    };
    let mut out = std::io::stdout().lock();
    let addr = node.addr().to_string();
    p.own(
        &[b"listening", addr.as_bytes(), name.as_bytes()],
        json!({"event": "listening", "addr": addr, "name": name}),
    );
    if let Err(e) = emit(&mut out, &p) {
        // Nobody reads us: leave rather than linger unseen.
        let _ = node.leave();
        return Err(e);
    }

    let deadline = args.exit_after.map(|d| start + d);
    let mut to_broadcast = args.broadcast.clone();
    let reason: String = loop {
        let sig = signals.load(Ordering::SeqCst);
        if sig != 0 {
            break signal_name(sig).to_string();
        }
        let wait = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    break "exit-after".to_string();
                }
                POLL_INTERVAL.min(d - now)
            }
            None => POLL_INTERVAL,
        };
        let first = match node.events().recv_timeout(wait) {
            Ok(e) => e,
            Err(e) if e.is_timeout() => continue,
            Err(_) => bail!("node {name} stopped unexpectedly (its shard ended)"),
        };
        // Print everything already queued, then flush once.
        let mut other_up = false;
        let mut failed = None;
        for e in std::iter::once(first).chain(node.events().try_iter()) {
            other_up |= matches!(e.event, Event::Up(_));
            p.event(&e);
            if let Err(err) = out
                .write_all(p.line.as_bytes())
                .and_then(|()| out.write_all(b"\n"))
            {
                failed = Some(err);
                break;
            }
        }
        if let Some(err) = failed.or_else(|| out.flush().err()) {
            let _ = node.leave();
            return Err(err).context("cannot write to stdout");
        }
        if other_up && let Some(text) = to_broadcast.take() {
            if let Err(e) = node.broadcast(text.clone().into_bytes()) {
                eprintln!("node {name}: broadcast failed: {e}");
                continue;
            }
            p.own(
                &[b"sent", text.as_bytes()],
                json!({"event": "sent", "payload": text}),
            );
            emit(&mut out, &p)?;
        }
    };

    p.own(
        &[b"leaving", reason.as_bytes()],
        json!({"event": "leaving", "reason": reason}),
    );
    // A closed stdout must not keep us from leaving.
    let _ = emit(&mut out, &p);
    node.leave()
        .with_context(|| format!("node {name} could not leave gracefully"))?;
    p.own(&[b"stopped"], json!({"event": "stopped"}));
    let _ = emit(&mut out, &p);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_refuse_clearly() {
        let k = parse_key(&"0f".repeat(32)).expect("64 hex digits");
        assert_eq!(k, [0x0f; 32]);
        let k = parse_key(&"Ab".repeat(32)).expect("upper case");
        assert_eq!(k, [0xab; 32]);
        let e = parse_key("abcd").expect_err("too short");
        assert!(e.contains("64 hex digits"), "{e}");
        let e = parse_key(&format!("{}zz", "00".repeat(31))).expect_err("not hex");
        assert!(e.contains("`z`"), "{e}");
        let e = parse_key(&"é".repeat(32)).expect_err("non-ASCII, 64 bytes");
        assert!(e.contains("hex digits only"), "{e}");
    }

    #[test]
    fn tokens_have_no_spaces_and_escape_reversibly() {
        let mut s = String::new();
        push_token(&mut s, b"a b\\c\n\xffz");
        assert_eq!(s, "a\\x20b\\x5cc\\x0a\\xffz");
        assert!(!s.contains(' '));
    }

    #[test]
    fn presets_are_checked() {
        assert!(parse_preset("lan").is_ok());
        assert!(parse_preset("local").is_ok());
        assert!(parse_preset("wan").is_ok());
        let e = parse_preset("metro").expect_err("unknown");
        assert!(e.contains("lan, local, wan"), "{e}");
    }
}

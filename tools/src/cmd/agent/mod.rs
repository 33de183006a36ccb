//! Subcommand `agent`: one cluster member in its own process with a local HTTP/JSON API —
//! what `serf agent` is to Serf. The CLI commands (`members`, `event`, `query`, `keys`,
//! `rtt`, `leave`, `force-leave`, `monitor`; see [`super::agent_cli`]) talk to it.
//!
//! It starts a [`Node`] bound to `--bind`, joins through every `--join` seed, and serves the
//! API on `--api` (default `127.0.0.1:7373`). On SIGINT or SIGTERM, or on `POST /v1/leave`,
//! it leaves gracefully (peers see it `left`, not failed), ends every open monitor stream,
//! stops serving and exits 0. A second signal while leaving exits at once with status 130.
//!
//! # Who may call the API
//! The API has no TLS: it is meant for the local machine. The rule: an API bound to
//! `127.0.0.1` or `::1` may run without a token; bound to any other address (other loopback
//! addresses such as `127.0.0.2` included, so the rule never depends on how the host routes)
//! it refuses to start without `--token`. With a token, every request (`/metrics` too) must
//! carry `Authorization: Bearer TOKEN`, or gets 401.
//!
//! # What it must never do
//! Panic on what a client sends (every body is parsed into a typed request and refused with
//! 400 and a JSON error naming the field), buffer without bound (request bodies are capped at
//! [`API_BODY_BYTES_MAX`], monitor subscribers that fall behind lose the oldest lines and are
//! told how many), or pretend: a join after start answers only once each seed has answered
//! (or not, in time), and says which did not (see [`ops`]).
//!
//! # Output
//! One line on stdout once the API is up: `agent NAME: gossip ADDR, API http://ADDR`, and
//! `agent NAME: left` at a clean exit. What the engine and the agent report goes through
//! `tracing` (`--log-level`, `RUST_LOG`); member events are logged at `info`.

mod api;
mod metrics;
mod ops;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ringleader_engine::Node;
use ringleader_engine::host::SerfOptions;

use super::node::{SwimFlags, catch_signals, parse_key, signal_name};

pub use ops::AgentState;

/// The API's default address (Serf's RPC port).
pub const API_DEFAULT: &str = "127.0.0.1:7373";

/// Largest request body the API reads, in bytes (a query payload, a key, a join list).
pub const API_BODY_BYTES_MAX: usize = 64 * 1024;

/// Threads the API may run blocking engine calls on at once (each call waits for the
/// node's shard; more requests queue).
pub const API_BLOCKING_THREADS_MAX: usize = 8;

/// Monitor streams open at once; more are refused with 503.
pub const MONITORS_MAX: usize = 64;

/// Lines a monitor subscriber may fall behind by before it loses the oldest.
pub const MONITOR_BACKLOG_LINES_MAX: usize = 4096;

/// How long in-flight API requests may take to finish once the agent has left.
pub const API_DRAIN_MS_MAX: u64 = 5_000;

/// How often the shutdown watcher looks at the signal flag.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// Flags of `agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// UDP and TCP address for gossip, e.g. 127.0.0.1:7946.
    #[arg(long, default_value = "0.0.0.0:7946")]
    pub bind: SocketAddr,
    /// A member to join through (repeatable; none: start a new cluster).
    #[arg(long = "join", value_name = "ADDR")]
    pub joins: Vec<SocketAddr>,
    /// Address of the HTTP API. Anything but 127.0.0.1 or ::1 needs --token.
    #[arg(long, default_value = API_DEFAULT)]
    pub api: SocketAddr,
    /// Bearer token every API request must carry (`Authorization: Bearer T`).
    #[arg(long)]
    pub token: Option<String>,
    /// Member name, unique in the cluster (default: the bind address as text).
    #[arg(long)]
    pub name: Option<String>,
    /// A tag other members see, as key=value (repeatable).
    #[arg(long = "tag", value_name = "K=V", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Answer queries named NAME with PAYLOAD (repeatable), as a Serf event handler for
    /// `query:NAME` would; other queries are acked, not answered.
    #[arg(long = "respond", value_name = "NAME=PAYLOAD", value_parser = parse_tag)]
    pub responses: Vec<(String, String)>,
    /// Serf snapshot file (members, clocks, recent events) to rejoin from after a restart.
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
    /// Keyring file (the keys a rotation installs survive a restart).
    #[arg(long)]
    pub keyring: Option<PathBuf>,
    /// AES-256-GCM key as 64 hex digits or 44 base64 characters (repeatable; the first
    /// seals, any opens; a --keyring file that exists replaces them).
    #[arg(long = "key", value_name = "KEY", value_parser = parse_key_text)]
    pub keys: Vec<[u8; 32]>,
    /// Cluster label: frames of other clusters are refused.
    #[arg(long)]
    pub label: Option<String>,
    #[command(flatten)]
    pub swim: SwimFlags,
}

/// Parses `key=value` (the key non-empty; the value may hold `=`).
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "a tag is key=value with a non-empty key; got `{s}`"
        )),
    }
}

/// Length of an AES-256 key as standard base64 text (Serf's `keygen` format).
const KEY_BASE64_LEN: usize = 44;

/// A key as 64 hex digits (as `--key` takes it) or as 44 characters of standard base64 (as
/// `serf keygen` prints it and Serf's keyring file holds it).
pub fn parse_key_text(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    if s.len() != KEY_BASE64_LEN {
        return parse_key(s).map_err(|e| format!("{e}, or {KEY_BASE64_LEN} base64 characters"));
    }
    let value = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => {
                return Err(format!(
                    "a base64 key is A-Z, a-z, 0-9, + and / then one `=`; `{}` is not one",
                    c.escape_ascii()
                ));
            }
        }
        .into())
    };
    let b = s.as_bytes();
    if b[43] != b'=' {
        return Err("a base64 key of 32 bytes ends with one `=`".into());
    }
    let mut out = Vec::with_capacity(33);
    for chunk in b[..40].chunks_exact(4) {
        let mut n = 0u32;
        for &c in chunk {
            n = n << 6 | value(c)?;
        }
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    let n = value(b[40])? << 12 | value(b[41])? << 6 | value(b[42])?;
    if n & 0b11 != 0 {
        return Err("a base64 key of 32 bytes has its last character's low bits zero".into());
    }
    out.extend_from_slice(&[(n >> 10) as u8, (n >> 2) as u8]);
    out.try_into().map_err(|_| "a key is 32 bytes".to_string())
}

/// Whether an API bound to `ip` may run without a token (see the module's documentation).
pub fn token_optional(ip: IpAddr) -> bool {
    ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
}

/// Refuses an API address that needs a token, and flags that cannot work.
fn check(args: &Args) -> anyhow::Result<()> {
    match &args.token {
        Some(t) if t.is_empty() => bail!("--token is empty: give a non-empty token"),
        None if !token_optional(args.api.ip()) => bail!(
            "--api {} is not 127.0.0.1 or ::1: pass --token T (clients then send \
             `Authorization: Bearer T`), or bind the API to 127.0.0.1",
            args.api
        ),
        _ => {}
    }
    if args.name.is_none() && args.bind.port() == 0 {
        bail!("--bind with port 0 needs --name (the default name is the bind address)");
    }
    Ok(())
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    check(&args)?;
    let swim = args.swim.swim_config()?;
    let name = args.name.clone().unwrap_or_else(|| args.bind.to_string());
    let tags: BTreeMap<String, String> = args.tags.iter().cloned().collect();
    // Bound before the node starts, so a taken port costs the cluster no join and leave.
    let listener = std::net::TcpListener::bind(args.api).with_context(|| {
        format!(
            "cannot bind the API to {}: pick a free port with --api ADDR:PORT",
            args.api
        )
    })?;
    listener
        .set_nonblocking(true)
        .context("cannot make the API socket non-blocking")?;
    // Before any thread starts, so that every thread inherits the blocked signals.
    let signals = catch_signals()?;
    let serf = SerfOptions {
        tags,
        snapshot_path: args.snapshot.clone(),
        keyring_path: args.keyring.clone(),
        ..SerfOptions::default()
    };
    let mut builder = Node::builder(&name)
        .bind(args.bind)
        .seeds(args.joins.iter().copied())
        .config(swim)
        .keys(args.keys.clone())
        .serf_options(serf);
    if let Some(label) = &args.label {
        builder = builder.label(label.as_bytes());
    }
    let node = builder
        .start()
        .with_context(|| format!("cannot start node {name} on {}", args.bind))?;
    let gossip = node.addr();
    let responses: BTreeMap<String, String> = args.responses.iter().cloned().collect();
    let state = Arc::new(AgentState::new(node, Instant::now(), responses));
    let pump = ops::start_pump(&state)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(API_BLOCKING_THREADS_MAX)
        .thread_name("agent-api")
        .build()
        .context("cannot start the API's runtime")?;
    let served = rt.block_on(serve(listener, &args, &name, gossip, &state, &signals));
    // Whatever happened, leave (a no-op if the API or a signal already did).
    let _ = state.leave("exit");
    drop(rt);
    let _ = pump.join();
    served?;
    if let Some(e) = state.leave_error() {
        bail!("agent {name} could not leave gracefully: {e}");
    }
    println!("agent {name}: left");
    Ok(())
}

/// Serves the API until a signal or `POST /v1/leave`; leaves before it returns.
async fn serve(
    listener: std::net::TcpListener,
    args: &Args,
    name: &str,
    gossip: SocketAddr,
    state: &Arc<AgentState>,
    signals: &Arc<std::sync::atomic::AtomicI32>,
) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::from_std(listener).context("cannot serve the API socket")?;
    let api = listener.local_addr().context("API address")?;
    let app = api::router(Arc::clone(state), args.token.clone());
    println!("agent {name}: gossip {gossip}, API http://{api}");
    tracing::info!(agent = name, %gossip, %api, "agent serving");

    let stop_state = Arc::clone(state);
    let stop_signals = Arc::clone(signals);
    let shutdown = async move {
        let reason = loop {
            let sig = stop_signals.load(Ordering::SeqCst);
            if sig != 0 {
                break signal_name(sig).to_string();
            }
            if stop_state.leave_requested() {
                break "api".to_string();
            }
            tokio::select! {
                () = stop_state.leave_notified() => {}
                () = tokio::time::sleep(SIGNAL_POLL) => {}
            }
        };
        tracing::info!(%reason, "agent stopping");
        let s = Arc::clone(&stop_state);
        // Leave while the API still answers (a leave through the API already left).
        let r = tokio::task::spawn_blocking(move || s.leave(&reason)).await;
        if let Ok(Err(e)) = r {
            tracing::error!("leave failed: {e}");
        }
        stop_state.close_monitors();
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let server = std::future::IntoFuture::into_future(server);
    tokio::pin!(server);
    // Serve; once the node has left, give in-flight requests API_DRAIN_MS_MAX to finish.
    tokio::select! {
        r = &mut server => return r.context("the API server failed"),
        () = state.left_notified() => {}
    }
    match tokio::time::timeout(Duration::from_millis(API_DRAIN_MS_MAX), server).await {
        Ok(r) => r.context("the API server failed"),
        Err(_) => {
            tracing::warn!("API requests still open {API_DRAIN_MS_MAX} ms after leaving: closed");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_and_refuse_clearly() {
        assert_eq!(parse_tag("role=web"), Ok(("role".into(), "web".into())));
        assert_eq!(parse_tag("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_tag("dc="), Ok(("dc".into(), String::new())));
        assert!(parse_tag("=web").unwrap_err().contains("non-empty key"));
        assert!(parse_tag("role").unwrap_err().contains("key=value"));
    }

    #[test]
    fn keys_read_as_hex_or_base64() {
        let key: [u8; 32] = std::array::from_fn(|i| (i * 7 + 3) as u8);
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_key_text(&hex), Ok(key));
        // The same key in standard base64 (Python: base64.b64encode(bytes(...))).
        let b64 = "AwoRGB8mLTQ7QklQV15lbHN6gYiPlp2kq7K5wMfO1dw=";
        assert_eq!(parse_key_text(b64), Ok(key));
        assert!(parse_key_text("AwoRGB8mLTQ7QklQV15lbHN6gYiPlp2kq7K5wMfO1dw_").is_err());
        assert!(parse_key_text("AwoRGB8mLTQ7QklQV15lbHN6gYiPlp2kq7K5wMfO1d!=").is_err());
        assert!(parse_key_text("AwoRGB8mLTQ7QklQV15lbHN6gYiPlp2kq7K5wMfO1dx=").is_err());
        let e = parse_key_text("abcd").expect_err("short");
        assert!(e.contains("64 hex digits") && e.contains("base64"), "{e}");
    }

    #[test]
    fn only_the_two_localhosts_go_without_a_token() {
        assert!(token_optional("127.0.0.1".parse().unwrap()));
        assert!(token_optional("::1".parse().unwrap()));
        assert!(!token_optional("127.0.0.2".parse().unwrap()));
        assert!(!token_optional("0.0.0.0".parse().unwrap()));
        assert!(!token_optional("10.1.2.3".parse().unwrap()));
    }
}

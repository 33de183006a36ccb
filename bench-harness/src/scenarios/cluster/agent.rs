//! `ringleader-bench agent`: runs on each host of a cluster benchmark, does what one
//! coordinator at a time asks (start members or a Raft node and the load, measure, report),
//! and stops all of it when the run ends, fails or the coordinator goes away.
//!
//! It never runs for anyone without the token it was started with, binds only the address
//! it is given (`--listen`) and the members' and node's address (`--bind-ip`, default the
//! listen address's IP), and never keeps a run's state past its connection.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::wire::{
    FromAgent, HELLO_WAIT, Line, PROTOCOL_VERSION, RecvError, ToAgent, token_matches,
};
use super::{raft, swim};
use crate::harness::parse_duration;

/// How often the accept loop looks at `--exit-after`.
const ACCEPT_POLL: Duration = Duration::from_millis(50);
/// Extra time a step may take beyond what the coordinator allowed, for the reply itself.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// Flags of `ringleader-bench agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Address to take coordinators' connections on (the agent binds only this).
    #[arg(long)]
    pub listen: SocketAddr,
    /// The shared secret a coordinator must present (required).
    #[arg(long)]
    pub token: Option<String>,
    /// Address the members and the Raft node bind (default: the IP of --listen).
    #[arg(long)]
    pub bind_ip: Option<IpAddr>,
    /// Folder for the Raft node's data (default: the system's temporary folder); each run
    /// uses a folder of its own inside it, removed afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Stop by itself after this long (a run in progress is ended).
    #[arg(long, value_parser = parse_duration)]
    pub exit_after: Option<Duration>,
    /// How long a coordinator may stay silent between steps before the agent ends its run.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub idle_timeout: Duration,
}

/// What every connection of this agent shares.
#[derive(Debug)]
struct Shared {
    token: String,
    bind_ip: IpAddr,
    dir: PathBuf,
    idle_timeout: Duration,
    busy: AtomicBool,
}

/// The refusal of an agent started without a token.
pub const NO_TOKEN: &str = "refusing to start without --token: an agent starts processes and \
     binds addresses for whoever connects, so a coordinator must present the same token \
     (`ringleader-bench cluster --token T`)";

/// Runs the agent until `--exit-after` (or forever).
pub fn run(a: AgentArgs) -> anyhow::Result<()> {
    let token = a
        .token
        .clone()
        .filter(|t| !t.is_empty())
        .context(NO_TOKEN)?;
    let bind_ip = a.bind_ip.unwrap_or(a.listen.ip());
    if bind_ip.is_unspecified() {
        bail!(
            "--listen {} is a wildcard: give --bind-ip, the address members bind",
            a.listen
        );
    }
    let listener =
        TcpListener::bind(a.listen).with_context(|| format!("binding --listen {}", a.listen))?;
    listener.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        token,
        bind_ip,
        dir: a.dir.clone().unwrap_or_else(std::env::temp_dir),
        idle_timeout: a.idle_timeout,
        busy: AtomicBool::new(false),
    });
    println!(
        "agent listening on {}, members bind {bind_ip}",
        listener.local_addr()?
    );
    let stop_at = a.exit_after.map(|d| Instant::now() + d);
    loop {
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            eprintln!("agent: --exit-after reached; stopping");
            return Ok(());
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                let shared = Arc::clone(&shared);
                let spawned = thread::Builder::new()
                    .name("agent-conn".to_owned())
                    .spawn(move || serve(stream, peer, &shared));
                if let Err(e) = spawned {
                    eprintln!("agent: cannot serve {peer}: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) => {
                eprintln!("agent: accept: {e}");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// Clears the busy flag when the run of a connection ends, however it ends.
struct Busy<'a>(&'a AtomicBool);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream, peer: SocketAddr, shared: &Shared) {
    if let Err(e) = stream.set_nonblocking(false) {
        eprintln!("agent: {peer}: {e}");
        return;
    }
    let mut line = match Line::new(stream) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("agent: {peer}: {e}");
            return;
        }
    };
    let refuse = |line: &mut Line, reason: String| {
        eprintln!("agent: refused {peer}: {reason}");
        let _ = line.send(&FromAgent::Refused { reason }, Instant::now() + HELLO_WAIT);
    };
    let hello = line.recv::<ToAgent>(Instant::now() + HELLO_WAIT);
    match hello {
        Ok(ToAgent::Hello { version, token }) => {
            if !token_matches(&token, &shared.token) {
                return refuse(&mut line, "wrong token".to_owned());
            }
            if version != PROTOCOL_VERSION {
                return refuse(
                    &mut line,
                    format!("protocol version {version}, this agent speaks {PROTOCOL_VERSION}"),
                );
            }
        }
        Ok(ToAgent::Step { .. }) => {
            return refuse(&mut line, "a step before hello".to_owned());
        }
        Err(e) => return refuse(&mut line, format!("no hello: {e}")),
    }
    if shared.busy.swap(true, Ordering::SeqCst) {
        return refuse(&mut line, "busy with another coordinator's run".to_owned());
    }
    let _busy = Busy(&shared.busy);
    let welcome = FromAgent::Welcome {
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
        cores: thread::available_parallelism().map_or(1, |n| n.get()),
        bind_ip: shared.bind_ip,
    };
    if line.send(&welcome, Instant::now() + HELLO_WAIT).is_err() {
        return;
    }
    eprintln!("agent: run for {peer} begins");
    let mut session = Session::None;
    loop {
        let msg = line.recv::<ToAgent>(Instant::now() + shared.idle_timeout);
        let (step, wait, data) = match msg {
            Ok(ToAgent::Step {
                step,
                wait_ms,
                data,
            }) => (step, Duration::from_millis(wait_ms), data),
            Ok(ToAgent::Hello { .. }) => {
                let _ = line.send(
                    &FromAgent::Failed {
                        error: "hello twice".into(),
                    },
                    Instant::now() + HELLO_WAIT,
                );
                break;
            }
            Err(RecvError::Closed) => break,
            Err(e) => {
                eprintln!("agent: {peer}: {e}; ending its run");
                let _ = line.send(
                    &FromAgent::Failed {
                        error: format!("{e}"),
                    },
                    Instant::now() + HELLO_WAIT,
                );
                break;
            }
        };
        let deadline = Instant::now() + wait;
        let reply = match session.step(&step, data, deadline, shared) {
            Ok(data) => FromAgent::Done { data },
            Err(e) => {
                eprintln!("agent: step {step} failed: {e:#}");
                FromAgent::Failed {
                    error: format!("{e:#}"),
                }
            }
        };
        let failed = matches!(reply, FromAgent::Failed { .. });
        if line.send(&reply, deadline + REPLY_WAIT).is_err() || failed {
            break;
        }
    }
    drop(session);
    eprintln!("agent: run for {peer} ended");
}

/// What a run has started on this agent; dropping it stops everything.
enum Session {
    None,
    Swim(Box<swim::AgentSwim>),
    Raft(Box<raft::AgentRaft>),
}

impl Session {
    fn step(
        &mut self,
        step: &str,
        data: Value,
        deadline: Instant,
        shared: &Shared,
    ) -> anyhow::Result<Value> {
        match (step, &mut *self) {
            ("prepare", Session::None) => {
                let scenario = data["scenario"].as_str().unwrap_or_default().to_owned();
                let (session, reply) = match scenario.as_str() {
                    "swim" => {
                        let (s, r) = swim::AgentSwim::prepare(&data, shared.bind_ip, deadline)?;
                        (Session::Swim(Box::new(s)), r)
                    }
                    "raft" => {
                        let (s, r) = raft::AgentRaft::prepare(&data, shared.bind_ip, &shared.dir)?;
                        (Session::Raft(Box::new(s)), r)
                    }
                    other => bail!("unknown scenario {other:?} (this agent runs swim and raft)"),
                };
                *self = session;
                Ok(reply)
            }
            ("prepare", _) => bail!("prepare twice in one run"),
            (_, Session::None) => bail!("step {step:?} before prepare"),
            (_, Session::Swim(s)) => s.step(step, &data, deadline),
            (_, Session::Raft(r)) => r.step(step, &data, deadline),
        }
    }
}

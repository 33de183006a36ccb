//! Scenario `cluster`: a benchmark across machines. `ringleader-bench agent` runs on each
//! host; `ringleader-bench cluster --agents A,B,C --token T <scenario> [flags]` sends the
//! scenario (`swim` or `raft`, with the local scenario's flags) to the agents, which start
//! the members or nodes and the load on their own host; the coordinator gathers what they
//! measured into the outputs of a local run (`.hgrm`, `.hlog`, `summary.json`, `--json`)
//! plus a per-host breakdown.
//!
//! Protocol (`wire`): one TCP connection per agent, newline-delimited JSON. The
//! coordinator says hello with the token, then runs the scenario's steps, each one a
//! barrier: it sends the step to every agent concerned and waits, by a deadline, for every
//! answer (`prepare` → all ready → the measured step, sent to all agents at once → collect).
//! An agent that refuses, dies, times out or answers garbage fails the run with an error
//! naming it; closing the connections ends the run on every agent.
//!
//! Latency is measured on the host that starts the operation, against that host's clock
//! only: histograms are shipped raw (V2-serialized) and added, never averaged. Times that
//! span hosts (SWIM failure detection: one host kills, another detects) are taken from
//! each host's own start instant, the moment it received the measured step; the error this
//! adds is the spread of that step's one-way delays to the agents.
//!
//! This module is the coordinator; `agent` the agent; `swim` and `raft` each scenario's two
//! sides, reusing the local scenarios' phases.

pub mod agent;
mod raft;
mod swim;
pub mod wire;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::harness::{Recorder, Shipped, parse_duration};
use wire::{FromAgent, HELLO_WAIT, Line, PROTOCOL_VERSION, ToAgent};

pub use agent::AgentArgs;

/// Most agents one run may use.
pub const AGENTS_MAX: usize = 64;
/// Time an agent is given beyond a step's own length (replies, census polls, shutdown).
pub const STEP_SLACK: Duration = Duration::from_secs(30);

/// Flags of `ringleader-bench cluster`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The agents, ADDR,ADDR,... (the first one holds the SWIM seeds).
    #[arg(long, value_delimiter = ',', required = true)]
    pub agents: Vec<SocketAddr>,
    /// The token the agents were started with.
    #[arg(long, required = true)]
    pub token: String,
    /// How long to wait for each agent to connect and answer hello.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// The scenario (`swim` or `raft`) and its flags, as for a local run; `raft` also takes
    /// `--client-hosts 1,3` (agents, from 1, that run clients; default all).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true,
        value_name = "SCENARIO [FLAGS]"
    )]
    pub scenario: Vec<String>,
}

/// Runs the coordinator.
pub fn run(a: Args) -> anyhow::Result<()> {
    if a.agents.is_empty() || a.agents.len() > AGENTS_MAX {
        bail!("--agents: give 1 to {AGENTS_MAX} addresses");
    }
    if a.token.is_empty() {
        bail!("--token is empty: give the token the agents were started with");
    }
    let name = a.scenario.first().map(String::as_str).unwrap_or_default();
    match name {
        "swim" => {
            let args = swim::parse(&a.scenario).map_err(help_exits)?;
            let mut agents = Agents::connect(&a.agents, &a.token, a.connect_timeout)?;
            swim::coordinate(&mut agents, &a.scenario, args)
        }
        "raft" => {
            let args = raft::parse(&a.scenario).map_err(help_exits)?;
            let mut agents = Agents::connect(&a.agents, &a.token, a.connect_timeout)?;
            raft::coordinate(&mut agents, &a.scenario, args)
        }
        other => bail!("unknown scenario {other:?}: a cluster runs `swim` or `raft`"),
    }
}

/// Parses a scenario's flags (`raw[0]` is its name) with clap, as a local run would. Never
/// exits (an agent parses them too): a request for help is an error like any other.
pub(crate) fn parse_flags<T: clap::Parser>(raw: &[String]) -> anyhow::Result<T> {
    T::try_parse_from(raw).map_err(anyhow::Error::from)
}

/// On the coordinator: `cluster ... swim --help` prints the scenario's flags and exits.
fn help_exits(e: anyhow::Error) -> anyhow::Error {
    if let Some(c) = e.downcast_ref::<clap::Error>()
        && matches!(
            c.kind(),
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
        )
    {
        c.exit();
    }
    e
}

/// One connected agent.
#[derive(Debug)]
pub(crate) struct Agent {
    /// Its address (as given in `--agents`).
    pub addr: SocketAddr,
    /// Its host name.
    pub hostname: String,
    /// CPUs it may use.
    pub cores: usize,
    /// The address its members and node bind.
    pub bind_ip: std::net::IpAddr,
    line: Line,
}

impl Agent {
    /// `agent N (ADDR)`, for errors.
    fn label(&self, i: usize) -> String {
        format!("agent {} ({})", i + 1, self.addr)
    }

    /// What the per-host breakdown says about this agent.
    pub fn about(&self) -> Value {
        json!({"agent": self.addr.to_string(), "hostname": self.hostname, "cores": self.cores,
               "bind_ip": self.bind_ip.to_string()})
    }
}

/// The agents of a run, in `--agents` order.
#[derive(Debug)]
pub(crate) struct Agents(pub Vec<Agent>);

impl Agents {
    /// Connects to every agent and says hello; the first refusal or failure is the error.
    pub fn connect(addrs: &[SocketAddr], token: &str, wait: Duration) -> anyhow::Result<Agents> {
        let mut agents = Vec::with_capacity(addrs.len());
        for (i, &addr) in addrs.iter().enumerate() {
            let label = format!("agent {} ({addr})", i + 1);
            let stream = TcpStream::connect_timeout(&addr, wait).with_context(|| {
                format!(
                    "{label}: cannot connect (is `ringleader-bench agent --listen {addr}` running?)"
                )
            })?;
            let mut line = Line::new(stream).with_context(|| label.clone())?;
            let deadline = Instant::now() + wait.max(HELLO_WAIT);
            line.send(
                &ToAgent::Hello {
                    version: PROTOCOL_VERSION,
                    token: token.to_owned(),
                },
                deadline,
            )
            .with_context(|| format!("{label}: sending hello"))?;
            match line.recv::<FromAgent>(deadline) {
                Ok(FromAgent::Welcome {
                    hostname,
                    cores,
                    bind_ip,
                }) => agents.push(Agent {
                    addr,
                    hostname,
                    cores,
                    bind_ip,
                    line,
                }),
                Ok(FromAgent::Refused { reason }) => {
                    bail!("{label} refused the run: {reason}")
                }
                Ok(other) => bail!("{label} answered hello with {other:?}"),
                Err(e) => bail!("{label}: no answer to hello: {e}"),
            }
        }
        Ok(Agents(agents))
    }

    /// Number of agents.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Sends `step` to the agents `which` (indexes), with the data `data(i)` and `wait` to
    /// do it, then waits for all of them; their answers in the order of `which`. Every
    /// agent gets its step before any answer is read, so they work at the same time.
    pub fn step(
        &mut self,
        which: &[usize],
        step: &str,
        wait: Duration,
        data: impl Fn(usize) -> Value,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + wait + STEP_SLACK;
        for &i in which {
            let a = &mut self.0[i];
            let label = a.label(i);
            let msg = ToAgent::Step {
                step: step.to_owned(),
                wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                data: data(i),
            };
            a.line
                .send(&msg, deadline)
                .with_context(|| format!("{label}: sending step {step}"))?;
        }
        // One reader per agent, so the first failure ends the wait at once: the other
        // connections are then shut, which ends their readers (and the run on their agents).
        let mut streams = Vec::with_capacity(which.len());
        for &i in which {
            let a = &self.0[i];
            streams.push(a.line.try_clone_stream().with_context(|| a.label(i))?);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let mut out: Vec<Option<Value>> = vec![None; which.len()];
        let mut failure: Option<anyhow::Error> = None;
        std::thread::scope(|scope| {
            for (k, a) in self
                .0
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| which.contains(i))
            {
                let tx = tx.clone();
                scope.spawn(move || {
                    let label = a.label(k);
                    let answer = match a.line.recv::<FromAgent>(deadline) {
                        Ok(FromAgent::Done { data }) => Ok(data),
                        Ok(FromAgent::Failed { error }) => {
                            Err(anyhow::anyhow!("{label} failed at step {step}: {error}"))
                        }
                        Ok(other) => Err(anyhow::anyhow!(
                            "{label} answered step {step} with {other:?}"
                        )),
                        Err(e) => Err(anyhow::anyhow!("{label} at step {step}: {e}")),
                    };
                    let _ = tx.send((k, answer));
                });
            }
            drop(tx);
            for (k, answer) in rx.iter() {
                match answer {
                    Ok(data) => {
                        if let Some(pos) = which.iter().position(|&i| i == k) {
                            out[pos] = Some(data);
                        }
                    }
                    Err(e) if failure.is_none() => {
                        failure = Some(e);
                        for s in &streams {
                            let _ = s.shutdown(std::net::Shutdown::Both);
                        }
                    }
                    // Answers after the first failure are that failure's echo.
                    Err(_) => {}
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let out = out
            .into_iter()
            .collect::<Option<Vec<Value>>>()
            .context("an agent's answer went missing")?;
        Ok(out)
    }
}

/// `total` split over `parts` as evenly as possible: the ranges, in order.
pub(crate) fn spread(total: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let n = total / parts + usize::from(i < total % parts);
            let r = start..start + n;
            start += n;
            r
        })
        .collect()
}

/// The histogram `key` of an agent's answer, rebuilt with its intervals placed from
/// `base` (the coordinator's instant for the agents' start of the measured step).
pub(crate) fn shipped(
    answer: &Value,
    key: &str,
    base: Instant,
    agent: &str,
) -> anyhow::Result<Recorder> {
    let s: Shipped = serde_json::from_value(answer[key].clone())
        .with_context(|| format!("{agent}: its `{key}` histogram is missing or malformed"))?;
    s.into_recorder(base)
        .with_context(|| format!("{agent}: its `{key}` histogram"))
}

/// A number of an agent's answer (0 when missing).
pub(crate) fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_even_and_covers_everything() {
        assert_eq!(spread(600, 3), vec![0..200, 200..400, 400..600]);
        assert_eq!(spread(10, 3), vec![0..4, 4..7, 7..10]);
        assert_eq!(spread(2, 3), vec![0..1, 1..2, 2..2]);
    }
}

//! Subcommands `members`, `join`, `event`, `query`, `keys`, `rtt`, `leave`, `force-leave` and
//! `monitor`: the CLI of a running `ringleader-tools agent`, over its HTTP API (see
//! [`super::agent`]).
//!
//! Each prints a human-readable table or lines by default, and with `--json` one JSON
//! document (`monitor` and `query`: one JSON object per line, as the agent streams them).
//!
//! Exit status (an interface: scripts rely on it):
//! - 0: done;
//! - 1: the operation failed (the agent refused or the engine failed; a key operation some
//!   members did not apply; a join no seed answered);
//! - 2: usage or connection: no agent at `--api`, a refused token, a malformed argument.
//!
//! Every error message says what to do next. The token comes from `--token` or the
//! `RINGLEADER_TOKEN` environment variable (so it need not show in `ps`).
//!
//! What it must never do: wait without bound for an answer that is not a stream (every
//! request but `monitor` and `query` has [`REQUEST_TIMEOUT`]), or print a partial table as
//! if it were whole.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use super::agent::{API_DEFAULT, parse_key_text, parse_tag};

/// How long a non-streaming request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting to the agent may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest answer read from the agent, in bytes.
const ANSWER_BYTES_MAX: u64 = 64 << 20;

/// Exit status of a failed operation.
pub const EXIT_FAILED: i32 = 1;
/// Exit status of a usage or connection error.
pub const EXIT_USAGE: i32 = 2;

/// Where the agent is, and how to print.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiOpts {
    /// The agent's API address.
    #[arg(long, global = true, default_value = API_DEFAULT)]
    pub api: SocketAddr,
    /// Bearer token for an agent started with --token (default: $RINGLEADER_TOKEN).
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// JSON for scripts (one document; NDJSON for streams) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `members`: every member the agent knows.
#[derive(clap::Args, Debug, Clone)]
pub struct MembersArgs {
    #[command(flatten)]
    pub api: ApiOpts,
    /// Only members with this status (alive, suspect, failed, left).
    #[arg(long)]
    pub status: Option<String>,
}

/// `event NAME [PAYLOAD]`: a user event to every member.
#[derive(clap::Args, Debug, Clone)]
pub struct EventArgs {
    #[command(flatten)]
    pub api: ApiOpts,
    /// The event's name.
    pub name: String,
    /// Its payload.
    #[arg(default_value = "")]
    pub payload: String,
    /// Deliver every event of this name, not only the latest of a burst.
    #[arg(long)]
    pub no_coalesce: bool,
}

/// `query NAME [PAYLOAD]`: ask the members and print their answers as they come.
#[derive(clap::Args, Debug, Clone)]
pub struct QueryArgs {
    #[command(flatten)]
    pub api: ApiOpts,
    /// The query's name.
    pub name: String,
    /// Its payload.
    #[arg(default_value = "")]
    pub payload: String,
    /// Only members whose tag K matches the regular expression V (repeatable).
    #[arg(long = "tag", value_name = "K=REGEX", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,
    /// Only this member (repeatable).
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// How long to wait for answers (default: Serf's formula for the cluster size).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Do not ask the members for an ack as they receive the query.
    #[arg(long)]
    pub no_ack: bool,
    /// Members that relay each answer besides the direct send.
    #[arg(long)]
    pub relay_factor: Option<u8>,
}

/// `keys install|use|remove KEY`, `keys list`: the cluster's encryption keys.
#[derive(clap::Args, Debug, Clone)]
pub struct KeysArgs {
    #[command(flatten)]
    pub api: ApiOpts,
    #[command(subcommand)]
    pub op: KeysOp,
}

/// A key operation.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum KeysOp {
    /// Add KEY (64 hex digits, or 44 base64 characters as `serf keygen` prints) to every
    /// member's keyring.
    Install {
        /// The key.
        key: String,
    },
    /// Make KEY the key that seals, on every member (install it first).
    Use {
        /// The key.
        key: String,
    },
    /// Remove KEY from every member (not the one in use).
    Remove {
        /// The key.
        key: String,
    },
    /// The keys in use and how many members hold each.
    List,
}

/// `rtt A [B]`: the estimated round trip between two members (B: the agent's own).
#[derive(clap::Args, Debug, Clone)]
pub struct RttArgs {
    #[command(flatten)]
    pub api: ApiOpts,
    /// A member.
    pub a: String,
    /// Another member (default: the agent's own).
    pub b: Option<String>,
}

/// `leave`: the agent leaves the cluster gracefully and exits.
#[derive(clap::Args, Debug, Clone)]
pub struct LeaveArgs {
    #[command(flatten)]
    pub api: ApiOpts,
}

/// `join ADDR...`: the agent joins through more seeds.
#[derive(clap::Args, Debug, Clone)]
pub struct JoinArgs {
    #[command(flatten)]
    pub api: ApiOpts,
    /// Gossip addresses (IP:PORT) of members to join through.
    #[arg(required = true)]
    pub addrs: Vec<std::net::SocketAddr>,
}

/// `force-leave NAME`: a failed member is marked left everywhere.
#[derive(clap::Args, Debug, Clone)]
pub struct ForceLeaveArgs {
    #[command(flatten)]
    pub api: ApiOpts,
    /// The failed member.
    pub name: String,
}

/// `monitor`: the agent's events as they happen, until it stops or Ctrl-C.
#[derive(clap::Args, Debug, Clone)]
pub struct MonitorArgs {
    #[command(flatten)]
    pub api: ApiOpts,
}

/// One CLI command.
#[derive(Debug, Clone)]
pub enum Cmd {
    /// `members`.
    Members(MembersArgs),
    /// `event`.
    Event(EventArgs),
    /// `query`.
    Query(QueryArgs),
    /// `keys`.
    Keys(KeysArgs),
    /// `rtt`.
    Rtt(RttArgs),
    /// `leave`.
    Leave(LeaveArgs),
    /// `join`.
    Join(JoinArgs),
    /// `force-leave`.
    ForceLeave(ForceLeaveArgs),
    /// `monitor`.
    Monitor(MonitorArgs),
}

/// A failure with its exit status.
#[derive(Debug)]
pub struct CliError {
    /// 1 or 2 (see the module's documentation).
    pub code: i32,
    /// What went wrong and what to do.
    pub message: String,
}

fn usage(message: String) -> CliError {
    CliError {
        code: EXIT_USAGE,
        message,
    }
}

fn failed(message: String) -> CliError {
    CliError {
        code: EXIT_FAILED,
        message,
    }
}

/// Runs the command; on failure prints `error: ...` to stderr and exits 1 or 2.
pub fn run(cmd: Cmd) -> anyhow::Result<()> {
    match dispatch(cmd) {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("error: {}", e.message);
            std::process::exit(e.code);
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<(), CliError> {
    let mut out = String::new();
    match cmd {
        Cmd::Members(a) => {
            let c = Client::new(&a.api);
            let v = c.call("GET", "/v1/members", None)?;
            let mut ms: Vec<Value> = v["members"].as_array().cloned().unwrap_or_default();
            if let Some(st) = &a.status {
                ms.retain(|m| m["status"].as_str() == Some(st.as_str()));
            }
            if a.api.json {
                out = json!({ "members": ms }).to_string();
            } else {
                members_table(&ms, &mut out);
            }
        }
        Cmd::Event(a) => {
            let c = Client::new(&a.api);
            let body = json!({"name": a.name, "payload": a.payload, "coalesce": !a.no_coalesce});
            let v = c.call("POST", "/v1/event", Some(body))?;
            out = if a.api.json {
                v.to_string()
            } else {
                format!("event {} sent", a.name)
            };
        }
        Cmd::Query(a) => return query(&a),
        Cmd::Keys(a) => {
            let c = Client::new(&a.api);
            let (v, what) = match &a.op {
                KeysOp::List => (c.call("GET", "/v1/keys", None)?, "list"),
                KeysOp::Install { key } | KeysOp::Use { key } | KeysOp::Remove { key } => {
                    parse_key_text(key).map_err(|e| usage(format!("KEY: {e}")))?;
                    let op = match a.op {
                        KeysOp::Install { .. } => "install",
                        KeysOp::Use { .. } => "use",
                        _ => "remove",
                    };
                    let v = c.call("POST", &format!("/v1/keys/{op}"), Some(json!({"key": key})))?;
                    (v, op)
                }
            };
            if let Err(e) = keys_report(what, &v, a.api.json, &mut out) {
                // The per-member results first, then the error.
                println!("{out}");
                return Err(e);
            }
        }
        Cmd::Rtt(a) => {
            let c = Client::new(&a.api);
            let mut path = format!("/v1/rtt?a={}", url_escape(&a.a));
            if let Some(b) = &a.b {
                let _ = write!(path, "&b={}", url_escape(b));
            }
            let v = c.call("GET", &path, None)?;
            out = if a.api.json {
                v.to_string()
            } else {
                format!(
                    "estimated {} <-> {} rtt: {:.3} ms",
                    v["a"].as_str().unwrap_or(&a.a),
                    v["b"].as_str().unwrap_or("?"),
                    v["rtt_ms"].as_f64().unwrap_or(f64::NAN)
                )
            };
        }
        Cmd::Leave(a) => {
            let v = Client::new(&a.api).call("POST", "/v1/leave", None)?;
            out = if a.api.json {
                v.to_string()
            } else {
                format!(
                    "agent {} left the cluster and stopped",
                    v["left"].as_str().unwrap_or("?")
                )
            };
        }
        Cmd::Join(a) => {
            let addrs: Vec<String> = a.addrs.iter().map(ToString::to_string).collect();
            let v = Client::new(&a.api).call("POST", "/v1/join", Some(json!({"addrs": addrs})))?;
            out = if a.api.json {
                v.to_string()
            } else {
                let failed: Vec<&str> = v["failed"]
                    .as_array()
                    .map(|f| f.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut line = format!("joined through {} of {} seeds", v["joined"], addrs.len());
                if !failed.is_empty() {
                    line += &format!(" (no answer from {})", failed.join(", "));
                }
                line
            };
        }
        Cmd::ForceLeave(a) => {
            let c = Client::new(&a.api);
            let v = c.call("POST", "/v1/force-leave", Some(json!({"name": a.name})))?;
            out = if a.api.json {
                v.to_string()
            } else {
                format!("{} marked left", a.name)
            };
        }
        Cmd::Monitor(a) => return monitor(&a),
    }
    println!("{out}");
    Ok(())
}

/// `a b` → `a%20b`: everything but unreserved characters percent-encoded.
fn url_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// The agent's HTTP API.
struct Client {
    base: String,
    api: SocketAddr,
    token: Option<String>,
}

impl Client {
    fn new(o: &ApiOpts) -> Client {
        let token = o
            .token
            .clone()
            .or_else(|| std::env::var("RINGLEADER_TOKEN").ok())
            .filter(|t| !t.is_empty());
        Client {
            base: format!("http://{}", o.api),
            api: o.api,
            token,
        }
    }

    fn agent(&self, timeout: Option<Duration>) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(timeout)
            .build()
            .into()
    }

    /// Sends one request; the answer's body unless the status says it failed.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        timeout: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>, CliError> {
        let agent = self.agent(timeout);
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let r = if method == "GET" {
            let mut req = agent.get(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        } else {
            let mut req = agent.post(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            match body {
                Some(b) => req.send_json(b),
                None => req.send_empty(),
            }
        };
        let r = r.map_err(|e| self.unreachable(&e))?;
        let status = r.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(r);
        }
        let text = r
            .into_body()
            .with_config()
            .limit(ANSWER_BYTES_MAX)
            .read_to_string()
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let message = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}: {}", text.trim()));
        Err(match status {
            401 => usage(format!(
                "the agent at {} refused the request: {message}",
                self.api
            )),
            400 | 404 | 405 | 413 | 422 => usage(message),
            _ => failed(message),
        })
    }

    fn unreachable(&self, e: &ureq::Error) -> CliError {
        usage(format!(
            "no agent at {}: start one with `ringleader-tools agent ...` or pass --api ({e})",
            self.api
        ))
    }

    /// One request with a JSON answer.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let r = self.send(method, path, body, Some(REQUEST_TIMEOUT))?;
        let text = r
            .into_body()
            .with_config()
            .limit(ANSWER_BYTES_MAX)
            .read_to_string()
            .map_err(|e| failed(format!("the agent at {} answered badly: {e}", self.api)))?;
        serde_json::from_str(&text).map_err(|e| {
            failed(format!(
                "the agent at {} answered with something not JSON ({e}): is it a ringleader agent?",
                self.api
            ))
        })
    }

    /// A streaming request: calls `line` with each NDJSON object until the stream ends.
    fn stream(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        mut line: impl FnMut(&str, Value) -> Result<(), CliError>,
    ) -> Result<(), CliError> {
        let r = self.send(method, path, body, None)?;
        let reader = BufReader::new(r.into_body().into_reader());
        for l in reader.lines() {
            let l = l.map_err(|e| failed(format!("the stream from {} broke: {e}", self.api)))?;
            if l.is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&l).map_err(|e| {
                failed(format!(
                    "the agent at {} sent a line that is not JSON: {e}",
                    self.api
                ))
            })?;
            line(&l, v)?;
        }
        Ok(())
    }
}

/// Prints `text` and flushes (a stream's reader wants each line at once).
fn print_line(text: &str) -> Result<(), CliError> {
    let mut o = std::io::stdout().lock();
    writeln!(o, "{text}")
        .and_then(|()| o.flush())
        .map_err(|e| failed(format!("cannot write to stdout: {e}")))
}

fn tags_text(tags: &Value) -> String {
    let Some(m) = tags.as_object() else {
        return String::new();
    };
    m.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>], out: &mut String) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<width$}  ", width = w[i]);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), out);
    }
    if out.ends_with('\n') {
        out.pop();
    }
}

fn members_table(ms: &[Value], out: &mut String) {
    let rows: Vec<Vec<String>> = ms
        .iter()
        .map(|m| {
            vec![
                m["name"].as_str().unwrap_or("?").to_string(),
                m["addr"].as_str().unwrap_or("?").to_string(),
                m["status"].as_str().unwrap_or("?").to_string(),
                tags_text(&m["tags"]),
            ]
        })
        .collect();
    table(&["NAME", "ADDRESS", "STATUS", "TAGS"], &rows, out);
}

/// A key operation's per-member results, in `out`; fails (1) if any member did not apply
/// it (`out` still holds the results to print).
fn keys_report(op: &str, v: &Value, json: bool, out: &mut String) -> Result<(), CliError> {
    let names = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        // A name, {"name": .., "error": ..} or [name, error].
                        x.as_str()
                            .or_else(|| x["name"].as_str())
                            .or_else(|| x[0].as_str())
                            .unwrap_or("?")
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let bad: Vec<String> = names("failed")
        .into_iter()
        .chain(names("no_response"))
        .collect();
    if json {
        out.push_str(&v.to_string());
    } else {
        let _ = writeln!(
            out,
            "keys {op}: {} members answered, {} ok",
            v["responses"].as_u64().unwrap_or(0),
            v["ok"].as_u64().unwrap_or(0)
        );
        if let Some(errs) = v["failed"].as_array() {
            for e in errs {
                let name = e["name"].as_str().or_else(|| e[0].as_str());
                let why = e["error"].as_str().or_else(|| e[1].as_str());
                let _ = writeln!(
                    out,
                    "  {}: {}",
                    name.unwrap_or("?"),
                    why.unwrap_or("failed")
                );
            }
        }
        if let Some(keys) = v["keys"].as_object() {
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|(k, n)| vec![k.clone(), n.as_u64().unwrap_or(0).to_string()])
                .collect();
            table(&["KEY", "MEMBERS"], &rows, out);
        }
        while out.ends_with('\n') {
            out.pop();
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(failed(format!(
        "key {op} not applied on {} members: {} (check they are alive and hold the key, then \
         run it again)",
        bad.len(),
        bad.join(", ")
    )))
}

fn query(a: &QueryArgs) -> Result<(), CliError> {
    let c = Client::new(&a.api);
    let tags: BTreeMap<String, String> = a.tags.iter().cloned().collect();
    let body = json!({
        "name": a.name,
        "payload": a.payload,
        "filter_tags": tags,
        "filter_nodes": a.nodes,
        "timeout_ms": a.timeout_ms,
        "request_ack": !a.no_ack,
        "relay_factor": a.relay_factor,
    });
    let json = a.api.json;
    let mut done = false;
    c.stream("POST", "/v1/query", Some(body), |raw, v| {
        if json {
            return print_line(raw);
        }
        let from = v["from"].as_str().unwrap_or("?");
        match v["type"].as_str() {
            Some("ack") => print_line(&format!("ack from {from}")),
            Some("response") => print_line(&format!(
                "response from {from}: {}",
                v["payload"].as_str().unwrap_or("")
            )),
            Some("done") => {
                done = true;
                print_line(&format!(
                    "total acks: {}, responses: {}",
                    v["acks"].as_u64().unwrap_or(0),
                    v["responses"].as_u64().unwrap_or(0)
                ))
            }
            _ => print_line(raw),
        }
    })?;
    if !done && !json {
        return Err(failed(
            "the query's stream ended before its deadline (the agent stopped?)".into(),
        ));
    }
    Ok(())
}

/// One monitor line for people: the event, the member, then the other fields.
pub fn monitor_text(v: &Value) -> String {
    let mut s = String::new();
    s.push_str(v["event"].as_str().unwrap_or("?"));
    for k in ["name", "addr"] {
        if let Some(x) = v[k].as_str() {
            s.push(' ');
            s.push_str(x);
        }
    }
    if let Some(m) = v.as_object() {
        for (k, x) in m {
            if matches!(
                k.as_str(),
                "event" | "name" | "addr" | "t_ms" | "incarnation" | "coordinate"
            ) {
                continue;
            }
            let text = match x {
                Value::String(t) => t.clone(),
                Value::Object(_) if k == "tags" => tags_text(x),
                other => other.to_string(),
            };
            if !text.is_empty() {
                let _ = write!(s, " {k}={text}");
            }
        }
    }
    s
}

fn monitor(a: &MonitorArgs) -> Result<(), CliError> {
    let c = Client::new(&a.api);
    let json = a.api.json;
    c.stream("GET", "/v1/monitor", None, |raw, v| {
        if json {
            print_line(raw)
        } else {
            print_line(&monitor_text(&v))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let mut out = String::new();
        let ms = vec![
            json!({"name": "n1", "addr": "127.0.0.1:7946", "status": "alive", "tags": {"role": "web"}}),
            json!({"name": "node-22", "addr": "127.0.0.2:7946", "status": "left", "tags": {}}),
        ];
        members_table(&ms, &mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NAME     ADDRESS"), "{out}");
        let col = lines[0].find("STATUS").unwrap();
        assert_eq!(&lines[1][col..col + 5], "alive", "{out}");
        assert_eq!(&lines[2][col..col + 4], "left", "{out}");
        assert!(lines[1].ends_with("role=web"), "{out}");
    }

    #[test]
    fn key_operations_name_the_members_that_did_not_apply_them() {
        let v = json!({"responses": 4, "ok": 3,
            "failed": [{"name": "n2", "error": "key not installed"}],
            "no_response": ["n5"]});
        let pairs = json!({"responses": 4, "ok": 3,
            "failed": [["n2", "key not installed"]], "no_response": ["n5"]});
        let mut out = String::new();
        let e = keys_report("use", &pairs, false, &mut out).expect_err("pairs too");
        assert!(e.message.contains("n2, n5"), "{}", e.message);
        assert!(out.contains("  n2: key not installed"), "{out}");
        let mut out = String::new();
        let e = keys_report("use", &v, false, &mut out).expect_err("n2 and n5 did not apply it");
        assert_eq!(e.code, EXIT_FAILED);
        assert!(e.message.contains("on 2 members: n2, n5"), "{}", e.message);
        let ok = json!({"responses": 5, "ok": 5, "failed": [], "no_response": []});
        keys_report("install", &ok, false, &mut out).expect("all applied");
        assert!(out.contains("5 members answered, 5 ok"), "{out}");
    }

    #[test]
    fn monitor_lines_read_as_sentences() {
        let v = json!({"event": "member-failed", "name": "n2", "addr": "127.0.0.2:1",
            "status": "failed", "by": "n1", "tags": {"role": "db"}, "t_ms": 5});
        assert_eq!(
            monitor_text(&v),
            "member-failed n2 127.0.0.2:1 by=n1 status=failed tags=role=db"
        );
    }

    #[test]
    fn query_strings_are_escaped() {
        assert_eq!(url_escape("n 1&b=x"), "n%201%26b%3Dx");
        assert_eq!(url_escape("web-1.a_b~"), "web-1.a_b~");
    }
}

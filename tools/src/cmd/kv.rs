//! Subcommand `kv`: one request to the replicated key-value service, for scripts and people
//! trying it by hand.
//!
//! `ringleader-tools kv --cluster ADDR,ADDR,... put KEY VALUE | get KEY | del KEY |
//! cas KEY EXPECTED NEW | cas KEY --expect-absent NEW | info`, with `--consistency
//! linearizable|lease|stale` (reads), `--json` and `--timeout-ms N` anywhere on the line.
//! Each ADDR is a node's base address (`host:port`, shard `s` at port + `s`); any one
//! reachable node is enough, the client finds the rest and each key's leader.
//!
//! # Output (an interface: scripts rely on it)
//! | request | text                                | `--json`                                       |
//! |---------|-------------------------------------|------------------------------------------------|
//! | put     | `ok`                                | `{"op":"put","key":K,"ok":true}`               |
//! | get     | the value, or `(absent)`            | `{"op":"get","key":K,"found":B,"value":V}`     |
//! | del     | `ok`                                | `{"op":"del","key":K,"ok":true}`               |
//! | cas     | `swapped` or `not swapped`          | `{"op":"cas","key":K,"swapped":B}`             |
//! | info    | `node N`, `groups G`, `shards S`, then `member ID ADDR` per node | the cluster info |
//!
//! Values are printed as UTF-8 (invalid bytes replaced); `value` is `null` when absent.
//!
//! # Exit status
//! 0 on success (a CAS that swapped), [`EXIT_NOT_SWAPPED`] for a CAS that did not swap, 1
//! on failure with one line on stderr that says what to do (no leader yet: retry; no node
//! reachable: is the server running at ADDR; the outcome of a write unknown: read the key).

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use ringleader_engine::client::{ClientConfig, KvClient};
use ringleader_wire::msg::client::{ClusterInfo, Consistency};
use serde_json::json;

/// Exit status of a compare-and-swap that found another value.
pub const EXIT_NOT_SWAPPED: i32 = 3;

/// Flags of `kv`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Base addresses of nodes, comma-separated (host:port; shard s listens at port + s).
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "ADDR,ADDR,..."
    )]
    pub cluster: Vec<String>,
    /// How a get is served: linearizable (ReadIndex), lease (leader lease) or stale (any node).
    #[arg(long, global = true, default_value = "linearizable", value_parser = parse_consistency)]
    pub consistency: Consistency,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up after this long, retries and redirects included (milliseconds).
    #[arg(long, global = true, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// The request.
    #[command(subcommand)]
    pub request: Request,
}

/// One request.
#[derive(Subcommand, Debug, Clone)]
pub enum Request {
    /// Set KEY to VALUE.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Read KEY (prints `(absent)` when there is none).
    Get {
        /// Key.
        key: String,
    },
    /// Remove KEY.
    Del {
        /// Key.
        key: String,
    },
    /// Set KEY to NEW if its value is EXPECTED (`cas KEY EXPECTED NEW`), or if it has none
    /// (`cas KEY --expect-absent NEW`).
    Cas {
        /// Key.
        key: String,
        /// EXPECTED NEW, or only NEW with --expect-absent.
        #[arg(num_args = 1..=2, required = true, value_name = "EXPECTED NEW")]
        values: Vec<String>,
        /// Swap only if KEY has no value.
        #[arg(long)]
        expect_absent: bool,
    },
    /// The cluster's shape: groups, shards and nodes.
    Info,
}

fn parse_consistency(s: &str) -> Result<Consistency, String> {
    match s {
        "linearizable" => Ok(Consistency::Linearizable),
        "lease" => Ok(Consistency::Lease),
        "stale" => Ok(Consistency::Stale),
        _ => Err(format!(
            "unknown consistency `{s}`: use linearizable, lease or stale"
        )),
    }
}

/// Resolves every `--cluster` entry.
fn seeds(cluster: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for a in cluster.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
        let addr = a
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve `{a}`: give host:port, e.g. 127.0.0.1:7000"))?
            .next()
            .with_context(|| format!("`{a}` resolves to no address"))?;
        out.push(addr);
    }
    if out.is_empty() {
        bail!("--cluster lists no address: give host:port of at least one node");
    }
    Ok(out)
}

/// (expected, new) of a `cas`.
fn cas_values(values: &[String], expect_absent: bool) -> anyhow::Result<(Option<&str>, &str)> {
    match (values, expect_absent) {
        ([new], true) => Ok((None, new)),
        ([expected, new], false) => Ok((Some(expected), new)),
        (_, true) => bail!("with --expect-absent, cas takes KEY NEW"),
        (_, false) => bail!("cas takes KEY EXPECTED NEW (or KEY --expect-absent NEW)"),
    }
}

fn info_text(info: &ClusterInfo) -> String {
    let mut s = format!(
        "node {}\ngroups {}\nshards {}",
        info.node, info.groups, info.shards
    );
    for n in &info.nodes {
        s.push_str(&format!("\nmember {} {}", n.id, n.addr));
    }
    s
}

fn info_json(info: &ClusterInfo) -> serde_json::Value {
    let nodes: Vec<_> = info
        .nodes
        .iter()
        .map(|n| json!({"id": n.id, "addr": n.addr}))
        .collect();
    json!({"op": "info", "node": info.node, "groups": info.groups, "shards": info.shards, "nodes": nodes})
}

/// Exit status of a failed request.
const EXIT_FAILED: i32 = 1;

/// Runs `kv`. A failure is one line on stderr and exit status 1, whatever the
/// environment asks of error reports (no backtrace, causes on the same line).
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Err(e) = request(args) {
        eprintln!("error: {e:#}");
        std::process::exit(EXIT_FAILED);
    }
    Ok(())
}

fn request(args: Args) -> anyhow::Result<()> {
    let seeds = seeds(&args.cluster)?;
    // Validate the request before any connection is made.
    if let Request::Cas {
        values,
        expect_absent,
        ..
    } = &args.request
    {
        cas_values(values, *expect_absent)?;
    }
    let config = ClientConfig {
        request_timeout_ms: args.timeout_ms,
        connect_timeout_ms: args.timeout_ms.min(1_000),
        ..ClientConfig::default()
    };
    let client = KvClient::connect(&seeds, config)?;
    let (text, value) = match &args.request {
        Request::Put { key, value } => {
            client.put(key.as_bytes(), value.as_bytes())?;
            (
                "ok".to_string(),
                json!({"op": "put", "key": key, "ok": true}),
            )
        }
        Request::Get { key } => {
            let v = client.get(key.as_bytes(), args.consistency)?;
            let v = v.map(|v| String::from_utf8_lossy(&v).into_owned());
            let text = v.clone().unwrap_or_else(|| "(absent)".to_string());
            let found = v.is_some();
            (
                text,
                json!({"op": "get", "key": key, "found": found, "value": v}),
            )
        }
        Request::Del { key } => {
            client.delete(key.as_bytes())?;
            (
                "ok".to_string(),
                json!({"op": "del", "key": key, "ok": true}),
            )
        }
        Request::Cas {
            key,
            values,
            expect_absent,
        } => {
            let (expected, new) = cas_values(values, *expect_absent)?;
            let swapped =
                client.cas(key.as_bytes(), expected.map(str::as_bytes), new.as_bytes())?;
            let text = if swapped { "swapped" } else { "not swapped" };
            print(
                args.json,
                text,
                &json!({"op": "cas", "key": key, "swapped": swapped}),
            );
            if !swapped {
                drop(client);
                std::process::exit(EXIT_NOT_SWAPPED);
            }
            return Ok(());
        }
        Request::Info => {
            let info = client.info()?;
            (info_text(&info), info_json(&info))
        }
    };
    print(args.json, &text, &value);
    Ok(())
}

fn print(json: bool, text: &str, value: &serde_json::Value) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("kv").chain(line.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_go_anywhere_and_cas_takes_two_forms() {
        let a = parse(&["--cluster", "127.0.0.1:1,127.0.0.1:2", "get", "k", "--json"]).unwrap();
        assert_eq!(a.cluster.len(), 2);
        assert!(a.json);
        assert_eq!(a.consistency, Consistency::Linearizable);
        let a = parse(&["--cluster", "h:1", "get", "k", "--consistency", "stale"]).unwrap();
        assert_eq!(a.consistency, Consistency::Stale);
        assert!(parse(&["--cluster", "h:1", "get", "k", "--consistency", "eventual"]).is_err());
        assert!(parse(&["get", "k"]).is_err(), "--cluster is required");

        let cas = |line: &[&str]| match parse(line).unwrap().request {
            Request::Cas {
                values,
                expect_absent,
                ..
            } => (values, expect_absent),
            other => panic!("not a cas: {other:?}"),
        };
        let (values, absent) = cas(&["--cluster", "h:1", "cas", "k", "old", "new"]);
        assert_eq!(cas_values(&values, absent).unwrap(), (Some("old"), "new"));
        let (values, absent) = cas(&["--cluster", "h:1", "cas", "k", "--expect-absent", "new"]);
        assert_eq!(cas_values(&values, absent).unwrap(), (None, "new"));
        assert!(cas_values(&["a".into(), "b".into()], true).is_err());
        assert!(cas_values(&["a".into()], false).is_err());
    }

    #[test]
    fn addresses_resolve_or_say_what_is_wrong() {
        assert_eq!(seeds(&["127.0.0.1:7000".into()]).unwrap().len(), 1);
        assert!(seeds(&["".into()]).is_err());
        let err = seeds(&["no-port".into()]).unwrap_err();
        assert!(err.to_string().contains("host:port"), "{err}");
    }
}

//! `ringleader-tools agent` and its CLI, with real processes on loopback.
//!
//! - Five agents: `members --json` on every one lists the five alive; a `monitor` started
//!   on the first before the others join sees each of them join; `/metrics` parses as
//!   Prometheus text (with a parser, every sample line accounted for) with non-zero
//!   datagram counters and five members alive; `event deploy v1` is taken once by every
//!   agent and shown once by the monitor; `query ping --tag role=^web$` is answered by
//!   exactly the three web agents (started with `--respond ping=pong`); `keys install`,
//!   `use`, `remove` succeed on all five and `keys list` shows only the new key, with no
//!   false deaths; a sixth agent holding only the old key is refused (its join's stream
//!   counted as a bad frame), lists only itself and is listed by none; `rtt` gives an
//!   estimate; `leave` through the CLI makes an agent
//!   exit 0 and the others see it `left`; so does SIGTERM; the CLI on the agent that left
//!   exits 2 saying there is no agent and how to start one.
//! - `join` after start merges two lone agents and names a seed that did not answer (exit
//!   1 when none did).
//! - An agent stopped by SIGTERM and restarted from its `--snapshot` (mode 0600: it holds
//!   the keys) with no `--join` rejoins, and takes a new event but not the old one again.
//! - The token rule: an API bound to 127.0.0.2 (anything but 127.0.0.1 and ::1) refuses to
//!   start without --token, and with one answers 401 to requests without it or with a
//!   wrong one; the CLI passes it from --token or RINGLEADER_TOKEN; usage errors exit 2.
//!
//! Gossip binds 127.76.x.y, the APIs 127.0.0.1/127.0.0.2, on ports below the ephemeral
//! range chosen from the test's pid. Every wait is a condition under a generous deadline;
//! nothing asserts timing. A guard kills every child still running when a test ends.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const AGENTS: usize = 5;
const LIVENESS: Duration = Duration::from_secs(120);
const TOKEN: &str = "s3cret-token";
/// The key every agent starts with, and the one a rotation replaces it with (base64, as
/// `serf keygen` prints keys).
const KEY_OLD: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_NEW: &str = "AwoRGB8mLTQ7QklQV15lbHN6gYiPlp2kq7K5wMfO1dw=";

fn base() -> u16 {
    ringleader_engine::transport::port_base_below_ephemeral(32)
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ringleader-tools")
}

/// Kills (SIGKILL) and reaps every child still running when dropped.
#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    fn push(&mut self, c: Child) -> usize {
        self.0.push(c);
        self.0.len() - 1
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_agent(name: &str, gossip: &str, api: &str, join: Option<&str>, extra: &[&str]) -> Child {
    let mut cmd = Command::new(bin());
    cmd.args(["agent", "--name", name, "--bind", gossip, "--api", api])
        .args(["--config", "local"])
        .args(["--probe-interval-ms", "500", "--probe-timeout-ms", "200"])
        .args(["--push-pull-interval-ms", "3000"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(j) = join {
        cmd.args(["--join", j]);
    }
    cmd.spawn().expect("spawn agent")
}

/// Runs the CLI to its end.
fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("RINGLEADER_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run the CLI")
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `f` until it gives a value; panics with `what` after [`LIVENESS`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < LIVENESS,
            "not within {LIVENESS:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The members an agent lists through `members --json` (exit 0 required).
fn members(api: &str) -> Option<Vec<(String, String)>> {
    let o = cli(&["members", "--api", api, "--json"]);
    if !o.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&o.stdout).expect("members --json is JSON");
    let list = v["members"].as_array().expect("a members array");
    Some(
        list.iter()
            .map(|m| {
                (
                    m["name"].as_str().expect("name").to_string(),
                    m["status"].as_str().expect("status").to_string(),
                )
            })
            .collect(),
    )
}

fn exits(c: &mut Child, what: &str) -> ExitStatus {
    wait_for(what, || c.try_wait().expect("try_wait"))
}

fn sigterm(c: &Child) {
    // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is involved.
    let rc = unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill -TERM {}", c.id());
}

fn http_get(url: &str, token: Option<&str>) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.into_body().read_to_string().expect("body");
            (status, body)
        }
        Err(e) => (0, e.to_string()),
    }
}

/// An agent's `/metrics`, parsed with a Prometheus parser; every sample line must parse.
fn scrape(api: &str) -> (String, prometheus_parse::Scrape) {
    let (status, body) = http_get(&format!("http://{api}/metrics"), None);
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let sample_lines = body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "every sample line parsed:\n{body}"
    );
    (body, scrape)
}

/// The value of `metric` (with `label`, if given), if the scrape has it.
fn sample(s: &prometheus_parse::Scrape, metric: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let s = s
        .samples
        .iter()
        .find(|s| s.metric == metric && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))?;
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Some(v),
        _ => None,
    }
}

#[test]
fn five_agents_members_monitor_metrics_and_leave() {
    let port = base();
    let gossip: Vec<String> = (1..=AGENTS)
        .map(|i| format!("127.76.0.{i}:{port}"))
        .collect();
    let api: Vec<String> = (1..=AGENTS)
        .map(|i| format!("127.0.0.1:{}", port + i as u16))
        .collect();
    let name = |i: usize| format!("n{}", i + 1);
    let mut kids = Children::default();

    let role = |i: usize| if i % 2 == 0 { "role=web" } else { "role=db" };
    let mut ids = vec![kids.push(spawn_agent(
        &name(0),
        &gossip[0],
        &api[0],
        None,
        &["--tag", role(0), "--respond", "ping=pong", "--key", KEY_OLD],
    ))];
    wait_for("the first agent's API answers", || members(&api[0]));

    // A monitor on the first agent, subscribed before anyone else joins.
    let mut mon = Command::new(bin())
        .args(["monitor", "--api", &api[0], "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn monitor");
    let out = mon.stdout.take().expect("monitor stdout");
    kids.push(mon);
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            let v: Value = serde_json::from_str(&l).expect("monitor --json prints JSON lines");
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let saw = |seen: &mut Vec<Value>, what: &str, pred: &dyn Fn(&Value) -> bool| {
        wait_for(what, || {
            while let Ok(v) = rx.try_recv() {
                seen.push(v);
            }
            seen.iter().any(pred).then_some(())
        })
    };
    saw(&mut seen, "the monitor subscribed", &|v| {
        v["event"] == "subscribed" && v["name"] == "n1"
    });

    for i in 1..AGENTS {
        ids.push(kids.push(spawn_agent(
            &name(i),
            &gossip[i],
            &api[i],
            Some(&gossip[0]),
            &["--tag", role(i), "--respond", "ping=pong", "--key", KEY_OLD],
        )));
    }
    let all: BTreeSet<(String, String)> = (0..AGENTS)
        .map(|i| (name(i), "alive".to_string()))
        .collect();
    for a in &api {
        wait_for(&format!("{a} lists five alive"), || {
            let m: BTreeSet<_> = members(a)?.into_iter().collect();
            (m == all).then_some(())
        });
    }
    for i in 1..AGENTS {
        let n = name(i);
        saw(&mut seen, &format!("the monitor sees {n} join"), &|v| {
            v["event"] == "member-join" && v["name"] == n.as_str()
        });
    }

    // The table for people.
    let o = cli(&["members", "--api", &api[0]]);
    assert!(o.status.success(), "{}", show(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), AGENTS + 1, "header and five rows:\n{text}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STATUS"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("n1 ")
            && lines[1].contains("127.76.0.1:")
            && lines[1].ends_with("role=web"),
        "{text}"
    );

    // Metrics, parsed as Prometheus text, until the counters have moved.
    let (body, metrics) = wait_for("metrics with traffic, probes and five alive", || {
        let (body, m) = scrape(&api[0]);
        let moved = [
            "ringleader_udp_datagrams_received_total",
            "ringleader_udp_datagrams_sent_total",
            "ringleader_udp_received_bytes_total",
            "ringleader_swim_probes_total",
        ]
        .iter()
        .all(|name| sample(&m, name, None).is_some_and(|v| v > 0.0));
        let alive = sample(&m, "ringleader_members", Some(("status", "alive")));
        (moved && alive == Some(AGENTS as f64)).then_some((body, m))
    });
    let checksum = ("cause", "checksum");
    let dropped = sample(
        &metrics,
        "ringleader_udp_datagrams_dropped_total",
        Some(checksum),
    );
    assert_eq!(dropped, Some(0.0), "{body}");
    let joins = sample(
        &metrics,
        "ringleader_agent_events_total",
        Some(("kind", "member-join")),
    );
    assert!(joins.is_some_and(|v| v >= 4.0), "{body}");
    let types: BTreeSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .collect();
    assert!(
        types.contains("ringleader_udp_datagrams_received_total counter"),
        "{body}"
    );
    assert!(types.contains("ringleader_members gauge"), "{body}");

    // A user event: every agent takes it once, and the monitor shows it once.
    let o = cli(&["event", "deploy", "v1", "--api", &api[0]]);
    assert!(o.status.success(), "{}", show(&o));
    for a in &api {
        wait_for(&format!("{a} took the event"), || {
            let (_, m) = scrape(a);
            (sample(&m, "ringleader_agent_events_total", Some(("kind", "user")))? >= 1.0)
                .then_some(())
        });
    }
    saw(&mut seen, "the monitor sees the event", &|v| {
        v["event"] == "user" && v["name"] == "deploy" && v["payload"] == "v1"
    });
    for a in &api {
        let (_, m) = scrape(a);
        assert_eq!(
            sample(&m, "ringleader_agent_events_total", Some(("kind", "user"))),
            Some(1.0),
            "{a} took the event once"
        );
    }
    let users = seen.iter().filter(|v| v["event"] == "user").count();
    assert_eq!(users, 1, "the monitor printed the event once");

    // A query filtered by tag: answered by exactly the web agents (n1, n3, n5).
    let o = cli(&[
        "query",
        "ping",
        "--tag",
        "role=^web$",
        "--api",
        &api[1],
        "--json",
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    let from = |kind: &str| -> BTreeSet<String> {
        lines
            .iter()
            .filter(|v| v["type"] == kind)
            .map(|v| v["from"].as_str().expect("from").to_string())
            .collect()
    };
    let web: BTreeSet<String> = ["n1", "n3", "n5"].iter().map(|s| s.to_string()).collect();
    assert_eq!(from("response"), web, "{}", show(&o));
    assert!(
        lines
            .iter()
            .all(|v| v["type"] != "response" || v["payload"] == "pong")
    );
    assert_eq!(lines.last().expect("lines")["type"], "done", "{}", show(&o));

    // Key rotation across the five: install, use, remove; list shows only the new key.
    for (op, key) in [("install", KEY_NEW), ("use", KEY_NEW), ("remove", KEY_OLD)] {
        let o = cli(&["keys", op, key, "--api", &api[2], "--json"]);
        assert!(o.status.success(), "keys {op}: {}", show(&o));
        let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
        assert_eq!(v["ok"], AGENTS, "keys {op}: {v}");
    }
    let o = cli(&["keys", "list", "--api", &api[3], "--json"]);
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let keys = v["keys"].as_object().expect("keys");
    assert_eq!(keys.len(), 1, "{v}");
    assert_eq!(
        keys.get(KEY_NEW).and_then(Value::as_u64),
        Some(AGENTS as u64),
        "{v}"
    );
    // No false deaths: every agent still sees the five, none failed or left.
    for a in &api {
        let m = members(a).expect("members");
        assert_eq!(m.len(), AGENTS, "{a}: {m:?}");
        assert!(
            m.iter().all(|(_, st)| st == "alive" || st == "suspect"),
            "{a}: {m:?}"
        );
    }

    // A sixth process holding only the old key is cut off: its join's stream is refused
    // (counted as a bad frame: it does not open under the cluster's keys), nobody lists it,
    // and it lists nobody.
    let refused_before = |a: &str| {
        let (_, m) = scrape(a);
        sample(
            &m,
            "ringleader_streams_refused_total",
            Some(("cause", "bad_frame")),
        )
        .expect("a bad_frame series")
    };
    let before = refused_before(&api[0]);
    let old_gossip = format!("127.76.0.6:{port}");
    let old_api = format!("127.0.0.1:{}", port + 6);
    kids.push(spawn_agent(
        "n6",
        &old_gossip,
        &old_api,
        Some(&gossip[0]),
        &["--key", KEY_OLD],
    ));
    wait_for("n1 refuses the old-key join", || {
        (refused_before(&api[0]) > before).then_some(())
    });
    wait_for("n6 answers, alone", || {
        let m = members(&old_api)?;
        assert_eq!(m, vec![("n6".to_string(), "alive".to_string())]);
        Some(())
    });
    for a in &api {
        let m = members(a).expect("members");
        assert!(m.iter().all(|(n, _)| n != "n6"), "{a} lists n6: {m:?}");
    }

    // Coordinates: an rtt estimate once probes have carried them.
    let v = wait_for("rtt n1 n2 known", || {
        let o = cli(&["rtt", "n1", "n2", "--api", &api[0], "--json"]);
        o.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&o.stdout).expect("JSON"))
    });
    assert!(v["rtt_ms"].as_f64().expect("rtt_ms") >= 0.0, "{v}");

    // Leave through the CLI: the agent exits 0, the others see it left.
    let o = cli(&["leave", "--api", &api[4]]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("agent n5 left"),
        "{}",
        show(&o)
    );
    let st = exits(&mut kids.0[ids[4]], "n5 exits after leave");
    assert!(st.success(), "n5 exited with {st:?}");
    for a in &api[..4] {
        wait_for(&format!("{a} sees n5 left"), || {
            members(a)?
                .contains(&("n5".into(), "left".into()))
                .then_some(())
        });
    }
    saw(&mut seen, "the monitor sees n5 leave", &|v| {
        v["event"] == "member-leave" && v["name"] == "n5"
    });

    // SIGTERM: the same graceful leave.
    sigterm(&kids.0[ids[3]]);
    let st = exits(&mut kids.0[ids[3]], "n4 exits on SIGTERM");
    assert!(st.success(), "n4 exited with {st:?}");
    for a in &api[..3] {
        wait_for(&format!("{a} sees n4 left"), || {
            members(a)?
                .contains(&("n4".into(), "left".into()))
                .then_some(())
        });
    }

    // No agent there any more: exit 2, and what to do.
    for args in [
        vec!["members", "--api", &api[4]],
        vec!["monitor", "--api", &api[4], "--json"],
        vec!["leave", "--api", &api[4]],
    ] {
        let o = cli(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", show(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("no agent at {}", api[4])),
            "{args:?}: {err}"
        );
        assert!(
            err.contains("start one with `ringleader-tools agent"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn an_api_off_127_0_0_1_needs_a_token() {
    let port = base() + 10;
    let gossip = format!("127.76.1.1:{port}");
    let api = format!("127.0.0.2:{}", port + 1);
    let mut kids = Children::default();

    // No token: refused at start, saying what to do.
    let o = Command::new(bin())
        .args(["agent", "--name", "t1", "--bind", &gossip, "--api", &api])
        .output()
        .expect("run agent");
    assert!(!o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pass --token"),
        "{}",
        show(&o)
    );

    let i = kids.push(spawn_agent("t1", &gossip, &api, None, &["--token", TOKEN]));
    let url = format!("http://{api}/v1/members");
    wait_for("the agent answers with the token", || {
        (http_get(&url, Some(TOKEN)).0 == 200).then_some(())
    });

    for (what, token) in [("no token", None), ("a wrong token", Some("nope"))] {
        for path in ["/v1/members", "/metrics", "/v1/monitor"] {
            let (status, body) = http_get(&format!("http://{api}{path}"), token);
            assert_eq!(status, 401, "{what} on {path}: {body}");
            let v: Value = serde_json::from_str(&body).expect("a JSON error");
            assert_eq!(v["code"], "unauthorized", "{body}");
        }
    }
    let (status, body) = http_get(&format!("http://{api}/metrics"), Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("ringleader_agent_unauthorized_total 6"),
        "{body}"
    );

    // The CLI: without the token a usage error (2); with it, from the flag or the
    // environment, the answer.
    let o = cli(&["members", "--api", &api]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Bearer"),
        "{}",
        show(&o)
    );
    let o = cli(&["members", "--api", &api, "--token", TOKEN, "--json"]);
    assert!(o.status.success(), "{}", show(&o));
    let o = Command::new(bin())
        .args(["members", "--api", &api, "--json"])
        .env("RINGLEADER_TOKEN", TOKEN)
        .output()
        .expect("run the CLI");
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v["members"][0]["name"], "t1");

    // Usage errors exit 2 before or at the agent.
    let o = cli(&[
        "keys",
        "install",
        "not-a-key",
        "--api",
        &api,
        "--token",
        TOKEN,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("64 hex digits"),
        "{}",
        show(&o)
    );
    let (status, body) = http_get(&format!("http://{api}/v1/nowhere"), Some(TOKEN));
    assert_eq!(status, 404, "{body}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent
        .post(&format!("http://{api}/v1/event"))
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .send("{\"name\": 5")
        .expect("an answer");
    assert_eq!(r.status().as_u16(), 400);
    let v: Value =
        serde_json::from_str(&r.into_body().read_to_string().expect("body")).expect("JSON");
    assert_eq!(v["code"], "bad_request", "{v}");
    assert!(
        v["error"].as_str().expect("message").starts_with("body: "),
        "{v}"
    );

    sigterm(&kids.0[i]);
    let st = exits(&mut kids.0[i], "t1 exits on SIGTERM");
    assert!(st.success(), "t1 exited with {st:?}");
}

#[test]
fn join_after_start_merges_two_clusters_and_a_dead_seed_fails() {
    let port = base() + 20;
    let gossip = [format!("127.76.2.1:{port}"), format!("127.76.2.2:{port}")];
    let api = [
        format!("127.0.0.1:{}", port + 1),
        format!("127.0.0.1:{}", port + 2),
    ];
    let mut kids = Children::default();
    // Two clusters of one, each unaware of the other.
    for (i, n) in ["j1", "j2"].iter().enumerate() {
        kids.push(spawn_agent(n, &gossip[i], &api[i], None, &[]));
        wait_for("a lone agent answers", || members(&api[i]));
    }
    assert_eq!(members(&api[0]).unwrap().len(), 1);

    // A seed where nothing listens: exit 1, the seed named, the agent still serving.
    let dead = format!("127.76.2.9:{port}");
    let o = cli(&["join", "--api", &api[0], &dead]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&dead),
        "{}",
        show(&o)
    );
    assert_eq!(members(&api[0]).unwrap().len(), 1);

    // The live seed and the dead one: joined through one, the dead one named.
    let o = cli(&["join", "--api", &api[0], "--json", &gossip[1], &dead]);
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("join --json is JSON");
    assert_eq!(v["joined"], 1, "{v}");
    assert_eq!(v["failed"], serde_json::json!([dead]), "{v}");

    // Both sides see both, alive.
    for a in &api {
        wait_for("both agents list both members alive", || {
            let ms = members(a)?;
            (ms.len() == 2 && ms.iter().all(|(_, s)| s == "alive")).then_some(())
        });
    }
}

#[test]
fn an_agent_restarted_from_its_snapshot_rejoins_without_replaying_events() {
    let port = base() + 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("s2.snapshot");
    let snap_arg = snap.to_str().expect("a UTF-8 path");
    let gossip = [format!("127.76.3.1:{port}"), format!("127.76.3.2:{port}")];
    let api = [
        format!("127.0.0.1:{}", port + 1),
        format!("127.0.0.1:{}", port + 2),
    ];
    let user_events = |a: &str| {
        let (_, m) = scrape(a);
        sample(&m, "ringleader_agent_events_total", Some(("kind", "user")))
    };
    let mut kids = Children::default();
    kids.push(spawn_agent(
        "s1",
        &gossip[0],
        &api[0],
        None,
        &["--key", KEY_OLD],
    ));
    wait_for("s1 answers", || members(&api[0]));
    let s2 = kids.push(spawn_agent(
        "s2",
        &gossip[1],
        &api[1],
        Some(&gossip[0]),
        &["--snapshot", snap_arg, "--key", KEY_OLD],
    ));
    wait_for("s1 lists s2 alive", || {
        members(&api[0])?
            .contains(&("s2".into(), "alive".into()))
            .then_some(())
    });
    let o = cli(&["event", "old", "x", "--api", &api[0]]);
    assert!(o.status.success(), "{}", show(&o));
    wait_for("s2 took the old event", || {
        (user_events(&api[1])? >= 1.0).then_some(())
    });

    // SIGTERM: a graceful leave, which writes the snapshot last.
    sigterm(&kids.0[s2]);
    let st = exits(&mut kids.0[s2], "s2 exits on SIGTERM");
    assert!(st.success(), "s2 exited with {st:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&snap)
            .expect("the snapshot exists")
            .permissions(),
    );
    assert_eq!(
        mode & 0o777,
        0o600,
        "the snapshot holds the keys: the owner's only"
    );

    // Restarted with no --join: it rejoins through the snapshot's members.
    kids.push(spawn_agent(
        "s2",
        &gossip[1],
        &api[1],
        None,
        &["--snapshot", snap_arg, "--key", KEY_OLD],
    ));
    for a in &api {
        wait_for(&format!("{a} lists both alive after the restart"), || {
            let m = members(a)?;
            (m.len() == 2 && m.iter().all(|(_, s)| s == "alive")).then_some(())
        });
    }
    // A new event reaches it; the old one never comes back.
    let o = cli(&["event", "new", "y", "--api", &api[0]]);
    assert!(o.status.success(), "{}", show(&o));
    wait_for("s2 took the new event", || {
        (user_events(&api[1])? >= 1.0).then_some(())
    });
    assert_eq!(
        user_events(&api[1]),
        Some(1.0),
        "the restarted agent took the new event only"
    );
}

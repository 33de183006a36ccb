//! Serf on live nodes: several [`Node`]s in one process on loopback, each on its own shard
//! and sockets, with the Serf layer. User events exactly once, tag-filtered queries answered
//! by exactly the matching nodes, tags changed at run time, coordinates, force-leave, key
//! rotation that cuts off a member holding only the old key, snapshot restarts without
//! replay, and damaged files refused.
//!
//! Every wait is a condition awaited under a generous deadline; nothing asserts timing.
//! Nodes bind 127.<base>.0.<i> on a per-process port, each test its own base.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringleader_engine::host::{
    Event, HostError, HostEvent, MemberStatus, Node, QueryParams, SerfOptions, serf,
};
use ringleader_engine::swim::Config;

const LIVENESS: Duration = Duration::from_secs(120);

/// The `local` preset, faster on loopback, with suspicion slow enough that a crashed
/// member is still probed (as suspect) for a while.
fn fast() -> Config {
    Config {
        probe_interval_ms: 500,
        probe_timeout_ms: 200,
        push_pull_interval_ms: 3_000,
        user_retransmit_mult: 12,
        ..Config::local()
    }
}

fn port() -> u16 {
    ringleader_engine::transport::port_base_below_ephemeral(16)
}

fn addr(base: u8, i: usize) -> SocketAddr {
    SocketAddr::from(([127, base, 0, 1 + i as u8], port()))
}

fn tags(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Spec<'a> {
    name: String,
    bind: SocketAddr,
    seeds: Vec<SocketAddr>,
    tags: BTreeMap<String, String>,
    keys: Vec<[u8; 32]>,
    dir: Option<&'a Path>,
    swim: Config,
}

fn spec(base: u8, i: usize, seeds: Vec<SocketAddr>) -> Spec<'static> {
    Spec {
        name: format!("n{i}"),
        bind: addr(base, i),
        seeds,
        tags: BTreeMap::new(),
        keys: Vec::new(),
        dir: None,
        swim: fast(),
    }
}

fn start(s: Spec<'_>) -> Result<Node, HostError> {
    let opts = SerfOptions {
        tags: s.tags,
        snapshot_path: s.dir.map(|d| d.join(format!("{}.snapshot", s.name))),
        keyring_path: s.dir.map(|d| d.join(format!("{}.keyring", s.name))),
        snapshot_interval_ms: 200,
        ..SerfOptions::default()
    };
    Node::builder(&s.name)
        .bind(s.bind)
        .seeds(s.seeds)
        .config(s.swim)
        .keys(s.keys)
        .serf_options(opts)
        .start()
}

/// Reads a node's events on a thread of its own: keeps them, and answers every query
/// with the node's name.
struct Pump {
    seen: Arc<Mutex<Vec<HostEvent>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Pump {
    fn new(node: &Node) -> Pump {
        let rx = node.events().clone();
        let name = node.name().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok(e) = rx.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                if let Event::Query(q) = &e.event {
                    // Too late or the node stopped: the query just goes unanswered.
                    let _ = q.respond(name.clone().into_bytes());
                }
                s.lock().expect("lock").push(e);
            }
        });
        Pump {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// User events seen, by name, with how many times each.
    fn user_events(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for e in self.seen.lock().expect("lock").iter() {
            if let Event::User { name, .. } = &e.event {
                *m.entry(name.clone()).or_insert(0) += 1;
            }
        }
        m
    }

    fn downs(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|e| match &e.event {
                Event::Down { member, .. } => Some(member.name.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < LIVENESS,
            "not within {LIVENESS:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive_seen(node: &Node) -> BTreeSet<String> {
    node.members()
        .expect("members")
        .into_iter()
        .filter(|m| m.status == MemberStatus::Alive)
        .map(|m| m.name)
        .collect()
}

fn wait_all_alive(nodes: &[&Node]) {
    let want: BTreeSet<String> = nodes.iter().map(|n| n.name().to_string()).collect();
    for n in nodes {
        wait_for(&format!("{} sees {want:?} alive", n.name()), || {
            alive_seen(n) == want
        });
    }
}

#[test]
fn events_queries_tags_coordinates_and_force_leave_on_five_nodes() {
    let base = 81;
    let seed = addr(base, 0);
    let roles = ["web", "db", "web", "db", "web"];
    let nodes: Vec<Node> = (0..5)
        .map(|i| {
            let mut s = spec(base, i, if i == 0 { vec![] } else { vec![seed] });
            s.tags = tags(&[("role", roles[i])]);
            start(s).expect("node starts")
        })
        .collect();
    let pumps: Vec<Pump> = nodes.iter().map(Pump::new).collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_all_alive(&refs);

    // Tags are visible everywhere, decoded.
    wait_for("n0 sees n1's tags", || {
        nodes[0]
            .members()
            .expect("members")
            .iter()
            .any(|m| m.name == "n1" && m.tags.get("role").map(String::as_str) == Some("db"))
    });

    // Ten user events from different nodes reach every node exactly once.
    let events: Vec<String> = (0..10).map(|k| format!("deploy-{k}")).collect();
    for (k, e) in events.iter().enumerate() {
        nodes[k % 5]
            .user_event(e, format!("v{k}").into_bytes(), false)
            .expect("event fires");
    }
    for p in &pumps {
        wait_for("every node sees all ten events", || {
            p.user_events().len() == events.len()
        });
    }

    // A query filtered by tag is answered by exactly the matching nodes.
    let params = QueryParams {
        filter_tags: vec![("role".into(), "^web$".into())],
        request_ack: true,
        timeout: Some(Duration::from_secs(3)),
        ..QueryParams::default()
    };
    let (responses, acks) = nodes[1]
        .query("who", b"?".to_vec(), params.clone())
        .expect("query issued")
        .collect_all();
    let responders: BTreeSet<String> = responses
        .iter()
        .map(|(from, payload)| {
            assert_eq!(from.as_bytes(), &payload[..], "each answers with its name");
            from.clone()
        })
        .collect();
    let web: BTreeSet<String> = ["n0", "n2", "n4"].iter().map(|s| s.to_string()).collect();
    assert_eq!(responders, web, "exactly the web nodes answer");
    assert_eq!(responses.len(), 3, "once each");
    assert_eq!(acks.into_iter().collect::<BTreeSet<_>>(), web);

    // A name filter too, and the Serf layer's refusals come back as errors.
    let (responses, _) = nodes[0]
        .query(
            "who",
            Vec::new(),
            QueryParams {
                filter_nodes: vec!["n3".into()],
                timeout: Some(Duration::from_secs(3)),
                ..QueryParams::default()
            },
        )
        .expect("query issued")
        .collect_all();
    assert_eq!(responses, vec![("n3".to_string(), b"n3".to_vec())]);
    let e = nodes[0]
        .user_event("_serf_x", Vec::new(), false)
        .expect_err("reserved");
    assert!(e.to_string().contains("reserved"), "{e}");
    let e = nodes[0]
        .user_event("big", vec![0; 4096], false)
        .expect_err("too large");
    assert!(e.to_string().contains("event_bytes_max"), "{e}");

    // Tags changed at run time are seen elsewhere and change who answers.
    nodes[3]
        .set_tags(tags(&[("role", "web")]))
        .expect("tags set");
    wait_for("n1 sees n3 as web", || {
        nodes[1]
            .members()
            .expect("members")
            .iter()
            .any(|m| m.name == "n3" && m.tags.get("role").map(String::as_str) == Some("web"))
    });
    let (responses, _) = nodes[1]
        .query("who", Vec::new(), params)
        .expect("query issued")
        .collect_all();
    let responders: BTreeSet<String> = responses.into_iter().map(|(f, _)| f).collect();
    assert!(responders.contains("n3"), "n3 answers now: {responders:?}");

    // Coordinates: our own at once, a peer's after its acks, and an RTT between them.
    assert!(nodes[0].coordinate().expect("coordinate").is_some());
    wait_for("n0 knows n1's coordinate", || {
        nodes[0].coordinate_of("n1").expect("coordinate").is_some()
    });
    let rtt = nodes[0].rtt("n0", "n1").expect("rtt").expect("both known");
    assert!(
        rtt < Duration::from_secs(1),
        "a loopback RTT estimate: {rtt:?}"
    );
    assert!(nodes[0].rtt("n0", "nobody").expect("rtt").is_none());

    // Force-leave: refused for a live member, then n4 crashes, is seen failed and is
    // forced out: everyone reports it left.
    let e = nodes[0].force_leave("n1").expect_err("n1 is alive");
    assert!(e.to_string().contains("has not failed"), "{e}");
    let mut nodes = nodes;
    let mut pumps = pumps;
    drop(pumps.pop());
    nodes.pop().expect("n4").shutdown().expect("n4 stops");
    let status_of = |n: &Node, who: &str| {
        n.members()
            .expect("members")
            .into_iter()
            .find(|m| m.name == who)
            .map(|m| m.status)
    };
    wait_for("n0 sees n4 failed", || {
        status_of(&nodes[0], "n4") == Some(MemberStatus::Failed)
    });
    nodes[0].force_leave("n4").expect("force-leave");
    for n in &nodes {
        wait_for(&format!("{} sees n4 left", n.name()), || {
            status_of(n, "n4") == Some(MemberStatus::Left)
        });
    }

    // Exactly once, still: no event was delivered again while all of the above ran, and
    // every live node's Serf layer counted ten deliveries.
    for (p, n) in pumps.iter().zip(&nodes) {
        let seen = p.user_events();
        assert!(
            seen.values().all(|&c| c == 1),
            "{}: an event delivered twice: {seen:?}",
            n.name()
        );
        assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), {
            let mut e = events.clone();
            e.sort();
            e
        });
        let c = n.census(4).expect("census");
        let delivered: u64 = c.shards.iter().map(|s| s.serf.events_delivered).sum();
        assert_eq!(delivered, 10, "{}: Serf's own count", n.name());
        assert!(p.downs().iter().all(|d| d == "n4"), "no false deaths");
    }
}

#[test]
fn key_rotation_cuts_off_a_member_holding_only_the_old_key() {
    let base = 82;
    let dir = tempfile::tempdir().expect("tempdir");
    let (k1, k2) = ([1u8; 32], [2u8; 32]);
    let seed = addr(base, 0);
    // Suspicion slow enough that the crashed n4 is still probed when it comes back.
    let swim = Config {
        suspicion_mult: 60,
        ..fast()
    };
    let mk = |i: usize| {
        let mut s = spec(base, i, if i == 0 { vec![] } else { vec![seed] });
        s.keys = vec![k1];
        s.dir = Some(dir.path());
        s.swim = swim.clone();
        start(s)
    };
    let mut nodes: Vec<Node> = (0..5).map(|i| mk(i).expect("node starts")).collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_all_alive(&refs);
    let n4_snapshot = dir.path().join("n4.snapshot");
    wait_for("n4 has written a snapshot", || n4_snapshot.exists());
    nodes.pop().expect("n4").shutdown().expect("n4 crashes");
    let pumps: Vec<Pump> = nodes.iter().map(Pump::new).collect();

    // Rotation across the four that run; n4 is still believed alive, so it is named as
    // the member that did not answer.
    let r = nodes[0].install_key(k2).expect("install");
    assert_eq!(r.ok, 4, "{}", r.summary());
    assert!(r.failed.is_empty(), "{}", r.summary());
    let r = nodes[1].use_key(k2).expect("use");
    assert_eq!(r.ok, 4, "{}", r.summary());
    let r = nodes[2].remove_key(k1).expect("remove");
    assert_eq!(r.ok, 4, "{}", r.summary());
    let r = nodes[3].list_keys().expect("list");
    let k2_text = serf::encode_key(&k2);
    assert_eq!(r.ok, 4, "{}", r.summary());
    assert_eq!(
        r.keys.into_iter().collect::<Vec<_>>(),
        vec![(k2_text.clone(), 4)],
        "only the new key, on all four"
    );
    // Removing the primary is refused by every member, with the reason.
    let r = nodes[0].remove_key(k2).expect("remove primary");
    assert_eq!(r.ok, 0);
    assert!(r.failed.len() >= 4, "{}", r.summary());
    assert!(!r.succeeded());
    // The keyring files followed the rotation.
    for i in 0..4 {
        let file = dir.path().join(format!("n{i}.keyring"));
        wait_for("keyring file rewritten", || {
            serf::read_keyring_file(&file).expect("reads") == Some(vec![k2])
        });
    }

    // n4 comes back from its snapshot and keyring file: it holds only the old key.
    let n4 = mk(4).expect("n4 restarts");
    let census_bad = |n: &Node| {
        let c = n.census(4).expect("census");
        let streams_bad: u64 = c.shards.iter().map(|s| s.streams_bad_frame).sum();
        (c.dropped("no_key"), streams_bad)
    };
    wait_for("the cluster refuses n4's streams (bad frame)", || {
        nodes.iter().map(|n| census_bad(n).1).sum::<u64>() > 0
    });
    wait_for("n4 refuses the cluster's datagrams (no key)", || {
        census_bad(&n4).0 > 0
    });
    let n4_alive = alive_seen(&n4);
    assert_eq!(
        n4_alive,
        ["n4".to_string()].into_iter().collect(),
        "n4 hears no one"
    );
    // The four keep running with no false deaths, and still talk: an event reaches all.
    nodes[0]
        .user_event("after-rotation", Vec::new(), false)
        .expect("event");
    for p in &pumps {
        wait_for("the event reaches the four", || {
            p.user_events().contains_key("after-rotation")
        });
        assert!(p.downs().iter().all(|d| d == "n4"), "no false deaths");
    }
    for n in &nodes {
        let alive = alive_seen(n);
        for i in 0..4 {
            assert!(alive.contains(&format!("n{i}")), "{}: {alive:?}", n.name());
        }
    }
    // Still nothing reached n4: no member, no event.
    assert_eq!(alive_seen(&n4).len(), 1, "n4 still hears no one");
    let c = n4.census(1).expect("census");
    let delivered: u64 = c.shards.iter().map(|s| s.serf.events_delivered).sum();
    assert_eq!(delivered, 0, "no event reached n4");
    n4.shutdown().expect("n4 stops");
}

#[test]
fn a_snapshot_restart_rejoins_without_replaying_events() {
    let base = 83;
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = addr(base, 0);
    let mk = |i: usize, seeds: Vec<SocketAddr>| {
        let mut s = spec(base, i, seeds);
        s.dir = Some(dir.path());
        start(s)
    };
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| mk(i, if i == 0 { vec![] } else { vec![seed] }).expect("node starts"))
        .collect();
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_all_alive(&refs);
    let p2 = Pump::new(&nodes[2]);
    for k in 0..3 {
        nodes[0]
            .user_event(&format!("old-{k}"), Vec::new(), false)
            .expect("event");
    }
    wait_for("n2 sees the three old events", || {
        p2.user_events().len() == 3
    });
    drop(p2);
    // Leave writes the last snapshot before it returns.
    nodes.pop().expect("n2").leave().expect("n2 leaves");
    let snap = dir.path().join("n2.snapshot");
    let state = ringleader_serf::snapshot::read(&snap)
        .expect("snapshot reads")
        .expect("snapshot exists");
    assert!(state.event_clock >= 3, "the clocks are kept: {state:?}");
    assert_eq!(state.members.len(), 2, "n0 and n1 are remembered");

    // Restarted with no seeds: it rejoins through its snapshot, and does not replay.
    let n2 = mk(2, Vec::new()).expect("n2 restarts");
    let p2 = Pump::new(&n2);
    let all: Vec<&Node> = nodes.iter().chain(std::iter::once(&n2)).collect();
    wait_all_alive(&all);
    nodes[1]
        .user_event("new-0", Vec::new(), false)
        .expect("event");
    wait_for("n2 sees the new event", || {
        p2.user_events().contains_key("new-0")
    });
    let seen = p2.user_events();
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["new-0".to_string()],
        "nothing old replayed"
    );
    let c = n2.census(3).expect("census");
    let delivered: u64 = c.shards.iter().map(|s| s.serf.events_delivered).sum();
    assert_eq!(delivered, 1);
    drop(p2);
    n2.shutdown().expect("stop");
}

#[test]
fn damaged_snapshot_and_keyring_files_are_refused_naming_the_file() {
    let base = 84;
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("n0.snapshot");
    let ring = dir.path().join("n0.keyring");
    let mk = || {
        let mut s = spec(base, 0, Vec::new());
        s.dir = Some(dir.path());
        s.keys = vec![[7; 32]];
        start(s)
    };
    // A good start writes the keyring file (mode 0600) from the configured keys.
    let n = mk().expect("starts");
    n.leave().expect("leaves");
    use std::os::unix::fs::PermissionsExt;
    for p in [&snap, &ring] {
        let mode = std::fs::metadata(p).expect("written").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} holds keys", p.display());
    }
    let good_snap = std::fs::read(&snap).expect("read");

    std::fs::write(&ring, b"[\"not a key\"]").expect("write");
    let e = mk().err().expect("a damaged keyring file is refused");
    assert!(matches!(e, HostError::Keyring { .. }), "{e}");
    assert!(e.to_string().contains("n0.keyring"), "{e}");
    std::fs::write(&ring, b"[]").expect("write");
    assert!(mk().is_err(), "an empty keyring file is refused");
    std::fs::remove_file(&ring).expect("rm");

    let mut bad = good_snap.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&snap, &bad).expect("write");
    let e = mk().err().expect("a damaged snapshot is refused");
    assert!(matches!(e, HostError::Snapshot { .. }), "{e}");
    assert!(e.to_string().contains("n0.snapshot"), "{e}");
    std::fs::write(&snap, b"").expect("write");
    assert!(mk().is_err(), "an empty snapshot is refused");

    // Back to the good file: it starts.
    std::fs::write(&snap, &good_snap).expect("write");
    mk().expect("starts again").shutdown().expect("stops");
}

#[test]
fn a_late_join_merges_two_nodes_without_replaying_the_past() {
    let base = 85;
    let n0 = start(spec(base, 0, Vec::new())).expect("n0 starts");
    let n1 = start(spec(base, 1, Vec::new())).expect("n1 starts");
    let (p0, p1) = (Pump::new(&n0), Pump::new(&n1));
    n0.user_event("before", Vec::new(), false).expect("event");
    wait_for("n0 delivers its own event", || {
        p0.user_events().contains_key("before")
    });
    n1.join(vec![n0.addr()]).expect("join starts");
    wait_all_alive(&[&n0, &n1]);
    n0.user_event("after", Vec::new(), false).expect("event");
    wait_for("n1 sees the event fired after the join", || {
        p1.user_events().contains_key("after")
    });
    assert_eq!(
        p1.user_events().keys().cloned().collect::<Vec<_>>(),
        vec!["after".to_string()],
        "the event from before the join is not replayed"
    );
    let e = n1.join(Vec::new());
    assert!(e.is_ok(), "an empty join is a no-op: {e:?}");
    drop((p0, p1));
    n0.shutdown().expect("stop");
    n1.shutdown().expect("stop");
}

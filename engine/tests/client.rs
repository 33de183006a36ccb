//! The key-value client against a fake cluster written here: std TCP, the same framing,
//! a map for state and switches for misbehaviour (no leader, wrong shard view, held or
//! withheld answers, garbage, dropped connections).
//!
//! No timing assertions: every wait is for a condition, bounded only so that a broken
//! build fails instead of hanging.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io::Write as _;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringleader_engine::client::{
    ClientConfig, ClientError, FrameReader, KvClient, Reply, Unavailable, client_encoder,
    pack_frames,
};
use ringleader_wire::msg::client::{
    ClientOp, ClientRequest, ClientResponse, ClientResult, ClusterInfo, Consistency, ErrorCode,
    NodeAddr, group_of_key, shard_of_group,
};
use ringleader_wire::msg::swim::Nack;
use ringleader_wire::{Encoder, MessageRef, WireMessage};

const WAIT_MAX: Duration = Duration::from_secs(20);

/// The descriptor test counts the whole process's descriptors: it runs alone.
static SERIAL: RwLock<()> = RwLock::new(());

fn shared_run() -> std::sync::RwLockReadGuard<'static, ()> {
    SERIAL.read().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `cond` holds; panics with `what` after [`WAIT_MAX`].
fn await_cond(what: &str, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + WAIT_MAX;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What a fake node saw and answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    node: u64,
    shard: u32,
    op: &'static str,
    key: Vec<u8>,
    answer: &'static str,
}

/// The fake cluster's state and switches.
#[derive(Default)]
struct World {
    groups: u64,
    shards: u32,
    /// Shards that `Info` reports, if not the real count (a stale shape).
    info_shards: Option<u32>,
    nodes: Vec<(u64, SocketAddr)>,
    /// Group -> leader; no entry: an election is running (`Unavailable`).
    leaders: HashMap<u64, u64>,
    /// Whether `NotLeader` names the leader.
    hints: bool,
    kv: HashMap<Vec<u8>, Vec<u8>>,
    /// Answers held on a connection until this many are ready (then sent in reverse).
    hold: usize,
    /// Never answer.
    silent: bool,
    /// Each request takes one while there are any: its answer is these bytes instead.
    garbage: VecDeque<Vec<u8>>,
    /// This many requests are answered by closing their connection.
    close_next: usize,
    seen: Vec<Seen>,
    accepted: usize,
    /// Most answers held at once on one connection (requests in flight together).
    held_max: usize,
}

enum Action {
    Answer(ClientResult),
    Garbage(Vec<u8>),
    Silent,
    Close,
}

impl World {
    fn addr_of(&self, node: u64) -> String {
        self.nodes
            .iter()
            .find(|n| n.0 == node)
            .map(|n| n.1.to_string())
            .unwrap_or_default()
    }

    fn handle(&mut self, node: u64, shard: u32, req: &ClientRequest) -> Action {
        let key = req.op.key().unwrap_or_default().to_vec();
        let op = req.op.name();
        if self.close_next > 0 {
            self.close_next -= 1;
            self.seen.push(Seen {
                node,
                shard,
                op,
                key,
                answer: "close",
            });
            return Action::Close;
        }
        if let Some(bytes) = self.garbage.pop_front() {
            self.seen.push(Seen {
                node,
                shard,
                op,
                key,
                answer: "garbage",
            });
            return Action::Garbage(bytes);
        }
        if self.silent {
            self.seen.push(Seen {
                node,
                shard,
                op,
                key,
                answer: "silent",
            });
            return Action::Silent;
        }
        let result = self.answer(node, shard, &req.op);
        let answer = match &result {
            ClientResult::NotLeader { .. } => "not_leader",
            ClientResult::Error { code, .. } => match code {
                ErrorCode::Unavailable => "unavailable",
                ErrorCode::WrongShard => "wrong_shard",
                _ => "error",
            },
            _ => "ok",
        };
        self.seen.push(Seen {
            node,
            shard,
            op,
            key,
            answer,
        });
        Action::Answer(result)
    }

    fn answer(&mut self, node: u64, shard: u32, op: &ClientOp) -> ClientResult {
        let Some(key) = op.key() else {
            return ClientResult::Info(ClusterInfo {
                node,
                groups: self.groups,
                shards: self.info_shards.unwrap_or(self.shards),
                nodes: self
                    .nodes
                    .iter()
                    .map(|&(id, a)| NodeAddr {
                        id,
                        addr: a.to_string(),
                    })
                    .collect(),
            });
        };
        let group = group_of_key(key, self.groups);
        if shard_of_group(group, self.shards) != shard {
            return error(ErrorCode::WrongShard, "not this shard's group");
        }
        if let ClientOp::Get {
            key,
            consistency: Consistency::Stale,
        } = op
        {
            return ClientResult::Value(self.kv.get(key).cloned());
        }
        match self.leaders.get(&group) {
            None => return error(ErrorCode::Unavailable, "election running"),
            Some(&l) if l != node => {
                let (leader, leader_addr) = if self.hints {
                    (l, self.addr_of(l))
                } else {
                    (0, String::new())
                };
                return ClientResult::NotLeader {
                    group,
                    leader,
                    leader_addr,
                };
            }
            Some(_) => {}
        }
        match op {
            ClientOp::Put { key, value } => {
                self.kv.insert(key.clone(), value.clone());
                ClientResult::Done
            }
            ClientOp::Delete { key } => {
                self.kv.remove(key);
                ClientResult::Done
            }
            ClientOp::Get { key, .. } => ClientResult::Value(self.kv.get(key).cloned()),
            ClientOp::Cas { key, expected, new } => {
                let swapped = self.kv.get(key) == expected.as_ref();
                if swapped {
                    self.kv.insert(key.clone(), new.clone());
                }
                ClientResult::Cas { swapped }
            }
            ClientOp::Info => unreachable!("handled above"),
        }
    }

    fn count(&self, pred: impl Fn(&Seen) -> bool) -> usize {
        self.seen.iter().filter(|s| pred(s)).count()
    }
}

fn error(code: ErrorCode, message: &str) -> ClientResult {
    ClientResult::Error {
        code,
        message: message.to_string(),
    }
}

/// A fake cluster of `nodes` nodes with `shards` listeners each, on loopback.
struct Fake {
    world: Arc<Mutex<World>>,
    stop: Arc<AtomicBool>,
    listeners: Vec<SocketAddr>,
    /// Open connections (a handle each, to shut them down), by accept order.
    streams: Arc<Mutex<HashMap<usize, TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn lock(w: &Mutex<World>) -> MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// Binds `shards` consecutive ports (a node's base port + shard).
fn bind_node(shards: u32) -> Vec<TcpListener> {
    for _ in 0..100 {
        let Ok(first) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let base = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for s in 1..shards {
            let Some(port) = base.checked_add(s as u16) else {
                break;
            };
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == shards as usize {
            return all;
        }
    }
    panic!("no {shards} consecutive free ports on 127.0.0.1");
}

impl Fake {
    fn start(nodes: u64, groups: u64, shards: u32) -> Fake {
        let world = Arc::new(Mutex::new(World {
            groups,
            shards,
            hints: true,
            hold: 1,
            ..World::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(HashMap::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let mut listeners = Vec::new();
        for node in 1..=nodes {
            let ls = bind_node(shards);
            let base = ls[0].local_addr().unwrap();
            lock(&world).nodes.push((node, base));
            for (shard, l) in ls.into_iter().enumerate() {
                listeners.push(l.local_addr().unwrap());
                let (world, stop, streams, conns) = (
                    world.clone(),
                    stop.clone(),
                    streams.clone(),
                    threads.clone(),
                );
                let t = std::thread::spawn(move || {
                    for s in l.incoming() {
                        if stop.load(Ordering::Acquire) {
                            return;
                        }
                        let Ok(s) = s else { continue };
                        let id = {
                            let mut w = lock(&world);
                            w.accepted += 1;
                            w.accepted
                        };
                        streams.lock().unwrap().insert(id, s.try_clone().unwrap());
                        let (world, streams) = (world.clone(), streams.clone());
                        let t = std::thread::spawn(move || {
                            serve(world, node, shard as u32, s);
                            streams.lock().unwrap().remove(&id);
                        });
                        conns.lock().unwrap().push(t);
                    }
                });
                threads.lock().unwrap().push(t);
            }
        }
        Fake {
            world,
            stop,
            listeners,
            streams,
            threads,
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    /// Connections open on the fake's side.
    fn open(&self) -> usize {
        self.streams.lock().unwrap().len()
    }

    fn seeds(&self) -> Vec<SocketAddr> {
        self.world().nodes.iter().map(|n| n.1).collect()
    }

    /// Every group led by node `(g - 1) % nodes + 1`.
    fn spread_leaders(&self) {
        let mut w = self.world();
        let n = w.nodes.len() as u64;
        for g in 1..=w.groups {
            w.leaders.insert(g, (g - 1) % n + 1);
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for a in &self.listeners {
            let _ = TcpStream::connect(a);
        }
        for (_, s) in self.streams.lock().unwrap().drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        loop {
            let ts: Vec<_> = self.threads.lock().unwrap().drain(..).collect();
            if ts.is_empty() {
                break;
            }
            for t in ts {
                let _ = t.join();
            }
        }
    }
}

/// One connection of a fake node: answers (or misbehaves) until the client goes.
fn serve(world: Arc<Mutex<World>>, node: u64, shard: u32, mut stream: TcpStream) {
    let mut reader = FrameReader::new();
    let mut enc = client_encoder();
    let mut held: Vec<ClientResponse> = Vec::new();
    loop {
        let reqs: Vec<ClientRequest> = match reader.read(&mut stream) {
            Ok(Some(frame)) => frame
                .messages()
                .map(|m| match m.expect("the client sends valid frames") {
                    MessageRef::ClientRequest(r) => {
                        <ClientRequest as WireMessage>::to_owned(r).unwrap()
                    }
                    other => panic!("the client sent a {:?}", other.kind()),
                })
                .collect(),
            _ => return,
        };
        for req in reqs {
            match lock(&world).handle(node, shard, &req) {
                Action::Answer(result) => held.push(ClientResponse { id: req.id, result }),
                Action::Garbage(bytes) => {
                    let _ = stream.write_all(&bytes);
                }
                Action::Silent => {}
                Action::Close => return,
            }
        }
        let hold = {
            let mut w = lock(&world);
            w.held_max = w.held_max.max(held.len());
            w.hold.max(1)
        };
        if held.len() >= hold {
            held.reverse();
            let mut out = Vec::new();
            pack_frames(&mut enc, &held, &mut out, |_| panic!("response too large")).unwrap();
            held.clear();
            if stream.write_all(&out).is_err() {
                return;
            }
        }
    }
}

fn config(timeout_ms: u64) -> ClientConfig {
    ClientConfig {
        request_timeout_ms: timeout_ms,
        retry_backoff_ms_min: 1,
        retry_backoff_ms_max: 20,
        ..ClientConfig::default()
    }
}

/// A fake cluster with every group led (see [`Fake::spread_leaders`]) and a client of it.
fn led_cluster(nodes: u64, groups: u64, shards: u32, config: ClientConfig) -> (Fake, KvClient) {
    let fake = Fake::start(nodes, groups, shards);
    fake.spread_leaders();
    let client = KvClient::connect(&fake.seeds(), config).unwrap();
    (fake, client)
}

fn key_in_group(group: u64, groups: u64) -> Vec<u8> {
    (0u32..)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|k| group_of_key(k, groups) == group)
        .unwrap()
}

#[test]
fn requests_reach_the_leader_on_the_groups_shard() {
    let _s = shared_run();
    let (fake, client) = led_cluster(3, 6, 3, config(10_000));
    let info = client.info().unwrap();
    assert_eq!((info.groups, info.shards, info.nodes.len()), (6, 3, 3));
    let keys: Vec<Vec<u8>> = (1..=6).map(|g| key_in_group(g, 6)).collect();
    for k in &keys {
        client.put(k, b"v").unwrap();
    }
    let redirects = client.stats().redirects;
    assert!(redirects > 0, "some first guesses were not the leader");
    assert_eq!(client.leaders_known(), 6);
    for k in &keys {
        let v = client.get(k, Consistency::Linearizable).unwrap();
        assert_eq!(v.as_deref(), Some(&b"v"[..]));
    }
    assert_eq!(
        client.stats().redirects,
        redirects,
        "with every leader known, reads go straight to it"
    );
    let w = fake.world();
    for s in &w.seen {
        let Some(k) = (!s.key.is_empty()).then_some(&s.key) else {
            continue;
        };
        let group = group_of_key(k, 6);
        assert_eq!(
            s.shard,
            shard_of_group(group, 3),
            "{s:?} on the wrong shard"
        );
        if s.answer == "ok" {
            assert_eq!(
                Some(&s.node),
                w.leaders.get(&group),
                "{s:?} served off the leader"
            );
        }
    }
    assert_eq!(w.count(|s| s.answer == "wrong_shard"), 0);
}

#[test]
fn not_leader_without_a_hint_tries_the_other_nodes() {
    let _s = shared_run();
    let fake = Fake::start(3, 1, 1);
    {
        let mut w = fake.world();
        w.hints = false;
        w.leaders.insert(1, 3);
    }
    let client = KvClient::connect(&fake.seeds(), config(10_000)).unwrap();
    client.put(b"k", b"1").unwrap();
    assert!(client.cas(b"k", Some(b"1"), b"2").unwrap());
    assert!(!client.cas(b"k", None, b"3").unwrap());
    client.delete(b"k").unwrap();
    assert_eq!(client.get(b"k", Consistency::Lease).unwrap(), None);
    let w = fake.world();
    assert!(w.count(|s| s.answer == "not_leader") > 0);
    assert!(w.count(|s| s.answer == "ok" && s.op != "info" && s.node != 3) == 0);
}

#[test]
fn unavailable_is_retried_until_a_leader_appears() {
    let _s = shared_run();
    let fake = Fake::start(2, 1, 1);
    let client = KvClient::connect(&fake.seeds(), config(20_000)).unwrap();
    let world = fake.world.clone();
    let elect = std::thread::spawn(move || {
        await_cond("two refusals", || {
            lock(&world).count(|s| s.answer == "unavailable") >= 2
        });
        lock(&world).leaders.insert(1, 2);
    });
    client.put(b"k", b"v").unwrap();
    elect.join().unwrap();
    assert!(client.stats().retries >= 2);
    assert_eq!(
        fake.world().kv.get(&b"k"[..]).map(Vec::as_slice),
        Some(&b"v"[..])
    );
}

#[test]
fn no_leader_by_the_deadline_says_so() {
    let _s = shared_run();
    let fake = Fake::start(1, 4, 1);
    let client = KvClient::connect(&fake.seeds(), config(300)).unwrap();
    let key = key_in_group(3, 4);
    match client.put(&key, b"v") {
        Err(ClientError::Unavailable(Unavailable::NoLeader { group: 3 })) => {}
        other => panic!("expected no leader for group 3, got {other:?}"),
    }
}

#[test]
fn a_wrong_shard_refreshes_the_cluster_shape() {
    let _s = shared_run();
    let fake = Fake::start(1, 2, 2);
    fake.spread_leaders();
    fake.world().info_shards = Some(1); // the client starts with a stale shape
    let client = KvClient::connect(&fake.seeds(), config(10_000)).unwrap();
    fake.world().info_shards = None;
    let key = key_in_group(2, 2); // group 2 lives on shard 1
    client.put(&key, b"v").unwrap();
    let w = fake.world();
    assert!(w.count(|s| s.answer == "wrong_shard") >= 1);
    assert!(
        w.count(|s| s.op == "info") >= 2,
        "the shape was asked again"
    );
    assert_eq!(
        w.count(|s| s.answer == "ok" && s.op == "put" && s.shard == 1),
        1
    );
}

#[test]
fn many_requests_in_flight_on_one_connection_answered_out_of_order() {
    let _s = shared_run();
    const N: usize = 64;
    let fake = Fake::start(1, 1, 1);
    fake.spread_leaders();
    {
        let mut w = fake.world();
        for i in 0..N {
            w.kv.insert(format!("k{i}").into_bytes(), format!("v{i}").into_bytes());
        }
    }
    let client = KvClient::connect(&fake.seeds(), config(10_000)).unwrap();
    fake.world().hold = N; // nothing is answered until all N are in flight
    let pending: Vec<_> = (0..N)
        .map(|i| {
            client.submit(ClientOp::Get {
                key: format!("k{i}").into_bytes(),
                consistency: Consistency::Linearizable,
            })
        })
        .collect();
    for (i, p) in pending.into_iter().enumerate() {
        let want = format!("v{i}").into_bytes();
        assert_eq!(p.wait().unwrap(), Reply::Value(Some(want)));
    }
    assert_eq!(fake.world().accepted, 1, "one connection carried them all");
    assert_eq!(client.stats().connections, 1);
    assert_eq!(client.pending(), 0);
}

#[test]
fn the_deadline_ends_requests_nobody_answers() {
    let _s = shared_run();
    let (fake, client) = led_cluster(1, 1, 1, config(200));
    fake.world().silent = true;
    match client.put(b"k", b"v") {
        Err(ClientError::Timeout {
            op: "put",
            maybe_applied: true,
            ..
        }) => {}
        other => panic!("expected a put timeout, got {other:?}"),
    }
    match client.get(b"k", Consistency::Stale) {
        Err(ClientError::Timeout {
            maybe_applied: false,
            ..
        }) => {}
        other => panic!("expected a get timeout, got {other:?}"),
    }
    let p = client.submit(ClientOp::Info);
    let p = p
        .wait_timeout(Duration::ZERO)
        .expect_err("nothing answers at once");
    assert!(matches!(p.wait(), Err(ClientError::Timeout { .. })));
    assert_eq!(client.stats().timeouts, 3);
    assert_eq!(client.pending(), 0);
}

#[test]
fn nothing_listening_is_reported_with_the_addresses() {
    let _s = shared_run();
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = KvClient::connect(&[free], config(300)).unwrap_err();
    match &err {
        ClientError::Unavailable(Unavailable::NoNodeReachable { addrs }) => {
            assert_eq!(addrs, &vec![free]);
        }
        other => panic!("expected no node reachable, got {other:?}"),
    }
    assert!(err.to_string().contains("is the server"), "{err}");
}

/// Frames a server must never send: each closes its connection.
fn garbage_frames() -> Vec<Vec<u8>> {
    let mut enc: Encoder = client_encoder();
    let wrong_kind = enc
        .encode(
            &Nack { seq_no: 1 },
            None,
            ringleader_wire::msg::client::CLIENT_FRAME_BYTES_MAX,
        )
        .unwrap()
        .to_vec();
    let done = ClientResponse {
        id: 1,
        result: ClientResult::Done,
    };
    let done = enc.encode(&done, None, 1 << 20).unwrap().to_vec();
    let mut oversized = done.clone();
    oversized[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut corrupt = done;
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    vec![
        b"this is not a frame at all, but long enough for a header".to_vec(),
        wrong_kind,
        oversized,
        corrupt,
    ]
}

#[test]
fn garbage_from_the_server_closes_the_connection_and_the_client_reconnects() {
    let _s = shared_run();
    let (fake, client) = led_cluster(1, 1, 1, config(10_000));
    let frames = garbage_frames();
    let kinds = frames.len();
    for frame in frames {
        fake.world().garbage.push_back(frame);
        match client.put(b"k", b"v") {
            Err(ClientError::Unknown { op: "put", why }) => {
                assert!(
                    why.contains("does not decode") || why.contains("message where"),
                    "{why}"
                );
            }
            other => panic!("expected an unknown outcome, got {other:?}"),
        }
    }
    assert_eq!(client.stats().bad_frames, kinds as u64);
    // A read is retried past a bad frame.
    fake.world()
        .garbage
        .push_back(b"garbage garbage garbage garbage garbage".to_vec());
    client
        .put(b"k", b"v")
        .expect_err("the garbage lands on this put");
    fake.world()
        .garbage
        .push_back(b"garbage garbage garbage garbage garbage".to_vec());
    let v = client.get(b"k", Consistency::Linearizable).unwrap();
    assert_eq!(v, None, "no put was applied");
    let stats = client.stats();
    assert_eq!(stats.bad_frames, kinds as u64 + 2);
    assert!(stats.reconnects >= kinds as u64 + 2, "{stats:?}");
}

#[test]
fn a_connection_closed_mid_request_makes_writes_unknown_and_retries_reads() {
    let _s = shared_run();
    let (fake, client) = led_cluster(1, 1, 1, config(10_000));
    fake.world().close_next = 1;
    match client.put(b"k", b"v") {
        Err(ClientError::Unknown { op: "put", .. }) => {}
        other => panic!("expected an unknown outcome, got {other:?}"),
    }
    fake.world().close_next = 1;
    assert_eq!(client.get(b"k", Consistency::Linearizable).unwrap(), None);
    let stats = client.stats();
    assert_eq!(stats.unknown_outcomes, 1);
    assert!(stats.retries >= 1);
    assert!(stats.reconnects >= 2);

    // Allowed, a put is retried; a compare-and-swap never is.
    let retrying = KvClient::connect(
        &fake.seeds(),
        ClientConfig {
            retry_unknown_writes: true,
            ..config(10_000)
        },
    )
    .unwrap();
    fake.world().close_next = 1;
    retrying.put(b"k", b"v").unwrap();
    fake.world().close_next = 1;
    match retrying.cas(b"k", Some(b"v"), b"w") {
        Err(ClientError::Unknown { op: "cas", .. }) => {}
        other => panic!("expected an unknown cas, got {other:?}"),
    }
}

#[test]
fn server_rejections_are_final() {
    let _s = shared_run();
    let (fake, client) = led_cluster(1, 1, 1, config(10_000));
    // Bigger than a frame: refused before it is sent.
    let huge = vec![0u8; ringleader_wire::msg::client::CLIENT_FRAME_BYTES_MAX];
    match client.put(b"k", &huge) {
        Err(ClientError::Rejected {
            code: ErrorCode::TooLarge,
            ..
        }) => {}
        other => panic!("expected too large, got {other:?}"),
    }
    assert_eq!(fake.world().count(|s| s.op == "put"), 0);
}

#[test]
fn pending_beyond_the_bound_fails_at_once() {
    let _s = shared_run();
    let config = ClientConfig {
        pending_max: 2,
        ..config(10_000)
    };
    let (fake, client) = led_cluster(1, 1, 1, config);
    // Nothing is answered, so the first two stay pending however the threads are
    // scheduled (answering them could free room before the third is submitted).
    fake.world().hold = usize::MAX;
    let a = client.submit(ClientOp::Info);
    let b = client.submit(ClientOp::Info);
    let c = client.submit(ClientOp::Info);
    assert!(matches!(
        c.wait(),
        Err(ClientError::Busy { pending_max: 2 })
    ));
    // Closing the client ends the two that were held.
    drop(client);
    assert!(a.wait().is_err() && b.wait().is_err());
}

#[test]
fn a_full_connection_holds_requests_back_until_answers_free_room() {
    let _s = shared_run();
    let config = ClientConfig {
        inflight_max: 2,
        ..config(10_000)
    };
    let (fake, client) = led_cluster(1, 1, 1, config);
    fake.world().hold = 2;
    let pending: Vec<_> = (0..6).map(|_| client.submit(ClientOp::Info)).collect();
    for p in pending {
        assert!(matches!(p.wait(), Ok(Reply::Info(_))));
    }
    assert_eq!(
        fake.world().held_max,
        2,
        "never more than inflight_max at once"
    );
    assert!(client.stats().retries >= 1, "some waited for room");
}

/// Wakes by unparking the thread that polls.
struct ThreadWaker {
    thread: std::thread::Thread,
    wakes: AtomicUsize,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.thread.unpark();
    }
}

#[test]
fn pending_is_a_future_woken_when_the_answer_comes() {
    let _s = shared_run();
    let (fake, client) = led_cluster(1, 1, 1, config(10_000));
    fake.world().hold = 2;
    let w = Arc::new(ThreadWaker {
        thread: std::thread::current(),
        wakes: AtomicUsize::new(0),
    });
    let waker = Waker::from(w.clone());
    let mut cx = Context::from_waker(&waker);
    let mut first = pin!(client.submit(ClientOp::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
    }));
    // Held by the server until a second request comes: not ready.
    assert!(first.as_mut().poll(&mut cx).is_pending());
    let second = client.submit(ClientOp::Info);
    let until = Instant::now() + WAIT_MAX;
    let got = loop {
        if let Poll::Ready(r) = first.as_mut().poll(&mut cx) {
            break r;
        }
        assert!(Instant::now() < until, "the future never completed");
        std::thread::park_timeout(Duration::from_millis(100));
    };
    assert_eq!(got.unwrap(), Reply::Done);
    assert!(
        w.wakes.load(Ordering::SeqCst) >= 1,
        "completion woke the task"
    );
    assert!(second.wait().is_ok());
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn threads_running() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

#[test]
fn clients_opened_and_dropped_leave_no_descriptor_or_thread() {
    let _alone = SERIAL.write().unwrap_or_else(|e| e.into_inner());
    let fake = Fake::start(2, 4, 2);
    fake.spread_leaders();
    let warm = KvClient::connect(&fake.seeds(), config(10_000)).unwrap();
    drop(warm);
    await_cond("the fake closed its side", || fake.open() == 0);
    let fds = open_descriptors();
    let threads = threads_running();
    let mut keys = HashSet::new();
    for i in 0..20 {
        let client = KvClient::connect(&fake.seeds(), config(10_000)).unwrap();
        let key = format!("k{i}").into_bytes();
        client.put(&key, b"v").unwrap();
        keys.insert(key);
        assert!(client.connections_open() >= 1);
    }
    assert_eq!(fake.world().kv.len(), keys.len());
    // The fake's connection threads end when the client's sockets close.
    await_cond("the fake closed its side", || fake.open() == 0);
    await_cond("descriptors back to the start", || {
        open_descriptors() <= fds
    });
    await_cond("threads back to the start", || threads_running() <= threads);
}

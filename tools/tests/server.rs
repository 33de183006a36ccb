//! Three `ringleader-tools server` processes on loopback, a real replicated key-value
//! service: puts and linearizable gets through the leader; a client talking to a follower
//! is redirected; malformed client frames get an error or a closed connection while the
//! node keeps serving others; the leader is killed with SIGKILL, a new one is elected and
//! every acknowledged write is still there; the killed node restarts on its directory and
//! serves again; a wiped node restarted with `--rejoin` while another node lags catches up
//! by snapshot without electing the laggard (its report says it restored one) and loses
//! nothing; a
//! node that lagged behind the others' snapshots catches up by snapshot on top of its old
//! log, appends after it, and restarts from that log again.
//!
//! Nodes listen on 127.75.0.1..3 on a per-run port (from this test's pid). Every wait has
//! a generous liveness bound; nothing asserts timing. A guard kills every child when the
//! test ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::msg::client::{
    CLIENT_FRAME_BYTES_MAX, ClientOp, ClientRequest, ClientResponse, ClientResult, Consistency,
    ErrorCode,
};
use ringleader_wire::{Decoder, Encoder, Header, MessageRef, WireMessage};

const NODES: usize = 3;
const LIVENESS: Duration = Duration::from_secs(60);

fn port() -> u16 {
    ringleader_engine::transport::port_base_below_ephemeral(1)
}

fn addr(i: usize) -> SocketAddr {
    format!("127.75.0.{}:{}", i + 1, port()).parse().unwrap()
}

struct Children(Vec<Option<Child>>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in self.0.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(i: usize, dir: &Path) -> Child {
    spawn_with(i, dir, &[])
}

fn spawn_with(i: usize, dir: &Path, extra: &[&str]) -> Child {
    static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let start = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out =
        std::fs::File::create(dir.join(format!("n{}.{start}.out", i + 1))).expect("stdout file");
    let peers: Vec<String> = (0..NODES)
        .map(|j| format!("{}={}", j + 1, addr(j)))
        .collect();
    Command::new(env!("CARGO_BIN_EXE_ringleader-tools"))
        .args([
            "server",
            "--id",
            &(i + 1).to_string(),
            "--listen",
            &addr(i).to_string(),
        ])
        .args(["--peers", &peers.join(",")])
        .arg("--dir")
        .arg(dir.join(format!("n{}", i + 1)))
        .args([
            "--groups",
            "4",
            "--snapshot-every",
            "10",
            "--election-timeout-ms",
            "300",
        ])
        .args(extra)
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server")
}

/// A minimal blocking client: one request at a time on one connection.
struct Conn {
    s: TcpStream,
    enc: Encoder,
    dec: Decoder,
    next: u64,
}

impl Conn {
    fn open(a: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&a, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            s,
            enc: Encoder::new(b""),
            dec: Decoder::new(b"", CLIENT_FRAME_BYTES_MAX - HEADER_LEN),
            next: 1,
        })
    }

    fn call(&mut self, op: ClientOp) -> std::io::Result<ClientResult> {
        self.next += 1;
        let id = self.next;
        let frame = self
            .enc
            .encode(&ClientRequest { id, op }, None, CLIENT_FRAME_BYTES_MAX)
            .expect("encode")
            .to_vec();
        self.s.write_all(&frame)?;
        loop {
            let r = self.read()?;
            if r.id == id {
                return Ok(r.result);
            }
        }
    }

    fn read(&mut self) -> std::io::Result<ClientResponse> {
        let mut head = [0u8; HEADER_LEN];
        self.s.read_exact(&mut head)?;
        let h = Header::parse(&head, CLIENT_FRAME_BYTES_MAX - HEADER_LEN)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut buf = rkyv::util::AlignedVec::<16>::new();
        buf.extend_from_slice(&head);
        buf.resize(h.frame_len(), 0);
        self.s.read_exact(&mut buf[HEADER_LEN..])?;
        let f = self
            .dec
            .decode(&mut buf, None)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        match f.messages().next() {
            Some(Ok(MessageRef::ClientResponse(r))) => <ClientResponse as WireMessage>::to_owned(r)
                .map_err(|e| std::io::Error::other(e.to_string())),
            _ => Err(std::io::Error::other("not a response")),
        }
    }
}

/// Sends `op` to the node leading the key's group: follows redirects, retries while no
/// leader is known or a node is down. Returns the result and the node that answered.
fn call_leader(op: ClientOp, up: &[bool]) -> (ClientResult, usize) {
    let start = Instant::now();
    let mut target = 0;
    loop {
        assert!(start.elapsed() < LIVENESS, "no leader answered {op:?}");
        if !up[target] {
            target = (target + 1) % NODES;
            continue;
        }
        let r = Conn::open(addr(target)).and_then(|mut c| c.call(op.clone()));
        match r {
            Ok(ClientResult::NotLeader { leader, .. })
                if leader >= 1 && leader as usize <= NODES =>
            {
                target = leader as usize - 1;
            }
            Ok(ClientResult::Error {
                code: ErrorCode::Unavailable | ErrorCode::Busy,
                ..
            })
            | Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                target = (target + 1) % NODES;
            }
            Ok(other) => return (other, target),
        }
    }
}

fn put(k: &str, v: &str, up: &[bool]) -> usize {
    let (r, at) = call_leader(
        ClientOp::Put {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        },
        up,
    );
    assert_eq!(r, ClientResult::Done, "put {k}");
    at
}

fn get(k: &str, up: &[bool]) -> Option<Vec<u8>> {
    let (r, _) = call_leader(
        ClientOp::Get {
            key: k.as_bytes().to_vec(),
            consistency: Consistency::Linearizable,
        },
        up,
    );
    match r {
        ClientResult::Value(v) => v,
        other => panic!("get {k}: {other:?}"),
    }
}

#[test]
fn three_processes_replicate_survive_a_leader_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut kids = Children((0..NODES).map(|i| Some(spawn(i, dir.path()))).collect());
    let mut up = vec![true; NODES];

    // Puts and linearizable gets.
    let mut leader_of_k0 = 0;
    for i in 0..100 {
        let at = put(&format!("k{i}"), &format!("v{i}"), &up);
        if i == 0 {
            leader_of_k0 = at;
        }
    }
    for i in 0..100 {
        assert_eq!(
            get(&format!("k{i}"), &up),
            Some(format!("v{i}").into_bytes())
        );
    }
    let (r, _) = call_leader(
        ClientOp::Cas {
            key: b"k1".to_vec(),
            expected: Some(b"v1".to_vec()),
            new: b"w1".to_vec(),
        },
        &up,
    );
    assert_eq!(r, ClientResult::Cas { swapped: true });
    let (r, _) = call_leader(
        ClientOp::Cas {
            key: b"k1".to_vec(),
            expected: Some(b"v1".to_vec()),
            new: b"x1".to_vec(),
        },
        &up,
    );
    assert_eq!(r, ClientResult::Cas { swapped: false });
    let (r, _) = call_leader(
        ClientOp::Delete {
            key: b"k2".to_vec(),
        },
        &up,
    );
    assert_eq!(r, ClientResult::Done);
    assert_eq!(get("k2", &up), None);

    // A follower redirects to the leader.
    let follower = (leader_of_k0 + 1) % NODES;
    let r = Conn::open(addr(follower))
        .unwrap()
        .call(ClientOp::Put {
            key: b"k0".to_vec(),
            value: b"again".to_vec(),
        })
        .unwrap();
    match r {
        ClientResult::NotLeader {
            leader,
            leader_addr,
            ..
        } => {
            assert_eq!(leader as usize, leader_of_k0 + 1);
            assert_eq!(leader_addr, addr(leader_of_k0).to_string());
        }
        // The leader may have changed meanwhile; any other answer must not be a success.
        other => assert!(
            !matches!(other, ClientResult::Done),
            "a follower acknowledged a write: {other:?}"
        ),
    }

    // Malformed frames: garbage gets the connection closed, the node keeps serving.
    {
        let mut s = TcpStream::connect(addr(0)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut junk = vec![0u8; HEADER_LEN];
        junk[..4].copy_from_slice(b"XXXX");
        s.write_all(&junk).unwrap();
        let mut b = [0u8; 64];
        let n = s.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "a garbage frame closes the connection");
    }
    assert_eq!(get("k3", &up), Some(b"v3".to_vec()));

    // Kill -9 the leader of k0's group; every acknowledged write survives.
    let victim = leader_of_k0;
    if let Some(mut c) = kids.0[victim].take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    up[victim] = false;
    for i in 100..150 {
        put(&format!("k{i}"), &format!("v{i}"), &up);
    }
    assert_eq!(get("k0", &up), Some(b"v0".to_vec()));
    assert_eq!(get("k1", &up), Some(b"w1".to_vec()));
    for i in 3..150 {
        assert_eq!(
            get(&format!("k{i}"), &up),
            Some(format!("v{i}").into_bytes()),
            "k{i}"
        );
    }

    // The killed node restarts on its directory and serves as a replica again: once the
    // others stop, it takes part in a quorum.
    kids.0[victim] = Some(spawn(victim, dir.path()));
    up[victim] = true;
    let other = (victim + 1) % NODES;
    if let Some(mut c) = kids.0[other].take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    up[other] = false;
    for i in 150..170 {
        put(&format!("k{i}"), &format!("v{i}"), &up);
    }
    for i in 3..170 {
        assert_eq!(
            get(&format!("k{i}"), &up),
            Some(format!("v{i}").into_bytes()),
            "k{i}"
        );
    }

    // A wiped follower catches up by snapshot: the others compacted their logs (a snapshot
    // every 10 entries), so only an InstallSnapshot can bring it the early keys.
    kids.0[other] = Some(spawn(other, dir.path()));
    up[other] = true;
    // The other restarted node still lags (it missed k150..k169) when a voter is wiped: the
    // wiped node forgot its log and its votes, so if it voted at once the lagging node
    // could win with its vote and the writes only the third node holds would be lost.
    // Started with --rejoin, it stays out of elections until it has caught up.
    let wiped = victim;
    if let Some(mut c) = kids.0[wiped].take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    std::fs::remove_dir_all(dir.path().join(format!("n{}", wiped + 1))).unwrap();
    kids.0[wiped] = Some(spawn_with(wiped, dir.path(), &["--rejoin"]));
    for i in 3..170 {
        wait_stale(wiped, i, "the wiped node");
    }
    // It says when it votes again: its shard's `catching-up` file goes. Until then it must
    // not count as a replica (taking another node down would leave no quorum).
    let marker = dir
        .path()
        .join(format!("n{}", wiped + 1))
        .join("shard-000")
        .join(ringleader_engine::multiraft::CATCHING_UP_FILE);
    let start = Instant::now();
    while marker.exists() {
        assert!(
            start.elapsed() < LIVENESS,
            "the wiped node never finished catching up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // It got there by snapshot: stop it and read its report.
    let Some(mut c) = kids.0[wiped].take() else {
        unreachable!("the wiped node runs")
    };
    // SAFETY: kill(2) of our own child with SIGTERM; no memory is involved.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    assert!(
        c.wait().unwrap().success(),
        "a node stopped by SIGTERM exits 0"
    );
    let report = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("n{}.", wiped + 1))
        })
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect::<String>();
    let restored: u64 = report
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            let i = w.iter().position(|&x| x == "snapshots-restored")?;
            w.get(i + 1)?.parse::<u64>().ok()
        })
        .sum();
    assert!(
        restored > 0,
        "the wiped node caught up without a snapshot:\n{report}"
    );

    // A node that lags behind the others' snapshots keeps its old log and installs a
    // snapshot on top of it (a hole in its log that the snapshot explains); it appends after
    // the snapshot, is killed, and must start again from that log.
    kids.0[wiped] = Some(spawn(wiped, dir.path()));
    let lagger = (0..NODES).find(|&i| i != wiped && i != other).unwrap();
    if let Some(mut c) = kids.0[lagger].take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    up[lagger] = false;
    for i in 170..250 {
        put(&format!("k{i}"), &format!("v{i}"), &up);
    }
    kids.0[lagger] = Some(spawn(lagger, dir.path()));
    up[lagger] = true;
    wait_stale(lagger, 249, "the lagging node");
    for i in 250..290 {
        put(&format!("k{i}"), &format!("v{i}"), &up);
    }
    wait_stale(lagger, 289, "the lagging node");
    for round in 0..2 {
        if let Some(mut c) = kids.0[lagger].take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        kids.0[lagger] = Some(spawn(lagger, dir.path()));
        for i in [3, 169, 249, 289] {
            wait_stale(
                lagger,
                i,
                &format!("the lagging node after restart {round}"),
            );
        }
        if let Some(c) = kids.0[lagger].as_mut() {
            assert!(
                c.try_wait().unwrap().is_none(),
                "the lagging node exited after restart {round}"
            );
        }
    }
}

/// Waits until node `i` serves `k{n}` = `v{n}` from its own state (a stale read).
fn wait_stale(i: usize, n: usize, who: &str) {
    let k = format!("k{n}");
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < LIVENESS, "{who} never caught up with {k}");
        let r = Conn::open(addr(i)).and_then(|mut c| {
            c.call(ClientOp::Get {
                key: k.clone().into_bytes(),
                consistency: Consistency::Stale,
            })
        });
        if let Ok(ClientResult::Value(Some(v))) = r {
            assert_eq!(v, format!("v{n}").into_bytes(), "{k} on {who}");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

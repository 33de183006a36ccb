//! Per-source-IP bounds on inbound connections: a membership node closes at once the stream
//! exchanges of an address that already holds `inbound_streams_per_ip_max` of them, and a
//! Raft server the connections of an address that already holds
//! `client_connections_per_ip_max` unauthenticated ones, counting each refusal, while
//! another address is still served; once the address's connections close, it is served
//! again.
//!
//! Loopback only: the node and the server listen on 127.71.0.x; the "hostile" connections
//! come from 127.71.0.3 and the legitimate ones from 127.71.0.2 (client sockets bound
//! before connecting). No timing assertions: every wait is for a condition, bounded only so
//! that a broken build fails instead of hanging.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringleader_engine::host::{HostConfig, Node};
use ringleader_engine::multiraft::{Server, ServerConfig};
use ringleader_engine::swim::Config;
use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::msg::client::{
    CLIENT_FRAME_BYTES_MAX, ClientOp, ClientRequest, ClientResponse, ClientResult,
};
use ringleader_wire::msg::swim::Ping;
use ringleader_wire::{Decoder, Encoder, Header, MessageRef, WireMessage};

const LIVENESS: Duration = Duration::from_secs(60);
const HOSTILE: [u8; 4] = [127, 71, 0, 3];
const FRIENDLY: [u8; 4] = [127, 71, 0, 2];

/// A TCP connection to `to` from `from` (port chosen by the kernel).
fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((from, 0)).into())
        .expect("bind the client to its loopback address");
    s.connect_timeout(&to.into(), LIVENESS).expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(LIVENESS)).expect("read timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Reads one frame; `None` if the other end closed (or reset) the connection first.
fn read_frame(s: &mut TcpStream, body_max: usize) -> Option<rkyv::util::AlignedVec<16>> {
    let mut head = [0u8; HEADER_LEN];
    if s.read_exact(&mut head).is_err() {
        return None;
    }
    let h = Header::parse(&head, body_max).expect("a valid header");
    let mut buf = rkyv::util::AlignedVec::<16>::new();
    buf.extend_from_slice(&head);
    buf.resize(h.frame_len(), 0);
    s.read_exact(&mut buf[HEADER_LEN..])
        .expect("the frame's body");
    Some(buf)
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < LIVENESS, "waited {LIVENESS:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP-fallback probe of member `target` at `to` from address `from`: the ack's
/// sequence number, or `None` if the connection was closed unanswered.
fn stream_ping(from: [u8; 4], to: SocketAddr, target: &str, seq: u32) -> Option<u32> {
    let mut s = connect_from(from, to);
    let ping = Ping {
        seq_no: seq,
        target: ringleader_wire::msg::swim::name_hash(target),
        source: "prober".into(),
        source_addr: SocketAddr::from((from, 9)).into(),
    };
    let frame = Encoder::new(b"")
        .encode(&ping, None, 4096)
        .expect("encode")
        .to_vec();
    if s.write_all(&frame).is_err() {
        return None;
    }
    let body_max = 1 << 20;
    let mut buf = read_frame(&mut s, body_max)?;
    let f = Decoder::new(b"", body_max)
        .decode(&mut buf, None)
        .expect("the answer decodes");
    match f.messages().next() {
        Some(Ok(MessageRef::Ack(a))) => Some(a.seq_no.to_native()),
        other => panic!("expected an ack, got {other:?}"),
    }
}

#[test]
fn a_node_closes_streams_past_its_per_ip_bound_and_serves_other_addresses() {
    // The `Node` builder's bound; the streams' timeout is long enough that every silent
    // connection is still held when the test looks.
    let per_ip = 8;
    let extra = 3;
    let node = Node::builder("a")
        .bind("127.71.0.1:0".parse().unwrap())
        .config(Config {
            stream_timeout_ms: 10 * LIVENESS.as_millis() as u64,
            ..Config::local()
        })
        .start()
        .expect("node starts");
    let to = node.addr();
    let census = |f: fn(&ringleader_engine::host::ShardCensus) -> u64| -> u64 {
        let c = node.census(1).expect("census");
        c.shards.iter().map(f).sum()
    };

    // One address opens more streams than its bound and sends nothing on them.
    let held: Vec<TcpStream> = (0..per_ip + extra)
        .map(|_| connect_from(HOSTILE, to))
        .collect();
    wait_for("the extra streams to be refused", || {
        (census(|s| s.streams_refused_per_ip) >= extra).then_some(())
    });
    assert_eq!(
        census(|s| s.streams_refused_per_ip),
        extra,
        "exactly the streams past the bound are refused"
    );
    assert_eq!(
        census(|s| s.streams_refused_busy),
        0,
        "the shard is not full"
    );
    assert_eq!(census(|s| s.streams_refused), extra);

    // Another address is served.
    assert_eq!(
        stream_ping(FRIENDLY, to, "a", 7),
        Some(7),
        "the probe is acked"
    );
    assert_eq!(census(|s| s.streams_served), 1);
    // The full address is not: its probe is closed unanswered.
    assert_eq!(stream_ping(HOSTILE, to, "a", 8), None);
    assert_eq!(census(|s| s.streams_refused_per_ip), extra + 1);

    // Once its streams close, the address is served again (its ledger entry went to zero).
    drop(held);
    let seq = wait_for("the address to be served again", || {
        stream_ping(HOSTILE, to, "a", 9)
    });
    assert_eq!(seq, 9);
    node.shutdown().expect("shutdown");
}

#[test]
fn a_per_ip_bound_above_the_shards_bound_is_refused_with_what_to_change() {
    let c = HostConfig {
        inbound_streams_max: 16,
        inbound_streams_per_ip_max: 17,
        ..HostConfig::default()
    };
    let e = c.check().expect_err("17 per IP of 16 per shard");
    assert!(
        e.to_string().contains("inbound_streams_per_ip_max") && e.to_string().contains("lower"),
        "{e}"
    );
    let ok = HostConfig {
        inbound_streams_per_ip_max: 16,
        ..c
    };
    ok.check().expect("equal bounds are fine");

    let mut s = ServerConfig::new(
        1,
        BTreeMap::from([(1, "127.71.0.10:1".parse().unwrap())]),
        "unused".into(),
    );
    s.client_connections_per_ip_max = s.client_connections_max + 1;
    let e = s.validate().expect_err("more per IP than per shard");
    assert!(e.contains("client_connections_per_ip_max"), "{e}");
}

/// A client connection to a Raft server from `from`.
struct Client {
    s: TcpStream,
    next: u64,
}

impl Client {
    fn open(from: [u8; 4], to: SocketAddr) -> Client {
        Client {
            s: connect_from(from, to),
            next: 0,
        }
    }

    /// Asks for the cluster's shape: the answer, or `None` if the server closed the
    /// connection first.
    fn info(&mut self) -> Option<ClientResult> {
        self.next += 1;
        let id = self.next;
        let frame = Encoder::new(b"")
            .encode(
                &ClientRequest {
                    id,
                    op: ClientOp::Info,
                },
                None,
                CLIENT_FRAME_BYTES_MAX,
            )
            .expect("encode")
            .to_vec();
        if self.s.write_all(&frame).is_err() {
            return None;
        }
        let body_max = CLIENT_FRAME_BYTES_MAX - HEADER_LEN;
        let mut buf = read_frame(&mut self.s, body_max)?;
        let f = Decoder::new(b"", body_max)
            .decode(&mut buf, None)
            .expect("the response decodes");
        match f.messages().next() {
            Some(Ok(MessageRef::ClientResponse(r))) => {
                let r = <ClientResponse as WireMessage>::to_owned(r).expect("a response");
                assert_eq!(r.id, id);
                Some(r.result)
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

#[test]
fn a_raft_server_closes_connections_past_its_per_ip_bound_and_serves_other_addresses() {
    let per_ip = 3;
    let extra = 2;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = ringleader_engine::transport::port_base_below_ephemeral(1);
    let addr: SocketAddr = format!("127.71.0.10:{port}").parse().unwrap();
    let mut cfg = ServerConfig::new(1, BTreeMap::from([(1, addr)]), dir.path().join("n1"));
    cfg.client_connections_per_ip_max = per_ip;
    let server = Server::start(cfg).expect("server starts");
    let stat = |f: fn(&ringleader_engine::multiraft::ShardReport) -> u64| -> u64 {
        server.stats().iter().map(f).sum()
    };

    // One address holds its bound of client connections (each served once, so each is
    // certainly counted), then opens more: each is closed at once.
    let mut held: Vec<Client> = (0..per_ip).map(|_| Client::open(HOSTILE, addr)).collect();
    for c in &mut held {
        assert!(
            matches!(c.info(), Some(ClientResult::Info(_))),
            "a client within the bound is served"
        );
    }
    for _ in 0..extra {
        let mut c = Client::open(HOSTILE, addr);
        assert!(c.info().is_none(), "a connection past the bound is closed");
    }
    wait_for("the refusals to be published", || {
        (stat(|r| r.inbox.clients_refused_per_ip) >= extra as u64).then_some(())
    });
    assert_eq!(stat(|r| r.inbox.clients_refused_per_ip), extra as u64);
    assert_eq!(
        stat(|r| r.inbox.clients_refused),
        0,
        "the shard is not full"
    );

    // Another address is served.
    let mut other = Client::open(FRIENDLY, addr);
    assert!(matches!(other.info(), Some(ClientResult::Info(_))));

    // Once one of its connections closes, the address is served again.
    drop(held.pop());
    wait_for("the address to be served again", || {
        Client::open(HOSTILE, addr).info()
    });
    drop((held, other));
    for r in server.join() {
        r.expect("the shard stops cleanly");
    }
}

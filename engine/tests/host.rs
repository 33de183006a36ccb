//! Live members on real loopback sockets, many per process: convergence, failure
//! detection, a keyring that keeps strangers out, garbage that is counted and dropped.
//!
//! Each test waits for a condition with a generous liveness bound (minutes) and asserts
//! behaviour, never timing. Members bind 127.<base>.x.y with a per-process port, so tests
//! of this binary (and other processes) do not collide. Runtime: ~15 s in release.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use ringleader_engine::host::{
    Census, Event, EventMask, Host, HostConfig, HostEvent, MemberSpec, StreamListeners,
    loopback_addrs,
};
use ringleader_engine::swim::Config;

const LIVENESS: Duration = Duration::from_secs(120);

/// The `local` preset, faster (loopback: tiny RTTs; the machine may be loaded, so the
/// probe timeout stays well above an RTT). A user broadcast is gossip, each holder sending
/// it `user_retransmit_mult × ⌈log10(n+1)⌉` times to random peers, so a given member
/// misses it with a probability near e^-(that limit): with the preset's 8 at 64 members,
/// about 2% of runs lose it somewhere; with 24, about 2 in a billion.
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

fn host(shards: usize, keys: Vec<[u8; 32]>, events: EventMask) -> Host {
    host_with(shards, keys, events, StreamListeners::PerMember)
}

fn host_with(
    shards: usize,
    keys: Vec<[u8; 32]>,
    events: EventMask,
    stream_listeners: StreamListeners,
) -> Host {
    let mut c = HostConfig {
        swim: fast(),
        keys,
        events,
        stream_listeners,
        ..HostConfig::default()
    };
    c.runtime.shards = shards;
    c.runtime.pin = false;
    c.udp.recv_buffers = 512;
    c.udp.send_slots = 512;
    c.udp.cq_entries = 2048;
    Host::start(c).expect("host starts")
}

/// Starts `n` members named `{prefix}{i}` on `addrs`, all seeded with the first.
fn add_members(h: &Host, prefix: &str, addrs: &[SocketAddr], seed: Option<SocketAddr>) {
    let seed = seed.unwrap_or(addrs[0]);
    for (i, a) in addrs.iter().enumerate() {
        h.add(MemberSpec {
            name: format!("{prefix}{i}"),
            bind: *a,
            seeds: vec![seed],
            meta: Vec::new(),
        })
        .expect("member starts");
    }
}

fn wait_converged(h: &Host, n: usize) -> Census {
    let start = Instant::now();
    loop {
        let c = h.census(n).expect("census");
        if c.converged() == n {
            return c;
        }
        assert!(
            start.elapsed() < LIVENESS,
            "not converged after {LIVENESS:?}: {} of {n} members see everyone; alive seen per shard {:?}",
            c.converged(),
            c.shards
                .iter()
                .map(|s| (s.alive_seen_min, s.alive_seen_max))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn downs(events: &[HostEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Down { member, .. } => Some((e.local.to_string(), member.name.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn sixty_four_members_converge_and_detect_two_kills() {
    let n = 64;
    let h = host(2, Vec::new(), EventMask::FAILURES.union(EventMask::MESSAGE));
    let addrs = loopback_addrs(n, 61, port());
    add_members(&h, "m", &addrs, None);
    let census = wait_converged(&h, n);
    assert!(
        census.shards.iter().all(|s| s.members > 0),
        "members are spread over both shards"
    );
    let (out, _, served, _) = census.streams();
    assert!(
        out > 0 && served > 0,
        "joins went through push-pull streams"
    );
    assert_eq!(census.dropped("checksum"), 0);

    // A broadcast reaches every other member, once each (members relay it).
    h.broadcast("m5", b"hello".to_vec()).expect("broadcast");
    let mut got: HashMap<String, usize> = HashMap::new();
    let mut before: Vec<HostEvent> = Vec::new();
    // Counts a delivery of the broadcast; hands any other event back.
    let delivered = |e: HostEvent, got: &mut HashMap<String, usize>| -> Option<HostEvent> {
        if let Event::Message {
            origin, payload, ..
        } = &e.event
        {
            assert_eq!(origin.as_deref(), Some("m5"));
            assert_eq!(payload, b"hello");
            *got.entry(e.local.to_string()).or_default() += 1;
            None
        } else {
            Some(e)
        }
    };
    let start = Instant::now();
    while got.len() < n - 1 {
        if start.elapsed() >= LIVENESS {
            let census = h.census(n).expect("census");
            panic!(
                "the broadcast reached {} of {} members; missing {:?}; sends dropped {}, \
             receive buffers short {}, events dropped {}",
                got.len(),
                n - 1,
                (0..n)
                    .map(|i| format!("m{i}"))
                    .filter(|m| m != "m5" && !got.contains_key(m))
                    .collect::<Vec<_>>(),
                census.shards.iter().map(|s| s.sends_dropped).sum::<u64>(),
                census.udp().recv_no_buffers,
                census.shards.iter().map(|s| s.events_dropped).sum::<u64>(),
            );
        }
        if let Ok(e) = h.events().recv_timeout(Duration::from_millis(500)) {
            before.extend(delivered(e, &mut got));
        }
    }
    assert!(
        !got.contains_key("m5"),
        "the origin does not deliver its own broadcast"
    );
    // Relays of the broadcast keep arriving for a while: every delivery from here on is
    // counted too, through the kill detection below, in which every survivor runs probe
    // rounds for at least a suspicion timeout (far longer than the relays last). Only
    // then is "nobody delivered it twice" checked: the cluster was live all along.

    let victims = ["m17", "m42"];
    for e in h.events().try_iter() {
        before.extend(delivered(e, &mut got));
    }
    assert!(
        downs(&before).is_empty(),
        "no member was declared down before the kill: {:?}",
        downs(&before)
    );
    for v in victims {
        h.kill(v).expect("kill");
    }
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut false_downs = Vec::new();
    let want = (n - victims.len()) * victims.len();
    let start = Instant::now();
    while seen.len() < want {
        assert!(
            start.elapsed() < LIVENESS,
            "only {} of {want} (observer, victim) pairs detected",
            seen.len()
        );
        if let Ok(e) = h.events().recv_timeout(Duration::from_millis(500))
            && let Some(e) = delivered(e, &mut got)
            && let Event::Down { member, .. } = &e.event
        {
            if victims.contains(&member.name.as_str()) {
                seen.insert((e.local.to_string(), member.name.clone()));
            } else {
                false_downs.push((e.local.to_string(), member.name.clone()));
            }
        }
    }
    assert!(false_downs.is_empty(), "false positives: {false_downs:?}");
    for e in h.events().try_iter() {
        delivered(e, &mut got);
    }
    assert!(
        got.values().all(|&c| c == 1),
        "delivered more than once: {got:?}"
    );
    for (observer, _) in &seen {
        assert!(
            !victims.contains(&observer.as_str()),
            "a dead member reported"
        );
    }
    let after = h.members("m0").expect("members");
    for v in victims {
        let m = after
            .iter()
            .find(|m| m.name == v)
            .expect("victim still known");
        assert_ne!(m.state, ringleader_engine::swim::MemberState::Alive);
    }
    assert!(h.kill("m17").is_err(), "a killed member is gone");
    h.shutdown().expect("clean shutdown");
}

#[test]
fn a_member_with_the_wrong_key_cannot_join_and_is_counted() {
    let good = [7u8; 32];
    let wrong = [9u8; 32];
    let n = 8;
    let a = host(1, vec![good], EventMask::ALL);
    let addrs = loopback_addrs(n + 1, 62, port());
    add_members(&a, "k", &addrs[..n], None);
    wait_converged(&a, n);
    let b = host(1, vec![wrong], EventMask::ALL);
    b.add(MemberSpec {
        name: "stranger".into(),
        bind: addrs[n],
        seeds: vec![addrs[0]],
        meta: Vec::new(),
    })
    .expect("stranger starts");
    // The stranger's join (a push-pull stream) and its probes are refused: wait until the
    // cluster has refused its frames, and its join has failed.
    let start = Instant::now();
    let mut joined_ok = None;
    loop {
        for e in b.events().try_iter() {
            if let Event::Joined { ok, .. } = e.event {
                joined_ok = Some(ok);
            }
        }
        let c = a.census(n).expect("census");
        let refused = c.dropped("no_key") + c.streams().3;
        if joined_ok.is_some() && refused > 0 {
            break;
        }
        assert!(start.elapsed() < LIVENESS, "no refusal seen: {c:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(joined_ok, Some(false), "the stranger's join failed");
    // Let gossip run a few more rounds: nobody learns the stranger. The rounds are counted,
    // not slept through: six probes per member on average and a push-pull exchange per
    // member must complete first (about the 3 s of one push-pull interval when unloaded).
    let c0 = a.census(n).expect("census");
    let (probes0, streams0) = (c0.stats().probes, c0.streams().0);
    let start = Instant::now();
    loop {
        let c = a.census(n).expect("census");
        let (probes, streams) = (c.stats().probes, c.streams().0);
        if probes >= probes0 + 6 * n as u64 && streams >= streams0 + n as u64 {
            break;
        }
        assert!(
            start.elapsed() < LIVENESS,
            "gossip stalled: {} probes and {} push-pulls since the refusal",
            probes - probes0,
            streams - streams0
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 0..n {
        let ms = a.members(&format!("k{i}")).expect("members");
        assert!(
            ms.iter().all(|m| m.name != "stranger"),
            "k{i} learned of the stranger"
        );
    }
    let theirs = b.members("stranger").expect("members");
    assert_eq!(
        theirs.len(),
        1,
        "the stranger knows only itself: {theirs:?}"
    );
    let c = a.census(n).expect("census");
    assert_eq!(c.converged(), n, "the cluster is undisturbed");
    b.shutdown().expect("shutdown b");
    a.shutdown().expect("shutdown a");
}

#[test]
fn a_garbage_flood_is_counted_and_dropped_while_the_cluster_stays_converged() {
    let n = 16;
    let h = host(2, Vec::new(), EventMask::FAILURES);
    let addrs = loopback_addrs(n, 63, port());
    add_members(&h, "g", &addrs, None);
    wait_converged(&h, n);
    let before = h.census(n).expect("census").udp();
    let flood = UdpSocket::bind("127.63.200.1:0").expect("flood socket");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut sent = 0u64;
    let mut kinds: HashMap<&str, u64> = HashMap::new();
    for i in 0..20_000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 1 + (x % 1400) as usize;
        let mut buf: Vec<u8> = (0..len).map(|j| (x >> (j % 56)) as u8).collect();
        let kind = match i % 3 {
            0 => "random",
            1 => {
                // A real magic and version, the rest garbage: fails the checksum.
                if buf.len() >= 32 {
                    buf[..4].copy_from_slice(b"RLDR");
                    buf[8] = 1;
                }
                "magic"
            }
            _ => {
                buf.truncate(7);
                "short"
            }
        };
        *kinds.entry(kind).or_default() += 1;
        let to = addrs[(i as usize) % 4];
        if flood.send_to(&buf, to).is_ok() {
            sent += 1;
        }
        if i % 512 == 0 {
            // Let the kernel's socket buffers drain now and then.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // Every garbage datagram that reached a ring is dropped and counted.
    let start = Instant::now();
    let (received, dropped) = loop {
        let c = h.census(n).expect("census").udp();
        let received = c.datagrams_received - before.datagrams_received;
        let delivered = c.datagrams_delivered - before.datagrams_delivered;
        let dropped: u64 = c
            .dropped
            .iter()
            .zip(before.dropped.iter())
            .map(|(a, b)| a - b)
            .sum();
        if received - delivered == dropped && dropped >= sent / 2 {
            break (received, dropped);
        }
        assert!(
            start.elapsed() < LIVENESS,
            "sent {sent}, received {received}, delivered {delivered}, dropped {dropped}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(dropped <= sent && received >= dropped);
    let c = wait_converged(&h, n);
    assert_eq!(c.converged(), n);
    let events: Vec<HostEvent> = h.events().try_iter().collect();
    assert!(
        downs(&events).is_empty(),
        "the flood caused false failures: {:?}",
        downs(&events)
    );
    h.shutdown().expect("shutdown");
}

#[test]
fn shared_listeners_route_streams_by_local_address() {
    let n = 24;
    let h = host_with(
        2,
        Vec::new(),
        EventMask::FAILURES,
        StreamListeners::PerShard,
    );
    // Shard s's members listen on port base + s (a wildcard listener per shard and port).
    let base = port().wrapping_add(7);
    let mut addrs = loopback_addrs(n, 64, base);
    for (i, a) in addrs.iter_mut().enumerate() {
        a.set_port(base + h.shard_of(&format!("s{i}")) as u16);
    }
    add_members(&h, "s", &addrs, None);
    let census = wait_converged(&h, n);
    let listeners: usize = census.shards.iter().map(|s| s.stream_listeners).sum();
    assert_eq!(listeners, 2, "one listener per shard and port");
    let accept_errors: u64 = census.shards.iter().map(|s| s.accept_errors).sum();
    assert_eq!(accept_errors, 0, "a shared listener waits for connections");
    let (out, failed, served, _) = census.streams();
    assert!(
        out > 0 && served > 0,
        "joins went through push-pull streams on the shared listeners ({out} out, {failed} failed, {served} served)"
    );

    // A connection to an address no member holds is closed and counted.
    let stranger = SocketAddr::from(([127, 64, 200, 200], base));
    let mut conn = std::net::TcpStream::connect(stranger).expect("the wildcard listener accepts");
    conn.set_read_timeout(Some(LIVENESS)).expect("timeout");
    let mut buf = [0u8; 1];
    let read = std::io::Read::read(&mut conn, &mut buf);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the connection is closed unanswered"
    );
    let unrouted: u64 = h
        .census(n)
        .expect("census")
        .shards
        .iter()
        .map(|s| s.streams_unrouted)
        .sum();
    assert_eq!(unrouted, 1, "the stranger's connection is counted");

    // A second shard cannot take a port another shard listens on.
    let taken = (0..n)
        .map(|i| format!("x{i}"))
        .find(|name| h.shard_of(name) == 1)
        .expect("some name lands on shard 1");
    let err = h
        .add(MemberSpec {
            name: taken,
            bind: SocketAddr::from(([127, 64, 201, 1], base)),
            seeds: Vec::new(),
            meta: Vec::new(),
        })
        .expect_err("port base belongs to shard 0's listener");
    assert!(
        err.to_string().contains("Host::shard_of"),
        "the error says what to do: {err}"
    );

    // The listener closes with the last member of its shard on that port.
    for i in 0..n {
        let name = format!("s{i}");
        if h.shard_of(&name) == 1 {
            h.kill(&name).expect("kill");
        }
    }
    let left = h.census(n).expect("census");
    assert_eq!(
        left.shards
            .iter()
            .map(|s| s.stream_listeners)
            .sum::<usize>(),
        1
    );
    h.shutdown().expect("shutdown");
}

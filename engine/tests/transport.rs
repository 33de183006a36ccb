//! The io_uring UDP transport and TCP frame streams between real shards over loopback.
//!
//! No timing assertions: waits are bounded only so that a broken build fails instead of
//! hanging. Loopback UDP drops what a socket buffer cannot hold, so tests that count every
//! datagram keep at most [`WINDOW`] of them unreceived at any time (the receiver publishes
//! its count), whatever the load on the machine. Release-mode runtime: well under a second
//! per test.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ringleader_engine::runtime::{Runtime, RuntimeConfig, ShardContext};
use ringleader_engine::transport::{
    Discard, FrameListener, FrameStream, Sender, SocketId, SocketOptions, StreamError, UdpConfig,
    UdpCounters, UdpHandler, UdpRing,
};
use ringleader_wire::msg::swim::{Nack, UserMsg};
use ringleader_wire::{Encoder, Frame, Keyring, Message, MessageRef};

const LABEL: &[u8] = b"transport-test";
const WAIT_MAX: Duration = Duration::from_secs(20);
/// Datagrams sent and not yet received at most: well within the receive buffers of
/// [`small_udp`] and any socket's default receive buffer.
const WINDOW: u64 = 64;

fn small_udp() -> UdpConfig {
    UdpConfig {
        recv_buffers: 256,
        send_slots: 256,
        cq_entries: 1024,
        sq_entries: 256,
        ..UdpConfig::default()
    }
}

fn config(shards: usize) -> RuntimeConfig {
    RuntimeConfig {
        shards,
        name: "transport-test".into(),
        ..RuntimeConfig::default()
    }
}

/// Keeps owned copies of what arrived, and checks the in-place alignment promise.
#[derive(Default)]
struct Collect {
    messages: Vec<Message>,
    datagrams: usize,
    misaligned: usize,
    froms: Vec<SocketAddr>,
}

impl UdpHandler for Collect {
    fn on_datagram(
        &mut self,
        _out: &mut Sender<'_, '_>,
        _socket: SocketId,
        from: SocketAddr,
        frame: &Frame<'_>,
        messages: &[MessageRef<'_>],
    ) {
        self.datagrams += 1;
        if frame.body.as_ptr() as usize % 16 != 0 {
            self.misaligned += 1;
        }
        self.froms.push(from);
        for m in messages {
            if let Ok(owned) = m.to_owned() {
                self.messages.push(owned);
            }
        }
    }
}

enum Event {
    Bound(SocketAddr),
    Received {
        messages: Vec<Message>,
        datagrams: usize,
        misaligned: usize,
        counters: Box<UdpCounters>,
    },
}

fn payload(i: u32) -> Vec<u8> {
    (0..(i % 97) as u8).map(|b| b ^ (i as u8)).collect()
}

/// Shard 1 binds and receives; shard 0 sends `n` frames (singles and batches) to it.
#[test]
fn frames_between_two_shards_arrive_validated() {
    const N: u32 = 400;
    // Datagrams shard 1 has received, for shard 0's window.
    let arrived = Arc::new(AtomicU64::new(0));
    let rt: Runtime<(), Event, ()> = Runtime::start(
        config(2),
        move |ctx: ShardContext<(), Event, SocketAddr>| async move {
            let mut ring = UdpRing::new(small_udp(), LABEL, None).expect("ring");
            ctx.watch(ring.eventfd().clone()).expect("watch");
            if ctx.id() == 1 {
                let me = ring
                    .bind(
                        "127.0.0.1:0".parse().expect("addr"),
                        SocketOptions::default(),
                    )
                    .expect("bind");
                let addr = ring.local_addr(me).expect("local addr");
                ctx.emit(Event::Bound(addr));
                ctx.mesh_send(0, addr)
                    .map_err(|_| "mesh")
                    .expect("mesh send");
                let mut c = Collect::default();
                let until = Instant::now() + WAIT_MAX;
                // Every frame carries one UserMsg and every other one a Nack too.
                while c.messages.len() < (N + N / 2) as usize
                    && Instant::now() < until
                    && !ctx.stopping()
                {
                    ring.poll(&mut c).expect("poll");
                    arrived.store(c.datagrams as u64, Ordering::Release);
                    ctx.wait(Some(ctx.now() + Duration::from_millis(50))).await;
                }
                let counters = Box::new(ring.counters().clone());
                let report = ring.close();
                assert_eq!(report.in_flight_left, 0);
                ctx.emit(Event::Received {
                    messages: c.messages,
                    datagrams: c.datagrams,
                    misaligned: c.misaligned,
                    counters,
                });
            } else {
                let me = ring
                    .bind(
                        "127.0.0.1:0".parse().expect("addr"),
                        SocketOptions::default(),
                    )
                    .expect("bind");
                let to = loop {
                    if let Some((_, a)) = ctx.mesh_recv() {
                        break a;
                    }
                    ctx.wait(None).await;
                };
                let mut enc = Encoder::new(LABEL);
                let mut i = 0;
                while i < N && !ctx.stopping() {
                    if u64::from(i) >= arrived.load(Ordering::Acquire) + WINDOW {
                        ring.poll(&mut Collect::default()).expect("poll");
                        ctx.wait(Some(ctx.now() + Duration::from_millis(1))).await;
                        continue;
                    }
                    let sent = ring.with_sender(|s| {
                        let frame = if i % 2 == 0 {
                            let mut b = enc.batch(None, 1400);
                            b.push(&UserMsg {
                                payload: payload(i),
                            })
                            .expect("push");
                            b.push(&Nack { seq_no: i }).expect("push");
                            b.finish().expect("finish")
                        } else {
                            enc.encode(
                                &UserMsg {
                                    payload: payload(i),
                                },
                                None,
                                1400,
                            )
                            .expect("encode")
                        };
                        s.send(me, to, frame).is_ok()
                    });
                    if sent {
                        i += 1;
                    } else {
                        ring.poll(&mut Collect::default()).expect("poll");
                    }
                }
                while ring.sends_in_flight() > 0 {
                    ring.poll(&mut Collect::default()).expect("poll");
                    ctx.wait(Some(ctx.now() + Duration::from_millis(5))).await;
                }
                assert_eq!(ring.counters().datagrams_sent, N as u64);
                ring.close();
            }
        },
    )
    .expect("start");
    let mut received = None;
    let until = Instant::now() + WAIT_MAX * 2;
    while received.is_none() && Instant::now() < until {
        if let Ok(Event::Received {
            messages,
            datagrams,
            misaligned,
            counters,
        }) = rt.events().recv_timeout(Duration::from_millis(100))
        {
            received = Some((messages, datagrams, misaligned, counters));
        }
    }
    let results = rt.join();
    assert!(results.iter().all(|r| r.is_ok()), "shards ended cleanly");
    let (messages, datagrams, misaligned, counters) = received.expect("receiver reported");
    assert_eq!(datagrams, N as usize);
    assert_eq!(
        misaligned, 0,
        "every body must be 16-byte aligned in the receive buffer"
    );
    assert_eq!(counters.dropped_total(), 0);
    let mut users: Vec<Vec<u8>> = Vec::new();
    let mut nacks: Vec<u32> = Vec::new();
    for m in messages {
        match m {
            Message::UserMsg(u) => users.push(u.payload),
            Message::Nack(n) => nacks.push(n.seq_no),
            other => panic!("unexpected message {other:?}"),
        }
    }
    users.sort();
    let mut expected: Vec<Vec<u8>> = (0..N).map(payload).collect();
    expected.sort();
    assert_eq!(users, expected, "every payload arrived intact");
    nacks.sort();
    assert_eq!(nacks, (0..N).filter(|i| i % 2 == 0).collect::<Vec<_>>());
}

/// Garbage of every kind, interleaved with valid frames, from a plain socket.
#[test]
fn garbage_is_counted_by_cause_and_valid_traffic_still_flows() {
    const VALID: usize = 200;
    // Datagrams the ring has received, for the sender's window.
    let arrived = Arc::new(AtomicU64::new(0));
    let progress = Arc::clone(&arrived);
    let rt: Runtime<u32, Event, ()> = Runtime::start(
        config(1),
        move |ctx: ShardContext<u32, Event, ()>| async move {
            let mut ring = UdpRing::new(small_udp(), LABEL, None).expect("ring");
            ctx.watch(ring.eventfd().clone()).expect("watch");
            let me = ring
                .bind(
                    "127.0.0.1:0".parse().expect("addr"),
                    SocketOptions::default(),
                )
                .expect("bind");
            ctx.emit(Event::Bound(ring.local_addr(me).expect("addr")));
            let mut c = Collect::default();
            let mut expected_total = None;
            loop {
                ring.poll(&mut c).expect("poll");
                progress.store(ring.counters().datagrams_received, Ordering::Release);
                if let Some(n) = ctx.try_command() {
                    expected_total = Some(n as u64);
                }
                if expected_total.is_some_and(|n| ring.counters().datagrams_received >= n)
                    || ctx.stopping()
                {
                    break;
                }
                ctx.wait(Some(ctx.now() + Duration::from_millis(50))).await;
            }
            let counters = Box::new(ring.counters().clone());
            ring.close();
            ctx.emit(Event::Received {
                messages: c.messages,
                datagrams: c.datagrams,
                misaligned: c.misaligned,
                counters,
            });
        },
    )
    .expect("start");
    let Ok(Event::Bound(to)) = rt.events().recv_timeout(WAIT_MAX) else {
        panic!("no address")
    };
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut enc = Encoder::new(LABEL);
    let mut other = Encoder::new(b"another-cluster");
    let good = enc
        .encode(&Nack { seq_no: 7 }, None, 1400)
        .expect("encode")
        .to_vec();
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    let wrong_label = other
        .encode(&Nack { seq_no: 7 }, None, 1400)
        .expect("encode")
        .to_vec();
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0; 8]);
    let truncated = good[..good.len() - 1].to_vec();
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let keyring = Keyring::new([9; 32]);
    let sealed = enc
        .encode(&Nack { seq_no: 7 }, Some(&keyring), 1400)
        .expect("encode")
        .to_vec();
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut random = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let kinds: [(&str, &[u8]); 7] = [
        ("checksum", &bad_crc),
        ("label", &wrong_label),
        ("trailing", &trailing),
        ("truncated", &truncated),
        ("bad_magic", &bad_magic),
        ("encrypted_without_keyring", &sealed),
        ("truncated", &good[..10]),
    ];
    let mut expected: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut total = 0u32;
    for i in 0..VALID {
        sock.send_to(&good, to).expect("send");
        total += 1;
        let (cause, bytes) = kinds[i % kinds.len()];
        sock.send_to(bytes, to).expect("send");
        *expected.entry(cause).or_default() += 1;
        total += 1;
        // Random bytes: almost surely a bad magic; count whatever the decoder says below.
        let mut junk = [0u8; 64];
        for b in junk.iter_mut() {
            *b = random() as u8;
        }
        sock.send_to(&junk, to).expect("send");
        *expected.entry("bad_magic").or_default() += 1;
        total += 1;
        // Let the receiver keep up: loopback drops when the socket buffer is full.
        let until = Instant::now() + WAIT_MAX;
        while u64::from(total) >= arrived.load(Ordering::Acquire) + WINDOW {
            assert!(
                Instant::now() < until,
                "the ring received {} of {total} datagrams",
                arrived.load(Ordering::Acquire)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    rt.send(0, total)
        .map_err(|_| "command")
        .expect("send command");
    let mut received = None;
    let until = Instant::now() + WAIT_MAX;
    while received.is_none() && Instant::now() < until {
        if let Ok(Event::Received {
            messages, counters, ..
        }) = rt.events().recv_timeout(Duration::from_millis(100))
        {
            received = Some((messages, counters));
        }
    }
    assert!(rt.join().iter().all(|r| r.is_ok()));
    let (messages, counters) = received.expect("report");
    assert_eq!(counters.datagrams_received, total as u64);
    assert_eq!(
        counters.datagrams_delivered, VALID as u64,
        "valid traffic flows"
    );
    assert_eq!(messages.len(), VALID);
    assert!(
        messages
            .iter()
            .all(|m| *m == Message::Nack(Nack { seq_no: 7 }))
    );
    for (cause, n) in &expected {
        assert_eq!(
            counters.dropped_for(cause),
            *n,
            "drops for {cause}: {:?}",
            counters.drops()
        );
    }
    assert_eq!(counters.dropped_total(), total as u64 - VALID as u64);
}

/// Closing a ring with receives armed and sends in flight waits for the kernel and frees
/// nothing it may still use (a violation would show as a leak report or a crash under
/// the allocator's reuse of the freed memory in the sends that follow).
#[test]
fn close_with_requests_in_flight_is_clean() {
    let rt: Runtime<(), (usize, bool, usize), ()> = Runtime::start(
        config(1),
        |ctx: ShardContext<(), (usize, bool, usize), ()>| async move {
            for round in 0..3 {
                let mut ring = UdpRing::new(small_udp(), LABEL, None).expect("ring");
                let a = ring
                    .bind(
                        "127.0.0.1:0".parse().expect("addr"),
                        SocketOptions::default(),
                    )
                    .expect("bind");
                let b = ring
                    .bind(
                        "127.0.0.1:0".parse().expect("addr"),
                        SocketOptions::default(),
                    )
                    .expect("bind");
                let to = ring.local_addr(b).expect("addr");
                let mut enc = Encoder::new(LABEL);
                let frame = enc
                    .encode(
                        &UserMsg {
                            payload: vec![round; 600],
                        },
                        None,
                        1400,
                    )
                    .expect("encode")
                    .to_vec();
                // Sends stay queued (fewer SQEs than a batch): close must submit them and
                // see the kernel through with them before freeing anything.
                ring.with_sender(|s| while s.send(a, to, &frame).is_ok() {});
                let in_flight = ring.in_flight();
                let report = ring.close();
                ctx.emit((report.in_flight_left, report.leaked, in_flight));
                assert_eq!(ring.buffers_held(), 0);
                // Scribble over freshly allocated memory: if the kernel still wrote into
                // freed buffers, the next round's checks would see it.
                let v = vec![0xa5u8; 1 << 20];
                assert!(v.iter().all(|&b| b == 0xa5));
            }
        },
    )
    .expect("start");
    let mut reports = Vec::new();
    while reports.len() < 3 {
        reports.push(rt.events().recv_timeout(WAIT_MAX).expect("report"));
    }
    assert!(rt.join().iter().all(|r| r.is_ok()));
    for (left, leaked, in_flight) in reports {
        assert!(in_flight > 2, "there were requests in flight to wait for");
        assert_eq!(left, 0);
        assert!(!leaked);
    }
}

/// Frames over TCP between two shards; a corrupt frame ends the stream with its cause.
#[test]
fn tcp_frames_between_shards() {
    const N: u32 = 50;
    let rt: Runtime<(), Result<Vec<u32>, String>, ()> = Runtime::start(
        config(2),
        |ctx: ShardContext<(), Result<Vec<u32>, String>, SocketAddr>| async move {
            if ctx.id() == 1 {
                let listener =
                    FrameListener::bind("127.0.0.1:0".parse().expect("addr"), LABEL, 1 << 20)
                        .expect("listen");
                ctx.mesh_send(0, listener.local_addr().expect("addr"))
                    .map_err(|_| "mesh")
                    .expect("mesh");
                let mut stream = listener.accept().await.expect("accept");
                let mut got = Vec::new();
                let end = loop {
                    match stream.recv(None).await {
                        Ok(Some(frame)) => {
                            for m in frame.messages() {
                                if let Ok(MessageRef::Nack(n)) = m {
                                    got.push(n.seq_no.to_native());
                                }
                            }
                        }
                        Ok(None) => break "eof".to_string(),
                        Err(StreamError::Decode(e)) => break e.cause().to_string(),
                        Err(e) => break e.to_string(),
                    }
                };
                let _ = stream.close().await;
                ctx.emit(Ok(got));
                ctx.emit(Err(end));
            } else {
                let to = loop {
                    if let Some((_, a)) = ctx.mesh_recv() {
                        break a;
                    }
                    ctx.wait(None).await;
                };
                let mut stream = FrameStream::connect(to, LABEL, 1 << 20)
                    .await
                    .expect("connect");
                let mut enc = Encoder::new(LABEL);
                for i in 0..N {
                    let f = enc
                        .encode(&Nack { seq_no: i }, None, 1 << 20)
                        .expect("encode");
                    stream.send(f).await.expect("send");
                }
                let mut bad = enc
                    .encode(&Nack { seq_no: 999 }, None, 1 << 20)
                    .expect("encode")
                    .to_vec();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                stream.send(&bad).await.expect("send");
                let _ = stream.close().await;
            }
        },
    )
    .expect("start");
    let got = rt.events().recv_timeout(WAIT_MAX).expect("frames");
    let end = rt.events().recv_timeout(WAIT_MAX).expect("end");
    assert!(rt.join().iter().all(|r| r.is_ok()));
    assert_eq!(got, Ok((0..N).collect::<Vec<_>>()));
    assert_eq!(end, Err("checksum".to_string()));
}

/// A parked ring wakes for a datagram and for a signal of a wake-up eventfd, and otherwise
/// sleeps out its timeout; the ring's own eventfd is refused as a wake-up (it would wake
/// itself forever); close cancels the wake-up poll. Waits are bounded only so that a
/// broken build fails instead of hanging.
#[test]
fn parker_wakes_on_datagrams_and_wake_fds() {
    use std::sync::Arc;

    use ringleader_engine::runtime::EventFd;
    use ringleader_engine::transport::Parked;

    let mut ring = UdpRing::new(small_udp(), LABEL, None).expect("ring");
    let me = ring
        .bind(
            "127.0.0.1:0".parse().expect("addr"),
            SocketOptions::default(),
        )
        .expect("bind");
    let addr = ring.local_addr(me).expect("local addr");
    let own = Arc::clone(ring.eventfd());
    assert!(ring.wake_on(own).is_err(), "the ring's own eventfd");
    let efd = Arc::new(EventFd::new().expect("eventfd"));
    ring.wake_on(Arc::clone(&efd)).expect("wake_on");
    let parker = ring.parker().expect("parker");
    assert_eq!(
        parker
            .park(Some(Duration::from_millis(1)), 1)
            .expect("park"),
        Parked::TimedOut,
        "nothing to wake for"
    );

    let tx = UdpSocket::bind("127.0.0.1:0").expect("tx");
    let mut enc = Encoder::new(LABEL);
    let frame = enc
        .encode(
            &UserMsg {
                payload: payload(1),
            },
            None,
            1400,
        )
        .expect("encode")
        .to_vec();
    tx.send_to(&frame, addr).expect("send");
    assert_eq!(parker.park(Some(WAIT_MAX), 1).expect("park"), Parked::Ready);
    let mut got = Collect::default();
    ring.poll(&mut got).expect("poll");
    assert_eq!(got.datagrams, 1);
    assert_eq!(parker.last_receives(), 1);
    assert!(!parker.take_woken(), "a datagram is not a wake-up signal");

    efd.signal();
    assert_eq!(parker.park(Some(WAIT_MAX), 1).expect("park"), Parked::Ready);
    ring.poll(&mut got).expect("poll");
    assert!(parker.take_woken());
    assert!(!parker.take_woken(), "taking clears the flag");
    assert_eq!(ring.counters().wake_ups, 1);
    assert_eq!(got.datagrams, 1, "a wake-up never reaches the handler");
    assert_eq!(parker.last_receives(), 0);

    let report = ring.close();
    assert_eq!(
        report.in_flight_left, 0,
        "receive and wake-up poll cancelled"
    );
    assert!(!report.leaked);
}

/// Runs of equal-sized datagrams to one peer go out as GSO sends (where the kernel has
/// UDP GSO) and still arrive as separate datagrams, each validated on its own, in order:
/// a shorter datagram ends a run, a change of destination ends a run, and the counters
/// count datagrams, not sends. With `gso_segments_max` 0 the same traffic goes one send
/// per datagram. A plain socket among the receivers shows what the kernel delivers.
#[test]
fn gso_runs_arrive_as_separate_validated_datagrams() {
    for gso in [64usize, 0] {
        let config = UdpConfig {
            gso_segments_max: gso,
            ..small_udp()
        };
        let mut ring = UdpRing::new(config, LABEL, None).expect("ring");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let a = ring.bind(any, SocketOptions::default()).expect("bind a");
        let b = ring.bind(any, SocketOptions::default()).expect("bind b");
        let to_b = ring.local_addr(b).expect("addr b");
        let plain = UdpSocket::bind(any).expect("plain");
        plain.set_read_timeout(Some(WAIT_MAX)).expect("timeout");
        let to_plain = plain.local_addr().expect("plain addr");
        let mut enc = Encoder::new(LABEL);
        let frame = |enc: &mut Encoder, seq: u32, len: usize| {
            let mut p = vec![0u8; len];
            p[..4].copy_from_slice(&seq.to_le_bytes());
            enc.encode(&UserMsg { payload: p }, None, 1400)
                .expect("encode")
                .to_vec()
        };
        // (destination, payload bytes) in send order: a run of 70 (more than one GSO
        // send holds), a shorter one that ends it, a run to the plain socket, 3 more.
        let mut plan: Vec<(SocketAddr, usize)> = vec![(to_b, 100); 70];
        plan.push((to_b, 40));
        plan.extend([(to_plain, 100); 5]);
        plan.extend([(to_b, 100); 3]);
        let frames: Vec<Vec<u8>> = plan
            .iter()
            .enumerate()
            .map(|(seq, &(_, len))| frame(&mut enc, seq as u32, len))
            .collect();
        ring.with_sender(|s| {
            for (f, &(to, _)) in frames.iter().zip(plan.iter()) {
                s.send(a, to, f).expect("send");
            }
        });
        let to_b_count = plan.iter().filter(|(to, _)| *to == to_b).count();
        let mut got = Collect::default();
        let until = Instant::now() + WAIT_MAX;
        while (got.datagrams < to_b_count || ring.sends_in_flight() > 0) && Instant::now() < until {
            ring.poll(&mut got).expect("poll");
            std::thread::sleep(Duration::from_millis(1));
        }
        let seqs: Vec<u32> = got
            .messages
            .iter()
            .map(|m| match m {
                Message::UserMsg(u) => u32::from_le_bytes(u.payload[..4].try_into().expect("seq")),
                other => panic!("unexpected message {other:?}"),
            })
            .collect();
        let expected: Vec<u32> = (0..plan.len() as u32)
            .filter(|&i| plan[i as usize].0 == to_b)
            .collect();
        assert_eq!(seqs, expected, "gso {gso}: every datagram, in order");
        assert_eq!(got.misaligned, 0);
        let mut buf = [0u8; 2048];
        for f in &frames[71..76] {
            let (n, from) = plain.recv_from(&mut buf).expect("plain recv");
            assert_eq!(from, ring.local_addr(a).expect("addr a"));
            assert_eq!(&buf[..n], &f[..], "gso {gso}: one datagram per frame");
        }
        let c = ring.counters().clone();
        assert_eq!(c.datagrams_queued, plan.len() as u64);
        assert_eq!(c.datagrams_sent, plan.len() as u64);
        assert_eq!(c.datagrams_received, to_b_count as u64);
        assert_eq!(c.dropped_total(), 0);
        if gso == 0 || !ring.features().udp_gso {
            assert_eq!(c.send_trains, 0);
        } else {
            // 64 + 7 (ended by the short one), 5 to the plain socket, 3 more.
            assert_eq!(c.send_trains, 4, "gso {gso}");
            assert!(c.sqes_submitted < plan.len() as u64);
        }
        assert_eq!(c.gso_disabled, 0);
        let report = ring.close();
        assert_eq!(report.in_flight_left, 0);
    }
}

/// Sends the kernel refuses (the socket was shut down for writing behind the ring's back:
/// every send fails with EPIPE) are counted as errors, never as sent, and their slots and
/// train records come back like any other. Each failure's completion is posted by the
/// `io_uring_enter` that issued the send, before its slot is released; debug builds assert
/// that none comes later (`transport::udp::send`). Nothing reaches the wire.
#[test]
fn refused_sends_are_counted_and_give_their_slots_back() {
    let mut ring = UdpRing::new(small_udp(), LABEL, None).expect("ring");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM.nonblocking(),
        Some(socket2::Protocol::UDP),
    )
    .expect("socket");
    socket.bind(&any.into()).expect("bind");
    let behind = socket.try_clone().expect("dup");
    let me = ring.add_socket(socket).expect("add socket");
    // An unconnected UDP socket answers ENOTCONN, yet stops sending all the same.
    let _ = behind.shutdown(std::net::Shutdown::Write);
    let sink = UdpSocket::bind(any).expect("sink");
    let to = sink.local_addr().expect("sink addr");
    let mut enc = Encoder::new(LABEL);
    let frame = enc
        .encode(
            &UserMsg {
                payload: payload(3),
            },
            None,
            1400,
        )
        .expect("encode")
        .to_vec();
    const ROUNDS: u64 = 20;
    let until = Instant::now() + WAIT_MAX;
    for round in 0..ROUNDS {
        // A run of equal datagrams (one GSO send where the kernel has it), then one alone.
        ring.with_sender(|s| {
            for _ in 0..10 {
                s.send(me, to, &frame).expect("a free slot");
            }
        });
        ring.with_sender(|s| s.send(me, to, &frame))
            .expect("a free slot");
        // The poll submits them (fewer than a batch are queued), sees the SQ empty and
        // releases them before it reaps: their completions must be in that very reap.
        while ring.sends_in_flight() > 0 {
            assert!(
                Instant::now() < until,
                "round {round}: sends still in flight: {:?}",
                ring.counters()
            );
            ring.poll(&mut Discard).expect("poll");
        }
    }
    ring.poll(&mut Discard).expect("poll");
    let c = ring.counters().clone();
    assert_eq!(c.send_errno_last, libc::EPIPE, "{c:?}");
    assert_eq!(c.datagrams_queued, ROUNDS * 11, "{c:?}");
    assert_eq!(
        c.send_errors, c.datagrams_queued,
        "every send refused: {c:?}"
    );
    assert_eq!(c.datagrams_sent, 0, "a refused send is not counted as sent");
    assert_eq!(c.bytes_sent, 0);
    assert_eq!(ring.sends_in_flight(), 0, "every slot came back");
    if ring.features().udp_gso {
        assert_eq!(c.send_trains, ROUNDS, "one GSO send per run");
    }
    assert_eq!(c.gso_disabled, 0, "EPIPE is no reason to give up GSO");
    let report = ring.close();
    assert_eq!(report.in_flight_left, 0);
    assert!(!report.leaked);
}

/// Answers every datagram with one datagram back to its sender.
struct Echo {
    frame: Vec<u8>,
    datagrams: usize,
}

impl UdpHandler for Echo {
    fn on_datagram(
        &mut self,
        out: &mut Sender<'_, '_>,
        socket: SocketId,
        from: SocketAddr,
        _: &Frame<'_>,
        _: &[MessageRef<'_>],
    ) {
        self.datagrams += 1;
        let _ = out.send(socket, from, &self.frame);
    }
}

/// On a parked ring, what a poll's handler sends stays queued until the park, which
/// submits it in the same `io_uring_enter` that waits; sends are done (slots free, counted
/// as sent) once the kernel has taken them, with no completion of their own. The adaptive
/// spin never spins without an exchange in flight, and does after a poll that received
/// and answered. Waits are bounded only so that a broken build fails instead of hanging.
#[test]
fn park_submits_what_poll_queued_and_spins_only_during_exchanges() {
    let config = UdpConfig {
        spin_us_max: 20,
        ..small_udp()
    };
    let mut ring = UdpRing::new(config, LABEL, None).expect("ring");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let me = ring.bind(any, SocketOptions::default()).expect("bind");
    let parker = ring.parker().expect("parker");
    let peer = UdpSocket::bind(any).expect("peer");
    peer.set_read_timeout(Some(WAIT_MAX)).expect("timeout");
    let mut enc = Encoder::new(LABEL);
    let frame = enc
        .encode(
            &UserMsg {
                payload: payload(5),
            },
            None,
            1400,
        )
        .expect("encode")
        .to_vec();
    let mut echo = Echo {
        frame: frame.clone(),
        datagrams: 0,
    };

    assert_eq!(ring.spin_adaptive(&mut echo).expect("spin"), 0);
    assert_eq!(ring.counters().spins, 0, "an idle ring never spins");

    peer.send_to(&frame, ring.local_addr(me).expect("addr"))
        .expect("send");
    let until = Instant::now() + WAIT_MAX;
    while echo.datagrams == 0 && Instant::now() < until {
        parker.park(Some(WAIT_MAX), 1).expect("park");
        ring.poll(&mut echo).expect("poll");
    }
    assert_eq!(echo.datagrams, 1);
    assert_eq!(ring.counters().datagrams_queued, 1);
    assert_eq!(
        ring.counters().datagrams_sent,
        0,
        "the answer waits for the park"
    );
    // The park submits the answer, then sleeps out its short timeout.
    parker
        .park(Some(Duration::from_millis(1)), 1)
        .expect("park");
    let mut buf = [0u8; 2048];
    let (n, _) = peer.recv_from(&mut buf).expect("the answer arrived");
    assert_eq!(&buf[..n], &frame[..]);
    ring.poll(&mut echo).expect("poll");
    let c = ring.counters().clone();
    assert_eq!(c.datagrams_sent, 1);
    assert_eq!(c.send_errors, 0);
    assert_eq!(
        ring.sends_in_flight(),
        0,
        "a taken send needs no completion"
    );

    // An exchange: a datagram in, an answer out. Now the ring spins before parking.
    peer.send_to(&frame, ring.local_addr(me).expect("addr"))
        .expect("send");
    let until = Instant::now() + WAIT_MAX;
    while echo.datagrams == 1 && Instant::now() < until {
        parker.park(Some(WAIT_MAX), 1).expect("park");
        ring.poll(&mut echo).expect("poll");
    }
    assert_eq!(echo.datagrams, 2);
    // A poll that reaps nothing (the caller polling again) does not end the exchange.
    assert_eq!(ring.poll(&mut echo).expect("poll"), 0);
    ring.spin_adaptive(&mut echo).expect("spin");
    assert_eq!(ring.counters().spins, 1);
    // That spin found nothing (the peer does not answer): the ring is idle again.
    assert_eq!(ring.spin_adaptive(&mut echo).expect("spin"), 0);
    assert_eq!(
        ring.counters().spins,
        1,
        "a spin that found nothing ends it"
    );
    assert_eq!(
        ring.counters().datagrams_sent,
        2,
        "the spin submitted the answer first"
    );
    let report = ring.close();
    assert_eq!(report.in_flight_left, 0);
}

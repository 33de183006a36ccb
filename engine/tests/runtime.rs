//! Shards start, talk over the mesh, run timers in order, and shut down cleanly.
//!
//! No timing assertions. Release-mode runtime: well under a second per test.

use std::time::Duration;

use ringleader_engine::Time;
use ringleader_engine::runtime::{Runtime, RuntimeConfig, ShardContext, Timers};

fn config(shards: usize) -> RuntimeConfig {
    RuntimeConfig {
        shards,
        name: "runtime-test".into(),
        ..RuntimeConfig::default()
    }
}

const WAIT_MAX: Duration = Duration::from_secs(20);

#[test]
fn shards_start_and_shut_down_cleanly() {
    for _ in 0..3 {
        let rt: Runtime<(), usize, usize> =
            Runtime::start(config(2), |ctx: ShardContext<(), usize, ()>| async move {
                ctx.emit(ctx.id());
                let mut wakeups = 0;
                while !ctx.stopping() {
                    ctx.wait(None).await;
                    wakeups += 1;
                }
                wakeups
            })
            .expect("start");
        assert_eq!(rt.shards(), 2);
        assert_eq!(rt.placements().len(), 2);
        for p in rt.placements() {
            assert!(
                p.cpu.is_some() || p.unpinned_reason.is_some(),
                "an unpinned shard says why: {p:?}"
            );
        }
        let mut started: Vec<usize> = (0..2)
            .map(|_| rt.events().recv_timeout(WAIT_MAX).expect("started"))
            .collect();
        started.sort();
        assert_eq!(started, vec![0, 1]);
        let results = rt.join();
        assert_eq!(results.len(), 2);
        for r in results {
            assert!(
                r.expect("shard ended cleanly") >= 1,
                "the shutdown woke the shard"
            );
        }
    }
}

#[test]
fn commands_reach_their_shard() {
    let rt: Runtime<u64, (usize, u64), ()> = Runtime::start(
        config(2),
        |ctx: ShardContext<u64, (usize, u64), ()>| async move {
            let mut sum = 0;
            loop {
                while let Some(c) = ctx.try_command() {
                    sum += c;
                }
                if ctx.stopping() {
                    // A command queued just before the stop flag was set is still taken.
                    while let Some(c) = ctx.try_command() {
                        sum += c;
                    }
                    break;
                }
                ctx.wait(None).await;
            }
            ctx.emit((ctx.id(), sum));
        },
    )
    .expect("start");
    for i in 1..=100u64 {
        let mut cmd = i;
        // The queue is bounded: retry until the shard has drained it.
        loop {
            match rt.send((i % 2) as usize, cmd) {
                Ok(()) => break,
                Err(c) => {
                    cmd = c;
                    std::thread::yield_now();
                }
            }
        }
    }
    assert!(rt.send(7, 1).is_err(), "no such shard");
    // No pause: every command queued before `shutdown` must be summed.
    rt.shutdown();
    let mut sums = [0u64; 2];
    for _ in 0..2 {
        let (shard, sum) = rt.events().recv_timeout(WAIT_MAX).expect("sum");
        sums[shard] = sum;
    }
    assert!(rt.join().iter().all(|r| r.is_ok()));
    assert_eq!(sums[0], (1..=100).filter(|i| i % 2 == 0).sum::<u64>());
    assert_eq!(sums[1], (1..=100).filter(|i| i % 2 == 1).sum::<u64>());
}

/// (sending shard, destination shard, sequence number).
type MeshMsg = (usize, usize, u32);

#[test]
fn cross_shard_messages_arrive() {
    const K: u32 = 500;
    const SHARDS: usize = 3;
    let rt: Runtime<(), (usize, Vec<u32>), ()> = Runtime::start(
        config(SHARDS),
        |ctx: ShardContext<(), (usize, Vec<u32>), MeshMsg>| async move {
            let me = ctx.id();
            let mut next = [0u32; SHARDS];
            let mut got = vec![0u32; SHARDS];
            let mut order_ok = true;
            let expected = K * SHARDS as u32;
            let total_to_send = K * SHARDS as u32;
            let mut sent = 0;
            while got.iter().sum::<u32>() < expected {
                // Send what fits (a full channel hands the message back; retry later).
                for (to, next) in next.iter_mut().enumerate() {
                    while *next < K {
                        match ctx.mesh_send(to, (me, to, *next)) {
                            Ok(()) => {
                                *next += 1;
                                sent += 1;
                            }
                            Err(_) => break,
                        }
                    }
                }
                while let Some((from, (claimed, dest, seq))) = ctx.mesh_recv() {
                    // Shard indexes, not glommio's join-order peer ids, on both ends.
                    order_ok &= from == claimed && dest == me && seq == got[from];
                    got[from] += 1;
                }
                if sent < total_to_send {
                    glommio::yield_if_needed().await;
                    glommio::timer::sleep(Duration::from_micros(100)).await;
                } else if got.iter().sum::<u32>() < expected {
                    ctx.wait(Some(ctx.now() + Duration::from_millis(10))).await;
                }
                if ctx.stopping() {
                    break;
                }
            }
            assert!(
                order_ok,
                "messages from one shard arrive in order and name their sender"
            );
            ctx.emit((me, got));
            while !ctx.stopping() {
                ctx.wait(None).await;
            }
        },
    )
    .expect("start");
    let mut all = Vec::new();
    for _ in 0..SHARDS {
        all.push(rt.events().recv_timeout(WAIT_MAX).expect("report"));
    }
    assert!(rt.join().iter().all(|r| r.is_ok()));
    for (_, got) in all {
        assert_eq!(got, vec![K; SHARDS]);
    }
}

#[test]
fn timers_fire_in_order_on_a_shard() {
    let rt: Runtime<(), Vec<(u32, Time)>, ()> = Runtime::start(
        config(1),
        |ctx: ShardContext<(), Vec<(u32, Time)>, ()>| async move {
            let mut timers: Timers<u32> = Timers::new(1024);
            let start = ctx.now();
            // Deadlines in scrambled order, with ties and a re-armed key.
            let mut x = 7u32;
            for key in 0..200u32 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                let at = start + Duration::from_micros(((x >> 8) % 30_000) as u64);
                timers.set(key, at).expect("set");
            }
            timers
                .set(5, start + Duration::from_millis(40))
                .expect("re-arm");
            timers.cancel(6);
            let mut fired = Vec::new();
            while let Some(next) = timers.next_deadline() {
                ctx.wait(Some(next)).await;
                let now = ctx.now();
                while let Some((key, at)) = timers.pop_expired(now) {
                    assert!(at <= now, "a timer never fires early");
                    fired.push((key, at));
                }
            }
            ctx.emit(fired);
        },
    )
    .expect("start");
    let fired = rt.events().recv_timeout(WAIT_MAX).expect("fired");
    assert!(rt.join().iter().all(|r| r.is_ok()));
    assert_eq!(
        fired.len(),
        199,
        "every key but the cancelled one fired once"
    );
    assert!(
        fired.windows(2).all(|w| w[0].1 <= w[1].1),
        "in deadline order"
    );
    assert_eq!(
        fired.last().map(|f| f.0),
        Some(5),
        "the re-armed key fired at its new deadline"
    );
    assert!(!fired.iter().any(|f| f.0 == 6));
}

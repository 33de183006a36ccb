//! Scenario `transport`: Ringleader's io_uring UDP transport against the plainest fast
//! syscalls (sendmmsg/recvmmsg, batches of 32) and against glommio 0.9's `UdpSocket`, in
//! the same run.
//!
//! - Flood: one sender floods one receiver with 64-byte datagrams over loopback; only
//!   datagrams actually received inside the measured window count. Engine: shard 0 frames
//!   (rkyv + CRC32C) every datagram and sends through its ring; shard 1 receives through
//!   multishot recvmsg, checks header, checksum and label, and validates every message in
//!   place. Raw: `harness::udp_flood_with` (two threads, blocking sockets). glommio: two
//!   executors, `send_to` / `recv`. Every datagram is 64 bytes in all three.
//! - Ping-pong: 64-byte datagrams, one in flight. Engine: shard 0 pings shard 1, which
//!   validates and answers with a fresh frame. Raw: `harness::udp_rtt_with` (blocking
//!   sockets, two threads).
//!
//! `--duration` is the measured time of each of the five measurements, split into
//! `--rounds` interleaved rounds (raw, glommio, engine flood; raw, engine ping-pong) so that
//! noise from other processes on the host hits all of them alike; the JSON reports the
//! median round and the spread (`spread.*.rounds`, `spread.ratio_pps_per_round`).
//!
//! The engine's shards park in their own rings (`--park ring`, the default;
//! `ShardContext::park_in`); `--park glommio` keeps the older eventfd wake-up through
//! glommio's reactor for comparison.
//!
//! The engine's flood sender gathers its 64-byte frames into GSO sends (`--gso-segments`,
//! default 64; 0 sends one datagram per SQE): the receiver still gets, decodes and
//! validates every datagram on its own; the raw baseline stays sendmmsg/recvmmsg.
//! `--measure flood|rtt` runs only one half (for profiling; the checks need both).
//!
//! What it showed on the shared 2-core host (load average 1.5-1.6), three runs of
//! `--duration 5s` back to back with the default adaptive spin (`--spin-max-us 50`):
//! `ratio_pps` 4.45, 3.93, 3.61; `engine_rtt_us` p99 0.85x, 0.94x, 0.85x raw's (p50 16-20
//! µs against raw's 25). Without the spin (`--spin-max-us 0`) the round trip was 1.2-1.4x
//! raw's. See the design note in `ringleader_engine::transport` for where the time goes
//! and what was tried (GSO, send completions skipped, submit-and-wait in the park, fixed
//! and adaptive spinning, glommio turn interval).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use ringleader_engine::runtime::{ParkConfig, Runtime, RuntimeConfig, ShardContext};
use ringleader_engine::transport::{
    Discard, Sender, SocketId, SocketOptions, UdpConfig, UdpCounters, UdpHandler, UdpRing,
};
use ringleader_wire::msg::swim::UserMsg;
use ringleader_wire::{Encoder, Frame, MessageRef};
use serde_json::{Value, json};

use crate::harness::{self, BaselineConfig, CommonArgs, Pacing, Recorder, Run};

/// Bytes of every datagram in every measurement (the raw baseline's size).
pub const DATAGRAM_BYTES: usize = harness::baselines::FLOOD_BYTES;
/// Payload of the engine's `UserMsg` so that header (32) + archive comes to 64 bytes.
const USER_PAYLOAD_BYTES: usize = 24;
const LABEL: &[u8] = b"ringleader-bench";
/// A ping unanswered this long is sent again (loopback rarely loses one).
const PING_RETRY: Duration = Duration::from_millis(200);

/// Flags of the `transport` scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Duration (of each measurement), warm-up, output.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Interleaved rounds each measurement's duration is split into.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Datagrams the engine sender queues before each submit.
    #[arg(long, default_value_t = 64)]
    pub submit_batch: usize,
    /// Pin the engine's shards (and glommio's executors) to CPUs. On a host shared with
    /// other busy processes a pinned thread cannot escape a busy CPU, unlike the raw
    /// baseline's threads, so the default leaves placement to the scheduler as the
    /// baselines do.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub pin: bool,
    /// Busy-poll the engine's ring this long (µs) before parking the shard.
    #[arg(long, default_value_t = 0)]
    pub spin_us: u64,
    /// Longest adaptive spin of the engine's shards before they park
    /// (`UdpConfig::spin_us_max`, `UdpRing::spin_adaptive`; used when `--spin-us` is 0;
    /// 0 never spins). The spin runs only while an exchange is in flight, so the flood is
    /// unaffected; in the ping-pong two spinning shards end up on two CPUs and an answer is
    /// seen without a wake-up (see the transport design note).
    #[arg(long, default_value_t = UdpConfig::default().spin_us_max)]
    pub spin_max_us: u64,
    /// Ask the scheduler for this time slice (µs) on the engine's shard threads
    /// (`RuntimeConfig::sched_slice_us`); the baselines keep the default.
    #[arg(long)]
    pub sched_slice_us: Option<u64>,
    /// Where an idle engine shard sleeps: `ring` (in its own io_uring,
    /// `ShardContext::park_in`) or `glommio` (in glommio's reactor, woken through the
    /// ring's eventfd).
    #[arg(long, value_enum, default_value_t = Park::Ring)]
    pub park: Park,
    /// With `--park ring`: longest sleep in the ring before glommio gets a turn (µs).
    #[arg(long, default_value_t = ParkConfig::default().glommio_turn_interval_us)]
    pub glommio_turn_us: u64,
    /// Datagrams per GSO send of the engine's flood sender (`UdpConfig::gso_segments_max`;
    /// 0 sends every datagram on its own).
    #[arg(long, default_value_t = UdpConfig::default().gso_segments_max)]
    pub gso_segments: usize,
    /// Which measurements to run (for profiling one of them; the checks need `all`).
    #[arg(long, value_enum, default_value_t = Measure::All)]
    pub measure: Measure,
}

/// Which measurements a run makes.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Floods and ping-pongs.
    All,
    /// The three floods only.
    Flood,
    /// The two ping-pongs only.
    Rtt,
}

/// Where an idle engine shard sleeps.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Park {
    /// In its own ring: one hop from a datagram to the shard.
    Ring,
    /// In glommio's reactor, woken by the ring's eventfd.
    Glommio,
}

/// One flood measurement.
#[derive(Debug, Clone, Copy, Default)]
struct Flood {
    received_pps: f64,
    sent_pps: f64,
}

/// Runs the scenario.
pub fn run(args: Args) -> anyhow::Result<()> {
    let common = &args.common;
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if common.rate.is_some() || common.concurrency.is_some_and(|c| c != 1) {
        bail!(
            "transport measures closed-loop ping-pong with one datagram in flight; --rate/--concurrency are not supported"
        );
    }
    let round = common.duration / args.rounds;
    let spin = Duration::from_micros(args.spin_us);
    let placement = Shards {
        pin: args.pin,
        sched_slice_us: args.sched_slice_us,
        park: (args.park == Park::Ring).then_some(ParkConfig {
            glommio_turn_interval_us: args.glommio_turn_us,
        }),
    };
    let warmup = (common.warmup / args.rounds).max(Duration::from_millis(100));
    let config = json!({
        "duration_s": common.duration.as_secs_f64(),
        "warmup_s": common.warmup.as_secs_f64(),
        "rounds": args.rounds,
        "round_s": round.as_secs_f64(),
        "datagram_bytes": DATAGRAM_BYTES,
        "udp_batch_raw": harness::baselines::UDP_BATCH,
        "submit_batch_engine": args.submit_batch,
        "pin": args.pin,
        "spin_us": args.spin_us,
        "spin_max_us": args.spin_max_us,
        "sched_slice_us": args.sched_slice_us,
        "park": format!("{:?}", args.park).to_lowercase(),
        "glommio_turn_us": args.glommio_turn_us,
        "engine_sender_connected": true,
        "udp_config": format!("{:?}", engine_udp_config(args.submit_batch, args.gso_segments)),
        "measure": format!("{:?}", args.measure).to_lowercase(),
    });
    let mut run = Run::new("transport", common.out.as_deref(), common.json, config)?;
    let baseline = BaselineConfig {
        duration: round,
        warmup,
        pacing: Pacing::Closed { concurrency: 1 },
    };
    let mut raw = Vec::new();
    let mut glommio = Vec::new();
    let mut engine = Vec::new();
    let mut counters = UdpCounters::default();
    let mut rtt_counters = UdpCounters::default();
    let mut raw_rtt = Recorder::new("raw_rtt_us");
    let mut engine_rtt = Recorder::new("engine_rtt_us");
    let progress = run.progress("transport", common.duration * 5);
    let started = Instant::now();
    let (floods, pings) = (args.measure != Measure::Rtt, args.measure != Measure::Flood);
    for _ in 0..args.rounds {
        if floods {
            let r = harness::udp_flood_with(&baseline, None).context("raw flood")?;
            raw.push(Flood {
                received_pps: r.received_pps,
                sent_pps: r.sent_pps,
            });
            progress.tick(started.elapsed());
            glommio.push(glommio_flood(round, warmup, args.pin).context("glommio flood")?);
            progress.tick(started.elapsed());
            let udp = UdpConfig {
                spin_us_max: args.spin_max_us,
                ..engine_udp_config(args.submit_batch, args.gso_segments)
            };
            let (f, c) =
                engine_flood(round, warmup, udp, placement, spin).context("engine flood")?;
            engine.push(f);
            counters.add(&c);
            progress.tick(started.elapsed());
        }
        if pings {
            raw_rtt.merge(&harness::udp_rtt_with(&baseline, None).context("raw ping-pong")?);
            progress.tick(started.elapsed());
            let udp = UdpConfig {
                spin_us_max: args.spin_max_us,
                // The answer goes out with the park that waits for the next datagram.
                ..engine_udp_config(args.submit_batch, 0)
            };
            let (rec, c) = engine_ping_pong(round, warmup, udp, placement, spin)
                .context("engine ping-pong")?;
            engine_rtt.merge(&rec);
            rtt_counters.add(&c);
            progress.tick(started.elapsed());
        }
    }
    progress.finish();
    let ratios: Vec<f64> = engine
        .iter()
        .zip(raw.iter())
        .map(|(e, r)| e.received_pps / r.received_pps.max(1.0))
        .collect();
    let pick = |v: &[Flood]| v.iter().map(|f| f.received_pps).collect::<Vec<_>>();
    let (engine_pps, raw_pps, glommio_pps) = (
        median(&pick(&engine)),
        median(&pick(&raw)),
        median(&pick(&glommio)),
    );
    let percentiles = |r: &Recorder| {
        let h = r.histogram();
        json!({"p50": h.value_at_quantile(0.50), "p99": h.value_at_quantile(0.99)})
    };
    let results = json!({
        "engine_pps": engine_pps,
        "raw_pps": raw_pps,
        "glommio_pps": glommio_pps,
        "ratio_pps": engine_pps / raw_pps.max(1.0),
        "glommio_ratio_pps": glommio_pps / raw_pps.max(1.0),
        "engine_rtt_us": percentiles(&engine_rtt),
        "raw_rtt_us": percentiles(&raw_rtt),
        "engine_rtt_summary": engine_rtt.summary(),
        "raw_rtt_summary": raw_rtt.summary(),
        "spread": {
            "engine_pps": spread(&pick(&engine)),
            "raw_pps": spread(&pick(&raw)),
            "glommio_pps": spread(&pick(&glommio)),
            "ratio_pps_per_round": ratios,
        },
        "sent_pps": {
            "engine": median(&engine.iter().map(|f| f.sent_pps).collect::<Vec<_>>()),
            "raw": median(&raw.iter().map(|f| f.sent_pps).collect::<Vec<_>>()),
            "glommio": median(&glommio.iter().map(|f| f.sent_pps).collect::<Vec<_>>()),
        },
        "engine_counters": counters_json(&counters),
        "engine_rtt_counters": counters_json(&rtt_counters),
    });
    run.add(raw_rtt);
    run.add(engine_rtt);
    run.finish(results)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn spread(v: &[f64]) -> Value {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({"min": min, "max": max, "rounds": v})
}

fn counters_json(c: &UdpCounters) -> Value {
    let drops: serde_json::Map<String, Value> = c
        .drops()
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "datagrams_received": c.datagrams_received,
        "datagrams_delivered": c.datagrams_delivered,
        "messages_delivered": c.messages_delivered,
        "dropped": drops,
        "datagrams_sent": c.datagrams_sent,
        "send_errors": c.send_errors,
        "recv_no_buffers": c.recv_no_buffers,
        "recv_rearmed": c.recv_rearmed,
        "enter_calls": c.enter_calls,
        "sqes_submitted": c.sqes_submitted,
        "send_trains": c.send_trains,
        "gso_disabled": c.gso_disabled,
        "wake_ups": c.wake_ups,
        "spins": c.spins,
        "spins_paid": c.spins_paid,
    })
}

fn engine_udp_config(submit_batch: usize, gso_segments: usize) -> UdpConfig {
    UdpConfig {
        submit_batch: submit_batch.clamp(1, 512),
        gso_segments_max: gso_segments.min(ringleader_engine::transport::udp::GSO_SEGMENTS_MAX),
        ..UdpConfig::default()
    }
}

/// How the engine's two shards are placed and scheduled.
#[derive(Debug, Clone, Copy)]
struct Shards {
    pin: bool,
    sched_slice_us: Option<u64>,
    /// Park in the ring with this configuration; `None`: sleep in glommio.
    park: Option<ParkConfig>,
}

/// Makes `ring`'s completions wake the shard: parked in the ring, or through its eventfd.
fn wake_on_ring(
    ctx: &ShardContext<(), (), SocketAddr>,
    ring: &mut UdpRing,
    shards: Shards,
) -> Result<(), String> {
    match shards.park {
        Some(config) => ctx.park_in(ring, config).map_err(|e| e.to_string()),
        None => ctx.watch(ring.eventfd().clone()).map_err(|e| e.to_string()),
    }
}

/// One engine shard's end of the measured link: its ring (woken as `shards.park` says)
/// and socket. Shard 1 announces its address over the mesh; shard 0 learns it, connects
/// to it (as the raw baselines' sending sockets are connected) and returns it.
async fn link(
    ctx: &ShardContext<(), (), SocketAddr>,
    shards: Shards,
    config: UdpConfig,
) -> Result<(UdpRing, SocketId, Option<SocketAddr>), String> {
    let mut ring = UdpRing::new(config, LABEL, None).map_err(|e| e.to_string())?;
    wake_on_ring(ctx, &mut ring, shards)?;
    let me = ring
        .bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SocketOptions::default(),
        )
        .map_err(|e| e.to_string())?;
    if ctx.id() == 1 {
        ctx.mesh_send(0, ring.local_addr(me).ok_or("no local address")?)
            .map_err(|e| format!("mesh send: {e:?}"))?;
        return Ok((ring, me, None));
    }
    let to = loop {
        if let Some((_, a)) = ctx.mesh_recv() {
            break a;
        }
        if ctx.stopping() {
            return Err("stopped before the peer announced itself".into());
        }
        ctx.wait(None).await;
    };
    ring.connect(me, to).map_err(|e| e.to_string())?;
    Ok((ring, me, Some(to)))
}

fn runtime_config(name: &str, shards: Shards) -> RuntimeConfig {
    RuntimeConfig {
        sched_slice_us: shards.sched_slice_us,
        shards: 2,
        pin: shards.pin,
        name: name.into(),
        ..RuntimeConfig::default()
    }
}

/// A 64-byte frame carrying `seq` in its payload (`msg` is reused: no allocation).
fn frame<'e>(enc: &'e mut Encoder, msg: &mut UserMsg, seq: u64) -> anyhow::Result<&'e [u8]> {
    msg.payload.resize(USER_PAYLOAD_BYTES, 0);
    msg.payload[..8].copy_from_slice(&seq.to_le_bytes());
    let f = enc.encode(&*msg, None, 1400)?;
    if f.len() != DATAGRAM_BYTES {
        bail!(
            "engine frame is {} bytes, expected {DATAGRAM_BYTES}",
            f.len()
        );
    }
    Ok(f)
}

fn seq_of(messages: &[MessageRef<'_>]) -> Option<u64> {
    match messages.first() {
        Some(MessageRef::UserMsg(m)) => {
            let p = m.payload.as_slice();
            p.get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        }
        _ => None,
    }
}

/// Before parking: a fixed busy-poll of `spin` (the `--spin-us` experiment), or the
/// engine's adaptive spin (`UdpRing::spin_adaptive`) when `spin` is zero.
fn spin_then<H: UdpHandler>(
    ring: &mut UdpRing,
    h: &mut H,
    spin: Duration,
) -> Result<usize, String> {
    if spin.is_zero() {
        ring.spin_adaptive(h).map_err(|e| e.to_string())
    } else {
        ring.spin_poll(h, spin).map_err(|e| e.to_string())
    }
}

/// Counts datagrams (and checks each carries one message) inside the window.
struct FloodReceiver {
    window: (Instant, Instant),
    received: u64,
    now: Instant,
}

impl UdpHandler for FloodReceiver {
    fn on_datagram(
        &mut self,
        _: &mut Sender<'_, '_>,
        _: SocketId,
        _: SocketAddr,
        _: &Frame<'_>,
        m: &[MessageRef<'_>],
    ) {
        if self.now >= self.window.0 && self.now < self.window.1 && m.len() == 1 {
            self.received += 1;
        }
    }
}

type Out = Result<(u64, UdpCounters), String>;

fn engine_flood(
    duration: Duration,
    warmup: Duration,
    udp: UdpConfig,
    shards: Shards,
    spin: Duration,
) -> anyhow::Result<(Flood, UdpCounters)> {
    let start = Instant::now() + Duration::from_millis(50);
    let window = (start + warmup, start + warmup + duration);
    let rt: Runtime<(), (), Out> = Runtime::start(
        runtime_config("rl-flood", shards),
        move |ctx: ShardContext<(), (), SocketAddr>| async move {
            let inner = async {
                let (mut ring, me, peer) = link(&ctx, shards, udp.clone()).await?;
                match peer {
                    None => {
                        let mut h = FloodReceiver {
                            window,
                            received: 0,
                            now: Instant::now(),
                        };
                        while h.now < window.1 + Duration::from_millis(20) && !ctx.stopping() {
                            ring.poll(&mut h).map_err(|e| e.to_string())?;
                            h.now = Instant::now();
                            if spin_then(&mut ring, &mut h, spin)? > 0 {
                                continue;
                            }
                            ctx.wait(Some(ctx.clock().at(window.1 + Duration::from_millis(20))))
                                .await;
                            h.now = Instant::now();
                        }
                        let c = ring.counters().clone();
                        ring.close();
                        Ok((h.received, c))
                    }
                    Some(to) => {
                        let mut enc = Encoder::new(LABEL);
                        let mut msg = UserMsg {
                            payload: Vec::new(),
                        };
                        let mut seq = 0u64;
                        let mut sent_in_window = 0u64;
                        loop {
                            let now = Instant::now();
                            if now >= window.1 || ctx.stopping() {
                                break;
                            }
                            let before = ring.counters().datagrams_queued;
                            let mut err = None;
                            ring.with_sender(|s| {
                                while s.slots_free() > 0 {
                                    let f = match frame(&mut enc, &mut msg, seq) {
                                        Ok(f) => f,
                                        Err(e) => {
                                            err = Some(e.to_string());
                                            return;
                                        }
                                    };
                                    if s.send(me, to, f).is_err() {
                                        return;
                                    }
                                    seq += 1;
                                }
                            });
                            if let Some(e) = err {
                                return Err(e);
                            }
                            if now >= window.0 {
                                sent_in_window += ring.counters().datagrams_queued - before;
                            }
                            ring.poll(&mut Discard).map_err(|e| e.to_string())?;
                            glommio::yield_if_needed().await;
                        }
                        while ring.sends_in_flight() > 0 {
                            ring.poll(&mut Discard).map_err(|e| e.to_string())?;
                            ctx.wait(Some(ctx.now() + Duration::from_millis(1))).await;
                        }
                        let c = ring.counters().clone();
                        ring.close();
                        Ok((sent_in_window, c))
                    }
                }
            };
            inner.await
        },
    )?;
    let results = rt.wait();
    let mut outs = Vec::new();
    for r in results {
        outs.push(r?.map_err(anyhow::Error::msg)?);
    }
    let [(sent, mut c0), (received, c1)]: [(u64, UdpCounters); 2] = outs
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected two shards"))?;
    c0.add(&c1);
    let secs = duration.as_secs_f64();
    Ok((
        Flood {
            received_pps: received as f64 / secs,
            sent_pps: sent as f64 / secs,
        },
        c0,
    ))
}

/// Answers every ping with a fresh frame carrying the same sequence number.
struct Echo {
    enc: Encoder,
    msg: UserMsg,
}

impl UdpHandler for Echo {
    fn on_datagram(
        &mut self,
        out: &mut Sender<'_, '_>,
        socket: SocketId,
        from: SocketAddr,
        _: &Frame<'_>,
        m: &[MessageRef<'_>],
    ) {
        if let Some(seq) = seq_of(m)
            && let Ok(f) = frame(&mut self.enc, &mut self.msg, seq)
        {
            let _ = out.send(socket, from, f);
        }
    }
}

/// Records the round trip of each answered ping and sends the next one at once.
struct Pinger {
    enc: Encoder,
    msg: UserMsg,
    to: SocketAddr,
    seq: u64,
    sent_at: Instant,
    window: (Instant, Instant),
    rec: Recorder,
}

impl Pinger {
    fn ping(&mut self, out: &mut Sender<'_, '_>, socket: SocketId) {
        self.seq += 1;
        self.sent_at = Instant::now();
        if let Ok(f) = frame(&mut self.enc, &mut self.msg, self.seq) {
            let _ = out.send(socket, self.to, f);
        }
    }
}

impl UdpHandler for Pinger {
    fn on_datagram(
        &mut self,
        out: &mut Sender<'_, '_>,
        socket: SocketId,
        _: SocketAddr,
        _: &Frame<'_>,
        m: &[MessageRef<'_>],
    ) {
        if seq_of(m) != Some(self.seq) {
            return; // a late answer to a retried ping
        }
        let now = Instant::now();
        if now >= self.window.0 && now < self.window.1 {
            self.rec.record_duration_at(now, now - self.sent_at);
        }
        if now < self.window.1 {
            self.ping(out, socket);
        }
    }
}

fn engine_ping_pong(
    duration: Duration,
    warmup: Duration,
    udp: UdpConfig,
    shards: Shards,
    spin: Duration,
) -> anyhow::Result<(Recorder, UdpCounters)> {
    let start = Instant::now() + Duration::from_millis(50);
    let window = (start + warmup, start + warmup + duration);
    type PingOut = Result<(Option<Recorder>, UdpCounters), String>;
    let rt: Runtime<(), (), PingOut> = Runtime::start(
        runtime_config("rl-pingpong", shards),
        move |ctx: ShardContext<(), (), SocketAddr>| async move {
            let (mut ring, me, peer) = link(&ctx, shards, udp.clone()).await?;
            let end = window.1 + Duration::from_millis(20);
            if let Some(to) = peer {
                let mut p = Pinger {
                    enc: Encoder::new(LABEL),
                    msg: UserMsg {
                        payload: Vec::new(),
                    },
                    to,
                    seq: 0,
                    sent_at: Instant::now(),
                    window,
                    rec: Recorder::new("engine_rtt_us"),
                };
                ring.with_sender(|s| p.ping(s, me));
                while Instant::now() < end && !ctx.stopping() {
                    ring.poll(&mut p).map_err(|e| e.to_string())?;
                    if spin_then(&mut ring, &mut p, spin)? > 0 {
                        continue;
                    }
                    let retry_at = p.sent_at + PING_RETRY;
                    if Instant::now() >= retry_at && Instant::now() < window.1 {
                        ring.with_sender(|s| p.ping(s, me));
                        continue;
                    }
                    ctx.wait(Some(ctx.clock().at(retry_at.min(end)))).await;
                }
                let c = ring.counters().clone();
                ring.close();
                Ok((Some(p.rec), c))
            } else {
                let mut echo = Echo {
                    enc: Encoder::new(LABEL),
                    msg: UserMsg {
                        payload: Vec::new(),
                    },
                };
                while Instant::now() < end && !ctx.stopping() {
                    ring.poll(&mut echo).map_err(|e| e.to_string())?;
                    if spin_then(&mut ring, &mut echo, spin)? > 0 {
                        continue;
                    }
                    ctx.wait(Some(ctx.clock().at(end))).await;
                }
                let c = ring.counters().clone();
                ring.close();
                Ok((None, c))
            }
        },
    )?;
    let mut rec = None;
    let mut counters = UdpCounters::default();
    for r in rt.wait() {
        let (x, c) = r?.map_err(anyhow::Error::msg)?;
        counters.add(&c);
        if let Some(x) = x {
            rec = Some(x);
        }
    }
    Ok((
        rec.context("the pinging shard returned no histogram")?,
        counters,
    ))
}

/// glommio's `UdpSocket` flood: two executors, one `send_to` / `recv` per datagram.
fn glommio_flood(duration: Duration, warmup: Duration, pin: bool) -> anyhow::Result<Flood> {
    use glommio::net::UdpSocket;
    use glommio::{LocalExecutorBuilder, Placement};
    let start = Instant::now() + Duration::from_millis(50);
    let window = (start + warmup, start + warmup + duration);
    let addr_slot = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let cpus = ringleader_engine::runtime::allowed_cpus();
    let placement = |i: usize| match cpus.get(i) {
        Some(&c) if pin && cpus.len() >= 2 => Placement::Fixed(c),
        _ => Placement::Unbound,
    };
    let rx = {
        let (addr_slot, received, stop) = (
            Arc::clone(&addr_slot),
            Arc::clone(&received),
            Arc::clone(&stop),
        );
        LocalExecutorBuilder::new(placement(1))
            .name("glommio-rx")
            .io_memory(256 << 10)
            .spawn(move || async move {
                let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                set_buffers(&sock);
                *addr_slot.lock().map_err(|_| "poisoned")? =
                    Some(sock.local_addr().map_err(|e| e.to_string())?);
                sock.set_read_timeout(Some(Duration::from_millis(50)))
                    .map_err(|e| e.to_string())?;
                let mut buf = [0u8; 2048];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if sock.recv_from(&mut buf).await.is_ok() {
                        let now = Instant::now();
                        if now >= window.0 && now < window.1 {
                            n += 1;
                        }
                    }
                }
                received.store(n, Ordering::Relaxed);
                Ok::<(), String>(())
            })
            .map_err(|e| anyhow::anyhow!("glommio receiver executor: {e}"))?
    };
    let to = loop {
        if let Some(a) = *addr_slot.lock().map_err(|_| anyhow::anyhow!("poisoned"))? {
            break a;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let tx = LocalExecutorBuilder::new(placement(0))
        .name("glommio-tx")
        .io_memory(256 << 10)
        .spawn(move || async move {
            let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            set_buffers(&sock);
            let buf = [7u8; DATAGRAM_BYTES];
            let mut sent = 0u64;
            loop {
                let now = Instant::now();
                if now >= window.1 {
                    break;
                }
                if sock.send_to(&buf, to).await.is_ok() && now >= window.0 {
                    sent += 1;
                }
            }
            Ok::<u64, String>(sent)
        })
        .map_err(|e| anyhow::anyhow!("glommio sender executor: {e}"))?;
    let sent = tx
        .join()
        .map_err(|e| anyhow::anyhow!("glommio sender: {e}"))?
        .map_err(anyhow::Error::msg)?;
    std::thread::sleep(Duration::from_millis(20));
    stop.store(true, Ordering::Relaxed);
    rx.join()
        .map_err(|e| anyhow::anyhow!("glommio receiver: {e}"))?
        .map_err(anyhow::Error::msg)?;
    let secs = duration.as_secs_f64();
    Ok(Flood {
        received_pps: received.load(Ordering::Relaxed) as f64 / secs,
        sent_pps: sent as f64 / secs,
    })
}

fn set_buffers(sock: &glommio::net::UdpSocket) {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor belongs to `sock`, alive for this call.
    let fd = unsafe { BorrowedFd::borrow_raw(sock.as_raw_fd()) };
    let s = socket2::SockRef::from(&fd);
    let _ = s.set_recv_buffer_size(harness::baselines::UDP_SOCKET_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(harness::baselines::UDP_SOCKET_BUFFER_BYTES);
}

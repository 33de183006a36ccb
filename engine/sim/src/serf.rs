//! Serf clusters in the simulator: SWIM members from [`super::swim::Cluster`] with a
//! [`Serf`] layer beside each, user events, queries, and a synthetic latency model (2-D
//! positions plus a per-member height) against which Vivaldi coordinates are judged.
//!
//! The Serf layers are driven in virtual-time steps of [`SerfScenario::step`]: member events
//! of a step are handed to Serf at its end. Serf only queues broadcasts and sends, which go
//! out with the member's next datagram, so the step adds at most its length to a hop.

use std::time::Duration;

use rand::Rng;
use ringleader_serf::{Serf, SerfConfig, SerfEvent, vivaldi};
use ringleader_swim::{Config, Event};
use ringleader_time::Time;

use super::net::{Latency, LinkModel, NodeIx};
use super::swim::{Cluster, addr_of, name_of};

/// A Serf experiment: everyone joins, `events` user events are fired from random members,
/// `queries` queries are issued, and Vivaldi is compared with the true latencies.
#[derive(Debug, Clone)]
pub struct SerfScenario {
    /// Cluster size.
    pub members: usize,
    /// User events fired after convergence.
    pub events: usize,
    /// Queries issued after the events.
    pub queries: usize,
    /// Datagram loss on every link.
    pub loss: f64,
    /// Probability a datagram is reordered (held back 5 ms).
    pub reorder: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Seed.
    pub seed: u64,
    /// Virtual length of the run.
    pub virtual_secs: u64,
    /// Interval between fired events.
    pub event_interval: Duration,
    /// Driver step.
    pub step: Duration,
    /// SWIM configuration.
    pub swim: Config,
    /// Serf configuration.
    pub serf: SerfConfig,
}

impl SerfScenario {
    /// Defaults for `members` members.
    pub fn new(members: usize, events: usize, loss: f64, seed: u64) -> SerfScenario {
        SerfScenario {
            members,
            events,
            queries: 5,
            loss,
            reorder: 0.0,
            duplicate: 0.0,
            seed,
            virtual_secs: 240,
            event_interval: Duration::from_millis(250),
            step: Duration::from_millis(10),
            swim: Config::lan(),
            serf: SerfConfig {
                relay_factor: 2,
                ..SerfConfig::default()
            },
        }
    }
}

/// What a [`SerfScenario`] measured.
#[derive(Debug, Clone, Default)]
pub struct SerfReport {
    /// Deliveries / (events × live members).
    pub delivery_ratio: f64,
    /// Events delivered more than once to one member.
    pub dup_deliveries: u64,
    /// Fire-to-delivery latency of every delivery, in ms.
    pub event_latency_ms: Vec<u64>,
    /// Responses / live matching members, over all queries.
    pub query_response_ratio: f64,
    /// Median |estimated − true| / true RTT over sampled member pairs.
    pub vivaldi_err_median: f64,
    /// Members running at the end.
    pub live: usize,
}

/// Synthetic geography: RTT(a, b) = |p_a − p_b| + h_a + h_b, in seconds.
struct Geo {
    pos: Vec<(f64, f64)>,
    height: Vec<f64>,
}

impl Geo {
    fn new(n: usize, rng: &mut impl Rng) -> Geo {
        // A 40 ms × 40 ms plane and 0.5–3 ms access links.
        let pos = (0..n)
            .map(|_| (rng.random_range(0.0..0.040), rng.random_range(0.0..0.040)))
            .collect();
        let height = (0..n).map(|_| rng.random_range(0.0005..0.003)).collect();
        Geo { pos, height }
    }

    fn rtt(&self, a: usize, b: usize) -> f64 {
        let (dx, dy) = (self.pos[a].0 - self.pos[b].0, self.pos[a].1 - self.pos[b].1);
        (dx * dx + dy * dy).sqrt() + self.height[a] + self.height[b]
    }
}

/// A simulated cluster of SWIM members each with a Serf layer.
pub struct SerfCluster {
    /// The SWIM cluster underneath (network, crashes, partitions).
    pub swim: Cluster,
    serfs: Vec<Option<Serf>>,
    cfg: SerfConfig,
    keys: Option<[u8; 32]>,
    seed: u64,
    step: Duration,
    last_tick: Time,
    founders: Vec<bool>,
    evs: Vec<(NodeIx, Event)>,
    /// Each node's last snapshot file (encoded bytes), written every `snapshot_interval`
    /// and at leave; it survives a crash, as a file on disk would.
    snapshots: Vec<Option<Vec<u8>>>,
    /// The decoded snapshot a restarted node restores from when its Serf starts.
    restore_pending: Vec<Option<ringleader_serf::snapshot::SnapshotState>>,
    /// How often every Serf writes its snapshot.
    pub snapshot_interval: Duration,
    last_snapshot: Time,
}

impl SerfCluster {
    /// `members` slots (none started) over `link`, stepping Serf every `step`. With `key`,
    /// every member starts with a keyring holding it (for key-management runs).
    pub fn new(
        members: usize,
        swim: Config,
        serf: SerfConfig,
        link: LinkModel,
        seed: u64,
        key: Option<[u8; 32]>,
    ) -> SerfCluster {
        let mut cfg = swim;
        cfg.push_pull_members_max = cfg.push_pull_members_max.max(members);
        SerfCluster {
            swim: Cluster::new(members, cfg, link, seed),
            serfs: (0..members).map(|_| None).collect(),
            cfg: serf,
            keys: key,
            seed,
            step: Duration::from_millis(10),
            last_tick: Time::ZERO,
            founders: vec![false; members],
            evs: Vec::new(),
            snapshots: vec![None; members],
            restore_pending: vec![None; members],
            snapshot_interval: Duration::from_secs(5),
            last_snapshot: Time::ZERO,
        }
    }

    /// Node `i`'s last snapshot, as written.
    pub fn snapshot(&self, i: NodeIx) -> Option<&[u8]> {
        self.snapshots.get(i as usize)?.as_deref()
    }

    /// Overwrites node `i`'s snapshot file (to test corrupt snapshots).
    pub fn set_snapshot(&mut self, i: NodeIx, bytes: Vec<u8>) {
        if let Some(s) = self.snapshots.get_mut(i as usize) {
            *s = Some(bytes);
        }
    }

    fn write_snapshot(&mut self, i: usize) {
        if let (Some(s), Some(m)) = (self.serfs[i].as_ref(), self.swim.member(i as NodeIx)) {
            self.snapshots[i] = Some(ringleader_serf::snapshot::encode(&s.snapshot_state(m)));
        }
    }

    /// Makes node `i` leave gracefully (leave intent, SWIM leave) and writes its snapshot.
    pub fn leave(&mut self, i: NodeIx) {
        self.with(i, |now, s, m| s.leave(now, m));
        self.write_snapshot(i as usize);
    }

    /// Restarts crashed node `i` from its snapshot: it rejoins the members it knew and does
    /// not replay events it had seen. A corrupt snapshot is reported (returned) and ignored:
    /// the node then starts fresh, joining through node 0. Returns the snapshot error, if any.
    pub fn restart(&mut self, i: NodeIx) -> Option<ringleader_serf::snapshot::SnapshotError> {
        let decoded = self.snapshots[i as usize]
            .as_deref()
            .map(ringleader_serf::snapshot::decode);
        let (seeds, err) = match decoded {
            Some(Ok(snap)) => {
                let mut seeds: Vec<NodeIx> = snap
                    .members
                    .iter()
                    .filter_map(|&(_, a)| super::swim::node_of(a))
                    .collect();
                seeds.truncate(3);
                self.restore_pending[i as usize] = Some(snap);
                (seeds, None)
            }
            Some(Err(e)) => (vec![0], Some(e)),
            None => (vec![0], None),
        };
        self.founders[i as usize] = false;
        self.swim.restart(i, seeds);
        err
    }

    /// Starts everyone: three seeds first, the rest join a random seed over `spread`.
    pub fn start_all(&mut self, spread: Duration) {
        let n = self.swim.len();
        let seeds = 3.min(n);
        self.swim.start_at(0, Time::ZERO, Vec::new());
        if n > 0 {
            self.founders[0] = true;
        }
        for s in 1..seeds {
            self.swim
                .start_at(s as NodeIx, Time::from_millis(10), vec![0]);
        }
        let spread = spread.as_millis().max(1) as u64;
        for i in seeds..n {
            let at = Time::from_millis(20 + self.swim.rng().random_range(0..spread));
            let seed = self.swim.rng().random_range(0..seeds) as NodeIx;
            self.swim.start_at(i as NodeIx, at, vec![seed]);
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.swim.now()
    }

    /// Node `i`'s Serf layer, if it runs.
    pub fn serf(&self, i: NodeIx) -> Option<&Serf> {
        self.serfs.get(i as usize)?.as_ref()
    }

    /// Runs `f` on node `i`'s Serf layer and member, then flushes what it queued.
    pub fn with<T>(
        &mut self,
        i: NodeIx,
        f: impl FnOnce(Time, &mut Serf, &mut ringleader_swim::Member<super::SimRng>) -> T,
    ) -> Option<T> {
        let now = self.swim.now();
        let s = self.serfs.get_mut(i as usize)?.as_mut()?;
        let m = self.swim.member_mut(i)?;
        let out = f(now, s, m);
        self.swim.poke(i);
        Some(out)
    }

    /// Crashes node `i` (its Serf state is lost with it).
    pub fn crash(&mut self, i: NodeIx) {
        self.swim.crash(i);
        if let Some(s) = self.serfs.get_mut(i as usize) {
            *s = None;
        }
    }

    /// Runs to `until`, handing every Serf event to `observe`.
    pub fn run_until(
        &mut self,
        until: Time,
        observe: &mut impl FnMut(Time, NodeIx, &mut Serf, SerfEvent),
    ) {
        let n = self.swim.len();
        while self.swim.now() < until {
            let now = (self.swim.now() + self.step).min(until);
            self.evs.clear();
            let evs = &mut self.evs;
            self.swim
                .run_until(now, &mut |_, i, e| evs.push((i, e.clone())));
            let mut touched: Vec<NodeIx> = Vec::new();
            for i in 0..n {
                if self.serfs[i].is_none() && self.swim.is_running(i as NodeIx) {
                    if let Some(m) = self.swim.member_mut(i as NodeIx) {
                        let keyring = self.keys.map(ringleader_wire::Keyring::new);
                        let mut s = Serf::new(
                            self.cfg.clone(),
                            &name_of(i as NodeIx),
                            addr_of(i as NodeIx),
                            self.seed ^ i as u64,
                            keyring,
                        );
                        if let Some(snap) = self.restore_pending[i].take() {
                            s.restore(&snap);
                        }
                        s.start(m, !self.founders[i]);
                        m.set_coordinate(Some(s.coordinate().clone()));
                        self.serfs[i] = Some(s);
                        touched.push(i as NodeIx);
                    }
                }
            }
            for (i, e) in self.evs.drain(..) {
                if let (Some(s), Some(m)) =
                    (self.serfs[i as usize].as_mut(), self.swim.member_mut(i))
                {
                    s.handle_event(now, m, &e);
                    touched.push(i);
                }
            }
            let tick = now >= self.last_tick + Duration::from_millis(100);
            for i in 0..n {
                let Some(s) = self.serfs[i].as_mut() else {
                    continue;
                };
                if tick {
                    if let Some(m) = self.swim.member_mut(i as NodeIx) {
                        s.tick(now, m);
                    }
                    touched.push(i as NodeIx);
                }
                let mut any = false;
                while let Some(ev) = s.poll_event() {
                    observe(now, i as NodeIx, s, ev);
                    any = true;
                }
                if any {
                    if let Some(m) = self.swim.member_mut(i as NodeIx) {
                        s.flush(now, m);
                    }
                    touched.push(i as NodeIx);
                }
            }
            if tick {
                self.last_tick = now;
            }
            if now >= self.last_snapshot + self.snapshot_interval {
                self.last_snapshot = now;
                for i in 0..n {
                    self.write_snapshot(i);
                }
            }
            touched.sort_unstable();
            touched.dedup();
            for i in touched {
                self.swim.poke(i);
            }
        }
    }
}

impl SerfScenario {
    /// Runs the experiment.
    pub fn run(&self, mut progress: impl FnMut(Duration)) -> SerfReport {
        let n = self.members;
        let base = LinkModel {
            loss: self.loss,
            reorder: self.reorder,
            duplicate: self.duplicate,
            ..LinkModel::new(Latency::lan())
        };
        let mut c = SerfCluster::new(
            n,
            self.swim.clone(),
            self.serf.clone(),
            base,
            self.seed,
            None,
        );
        c.step = self.step;
        let geo = Geo::new(n, c.swim.rng());
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    let one_way = Duration::from_secs_f64(geo.rtt(a, b) / 2.0);
                    c.swim.net.set_link(
                        a as NodeIx,
                        b as NodeIx,
                        LinkModel {
                            latency: Latency::Fixed(one_way),
                            ..base
                        },
                    );
                }
            }
        }
        c.start_all(Duration::from_millis((n as u64).clamp(1_000, 10_000)));
        let end = Time::ZERO + Duration::from_secs(self.virtual_secs);
        let fire_from = Time::ZERO + Duration::from_secs(30);
        let query_from =
            fire_from + self.event_interval * self.events as u32 + Duration::from_secs(5);
        let mut fired: Vec<Time> = Vec::new();
        // delivered[event][member]: delivery count.
        let mut delivered: Vec<Vec<u8>> = Vec::new();
        let mut latencies = Vec::new();
        let mut queries_fired = 0usize;
        let mut query_results: Vec<(usize, usize)> = Vec::new(); // (responses, live at issue)
        let mut pending_queries: Vec<(NodeIx, u32, usize)> = Vec::new();
        let mut now = Time::ZERO;
        while now < end {
            now = (now + Duration::from_secs(1)).min(end);
            // Fire events and queries on schedule, within this second.
            loop {
                let next_event = (fired.len() < self.events)
                    .then(|| fire_from + self.event_interval * fired.len() as u32);
                let next_query = (queries_fired < self.queries)
                    .then(|| query_from + Duration::from_secs(2) * queries_fired as u32);
                let next = match (next_event, next_query) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => now,
                };
                let until = next.min(now);
                c.run_until(until, &mut |t, i, s, ev| match ev {
                    SerfEvent::User { name, .. } => {
                        if let Some(k) = name
                            .strip_prefix("ev-")
                            .and_then(|k| k.parse::<usize>().ok())
                        {
                            if let (Some(d), Some(&f)) = (delivered.get_mut(k), fired.get(k)) {
                                d[i as usize] = d[i as usize].saturating_add(1);
                                if d[i as usize] == 1 {
                                    latencies.push((t - f).as_millis() as u64);
                                }
                            }
                        }
                    }
                    SerfEvent::Query(q) => s.queue_response(q, b"pong".to_vec()),
                    SerfEvent::QueryDone { id, responses, .. } => {
                        if let Some(p) = pending_queries
                            .iter()
                            .position(|&(f, q, _)| f == i && q == id)
                        {
                            let (_, _, live) = pending_queries.swap_remove(p);
                            query_results.push((responses, live));
                        }
                    }
                    _ => {}
                });
                if until >= now {
                    break;
                }
                if next_event == Some(until) {
                    let from = c.swim.random_running().unwrap_or(0);
                    let k = fired.len();
                    let t = c.now();
                    let ok = c.with(from, |_, s, m| {
                        s.user_event(m, &format!("ev-{k}"), &(k as u64).to_le_bytes(), false)
                            .is_ok()
                    });
                    if ok == Some(true) {
                        fired.push(t);
                        delivered.push(vec![0; n]);
                    }
                } else {
                    let from = c.swim.random_running().unwrap_or(0);
                    let live = (0..n).filter(|&i| c.swim.is_running(i as NodeIx)).count();
                    if let Some(Ok(id)) = c.with(from, |now, s, m| {
                        s.query(now, m, "ping", b"", Vec::new(), None)
                    }) {
                        pending_queries.push((from, id, live));
                    }
                    queries_fired += 1;
                }
            }
            progress(now - Time::ZERO);
        }
        let live: Vec<usize> = (0..n).filter(|&i| c.swim.is_running(i as NodeIx)).collect();
        let mut report = SerfReport {
            live: live.len(),
            ..SerfReport::default()
        };
        let mut deliveries = 0u64;
        for d in &delivered {
            for &i in &live {
                if d[i] >= 1 {
                    deliveries += 1;
                }
                report.dup_deliveries += u64::from(d[i].saturating_sub(1));
            }
        }
        let expected = (fired.len() * live.len()).max(1) as f64;
        report.delivery_ratio = if fired.is_empty() {
            0.0
        } else {
            deliveries as f64 / expected
        };
        latencies.sort_unstable();
        report.event_latency_ms = latencies;
        let (resp, want) = query_results
            .iter()
            .fold((0usize, 0usize), |(r, w), &(a, b)| (r + a, w + b));
        report.query_response_ratio = if want == 0 {
            0.0
        } else {
            resp as f64 / want as f64
        };
        // Vivaldi: sampled pairs of live members.
        let mut errs = Vec::new();
        let mut rng = super::sched::rng(self.seed ^ 0x5e7f);
        if live.len() >= 2 {
            for _ in 0..20_000 {
                let a = live[rng.random_range(0..live.len())];
                let b = live[rng.random_range(0..live.len())];
                if a == b {
                    continue;
                }
                let (Some(sa), Some(sb)) = (c.serf(a as NodeIx), c.serf(b as NodeIx)) else {
                    continue;
                };
                let est = vivaldi::estimate_rtt(sa.coordinate(), sb.coordinate());
                let truth = geo.rtt(a, b);
                errs.push((est - truth).abs() / truth);
            }
        }
        errs.sort_by(f64::total_cmp);
        report.vivaldi_err_median = errs.get(errs.len() / 2).copied().unwrap_or(f64::NAN);
        report
    }
}

//! SWIM clusters in the simulator: the real [`Member`] state machine, thousands of them, on
//! a virtual clock and a simulated [`Net`].
//!
//! All members share one [`Directory`], so node `i` is named `node-i` with name id `i`, and
//! members hand each other compact [`Item`]s directly (the wire encoding is tested on its
//! own; sizes are the exact encoded sizes). Every member event passes through the caller's
//! observer and into a trace hash: the same seed gives the same hash.
//!
//! A slot can also run a member under another name ([`Cluster::start_named_at`]: churn,
//! where every member that ever joined has a name of its own). The cluster reclaims what no
//! member holds any more: when the directory says a collection is due, it marks the slot
//! names (always held, so that name id `i` stays node `i`), every member's ids and every
//! item in flight, and the directory frees the rest.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use rand::{Rng, RngCore};
use ringleader_swim::{
    Config, Directory, Event, Item, Marks, Member, Output, SharedDirectory, StreamError,
    StreamRequest, StreamResponse,
};
use ringleader_time::Time;

use super::net::{LinkModel, Net, NodeIx};
use super::sched::{Scheduler, SimRng, rng};

/// The address of simulated node `i`.
pub fn addr_of(i: NodeIx) -> SocketAddr {
    let o = i.to_be_bytes();
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, o[1], o[2], o[3]), 7946))
}

/// The simulated node at `addr`, if it is one.
pub fn node_of(addr: SocketAddr) -> Option<NodeIx> {
    match addr {
        SocketAddr::V4(a) if a.port() == 7946 && a.ip().octets()[0] == 10 => {
            let o = a.ip().octets();
            Some(u32::from_be_bytes([0, o[1], o[2], o[3]]))
        }
        _ => None,
    }
}

/// The name of simulated node `i`.
pub fn name_of(i: NodeIx) -> String {
    format!("node-{i}")
}

enum Ev {
    Wake(NodeIx),
    Datagram {
        to: NodeIx,
        from: NodeIx,
        items: Vec<Item>,
    },
    StreamRequest {
        to: NodeIx,
        from: NodeIx,
        id: u64,
        request: StreamRequest,
    },
    StreamResponse {
        to: NodeIx,
        id: u64,
        response: Result<StreamResponse, StreamError>,
        life: u32,
    },
    Start {
        node: NodeIx,
        /// `None`: the slot's own name, `node-i`.
        name: Option<String>,
        seeds: Vec<NodeIx>,
    },
}

impl Ev {
    /// Marks the directory ids this event carries.
    fn mark_ids(&self, marks: &mut Marks) {
        match self {
            Ev::Datagram { items, .. } => items.iter().for_each(|i| marks.item(i)),
            Ev::StreamRequest { request, .. } => marks.stream_request(request),
            Ev::StreamResponse {
                response: Ok(r), ..
            } => marks.stream_response(r),
            Ev::StreamResponse { .. } | Ev::Wake(_) | Ev::Start { .. } => {}
        }
    }
}

struct Slot {
    member: Option<Member<SimRng>>,
    wake_at: Time,
    /// Bumped at every crash, so that answers to a previous life are dropped.
    life: u32,
}

/// Traffic counters of the whole cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams sent.
    pub datagrams: u64,
    /// Their bytes (exact frame sizes).
    pub datagram_bytes: u64,
    /// Messages in those datagrams.
    pub items: u64,
    /// Stream messages (requests and responses).
    pub streams: u64,
    /// Their bytes (approximate).
    pub stream_bytes: u64,
}

/// A simulated SWIM cluster.
pub struct Cluster {
    sched: Scheduler<Ev>,
    /// The network (change loss, partition, crash and slow nodes through it).
    pub net: Net,
    rng: SimRng,
    dir: SharedDirectory,
    cfg: Config,
    slots: Vec<Slot>,
    trace: u64,
    traffic: Traffic,
    events: u64,
}

fn mix(h: u64, v: u64) -> u64 {
    (h ^ v).wrapping_mul(0x100_0000_01b3).rotate_left(17)
}

impl Cluster {
    /// A cluster of `members` slots (none started) with member configuration `cfg`,
    /// links behaving as `link`, and randomness from `seed`.
    ///
    /// The directory has room for the slot names, as many members again under other names
    /// (one per slot), as many failed members awaiting their reap, and the reconnect
    /// memory (`reconnect_memory_max`): `3 × members + reconnect_memory_max` names.
    pub fn new(members: usize, cfg: Config, link: LinkModel, seed: u64) -> Cluster {
        let dir = Directory::shared(
            members
                .saturating_mul(3)
                .saturating_add(cfg.reconnect_memory_max),
            cfg.meta_bytes_max,
        );
        {
            let mut d = dir.borrow_mut();
            for i in 0..members {
                // Name i and its first (name, address, metadata) triple both get id i, so
                // that a push-pull state (in name order) reads the directory in order.
                let id = d.intern_name(&name_of(i as NodeIx));
                debug_assert_eq!(id, Ok(i as u32));
                let info = d.intern_info(i as u32, addr_of(i as NodeIx), &[]);
                debug_assert_eq!(info, Ok(i as u32));
            }
        }
        Cluster {
            sched: Scheduler::new(),
            net: Net::new(members, link),
            rng: rng(seed),
            dir,
            cfg,
            slots: (0..members)
                .map(|_| Slot {
                    member: None,
                    wake_at: Time::MAX,
                    life: 0,
                })
                .collect(),
            trace: 0xcbf2_9ce4_8422_2325,
            traffic: Traffic::default(),
            events: 0,
        }
    }

    /// Slots in the cluster.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the cluster has no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Virtual now.
    pub fn now(&self) -> Time {
        self.sched.now()
    }

    /// The shared directory.
    pub fn directory(&self) -> &SharedDirectory {
        &self.dir
    }

    /// The member of node `i`, if it runs.
    pub fn member(&self, i: NodeIx) -> Option<&Member<SimRng>> {
        self.slots.get(i as usize)?.member.as_ref()
    }

    /// Mutable access to the member of node `i` (for commands; call [`Cluster::poke`] after).
    pub fn member_mut(&mut self, i: NodeIx) -> Option<&mut Member<SimRng>> {
        self.slots.get_mut(i as usize)?.member.as_mut()
    }

    /// Whether node `i` runs.
    pub fn is_running(&self, i: NodeIx) -> bool {
        self.member(i).is_some()
    }

    /// Hash of every event so far: equal seeds give equal hashes.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Traffic so far.
    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Events delivered to observers so far.
    pub fn events_seen(&self) -> u64 {
        self.events
    }

    /// Starts node `i` at `at` and joins it through `seeds` (none: it starts alone).
    pub fn start_at(&mut self, i: NodeIx, at: Time, seeds: Vec<NodeIx>) {
        self.sched.schedule(
            at,
            Ev::Start {
                node: i,
                name: None,
                seeds,
            },
        );
    }

    /// Starts a member named `name` in slot `i` (on the slot's address) at `at`, joining
    /// through `seeds`. If the directory has no room for the name, the slot stays empty
    /// (see [`Cluster::is_running`]).
    pub fn start_named_at(&mut self, i: NodeIx, name: String, at: Time, seeds: Vec<NodeIx>) {
        self.sched.schedule(
            at,
            Ev::Start {
                node: i,
                name: Some(name),
                seeds,
            },
        );
    }

    /// Reclaims every name and triple no member and no item in flight holds any more
    /// (the slot names are always held). Runs by itself when the directory says it is
    /// due; returns (names, triples) freed.
    pub fn collect(&mut self) -> (usize, usize) {
        let now = self.now();
        let slots = self.slots.len() as u32;
        let Cluster {
            dir,
            slots: s,
            sched,
            ..
        } = self;
        dir.borrow_mut().collect(now, |marks| {
            for i in 0..slots {
                marks.node(i);
                marks.info(i);
            }
            s.iter()
                .filter_map(|s| s.member.as_ref())
                .for_each(|m| m.mark_ids(marks));
            sched.pending().for_each(|e| e.mark_ids(marks));
        })
    }

    /// Crashes node `i` now: its state is lost and nothing reaches it.
    pub fn crash(&mut self, i: NodeIx) {
        if let Some(s) = self.slots.get_mut(i as usize) {
            s.member = None;
            s.life += 1;
            s.wake_at = Time::MAX;
        }
        self.net.set_down(i, true);
        self.trace = mix(self.trace, 0xc0 ^ u64::from(i));
    }

    /// Restarts a crashed node `i` now with a fresh state, joining through `seeds`.
    pub fn restart(&mut self, i: NodeIx, seeds: Vec<NodeIx>) {
        self.net.set_down(i, false);
        let now = self.now();
        self.start_at(i, now, seeds);
    }

    /// Makes node `i` leave gracefully now (it keeps running so the news spreads).
    pub fn leave(&mut self, i: NodeIx) {
        let now = self.now();
        if let Some(m) = self.member_mut(i) {
            m.leave(now);
        }
        self.poke(i);
    }

    /// Flushes node `i`'s outputs and timers after a command given through
    /// [`Cluster::member_mut`].
    pub fn poke(&mut self, i: NodeIx) {
        let mut sink = |_: Time, _: NodeIx, _: &Event| {};
        self.flush(i, &mut sink);
    }

    /// Runs every event up to `until`, handing member events to `observe`.
    pub fn run_until(&mut self, until: Time, observe: &mut impl FnMut(Time, NodeIx, &Event)) {
        while let Some((now, ev)) = self.sched.pop_until(until) {
            self.step(now, ev, observe);
            if self.dir.borrow().collect_due(now) {
                self.collect();
            }
        }
        self.sched.advance_to(until);
    }

    fn step(&mut self, now: Time, ev: Ev, observe: &mut impl FnMut(Time, NodeIx, &Event)) {
        match ev {
            Ev::Wake(i) => {
                let slot = &mut self.slots[i as usize];
                if slot.wake_at != now {
                    return;
                }
                slot.wake_at = Time::MAX;
                let Some(m) = slot.member.as_mut() else {
                    return;
                };
                m.handle_timeout(now);
                self.flush(i, observe);
            }
            Ev::Datagram { to, from, items } => {
                if !self.net.connected(from, to) {
                    self.net.stats.cut += 1;
                    return;
                }
                let Some(m) = self.slots[to as usize].member.as_mut() else {
                    return;
                };
                self.trace = mix(
                    self.trace,
                    now.as_nanos() ^ (u64::from(to) << 32) ^ items.len() as u64,
                );
                m.handle_items(now, addr_of(from), items);
                self.flush(to, observe);
            }
            Ev::StreamRequest {
                to,
                from,
                id,
                request,
            } => {
                let life = self.slots[from as usize].life;
                let bytes = 64;
                let answer = match self.slots[to as usize].member.as_mut() {
                    Some(m) if self.net.connected(from, to) => {
                        let r = m.handle_stream_request(now, addr_of(from), request);
                        self.flush(to, observe);
                        Some(r)
                    }
                    _ => None,
                };
                match answer {
                    Some(r) => {
                        let size = match &r {
                            StreamResponse::PushPull(s) => {
                                64 + s.states.len() * 48
                                    + s.delta.digest.len() * 4
                                    + s.delta.differing.len() * 2
                            }
                            _ => bytes,
                        };
                        self.traffic.streams += 1;
                        self.traffic.stream_bytes += size as u64;
                        match self.net.stream(&mut self.rng, to, from, size) {
                            Some(d) => self.sched.schedule(
                                now + d,
                                Ev::StreamResponse {
                                    to: from,
                                    id,
                                    response: Ok(r),
                                    life,
                                },
                            ),
                            None => self.sched.schedule(
                                now + Duration::from_millis(self.cfg.stream_timeout_ms),
                                Ev::StreamResponse {
                                    to: from,
                                    id,
                                    response: Err(StreamError::Timeout),
                                    life,
                                },
                            ),
                        }
                    }
                    None => {
                        // Refused (crashed peer): the sender learns after a round trip.
                        let rtt = self.net.default_link().latency.sample(&mut self.rng) * 2;
                        self.sched.schedule(
                            now + rtt,
                            Ev::StreamResponse {
                                to: from,
                                id,
                                response: Err(StreamError::Unreachable),
                                life,
                            },
                        );
                    }
                }
            }
            Ev::StreamResponse {
                to,
                id,
                response,
                life,
            } => {
                let slot = &mut self.slots[to as usize];
                if slot.life != life {
                    return;
                }
                let Some(m) = slot.member.as_mut() else {
                    return;
                };
                m.handle_stream_response(now, id, response);
                self.flush(to, observe);
            }
            Ev::Start { node, name, seeds } => {
                let slot_rng = rng(self.rng.next_u64());
                let member = Member::new(
                    self.cfg.clone(),
                    self.dir.clone(),
                    &name.unwrap_or_else(|| name_of(node)),
                    addr_of(node),
                    &[],
                    slot_rng,
                    now,
                );
                let Ok(mut m) = member else { return };
                let seed_addrs: Vec<SocketAddr> = seeds
                    .iter()
                    .filter(|&&s| s != node)
                    .map(|&s| addr_of(s))
                    .collect();
                if !seed_addrs.is_empty() {
                    let _ = m.join(now, &seed_addrs);
                }
                self.net.set_down(node, false);
                self.slots[node as usize].member = Some(m);
                self.trace = mix(self.trace, 0x5a ^ u64::from(node));
                self.flush(node, observe);
            }
        }
    }

    /// Sends a member's outputs into the network, hands its events to `observe`, and
    /// schedules its next timer.
    fn flush(&mut self, i: NodeIx, observe: &mut impl FnMut(Time, NodeIx, &Event)) {
        let now = self.now();
        let n_slots = self.slots.len();
        let life = self.slots[i as usize].life;
        let Some(m) = self.slots[i as usize].member.as_mut() else {
            return;
        };
        while let Some(e) = m.poll_event() {
            self.events += 1;
            self.trace = mix(self.trace, event_hash(now, i, &e));
            observe(now, i, &e);
        }
        let deadline = m.poll_timeout();
        while let Some(out) = m.poll_output() {
            match out {
                Output::Datagram(t) => {
                    self.traffic.datagrams += 1;
                    self.traffic.datagram_bytes += t.bytes as u64;
                    self.traffic.items += t.items.len() as u64;
                    let Some(to) = node_of(t.to).filter(|&n| (n as usize) < n_slots) else {
                        continue;
                    };
                    let fate = self.net.datagram(&mut self.rng, i, to, t.bytes);
                    match fate.deliveries {
                        [Some(a), Some(b)] => {
                            self.sched.schedule(
                                now + a,
                                Ev::Datagram {
                                    to,
                                    from: i,
                                    items: t.items.clone(),
                                },
                            );
                            self.sched.schedule(
                                now + b,
                                Ev::Datagram {
                                    to,
                                    from: i,
                                    items: t.items,
                                },
                            );
                        }
                        [Some(a), None] | [None, Some(a)] => {
                            self.sched.schedule(
                                now + a,
                                Ev::Datagram {
                                    to,
                                    from: i,
                                    items: t.items,
                                },
                            );
                        }
                        [None, None] => {}
                    }
                }
                Output::Stream(s) => {
                    self.traffic.streams += 1;
                    self.traffic.stream_bytes += s.bytes as u64;
                    let Some(to) = node_of(s.to).filter(|&n| (n as usize) < n_slots) else {
                        self.sched.schedule(
                            now,
                            Ev::StreamResponse {
                                to: i,
                                id: s.id,
                                response: Err(StreamError::Unreachable),
                                life,
                            },
                        );
                        continue;
                    };
                    match self.net.stream(&mut self.rng, i, to, s.bytes) {
                        Some(d) => self.sched.schedule(
                            now + d,
                            Ev::StreamRequest {
                                to,
                                from: i,
                                id: s.id,
                                request: s.request,
                            },
                        ),
                        None if self.net.is_down(to) => {
                            let rtt = self.net.default_link().latency.sample(&mut self.rng) * 2;
                            self.sched.schedule(
                                now + rtt,
                                Ev::StreamResponse {
                                    to: i,
                                    id: s.id,
                                    response: Err(StreamError::Unreachable),
                                    life,
                                },
                            );
                        }
                        // Partitioned: no answer; the member's own stream deadline expires.
                        None => {}
                    }
                }
            }
        }
        if let Some(t) = deadline {
            let slot = &mut self.slots[i as usize];
            let t = t.max(now);
            if t < slot.wake_at {
                slot.wake_at = t;
                self.sched.schedule(t, Ev::Wake(i));
            }
        }
    }

    /// A random running node, from the cluster's RNG.
    pub fn random_running(&mut self) -> Option<NodeIx> {
        let running: Vec<NodeIx> = (0..self.slots.len() as NodeIx)
            .filter(|&i| self.is_running(i))
            .collect();
        if running.is_empty() {
            return None;
        }
        Some(running[self.rng.random_range(0..running.len())])
    }

    /// The cluster's RNG (for scenario choices that must replay with the seed).
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }
}

fn event_hash(now: Time, i: NodeIx, e: &Event) -> u64 {
    let (kind, a, b) = match e {
        Event::Up { node, info } => (1, *node, *info),
        Event::Suspect { node, from } => (2, *node, *from),
        Event::AliveAgain { node } => (3, *node, 0),
        Event::Down { node, from } => (4, *node, *from),
        Event::Left { node } => (5, *node, 0),
        Event::Updated { node, info } => (6, *node, *info),
        Event::Reaped { node } => (7, *node, 0),
        Event::Refuted { incarnation } => (8, *incarnation as u32, 0),
        Event::Message { .. } => (9, 0, 0),
        Event::UserState { from, .. } => (10, *from, 0),
        Event::Rtt { node, rtt, .. } => (11, *node, rtt.as_micros() as u32),
        Event::Joined { ok, .. } => (12, u32::from(*ok), 0),
    };
    now.as_nanos() ^ (u64::from(i) << 40) ^ (kind << 56) ^ (u64::from(a) << 20) ^ u64::from(b)
}

/// A standard experiment: everyone joins through seeds, then members are killed and made
/// slow, and detection and accuracy are measured (the `sim swim` benchmark and the tests).
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Cluster size.
    pub members: usize,
    /// Member configuration (preset and Lifeguard on/off).
    pub cfg: Config,
    /// Link model (latency); `loss` below overrides its loss.
    pub link: LinkModel,
    /// Datagram loss probability on every link, for the whole run.
    pub loss: f64,
    /// Members crashed after convergence.
    pub kill: usize,
    /// Other members made slow after convergence.
    pub slow: usize,
    /// Extra processing delay of everything a slow member receives.
    pub slow_delay: super::net::Latency,
    /// Virtual length of the run.
    pub virtual_secs: u64,
    /// Seed.
    pub seed: u64,
    /// Seed members everyone else joins through.
    pub seeds: usize,
    /// Joins start uniformly over this long.
    pub join_spread: Duration,
}

impl Scenario {
    /// Defaults for `members` members with `cfg`.
    pub fn new(members: usize, cfg: Config, link: LinkModel, seed: u64) -> Scenario {
        let spread_ms = (members as u64).clamp(1_000, 10_000);
        Scenario {
            members,
            cfg,
            link,
            loss: 0.0,
            kill: 0,
            slow: 0,
            slow_delay: super::net::Latency::Uniform {
                min: Duration::from_millis(200),
                max: Duration::from_millis(2_000),
            },
            virtual_secs: 120,
            seed,
            seeds: 3,
            join_spread: Duration::from_millis(spread_ms),
        }
    }
}

/// What a [`Scenario`] measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Virtual time until every member saw every member alive (None: never).
    pub converge_ms: Option<u64>,
    /// Virtual time of the kills.
    pub kill_at_ms: u64,
    /// Members killed.
    pub killed: Vec<NodeIx>,
    /// Members made slow.
    pub slowed: Vec<NodeIx>,
    /// For each (live member, killed member) pair that was detected: ms from the kill.
    pub detect_ms: Vec<u64>,
    /// (live member, killed member) pairs never detected.
    pub undetected: u64,
    /// Distinct live members that anyone marked dead.
    pub false_positives: u64,
    /// (observer, live member) pairs marked dead.
    pub false_positive_events: u64,
    /// Traffic of the whole run.
    pub traffic: Traffic,
    /// Trace hash of the run.
    pub trace_hash: u64,
    /// Member events observed.
    pub events: u64,
    /// Largest broadcast queue seen at the end, and drops over all members.
    pub broadcasts_dropped: u64,
}

impl Scenario {
    /// Runs the scenario; `progress` is called with the virtual time every virtual second.
    pub fn run(&self, mut progress: impl FnMut(Duration)) -> Report {
        let n = self.members;
        let mut cfg = self.cfg.clone();
        if n > cfg.push_pull_members_max {
            cfg.push_pull_members_max = n;
        }
        let link = LinkModel {
            loss: self.loss,
            ..self.link
        };
        let mut c = Cluster::new(n, cfg, link, self.seed);
        let seeds: Vec<NodeIx> = (0..self.seeds.clamp(1, n.max(1)) as NodeIx).collect();
        c.start_at(0, Time::ZERO, Vec::new());
        for &s in &seeds[1..] {
            c.start_at(s, Time::from_millis(10), vec![0]);
        }
        let spread = self.join_spread.as_nanos() as u64;
        for i in seeds.len()..n {
            let at = Time::from_millis(20)
                + Duration::from_nanos(c.rng().random_range(0..spread.max(1)));
            // memberlist's Join(seeds): a push-pull with every seed, so that every seed
            // knows every member.
            c.start_at(i as NodeIx, at, seeds.clone());
        }
        let end = Time::ZERO + Duration::from_secs(self.virtual_secs);
        let mut report = Report::default();
        // Kill/fp bookkeeping shared with the observer.
        let mut killed_ix: Vec<u32> = vec![u32::MAX; n];
        let mut detected: Vec<bool> = Vec::new();
        let mut kill_at: Option<Time> = None;
        let mut fp_marked = vec![false; n];
        let mut fp_pairs = 0u64;
        let mut detect_ms: Vec<u64> = Vec::new();
        let step = Duration::from_millis(50);
        let mut t = Time::ZERO;
        let mut last_progress = Time::ZERO;
        let latest_kill = Time::ZERO + Duration::from_secs(self.virtual_secs) / 2;
        while t < end {
            t = (t + step).min(end);
            {
                let killed_ix = &killed_ix;
                let detected = &mut detected;
                let fp_marked = &mut fp_marked;
                let fp_pairs = &mut fp_pairs;
                let detect_ms = &mut detect_ms;
                let kill_at = kill_at;
                let mut observe = |now: Time, obs: NodeIx, e: &Event| {
                    if let Event::Down { node, .. } = e {
                        let k = killed_ix[*node as usize];
                        if k != u32::MAX {
                            let slot = k as usize * n + obs as usize;
                            if !detected[slot] {
                                detected[slot] = true;
                                if let Some(at) = kill_at {
                                    detect_ms.push(now.saturating_since(at).as_millis() as u64);
                                }
                            }
                        } else {
                            *fp_pairs += 1;
                            fp_marked[*node as usize] = true;
                        }
                    }
                };
                c.run_until(t, &mut observe);
            }
            if t.saturating_since(last_progress) >= Duration::from_secs(1) {
                last_progress = t;
                progress(t.saturating_since(Time::ZERO));
            }
            if report.converge_ms.is_none() && kill_at.is_none() {
                let all = (0..n as NodeIx).all(|i| {
                    c.member(i)
                        .is_some_and(|m| m.count(ringleader_swim::MemberState::Alive) == n)
                });
                if all {
                    report.converge_ms = Some(t.as_millis());
                }
            }
            if kill_at.is_none() && (report.converge_ms.is_some() || t >= latest_kill) {
                kill_at = Some(t);
                report.kill_at_ms = t.as_millis();
                let seed_count = seeds.len();
                let mut candidates: Vec<NodeIx> = (seed_count as NodeIx..n as NodeIx).collect();
                // Deterministic partial shuffle.
                let want = (self.kill + self.slow).min(candidates.len());
                for j in 0..want {
                    let r = c.rng().random_range(j..candidates.len());
                    candidates.swap(j, r);
                }
                let kills = self.kill.min(want);
                report.killed = candidates[..kills].to_vec();
                report.slowed = candidates[kills..want].to_vec();
                detected = vec![false; kills * n];
                for (k, &v) in report.killed.iter().enumerate() {
                    killed_ix[v as usize] = k as u32;
                    c.crash(v);
                }
                for &v in &report.slowed {
                    c.net.set_slow(v, Some(self.slow_delay));
                }
            }
        }
        // Completeness: every member still running must have detected every killed one.
        for (k, _) in report.killed.iter().enumerate() {
            for obs in 0..n as NodeIx {
                if c.is_running(obs) && !detected[k * n + obs as usize] {
                    report.undetected += 1;
                }
            }
        }
        report.detect_ms = detect_ms;
        report.false_positives = fp_marked.iter().filter(|&&m| m).count() as u64;
        report.false_positive_events = fp_pairs;
        report.traffic = c.traffic();
        report.trace_hash = c.trace_hash();
        report.events = c.events_seen();
        report.broadcasts_dropped = (0..n as NodeIx)
            .filter_map(|i| c.member(i))
            .map(|m| m.broadcasts_dropped())
            .sum();
        report
    }
}

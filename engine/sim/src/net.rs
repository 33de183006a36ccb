//! A simulated network: per-link latency distributions, loss, duplication, reordering,
//! partitions between sets of nodes, crashed nodes, slow nodes, and a reliable-stream model.
//!
//! It decides the fate of each message (when it arrives, if at all) and holds no payloads,
//! so any simulator can use it: nodes are plain indexes, and the caller schedules its own
//! payload type on its own [`Scheduler`](super::Scheduler) at the times it returns. It
//! draws randomness only from the RNG passed in, so a seeded run replays exactly.

use std::time::Duration;

use rand::Rng;
use ringleader_swim::FxHashMap;

/// A node of the simulated network.
pub type NodeIx = u32;

/// A one-way latency distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Uniform in `[min, max]`.
    Uniform {
        /// Shortest.
        min: Duration,
        /// Longest.
        max: Duration,
    },
    /// `base` plus uniform jitter in `[0, jitter]`, and with probability `tail_p` an extra
    /// exponentially distributed delay of mean `tail` (a long tail, as on real networks).
    Tail {
        /// Fixed part.
        base: Duration,
        /// Uniform jitter.
        jitter: Duration,
        /// Probability of a tail delay.
        tail_p: f64,
        /// Mean of the tail delay.
        tail: Duration,
    },
}

impl Latency {
    /// Draws one delay.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { min, max } => {
                if max <= min {
                    min
                } else {
                    let span = (max - min).as_nanos() as u64;
                    min + Duration::from_nanos(rng.random_range(0..=span))
                }
            }
            Latency::Tail {
                base,
                jitter,
                tail_p,
                tail,
            } => {
                let j = jitter.as_nanos() as u64;
                let mut d =
                    base + Duration::from_nanos(if j == 0 { 0 } else { rng.random_range(0..=j) });
                if tail_p > 0.0 && rng.random_bool(tail_p.clamp(0.0, 1.0)) {
                    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
                    d += tail.mul_f64(-u.ln()).min(tail * 20);
                }
                d
            }
        }
    }

    /// A LAN: 0.1–0.5 ms.
    pub fn lan() -> Latency {
        Latency::Tail {
            base: Duration::from_micros(100),
            jitter: Duration::from_micros(400),
            tail_p: 0.01,
            tail: Duration::from_millis(2),
        }
    }

    /// A WAN: 20–60 ms with a tail.
    pub fn wan() -> Latency {
        Latency::Tail {
            base: Duration::from_millis(20),
            jitter: Duration::from_millis(40),
            tail_p: 0.02,
            tail: Duration::from_millis(50),
        }
    }

    /// Loopback: 10–60 µs.
    pub fn local() -> Latency {
        Latency::Uniform {
            min: Duration::from_micros(10),
            max: Duration::from_micros(60),
        }
    }
}

/// How one direction of a link behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    /// One-way latency.
    pub latency: Latency,
    /// Probability a datagram is lost.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Probability a datagram is held back by `reorder_delay` extra (overtaken by later ones).
    pub reorder: f64,
    /// Extra delay of a reordered datagram.
    pub reorder_delay: Duration,
    /// Stream bandwidth, bytes per second (transfer time of large stream messages).
    pub stream_bytes_per_s: u64,
}

impl LinkModel {
    /// A link with `latency` and nothing going wrong.
    pub fn new(latency: Latency) -> LinkModel {
        LinkModel {
            latency,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(5),
            stream_bytes_per_s: 1_000_000_000 / 8,
        }
    }
}

/// Counters of the network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams handed to the network.
    pub datagrams: u64,
    /// Their bytes.
    pub datagram_bytes: u64,
    /// Lost to the loss model.
    pub lost: u64,
    /// Dropped by a partition or a crashed endpoint.
    pub cut: u64,
    /// Delivered twice.
    pub duplicated: u64,
    /// Held back (reordered).
    pub reordered: u64,
    /// Stream messages.
    pub streams: u64,
    /// Their bytes.
    pub stream_bytes: u64,
}

/// Where a datagram goes: up to two delivery delays (a duplicate is the second).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fate {
    /// Delays after which a copy arrives.
    pub deliveries: [Option<Duration>; 2],
}

/// The network.
#[derive(Debug, Clone)]
pub struct Net {
    default: LinkModel,
    links: FxHashMap<(NodeIx, NodeIx), LinkModel>,
    group: Vec<u32>,
    down: Vec<bool>,
    slow: Vec<Option<Latency>>,
    /// Counters.
    pub stats: NetStats,
}

impl Net {
    /// `nodes` nodes, every link behaving as `default`.
    pub fn new(nodes: usize, default: LinkModel) -> Net {
        Net {
            default,
            links: FxHashMap::default(),
            group: vec![0; nodes],
            down: vec![false; nodes],
            slow: vec![None; nodes],
            stats: NetStats::default(),
        }
    }

    /// Adds a node (connected, up, not slow); returns its index.
    pub fn add_node(&mut self) -> NodeIx {
        self.group.push(0);
        self.down.push(false);
        self.slow.push(None);
        (self.group.len() - 1) as NodeIx
    }

    /// Nodes.
    pub fn len(&self) -> usize {
        self.group.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.group.is_empty()
    }

    /// The default link model.
    pub fn default_link(&self) -> &LinkModel {
        &self.default
    }

    /// Changes the default link model (e.g. the loss rate) for every link without its own.
    pub fn set_default_link(&mut self, m: LinkModel) {
        self.default = m;
    }

    /// Gives the direction `from → to` its own model.
    pub fn set_link(&mut self, from: NodeIx, to: NodeIx, m: LinkModel) {
        self.links.insert((from, to), m);
    }

    /// Splits the network: each set becomes its own island; nodes in no set form one more.
    pub fn partition(&mut self, sets: &[&[NodeIx]]) {
        self.group.iter_mut().for_each(|g| *g = 0);
        for (i, set) in sets.iter().enumerate() {
            for &n in *set {
                if let Some(g) = self.group.get_mut(n as usize) {
                    *g = i as u32 + 1;
                }
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    /// Crashes (`true`) or restores a node: nothing reaches a crashed node.
    pub fn set_down(&mut self, n: NodeIx, down: bool) {
        if let Some(d) = self.down.get_mut(n as usize) {
            *d = down;
        }
    }

    /// Whether `n` is crashed.
    pub fn is_down(&self, n: NodeIx) -> bool {
        self.down.get(n as usize).copied().unwrap_or(true)
    }

    /// Makes `n` slow: everything it receives waits an extra delay drawn from `delay`
    /// before it is processed (`None`: normal again).
    pub fn set_slow(&mut self, n: NodeIx, delay: Option<Latency>) {
        if let Some(s) = self.slow.get_mut(n as usize) {
            *s = delay;
        }
    }

    /// Whether `a` and `b` can talk now (both up, same side of every partition).
    pub fn connected(&self, a: NodeIx, b: NodeIx) -> bool {
        let (a, b) = (a as usize, b as usize);
        a < self.group.len()
            && b < self.group.len()
            && !self.down[a]
            && !self.down[b]
            && self.group[a] == self.group[b]
    }

    fn link(&self, from: NodeIx, to: NodeIx) -> &LinkModel {
        if self.links.is_empty() {
            return &self.default;
        }
        self.links.get(&(from, to)).unwrap_or(&self.default)
    }

    fn processing<R: Rng>(&self, rng: &mut R, to: NodeIx) -> Duration {
        match self.slow.get(to as usize) {
            Some(Some(l)) => l.sample(rng),
            _ => Duration::ZERO,
        }
    }

    /// The fate of one datagram of `bytes` from `from` to `to` sent now. Check
    /// [`Net::connected`] again at delivery time: a partition may start meanwhile.
    pub fn datagram<R: Rng>(
        &mut self,
        rng: &mut R,
        from: NodeIx,
        to: NodeIx,
        bytes: usize,
    ) -> Fate {
        self.stats.datagrams += 1;
        self.stats.datagram_bytes += bytes as u64;
        let mut fate = Fate::default();
        if !self.connected(from, to) {
            self.stats.cut += 1;
            return fate;
        }
        let link = *self.link(from, to);
        if link.loss > 0.0 && rng.random_bool(link.loss.clamp(0.0, 1.0)) {
            self.stats.lost += 1;
            return fate;
        }
        let copies = if link.duplicate > 0.0 && rng.random_bool(link.duplicate.clamp(0.0, 1.0)) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for slot in fate.deliveries.iter_mut().take(copies) {
            let mut d = link.latency.sample(rng);
            if link.reorder > 0.0 && rng.random_bool(link.reorder.clamp(0.0, 1.0)) {
                self.stats.reordered += 1;
                d += link.reorder_delay;
            }
            *slot = Some(d + self.processing(rng, to));
        }
        fate
    }

    /// One direction of a reliable stream exchange of `bytes`: the delay until the other
    /// end has processed it, or `None` if the peer is unreachable (partitioned or crashed).
    /// A stream is never lost, duplicated or reordered; it pays a connection round trip,
    /// the latency and the transfer time.
    pub fn stream<R: Rng>(
        &mut self,
        rng: &mut R,
        from: NodeIx,
        to: NodeIx,
        bytes: usize,
    ) -> Option<Duration> {
        self.stats.streams += 1;
        self.stats.stream_bytes += bytes as u64;
        if !self.connected(from, to) {
            self.stats.cut += 1;
            return None;
        }
        let link = *self.link(from, to);
        let handshake = link.latency.sample(rng) * 2;
        let transfer =
            Duration::from_secs_f64(bytes as f64 / link.stream_bytes_per_s.max(1) as f64);
        Some(handshake + link.latency.sample(rng) + transfer + self.processing(rng, to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::rng;

    #[test]
    fn loss_partitions_and_crashes() {
        let mut r = rng(1);
        let mut net = Net::new(
            4,
            LinkModel {
                loss: 0.25,
                ..LinkModel::new(Latency::lan())
            },
        );
        let mut delivered = 0;
        for _ in 0..10_000 {
            if net.datagram(&mut r, 0, 1, 100).deliveries[0].is_some() {
                delivered += 1;
            }
        }
        assert!((7_000..8_000).contains(&delivered), "{delivered}");
        net.partition(&[&[0, 1]]);
        assert!(net.connected(0, 1) && net.connected(2, 3) && !net.connected(1, 2));
        assert_eq!(net.datagram(&mut r, 0, 2, 1), Fate::default());
        assert!(net.stream(&mut r, 0, 2, 1).is_none());
        net.heal();
        assert!(net.connected(1, 2));
        net.set_down(3, true);
        assert!(!net.connected(2, 3));
        assert!(net.stream(&mut r, 2, 3, 1).is_none());
    }

    #[test]
    fn duplication_reordering_and_slow_nodes() {
        let mut r = rng(2);
        let base = Duration::from_millis(1);
        let model = LinkModel {
            duplicate: 1.0,
            reorder: 1.0,
            reorder_delay: Duration::from_millis(10),
            ..LinkModel::new(Latency::Fixed(base))
        };
        let mut net = Net::new(2, model);
        net.set_slow(1, Some(Latency::Fixed(Duration::from_millis(100))));
        let f = net.datagram(&mut r, 0, 1, 10);
        assert_eq!(f.deliveries, [Some(Duration::from_millis(111)); 2]);
        assert_eq!(
            net.datagram(&mut r, 1, 0, 10).deliveries[0],
            Some(Duration::from_millis(11))
        );
        // Same seed, same fates.
        let mut a = rng(9);
        let mut b = rng(9);
        let mut n1 = Net::new(
            2,
            LinkModel {
                loss: 0.5,
                ..LinkModel::new(Latency::wan())
            },
        );
        let mut n2 = n1.clone();
        for _ in 0..1000 {
            assert_eq!(n1.datagram(&mut a, 0, 1, 1), n2.datagram(&mut b, 0, 1, 1));
        }
    }
}

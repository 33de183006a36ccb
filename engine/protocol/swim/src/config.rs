//! Configuration of a SWIM member, memberlist's three presets, and the Lifeguard formulas.
//!
//! Every bound the core enforces is named here, with its unit last. The formulas are the
//! ones memberlist implements (see DESIGN.md, "SWIM + Lifeguard"); they are pure functions
//! so they can be tested on their own.

use std::time::Duration;

/// Tunables of one member. Build one with [`Config::lan`], [`Config::wan`] or
/// [`Config::local`] and adjust fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Time between probes of the randomized round-robin (scaled by awareness).
    pub probe_interval_ms: u64,
    /// Time to wait for a direct ack before indirect probes (scaled by awareness).
    pub probe_timeout_ms: u64,
    /// Time between gossip rounds.
    pub gossip_interval_ms: u64,
    /// Members gossiped to per round.
    pub gossip_nodes: usize,
    /// Suspicion timeout multiplier (memberlist's `SuspicionMult`).
    pub suspicion_mult: u32,
    /// Maximum suspicion timeout as a multiple of the minimum (`SuspicionMaxTimeoutMult`).
    pub suspicion_max_timeout_mult: u32,
    /// Retransmit multiplier of broadcasts (`RetransmitMult`).
    pub retransmit_mult: u32,
    /// A join rumor (a member new to us) that this member hears back from others this many
    /// times stops being retransmitted (rumor mongering's counter, Demers et al.), which
    /// keeps a mass join from saturating every queue for minutes; push-pull repairs the
    /// residue. 0 keeps memberlist's behaviour (always the full retransmit limit).
    pub join_rumor_damping: u32,
    /// Transmissions of a join rumor (a member new to us that we relay), at most; 0 uses
    /// the retransmit limit of every other update (memberlist). Join news is not urgent
    /// (an unknown member is simply not probed yet) and push-pull completes it.
    pub join_rumor_retransmit_mult: u32,
    /// Join rumors piggybacked on one datagram, at most (they fill spare room after every
    /// other update; the cap keeps a mass join from filling every probe).
    pub join_rumors_per_datagram_max: usize,
    /// A periodic push-pull goes to a seed (instead of a random member) when the previous
    /// push-pulls brought members that no rumor had: seeds see every join, so while a
    /// cluster grows faster than join rumors reach everyone, one exchange per interval
    /// catches a member up. Without it the last joiners of a mass join are learned by
    /// random push-pulls only, several intervals later. It concentrates those exchanges on
    /// the seeds while the cluster grows; a stable cluster push-pulls with random members
    /// (memberlist).
    pub seed_catch_up: bool,
    /// With `seed_catch_up`: the first push-pull with a seed comes this long (± half)
    /// after a join completes, and the next ones twice as long after each other while
    /// they bring members no rumor had, until that reaches the periodic interval. A
    /// cluster started at once converges in about this long after its last join (the
    /// seeds saw every join); digest exchanges make a catch-up cost only what it brings.
    pub catch_up_interval_ms: u64,
    /// Periodic push-pulls are digest exchanges that carry only what differs (see
    /// DESIGN.md, "Anti-entropy and joins"); false swaps full states every time, as
    /// memberlist does (the baseline a benchmark compares against).
    pub push_pull_digest: bool,
    /// Members a gossip round goes to when only join rumors are queued (failure news and
    /// updates use `gossip_nodes`); 0: join rumors ride only on probes and acks.
    pub join_rumor_gossip_nodes: usize,
    /// Lifeguard's local health score is kept in `0..awareness_max`.
    pub awareness_max: u32,
    /// Base interval of push-pull anti-entropy (scaled with cluster size); 0 disables it.
    pub push_pull_interval_ms: u64,
    /// Members asked to probe indirectly (`IndirectChecks`).
    pub indirect_checks: usize,
    /// Largest datagram, frame header included.
    pub datagram_bytes_max: usize,
    /// Dead members still receive gossip this long (`GossipToTheDeadTime`).
    pub gossip_to_the_dead_ms: u64,
    /// Dead and left members are removed from the table this long after their state
    /// changed.
    pub dead_reap_ms: u64,
    /// Interval of reconnect attempts to one failed (dead or reaped) member, so that both
    /// sides of a healed partition find each other again; 0 disables it.
    pub reconnect_interval_ms: u64,
    /// Failed members are remembered for reconnect attempts this long after they failed.
    pub reconnect_timeout_ms: u64,
    /// Failed members remembered for reconnect attempts.
    pub reconnect_memory_max: usize,
    /// Lifeguard on (awareness, nacks, dynamic suspicion timeout, buddy system) or off
    /// (classic SWIM with memberlist's fixed minimum suspicion timeout).
    pub lifeguard: bool,
    /// Send a ping over the stream transport when UDP probes fail (memberlist's TCP
    /// fallback).
    pub tcp_fallback: bool,
    /// Largest member metadata (tags).
    pub meta_bytes_max: usize,
    /// Membership updates queued for piggybacking; the most-sent are dropped beyond it.
    pub broadcast_queue_max: usize,
    /// Broadcasts of the layer above queued for piggybacking.
    pub user_broadcast_queue_max: usize,
    /// Retransmit multiplier of the layer above's broadcasts (Serf's own queues use 4).
    pub user_retransmit_mult: u32,
    /// Application broadcasts ([`crate::Member::app_broadcast`]) remembered, to deliver and relay
    /// each once; one older than the last this many is delivered again if it is still
    /// circulating.
    pub gossip_seen_max: usize,
    /// Members accepted in one push-pull state (larger states are refused with an error).
    pub push_pull_members_max: usize,
    /// Bytes of the layer above's opaque push-pull state.
    pub user_state_bytes_max: usize,
    /// Indirect probes being relayed for others at once.
    pub relays_max: usize,
    /// Stream exchanges (push-pull, fallback pings) in flight at once.
    pub streams_max: usize,
    /// A stream exchange that has not answered by then is given up.
    pub stream_timeout_ms: u64,
    /// Members under suspicion at once (a suspicion beyond it is not timed: it waits for
    /// the next probe round).
    pub suspicions_max: usize,
    /// Events buffered for the driver; the oldest are dropped (and counted) beyond it.
    pub events_max: usize,
    /// Whether datagrams are sealed with the keyring (adds nonce and tag to every frame).
    pub encrypted: bool,
}

impl Config {
    /// memberlist's `DefaultLANConfig`.
    pub fn lan() -> Config {
        Config {
            probe_interval_ms: 1_000,
            probe_timeout_ms: 500,
            gossip_interval_ms: 200,
            gossip_nodes: 3,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            retransmit_mult: 4,
            join_rumor_damping: 1,
            join_rumor_retransmit_mult: 4,
            join_rumors_per_datagram_max: 4,
            join_rumor_gossip_nodes: 0,
            seed_catch_up: true,
            catch_up_interval_ms: 1_000,
            push_pull_digest: true,
            awareness_max: 8,
            push_pull_interval_ms: 30_000,
            indirect_checks: 3,
            datagram_bytes_max: ringleader_wire::frame::DATAGRAM_BYTES_MAX_DEFAULT,
            gossip_to_the_dead_ms: 30_000,
            dead_reap_ms: 30_000,
            reconnect_interval_ms: 30_000,
            reconnect_timeout_ms: 24 * 3_600_000,
            reconnect_memory_max: 1_024,
            lifeguard: true,
            tcp_fallback: true,
            meta_bytes_max: 512,
            broadcast_queue_max: 1_024,
            user_broadcast_queue_max: 1_024,
            user_retransmit_mult: 4,
            gossip_seen_max: 4_096,
            push_pull_members_max: 65_536,
            user_state_bytes_max: 1 << 20,
            relays_max: 64,
            streams_max: 64,
            stream_timeout_ms: 10_000,
            suspicions_max: 1_024,
            events_max: 1 << 16,
            encrypted: false,
        }
    }

    /// memberlist's `DefaultWANConfig`.
    pub fn wan() -> Config {
        Config {
            probe_interval_ms: 5_000,
            probe_timeout_ms: 3_000,
            gossip_interval_ms: 500,
            gossip_nodes: 4,
            suspicion_mult: 6,
            push_pull_interval_ms: 60_000,
            catch_up_interval_ms: 5_000,
            gossip_to_the_dead_ms: 60_000,
            dead_reap_ms: 60_000,
            reconnect_interval_ms: 60_000,
            ..Config::lan()
        }
    }

    /// memberlist's `DefaultLocalConfig`.
    pub fn local() -> Config {
        Config {
            probe_interval_ms: 1_000,
            probe_timeout_ms: 200,
            gossip_interval_ms: 100,
            gossip_nodes: 3,
            suspicion_mult: 3,
            retransmit_mult: 2,
            push_pull_interval_ms: 15_000,
            indirect_checks: 1,
            gossip_to_the_dead_ms: 15_000,
            dead_reap_ms: 15_000,
            reconnect_interval_ms: 15_000,
            ..Config::lan()
        }
    }

    /// A preset by name: `lan`, `wan` or `local`.
    pub fn named(name: &str) -> Option<Config> {
        match name {
            "lan" => Some(Config::lan()),
            "wan" => Some(Config::wan()),
            "local" => Some(Config::local()),
            _ => None,
        }
    }

    /// Sets the field named `key` (as spelled in this struct) from `value`: how a command
    /// line or a config file overrides one tunable of a preset
    /// (`ringleader-bench swim --set join_rumor_damping=4`). An unknown key or a value that
    /// does not parse is refused with a message that says what to write instead; ranges are
    /// checked where the config is used.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        fn parse<T: std::str::FromStr>(key: &str, value: &str, slot: &mut T) -> Result<(), String> {
            *slot = value.trim().parse().map_err(|_| {
                format!(
                    "{key}={value}: expected {}",
                    if std::any::type_name::<T>() == "bool" {
                        "true or false"
                    } else {
                        "a non-negative integer"
                    }
                )
            })?;
            Ok(())
        }
        macro_rules! fields {
            ($($f:ident),* $(,)?) => {{
                // Every field must be listed: a field added to `Config` and not here
                // fails to compile.
                let Config { $($f: _),* } = &*self;
                match key {
                    $(stringify!($f) => parse(key, value, &mut self.$f),)*
                    _ => Err(format!(
                        "unknown swim config key {key:?}; known keys: {}",
                        [$(stringify!($f)),*].join(", ")
                    )),
                }
            }};
        }
        fields!(
            probe_interval_ms,
            probe_timeout_ms,
            gossip_interval_ms,
            gossip_nodes,
            suspicion_mult,
            suspicion_max_timeout_mult,
            retransmit_mult,
            join_rumor_damping,
            join_rumor_retransmit_mult,
            join_rumors_per_datagram_max,
            join_rumor_gossip_nodes,
            seed_catch_up,
            catch_up_interval_ms,
            push_pull_digest,
            awareness_max,
            push_pull_interval_ms,
            indirect_checks,
            datagram_bytes_max,
            gossip_to_the_dead_ms,
            dead_reap_ms,
            reconnect_interval_ms,
            reconnect_timeout_ms,
            reconnect_memory_max,
            lifeguard,
            tcp_fallback,
            meta_bytes_max,
            broadcast_queue_max,
            user_broadcast_queue_max,
            user_retransmit_mult,
            gossip_seen_max,
            push_pull_members_max,
            user_state_bytes_max,
            relays_max,
            streams_max,
            stream_timeout_ms,
            suspicions_max,
            events_max,
            encrypted,
        )
    }

    /// The probe interval.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.probe_interval_ms)
    }

    /// The probe timeout.
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }
}

/// memberlist's `suspicionTimeout`: the minimum suspicion timeout,
/// `suspicion_mult × max(1, log10 n) × probe_interval`.
pub fn suspicion_timeout_min(
    suspicion_mult: u32,
    members: usize,
    probe_interval: Duration,
) -> Duration {
    let node_scale = (members.max(1) as f64).log10().max(1.0);
    let ms = f64::from(suspicion_mult) * node_scale * probe_interval.as_secs_f64() * 1000.0;
    Duration::from_micros((ms * 1000.0).round() as u64)
}

/// Lifeguard's dynamic suspicion timeout after `confirmations` of `expected` independent
/// confirmations: `max(min, max − (max − min) × ln(c + 1) / ln(k + 1))`.
pub fn suspicion_timeout(
    min: Duration,
    max: Duration,
    confirmations: u32,
    expected: u32,
) -> Duration {
    if expected == 0 || max <= min {
        return min;
    }
    let frac = (f64::from(confirmations) + 1.0).ln() / (f64::from(expected) + 1.0).ln();
    let span = (max - min).as_secs_f64();
    let t = max.as_secs_f64() - span * frac;
    Duration::from_secs_f64(t.max(min.as_secs_f64()))
}

/// memberlist's `retransmitLimit`: `retransmit_mult × ⌈log10(n + 1)⌉`.
pub fn retransmit_limit(retransmit_mult: u32, members: usize) -> u32 {
    // ⌈log10(n + 1)⌉ computed exactly on integers: the number of decimal digits of n,
    // which equals ⌈log10(n+1)⌉ for n ≥ 1 (and 0 for n = 0).
    let mut digits = 0u32;
    let mut n = members as u64;
    while n > 0 {
        digits += 1;
        n /= 10;
    }
    retransmit_mult * digits
}

/// memberlist's `pushPullScale`: above 32 members the interval grows as
/// `interval × (⌈log2 n − log2 32⌉ + 1)`.
pub fn push_pull_interval(base: Duration, members: usize) -> Duration {
    const THRESHOLD: usize = 32;
    if members <= THRESHOLD {
        return base;
    }
    let mult = ((members as f64).log2() - (THRESHOLD as f64).log2()).ceil() + 1.0;
    base.mul_f64(mult)
}

/// Lifeguard's awareness scaling: `timeout × (score + 1)`.
pub fn scale_by_awareness(timeout: Duration, score: u32) -> Duration {
    timeout * (score + 1)
}

/// Lifeguard's local health score (memberlist's `awareness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Awareness {
    score: u32,
    max: u32,
}

impl Awareness {
    /// A healthy score (0) kept in `0..max`.
    pub fn new(max: u32) -> Awareness {
        Awareness {
            score: 0,
            max: max.max(1),
        }
    }

    /// Adds `delta`, clamped into `0..max`.
    pub fn apply(&mut self, delta: i32) {
        let s = i64::from(self.score) + i64::from(delta);
        self.score = s.clamp(0, i64::from(self.max) - 1) as u32;
        debug_assert!(self.score < self.max);
    }

    /// The current score (0 is healthy).
    pub fn score(&self) -> u32 {
        self.score
    }

    /// `timeout × (score + 1)`.
    pub fn scale(&self, timeout: Duration) -> Duration {
        scale_by_awareness(timeout, self.score)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn set_overrides_one_field_and_refuses_unknown_keys_and_bad_values() {
        let mut c = super::Config::lan();
        c.set("join_rumor_damping", "4").expect("sets");
        c.set("lifeguard", "false").expect("sets");
        c.set("push_pull_interval_ms", " 5000 ").expect("sets");
        assert_eq!(c.join_rumor_damping, 4);
        assert!(!c.lifeguard);
        assert_eq!(c.push_pull_interval_ms, 5_000);
        let e = c.set("join_rumour_damping", "4").expect_err("unknown");
        assert!(
            e.contains("known keys") && e.contains("join_rumor_damping"),
            "{e}"
        );
        let e = c.set("gossip_nodes", "-1").expect_err("negative");
        assert!(e.contains("non-negative integer"), "{e}");
        let e = c.set("tcp_fallback", "yes").expect_err("not a bool");
        assert!(e.contains("true or false"), "{e}");
        assert_eq!(c.gossip_nodes, 3, "a refused value changes nothing");
    }

    use super::*;

    #[test]
    fn suspicion_min_matches_memberlist() {
        let s = Duration::from_secs(1);
        // memberlist's own table: n=1 → 3 s at mult 3 (log10 floored at 1).
        assert_eq!(suspicion_timeout_min(3, 1, s), Duration::from_secs(3));
        assert_eq!(suspicion_timeout_min(3, 10, s), Duration::from_secs(3));
        assert_eq!(suspicion_timeout_min(3, 100, s), Duration::from_secs(6));
        assert_eq!(suspicion_timeout_min(3, 1000, s), Duration::from_secs(9));
        assert_eq!(suspicion_timeout_min(4, 200, s).as_millis(), 9204);
        assert_eq!(suspicion_timeout_min(3, 0, s), Duration::from_secs(3));
    }

    #[test]
    fn suspicion_timeout_shrinks_with_confirmations() {
        let min = Duration::from_secs(2);
        let max = Duration::from_secs(30);
        let k = 3;
        assert_eq!(suspicion_timeout(min, max, 0, k), max);
        let mut last = max;
        for c in 1..=k {
            let t = suspicion_timeout(min, max, c, k);
            assert!(t < last, "confirmation {c} must shorten the timeout");
            last = t;
        }
        assert_eq!(suspicion_timeout(min, max, k, k), min);
        // Halfway in log space: ln(2)/ln(4) = 0.5 → 30 - 28 × 0.5 = 16 s.
        let half = suspicion_timeout(min, max, 1, k).as_secs_f64();
        assert!((half - 16.0).abs() < 1e-6, "{half}");
        assert_eq!(suspicion_timeout(min, max, 5, 0), min);
    }

    #[test]
    fn retransmit_limit_matches_memberlist() {
        assert_eq!(retransmit_limit(4, 0), 0);
        assert_eq!(retransmit_limit(4, 1), 4);
        assert_eq!(retransmit_limit(4, 9), 4);
        assert_eq!(retransmit_limit(4, 10), 8);
        assert_eq!(retransmit_limit(4, 99), 8);
        assert_eq!(retransmit_limit(4, 100), 12);
        assert_eq!(retransmit_limit(4, 10_000), 20);
        assert_eq!(retransmit_limit(2, 1_000), 8);
        for n in 1..5000usize {
            let expect = ((n as f64) + 1.0).log10().ceil() as u32 * 3;
            assert_eq!(retransmit_limit(3, n), expect, "n = {n}");
        }
    }

    #[test]
    fn push_pull_scale_matches_memberlist() {
        let b = Duration::from_secs(30);
        assert_eq!(push_pull_interval(b, 1), b);
        assert_eq!(push_pull_interval(b, 32), b);
        assert_eq!(push_pull_interval(b, 33), b * 2);
        assert_eq!(push_pull_interval(b, 64), b * 2);
        assert_eq!(push_pull_interval(b, 65), b * 3);
        assert_eq!(push_pull_interval(b, 10_000), b * 10);
    }

    #[test]
    fn awareness_is_clamped_and_scales() {
        let mut a = Awareness::new(8);
        a.apply(-1);
        assert_eq!(a.score(), 0);
        a.apply(3);
        assert_eq!(
            a.scale(Duration::from_millis(500)),
            Duration::from_millis(2000)
        );
        a.apply(100);
        assert_eq!(a.score(), 7);
        assert_eq!(a.scale(Duration::from_secs(1)), Duration::from_secs(8));
    }

    #[test]
    fn presets_match_memberlist_defaults() {
        let (l, w, o) = (Config::lan(), Config::wan(), Config::local());
        assert_eq!(
            (
                l.probe_interval_ms,
                w.probe_interval_ms,
                o.probe_interval_ms
            ),
            (1000, 5000, 1000)
        );
        assert_eq!(
            (l.probe_timeout_ms, w.probe_timeout_ms, o.probe_timeout_ms),
            (500, 3000, 200)
        );
        assert_eq!(
            (
                l.gossip_interval_ms,
                w.gossip_interval_ms,
                o.gossip_interval_ms
            ),
            (200, 500, 100)
        );
        assert_eq!((l.gossip_nodes, w.gossip_nodes, o.gossip_nodes), (3, 4, 3));
        assert_eq!(
            (l.suspicion_mult, w.suspicion_mult, o.suspicion_mult),
            (4, 6, 3)
        );
        assert_eq!(l.suspicion_max_timeout_mult, 6);
        assert_eq!(
            (l.retransmit_mult, w.retransmit_mult, o.retransmit_mult),
            (4, 4, 2)
        );
        assert_eq!(l.awareness_max, 8);
        assert_eq!(
            (
                l.push_pull_interval_ms,
                w.push_pull_interval_ms,
                o.push_pull_interval_ms
            ),
            (30_000, 60_000, 15_000)
        );
        assert_eq!(
            (l.indirect_checks, w.indirect_checks, o.indirect_checks),
            (3, 3, 1)
        );
        assert_eq!(l.datagram_bytes_max, 1400);
        assert_eq!(l.meta_bytes_max, 512);
    }
}

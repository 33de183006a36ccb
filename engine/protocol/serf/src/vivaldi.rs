//! Vivaldi network coordinates, as Serf computes them (Dabek et al., with Serf's height
//! vector, adjustment window, gravity and per-peer latency median filter).
//!
//! Coordinates live in seconds. Randomness (a random direction when two coordinates
//! coincide) comes from the caller's RNG, so simulations replay exactly.

use std::collections::{HashMap, VecDeque};

use rand::Rng;
use ringleader_wire::msg::swim::Coordinate;

/// Dimensionality of the Euclidean part (Serf's default).
pub const DIMENSIONS: usize = 8;
const ZERO_THRESHOLD: f64 = 1.0e-6;

/// Serf's tuning constants.
#[derive(Debug, Clone)]
pub struct VivaldiConfig {
    /// Largest error a coordinate may claim.
    pub error_max: f64,
    /// How fast the error estimate moves (c_e).
    pub ce: f64,
    /// How far a sample moves the coordinate (c_c).
    pub cc: f64,
    /// Samples in the adjustment window (0 disables adjustments).
    pub adjustment_window: usize,
    /// Smallest height, in seconds.
    pub height_min_s: f64,
    /// Samples per peer in the latency median filter.
    pub latency_filter: usize,
    /// Gravity pulling coordinates back to the origin (rho, in seconds).
    pub gravity_rho: f64,
    /// Peers remembered by the latency filter (bound; the oldest is forgotten).
    pub peers_max: usize,
}

impl Default for VivaldiConfig {
    fn default() -> Self {
        VivaldiConfig {
            error_max: 1.5,
            ce: 0.25,
            cc: 0.25,
            adjustment_window: 20,
            height_min_s: 10.0e-6,
            latency_filter: 3,
            gravity_rho: 150.0,
            peers_max: 4096,
        }
    }
}

/// A fresh coordinate at the origin with the largest error.
pub fn origin(cfg: &VivaldiConfig) -> Coordinate {
    Coordinate {
        vec: [0.0; DIMENSIONS],
        error: cfg.error_max,
        adjustment: 0.0,
        height: cfg.height_min_s,
    }
}

fn raw_distance(a: &Coordinate, b: &Coordinate) -> f64 {
    let mut sum = 0.0;
    for i in 0..DIMENSIONS {
        let d = a.vec[i] - b.vec[i];
        sum += d * d;
    }
    sum.sqrt() + a.height + b.height
}

/// Estimated round-trip time between two coordinates, in seconds.
pub fn estimate_rtt(a: &Coordinate, b: &Coordinate) -> f64 {
    let dist = raw_distance(a, b);
    let adjusted = dist + a.adjustment + b.adjustment;
    if adjusted > 0.0 { adjusted } else { dist }
}

/// Whether every component is finite (a peer's coordinate is untrusted input).
pub fn is_valid(c: &Coordinate) -> bool {
    c.vec.iter().all(|x| x.is_finite())
        && c.error.is_finite()
        && c.adjustment.is_finite()
        && c.height.is_finite()
}

fn apply_force<R: Rng>(
    cfg: &VivaldiConfig,
    c: &Coordinate,
    force: f64,
    other: &Coordinate,
    rng: &mut R,
) -> Coordinate {
    let mut ret = c.clone();
    let mut unit = [0.0; DIMENSIONS];
    let mut mag = 0.0;
    for ((u, a), b) in unit.iter_mut().zip(c.vec).zip(other.vec) {
        *u = a - b;
        mag += *u * *u;
    }
    mag = mag.sqrt();
    let moved_mag = if mag > ZERO_THRESHOLD {
        for u in &mut unit {
            *u /= mag;
        }
        mag
    } else {
        // Coincident: push in a random direction.
        let mut m = 0.0;
        for u in &mut unit {
            *u = rng.random::<f64>() - 0.5;
            m += *u * *u;
        }
        m = m.sqrt();
        if m > ZERO_THRESHOLD {
            for u in &mut unit {
                *u /= m;
            }
        } else {
            unit = [0.0; DIMENSIONS];
            unit[0] = 1.0;
        }
        0.0
    };
    for (v, u) in ret.vec.iter_mut().zip(unit) {
        *v += u * force;
    }
    if moved_mag > ZERO_THRESHOLD {
        ret.height = (ret.height + other.height) * force / moved_mag + ret.height;
        ret.height = ret.height.max(cfg.height_min_s);
    }
    ret
}

/// Why a sample was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VivaldiError {
    /// The peer's coordinate has non-finite components.
    #[error("peer coordinate is invalid")]
    InvalidPeer,
    /// The RTT sample is not plausible (negative or over 10 s).
    #[error("rtt sample out of range")]
    BadRtt,
    /// The update produced an invalid coordinate; it was reset to the origin.
    #[error("coordinate became invalid and was reset")]
    Reset,
}

/// One member's Vivaldi state.
#[derive(Debug, Clone)]
pub struct Vivaldi {
    cfg: VivaldiConfig,
    coord: Coordinate,
    origin: Coordinate,
    adjustment_samples: Vec<f64>,
    adjustment_index: usize,
    filters: HashMap<u64, VecDeque<f64>>,
    filter_order: VecDeque<u64>,
    /// Resets after an invalid update.
    pub resets: u64,
}

impl Vivaldi {
    /// A client at the origin.
    pub fn new(cfg: VivaldiConfig) -> Vivaldi {
        let coord = origin(&cfg);
        Vivaldi {
            origin: coord.clone(),
            coord,
            adjustment_samples: vec![0.0; cfg.adjustment_window],
            adjustment_index: 0,
            filters: HashMap::new(),
            filter_order: VecDeque::new(),
            cfg,
            resets: 0,
        }
    }

    /// This member's coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        &self.coord
    }

    /// Feeds one RTT sample to `peer` (an id stable per peer until [`Vivaldi::forget`])
    /// whose coordinate is `other`.
    pub fn update<R: Rng>(
        &mut self,
        peer: u64,
        other: &Coordinate,
        rtt_s: f64,
        rng: &mut R,
    ) -> Result<(), VivaldiError> {
        if !is_valid(other) {
            return Err(VivaldiError::InvalidPeer);
        }
        if !(0.0..=10.0).contains(&rtt_s) {
            return Err(VivaldiError::BadRtt);
        }
        let rtt = self.latency_filter(peer, rtt_s);
        self.update_vivaldi(other, rtt, rng);
        self.update_adjustment(other, rtt);
        let origin = self.origin.clone();
        let dist = estimate_rtt(&origin, &self.coord);
        let force = -(dist / self.cfg.gravity_rho).powi(2);
        self.coord = apply_force(&self.cfg, &self.coord, force, &origin, rng);
        if !is_valid(&self.coord) {
            self.resets += 1;
            self.coord = origin;
            return Err(VivaldiError::Reset);
        }
        Ok(())
    }

    /// Forgets `peer`'s latency samples (it left the cluster: its id may go to another).
    pub fn forget(&mut self, peer: u64) {
        if self.filters.remove(&peer).is_some() {
            self.filter_order.retain(|&p| p != peer);
        }
    }

    fn latency_filter(&mut self, peer: u64, rtt: f64) -> f64 {
        if !self.filters.contains_key(&peer) {
            if self.filters.len() >= self.cfg.peers_max {
                if let Some(old) = self.filter_order.pop_front() {
                    self.filters.remove(&old);
                }
            }
            self.filter_order.push_back(peer);
        }
        let samples = self.filters.entry(peer).or_default();
        samples.push_back(rtt);
        while samples.len() > self.cfg.latency_filter.max(1) {
            samples.pop_front();
        }
        let mut sorted: Vec<f64> = samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn update_vivaldi<R: Rng>(&mut self, other: &Coordinate, rtt: f64, rng: &mut R) {
        let rtt = rtt.max(ZERO_THRESHOLD);
        let dist = estimate_rtt(&self.coord, other);
        let wrongness = (dist - rtt).abs() / rtt;
        let total_error = (self.coord.error + other.error).max(ZERO_THRESHOLD);
        let weight = self.coord.error / total_error;
        self.coord.error =
            self.cfg.ce * weight * wrongness + self.coord.error * (1.0 - self.cfg.ce * weight);
        self.coord.error = self.coord.error.min(self.cfg.error_max);
        let force = self.cfg.cc * weight * (rtt - dist);
        self.coord = apply_force(&self.cfg, &self.coord, force, other, rng);
    }

    fn update_adjustment(&mut self, other: &Coordinate, rtt: f64) {
        let window = self.adjustment_samples.len();
        if window == 0 {
            return;
        }
        self.adjustment_samples[self.adjustment_index] = rtt - raw_distance(&self.coord, other);
        self.adjustment_index = (self.adjustment_index + 1) % window;
        let sum: f64 = self.adjustment_samples.iter().sum();
        self.coord.adjustment = sum / (2.0 * window as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn two_members_converge_on_their_rtt() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut a = Vivaldi::new(VivaldiConfig::default());
        let mut b = Vivaldi::new(VivaldiConfig::default());
        for _ in 0..500 {
            let cb = b.coordinate().clone();
            a.update(2, &cb, 0.050, &mut rng).expect("valid");
            let ca = a.coordinate().clone();
            b.update(1, &ca, 0.050, &mut rng).expect("valid");
        }
        let est = estimate_rtt(a.coordinate(), b.coordinate());
        assert!((est - 0.050).abs() / 0.050 < 0.05, "estimate {est}");
        assert!(a.coordinate().error < 0.5);
    }

    #[test]
    fn untrusted_inputs_are_refused() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut a = Vivaldi::new(VivaldiConfig::default());
        let mut bad = origin(&VivaldiConfig::default());
        bad.vec[3] = f64::NAN;
        assert_eq!(
            a.update(1, &bad, 0.01, &mut rng),
            Err(VivaldiError::InvalidPeer)
        );
        let good = origin(&VivaldiConfig::default());
        assert_eq!(
            a.update(1, &good, -1.0, &mut rng),
            Err(VivaldiError::BadRtt)
        );
        assert_eq!(
            a.update(1, &good, f64::INFINITY, &mut rng),
            Err(VivaldiError::BadRtt)
        );
        assert!(is_valid(a.coordinate()));
    }

    #[test]
    fn the_latency_filter_is_bounded() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let cfg = VivaldiConfig {
            peers_max: 8,
            ..VivaldiConfig::default()
        };
        let mut a = Vivaldi::new(cfg);
        let o = origin(&VivaldiConfig::default());
        for peer in 0..100 {
            a.update(peer, &o, 0.01, &mut rng).expect("valid");
        }
        assert!(a.filters.len() <= 8);
        assert_eq!(a.filters.len(), a.filter_order.len());
    }

    /// A reaped peer's id may be reclaimed and given to another peer: once forgotten, the
    /// old peer's samples no longer weigh on the new one's.
    #[test]
    fn a_forgotten_peer_leaves_no_samples_to_the_next_with_its_id() {
        let mut a = Vivaldi::new(VivaldiConfig::default());
        for _ in 0..3 {
            a.latency_filter(1, 0.5);
        }
        assert_eq!(
            a.latency_filter(1, 0.01),
            0.5,
            "the median of the old samples"
        );
        a.forget(1);
        assert_eq!(a.latency_filter(1, 0.01), 0.01);
        assert_eq!(a.filters.len(), a.filter_order.len());
    }
}

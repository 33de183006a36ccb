//! A small, fast, deterministic hasher for integer and short-string keys (the rustc "Fx"
//! hash). Deterministic so that a simulation replays exactly; not DoS-resistant, so it only
//! keys maps whose size is bounded by configuration.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The Fx hasher.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // The multiply only carries low input bits upwards: the low bits of `hash` depend
        // on the low bits of the input alone, and hash tables pick buckets by the low bits.
        // Names like "m1234" share their first byte, keys like `a << 32 | b` their low
        // word: without this finalizer (murmur3's fmix64) they all fell into a few buckets
        // (a directory of 6,000 names spent a tenth of a host's CPU probing them).
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

/// A `HashMap` with the Fx hasher.
pub type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hash};

    fn low_bits<K: Hash>(keys: impl Iterator<Item = K>, bits: u32) -> usize {
        let b = BuildHasherDefault::<FxHasher>::default();
        keys.map(|k| b.hash_one(k) & ((1 << bits) - 1))
            .collect::<HashSet<u64>>()
            .len()
    }

    /// Keys that differ only above their first byte or in their high word still spread over
    /// the buckets (10,000 keys into 2^14 buckets fill ~7,100 when random).
    #[test]
    fn keys_differing_only_in_high_bits_spread_over_low_bits() {
        let names = low_bits((0..10_000).map(|i| format!("m{i}")), 14);
        assert!(names > 6_000, "names fill {names} of 16384 buckets");
        let pairs = low_bits((0..10_000u64).map(|i| i << 32 | 7), 14);
        assert!(pairs > 6_000, "pair keys fill {pairs} of 16384 buckets");
        let small = low_bits(0..10_000u32, 14);
        assert!(small > 6_000, "small ints fill {small} of 16384 buckets");
    }
}

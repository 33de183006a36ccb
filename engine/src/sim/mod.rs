//! Deterministic simulator: virtual clock, network and disk with faults.

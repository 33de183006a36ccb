//! Connections counted per source IP address, so that one address cannot take every slot
//! of a bound shared with other peers (a host shard's inbound streams, a Raft shard's
//! unauthenticated connections).
//!
//! What it must never do: hold an entry for an address with no connection counted (it
//! holds at most as many entries as connections), or count an IPv4 peer reaching an IPv6
//! listener (`::ffff:a.b.c.d`) apart from the same peer over IPv4.

use std::collections::HashMap;
use std::net::IpAddr;

/// Connections being served, by source IP.
#[derive(Debug, Default)]
pub struct PerIpCount(HashMap<IpAddr, usize>);

impl PerIpCount {
    /// Counts one more connection from `ip`, unless it holds `max` already (0: no bound).
    pub fn take(&mut self, ip: IpAddr, max: usize) -> bool {
        let n = self.0.entry(ip.to_canonical()).or_insert(0);
        if max > 0 && *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// A connection from `ip` that [`PerIpCount::take`] counted has ended.
    pub fn release(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if let Some(n) = self.0.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&ip);
            }
        }
    }

    /// Addresses with at least one connection counted.
    pub fn addresses(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_is_bounded_and_forgotten_at_zero() {
        let mut l = PerIpCount::default();
        let a: IpAddr = [127, 0, 0, 3].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        assert!(l.take(a, 2) && l.take(a, 2));
        assert!(
            !l.take(a, 2),
            "a third connection from one address is over the bound"
        );
        assert!(l.take(b, 2), "another address has its own bound");
        l.release(a);
        assert!(l.take(a, 2), "a slot freed is taken again");
        for _ in 0..2 {
            l.release(a);
        }
        l.release(b);
        assert_eq!(
            l.addresses(),
            0,
            "no entry stays for an address with no connection"
        );
        // 0: no bound, but still counted (and forgotten).
        for _ in 0..100 {
            assert!(l.take(a, 0));
        }
        for _ in 0..100 {
            l.release(a);
        }
        assert_eq!(l.addresses(), 0);
    }

    #[test]
    fn a_mapped_ipv4_peer_counts_as_its_ipv4_address() {
        let mut l = PerIpCount::default();
        let v4: IpAddr = "127.0.0.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.9".parse().unwrap();
        assert!(l.take(v4, 1));
        assert!(!l.take(mapped, 1), "the same peer by either form");
        l.release(mapped);
        assert_eq!(l.addresses(), 0);
    }
}

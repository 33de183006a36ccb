//! Application broadcasts ([`Member::app_broadcast`]): each identified by (origin, sequence),
//! delivered once per member and relayed once, decided here so that the simulator runs the
//! same rule as a live host.
//!
//! What it must never do: grow past `gossip_seen_max` remembered keys, or deliver a
//! broadcast that is still remembered a second time.

use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use rand::Rng;
use ringleader_wire::Message;
use ringleader_wire::msg::swim::Gossip;

use super::{Event, Member, Status, SwimError};
use crate::hash::FxHasher;

/// The broadcasts a member has seen, oldest first, at most `max`.
#[derive(Debug, Default)]
pub(super) struct SeenSet {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
}

impl SeenSet {
    /// Remembers `key`; false if it was remembered already.
    pub(super) fn first_sight(&mut self, key: u64, max: usize) -> bool {
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > max.max(1) {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    pub(super) fn len(&self) -> usize {
        self.order.len()
    }
}

/// The identity of a broadcast: `(origin, seq)` hashed.
fn gossip_key(origin: &str, seq: u64) -> u64 {
    let mut h = FxHasher::default();
    origin.hash(&mut h);
    seq.hash(&mut h);
    h.finish()
}

impl<R: Rng> Member<R> {
    /// Gossips an application broadcast from this member to every member: it rides the
    /// piggyback queue of the layer above here and at every member that receives it (each
    /// relays it once, `user_retransmit_mult × ⌈log10(n+1)⌉` times), and each member
    /// delivers it once as [`Event::Message`] carrying a [`Message::Gossip`]. Best effort
    /// like all gossip: a push-pull does not carry it.
    pub fn app_broadcast(&mut self, payload: Vec<u8>) -> Result<(), SwimError> {
        if self.status == Status::Left {
            return Err(SwimError::Left);
        }
        let origin = self.dir.borrow().name(self.me).to_owned();
        let seq = match self.gossip_seq {
            Some(s) => s,
            None => self.rng.random(),
        };
        self.gossip_seq = Some(seq.wrapping_add(1));
        self.gossip_seen
            .first_sight(gossip_key(&origin, seq), self.cfg.gossip_seen_max);
        self.broadcast(
            Message::Gossip(Gossip {
                origin,
                seq,
                payload,
            }),
            None,
        );
        Ok(())
    }

    /// A received non-SWIM message: an application broadcast is delivered and relayed the
    /// first time only (duplicates counted in [`super::Stats::gossip_duplicates`]); anything
    /// else goes to the layer above.
    pub(super) fn receive_other(&mut self, from: std::net::SocketAddr, msg: Rc<Message>) {
        if let Message::Gossip(g) = &*msg {
            let key = gossip_key(&g.origin, g.seq);
            if !self.gossip_seen.first_sight(key, self.cfg.gossip_seen_max) {
                self.stats.gossip_duplicates += 1;
                return;
            }
            if self.status != Status::Left {
                self.broadcast((*msg).clone(), None);
            }
        }
        self.push_event(Event::Message { from, msg });
    }

    /// Application broadcasts remembered (bounded by `gossip_seen_max`).
    pub fn gossip_seen(&self) -> usize {
        self.gossip_seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Directory};
    use rand::SeedableRng;
    use ringleader_time::Time;

    fn member(name: &str, port: u16) -> Member<rand::rngs::SmallRng> {
        let dir = Directory::shared(16, 64);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Member::new(
            Config::lan(),
            dir,
            name,
            addr,
            b"",
            rand::rngs::SmallRng::seed_from_u64(u64::from(port)),
            Time::ZERO,
        )
        .expect("member")
    }

    fn delivered(m: &mut Member<rand::rngs::SmallRng>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(e) = m.poll_event() {
            if let Event::Message { msg, .. } = e
                && let Message::Gossip(g) = &*msg
            {
                out.push(g.payload.clone());
            }
        }
        out
    }

    #[test]
    fn a_broadcast_is_delivered_and_relayed_once() {
        let mut b = member("b", 2);
        let from = std::net::SocketAddr::from(([127, 0, 0, 1], 1));
        let msg = |seq: u64| {
            Message::Gossip(Gossip {
                origin: "a".into(),
                seq,
                payload: vec![seq as u8],
            })
        };
        let queued = b.broadcasts_pending();
        for _ in 0..3 {
            b.handle_message(Time::ZERO, from, msg(7));
        }
        assert_eq!(delivered(&mut b), vec![vec![7]], "delivered once");
        assert_eq!(b.stats().gossip_duplicates, 2);
        assert_eq!(b.broadcasts_pending(), queued + 1, "relayed once");
        b.handle_message(Time::ZERO, from, msg(8));
        assert_eq!(delivered(&mut b), vec![vec![8]], "another seq is news");
        // Its own broadcasts come back as duplicates, never as deliveries.
        b.app_broadcast(b"mine".to_vec()).expect("broadcast");
        let seq = b.gossip_seq.expect("drawn").wrapping_sub(1);
        b.handle_message(
            Time::ZERO,
            from,
            Message::Gossip(Gossip {
                origin: "b".into(),
                seq,
                payload: b"mine".to_vec(),
            }),
        );
        assert!(delivered(&mut b).is_empty());
        b.leave(Time::ZERO);
        assert_eq!(b.app_broadcast(Vec::new()), Err(SwimError::Left));
    }

    #[test]
    fn the_seen_set_forgets_the_oldest_past_its_bound() {
        let mut s = SeenSet::default();
        assert!(s.first_sight(1, 2));
        assert!(!s.first_sight(1, 2));
        assert!(s.first_sight(2, 2));
        assert!(s.first_sight(3, 2));
        assert_eq!(s.len(), 2);
        // 1 was forgotten: it would be delivered again.
        assert!(s.first_sight(1, 2));
        assert!(!s.first_sight(3, 2));
    }
}

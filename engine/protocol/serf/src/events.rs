//! User events: firing one, and accepting one from a peer at most once — de-duplicated in
//! a ring of recent (Lamport time, digest) pairs, refused when older than the ring or than
//! this member's join.

use rand::Rng;
use ringleader_swim::Member;
use ringleader_wire::Message;
use ringleader_wire::msg::serf as wire;

use crate::{INTERNAL_PREFIX, Serf, SerfError, SerfEvent};

/// User events carried in every push-pull for anti-entropy (at most 16 × 512 B).
pub(crate) const RECENT_EVENTS_MAX: usize = 16;

#[derive(Debug, Default)]
struct Recent {
    ltime: u64,
    seen: Vec<u64>,
}

/// A ring of recent (time, digest) pairs: de-duplicates what arrives within the window.
#[derive(Debug)]
pub(crate) struct RecentRing {
    slots: Vec<Recent>,
    per_slot_max: usize,
}

pub(crate) enum Seen {
    New,
    Duplicate,
    TooOld,
}

impl RecentRing {
    pub(crate) fn new(len: usize, per_slot_max: usize) -> RecentRing {
        RecentRing {
            slots: (0..len.max(1)).map(|_| Recent::default()).collect(),
            per_slot_max,
        }
    }

    /// Records (ltime, digest); `clock` is the clock's time after witnessing `ltime`.
    pub(crate) fn check(&mut self, ltime: u64, digest: u64, clock: u64) -> Seen {
        let len = self.slots.len() as u64;
        if clock > len && ltime < clock - len {
            return Seen::TooOld;
        }
        let slot = &mut self.slots[(ltime % len) as usize];
        if slot.ltime != ltime {
            if slot.ltime > ltime && !slot.seen.is_empty() {
                return Seen::TooOld;
            }
            slot.ltime = ltime;
            slot.seen.clear();
        }
        if slot.seen.contains(&digest) {
            return Seen::Duplicate;
        }
        if slot.seen.len() >= self.per_slot_max {
            return Seen::TooOld;
        }
        slot.seen.push(digest);
        Seen::New
    }
}

pub(crate) fn digest(parts: &[&[u8]]) -> u64 {
    // FNV-1a over the parts with separators: a stable, seed-free digest (collisions only
    // cost a dropped duplicate-looking event within one Lamport tick).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Serf {
    /// Broadcasts a user event; it is also delivered here. Returns its Lamport time.
    pub fn user_event<R: Rng>(
        &mut self,
        member: &mut Member<R>,
        name: &str,
        payload: &[u8],
        coalesce: bool,
    ) -> Result<u64, SerfError> {
        if name.starts_with(INTERNAL_PREFIX) {
            return Err(SerfError::Reserved);
        }
        let len = name.len() + payload.len();
        if len > self.cfg.event_bytes_max {
            return Err(SerfError::EventTooLarge {
                len,
                max: self.cfg.event_bytes_max,
            });
        }
        let ltime = self.event_clock.time();
        self.event_clock.increment();
        let ev = wire::UserEvent {
            ltime,
            name: name.to_owned(),
            payload: payload.to_vec(),
            coalesce,
        };
        self.accept_event(member, ev);
        Ok(ltime)
    }

    pub(crate) fn accept_event<R: Rng>(&mut self, member: &mut Member<R>, ev: wire::UserEvent) {
        self.event_clock.witness(ev.ltime);
        if self.joining {
            // Gossip can outrun the answer to the join (the other side learns of this member
            // and relays what it still has queued): whether an event is from before the join
            // is known only once that answer has set the floors.
            if self.held.len() < self.cfg.event_buffer {
                self.held.push(ev);
            } else {
                self.stats.events_too_old += 1;
            }
            return;
        }
        if ev.ltime < self.event_min_time {
            self.stats.events_too_old += 1;
            return;
        }
        let d = digest(&[ev.name.as_bytes(), &ev.payload]);
        match self.events.check(ev.ltime, d, self.event_clock.time()) {
            Seen::TooOld => self.stats.events_too_old += 1,
            Seen::Duplicate => self.stats.events_duplicate += 1,
            Seen::New => {
                self.stats.events_delivered += 1;
                if self.recent.len() >= RECENT_EVENTS_MAX {
                    self.recent.pop_front();
                }
                self.recent.push_back(ev.clone());
                let key = ev
                    .coalesce
                    .then(|| digest(&[b"coalesce", ev.name.as_bytes()]));
                self.emit(SerfEvent::User {
                    ltime: ev.ltime,
                    name: ev.name.clone(),
                    payload: ev.payload.clone(),
                });
                // Coalescing: a newer event of the same name replaces an older one still
                // queued for retransmission (the older one was delivered here already).
                member.broadcast(Message::UserEvent(ev), key);
                // The push-pull state carries the new clock at once: a member that joins
                // through this one before the next tick must not take an older floor, or
                // the gossip of this event would reach it as news from after its join.
                self.publish_state(member);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recent_ring_dedups_and_refuses_the_too_old() {
        let mut r = RecentRing::new(4, 8);
        assert!(matches!(r.check(10, 1, 11), Seen::New));
        assert!(matches!(r.check(10, 1, 11), Seen::Duplicate));
        assert!(matches!(r.check(10, 2, 11), Seen::New));
        assert!(matches!(r.check(3, 1, 11), Seen::TooOld));
        // Slot 14 % 4 == 10 % 4: the newer time takes the slot; the older is then too old.
        assert!(matches!(r.check(14, 1, 15), Seen::New));
        assert!(matches!(r.check(10, 3, 15), Seen::TooOld));
    }
}

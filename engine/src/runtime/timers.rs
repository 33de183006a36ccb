//! The timer service of a shard: one deadline per key (a member, a Raft group, a probe),
//! in a binary heap ordered by (deadline, insertion order).
//!
//! Sans-IO cores say when they next want to be called (`poll_timeout() -> Option<Time>`);
//! the shard calls [`Timers::set`] with that, and after every wake-up pops the keys whose
//! deadline has passed and calls the core with the current [`Time`]. Re-setting a key
//! replaces its deadline; the stale heap entry is skipped when it surfaces (lazy deletion)
//! and the heap is compacted when stale entries outnumber live ones, so memory stays
//! bounded by twice the live keys plus a constant.
//!
//! This module never reads a clock: time comes in as arguments.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

use crate::time::Time;

/// The timer table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timer table full ({0} keys)")]
pub struct TimersFull(pub usize);

/// Deadlines by key, fired in (deadline, set order).
pub struct Timers<K: Copy + Eq + Hash + Ord> {
    heap: BinaryHeap<Reverse<(Time, u64, K)>>,
    live: HashMap<K, (Time, u64)>,
    seq: u64,
    keys_max: usize,
}

impl<K: Copy + Eq + Hash + Ord> Timers<K> {
    /// A table holding at most `keys_max` keys.
    pub fn new(keys_max: usize) -> Timers<K> {
        Timers {
            heap: BinaryHeap::new(),
            live: HashMap::new(),
            seq: 0,
            keys_max,
        }
    }

    /// Keys with a deadline.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no key has a deadline.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Sets (or replaces) the deadline of `key`.
    pub fn set(&mut self, key: K, at: Time) -> Result<(), TimersFull> {
        if !self.live.contains_key(&key) && self.live.len() >= self.keys_max {
            return Err(TimersFull(self.keys_max));
        }
        self.seq += 1;
        self.live.insert(key, (at, self.seq));
        self.heap.push(Reverse((at, self.seq, key)));
        if self.heap.len() > 2 * self.live.len() + 64 {
            self.compact();
        }
        debug_assert!(self.heap.len() >= self.live.len());
        Ok(())
    }

    /// Removes the deadline of `key`, if any.
    pub fn cancel(&mut self, key: K) {
        self.live.remove(&key);
    }

    /// The deadline of `key`, if set.
    pub fn deadline(&self, key: K) -> Option<Time> {
        self.live.get(&key).map(|(t, _)| *t)
    }

    /// The earliest live deadline.
    pub fn next_deadline(&mut self) -> Option<Time> {
        self.skip_stale();
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Pops the earliest key whose deadline is `<= now`, with its deadline.
    pub fn pop_expired(&mut self, now: Time) -> Option<(K, Time)> {
        self.skip_stale();
        let Reverse((t, _, _)) = self.heap.peek()?;
        if *t > now {
            return None;
        }
        let Reverse((t, _, key)) = self.heap.pop()?;
        self.live.remove(&key);
        Some((key, t))
    }

    fn skip_stale(&mut self) {
        while let Some(Reverse((_, seq, key))) = self.heap.peek() {
            match self.live.get(key) {
                Some((_, live_seq)) if live_seq == seq => return,
                _ => {
                    self.heap.pop();
                }
            }
        }
    }

    fn compact(&mut self) {
        self.heap = self
            .live
            .iter()
            .map(|(k, (t, s))| Reverse((*t, *s, *k)))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_and_cancelled_deadlines_do_not_fire() {
        let mut t = Timers::new(8);
        t.set(1u32, Time::from_millis(10)).expect("set");
        t.set(2, Time::from_millis(5)).expect("set");
        t.set(1, Time::from_millis(3)).expect("reset");
        t.set(3, Time::from_millis(4)).expect("set");
        t.cancel(3);
        assert_eq!(t.next_deadline(), Some(Time::from_millis(3)));
        assert_eq!(
            t.pop_expired(Time::from_millis(100)),
            Some((1, Time::from_millis(3)))
        );
        assert_eq!(
            t.pop_expired(Time::from_millis(100)),
            Some((2, Time::from_millis(5)))
        );
        assert_eq!(t.pop_expired(Time::from_millis(100)), None);
        assert!(t.is_empty());
    }

    #[test]
    fn full_table_refuses_new_keys_but_accepts_resets() {
        let mut t = Timers::new(2);
        t.set(1u8, Time::ZERO).expect("set");
        t.set(2, Time::ZERO).expect("set");
        assert_eq!(t.set(3, Time::ZERO), Err(TimersFull(2)));
        t.set(2, Time::from_millis(1)).expect("reset of a live key");
    }

    #[test]
    fn heap_stays_bounded_under_many_resets() {
        let mut t = Timers::new(4);
        for i in 0..10_000u64 {
            t.set(i % 4, Time::from_nanos(i)).expect("set");
        }
        assert!(t.heap.len() <= 2 * 4 + 64 + 1);
        assert_eq!(t.len(), 4);
    }
}

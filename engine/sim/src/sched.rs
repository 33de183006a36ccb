//! The virtual clock and event queue.
//!
//! Events are ordered by time, then by the order they were scheduled, so two events at the
//! same instant always pop in the same order: the run is a function of the seed alone.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use ringleader_time::Time;

/// The simulator's RNG: ChaCha8, portable and reproducible across platforms and builds.
pub type SimRng = rand_chacha::ChaCha8Rng;

/// A seeded [`SimRng`].
pub fn rng(seed: u64) -> SimRng {
    <SimRng as rand::SeedableRng>::seed_from_u64(seed)
}

struct Slot<E> {
    at: Time,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Slot<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Slot<E> {}
impl<E> PartialOrd for Slot<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Slot<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A virtual clock with a queue of future events of type `E`.
pub struct Scheduler<E> {
    now: Time,
    seq: u64,
    heap: BinaryHeap<Reverse<Slot<E>>>,
}

impl<E> Default for Scheduler<E> {
    fn default() -> Self {
        Scheduler::new()
    }
}

impl<E> Scheduler<E> {
    /// An empty queue at time zero.
    pub fn new() -> Scheduler<E> {
        Scheduler {
            now: Time::ZERO,
            seq: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// The current virtual time: the time of the last event popped.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Schedules `event` at `at` (an event in the past runs at the current time).
    pub fn schedule(&mut self, at: Time, event: E) {
        let at = at.max(self.now);
        self.seq += 1;
        self.heap.push(Reverse(Slot {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// Schedules `event` `after` from now.
    pub fn schedule_in(&mut self, after: std::time::Duration, event: E) {
        self.schedule(self.now + after, event);
    }

    /// The time of the next event, if any.
    pub fn peek_time(&self) -> Option<Time> {
        self.heap.peek().map(|Reverse(s)| s.at)
    }

    /// Pops the next event and advances the clock to it.
    pub fn pop(&mut self) -> Option<(Time, E)> {
        let Reverse(slot) = self.heap.pop()?;
        debug_assert!(slot.at >= self.now, "the clock never goes back");
        self.now = slot.at;
        Some((slot.at, slot.event))
    }

    /// Pops the next event if it is due at or before `until`.
    pub fn pop_until(&mut self, until: Time) -> Option<(Time, E)> {
        if self.peek_time()? > until {
            return None;
        }
        self.pop()
    }

    /// Moves the clock forward to `t` without an event (no-op if `t` is in the past).
    pub fn advance_to(&mut self, t: Time) {
        self.now = self.now.max(t);
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Every event waiting, in no particular order.
    pub fn pending(&self) -> impl Iterator<Item = &E> {
        self.heap.iter().map(|Reverse(s)| &s.event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_time_then_schedule_order() {
        let mut s = Scheduler::new();
        s.schedule(Time::from_millis(5), "b");
        s.schedule(Time::from_millis(1), "a");
        s.schedule(Time::from_millis(5), "c");
        assert_eq!(s.pop(), Some((Time::from_millis(1), "a")));
        assert_eq!(s.pop(), Some((Time::from_millis(5), "b")));
        assert_eq!(s.pop(), Some((Time::from_millis(5), "c")));
        assert_eq!(s.pop(), None);
        assert_eq!(s.now(), Time::from_millis(5));
        // The past is clamped to now.
        s.schedule(Time::from_millis(1), "late");
        assert_eq!(s.pop(), Some((Time::from_millis(5), "late")));
        s.schedule_in(Duration::from_millis(3), "d");
        assert_eq!(s.pop_until(Time::from_millis(7)), None);
        assert_eq!(
            s.pop_until(Time::from_millis(8)),
            Some((Time::from_millis(8), "d"))
        );
    }
}

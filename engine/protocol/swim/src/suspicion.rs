//! One suspicion (memberlist's `suspicion`): a timer that starts at the maximum timeout and
//! shrinks toward the minimum as independent confirmations arrive (Lifeguard).

use std::time::Duration;

use ringleader_time::Time;

use super::config::suspicion_timeout;
use super::item::NodeId;

/// A running suspicion of one member.
#[derive(Debug, Clone)]
pub struct Suspicion {
    /// Incarnation suspected.
    pub incarnation: u64,
    from: NodeId,
    confirmers: Vec<NodeId>,
    expected: u32,
    min: Duration,
    max: Duration,
    start: Time,
    deadline: Time,
}

impl Suspicion {
    /// A suspicion raised by `from` at `start`, expecting `expected` confirmations (0: the
    /// timeout is simply `min`).
    pub fn new(
        incarnation: u64,
        from: NodeId,
        expected: u32,
        min: Duration,
        max: Duration,
        start: Time,
    ) -> Suspicion {
        let first = if expected < 1 { min } else { max.max(min) };
        Suspicion {
            incarnation,
            from,
            confirmers: Vec::new(),
            expected,
            min,
            max: max.max(min),
            start,
            deadline: start + first,
        }
    }

    /// When the member is declared dead unless refuted.
    pub fn deadline(&self) -> Time {
        self.deadline
    }

    /// Independent confirmations so far.
    pub fn confirmations(&self) -> u32 {
        self.confirmers.len() as u32
    }

    /// Marks the accuser and the confirmers (for the directory's collections).
    pub fn mark_ids(&self, marks: &mut crate::directory::Marks) {
        marks.node(self.from);
        self.confirmers.iter().for_each(|&n| marks.node(n));
    }

    /// Counts a confirmation from `from`; true if it was new (and should be re-gossiped).
    /// Bounded: at most `expected` confirmations are kept.
    pub fn confirm(&mut self, from: NodeId) -> bool {
        if self.confirmations() >= self.expected
            || from == self.from
            || self.confirmers.contains(&from)
        {
            return false;
        }
        self.confirmers.push(from);
        let timeout = suspicion_timeout(self.min, self.max, self.confirmations(), self.expected);
        self.deadline = self.start + timeout;
        debug_assert!(self.confirmers.len() <= self.expected as usize);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmations_are_independent_and_bounded() {
        let (min, max) = (Duration::from_secs(5), Duration::from_secs(30));
        let start = Time::from_millis(1000);
        let mut s = Suspicion::new(3, 1, 2, min, max, start);
        assert_eq!(s.deadline(), start + max);
        assert!(!s.confirm(1), "the accuser does not confirm itself");
        assert!(s.confirm(2));
        assert!(!s.confirm(2), "one confirmation per member");
        let after_one = s.deadline();
        assert!(after_one < start + max && after_one > start + min);
        assert!(s.confirm(3));
        assert_eq!(s.deadline(), start + min);
        assert!(!s.confirm(4), "no more than expected");
        assert_eq!(s.confirmations(), 2);
        let s = Suspicion::new(1, 1, 0, min, max, start);
        assert_eq!(s.deadline(), start + min);
    }
}

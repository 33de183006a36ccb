//! Lamport clocks, as Serf keeps them: one for member intents, one for events, one for
//! queries. Witnessed on every message that carries a time.

/// A Lamport clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LamportClock {
    counter: u64,
}

impl LamportClock {
    /// A clock at `t`.
    pub fn at(t: u64) -> LamportClock {
        LamportClock { counter: t }
    }

    /// The current time.
    pub fn time(&self) -> u64 {
        self.counter
    }

    /// Advances the clock and returns the new time.
    pub fn increment(&mut self) -> u64 {
        self.counter = self.counter.saturating_add(1);
        self.counter
    }

    /// Moves the clock past a time seen on the network: afterwards `time() > t`.
    pub fn witness(&mut self, t: u64) {
        if t >= self.counter {
            self.counter = t.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn witness_moves_past_and_never_back() {
        let mut c = LamportClock::default();
        assert_eq!(c.increment(), 1);
        c.witness(10);
        assert_eq!(c.time(), 11);
        c.witness(3);
        assert_eq!(c.time(), 11);
        c.witness(u64::MAX);
        assert_eq!(c.time(), u64::MAX);
    }
}

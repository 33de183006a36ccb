//! Time as the protocol cores see it: a monotonic timestamp handed in by the caller.
//!
//! The sans-IO cores never read a clock. The simulator advances a virtual [`Time`]; the
//! runtime converts from `std::time::Instant` against a start instant fixed when the shard
//! starts. Nanoseconds in a `u64` cover 584 years, so arithmetic here saturates rather than
//! wrapping and never panics.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::time::Duration;

/// A point in monotonic time, in nanoseconds since an epoch chosen by the driver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(u64);

impl Time {
    /// The epoch itself.
    pub const ZERO: Time = Time(0);
    /// A time later than every other; used for "never".
    pub const MAX: Time = Time(u64::MAX);

    /// A time `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    /// A time `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Time {
        Time(millis.saturating_mul(1_000_000))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Milliseconds since the epoch (truncated).
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// `self + d`, saturating at [`Time::MAX`].
    pub fn saturating_add(self, d: Duration) -> Time {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(nanos))
    }

    /// How long after `earlier` this time is; zero if it is not after it.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        self.saturating_add(d)
    }
}

impl std::ops::AddAssign<Duration> for Time {
    fn add_assign(&mut self, d: Duration) {
        *self = self.saturating_add(d);
    }
}

impl std::ops::Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}

/// Converts wall-clock instants into [`Time`] against a fixed start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: std::time::Instant,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Clock {
        Clock {
            start: std::time::Instant::now(),
        }
    }

    /// The current time on this clock.
    pub fn now(&self) -> Time {
        self.at(std::time::Instant::now())
    }

    /// `instant` on this clock (the epoch if it precedes the start).
    pub fn at(&self, instant: std::time::Instant) -> Time {
        Time::ZERO.saturating_add(instant.saturating_duration_since(self.start))
    }

    /// The wall-clock instant of `t` on this clock.
    pub fn instant(&self, t: Time) -> std::time::Instant {
        self.start + Duration::from_nanos(t.as_nanos())
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Time::MAX + Duration::from_secs(1), Time::MAX);
        assert_eq!(Time::ZERO - Time::from_millis(5), Duration::ZERO);
        assert_eq!(
            Time::from_millis(7) - Time::from_millis(5),
            Duration::from_millis(2)
        );
    }
}

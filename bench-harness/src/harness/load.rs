//! Load pacing: open loop (fixed rate, latency from the intended send time, so a stall shows
//! up in every request it delays — no coordinated omission) and closed loop.
//!
//! Time is injected through [`Clock`], so the pacing logic is tested with synthetic time.

use std::time::{Duration, Instant};

use super::recorder::Recorder;

/// Open-loop pacing: intended send times at a fixed rate, so a stall shows up in latency.
///
/// Send times are computed from the start (`start + i / rate`), never from the previous send,
/// so they do not drift and a late request does not push the schedule back.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    start: Instant,
    rate_per_s: u64,
    issued_count: u64,
}

impl OpenLoop {
    /// A schedule of `rate_per_s` requests per second from `start` (the first one at `start`).
    pub fn new(rate_per_s: u64, start: Instant) -> Self {
        assert!(rate_per_s > 0, "an open loop needs a positive rate");
        OpenLoop {
            start,
            rate_per_s,
            issued_count: 0,
        }
    }

    /// The intended send time of the next request (the schedule never ends).
    #[allow(clippy::should_implement_trait)] // The harness API names it `next` and returns `Instant`.
    pub fn next(&mut self) -> Instant {
        let offset_ns = u128::from(self.issued_count) * 1_000_000_000 / u128::from(self.rate_per_s);
        self.issued_count += 1;
        let secs = u64::try_from(offset_ns / 1_000_000_000).unwrap_or(u64::MAX);
        self.start + Duration::new(secs, (offset_ns % 1_000_000_000) as u32)
    }

    /// How many send times `next` has handed out.
    pub fn issued_count(&self) -> u64 {
        self.issued_count
    }
}

/// Where a load loop reads time and waits: the system clock, or a synthetic one in tests.
pub trait Clock {
    /// The current time.
    fn now(&mut self) -> Instant;
    /// Returns at or after `deadline` (at once if it has passed).
    fn wait_until(&mut self, deadline: Instant);
}

/// The monotonic system clock; waits by sleeping, then yielding for the last stretch.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

/// Below this distance to a deadline `SystemClock` yields instead of sleeping (sleep overshoots
/// by tens of microseconds).
pub const SPIN_WAIT_MAX: Duration = Duration::from_micros(200);

impl Clock for SystemClock {
    fn now(&mut self) -> Instant {
        Instant::now()
    }

    fn wait_until(&mut self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let left = deadline - now;
            if left > SPIN_WAIT_MAX {
                std::thread::sleep(left - SPIN_WAIT_MAX);
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// What one client loop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadReport {
    /// Requests completed (and recorded).
    pub completed_count: u64,
}

/// Runs one client: issues `request` until `end`, recording each request's latency in `rec`.
///
/// * `Some(open)`: a request is issued at each intended time of `open` (at once when late),
///   and its latency counts from the intended time.
/// * `None`: closed loop, the next request is issued as soon as the previous one completed,
///   and its latency counts from its actual send.
///
/// `request` gets the clock so a synthetic clock can be advanced by the work it models.
pub fn drive<C, E>(
    clock: &mut C,
    mut open: Option<&mut OpenLoop>,
    end: Instant,
    rec: &mut Recorder,
    mut request: impl FnMut(&mut C) -> Result<(), E>,
) -> Result<LoadReport, E>
where
    C: Clock,
{
    let mut report = LoadReport::default();
    loop {
        let from = match open.as_deref_mut() {
            Some(open) => {
                let intended = open.next();
                if intended >= end {
                    break;
                }
                clock.wait_until(intended);
                intended
            }
            None => {
                let now = clock.now();
                if now >= end {
                    break;
                }
                now
            }
        };
        request(clock)?;
        let done = clock.now();
        rec.record_duration_at(done, done.saturating_duration_since(from));
        report.completed_count += 1;
    }
    Ok(report)
}

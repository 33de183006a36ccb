//! Open-loop pacing against coordinated omission, with synthetic time (no sleeping, no timing
//! assertions): a 100 ms stall at 1,000 requests/s shows at p99 in the open-loop recorder, and
//! only at the max in the closed-loop one.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use ringleader_bench::harness::{Clock, OpenLoop, Recorder, drive};

/// Time moves only when a request "takes" time or the loop waits for a send time.
struct SyntheticClock {
    now: Instant,
}

impl Clock for SyntheticClock {
    fn now(&mut self) -> Instant {
        self.now
    }
    fn wait_until(&mut self, deadline: Instant) {
        if deadline > self.now {
            self.now = deadline;
        }
    }
}

const SERVICE: Duration = Duration::from_micros(100);
const STALL: Duration = Duration::from_millis(100);
const STALL_AT: Duration = Duration::from_secs(1);
const RUN: Duration = Duration::from_secs(5);

/// A server that answers in 100 µs, except the first request issued after 1 s, which stalls
/// for 100 ms more.
fn run(open: Option<u64>) -> (Recorder, u64) {
    let start = Instant::now();
    let mut clock = SyntheticClock { now: start };
    let mut rec = Recorder::new("synthetic_us");
    let mut stalled = false;
    let mut schedule = open.map(|rate| OpenLoop::new(rate, start));
    let report = drive(
        &mut clock,
        schedule.as_mut(),
        start + RUN,
        &mut rec,
        |c: &mut SyntheticClock| {
            if !stalled && c.now >= start + STALL_AT {
                stalled = true;
                c.now += STALL;
            }
            c.now += SERVICE;
            Ok::<(), Infallible>(())
        },
    );
    let completed = match report {
        Ok(r) => r.completed_count,
        Err(never) => match never {},
    };
    assert!(stalled, "the stall happened");
    (rec, completed)
}

#[test]
fn open_loop_shows_a_stall_at_p99_and_closed_loop_hides_it() {
    let (open, open_count) = run(Some(1000));
    let (closed, closed_count) = run(None);

    // Open loop: exactly 5,000 intended sends in 5 s; the ~100 sends scheduled during the stall
    // wait for it, with latencies from 100 ms down to 0 — 2% of requests, so p99 is ~50 ms.
    assert_eq!(open_count, 5000);
    assert_eq!(open.histogram().len(), 5000);
    let open_p99 = open.histogram().value_at_quantile(0.99);
    assert!(
        (40_000..=60_000).contains(&open_p99),
        "open-loop p99 = {open_p99} us"
    );
    assert!(
        open.histogram().value_at_quantile(0.98) >= 1_000,
        "the stall reaches p98 too"
    );
    assert_eq!(open.histogram().value_at_quantile(0.5), 100);
    let open_max = open.histogram().max();
    assert!(
        (100_000..=100_300).contains(&open_max),
        "open max = {open_max} us"
    );

    // Closed loop: one slow request among ~49,000; p99 is the service time.
    assert!(
        closed_count > 40_000,
        "closed loop ran back to back: {closed_count}"
    );
    assert_eq!(closed.histogram().value_at_quantile(0.99), 100);
    assert_eq!(closed.histogram().value_at_quantile(0.9999), 100);
    let closed_max = closed.histogram().max();
    assert!(
        (100_000..=100_300).contains(&closed_max),
        "closed max = {closed_max} us"
    );
    // The whole point: the same stall, 500x apart at p99.
    assert!(open_p99 >= 100 * closed.histogram().value_at_quantile(0.99));
}

#[test]
fn open_loop_schedule_is_exact_and_does_not_drift() {
    let start = Instant::now();
    let mut three = OpenLoop::new(3, start);
    let times: Vec<Duration> = (0..4).map(|_| three.next() - start).collect();
    assert_eq!(
        times,
        vec![
            Duration::ZERO,
            Duration::from_nanos(333_333_333),
            Duration::from_nanos(666_666_666),
            Duration::from_secs(1)
        ]
    );
    let mut thousand = OpenLoop::new(1000, start);
    let nth = (0..=1_000_000).map(|_| thousand.next()).last().unwrap();
    assert_eq!(nth - start, Duration::from_secs(1000));
    assert_eq!(thousand.issued_count(), 1_000_001);
}

#[test]
fn open_loop_measures_from_the_intended_time_even_when_sends_are_late() {
    // Every request takes 2 ms at 1,000/s: the client falls further behind each time, and the
    // latency grows by 1 ms per request (what a user of this server would see).
    let start = Instant::now();
    let mut clock = SyntheticClock { now: start };
    let mut rec = Recorder::new("late_us");
    let mut schedule = OpenLoop::new(1000, start);
    let end = start + Duration::from_millis(10);
    let result = drive(
        &mut clock,
        Some(&mut schedule),
        end,
        &mut rec,
        |c: &mut SyntheticClock| {
            c.now += Duration::from_millis(2);
            Ok::<(), Infallible>(())
        },
    );
    assert_eq!(
        result
            .map(|r| r.completed_count)
            .unwrap_or_else(|e| match e {}),
        10
    );
    assert_eq!(rec.histogram().min(), 2000);
    assert!(rec.histogram().max() >= 11_000 && rec.histogram().max() <= 11_010);
}

#[test]
fn a_failing_request_stops_the_loop_with_its_error() {
    let start = Instant::now();
    let mut clock = SyntheticClock { now: start };
    let mut rec = Recorder::new("err_us");
    let mut calls = 0;
    let result = drive(
        &mut clock,
        None,
        start + Duration::from_secs(1),
        &mut rec,
        |c: &mut SyntheticClock| {
            calls += 1;
            c.now += SERVICE;
            if calls == 3 { Err("peer gone") } else { Ok(()) }
        },
    );
    assert_eq!(result, Err("peer gone"));
    assert_eq!(
        rec.histogram().len(),
        2,
        "only completed requests are recorded"
    );
}

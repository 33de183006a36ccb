//! Latency recording: one HdrHistogram of every value plus one histogram per second of wall
//! time (the `.hlog` interval log).
//!
//! The hot path (`record`, `record_at`) never allocates except once a second, when an interval
//! closes; it never reads the clock itself (`record_at` takes `now` from the caller).

use std::io;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2Serializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;

use super::hgrm;

/// Significant decimal digits every recorder keeps (values are exact to 1 part in 1000).
pub const SIGNIFICANT_FIGURES: u8 = 3;
/// Length of one interval of the `.hlog` file.
pub const INTERVAL_LENGTH: Duration = Duration::from_secs(1);
/// The most closed intervals one recorder keeps (one day of seconds); later values go into
/// the last interval, which then covers the rest of the run.
pub const INTERVALS_MAX: usize = 86_400;

/// The unit a recorder's values are in, from its name's suffix (`_ns`, `_ms`; else µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Nanoseconds (`name` ends in `_ns`).
    Nanos,
    /// Microseconds (the default).
    Micros,
    /// Milliseconds (`name` ends in `_ms`).
    Millis,
}

impl Unit {
    /// The unit a recorder called `name` records in.
    pub fn from_name(name: &str) -> Unit {
        if name.ends_with("_ns") {
            Unit::Nanos
        } else if name.ends_with("_ms") {
            Unit::Millis
        } else {
            Unit::Micros
        }
    }

    /// `d` in this unit, rounded down, saturating.
    pub fn of(self, d: Duration) -> u64 {
        let v = match self {
            Unit::Nanos => d.as_nanos(),
            Unit::Micros => d.as_micros(),
            Unit::Millis => d.as_millis(),
        };
        u64::try_from(v).unwrap_or(u64::MAX)
    }

    /// How many of this unit make one millisecond (the `.hgrm` value column is in ms, as wrk2
    /// prints it).
    pub fn per_milli(self) -> f64 {
        match self {
            Unit::Nanos => 1_000_000.0,
            Unit::Micros => 1_000.0,
            Unit::Millis => 1.0,
        }
    }

    /// Short symbol for human output.
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::Nanos => "ns",
            Unit::Micros => "us",
            Unit::Millis => "ms",
        }
    }
}

/// One closed interval of the interval log.
#[derive(Debug, Clone)]
struct Interval {
    start: Instant,
    length: Duration,
    histogram: Histogram<u64>,
}

/// A histogram (3 significant figures, auto-resize) plus a per-interval log (one histogram per
/// second of wall time) for the `.hlog` file.
#[derive(Debug, Clone)]
pub struct Recorder {
    name: String,
    unit: Unit,
    total: Histogram<u64>,
    current: Histogram<u64>,
    /// Start of `current`; `None` until the first value.
    current_start: Option<Instant>,
    /// Latest `now` seen by `record_at`.
    last_at: Option<Instant>,
    /// Wall clock and monotonic clock read together at the first value (the log's StartTime).
    origin: Option<(Instant, SystemTime)>,
    intervals: Vec<Interval>,
    /// Values the histogram could not hold (cannot happen with auto-resize below 2^63).
    rejected_count: u64,
}

fn new_histogram() -> Histogram<u64> {
    // 3 significant figures is always a valid configuration.
    match Histogram::new(SIGNIFICANT_FIGURES) {
        Ok(h) => h,
        Err(e) => unreachable!("Histogram::new({SIGNIFICANT_FIGURES}) failed: {e:?}"),
    }
}

impl Recorder {
    /// A recorder whose files are `<name>.hgrm` and `<name>.hlog`; the unit comes from the
    /// name's suffix (`_ns`, `_ms`, otherwise microseconds).
    pub fn new(name: &str) -> Recorder {
        assert!(
            !name.is_empty() && !name.contains(['/', '\\']),
            "a recorder name is a file name: {name:?}"
        );
        Recorder {
            name: name.to_owned(),
            unit: Unit::from_name(name),
            total: new_histogram(),
            current: new_histogram(),
            current_start: None,
            last_at: None,
            origin: None,
            intervals: Vec::new(),
            rejected_count: 0,
        }
    }

    /// The name (file stem) of this recorder.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The unit of the recorded values.
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// Records `value` into the current interval (which does not rotate: use `record_at` for
    /// that).
    #[inline]
    pub fn record(&mut self, value: u64) {
        if self.current_start.is_none() {
            self.start(Instant::now());
        }
        self.record_value(value);
    }

    /// Records `value` at time `now`, first closing the current interval if `now` is one
    /// interval or more past its start.
    #[inline]
    pub fn record_at(&mut self, now: Instant, value: u64) {
        match self.current_start {
            None => self.start(now),
            Some(start) => {
                if now.saturating_duration_since(start) >= INTERVAL_LENGTH {
                    self.rotate(start, now);
                }
            }
        }
        if self.last_at.is_none_or(|last| now > last) {
            self.last_at = Some(now);
        }
        self.record_value(value);
    }

    /// Records a duration, converted to this recorder's unit.
    #[inline]
    pub fn record_duration_at(&mut self, now: Instant, d: Duration) {
        self.record_at(now, self.unit.of(d));
    }

    #[inline]
    fn record_value(&mut self, value: u64) {
        let total_ok = self.total.record(value).is_ok();
        let current_ok = self.current.record(value).is_ok();
        if !(total_ok && current_ok) {
            self.rejected_count += 1;
        }
    }

    fn start(&mut self, now: Instant) {
        self.current_start = Some(now);
        if self.origin.is_none() {
            self.origin = Some((now, SystemTime::now()));
        }
    }

    #[cold]
    fn rotate(&mut self, start: Instant, now: Instant) {
        if self.intervals.len() >= INTERVALS_MAX {
            return; // The current interval stretches to the end of the run.
        }
        let elapsed = now.saturating_duration_since(start);
        let whole = elapsed.as_nanos() / INTERVAL_LENGTH.as_nanos();
        let whole = u32::try_from(whole).unwrap_or(u32::MAX);
        let next_start = start + INTERVAL_LENGTH * whole;
        let histogram = std::mem::replace(&mut self.current, Histogram::new_from(&self.total));
        self.intervals.push(Interval {
            start,
            length: INTERVAL_LENGTH,
            histogram,
        });
        self.current_start = Some(next_start);
    }

    /// All values recorded so far.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.total
    }

    /// Values the histogram could not hold (counted, not recorded).
    pub fn rejected_count(&self) -> u64 {
        self.rejected_count
    }

    /// Number of intervals so far, including the open one.
    pub fn interval_count(&self) -> usize {
        self.intervals.len() + usize::from(self.current_start.is_some())
    }

    /// Adds every value and interval of `other` (e.g. another client thread's recorder).
    ///
    /// The interval logs are merged by start time: `other`'s intervals are kept as they are,
    /// and the writer groups intervals that start within the same second of the run.
    pub fn merge(&mut self, other: &Recorder) {
        if self.total.add(&other.total).is_err() {
            self.rejected_count += other.total.len();
        }
        self.rejected_count += other.rejected_count;
        for interval in other.closed_intervals() {
            if self.intervals.len() < INTERVALS_MAX {
                self.intervals.push(interval);
            }
        }
        self.origin = match (self.origin, other.origin) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        self.last_at = match (self.last_at, other.last_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if self.current_start.is_none() {
            self.current_start = other.current_start;
        }
    }

    /// The closed intervals plus the open one (closed at the last time seen).
    fn closed_intervals(&self) -> Vec<Interval> {
        let mut all = self.intervals.clone();
        if let Some(start) = self.current_start
            && !self.current.is_empty()
        {
            let end = self.last_at.unwrap_or(start);
            let length = end.saturating_duration_since(start).min(INTERVAL_LENGTH);
            all.push(Interval {
                start,
                length,
                histogram: self.current.clone(),
            });
        }
        all
    }

    /// `{"p50","p90","p99","p999","p9999","max","count","mean","unit"}`, values in the unit
    /// of the recorder (zeros when empty).
    pub fn summary(&self) -> serde_json::Value {
        let h = &self.total;
        serde_json::json!({
            "p50": h.value_at_quantile(0.5),
            "p90": h.value_at_quantile(0.9),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "p9999": h.value_at_quantile(0.9999),
            "max": h.max(),
            "count": h.len(),
            "mean": if h.is_empty() { 0.0 } else { h.mean() },
            "unit": self.unit.symbol(),
        })
    }

    /// Writes the percentile spectrum (`.hgrm`, values in milliseconds like wrk2).
    pub fn write_hgrm<W: io::Write>(&self, w: &mut W) -> io::Result<()> {
        hgrm::write_hgrm(&self.total, self.unit, w)
    }

    /// Writes the interval log (`.hlog`): one V2-serialized histogram per interval, timestamps
    /// relative to the first value; max values are shown in milliseconds.
    pub fn write_hlog<W: io::Write>(&self, w: &mut W) -> io::Result<()> {
        let mut intervals = self.closed_intervals();
        intervals.sort_by_key(|i| i.start);
        let mut builder = IntervalLogWriterBuilder::new();
        builder.add_comment(&format!(
            "ringleader-bench interval log of `{}`, values recorded in {}",
            self.name,
            self.unit.symbol()
        ));
        builder.with_max_value_divisor(self.unit.per_milli());
        let origin = self.origin.map(|(instant, wall)| {
            builder.with_start_time(wall).with_base_time(wall);
            instant
        });
        let mut serializer = V2Serializer::new();
        let mut log = builder.begin_log_with(w, &mut serializer)?;
        let Some(origin) = origin else {
            return Ok(()); // Nothing recorded: only the header.
        };
        // Group the intervals that start in the same second of the run (from merged recorders).
        let mut i = 0;
        while i < intervals.len() {
            let second = intervals[i]
                .start
                .saturating_duration_since(origin)
                .as_secs();
            let mut merged = intervals[i].histogram.clone();
            let mut length = intervals[i].length;
            let start = origin + Duration::from_secs(second);
            let mut j = i + 1;
            while j < intervals.len()
                && intervals[j]
                    .start
                    .saturating_duration_since(origin)
                    .as_secs()
                    == second
            {
                // Same configuration on both sides, so adding cannot fail short of overflow.
                let _ = merged.add(&intervals[j].histogram);
                length = length.max(intervals[j].length);
                j += 1;
            }
            let offset = start.saturating_duration_since(origin);
            log.write_histogram(&merged, offset, length, None)
                .map_err(|e| io::Error::other(format!("{e}")))?;
            i = j;
        }
        Ok(())
    }
}

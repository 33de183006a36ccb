//! Latency recording: one HdrHistogram of every value plus one histogram per second of wall
//! time (the `.hlog` interval log).
//!
//! The hot path (`record`, `record_at`) never allocates except once a second, when an interval
//! closes; it never reads the clock itself (`record_at` takes `now` from the caller).

use std::io;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};

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

    /// Everything this recorder holds, in a form another process can rebuild it from
    /// ([`Shipped::into_recorder`]): the histograms V2-serialized and hex-encoded, interval
    /// starts as offsets from `base` (the shipping host's own start instant, so no clock of
    /// another host is involved).
    pub fn ship(&self, base: Instant) -> Shipped {
        let offset_ms = |t: Instant| {
            u64::try_from(t.saturating_duration_since(base).as_millis()).unwrap_or(u64::MAX)
        };
        Shipped {
            name: self.name.clone(),
            total: encode_histogram(&self.total),
            rejected_count: self.rejected_count,
            intervals: self
                .closed_intervals()
                .into_iter()
                .map(|i| ShippedInterval {
                    offset_ms: offset_ms(i.start),
                    length_ms: u64::try_from(i.length.as_millis()).unwrap_or(u64::MAX),
                    histogram: encode_histogram(&i.histogram),
                })
                .collect(),
        }
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

/// A recorder as it travels between processes ([`Recorder::ship`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipped {
    /// The recorder's name (file stem; its suffix gives the unit).
    pub name: String,
    /// Every value: a V2-serialized histogram, hex.
    pub total: String,
    /// Values the sender's histogram could not hold.
    pub rejected_count: u64,
    /// The interval log.
    pub intervals: Vec<ShippedInterval>,
}

/// One interval of a [`Shipped`] recorder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShippedInterval {
    /// Start, in milliseconds after the sender's base instant.
    pub offset_ms: u64,
    /// Length in milliseconds.
    pub length_ms: u64,
    /// A V2-serialized histogram, hex.
    pub histogram: String,
}

/// Why a [`Shipped`] recorder cannot be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum ShippedError {
    /// The name is not a file name.
    #[error("histogram name {0:?} is not a file name")]
    Name(String),
    /// A histogram is not hex.
    #[error("histogram of `{0}` is not hex")]
    Hex(String),
    /// A histogram does not deserialize.
    #[error("histogram of `{name}` does not deserialize: {why}")]
    Histogram {
        /// The recorder.
        name: String,
        /// The deserializer's complaint.
        why: String,
    },
    /// More intervals than a recorder keeps.
    #[error("histogram `{0}` has more than {INTERVALS_MAX} intervals")]
    TooManyIntervals(String),
}

impl Shipped {
    /// Rebuilds the recorder, interval starts placed at `base` plus their offsets (`base`:
    /// the receiver's instant that stands for the sender's base).
    pub fn into_recorder(self, base: Instant) -> Result<Recorder, ShippedError> {
        if self.name.is_empty() || self.name.contains(['/', '\\']) {
            return Err(ShippedError::Name(self.name));
        }
        if self.intervals.len() > INTERVALS_MAX {
            return Err(ShippedError::TooManyIntervals(self.name));
        }
        let mut rec = Recorder::new(&self.name);
        rec.total = decode_histogram(&self.name, &self.total)?;
        rec.rejected_count = self.rejected_count;
        for i in &self.intervals {
            let start = base + Duration::from_millis(i.offset_ms);
            let length = Duration::from_millis(i.length_ms).min(INTERVAL_LENGTH);
            let histogram = decode_histogram(&self.name, &i.histogram)?;
            if rec.origin.is_none_or(|o| start < o.0) {
                rec.origin = Some((start, wall_clock_of(start)));
            }
            rec.last_at = rec.last_at.max(Some(start + length));
            rec.intervals.push(Interval {
                start,
                length,
                histogram,
            });
        }
        Ok(rec)
    }
}

/// The wall-clock time of `t`, read against the clocks now.
fn wall_clock_of(t: Instant) -> SystemTime {
    let (now, wall) = (Instant::now(), SystemTime::now());
    if t <= now {
        wall - (now - t)
    } else {
        wall + (t - now)
    }
}

fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    // Serializing into a Vec cannot fail on I/O; an error would be a histogram the crate
    // itself cannot encode, shipped as empty rather than lost silently: counted below.
    if V2Serializer::new().serialize(h, &mut bytes).is_err() {
        bytes.clear();
    }
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn decode_histogram(name: &str, hex: &str) -> Result<Histogram<u64>, ShippedError> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let text = hex.as_bytes();
    if text.len() % 2 != 0 {
        return Err(ShippedError::Hex(name.to_owned()));
    }
    let mut bytes = Vec::with_capacity(text.len() / 2);
    for pair in text.chunks_exact(2) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => bytes.push(h << 4 | l),
            _ => return Err(ShippedError::Hex(name.to_owned())),
        }
    }
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut io::Cursor::new(bytes))
        .map_err(|e| ShippedError::Histogram {
            name: name.to_owned(),
            why: format!("{e:?}"),
        })?;
    h.auto(true);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Three "hosts" record different distributions; shipped, rebuilt and merged, the
    /// result has every percentile of one histogram that recorded all the samples.
    #[test]
    fn shipped_recorders_merge_to_the_histogram_of_all_samples() {
        let mut rng = SmallRng::seed_from_u64(16);
        let t0 = Instant::now();
        let mut all = new_histogram();
        let mut hosts = Vec::new();
        for (host, (lo, hi)) in [(1u64, 2_000u64), (500, 90_000), (50_000, 3_000_000)]
            .into_iter()
            .enumerate()
        {
            let mut rec = Recorder::new("op_us");
            for k in 0..20_000u64 {
                let v = rng.random_range(lo..hi);
                let at = t0 + Duration::from_micros(k * 150 + host as u64);
                rec.record_at(at, v);
                all.record(v).expect("auto-resize holds every value");
            }
            hosts.push(rec.ship(t0));
        }
        let base = Instant::now();
        let mut merged: Option<Recorder> = None;
        for shipped in hosts {
            let wire = serde_json::to_string(&shipped).expect("serializes");
            let back: Shipped = serde_json::from_str(&wire).expect("parses");
            let rec = back.into_recorder(base).expect("rebuilds");
            match merged.as_mut() {
                None => merged = Some(rec),
                Some(m) => m.merge(&rec),
            }
        }
        let merged = merged.expect("three hosts");
        let h = merged.histogram();
        assert_eq!(h.len(), all.len());
        for q in [0.0, 0.25, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(h.value_at_quantile(q), all.value_at_quantile(q), "q={q}");
        }
        assert_eq!(h.max(), all.max());
        assert_eq!(h.min(), all.min());
        // The interval log holds every value too: 3 s of intervals per host.
        let mut log = Vec::new();
        merged.write_hlog(&mut log).expect("writes to a Vec");
        let text = String::from_utf8(log).expect("UTF-8");
        assert!(text.lines().filter(|l| !l.starts_with('#')).count() >= 3);
        let interval_total: u64 = merged
            .closed_intervals()
            .iter()
            .map(|i| i.histogram.len())
            .sum();
        assert_eq!(interval_total, all.len());
    }

    #[test]
    fn a_damaged_shipment_is_refused_with_its_reason() {
        let mut rec = Recorder::new("x_us");
        rec.record(5);
        let good = rec.ship(Instant::now());
        let base = Instant::now();
        let mut odd = good.clone();
        odd.total.push('a');
        assert!(matches!(odd.into_recorder(base), Err(ShippedError::Hex(_))));
        let mut not_hex = good.clone();
        not_hex.total.replace_range(0..2, "zz");
        assert!(matches!(
            not_hex.into_recorder(base),
            Err(ShippedError::Hex(_))
        ));
        let mut garbage = good.clone();
        garbage.total = "00".repeat(40);
        assert!(matches!(
            garbage.into_recorder(base),
            Err(ShippedError::Histogram { .. })
        ));
        let mut path = good.clone();
        path.name = "../etc".into();
        assert!(matches!(
            path.into_recorder(base),
            Err(ShippedError::Name(_))
        ));
        let rebuilt = good.into_recorder(base).expect("intact");
        assert_eq!(rebuilt.histogram().len(), 1);
    }
}

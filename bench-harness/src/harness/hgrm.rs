//! The `.hgrm` percentile spectrum: the text format HdrHistogram's
//! `outputPercentileDistribution` and wrk2 print, which the HdrHistogram online plotter reads.
//!
//! ```text
//!        Value     Percentile TotalCount 1/(1-Percentile)
//!
//!        0.015 0.000000000000          1           1.00
//!        ...
//! #[Mean    =        0.016, StdDeviation   =        0.003]
//! #[Max     =        0.412, Total count    =       181204]
//! #[Buckets =           22, SubBuckets     =         2048]
//! ```
//!
//! Values are in milliseconds (scaled from the recorder's unit, as wrk2 scales its µs).
//! The parser accepts this format with any text before the header (wrk2's own output) and
//! stops at the first line after the spectrum that belongs to neither rows nor footer. It
//! never panics on bad input.

use std::io;

use hdrhistogram::Histogram;

use super::recorder::Unit;

/// Quantile ticks per half distance to 100%, as wrk2 and HdrHistogram's default print them.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// The most rows the parser accepts (a real spectrum has a few hundred).
pub const ROWS_MAX: usize = 100_000;

/// Writes `h` (values in `unit`) as a percentile spectrum with values in milliseconds.
pub fn write_hgrm<W: io::Write>(h: &Histogram<u64>, unit: Unit, w: &mut W) -> io::Result<()> {
    let scale = unit.per_milli();
    // Enough decimals to keep the recorded resolution after scaling to ms.
    let decimals = match unit {
        Unit::Nanos => 6,
        Unit::Micros | Unit::Millis => 3,
    };
    writeln!(
        w,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total_count: u64 = 0;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total_count += v.count_since_last_iteration();
            let value = h.highest_equivalent(v.value_iterated_to()) as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                writeln!(
                    w,
                    "{:>12.decimals$} {:>2.12} {:>10} {:>14.2}",
                    value,
                    q,
                    total_count,
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(w, "{:>12.decimals$} {:>2.12} {:>10}", value, q, total_count)?;
            }
        }
    }
    let (mean, stdev) = if h.is_empty() {
        (0.0, 0.0)
    } else {
        (h.mean(), h.stdev())
    };
    writeln!(
        w,
        "#[Mean    = {:>12.decimals$}, StdDeviation   = {:>12.decimals$}]",
        mean / scale,
        stdev / scale
    )?;
    writeln!(
        w,
        "#[Max     = {:>12.decimals$}, Total count    = {:>12}]",
        h.max() as f64 / scale,
        h.len()
    )?;
    writeln!(
        w,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_bucket_count(h.sigfig())
    )?;
    Ok(())
}

/// HdrHistogram's sub-bucket count for `sigfig` significant figures (2048 for 3).
pub fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest_single_unit = 2 * 10u64.pow(u32::from(sigfig));
    largest_single_unit.next_power_of_two()
}

/// One row of a percentile spectrum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpectrumRow {
    /// The value (milliseconds in files this harness writes).
    pub value: f64,
    /// The quantile iterated to, 0..=1.
    pub quantile: f64,
    /// How many values are at or below `value`.
    pub total_count: u64,
}

/// A parsed `.hgrm` file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Spectrum {
    /// Rows in file order (non-decreasing quantile).
    pub rows: Vec<SpectrumRow>,
    /// `#[Mean = …]`, if present.
    pub mean: Option<f64>,
    /// `StdDeviation = …`, if present.
    pub std_deviation: Option<f64>,
    /// `#[Max = …]`, if present.
    pub max: Option<f64>,
    /// `Total count = …`, if present.
    pub total_count: Option<u64>,
    /// `#[Buckets = …]`, if present.
    pub buckets: Option<u64>,
    /// `SubBuckets = …`, if present.
    pub sub_buckets: Option<u64>,
}

/// Why a `.hgrm` text could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HgrmError {
    /// No `Value Percentile TotalCount 1/(1-Percentile)` header line.
    #[error("no `Value Percentile TotalCount 1/(1-Percentile)` header")]
    NoHeader,
    /// The header is there but no row follows it.
    #[error("no percentile rows after the header")]
    NoRows,
    /// A row or footer line that does not parse.
    #[error("line {line}: cannot parse `{text}`")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// The line, truncated.
        text: String,
    },
    /// More than [`ROWS_MAX`] rows.
    #[error("more than {ROWS_MAX} rows")]
    TooManyRows,
}

impl Spectrum {
    /// The total count: the footer's, else the last row's.
    pub fn count(&self) -> u64 {
        self.total_count
            .or_else(|| self.rows.last().map(|r| r.total_count))
            .unwrap_or(0)
    }

    /// The largest value: the footer's `Max`, else the last row's value.
    pub fn max_value(&self) -> Option<f64> {
        self.max.or_else(|| self.rows.last().map(|r| r.value))
    }

    /// The smallest row value whose cumulative count reaches `quantile` of all values
    /// (`quantile >= 1` gives the max). Like HdrHistogram's `valueAtPercentile`, but limited to
    /// the resolution of the printed rows: the result is never below the true value.
    pub fn value_at_quantile(&self, quantile: f64) -> Option<f64> {
        if self.rows.is_empty() {
            return None;
        }
        if quantile >= 1.0 {
            return self.max_value();
        }
        let count = self.count();
        if count == 0 {
            // No counts: fall back on the percentile column.
            return self
                .rows
                .iter()
                .find(|r| r.quantile >= quantile)
                .map(|r| r.value)
                .or_else(|| self.max_value());
        }
        let wanted = (quantile.max(0.0) * count as f64).ceil().max(1.0) as u64;
        self.rows
            .iter()
            .find(|r| r.total_count >= wanted)
            .map(|r| r.value)
            .or_else(|| self.max_value())
    }
}

fn bad(line: usize, text: &str) -> HgrmError {
    HgrmError::BadLine {
        line,
        text: text.chars().take(120).collect(),
    }
}

/// Parses a percentile spectrum (see the module docs for what is accepted).
pub fn parse_hgrm(text: &str) -> Result<Spectrum, HgrmError> {
    let mut lines = text.lines().enumerate();
    let mut header_found = false;
    for (_, line) in lines.by_ref() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() >= 3 && words[0] == "Value" && words[1] == "Percentile" {
            header_found = true;
            break;
        }
    }
    if !header_found {
        return Err(HgrmError::NoHeader);
    }
    let mut spectrum = Spectrum::default();
    let mut footer_seen = false;
    for (index, line) in lines {
        let line_no = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(body) = trimmed.strip_prefix("#[") {
            footer_seen = true;
            parse_footer(body.trim_end_matches(']'), &mut spectrum)
                .ok_or_else(|| bad(line_no, line))?;
            continue;
        }
        if footer_seen {
            break; // wrk2 goes on with its own report after the footer.
        }
        match parse_row(trimmed) {
            Some(row) => {
                if spectrum.rows.len() >= ROWS_MAX {
                    return Err(HgrmError::TooManyRows);
                }
                spectrum.rows.push(row);
            }
            None if spectrum.rows.is_empty() => return Err(bad(line_no, line)),
            None => break,
        }
    }
    if spectrum.rows.is_empty() {
        return Err(HgrmError::NoRows);
    }
    Ok(spectrum)
}

fn parse_row(line: &str) -> Option<SpectrumRow> {
    let mut words = line.split_whitespace();
    let value: f64 = words.next()?.parse().ok()?;
    let quantile: f64 = words.next()?.parse().ok()?;
    let total_count: u64 = words.next()?.parse().ok()?;
    // The fourth column (1/(1-p)) is derived and absent on the 100% row.
    if let Some(inverse) = words.next() {
        let _: f64 = inverse.parse().ok()?;
    }
    if words.next().is_some() || !value.is_finite() || !(0.0..=1.0).contains(&quantile) {
        return None;
    }
    Some(SpectrumRow {
        value,
        quantile,
        total_count,
    })
}

fn parse_footer(body: &str, spectrum: &mut Spectrum) -> Option<()> {
    for field in body.split(',') {
        let (key, value) = field.split_once('=')?;
        let value = value.trim();
        match key.trim() {
            "Mean" => spectrum.mean = Some(value.parse().ok()?),
            "StdDeviation" => spectrum.std_deviation = Some(value.parse().ok()?),
            "Max" => spectrum.max = Some(value.parse().ok()?),
            "Total count" => spectrum.total_count = Some(value.parse().ok()?),
            "Buckets" => spectrum.buckets = Some(value.parse().ok()?),
            "SubBuckets" => spectrum.sub_buckets = Some(value.parse().ok()?),
            _ => {} // Unknown footer fields are ignored.
        }
    }
    Some(())
}

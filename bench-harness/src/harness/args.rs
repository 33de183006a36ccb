//! Command-line flags shared by every scenario, and the duration syntax they use.
//!
//! This module only parses; it never starts a measurement.

use std::path::PathBuf;
use std::time::Duration;

/// The most client threads `--concurrency` may ask for (each one is an OS thread).
pub const CONCURRENCY_MAX: usize = 4096;

/// Flags every load scenario flattens in: `#[command(flatten)] pub common: CommonArgs`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct CommonArgs {
    /// How long to measure, after the warm-up: 5s, 500ms, 2m, 1.5s, 250us.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to run before measuring (not recorded).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Output folder (default `results/<scenario>-<timestamp>/`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print exactly one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Open loop: requests per second, latency measured from the intended send time.
    #[arg(long, conflicts_with = "concurrency", value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// Closed loop: this many clients, each waiting for its reply before the next request.
    #[arg(long, value_parser = parse_concurrency)]
    pub concurrency: Option<usize>,
}

impl CommonArgs {
    /// The pacing these flags ask for (closed loop with one client when neither is given).
    pub fn pacing(&self) -> Pacing {
        match (self.rate, self.concurrency) {
            (Some(rate_per_s), _) => Pacing::Open { rate_per_s },
            (None, Some(concurrency)) => Pacing::Closed { concurrency },
            (None, None) => Pacing::Closed { concurrency: 1 },
        }
    }
}

impl Default for CommonArgs {
    fn default() -> Self {
        CommonArgs {
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            out: None,
            json: false,
            rate: None,
            concurrency: None,
        }
    }
}

/// Flags of simulator scenarios (virtual time): `#[command(flatten)] pub output: OutputArgs`.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct OutputArgs {
    /// Output folder (default `results/<scenario>-<timestamp>/`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print exactly one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// How a load generator issues requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pacing {
    /// At a fixed rate, whatever the replies do; latency counts from the intended send time.
    Open {
        /// Requests per second, over all clients.
        rate_per_s: u64,
    },
    /// Each of `concurrency` clients sends its next request when the previous reply arrived.
    Closed {
        /// Number of clients.
        concurrency: usize,
    },
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let rate: u64 = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a rate: {e}"))?;
    if rate == 0 {
        return Err("--rate must be at least 1 request/s".to_owned());
    }
    Ok(rate)
}

fn parse_concurrency(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a count: {e}"))?;
    if n == 0 || n > CONCURRENCY_MAX {
        return Err(format!("--concurrency must be in 1..={CONCURRENCY_MAX}"));
    }
    Ok(n)
}

/// Parses `5s`, `500ms`, `2m`, `1h`, `250us`/`250µs`, `10ns`, `1.5s`; a bare number is seconds.
///
/// Exact (integer arithmetic on the decimal digits, no floating point); rejects negative,
/// empty, unknown units and values that overflow a `Duration`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_ns: u128 = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1_000_000_000,
        "ms" => 1_000_000,
        "us" | "µs" => 1_000,
        "ns" => 1,
        "m" | "min" | "mins" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (use ns, us, ms, s, m, h)"
            ));
        }
    };
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(format!("`{s}` is not a duration (try 5s, 500ms, 2m)"));
    }
    if frac_part.contains('.') || frac_part.len() > 18 {
        return Err(format!("`{s}` is not a duration"));
    }
    let overflow = || format!("`{s}` is too long a duration");
    let int_value: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| overflow())?
    };
    let mut total_ns = int_value.checked_mul(unit_ns).ok_or_else(overflow)?;
    if !frac_part.is_empty() {
        let frac_value: u128 = frac_part
            .parse()
            .map_err(|_| format!("`{s}` is not a duration"))?;
        let scale = 10u128.pow(frac_part.len() as u32);
        total_ns = total_ns
            .checked_add(frac_value * unit_ns / scale)
            .ok_or_else(overflow)?;
    }
    let secs = u64::try_from(total_ns / 1_000_000_000).map_err(|_| overflow())?;
    let nanos = (total_ns % 1_000_000_000) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Splits `total` in proportion to `weights` (the parts sum exactly to `total`).
pub fn split_duration<const N: usize>(total: Duration, weights: [u32; N]) -> [Duration; N] {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    assert!(sum > 0, "split_duration needs a positive weight");
    let total_ns = total.as_nanos();
    let mut parts = [Duration::ZERO; N];
    let mut given_ns: u128 = 0;
    for (i, &w) in weights.iter().enumerate() {
        let part_ns = if i + 1 == N {
            total_ns - given_ns
        } else {
            total_ns * u128::from(w) / sum
        };
        given_ns += part_ns;
        parts[i] = duration_from_nanos_u128(part_ns);
    }
    parts
}

fn duration_from_nanos_u128(ns: u128) -> Duration {
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (ns % 1_000_000_000) as u32)
}

//! The `.hgrm` writer and parser, and the `.hlog` interval log: what is written parses back
//! and gives the known percentiles of a synthetic distribution.

use std::time::{Duration, Instant};

use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use ringleader_bench::harness::{HgrmError, Recorder, Unit, parse_hgrm};

fn hgrm_text(rec: &Recorder) -> String {
    let mut out = Vec::new();
    rec.write_hgrm(&mut out)
        .expect("writing to a Vec cannot fail");
    String::from_utf8(out).expect("the writer emits UTF-8")
}

/// Uniform 1..=100_000 µs, each value once: p50 = 50 ms, p99 = 99 ms, max = 100 ms.
fn uniform_recorder() -> Recorder {
    let mut rec = Recorder::new("uniform_us");
    for v in 1..=100_000u64 {
        rec.record(v);
    }
    rec
}

fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= expected * tolerance,
        "{what}: got {actual}, expected {expected} ± {:.3}%",
        tolerance * 100.0
    );
}

#[test]
fn written_spectrum_parses_back_to_the_known_percentiles() {
    let rec = uniform_recorder();
    let spectrum = parse_hgrm(&hgrm_text(&rec)).expect("own output parses");
    assert_eq!(spectrum.count(), 100_000);
    assert_eq!(spectrum.total_count, Some(100_000));
    // Values are in milliseconds; HdrHistogram keeps 3 significant figures (0.1%), and the
    // printed rows sit at quantile ticks, so allow 0.2%.
    for (q, expected_ms) in [
        (0.5, 50.0),
        (0.9, 90.0),
        (0.99, 99.0),
        (0.999, 99.9),
        (0.9999, 99.99),
    ] {
        let got = spectrum.value_at_quantile(q).expect("rows exist");
        assert_close(got, expected_ms, 0.002, &format!("quantile {q}"));
        // Never below the histogram's own answer (the parser picks the first row at or past q).
        let exact_ms = rec.histogram().value_at_quantile(q) as f64 / 1000.0;
        assert!(
            got >= exact_ms - 1e-9,
            "quantile {q}: {got} < exact {exact_ms}"
        );
    }
    assert_close(
        spectrum.value_at_quantile(1.0).unwrap(),
        100.0,
        0.001,
        "max",
    );
    assert_close(spectrum.max.unwrap(), 100.0, 0.001, "footer max");
    assert_close(spectrum.mean.unwrap(), 50.0, 0.002, "footer mean");
    assert_close(
        spectrum.std_deviation.unwrap(),
        28.8675,
        0.005,
        "footer stddev",
    );
    assert_eq!(spectrum.sub_buckets, Some(2048));
    assert_eq!(spectrum.buckets, Some(u64::from(rec.histogram().buckets())));
    // Rows are in non-decreasing quantile and value order, ending at quantile 1.
    for pair in spectrum.rows.windows(2) {
        assert!(pair[0].quantile <= pair[1].quantile);
        assert!(pair[0].value <= pair[1].value);
        assert!(pair[0].total_count <= pair[1].total_count);
    }
    assert_eq!(spectrum.rows.last().unwrap().quantile, 1.0);
}

#[test]
fn spectrum_has_the_wrk2_layout() {
    let text = hgrm_text(&uniform_recorder());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "       Value     Percentile TotalCount 1/(1-Percentile)"
    );
    assert_eq!(lines[1], "");
    // First row: 0.001 ms (1 µs) at quantile 0, written like "%12.3f %2.12f %10d %14.2f".
    assert_eq!(
        lines[2],
        "       0.001 0.000000000000          1           1.00"
    );
    let last_row = lines.iter().rev().find(|l| !l.starts_with('#')).unwrap();
    assert_eq!(
        last_row.split_whitespace().count(),
        3,
        "the 100% row has no 1/(1-p)"
    );
    assert!(last_row.contains("1.000000000000"));
    let footer: Vec<&&str> = lines.iter().filter(|l| l.starts_with("#[")).collect();
    assert_eq!(footer.len(), 3);
    assert!(footer[0].starts_with("#[Mean    = ") && footer[0].contains(", StdDeviation   = "));
    assert!(footer[1].starts_with("#[Max     = ") && footer[1].contains(", Total count    = "));
    assert!(footer[2].starts_with("#[Buckets = ") && footer[2].contains(", SubBuckets     = "));
    assert_eq!(
        *footer[1],
        "#[Max     =      100.031, Total count    =       100000]"
    );
}

#[test]
fn values_are_scaled_to_milliseconds_from_the_recorder_unit() {
    assert_eq!(Unit::from_name("rtt_ns"), Unit::Nanos);
    assert_eq!(Unit::from_name("detect_ms"), Unit::Millis);
    assert_eq!(Unit::from_name("rtt_us"), Unit::Micros);
    assert_eq!(Unit::from_name("latency"), Unit::Micros);
    let mut ns = Recorder::new("rtt_ns");
    let mut ms = Recorder::new("detect_ms");
    for v in 1..=1000u64 {
        ns.record(v * 1000); // 1..=1000 µs, in ns
        ms.record(v); // 1..=1000 ms
    }
    let ns = parse_hgrm(&hgrm_text(&ns)).unwrap();
    let ms = parse_hgrm(&hgrm_text(&ms)).unwrap();
    assert_close(
        ns.value_at_quantile(0.5).unwrap(),
        0.5,
        0.002,
        "ns p50 in ms",
    );
    assert_close(
        ms.value_at_quantile(0.5).unwrap(),
        500.0,
        0.002,
        "ms p50 in ms",
    );
}

#[test]
fn parser_accepts_wrk2_output_around_the_spectrum() {
    let text = "Running 30s test @ http://127.0.0.1:80/\n  Latency Distribution (HdrHistogram - Recorded Latency)\n\
                 50.000%    1.18ms\n\n  Detailed Percentile spectrum:\n\
                 \x20      Value   Percentile   TotalCount 1/(1-Percentile)\n\n\
                 \x20      0.500     0.000000            1         1.00\n\
                 \x20      1.000     0.500000           50         2.00\n\
                 \x20      2.000     0.990000           99       100.00\n\
                 \x20      9.000     1.000000          100          inf\n\
                 #[Mean    =        1.100, StdDeviation   =        0.800]\n\
                 #[Max     =        9.000, Total count    =          100]\n\
                 #[Buckets =           27, SubBuckets     =         2048]\n\
                 ----------------------------------------------------------\n\
                 \x20 100 requests in 1.00s\n";
    let s = parse_hgrm(text).expect("wrk2 output parses");
    assert_eq!(s.rows.len(), 4);
    assert_eq!(s.value_at_quantile(0.5), Some(1.0));
    assert_eq!(s.value_at_quantile(0.99), Some(2.0));
    assert_eq!(s.value_at_quantile(0.995), Some(9.0));
    assert_eq!(s.max, Some(9.0));
    assert_eq!(s.count(), 100);
}

#[test]
fn parser_rejects_bad_input_without_panicking() {
    assert_eq!(parse_hgrm(""), Err(HgrmError::NoHeader));
    assert_eq!(parse_hgrm("hello\nworld\n"), Err(HgrmError::NoHeader));
    assert_eq!(
        parse_hgrm("Value Percentile TotalCount 1/(1-Percentile)\n\n"),
        Err(HgrmError::NoRows)
    );
    assert!(matches!(
        parse_hgrm("Value Percentile TotalCount 1/(1-Percentile)\n1.0 banana 3 1.0\n"),
        Err(HgrmError::BadLine { line: 2, .. })
    ));
    assert!(matches!(
        parse_hgrm("Value Percentile TotalCount 1/(1-Percentile)\n1.0 1.5 3 1.0\n"),
        Err(HgrmError::BadLine { .. })
    ));
    assert!(matches!(
        parse_hgrm("Value Percentile TotalCount 1/(1-Percentile)\n1.0 0.5 3 2.0\n#[Mean = x]\n"),
        Err(HgrmError::BadLine { line: 3, .. })
    ));
}

#[test]
fn empty_recorder_writes_a_header_and_footer_only() {
    let rec = Recorder::new("empty_us");
    let text = hgrm_text(&rec);
    assert!(text.contains("Total count    =            0]"));
    assert_eq!(parse_hgrm(&text), Err(HgrmError::NoRows));
    assert_eq!(rec.summary()["count"], 0);
}

#[test]
fn interval_log_has_one_histogram_per_second_and_sums_to_the_total() {
    let start = Instant::now();
    let mut rec = Recorder::new("synthetic_us");
    // 3.5 s of synthetic time, one value every millisecond; value = second index + 1 ms.
    for i in 0..3500u64 {
        let now = start + Duration::from_millis(i);
        rec.record_at(now, 1000 * (i / 1000 + 1));
    }
    assert_eq!(rec.interval_count(), 4);
    let mut out = Vec::new();
    rec.write_hlog(&mut out).unwrap();
    let mut deserializer = Deserializer::new();
    let mut counts = Vec::new();
    let mut maxes = Vec::new();
    let mut starts = Vec::new();
    for entry in IntervalLogIterator::new(&out) {
        if let LogEntry::Interval(h) = entry.expect("the log parses") {
            let bytes = base64_decode(h.encoded_histogram());
            let hist: hdrhistogram::Histogram<u64> =
                deserializer.deserialize(&mut bytes.as_slice()).unwrap();
            counts.push(hist.len());
            maxes.push(hist.lowest_equivalent(hist.max()));
            starts.push(h.start_timestamp().as_secs_f64());
        }
    }
    assert_eq!(counts, vec![1000, 1000, 1000, 500]);
    assert_eq!(maxes, vec![1000, 2000, 3000, 4000]);
    assert_eq!(starts, vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(counts.iter().sum::<u64>(), rec.histogram().len());
}

#[test]
fn merged_recorders_keep_every_value_and_interval() {
    let start = Instant::now();
    let mut a = Recorder::new("m_us");
    let mut b = Recorder::new("m_us");
    for i in 0..2000u64 {
        a.record_at(start + Duration::from_millis(i), 10);
        b.record_at(
            start + Duration::from_millis(i) + Duration::from_micros(300),
            20,
        );
    }
    a.merge(&b);
    assert_eq!(a.histogram().len(), 4000);
    assert_eq!(a.histogram().value_at_quantile(0.25), 10);
    assert_eq!(a.histogram().max(), 20);
    let mut out = Vec::new();
    a.write_hlog(&mut out).unwrap();
    let intervals = IntervalLogIterator::new(&out)
        .filter(|e| matches!(e, Ok(LogEntry::Interval(_))))
        .count();
    assert_eq!(intervals, 2, "the two recorders' seconds are grouped");
}

/// Minimal standard base64 decoder (the test avoids a dependency for it).
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

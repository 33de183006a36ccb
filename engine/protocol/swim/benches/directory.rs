//! The member directory's interning, alone: nanoseconds per `Directory::intern` of a
//! (name, address, metadata) triple that is known already (the common case: every entry
//! of a periodic push-pull, every alive rumor heard again) and of a name never seen before
//! (a join).
//!
//! Same-run baseline: `baseline_hash_lookup` probes a plain `FxHashMap<String, u32>` of the
//! same names; report each intern figure as a ratio to it.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ringleader_swim::{Directory, FxHashMap};

/// Names in the directory of the known-name case (a large shard's cluster).
const KNOWN: usize = 10_000;
/// Names a directory takes before the new-name case starts over with an empty one.
const FRESH_CHUNK: usize = 10_000;

fn name(i: usize) -> String {
    format!("node-{i}")
}

fn addr(i: usize) -> SocketAddr {
    let o = (i as u32).to_be_bytes();
    SocketAddr::from(([10, o[1], o[2], o[3]], 7946))
}

fn bench(c: &mut Criterion) {
    let names: Vec<String> = (0..KNOWN).map(name).collect();
    let mut g = c.benchmark_group("directory");
    g.measurement_time(Duration::from_secs(3));

    let mut baseline: FxHashMap<String, u32> = FxHashMap::default();
    for (i, n) in names.iter().enumerate() {
        baseline.insert(n.clone(), i as u32);
    }
    let mut i = 0usize;
    g.bench_function("baseline_hash_lookup", |b| {
        b.iter(|| {
            i = (i + 1) % KNOWN;
            black_box(baseline.get(black_box(names[i].as_str())))
        })
    });

    let mut dir = Directory::new(KNOWN, 4 * KNOWN, 512);
    for (i, n) in names.iter().enumerate() {
        let _ = dir.intern(n, addr(i), &[]);
    }
    let mut i = 0usize;
    g.bench_function("intern_known", |b| {
        b.iter(|| {
            i = (i + 1) % KNOWN;
            black_box(dir.intern(black_box(&names[i]), addr(i), &[]))
        })
    });

    // New names: a directory fills up, so every FRESH_CHUNK interns one is replaced (not
    // timed); the names are made beforehand (not timed either).
    let fresh: Vec<String> = (0..FRESH_CHUNK).map(|i| format!("joiner-{i}")).collect();
    g.bench_function("intern_new", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let n = left.min(FRESH_CHUNK);
                let mut d = Directory::new(FRESH_CHUNK, 4 * FRESH_CHUNK, 512);
                let start = Instant::now();
                for (i, f) in fresh[..n].iter().enumerate() {
                    black_box(d.intern(black_box(f), addr(i), &[])).ok();
                }
                total += start.elapsed();
                left -= n;
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

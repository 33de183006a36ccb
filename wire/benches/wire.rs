//! Wire benchmarks (filled in by the wire issue).
fn main() {}

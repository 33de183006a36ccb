//! A small replicated key-value state machine, the reference workload.

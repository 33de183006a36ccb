//! Raft consensus core (sans-IO, deterministic).

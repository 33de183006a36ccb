//! SWIM + Lifeguard membership core (sans-IO, deterministic).

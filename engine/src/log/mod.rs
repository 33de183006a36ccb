//! Write-ahead log on io_uring: segments, group commit, recovery.
pub mod format;

//! Shards: one glommio executor per core, timers, cross-shard mesh.

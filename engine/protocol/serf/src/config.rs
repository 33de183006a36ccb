//! Serf's limits and tuning.

use crate::VivaldiConfig;

/// Serf's limits and tuning. Every buffer is bounded by a field here.
#[derive(Debug, Clone)]
pub struct SerfConfig {
    /// Slots in the recent-event ring (events older than this many clock ticks are refused).
    pub event_buffer: usize,
    /// Slots in the recent-query ring.
    pub query_buffer: usize,
    /// Most distinct events remembered per slot.
    pub per_slot_max: usize,
    /// Largest user-event name plus payload, in bytes.
    pub event_bytes_max: usize,
    /// Largest query payload, in bytes.
    pub query_bytes_max: usize,
    /// Largest query response payload, in bytes.
    pub response_bytes_max: usize,
    /// Members that relay each query response besides the direct send.
    pub relay_factor: u8,
    /// Query timeout = gossip interval × this × ⌈log10(n + 1)⌉ (Serf's default is 16).
    pub query_timeout_mult: u32,
    /// Queries this member may have outstanding.
    pub queries_pending_max: usize,
    /// Responses kept per outstanding query.
    pub responses_max: usize,
    /// Members whose intents are remembered.
    pub intents_max: usize,
    /// Largest encoded tags (they travel as SWIM metadata), in bytes.
    pub tags_bytes_max: usize,
    /// Application events queued before the oldest is dropped.
    pub events_pending_max: usize,
    /// Vivaldi tuning.
    pub vivaldi: VivaldiConfig,
}

impl Default for SerfConfig {
    fn default() -> Self {
        SerfConfig {
            event_buffer: 64,
            query_buffer: 64,
            per_slot_max: 64,
            event_bytes_max: 512,
            query_bytes_max: 1024,
            response_bytes_max: 1024,
            relay_factor: 0,
            query_timeout_mult: 16,
            queries_pending_max: 64,
            responses_max: 100_000,
            intents_max: 100_000,
            tags_bytes_max: 512,
            events_pending_max: 65_536,
            vivaldi: VivaldiConfig::default(),
        }
    }
}

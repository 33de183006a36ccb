//! The bounds and sizes of one shard's UDP ring, and the checks a ring runs on them before
//! it asks the kernel for anything.

use ringleader_wire::frame::{DATAGRAM_BYTES_MAX_DEFAULT, HEADER_LEN};

use super::send::GSO_SEGMENTS_MAX;
use super::{SLOT_INDEX_MASK, UdpError};

/// Bounds and sizes of one shard's UDP ring. Every queue here is bounded by a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Completion queue entries; at least `recv_buffers + send_slots` so the queue cannot
    /// overflow between two polls.
    pub cq_entries: u32,
    /// Receive buffers in the provided buffer ring (power of two).
    pub recv_buffers: u16,
    /// Bytes per receive buffer (multiple of 16, at least `datagram_bytes_max + 48`).
    pub recv_buffer_bytes: usize,
    /// Sends in flight at most; beyond it [`Sender::send`](super::Sender::send) refuses
    /// with `QueueFull`. (Sends are done once the kernel has taken their SQEs, so slots
    /// come back at every submit.)
    pub send_slots: usize,
    /// Largest datagram sent or accepted.
    pub datagram_bytes_max: usize,
    /// SO_RCVBUF / SO_SNDBUF asked for on every socket (the kernel caps at
    /// net.core.rmem_max / wmem_max).
    pub socket_buffer_bytes: usize,
    /// Sockets on this ring at most.
    pub sockets_max: usize,
    /// Queued SQEs that trigger a submit on their own.
    pub submit_batch: usize,
    /// How long [`UdpRing::close`](super::UdpRing::close) waits for the kernel to finish
    /// in-flight requests before leaking their memory instead of freeing it.
    pub close_timeout_ms: u64,
    /// Datagrams one GSO send (`UDP_SEGMENT`) may carry: consecutive sends from one socket
    /// to one peer of one size go down the stack as one buffer, and the kernel splits them
    /// back into separate datagrams. 0 or 1 sends every datagram on its own; at most 64.
    /// Ignored where the kernel lacks UDP GSO
    /// ([`Features::udp_gso`](crate::transport::Features::udp_gso)).
    pub gso_segments_max: usize,
    /// Longest busy-poll of [`UdpRing::spin_adaptive`](super::UdpRing::spin_adaptive)
    /// before the shard parks, in µs; 0 never spins.
    pub spin_us_max: u64,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            sq_entries: 512,
            cq_entries: 8192,
            recv_buffers: 2048,
            recv_buffer_bytes: 2048,
            send_slots: 1024,
            datagram_bytes_max: DATAGRAM_BYTES_MAX_DEFAULT,
            socket_buffer_bytes: 4 << 20,
            sockets_max: 16384,
            submit_batch: 64,
            close_timeout_ms: 2000,
            gso_segments_max: GSO_SEGMENTS_MAX,
            spin_us_max: 50,
        }
    }
}

/// Room the kernel's `io_uring_recvmsg_out` and the reserved source address take before
/// the payload, at most (IPv6).
pub const RECV_PREFIX_BYTES_MAX: usize = 16 + 32;

impl UdpConfig {
    /// Bytes of ring memory the kernel pins for this config (accounted to RLIMIT_MEMLOCK
    /// without CAP_IPC_LOCK): the buffer ring entries.
    pub fn locked_bytes(&self) -> u64 {
        (self.recv_buffers as u64 * 16).next_multiple_of(4096)
    }

    pub(super) fn check(&self) -> Result<(), UdpError> {
        let bad = |what: &'static str| Err(UdpError::Config(what));
        if !self.recv_buffers.is_power_of_two() || self.recv_buffers > 32768 {
            return bad("recv_buffers must be a power of two <= 32768");
        }
        if self.recv_buffer_bytes % 16 != 0
            || self.recv_buffer_bytes < self.datagram_bytes_max + RECV_PREFIX_BYTES_MAX
        {
            return bad(
                "recv_buffer_bytes must be a multiple of 16 and hold datagram_bytes_max + 48",
            );
        }
        if self.datagram_bytes_max <= HEADER_LEN || self.datagram_bytes_max > 65507 {
            return bad("datagram_bytes_max must be in (32, 65507]");
        }
        if self.send_slots == 0 || self.send_slots > SLOT_INDEX_MASK as usize {
            return bad("send_slots must be in [1, 2^32)");
        }
        if (self.cq_entries as usize) < self.recv_buffers as usize + self.send_slots {
            return bad("cq_entries must be >= recv_buffers + send_slots");
        }
        if self.sockets_max == 0 || self.sockets_max > SLOT_INDEX_MASK as usize {
            return bad("sockets_max must be in [1, 2^32)");
        }
        if self.submit_batch == 0 || self.submit_batch > self.sq_entries as usize {
            return bad("submit_batch must be in [1, sq_entries]");
        }
        if self.spin_us_max > 1000 {
            return bad("spin_us_max must be at most 1000");
        }
        if self.gso_segments_max > GSO_SEGMENTS_MAX {
            return bad("gso_segments_max must be at most 64");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        UdpConfig::default().check().expect("default config");
        let bad = UdpConfig {
            recv_buffer_bytes: 1000,
            ..UdpConfig::default()
        };
        assert!(bad.check().is_err());
    }
}

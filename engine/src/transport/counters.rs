//! Counters of one shard's transport: plain integers owned by the shard (no atomics on the
//! hot path). Copy a snapshot out to report them elsewhere.

use ringleader_wire::DecodeError;
use serde::Serialize;

/// Every cause a received datagram can be dropped for, in a fixed order.
///
/// The first entries are [`DecodeError::cause`] names; the rest are transport-level.
pub const DROP_CAUSES: &[&str] = &[
    "truncated",
    "trailing",
    "bad_magic",
    "version",
    "malformed_header",
    "oversized",
    "checksum",
    "label",
    "unknown_kind",
    "invalid_archive",
    "malformed_batch",
    "encrypted_without_keyring",
    "unencrypted",
    "no_key",
    // The datagram was larger than a receive buffer (MSG_TRUNC).
    "recv_truncated",
    // The completion named a buffer we already hold or that does not exist.
    "bad_buffer_id",
    // The frame decoded but held no message.
    "empty_batch",
];

/// Counters of one UDP ring.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UdpCounters {
    /// Datagrams received from the kernel (good and bad).
    pub datagrams_received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Datagrams that decoded and validated, and were handed to the handler.
    pub datagrams_delivered: u64,
    /// Messages handed to the handler.
    pub messages_delivered: u64,
    /// Datagrams dropped, by cause; indexed like [`DROP_CAUSES`].
    pub dropped: [u64; DROP_CAUSES.len()],
    /// Datagrams queued for sending.
    pub datagrams_queued: u64,
    /// Datagrams the kernel sent successfully (each datagram of a GSO send counts).
    pub datagrams_sent: u64,
    /// GSO sends submitted: one SQE and one `sendmsg` carrying several datagrams (all
    /// counted in `datagrams_queued` / `datagrams_sent` one by one).
    pub send_trains: u64,
    /// Times GSO was turned off on a ring because the kernel refused a GSO send.
    pub gso_disabled: u64,
    /// Payload bytes the kernel accepted.
    pub bytes_sent: u64,
    /// Datagrams the kernel failed to send (by errno in `send_errno_last`).
    pub send_errors: u64,
    /// The last send errno (positive), 0 if none.
    pub send_errno_last: i32,
    /// Sends refused because every send slot was in flight.
    pub send_queue_full: u64,
    /// Times the kernel found the buffer ring empty (ENOBUFS): receive buffers are too few
    /// for the load, or the shard is too slow to recycle them.
    pub recv_no_buffers: u64,
    /// Times a multishot receive had to be re-armed.
    pub recv_rearmed: u64,
    /// Receive completions with an error other than ENOBUFS.
    pub recv_errors: u64,
    /// `io_uring_enter` calls made.
    pub enter_calls: u64,
    /// Submission queue entries submitted.
    pub sqes_submitted: u64,
    /// Signals of wake-up eventfds seen in the ring ([`super::UdpRing::wake_on`]).
    pub wake_ups: u64,
    /// Busy-polls of [`super::UdpRing::spin_adaptive`] before parking.
    pub spins: u64,
    /// Of those, the ones that found work within their budget.
    pub spins_paid: u64,
}

impl UdpCounters {
    /// Counts one dropped datagram of `cause` (one of [`DROP_CAUSES`]).
    pub fn drop_cause(&mut self, cause: &str) {
        let i = DROP_CAUSES.iter().position(|c| *c == cause);
        debug_assert!(i.is_some(), "unknown drop cause {cause}");
        if let Some(i) = i {
            self.dropped[i] += 1;
        }
    }

    /// Counts a datagram dropped because it did not decode.
    pub fn drop_decode(&mut self, e: &DecodeError) {
        self.drop_cause(e.cause());
    }

    /// Datagrams dropped for `cause`.
    pub fn dropped_for(&self, cause: &str) -> u64 {
        DROP_CAUSES
            .iter()
            .position(|c| *c == cause)
            .map_or(0, |i| self.dropped[i])
    }

    /// Datagrams dropped for any cause.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// The non-zero drop counters by name.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        DROP_CAUSES
            .iter()
            .zip(self.dropped.iter())
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| (*c, *n))
            .collect()
    }

    /// Adds `other` into `self` (for totals over shards).
    pub fn add(&mut self, other: &UdpCounters) {
        self.datagrams_received += other.datagrams_received;
        self.bytes_received += other.bytes_received;
        self.datagrams_delivered += other.datagrams_delivered;
        self.messages_delivered += other.messages_delivered;
        for (a, b) in self.dropped.iter_mut().zip(other.dropped.iter()) {
            *a += *b;
        }
        self.datagrams_queued += other.datagrams_queued;
        self.datagrams_sent += other.datagrams_sent;
        self.send_trains += other.send_trains;
        self.gso_disabled += other.gso_disabled;
        self.bytes_sent += other.bytes_sent;
        self.send_errors += other.send_errors;
        if other.send_errno_last != 0 {
            self.send_errno_last = other.send_errno_last;
        }
        self.send_queue_full += other.send_queue_full;
        self.recv_no_buffers += other.recv_no_buffers;
        self.recv_rearmed += other.recv_rearmed;
        self.recv_errors += other.recv_errors;
        self.enter_calls += other.enter_calls;
        self.sqes_submitted += other.sqes_submitted;
        self.wake_ups += other.wake_ups;
        self.spins += other.spins;
        self.spins_paid += other.spins_paid;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decode_cause_has_a_counter() {
        let errors = [
            DecodeError::Truncated { need: 1, have: 0 },
            DecodeError::Trailing { frame: 1, have: 2 },
            DecodeError::BadMagic(0),
            DecodeError::UnsupportedVersion(9),
            DecodeError::MalformedHeader("x"),
            DecodeError::Oversized { len: 2, limit: 1 },
            DecodeError::Checksum {
                expected: 0,
                actual: 1,
            },
            DecodeError::WrongLabel {
                got: 0,
                expected: 1,
            },
            DecodeError::UnknownKind(200),
            DecodeError::InvalidArchive(ringleader_wire::MessageKind::Ping),
            DecodeError::MalformedBatch { offset: 0 },
            DecodeError::EncryptedWithoutKeyring,
            DecodeError::Unencrypted,
            DecodeError::NoKeyAuthenticates { tried: 1 },
        ];
        let mut c = UdpCounters::default();
        for e in &errors {
            c.drop_decode(e);
            assert_eq!(c.dropped_for(e.cause()), 1, "{}", e.cause());
        }
        assert_eq!(c.dropped_total(), errors.len() as u64);
    }
}

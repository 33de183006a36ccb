//! One received buffer: the kernel's `io_uring_recvmsg_out` header and source address are
//! parsed, the payload goes through the frame decoder (checksum, label, keyring) and every
//! message is validated in place before the handler sees any of them. Anything that fails
//! is counted by cause and the datagram is dropped whole; nothing here panics on received
//! bytes.

use ringleader_wire::{Decoder, Keyring, MessageRef};

use super::send::Sender;
use super::sockaddr::parse_sockaddr;
use super::{SocketId, UdpHandler};

/// Decodes and validates one received buffer `buf` (the kernel's `len` bytes at its
/// start) and runs the handler on it. Returns the message storage (emptied) for reuse.
///
/// `filter_map(|_| None)` below changes the element lifetime of an empty Vec while
/// keeping its allocation (std collects in place): `filter` could not change the type.
#[allow(clippy::too_many_arguments, clippy::unnecessary_filter_map)]
pub(super) fn receive_one<H: UdpHandler>(
    buf: &mut [u8],
    len: usize,
    ipv4: bool,
    known_socket: bool,
    socket: SocketId,
    decoder: &Decoder,
    keyring: Option<&Keyring>,
    storage: Vec<MessageRef<'static>>,
    handler: &mut H,
    out: &mut Sender<'_, '_>,
) -> Vec<MessageRef<'static>> {
    let name_len = if ipv4 { 16 } else { 32 };
    let payload_at = 16 + name_len;
    if len < payload_at || len > buf.len() || !known_socket {
        out.counters.drop_cause("truncated");
        return storage;
    }
    let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let (payload_len, msg_flags) = (word(8) as usize, word(12) as i32);
    let from = parse_sockaddr(&buf[16..16 + name_len]);
    if msg_flags & libc::MSG_TRUNC != 0 || payload_at + payload_len > len {
        out.counters.drop_cause("recv_truncated");
        return storage;
    }
    out.counters.bytes_received += payload_len as u64;
    let Some(from) = from else {
        out.counters.drop_cause("truncated");
        return storage;
    };
    let payload = &mut buf[payload_at..payload_at + payload_len];
    debug_assert_eq!(
        payload.as_ptr() as usize % 16,
        0,
        "payload must be 16-byte aligned"
    );
    let frame = match decoder.decode(payload, keyring) {
        Ok(f) => f,
        Err(e) => {
            out.counters.drop_decode(&e);
            return storage;
        }
    };
    // Reuse the allocation across datagrams: an empty Vec of the same layout, collected in
    // place (no allocation, no unsafe).
    let mut refs: Vec<MessageRef<'_>> = storage.into_iter().filter_map(|_| None).collect();
    for m in frame.messages() {
        match m {
            Ok(r) => refs.push(r),
            Err(e) => {
                out.counters.drop_decode(&e);
                return refs.into_iter().filter_map(|_| None).collect();
            }
        }
    }
    if refs.is_empty() {
        out.counters.drop_cause("empty_batch");
    } else {
        out.counters.datagrams_delivered += 1;
        out.counters.messages_delivered += refs.len() as u64;
        handler.on_datagram(out, socket, from, &frame, &refs);
    }
    refs.clear();
    refs.into_iter().filter_map(|_| None).collect()
}

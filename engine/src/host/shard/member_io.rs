//! A member's traffic through the shard: each validated datagram from the ring goes to the
//! member it was sent to, and everything the member produces is flushed at once —
//! datagrams encoded (sealed with the shard's keyring) and queued on the ring, stream
//! exchanges queued to start, events filtered and sent to the application, and the
//! member's next deadline set in the shard's timer heap.

use std::net::SocketAddr;
use std::sync::Arc;

use ringleader_wire::{Encoder, Frame, Keyring, MessageRef};

use super::Core;
use super::events::{event_mask, to_event};
use super::serf_io::Drive;
use super::streams::encode_stream_request;
use crate::host::HostEvent;
use crate::swim::{self, Item, Output, SharedDirectory, Transmit};
use crate::time::Time;
use crate::transport::{Sender, SocketId, UdpHandler};

impl Core {
    /// Sends every dirty member's outputs, delivers its events and re-arms its timer.
    pub(super) fn flush_dirty(&mut self, now: Time, out: &mut Sender<'_, '_>) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &slot in &dirty {
            self.flush(now, slot, out);
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    fn flush(&mut self, now: Time, slot: u32, out: &mut Sender<'_, '_>) {
        let Some(Some(h)) = self.members.get_mut(slot as usize) else {
            return;
        };
        // Events first: the Serf layer sees each before the application does, and what it
        // queues on the member in answer leaves with the outputs below.
        let mask = self.config.events;
        while let Some(e) = h.member.poll_event() {
            if let Some(s) = h.serf.as_mut() {
                s.on_event(now, &mut h.member, &self.dir, &e);
            }
            // Filter before building: a load test's start is n² "up" events nobody wants.
            if !mask.contains(event_mask(&e)) {
                continue;
            }
            let Some(event) = to_event(&self.dir, &h.member, h.serf.as_deref(), e) else {
                continue;
            };
            let ev = HostEvent {
                at: self.ctx.clock().instant(now),
                local: Arc::clone(&h.name),
                event,
            };
            if !self.ctx.emit(ev) {
                self.census.events_dropped += 1;
            }
        }
        if let (Some(s), Some(me)) = (h.serf.as_mut(), self.me.as_ref()) {
            s.drive(
                now,
                &mut h.member,
                &h.name,
                Drive {
                    ctx: &self.ctx,
                    me,
                    mask,
                    census: &mut self.census,
                    keys_changed: &mut self.keys_changed,
                },
            );
        }
        let mut again = false;
        while let Some(output) = h.member.poll_output() {
            match output {
                Output::Datagram(t) => {
                    let sent = send_datagram(
                        &mut self.encoder,
                        (*self.seal).as_ref(),
                        &self.dir,
                        self.config.swim.datagram_bytes_max,
                        out,
                        h.socket,
                        &t,
                    );
                    if !sent {
                        self.census.sends_dropped += 1;
                    }
                }
                Output::Stream(s) => {
                    match encode_stream_request(
                        &mut self.encoder,
                        (*self.seal).as_ref(),
                        &self.dir,
                        self.config.stream_frame_bytes_max,
                        &s.request,
                    ) {
                        Some(frame) => {
                            self.streams_to_start.push((slot, h.generation, s, frame));
                        }
                        None => {
                            self.census.streams_failed += 1;
                            again = true;
                            h.member.handle_stream_response(
                                now,
                                s.id,
                                Err(swim::StreamError::Unreachable),
                            );
                        }
                    }
                }
            }
        }
        let serf_due = h.serf.as_ref().map(|s| s.next_due());
        let slack = self.config.timer_slack_ms;
        match (h.member.poll_timeout(), serf_due) {
            (Some(a), Some(b)) => {
                let _ = self.timers.set(slot, on_grid(a.min(b), slack));
            }
            (Some(at), None) | (None, Some(at)) => {
                let _ = self.timers.set(slot, on_grid(at, slack));
            }
            (None, None) => self.timers.cancel(slot),
        }
        if again {
            // A stream that could not be encoded failed at once: flush what that produced.
            self.dirty.push(slot);
        }
    }
}

impl UdpHandler for Core {
    fn on_datagram(
        &mut self,
        out: &mut Sender<'_, '_>,
        socket: SocketId,
        from: SocketAddr,
        _frame: &Frame<'_>,
        messages: &[MessageRef<'_>],
    ) {
        let Some(&slot) = self.by_socket.get(socket.0 as usize) else {
            return;
        };
        let Some(Some(h)) = self.members.get_mut(slot as usize) else {
            return;
        };
        let now = self.ctx.now();
        for m in messages {
            // The archive was validated in place by the transport; names and addresses
            // are looked up in it directly (nothing is copied unless it is new).
            let item = self.dir.borrow_mut().from_wire_ref(m);
            match item {
                Ok(item) => h.member.handle_item(now, from, item),
                Err(_) => self.census.stats.dropped += 1,
            }
        }
        self.flush(now, slot, out);
    }
}

/// `at` rounded up to the next multiple of `slack_ms` milliseconds
/// ([`HostConfig::timer_slack_ms`](crate::host::HostConfig::timer_slack_ms)).
pub(super) fn on_grid(at: Time, slack_ms: u64) -> Time {
    let step = slack_ms.saturating_mul(1_000_000);
    if step == 0 || at == Time::MAX {
        return at;
    }
    let ns = at.as_nanos();
    match ns.div_ceil(step).checked_mul(step) {
        Some(up) => Time::from_nanos(up),
        None => at,
    }
}

/// Encodes a transmit as one frame and queues it; false if it was dropped. A lone message
/// (a probe or an ack with nothing piggybacked: most datagrams of a quiet cluster) goes in a
/// single-message frame, 8 bytes shorter than a batch of one.
fn send_datagram(
    encoder: &mut Encoder,
    seal: Option<&Keyring>,
    dir: &SharedDirectory,
    limit: usize,
    out: &mut Sender<'_, '_>,
    socket: SocketId,
    t: &Transmit,
) -> bool {
    let d = dir.borrow();
    if let [item] = t.items.as_slice() {
        let owned;
        let msg = match item {
            Item::Other(m) => &**m,
            other => {
                owned = d.to_wire(other);
                &owned
            }
        };
        return match encoder.encode_message(msg, seal, limit) {
            Ok(frame) => out.send(socket, t.to, frame).is_ok(),
            Err(_) => false,
        };
    }
    let mut batch = encoder.batch(seal, limit);
    for item in &t.items {
        let msg = match item {
            Item::Other(m) => {
                if !matches!(batch.push_message(m), Ok(true)) {
                    return false;
                }
                continue;
            }
            other => d.to_wire(other),
        };
        if !matches!(batch.push_message(&msg), Ok(true)) {
            return false;
        }
    }
    match batch.finish() {
        Ok(frame) => out.send(socket, t.to, frame).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::on_grid;
    use crate::time::Time;

    #[test]
    fn deadlines_round_up_to_the_grid_and_never_earlier() {
        let ms = Time::from_millis;
        assert_eq!(on_grid(ms(0), 10), ms(0));
        assert_eq!(on_grid(ms(10), 10), ms(10));
        assert_eq!(on_grid(ms(11), 10), ms(20));
        assert_eq!(on_grid(Time::from_nanos(10_000_001), 10), ms(20));
        assert_eq!(on_grid(ms(1234), 0), ms(1234));
        assert_eq!(on_grid(Time::MAX, 10), Time::MAX);
        // Near the end of time the grid would overflow: the deadline stays as it is.
        let late = Time::from_nanos(u64::MAX - 5);
        assert_eq!(on_grid(late, 10), late);
        for n in [1u64, 999_999, 10_000_000, 123_456_789_012] {
            let t = Time::from_nanos(n);
            let g = on_grid(t, 7);
            assert!(g >= t && g.as_nanos() % 7_000_000 == 0 && g.as_nanos() - n < 7_000_000);
        }
    }
}

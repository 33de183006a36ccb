//! TCP stream exchanges of the shard's members (push-pull and the TCP-fallback probe):
//! outbound ones each run as a glommio task under `stream_timeout_ms` and hand their answer
//! back to the shard loop; inbound ones are accepted on a member's own listener or on the
//! shard's shared wildcard listener (routed by local address) and served by a task per
//! connection. Both directions are bounded per shard, and inbound streams also per source
//! IP address (`inbound_streams_per_ip_max`: one address must not take every slot from the
//! other peers; see [`crate::transport::PerIpCount`]); what is over a bound fails at once
//! and is counted.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use ringleader_wire::msg::swim as wire;
use ringleader_wire::{Encoder, Keyring, Message, MessageRef};

use super::{Core, Shard};
use crate::runtime::LocalNotify;
use crate::swim::{self, Item, SharedDirectory, StreamRequest, StreamResponse};
use crate::time::Time;
use crate::transport::{FrameListener, FrameStream, StreamError};

/// The result of an outbound stream exchange, for the shard loop.
pub(super) struct StreamDone {
    slot: u32,
    generation: u64,
    id: u64,
    response: Result<StreamResponse, swim::StreamError>,
}

/// A wildcard TCP listener of the shard, shared by its members on one port
/// ([`StreamListeners::PerShard`]).
pub(super) struct SharedListener {
    port: u16,
    v6: bool,
    /// Hosted members on this port; the listener closes when the last one goes.
    users: u32,
    /// Accepts and routes connections; dropping it closes the listener.
    _acceptor: glommio::Task<()>,
}

/// Whom an accept loop serves.
#[derive(Clone, Copy)]
pub(super) enum Route {
    /// The member in this slot, while it has this generation.
    Member { slot: u32, generation: u64 },
    /// The member bound to the connection's local address.
    ByLocalAddr,
}

/// What an accept loop serves its streams with (taken from the shard state when spawned).
struct InboundLimits {
    timeout: Duration,
    /// The shard's keyring slot: read per stream, so that a key rotation applies to the
    /// next stream accepted.
    keyring: Rc<RefCell<Rc<Option<Keyring>>>>,
    /// `inbound_streams_max`.
    max: usize,
    /// `inbound_streams_per_ip_max`.
    per_ip_max: usize,
}

impl Core {
    /// Starts serving inbound streams from `listener` for `route`.
    pub(super) fn spawn_acceptor(
        &self,
        shard: &Rc<RefCell<Shard>>,
        route: Route,
        listener: FrameListener,
    ) -> glommio::Task<()> {
        glommio::spawn_local(accept_loop(
            Rc::clone(shard),
            self.ctx.waker().clone(),
            route,
            listener.with_budget(self.stream_budget.clone()),
            InboundLimits {
                timeout: Duration::from_millis(self.config.swim.stream_timeout_ms),
                keyring: Rc::clone(&self.seal_slot),
                max: self.config.inbound_streams_max,
                per_ip_max: self.config.inbound_streams_per_ip_max,
            },
        ))
    }

    /// Makes the shard's wildcard listener on `addr`'s port serve one more member,
    /// opening it if this is the port's first member here.
    pub(super) fn share_listener(
        &mut self,
        shard: &Rc<RefCell<Shard>>,
        addr: SocketAddr,
    ) -> std::io::Result<()> {
        let (port, v6) = (addr.port(), addr.is_ipv6());
        if let Some(l) = self
            .listeners
            .iter_mut()
            .find(|l| (l.port, l.v6) == (port, v6))
        {
            l.users += 1;
            return Ok(());
        }
        let any: SocketAddr = if v6 {
            (std::net::Ipv6Addr::UNSPECIFIED, port).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, port).into()
        };
        let listener = FrameListener::bind(any, &self.config.label, self.config.stream_frame_bytes_max)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "shared listener on {any}: {e} (with StreamListeners::PerShard, members on different shards need different ports: see Host::shard_of)"
                    ),
                )
            })?;
        let acceptor = self.spawn_acceptor(shard, Route::ByLocalAddr, listener);
        self.listeners.push(SharedListener {
            port,
            v6,
            users: 1,
            _acceptor: acceptor,
        });
        Ok(())
    }

    /// A member on `addr` is gone: with `PerShard`, its shared listener serves one member
    /// fewer (and closes with the last).
    pub(super) fn unshare_listener(&mut self, addr: SocketAddr) {
        let key = (addr.port(), addr.is_ipv6());
        if let Some(i) = self.listeners.iter().position(|l| (l.port, l.v6) == key) {
            self.listeners[i].users -= 1;
            if self.listeners[i].users == 0 {
                self.listeners.swap_remove(i);
            }
        }
    }

    /// The member a connection to `local` is for: (slot, generation).
    pub(super) fn route(&mut self, route: Route, local: Option<SocketAddr>) -> Option<(u32, u64)> {
        match route {
            Route::Member { slot, generation } => Some((slot, generation)),
            Route::ByLocalAddr => {
                let found = local
                    .and_then(|a| self.by_addr.get(&a).copied())
                    .and_then(|slot| Some((slot, self.hosted(slot)?.generation)));
                if found.is_none() {
                    self.census.streams_unrouted += 1;
                }
                found
            }
        }
    }

    pub(super) fn stream_done(&mut self, now: Time, done: StreamDone) {
        let StreamDone {
            slot,
            generation,
            id,
            response,
        } = done;
        let failed = response.is_err();
        let Some(h) = self.live(slot, generation) else {
            return;
        };
        h.member.handle_stream_response(now, id, response);
        if failed {
            self.census.streams_failed += 1;
        }
        self.dirty.push(slot);
    }

    /// A peer's answer to a stream exchange, read in place from its frame.
    pub(super) fn stream_response(
        &self,
        answer: &MessageRef<'_>,
        from: SocketAddr,
    ) -> Result<StreamResponse, swim::StreamError> {
        match answer {
            MessageRef::PushPull(p) => self
                .push_pull_in(p, from)
                .map(StreamResponse::PushPull)
                .ok_or(swim::StreamError::Unreachable),
            MessageRef::Ack(a) => Ok(StreamResponse::Ack {
                seq: a.seq_no.to_native(),
            }),
            MessageRef::Nack(_) => Ok(StreamResponse::Refused),
            _ => Err(swim::StreamError::Unreachable),
        }
    }

    /// A peer's push-pull state interned in this shard's directory; `None` over the bounds.
    pub(super) fn push_pull_in(
        &self,
        p: &wire::ArchivedPushPull,
        from: SocketAddr,
    ) -> Option<Rc<swim::PushPullState>> {
        let c = &self.config.swim;
        self.dir
            .borrow_mut()
            .push_pull_from_wire(p, from, c.push_pull_members_max, c.user_state_bytes_max)
            .ok()
            .map(Rc::new)
    }

    /// Answers an inbound stream request for the member in `slot`; the frame to send back.
    pub(super) fn serve(
        &mut self,
        now: Time,
        slot: u32,
        generation: u64,
        from: SocketAddr,
        request: &MessageRef<'_>,
    ) -> Option<Vec<u8>> {
        let frame_max = self.config.stream_frame_bytes_max;
        let dir = self.dir.clone();
        let request = match request {
            MessageRef::PushPull(p) => self.push_pull_in(p, from).map(StreamRequest::PushPull),
            m @ MessageRef::Ping(_) => match dir.borrow_mut().from_wire_ref(m) {
                Ok(Item::Ping {
                    seq,
                    target,
                    source,
                }) => Some(StreamRequest::Ping {
                    seq,
                    target,
                    source,
                }),
                _ => None,
            },
            _ => None,
        };
        let request = request?;
        let h = self.live(slot, generation)?;
        let response = h.member.handle_stream_request(now, from, request);
        self.dirty.push(slot);
        self.census.streams_served += 1;
        let seal = (*self.seal).as_ref();
        let msg = match response {
            StreamResponse::PushPull(state) => {
                let frame =
                    dir.borrow()
                        .encode_push_pull(&state, &mut self.encoder, seal, frame_max);
                return frame.ok().map(<[u8]>::to_vec);
            }
            StreamResponse::Ack { seq } => Message::Ack(wire::Ack {
                seq_no: seq,
                coordinate: None,
            }),
            StreamResponse::Refused => Message::Nack(wire::Nack { seq_no: u32::MAX }),
        };
        self.encoder
            .encode_message(&msg, seal, frame_max)
            .ok()
            .map(<[u8]>::to_vec)
    }
}

impl StreamDone {
    /// Marks the directory ids of the answer (for the shard's directory collections).
    pub(super) fn mark_ids(&self, marks: &mut swim::Marks) {
        if let Ok(r) = &self.response {
            marks.stream_response(r);
        }
    }
}

pub(super) fn encode_stream_request(
    encoder: &mut Encoder,
    seal: Option<&Keyring>,
    dir: &SharedDirectory,
    limit: usize,
    request: &StreamRequest,
) -> Option<Vec<u8>> {
    let d = dir.borrow();
    let frame = match request {
        StreamRequest::PushPull(state) => d.encode_push_pull(state, encoder, seal, limit),
        StreamRequest::Ping {
            seq,
            target,
            source,
        } => {
            let ping = d.to_wire(&Item::Ping {
                seq: *seq,
                target: *target,
                source: *source,
            });
            encoder.encode_message(&ping, seal, limit)
        }
    };
    frame.ok().map(<[u8]>::to_vec)
}

pub(super) fn start_streams(shard: &Rc<RefCell<Shard>>) {
    let (starts, timeout, label, frame_max, keyring) = {
        let mut s = shard.borrow_mut();
        if s.core.streams_to_start.is_empty() {
            return;
        }
        let starts = std::mem::take(&mut s.core.streams_to_start);
        s.core.census.streams_out += starts.len() as u64;
        let c = &s.core.config;
        (
            starts,
            Duration::from_millis(c.swim.stream_timeout_ms),
            c.label.clone(),
            c.stream_frame_bytes_max,
            Rc::clone(&s.core.seal),
        )
    };
    let wake = shard.borrow().core.ctx.waker().clone();
    let label: Rc<[u8]> = label.into();
    for (slot, generation, t, frame) in starts {
        {
            // A shard-wide bound on connections in flight (each holds a descriptor): over
            // it the exchange fails at once, as an unreachable peer would.
            let mut s = shard.borrow_mut();
            if s.outbound >= s.core.config.outbound_streams_max {
                s.completions.push_back(StreamDone {
                    slot,
                    generation,
                    id: t.id,
                    response: Err(swim::StreamError::Unreachable),
                });
                wake.notify();
                continue;
            }
            s.outbound += 1;
        }
        let shard = Rc::clone(shard);
        let wake = wake.clone();
        let label = Rc::clone(&label);
        let keyring = Rc::clone(&keyring);
        glommio::spawn_local(async move {
            // The exchange gives back its answer and the open connection, so that the
            // answer (interned into the directory as it was read) reaches the shard
            // before the next await: the shard's directory collections see only what the
            // shard holds, and an answer held across the close would not be marked.
            let exchange = async {
                let Ok(mut s) = FrameStream::connect(t.to, &label, frame_max).await else {
                    return (Err(swim::StreamError::Unreachable), None);
                };
                if s.send(&frame).await.is_err() {
                    return (Err(swim::StreamError::Unreachable), Some(s));
                }
                let response = match s.recv((*keyring).as_ref()).await {
                    // Read in place: a push-pull answer is interned straight from the frame.
                    Ok(Some(f)) => match f.messages().next() {
                        Some(Ok(m)) => shard.borrow().core.stream_response(&m, t.to),
                        _ => Err(swim::StreamError::Unreachable),
                    },
                    _ => Err(swim::StreamError::Unreachable),
                };
                (response, Some(s))
            };
            let (response, stream) = future::or(exchange, async {
                glommio::timer::sleep(timeout).await;
                (Err(swim::StreamError::Timeout), None)
            })
            .await;
            shard.borrow_mut().completions.push_back(StreamDone {
                slot,
                generation,
                id: t.id,
                response,
            });
            wake.notify();
            if let Some(s) = stream {
                let _ = s.close().await;
            }
            shard.borrow_mut().outbound -= 1;
        })
        .detach();
    }
}

/// How an inbound exchange ended.
enum Inbound {
    /// Answered.
    Served,
    /// Closed unanswered: the peer left before a frame, the member is gone, or the answer
    /// could not be sent.
    Unanswered,
    /// Not done within `stream_timeout_ms`.
    TimedOut,
    /// The frame needed more than the shard's inbound byte budget.
    OverBudget,
    /// The frame did not decode, or the connection ended inside it.
    BadFrame,
}

/// Serves inbound stream exchanges of one member until its task is dropped.
async fn accept_loop(
    shard: Rc<RefCell<Shard>>,
    wake: LocalNotify,
    route: Route,
    listener: FrameListener,
    limits: InboundLimits,
) {
    // Everything from the shard state comes in as arguments: the task may first run while
    // the shard is borrowed by the code that spawned it.
    let InboundLimits {
        timeout,
        keyring,
        max,
        per_ip_max,
    } = limits;
    loop {
        let Ok(mut stream) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            shard.borrow_mut().core.census.accept_errors += 1;
            glommio::timer::sleep(crate::host::ACCEPT_BACKOFF).await;
            continue;
        };
        let (slot, generation, from) = {
            let mut s = shard.borrow_mut();
            let Some((slot, generation)) = s.core.route(route, stream.local_addr().ok()) else {
                continue;
            };
            // A connection already gone has no address to answer or count against.
            let Ok(from) = stream.peer_addr() else {
                s.core.census.streams_refused += 1;
                continue;
            };
            if s.inbound >= max {
                s.core.census.streams_refused += 1;
                s.core.census.streams_refused_busy += 1;
                continue;
            }
            if !s.inbound_by_ip.take(from.ip(), per_ip_max) {
                s.core.census.streams_refused += 1;
                s.core.census.streams_refused_per_ip += 1;
                continue;
            }
            s.inbound += 1;
            (slot, generation, from)
        };
        let shard = Rc::clone(&shard);
        let wake = wake.clone();
        let keyring = Rc::clone(&keyring.borrow());
        glommio::spawn_local(async move {
            let outcome = future::or(
                async {
                    // The request is read in place (a push-pull state is interned straight
                    // from the frame); the answer is an owned frame, sent once the received
                    // frame's buffer is free again.
                    let answer = match stream.recv((*keyring).as_ref()).await {
                        Ok(Some(f)) => match f.messages().next() {
                            Some(Ok(req)) => {
                                let mut s = shard.borrow_mut();
                                let now = s.core.ctx.now();
                                s.core
                                    .serve(now, slot, generation, from, &req)
                                    .ok_or(Inbound::Unanswered)
                            }
                            _ => Err(Inbound::BadFrame),
                        },
                        Err(StreamError::OverBudget { .. }) => Err(Inbound::OverBudget),
                        Err(_) => Err(Inbound::BadFrame),
                        Ok(None) => Err(Inbound::Unanswered),
                    };
                    wake.notify();
                    match answer {
                        Ok(frame) => match stream.send(&frame).await {
                            Ok(()) => Inbound::Served,
                            Err(_) => Inbound::Unanswered,
                        },
                        Err(why) => why,
                    }
                },
                async {
                    glommio::timer::sleep(timeout).await;
                    Inbound::TimedOut
                },
            )
            .await;
            let mut s = shard.borrow_mut();
            s.inbound -= 1;
            s.inbound_by_ip.release(from.ip());
            let c = &mut s.core.census;
            match outcome {
                Inbound::Served => {}
                Inbound::Unanswered => c.streams_refused += 1,
                Inbound::TimedOut => {
                    c.streams_refused += 1;
                    c.streams_timed_out += 1;
                }
                Inbound::OverBudget => {
                    c.streams_refused += 1;
                    c.streams_over_budget += 1;
                }
                Inbound::BadFrame => {
                    c.streams_refused += 1;
                    c.streams_bad_frame += 1;
                }
            }
        })
        .detach();
    }
}

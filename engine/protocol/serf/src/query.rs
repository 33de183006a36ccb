//! Queries: issuing one, matching its filters, answering it directly and through relays,
//! and collecting the answers (de-duplicated per member) until the query times out.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use ringleader_swim::{Member, MemberState};
use ringleader_time::Time;
use ringleader_wire::Message;
use ringleader_wire::msg::serf as wire;

use crate::codec::decode_key_response;
use crate::events::{Seen, digest};
use crate::{INTERNAL_PREFIX, Serf, SerfError, SerfEvent};
use crate::{KeyPending, Pending};

/// Query flag: the originator wants acks.
pub const QUERY_FLAG_ACK: u32 = 1;
/// Query flag: do not rebroadcast (direct queries).
pub const QUERY_FLAG_NO_BROADCAST: u32 = 2;
/// Response flag: this is an ack, not a response.
pub const RESPONSE_FLAG_ACK: u32 = 1;

/// A query to answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryHandle {
    /// Query id (unique per originator).
    pub id: u32,
    /// Query Lamport time.
    pub ltime: u64,
    /// Name.
    pub name: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Originator's name.
    pub source: String,
    /// Where responses go.
    pub addr: SocketAddr,
    /// Deadline after which the originator ignores responses.
    pub deadline: Time,
}
/// How a query is issued (see [`Serf::query_with`]).
#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    /// Filters every one of which a member must match to answer.
    pub filters: Vec<wire::QueryFilter>,
    /// When the originator stops listening (default: Serf's formula).
    pub timeout: Option<Duration>,
    /// Ask every matching member for an ack on receipt (before its answer).
    pub request_ack: bool,
    /// Members that relay each answer besides the direct send (default: the config's).
    pub relay_factor: Option<u8>,
}

impl Serf {
    fn query_timeout<R: Rng>(&self, member: &Member<R>) -> Duration {
        let n = member.known().max(1) as f64;
        let scale = (n + 1.0).log10().ceil().max(1.0);
        self.gossip_interval * self.cfg.query_timeout_mult * scale as u32
    }

    /// Issues a query; responses arrive as [`SerfEvent::Response`] until
    /// [`SerfEvent::QueryDone`]. `timeout` defaults to Serf's formula. Returns the query id.
    pub fn query<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        name: &str,
        payload: &[u8],
        filters: Vec<wire::QueryFilter>,
        timeout: Option<Duration>,
    ) -> Result<u32, SerfError> {
        let opts = QueryOptions {
            filters,
            timeout,
            request_ack: true,
            relay_factor: None,
        };
        self.query_with(now, member, name, payload, opts)
    }

    /// Issues a query with every option of [`QueryOptions`]; see [`Serf::query`].
    pub fn query_with<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        name: &str,
        payload: &[u8],
        opts: QueryOptions,
    ) -> Result<u32, SerfError> {
        if name.starts_with(INTERNAL_PREFIX) {
            return Err(SerfError::Reserved);
        }
        self.query_inner(now, member, name, payload, opts, None)
    }

    pub(crate) fn query_inner<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        name: &str,
        payload: &[u8],
        opts: QueryOptions,
        key: Option<KeyPending>,
    ) -> Result<u32, SerfError> {
        let QueryOptions {
            filters,
            timeout,
            request_ack,
            relay_factor,
        } = opts;
        if payload.len() > self.cfg.query_bytes_max {
            return Err(SerfError::PayloadTooLarge {
                len: payload.len(),
                max: self.cfg.query_bytes_max,
            });
        }
        if self.pending.len() >= self.cfg.queries_pending_max {
            return Err(SerfError::QueriesFull(self.pending.len()));
        }
        let timeout = timeout.unwrap_or_else(|| self.query_timeout(member));
        let mut id: u32 = self.rng.random();
        while self.pending.contains_key(&id) {
            id = self.rng.random();
        }
        let ltime = self.query_clock.time();
        self.query_clock.increment();
        self.pending.insert(
            id,
            Pending {
                deadline: now + timeout,
                responders: HashSet::new(),
                ackers: HashSet::new(),
                key,
            },
        );
        let q = wire::Query {
            ltime,
            id,
            addr: self.addr,
            source: self.name.clone(),
            filters,
            flags: if request_ack { QUERY_FLAG_ACK } else { 0 },
            relay_factor: relay_factor.unwrap_or(self.cfg.relay_factor),
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            name: name.to_owned(),
            payload: payload.to_vec(),
        };
        self.accept_query(now, member, q);
        Ok(id)
    }

    fn matches(&self, filters: &[wire::QueryFilter]) -> bool {
        filters.iter().all(|f| match f {
            wire::QueryFilter::Nodes(names) => names.iter().any(|n| n == &self.name),
            wire::QueryFilter::Tag(t) => {
                let Some(value) = self.tags.get(&t.tag) else {
                    return false;
                };
                // Untrusted pattern: bounded compile size; an invalid one matches nothing.
                regex::RegexBuilder::new(&t.expr)
                    .size_limit(1 << 16)
                    .dfa_size_limit(1 << 16)
                    .build()
                    .map(|re| re.is_match(value))
                    .unwrap_or(false)
            }
        })
    }

    pub(crate) fn accept_query<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        q: wire::Query,
    ) {
        self.query_clock.witness(q.ltime);
        if q.ltime < self.query_min_time {
            self.stats.events_too_old += 1;
            return;
        }
        let d = digest(&[&q.id.to_le_bytes(), q.source.as_bytes()]);
        match self.queries.check(q.ltime, d, self.query_clock.time()) {
            Seen::TooOld | Seen::Duplicate => {
                self.stats.queries_duplicate += 1;
                return;
            }
            Seen::New => {}
        }
        if q.flags & QUERY_FLAG_NO_BROADCAST == 0 {
            member.broadcast(Message::Query(q.clone()), None);
        }
        if !self.matches(&q.filters) {
            return;
        }
        self.stats.queries_delivered += 1;
        let deadline = now + Duration::from_millis(u64::from(q.timeout_ms));
        let handle = QueryHandle {
            id: q.id,
            ltime: q.ltime,
            name: q.name.clone(),
            payload: q.payload.clone(),
            source: q.source.clone(),
            addr: q.addr,
            deadline,
        };
        if q.flags & QUERY_FLAG_ACK != 0 {
            self.send_response(
                member,
                &handle,
                q.relay_factor,
                RESPONSE_FLAG_ACK,
                Vec::new(),
            );
        }
        if q.name.starts_with(INTERNAL_PREFIX) {
            let payload = self.handle_internal(&q.name, &q.payload);
            self.send_response(member, &handle, q.relay_factor, 0, payload);
        } else {
            self.emit(SerfEvent::Query(handle));
        }
    }

    /// Queues an answer to a query, sent by the next [`Serf::flush`] (for drivers that
    /// observe events where the member is not at hand). Bounded by `queries_pending_max`.
    pub fn queue_response(&mut self, query: QueryHandle, payload: Vec<u8>) {
        if self.queued_responses.len() >= self.cfg.queries_pending_max {
            self.stats.refused += 1;
            return;
        }
        self.queued_responses.push((query, payload));
    }

    /// Sends the answers queued with [`Serf::queue_response`].
    pub fn flush<R: Rng>(&mut self, now: Time, member: &mut Member<R>) {
        for (q, payload) in std::mem::take(&mut self.queued_responses) {
            if self.respond(now, member, &q, &payload).is_err() {
                self.stats.refused += 1;
            }
        }
    }

    /// Answers a query delivered as [`SerfEvent::Query`].
    pub fn respond<R: Rng>(
        &mut self,
        now: Time,
        member: &mut Member<R>,
        query: &QueryHandle,
        payload: &[u8],
    ) -> Result<(), SerfError> {
        if payload.len() > self.cfg.response_bytes_max {
            return Err(SerfError::PayloadTooLarge {
                len: payload.len(),
                max: self.cfg.response_bytes_max,
            });
        }
        if now > query.deadline {
            return Ok(()); // Too late to matter; the originator has stopped listening.
        }
        self.send_response(member, query, self.cfg.relay_factor, 0, payload.to_vec());
        Ok(())
    }

    fn send_response<R: Rng>(
        &mut self,
        member: &mut Member<R>,
        q: &QueryHandle,
        relay_factor: u8,
        flags: u32,
        payload: Vec<u8>,
    ) {
        let resp = wire::QueryResponse {
            ltime: q.ltime,
            id: q.id,
            from: self.name.clone(),
            flags,
            payload,
        };
        if q.addr == self.addr {
            // Our own query: no network.
            self.accept_response(resp);
            return;
        }
        self.stats.responses_sent += 1;
        let msg = Message::QueryResponse(resp);
        if relay_factor > 0 {
            if let Ok(frame) = self.encoder.encode_message(
                &msg,
                None,
                ringleader_wire::frame::DATAGRAM_BYTES_MAX_DEFAULT,
            ) {
                let frame = frame.to_vec();
                let relays = self.pick_relays(member, relay_factor as usize, q.addr);
                for via in relays {
                    member.send_to(
                        via,
                        Message::Relay(wire::Relay {
                            dest: q.addr,
                            dest_name: q.source.clone(),
                            frame: frame.clone(),
                        }),
                    );
                }
            }
        }
        member.send_to(q.addr, msg);
    }

    fn pick_relays<R: Rng>(
        &mut self,
        member: &Member<R>,
        k: usize,
        not: SocketAddr,
    ) -> Vec<SocketAddr> {
        let dir = member.directory().clone();
        let dir = dir.borrow();
        let alive: Vec<SocketAddr> = member
            .members()
            .filter(|&(node, state, _)| state == MemberState::Alive && node != member.id())
            .filter_map(|(node, _, _)| member.member(node).map(|(_, _, info)| dir.info(info).addr))
            .filter(|&a| a != not && a != self.addr)
            .collect();
        let mut out = Vec::with_capacity(k);
        for _ in 0..k.min(alive.len()) * 4 {
            if out.len() >= k {
                break;
            }
            let a = alive[self.rng.random_range(0..alive.len())];
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }

    pub(crate) fn accept_response(&mut self, r: wire::QueryResponse) {
        let Some(p) = self.pending.get_mut(&r.id) else {
            return;
        };
        if p.responders.len() + p.ackers.len() >= self.cfg.responses_max {
            self.stats.refused += 1;
            return;
        }
        let ack = r.flags & RESPONSE_FLAG_ACK != 0;
        let fresh = if ack {
            p.ackers.insert(r.from.clone())
        } else {
            p.responders.insert(r.from.clone())
        };
        if !fresh {
            return; // A relayed copy of a response already counted.
        }
        if let (false, Some(k)) = (ack, p.key.as_mut()) {
            k.result.responses += 1;
            match decode_key_response(&r.payload) {
                Some(resp) if resp.ok => {
                    k.result.ok += 1;
                    for key in resp.keys {
                        *k.result.keys.entry(key).or_default() += 1;
                    }
                }
                Some(resp) => k.result.failed.push((r.from.clone(), resp.message)),
                None => k
                    .result
                    .failed
                    .push((r.from.clone(), "malformed key response".into())),
            }
            return;
        }
        self.emit(SerfEvent::Response {
            id: r.id,
            from: r.from,
            payload: r.payload,
            ack,
        });
    }
}

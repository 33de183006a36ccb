//! A hosted member's Serf layer on the shard: driven as the simulator drives it
//! (`engine/sim/src/serf.rs`): every member event is handed to Serf before it is delivered,
//! Serf is ticked every `tick_interval_ms`, and what Serf emits becomes the application's
//! events, query replies and key reports. The snapshot and the keyring file are handed to
//! the member's file writer thread; a keyring change is applied to the shard's transport
//! (receive ring and sealing) by the main loop.
//!
//! What it must never do: decide anything of the protocol (that is the sans-IO crate's),
//! block on the application (query replies go to bounded channels; full ones are counted)
//! or on the disk.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use ringleader_serf::{Serf, SerfEvent};
use ringleader_wire::keyring::KEY_LEN;

use super::{Core, Ctx, Hosted, Reply, Shard};
use crate::host::serf::{
    Coordinates, FileJob, FileWriter, IncomingQuery, KeyOp, KeyReport, QueryParams, QueryReply,
    SerfOptions, keyring_file_bytes,
};
use crate::host::{Event, EventMask, HostError, HostEvent, MemberStatus};
use crate::runtime::CommandSender;
use crate::swim::{self, Member, MemberState, SharedDirectory};
use crate::time::Time;

/// What the application asks of a member's Serf layer.
pub(crate) enum SerfCommand {
    UserEvent {
        event: String,
        payload: Vec<u8>,
        coalesce: bool,
        reply: Reply<Result<u64, HostError>>,
    },
    Query {
        query: String,
        payload: Vec<u8>,
        params: QueryParams,
        replies: crossbeam_channel::Sender<QueryReply>,
        reply: Reply<Result<(u32, Duration), HostError>>,
    },
    Respond {
        query: ringleader_serf::QueryHandle,
        payload: Vec<u8>,
        reply: Reply<Result<(), HostError>>,
    },
    SetTags {
        tags: std::collections::BTreeMap<String, String>,
        reply: Reply<Result<(), HostError>>,
    },
    Key {
        op: KeyOp,
        key: Option<[u8; KEY_LEN]>,
        done: crossbeam_channel::Sender<KeyReport>,
        reply: Reply<Result<(), HostError>>,
    },
    Coordinate {
        of: Option<String>,
        reply: Reply<Result<Option<Coordinates>, HostError>>,
    },
    ForceLeave {
        target: String,
        reply: Reply<Result<(), HostError>>,
    },
}

/// What a Serf member starts from.
pub(crate) struct SerfStart {
    pub(crate) opts: SerfOptions,
    pub(crate) snapshot: Option<ringleader_serf::snapshot::SnapshotState>,
}

/// A hosted member's Serf layer and what the shard keeps for it.
pub(super) struct SerfState {
    pub(super) serf: Serf,
    opts: SerfOptions,
    next_tick: Time,
    next_snapshot: Time,
    queries: HashMap<u32, crossbeam_channel::Sender<QueryReply>>,
    key_ops: HashMap<u32, (KeyOp, usize, crossbeam_channel::Sender<KeyReport>)>,
    /// Peers' coordinates, from their acks (removed when they are reaped).
    coords: HashMap<String, Coordinates>,
    writer: Option<FileWriter>,
    /// The keys the shard's transport was last given (primary first).
    synced_keys: Vec<[u8; KEY_LEN]>,
}

fn keyring_of(keys: &[[u8; KEY_LEN]]) -> Option<ringleader_wire::Keyring> {
    super::keyring_of(keys)
}

impl SerfState {
    /// Starts Serf on `member` (already joining its seeds, `joining` if it has any).
    pub(super) fn start(
        now: Time,
        member: &mut Member<ChaCha8Rng>,
        seed: u64,
        keys: &[[u8; KEY_LEN]],
        start: SerfStart,
        joining: bool,
    ) -> Result<SerfState, HostError> {
        let SerfStart { opts, mut snapshot } = start;
        if opts.keyring_path.is_some()
            && let Some(snap) = snapshot.as_mut()
        {
            // The keyring file is the authority on keys (it is rewritten at every change,
            // the snapshot only periodically): the snapshot's copy could bring back a key
            // that was removed since.
            snap.keys.clear();
        }
        let (name, addr) = {
            let d = member.directory().borrow();
            (d.name(member.id()).to_owned(), d.info(member.info()).addr)
        };
        let name = name.as_str();
        let mut serf = Serf::new(opts.config.clone(), name, addr, seed, keyring_of(keys));
        if let Some(snap) = &snapshot {
            serf.restore(snap);
        }
        serf.set_tags(now, member, opts.tags.clone())
            .map_err(|e| HostError::Serf {
                name: name.to_owned(),
                what: e.to_string(),
            })?;
        serf.start(member, joining);
        member.set_coordinate(Some(serf.coordinate().clone()));
        let writer = if opts.snapshot_path.is_some() || opts.keyring_path.is_some() {
            Some(FileWriter::start(name)?)
        } else {
            None
        };
        Ok(SerfState {
            serf,
            next_tick: now + Duration::from_millis(opts.tick_interval_ms),
            next_snapshot: now + Duration::from_millis(opts.snapshot_interval_ms),
            opts,
            queries: HashMap::new(),
            key_ops: HashMap::new(),
            coords: HashMap::new(),
            writer,
            synced_keys: keys.to_vec(),
        })
    }

    /// The next time the shard must drive this layer.
    pub(super) fn next_due(&self) -> Time {
        if self.opts.snapshot_path.is_some() {
            self.next_tick.min(self.next_snapshot)
        } else {
            self.next_tick
        }
    }

    /// Hands one member event to Serf (before the application sees it).
    pub(super) fn on_event(
        &mut self,
        now: Time,
        member: &mut Member<ChaCha8Rng>,
        dir: &SharedDirectory,
        e: &swim::Event,
    ) {
        match e {
            swim::Event::Rtt {
                node,
                coordinate: Some(c),
                ..
            } if ringleader_serf::vivaldi::is_valid(c) => {
                let name = dir.borrow().name(*node).to_owned();
                self.coords.insert(name, Coordinates::from(&**c));
            }
            swim::Event::Reaped { node } => {
                let name = dir.borrow().name(*node).to_owned();
                self.coords.remove(&name);
            }
            _ => {}
        }
        self.serf.handle_event(now, member, e);
    }

    fn snapshot_job(
        &self,
        member: &Member<ChaCha8Rng>,
        then: Option<Reply<Result<(), HostError>>>,
    ) -> Option<FileJob> {
        let path = self.opts.snapshot_path.clone()?;
        let state = self.serf.snapshot_state(member);
        Some(FileJob {
            path,
            secret: !state.keys.is_empty(),
            bytes: ringleader_serf::snapshot::encode(&state),
            then,
        })
    }

    /// At leave: the last snapshot is written, then `reply` is answered (at once when
    /// there is no snapshot).
    pub(super) fn finish(&self, member: &Member<ChaCha8Rng>, reply: Reply<Result<(), HostError>>) {
        match (self.writer.as_ref(), self.snapshot_job(member, None)) {
            (Some(w), Some(mut job)) => {
                job.then = Some(reply);
                if let Err(job) = w.write(job)
                    && let Some(reply) = job.then
                {
                    let _ = reply.send(Err(HostError::Snapshot {
                        path: job.path,
                        what: "the snapshot writer is behind; the last snapshot was not written"
                            .into(),
                    }));
                }
            }
            _ => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// A member's status as Serf sees it: a failed member with a newer leave intent (its
    /// own, or a force-leave) has left.
    pub(super) fn status(&self, name: &str, state: MemberState) -> MemberStatus {
        match state {
            MemberState::Alive => MemberStatus::Alive,
            MemberState::Suspect => MemberStatus::Suspect,
            MemberState::Left => MemberStatus::Left,
            MemberState::Dead => match self.serf.intent(name) {
                Some((ringleader_serf::IntentStatus::Leaving, _)) => MemberStatus::Left,
                _ => MemberStatus::Failed,
            },
        }
    }

    /// Adds this layer's counters to `c`.
    pub(super) fn count(&self, c: &mut crate::host::SerfCounters) {
        let s = self.serf.stats();
        c.members += 1;
        c.events_delivered += s.events_delivered;
        c.events_duplicate += s.events_duplicate;
        c.events_too_old += s.events_too_old;
        c.queries_delivered += s.queries_delivered;
        c.queries_duplicate += s.queries_duplicate;
        c.responses_sent += s.responses_sent;
        c.relays += s.relays;
        c.refused += s.refused + s.stale_intents;
        c.events_dropped += s.events_dropped;
    }

    /// A member's coordinate: this member's own, or a peer's from its last ack.
    pub(super) fn coordinate(&self, of: &str) -> Option<Coordinates> {
        if of == self.serf.name() {
            return Some(Coordinates::from(self.serf.coordinate()));
        }
        self.coords.get(of).copied()
    }
}

/// What the member's Serf layer needs from the shard while it is driven.
pub(super) struct Drive<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) me: &'a CommandSender<super::Command>,
    pub(super) mask: EventMask,
    pub(super) census: &'a mut crate::host::ShardCensus,
    pub(super) keys_changed: &'a mut Option<Vec<[u8; KEY_LEN]>>,
}

impl SerfState {
    /// Ticks Serf when due, hands its events out, sends queued answers, writes the
    /// snapshot when due, and notices a keyring change.
    pub(super) fn drive(
        &mut self,
        now: Time,
        member: &mut Member<ChaCha8Rng>,
        local: &Arc<str>,
        mut d: Drive<'_>,
    ) {
        if now >= self.next_tick {
            self.serf.tick(now, member);
            self.next_tick = now + Duration::from_millis(self.opts.tick_interval_ms);
        }
        while let Some(ev) = self.serf.poll_event() {
            self.deliver(now, local, ev, &mut d);
        }
        self.serf.flush(now, member);
        if self.opts.snapshot_path.is_some() && now >= self.next_snapshot {
            self.next_snapshot = now + Duration::from_millis(self.opts.snapshot_interval_ms);
            if let (Some(w), Some(job)) = (self.writer.as_ref(), self.snapshot_job(member, None))
                && w.write(job).is_err()
            {
                d.census.serf.snapshots_skipped += 1;
            }
        }
        let keys = self.serf.keyring().map(|k| k.list()).unwrap_or_default();
        if keys != self.synced_keys {
            self.synced_keys = keys.clone();
            if let (Some(w), Some(path)) = (self.writer.as_ref(), self.opts.keyring_path.clone()) {
                let job = FileJob {
                    path,
                    bytes: keyring_file_bytes(&keys),
                    secret: true,
                    then: None,
                };
                if w.write(job).is_err() {
                    tracing::warn!("the keyring file writer is behind: a key change was not saved");
                }
            }
            *d.keys_changed = Some(keys);
        }
    }

    fn deliver(&mut self, now: Time, local: &Arc<str>, ev: SerfEvent, d: &mut Drive<'_>) {
        let at = d.ctx.clock().instant(now);
        let event = match ev {
            SerfEvent::User {
                ltime,
                name,
                payload,
            } => {
                if !d.mask.contains(EventMask::USER) {
                    return;
                }
                Event::User {
                    ltime,
                    name,
                    payload,
                }
            }
            SerfEvent::Query(handle) => {
                if !d.mask.contains(EventMask::QUERY) {
                    return;
                }
                Event::Query(IncomingQuery {
                    id: handle.id,
                    ltime: handle.ltime,
                    name: handle.name.clone(),
                    payload: handle.payload.clone(),
                    source: handle.source.clone(),
                    deadline: d.ctx.clock().instant(handle.deadline),
                    local: local.to_string(),
                    handle,
                    shard: d.me.clone(),
                })
            }
            SerfEvent::Response {
                id,
                from,
                payload,
                ack,
            } => {
                if let Some(tx) = self.queries.get(&id) {
                    let r = if ack {
                        QueryReply::Ack { from }
                    } else {
                        QueryReply::Response { from, payload }
                    };
                    if tx.try_send(r).is_err() {
                        d.census.serf.query_replies_dropped += 1;
                    }
                }
                return;
            }
            SerfEvent::QueryDone {
                id,
                responses,
                acks,
            } => {
                if let Some(tx) = self.queries.remove(&id) {
                    let _ = tx.try_send(QueryReply::Done { responses, acks });
                }
                return;
            }
            SerfEvent::KeyResult(r) => {
                if let Some((op, members, done)) = self.key_ops.remove(&r.id) {
                    let _ = done.send(KeyReport::new(op, members, r));
                }
                return;
            }
        };
        if !d.ctx.emit(HostEvent {
            at,
            local: Arc::clone(local),
            event,
        }) {
            d.census.events_dropped += 1;
        }
    }
}

fn serf_err(name: &str, e: ringleader_serf::SerfError) -> HostError {
    HostError::Serf {
        name: name.to_owned(),
        what: e.to_string(),
    }
}

/// Runs one Serf command on the member `name`.
pub(super) fn serf_command(
    shard: &std::rc::Rc<std::cell::RefCell<Shard>>,
    name: String,
    cmd: SerfCommand,
) {
    let mut guard = shard.borrow_mut();
    let core: &mut Core = &mut guard.core;
    let now = core.ctx.now();
    let slot = core.slot_of(&name);
    let h: Option<&mut Hosted> = slot.and_then(|s| core.members.get_mut(s as usize)?.as_mut());
    let Some(h) = h else {
        fail(cmd, HostError::NoSuchMember(name));
        return;
    };
    let Some(s) = h.serf.as_mut() else {
        fail(cmd, HostError::NoSerf(name));
        return;
    };
    let member = &mut h.member;
    match cmd {
        SerfCommand::UserEvent {
            event,
            payload,
            coalesce,
            reply,
        } => {
            let r = s
                .serf
                .user_event(member, &event, &payload, coalesce)
                .map_err(|e| serf_err(&name, e));
            let _ = reply.send(r);
        }
        SerfCommand::Query {
            query,
            payload,
            params,
            replies,
            reply,
        } => {
            let opts = params.options();
            match s.serf.query_with(now, member, &query, &payload, opts) {
                Ok(id) => {
                    s.queries.insert(id, replies);
                    let timeout = params.timeout.unwrap_or_else(|| default_timeout(s, member));
                    let _ = reply.send(Ok((id, timeout)));
                }
                Err(e) => {
                    let _ = reply.send(Err(serf_err(&name, e)));
                }
            }
        }
        SerfCommand::Respond {
            query,
            payload,
            reply,
        } => {
            let r = s
                .serf
                .respond(now, member, &query, &payload)
                .map_err(|e| serf_err(&name, e));
            let _ = reply.send(r);
        }
        SerfCommand::SetTags { tags, reply } => {
            let r = s
                .serf
                .set_tags(now, member, tags)
                .map_err(|e| serf_err(&name, e));
            let _ = reply.send(r);
        }
        SerfCommand::Key {
            op,
            key,
            done,
            reply,
        } => {
            let members = member.count(MemberState::Alive);
            let r = match (op, key) {
                (KeyOp::Install, Some(k)) => s.serf.install_key(now, member, k),
                (KeyOp::Use, Some(k)) => s.serf.use_key(now, member, k),
                (KeyOp::Remove, Some(k)) => s.serf.remove_key(now, member, k),
                (KeyOp::List, _) => s.serf.list_keys(now, member),
                (_, None) => {
                    let _ = reply.send(Err(HostError::Serf {
                        name,
                        what: "this key operation needs a key".into(),
                    }));
                    return;
                }
            };
            match r {
                Ok(id) => {
                    s.key_ops.insert(id, (op, members, done));
                    let _ = reply.send(Ok(()));
                }
                Err(e) => {
                    let _ = reply.send(Err(serf_err(&name, e)));
                }
            }
        }
        SerfCommand::Coordinate { of, reply } => {
            let of = of.unwrap_or_else(|| name.clone());
            let _ = reply.send(Ok(s.coordinate(&of)));
            return;
        }
        SerfCommand::ForceLeave { target, reply } => {
            let r = s
                .serf
                .force_leave(member, &target)
                .map_err(|e| serf_err(&name, e));
            let _ = reply.send(r);
        }
    }
    if let Some(slot) = slot {
        core.dirty.push(slot);
    }
    core.ctx.waker().notify();
}

/// Serf's default query timeout: gossip interval × `query_timeout_mult` × ⌈log10(n+1)⌉.
fn default_timeout(s: &SerfState, member: &Member<ChaCha8Rng>) -> Duration {
    let n = member.known().max(1) as f64;
    let scale = (n + 1.0).log10().ceil().max(1.0) as u32;
    Duration::from_millis(member.config().gossip_interval_ms)
        * s.opts.config.query_timeout_mult
        * scale
}

fn fail(cmd: SerfCommand, e: HostError) {
    match cmd {
        SerfCommand::UserEvent { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        SerfCommand::Query { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        SerfCommand::Respond { reply, .. }
        | SerfCommand::SetTags { reply, .. }
        | SerfCommand::Key { reply, .. }
        | SerfCommand::ForceLeave { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        SerfCommand::Coordinate { reply, .. } => {
            let _ = reply.send(Err(e));
        }
    }
}

//! Stream exchanges: push-pull anti-entropy (also the join), the TCP-fallback ping and the
//! reconnect probe, and the merge of a peer's state.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use rand::Rng;
use ringleader_time::Time;
use ringleader_wire::msg::swim::MemberState;

use ringleader_wire::msg::swim::{PushPullDelta, PushPullMode};

use super::{
    Event, Member, Origin, Output, PendingStream, Purpose, Status, StreamError, StreamTransmit,
    SwimError, digest, secs,
};
use crate::hash::FxHashMap;
use crate::item::{InfoId, NodeState, PushPullState, StreamRequest, StreamResponse};

impl<R: Rng> Member<R> {
    fn local_state(&self, join: bool) -> Rc<PushPullState> {
        let mut states = Vec::with_capacity(self.known().min(self.cfg.push_pull_members_max));
        for e in self
            .table
            .iter()
            .filter(|e| e.present())
            .take(self.cfg.push_pull_members_max)
        {
            states.push(NodeState {
                info: e.info,
                incarnation: e.incarnation,
                state: e.state(),
            });
        }
        Rc::new(PushPullState {
            join,
            source: self.my_info,
            states,
            user_state: self.user_state.clone(),
            delta: PushPullDelta::default(),
        })
    }

    /// This member's own entry, as a push-pull carries it.
    fn own_state(&self) -> NodeState {
        let e = self.table[self.me as usize];
        NodeState {
            info: e.info,
            incarnation: e.incarnation,
            state: e.state(),
        }
    }

    fn state_bytes(&self, s: &PushPullState) -> usize {
        // Approximate (accounting only): an alive item per member, the user state and the
        // digest exchange's words.
        let d = self.dir.borrow();
        let per = s
            .states
            .first()
            .map_or(0, |n| d.info(n.info).meta.len() + 64);
        64 + s.states.len() * per
            + s.user_state.len()
            + s.delta.digest.len() * 4
            + s.delta.differing.len() * 2
    }

    /// Starts a push-pull with `to`: the full state for a join, a digest request otherwise.
    pub(super) fn push_pull_to(
        &mut self,
        now: Time,
        to: SocketAddr,
        join: bool,
        purpose: Purpose,
    ) -> Result<(), SwimError> {
        let state = if join || !self.cfg.push_pull_digest {
            self.local_state(join)
        } else {
            Rc::new(PushPullState {
                join: false,
                source: self.my_info,
                states: vec![self.own_state()],
                user_state: self.user_state.clone(),
                delta: self.digest_request(to),
            })
        };
        let since = state.delta.mode == PushPullMode::Digest && state.delta.since != u32::MAX;
        let buckets = state.delta.digest.len() as u32;
        let bytes = self.state_bytes(&state);
        let deadline = now + Duration::from_millis(self.cfg.stream_timeout_ms);
        self.start_stream_to(
            to,
            StreamRequest::PushPull(state),
            bytes,
            purpose,
            deadline,
            (buckets, since),
        )
    }

    pub(super) fn start_stream(
        &mut self,
        to: SocketAddr,
        request: StreamRequest,
        bytes: usize,
        purpose: Purpose,
        deadline: Time,
    ) -> Result<(), SwimError> {
        self.start_stream_to(to, request, bytes, purpose, deadline, (0, false))
    }

    fn start_stream_to(
        &mut self,
        to: SocketAddr,
        request: StreamRequest,
        bytes: usize,
        purpose: Purpose,
        deadline: Time,
        (buckets, since): (u32, bool),
    ) -> Result<(), SwimError> {
        if self.streams.len() >= self.cfg.streams_max {
            self.stats.dropped += 1;
            return Err(SwimError::StreamsFull(self.cfg.streams_max));
        }
        self.next_stream_id += 1;
        let id = self.next_stream_id;
        self.streams.push(PendingStream {
            id,
            purpose,
            deadline,
            to,
            buckets,
            since,
        });
        self.stats.streams_out += 1;
        self.stats.stream_bytes_out += bytes as u64;
        self.outputs.push_back(Output::Stream(StreamTransmit {
            id,
            to,
            request,
            bytes,
        }));
        Ok(())
    }

    fn merge(&mut self, now: Time, remote: &PushPullState) {
        let source = self.dir.borrow().info(remote.source).node;
        // Accusations count only from a member this one sees alive (or suspects): one it
        // holds dead, or does not know, is on the other side of a partition that just
        // healed (or is joining), and its view of this side is that it could not reach
        // it. Taken as suspicions, those would suspect every member of this side at once,
        // and the refutations would drown in the suspicions (measured: thousands of false
        // positives after a heal). This member's own probes judge its side.
        let trusted = self.sees_up(source);
        for s in &remote.states {
            let node = self.dir.borrow().info(s.info).node;
            match s.state {
                MemberState::Alive => {
                    self.alive_node(now, s.incarnation, s.info, Origin::PushPull { source })
                }
                MemberState::Left => self.dead_node(now, s.incarnation, node, node),
                // memberlist: a remote "dead" is only a suspicion here, so that it can be
                // refuted instead of killing a member we can still reach.
                // About this member itself, always: the refutation is how the other side
                // learns it is alive.
                MemberState::Dead | MemberState::Suspect if trusted || node == self.me => {
                    self.suspect_node(now, s.incarnation, node, source)
                }
                MemberState::Dead | MemberState::Suspect => self.stats.accusations_ignored += 1,
            }
        }
        if !remote.user_state.is_empty() {
            self.push_event(Event::UserState {
                from: remote.source,
                state: remote.user_state.clone(),
                join: remote.join,
            });
        }
    }

    /// Whether a received push-pull stays within the bounds: members, user state, and a
    /// digest exchange's shape.
    fn acceptable(&self, s: &PushPullState) -> bool {
        let d = &s.delta;
        s.states.len() <= self.cfg.push_pull_members_max
            && s.user_state.len() <= self.cfg.user_state_bytes_max
            && d.differing.len() <= digest::BUCKETS
            && match d.mode {
                PushPullMode::Digest => digest::valid_buckets(d.digest.len()),
                _ => d.digest.is_empty(),
            }
    }

    /// Answers a stream request from a peer; the driver sends the response back.
    pub fn handle_stream_request(
        &mut self,
        now: Time,
        _from: SocketAddr,
        request: StreamRequest,
    ) -> StreamResponse {
        match request {
            StreamRequest::PushPull(remote) => {
                if self.status == Status::Left {
                    return StreamResponse::Refused;
                }
                if !self.acceptable(&remote) || remote.delta.mode == PushPullMode::Delta {
                    self.stats.push_pull_refused += 1;
                    return StreamResponse::Refused;
                }
                // Merge first, so that the answer carries our refutations.
                self.merge(now, &remote);
                let state = match remote.delta.mode {
                    PushPullMode::Full => self.local_state(false),
                    PushPullMode::Digest => {
                        let (differing, states) =
                            self.delta_for(&remote.delta.digest, remote.delta.since);
                        Rc::new(PushPullState {
                            join: false,
                            source: self.my_info,
                            states,
                            user_state: self.user_state.clone(),
                            delta: PushPullDelta {
                                mode: PushPullMode::Delta,
                                differing,
                                clock: secs(now),
                                ..PushPullDelta::default()
                            },
                        })
                    }
                    // The push's answer: nothing more to say.
                    PushPullMode::Push | PushPullMode::Delta => Rc::new(PushPullState {
                        join: false,
                        source: self.my_info,
                        states: Vec::new(),
                        user_state: Vec::new(),
                        delta: PushPullDelta {
                            mode: PushPullMode::Delta,
                            clock: secs(now),
                            ..PushPullDelta::default()
                        },
                    }),
                };
                self.stats.stream_bytes_out += self.state_bytes(&state) as u64;
                StreamResponse::PushPull(state)
            }
            StreamRequest::Ping { seq, target, .. } => {
                if target == self.name_hash(self.me) {
                    StreamResponse::Ack { seq }
                } else {
                    StreamResponse::Refused
                }
            }
        }
    }

    /// Handles the answer (or failure) of the stream exchange `id`.
    pub fn handle_stream_response(
        &mut self,
        now: Time,
        id: u64,
        response: Result<StreamResponse, StreamError>,
    ) {
        let Some(i) = self.streams.iter().position(|s| s.id == id) else {
            return;
        };
        let s = self.streams.swap_remove(i);
        match (s.purpose, response) {
            (Purpose::FallbackPing { seq }, Ok(StreamResponse::Ack { seq: got })) => {
                if got == seq
                    && let Some(p) = self.probe
                    && p.seq == seq
                {
                    self.probe_succeeded(now, None, false);
                }
            }
            (Purpose::ReconnectProbe { addr }, Ok(StreamResponse::Ack { .. })) => {
                if self.status == Status::Alive {
                    let _ = self.push_pull_to(now, addr, false, Purpose::Reconnect);
                }
            }
            (purpose, Ok(StreamResponse::PushPull(remote))) => {
                if !self.acceptable(&remote) || remote.delta.mode == PushPullMode::Digest {
                    self.stats.push_pull_refused += 1;
                    self.stream_failed(now, purpose);
                    return;
                }
                self.merge(now, &remote);
                match purpose {
                    Purpose::Join { seed } => {
                        self.push_event(Event::Joined { seed, ok: true });
                        self.catch_up_after_join(now);
                        self.join_rest(now, true);
                    }
                    Purpose::PushPull | Purpose::Reconnect
                        if remote.delta.mode == PushPullMode::Delta =>
                    {
                        self.remember_watermark(s.to, remote.delta.clock);
                        if remote.delta.differing.is_empty() {
                            // This member's table equals the peer's: the join rumors it
                            // still relays are news to nobody who has caught up (every
                            // joiner catches up with a seed itself), and would ride on
                            // every probe for minutes.
                            self.stats.join_rumors_retired += self.broadcasts.clear_class(2) as u64;
                        }
                        if !s.since {
                            self.push_back(now, s.to, s.buckets as usize, &remote);
                        }
                    }
                    _ => {}
                }
            }
            (purpose, _) => self.stream_failed(now, purpose),
        }
    }

    /// The seeds of a join after the first answer: all of them by digest exchanges if it
    /// was answered (`ok`), else the next one by a full exchange.
    fn join_rest(&mut self, now: Time, ok: bool) {
        if self.status != Status::Alive {
            self.join_queue.clear();
            return;
        }
        if ok {
            for seed in std::mem::take(&mut self.join_queue) {
                if self
                    .push_pull_to(now, seed, false, Purpose::Join { seed })
                    .is_err()
                {
                    self.push_event(Event::Joined { seed, ok: false });
                }
            }
        } else {
            while !self.join_queue.is_empty() {
                let seed = self.join_queue.remove(0);
                if self
                    .push_pull_to(now, seed, true, Purpose::Join { seed })
                    .is_ok()
                {
                    break;
                }
                self.push_event(Event::Joined { seed, ok: false });
            }
        }
    }

    /// The third step of a digest exchange: sends `to` this member's entries in the
    /// buckets its delta named that the delta did not carry as they are here.
    fn push_back(&mut self, now: Time, to: SocketAddr, b: usize, delta: &PushPullState) {
        let differing = &delta.delta.differing;
        if differing.is_empty() || self.status != Status::Alive || !digest::valid_buckets(b) {
            return;
        }
        let mut differs = vec![false; b];
        for &i in differing {
            if let Some(d) = differs.get_mut(usize::from(i)) {
                *d = true;
            }
        }
        let theirs: FxHashMap<InfoId, (u64, MemberState)> = delta
            .states
            .iter()
            .map(|n| (n.info, (n.incarnation, n.state)))
            .collect();
        let states = self.entries_in(&differs, |e| {
            theirs.get(&e.info) != Some(&(e.incarnation, e.state()))
        });
        if states.is_empty() {
            return;
        }
        let state = Rc::new(PushPullState {
            join: false,
            source: self.my_info,
            states,
            user_state: Vec::new(),
            delta: PushPullDelta {
                mode: PushPullMode::Push,
                ..PushPullDelta::default()
            },
        });
        let bytes = self.state_bytes(&state);
        let deadline = now + Duration::from_millis(self.cfg.stream_timeout_ms);
        let _ = self.start_stream(
            to,
            StreamRequest::PushPull(state),
            bytes,
            Purpose::Push,
            deadline,
        );
    }

    pub(super) fn stream_failed(&mut self, now: Time, purpose: Purpose) {
        if let Purpose::Join { seed } = purpose {
            self.push_event(Event::Joined { seed, ok: false });
            self.join_rest(now, false);
        }
    }
}

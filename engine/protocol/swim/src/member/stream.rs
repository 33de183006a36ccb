//! Stream exchanges: push-pull anti-entropy (also the join), the TCP-fallback ping and the
//! reconnect probe, and the merge of a peer's state.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use rand::Rng;
use ringleader_time::Time;
use ringleader_wire::msg::swim::MemberState;

use super::{
    Event, Member, Origin, Output, PendingStream, Purpose, Status, StreamError, StreamTransmit,
    SwimError,
};
use crate::item::{NodeState, PushPullState, StreamRequest, StreamResponse};

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
        })
    }

    fn state_bytes(&self, s: &PushPullState) -> usize {
        // Approximate (accounting only): an alive item per member plus the user state.
        let d = self.dir.borrow();
        let per = s
            .states
            .first()
            .map_or(0, |n| d.info(n.info).meta.len() + 64);
        64 + s.states.len() * per + s.user_state.len()
    }

    pub(super) fn push_pull_to(
        &mut self,
        now: Time,
        to: SocketAddr,
        join: bool,
        purpose: Purpose,
    ) -> Result<(), SwimError> {
        let state = self.local_state(join);
        let bytes = self.state_bytes(&state);
        let deadline = now + Duration::from_millis(self.cfg.stream_timeout_ms);
        self.start_stream(to, StreamRequest::PushPull(state), bytes, purpose, deadline)
    }

    pub(super) fn start_stream(
        &mut self,
        to: SocketAddr,
        request: StreamRequest,
        bytes: usize,
        purpose: Purpose,
        deadline: Time,
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
        for s in &remote.states {
            let node = self.dir.borrow().info(s.info).node;
            match s.state {
                MemberState::Alive => {
                    self.alive_node(now, s.incarnation, s.info, Origin::PushPull { source })
                }
                MemberState::Left => self.dead_node(now, s.incarnation, node, node),
                // memberlist: a remote "dead" is only a suspicion here, so that it can be
                // refuted instead of killing a member we can still reach.
                MemberState::Dead | MemberState::Suspect => {
                    self.suspect_node(now, s.incarnation, node, source)
                }
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
                if remote.states.len() > self.cfg.push_pull_members_max
                    || remote.user_state.len() > self.cfg.user_state_bytes_max
                {
                    self.stats.push_pull_refused += 1;
                    return StreamResponse::Refused;
                }
                // Merge first, so that the answer carries our refutations.
                self.merge(now, &remote);
                let state = self.local_state(false);
                self.stats.stream_bytes_out += self.state_bytes(&state) as u64;
                StreamResponse::PushPull(state)
            }
            StreamRequest::Ping { seq, target, .. } => {
                if target == self.me {
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
                if remote.states.len() > self.cfg.push_pull_members_max
                    || remote.user_state.len() > self.cfg.user_state_bytes_max
                {
                    self.stats.push_pull_refused += 1;
                    self.stream_failed(purpose);
                    return;
                }
                self.merge(now, &remote);
                if let Purpose::Join { seed } = purpose {
                    self.push_event(Event::Joined { seed, ok: true });
                }
            }
            (purpose, _) => self.stream_failed(purpose),
        }
    }

    pub(super) fn stream_failed(&mut self, purpose: Purpose) {
        if let Purpose::Join { seed } = purpose {
            self.push_event(Event::Joined { seed, ok: false });
        }
    }
}

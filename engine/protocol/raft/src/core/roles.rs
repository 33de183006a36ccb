//! Roles: following a leader, campaigning (PreVote, then a real vote whose requests leave
//! only once the vote for itself is durable), counting votes, voting, becoming leader.

use std::time::Duration;

use rand::RngCore;
use ringleader_time::Time;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{EntryKind, VoteRequest, VoteResponse};

use super::Raft;
use crate::membership::VoteResult;
use crate::progress::Progress;
use crate::{ReadState, Role, TERM_MAX, header_of};

impl<R: RngCore> Raft<R> {
    pub(super) fn follow(&mut self, leader: u64) {
        if self.role != Role::Follower {
            self.become_follower(self.term, leader);
        }
        self.leader = leader;
        self.leader_contact_at = self.now;
        self.reset_election_deadline();
    }

    pub(super) fn become_follower(&mut self, term: u64, leader: u64) {
        self.commit_notice_at = None;
        if self.role == Role::Leader {
            for r in std::mem::take(&mut self.pending_reads) {
                if r.from == self.id {
                    self.read_states.push(ReadState {
                        ctx: r.ctx,
                        index: 0,
                    });
                }
            }
        }
        if term > self.term {
            self.term = term;
            self.vote = 0;
            // A catching-up node's target was the old leader's word.
            self.catch_up_target = 0;
            // What waits for the write and promises something in an older term goes: an
            // acknowledgement the new leader's entries may already have overwritten, a vote
            // whose hard state will never be written (the new term replaces it).
            self.msgs_persisted
                .retain(|m| header_of(m).is_some_and(|h| h.term >= term));
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
        self.votes.clear();
        self.transferee = None;
        self.dirty.clear();
        self.read_round_needed = false;
        self.reset_election_deadline();
    }

    pub(super) fn campaign(&mut self, pre: bool, transfer: bool) {
        if self.term >= TERM_MAX {
            // No term past the bound exists (see TERM_MAX): wait for a leader of this one.
            self.reset_election_deadline();
            return;
        }
        self.votes.clear();
        self.votes.insert(self.id, true);
        self.leader = 0;
        self.reset_election_deadline();
        let term = if pre {
            self.role = Role::PreCandidate;
            self.term + 1
        } else {
            self.term += 1;
            self.vote = self.id;
            self.role = Role::Candidate;
            self.term
        };
        if self.evaluate_votes() {
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for id in self.members.voters() {
            if id == self.id {
                continue;
            }
            let m = Message::VoteRequest(VoteRequest {
                header: self.hdr(id, term),
                last_log_index,
                last_log_term,
                pre_vote: pre,
                leadership_transfer: transfer,
            });
            // A real vote request leaves only once the vote for ourselves is durable.
            if pre {
                self.msgs.push(m)
            } else {
                self.msgs_persisted.push(m)
            }
        }
    }

    /// Acts on the election result so far; returns whether the role changed.
    fn evaluate_votes(&mut self) -> bool {
        match self.members.vote_result(&|id| self.votes.get(&id).copied()) {
            VoteResult::Won => {
                if self.role == Role::PreCandidate {
                    self.campaign(false, false);
                } else {
                    self.become_leader();
                }
                true
            }
            VoteResult::Lost => {
                self.become_follower(self.term, 0);
                true
            }
            VoteResult::Pending => false,
        }
    }

    fn become_leader(&mut self) {
        debug_assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.leader = self.id;
        self.votes.clear();
        let next = self.log.last_index() + 1;
        self.progress.clear();
        for id in self.members.members() {
            if id != self.id {
                let mut p = Progress::new(next);
                p.recent_active = true;
                self.progress.insert(id, p);
            }
        }
        self.round = 0;
        self.round_sent.clear();
        self.lease_round = 0;
        self.lease_until = Time::ZERO;
        self.lease_disabled = false;
        self.pending_reads.clear();
        self.transferee = None;
        self.heartbeat_deadline = self.now + Duration::from_millis(self.cfg.heartbeat_interval_ms);
        self.check_quorum_deadline = self.now + self.et();
        let noop = self.append_entry(EntryKind::Noop, Vec::new());
        self.pending_conf_index = noop;
    }
    pub(super) fn handle_vote_request(&mut self, v: VoteRequest) {
        let from = v.header.from;
        let can_vote = !self.catching_up
            && (self.vote == from
                || (self.vote == 0 && self.leader == 0)
                || (v.pre_vote && v.header.term > self.term));
        let grant = can_vote && self.log.is_up_to_date(v.last_log_index, v.last_log_term);
        if grant && !v.pre_vote {
            self.vote = from;
            self.reset_election_deadline();
        }
        let term = if v.pre_vote && grant {
            v.header.term
        } else {
            self.term
        };
        let m = Message::VoteResponse(VoteResponse {
            header: self.hdr(from, term),
            granted: grant,
            pre_vote: v.pre_vote,
        });
        if grant && !v.pre_vote {
            self.msgs_persisted.push(m)
        } else {
            self.msgs.push(m)
        }
    }

    pub(super) fn handle_vote_response(&mut self, v: VoteResponse) {
        let counts = match self.role {
            Role::PreCandidate => {
                v.pre_vote && (v.header.term == self.term.saturating_add(1) || !v.granted)
            }
            Role::Candidate => !v.pre_vote && v.header.term == self.term,
            _ => false,
        };
        if counts && self.members.is_voter(v.header.from) {
            self.votes.insert(v.header.from, v.granted);
            self.evaluate_votes();
        }
    }
}

//! Validation: what no correct peer sends is refused before anything changes (not even the
//! clock). Every check is a pure function of the message and this node's state.

use rand::RngCore;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{
    AppendEntries, ConfState, EntryKind, InstallSnapshot, RaftHeader,
};

use super::Raft;
use crate::membership::{MEMBERS_MAX, decode_conf};
use crate::{INDEX_MAX, RaftError, Role, TERM_MAX, header_of};

impl<R: RngCore> Raft<R> {
    /// Refuses what no correct peer sends, before anything changes: every check here is a
    /// pure function of the message and this node's state. Returns the header. What may be
    /// legitimate is let through: a leader or candidate this node has not heard of (a
    /// learner being added knows no one yet); responses from non-members are ignored later.
    pub(super) fn check(&self, msg: &Message) -> Result<RaftHeader, RaftError> {
        use RaftError::Malformed;
        let h = header_of(msg).ok_or(RaftError::Misrouted)?;
        if h.group != self.cfg.group || h.to != self.id {
            return Err(RaftError::Misrouted);
        }
        if h.from == 0 {
            return Err(Malformed("sender is node 0"));
        }
        if h.from == self.id {
            return Err(Malformed("sender is this node"));
        }
        if h.term > TERM_MAX {
            return Err(Malformed("term beyond TERM_MAX"));
        }
        let current = h.term == self.term;
        let leading = current && self.role == Role::Leader;
        // In one term there is one leader: once this node leads or follows someone in `h`'s
        // term, leader-only messages from anyone else are forged.
        let other_leader =
            current && (self.role == Role::Leader || (self.leader != 0 && self.leader != h.from));
        match msg {
            Message::AppendEntries(a) => {
                if other_leader {
                    return Err(Malformed("a second leader in one term"));
                }
                check_append(a)?;
            }
            Message::Heartbeat(_) if other_leader => {
                return Err(Malformed("a second leader in one term"));
            }
            Message::InstallSnapshot(s) => {
                if other_leader {
                    return Err(Malformed("a second leader in one term"));
                }
                check_snapshot(s)?;
            }
            Message::VoteRequest(v) => {
                if v.last_log_index > INDEX_MAX {
                    return Err(Malformed("last_log_index beyond INDEX_MAX"));
                }
                if v.last_log_term > h.term {
                    return Err(Malformed("last_log_term above the candidate's term"));
                }
            }
            Message::AppendResponse(r) => {
                if r.match_index > INDEX_MAX {
                    return Err(Malformed("match_index beyond INDEX_MAX"));
                }
                // The hint is the follower's entry at or before the rejected index, of a term
                // no later than the follower's own.
                if !r.success
                    && (r.reject_hint_index > r.match_index || r.reject_hint_term > h.term)
                {
                    return Err(Malformed("reject hint beyond the rejected index or term"));
                }
                // A leader's log only grows in its term: nothing past its end was ever sent.
                if leading && r.match_index > self.log.last_index() {
                    return Err(Malformed("answers an index this leader never sent"));
                }
            }
            Message::HeartbeatResponse(r) if leading && r.ctx > self.round => {
                return Err(Malformed("acknowledges a heartbeat round never sent"));
            }
            Message::TimeoutNow(_) => {
                // The leader sends it once this node acknowledged all its log in its term,
                // and that acknowledgement left only once the term was durable here.
                if h.term > self.term {
                    return Err(Malformed("TimeoutNow from a term this node never had"));
                }
                if other_leader {
                    return Err(Malformed("TimeoutNow from a node that is not the leader"));
                }
            }
            Message::ReadIndexResponse(r) => {
                if r.index > INDEX_MAX {
                    return Err(Malformed("read index beyond INDEX_MAX"));
                }
                if other_leader {
                    return Err(Malformed("read index from a node that is not the leader"));
                }
            }
            _ => {}
        }
        Ok(h)
    }
}

/// The shape of an AppendEntries, whoever this node is: entries numbered one by one after
/// `prev_log_index`, terms never decreasing from `prev_log_term` and never above the
/// leader's, indexes within [`INDEX_MAX`], configuration entries that decode.
fn check_append(a: &AppendEntries) -> Result<(), RaftError> {
    use RaftError::Malformed;
    let term = a.header.term;
    if a.prev_log_index > INDEX_MAX || a.leader_commit > INDEX_MAX {
        return Err(Malformed("index beyond INDEX_MAX"));
    }
    if a.prev_log_term > term {
        return Err(Malformed("prev_log_term above the leader's term"));
    }
    if a.prev_log_index == 0 && a.prev_log_term != 0 {
        return Err(Malformed("prev_log_term of index 0 is not 0"));
    }
    let (mut index, mut last_term) = (a.prev_log_index, a.prev_log_term);
    for e in &a.entries {
        if index >= INDEX_MAX || e.index != index + 1 {
            return Err(Malformed("entries do not follow prev_log_index"));
        }
        if e.term < last_term {
            return Err(Malformed("entry terms decrease"));
        }
        if e.term > term {
            return Err(Malformed("entry term above the leader's term"));
        }
        if e.kind == EntryKind::Config {
            let conf = decode_conf(&e.payload)
                .map_err(|_| Malformed("configuration entry does not decode"))?;
            check_conf(&conf)?;
        }
        (index, last_term) = (e.index, e.term);
    }
    Ok(())
}

/// The shape of an InstallSnapshot chunk: an index within [`INDEX_MAX`] of a term no later
/// than the leader's, a chunk that lies inside `total_bytes` (`done` on the last one only),
/// and a configuration a group can have.
fn check_snapshot(s: &InstallSnapshot) -> Result<(), RaftError> {
    use RaftError::Malformed;
    if s.last_included_index == 0 || s.last_included_index > INDEX_MAX {
        return Err(Malformed("snapshot index 0 or beyond INDEX_MAX"));
    }
    if s.last_included_term > s.header.term {
        return Err(Malformed("snapshot term above the leader's term"));
    }
    let end = u64::try_from(s.data.len())
        .ok()
        .and_then(|len| s.offset.checked_add(len))
        .filter(|&end| end <= s.total_bytes)
        .ok_or(Malformed("snapshot chunk beyond total_bytes"))?;
    if s.done != (end == s.total_bytes) {
        return Err(Malformed(
            "snapshot done flag disagrees with the chunk's end",
        ));
    }
    check_conf(&s.conf)
}

/// A configuration a group can have: at least one voter, no node 0, lists within
/// [`MEMBERS_MAX`].
fn check_conf(c: &ConfState) -> Result<(), RaftError> {
    use RaftError::Malformed;
    let lists = [&c.voters, &c.learners, &c.voters_outgoing];
    if lists.iter().any(|l| l.len() > MEMBERS_MAX) {
        return Err(Malformed(
            "configuration lists more than MEMBERS_MAX members",
        ));
    }
    if c.voters.is_empty() {
        return Err(Malformed("configuration without voters"));
    }
    if lists.iter().any(|l| l.contains(&0)) {
        return Err(Malformed("configuration names node 0"));
    }
    Ok(())
}

//! Group membership and quorums: a majority of the voters, or during joint consensus a
//! majority of each of the incoming and outgoing voter sets. Learners never count.

use ringleader_wire::msg::raft::ConfState;

/// Errors decoding a configuration entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfDecodeError {
    /// The payload ended early.
    #[error("config payload truncated")]
    Truncated,
    /// A list is longer than the membership bound.
    #[error("config list of {0} members exceeds the bound")]
    TooLarge(u64),
}

/// Most members a configuration may list (a bound on decoding untrusted bytes).
pub const MEMBERS_MAX: usize = 1024;

/// Encodes a configuration as a `Config` entry payload: three length-prefixed lists of
/// little-endian u64 (voters, learners, outgoing voters).
pub fn encode_conf(conf: &ConfState) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        24 + 8 * (conf.voters.len() + conf.learners.len() + conf.voters_outgoing.len()),
    );
    for list in [&conf.voters, &conf.learners, &conf.voters_outgoing] {
        out.extend_from_slice(&(list.len() as u64).to_le_bytes());
        for id in list {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out
}

/// Decodes [`encode_conf`]'s output. Never panics on bad input.
pub fn decode_conf(mut bytes: &[u8]) -> Result<ConfState, ConfDecodeError> {
    fn u64_of(bytes: &mut &[u8]) -> Result<u64, ConfDecodeError> {
        let (head, tail) = bytes
            .split_first_chunk::<8>()
            .ok_or(ConfDecodeError::Truncated)?;
        *bytes = tail;
        Ok(u64::from_le_bytes(*head))
    }
    let mut lists: [Vec<u64>; 3] = Default::default();
    for list in &mut lists {
        let n = u64_of(&mut bytes)?;
        if n > MEMBERS_MAX as u64 {
            return Err(ConfDecodeError::TooLarge(n));
        }
        for _ in 0..n {
            list.push(u64_of(&mut bytes)?);
        }
    }
    let [voters, learners, voters_outgoing] = lists;
    Ok(ConfState {
        voters,
        learners,
        voters_outgoing,
    })
}

/// The outcome of an election so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteResult {
    /// A quorum granted.
    Won,
    /// A quorum can no longer grant.
    Lost,
    /// Neither yet.
    Pending,
}

/// A configuration with quorum arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    conf: ConfState,
}

fn majority_index(voters: &[u64], index_of: &dyn Fn(u64) -> u64) -> u64 {
    if voters.is_empty() {
        return u64::MAX; // an empty set agrees to anything (the other half of a joint config decides)
    }
    let mut v: Vec<u64> = voters.iter().map(|&id| index_of(id)).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v[voters.len() / 2]
}

fn majority_vote(voters: &[u64], vote_of: &dyn Fn(u64) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for &id in voters {
        match vote_of(id) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let q = voters.len() / 2 + 1;
    if yes >= q {
        VoteResult::Won
    } else if yes + missing >= q {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

impl Membership {
    /// Wraps a configuration (lists are sorted and de-duplicated).
    pub fn new(mut conf: ConfState) -> Membership {
        for l in [
            &mut conf.voters,
            &mut conf.learners,
            &mut conf.voters_outgoing,
        ] {
            l.sort_unstable();
            l.dedup();
        }
        Membership { conf }
    }

    /// The configuration.
    pub fn conf(&self) -> &ConfState {
        &self.conf
    }

    /// Whether `id` votes (in either half of a joint configuration).
    pub fn is_voter(&self, id: u64) -> bool {
        self.conf.voters.contains(&id) || self.conf.voters_outgoing.contains(&id)
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: u64) -> bool {
        self.conf.learners.contains(&id) && !self.is_voter(id)
    }

    /// Every member: voters, outgoing voters and learners.
    pub fn members(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .conf
            .voters
            .iter()
            .chain(&self.conf.voters_outgoing)
            .chain(&self.conf.learners)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Every voter (both halves of a joint configuration).
    pub fn voters(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .conf
            .voters
            .iter()
            .chain(&self.conf.voters_outgoing)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// The highest index a quorum has reached, given each voter's index.
    pub fn committed_index(&self, index_of: &dyn Fn(u64) -> u64) -> u64 {
        let a = majority_index(&self.conf.voters, index_of);
        let b = majority_index(&self.conf.voters_outgoing, index_of);
        let c = a.min(b);
        if c == u64::MAX { 0 } else { c }
    }

    /// The election result, given each voter's answer (`None` = no answer yet).
    pub fn vote_result(&self, vote_of: &dyn Fn(u64) -> Option<bool>) -> VoteResult {
        match (
            majority_vote(&self.conf.voters, vote_of),
            majority_vote(&self.conf.voters_outgoing, vote_of),
        ) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_quorum_needs_both_halves() {
        let m = Membership::new(ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            voters_outgoing: vec![3, 5, 6],
        });
        let idx = |id: u64| match id {
            1 | 2 => 10,
            3 => 5,
            _ => 1,
        };
        assert_eq!(m.committed_index(&idx), 1);
        let votes = |id: u64| Some(matches!(id, 1..=3));
        assert_eq!(m.vote_result(&votes), VoteResult::Lost);
        let votes = |id: u64| {
            if matches!(id, 1 | 3 | 5) {
                Some(true)
            } else {
                None
            }
        };
        assert_eq!(m.vote_result(&votes), VoteResult::Won);
        assert!(m.is_learner(4) && !m.is_voter(4));
    }

    #[test]
    fn conf_round_trips_and_rejects_garbage() {
        let c = ConfState {
            voters: vec![1, 2],
            learners: vec![9],
            voters_outgoing: vec![],
        };
        assert_eq!(decode_conf(&encode_conf(&c)), Ok(c));
        assert_eq!(decode_conf(&[1, 2, 3]), Err(ConfDecodeError::Truncated));
        assert_eq!(
            decode_conf(&u64::MAX.to_le_bytes()),
            Err(ConfDecodeError::TooLarge(u64::MAX))
        );
    }
}

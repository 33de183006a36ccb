//! Delta anti-entropy: digests of the member table by bucket, so that a push-pull between
//! two members that agree costs a few hundred bytes whatever the cluster's size, and one
//! between members that differ carries the differing buckets only.
//!
//! A member's bucket is the low bits of the stable hash of its name; an entry's
//! fingerprint hashes its (name, address, metadata), incarnation and state; a bucket's
//! digest is the XOR of its entries' fingerprints, kept up to date on every change of the
//! table (so making a digest costs a fold of [`BUCKETS`] words, never a scan). Digests at
//! fewer buckets fold the fine ones (bucket `i` of `b` is the XOR of every fine bucket
//! `j` with `j mod b == i`), so the requester chooses how fine a digest its cluster size
//! deserves.
//!
//! The exchange (see `ringleader_wire::msg::swim::PushPullMode`):
//! 1. Digest request: the requester's own entry, its digests, its user state, and
//!    `since` — what the answerer's clock said at their last exchange, if any.
//! 2. Delta answer: the answerer's entries in the buckets that differ (those changed at or
//!    after `since`, when given), which buckets those were, and its clock.
//! 3. Push (only after a delta without `since`): the requester's entries in those buckets
//!    that the answer did not carry as they are here, so the answerer learns what only
//!    the requester knew. A join is still a full exchange: the joiner learns the whole
//!    cluster in one.
//!
//! What it must never do: drop an entry from the digest without dropping it from the
//! table (or the reverse) — every write of the table goes through `set_entry` or `reap`.

use std::net::SocketAddr;

use rand::Rng;
use ringleader_wire::msg::swim::{MemberState, PushPullDelta, PushPullMode};

use super::{Entry, Member};
use crate::directory::mix64;
use crate::item::{NodeId, NodeState};

/// Buckets of the maintained digest (the finest a request may ask for).
pub(crate) const BUCKETS: usize = 1024;
/// The coarsest digest a request sends.
const BUCKETS_MIN: usize = 16;
/// Members per bucket a requester aims at when it picks the digest size.
const MEMBERS_PER_BUCKET: usize = 4;
/// Peers whose clocks (from their last delta) are remembered for `since`.
pub(super) const WATERMARKS_MAX: usize = 8;

/// An entry's fingerprint: a hash of its triple, incarnation and state.
fn fingerprint(info_hash: u64, incarnation: u64, state: MemberState) -> u32 {
    let h = mix64(info_hash ^ incarnation.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ state as u64);
    (h ^ (h >> 32)) as u32
}

/// Whether `b` is a digest size this member answers.
pub(super) fn valid_buckets(b: usize) -> bool {
    b.is_power_of_two() && b <= BUCKETS
}

impl<R: Rng> Member<R> {
    /// XORs `e`'s fingerprint into (or out of) its bucket's digest.
    pub(super) fn digest_toggle(&mut self, node: NodeId, e: Entry) {
        if !e.present() {
            return;
        }
        let (bucket, info_hash) = {
            let d = self.dir.borrow();
            (d.node_hash(node) as usize % BUCKETS, d.info_hash(e.info))
        };
        self.digest[bucket] ^= fingerprint(info_hash, e.incarnation, e.state());
    }

    /// The digest size this member asks for: about [`MEMBERS_PER_BUCKET`] members a
    /// bucket, a power of two in `BUCKETS_MIN..=BUCKETS`.
    fn digest_size(&self) -> usize {
        (self.known() / MEMBERS_PER_BUCKET)
            .next_power_of_two()
            .clamp(BUCKETS_MIN, BUCKETS)
    }

    /// The digest folded to `b` buckets (`b` a power of two, at most [`BUCKETS`]).
    pub(super) fn folded_digest(&self, b: usize) -> Vec<u32> {
        let mut out = vec![0u32; b];
        for (j, &d) in self.digest.iter().enumerate() {
            out[j & (b - 1)] ^= d;
        }
        out
    }

    /// The delta part of a digest request to `to`.
    pub(super) fn digest_request(&self, to: SocketAddr) -> PushPullDelta {
        let since = self
            .watermarks
            .iter()
            .find(|(a, _)| *a == to)
            .map_or(u32::MAX, |&(_, c)| c);
        PushPullDelta {
            mode: PushPullMode::Digest,
            digest: self.folded_digest(self.digest_size()),
            differing: Vec::new(),
            since,
            clock: 0,
        }
    }

    /// Remembers `clock` as `to`'s clock at our last exchange (for the next `since`).
    pub(super) fn remember_watermark(&mut self, to: SocketAddr, clock: u32) {
        if let Some(w) = self.watermarks.iter_mut().find(|(a, _)| *a == to) {
            w.1 = clock;
            return;
        }
        if self.watermarks.len() >= WATERMARKS_MAX {
            self.watermarks.pop_front();
        }
        self.watermarks.push_back((to, clock));
    }

    /// The answer to digest `theirs`: the buckets that differ, and this member's entries in
    /// them changed at or after `since` (every one if `since` is `u32::MAX`).
    pub(super) fn delta_for(&self, theirs: &[u32], since: u32) -> (Vec<u16>, Vec<NodeState>) {
        let b = theirs.len();
        let mine = self.folded_digest(b);
        let mut differs = vec![false; b];
        let mut differing = Vec::new();
        for (i, (m, t)) in mine.iter().zip(theirs).enumerate() {
            if m != t {
                differs[i] = true;
                differing.push(i as u16);
            }
        }
        let states = if differing.is_empty() {
            Vec::new()
        } else {
            self.entries_in(&differs, |e| since == u32::MAX || e.changed_s() >= since)
        };
        (differing, states)
    }

    /// This member's entries whose bucket (folded to `differs.len()`) is marked, and for
    /// which `keep` holds.
    pub(super) fn entries_in(
        &self,
        differs: &[bool],
        keep: impl Fn(&Entry) -> bool,
    ) -> Vec<NodeState> {
        let mask = differs.len() - 1;
        let d = self.dir.borrow();
        self.table
            .iter()
            .enumerate()
            .filter(|(n, e)| {
                e.present() && differs[d.node_hash(*n as NodeId) as usize & mask] && keep(e)
            })
            .take(self.cfg.push_pull_members_max)
            .map(|(_, e)| NodeState {
                info: e.info,
                incarnation: e.incarnation,
                state: e.state(),
            })
            .collect()
    }
}

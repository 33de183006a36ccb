//! Gossip and sending: the fan-out of a gossip round, piggybacking queued broadcasts on
//! every datagram up to its size limit, events out, and random member selection.

use std::net::SocketAddr;

use rand::Rng;
use ringleader_time::Time;
use ringleader_wire::msg::swim::MemberState;

use super::{Entry, Event, Member, Output, Transmit, secs};
use crate::config::retransmit_limit;
use crate::directory::Directory;
use crate::item::{Item, NameHash, NodeId};

impl<R: Rng> Member<R> {
    /// Members the next gossip round goes to: `gossip_nodes` when failure news,
    /// refutations, leaves or the layer above's broadcasts are queued;
    /// `join_rumor_gossip_nodes` (0 in the presets: join rumors then ride only on probes and
    /// acks, and push-pull repairs what they miss) when only join rumors are; none when
    /// nothing is.
    pub(super) fn gossip_fanout(&self) -> usize {
        if self.broadcasts.any_above(2) || !self.user_broadcasts.is_empty() {
            self.cfg.gossip_nodes
        } else if !self.broadcasts.is_empty() {
            self.cfg.join_rumor_gossip_nodes
        } else {
            0
        }
    }

    pub(super) fn gossip(&mut self, now: Time) {
        let fanout = self.gossip_fanout();
        if fanout == 0 {
            return;
        }
        let now_s = secs(now);
        let to_dead_s = (self.cfg.gossip_to_the_dead_ms / 1000) as u32;
        let targets = self.random_members(fanout, |_, e| match e.state() {
            MemberState::Alive | MemberState::Suspect => true,
            MemberState::Dead => now_s.saturating_sub(e.changed_s()) <= to_dead_s,
            MemberState::Left => false,
        });
        for t in targets {
            let addr = self.dir.borrow().info(self.table[t as usize].info).addr;
            if !self.send(addr, Vec::new(), 0) {
                break;
            }
        }
    }

    /// Fills `items` (of `size` bytes) up to the datagram limit with broadcasts and queues
    /// the datagram. Returns false (and sends nothing) if there was nothing to send.
    pub(super) fn send(&mut self, to: SocketAddr, mut items: Vec<Item>, size: usize) -> bool {
        let overhead = Directory::frame_overhead(self.cfg.encrypted);
        let free = self.cfg.datagram_bytes_max.saturating_sub(overhead + size);
        let n = self.known();
        let limit = retransmit_limit(self.cfg.retransmit_mult, n);
        let join_limit = if self.cfg.join_rumor_retransmit_mult == 0 {
            limit
        } else {
            limit.min(self.cfg.join_rumor_retransmit_mult)
        };
        let caps = [
            usize::MAX,
            usize::MAX,
            self.cfg.join_rumors_per_datagram_max.max(1),
        ];
        let mut used =
            self.broadcasts
                .fill_with_limits(free, [limit, limit, join_limit], caps, |it| {
                    items.push(it.clone())
                });
        let user_limit = retransmit_limit(self.cfg.user_retransmit_mult, n);
        used += self
            .user_broadcasts
            .fill(free - used, user_limit, |it| items.push(it.clone()));
        if items.is_empty() {
            return false;
        }
        let bytes = overhead + size + used;
        debug_assert!(bytes <= self.cfg.datagram_bytes_max);
        self.stats.datagrams_out += 1;
        self.stats.datagram_bytes_out += bytes as u64;
        self.stats.items_out += items.len() as u64;
        self.outputs
            .push_back(Output::Datagram(Transmit { to, items, bytes }));
        true
    }

    /// What probes name `node` by.
    pub(super) fn name_hash(&self, node: NodeId) -> NameHash {
        self.dir.borrow().node_hash(node) as NameHash
    }

    pub(super) fn size(&self, item: &Item) -> usize {
        self.dir.borrow_mut().item_size(item)
    }

    pub(super) fn queue_update(&mut self, item: Item, node: NodeId) {
        let urgent = matches!(item, Item::Suspect { .. });
        self.queue_update_as(item, node, urgent);
    }

    /// Queues `item` about `node` in the first priority class (failure news) if `urgent`,
    /// in the second otherwise. A refutation, and an alive that clears a suspicion, are
    /// failure news too: behind a flood of suspicions they would wait until the
    /// suspicions time out, and every suspected member would die (measured at a healed
    /// partition: thousands of false positives).
    pub(super) fn queue_update_as(&mut self, item: Item, node: NodeId, urgent: bool) {
        let size = self.size(&item);
        self.broadcasts
            .push(item, size, Some(u64::from(node)), u8::from(!urgent));
    }

    pub(super) fn push_event(&mut self, e: Event) {
        if self.events.len() >= self.cfg.events_max {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        self.events.push_back(e);
    }

    /// One random member other than this one for which `ok` holds.
    pub(super) fn random_member(&mut self, ok: impl Fn(NodeId, &Entry) -> bool) -> Option<NodeId> {
        self.random_members(1, ok).first().copied()
    }

    /// Up to `k` distinct random members other than this one for which `ok` holds:
    /// rejection sampling over the table, then a scan from a random point if that fails.
    pub(super) fn random_members(
        &mut self,
        k: usize,
        ok: impl Fn(NodeId, &Entry) -> bool,
    ) -> Vec<NodeId> {
        let mut out: Vec<NodeId> = Vec::with_capacity(k);
        let len = self.table.len();
        if len == 0 || k == 0 {
            return out;
        }
        let good = |m: &Self, n: NodeId, out: &[NodeId]| {
            let e = &m.table[n as usize];
            n != m.me && e.present() && !out.contains(&n) && ok(n, e)
        };
        for _ in 0..(8 * k) {
            let n = self.rng.random_range(0..len) as NodeId;
            if good(self, n, &out) {
                out.push(n);
                if out.len() == k {
                    return out;
                }
            }
        }
        let start = self.rng.random_range(0..len);
        for j in 0..len {
            let n = ((start + j) % len) as NodeId;
            if good(self, n, &out) {
                out.push(n);
                if out.len() == k {
                    break;
                }
            }
        }
        out
    }
}

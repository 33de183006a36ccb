//! The state transitions of the member table, with memberlist's rules (aliveNode,
//! suspectNode, deadNode) and this member's refutation of rumors about itself.

use rand::Rng;
use ringleader_time::Time;
use ringleader_wire::msg::swim::MemberState;

use super::{Entry, Event, Member, Origin, Status, secs, state_index};
use crate::config::{retransmit_limit, suspicion_timeout_min};
use crate::item::{InfoId, Item, NodeId};
use crate::suspicion::Suspicion;

impl<R: Rng> Member<R> {
    fn ensure(&mut self, node: NodeId) {
        let need = node as usize + 1;
        if self.table.len() < need {
            self.table.resize(need, Entry::EMPTY);
        }
    }

    pub(super) fn set_entry(
        &mut self,
        node: NodeId,
        incarnation: u64,
        info: InfoId,
        state: MemberState,
        now: Time,
    ) {
        self.ensure(node);
        let old = self.table[node as usize];
        if old.present() {
            self.counts[state_index(old.state())] -= 1;
        }
        self.digest_toggle(node, old);
        let packed = (state as u32) | (secs(now) << 3);
        let new = Entry {
            incarnation,
            info,
            packed,
        };
        self.table[node as usize] = new;
        self.digest_toggle(node, new);
        self.counts[state_index(state)] += 1;
        if matches!(state, MemberState::Dead | MemberState::Left)
            && (!old.present() || old.state() != state)
        {
            self.failed.push_back((node, secs(now)));
        }
    }

    pub(super) fn alive_node(&mut self, now: Time, incarnation: u64, info: InfoId, origin: Origin) {
        let node = self.dir.borrow().info(info).node;
        if node == self.me {
            // Someone says we are alive: refute anything that differs from what we are.
            if self.status == Status::Alive
                && (incarnation > self.incarnation
                    || (incarnation == self.incarnation && info != self.my_info))
            {
                self.refute(now, incarnation);
            }
            return;
        }
        self.ensure(node);
        let e = self.table[node as usize];
        if !e.present() {
            if origin == Origin::Gossip {
                self.stats.rumors_new += 1;
            } else {
                self.learned_by_push_pull += 1;
            }
            self.set_entry(node, incarnation, info, MemberState::Alive, now);
            self.push_event(Event::Up { node, info });
            // Members learned from a push-pull are not re-broadcast (the peer's side of the
            // cluster knows them already): this keeps joins of thousands of members from
            // becoming an n² gossip storm. The peer itself is news for everyone.
            let rebroadcast = match origin {
                Origin::Gossip => true,
                Origin::PushPull { source } => source == node,
            };
            if rebroadcast {
                let item = Item::Alive { incarnation, info };
                let size = self.size(&item);
                // Join rumors: lowest priority, and damped when heard back.
                self.broadcasts.push(item, size, Some(u64::from(node)), 2);
            }
            return;
        }
        if incarnation <= e.incarnation {
            if incarnation == e.incarnation && info == e.info && origin == Origin::Gossip {
                self.stats.rumors_redundant += 1;
                let limit = retransmit_limit(self.cfg.retransmit_mult, self.known());
                let weight = if self.cfg.join_rumor_damping == 0 {
                    0
                } else {
                    limit.div_ceil(self.cfg.join_rumor_damping)
                };
                if weight > 0
                    && self
                        .broadcasts
                        .redundant(u64::from(node), 2, limit, weight, |q| {
                            *q == Item::Alive { incarnation, info }
                        })
                {
                    self.stats.rumors_damped += 1;
                }
            }
            return;
        }
        let old = e.state();
        self.suspicions.remove(&node);
        self.set_entry(node, incarnation, info, MemberState::Alive, now);
        self.queue_update_as(
            Item::Alive { incarnation, info },
            node,
            old != MemberState::Alive,
        );
        match old {
            MemberState::Dead | MemberState::Left => self.push_event(Event::Up { node, info }),
            MemberState::Suspect => self.push_event(Event::AliveAgain { node }),
            MemberState::Alive => {
                if info != e.info {
                    self.push_event(Event::Updated { node, info });
                }
            }
        }
    }

    pub(super) fn suspect_node(&mut self, now: Time, incarnation: u64, node: NodeId, from: NodeId) {
        let Some(e) = self.table.get(node as usize).copied() else {
            return;
        };
        if !e.present() || incarnation < e.incarnation {
            return;
        }
        if let Some(s) = self.suspicions.get_mut(&node) {
            if s.confirm(from) {
                // A confirmation only brings the deadline closer.
                self.suspicion_next = self.suspicion_next.min(s.deadline());
                self.queue_update(
                    Item::Suspect {
                        incarnation,
                        node,
                        from,
                    },
                    node,
                );
            }
            return;
        }
        if e.state() != MemberState::Alive {
            return;
        }
        if node == self.me {
            if self.status == Status::Alive {
                self.refute_to(now, incarnation, from);
            }
            return;
        }
        if self.suspicions.len() >= self.cfg.suspicions_max {
            self.stats.dropped += 1;
            return;
        }
        self.queue_update(
            Item::Suspect {
                incarnation,
                node,
                from,
            },
            node,
        );
        self.set_entry(node, incarnation, e.info, MemberState::Suspect, now);
        {
            // The buddy system at the start of every suspicion: tell the suspect now, so
            // that a live one refutes within a round trip instead of when the rumor, or
            // this member's next probe of it, happens to reach it (after a healed
            // partition, stale accusations and probes lost in the burst otherwise raced
            // their refutations to the suspicion timeout).
            let addr = self.dir.borrow().info(e.info).addr;
            let item = Item::Suspect {
                incarnation,
                node,
                from,
            };
            let size = self.size(&item);
            self.send(addr, vec![item], size);
        }
        let n = self.known();
        let mut k = if self.cfg.lifeguard {
            self.cfg.suspicion_mult.saturating_sub(2)
        } else {
            0
        };
        if (n as u64) < u64::from(k) + 2 {
            k = 0;
        }
        let min = suspicion_timeout_min(self.cfg.suspicion_mult, n, self.cfg.probe_interval());
        let max = if self.cfg.lifeguard {
            min * self.cfg.suspicion_max_timeout_mult
        } else {
            min
        };
        let suspicion = Suspicion::new(incarnation, from, k, min, max, now);
        self.suspicion_next = self.suspicion_next.min(suspicion.deadline());
        self.suspicions.insert(node, suspicion);
        self.push_event(Event::Suspect { node, from });
    }

    pub(super) fn dead_node(&mut self, now: Time, incarnation: u64, node: NodeId, from: NodeId) {
        let Some(e) = self.table.get(node as usize).copied() else {
            return;
        };
        if !e.present() || incarnation < e.incarnation {
            return;
        }
        self.suspicions.remove(&node);
        if matches!(e.state(), MemberState::Dead | MemberState::Left) {
            return;
        }
        if node == self.me {
            if self.status == Status::Alive {
                self.refute_to(now, incarnation, from);
            }
            return;
        }
        self.queue_update(
            Item::Dead {
                incarnation,
                node,
                from,
            },
            node,
        );
        if from == node {
            self.set_entry(node, incarnation, e.info, MemberState::Left, now);
            self.push_event(Event::Left { node });
        } else {
            self.set_entry(node, incarnation, e.info, MemberState::Dead, now);
            self.push_event(Event::Down { node, from });
        }
    }

    /// Whether this member sees `node` up (alive or suspected).
    pub(super) fn sees_up(&self, node: NodeId) -> bool {
        self.table.get(node as usize).is_some_and(|e| {
            e.present() && matches!(e.state(), MemberState::Alive | MemberState::Suspect)
        })
    }

    /// Whether an accusation (suspect or dead) of `node` by `from` counts: always about
    /// this member itself (its refutation is how the accuser learns it is alive);
    /// otherwise only from a member this one sees up. One it holds dead, or does not know,
    /// is on the other side of a partition that just healed, and its accusations say only
    /// that it could not reach this side: taken, they suspected every member of a side at
    /// once after a heal and the refutations drowned (the fault suite measured thousands
    /// of false positives). This member's own probes judge its side.
    pub(super) fn accepts_accusation(&mut self, node: NodeId, from: NodeId) -> bool {
        if node == self.me || self.sees_up(from) {
            return true;
        }
        self.stats.accusations_ignored += 1;
        false
    }

    /// Refutes an accusation by `from`, and tells `from` itself at once: the broadcast
    /// reaches a given member only after a few gossip rounds, and an accuser that heard
    /// nothing by its suspicion timeout declares a live member dead (the fault suite saw
    /// one such after a heal, on a loaded host).
    fn refute_to(&mut self, now: Time, accused: u64, from: NodeId) {
        self.refute(now, accused);
        let to = self
            .table
            .get(from as usize)
            .filter(|e| from != self.me && e.present())
            .map(|e| e.info);
        if let Some(info) = to {
            let addr = self.dir.borrow().info(info).addr;
            self.send_alive_to(addr);
        }
    }

    /// After an accusation of `node` arrived in a datagram from `sender`: if it was about
    /// this member, `sender` (who relayed it, perhaps on behalf of a suspicion of its own)
    /// hears this member's current incarnation at once.
    pub(super) fn answer_accusation(&mut self, node: NodeId, sender: std::net::SocketAddr) {
        if node != self.me || self.status != Status::Alive {
            return;
        }
        self.send_alive_to(sender);
    }

    /// Sends this member's current alive to `to` in a datagram of its own.
    fn send_alive_to(&mut self, to: std::net::SocketAddr) {
        let item = Item::Alive {
            incarnation: self.incarnation,
            info: self.my_info,
        };
        let size = self.size(&item);
        self.send(to, vec![item], size);
    }

    fn refute(&mut self, now: Time, accused: u64) {
        self.incarnation = (self.incarnation + 1).max(accused.saturating_add(1));
        let inc = self.incarnation;
        self.set_entry(self.me, inc, self.my_info, MemberState::Alive, now);
        self.queue_update_as(
            Item::Alive {
                incarnation: inc,
                info: self.my_info,
            },
            self.me,
            true,
        );
        self.stats.refutations += 1;
        if self.cfg.lifeguard {
            self.awareness.apply(1);
        }
        self.push_event(Event::Refuted { incarnation: inc });
    }
}

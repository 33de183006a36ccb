//! Datagrams in: each received item dispatched to the probe cycle, the state transitions
//! or the layer above.

use std::net::SocketAddr;

use rand::Rng;
use ringleader_time::Time;
use ringleader_wire::Message;

use super::{Member, Origin, Relay};
use crate::item::Item;

impl<R: Rng> Member<R> {
    /// Handles a received wire message from `from` (converting it through the directory).
    /// A message the directory refuses is counted and dropped.
    pub fn handle_message(&mut self, now: Time, from: SocketAddr, msg: Message) {
        let item = self.dir.borrow_mut().from_wire(msg);
        match item {
            Ok(item) => self.handle_item(now, from, item),
            Err(_) => self.stats.dropped += 1,
        }
    }

    /// Handles the items of one received datagram.
    pub fn handle_items(
        &mut self,
        now: Time,
        from: SocketAddr,
        items: impl IntoIterator<Item = Item>,
    ) {
        for item in items {
            self.handle_item(now, from, item);
        }
    }

    /// Handles one received item.
    pub fn handle_item(&mut self, now: Time, from: SocketAddr, item: Item) {
        match item {
            Item::Ping {
                seq,
                target,
                source,
            } => {
                if target != self.name_hash(self.me) {
                    self.stats.dropped += 1;
                    return;
                }
                let ack = Item::Ack {
                    seq,
                    coordinate: self.coordinate.clone(),
                };
                let size = self.size(&ack);
                let addr = self.dir.borrow().info(source).addr;
                self.send(addr, vec![ack], size);
                self.repair_if_unknown(now, source);
            }
            Item::IndirectPing {
                seq,
                target,
                nack,
                source,
            } => {
                if self.relays.len() >= self.cfg.relays_max {
                    self.stats.dropped += 1;
                    return;
                }
                self.seq = self.seq.wrapping_add(1);
                let my_seq = self.seq;
                let (target_hash, target_addr) = {
                    let d = self.dir.borrow();
                    let i = d.info(target);
                    (d.node_hash(i.node) as u32, i.addr)
                };
                self.relays.push(Relay {
                    seq: my_seq,
                    orig_seq: seq,
                    source,
                    nack,
                    deadline: now + self.cfg.probe_timeout(),
                });
                let ping = Item::Ping {
                    seq: my_seq,
                    target: target_hash,
                    source: self.my_info,
                };
                let size = self.size(&ping);
                self.send(target_addr, vec![ping], size);
            }
            Item::Ack { seq, coordinate } => {
                if let Some(p) = self.probe
                    && p.seq == seq
                {
                    // Only a direct ack is a round-trip sample (as memberlist's
                    // NotifyPingComplete): one relayed through helpers waited for the probe
                    // timeout and took two extra hops, and would throw Vivaldi off.
                    self.probe_succeeded(now, coordinate, !p.indirect_sent);
                    return;
                }
                if let Some(i) = self.relays.iter().position(|r| r.seq == seq) {
                    let r = self.relays.swap_remove(i);
                    let ack = Item::Ack {
                        seq: r.orig_seq,
                        coordinate,
                    };
                    let size = self.size(&ack);
                    let addr = self.dir.borrow().info(r.source).addr;
                    self.send(addr, vec![ack], size);
                }
            }
            Item::Nack { seq } => {
                if let Some(p) = &mut self.probe
                    && p.seq == seq
                    && p.nacks < p.expected_nacks
                {
                    p.nacks += 1;
                }
            }
            Item::Suspect {
                incarnation,
                node,
                from: accuser,
            } => {
                if self.accepts_accusation(node, accuser) {
                    self.suspect_node(now, incarnation, node, accuser);
                    self.answer_accusation(node, from);
                }
            }
            Item::Alive { incarnation, info } => {
                self.alive_node(now, incarnation, info, Origin::Gossip)
            }
            Item::Dead {
                incarnation,
                node,
                from: accuser,
            } => {
                if node == accuser || self.accepts_accusation(node, accuser) {
                    self.dead_node(now, incarnation, node, accuser);
                    self.answer_accusation(node, from);
                }
            }
            Item::Other(msg) => self.receive_other(from, msg),
        }
    }
}

//! The probe cycle: randomized round-robin targets, direct then indirect probes with
//! Lifeguard's nacks, the TCP-fallback ping, and what a failed or answered probe does.

use std::rc::Rc;
use std::time::Duration;

use rand::Rng;
use ringleader_time::Time;
use ringleader_wire::msg::swim::{Coordinate, MemberState};

use super::{Event, Member, Probe, Purpose, Round, gcd};
use crate::item::{Item, NodeId, StreamRequest};

impl<R: Rng> Member<R> {
    fn scaled(&self, d: Duration) -> Duration {
        if self.cfg.lifeguard {
            self.awareness.scale(d)
        } else {
            d
        }
    }

    fn next_probe_target(&mut self) -> Option<NodeId> {
        let len = self.table.len() as u64;
        for _ in 0..=len {
            if self.round.i >= self.round.len || self.round.len != len {
                // New round over the current table.
                let mut a = 1;
                for _ in 0..8 {
                    let c = self.rng.random_range(1..len.max(2));
                    if gcd(c, len) == 1 {
                        a = c;
                        break;
                    }
                }
                self.round = Round {
                    a,
                    b: self.rng.random_range(0..len.max(1)),
                    len,
                    i: 0,
                };
            }
            let r = self.round;
            self.round.i += 1;
            let idx = ((r.a as u128 * r.i as u128 + r.b as u128) % r.len.max(1) as u128) as NodeId;
            let e = self.table[idx as usize];
            if idx != self.me
                && e.present()
                && matches!(e.state(), MemberState::Alive | MemberState::Suspect)
            {
                return Some(idx);
            }
        }
        None
    }

    pub(super) fn start_probe(&mut self, now: Time) {
        let interval = self.scaled(self.cfg.probe_interval());
        self.next_probe_at = now + interval;
        let Some(target) = self.next_probe_target() else {
            return;
        };
        let e = self.table[target as usize];
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let timeout = self.scaled(self.cfg.probe_timeout());
        self.probe = Some(Probe {
            target,
            info: e.info,
            seq,
            started: now,
            timeout_at: now + timeout,
            deadline: now + interval,
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
        });
        self.stats.probes += 1;
        let ping = Item::Ping {
            seq,
            target: self.name_hash(target),
            source: self.my_info,
        };
        let mut size = self.size(&ping);
        let mut items = vec![ping];
        if self.cfg.lifeguard && e.state() == MemberState::Suspect {
            // Buddy system: tell the suspect first, so it can refute at once.
            let s = Item::Suspect {
                incarnation: e.incarnation,
                node: target,
                from: self.me,
            };
            size += self.size(&s);
            items.push(s);
        }
        let addr = self.dir.borrow().info(e.info).addr;
        self.send(addr, items, size);
    }

    pub(super) fn probe_timeout(&mut self, _now: Time) {
        let Some(mut p) = self.probe else { return };
        p.indirect_sent = true;
        let k = self.cfg.indirect_checks;
        let helpers =
            self.random_members(k, |n, e| n != p.target && e.state() == MemberState::Alive);
        let target_info = p.info;
        for &h in &helpers {
            let item = Item::IndirectPing {
                seq: p.seq,
                target: target_info,
                nack: self.cfg.lifeguard,
                source: self.my_info,
            };
            let size = self.size(&item);
            let addr = self.dir.borrow().info(self.table[h as usize].info).addr;
            self.send(addr, vec![item], size);
        }
        p.expected_nacks = if self.cfg.lifeguard {
            helpers.len() as u32
        } else {
            0
        };
        self.probe = Some(p);
        if self.cfg.tcp_fallback {
            let addr = self.dir.borrow().info(target_info).addr;
            let req = StreamRequest::Ping {
                seq: p.seq,
                target: self.name_hash(p.target),
                source: self.my_info,
            };
            let bytes = 64;
            let _ = self.start_stream(
                addr,
                req,
                bytes,
                Purpose::FallbackPing { seq: p.seq },
                p.deadline,
            );
        }
    }

    pub(super) fn probe_failed(&mut self, now: Time) {
        let Some(p) = self.probe.take() else { return };
        self.stats.probes_failed += 1;
        if self.cfg.lifeguard {
            let delta = if p.expected_nacks > 0 {
                p.expected_nacks.saturating_sub(p.nacks)
            } else {
                1
            };
            self.awareness.apply(delta as i32);
        }
        let e = self.table[p.target as usize];
        if e.present()
            && e.info == p.info
            && matches!(e.state(), MemberState::Alive | MemberState::Suspect)
        {
            self.suspect_node(now, e.incarnation, p.target, self.me);
        }
    }

    pub(super) fn probe_succeeded(
        &mut self,
        now: Time,
        coordinate: Option<Rc<Coordinate>>,
        sample: bool,
    ) {
        let Some(p) = self.probe.take() else { return };
        if self.cfg.lifeguard {
            self.awareness.apply(-1);
        }
        if sample {
            self.push_event(Event::Rtt {
                node: p.target,
                rtt: now.saturating_since(p.started),
                coordinate,
            });
        }
    }
}

//! Timers: the work due at a deadline — probe stages, relay and stream deadlines,
//! suspicion expiry, reaping, gossip rounds, periodic push-pull and reconnects.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use ringleader_time::Time;
use ringleader_wire::msg::swim::MemberState;

use super::{Entry, Event, Member, Purpose, Status, state_index};
use crate::config::{Config, push_pull_interval};
use crate::item::{InfoId, Item, NodeId, StreamRequest};

impl<R: Rng> Member<R> {
    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        // Probe stages first: a probe's deadline coincides with the next probe's start.
        if let Some(p) = self.probe {
            if !p.indirect_sent && now >= p.timeout_at {
                self.probe_timeout(now);
            }
        }
        if let Some(p) = self.probe
            && p.indirect_sent
            && now >= p.deadline
        {
            self.probe_failed(now);
        }
        if self.status == Status::Alive && now >= self.next_probe_at {
            self.start_probe(now);
        }
        let mut i = 0;
        while i < self.relays.len() {
            if now >= self.relays[i].deadline {
                let r = self.relays.swap_remove(i);
                if r.nack {
                    let addr = self.dir.borrow().info(r.source).addr;
                    self.send(
                        addr,
                        vec![Item::Nack { seq: r.orig_seq }],
                        self.size(&Item::Nack { seq: 0 }),
                    );
                }
            } else {
                i += 1;
            }
        }
        self.expire_suspicions(now);
        let mut i = 0;
        while i < self.streams.len() {
            if now >= self.streams[i].deadline {
                let s = self.streams.swap_remove(i);
                self.stream_failed(now, s.purpose);
            } else {
                i += 1;
            }
        }
        self.reap(now);
        if now >= self.next_gossip_at {
            let interval = Duration::from_millis(self.cfg.gossip_interval_ms.max(1));
            let behind = now.saturating_since(self.next_gossip_at).as_nanos() / interval.as_nanos();
            let due = self.next_gossip_at + interval * behind as u32;
            self.next_gossip_at = due + interval;
            // Rounds missed while there was nothing to gossip are not made up.
            if behind == 0 {
                self.gossip(now);
            }
        }
        if self.cfg.push_pull_interval_ms > 0 && now >= self.next_push_pull_at {
            let periodic = cfg_push_pull(&self.cfg, self.known());
            self.next_repair_at = self.next_repair_at.max(now + self.cfg.probe_interval() * 2);
            let catch_up = self.cfg.seed_catch_up && self.learned_by_push_pull > 0;
            self.learned_by_push_pull = 0;
            let to_seed = !self.seeded || catch_up;
            // While catching up after a join, the next catch-up comes twice as long after
            // this one (still well before the periodic one while the cluster grows fast).
            if to_seed
                && self.catch_up_ms > 0
                && Duration::from_millis(self.catch_up_ms * 2) < periodic
            {
                self.catch_up_ms *= 2;
                let ms = self.catch_up_ms;
                self.next_push_pull_at =
                    now + Duration::from_millis(ms / 2 + self.rng.random_range(0..ms + 1));
            } else {
                self.catch_up_ms = 0;
                self.next_push_pull_at = now + periodic;
            }
            if self.status == Status::Alive
                && to_seed
                && let Some(seed) = self.random_seed()
            {
                // The first push-pull after a join goes to a seed: seeds saw every join, so
                // this one exchange completes what the join rumors have not delivered yet.
                // So does the next one while push-pulls keep bringing members the rumors
                // did not (the cluster is still growing faster than rumors reach us).
                self.seeded = true;
                let _ = self.push_pull_to(now, seed, false, Purpose::PushPull);
            } else if self.status == Status::Alive
                && let Some(node) = self.random_member(|_, e| e.state() == MemberState::Alive)
            {
                let addr = self.dir.borrow().info(self.table[node as usize].info).addr;
                let _ = self.push_pull_to(now, addr, false, Purpose::PushPull);
            }
        }
        if self.cfg.reconnect_interval_ms > 0 && now >= self.next_reconnect_at {
            self.next_reconnect_at = now + Duration::from_millis(self.cfg.reconnect_interval_ms);
            self.reconnect(now);
        }
    }

    fn expire_suspicions(&mut self, now: Time) {
        if now < self.suspicion_next {
            return;
        }
        let mut next = Time::MAX;
        let mut due: Vec<(NodeId, u64)> = Vec::new();
        for (&n, s) in &self.suspicions {
            if now >= s.deadline() {
                due.push((n, s.incarnation));
            } else {
                next = next.min(s.deadline());
            }
        }
        self.suspicion_next = next;
        due.sort_unstable();
        for (node, inc) in due {
            self.suspicions.remove(&node);
            let e = self.table[node as usize];
            if e.present() && e.state() == MemberState::Suspect && e.incarnation == inc {
                self.dead_node(now, inc, node, self.me);
            }
        }
    }

    fn reap(&mut self, now: Time) {
        while let Some(&(node, changed_s)) = self.failed.front() {
            if now < Time::from_millis(u64::from(changed_s) * 1000 + self.cfg.dead_reap_ms) {
                break;
            }
            self.failed.pop_front();
            let e = self.table[node as usize];
            let failed = matches!(e.state(), MemberState::Dead | MemberState::Left);
            if !e.present() || !failed || e.changed_s() != changed_s || node == self.me {
                continue;
            }
            if e.state() == MemberState::Dead && self.cfg.reconnect_interval_ms > 0 {
                if self.reaped.len() >= self.cfg.reconnect_memory_max {
                    self.reaped.pop_front();
                }
                self.reaped.push_back((e.info, now));
            }
            self.counts[state_index(e.state())] -= 1;
            self.digest_toggle(node, e);
            self.table[node as usize] = Entry::EMPTY;
            self.push_event(Event::Reaped { node });
        }
    }

    /// Partition healing: every `reconnect_interval` try a push-pull with one failed
    /// member (dead, or reaped within `reconnect_timeout`); alone, try the seeds again.
    fn reconnect(&mut self, now: Time) {
        if self.status != Status::Alive {
            return;
        }
        let timeout = Duration::from_millis(self.cfg.reconnect_timeout_ms);
        while let Some(&(_, at)) = self.reaped.front() {
            if now.saturating_since(at) <= timeout {
                break;
            }
            self.reaped.pop_front();
        }
        let alive = self.count(MemberState::Alive) + self.count(MemberState::Suspect);
        if alive <= 1
            && let Some(seed) = self.random_seed()
        {
            let _ = self.push_pull_to(now, seed, true, Purpose::Join { seed });
            self.stats.reconnects += 1;
            return;
        }
        let dead: Vec<InfoId> = self
            .failed
            .iter()
            .filter_map(|&(n, c)| {
                let e = self.table[n as usize];
                (e.present() && e.state() == MemberState::Dead && e.changed_s() == c)
                    .then_some(e.info)
            })
            .collect();
        let total = dead.len() + self.reaped.len();
        if total == 0 {
            return;
        }
        let pick = self.rng.random_range(0..total);
        let info = if pick < dead.len() {
            dead[pick]
        } else {
            self.reaped[pick - dead.len()].0
        };
        let (addr, node) = {
            let d = self.dir.borrow();
            (d.info(info).addr, d.info(info).node)
        };
        // A cheap stream ping first (like a TCP connect): the full state goes only to a
        // member that answers.
        self.seq = self.seq.wrapping_add(1);
        let req = StreamRequest::Ping {
            seq: self.seq,
            target: self.name_hash(node),
            source: self.my_info,
        };
        let deadline = now + Duration::from_millis(self.cfg.stream_timeout_ms);
        if self
            .start_stream(addr, req, 64, Purpose::ReconnectProbe { addr }, deadline)
            .is_ok()
        {
            self.stats.reconnects += 1;
        }
    }

    /// Anti-entropy on evidence of divergence: a probe from a member this one does not
    /// know means a join rumor died out before it got here (it happens when the cluster
    /// was small: the retransmit limit is `mult × ⌈log10(n + 1)⌉`). Push-pull with the
    /// prober (with `seed_catch_up`, with a seed), at most once per push-pull interval.
    pub(super) fn repair_if_unknown(&mut self, now: Time, source: InfoId) {
        let node = self.dir.borrow().info(source).node;
        let known = self.table.get(node as usize).is_some_and(|e| e.present());
        if known
            || now < self.next_repair_at
            || self.status != Status::Alive
            || self.cfg.push_pull_interval_ms == 0
        {
            return;
        }
        // The repair takes the place of the next periodic push-pull, so it costs nothing
        // over memberlist's push-pull rate.
        let interval = cfg_push_pull(&self.cfg, self.known());
        self.next_repair_at = now + interval;
        if (self.seeded || self.seeds.is_empty()) && self.catch_up_ms == 0 {
            self.next_push_pull_at = now + interval;
        }
        // With seed catch-up, from a seed: it saw every join, the prober only those before
        // its own (and a repair postpones the next periodic push-pull, the catch-up one).
        let seed = if self.cfg.seed_catch_up {
            self.random_seed()
        } else {
            None
        };
        let addr = seed.unwrap_or_else(|| self.dir.borrow().info(source).addr);
        let _ = self.push_pull_to(now, addr, false, Purpose::PushPull);
    }

    /// After a join's first answer: with `seed_catch_up`, the first catch-up push-pull
    /// with a seed comes `catch_up_interval_ms` (± half) from now.
    pub(super) fn catch_up_after_join(&mut self, now: Time) {
        let ms = self.cfg.catch_up_interval_ms;
        if !self.cfg.seed_catch_up
            || self.cfg.push_pull_interval_ms == 0
            || ms == 0
            || self.catch_up_ms != 0
        {
            return;
        }
        self.catch_up_ms = ms;
        self.seeded = false;
        let at = now + Duration::from_millis(ms / 2 + self.rng.random_range(0..ms + 1));
        self.next_push_pull_at = self.next_push_pull_at.min(at);
    }

    /// One of the seeds this member joined through, at random (`None` without seeds).
    fn random_seed(&mut self) -> Option<SocketAddr> {
        if self.seeds.is_empty() {
            return None;
        }
        Some(self.seeds[self.rng.random_range(0..self.seeds.len())])
    }
}

fn cfg_push_pull(cfg: &Config, members: usize) -> Duration {
    push_pull_interval(
        Duration::from_millis(cfg.push_pull_interval_ms.max(1)),
        members,
    )
}

//! What the event thread makes of the host's events: the first `Down` of each (observer,
//! victim) pair with its detection time, false positives and false suspicions, and counts
//! by kind. Pairs are kept as two small ids, not two strings.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use ringleader_engine::host::{Event, HostEvent};
use ringleader_engine::swim::{FxHashMap, FxHasher};

use super::DRAIN_WAIT;

/// What the event thread makes of the events (shared with the main thread).
#[derive(Debug, Default)]
pub struct Tally {
    /// Killed members and the moment just before each one's kill command.
    pub killed: HashMap<String, Instant>,
    /// Member names seen, by id (pairs are kept as two ids: a 10,000-member run can see
    /// millions of pairs, and hashing two strings per event cost the event thread a core).
    names: Vec<Arc<str>>,
    ids: FxHashMap<Arc<str>, u32>,
    /// First `Down` of each (observer, victim) pair ([`Tally::pair`]): the milliseconds
    /// since the kill, and when it was seen.
    pub detected: FxHashMap<u64, (u64, Instant)>,
    /// Distinct (observer, member) pairs with a `Down` about a member that was not killed
    /// (or about a victim before its kill).
    pub false_positives: HashSet<u64, BuildHasherDefault<FxHasher>>,
    /// `Down` events counted in `false_positives` (repeats included).
    pub false_positive_events: u64,
    /// Distinct (observer, member) pairs with a suspicion of a member that was not killed.
    pub false_suspicions: HashSet<u64, BuildHasherDefault<FxHasher>>,
    /// Suspicions of members that were not killed (repeats included).
    pub false_suspicion_events: u64,
    /// Events seen, by kind.
    pub events: HashMap<&'static str, u64>,
}

impl Tally {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.names.push(Arc::clone(&name));
        self.ids.insert(name, id);
        id
    }

    /// The key of the pair (`observer`, `member`).
    pub fn pair(&mut self, observer: &str, member: &str) -> u64 {
        (u64::from(self.id(observer)) << 32) | u64::from(self.id(member))
    }

    /// The names of a pair key.
    pub fn pair_names(&self, key: u64) -> (&str, &str) {
        let name = |id: u64| self.names.get(id as usize).map_or("?", |n| &**n);
        (name(key >> 32), name(key & 0xffff_ffff))
    }

    /// Accounts for one event.
    pub fn observe(&mut self, e: HostEvent) {
        let kind = match &e.event {
            Event::Up(_) => "up",
            Event::Suspect { .. } => "suspect",
            Event::AliveAgain(_) => "alive_again",
            Event::Down { .. } => "down",
            Event::Left(_) => "left",
            Event::Updated(_) => "updated",
            Event::Reaped(_) => "reaped",
            Event::Message { .. } => "message",
            Event::Joined { .. } => "joined",
            Event::User { .. } => "user",
            Event::Query(_) => "query",
        };
        *self.events.entry(kind).or_default() += 1;
        match e.event {
            Event::Down { member, .. } => {
                let killed_at = self.killed.get(&member.name).copied();
                match killed_at {
                    Some(k) if e.at >= k => {
                        let ms = e.at.duration_since(k).as_millis() as u64;
                        let pair = self.pair(&e.local, &member.name);
                        self.detected.entry(pair).or_insert((ms, e.at));
                    }
                    _ => {
                        self.false_positive_events += 1;
                        let pair = self.pair(&e.local, &member.name);
                        self.false_positives.insert(pair);
                    }
                }
            }
            Event::Suspect { member, .. } if !self.killed.contains_key(&member.name) => {
                self.false_suspicion_events += 1;
                let pair = self.pair(&e.local, &member.name);
                self.false_suspicions.insert(pair);
            }
            _ => {}
        }
    }
}

pub(crate) fn lock(t: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    // The tally is plain counters: a panic elsewhere leaves it usable.
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The thread that drains a host's events into a [`Tally`] for the whole run.
pub(crate) struct EventThread {
    /// What it has seen so far.
    pub tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl EventThread {
    /// Starts draining `events`.
    pub fn start(events: crossbeam_channel::Receiver<HostEvent>) -> std::io::Result<EventThread> {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("swim-events".to_owned())
                .spawn(move || drain(events, tally, stop))?
        };
        Ok(EventThread {
            tally,
            stop,
            handle,
        })
    }

    /// Asks the thread to stop (it drains what is queued first).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops the thread and waits for it; whether it ended without a panic.
    pub fn join(self) -> bool {
        self.stop();
        self.handle.join().is_ok()
    }
}

/// Drains `events` into `tally` until `stop` is set.
fn drain(
    events: crossbeam_channel::Receiver<HostEvent>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(first) = events.recv_timeout(DRAIN_WAIT) else {
            continue;
        };
        let mut t = lock(&tally);
        t.observe(first);
        // Take what else is queued under the same lock.
        for e in events.try_iter().take(4096) {
            t.observe(e);
        }
    }
    let mut t = lock(&tally);
    for e in events.try_iter() {
        t.observe(e);
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use ringleader_engine::host::MemberInfo;
    use ringleader_engine::swim::MemberState;

    use super::*;

    fn info(name: &str) -> MemberInfo {
        MemberInfo {
            name: name.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            meta: Vec::new(),
            state: MemberState::Dead,
            incarnation: 0,
            tags: Default::default(),
            status: ringleader_engine::host::MemberStatus::Failed,
            coordinate: None,
        }
    }

    fn down(local: &str, member: &str, at: Instant) -> HostEvent {
        HostEvent {
            at,
            local: Arc::from(local),
            event: Event::Down {
                member: info(member),
                by: local.to_owned(),
            },
        }
    }

    #[test]
    fn the_tally_keeps_the_first_down_per_pair_and_counts_false_positives() {
        let t0 = Instant::now();
        let mut t = Tally::default();
        // Before the kill, a down about m5 is a false positive.
        t.observe(down("m1", "m5", t0));
        t.killed.insert("m5".into(), t0 + Duration::from_millis(10));
        t.observe(down("m1", "m5", t0 + Duration::from_millis(1_010)));
        t.observe(down("m1", "m5", t0 + Duration::from_millis(3_010)));
        t.observe(down("m2", "m5", t0 + Duration::from_millis(2_010)));
        t.observe(down("m2", "m7", t0 + Duration::from_millis(2_010)));
        t.observe(down("m2", "m7", t0 + Duration::from_millis(2_020)));
        t.observe(HostEvent {
            at: t0,
            local: Arc::from("m3"),
            event: Event::Suspect {
                member: info("m7"),
                by: "m3".into(),
            },
        });
        t.observe(HostEvent {
            at: t0,
            local: Arc::from("m3"),
            event: Event::Suspect {
                member: info("m5"),
                by: "m3".into(),
            },
        });
        assert_eq!(t.detected.len(), 2);
        let (p15, p25) = (t.pair("m1", "m5"), t.pair("m2", "m5"));
        assert_eq!(t.detected[&p15].0, 1_000);
        assert_eq!(t.detected[&p25].0, 2_000);
        let fp = *t.false_positives.iter().min().expect("some");
        assert_eq!(t.pair_names(fp), ("m1", "m5"));
        assert_eq!(t.false_positives.len(), 2, "(m1, m5) early and (m2, m7)");
        assert_eq!(t.false_positive_events, 3);
        assert_eq!(t.false_suspicions.len(), 1, "only m7: m5 was killed");
        assert_eq!(t.events["down"], 6);
        assert_eq!(t.events["suspect"], 2);
    }
}

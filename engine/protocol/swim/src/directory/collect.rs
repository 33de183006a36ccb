//! Reclamation: a mark-and-sweep of the directory that its owner runs.
//!
//! The owner (the host's shard, the simulator) calls [`Directory::collect`] when
//! [`Directory::collect_due`] says so, with a function that marks every id still held —
//! by each member sharing the directory ([`crate::Member::mark_ids`]) and by the owner
//! itself (items in flight, stream answers not yet handed to their member). Everything
//! unmarked is freed: its name leaves the names table, its slot goes to a free list, and
//! the packed name bytes are rebuilt from the live names only. A triple that is marked
//! keeps its name alive.
//!
//! What it must never do: free an id that is still held (a stale id would resolve to a
//! different member). Marking is the holders' job and must be complete; the sweep itself
//! runs with the directory borrowed mutably, so nothing can be interned between the marks
//! and the sweep.
//!
//! When: once the live names or triples pass a high-water mark (half the headroom left
//! after the previous collection), or after an intern was refused for want of room —
//! never more often than every `collect_interval_ms` of the owner's clock. Each
//! collection costs one pass over every holder's ids and the directory's slots; the
//! high-water mark spreads that over at least half the headroom's worth of new interns.

use ringleader_time::Time;

use super::{Directory, FREE, NO_INFO, NameAt, SizeKey};
use crate::item::{InfoId, Item, NodeId, PushPullState, StreamRequest, StreamResponse};
use crate::member::{Event, Output};

/// Default of [`Directory::set_collect_interval_ms`].
pub const COLLECT_INTERVAL_MS_DEFAULT: u64 = 1_000;

/// The ids held, gathered for one collection.
#[derive(Debug)]
pub struct Marks {
    pub(super) nodes: Vec<u64>,
    pub(super) infos: Vec<u64>,
}

pub(super) fn set(bits: &mut [u64], i: u32) {
    // Ids beyond the directory's slots were never handed out by it: nothing to keep.
    if let Some(w) = bits.get_mut(i as usize / 64) {
        *w |= 1 << (i % 64);
    }
}

pub(super) fn get(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

impl Marks {
    pub(super) fn new(nodes: usize, infos: usize) -> Marks {
        Marks {
            nodes: vec![0; nodes.div_ceil(64)],
            infos: vec![0; infos.div_ceil(64)],
        }
    }

    /// Keeps name `node`.
    pub fn node(&mut self, node: NodeId) {
        set(&mut self.nodes, node);
    }

    /// Keeps triple `info` (and with it its name).
    pub fn info(&mut self, info: InfoId) {
        set(&mut self.infos, info);
    }

    /// Keeps every id `item` holds.
    pub fn item(&mut self, item: &Item) {
        match item {
            // A ping's target is a name hash, no id.
            Item::Ping { source, .. } => self.info(*source),
            Item::IndirectPing { target, source, .. } => {
                self.info(*target);
                self.info(*source);
            }
            Item::Suspect { node, from, .. } | Item::Dead { node, from, .. } => {
                self.node(*node);
                self.node(*from);
            }
            Item::Alive { info, .. } => self.info(*info),
            Item::Ack { .. } | Item::Nack { .. } | Item::Other(_) => {}
        }
    }

    /// Keeps every id of a push-pull state.
    pub fn push_pull(&mut self, s: &PushPullState) {
        self.info(s.source);
        for n in &s.states {
            self.info(n.info);
        }
    }

    /// Keeps every id of a stream request.
    pub fn stream_request(&mut self, r: &StreamRequest) {
        match r {
            StreamRequest::PushPull(s) => self.push_pull(s),
            StreamRequest::Ping { source, .. } => self.info(*source),
        }
    }

    /// Keeps every id of a stream answer.
    pub fn stream_response(&mut self, r: &StreamResponse) {
        match r {
            StreamResponse::PushPull(s) => self.push_pull(s),
            StreamResponse::Ack { .. } | StreamResponse::Refused => {}
        }
    }

    /// Keeps every id of an output not yet sent.
    pub fn output(&mut self, o: &Output) {
        match o {
            Output::Datagram(t) => t.items.iter().for_each(|i| self.item(i)),
            Output::Stream(s) => self.stream_request(&s.request),
        }
    }

    /// Keeps every id of an event not yet delivered.
    pub fn event(&mut self, e: &Event) {
        match e {
            Event::Up { node, info } | Event::Updated { node, info } => {
                self.node(*node);
                self.info(*info);
            }
            Event::Suspect { node, from } | Event::Down { node, from } => {
                self.node(*node);
                self.node(*from);
            }
            Event::AliveAgain { node }
            | Event::Left { node }
            | Event::Reaped { node }
            | Event::Rtt { node, .. } => self.node(*node),
            Event::UserState { from, .. } => self.info(*from),
            Event::Refuted { .. } | Event::Message { .. } | Event::Joined { .. } => {}
        }
    }
}

/// What the collections of a directory did, and why they ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CollectStats {
    /// Collections run.
    pub collections: u64,
    /// Names freed over all of them.
    pub names_freed: u64,
    /// Triples freed over all of them.
    pub infos_freed: u64,
    /// Interns refused because the directory was full (of held ids).
    pub refused: u64,
}

/// How much the directory holds now: live counts, slots (live and free) and an estimate
/// of its heap bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Live names.
    pub names: usize,
    /// Live triples.
    pub infos: usize,
    /// Name slots, live and free (the highest name id handed out is below it).
    pub name_slots: usize,
    /// Triple slots, live and free.
    pub info_slots: usize,
    /// Heap bytes of the tables, names and metadata (capacities, not lengths).
    pub bytes: usize,
}

/// The collection policy's state.
#[derive(Debug)]
pub(super) struct State {
    names_at: usize,
    infos_at: usize,
    refused_since: bool,
    last: Option<Time>,
    interval_ms: u64,
    stats: CollectStats,
}

/// Collect again once half the headroom left is used.
fn high_water(live: usize, max: usize) -> usize {
    live + max.saturating_sub(live).div_ceil(2).max(1)
}

impl State {
    pub(super) fn new(names_max: usize, infos_max: usize) -> State {
        State {
            names_at: high_water(0, names_max),
            infos_at: high_water(0, infos_max),
            refused_since: false,
            last: None,
            interval_ms: COLLECT_INTERVAL_MS_DEFAULT,
            stats: CollectStats::default(),
        }
    }

    pub(super) fn refused(&mut self) {
        self.refused_since = true;
        self.stats.refused += 1;
    }
}

impl Directory {
    /// Collections run no more often than every `ms` of the owner's clock
    /// ([`COLLECT_INTERVAL_MS_DEFAULT`] unless set).
    pub fn set_collect_interval_ms(&mut self, ms: u64) {
        self.collect.interval_ms = ms;
    }

    /// Whether the owner should run [`Directory::collect`] now: past the high-water mark
    /// of names or triples, or an intern was refused since the last collection, and the
    /// last one is at least `collect_interval_ms` old.
    pub fn collect_due(&self, now: Time) -> bool {
        let c = &self.collect;
        let over =
            c.refused_since || self.names_live >= c.names_at || self.infos_live >= c.infos_at;
        over && c
            .last
            .is_none_or(|t| now.saturating_since(t).as_millis() >= u128::from(c.interval_ms))
    }

    /// Frees every name and triple that `mark` does not mark. `mark` must mark every id
    /// held anywhere outside the directory (every member sharing it:
    /// [`crate::Member::mark_ids`]; the owner's items in flight). Returns how many names
    /// and triples were freed.
    pub fn collect(&mut self, now: Time, mark: impl FnOnce(&mut Marks)) -> (usize, usize) {
        let mut marks = Marks::new(self.nodes.len(), self.infos.len());
        mark(&mut marks);
        // A held triple holds its name.
        for (i, info) in self.infos.iter().enumerate() {
            if info.node != FREE && get(&marks.infos, i) {
                set(&mut marks.nodes, info.node);
            }
        }
        let mut infos_freed = 0;
        self.free_infos.clear();
        for i in (0..self.infos.len()).rev() {
            let info = &mut self.infos[i];
            if info.node != FREE && !get(&marks.infos, i) {
                info.node = FREE;
                info.meta = Box::default();
                info.addr = ([0, 0, 0, 0], 0).into();
                info.name = NameAt { at: 0, len: 0 };
                infos_freed += 1;
            }
            if info.node == FREE {
                self.free_infos.push(i as InfoId);
            }
        }
        let mut names_freed = 0;
        self.free_nodes.clear();
        for n in (0..self.nodes.len()).rev() {
            let at = self.nodes[n].name;
            if at.len == 0 {
                self.free_nodes.push(n as NodeId);
                continue;
            }
            if get(&marks.nodes, n) {
                let infos = &self.infos;
                let entry = &mut self.nodes[n];
                entry.infos.retain(|&i| infos[i as usize].node != FREE);
                let name = at.of(&self.name_bytes);
                if let Some(slot) = self.names.get_mut(name)
                    && slot.latest != NO_INFO
                    && self.infos[slot.latest as usize].node == FREE
                {
                    slot.latest = NO_INFO;
                }
                continue;
            }
            debug_assert!(
                self.nodes[n]
                    .infos
                    .iter()
                    .all(|&i| self.infos[i as usize].node == FREE),
                "an unmarked name has no marked triple"
            );
            let name = at.of(&self.name_bytes);
            self.names.remove(name);
            let entry = &mut self.nodes[n];
            entry.name = NameAt { at: 0, len: 0 };
            entry.infos = Vec::new();
            self.free_nodes.push(n as NodeId);
            names_freed += 1;
        }
        self.names_live -= names_freed;
        self.infos_live -= infos_freed;
        self.repack_names();
        let c = &mut self.collect;
        c.names_at = high_water(self.names_live, self.names_max);
        c.infos_at = high_water(self.infos_live, self.infos_max);
        c.refused_since = false;
        c.last = Some(now);
        c.stats.collections += 1;
        c.stats.names_freed += names_freed as u64;
        c.stats.infos_freed += infos_freed as u64;
        (names_freed, infos_freed)
    }

    /// Rebuilds the packed name bytes from the live names (and the triples' copies of
    /// where their name lies).
    fn repack_names(&mut self) {
        let bytes: usize = self.nodes.iter().map(|e| e.name.len as usize).sum();
        let mut packed = String::with_capacity(bytes);
        for e in &mut self.nodes {
            if e.name.len == 0 {
                continue;
            }
            let at = packed.len() as u32;
            packed.push_str(e.name.of(&self.name_bytes));
            e.name = NameAt {
                at,
                len: e.name.len,
            };
        }
        self.name_bytes = packed;
        for info in &mut self.infos {
            if info.node != FREE {
                info.name = self.nodes[info.node as usize].name;
            }
        }
    }

    /// What the collections did so far.
    pub fn collect_stats(&self) -> CollectStats {
        self.collect.stats
    }

    /// Live counts, slots and heap bytes now.
    pub fn footprint(&self) -> Footprint {
        use std::mem::size_of;
        let names = self.names.capacity()
            * (size_of::<super::NameKey>() + size_of::<super::NameSlot>() + 1)
            + self
                .names
                .keys()
                .map(|k| match k {
                    super::NameKey::Heap(s) => s.len(),
                    super::NameKey::Inline { .. } => 0,
                })
                .sum::<usize>();
        let nodes = self.nodes.capacity() * size_of::<super::NodeEntry>()
            + self
                .nodes
                .iter()
                .map(|e| e.infos.capacity() * size_of::<InfoId>())
                .sum::<usize>();
        let infos = self.infos.capacity() * size_of::<super::Info>()
            + self.infos.iter().map(|i| i.meta.len()).sum::<usize>();
        let free = (self.free_nodes.capacity() + self.free_infos.capacity()) * size_of::<u32>();
        let sizes = self.sizes.capacity() * (size_of::<SizeKey>() + size_of::<u32>() + 1);
        Footprint {
            names: self.names_live,
            infos: self.infos_live,
            name_slots: self.nodes.len(),
            info_slots: self.infos.len(),
            bytes: names + self.name_bytes.capacity() + nodes + infos + free + sizes,
        }
    }
}

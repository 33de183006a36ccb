//! The bounded broadcast queue (memberlist's `TransmitLimitedQueue`).
//!
//! Each broadcast is retransmitted up to a limit that the caller computes per call
//! (`retransmit_mult × ⌈log10(n + 1)⌉`). Selection is fewest-sent first, newest first within
//! a count, and by priority class: 0 (suspicions), 1 (other updates), 2 (join rumors). A
//! broadcast with a key invalidates the queued broadcast with the same key. When full, the
//! most-sent, oldest broadcast of the lowest-priority class is dropped. Every operation is
//! O(1) amortized except the fill, which touches only what it sends (plus a bounded number
//! of broadcasts that do not fit).

use std::collections::VecDeque;

use super::hash::FxHashMap;

/// Priority classes: 0 suspicions, 1 other updates, 2 join rumors.
pub const CLASSES: usize = 3;
/// Broadcasts that did not fit which a fill looks past before it stops.
const MISFITS_MAX: usize = 16;

struct Slot<T> {
    item: Option<T>,
    key: Option<u64>,
    size: u32,
    transmits: u32,
    generation: u32,
    class: u8,
}

/// A bounded queue of broadcasts of type `T`.
pub struct BroadcastQueue<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// `buckets[class][transmits]`: (slot, generation), oldest at the front.
    buckets: [Vec<VecDeque<(u32, u32)>>; CLASSES],
    by_key: FxHashMap<u64, u32>,
    len: usize,
    class_len: [usize; CLASSES],
    stale: usize,
    max: usize,
    dropped: u64,
    scratch: Vec<(u8, u32, u32)>,
}

impl<T> BroadcastQueue<T> {
    /// An empty queue holding at most `max` broadcasts.
    pub fn new(max: usize) -> BroadcastQueue<T> {
        assert!(max > 0, "a broadcast queue needs room for one broadcast");
        BroadcastQueue {
            slots: Vec::new(),
            free: Vec::new(),
            buckets: [Vec::new(), Vec::new(), Vec::new()],
            by_key: FxHashMap::default(),
            len: 0,
            class_len: [0; CLASSES],
            stale: 0,
            max,
            dropped: 0,
            scratch: Vec::new(),
        }
    }

    /// Broadcasts queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.max
    }

    /// Broadcasts queued in priority classes below `class` (more urgent ones).
    pub fn len_above(&self, class: u8) -> usize {
        self.class_len[..(class as usize).min(CLASSES)].iter().sum()
    }

    /// Whether any broadcast of a class below `class` is queued.
    pub fn any_above(&self, class: u8) -> bool {
        self.len_above(class) > 0
    }

    /// Broadcasts dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Queues `item` of `size` bytes in priority `class` (0 first), replacing the queued
    /// broadcast with the same `key`.
    pub fn push(&mut self, item: T, size: usize, key: Option<u64>, class: u8) {
        let class = class.min(CLASSES as u8 - 1);
        if let Some(k) = key
            && let Some(old) = self.by_key.remove(&k)
        {
            self.release(old);
        }
        if self.len >= self.max {
            self.evict();
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot {
                    item: None,
                    key: None,
                    size: 0,
                    transmits: 0,
                    generation: 0,
                    class: 0,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        debug_assert!(s.item.is_none());
        s.item = Some(item);
        s.key = key;
        s.size = size as u32;
        s.transmits = 0;
        s.class = class;
        let generation = s.generation;
        if let Some(k) = key {
            self.by_key.insert(k, slot);
        }
        self.bucket(class, 0).push_back((slot, generation));
        self.len += 1;
        self.class_len[class as usize] += 1;
        debug_assert!(self.len <= self.max);
        // Stale entries are skipped lazily; compacting here (never during a fill) keeps
        // their number bounded.
        if self.stale > self.max.max(64) {
            self.compact();
        }
    }

    fn bucket(&mut self, class: u8, transmits: u32) -> &mut VecDeque<(u32, u32)> {
        let b = &mut self.buckets[class as usize];
        let t = transmits as usize;
        if b.len() <= t {
            b.resize_with(t + 1, VecDeque::new);
        }
        &mut b[t]
    }

    /// Frees a slot; its bucket entry turns stale and is skipped later.
    fn release(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        debug_assert!(s.item.is_some());
        s.item = None;
        s.generation = s.generation.wrapping_add(1);
        self.class_len[s.class as usize] -= 1;
        if let Some(k) = s.key.take()
            && self.by_key.get(&k) == Some(&slot)
        {
            self.by_key.remove(&k);
        }
        self.free.push(slot);
        self.len -= 1;
        self.stale += 1;
    }

    fn live(&self, (slot, generation): (u32, u32)) -> bool {
        let s = &self.slots[slot as usize];
        s.generation == generation && s.item.is_some()
    }

    fn compact(&mut self) {
        let slots = &self.slots;
        for class in &mut self.buckets {
            for b in class.iter_mut() {
                b.retain(|&(slot, g)| {
                    let s = &slots[slot as usize];
                    s.generation == g && s.item.is_some()
                });
            }
        }
        self.stale = 0;
    }

    /// Drops the most-sent, oldest broadcast of the lowest-priority non-empty class.
    fn evict(&mut self) {
        for class in (0..CLASSES).rev() {
            for t in (0..self.buckets[class].len()).rev() {
                while let Some(e) = self.buckets[class][t].pop_front() {
                    if self.live(e) {
                        self.release_popped(e.0);
                        self.dropped += 1;
                        return;
                    }
                    self.stale = self.stale.saturating_sub(1);
                }
            }
        }
    }

    /// Frees a slot whose bucket entry was already removed.
    fn release_popped(&mut self, slot: u32) {
        self.release(slot);
        self.stale = self.stale.saturating_sub(1);
    }

    /// Counts a redundant contact, worth `weight` transmissions, for the broadcast queued
    /// under `key`, if it is of priority `class` and `same` holds for it: the rumor was just heard from someone else, so
    /// it is spreading without us (rumor mongering's "counter" variant, Demers et al.
    /// 1987). A broadcast that reaches `limit` this way leaves the queue. Returns whether
    /// it counted.
    pub fn redundant(
        &mut self,
        key: u64,
        class: u8,
        limit: u32,
        weight: u32,
        same: impl FnOnce(&T) -> bool,
    ) -> bool {
        let Some(&slot) = self.by_key.get(&key) else {
            return false;
        };
        let s = &mut self.slots[slot as usize];
        if s.class != class || !s.item.as_ref().is_some_and(same) {
            return false;
        }
        s.transmits = s.transmits.saturating_add(weight.max(1));
        // Re-file it one bucket up: its old entry turns stale.
        s.generation = s.generation.wrapping_add(1);
        let (transmits, generation, class) = (s.transmits, s.generation, s.class);
        self.stale += 1;
        if transmits >= limit {
            // release() bumps the generation again and counts one more stale entry; the
            // new entry was never filed.
            self.release(slot);
            self.stale = self.stale.saturating_sub(1);
        } else {
            self.bucket(class, transmits).push_back((slot, generation));
        }
        true
    }

    /// Takes broadcasts that fit in `bytes_free` (each costing its size), fewest-sent first,
    /// and hands each to `take`. Broadcasts sent `limit` times leave the queue. Returns the
    /// bytes used.
    pub fn fill(&mut self, bytes_free: usize, limit: u32, take: impl FnMut(&T)) -> usize {
        self.fill_with_limits(bytes_free, [limit; CLASSES], [usize::MAX; CLASSES], take)
    }

    /// Like [`BroadcastQueue::fill`] with a retransmit limit and a most-items cap per
    /// priority class.
    pub fn fill_with_limits(
        &mut self,
        bytes_free: usize,
        limits: [u32; CLASSES],
        caps: [usize; CLASSES],
        mut take: impl FnMut(&T),
    ) -> usize {
        if self.len == 0 {
            // Nothing live to send (the common case on most datagrams); stale entries are
            // dropped by the next fill that has work or by compaction.
            return 0;
        }
        let mut used = 0usize;
        let mut moved = std::mem::take(&mut self.scratch);
        moved.clear();
        let mut misfits = 0usize;
        'classes: for (class, &limit) in limits.iter().enumerate() {
            let mut taken = 0usize;
            let mut t = 0usize;
            'class: while t < self.buckets[class].len() {
                let mut i = self.buckets[class][t].len();
                while i > 0 {
                    i -= 1;
                    let e = self.buckets[class][t][i];
                    if !self.live(e) {
                        self.buckets[class][t].swap_remove_back(i);
                        self.stale = self.stale.saturating_sub(1);
                        continue;
                    }
                    let s = &self.slots[e.0 as usize];
                    if s.transmits >= limit {
                        // The limit shrank (fewer members): done with it.
                        self.buckets[class][t].swap_remove_back(i);
                        self.release_popped(e.0);
                        continue;
                    }
                    if used + s.size as usize > bytes_free {
                        misfits += 1;
                        if misfits > MISFITS_MAX || bytes_free - used < 16 {
                            break 'classes;
                        }
                        continue;
                    }
                    used += s.size as usize;
                    if let Some(item) = &s.item {
                        take(item);
                    }
                    self.buckets[class][t].swap_remove_back(i);
                    moved.push((class as u8, e.0, e.1));
                    taken += 1;
                    if taken >= caps[class] {
                        break 'class;
                    }
                }
                t += 1;
            }
        }
        for &(class, slot, generation) in &moved {
            let limit = limits[class as usize];
            let s = &mut self.slots[slot as usize];
            s.transmits += 1;
            let transmits = s.transmits;
            if transmits >= limit {
                self.release_popped(slot);
            } else {
                self.bucket(class, transmits).push_back((slot, generation));
            }
        }
        self.scratch = moved;
        used
    }

    /// Calls `f` on every queued broadcast (in no particular order).
    pub fn for_each(&self, f: impl FnMut(&T)) {
        self.slots
            .iter()
            .filter_map(|s| s.item.as_ref())
            .for_each(f);
    }

    /// Removes every broadcast of priority `class`; returns how many.
    pub fn clear_class(&mut self, class: u8) -> usize {
        let mut n = 0;
        for slot in 0..self.slots.len() {
            let s = &self.slots[slot];
            if s.item.is_some() && s.class == class {
                self.release(slot as u32);
                n += 1;
            }
        }
        if n > 0 {
            self.compact();
        }
        n
    }

    /// Removes every broadcast.
    pub fn clear(&mut self) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].item.is_some() {
                self.release(slot as u32);
            }
        }
        self.compact();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(q: &mut BroadcastQueue<u32>, bytes: usize, limit: u32) -> Vec<u32> {
        let mut out = Vec::new();
        q.fill(bytes, limit, |&x| out.push(x));
        out
    }

    #[test]
    fn fewest_sent_then_newest_and_suspicions_first() {
        let mut q = BroadcastQueue::new(100);
        q.push(1, 10, Some(1), 1);
        q.push(2, 10, Some(2), 1);
        assert_eq!(drain(&mut q, 10, 3), vec![2]);
        q.push(3, 10, Some(3), 1);
        q.push(4, 10, Some(4), 0);
        // Class 0 first, then unsent newest-first, then the once-sent.
        assert_eq!(drain(&mut q, 40, 3), vec![4, 3, 1, 2]);
    }

    #[test]
    fn keys_invalidate_and_limits_retire() {
        let mut q = BroadcastQueue::new(100);
        q.push(1, 10, Some(7), 1);
        q.push(2, 10, Some(7), 1);
        assert_eq!(q.len(), 1);
        assert_eq!(drain(&mut q, 100, 2), vec![2]);
        assert_eq!(drain(&mut q, 100, 2), vec![2]);
        assert!(q.is_empty());
        assert!(drain(&mut q, 100, 2).is_empty());
    }

    #[test]
    fn respects_the_byte_budget() {
        let mut q = BroadcastQueue::new(100);
        for i in 0..10 {
            q.push(i, 30, None, 1);
        }
        q.push(99, 5, None, 1);
        let got = drain(&mut q, 100, 5);
        // Newest (99, 5 B) then three of 30 B: 95 B.
        assert_eq!(got, vec![99, 9, 8, 7]);
    }

    #[test]
    fn holds_its_bound_when_flooded() {
        let mut q = BroadcastQueue::new(64);
        for i in 0..100_000u32 {
            q.push(i, 8, Some(u64::from(i % 1000)), (i % 7 == 0) as u8 ^ 1);
            assert!(q.len() <= 64);
            if i % 3 == 0 {
                drain(&mut q, 64, 4);
            }
        }
        assert!(q.len() <= 64 && q.len() > 32, "{}", q.len());
        assert!(q.dropped() > 0);
        // Internal bookkeeping stays bounded too.
        assert!(q.slots.len() <= 64 + 1);
        let entries: usize = q.buckets.iter().flatten().map(|b| b.len()).sum();
        assert!(entries <= 64 + q.max.max(64) + 1, "{entries}");
        q.clear();
        assert!(q.is_empty());
    }
}

//! What a member holds of the shared directory, for its owner's collections
//! ([`crate::Directory::collect`]): every name and triple id in the member's state.
//!
//! What it must never do: miss an id. The member is taken apart field by field below, so
//! a field added to [`Member`] does not compile until it is listed here.

use rand::Rng;

use super::{Member, Probe, Relay};
use crate::directory::Marks;

impl<R: Rng> Member<R> {
    /// Marks every name and triple id this member holds: its table (live entries, and the
    /// failed members awaiting their reap), probe, relays, suspicions, reconnect memory,
    /// broadcast queues, and the outputs and events not yet polled.
    pub fn mark_ids(&self, marks: &mut Marks) {
        let Member {
            cfg: _,
            dir: _,
            rng: _,
            me,
            my_info,
            incarnation: _,
            status: _,
            table,
            counts: _,
            awareness: _,
            round: _,
            probe,
            next_probe_at: _,
            next_gossip_at: _,
            next_push_pull_at: _,
            next_reconnect_at: _,
            next_repair_at: _,
            seq: _,
            relays,
            suspicions,
            suspicion_next: _,
            failed,
            reaped,
            seeds: _,
            seeded: _,
            learned_by_push_pull: _,
            // Addresses: no id.
            join_queue: _,
            catch_up_ms: _,
            // Hashes of names and triples: no id.
            digest: _,
            // Addresses: no id.
            watermarks: _,
            // Stream exchanges in flight hold addresses, no id.
            streams: _,
            next_stream_id: _,
            broadcasts,
            user_broadcasts,
            outputs,
            events,
            coordinate: _,
            user_state: _,
            // Hashed (origin, seq) pairs: no id.
            gossip_seq: _,
            gossip_seen: _,
            stats: _,
        } = self;
        marks.node(*me);
        marks.info(*my_info);
        for (node, e) in table.iter().enumerate() {
            if e.present() {
                marks.node(node as u32);
                marks.info(e.info);
            }
        }
        if let Some(Probe { target, info, .. }) = probe {
            marks.node(*target);
            marks.info(*info);
        }
        for Relay { source, .. } in relays {
            marks.info(*source);
        }
        for (node, s) in suspicions {
            marks.node(*node);
            s.mark_ids(marks);
        }
        for &(node, _) in failed {
            marks.node(node);
        }
        for &(info, _) in reaped {
            marks.info(info);
        }
        broadcasts.for_each(|item| marks.item(item));
        user_broadcasts.for_each(|item| marks.item(item));
        outputs.iter().for_each(|o| marks.output(o));
        events.iter().for_each(|e| marks.event(e));
    }
}

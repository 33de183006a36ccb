//! The configuration in force: the latest configuration entry in the log (appended, not
//! necessarily committed, thesis §4.1), or the snapshot's.

use rand::RngCore;
use ringleader_wire::msg::raft::{ConfState, EntryKind};

use super::Raft;
use crate::Role;
use crate::membership::{Membership, decode_conf};
use crate::progress::Progress;

impl<R: RngCore> Raft<R> {
    pub(super) fn set_members(&mut self, members: Membership, conf_index: u64) {
        self.members = members;
        self.conf_index = conf_index;
        if self.role == Role::Leader {
            let next = self.log.last_index();
            let all = self.members.members();
            self.progress.retain(|id, _| all.contains(id));
            for id in all {
                if id != self.id {
                    self.progress.entry(id).or_insert_with(|| {
                        let mut p = Progress::new(next.max(1));
                        p.recent_active = true;
                        p
                    });
                }
            }
            self.dirty.extend(self.progress.keys().copied());
        }
    }

    pub(super) fn conf_at(&self, index: u64) -> ConfState {
        let mut i = index.min(self.log.last_index());
        while i > self.log.offset() {
            if let Some(e) = self.log.get(i)
                && e.kind == EntryKind::Config
                && let Ok(c) = decode_conf(&e.payload)
            {
                return c;
            }
            i -= 1;
        }
        self.conf_at_offset.clone()
    }

    fn latest_conf_index(&self) -> u64 {
        self.log
            .iter()
            .rev()
            .find(|e| e.kind == EntryKind::Config && decode_conf(&e.payload).is_ok())
            .map_or(0, |e| e.index)
    }

    pub(super) fn recompute_conf(&mut self) {
        let idx = self.latest_conf_index();
        let conf = if idx == 0 {
            self.conf_at_offset.clone()
        } else {
            self.conf_at(idx)
        };
        if conf != *self.members.conf() || idx != self.conf_index {
            self.set_members(Membership::new(conf), idx);
        }
    }
}

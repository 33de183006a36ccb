//! The follower side: appends checked against the log and acknowledged once durable,
//! snapshots received in chunks.

use rand::RngCore;
use ringleader_wire::msg::Message;
use ringleader_wire::msg::raft::{
    AppendEntries, AppendResponse, EntryKind, InstallSnapshot, SnapshotResponse,
};

use super::{Incoming, Raft};
use crate::{RaftError, Snapshot};

impl<R: RngCore> Raft<R> {
    pub(super) fn handle_append(&mut self, a: AppendEntries) -> Result<(), RaftError> {
        let from = a.header.from;
        let committed = self.log.committed();
        let (mut prev, mut prev_term, mut entries) = (a.prev_log_index, a.prev_log_term, a.entries);
        if prev < committed {
            // Entries up to our commit index match by Log Matching: skip them.
            entries.retain(|e| e.index > committed);
            prev = committed;
            prev_term = self.log.term(committed).unwrap_or(0);
            if let Some(first) = entries.first()
                && first.index != committed + 1
            {
                entries.clear();
            }
        }
        let touches_conf =
            entries.iter().any(|e| e.kind == EntryKind::Config) || self.conf_index > prev;
        let n = entries.len();
        let conflict = self.log.first_conflict(&entries);
        match self.log.maybe_append(prev, prev_term, entries)? {
            Some(last_new) => {
                if let Some(at) = conflict {
                    self.drop_acks_from(at);
                }
                self.log.commit_to(a.leader_commit.min(last_new));
                if touches_conf && n > 0 {
                    self.recompute_conf();
                }
                // The acknowledgement promises durability: it waits for the write.
                self.msgs_persisted
                    .push(Message::AppendResponse(AppendResponse {
                        header: self.hdr(from, self.term),
                        success: true,
                        match_index: last_new,
                        reject_hint_index: 0,
                        reject_hint_term: 0,
                    }));
            }
            None => {
                let (hint_index, hint_term) = self
                    .log
                    .find_conflict_by_term(prev.min(self.log.last_index()), prev_term);
                self.msgs.push(Message::AppendResponse(AppendResponse {
                    header: self.hdr(from, self.term),
                    success: false,
                    match_index: prev,
                    reject_hint_index: hint_index,
                    reject_hint_term: hint_term,
                }));
            }
        }
        Ok(())
    }

    /// Acknowledgements still waiting for the write that name entries from `index` on,
    /// which were just replaced: they would promise what the disk will not hold.
    fn drop_acks_from(&mut self, index: u64) {
        self.msgs_persisted.retain(
            |m| !matches!(m, Message::AppendResponse(r) if r.success && r.match_index >= index),
        );
    }

    pub(super) fn handle_install_snapshot(&mut self, s: InstallSnapshot) {
        let from = s.header.from;
        let total = s.total_bytes;
        let respond = |raft: &mut Self, success: bool, next_offset: u64, persisted: bool| {
            let m = Message::SnapshotResponse(SnapshotResponse {
                header: raft.hdr(from, raft.term),
                next_offset,
                success,
            });
            if persisted {
                raft.msgs_persisted.push(m)
            } else {
                raft.msgs.push(m)
            }
        };
        if s.last_included_index <= self.log.committed() {
            self.incoming = None;
            respond(self, true, total, true);
            return;
        }
        if total > self.cfg.snapshot_bytes_max || s.data.len() as u64 > total {
            respond(self, false, 0, false);
            return;
        }
        if s.offset == 0 {
            self.incoming = Some(Incoming {
                index: s.last_included_index,
                term: s.last_included_term,
                total,
                conf: s.conf.clone(),
                buf: Vec::new(),
            });
        }
        let Some(inc) = self.incoming.as_mut() else {
            respond(self, false, 0, false);
            return;
        };
        if inc.index != s.last_included_index
            || inc.term != s.last_included_term
            || inc.total != total
        {
            respond(self, false, 0, false);
            return;
        }
        if s.offset != inc.buf.len() as u64 || inc.buf.len() as u64 + s.data.len() as u64 > total {
            let have = inc.buf.len() as u64;
            respond(self, false, have, false);
            return;
        }
        inc.buf.extend_from_slice(&s.data);
        if (inc.buf.len() as u64) < total {
            let have = inc.buf.len() as u64;
            respond(self, true, have, false);
            return;
        }
        let Some(inc) = self.incoming.take() else {
            return;
        };
        let snap = Snapshot {
            index: inc.index,
            term: inc.term,
            conf: inc.conf,
            data: inc.buf.into(),
        };
        if self.log.term(snap.index) != Some(snap.term) {
            self.drop_acks_from(snap.index.saturating_add(1)); // the log goes with them
        }
        self.log.restore(snap.index, snap.term);
        self.conf_at_offset = snap.conf.clone();
        self.snapshot = Some(snap.clone());
        self.snapshot_to_install = Some(snap);
        self.conf_index = 0;
        self.recompute_conf();
        respond(self, true, total, true);
    }
}

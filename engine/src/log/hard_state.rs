//! Raft hard state (term, vote, commit) in a file of two checksummed slots written
//! alternately: a save overwrites the older slot and `fdatasync`s, so a crash during a save
//! leaves the previous state intact in the other slot.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use super::LogError;
use super::file::{IoMode, LogFile};
use super::format::{self, HARD_STATE_SLOT_BYTES, HardState, SlotContent};

/// Name of the hard-state file inside the log directory.
pub const HARD_STATE_FILE: &str = "hardstate";

/// The open hard-state file.
#[derive(Debug)]
pub struct HardStateFile {
    path: PathBuf,
    file: LogFile,
    seq: Cell<u64>,
    current: Cell<HardState>,
    busy: Cell<bool>,
}

/// What loading the hard state found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardStateLoad {
    /// The state in force.
    pub state: HardState,
    /// A slot whose bytes did not verify and were ignored (a save torn by a crash).
    pub slot_discarded: Option<u8>,
}

impl HardStateFile {
    /// Opens (or creates) the file and loads the newest valid slot.
    pub async fn open(
        dir: &Path,
        mode: IoMode,
    ) -> Result<(HardStateFile, HardStateLoad), LogError> {
        let path = dir.join(HARD_STATE_FILE);
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| LogError::Io {
                op,
                path: p,
                source,
            }
        };
        let slots_bytes = 2 * HARD_STATE_SLOT_BYTES as u64;
        let existed = path.exists();
        let size = if existed {
            std::fs::metadata(&path).map_err(io("stat", &path))?.len()
        } else {
            0
        };
        if size < slots_bytes {
            // Written with std before glommio opens it: glommio probes whether the device
            // supports polled O_DIRECT reads by reading the first page of the first DmaFile
            // it opens, and an empty or sparse file answers that probe without reaching the
            // device, wrongly enabling the poll ring (every later read then fails with
            // EOPNOTSUPP). The hard-state file is the first file the log opens.
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io("create", &path))?;
            if size == 0 {
                f.write_all(&vec![0u8; slots_bytes as usize])
                    .map_err(io("write", &path))?;
            } else {
                f.set_len(slots_bytes).map_err(io("extend", &path))?;
            }
            f.sync_all().map_err(io("fsync", &path))?;
            super::file::sync_dir(dir)
                .await
                .map_err(io("fsync dir", dir))?;
        }
        let file = LogFile::open(&path, mode, false)
            .await
            .map_err(io("open", &path))?;
        let mut bytes = Vec::with_capacity(slots_bytes as usize);
        if let Err(e) = file.read_at(0, slots_bytes as usize, &mut bytes).await {
            // The read error is the one to report; a failing close adds nothing to it.
            let _ = file.close().await;
            return Err(io("read", &path)(e));
        }
        bytes.resize(slots_bytes as usize, 0);
        let a = format::decode_hard_state(&bytes[..HARD_STATE_SLOT_BYTES]);
        let b = format::decode_hard_state(&bytes[HARD_STATE_SLOT_BYTES..]);
        use SlotContent::{Corrupt, Empty, Valid};
        let (seq, state, slot_discarded) = match (a, b) {
            (Empty, Empty) => (0, HardState::default(), None),
            (Valid { seq, state }, Empty) | (Empty, Valid { seq, state }) => (seq, state, None),
            (Valid { seq: sa, state: a }, Valid { seq: sb, state: b }) => {
                if sa >= sb {
                    (sa, a, None)
                } else {
                    (sb, b, None)
                }
            }
            (Valid { seq, state }, Corrupt) => (seq, state, Some(1)),
            (Corrupt, Valid { seq, state }) => (seq, state, Some(0)),
            // The only slot ever written was torn while being saved: that save was never
            // acknowledged, so the state before it (the default) is in force.
            (Corrupt, Empty) => (0, HardState::default(), Some(0)),
            (Empty, Corrupt) => (0, HardState::default(), Some(1)),
            (Corrupt, Corrupt) => {
                let _ = file.close().await;
                return Err(LogError::HardStateCorrupt { path });
            }
        };
        let hs = HardStateFile {
            path,
            file,
            seq: Cell::new(seq),
            current: Cell::new(state),
            busy: Cell::new(false),
        };
        Ok((
            hs,
            HardStateLoad {
                state,
                slot_discarded,
            },
        ))
    }

    /// Closes the file. A save cannot be running: it borrows the file.
    pub async fn close(self) -> Result<(), LogError> {
        let HardStateFile { path, file, .. } = self;
        file.close().await.map_err(|source| LogError::Io {
            op: "close",
            path,
            source,
        })
    }

    /// The state last saved (or loaded).
    pub fn get(&self) -> HardState {
        self.current.get()
    }

    /// Saves `state` durably: resolves once the slot write and its `fdatasync` completed.
    /// One save at a time; the term may never go backwards.
    pub async fn save(&self, state: HardState) -> Result<(), LogError> {
        if self.busy.replace(true) {
            return Err(LogError::Busy);
        }
        let result = self.save_inner(state).await;
        self.busy.set(false);
        result
    }

    async fn save_inner(&self, state: HardState) -> Result<(), LogError> {
        let old = self.current.get();
        if state.term < old.term {
            return Err(LogError::HardStateRegression {
                old_term: old.term,
                new_term: state.term,
            });
        }
        let seq = self.seq.get() + 1;
        let mut page = vec![0u8; HARD_STATE_SLOT_BYTES];
        format::encode_hard_state(seq, &state, &mut page);
        let slot = seq % 2;
        let at = slot * HARD_STATE_SLOT_BYTES as u64;
        let path = &self.path;
        self.file
            .write_all_at(&page, at)
            .await
            .map_err(|source| LogError::Io {
                op: "write",
                path: path.clone(),
                source,
            })?;
        self.file.fdatasync().await.map_err(|source| LogError::Io {
            op: "fdatasync",
            path: path.clone(),
            source,
        })?;
        self.seq.set(seq);
        self.current.set(state);
        Ok(())
    }
}

//! Snapshot files: one per group, holding the latest snapshot the group stored (its own or
//! one received from a leader), replaced atomically (write a temporary file, `fsync`,
//! rename over the old one, `fsync` the directory).
//!
//! Format (little-endian): `b"RLSNAP01" | u64 group | u64 index | u64 term | u32 conf_len |
//! conf (raft::encode_conf) | u64 data_len | data | u32 crc32c of everything before`.
//!
//! Files are written with blocking calls, never on a shard's executor: the shard hands
//! [`save`] to its executor's blocking-thread pool and carries on. Loading (at start, before
//! the shard serves) treats the file as untrusted: a file that fails its checksum
//! or does not decode is refused with the path and the reason.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::raft::{Snapshot, decode_conf, encode_conf};

const MAGIC: &[u8; 8] = b"RLSNAP01";

/// A snapshot file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is damaged.
    #[error("snapshot file {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// The path of `group`'s snapshot file in `dir`.
pub fn path(dir: &Path, group: u64) -> PathBuf {
    dir.join(format!("group-{group:010}.snap"))
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotFileError {
    let path = path.to_path_buf();
    move |source| SnapshotFileError::Io { op, path, source }
}

/// Encodes a snapshot file's bytes.
pub fn encode(group: u64, s: &Snapshot) -> Vec<u8> {
    let conf = encode_conf(&s.conf);
    let mut out = Vec::with_capacity(48 + conf.len() + s.data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&s.index.to_le_bytes());
    out.extend_from_slice(&s.term.to_le_bytes());
    out.extend_from_slice(&(conf.len() as u32).to_le_bytes());
    out.extend_from_slice(&conf);
    out.extend_from_slice(&(s.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&s.data);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a snapshot file's bytes: (group, snapshot).
pub fn decode(b: &[u8]) -> Result<(u64, Snapshot), &'static str> {
    let (body, crc) = b
        .split_last_chunk::<4>()
        .ok_or("shorter than its checksum")?;
    if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
        return Err("checksum mismatch");
    }
    let rest = body.strip_prefix(MAGIC).ok_or("bad magic")?;
    let take = |r: &mut &[u8], n: usize| -> Result<Vec<u8>, &'static str> {
        if r.len() < n {
            return Err("ends early");
        }
        let (h, t) = r.split_at(n);
        *r = t;
        Ok(h.to_vec())
    };
    let u64_of = |v: Vec<u8>| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&v);
        u64::from_le_bytes(a)
    };
    let mut r = rest;
    let group = u64_of(take(&mut r, 8)?);
    let index = u64_of(take(&mut r, 8)?);
    let term = u64_of(take(&mut r, 8)?);
    let conf_len = {
        let v = take(&mut r, 4)?;
        u32::from_le_bytes([v[0], v[1], v[2], v[3]]) as usize
    };
    let conf = decode_conf(&take(&mut r, conf_len)?).map_err(|_| "membership does not decode")?;
    let data_len = u64_of(take(&mut r, 8)?);
    if data_len != r.len() as u64 {
        return Err("data length disagrees with the file");
    }
    Ok((
        group,
        Snapshot {
            index,
            term,
            conf,
            data: Arc::from(r),
        },
    ))
}

/// Stores `s` as `group`'s snapshot in `dir`, durably, replacing the previous one.
pub fn save(dir: &Path, group: u64, s: &Snapshot) -> Result<(), SnapshotFileError> {
    let final_path = path(dir, group);
    let tmp = final_path.with_extension("tmp");
    let bytes = encode(group, s);
    {
        let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(&bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
    }
    fs::rename(&tmp, &final_path).map_err(io("rename", &tmp))?;
    let d = fs::File::open(dir).map_err(io("open dir", dir))?;
    d.sync_all().map_err(io("fsync dir", dir))?;
    Ok(())
}

/// Loads `group`'s snapshot from `dir`, if it has one. Removes a leftover temporary file
/// (a save cut short by a crash: the previous snapshot is still in force).
pub fn load(dir: &Path, group: u64) -> Result<Option<Snapshot>, SnapshotFileError> {
    let p = path(dir, group);
    let tmp = p.with_extension("tmp");
    if tmp.exists() {
        fs::remove_file(&tmp).map_err(io("remove", &tmp))?;
    }
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &p)(e)),
    };
    let (g, s) = decode(&bytes).map_err(|reason| SnapshotFileError::Corrupt {
        path: p.clone(),
        reason,
    })?;
    if g != group {
        return Err(SnapshotFileError::Corrupt {
            path: p,
            reason: "the file names another group",
        });
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringleader_wire::msg::raft::ConfState;

    #[test]
    fn files_round_trip_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), 3).unwrap().is_none());
        let s = Snapshot {
            index: 10,
            term: 2,
            conf: ConfState {
                voters: vec![1, 2, 3],
                learners: vec![],
                voters_outgoing: vec![],
            },
            data: Arc::from(&b"state"[..]),
        };
        save(dir.path(), 3, &s).unwrap();
        assert_eq!(load(dir.path(), 3).unwrap(), Some(s.clone()));
        let bytes = encode(3, &s);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b).is_err(), "flip at {i}");
        }
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err());
        }
        fs::write(path(dir.path(), 4), &bytes).unwrap();
        assert!(
            load(dir.path(), 4).is_err(),
            "a file under another group's name"
        );
    }
}

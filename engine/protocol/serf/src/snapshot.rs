//! The Serf snapshot: a small CRC'd file with the clocks, the known members and the keyring,
//! written periodically and at leave, read at restart so a member rejoins whom it knew and
//! does not replay old events.
//!
//! Format (little-endian): magic "RLSN", version u8, three u64 clocks, u32 member count, per
//! member `name_len u8, name, addr_len u8, addr (text)`, u8 key count, keys (32 bytes each),
//! then CRC32C of everything before it. Written to a temporary file, fsynced, renamed over
//! the old one, and the directory fsynced: a crash leaves the old or the new file, whole.
//! A file that fails any check is reported with the offset and ignored, never trusted.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

const MAGIC: &[u8; 4] = b"RLSN";
const VERSION: u8 = 1;
/// Most members a snapshot holds (a bound on what a corrupt count can make us read).
pub const MEMBERS_MAX: usize = 1 << 20;

/// What a snapshot keeps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotState {
    /// Member Lamport clock.
    pub member_clock: u64,
    /// Event Lamport clock.
    pub event_clock: u64,
    /// Query Lamport clock.
    pub query_clock: u64,
    /// Known live members: (name, address).
    pub members: Vec<(String, SocketAddr)>,
    /// The keyring, primary first (empty without encryption).
    pub keys: Vec<[u8; 32]>,
}

/// Why a snapshot could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing failed.
    #[error("snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The file is not a valid snapshot; it is ignored.
    #[error("corrupt snapshot at byte {offset}: {reason}")]
    Corrupt {
        /// Where the problem was found.
        offset: usize,
        /// What was wrong.
        reason: &'static str,
    },
}

/// Encodes a snapshot.
pub fn encode(s: &SnapshotState) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + s.members.len() * 40);
    b.extend_from_slice(MAGIC);
    b.push(VERSION);
    for c in [s.member_clock, s.event_clock, s.query_clock] {
        b.extend_from_slice(&c.to_le_bytes());
    }
    let members: Vec<_> = s
        .members
        .iter()
        .filter(|(n, _)| n.len() <= 255)
        .take(MEMBERS_MAX)
        .collect();
    b.extend_from_slice(&(members.len() as u32).to_le_bytes());
    for (name, addr) in members {
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        let a = addr.to_string();
        b.push(a.len() as u8);
        b.extend_from_slice(a.as_bytes());
    }
    let keys = &s.keys[..s.keys.len().min(255)];
    b.push(keys.len() as u8);
    for k in keys {
        b.extend_from_slice(k);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or(SnapshotError::Corrupt {
                offset: self.at,
                reason: "truncated",
            })?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut w = [0u8; 8];
        w.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(w))
    }
}

/// Decodes and checks a snapshot.
pub fn decode(b: &[u8]) -> Result<SnapshotState, SnapshotError> {
    if b.len() < 4 + 1 + 24 + 4 + 1 + 4 {
        return Err(SnapshotError::Corrupt {
            offset: b.len(),
            reason: "too short",
        });
    }
    let (body, crc) = b.split_at(b.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32c::crc32c(body) != stored {
        return Err(SnapshotError::Corrupt {
            offset: body.len(),
            reason: "checksum mismatch",
        });
    }
    let mut r = Reader { b: body, at: 0 };
    if r.take(4)? != MAGIC {
        return Err(SnapshotError::Corrupt {
            offset: 0,
            reason: "bad magic",
        });
    }
    if r.u8()? != VERSION {
        return Err(SnapshotError::Corrupt {
            offset: 4,
            reason: "unsupported version",
        });
    }
    let (member_clock, event_clock, query_clock) = (r.u64()?, r.u64()?, r.u64()?);
    let count_at = r.at;
    let mut w = [0u8; 4];
    w.copy_from_slice(r.take(4)?);
    let count = u32::from_le_bytes(w) as usize;
    if count > MEMBERS_MAX {
        return Err(SnapshotError::Corrupt {
            offset: count_at,
            reason: "member count over the bound",
        });
    }
    let mut members = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        let at = r.at;
        let n = r.u8()? as usize;
        let name = std::str::from_utf8(r.take(n)?).map_err(|_| SnapshotError::Corrupt {
            offset: at,
            reason: "name is not UTF-8",
        })?;
        let at = r.at;
        let n = r.u8()? as usize;
        let addr = std::str::from_utf8(r.take(n)?)
            .ok()
            .and_then(|a| a.parse().ok())
            .ok_or(SnapshotError::Corrupt {
                offset: at,
                reason: "bad address",
            })?;
        members.push((name.to_owned(), addr));
    }
    let nkeys = r.u8()? as usize;
    let mut keys = Vec::with_capacity(nkeys);
    for _ in 0..nkeys {
        let mut k = [0u8; 32];
        k.copy_from_slice(r.take(32)?);
        keys.push(k);
    }
    if r.at != body.len() {
        return Err(SnapshotError::Corrupt {
            offset: r.at,
            reason: "trailing bytes",
        });
    }
    Ok(SnapshotState {
        member_clock,
        event_clock,
        query_clock,
        members,
        keys,
    })
}

/// Writes `s` to `path` atomically (temporary file, fsync, rename, directory fsync). A
/// snapshot that holds keys is created with mode 0600 (readable by its owner only).
pub fn write(path: &Path, s: &SnapshotState) -> Result<(), SnapshotError> {
    write_bytes(path, &encode(s), !s.keys.is_empty())
}

/// Writes `bytes` to `path` atomically: a temporary file beside it (mode 0600 if `secret`,
/// else 0644 before the umask), fsynced, renamed over `path`, then the directory fsynced,
/// so a crash leaves the old file or the new one, whole.
pub fn write_bytes(path: &Path, bytes: &[u8], secret: bool) -> Result<(), SnapshotError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&tmp)?;
        // An existing temporary file keeps its mode: set it explicitly.
        if secret {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Reads the snapshot at `path`: `Ok(None)` if there is none, an error if it is corrupt (the
/// caller reports it and starts without it).
pub fn read(path: &Path) -> Result<Option<SnapshotState>, SnapshotError> {
    match std::fs::read(path) {
        Ok(b) => decode(&b).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SnapshotState {
        SnapshotState {
            member_clock: 7,
            event_clock: 42,
            query_clock: 3,
            members: vec![
                ("a".into(), "127.0.0.1:7946".parse().expect("addr")),
                ("b".into(), "[::1]:7000".parse().expect("addr")),
            ],
            keys: vec![[1; 32], [2; 32]],
        }
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("serf.snapshot");
        assert!(read(&p).expect("no file is fine").is_none());
        write(&p, &sample()).expect("writes");
        assert_eq!(read(&p).expect("reads"), Some(sample()));
        // It holds keys: owner only.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn every_corruption_is_reported_never_trusted() {
        let good = encode(&sample());
        for i in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = good.clone();
                b[i] ^= bit;
                assert!(
                    matches!(decode(&b), Err(SnapshotError::Corrupt { .. })),
                    "flip at {i} accepted"
                );
            }
        }
        for cut in 0..good.len() {
            assert!(
                decode(&good[..cut]).is_err(),
                "truncation at {cut} accepted"
            );
        }
    }
}

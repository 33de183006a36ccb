//! A small replicated key-value state machine, the reference workload of the Raft core.
//!
//! Commands (put, delete, compare-and-set) travel as Raft entry payloads and are applied in
//! log order on every replica; reads never enter the log. Three read modes, like Consul's:
//!
//! - [`ReadMode::Consistent`]: ReadIndex — the leader confirms its leadership with a
//!   heartbeat round, then the read is served once the replica applied up to the read index.
//!   Linearizable with no clock assumption.
//! - [`ReadMode::Default`]: leader lease — served by the leader without a round while its
//!   lease holds. Linearizable only if no clock runs slower than the bound in
//!   `raft::Config::lease_clock_drift_permille` (a follower that heard from the leader
//!   refuses votes for one election timeout, measured on its own clock).
//! - [`ReadMode::Stale`]: any replica answers from whatever it has applied; may lag.
//!
//! Decoding never panics: a malformed command is rejected with a [`KvError`] on every
//! replica alike, so replicas stay identical.

use std::collections::HashMap;

/// Longest key accepted.
pub const KEY_BYTES_MAX: usize = 4096;
/// Longest value accepted.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadMode {
    /// ReadIndex: linearizable.
    Consistent,
    /// Leader lease: linearizable under the bounded clock drift assumption.
    Default,
    /// Any replica, possibly stale.
    Stale,
}

/// A write command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Sets `key` to `value`.
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Removes `key`.
    Delete {
        /// Key.
        key: Vec<u8>,
    },
    /// Sets `key` to `new` if its value is `expected` (`None` = absent).
    Cas {
        /// Key.
        key: Vec<u8>,
        /// The value required.
        expected: Option<Vec<u8>>,
        /// The value set on success.
        new: Vec<u8>,
    },
}

/// The result of applying a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Put or delete done.
    Done,
    /// Compare-and-set outcome.
    Cas(bool),
}

/// Errors decoding a command or a snapshot.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    /// The bytes ended early.
    #[error("truncated")]
    Truncated,
    /// Unknown command tag.
    #[error("unknown command tag {0}")]
    BadTag(u8),
    /// A key or value exceeds its bound.
    #[error("field of {0} bytes exceeds its bound")]
    TooLarge(u64),
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn take_bytes<'a>(buf: &mut &'a [u8], max: usize) -> Result<&'a [u8], KvError> {
    let (len, rest) = buf.split_first_chunk::<4>().ok_or(KvError::Truncated)?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > max {
        return Err(KvError::TooLarge(len as u64));
    }
    if rest.len() < len {
        return Err(KvError::Truncated);
    }
    let (b, rest) = rest.split_at(len);
    *buf = rest;
    Ok(b)
}

fn take_u8(buf: &mut &[u8]) -> Result<u8, KvError> {
    let (&b, rest) = buf.split_first().ok_or(KvError::Truncated)?;
    *buf = rest;
    Ok(b)
}

impl Command {
    /// Encodes the command as an entry payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Command::Put { key, value } => {
                out.push(1);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Command::Delete { key } => {
                out.push(2);
                put_bytes(&mut out, key);
            }
            Command::Cas { key, expected, new } => {
                out.push(3);
                put_bytes(&mut out, key);
                match expected {
                    Some(e) => {
                        out.push(1);
                        put_bytes(&mut out, e);
                    }
                    None => out.push(0),
                }
                put_bytes(&mut out, new);
            }
        }
        out
    }

    /// Decodes an entry payload (untrusted: never panics).
    pub fn decode(mut buf: &[u8]) -> Result<Command, KvError> {
        let buf = &mut buf;
        let tag = take_u8(buf)?;
        let cmd = match tag {
            1 => Command::Put {
                key: take_bytes(buf, KEY_BYTES_MAX)?.to_vec(),
                value: take_bytes(buf, VALUE_BYTES_MAX)?.to_vec(),
            },
            2 => Command::Delete {
                key: take_bytes(buf, KEY_BYTES_MAX)?.to_vec(),
            },
            3 => {
                let key = take_bytes(buf, KEY_BYTES_MAX)?.to_vec();
                let expected = match take_u8(buf)? {
                    0 => None,
                    _ => Some(take_bytes(buf, VALUE_BYTES_MAX)?.to_vec()),
                };
                Command::Cas {
                    key,
                    expected,
                    new: take_bytes(buf, VALUE_BYTES_MAX)?.to_vec(),
                }
            }
            t => return Err(KvError::BadTag(t)),
        };
        Ok(cmd)
    }
}

/// The replicated map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kv {
    /// Point lookups only (SipHash with a per-process key: clients choose the keys);
    /// [`Kv::snapshot`] sorts, so snapshots of equal states are equal bytes.
    map: HashMap<Vec<u8>, Vec<u8>>,
    applied_index: u64,
}

impl Kv {
    /// An empty map.
    pub fn new() -> Kv {
        Kv::default()
    }

    /// Highest log index applied.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Marks `index` applied without a command (no-op and config entries).
    pub fn skip(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    /// Applies the command at log `index`.
    pub fn apply(&mut self, index: u64, payload: &[u8]) -> Result<Output, KvError> {
        self.applied_index = self.applied_index.max(index);
        Ok(self.apply_command(Command::decode(payload)?))
    }

    /// Applies a decoded command.
    pub fn apply_command(&mut self, cmd: Command) -> Output {
        match cmd {
            Command::Put { key, value } => {
                self.map.insert(key, value);
                Output::Done
            }
            Command::Delete { key } => {
                self.map.remove(&key);
                Output::Done
            }
            Command::Cas { key, expected, new } => {
                if self.map.get(&key) == expected.as_ref() {
                    self.map.insert(key, new);
                    Output::Cas(true)
                } else {
                    Output::Cas(false)
                }
            }
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Serializes the whole map (with its applied index).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.applied_index.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        let mut entries: Vec<(&Vec<u8>, &Vec<u8>)> = self.map.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in entries {
            put_bytes(&mut out, k);
            put_bytes(&mut out, v);
        }
        out
    }

    /// Rebuilds a map from [`Kv::snapshot`]'s bytes (untrusted: never panics).
    pub fn restore(bytes: &[u8]) -> Result<Kv, KvError> {
        let (idx, rest) = bytes.split_first_chunk::<8>().ok_or(KvError::Truncated)?;
        let (n, mut rest) = rest.split_first_chunk::<8>().ok_or(KvError::Truncated)?;
        let n = u64::from_le_bytes(*n);
        let mut map = HashMap::new();
        for _ in 0..n {
            let k = take_bytes(&mut rest, KEY_BYTES_MAX)?.to_vec();
            let v = take_bytes(&mut rest, VALUE_BYTES_MAX)?.to_vec();
            map.insert(k, v);
        }
        Ok(Kv {
            map,
            applied_index: u64::from_le_bytes(*idx),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_apply_and_round_trip() {
        let mut kv = Kv::new();
        let cmds = [
            Command::Put {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
            },
            Command::Cas {
                key: b"a".to_vec(),
                expected: Some(b"2".to_vec()),
                new: b"3".to_vec(),
            },
            Command::Cas {
                key: b"a".to_vec(),
                expected: Some(b"1".to_vec()),
                new: b"3".to_vec(),
            },
            Command::Cas {
                key: b"b".to_vec(),
                expected: None,
                new: b"9".to_vec(),
            },
            Command::Delete { key: b"a".to_vec() },
        ];
        let outs: Vec<Output> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| kv.apply(i as u64 + 1, &c.encode()).unwrap())
            .collect();
        assert_eq!(
            outs,
            [
                Output::Done,
                Output::Cas(false),
                Output::Cas(true),
                Output::Cas(true),
                Output::Done
            ]
        );
        assert_eq!(kv.get(b"a"), None);
        assert_eq!(kv.get(b"b"), Some(&b"9"[..]));
        assert_eq!(Kv::restore(&kv.snapshot()).unwrap(), kv);
        assert_eq!(kv.applied_index(), 5);
    }

    #[test]
    fn garbage_is_rejected_not_panicking() {
        assert_eq!(Command::decode(&[]), Err(KvError::Truncated));
        assert_eq!(Command::decode(&[9]), Err(KvError::BadTag(9)));
        assert_eq!(
            Command::decode(&[1, 255, 255, 255, 255]),
            Err(KvError::TooLarge(u32::MAX as u64))
        );
        assert_eq!(Kv::restore(&[0; 15]), Err(KvError::Truncated));
        let mut one_key_missing = vec![0u8; 8];
        one_key_missing.extend_from_slice(&1u64.to_le_bytes());
        one_key_missing.push(1);
        assert_eq!(Kv::restore(&one_key_missing), Err(KvError::Truncated));
        assert_eq!(Kv::restore(&[0; 16]), Ok(Kv::new()));
        let mut kv = Kv::new();
        assert!(kv.apply(1, &[2, 5, 0, 0, 0]).is_err());
        assert_eq!(kv.applied_index(), 1);
    }
}

/// A read of the key-value store: the value of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Get {
    /// The key.
    pub key: Vec<u8>,
}

impl crate::driver::StateMachine for Kv {
    type Output = Result<Output, KvError>;
    type Read = Get;
    type ReadOutput = Option<Vec<u8>>;

    fn apply(
        &mut self,
        entries: &[ringleader_wire::msg::raft::Entry],
        out: &mut Vec<Self::Output>,
    ) {
        for e in entries {
            out.push(Kv::apply(self, e.index, &e.payload));
        }
    }

    fn read(&self, query: &Get) -> Option<Vec<u8>> {
        self.get(&query.key).map(<[u8]>::to_vec)
    }

    fn snapshot(&self) -> Vec<u8> {
        Kv::snapshot(self)
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        *self = Kv::restore(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}

//! The directory: interned member names and (name, address, metadata) triples, the exact
//! wire size of every compact [`Item`], and conversion to and from `ringleader_wire`.
//!
//! One directory may be shared (`Rc<RefCell<_>>`) by every member of a shard or a
//! simulation, so that ten thousand members that each know ten thousand others keep one
//! copy of each name. It holds at most `names_max` names and `infos_max` triples; past
//! that, interning fails with an error and the message that needed it is dropped. It never
//! panics on input from the network.
//!
//! Names and triples that nothing holds any more are reclaimed by a mark-and-sweep that
//! the owner of the directory runs ([`Directory::collect`], when
//! [`Directory::collect_due`]): every holder (each member sharing the directory, and the
//! owner's own in-flight items) marks the ids it holds, and the rest are freed, so a
//! cluster with unbounded churn runs in bounded memory. A freed id is handed out again
//! only to a later intern: it must never be freed while anything still holds it, or a
//! stale id would resolve to another member. Hence the owner must mark *everything*
//! (`Member::mark_ids` names every field of a member that holds an id).
//!
//! Interning is here; [`Directory::item_size`] and its kin (the size oracle) are in `size`,
//! conversion to and from the wire types in `convert`, reclamation in `collect`.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;

use ringleader_wire::Encoder;
pub(crate) use ringleader_wire::msg::swim::{mix64, stable_hash};

use crate::hash::FxHashMap;
use crate::item::{InfoId, NodeId};

mod collect;
mod convert;
#[cfg(test)]
mod reclaim_tests;
mod size;
#[cfg(test)]
mod tests;

pub use collect::{COLLECT_INTERVAL_MS_DEFAULT, CollectStats, Footprint, Marks};
pub use convert::PROTOCOL;

/// A directory shared by the members of one shard or simulation.
pub type SharedDirectory = Rc<RefCell<Directory>>;

/// Largest member name in bytes.
pub const NAME_BYTES_MAX: usize = 255;

/// Why a name, triple or message could not be interned or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The directory holds `names_max` names already.
    #[error("directory full: {0} names")]
    TooManyNames(usize),
    /// The directory holds `infos_max` (name, address, metadata) triples already.
    #[error("directory full: {0} member infos")]
    TooManyInfos(usize),
    /// A name is longer than [`NAME_BYTES_MAX`] or empty.
    #[error("member name of {0} bytes (1..=255 allowed)")]
    BadName(usize),
    /// Metadata over the configured limit.
    #[error("member metadata of {len} bytes over the limit of {max}")]
    MetaTooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A push-pull state with more members than allowed.
    #[error("push-pull state of {count} members over the limit of {max}")]
    TooManyMembers {
        /// Members in the state.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The layer above's push-pull state is over its limit.
    #[error("push-pull user state of {len} bytes over the limit of {max}")]
    UserStateTooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A push-pull's digest or differing buckets over the finest digest kept.
    #[error("push-pull digest of {len} words over the limit of {max}")]
    DigestTooLarge {
        /// Words received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An address that is neither 4 nor 16 bytes.
    #[error("member address of {0} bytes (4 or 16 allowed)")]
    BadAddress(usize),
    /// The message is a push-pull (stream only) where a datagram was expected.
    #[error("push-pull is a stream message")]
    StreamOnly,
    /// A validated archive could not be copied out (a value the owned type refuses).
    #[error("message could not be copied out of its archive")]
    Undecodable,
}

/// One interned (name, address, metadata) triple.
#[derive(Debug, Clone)]
pub struct Info {
    /// The member's name (`NodeId::MAX` in a free slot, which [`Directory::info`] never
    /// hands out to a holder that marks what it holds).
    pub node: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its metadata (tags).
    pub meta: Box<[u8]>,
    alive_size: u32,
    /// The member's name in [`Directory::name_bytes`], copied here so that encoding a
    /// push-pull state reads the triple and then the packed names, and nothing else.
    name: NameAt,
    /// [`stable_hash`] of the whole triple: the same on every member, every process and
    /// every build, so that anti-entropy digests of two members' tables can be compared.
    hash: u64,
}

/// Where a name lies in [`Directory::name_bytes`].
#[derive(Debug, Clone, Copy)]
struct NameAt {
    at: u32,
    len: u32,
}

impl Info {
    /// Whether this is the triple with `addr` and `meta` (its name is known already).
    fn is(&self, addr: SocketAddr, meta: &[u8]) -> bool {
        self.addr == addr && *self.meta == *meta
    }
}

impl NameAt {
    fn of(self, name_bytes: &str) -> &str {
        // Always a whole name pushed in `intern_name`: in bounds, on char boundaries.
        name_bytes
            .get(self.at as usize..(self.at + self.len) as usize)
            .unwrap_or_default()
    }
}

#[derive(Debug)]
struct NodeEntry {
    name: NameAt,
    infos: Vec<InfoId>,
    /// [`stable_hash`] of the name: its low bits are the member's anti-entropy bucket.
    hash: u64,
}

/// Names up to this many bytes are kept in the names table's bucket itself.
const NAME_INLINE: usize = 22;

/// A name as the names table keys it: a short one inline, so that a lookup compares the
/// bytes in the bucket it probes and follows no pointer (a push-pull of ten thousand
/// members is ten thousand lookups, each a cache miss per pointer followed).
#[derive(Clone)]
enum NameKey {
    Inline { len: u8, bytes: [u8; NAME_INLINE] },
    Heap(Box<str>),
}

impl NameKey {
    fn new(name: &str) -> NameKey {
        match u8::try_from(name.len()) {
            Ok(len) if name.len() <= NAME_INLINE => {
                let mut bytes = [0u8; NAME_INLINE];
                bytes[..name.len()].copy_from_slice(name.as_bytes());
                NameKey::Inline { len, bytes }
            }
            _ => NameKey::Heap(name.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // The bytes are a whole `&str` copied in `new`: always valid UTF-8 (an empty
            // string, which no interned name is, would only ever fail to match).
            NameKey::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or("")
            }
            NameKey::Heap(s) => s,
        }
    }
}

impl Borrow<str> for NameKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Hash for NameKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that lookups by `&str` find it.
        self.as_str().hash(state);
    }
}

impl PartialEq for NameKey {
    fn eq(&self, other: &NameKey) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for NameKey {}

/// What the names table holds for a name: its id and its latest triple, so that the
/// common case of interning a triple already known (every entry of a periodic push-pull)
/// is one probe of the table and one look at the triple.
#[derive(Debug, Clone, Copy)]
struct NameSlot {
    node: NodeId,
    /// [`NO_INFO`] until the name has a triple.
    latest: InfoId,
}

const NO_INFO: InfoId = InfoId::MAX;

/// The `node` of a free triple slot.
const FREE: NodeId = NodeId::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SizeKey {
    kind: u8,
    a: u32,
    b: u32,
    c: u32,
}

/// Interned names and triples, and the size oracle.
pub struct Directory {
    names: FxHashMap<NameKey, NameSlot>,
    /// Every live name, back to back (repacked by each collection): encoding ten thousand
    /// members' names reads one packed run of bytes instead of ten thousand allocations.
    name_bytes: String,
    /// Name slots by id; a free slot has an empty name (no interned name is empty).
    nodes: Vec<NodeEntry>,
    /// Triple slots by id; a free slot has `node == FREE`.
    infos: Vec<Info>,
    /// Free name and triple slots, lowest id last (taken first, so ids stay dense).
    free_nodes: Vec<NodeId>,
    free_infos: Vec<InfoId>,
    names_live: usize,
    infos_live: usize,
    collect: collect::State,
    sizes: FxHashMap<SizeKey, u32>,
    enc: Encoder,
    names_max: usize,
    infos_max: usize,
    meta_bytes_max: usize,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("names", &self.names_live)
            .field("infos", &self.infos_live)
            .finish()
    }
}

impl Directory {
    /// An empty directory for up to `names_max` names and `infos_max` triples, accepting
    /// metadata up to `meta_bytes_max`.
    pub fn new(names_max: usize, infos_max: usize, meta_bytes_max: usize) -> Directory {
        Directory {
            names: FxHashMap::default(),
            name_bytes: String::new(),
            nodes: Vec::new(),
            infos: Vec::new(),
            free_nodes: Vec::new(),
            free_infos: Vec::new(),
            names_live: 0,
            infos_live: 0,
            collect: collect::State::new(names_max, infos_max),
            sizes: FxHashMap::default(),
            enc: Encoder::new(b""),
            names_max,
            infos_max,
            meta_bytes_max,
        }
    }

    /// A shared directory with bounds fit for `members` members (4 triples each).
    pub fn shared(members: usize, meta_bytes_max: usize) -> SharedDirectory {
        let names = members.max(16);
        Rc::new(RefCell::new(Directory::new(
            names,
            names.saturating_mul(4),
            meta_bytes_max,
        )))
    }

    /// Names interned (and not reclaimed).
    pub fn names_len(&self) -> usize {
        self.names_live
    }

    /// Triples interned (and not reclaimed).
    pub fn infos_len(&self) -> usize {
        self.infos_live
    }

    /// The id of `name`, interning it.
    pub fn intern_name(&mut self, name: &str) -> Result<NodeId, DirectoryError> {
        if let Some(slot) = self.names.get(name) {
            return Ok(slot.node);
        }
        if name.is_empty() || name.len() > NAME_BYTES_MAX {
            return Err(DirectoryError::BadName(name.len()));
        }
        if self.names_live >= self.names_max {
            self.collect.refused();
            return Err(DirectoryError::TooManyNames(self.names_max));
        }
        let id = match self.free_nodes.pop() {
            Some(id) => id,
            None => {
                self.nodes.push(NodeEntry {
                    name: NameAt { at: 0, len: 0 },
                    infos: Vec::new(),
                    hash: 0,
                });
                (self.nodes.len() - 1) as NodeId
            }
        };
        self.names_live += 1;
        self.names.insert(
            NameKey::new(name),
            NameSlot {
                node: id,
                latest: NO_INFO,
            },
        );
        let at = NameAt {
            at: self.name_bytes.len() as u32,
            len: name.len() as u32,
        };
        self.name_bytes.push_str(name);
        let entry = &mut self.nodes[id as usize];
        debug_assert!(
            entry.name.len == 0 && entry.infos.is_empty(),
            "slot {id} is free"
        );
        entry.name = at;
        entry.hash = stable_hash(name.as_bytes(), 0);
        Ok(id)
    }

    /// The id of `name`, if interned.
    pub fn lookup(&self, name: &str) -> Option<NodeId> {
        self.names.get(name).map(|s| s.node)
    }

    /// The name of `node`. `node` must be held (marked at every collection since it was
    /// interned): a freed id is a bug of its holder, caught here in debug builds.
    pub fn name(&self, node: NodeId) -> &str {
        let at = self.nodes[node as usize].name;
        debug_assert!(at.len > 0, "name id {node} was reclaimed while still held");
        self.name_at(at)
    }

    fn name_at(&self, n: NameAt) -> &str {
        n.of(&self.name_bytes)
    }

    /// The id of the triple (`node`, `addr`, `meta`), interning it.
    pub fn intern_info(
        &mut self,
        node: NodeId,
        addr: SocketAddr,
        meta: &[u8],
    ) -> Result<InfoId, DirectoryError> {
        if meta.len() > self.meta_bytes_max {
            return Err(DirectoryError::MetaTooLarge {
                len: meta.len(),
                max: self.meta_bytes_max,
            });
        }
        let entry = &self.nodes[node as usize];
        let known = entry
            .infos
            .iter()
            .copied()
            .find(|&i| self.infos[i as usize].is(addr, meta));
        if let Some(i) = known {
            self.set_latest(node, i);
            return Ok(i);
        }
        debug_assert!(
            entry.name.len > 0,
            "name id {node} was reclaimed while still held"
        );
        if self.infos_live >= self.infos_max {
            self.collect.refused();
            return Err(DirectoryError::TooManyInfos(self.infos_max));
        }
        let name = entry.name;
        let name_len = name.len;
        let hash = info_hash(entry.hash, addr, meta);
        let alive_size = self.measure(SizeKey {
            kind: 6,
            a: name_len,
            b: meta.len() as u32,
            c: v6(addr),
        });
        let info = Info {
            node,
            addr,
            meta: meta.into(),
            alive_size,
            name,
            hash,
        };
        let id = match self.free_infos.pop() {
            Some(id) => {
                debug_assert_eq!(self.infos[id as usize].node, FREE, "slot {id} is free");
                self.infos[id as usize] = info;
                id
            }
            None => {
                self.infos.push(info);
                (self.infos.len() - 1) as InfoId
            }
        };
        self.infos_live += 1;
        self.nodes[node as usize].infos.push(id);
        self.set_latest(node, id);
        Ok(id)
    }

    /// Remembers `info` as the triple `node` was last interned with.
    fn set_latest(&mut self, node: NodeId, info: InfoId) {
        let name = self.nodes[node as usize].name.of(&self.name_bytes);
        if let Some(slot) = self.names.get_mut(name) {
            slot.latest = info;
        }
    }

    /// Interns a name and a triple at once. A triple equal to the one the name was last
    /// interned with (the common case: a member's address and metadata rarely change)
    /// costs one probe of the names table and one look at the triple.
    pub fn intern(
        &mut self,
        name: &str,
        addr: SocketAddr,
        meta: &[u8],
    ) -> Result<InfoId, DirectoryError> {
        let node = match self.names.get(name) {
            Some(&NameSlot { node, latest }) => {
                if self
                    .infos
                    .get(latest as usize)
                    .is_some_and(|i| i.is(addr, meta))
                {
                    return Ok(latest);
                }
                node
            }
            None => self.intern_name(name)?,
        };
        self.intern_info(node, addr, meta)
    }

    /// The stable hash of `node`'s name (the same in every process): its low bits are
    /// the member's anti-entropy bucket.
    pub fn node_hash(&self, node: NodeId) -> u64 {
        self.nodes[node as usize].hash
    }

    /// The stable hash of the triple `info` (name, address, metadata).
    pub fn info_hash(&self, info: InfoId) -> u64 {
        self.infos[info as usize].hash
    }

    /// The triple `info`. `info` must be held (see [`Directory::name`]).
    pub fn info(&self, info: InfoId) -> &Info {
        let i = &self.infos[info as usize];
        debug_assert!(
            i.node != FREE,
            "triple id {info} was reclaimed while still held"
        );
        i
    }
}

fn info_hash(name_hash: u64, addr: SocketAddr, meta: &[u8]) -> u64 {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(a) => a.octets(),
    };
    let h = stable_hash(&ip, name_hash);
    let h = stable_hash(&addr.port().to_le_bytes(), h);
    stable_hash(meta, h)
}

fn v6(addr: SocketAddr) -> u32 {
    u32::from(addr.is_ipv6())
}

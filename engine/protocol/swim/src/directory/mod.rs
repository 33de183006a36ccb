//! The directory: interned member names and (name, address, metadata) triples, the exact
//! wire size of every compact [`Item`], and conversion to and from `ringleader_wire`.
//!
//! One directory may be shared (`Rc<RefCell<_>>`) by every member of a shard or a
//! simulation, so that ten thousand members that each know ten thousand others keep one
//! copy of each name. It only grows, up to `names_max` names and `infos_max` triples; past
//! that, interning fails with an error and the message that needed it is dropped. It never
//! panics on input from the network.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::rc::Rc;

use ringleader_wire::frame::{HEADER_LEN, SEAL_PREFIX_LEN};
use ringleader_wire::keyring::TAG_LEN;
use ringleader_wire::msg::borrowed::{PushNodeStateRef, PushPullRef};
use ringleader_wire::msg::swim as wire;
use ringleader_wire::{EncodeError, Encoder, Keyring, Message, MessageRef};

use super::hash::FxHashMap;
use super::item::{InfoId, Item, NodeId, NodeState, PushPullState};

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
    /// The member's name.
    pub node: NodeId,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its metadata (tags).
    pub meta: Box<[u8]>,
    alive_size: u32,
    /// The member's name in [`Directory::name_bytes`], copied here so that encoding a
    /// push-pull state reads the triple and then the packed names, and nothing else.
    name: NameAt,
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
    /// Every interned name, back to back (names are never removed): encoding ten thousand
    /// members' names reads one packed run of bytes instead of ten thousand allocations.
    name_bytes: String,
    nodes: Vec<NodeEntry>,
    infos: Vec<Info>,
    sizes: FxHashMap<SizeKey, u32>,
    enc: Encoder,
    names_max: usize,
    infos_max: usize,
    meta_bytes_max: usize,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("names", &self.nodes.len())
            .field("infos", &self.infos.len())
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

    /// Names interned.
    pub fn names_len(&self) -> usize {
        self.nodes.len()
    }

    /// The id of `name`, interning it.
    pub fn intern_name(&mut self, name: &str) -> Result<NodeId, DirectoryError> {
        if let Some(slot) = self.names.get(name) {
            return Ok(slot.node);
        }
        if name.is_empty() || name.len() > NAME_BYTES_MAX {
            return Err(DirectoryError::BadName(name.len()));
        }
        if self.nodes.len() >= self.names_max {
            return Err(DirectoryError::TooManyNames(self.names_max));
        }
        let id = self.nodes.len() as NodeId;
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
        self.nodes.push(NodeEntry {
            name: at,
            infos: Vec::new(),
        });
        Ok(id)
    }

    /// The id of `name`, if interned.
    pub fn lookup(&self, name: &str) -> Option<NodeId> {
        self.names.get(name).map(|s| s.node)
    }

    /// The name of `node`.
    pub fn name(&self, node: NodeId) -> &str {
        self.name_at(self.nodes[node as usize].name)
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
        if self.infos.len() >= self.infos_max {
            return Err(DirectoryError::TooManyInfos(self.infos_max));
        }
        let id = self.infos.len() as InfoId;
        let name = entry.name;
        let name_len = name.len;
        let alive_size = self.measure(SizeKey {
            kind: 6,
            a: name_len,
            b: meta.len() as u32,
            c: v6(addr),
        });
        self.infos.push(Info {
            node,
            addr,
            meta: meta.into(),
            alive_size,
            name,
        });
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

    /// The triple `info`.
    pub fn info(&self, info: InfoId) -> &Info {
        &self.infos[info as usize]
    }

    /// Bytes of a datagram frame that carries no item yet.
    pub fn frame_overhead(encrypted: bool) -> usize {
        HEADER_LEN
            + if encrypted {
                SEAL_PREFIX_LEN + TAG_LEN
            } else {
                0
            }
    }

    /// Exact bytes `item` adds to a batch frame (item header, archive, padding), as
    /// `ringleader_wire`'s encoder lays it out.
    pub fn item_size(&mut self, item: &Item) -> usize {
        let key = match item {
            Item::Alive { info, .. } => return self.infos[*info as usize].alive_size as usize,
            Item::Ping { target, source, .. } => {
                let s = &self.infos[*source as usize];
                SizeKey {
                    kind: 1,
                    a: self.name_len(*target),
                    b: self.name_len(s.node),
                    c: v6(s.addr),
                }
            }
            Item::IndirectPing { target, source, .. } => {
                let (t, s) = (&self.infos[*target as usize], &self.infos[*source as usize]);
                let c = v6(t.addr) | (v6(s.addr) << 1);
                SizeKey {
                    kind: 2,
                    a: self.name_len(t.node),
                    b: self.name_len(s.node),
                    c,
                }
            }
            Item::Ack { coordinate, .. } => SizeKey {
                kind: 3,
                a: 0,
                b: 0,
                c: u32::from(coordinate.is_some()),
            },
            Item::Nack { .. } => SizeKey {
                kind: 4,
                a: 0,
                b: 0,
                c: 0,
            },
            Item::Suspect { node, from, .. } => SizeKey {
                kind: 5,
                a: self.name_len(*node),
                b: self.name_len(*from),
                c: 0,
            },
            Item::Dead { node, from, .. } => SizeKey {
                kind: 7,
                a: self.name_len(*node),
                b: self.name_len(*from),
                c: 0,
            },
            Item::Other(msg) => return self.message_size(msg),
        };
        self.measure(key) as usize
    }

    /// Exact bytes `msg` adds to a batch frame (0 if it cannot be encoded at all).
    pub fn message_size(&mut self, msg: &Message) -> usize {
        let mut batch = self.enc.batch(None, usize::MAX / 2);
        let before = batch.remaining();
        match batch.push_message(msg) {
            Ok(true) => before - batch.remaining(),
            _ => 0,
        }
    }

    fn name_len(&self, node: NodeId) -> u32 {
        self.nodes[node as usize].name.len
    }

    /// The size of an item of this shape, measured once with the real encoder.
    fn measure(&mut self, key: SizeKey) -> u32 {
        if let Some(&s) = self.sizes.get(&key) {
            return s;
        }
        let name = |n: u32| "x".repeat(n as usize);
        let addr = |v6: bool| -> SocketAddr {
            if v6 {
                "[::1]:1"
                    .parse()
                    .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
            } else {
                ([0, 0, 0, 0], 0).into()
            }
        };
        let msg: Message = match key.kind {
            1 => wire::Ping {
                seq_no: 0,
                target: name(key.a),
                source: name(key.b),
                source_addr: addr(key.c & 1 != 0),
            }
            .into(),
            2 => wire::IndirectPing {
                seq_no: 0,
                target: name(key.a),
                target_addr: addr(key.c & 1 != 0),
                nack: false,
                source: name(key.b),
                source_addr: addr(key.c & 2 != 0),
            }
            .into(),
            3 => wire::Ack {
                seq_no: 0,
                coordinate: (key.c != 0).then_some(wire::Coordinate {
                    vec: [0.0; 8],
                    error: 0.0,
                    adjustment: 0.0,
                    height: 0.0,
                }),
            }
            .into(),
            4 => wire::Nack { seq_no: 0 }.into(),
            5 => wire::Suspect {
                incarnation: 0,
                node: name(key.a),
                from: name(key.b),
            }
            .into(),
            6 => wire::Alive {
                incarnation: 0,
                node: name(key.a),
                addr: addr(key.c != 0),
                meta: vec![0; key.b as usize],
                protocol: [0; 3],
            }
            .into(),
            _ => wire::Dead {
                incarnation: 0,
                node: name(key.a),
                from: name(key.b),
            }
            .into(),
        };
        let size = self.message_size(&msg) as u32;
        self.sizes.insert(key, size);
        size
    }

    /// The wire form of `item`.
    pub fn to_wire(&self, item: &Item) -> Message {
        let name = |n: NodeId| self.name(n).to_string();
        match item {
            Item::Ping {
                seq,
                target,
                source,
            } => {
                let s = &self.infos[*source as usize];
                wire::Ping {
                    seq_no: *seq,
                    target: name(*target),
                    source: name(s.node),
                    source_addr: s.addr,
                }
                .into()
            }
            Item::IndirectPing {
                seq,
                target,
                nack,
                source,
            } => {
                let (t, s) = (&self.infos[*target as usize], &self.infos[*source as usize]);
                wire::IndirectPing {
                    seq_no: *seq,
                    target: name(t.node),
                    target_addr: t.addr,
                    nack: *nack,
                    source: name(s.node),
                    source_addr: s.addr,
                }
                .into()
            }
            Item::Ack { seq, coordinate } => wire::Ack {
                seq_no: *seq,
                coordinate: coordinate.as_deref().cloned(),
            }
            .into(),
            Item::Nack { seq } => wire::Nack { seq_no: *seq }.into(),
            Item::Suspect {
                incarnation,
                node,
                from,
            } => wire::Suspect {
                incarnation: *incarnation,
                node: name(*node),
                from: name(*from),
            }
            .into(),
            Item::Alive { incarnation, info } => {
                let i = &self.infos[*info as usize];
                wire::Alive {
                    incarnation: *incarnation,
                    node: name(i.node),
                    addr: i.addr,
                    meta: i.meta.to_vec(),
                    protocol: PROTOCOL,
                }
                .into()
            }
            Item::Dead {
                incarnation,
                node,
                from,
            } => wire::Dead {
                incarnation: *incarnation,
                node: name(*node),
                from: name(*from),
            }
            .into(),
            Item::Other(msg) => (**msg).clone(),
        }
    }

    /// The compact form of a message received in a datagram (interning what it names).
    pub fn from_wire(&mut self, msg: Message) -> Result<Item, DirectoryError> {
        Ok(match msg {
            Message::Ping(p) => {
                let target = self.intern_name(&p.target)?;
                let source = self.intern(&p.source, p.source_addr, &[])?;
                Item::Ping {
                    seq: p.seq_no,
                    target,
                    source,
                }
            }
            Message::IndirectPing(p) => {
                let target = self.intern(&p.target, p.target_addr, &[])?;
                let source = self.intern(&p.source, p.source_addr, &[])?;
                Item::IndirectPing {
                    seq: p.seq_no,
                    target,
                    nack: p.nack,
                    source,
                }
            }
            Message::Ack(a) => Item::Ack {
                seq: a.seq_no,
                coordinate: a.coordinate.map(Rc::new),
            },
            Message::Nack(n) => Item::Nack { seq: n.seq_no },
            Message::Suspect(s) => Item::Suspect {
                incarnation: s.incarnation,
                node: self.intern_name(&s.node)?,
                from: self.intern_name(&s.from)?,
            },
            Message::Alive(a) => Item::Alive {
                incarnation: a.incarnation,
                info: self.intern(&a.node, a.addr, &a.meta)?,
            },
            Message::Dead(d) => Item::Dead {
                incarnation: d.incarnation,
                node: self.intern_name(&d.node)?,
                from: self.intern_name(&d.from)?,
            },
            Message::PushPull(_) => return Err(DirectoryError::StreamOnly),
            other => Item::Other(Rc::new(other)),
        })
    }

    /// Like [`Directory::from_wire`], straight from a validated archive in the receive
    /// buffer: names and addresses are looked up in place, and nothing is allocated unless
    /// the message names something new. Kinds without a compact form (acks with a
    /// coordinate, the layer above's messages) are copied out.
    pub fn from_wire_ref(&mut self, msg: &MessageRef<'_>) -> Result<Item, DirectoryError> {
        Ok(match msg {
            MessageRef::Ping(p) => {
                let target = self.intern_name(p.target.as_str())?;
                let source = self.intern(p.source.as_str(), p.source_addr.as_socket_addr(), &[])?;
                Item::Ping {
                    seq: p.seq_no.to_native(),
                    target,
                    source,
                }
            }
            MessageRef::IndirectPing(p) => {
                let target = self.intern(p.target.as_str(), p.target_addr.as_socket_addr(), &[])?;
                let source = self.intern(p.source.as_str(), p.source_addr.as_socket_addr(), &[])?;
                Item::IndirectPing {
                    seq: p.seq_no.to_native(),
                    target,
                    nack: p.nack,
                    source,
                }
            }
            MessageRef::Ack(a) if a.coordinate.is_none() => Item::Ack {
                seq: a.seq_no.to_native(),
                coordinate: None,
            },
            MessageRef::Nack(n) => Item::Nack {
                seq: n.seq_no.to_native(),
            },
            MessageRef::Suspect(s) => Item::Suspect {
                incarnation: s.incarnation.to_native(),
                node: self.intern_name(s.node.as_str())?,
                from: self.intern_name(s.from.as_str())?,
            },
            MessageRef::Alive(a) => Item::Alive {
                incarnation: a.incarnation.to_native(),
                info: self.intern(a.node.as_str(), a.addr.as_socket_addr(), a.meta.as_slice())?,
            },
            MessageRef::Dead(d) => Item::Dead {
                incarnation: d.incarnation.to_native(),
                node: self.intern_name(d.node.as_str())?,
                from: self.intern_name(d.from.as_str())?,
            },
            MessageRef::PushPull(_) => return Err(DirectoryError::StreamOnly),
            other => {
                let owned = other.to_owned().map_err(|_| DirectoryError::Undecodable)?;
                return self.from_wire(owned);
            }
        })
    }

    /// Encodes push-pull state `s` as a frame with `enc`, borrowing names and metadata
    /// from the directory (no per-member allocation; the bytes are those of the owned
    /// [`wire::PushPull`]).
    pub fn encode_push_pull<'e>(
        &self,
        s: &PushPullState,
        enc: &'e mut Encoder,
        keyring: Option<&Keyring>,
        limit: usize,
    ) -> Result<&'e [u8], EncodeError> {
        let states: Vec<PushNodeStateRef<'_>> = s
            .states
            .iter()
            .map(|n| {
                let i = &self.infos[n.info as usize];
                PushNodeStateRef {
                    name: self.name_at(i.name),
                    addr: i.addr,
                    meta: &i.meta,
                    incarnation: n.incarnation,
                    state: n.state,
                    protocol: PROTOCOL,
                }
            })
            .collect();
        let source = self.name_at(self.infos[s.source as usize].name);
        enc.encode_push_pull(
            &PushPullRef {
                join: s.join,
                source,
                states: &states,
                user_state: &s.user_state,
            },
            keyring,
            limit,
        )
    }

    /// The compact form of a received push-pull state, read in place from its archive,
    /// refusing one over the bounds before interning anything. `source_addr` is where the
    /// stream came from.
    pub fn push_pull_from_wire(
        &mut self,
        p: &wire::ArchivedPushPull,
        source_addr: SocketAddr,
        members_max: usize,
        user_state_bytes_max: usize,
    ) -> Result<PushPullState, DirectoryError> {
        if p.states.len() > members_max {
            return Err(DirectoryError::TooManyMembers {
                count: p.states.len(),
                max: members_max,
            });
        }
        if p.user_state.len() > user_state_bytes_max {
            return Err(DirectoryError::UserStateTooLarge {
                len: p.user_state.len(),
                max: user_state_bytes_max,
            });
        }
        let source_name = p.source.as_str();
        let mut states = Vec::with_capacity(p.states.len());
        let mut source = None;
        for s in p.states.iter() {
            let name = s.name.as_str();
            let info = self.intern(name, s.addr.as_socket_addr(), s.meta.as_slice())?;
            if name == source_name {
                source = Some(info);
            }
            states.push(NodeState {
                info,
                incarnation: s.incarnation.to_native(),
                state: s.state.to_native(),
            });
        }
        let source = match source {
            Some(s) => s,
            None => self.intern(source_name, source_addr, &[])?,
        };
        Ok(PushPullState {
            join: p.join,
            source,
            states,
            user_state: p.user_state.to_vec(),
        })
    }
}

/// Protocol versions carried in alive messages: [min, max, current].
pub const PROTOCOL: [u8; 3] = [1, 1, 1];

fn v6(addr: SocketAddr) -> u32 {
    u32::from(addr.is_ipv6())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringleader_wire::Decoder;

    fn dir() -> Directory {
        Directory::new(1000, 4000, 512)
    }

    fn with_archived<R>(p: &wire::PushPull, f: impl FnOnce(&wire::ArchivedPushPull) -> R) -> R {
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(p).expect("archives");
        f(rkyv::access::<wire::ArchivedPushPull, rkyv::rancor::Error>(&bytes).expect("valid"))
    }

    /// A push-pull state encoded from the directory's tables decodes, in place, into the
    /// same compact state in another directory.
    #[test]
    fn push_pull_round_trips_through_the_borrowed_encoding() {
        let mut a = dir();
        let addr = |i: u8| SocketAddr::from(([127, 0, 0, i], 7946));
        let states: Vec<NodeState> = (1..=40u8)
            .map(|i| NodeState {
                info: a
                    .intern(
                        &format!("member-{i}"),
                        addr(i),
                        &vec![i; usize::from(i % 4)],
                    )
                    .expect("interns"),
                incarnation: u64::from(i) * 7,
                state: [
                    wire::MemberState::Alive,
                    wire::MemberState::Suspect,
                    wire::MemberState::Dead,
                    wire::MemberState::Left,
                ][usize::from(i % 4)],
            })
            .collect();
        let sent = PushPullState {
            join: true,
            source: states[3].info,
            states,
            user_state: b"clocks".to_vec(),
        };
        let mut enc = Encoder::new(b"");
        let mut frame = a
            .encode_push_pull(&sent, &mut enc, None, 1 << 20)
            .expect("encodes")
            .to_vec();
        let mut b = dir();
        let dec = Decoder::new(b"", 1 << 20);
        let f = dec.decode(&mut frame, None).expect("decodes");
        let Some(Ok(MessageRef::PushPull(p))) = f.messages().next() else {
            panic!("a push-pull message");
        };
        let got = b
            .push_pull_from_wire(p, addr(99), 100, 100)
            .expect("within bounds");
        assert_eq!(got.join, sent.join);
        assert_eq!(got.user_state, sent.user_state);
        assert_eq!(b.name(b.info(got.source).node), "member-4");
        assert_eq!(got.states.len(), sent.states.len());
        for (g, s) in got.states.iter().zip(&sent.states) {
            let (gi, si) = (b.info(g.info), a.info(s.info));
            assert_eq!(b.name(gi.node), a.name(si.node));
            assert_eq!((gi.addr, &gi.meta), (si.addr, &si.meta));
            assert_eq!((g.incarnation, g.state), (s.incarnation, s.state));
        }
    }

    /// Sizes from the oracle add up to exactly the frame the real encoder builds, and the
    /// frame decodes back to the same items.
    #[test]
    fn sizes_are_exact_and_items_round_trip() {
        let mut d = dir();
        let a4: SocketAddr = "10.0.0.1:7946".parse().unwrap_or_else(|_| unreachable!());
        let a6: SocketAddr = "[fe80::1]:7946".parse().unwrap_or_else(|_| unreachable!());
        let mut items = Vec::new();
        for (i, name) in [
            "a",
            "node-with-a-longer-name",
            "exactly8",
            "n9-chars!",
            &"z".repeat(255),
        ]
        .iter()
        .enumerate()
        {
            let addr = if i % 2 == 0 { a4 } else { a6 };
            let meta = vec![7u8; i * 37 % 513];
            let info = d
                .intern(name, addr, &meta)
                .unwrap_or_else(|e| panic!("{e}"));
            let node = d.info(info).node;
            items.push(Item::Alive {
                incarnation: i as u64 * 1_000_003,
                info,
            });
            items.push(Item::Suspect {
                incarnation: 3,
                node,
                from: 0,
            });
            items.push(Item::Dead {
                incarnation: u64::MAX,
                node: 0,
                from: node,
            });
            items.push(Item::Ping {
                seq: 9,
                target: node,
                source: info,
            });
            items.push(Item::IndirectPing {
                seq: 1,
                target: info,
                nack: true,
                source: 0,
            });
        }
        items.push(Item::Nack { seq: 4 });
        items.push(Item::Ack {
            seq: 5,
            coordinate: None,
        });
        let c = wire::Coordinate {
            vec: [0.5; 8],
            error: 1.5,
            adjustment: -0.1,
            height: 1e-5,
        };
        items.push(Item::Ack {
            seq: 6,
            coordinate: Some(Rc::new(c)),
        });
        items.push(Item::Other(Rc::new(
            wire::UserMsg {
                payload: vec![1, 2, 3],
            }
            .into(),
        )));
        for item in &items {
            let predicted = Directory::frame_overhead(false) + d.item_size(item);
            let wire_msg = d.to_wire(item);
            let mut enc = Encoder::new(b"");
            let mut batch = enc.batch(None, 1 << 20);
            assert_eq!(batch.push_message(&wire_msg), Ok(true));
            let frame = batch.finish().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(frame.len(), predicted, "{item:?}");
            let mut buf = rkyv::util::AlignedVec::<16>::new();
            buf.extend_from_slice(frame);
            let dec = Decoder::new(b"", 1 << 20);
            let f = dec.decode(&mut buf, None).unwrap_or_else(|e| panic!("{e}"));
            let got = f
                .messages()
                .next()
                .unwrap_or_else(|| panic!("empty"))
                .unwrap_or_else(|e| panic!("{e}"));
            let owned = got.to_owned().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(owned, wire_msg);
            // Back to the compact form and out again: the same message (a ping's source
            // interns without metadata, so compare wire forms).
            let back = d.from_wire(owned).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(d.to_wire(&back), wire_msg);
            // Straight from the archive: the same compact item.
            let in_place = d.from_wire_ref(&got).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(in_place, back, "{item:?}");
        }
    }

    #[test]
    fn bounds_are_enforced() {
        let mut d = Directory::new(2, 3, 4);
        let a: SocketAddr = ([1, 2, 3, 4], 5).into();
        assert!(d.intern("a", a, &[1, 2, 3, 4]).is_ok());
        assert_eq!(
            d.intern("a", a, &[0; 5]),
            Err(DirectoryError::MetaTooLarge { len: 5, max: 4 })
        );
        assert!(d.intern("b", a, &[]).is_ok());
        assert_eq!(d.intern_name("c"), Err(DirectoryError::TooManyNames(2)));
        assert_eq!(d.intern_name(""), Err(DirectoryError::BadName(0)));
        assert!(d.intern("a", a, &[1]).is_ok());
        assert_eq!(d.intern("a", a, &[2]), Err(DirectoryError::TooManyInfos(3)));
        // Same triple again: no new entry.
        assert!(d.intern("a", a, &[1]).is_ok());
        let p = wire::PushPull {
            join: false,
            source: "a".into(),
            states: Vec::new(),
            user_state: vec![0; 9],
        };
        assert_eq!(
            with_archived(&p, |ap| d.push_pull_from_wire(ap, a, 10, 8)),
            Err(DirectoryError::UserStateTooLarge { len: 9, max: 8 })
        );
        let st = wire::PushNodeState {
            name: "a".into(),
            addr: a,
            meta: vec![],
            incarnation: 1,
            state: wire::MemberState::Alive,
            protocol: PROTOCOL,
        };
        let p = wire::PushPull {
            join: false,
            source: "a".into(),
            states: vec![st; 11],
            user_state: vec![],
        };
        assert_eq!(
            with_archived(&p, |ap| d.push_pull_from_wire(ap, a, 10, 8)),
            Err(DirectoryError::TooManyMembers { count: 11, max: 10 })
        );
    }

    /// Names inline and on the heap, triples that change and change back: every path of
    /// `intern` (the latest triple, an older one, a new one) gives the one id per triple.
    #[test]
    fn interning_finds_latest_and_older_triples_for_short_and_long_names() {
        let mut d = dir();
        let a: SocketAddr = ([127, 0, 0, 1], 7946).into();
        let b: SocketAddr = ([127, 0, 0, 2], 7946).into();
        for len in [
            1,
            NAME_INLINE - 1,
            NAME_INLINE,
            NAME_INLINE + 1,
            NAME_BYTES_MAX,
        ] {
            let name: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            // A name that differs only in its last byte must not match.
            let mut twin = name.clone();
            twin.pop();
            twin.push('#');
            let first = d.intern(&name, a, b"x").expect("interns");
            assert_eq!(d.intern(&name, a, b"x"), Ok(first), "latest, len {len}");
            let other = d.intern(&name, b, b"x").expect("interns");
            assert_ne!(other, first);
            assert_eq!(d.intern(&name, a, b"x"), Ok(first), "older, len {len}");
            let meta = d.intern(&name, a, b"y").expect("interns");
            assert!(meta != first && meta != other);
            let node = d.lookup(&name).expect("interned");
            assert_eq!(d.name(node), name);
            assert_eq!(d.info(first).node, node);
            let t = d.intern(&twin, a, b"x").expect("interns");
            assert_ne!(d.info(t).node, node, "len {len}");
            assert_eq!(d.intern_name(&name), Ok(node));
        }
        assert_eq!(d.lookup("nobody"), None);
    }
}

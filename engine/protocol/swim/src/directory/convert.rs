//! Conversion between the compact [`Item`]s and the wire messages of
//! `ringleader_wire`, through the directory's interned names and triples; and the
//! push-pull state, encoded straight from the directory's tables.

use std::net::SocketAddr;
use std::rc::Rc;

use ringleader_wire::msg::borrowed::{PushNodeStateRef, PushPullRef};
use ringleader_wire::msg::swim as wire;
use ringleader_wire::{EncodeError, Encoder, Keyring, Message, MessageRef};

use super::{Directory, DirectoryError};
use crate::item::{Item, NodeId, NodeState, PushPullState};

impl Directory {
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
                    target: *target,
                    source: name(s.node),
                    source_addr: s.addr.into(),
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
                    target_addr: t.addr.into(),
                    nack: *nack,
                    source: name(s.node),
                    source_addr: s.addr.into(),
                }
                .into()
            }
            Item::Ack { seq, coordinate } => wire::Ack {
                seq_no: *seq,
                coordinate: coordinate.as_deref().cloned().map(Box::new),
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
                    addr: i.addr.into(),
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
                let source = self.intern(&p.source, addr(&p.source_addr)?, &[])?;
                Item::Ping {
                    seq: p.seq_no,
                    target: p.target,
                    source,
                }
            }
            Message::IndirectPing(p) => {
                let target = self.intern(&p.target, addr(&p.target_addr)?, &[])?;
                let source = self.intern(&p.source, addr(&p.source_addr)?, &[])?;
                Item::IndirectPing {
                    seq: p.seq_no,
                    target,
                    nack: p.nack,
                    source,
                }
            }
            Message::Ack(a) => Item::Ack {
                seq: a.seq_no,
                coordinate: a.coordinate.map(|c| Rc::new(*c)),
            },
            Message::Nack(n) => Item::Nack { seq: n.seq_no },
            Message::Suspect(s) => Item::Suspect {
                incarnation: s.incarnation,
                node: self.intern_name(&s.node)?,
                from: self.intern_name(&s.from)?,
            },
            Message::Alive(a) => Item::Alive {
                incarnation: a.incarnation,
                info: self.intern(&a.node, addr(&a.addr)?, &a.meta)?,
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
                let source = self.intern(p.source.as_str(), addr_ref(&p.source_addr)?, &[])?;
                Item::Ping {
                    seq: p.seq_no.to_native(),
                    target: p.target.to_native(),
                    source,
                }
            }
            MessageRef::IndirectPing(p) => {
                let target = self.intern(p.target.as_str(), addr_ref(&p.target_addr)?, &[])?;
                let source = self.intern(p.source.as_str(), addr_ref(&p.source_addr)?, &[])?;
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
                info: self.intern(a.node.as_str(), addr_ref(&a.addr)?, a.meta.as_slice())?,
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
                delta: &s.delta,
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
        let d = &p.delta;
        if d.digest.len() > DIGEST_WORDS_MAX || d.differing.len() > DIGEST_WORDS_MAX {
            return Err(DirectoryError::DigestTooLarge {
                len: d.digest.len().max(d.differing.len()),
                max: DIGEST_WORDS_MAX,
            });
        }
        let delta = wire::PushPullDelta {
            mode: d.mode.to_native(),
            digest: d.digest.iter().map(|w| w.to_native()).collect(),
            differing: d.differing.iter().map(|w| w.to_native()).collect(),
            since: d.since.to_native(),
            clock: d.clock.to_native(),
        };
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
            delta,
        })
    }
}

fn addr(a: &wire::CompactAddr) -> Result<SocketAddr, DirectoryError> {
    a.to_socket_addr()
        .ok_or(DirectoryError::BadAddress(a.ip.len()))
}

fn addr_ref(a: &wire::ArchivedCompactAddr) -> Result<SocketAddr, DirectoryError> {
    a.to_socket_addr()
        .ok_or(DirectoryError::BadAddress(a.ip.len()))
}

/// Words of a digest (or differing buckets) a push-pull may carry: the finest digest a
/// member keeps.
const DIGEST_WORDS_MAX: usize = crate::member::DIGEST_BUCKETS;

/// Protocol versions carried in alive messages: [min, max, current].
pub const PROTOCOL: [u8; 3] = [1, 1, 1];

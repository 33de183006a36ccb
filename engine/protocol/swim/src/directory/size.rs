//! The size oracle: the exact bytes each compact [`Item`] adds to a batch frame, measured
//! once per shape by encoding it and remembered, so a member fills a datagram to its limit
//! without encoding anything twice.

use std::net::SocketAddr;

use ringleader_wire::Message;
use ringleader_wire::frame::{HEADER_LEN, SEAL_PREFIX_LEN};
use ringleader_wire::keyring::TAG_LEN;
use ringleader_wire::msg::swim as wire;

use super::{Directory, SizeKey, v6};
use crate::item::{Item, NodeId};

impl Directory {
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
            Item::Ping { source, .. } => {
                let s = &self.infos[*source as usize];
                SizeKey {
                    kind: 1,
                    a: 0,
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
    pub(super) fn measure(&mut self, key: SizeKey) -> u32 {
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
                target: 0,
                source: name(key.b),
                source_addr: addr(key.c & 1 != 0).into(),
            }
            .into(),
            2 => wire::IndirectPing {
                seq_no: 0,
                target: name(key.a),
                target_addr: addr(key.c & 1 != 0).into(),
                nack: false,
                source: name(key.b),
                source_addr: addr(key.c & 2 != 0).into(),
            }
            .into(),
            3 => wire::Ack {
                seq_no: 0,
                coordinate: (key.c != 0).then(|| {
                    Box::new(wire::Coordinate {
                        vec: [0.0; 8],
                        error: 0.0,
                        adjustment: 0.0,
                        height: 0.0,
                    })
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
                addr: addr(key.c != 0).into(),
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
}

//! The SWIM core's events as the application's [`HostEvent`](crate::host::HostEvent)s: the
//! mask each kind is filtered by, and the conversion that looks names and addresses up in
//! the shard's directory. Internal events (refutations, user state, round trips) are never
//! delivered.

use std::net::SocketAddr;

use rand_chacha::ChaCha8Rng;
use ringleader_wire::Message;

use crate::host::{Event, EventMask, MemberInfo};
use crate::swim::{self, Member, MemberState, SharedDirectory};

pub(super) fn event_mask(e: &swim::Event) -> EventMask {
    match e {
        swim::Event::Up { .. } => EventMask::UP,
        swim::Event::Suspect { .. } => EventMask::SUSPECT,
        swim::Event::AliveAgain { .. } => EventMask::ALIVE_AGAIN,
        swim::Event::Down { .. } => EventMask::DOWN,
        swim::Event::Left { .. } => EventMask::LEFT,
        swim::Event::Updated { .. } => EventMask::UPDATED,
        swim::Event::Reaped { .. } => EventMask::REAPED,
        swim::Event::Message { .. } => EventMask::MESSAGE,
        swim::Event::Joined { .. } => EventMask::JOINED,
        swim::Event::Refuted { .. } | swim::Event::UserState { .. } | swim::Event::Rtt { .. } => {
            EventMask::NONE
        }
    }
}

pub(super) fn to_event(
    dir: &SharedDirectory,
    member: &Member<ChaCha8Rng>,
    e: swim::Event,
) -> Option<Event> {
    let d = dir.borrow();
    let info_of = |node: swim::NodeId, info: Option<swim::InfoId>| -> MemberInfo {
        let seen = member.member(node);
        let info = info.or(seen.map(|s| s.2));
        let (addr, meta) = match info {
            Some(i) => {
                let i = d.info(i);
                (i.addr, i.meta.to_vec())
            }
            None => (SocketAddr::from(([0, 0, 0, 0], 0)), Vec::new()),
        };
        MemberInfo {
            name: d.name(node).to_string(),
            addr,
            meta,
            state: seen.map_or(MemberState::Dead, |s| s.0),
            incarnation: seen.map_or(0, |s| s.1),
        }
    };
    Some(match e {
        swim::Event::Up { node, info } => Event::Up(info_of(node, Some(info))),
        swim::Event::Suspect { node, from } => Event::Suspect {
            member: info_of(node, None),
            by: d.name(from).to_string(),
        },
        swim::Event::AliveAgain { node } => Event::AliveAgain(info_of(node, None)),
        swim::Event::Down { node, from } => Event::Down {
            member: info_of(node, None),
            by: d.name(from).to_string(),
        },
        swim::Event::Left { node } => Event::Left(info_of(node, None)),
        swim::Event::Updated { node, info } => Event::Updated(info_of(node, Some(info))),
        swim::Event::Reaped { node } => Event::Reaped(info_of(node, None)),
        swim::Event::Message { from, msg } => match &*msg {
            Message::UserMsg(u) => Event::Message {
                from,
                origin: None,
                payload: u.payload.clone(),
            },
            _ => return None,
        },
        swim::Event::Joined { seed, ok } => Event::Joined { seed, ok },
        swim::Event::Refuted { .. } | swim::Event::UserState { .. } | swim::Event::Rtt { .. } => {
            return None;
        }
    })
}

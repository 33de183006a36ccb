//! The SWIM core's events as the application's [`HostEvent`](crate::host::HostEvent)s: the
//! mask each kind is filtered by, and the conversion that looks names and addresses up in
//! the shard's directory. Internal events (refutations, user state, round trips) are never
//! delivered.

use std::net::SocketAddr;

use rand_chacha::ChaCha8Rng;
use ringleader_wire::Message;

use super::serf_io::SerfState;
use crate::host::{Event, EventMask, MemberInfo, MemberStatus};
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
    serf: Option<&SerfState>,
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
        let name = d.name(node).to_string();
        let state = seen.map_or(MemberState::Dead, |s| s.0);
        MemberInfo {
            tags: serf
                .and_then(|_| ringleader_serf::decode_tags(&meta))
                .unwrap_or_default(),
            status: serf.map_or_else(
                || MemberStatus::from_state(state),
                |s| s.status(&name, state),
            ),
            coordinate: serf.and_then(|s| s.coordinate(&name)),
            name,
            addr,
            meta,
            state,
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
            // Delivered once: the SWIM core drops the copies it has seen.
            Message::Gossip(g) => Event::Message {
                from,
                origin: Some(g.origin.clone()),
                payload: g.payload.clone(),
            },
            _ => return None,
        },
        swim::Event::Joined { seed, ok } => Event::Joined { seed, ok },
        swim::Event::Refuted { .. } | swim::Event::UserState { .. } | swim::Event::Rtt { .. } => {
            return None;
        }
    })
}

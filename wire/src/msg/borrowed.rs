//! Borrowed forms of messages whose owned form would copy a whole table first.
//!
//! A push-pull state lists every member the sender knows: building the owned
//! [`PushPull`](super::swim::PushPull) allocates a `String` and a `Vec` per member only to serialize and free
//! them again (at 6,700 members in one process that was a third of the host's CPU). The
//! types here borrow names, metadata and the member list from the sender's own tables and
//! archive to exactly the same archived types as the owned ones, so receivers cannot tell
//! them apart (a test checks the bytes are equal).

use std::net::SocketAddr;

use rkyv::munge::munge;
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

use super::MessageKind;
use super::swim::{
    ArchivedPushNodeState, ArchivedPushPull, MemberState, PushNodeState, PushPullDelta,
};
use crate::EncodeError;
use crate::frame::BodyWriter;

/// [`PushNodeState`] borrowed from the sender's tables.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PushNodeStateRef<'a> {
    /// The member.
    pub name: &'a str,
    /// Its address.
    pub addr: SocketAddr,
    /// Its metadata.
    pub meta: &'a [u8],
    /// Its incarnation.
    pub incarnation: u64,
    /// Its state as the sender sees it.
    pub state: MemberState,
    /// Protocol versions: [min, max, current].
    pub protocol: [u8; 3],
}

impl<'a> From<&'a PushNodeState> for PushNodeStateRef<'a> {
    fn from(s: &'a PushNodeState) -> Self {
        PushNodeStateRef {
            name: &s.name,
            addr: s.addr,
            meta: &s.meta,
            incarnation: s.incarnation,
            state: s.state,
            protocol: s.protocol,
        }
    }
}

/// [`PushPull`](super::swim::PushPull) borrowed from the sender's tables; encode it with
/// [`crate::Encoder::encode_push_pull`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PushPullRef<'a> {
    /// True when the sender is joining (the receiver answers with its own state).
    pub join: bool,
    /// Name of the sender.
    pub source: &'a str,
    /// Every member the sender knows, with its state.
    pub states: &'a [PushNodeStateRef<'a>],
    /// Opaque state of the layer above (Serf: clocks, recent events).
    pub user_state: &'a [u8],
    /// The digest exchange's part (default for a full state).
    pub delta: &'a PushPullDelta,
}

impl PushPullRef<'_> {
    /// Serializes `self` into `writer`, as the owned [`PushPull`](super::swim::PushPull) would be.
    pub(crate) fn write_archive(&self, writer: &mut BodyWriter<'_>) -> Result<(), EncodeError> {
        rkyv::util::with_arena(|arena| {
            rkyv::api::high::to_bytes_in_with_alloc::<_, _, rkyv::rancor::Failure>(
                self,
                &mut *writer,
                arena.acquire(),
            )
            .map(|_| ())
            .map_err(|_| EncodeError::Serialize(MessageKind::PushPull))
        })
    }
}

/// Where the out-of-line parts of a [`PushNodeStateRef`] were written.
pub struct PushNodeStateRefResolver {
    name: StringResolver,
    meta: VecResolver,
    state: <MemberState as Archive>::Resolver,
}

impl Archive for PushNodeStateRef<'_> {
    type Archived = ArchivedPushNodeState;
    type Resolver = PushNodeStateRefResolver;

    fn resolve(&self, r: Self::Resolver, out: Place<Self::Archived>) {
        munge!(let ArchivedPushNodeState { name, addr, meta, incarnation, state, protocol } = out);
        ArchivedString::resolve_from_str(self.name, r.name, name);
        self.addr.resolve((), addr);
        ArchivedVec::resolve_from_len(self.meta.len(), r.meta, meta);
        self.incarnation.resolve((), incarnation);
        self.state.resolve(r.state, state);
        self.protocol.resolve([(); 3], protocol);
    }
}

impl<S> Serialize<S> for PushNodeStateRef<'_>
where
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
    SocketAddr: Serialize<S>,
    MemberState: Serialize<S>,
{
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        // A socket address archives inline (its resolver is `()`).
        self.addr.serialize(s)?;
        Ok(PushNodeStateRefResolver {
            name: ArchivedString::serialize_from_str(self.name, s)?,
            meta: ArchivedVec::serialize_from_slice(self.meta, s)?,
            state: self.state.serialize(s)?,
        })
    }
}

/// Where the out-of-line parts of a [`PushPullRef`] were written.
pub struct PushPullRefResolver {
    source: StringResolver,
    states: VecResolver,
    user_state: VecResolver,
    delta: <PushPullDelta as Archive>::Resolver,
}

impl Archive for PushPullRef<'_> {
    type Archived = ArchivedPushPull;
    type Resolver = PushPullRefResolver;

    fn resolve(&self, r: Self::Resolver, out: Place<Self::Archived>) {
        munge!(let ArchivedPushPull { join, source, states, user_state, delta } = out);
        self.join.resolve((), join);
        ArchivedString::resolve_from_str(self.source, r.source, source);
        ArchivedVec::resolve_from_len(self.states.len(), r.states, states);
        ArchivedVec::resolve_from_len(self.user_state.len(), r.user_state, user_state);
        self.delta.resolve(r.delta, delta);
    }
}

impl<S> Serialize<S> for PushPullRef<'_>
where
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
    for<'x> PushNodeStateRef<'x>: Serialize<S>,
    PushPullDelta: Serialize<S>,
{
    fn serialize(&self, s: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok(PushPullRefResolver {
            source: ArchivedString::serialize_from_str(self.source, s)?,
            states: ArchivedVec::serialize_from_slice(self.states, s)?,
            user_state: ArchivedVec::serialize_from_slice(self.user_state, s)?,
            delta: self.delta.serialize(s)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Encoder;
    use crate::msg::Message;
    use crate::msg::swim::PushPull;

    fn owned(members: usize) -> PushPull {
        PushPull {
            join: true,
            source: "a-source-name-longer-than-inline".into(),
            states: (0..members)
                .map(|i| PushNodeState {
                    name: if i % 2 == 0 {
                        format!("n{i}")
                    } else {
                        format!("a-long-member-name-{i:08}")
                    },
                    addr: SocketAddr::from(([127, 0, (i / 250) as u8, (i % 250) as u8], 7946)),
                    meta: vec![i as u8; i % 5],
                    incarnation: i as u64 * 3,
                    state: [
                        MemberState::Alive,
                        MemberState::Suspect,
                        MemberState::Dead,
                        MemberState::Left,
                    ][i % 4],
                    protocol: [1, 5, 2],
                })
                .collect(),
            user_state: b"serf clocks".to_vec(),
            delta: PushPullDelta {
                mode: super::super::swim::PushPullMode::Delta,
                digest: (0..members as u32).collect(),
                differing: (0..members as u16).rev().collect(),
                since: 17,
                clock: 42,
            },
        }
    }

    #[test]
    fn the_borrowed_push_pull_encodes_to_the_same_frame_as_the_owned_one() {
        for members in [0, 1, 7, 300] {
            let p = owned(members);
            let states: Vec<PushNodeStateRef<'_>> = p.states.iter().map(Into::into).collect();
            let r = PushPullRef {
                join: p.join,
                source: &p.source,
                states: &states,
                user_state: &p.user_state,
                delta: &p.delta,
            };
            let mut a = Encoder::new(b"label");
            let mut b = Encoder::new(b"label");
            let from_owned = a
                .encode_message(&Message::PushPull(p.clone()), None, 1 << 20)
                .expect("owned encodes")
                .to_vec();
            let from_ref = b
                .encode_push_pull(&r, None, 1 << 20)
                .expect("borrowed encodes");
            assert_eq!(from_owned, from_ref, "{members} members");
        }
    }
}

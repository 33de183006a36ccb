//! Every message Ringleader speaks, and the registry that gives each its wire kind.
//!
//! Adding a message kind is a change in one place: a line in the `messages!` invocation
//! below. It generates [`MessageKind`], the owned [`Message`] enum, the zero-copy
//! [`MessageRef`] enum of validated archived references, and the [`WireMessage`] impls.
//! Kind codes are part of the wire format: never reuse or renumber one.

pub mod borrowed;
pub mod client;
pub mod raft;
pub mod serf;
pub mod swim;

use rkyv::rancor::Failure;

use crate::error::{DecodeError, EncodeError};
use crate::frame::BodyWriter;

/// A type that travels as one message of a frame.
///
/// Implemented for every message type by the registry; the methods are concrete per type,
/// so generic code needs no rkyv bounds.
pub trait WireMessage: Sized {
    /// The wire kind of this message.
    const KIND: MessageKind;
    /// The archived form, read in place.
    type Ref;
    /// Serializes `self` into `writer` (positions relative to the writer's base).
    fn write_archive(&self, writer: &mut BodyWriter<'_>) -> Result<(), EncodeError>;
    /// Validates `bytes` as an archive of this type and returns a reference into them.
    fn access(bytes: &[u8]) -> Result<&Self::Ref, DecodeError>;
    /// Copies a validated archive out into the owned type.
    fn to_owned(archived: &Self::Ref) -> Result<Self, DecodeError>;
}

macro_rules! messages {
    ($( $code:literal => $name:ident($ty:ty) ),* $(,)?) => {
        /// The kind of a message, as carried in frame and batch-item headers.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum MessageKind {
            $(
                #[doc = concat!("[`", stringify!($ty), "`]")]
                $name = $code,
            )*
        }

        impl MessageKind {
            /// Every kind, in code order.
            pub const ALL: &'static [MessageKind] = &[$(MessageKind::$name),*];

            /// The kind with this code, if there is one.
            pub fn from_u8(code: u8) -> Option<MessageKind> {
                match code {
                    $($code => Some(MessageKind::$name),)*
                    _ => None,
                }
            }

            /// The kind's name, for logs and counters.
            pub fn name(self) -> &'static str {
                match self {
                    $(MessageKind::$name => stringify!($name),)*
                }
            }
        }

        /// Any message, owned.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Message {
            $(
                #[doc = concat!("[`", stringify!($ty), "`]")]
                $name($ty),
            )*
        }

        /// Any message, as a validated reference into the receive buffer (zero copy).
        #[derive(Debug, Clone, Copy)]
        pub enum MessageRef<'a> {
            $(
                #[doc = concat!("Archived [`", stringify!($ty), "`]")]
                $name(&'a <$ty as rkyv::Archive>::Archived),
            )*
        }

        $(
            // Batch items are only ITEM_ALIGN-aligned: every archive must fit that.
            const _: () = assert!(
                core::mem::align_of::<<$ty as rkyv::Archive>::Archived>() <= crate::frame::ITEM_ALIGN
            );

            impl WireMessage for $ty {
                const KIND: MessageKind = MessageKind::$name;
                type Ref = <$ty as rkyv::Archive>::Archived;

                fn write_archive(&self, writer: &mut BodyWriter<'_>) -> Result<(), EncodeError> {
                    rkyv::util::with_arena(|arena| {
                        rkyv::api::high::to_bytes_in_with_alloc::<_, _, Failure>(
                            self,
                            &mut *writer,
                            arena.acquire(),
                        )
                        .map(|_| ())
                        .map_err(|_| EncodeError::Serialize(MessageKind::$name))
                    })
                }

                fn access(bytes: &[u8]) -> Result<&Self::Ref, DecodeError> {
                    rkyv::access::<Self::Ref, Failure>(bytes)
                        .map_err(|_| DecodeError::InvalidArchive(MessageKind::$name))
                }

                fn to_owned(archived: &Self::Ref) -> Result<Self, DecodeError> {
                    rkyv::deserialize::<$ty, Failure>(archived)
                        .map_err(|_| DecodeError::InvalidArchive(MessageKind::$name))
                }
            }

            impl From<$ty> for Message {
                fn from(m: $ty) -> Message {
                    Message::$name(m)
                }
            }
        )*

        impl Message {
            /// This message's kind.
            pub fn kind(&self) -> MessageKind {
                match self {
                    $(Message::$name(_) => MessageKind::$name,)*
                }
            }

            /// Serializes the message into `writer`.
            pub fn write_archive(&self, writer: &mut BodyWriter<'_>) -> Result<(), EncodeError> {
                match self {
                    $(Message::$name(m) => m.write_archive(writer),)*
                }
            }
        }

        impl<'a> MessageRef<'a> {
            /// Validates `bytes` as an archive of `kind` and returns a reference into them.
            pub fn access(kind: MessageKind, bytes: &'a [u8]) -> Result<MessageRef<'a>, DecodeError> {
                match kind {
                    $(MessageKind::$name => <$ty as WireMessage>::access(bytes).map(MessageRef::$name),)*
                }
            }

            /// This message's kind.
            pub fn kind(&self) -> MessageKind {
                match self {
                    $(MessageRef::$name(_) => MessageKind::$name,)*
                }
            }

            /// Copies the message out into its owned form.
            pub fn to_owned(&self) -> Result<Message, DecodeError> {
                match self {
                    $(MessageRef::$name(r) => <$ty as WireMessage>::to_owned(r).map(Message::$name),)*
                }
            }
        }
    };
}

messages! {
    // SWIM + Lifeguard (memberlist)
    1 => Ping(swim::Ping),
    2 => IndirectPing(swim::IndirectPing),
    3 => Ack(swim::Ack),
    4 => Nack(swim::Nack),
    5 => Suspect(swim::Suspect),
    6 => Alive(swim::Alive),
    7 => Dead(swim::Dead),
    8 => PushPull(swim::PushPull),
    9 => UserMsg(swim::UserMsg),
    10 => Gossip(swim::Gossip),
    // Serf
    32 => JoinIntent(serf::JoinIntent),
    33 => LeaveIntent(serf::LeaveIntent),
    34 => UserEvent(serf::UserEvent),
    35 => Query(serf::Query),
    36 => QueryResponse(serf::QueryResponse),
    37 => Relay(serf::Relay),
    38 => KeyRequest(serf::KeyRequest),
    39 => KeyResponse(serf::KeyResponse),
    // Raft
    64 => AppendEntries(raft::AppendEntries),
    65 => AppendResponse(raft::AppendResponse),
    66 => VoteRequest(raft::VoteRequest),
    67 => VoteResponse(raft::VoteResponse),
    68 => InstallSnapshot(raft::InstallSnapshot),
    69 => SnapshotResponse(raft::SnapshotResponse),
    70 => TimeoutNow(raft::TimeoutNow),
    71 => ReadIndexRequest(raft::ReadIndexRequest),
    72 => ReadIndexResponse(raft::ReadIndexResponse),
    73 => Heartbeat(raft::Heartbeat),
    74 => HeartbeatResponse(raft::HeartbeatResponse),
    75 => PeerHello(raft::PeerHello),
    // Key-value clients
    96 => ClientRequest(client::ClientRequest),
    97 => ClientResponse(client::ClientResponse),
}

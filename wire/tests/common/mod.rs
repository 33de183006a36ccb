//! Strategies shared by the wire tests: an arbitrary value of every message kind.
#![allow(dead_code)]

use std::net::SocketAddr;

use proptest::collection::vec;
use proptest::prelude::*;
use ringleader_wire::msg::{Message, client, raft, serf, swim};

pub fn name() -> impl Strategy<Value = String> {
    "[a-z0-9.-]{0,24}"
}

pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

pub fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
    ]
}

fn member_state() -> impl Strategy<Value = swim::MemberState> {
    prop_oneof![
        Just(swim::MemberState::Alive),
        Just(swim::MemberState::Suspect),
        Just(swim::MemberState::Dead),
        Just(swim::MemberState::Left),
    ]
}

fn coordinate() -> impl Strategy<Value = swim::Coordinate> {
    (any::<[f64; 8]>(), any::<f64>(), any::<f64>(), any::<f64>()).prop_map(
        |(vec, error, adjustment, height)| swim::Coordinate {
            vec,
            error,
            adjustment,
            height,
        },
    )
}

fn push_node_state() -> impl Strategy<Value = swim::PushNodeState> {
    (
        name(),
        addr(),
        bytes(64),
        any::<u64>(),
        member_state(),
        any::<[u8; 3]>(),
    )
        .prop_map(
            |(name, addr, meta, incarnation, state, protocol)| swim::PushNodeState {
                name,
                addr,
                meta,
                incarnation,
                state,
                protocol,
            },
        )
}

fn push_pull_delta() -> impl Strategy<Value = swim::PushPullDelta> {
    (
        prop_oneof![
            Just(swim::PushPullMode::Full),
            Just(swim::PushPullMode::Digest),
            Just(swim::PushPullMode::Delta),
            Just(swim::PushPullMode::Push),
        ],
        vec(any::<u32>(), 0..64),
        vec(any::<u16>(), 0..64),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(mode, digest, differing, since, clock)| swim::PushPullDelta {
                mode,
                digest,
                differing,
                since,
                clock,
            },
        )
}

fn header() -> impl Strategy<Value = raft::RaftHeader> {
    any::<[u64; 4]>().prop_map(|[group, from, to, term]| raft::RaftHeader {
        group,
        from,
        to,
        term,
    })
}

fn entry() -> impl Strategy<Value = raft::Entry> {
    (any::<u64>(), any::<u64>(), 0u8..3, bytes(64)).prop_map(|(index, term, k, payload)| {
        raft::Entry {
            index,
            term,
            kind: [
                raft::EntryKind::Normal,
                raft::EntryKind::Config,
                raft::EntryKind::Noop,
            ][k as usize],
            payload,
        }
    })
}

fn conf() -> impl Strategy<Value = raft::ConfState> {
    (
        vec(any::<u64>(), 0..5),
        vec(any::<u64>(), 0..3),
        vec(any::<u64>(), 0..5),
    )
        .prop_map(|(voters, learners, voters_outgoing)| raft::ConfState {
            voters,
            learners,
            voters_outgoing,
        })
}

fn filter() -> impl Strategy<Value = serf::QueryFilter> {
    prop_oneof![
        vec(name(), 0..4).prop_map(serf::QueryFilter::Nodes),
        (name(), name())
            .prop_map(|(tag, expr)| serf::QueryFilter::Tag(serf::TagFilter { tag, expr })),
    ]
}

fn swim_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), name(), addr()).prop_map(
            |(seq_no, target, source, source_addr)| {
                swim::Ping {
                    seq_no,
                    target,
                    source,
                    source_addr: source_addr.into(),
                }
                .into()
            }
        ),
        (any::<u32>(), name(), addr(), any::<bool>(), name(), addr()).prop_map(
            |(seq_no, target, target_addr, nack, source, source_addr)| swim::IndirectPing {
                seq_no,
                target,
                target_addr: target_addr.into(),
                nack,
                source,
                source_addr: source_addr.into()
            }
            .into()
        ),
        (any::<u32>(), proptest::option::of(coordinate())).prop_map(|(seq_no, coordinate)| {
            swim::Ack {
                seq_no,
                coordinate: coordinate.map(Box::new),
            }
            .into()
        }),
        any::<u32>().prop_map(|seq_no| swim::Nack { seq_no }.into()),
        (any::<u64>(), name(), name()).prop_map(|(incarnation, node, from)| swim::Suspect {
            incarnation,
            node,
            from
        }
        .into()),
        (any::<u64>(), name(), addr(), bytes(512), any::<[u8; 3]>()).prop_map(
            |(incarnation, node, addr, meta, protocol)| {
                swim::Alive {
                    incarnation,
                    node,
                    addr: addr.into(),
                    meta,
                    protocol,
                }
                .into()
            }
        ),
        (any::<u64>(), name(), name()).prop_map(|(incarnation, node, from)| swim::Dead {
            incarnation,
            node,
            from
        }
        .into()),
        (
            any::<bool>(),
            name(),
            vec(push_node_state(), 0..8),
            bytes(128),
            push_pull_delta()
        )
            .prop_map(|(join, source, states, user_state, delta)| swim::PushPull {
                join,
                source,
                states,
                user_state,
                delta
            }
            .into()),
        bytes(256).prop_map(|payload| swim::UserMsg { payload }.into()),
        (name(), any::<u64>(), bytes(256)).prop_map(|(origin, seq, payload)| swim::Gossip {
            origin,
            seq,
            payload
        }
        .into()),
    ]
}

fn serf_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (any::<u64>(), name()).prop_map(|(ltime, node)| serf::JoinIntent { ltime, node }.into()),
        (any::<u64>(), name(), any::<bool>()).prop_map(|(ltime, node, prune)| serf::LeaveIntent {
            ltime,
            node,
            prune
        }
        .into()),
        (any::<u64>(), name(), bytes(512), any::<bool>()).prop_map(
            |(ltime, name, payload, coalesce)| serf::UserEvent {
                ltime,
                name,
                payload,
                coalesce
            }
            .into()
        ),
        (
            (
                any::<u64>(),
                any::<u32>(),
                addr(),
                name(),
                vec(filter(), 0..3)
            ),
            (any::<u32>(), any::<u8>(), any::<u32>(), name(), bytes(128))
        )
            .prop_map(
                |(
                    (ltime, id, addr, source, filters),
                    (flags, relay_factor, timeout_ms, name, payload),
                )| {
                    serf::Query {
                        ltime,
                        id,
                        addr,
                        source,
                        filters,
                        flags,
                        relay_factor,
                        timeout_ms,
                        name,
                        payload,
                    }
                    .into()
                }
            ),
        (any::<u64>(), any::<u32>(), name(), any::<u32>(), bytes(128)).prop_map(
            |(ltime, id, from, flags, payload)| serf::QueryResponse {
                ltime,
                id,
                from,
                flags,
                payload
            }
            .into()
        ),
        (addr(), name(), bytes(256)).prop_map(|(dest, dest_name, frame)| serf::Relay {
            dest,
            dest_name,
            frame
        }
        .into()),
        (0u8..4, proptest::option::of(any::<[u8; 32]>())).prop_map(|(op, key)| {
            let op = [
                serf::KeyOp::Install,
                serf::KeyOp::Use,
                serf::KeyOp::Remove,
                serf::KeyOp::List,
            ][op as usize];
            serf::KeyRequest { op, key }.into()
        }),
        (
            any::<bool>(),
            name(),
            vec(any::<[u8; 32]>(), 0..4),
            proptest::option::of(any::<[u8; 32]>())
        )
            .prop_map(|(ok, message, keys, primary)| serf::KeyResponse {
                ok,
                message,
                keys,
                primary
            }
            .into()),
    ]
}

fn raft_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (header(), any::<[u64; 3]>(), vec(entry(), 0..8)).prop_map(
            |(header, [prev_log_index, prev_log_term, leader_commit], entries)| {
                raft::AppendEntries {
                    header,
                    prev_log_index,
                    prev_log_term,
                    leader_commit,
                    entries,
                }
                .into()
            }
        ),
        (header(), any::<bool>(), any::<[u64; 3]>()).prop_map(
            |(header, success, [match_index, reject_hint_index, reject_hint_term])| {
                raft::AppendResponse {
                    header,
                    success,
                    match_index,
                    reject_hint_index,
                    reject_hint_term,
                }
                .into()
            }
        ),
        (header(), any::<[u64; 2]>(), any::<[bool; 2]>()).prop_map(
            |(header, [last_log_index, last_log_term], [pre_vote, leadership_transfer])| {
                raft::VoteRequest {
                    header,
                    last_log_index,
                    last_log_term,
                    pre_vote,
                    leadership_transfer,
                }
                .into()
            }
        ),
        (header(), any::<[bool; 2]>()).prop_map(|(header, [granted, pre_vote])| {
            raft::VoteResponse {
                header,
                granted,
                pre_vote,
            }
            .into()
        }),
        (
            header(),
            any::<[u64; 4]>(),
            conf(),
            bytes(256),
            any::<bool>()
        )
            .prop_map(
                |(
                    header,
                    [last_included_index, last_included_term, offset, total_bytes],
                    conf,
                    data,
                    done,
                )| {
                    raft::InstallSnapshot {
                        header,
                        last_included_index,
                        last_included_term,
                        conf,
                        offset,
                        total_bytes,
                        data,
                        done,
                    }
                    .into()
                }
            ),
        (header(), any::<u64>(), any::<bool>()).prop_map(|(header, next_offset, success)| {
            raft::SnapshotResponse {
                header,
                next_offset,
                success,
            }
            .into()
        }),
        header().prop_map(|header| raft::TimeoutNow { header }.into()),
        (header(), any::<u64>())
            .prop_map(|(header, ctx)| raft::ReadIndexRequest { header, ctx }.into()),
        (header(), any::<u64>(), any::<u64>())
            .prop_map(|(header, ctx, index)| raft::ReadIndexResponse { header, ctx, index }.into()),
        (header(), any::<u64>(), any::<u64>()).prop_map(|(header, commit, ctx)| raft::Heartbeat {
            header,
            commit,
            ctx
        }
        .into()),
        (header(), any::<u64>())
            .prop_map(|(header, ctx)| raft::HeartbeatResponse { header, ctx }.into()),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>()
        )
            .prop_map(|(from, to, shard, shards, groups)| raft::PeerHello {
                from,
                to,
                shard,
                shards,
                groups
            }
            .into()),
    ]
}

fn consistency() -> impl Strategy<Value = client::Consistency> {
    prop_oneof![
        Just(client::Consistency::Linearizable),
        Just(client::Consistency::Lease),
        Just(client::Consistency::Stale),
    ]
}

/// Key-value client requests and responses.
pub fn client_message() -> impl Strategy<Value = Message> {
    let op = prop_oneof![
        (bytes(40), bytes(40)).prop_map(|(key, value)| client::ClientOp::Put { key, value }),
        (bytes(40), consistency())
            .prop_map(|(key, consistency)| client::ClientOp::Get { key, consistency }),
        bytes(40).prop_map(|key| client::ClientOp::Delete { key }),
        (bytes(40), proptest::option::of(bytes(40)), bytes(40))
            .prop_map(|(key, expected, new)| client::ClientOp::Cas { key, expected, new }),
        Just(client::ClientOp::Info),
    ];
    let code = prop_oneof![
        Just(client::ErrorCode::Unavailable),
        Just(client::ErrorCode::Busy),
        Just(client::ErrorCode::WrongShard),
        Just(client::ErrorCode::Unknown),
    ];
    let result = prop_oneof![
        Just(client::ClientResult::Done),
        proptest::option::of(bytes(40)).prop_map(client::ClientResult::Value),
        any::<bool>().prop_map(|swapped| client::ClientResult::Cas { swapped }),
        (any::<u64>(), any::<u64>(), "[a-z0-9.:]{0,20}").prop_map(
            |(group, leader, leader_addr)| client::ClientResult::NotLeader {
                group,
                leader,
                leader_addr
            }
        ),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec((any::<u64>(), "[a-z0-9.:]{0,20}"), 0..4)
        )
            .prop_map(|(node, groups, shards, nodes)| {
                client::ClientResult::Info(client::ClusterInfo {
                    node,
                    groups,
                    shards,
                    nodes: nodes
                        .into_iter()
                        .map(|(id, addr)| client::NodeAddr { id, addr })
                        .collect(),
                })
            }),
        (code, "[ -~]{0,30}")
            .prop_map(|(code, message)| client::ClientResult::Error { code, message }),
    ];
    prop_oneof![
        (any::<u64>(), op).prop_map(|(id, op)| client::ClientRequest { id, op }.into()),
        (any::<u64>(), result)
            .prop_map(|(id, result)| client::ClientResponse { id, result }.into()),
    ]
}

/// A message of any kind.
pub fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        swim_message(),
        serf_message(),
        raft_message(),
        client_message()
    ]
}

/// NaN != NaN: compare coordinates bitwise so round trips of any f64 compare equal.
pub fn same(a: &Message, b: &Message) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

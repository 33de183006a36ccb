use std::net::SocketAddr;
use std::rc::Rc;

use ringleader_wire::msg::swim as wire;
use ringleader_wire::{Decoder, Encoder, MessageRef};

use super::*;
use crate::item::{Item, NodeState, PushPullState};

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
        delta: wire::PushPullDelta {
            mode: wire::PushPullMode::Delta,
            digest: vec![7, 8, 9],
            differing: vec![3, 1],
            since: 12,
            clock: 34,
        },
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
        delta: Default::default(),
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
        delta: Default::default(),
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

//! Wire benchmarks: encode and validated access per message kind, batch packing of gossip,
//! AEAD seal+open of a full datagram (aes-gcm against ring, the choice made in keyring.rs),
//! and a CRC32C-only baseline.
//!
//! `cargo bench -p ringleader-wire` (add a filter such as `-- aead` for one group).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringleader_wire::msg::{Message, raft, serf, swim};
use ringleader_wire::{Decoder, Encoder, Keyring, MessageRef};
use rkyv::util::AlignedVec;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, i], 7946))
}

fn hdr() -> raft::RaftHeader {
    raft::RaftHeader {
        group: 17,
        from: 1,
        to: 2,
        term: 9,
    }
}

/// One realistic message of every kind.
fn samples() -> Vec<Message> {
    let name = |i: u32| format!("node-{i:05}");
    let state = |i: u32| swim::PushNodeState {
        name: name(i),
        addr: addr(i as u8),
        meta: vec![0x61; 32],
        incarnation: u64::from(i),
        state: swim::MemberState::Alive,
        protocol: [1, 1, 1],
    };
    let entry = |i: u64| raft::Entry {
        index: i,
        term: 9,
        kind: raft::EntryKind::Normal,
        payload: vec![7; 256],
    };
    vec![
        swim::Ping {
            seq_no: 1,
            target: swim::name_hash(&name(2)),
            source: name(1),
            source_addr: addr(1).into(),
        }
        .into(),
        swim::IndirectPing {
            seq_no: 1,
            target: name(2),
            target_addr: addr(2).into(),
            nack: true,
            source: name(1),
            source_addr: addr(1).into(),
        }
        .into(),
        swim::Ack {
            seq_no: 1,
            coordinate: Some(Box::new(swim::Coordinate {
                vec: [0.001; 8],
                error: 0.5,
                adjustment: 0.0,
                height: 0.0001,
            })),
        }
        .into(),
        swim::Nack { seq_no: 1 }.into(),
        swim::Suspect {
            incarnation: 3,
            node: name(2),
            from: name(1),
        }
        .into(),
        swim::Alive {
            incarnation: 3,
            node: name(2),
            addr: addr(2).into(),
            meta: vec![0x61; 64],
            protocol: [1, 1, 1],
        }
        .into(),
        swim::Dead {
            incarnation: 3,
            node: name(2),
            from: name(1),
        }
        .into(),
        swim::PushPull {
            join: false,
            source: name(1),
            states: (0..32).map(state).collect(),
            user_state: vec![0; 64],
            delta: Default::default(),
        }
        .into(),
        swim::UserMsg {
            payload: vec![1; 128],
        }
        .into(),
        serf::JoinIntent {
            ltime: 10,
            node: name(1),
        }
        .into(),
        serf::LeaveIntent {
            ltime: 10,
            node: name(1),
            prune: false,
        }
        .into(),
        serf::UserEvent {
            ltime: 10,
            name: "deploy".into(),
            payload: vec![1; 128],
            coalesce: true,
        }
        .into(),
        serf::Query {
            ltime: 10,
            id: 4,
            addr: addr(1),
            source: name(1),
            filters: vec![serf::QueryFilter::Tag(serf::TagFilter {
                tag: "role".into(),
                expr: "^web$".into(),
            })],
            flags: 1,
            relay_factor: 2,
            timeout_ms: 5000,
            name: "uptime".into(),
            payload: vec![1; 32],
        }
        .into(),
        serf::QueryResponse {
            ltime: 10,
            id: 4,
            from: name(2),
            flags: 0,
            payload: vec![1; 64],
        }
        .into(),
        serf::Relay {
            dest: addr(3),
            dest_name: name(3),
            frame: vec![1; 200],
        }
        .into(),
        serf::KeyRequest {
            op: serf::KeyOp::Install,
            key: Some([5; 32]),
        }
        .into(),
        serf::KeyResponse {
            ok: true,
            message: String::new(),
            keys: vec![[5; 32], [6; 32]],
            primary: Some([5; 32]),
        }
        .into(),
        raft::AppendEntries {
            header: hdr(),
            prev_log_index: 99,
            prev_log_term: 9,
            leader_commit: 98,
            entries: (100..104).map(entry).collect(),
        }
        .into(),
        raft::AppendResponse {
            header: hdr(),
            success: true,
            match_index: 103,
            reject_hint_index: 0,
            reject_hint_term: 0,
        }
        .into(),
        raft::VoteRequest {
            header: hdr(),
            last_log_index: 103,
            last_log_term: 9,
            pre_vote: true,
            leadership_transfer: false,
        }
        .into(),
        raft::VoteResponse {
            header: hdr(),
            granted: true,
            pre_vote: true,
        }
        .into(),
        raft::InstallSnapshot {
            header: hdr(),
            last_included_index: 1000,
            last_included_term: 8,
            conf: raft::ConfState {
                voters: vec![1, 2, 3],
                learners: vec![4],
                voters_outgoing: vec![],
            },
            offset: 0,
            total_bytes: 1 << 20,
            data: vec![0; 1024],
            done: false,
        }
        .into(),
        raft::SnapshotResponse {
            header: hdr(),
            next_offset: 1024,
            success: true,
        }
        .into(),
        raft::TimeoutNow { header: hdr() }.into(),
        raft::ReadIndexRequest {
            header: hdr(),
            ctx: 77,
        }
        .into(),
        raft::ReadIndexResponse {
            header: hdr(),
            ctx: 77,
            index: 103,
        }
        .into(),
        raft::Heartbeat {
            header: hdr(),
            commit: 98,
            ctx: 5,
        }
        .into(),
        raft::HeartbeatResponse {
            header: hdr(),
            ctx: 5,
        }
        .into(),
    ]
}

fn per_kind(c: &mut Criterion) {
    let mut enc = Encoder::new(b"bench");
    let dec = Decoder::new(b"bench", 16 << 20);
    let mut encode = c.benchmark_group("encode");
    for msg in samples() {
        encode.bench_function(BenchmarkId::from_parameter(msg.kind().name()), |b| {
            b.iter(|| {
                enc.encode_message(black_box(&msg), None, 16 << 20)
                    .map(|f| f.len())
            })
        });
    }
    encode.finish();
    let mut access = c.benchmark_group("access");
    for msg in samples() {
        let frame = enc.encode_message(&msg, None, 16 << 20).expect("encodes");
        let mut buf = AlignedVec::<16>::new();
        buf.extend_from_slice(frame);
        let kind = msg.kind();
        // rkyv validation alone, on the archive in place.
        access.bench_function(BenchmarkId::new("archive", kind.name()), |b| {
            let body = &buf[32..];
            b.iter(|| MessageRef::access(kind, black_box(body)).is_ok())
        });
        // The whole receive path: header, CRC32C, label, validation.
        access.bench_function(BenchmarkId::new("frame", kind.name()), |b| {
            b.iter(|| {
                let frame = dec.decode(black_box(&mut buf), None).expect("decodes");
                frame.messages().all(|m| m.is_ok())
            })
        });
    }
    access.finish();
}

fn gossip_batch(c: &mut Criterion) {
    let updates: Vec<Message> = (0..20u32)
        .map(|i| {
            if i % 2 == 0 {
                swim::Suspect {
                    incarnation: u64::from(i),
                    node: format!("node-{i:05}"),
                    from: "node-00001".into(),
                }
                .into()
            } else {
                swim::Alive {
                    incarnation: u64::from(i),
                    node: format!("node-{i:05}"),
                    addr: addr(i as u8).into(),
                    meta: Vec::new(),
                    protocol: [1, 1, 1],
                }
                .into()
            }
        })
        .collect();
    let mut enc = Encoder::new(b"bench");
    let dec = Decoder::new(b"bench", 1400);
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Elements(20));
    // Pack all 20 into as few datagrams as the limit allows, as the SWIM layer does.
    let pack = |enc: &mut Encoder, frames: &mut Vec<AlignedVec<16>>| {
        let mut rest = &updates[..];
        while !rest.is_empty() {
            let mut batch = enc.batch(None, 1400);
            let mut n = 0;
            while n < rest.len() && batch.push_message(black_box(&rest[n])).expect("encodes") {
                n += 1;
            }
            assert!(n > 0, "one update always fits");
            let bytes = batch.finish().expect("finishes");
            if frames.len() < 8 {
                let mut v = AlignedVec::<16>::new();
                v.extend_from_slice(bytes);
                frames.push(v);
            }
            rest = &rest[n..];
        }
    };
    let mut frames = Vec::new();
    pack(&mut enc, &mut frames);
    eprintln!(
        "20 gossip updates take {} datagram(s) of <= 1400 bytes",
        frames.len()
    );
    g.bench_function("pack_20_gossip", |b| {
        let mut sink = Vec::new();
        b.iter(|| {
            sink.clear();
            pack(&mut enc, &mut sink)
        })
    });
    g.bench_function("unpack_20_gossip", |b| {
        b.iter(|| {
            let mut n = 0;
            for buf in frames.iter_mut() {
                let frame = dec.decode(black_box(buf), None).expect("decodes");
                n += frame.messages().filter(|m| m.is_ok()).count();
            }
            assert_eq!(n, 20);
            n
        })
    });
    g.finish();
}
fn aead(c: &mut Criterion) {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let mut g = c.benchmark_group("aead");
    g.throughput(Throughput::Bytes(1400));
    let key = [7u8; 32];
    let nonce = [1u8; 12];
    let header = [2u8; 16];
    let label = b"prod-eu-1";
    let body = 1400 - 32 - 16 - 16;

    let keyring = Keyring::new(key);
    let mut buf = vec![0x5au8; body];
    g.bench_function("keyring_seal_open_1400B", |b| {
        b.iter(|| {
            let tag = keyring
                .seal(&nonce, &header, label, &mut buf)
                .expect("seals");
            keyring
                .open(&nonce, &header, label, &mut buf, &tag)
                .expect("opens")
        })
    });

    {
        use aes_gcm::aead::{AeadInPlace, KeyInit};
        let cipher = aes_gcm::Aes256Gcm::new(&key.into());
        let mut aad = header.to_vec();
        aad.extend_from_slice(label);
        let n = aes_gcm::Nonce::from_slice(&nonce);
        g.bench_function("aes-gcm_seal_open_1400B", |b| {
            b.iter(|| {
                let tag = cipher
                    .encrypt_in_place_detached(n, &aad, &mut buf)
                    .expect("seals");
                cipher
                    .decrypt_in_place_detached(n, &aad, &mut buf, &tag)
                    .expect("opens")
            })
        });
    }

    let rkey = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("key"));
    let mut aad = header.to_vec();
    aad.extend_from_slice(label);
    let mut rbuf = vec![0x5au8; body + 16];
    g.bench_function("ring_seal_open_1400B", |b| {
        b.iter(|| {
            let (data, _) = rbuf.split_at_mut(body);
            let tag = rkey
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&aad[..]),
                    data,
                )
                .expect("seals");
            rbuf[body..].copy_from_slice(tag.as_ref());
            rkey.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut rbuf,
            )
            .map(|p| p.len())
            .expect("opens")
        })
    });

    // During a rotation: the frame was sealed with the *secondary* key, so the primary is
    // tried first and fails (and the ciphertext is restored from a copy).
    let mut two = Keyring::new([9; 32]);
    two.install(key).expect("room");
    g.bench_function("keyring_open_with_secondary_1400B", |b| {
        b.iter(|| {
            let tag = keyring
                .seal(&nonce, &header, label, &mut buf)
                .expect("seals");
            two.open(&nonce, &header, label, &mut buf, &tag)
                .expect("opens")
        })
    });

    // Baseline: what the checksum alone costs over the same bytes.
    g.bench_function("crc32c_1400B", |b| {
        b.iter(|| crc32c::crc32c(black_box(&buf)))
    });
    g.finish();
}

criterion_group!(benches, per_kind, gossip_batch, aead);
criterion_main!(benches);

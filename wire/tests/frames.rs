//! Round trips of every message kind, batch packing, and the specific error for every kind
//! of bad input.

mod common;

use proptest::prelude::*;
use ringleader_wire::frame::{
    DATAGRAM_BYTES_MAX_DEFAULT, FLAG_BATCH, FLAG_ENCRYPTED, HEADER_LEN, MAGIC,
    STREAM_FRAME_BYTES_MAX_DEFAULT,
};
use ringleader_wire::msg::swim;
use ringleader_wire::{
    DecodeError, Decoder, EncodeError, Encoder, FrameKind, Header, Keyring, Message, MessageKind,
    MessageRef,
};
use rkyv::util::AlignedVec;

const LABEL: &[u8] = b"prod-eu-1";
const KEY_A: [u8; 32] = [7; 32];
const KEY_B: [u8; 32] = [9; 32];
const STREAM: usize = STREAM_FRAME_BYTES_MAX_DEFAULT;

/// Received bytes live in an aligned buffer, as the transport's buffer ring provides.
fn aligned(bytes: &[u8]) -> AlignedVec<16> {
    let mut v = AlignedVec::<16>::with_capacity(bytes.len());
    v.extend_from_slice(bytes);
    v
}

fn decode_all(buf: &mut [u8], keyring: Option<&Keyring>) -> Result<Vec<Message>, DecodeError> {
    let frame = Decoder::new(LABEL, STREAM).decode(buf, keyring)?;
    frame
        .messages()
        .map(|m| m.and_then(|m| m.to_owned()))
        .collect()
}

fn ping() -> swim::Ping {
    swim::Ping {
        seq_no: 42,
        target: swim::name_hash("node-17"),
        source: "node-3".into(),
        source_addr: std::net::SocketAddr::from(([127, 0, 0, 3], 7946)).into(),
    }
}

fn ping_frame(keyring: Option<&Keyring>) -> AlignedVec<16> {
    let mut enc = Encoder::new(LABEL);
    aligned(
        enc.encode(&ping(), keyring, DATAGRAM_BYTES_MAX_DEFAULT)
            .expect("ping fits a datagram"),
    )
}

/// Rewrites the CRC so a test can reach the checks that come after it.
fn fix_crc(buf: &mut [u8]) {
    let crc = ringleader_wire::frame::frame_crc(buf);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

// Header offsets (see wire/src/frame.rs).
const VERSION_AT: usize = 8;
const KIND_AT: usize = 9;
const FLAGS_AT: usize = 10;
const LEN_AT: usize = 16;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_kind_round_trips_plain(msg in common::message()) {
        let mut enc = Encoder::new(LABEL);
        let mut buf = aligned(enc.encode_message(&msg, None, STREAM).expect("encodes"));
        let got = decode_all(&mut buf, None).expect("decodes");
        prop_assert_eq!(got.len(), 1);
        prop_assert!(common::same(&got[0], &msg), "{:?} != {:?}", got[0], msg);
    }

    #[test]
    fn every_kind_round_trips_sealed(msg in common::message()) {
        let keyring = Keyring::new(KEY_A);
        let mut enc = Encoder::new(LABEL);
        let mut buf = aligned(enc.encode_message(&msg, Some(&keyring), STREAM).expect("encodes"));
        let frame = Decoder::new(LABEL, STREAM).decode(&mut buf, Some(&keyring)).expect("opens");
        prop_assert_eq!(frame.key_index, Some(0));
        prop_assert_eq!(frame.kind, FrameKind::Single(msg.kind()));
        let got: Vec<_> = frame.messages().collect::<Result<_, _>>().expect("valid");
        prop_assert!(common::same(&got[0].to_owned().expect("owned"), &msg));
    }

    #[test]
    fn batches_pack_a_prefix_within_the_limit(
        msgs in proptest::collection::vec(common::message(), 1..40),
        limit in 200usize..2000,
        sealed in any::<bool>(),
    ) {
        let keyring = Keyring::new(KEY_A);
        let keyring = sealed.then_some(&keyring);
        let mut enc = Encoder::new(LABEL);
        let mut batch = enc.batch(keyring, limit);
        let mut packed = Vec::new();
        for m in &msgs {
            if !batch.push_message(m).expect("serializes") {
                break;
            }
            packed.push(m.clone());
        }
        prop_assert_eq!(batch.len(), packed.len());
        if packed.is_empty() {
            prop_assert_eq!(batch.finish().err(), Some(EncodeError::EmptyBatch));
            return Ok(());
        }
        let bytes = batch.finish().expect("finishes");
        prop_assert!(bytes.len() <= limit);
        let mut buf = aligned(bytes);
        let got = decode_all(&mut buf, keyring).expect("decodes");
        prop_assert_eq!(got.len(), packed.len());
        for (g, p) in got.iter().zip(&packed) {
            prop_assert!(common::same(g, p));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), sealed in any::<bool>()) {
        let keyring = Keyring::new(KEY_A);
        let mut buf = aligned(&bytes);
        if let Ok(frame) = Decoder::new(LABEL, STREAM).decode(&mut buf, sealed.then_some(&keyring)) {
            for m in frame.messages() {
                let _ = m.and_then(|m| m.to_owned());
            }
        }
    }

    #[test]
    fn flipping_any_bit_is_detected(bit in 0usize..(8 * 200), sealed in any::<bool>()) {
        let keyring = Keyring::new(KEY_A);
        let keyring = sealed.then_some(&keyring);
        let mut buf = ping_frame(keyring);
        let bit = bit % (buf.len() * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(decode_all(&mut buf, keyring).is_err());
    }
}

#[test]
fn the_strategies_cover_every_kind() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = common::message();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..5000 {
        seen.insert(
            strategy
                .new_tree(&mut runner)
                .expect("tree")
                .current()
                .kind(),
        );
    }
    let all: std::collections::BTreeSet<_> = MessageKind::ALL.iter().copied().collect();
    assert_eq!(seen, all, "a message kind has no round-trip strategy");
}

#[test]
fn kind_codes_are_unique_and_round_trip() {
    let mut codes = std::collections::BTreeSet::new();
    for &k in MessageKind::ALL {
        assert!(codes.insert(k as u8), "duplicate code {}", k as u8);
        assert_eq!(MessageKind::from_u8(k as u8), Some(k));
        assert!(!k.name().is_empty());
    }
    assert_eq!(
        MessageKind::from_u8(0),
        None,
        "0 is the batch marker, never a kind"
    );
}

#[test]
fn single_frame_is_read_in_place() {
    let mut buf = ping_frame(None);
    let frame = Decoder::new(LABEL, STREAM)
        .decode(&mut buf, None)
        .expect("decodes");
    let Some(Ok(MessageRef::Ping(p))) = frame.messages().next() else {
        panic!("not a ping")
    };
    assert_eq!(p.seq_no, 42);
    assert_eq!(p.target, swim::name_hash("node-17"));
    assert_eq!(p.source.as_str(), "node-3");
    assert_eq!(
        p.source_addr.to_socket_addr(),
        Some(std::net::SocketAddr::from(([127, 0, 0, 3], 7946)))
    );
    // Zero copy: the archived string points into the receive buffer.
    let range = frame.body.as_ptr_range();
    assert!(range.contains(&p.source.as_str().as_ptr()));
}

#[test]
fn truncated_frames_say_how_much_is_missing() {
    let buf = ping_frame(None);
    for cut in [0, 1, HEADER_LEN - 1] {
        let mut b = aligned(&buf[..cut]);
        assert_eq!(
            decode_all(&mut b, None),
            Err(DecodeError::Truncated {
                need: HEADER_LEN,
                have: cut
            })
        );
    }
    let mut b = aligned(&buf[..buf.len() - 1]);
    assert_eq!(
        decode_all(&mut b, None),
        Err(DecodeError::Truncated {
            need: buf.len(),
            have: buf.len() - 1
        })
    );
}

#[test]
fn trailing_bytes_are_refused() {
    let mut b = aligned(&ping_frame(None));
    let len = b.len();
    b.extend_from_slice(&[0; 3]);
    assert_eq!(
        decode_all(&mut b, None),
        Err(DecodeError::Trailing {
            frame: len,
            have: len + 3
        })
    );
}

#[test]
fn a_flipped_body_bit_is_a_checksum_error() {
    let mut b = ping_frame(None);
    let last = b.len() - 1;
    b[last] ^= 0x10;
    assert!(matches!(
        decode_all(&mut b, None),
        Err(DecodeError::Checksum { .. })
    ));
}

#[test]
fn bad_magic_and_wrong_version_are_named() {
    let mut b = ping_frame(None);
    b[0] = b'X';
    assert!(matches!(decode_all(&mut b, None), Err(DecodeError::BadMagic(m)) if m != MAGIC));
    let mut b = ping_frame(None);
    b[VERSION_AT] = 2;
    assert_eq!(
        decode_all(&mut b, None),
        Err(DecodeError::UnsupportedVersion(2))
    );
}

#[test]
fn oversized_bodies_are_refused_before_reading_them() {
    let mut b = ping_frame(None);
    b[LEN_AT..LEN_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = Decoder::new(LABEL, 1400).decode(&mut b, None).err();
    assert_eq!(
        err,
        Some(DecodeError::Oversized {
            len: u32::MAX as usize,
            limit: 1400
        })
    );
    // A stream reader learns the length from the header alone, with the same check.
    assert!(matches!(
        Header::parse(&b[..HEADER_LEN], 1 << 20),
        Err(DecodeError::Oversized { .. })
    ));
    let good = ping_frame(None);
    assert_eq!(
        Header::parse(&good[..HEADER_LEN], 1 << 20).map(|h| h.frame_len()),
        Ok(good.len())
    );
}

#[test]
fn encoding_past_the_limit_is_an_error() {
    let mut enc = Encoder::new(LABEL);
    let big = swim::UserMsg {
        payload: vec![1; 2000],
    };
    assert!(matches!(
        enc.encode(&big, None, 1400),
        Err(EncodeError::TooLarge { limit: 1400, .. })
    ));
}

#[test]
fn another_clusters_label_is_refused() {
    let mut enc = Encoder::new(b"other-cluster");
    let mut b = aligned(enc.encode(&ping(), None, 1400).expect("encodes"));
    assert!(matches!(
        decode_all(&mut b, None),
        Err(DecodeError::WrongLabel { .. })
    ));
}

#[test]
fn reserved_bytes_and_unknown_flags_are_malformed() {
    let mut b = ping_frame(None);
    b[25] = 1;
    fix_crc(&mut b);
    assert!(matches!(
        decode_all(&mut b, None),
        Err(DecodeError::MalformedHeader(_))
    ));
    let mut b = ping_frame(None);
    b[FLAGS_AT] |= 0x80;
    fix_crc(&mut b);
    assert!(matches!(
        decode_all(&mut b, None),
        Err(DecodeError::MalformedHeader(_))
    ));
}

#[test]
fn unknown_kinds_are_named() {
    let mut b = ping_frame(None);
    b[KIND_AT] = 250;
    fix_crc(&mut b);
    assert_eq!(decode_all(&mut b, None), Err(DecodeError::UnknownKind(250)));
}

#[test]
fn a_body_that_is_not_a_valid_archive_fails_validation() {
    let mut b = ping_frame(None);
    // Claim the ping is an AppendEntries: same bytes, different layout.
    b[KIND_AT] = MessageKind::AppendEntries as u8;
    fix_crc(&mut b);
    assert_eq!(
        decode_all(&mut b, None),
        Err(DecodeError::InvalidArchive(MessageKind::AppendEntries))
    );
    // Garbage with a valid checksum.
    let mut b = ping_frame(None);
    for x in &mut b[HEADER_LEN..] {
        *x = 0xff;
    }
    fix_crc(&mut b);
    assert_eq!(
        decode_all(&mut b, None),
        Err(DecodeError::InvalidArchive(MessageKind::Ping))
    );
}

#[test]
fn a_misaligned_buffer_fails_validation_instead_of_misreading() {
    let frame = ping_frame(None);
    let mut v = AlignedVec::<16>::new();
    v.push(0);
    v.extend_from_slice(&frame);
    let r = decode_all(&mut v[1..], None);
    assert_eq!(r, Err(DecodeError::InvalidArchive(MessageKind::Ping)));
}

#[test]
fn a_malformed_batch_item_is_named_by_offset() {
    let mut enc = Encoder::new(LABEL);
    let mut batch = enc.batch(None, 1400);
    assert!(batch.push(&ping()).expect("fits"));
    assert!(batch.push(&ping()).expect("fits"));
    let mut b = aligned(batch.finish().expect("finishes"));
    // Make the second item's length run past the body.
    let first_len = u32::from_le_bytes([b[36], b[37], b[38], b[39]]) as usize;
    let second = 8 + first_len.next_multiple_of(8);
    let at = HEADER_LEN + second + 4;
    b[at..at + 4].copy_from_slice(&10_000u32.to_le_bytes());
    fix_crc(&mut b);
    let frame = Decoder::new(LABEL, STREAM)
        .decode(&mut b, None)
        .expect("header is fine");
    assert_eq!(frame.kind, FrameKind::Batch);
    let items: Vec<_> = frame.messages().collect();
    assert_eq!(items.len(), 2);
    assert!(items[0].is_ok());
    assert_eq!(
        items[1].as_ref().err(),
        Some(&DecodeError::MalformedBatch { offset: second })
    );
}

#[test]
fn a_batch_refuses_what_does_not_fit_and_stays_intact() {
    let mut enc = Encoder::new(LABEL);
    let mut batch = enc.batch(None, 200);
    let mut n = 0;
    while batch.push(&ping()).expect("serializes") {
        n += 1;
    }
    assert!(n >= 1);
    assert!(batch.remaining() < 100);
    let bytes = batch.finish().expect("finishes");
    assert!(bytes.len() <= 200);
    assert_eq!(bytes[FLAGS_AT], FLAG_BATCH);
    let mut b = aligned(bytes);
    assert_eq!(decode_all(&mut b, None).expect("decodes").len(), n);
}

#[test]
fn the_wrong_key_cannot_open_a_frame() {
    let mut b = ping_frame(Some(&Keyring::new(KEY_A)));
    assert_eq!(
        decode_all(&mut b, Some(&Keyring::new(KEY_B))),
        Err(DecodeError::NoKeyAuthenticates { tried: 1 })
    );
}

#[test]
fn encryption_is_required_both_ways() {
    let mut b = ping_frame(Some(&Keyring::new(KEY_A)));
    assert_eq!(b[FLAGS_AT] & FLAG_ENCRYPTED, FLAG_ENCRYPTED);
    assert_eq!(
        decode_all(&mut b, None),
        Err(DecodeError::EncryptedWithoutKeyring)
    );
    let mut b = ping_frame(None);
    assert_eq!(
        decode_all(&mut b, Some(&Keyring::new(KEY_A))),
        Err(DecodeError::Unencrypted)
    );
}

#[test]
fn the_header_is_authenticated() {
    let keyring = Keyring::new(KEY_A);
    let mut b = ping_frame(Some(&keyring));
    // Change the kind; the checksum is fixed up, authentication still catches it.
    b[KIND_AT] = MessageKind::Nack as u8;
    fix_crc(&mut b);
    assert_eq!(
        decode_all(&mut b, Some(&keyring)),
        Err(DecodeError::NoKeyAuthenticates { tried: 1 })
    );
}

#[test]
fn the_label_is_associated_data() {
    // Even if two labels' hashes collided, the label itself is authenticated.
    let mut keyring = Keyring::new(KEY_A);
    keyring.install(KEY_B).expect("room");
    let nonce = [1u8; 12];
    let header = [2u8; 16];
    let mut data = *b"some plaintext bytes";
    let tag = keyring
        .seal(&nonce, &header, b"cluster-a", &mut data)
        .expect("seals");
    let sealed = data;
    let r = keyring.open(&nonce, &header, b"cluster-b", &mut data, &tag);
    assert_eq!(r, Err(DecodeError::NoKeyAuthenticates { tried: 2 }));
    assert_eq!(
        data, sealed,
        "with several keys, a failed open leaves the buffer as it was"
    );
    assert_eq!(
        keyring.open(&nonce, &header, b"cluster-a", &mut data, &tag),
        Ok(0)
    );
    assert_eq!(&data, b"some plaintext bytes");
}

#[test]
fn a_large_stream_frame_opens_with_a_secondary_key() {
    // Larger than the stack copy: the ciphertext is saved on the heap between tries.
    let old = Keyring::new(KEY_A);
    let mut enc = Encoder::new(LABEL);
    let big = swim::UserMsg {
        payload: (0..100_000u32).map(|i| i as u8).collect(),
    };
    let mut b = aligned(enc.encode(&big, Some(&old), STREAM).expect("encodes"));
    let mut rotated = Keyring::new(KEY_B);
    rotated.install(KEY_A).expect("room");
    let frame = Decoder::new(LABEL, STREAM)
        .decode(&mut b, Some(&rotated))
        .expect("opens");
    assert_eq!(frame.key_index, Some(1));
    let Some(Ok(MessageRef::UserMsg(m))) = frame.messages().next() else {
        panic!("not a user message")
    };
    assert_eq!(m.payload.len(), 100_000);
    assert!(m.payload.iter().enumerate().all(|(i, &x)| x == i as u8));
}

#[test]
fn rotation_opens_with_secondary_keys_and_reports_which() {
    let old = Keyring::new(KEY_A);
    let mut b = ping_frame(Some(&old));
    let mut rotated = Keyring::new(KEY_A);
    rotated.install(KEY_B).expect("installs");
    rotated.use_key(&KEY_B).expect("uses");
    assert_eq!(rotated.primary(), KEY_B);
    let frame = Decoder::new(LABEL, STREAM)
        .decode(&mut b, Some(&rotated))
        .expect("opens with the old key");
    assert_eq!(frame.key_index, Some(1));
    assert!(matches!(
        frame.messages().next(),
        Some(Ok(MessageRef::Ping(_)))
    ));
}

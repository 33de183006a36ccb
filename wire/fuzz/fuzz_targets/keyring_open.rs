//! Sealed frames with arbitrary nonce, ciphertext and tag, with a valid header and checksum,
//! against a keyring of several keys: authentication must fail cleanly (or, for inputs
//! built from a real seal and mutated, succeed only if untouched).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringleader_wire::frame::{FLAG_ENCRYPTED, HEADER_LEN, MAGIC, VERSION, label_hash};
use ringleader_wire::msg::swim;
use ringleader_wire::{DecodeError, Decoder, Encoder, Keyring, MessageKind};
use rkyv::util::AlignedVec;

fuzz_target!(|data: &[u8]| {
    let mut keyring = Keyring::new([1; 32]);
    keyring.install([2; 32]).expect("room");
    keyring.install([3; 32]).expect("room");
    let decoder = Decoder::new(b"fuzz", 1 << 20);

    // 1. Arbitrary sealed bodies.
    let mut buf = AlignedVec::<16>::with_capacity(HEADER_LEN + data.len());
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&[VERSION, MessageKind::Ping as u8, FLAG_ENCRYPTED, 0]);
    buf.extend_from_slice(&label_hash(b"fuzz").to_le_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 12]);
    buf.extend_from_slice(data);
    fix_crc(&mut buf);
    if let Ok(frame) = decoder.decode(&mut buf, Some(&keyring)) {
        for m in frame.messages() {
            let _ = m.and_then(|m| m.to_owned());
        }
    }

    // 2. A real sealed frame with the fuzz input XORed over its body: any change must fail
    //    authentication (the checksum is fixed up so the keyring is reached).
    let mut enc = Encoder::new(b"fuzz");
    let ping = swim::Ping {
        seq_no: 1,
        target: swim::name_hash("t"),
        source: "s".into(),
        source_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 1)).into(),
    };
    let sealed = enc.encode(&ping, Some(&keyring), 1400).expect("seals");
    let mut buf = AlignedVec::<16>::with_capacity(sealed.len());
    buf.extend_from_slice(sealed);
    let mut changed = false;
    for (b, d) in buf[HEADER_LEN..].iter_mut().zip(data) {
        *b ^= d;
        changed |= *d != 0;
    }
    fix_crc(&mut buf);
    let r = decoder.decode(&mut buf, Some(&keyring));
    if changed {
        assert!(r.is_err(), "a modified sealed frame was accepted");
        if let Err(e) = r {
            assert!(
                matches!(
                    e,
                    DecodeError::NoKeyAuthenticates { .. } | DecodeError::MalformedHeader(_)
                ),
                "{e:?}"
            );
        }
    } else {
        assert!(r.is_ok());
    }
});

fn fix_crc(buf: &mut [u8]) {
    let crc = ringleader_wire::frame::frame_crc(&buf);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
}

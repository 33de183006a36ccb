//! The client protocol's decoder: arbitrary bytes read as a stream of client frames (header
//! checked against `CLIENT_FRAME_BYTES_MAX` first, as client and server readers do), each
//! frame decoded, every `ClientRequest` / `ClientResponse` archive accessed and copied out.
//! Whatever validates must copy out, and re-encode to a frame that decodes to the same
//! message.
//!
//! The first byte is a switch: odd, each frame's checksum is repaired before it is
//! decoded, so that mutations of the body reach archive validation instead of stopping at
//! the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringleader_wire::frame::{HEADER_LEN, frame_crc};
use ringleader_wire::msg::client::{
    CLIENT_FRAME_BYTES_MAX, CLIENT_LABEL, ClientRequest, ClientResponse, client_decoder,
    parse_client_header,
};
use ringleader_wire::{Encoder, Message, MessageRef, WireMessage};
use rkyv::util::AlignedVec;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let repair_checksums = mode & 1 == 1;
    let decoder = client_decoder();
    while rest.len() >= HEADER_LEN {
        let Ok(header) = parse_client_header(rest) else {
            return;
        };
        assert!(header.frame_len() <= CLIENT_FRAME_BYTES_MAX);
        let Some(frame) = rest.get(..header.frame_len()) else {
            return;
        };
        let mut buf = AlignedVec::<16>::with_capacity(frame.len());
        buf.extend_from_slice(frame);
        if repair_checksums {
            let crc = frame_crc(&buf);
            buf[4..8].copy_from_slice(&crc.to_le_bytes());
        }
        if let Ok(f) = decoder.decode(&mut buf, None) {
            for m in f.messages() {
                let owned = match m {
                    Ok(MessageRef::ClientRequest(r)) => Message::ClientRequest(
                        <ClientRequest as WireMessage>::to_owned(r)
                            .expect("a validated request copies out"),
                    ),
                    Ok(MessageRef::ClientResponse(r)) => Message::ClientResponse(
                        <ClientResponse as WireMessage>::to_owned(r)
                            .expect("a validated response copies out"),
                    ),
                    Ok(other) => {
                        let _ = other.to_owned();
                        continue;
                    }
                    Err(_) => break,
                };
                round_trip(&owned);
            }
        }
        rest = &rest[header.frame_len()..];
    }
});

/// Re-encodes `msg` and checks that it decodes to the same message.
fn round_trip(msg: &Message) {
    let mut enc = Encoder::new(CLIENT_LABEL);
    let Ok(frame) = enc.encode_message(msg, None, CLIENT_FRAME_BYTES_MAX) else {
        return; // a message that grew past the limit when re-encoded
    };
    let mut buf = AlignedVec::<16>::with_capacity(frame.len());
    buf.extend_from_slice(frame);
    let f = client_decoder()
        .decode(&mut buf, None)
        .expect("an encoded frame decodes");
    let again: Vec<Message> = f
        .messages()
        .map(|m| m.and_then(|m| m.to_owned()).expect("an encoded message decodes"))
        .collect();
    assert_eq!(again.as_slice(), std::slice::from_ref(msg));
}

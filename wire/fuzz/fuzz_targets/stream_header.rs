//! Stream framing: a reader parses headers from arbitrary bytes to learn frame lengths, then
//! decodes each frame, as the TCP transport does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringleader_wire::frame::HEADER_LEN;
use ringleader_wire::{Decoder, Header};
use rkyv::util::AlignedVec;

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let decoder = Decoder::new(b"fuzz", LIMIT);
    let mut rest = data;
    while rest.len() >= HEADER_LEN {
        let Ok(header) = Header::parse(rest, LIMIT) else {
            return;
        };
        assert!(header.body_len <= LIMIT);
        let Some(frame) = rest.get(..header.frame_len()) else {
            return;
        };
        let mut buf = AlignedVec::<16>::with_capacity(frame.len());
        buf.extend_from_slice(frame);
        if let Ok(f) = decoder.decode(&mut buf, None) {
            for m in f.messages() {
                let _ = m.and_then(|m| m.to_owned());
            }
        }
        rest = &rest[header.frame_len()..];
    }
});

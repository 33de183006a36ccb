//! Arbitrary bytes as a received datagram: decode, validate every message, copy it out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringleader_wire::Decoder;
use rkyv::util::AlignedVec;

fuzz_target!(|data: &[u8]| {
    // The transport hands the decoder 16-byte-aligned buffers; so does the fuzzer.
    let mut buf = AlignedVec::<16>::with_capacity(data.len());
    buf.extend_from_slice(data);
    let decoder = Decoder::new(b"fuzz", 1 << 20);
    if let Ok(frame) = decoder.decode(&mut buf, None) {
        for m in frame.messages() {
            if let Ok(m) = m {
                let _ = m.to_owned();
            }
        }
    }
});

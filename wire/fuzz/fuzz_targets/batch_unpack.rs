//! Arbitrary bytes as the body of a batch frame with a valid header and checksum, so the
//! fuzzer spends its time in batch-item parsing and archive validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringleader_wire::Decoder;
use ringleader_wire::frame::{FLAG_BATCH, HEADER_LEN, MAGIC, VERSION, label_hash};
use rkyv::util::AlignedVec;

fuzz_target!(|body: &[u8]| {
    let mut buf = AlignedVec::<16>::with_capacity(HEADER_LEN + body.len());
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&[VERSION, 0, FLAG_BATCH, 0]);
    buf.extend_from_slice(&label_hash(b"fuzz").to_le_bytes());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 12]);
    buf.extend_from_slice(body);
    let crc = ringleader_wire::frame::frame_crc(&buf);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    let frame = Decoder::new(b"fuzz", 1 << 20)
        .decode(&mut buf, None)
        .expect("the header is valid by construction");
    for m in frame.messages() {
        if let Ok(m) = m {
            let _ = m.to_owned();
        }
    }
});

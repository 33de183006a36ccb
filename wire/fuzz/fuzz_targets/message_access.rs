//! Validated in-place access to an archive of every message kind: the first byte picks the
//! kind, the rest is the archive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringleader_wire::{MessageKind, MessageRef};
use rkyv::util::AlignedVec;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, archive)) = data.split_first() else {
        return;
    };
    let kinds = MessageKind::ALL;
    let kind = kinds[pick as usize % kinds.len()];
    let mut buf = AlignedVec::<16>::with_capacity(archive.len());
    buf.extend_from_slice(archive);
    if let Ok(m) = MessageRef::access(kind, &buf) {
        assert_eq!(m.kind(), kind);
        // Whatever validated must also copy out.
        m.to_owned().expect("a validated archive deserializes");
    }
});

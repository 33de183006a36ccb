//! Steady-state encoding and decoding allocate nothing: counted by a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ringleader_wire::msg::swim;
use ringleader_wire::{Decoder, Encoder, Keyring, MessageRef};
use rkyv::util::AlignedVec;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: delegates to the system allocator; only counts calls on this thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[test]
fn steady_state_encode_and_decode_allocate_nothing() {
    let keyring = Keyring::new([3; 32]);
    let mut enc = Encoder::new(b"cluster");
    let dec = Decoder::new(b"cluster", 1 << 20);
    let mut rx = AlignedVec::<16>::with_capacity(2048);
    let suspect = swim::Suspect {
        incarnation: 9,
        node: "node-0042".into(),
        from: "node-0007".into(),
    };
    let alive = swim::Alive {
        incarnation: 3,
        node: "node-0100".into(),
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 7000)).into(),
        meta: vec![1; 64],
        protocol: [1, 1, 1],
    };
    let mut round = |sealed: bool| -> usize {
        let keyring = sealed.then_some(&keyring);
        let mut batch = enc.batch(keyring, 1400);
        let mut pushed = 0;
        while pushed < 20
            && batch.push(&suspect).expect("encodes")
            && batch.push(&alive).expect("encodes")
        {
            pushed += 2;
        }
        let bytes = batch.finish().expect("finishes");
        rx.clear();
        rx.extend_from_slice(bytes);
        let frame = dec.decode(&mut rx, keyring).expect("decodes");
        let mut seen = 0;
        for m in frame.messages() {
            match m.expect("valid") {
                MessageRef::Suspect(s) => assert_eq!(s.incarnation, 9),
                MessageRef::Alive(a) => assert_eq!(a.meta.len(), 64),
                other => panic!("unexpected {other:?}"),
            }
            seen += 1;
        }
        seen
    };
    // Warm up: buffers and rkyv's arena reach their steady size.
    for _ in 0..4 {
        round(false);
        round(true);
    }
    let before = allocs();
    let mut seen = 0;
    for _ in 0..1000 {
        seen += round(false);
        seen += round(true);
    }
    assert!(seen >= 2 * 1000 * 2, "every round carried messages");
    assert_eq!(allocs() - before, 0, "steady state must not allocate");
}

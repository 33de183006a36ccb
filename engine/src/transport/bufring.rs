//! A provided buffer ring: receive buffers the kernel picks from as datagrams arrive.
//!
//! Layout: one anonymous mapping of `count` ring entries (16 bytes each, shared with the
//! kernel), and one mapping of `count` buffers of `buffer_bytes` each. Both mappings are
//! page-aligned and `buffer_bytes` is a multiple of 16, so every buffer starts 16-byte
//! aligned; a multishot `recvmsg` writes a 16-byte `io_uring_recvmsg_out` header, then the
//! source address (reserved length 16 for IPv4 or 32 for IPv6), so the payload starts at
//! offset 32 or 48: 16-byte aligned, as rkyv's in-place validation wants.
//!
//! Ownership rule (the invariant every `unsafe` here relies on): a buffer belongs to the
//! kernel from the moment its entry is published (tail store) until a completion names its
//! id; then it belongs to the shard until it is pushed back, and the kernel sees it again
//! at the next [`BufRing::publish`]. The only way to the bytes is [`BufRing::with_buffer`],
//! an `unsafe fn` whose caller vouches that a completion named the id, and which gives the
//! buffer back itself when its closure returns, so no slice of it outlives the shard's
//! ownership and a buffer that was never taken is never given back. The
//! mappings outlive the ring's use of them: [`BufRing`] is dropped only after the io_uring
//! that it is registered with has no request left that may pick a buffer (see
//! `UdpRing::drop`), or leaks them if that cannot be established.
//!
//! This module must never hand out a buffer the kernel may still write into.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

/// An anonymous, private, page-aligned memory mapping, unmapped on drop.
pub struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    /// Maps `len` zeroed bytes.
    pub fn new(len: usize) -> io::Result<Mmap> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: anonymous private mapping with no address hint; the kernel picks the
        // address and returns MAP_FAILED on error, which we check.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mmap { ptr, len })
    }

    /// Address of the first byte.
    pub fn addr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `new` refuses zero).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing borrows the mapping
        // once its owner drops it (callers guarantee the kernel no longer uses it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Offset of the tail in the ring (it overlays `resv` of entry 0).
const TAIL_OFFSET: usize = 14;
/// Size of one ring entry (`struct io_uring_buf`).
const ENTRY_BYTES: usize = 16;

/// Receive buffers registered with one io_uring as buffer group `bgid`.
pub struct BufRing {
    ring: Mmap,
    buffers: Mmap,
    count: u16,
    buffer_bytes: usize,
    /// Our copy of the tail: entries up to here are written; the kernel sees them after
    /// [`BufRing::publish`].
    tail: u16,
    published: u16,
    bgid: u16,
    /// Buffers currently handed to the shard (for assertions and leak detection).
    held: Vec<bool>,
    held_count: usize,
}

impl BufRing {
    /// Allocates `count` buffers (a power of two, at most 32768) of `buffer_bytes` each (a
    /// multiple of 16), all initially available to the kernel once registered.
    pub fn new(count: u16, buffer_bytes: usize, bgid: u16) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two <= 32768",
            ));
        }
        if buffer_bytes == 0 || buffer_bytes % 16 != 0 || buffer_bytes > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer size must be a non-zero multiple of 16",
            ));
        }
        let page = super::features::page_bytes();
        let ring_len = (count as usize * ENTRY_BYTES).next_multiple_of(page);
        let ring = Mmap::new(ring_len)?;
        let buffers = Mmap::new((count as usize * buffer_bytes).next_multiple_of(page))?;
        let mut r = BufRing {
            ring,
            buffers,
            count,
            buffer_bytes,
            tail: 0,
            published: 0,
            bgid,
            held: vec![false; count as usize],
            held_count: 0,
        };
        for bid in 0..count {
            r.push(bid);
        }
        r.publish();
        Ok(r)
    }

    /// Buffer group id to name in SQEs.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Number of buffers.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Size of each buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes
    }

    /// Address of the ring entries, for `IORING_REGISTER_PBUF_RING`.
    pub fn ring_addr(&self) -> u64 {
        self.ring.addr() as u64
    }

    /// Buffers the shard holds right now (inside [`BufRing::with_buffer`]; 0 between
    /// calls).
    pub fn held_count(&self) -> usize {
        self.held_count
    }

    fn push(&mut self, bid: u16) {
        let slot = (self.tail & (self.count - 1)) as usize;
        // SAFETY: `bid < count`, so the buffer lies inside `buffers`.
        let addr = unsafe { self.buffers.addr().add(bid as usize * self.buffer_bytes) } as u64;
        let entry = slot * ENTRY_BYTES;
        // SAFETY: `entry + 16 <= count * 16 <= ring.len()`; the kernel reads entries only
        // between `head` and the published tail, and this slot is beyond the published tail
        // (each bid is pushed at most once while not held, so at most `count` entries are
        // outstanding and the slot was consumed by the kernel already). We write addr (8),
        // len (4), bid (2) and leave the 2 bytes at offset 14 alone: in entry 0 they are the
        // shared tail.
        unsafe {
            let base = self.ring.addr().add(entry);
            base.cast::<u64>().write_volatile(addr);
            base.add(8)
                .cast::<u32>()
                .write_volatile(self.buffer_bytes as u32);
            base.add(12).cast::<u16>().write_volatile(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every pushed entry visible to the kernel.
    pub fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // SAFETY: the tail is a naturally aligned u16 at offset 14 of the page-aligned ring,
        // shared with the kernel, which reads it with acquire semantics; AtomicU16 has the
        // same layout as u16.
        let tail = unsafe { &*self.ring.addr().add(TAIL_OFFSET).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }

    /// Runs `f` on the bytes of buffer `bid`, which a completion named, then gives the
    /// buffer back to the kernel (visible after the next [`BufRing::publish`]).
    ///
    /// Returns `None`, and neither runs `f` nor gives anything back, if `bid` is out of
    /// range or held already, which would mean the kernel and the shard disagree: the
    /// caller counts it and goes on.
    ///
    /// # Safety
    ///
    /// The kernel must be done writing buffer `bid`: a completion of a request that picked
    /// from this ring named it (`IORING_CQE_F_BUFFER`), and it has not been given back
    /// since (each completion is passed here once). Or the ring is registered with no
    /// io_uring at all. Otherwise the kernel may write the bytes while `f` reads them.
    pub unsafe fn with_buffer<R>(&mut self, bid: u16, f: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let i = bid as usize;
        if i >= self.count as usize || self.held[i] {
            return None;
        }
        self.held[i] = true;
        self.held_count += 1;
        // SAFETY: the caller vouches that the kernel is done writing buffer `bid` and will
        // not touch it again until it is published, which happens only after `push` below,
        // after `f` returned (ownership rule above); `held[bid]` makes this the only live
        // slice of it, and the slice dies with `f`. It lies within `buffers` (`i < count`).
        let buf = unsafe {
            std::slice::from_raw_parts_mut(
                self.buffers.addr().add(i * self.buffer_bytes),
                self.buffer_bytes,
            )
        };
        let r = f(buf);
        self.held[i] = false;
        self.held_count -= 1;
        self.push(bid);
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring's entry `slot`: (address, length, buffer id), as the kernel reads it.
    fn entry(r: &BufRing, slot: usize) -> (u64, u32, u16) {
        // SAFETY: `slot < count`, so the 16 bytes lie inside the ring mapping; no kernel
        // shares it (the ring is registered with no io_uring in these tests).
        unsafe {
            let base = r.ring.addr().add(slot * ENTRY_BYTES);
            (
                base.cast::<u64>().read_volatile(),
                base.add(8).cast::<u32>().read_volatile(),
                base.add(12).cast::<u16>().read_volatile(),
            )
        }
    }

    // SAFETY (every `with_buffer` below): the ring is registered with no io_uring, so no
    // kernel writes its buffers.

    #[test]
    fn buffers_are_aligned_and_distinct() {
        let mut r = BufRing::new(8, 2048, 0).expect("bufring");
        // SAFETY: see above.
        let a = unsafe { r.with_buffer(1, |b| b.as_ptr() as usize) }.expect("buffer 1");
        // SAFETY: see above.
        let b = unsafe { r.with_buffer(2, |b| b.as_ptr() as usize) }.expect("buffer 2");
        assert_eq!(a % 16, 0);
        assert_eq!(b - a, 2048);
        assert_eq!(
            r.held_count(),
            0,
            "each buffer is given back when its closure ends"
        );
        // SAFETY: see above.
        let held = unsafe { r.with_buffer(3, |_| ()) };
        assert_eq!(held, Some(()));
    }

    #[test]
    fn a_buffer_is_held_only_inside_its_closure_and_pushed_back_after() {
        let mut r = BufRing::new(8, 2048, 0).expect("bufring");
        let tail = r.tail;
        // SAFETY: see above.
        let len = unsafe {
            r.with_buffer(5, |b| {
                b[0] = 7;
                b.len()
            })
        };
        assert_eq!(len, Some(2048));
        assert_eq!(r.held_count(), 0);
        assert_eq!(r.tail, tail.wrapping_add(1), "given back once");
        let (addr, bytes, bid) = entry(&r, (tail & 7) as usize);
        assert_eq!(bid, 5);
        assert_eq!(bytes, 2048);
        assert_eq!(addr, r.buffers.addr() as u64 + 5 * 2048);
    }

    /// A completion naming a buffer the ring does not have (a kernel and shard that
    /// disagree) is refused without running the closure and without giving anything back:
    /// giving back a buffer that was never taken would hand the kernel a buffer twice.
    #[test]
    fn a_bad_buffer_id_is_refused_and_nothing_is_given_back() {
        let mut r = BufRing::new(8, 2048, 0).expect("bufring");
        let tail = r.tail;
        let mut ran = false;
        // SAFETY: see above.
        let out = unsafe { r.with_buffer(8, |_| ran = true) };
        assert_eq!(out, None, "out of range");
        assert!(!ran);
        assert_eq!(r.tail, tail, "nothing pushed back for a refused id");
        assert_eq!(r.held_count(), 0);
        // SAFETY: see above.
        let out = unsafe { r.with_buffer(u16::MAX, |_| ()) };
        assert_eq!(out, None);
        assert_eq!(r.tail, tail);
    }

    #[test]
    fn bad_geometry_is_refused() {
        assert!(BufRing::new(6, 2048, 0).is_err());
        assert!(BufRing::new(8, 2040, 0).is_err());
    }
}

//! The on-disk format of the log: batches of records closed by a commit marker, and the
//! two hard-state slots. Pure functions over byte slices (no IO), so every decoder can be
//! tested with injected faults and never panics on what it reads from disk.
//!
//! All integers are little-endian. Every batch starts at an offset that is a multiple of
//! [`ALIGN_BYTES`] and its length is a multiple of it too.
//!
//! ```text
//! batch header (32 B): magic "RLWB" u32 | version u8 | kind u8 | flags u16 | batch_len u32
//!                      | count u32 | first_index u64 | header_crc u32 (over bytes 0..24) | 0 u32
//! record (24 B + payload, padded to 8): payload_len u32 | crc u32 (over bytes 8..24 and the
//!                      payload) | term u64 | index u64 | payload
//! commit marker (16 B): magic "RLWC" u32 | batch_crc u32 (over every byte of the batch
//!                      before the marker) | last_index u64
//! ```
//!
//! The version byte lets a later format add fields (for example a Raft group id per record
//! when many groups share one log) without breaking readers: a reader refuses a version it
//! does not know instead of misreading it.

/// Magic number opening every batch ("RLWB").
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"RLWB");
/// Magic number of the commit marker closing every batch ("RLWC").
pub const COMMIT_MAGIC: u32 = u32::from_le_bytes(*b"RLWC");
/// Magic number of a hard-state slot ("RLHS").
pub const HARD_STATE_MAGIC: u32 = u32::from_le_bytes(*b"RLHS");
/// The only format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Batch kind: a run of log entries.
pub const KIND_ENTRIES: u8 = 1;
/// Alignment of batch starts and of record lengths.
pub const ALIGN_BYTES: usize = 8;
/// Size of a batch header.
pub const BATCH_HEADER_BYTES: usize = 32;
/// Size of a record header (before the payload).
pub const RECORD_HEADER_BYTES: usize = 24;
/// Size of the commit marker.
pub const COMMIT_BYTES: usize = 16;
/// Smallest possible batch: one record with an empty payload.
pub const BATCH_BYTES_MIN: usize = BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + COMMIT_BYTES;
/// Size of one hard-state slot on disk (one page, so that an O_DIRECT write covers it).
pub const HARD_STATE_SLOT_BYTES: usize = 4096;
/// Encoded length of the meaningful prefix of a hard-state slot.
pub const HARD_STATE_ENCODED_BYTES: usize = 48;

/// `n` rounded up to a multiple of [`ALIGN_BYTES`].
pub const fn align_up(n: usize) -> usize {
    (n + ALIGN_BYTES - 1) & !(ALIGN_BYTES - 1)
}

/// Bytes a record with a payload of `payload_len` bytes occupies inside a batch.
pub const fn record_bytes(payload_len: usize) -> usize {
    align_up(RECORD_HEADER_BYTES + payload_len)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

/// Appends records to a batch being built in a reusable buffer.
///
/// The header and the commit marker are written by [`BatchBuilder::seal`]; until then the
/// buffer holds a zeroed header and the records.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    buf: Vec<u8>,
    count: u32,
    first_index: u64,
    record_offsets: Vec<u32>,
    sealed: bool,
}

impl BatchBuilder {
    /// An empty builder whose buffer can grow to `capacity_bytes` without reallocating.
    pub fn with_capacity(capacity_bytes: usize) -> BatchBuilder {
        let mut buf = Vec::with_capacity(capacity_bytes);
        buf.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilder {
            buf,
            count: 0,
            first_index: 0,
            record_offsets: Vec::new(),
            sealed: false,
        }
    }

    /// Forgets every record, keeping the allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.resize(BATCH_HEADER_BYTES, 0);
        self.count = 0;
        self.first_index = 0;
        self.record_offsets.clear();
        self.sealed = false;
    }

    /// Offset of each record relative to the batch start.
    pub fn record_offsets(&self) -> &[u32] {
        &self.record_offsets
    }

    /// Number of records so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether no record was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Index of the first record (meaningless while empty).
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// Index of the last record (meaningless while empty).
    pub fn last_index(&self) -> u64 {
        self.first_index + u64::from(self.count) - 1
    }

    /// Bytes the batch will occupy once sealed (header, records and marker).
    pub fn sealed_bytes(&self) -> usize {
        if self.sealed {
            self.buf.len()
        } else {
            self.buf.len() + COMMIT_BYTES
        }
    }

    /// Adds one record. The caller guarantees index contiguity.
    pub fn push(&mut self, index: u64, term: u64, payload: &[u8]) {
        assert!(!self.sealed, "pushing into a sealed batch");
        if self.count == 0 {
            self.first_index = index;
        }
        debug_assert_eq!(index, self.first_index + u64::from(self.count));
        let start = self.buf.len();
        self.record_offsets
            .push(u32::try_from(start).unwrap_or(u32::MAX));
        let payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&payload_len.to_le_bytes());
        self.buf.extend_from_slice(&[0u8; 4]);
        self.buf.extend_from_slice(&term.to_le_bytes());
        self.buf.extend_from_slice(&index.to_le_bytes());
        self.buf.extend_from_slice(payload);
        let mut crc = crc32c::crc32c(&self.buf[start + 8..start + RECORD_HEADER_BYTES]);
        crc = crc32c::crc32c_append(crc, payload);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.buf.resize(align_up(self.buf.len()), 0);
        self.count += 1;
    }

    /// Writes the header and the commit marker and returns the finished batch bytes.
    /// Must not be called on an empty builder.
    pub fn seal(&mut self) -> &[u8] {
        assert!(self.count > 0, "sealing an empty batch");
        if self.sealed {
            return &self.buf;
        }
        self.sealed = true;
        let batch_len = self.buf.len() + COMMIT_BYTES;
        let batch_len_u32 = u32::try_from(batch_len).unwrap_or(u32::MAX);
        let h = &mut self.buf[..BATCH_HEADER_BYTES];
        h[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        h[4] = FORMAT_VERSION;
        h[5] = KIND_ENTRIES;
        h[6..8].copy_from_slice(&0u16.to_le_bytes());
        h[8..12].copy_from_slice(&batch_len_u32.to_le_bytes());
        h[12..16].copy_from_slice(&self.count.to_le_bytes());
        h[16..24].copy_from_slice(&self.first_index.to_le_bytes());
        let hcrc = crc32c::crc32c(&h[0..24]);
        h[24..28].copy_from_slice(&hcrc.to_le_bytes());
        h[28..32].copy_from_slice(&0u32.to_le_bytes());
        let bcrc = crc32c::crc32c(&self.buf);
        let last = self.last_index();
        self.buf.extend_from_slice(&COMMIT_MAGIC.to_le_bytes());
        self.buf.extend_from_slice(&bcrc.to_le_bytes());
        self.buf.extend_from_slice(&last.to_le_bytes());
        debug_assert_eq!(self.buf.len(), batch_len);
        debug_assert_eq!(batch_len % ALIGN_BYTES, 0);
        &self.buf
    }
}

/// Why the bytes at some offset are not a valid batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFault {
    /// The first four bytes are not the batch magic.
    BadMagic,
    /// The header checksum does not match.
    HeaderChecksum,
    /// The header's length or count is impossible, or the batch runs past the segment.
    BadLength,
    /// A record's length runs past its batch, or the records do not fill the batch.
    RecordLength {
        /// Position of the record in its batch.
        record: u32,
    },
    /// A record's checksum does not match.
    RecordChecksum {
        /// Position of the record in its batch.
        record: u32,
    },
    /// A record's index is not the next one of its batch.
    RecordIndex {
        /// Position of the record in its batch.
        record: u32,
    },
    /// The commit marker is missing (a batch whose write did not complete).
    MissingCommit,
    /// The commit marker is there but the batch checksum does not match.
    BatchChecksum,
}

impl std::fmt::Display for BatchFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchFault::BadMagic => write!(f, "bad batch magic"),
            BatchFault::HeaderChecksum => write!(f, "batch header checksum mismatch"),
            BatchFault::BadLength => write!(f, "impossible batch length or count"),
            BatchFault::RecordLength { record } => write!(f, "record {record}: bad length"),
            BatchFault::RecordChecksum { record } => {
                write!(f, "record {record}: checksum mismatch")
            }
            BatchFault::RecordIndex { record } => {
                write!(f, "record {record}: index out of sequence")
            }
            BatchFault::MissingCommit => write!(f, "commit marker missing"),
            BatchFault::BatchChecksum => write!(f, "batch checksum mismatch"),
        }
    }
}

/// What the decoder found at an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The header bytes are all zero: nothing was ever written here.
    Zero,
    /// A complete, checksummed batch.
    Batch(BatchInfo),
    /// A header with a version this code does not know (not corruption: a newer writer).
    UnknownVersion(u8),
    /// Not a valid batch. `intact_records` are the records at the start of the batch whose
    /// own checksums verify (they are reported when a torn tail is dropped).
    Invalid {
        /// What is wrong.
        fault: BatchFault,
        /// Index range of the leading records that verify on their own, if any.
        intact_records: Option<(u64, u64)>,
    },
}

/// A valid batch's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchInfo {
    /// Total bytes, header and marker included.
    pub len: usize,
    /// Index of the first record.
    pub first_index: u64,
    /// Number of records (at least one).
    pub count: u32,
    /// Offset of each record, relative to the batch start.
    pub record_offsets: Vec<u32>,
}

impl BatchInfo {
    /// Index of the last record.
    pub fn last_index(&self) -> u64 {
        self.first_index + u64::from(self.count) - 1
    }
}

/// A decoded record that borrows its payload from the segment bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Raft index.
    pub index: u64,
    /// Raft term.
    pub term: u64,
    /// Application bytes.
    pub payload: &'a [u8],
    /// Bytes the record occupies (header, payload, padding).
    pub len: usize,
}

/// Decodes one record at the start of `b` and verifies its checksum.
pub fn decode_record(b: &[u8]) -> Result<RecordView<'_>, BatchFault> {
    let r0 = BatchFault::RecordLength { record: 0 };
    let payload_len = u32_at(b, 0).ok_or(r0)? as usize;
    let crc = u32_at(b, 4).ok_or(r0)?;
    let term = u64_at(b, 8).ok_or(r0)?;
    let index = u64_at(b, 16).ok_or(r0)?;
    let end = RECORD_HEADER_BYTES.checked_add(payload_len).ok_or(r0)?;
    let payload = b.get(RECORD_HEADER_BYTES..end).ok_or(r0)?;
    let mut c = crc32c::crc32c(&b[8..RECORD_HEADER_BYTES]);
    c = crc32c::crc32c_append(c, payload);
    if c != crc {
        return Err(BatchFault::RecordChecksum { record: 0 });
    }
    Ok(RecordView {
        index,
        term,
        payload,
        len: align_up(end),
    })
}

fn with_record(fault: BatchFault, record: u32) -> BatchFault {
    match fault {
        BatchFault::RecordLength { .. } => BatchFault::RecordLength { record },
        BatchFault::RecordChecksum { .. } => BatchFault::RecordChecksum { record },
        other => other,
    }
}

/// Decodes the batch at the start of `b` (the rest of the segment), verifying every checksum.
/// `batch_bytes_max` bounds the length a header may claim.
pub fn decode_batch(b: &[u8], batch_bytes_max: usize) -> Decoded {
    let Some(head) = b.get(..BATCH_HEADER_BYTES) else {
        return if b.iter().all(|&x| x == 0) {
            Decoded::Zero
        } else {
            Decoded::Invalid {
                fault: BatchFault::BadLength,
                intact_records: None,
            }
        };
    };
    if head.iter().all(|&x| x == 0) {
        return Decoded::Zero;
    }
    let invalid = |fault| Decoded::Invalid {
        fault,
        intact_records: None,
    };
    if u32_at(head, 0) != Some(BATCH_MAGIC) {
        return invalid(BatchFault::BadMagic);
    }
    if u32_at(head, 24) != Some(crc32c::crc32c(&head[0..24])) {
        return invalid(BatchFault::HeaderChecksum);
    }
    if head[4] != FORMAT_VERSION || head[5] != KIND_ENTRIES {
        return Decoded::UnknownVersion(head[4]);
    }
    let (Some(len), Some(count), Some(first_index)) =
        (u32_at(head, 8), u32_at(head, 12), u64_at(head, 16))
    else {
        return invalid(BatchFault::BadLength);
    };
    let len = len as usize;
    let len_ok = len >= BATCH_BYTES_MIN
        && len % ALIGN_BYTES == 0
        && len <= batch_bytes_max.max(BATCH_BYTES_MIN);
    let count_ok = count >= 1
        && (count as usize) <= (len - BATCH_HEADER_BYTES - COMMIT_BYTES) / RECORD_HEADER_BYTES;
    if !len_ok
        || !count_ok
        || first_index == 0
        || first_index.checked_add(u64::from(count)).is_none()
    {
        return invalid(BatchFault::BadLength);
    }
    // Walk the records that lie inside the available bytes; they are reported even if the
    // batch turns out to be torn.
    let records_end = (len - COMMIT_BYTES).min(b.len());
    let mut offsets = Vec::with_capacity(count as usize);
    let mut at = BATCH_HEADER_BYTES;
    let mut fault = None;
    for i in 0..count {
        let Some(rest) = b.get(at..records_end) else {
            fault = Some(BatchFault::RecordLength { record: i });
            break;
        };
        match decode_record(rest) {
            Ok(r) if r.index == first_index + u64::from(i) => {
                offsets.push(u32::try_from(at).unwrap_or(u32::MAX));
                at += r.len;
            }
            Ok(_) => {
                fault = Some(BatchFault::RecordIndex { record: i });
                break;
            }
            Err(f) => {
                fault = Some(with_record(f, i));
                break;
            }
        }
    }
    let intact = |n: usize| (n > 0).then(|| (first_index, first_index + n as u64 - 1));
    if len > b.len() {
        // The header claims more bytes than the segment holds.
        return Decoded::Invalid {
            fault: BatchFault::BadLength,
            intact_records: intact(offsets.len()),
        };
    }
    if let Some(fault) = fault {
        let fault = if offsets.len() as u64 == u64::from(count) {
            BatchFault::MissingCommit
        } else {
            fault
        };
        return Decoded::Invalid {
            fault,
            intact_records: intact(offsets.len()),
        };
    }
    if at != len - COMMIT_BYTES {
        return Decoded::Invalid {
            fault: BatchFault::RecordLength { record: count - 1 },
            intact_records: intact(offsets.len()),
        };
    }
    let marker = &b[len - COMMIT_BYTES..len];
    let last = first_index + u64::from(count) - 1;
    if u32_at(marker, 0) != Some(COMMIT_MAGIC) || u64_at(marker, 8) != Some(last) {
        return Decoded::Invalid {
            fault: BatchFault::MissingCommit,
            intact_records: intact(offsets.len()),
        };
    }
    if u32_at(marker, 4) != Some(crc32c::crc32c(&b[..len - COMMIT_BYTES])) {
        return Decoded::Invalid {
            fault: BatchFault::BatchChecksum,
            intact_records: intact(offsets.len()),
        };
    }
    Decoded::Batch(BatchInfo {
        len,
        first_index,
        count,
        record_offsets: offsets,
    })
}

/// Raft's persistent state: current term, vote, and the highest known commit index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Node voted for in `term`, if any.
    pub vote: Option<u64>,
    /// Highest index known to be committed.
    pub commit: u64,
}

/// Encodes hard state with its write sequence number into one slot image.
pub fn encode_hard_state(seq: u64, hs: &HardState, out: &mut [u8]) {
    assert!(out.len() >= HARD_STATE_ENCODED_BYTES);
    out.fill(0);
    out[0..4].copy_from_slice(&HARD_STATE_MAGIC.to_le_bytes());
    out[4] = FORMAT_VERSION;
    out[5] = u8::from(hs.vote.is_some());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..24].copy_from_slice(&hs.term.to_le_bytes());
    out[24..32].copy_from_slice(&hs.vote.unwrap_or(0).to_le_bytes());
    out[32..40].copy_from_slice(&hs.commit.to_le_bytes());
    let crc = crc32c::crc32c(&out[0..40]);
    out[40..44].copy_from_slice(&crc.to_le_bytes());
}

/// What a hard-state slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotContent {
    /// Never written (all zero).
    Empty,
    /// A valid state and its write sequence number.
    Valid {
        /// Write sequence number; the higher valid slot wins.
        seq: u64,
        /// The state.
        state: HardState,
    },
    /// Bytes that do not verify.
    Corrupt,
}

/// Decodes one hard-state slot image.
pub fn decode_hard_state(b: &[u8]) -> SlotContent {
    let Some(b) = b.get(..HARD_STATE_ENCODED_BYTES) else {
        return SlotContent::Corrupt;
    };
    if b.iter().all(|&x| x == 0) {
        return SlotContent::Empty;
    }
    if u32_at(b, 0) != Some(HARD_STATE_MAGIC) || b[4] != FORMAT_VERSION || b[5] > 1 {
        return SlotContent::Corrupt;
    }
    if u32_at(b, 40) != Some(crc32c::crc32c(&b[0..40])) {
        return SlotContent::Corrupt;
    }
    match (u64_at(b, 8), u64_at(b, 16), u64_at(b, 24), u64_at(b, 32)) {
        (Some(seq), Some(term), Some(vote), Some(commit)) => SlotContent::Valid {
            seq,
            state: HardState {
                term,
                vote: (b[5] == 1).then_some(vote),
                commit,
            },
        },
        _ => SlotContent::Corrupt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: u64, payloads: &[&[u8]]) -> Vec<u8> {
        let mut bb = BatchBuilder::with_capacity(1024);
        for (i, p) in payloads.iter().enumerate() {
            bb.push(first + i as u64, 7, p);
        }
        bb.seal().to_vec()
    }

    #[test]
    fn round_trip() {
        let b = batch(5, &[b"hello", b"", b"world!!!!"]);
        assert_eq!(b.len() % ALIGN_BYTES, 0);
        let Decoded::Batch(info) = decode_batch(&b, 1 << 20) else {
            panic!("not a batch")
        };
        assert_eq!((info.first_index, info.count, info.len), (5, 3, b.len()));
        let r = decode_record(&b[info.record_offsets[2] as usize..]).expect("record");
        assert_eq!((r.index, r.term, r.payload), (7, 7, &b"world!!!!"[..]));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let b = batch(1, &[b"abc", b"defgh"]);
        for byte in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[byte] ^= 1 << bit;
                match decode_batch(&c, 1 << 20) {
                    Decoded::Invalid { .. } | Decoded::UnknownVersion(_) => {}
                    other => panic!("flip at byte {byte} bit {bit} decoded as {other:?}"),
                }
            }
        }
    }

    #[test]
    fn truncated_batch_reports_intact_records() {
        let b = batch(10, &[b"aaaa", b"bbbb", b"cccc"]);
        let cut = &b[..b.len() - COMMIT_BYTES];
        let mut padded = cut.to_vec();
        padded.resize(b.len() + 64, 0);
        match decode_batch(&padded, 1 << 20) {
            Decoded::Invalid {
                fault: BatchFault::MissingCommit,
                intact_records: Some((10, 12)),
            } => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(decode_batch(&[0u8; 64], 1 << 20), Decoded::Zero);
    }

    #[test]
    fn hard_state_round_trip_and_corruption() {
        let mut slot = [0u8; 64];
        let hs = HardState {
            term: 9,
            vote: Some(3),
            commit: 77,
        };
        encode_hard_state(42, &hs, &mut slot);
        assert_eq!(
            decode_hard_state(&slot),
            SlotContent::Valid { seq: 42, state: hs }
        );
        slot[20] ^= 1;
        assert_eq!(decode_hard_state(&slot), SlotContent::Corrupt);
        assert_eq!(decode_hard_state(&[0u8; 64]), SlotContent::Empty);
    }
}

//! Recovery scan of one segment's bytes (no IO): which batches are valid, where the data
//! ends, and whether what follows the end is a torn tail (dropped and reported) or
//! corruption in the middle of the log (refused).
//!
//! Why a torn tail can only span two batches: the writer keeps at most one batch whose
//! `fdatasync` is in flight and one more batch written behind it. A batch is acknowledged
//! only after its sync completes, and the batch after next is only written once that has
//! happened. So after a crash the unacknowledged bytes are the last two batches at most;
//! anything invalid that is followed by more than one valid batch, or by data further
//! than two batches away, was acknowledged once and is corruption, never a torn tail.

use super::format::{self, BATCH_MAGIC, BatchFault, Decoded};

/// The valid content of a segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// One past the last valid entry (equals the first index when the segment is empty).
    pub next_index: u64,
    /// Byte offset just past the last valid batch: where the next batch goes.
    pub end_offset: u64,
    /// First index and offset of each valid batch.
    pub batch_starts: Vec<(u64, u32)>,
    /// Offset of each valid record, entry `first_index + i` at position `i`.
    pub record_offsets: Vec<u32>,
}

/// A torn tail found at the end of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTailScan {
    /// Offset of the first byte that is not part of a valid batch.
    pub offset: u64,
    /// One past the last non-zero byte of the dropped region.
    pub garbage_end: u64,
    /// Index range of entries whose records (or whole batches) were intact in the dropped
    /// region but were never covered by a valid commit in sequence.
    pub entries_dropped: Option<(u64, u64)>,
    /// What was wrong at `offset`.
    pub fault: String,
}

/// Why a segment cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// Invalid bytes that are not a torn tail.
    Corrupt {
        /// Offset of the first invalid byte.
        offset: u64,
        /// What is wrong there, and why it is not a torn tail.
        reason: String,
    },
    /// A batch written by a newer format version.
    UnknownVersion {
        /// Offset of the batch.
        offset: u64,
        /// The version byte found.
        version: u8,
    },
}

/// Scans one segment whose first entry must be `first_index`.
///
/// `is_last` says whether this is the newest segment (the only place a torn tail can be).
/// `tail_window_bytes` bounds how far past the first invalid byte unacknowledged data may
/// lie (two batches, see the module docs).
pub fn scan_segment(
    bytes: &[u8],
    first_index: u64,
    is_last: bool,
    batch_bytes_max: usize,
    tail_window_bytes: u64,
) -> Result<(SegmentScan, Option<TornTailScan>), ScanError> {
    let mut scan = SegmentScan {
        next_index: first_index,
        ..SegmentScan::default()
    };
    let mut at = 0usize;
    while at < bytes.len() {
        match format::decode_batch(&bytes[at..], batch_bytes_max) {
            Decoded::Batch(info) => {
                if info.first_index != scan.next_index {
                    return Err(ScanError::Corrupt {
                        offset: at as u64,
                        reason: format!(
                            "batch starts at index {} where index {} was expected",
                            info.first_index, scan.next_index
                        ),
                    });
                }
                let at_u32 = u32::try_from(at).map_err(|_| ScanError::Corrupt {
                    offset: at as u64,
                    reason: "segment larger than 4 GiB".into(),
                })?;
                scan.batch_starts.push((info.first_index, at_u32));
                scan.record_offsets
                    .extend(info.record_offsets.iter().map(|&o| o + at_u32));
                scan.next_index = info.last_index() + 1;
                at += info.len;
            }
            Decoded::UnknownVersion(version) => {
                return Err(ScanError::UnknownVersion {
                    offset: at as u64,
                    version,
                });
            }
            Decoded::Zero => {
                scan.end_offset = at as u64;
                let Some(last_nonzero) = bytes[at..].iter().rposition(|&x| x != 0) else {
                    return Ok((scan, None));
                };
                let garbage_end = at + last_nonzero + 1;
                let torn = tail_analysis(
                    bytes,
                    at,
                    garbage_end,
                    "zeroed header followed by data".into(),
                    None,
                    is_last,
                    batch_bytes_max,
                    tail_window_bytes,
                )?;
                return Ok((scan, Some(torn)));
            }
            Decoded::Invalid {
                fault,
                intact_records,
            } => {
                scan.end_offset = at as u64;
                let garbage_end = bytes[at..]
                    .iter()
                    .rposition(|&x| x != 0)
                    .map_or(at, |p| at + p + 1);
                let intact = intact_records.filter(|&(first, _)| first == scan.next_index);
                let torn = tail_analysis(
                    bytes,
                    at,
                    garbage_end,
                    describe(fault),
                    intact,
                    is_last,
                    batch_bytes_max,
                    tail_window_bytes,
                )?;
                return Ok((scan, Some(torn)));
            }
        }
    }
    scan.end_offset = at as u64;
    Ok((scan, None))
}

fn describe(fault: BatchFault) -> String {
    fault.to_string()
}

#[allow(clippy::too_many_arguments)]
fn tail_analysis(
    bytes: &[u8],
    at: usize,
    garbage_end: usize,
    fault: String,
    intact: Option<(u64, u64)>,
    is_last: bool,
    batch_bytes_max: usize,
    tail_window_bytes: u64,
) -> Result<TornTailScan, ScanError> {
    if !is_last {
        return Err(ScanError::Corrupt {
            offset: at as u64,
            reason: format!(
                "{fault} in a segment that is not the newest (a torn write can only be in the newest)"
            ),
        });
    }
    // Look for valid batches after the bad spot, at every aligned offset.
    let mut later: Vec<(usize, format::BatchInfo)> = Vec::new();
    let mut q = at + format::ALIGN_BYTES;
    while q + format::BATCH_HEADER_BYTES <= bytes.len() && q < garbage_end {
        if bytes[q..q + 4] == BATCH_MAGIC.to_le_bytes()
            && let Decoded::Batch(info) = format::decode_batch(&bytes[q..], batch_bytes_max)
        {
            let len = info.len;
            later.push((q, info));
            q += len;
            continue;
        }
        q += format::ALIGN_BYTES;
    }
    let window_end = (at as u64).saturating_add(tail_window_bytes);
    if later.len() > 1 {
        return Err(ScanError::Corrupt {
            offset: at as u64,
            reason: format!(
                "{fault}, followed by {} valid batches (first at offset {}, indexes {}..={}): at most one unacknowledged batch can follow a torn one",
                later.len(),
                later[0].0,
                later[0].1.first_index,
                later[later.len() - 1].1.last_index()
            ),
        });
    }
    if garbage_end as u64 > window_end {
        return Err(ScanError::Corrupt {
            offset: at as u64,
            reason: format!(
                "{fault}, with data up to offset {garbage_end}, beyond the {tail_window_bytes}-byte window a torn tail can span"
            ),
        });
    }
    let mut dropped = intact;
    if let Some((_, info)) = later.first() {
        dropped = Some(match dropped {
            Some((lo, hi)) => (lo.min(info.first_index), hi.max(info.last_index())),
            None => (info.first_index, info.last_index()),
        });
    }
    Ok(TornTailScan {
        offset: at as u64,
        garbage_end: garbage_end as u64,
        entries_dropped: dropped,
        fault,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::format::BatchBuilder;

    const MAX: usize = 1 << 16;
    const WINDOW: u64 = 2 * (MAX as u64 + 4096);

    fn segment(first: u64, batches: &[usize], size: usize) -> (Vec<u8>, Vec<usize>) {
        let mut seg = Vec::new();
        let mut starts = Vec::new();
        let mut index = first;
        for &n in batches {
            let mut bb = BatchBuilder::with_capacity(4096);
            for _ in 0..n {
                bb.push(index, 1, &index.to_le_bytes());
                index += 1;
            }
            starts.push(seg.len());
            seg.extend_from_slice(bb.seal());
        }
        seg.resize(size, 0);
        (seg, starts)
    }

    #[test]
    fn clean_segment() {
        let (seg, starts) = segment(10, &[3, 1, 4], 4096);
        let (scan, torn) = scan_segment(&seg, 10, true, MAX, WINDOW).expect("scan");
        assert_eq!(torn, None);
        assert_eq!(scan.next_index, 18);
        assert_eq!(scan.record_offsets.len(), 8);
        assert_eq!(
            scan.batch_starts
                .iter()
                .map(|b| b.1 as usize)
                .collect::<Vec<_>>(),
            starts
        );
    }

    #[test]
    fn torn_last_batch_is_dropped_and_reported() {
        let (mut seg, starts) = segment(1, &[2, 2, 3], 4096);
        let last = starts[2];
        // The write of the last batch stopped before its commit marker.
        let end = seg.iter().rposition(|&x| x != 0).expect("data") + 1;
        seg[end - 16..end].fill(0);
        let (scan, torn) = scan_segment(&seg, 1, true, MAX, WINDOW).expect("scan");
        let torn = torn.expect("torn");
        assert_eq!(scan.next_index, 5);
        assert_eq!(torn.offset, last as u64);
        assert_eq!(torn.entries_dropped, Some((5, 7)));
    }

    #[test]
    fn middle_corruption_is_refused_with_offset() {
        let (mut seg, starts) = segment(1, &[2, 2, 2, 2], 4096);
        seg[starts[1] + 40] ^= 0x10;
        match scan_segment(&seg, 1, true, MAX, WINDOW) {
            Err(ScanError::Corrupt { offset, .. }) => assert_eq!(offset, starts[1] as u64),
            other => panic!("{other:?}"),
        }
        // In an older segment even the last batch cannot be torn.
        let (mut seg, starts) = segment(1, &[2, 2], 4096);
        seg[starts[1] + 40] ^= 0x10;
        assert!(matches!(
            scan_segment(&seg, 1, false, MAX, WINDOW),
            Err(ScanError::Corrupt { .. })
        ));
    }

    #[test]
    fn lost_batch_followed_by_its_successor_is_a_torn_tail() {
        // Batch N never reached the disk but batch N+1 did (write-back order): both unacked.
        let (mut seg, starts) = segment(1, &[2, 2, 2], 4096);
        seg[starts[1]..starts[2]].fill(0);
        let (scan, torn) = scan_segment(&seg, 1, true, MAX, WINDOW).expect("scan");
        assert_eq!(scan.next_index, 3);
        assert_eq!(torn.expect("torn").entries_dropped, Some((5, 6)));
    }

    #[test]
    fn far_garbage_is_corruption() {
        let (mut seg, _) = segment(1, &[2], 4 * WINDOW as usize);
        let n = seg.len();
        seg[n - 8] = 1;
        assert!(matches!(
            scan_segment(&seg, 1, true, MAX, WINDOW),
            Err(ScanError::Corrupt { .. })
        ));
    }
}

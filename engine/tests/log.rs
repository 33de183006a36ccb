//! Write-ahead log: behaviour through the public API, and recovery with injected faults
//! (corrupted middle record, torn tail, missing segment, bad hard-state slot).
//!
//! Runtime in release mode: a few seconds (dominated by fdatasync on small logs).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use ringleader_engine::log::{
    Entry, HardState, IoMode, Log, LogConfig, LogError, executor_builder, format,
};

fn run<F, T>(f: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let ex = executor_builder("log-test")
        .spawn(f)
        .unwrap_or_else(|e| panic!("{}", ringleader_engine::log::explain_executor_error(&e)));
    ex.join().expect("executor thread")
}

fn small(io_mode: IoMode) -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        batch_bytes_max: 16 * 1024,
        batch_entries_max: 64,
        batches_queued_max: 8,
        io_mode,
        ..LogConfig::default()
    }
}

fn payload(index: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (index as usize * 31 + i) as u8).collect()
}

async fn append_one(log: &Log, term: u64, len: usize) -> u64 {
    let index = log.next_index();
    let p = payload(index, len);
    let d = log
        .append(&[Entry {
            index,
            term,
            payload: &p,
        }])
        .expect("append");
    let durable = d.await.expect("durable");
    assert!(durable >= index);
    index
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

/// Bytes of a batch holding one entry of `len` payload bytes.
fn one_entry_batch_bytes(len: usize) -> u64 {
    (format::BATCH_HEADER_BYTES + format::record_bytes(len) + format::COMMIT_BYTES) as u64
}

fn round_trip(mode: IoMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, report) = Log::open(&path, small(mode)).await.expect("open");
        assert_eq!(
            (
                report.first_index,
                report.last_index,
                report.torn_tail.clone()
            ),
            (1, 0, None)
        );
        for _ in 0..40 {
            append_one(&log, 1, 1000).await;
        }
        // A multi-entry append spanning several batches.
        let ps: Vec<Vec<u8>> = (41..=140).map(|i| payload(i, 500)).collect();
        let entries: Vec<Entry<'_>> = ps
            .iter()
            .enumerate()
            .map(|(k, p)| Entry {
                index: 41 + k as u64,
                term: 2,
                payload: p,
            })
            .collect();
        let d = log.append(&entries).expect("append many");
        assert_eq!(d.await.expect("durable"), 140);
        assert_eq!(log.durable_index(), 140);
        assert!(log.segment_count() > 1, "small segments must have rolled");
        let got = log.read_range(1, 141).await.expect("read");
        assert_eq!(got.len(), 140);
        for e in &got {
            let len = if e.index <= 40 { 1000 } else { 500 };
            assert_eq!(e.payload, payload(e.index, len), "entry {}", e.index);
            assert_eq!(e.term, if e.index <= 40 { 1 } else { 2 });
        }
        log.close().await.expect("close");
        let (log, report) = Log::open(&path, small(mode)).await.expect("reopen");
        assert_eq!(
            (report.first_index, report.last_index, report.torn_tail),
            (1, 140, None)
        );
        let got = log.read_range(100, 141).await.expect("read");
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            (100..=140).collect::<Vec<_>>()
        );
        log.close().await.expect("close");
    });
}

#[test]
fn round_trip_direct() {
    round_trip(IoMode::Direct);
}

#[test]
fn round_trip_buffered() {
    round_trip(IoMode::Buffered);
}

#[test]
fn round_trip_direct_sync() {
    round_trip(IoMode::DirectSync);
}

#[test]
fn concurrent_appends_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = LogConfig {
            batch_entries_max: 1024,
            ..small(IoMode::Direct)
        };
        let (log, _) = Log::open(&path, cfg).await.expect("open");
        let log = Rc::new(log);
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let log = log.clone();
            tasks.push(glommio::spawn_local(async move {
                for _ in 0..20 {
                    let index = log.next_index();
                    let p = payload(index, 64);
                    let d = log
                        .append(&[Entry {
                            index,
                            term: 1,
                            payload: &p,
                        }])
                        .expect("append");
                    let durable = d.await.expect("durable");
                    assert!(durable >= index);
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        let st = log.stats();
        assert_eq!(st.entries, 64 * 20);
        // 64 closed-loop writers: every sync covers many appends.
        assert!(
            st.fsyncs * 4 < st.entries,
            "group commit did not group: {st:?}"
        );
        let log = Rc::try_unwrap(log).expect("sole owner");
        log.close().await.expect("close");
    });
}

#[test]
fn truncate_suffix_mid_batch_then_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small(IoMode::Direct)).await.expect("open");
        // One batch of 10 entries, then single-entry batches up to 60 (several segments).
        let ps: Vec<Vec<u8>> = (1..=10).map(|i| payload(i, 300)).collect();
        let es: Vec<Entry<'_>> = ps
            .iter()
            .enumerate()
            .map(|(k, p)| Entry {
                index: 1 + k as u64,
                term: 1,
                payload: p,
            })
            .collect();
        log.append(&es).expect("append").await.expect("durable");
        while log.next_index() <= 60 {
            append_one(&log, 1, 3000).await;
        }
        let segs_before = log.segment_count();
        // Cut inside a later segment's middle, then inside the first batch.
        log.truncate_suffix(45).await.expect("truncate 45");
        assert_eq!((log.next_index(), log.durable_index()), (46, 45));
        assert!(log.segment_count() <= segs_before);
        log.truncate_suffix(5).await.expect("truncate 5");
        assert_eq!(log.next_index(), 6);
        assert_eq!(log.segment_count(), 1);
        for _ in 0..5 {
            append_one(&log, 2, 200).await;
        }
        log.close().await.expect("close");
        let (log, report) = Log::open(&path, small(IoMode::Direct))
            .await
            .expect("reopen");
        assert_eq!((report.last_index, report.torn_tail), (10, None));
        let got = log.read_range(1, 11).await.expect("read");
        let terms: Vec<u64> = got.iter().map(|e| e.term).collect();
        assert_eq!(terms, vec![1, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
        assert_eq!(got[4].payload, payload(5, 300));
        assert_eq!(got[5].payload, payload(6, 200));
        // Reads past the end are refused.
        assert!(matches!(
            log.read_range(5, 12).await,
            Err(LogError::OutOfRange { .. })
        ));
        log.close().await.expect("close");
    });
}

#[test]
fn compact_prefix_removes_whole_old_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let (log, _) = Log::open(&path, small(IoMode::Buffered))
            .await
            .expect("open");
        while log.next_index() <= 80 {
            append_one(&log, 1, 3000).await;
        }
        let n = log.segment_count();
        assert!(n >= 4, "{n} segments");
        let first = log.compact_prefix(50).await.expect("compact");
        assert!(first > 1 && first <= 51, "first index {first}");
        assert!(log.segment_count() < n);
        assert!(matches!(
            log.read_range(1, 3).await,
            Err(LogError::OutOfRange { .. })
        ));
        assert_eq!(
            log.read_range(first, first + 1).await.expect("read")[0].payload,
            payload(first, 3000)
        );
        log.close().await.expect("close");
        let (_log, report) = Log::open(&path, small(IoMode::Buffered))
            .await
            .expect("reopen");
        assert_eq!((report.first_index, report.last_index), (first, 80));
    });
}

#[test]
fn appends_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = LogConfig {
            batches_queued_max: 2,
            batch_entries_max: 4,
            ..small(IoMode::Direct)
        };
        let (log, _) = Log::open(&path, cfg).await.expect("open");
        let p = [0u8; 8];
        assert!(matches!(
            log.append(&[Entry {
                index: 2,
                term: 1,
                payload: &p
            }]),
            Err(LogError::NonContiguous {
                expected: 1,
                got: 2
            })
        ));
        assert!(matches!(log.append(&[]), Err(LogError::EmptyAppend)));
        let big = vec![0u8; 20 * 1024];
        assert!(matches!(
            log.append(&[Entry {
                index: 1,
                term: 1,
                payload: &big
            }]),
            Err(LogError::EntryTooLarge { .. })
        ));
        // Two queued batches of four entries fit; a ninth entry would need a third batch.
        let es: Vec<Entry<'_>> = (1..=9)
            .map(|i| Entry {
                index: i,
                term: 1,
                payload: &p,
            })
            .collect();
        assert!(matches!(
            log.append(&es),
            Err(LogError::Backpressure { .. })
        ));
        let d = log.append(&es[..8]).expect("eight fit");
        assert_eq!(d.await.expect("durable"), 8);
        log.close().await.expect("close");
    });
}

fn write_log(path: PathBuf, cfg: LogConfig, batches: usize, len: usize) {
    run(move || async move {
        let (log, _) = Log::open(&path, cfg).await.expect("open");
        for _ in 0..batches {
            append_one(&log, 1, len).await;
        }
        log.close().await.expect("close");
    });
}

fn open_err(path: PathBuf, cfg: LogConfig) -> LogError {
    run(move || async move {
        match Log::open(&path, cfg).await {
            Ok(_) => panic!("opened a corrupt log"),
            Err(e) => e,
        }
    })
}

fn patch(path: &Path, offset: u64, f: impl FnOnce(&mut [u8])) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = vec![0u8; 64];
    file.read_exact_at(&mut b, offset).expect("read");
    f(&mut b);
    file.write_all_at(&b, offset).expect("write");
    file.sync_all().expect("sync");
}

#[test]
fn corrupt_middle_record_is_refused_with_segment_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let cfg = small(IoMode::Direct);
    write_log(path.clone(), cfg.clone(), 10, 100);
    let seg = segments(&path).remove(0);
    let batch = one_entry_batch_bytes(100);
    // Flip one payload bit of entry 3 (the third batch).
    patch(&seg, 2 * batch + 60, |b| b[0] ^= 0x04);
    match open_err(path.clone(), cfg) {
        LogError::Corrupt {
            segment,
            offset,
            reason,
        } => {
            assert_eq!(segment, seg);
            assert_eq!(offset, 2 * batch, "{reason}");
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
}

#[test]
fn torn_tail_is_dropped_and_reported_then_log_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let cfg = small(IoMode::Direct);
    write_log(path.clone(), cfg.clone(), 10, 100);
    let seg = segments(&path).remove(0);
    let batch = one_entry_batch_bytes(100);
    // The last batch lost its commit marker: its write never completed.
    patch(&seg, 10 * batch - 16, |b| b[..16].fill(0));
    let path2 = path.clone();
    run(move || async move {
        let (log, report) = Log::open(&path2, cfg.clone()).await.expect("open");
        let torn = report.torn_tail.expect("torn tail reported");
        assert_eq!(torn.segment, seg);
        assert_eq!(torn.offset, 9 * batch);
        assert_eq!(torn.entries_dropped, Some((10, 10)));
        // Up to the last non-zero byte: the record's header and its 100-byte payload.
        assert_eq!(
            torn.bytes_dropped,
            (format::BATCH_HEADER_BYTES + format::RECORD_HEADER_BYTES + 100) as u64
        );
        assert_eq!(report.last_index, 9);
        assert_eq!(log.next_index(), 10);
        append_one(&log, 3, 100).await;
        append_one(&log, 3, 100).await;
        log.close().await.expect("close");
        let (log, report) = Log::open(&path2, cfg).await.expect("reopen");
        assert_eq!((report.last_index, report.torn_tail), (11, None));
        let got = log.read_range(9, 12).await.expect("read");
        assert_eq!(
            got.iter().map(|e| e.term).collect::<Vec<_>>(),
            vec![1, 3, 3]
        );
        log.close().await.expect("close");
    });
}

#[test]
fn garbage_after_the_tail_is_a_torn_tail_but_far_garbage_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let cfg = small(IoMode::Buffered);
    write_log(path.clone(), cfg.clone(), 5, 100);
    let seg = segments(&path).remove(0);
    let batch = one_entry_batch_bytes(100);
    patch(&seg, 5 * batch + 100, |b| {
        b[..7].copy_from_slice(b"garbage")
    });
    let p = path.clone();
    let c = cfg.clone();
    let torn = run(move || async move {
        let (log, report) = Log::open(&p, c).await.expect("open");
        log.close().await.expect("close");
        report.torn_tail
    });
    let torn = torn.expect("torn");
    assert_eq!((torn.offset, torn.entries_dropped), (5 * batch, None));
    // Data far beyond the window a torn write can span is not a torn tail.
    let far = cfg.tail_window_bytes() + 5 * batch + 4096;
    patch(&seg, far, |b| b[0] = 1);
    assert!(matches!(open_err(path, cfg), LogError::Corrupt { offset, .. } if offset == 5 * batch));
}

#[test]
fn missing_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let cfg = small(IoMode::Direct);
    write_log(path.clone(), cfg.clone(), 60, 3000);
    let segs = segments(&path);
    assert!(segs.len() >= 3, "{segs:?}");
    std::fs::remove_file(&segs[1]).expect("remove");
    let expected: u64 = segs[1]
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("name");
    match open_err(path, cfg) {
        LogError::MissingSegment {
            previous,
            expected: e,
            found,
        } => {
            assert_eq!(
                (previous, e, found),
                (segs[0].clone(), expected, segs[2].clone())
            );
        }
        other => panic!("expected MissingSegment, got {other}"),
    }
}

#[test]
fn bad_hard_state_slot_falls_back_and_both_bad_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let cfg = small(IoMode::Direct);
    let (p, c) = (path.clone(), cfg.clone());
    run(move || async move {
        let (log, report) = Log::open(&p, c).await.expect("open");
        assert_eq!(report.hard_state, HardState::default());
        log.save_hard_state(HardState {
            term: 3,
            vote: Some(2),
            commit: 0,
        })
        .await
        .expect("save 1");
        log.save_hard_state(HardState {
            term: 4,
            vote: None,
            commit: 7,
        })
        .await
        .expect("save 2");
        assert!(matches!(
            log.save_hard_state(HardState {
                term: 1,
                vote: None,
                commit: 7
            })
            .await,
            Err(LogError::HardStateRegression {
                old_term: 4,
                new_term: 1
            })
        ));
        log.close().await.expect("close");
    });
    let hs = path.join("hardstate");
    // Save 2 (sequence 2) went to slot 0. Tear it.
    patch(&hs, 16, |b| b[0] ^= 0xff);
    let (p, c) = (path.clone(), cfg.clone());
    run(move || async move {
        let (log, report) = Log::open(&p, c).await.expect("open");
        assert_eq!(
            report.hard_state,
            HardState {
                term: 3,
                vote: Some(2),
                commit: 0
            }
        );
        assert_eq!(report.hard_state_slot_discarded, Some(0));
        assert_eq!(log.hard_state(), report.hard_state);
        log.close().await.expect("close");
    });
    patch(&hs, 4096 + 16, |b| b[0] ^= 0xff);
    assert!(matches!(
        open_err(path, cfg),
        LogError::HardStateCorrupt { .. }
    ));
}

#[test]
fn leftover_spare_is_removed_and_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    let cfg = small(IoMode::Direct);
    write_log(path.clone(), cfg.clone(), 3, 100);
    std::fs::write(path.join("truncate.tmp"), b"half a rewrite").expect("write");
    run(move || async move {
        let (log, report) = Log::open(&path, cfg).await.expect("open");
        assert_eq!(report.stale_files_removed, vec![path.join("truncate.tmp")]);
        assert_eq!(report.last_index, 3);
        log.close().await.expect("close");
    });
}

#[test]
fn reads_are_bounded_and_truncating_everything_restarts_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().to_path_buf();
    run(move || async move {
        let cfg = LogConfig {
            read_bytes_max: 4096,
            ..small(IoMode::Direct)
        };
        let (log, _) = Log::open(&path, cfg.clone()).await.expect("open");
        while log.next_index() <= 30 {
            append_one(&log, 1, 1000).await;
        }
        // 30 entries of ~1 KiB do not fit in one 4 KiB read: a non-empty prefix comes back.
        let first = log.read_range(1, 31).await.expect("read");
        assert!(
            !first.is_empty() && first.len() < 30,
            "{} entries",
            first.len()
        );
        let mut all = first;
        while all.len() < 30 {
            let next = all.len() as u64 + 1;
            let more = log.read_range(next, 31).await.expect("read more");
            assert_eq!(more[0].index, next);
            all.extend(more);
        }
        assert!(all.iter().all(|e| e.payload == payload(e.index, 1000)));
        // Cut everything: the log restarts at index 1 in a fresh segment.
        log.truncate_suffix(0).await.expect("truncate all");
        assert_eq!((log.next_index(), log.segment_count()), (1, 1));
        append_one(&log, 5, 10).await;
        log.close().await.expect("close");
        let (log, report) = Log::open(&path, cfg).await.expect("reopen");
        assert_eq!(
            (report.first_index, report.last_index, report.segments),
            (1, 1, 1)
        );
        assert_eq!(log.read_range(1, 2).await.expect("read")[0].term, 5);
        log.close().await.expect("close");
    });
}

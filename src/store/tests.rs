use super::*;
use crate::model::{Value, Waveform};

fn reading(i: u64) -> Reading {
    Reading {
        device: format!("pump-{}", i % 3),
        metric: "temperature".into(),
        time_ms: 1_700_000_000_000 + i as i64,
        value: Value::Scalar(i as f64),
    }
}

fn dead(i: u64, len: usize) -> DeadLetter {
    DeadLetter {
        topic: format!("t/{i}"),
        payload: vec![b'x'; len],
        payload_len: len,
        reason: Reason::Malformed,
        detail: "bad".into(),
        received_ms: i as i64,
    }
}

pub(super) fn batch(range: std::ops::Range<u64>) -> Batch {
    Batch {
        readings: range.clone().map(reading).collect(),
        dead_letters: vec![],
        messages: range.end - range.start,
    }
}

/// A store whose data limit is `limit` (budgets are of disk space, of which
/// the data takes 2/5), with at most 5 dead letters of 10,000 bytes.
fn open(dir: &Path, limit: u64) -> Store {
    Store::open_at(dir, limit * 5 / 2, 5, 25_000).unwrap()
}

/// The store at `dir` as a kill at this instant would leave it: its files
/// as they are now, copied and opened. sled holds what it has not flushed in
/// its own buffers, not in the files, so a kill (and a power cut, which
/// also loses what the kernel has not written) takes that away.
pub(super) fn killed_copy(dir: &Path) -> (tempfile::TempDir, Store) {
    let copy = tempfile::tempdir().unwrap();
    super::copy::copy_tree(dir, copy.path()).unwrap();
    let store = Store::open_at(copy.path(), 1 << 30, 5, 10_000).unwrap();
    (copy, store)
}

#[test]
fn commits_survive_reopen_with_sequence_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), 1 << 30);
        assert_eq!(
            s.commit(&batch(0..3000)).unwrap(),
            Commit::Stored {
                first_seq: 0,
                count: 3000
            }
        );
        assert_eq!(
            s.commit(&batch(3000..3010)).unwrap(),
            Commit::Stored {
                first_seq: 3000,
                count: 10
            }
        );
    }
    let s = open(dir.path(), 1 << 30);
    let st = s.stats().unwrap();
    assert_eq!(st.readings, 3010);
    assert_eq!(st.next_seq, 3010);
    assert_eq!(st.counters.readings_stored, 3010);
    assert_eq!(st.counters.messages, 3010);
    // Sequence numbers continue after a restart.
    assert_eq!(
        s.commit(&batch(3010..3011)).unwrap(),
        Commit::Stored {
            first_seq: 3010,
            count: 1
        }
    );
    let all = s.readings_from(0, usize::MAX).unwrap();
    assert_eq!(all.len(), 3011);
    for (i, (seq, r)) in all.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        assert_eq!(*r, reading(i as u64));
    }
}

#[test]
fn a_read_is_bounded_by_decoded_bytes_as_well_as_by_count() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    // 40 waveform blocks of 100,000 samples (400 KB each in memory).
    let block = |i: u64| Reading {
        device: "motor-1".into(),
        metric: "vibration".into(),
        time_ms: 1_700_000_000_000 + i as i64,
        value: Value::Waveform(Waveform {
            sample_rate_hz: 25_600.0,
            samples: vec![i as f32; 100_000],
        }),
    };
    s.commit(&Batch {
        readings: (0..40).map(block).collect(),
        dead_letters: vec![],
        messages: 40,
    })
    .unwrap();
    let got = s.readings_within(5, 65_536, 1 << 20).unwrap();
    let bytes: usize = got.iter().map(|(_, r)| r.approx_bytes()).sum();
    // Three blocks reach a MiB; none more is decoded into the batch.
    assert_eq!(got.len(), 3);
    assert!(bytes < (1 << 20) + block(0).approx_bytes());
    assert_eq!(got[0], (5, block(5)));
    // A single reading larger than the bound still comes out, alone.
    assert_eq!(
        s.readings_within(39, 65_536, 1).unwrap(),
        vec![(39, block(39))]
    );
    // The count bound still holds for small readings.
    assert_eq!(s.readings_within(0, 2, usize::MAX).unwrap().len(), 2);
}

#[test]
fn reads_from_the_middle_of_a_block() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    s.commit(&batch(0..2500)).unwrap();
    let got = s.readings_from(1500, 3).unwrap();
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1500, 1501, 1502]
    );
    assert_eq!(got[0].1, reading(1500));
    let last = s.last_readings(2).unwrap();
    assert_eq!(
        last.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![2498, 2499]
    );
}

#[test]
fn full_budget_refuses_and_trimming_frees_space() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 20_000);
    let mut next = 0;
    while let Commit::Stored { count, .. } = s.commit(&batch(next..next + 100)).unwrap() {
        next += count;
        assert!(next < 100_000, "the budget never filled");
    }
    assert!(s.is_full());
    let used = s.used_bytes();
    // Overshoot is bounded by one batch.
    assert!(used < 20_000 + 10_000, "used {used}");
    // Nothing was written by the refused commit.
    assert_eq!(s.stats().unwrap().next_seq, next);
    let trimmed = s.trim_before(next).unwrap();
    assert_eq!(trimmed, next);
    assert!(!s.is_full());
    assert_eq!(s.used_bytes(), 0);
    assert!(
        matches!(s.commit(&batch(next..next + 1)).unwrap(), Commit::Stored { first_seq, .. } if first_seq == next)
    );
    assert_eq!(s.stats().unwrap().counters.readings_trimmed, next);
}

#[test]
fn trim_keeps_a_block_that_is_partly_unconsumed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    s.commit(&batch(0..10)).unwrap();
    s.commit(&batch(10..20)).unwrap();
    assert_eq!(s.trim_before(15).unwrap(), 10);
    assert_eq!(
        s.readings_from(0, 100).unwrap().first().map(|(s, _)| *s),
        Some(10)
    );
}

#[test]
fn dead_letters_are_bounded_oldest_first_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30); // at most 5 dead letters, 10 kB
    for i in 0..8 {
        s.commit(&Batch {
            readings: vec![],
            dead_letters: vec![dead(i, 10)],
            messages: 1,
        })
        .unwrap();
    }
    let dl = s.last_dead_letters(100).unwrap();
    assert_eq!(
        dl.iter().map(|(_, d)| d.topic.as_str()).collect::<Vec<_>>(),
        vec!["t/3", "t/4", "t/5", "t/6", "t/7"]
    );
    let st = s.stats().unwrap();
    assert_eq!(st.dead_letters, 5);
    assert_eq!(st.counters.dead_letters_dropped, 3);
    assert_eq!(st.counters.rejected[&Reason::Malformed], 8);
    // The byte bound applies too: one big letter pushes the others out.
    s.commit(&Batch {
        readings: vec![],
        dead_letters: vec![dead(99, 9_800)],
        messages: 1,
    })
    .unwrap();
    let dl = s.last_dead_letters(100).unwrap();
    assert_eq!(dl.last().unwrap().1.topic, "t/99");
    let kept_small = dl.len() as u64 - 1;
    assert!(
        kept_small < 4,
        "the byte bound dropped nothing: {} kept",
        dl.len()
    );
    let st = s.stats().unwrap();
    assert!(st.dead_letter_bytes <= 10_000, "{}", st.dead_letter_bytes);
    assert_eq!(st.dead_letters, dl.len() as u64);
    assert_eq!(st.counters.dead_letters_dropped, 3 + (5 - kept_small));
}

#[test]
fn waveforms_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    let w = Reading {
        value: Value::Waveform(Waveform {
            sample_rate_hz: 25_600.0,
            samples: (0..4096).map(|i| (i as f32 * 0.01).sin()).collect(),
        }),
        ..reading(0)
    };
    s.commit(&Batch {
        readings: vec![w.clone()],
        dead_letters: vec![],
        messages: 1,
    })
    .unwrap();
    assert_eq!(s.last_readings(1).unwrap()[0].1, w);
}

#[test]
fn lost_metadata_is_rebuilt_without_reusing_sequence_numbers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), 1 << 30);
        s.commit(&batch(0..1500)).unwrap();
        s.commit(&Batch {
            readings: vec![],
            dead_letters: vec![dead(0, 10)],
            messages: 1,
        })
        .unwrap();
        let used = s.used_bytes();
        drop(s);
        let db = open_sled(&sled::Config::new().path(dir.path())).unwrap();
        db.open_tree("meta").unwrap().clear().unwrap();
        db.flush().unwrap();
        drop(db);
        let s = open(dir.path(), 1 << 30);
        assert_eq!(s.used_bytes(), used);
    }
    let s = open(dir.path(), 1 << 30);
    assert_eq!(
        s.commit(&batch(1500..1501)).unwrap(),
        Commit::Stored {
            first_seq: 1500,
            count: 1
        }
    );
    assert_eq!(s.readings_from(0, usize::MAX).unwrap().len(), 1501);
    assert_eq!(s.stats().unwrap().dead_letters, 1);
}

#[test]
fn a_store_in_use_is_reported_as_locked_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let _held = open(dir.path(), 1 << 30);
    let err = match Store::open_at(dir.path(), 1 << 30, 5, 10_000) {
        Err(e) => e,
        Ok(_) => panic!("a second open of a store in use succeeded"),
    };
    assert!(matches!(err, StoreError::Locked { ref path } if path == dir.path()));
    assert!(
        err.to_string().contains("locked by another process"),
        "{err}"
    );
}

#[test]
fn a_snapshot_left_unfinished_by_a_failed_write_does_not_stop_the_store_opening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), 1 << 30);
        s.commit(&batch(0..100)).unwrap();
    }
    // What sled leaves when a snapshot write fails on a full disk: an empty
    // file, named after an lsn above the last complete snapshot's.
    std::fs::write(dir.path().join("snap.FFFFFFFFFFFFFFFF.generating"), b"").unwrap();
    let s = open(dir.path(), 1 << 30);
    assert_eq!(s.readings_from(0, usize::MAX).unwrap().len(), 100);
    assert!(!dir.path().join("snap.FFFFFFFFFFFFFFFF.generating").exists());
    assert_eq!(s.write_health(), WriteHealth::default());
    s.commit(&batch(100..101)).unwrap();
    assert_eq!(s.write_health().errors, 0);
}

#[test]
fn a_block_that_cannot_be_decoded_is_removed_and_counted_for_detection() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path(), 1 << 30);
        for range in [0..100, 100..150, 150..160] {
            s.commit(&batch(range)).unwrap();
        }
        // Neither its readings nor even their number can be read.
        let garbage = b"\xff damaged";
        s.overwrite_block(100, garbage);
        // Other readers (inspect) get the error as it is.
        assert!(matches!(
            s.readings_from(0, usize::MAX),
            Err(StoreError::Corrupt { key: 100, .. })
        ));
        let used = s.used_bytes();
        // Detection had read up to 120, in the middle of the block: the
        // 30 readings from there to the next block are lost.
        let (readings, lost) = s.readings_to_detect(120, usize::MAX, usize::MAX).unwrap();
        assert_eq!(lost, 30);
        let seqs: Vec<u64> = readings.iter().map(|(q, _)| *q).collect();
        assert_eq!(seqs, (150..160).collect::<Vec<_>>());
        assert_eq!(readings[0].1, reading(150));
        assert_eq!(s.stats().unwrap().counters.readings_unreadable, 30);
        assert_eq!(used - s.used_bytes(), 8 + garbage.len() as u64);
        // Gone: read again, nothing is lost twice.
        let (again, lost) = s.readings_to_detect(120, usize::MAX, usize::MAX).unwrap();
        assert_eq!((again.len(), lost), (10, 0));
        assert_eq!(s.readings_from(0, usize::MAX).unwrap().len(), 110);
    }
    // Counted in the store: it survives a restart.
    let s = open(dir.path(), 1 << 30);
    assert_eq!(s.stats().unwrap().counters.readings_unreadable, 30);
}

#[test]
fn a_large_block_is_kept_in_small_parts_read_back_whole_and_trimmed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    // 2 MiB of samples, 2.5 MB encoded: stored whole, sled made it a blob
    // file (one per version of its leaf), which outlived its removal.
    let wave = Reading {
        value: Value::Waveform(crate::model::Waveform {
            sample_rate_hz: 25_600.0,
            samples: (0..500_000).map(|i| (i as f32 * 0.37).sin()).collect(),
        }),
        ..reading(0)
    };
    let big = Batch {
        readings: vec![wave.clone()],
        dead_letters: vec![],
        messages: 1,
    };
    s.commit(&batch(0..10)).unwrap();
    s.commit(&big).unwrap();
    s.commit(&batch(11..20)).unwrap();
    s.flush().unwrap();
    let blobs = std::fs::read_dir(dir.path().join("blobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(blobs, 0, "no value large enough for a blob file");
    let largest = s
        .inner
        .readings
        .iter()
        .map(|e| e.unwrap().1.len())
        .max()
        .unwrap();
    assert!(largest <= parts::PART_MAX_BYTES, "largest value {largest}");

    // Read from inside and from after the block.
    let got = s.readings_from(5, usize::MAX).unwrap();
    let seqs: Vec<u64> = got.iter().map(|(q, _)| *q).collect();
    assert_eq!(seqs, (5..20).collect::<Vec<_>>());
    assert_eq!(got[5].1, wave);
    assert_eq!(s.readings_from(11, 1).unwrap()[0].0, 11);
    assert_eq!(s.last_readings(3).unwrap()[0].0, 17);

    // Accounted in full, and trimmed in full: nothing of it stays behind.
    let used = s.used_bytes();
    assert!(used > 2_500_000, "{used}");
    s.trim_before(11).unwrap();
    assert!(s.used_bytes() < 2_000, "{}", s.used_bytes());
    assert_eq!(s.inner.readings.range(key(10)..key(11)).count(), 0);
    assert_eq!(s.readings_from(0, usize::MAX).unwrap().len(), 9);
    // A restart recounts the same from what is stored.
    let rebuilt = rebuild_meta(&s.inner.readings, &s.inner.dead, &s.inner.outbox).unwrap();
    assert_eq!(rebuilt.readings_bytes, s.meta().readings_bytes);
    assert_eq!(rebuilt.next_seq, 20);
}

#[test]
fn a_block_stored_whole_by_an_earlier_version_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 1 << 30);
    s.commit(&batch(0..3000)).unwrap();
    // Earlier versions kept each block under its 8-byte key, whole.
    let whole = codec::encode_block(&(0..1024).map(reading).collect::<Vec<_>>()).unwrap();
    assert!(whole.len() > parts::PART_MAX_BYTES);
    s.overwrite_block(0, &whole);
    let got = s.readings_from(1000, 30).unwrap();
    assert_eq!(got[0], (1000, reading(1000)));
    assert_eq!(got[29], (1029, reading(1029)));
    let rebuilt = rebuild_meta(&s.inner.readings, &s.inner.dead, &s.inner.outbox).unwrap();
    assert_eq!(rebuilt.next_seq, 3000);
    assert_eq!(s.trim_before(1024).unwrap(), 1024);
    assert_eq!(s.inner.readings.range(key(0)..key(1)).count(), 0);
    assert_eq!(s.readings_from(0, 1).unwrap()[0].0, 1024);
}

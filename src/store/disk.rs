//! Keeping the store's files within `store.budget_bytes`.
//!
//! The store accounts its data in bytes (keys and values), but sled 0.34
//! writes a log of pages in 512 KiB segments and cleans a segment (moves
//! its live pages out, to reuse it) only once at most half of it is still
//! live, so its files take about twice the data and some fixed overhead.
//! Measured with readings flowing through a full store at disk speed (the
//! oldest trimmed; `scripts/bench-detect disk`), the files levelled off at
//! 1.9 to 2.5 times the data. They never shrink back (freed segments are
//! reused, the file is cut only when its last segments are free), so the
//! files themselves cannot say "full": once over the budget they would stay
//! so, with nothing left to free. Lowering the data once the files had
//! grown past the budget did not bring them down either (at a quarter of a
//! 64 MiB budget they still took 2.1 times the budget): what counts is the
//! data's high-water mark. So the data is held to a fixed share of the
//! budget from the start, its *data limit*: 2/5. With it the files took
//! 0.88 to 0.98 times budgets of 64 and 256 MiB; below that sled's fixed
//! overhead (some 6 MiB) shows (1.34 times a 16 MiB budget). The other byte
//! bounds of `[store]` (dead letters, alerts) are scaled by the same share.
//!
//! Readings blocks are kept in small parts (`parts.rs`): as blob files the
//! same run took 25 times the budget.

use std::path::Path;

/// The share of a byte bound of disk space that the data may take:
/// numerator and denominator.
const DATA_SHARE: (u64, u64) = (2, 5);

/// What data may take within `disk_bytes` of files.
pub(super) fn data_share(disk_bytes: u64) -> u64 {
    (u128::from(disk_bytes) * u128::from(DATA_SHARE.0) / u128::from(DATA_SHARE.1)) as u64
}

/// Bytes of the store's files: sled's log, its blob files, snapshots and
/// configuration (the directory and its `blobs` directory).
pub(super) fn files_bytes(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for dir in [path.to_path_buf(), path.join("blobs")] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            // A file removed while listed (sled removes blobs and old
            // snapshots in the background) takes no space.
            let Ok(meta) = entry.and_then(|e| e.metadata()) else {
                continue;
            };
            if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_takes_two_fifths_of_a_bound() {
        assert_eq!(data_share(1 << 30), 429_496_729);
        assert_eq!(data_share(4096), 1638);
        assert_eq!(data_share(16 << 40), (16u64 << 40) / 5 * 2);
    }

    #[test]
    fn files_are_summed_with_the_blobs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), vec![0u8; 1000]).unwrap();
        std::fs::create_dir(dir.path().join("blobs")).unwrap();
        std::fs::write(dir.path().join("blobs").join("7"), vec![0u8; 234]).unwrap();
        assert_eq!(files_bytes(dir.path()).unwrap(), 1234);
        assert_eq!(files_bytes(&dir.path().join("none")).unwrap(), 0);
    }
}

//! A failing disk (full, read-only, broken): the run of failed writes that
//! tells ops the store no longer takes data, and the unfinished snapshot
//! file a failed write can leave behind.
//!
//! sled 0.34 remembers the first failed write of a `Db` and returns it for
//! every later write, even once the disk has space again; only opening the
//! store anew clears it. So a run of failures does not end by itself: the
//! agent reports it and restarts (see `ops::health`).

use std::path::Path;
use std::time::Instant;

use super::StoreError;

/// How writes to the store have gone since it was opened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteHealth {
    /// Writes that failed.
    pub errors: u64,
    /// Writes that failed since the last one that worked.
    pub failing: u64,
    /// When the first of those failed.
    pub failing_since: Option<Instant>,
    /// The last error, while writes fail.
    pub last_error: Option<String>,
}

impl WriteHealth {
    /// Record the outcome of one write: a failure, or an fsync that worked.
    /// Only I/O errors count: an encoding error or a corrupt entry is about
    /// the data, not the disk.
    pub(super) fn record<T>(&mut self, result: &Result<T, StoreError>, now: Instant) {
        match result {
            Ok(_) => {
                self.failing = 0;
                self.failing_since = None;
                self.last_error = None;
            }
            Err(e @ StoreError::Sled(_)) => {
                self.errors += 1;
                self.failing += 1;
                self.failing_since.get_or_insert(now);
                self.last_error = Some(e.to_string());
            }
            Err(_) => {}
        }
    }
}

/// Remove the snapshot files sled did not finish writing.
///
/// sled writes a snapshot to `snap.<lsn>.generating` and renames it once it
/// is complete and synced, so such a file is never the store's snapshot.
/// But sled 0.34 does not skip it when it opens a store: a snapshot write
/// that failed (a full disk, when the store is opened or later) leaves one
/// behind, sled takes it for the newest snapshot, finds it corrupt and
/// refuses to open the store, for good (spacejam/sled#1527). Without it
/// sled recovers from the previous snapshot and the log, as after a crash
/// before the write began.
pub(super) fn remove_unfinished_snapshots(dir: &Path) -> Result<usize, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // No store yet (sled creates it), or unreadable: sled's open says why.
        Err(_) => return Ok(0),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let path = entry.path();
            std::fs::remove_file(&path)
                .map_err(|source| StoreError::UnfinishedSnapshot { path, source })?;
            tracing::warn!(file = %name, "removed a snapshot file sled did not finish writing (a write failed, as on a full disk); the store is recovered from its log");
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error() -> StoreError {
        StoreError::Sled(sled::Error::Io(std::io::Error::from_raw_os_error(28)))
    }

    #[test]
    fn failures_in_a_row_count_until_a_write_works() {
        let mut w = WriteHealth::default();
        let t0 = Instant::now();
        w.record(&Ok::<(), _>(()), t0);
        assert_eq!(w, WriteHealth::default());
        w.record(&Err::<(), _>(io_error()), t0);
        w.record(
            &Err::<(), _>(io_error()),
            t0 + std::time::Duration::from_secs(1),
        );
        assert_eq!(w.errors, 2);
        assert_eq!(w.failing, 2);
        assert_eq!(w.failing_since, Some(t0));
        assert!(w.last_error.as_deref().unwrap().contains("os error 28"));
        // Not a disk problem: neither counted nor clearing the run.
        w.record(&Err::<(), _>(StoreError::Aborted), t0);
        assert_eq!((w.errors, w.failing), (2, 2));
        w.record(&Ok::<(), _>(()), t0);
        assert_eq!(w.errors, 2);
        assert_eq!((w.failing, w.failing_since, w.last_error), (0, None, None));
    }

    #[test]
    fn only_unfinished_snapshots_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "snap.0000000000008412",
            "snap.000000000000CDE6.generating",
            "db",
            "conf",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(remove_unfinished_snapshots(dir.path()).unwrap(), 1);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["conf", "db", "snap.0000000000008412"]);
        assert_eq!(
            remove_unfinished_snapshots(&dir.path().join("none")).unwrap(),
            0
        );
    }
}

//! A store that cannot be used is moved aside, and the agent starts with a
//! fresh one instead of failing (or crashing) at every start.
//!
//! The damaged store is renamed, not deleted: `<store>.corrupt-<UTC time>`
//! next to it keeps whatever can still be got out of it (readings, alerts
//! and aggregates not yet forwarded). The fresh store records when and
//! where (`Recovery`, in its metadata), so that `/metrics` and `vigil
//! status` say so for as long as it is in use, across restarts.
//!
//! Only damage moves a store aside (see `StoreError::is_damage`). A store
//! in use, a disk that is full or read-only, a directory vigil may not
//! write: those fail the start as before, since a fresh store would not
//! help and the data is fine.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use crate::config::StoreConfig;
use crate::model::{rfc3339, EpochMs};

use super::{to_cbor, Checker, Store, StoreError, Verdict, META_KEY};

/// The store before this one could not be used and was moved aside.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// When, in ms since the Unix epoch.
    pub at_ms: EpochMs,
    /// Where the damaged store is now.
    pub moved_to: String,
    /// Why it could not be used.
    pub reason: String,
}

/// Open the store of `config`, first checked by `checker` in a child
/// process when one is given (see `check.rs`). A damaged store is moved
/// aside and a fresh one opened in its place; the `Recovery` is then
/// returned and kept in the new store. `progress` is called while the check
/// reads. Blocking.
pub fn open_or_recover(
    config: &StoreConfig,
    checker: Option<&Checker>,
    progress: &mut dyn FnMut(),
    now_ms: EpochMs,
) -> Result<(Store, Option<Recovery>), StoreError> {
    let path = &config.path;
    let existed = holds_a_store(path);
    let checked = match checker.filter(|_| existed) {
        Some(checker) => checker.check(path, progress),
        None => Verdict::Usable,
    };
    let reason = match checked {
        Verdict::Damaged(reason) => reason,
        verdict => {
            if let Verdict::Unknown(why) = verdict {
                warn!(path = %path.display(), why, "the store could not be checked in a child process; opening it as it is");
            }
            match Store::open(config) {
                Ok(store) => return Ok((store, None)),
                Err(e) if existed && e.is_damage() => e.to_string(),
                Err(e) => return Err(e),
            }
        }
    };
    let moved_to = move_aside(path, now_ms)?;
    // Absolute, so that the record means the same from any directory.
    let moved_to = std::path::absolute(&moved_to).unwrap_or(moved_to);
    error!(
        store = %std::path::absolute(path).unwrap_or_else(|_| path.clone()).display(),
        moved_to = %moved_to.display(),
        reason,
        "the store is damaged and cannot be used: it was moved aside and vigil starts with a fresh store; what it held (readings, alerts and aggregates not yet forwarded) is left in the moved copy"
    );
    let store = Store::open(config)?;
    let recovery = Recovery {
        at_ms: now_ms,
        moved_to: moved_to.display().to_string(),
        reason,
    };
    store.record_recovery(&recovery)?;
    Ok((store, Some(recovery)))
}

/// sled has made a store at `path` (a new one needs no check).
fn holds_a_store(path: &Path) -> bool {
    path.join("db").is_file()
}

/// Rename the store directory to `<name>.corrupt-<UTC time>` beside it
/// (with `-1`, `-2`, ... if that is taken).
fn move_aside(path: &Path, now_ms: EpochMs) -> Result<PathBuf, StoreError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".into());
    // 2026-11-21T10:00:00Z → 20261121T100000Z: no colons in a file name.
    let stamp: String = rfc3339(now_ms - now_ms.rem_euclid(1000))
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let base = format!("{name}.corrupt-{stamp}");
    let mut n = 0u32;
    loop {
        let candidate = if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let to = path.with_file_name(candidate);
        if to.symlink_metadata().is_err() {
            return std::fs::rename(path, &to)
                .map(|()| to.clone())
                .map_err(|source| StoreError::MoveAside {
                    from: path.to_path_buf(),
                    to,
                    source,
                });
        }
        n += 1;
    }
}

impl Store {
    /// Note in this (fresh) store that it replaced a damaged one.
    fn record_recovery(&self, recovery: &Recovery) -> Result<(), StoreError> {
        let mut meta = self.meta();
        let mut next = meta.clone();
        next.counters.store_recoveries += 1;
        next.recovery = Some(recovery.clone());
        let bytes = to_cbor("metadata", &next)?;
        let written = self
            .inner
            .meta_tree
            .insert(META_KEY, bytes)
            .map(drop)
            .map_err(StoreError::from);
        self.noted(written)?;
        *meta = next;
        drop(meta);
        self.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &Path) -> StoreConfig {
        let mut errors = Vec::new();
        let text = "gateway_id = \"gw\"\n[broker]\nhost = \"127.0.0.1\"\n[[subscriptions]]\ntemplate = \"p/{device}/{metric}\"\n[store]\npath = \"store\"\n";
        let c = crate::config::from_str(&path.join("vigil.toml"), text.into(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        c.unwrap().store
    }

    // 2026-11-21T10:00:00.250Z
    const NOW: EpochMs = 1_795_255_200_250;

    #[test]
    fn a_healthy_store_is_opened_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let (store, recovery) = open_or_recover(&config, None, &mut || {}, NOW).unwrap();
        assert_eq!(recovery, None);
        store.commit(&super::super::tests::batch(0..1)).unwrap();
        drop(store);
        let (store, recovery) = open_or_recover(&config, None, &mut || {}, NOW).unwrap();
        assert_eq!(recovery, None);
        let stats = store.stats().unwrap();
        assert_eq!((stats.readings, stats.counters.store_recoveries), (1, 0));
    }

    #[test]
    fn a_store_sled_reports_damaged_is_moved_aside_and_a_fresh_one_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let store = Store::open(&config).unwrap();
        store.commit(&super::super::tests::batch(0..1)).unwrap();
        drop(store);
        // A `conf` file that sled does not accept (the segment size is one
        // of the settings it refuses to change): an error, not a panic.
        let conf = config.path.join("conf");
        let mut bytes = std::fs::read(&conf).unwrap();
        let at = bytes
            .windows(20)
            .position(|w| w == b"segment_size: 524288")
            .expect("sled's default segment size in its conf file");
        bytes[at + 14..at + 20].copy_from_slice(b"001024");
        std::fs::write(&conf, bytes).unwrap();
        let (store, recovery) = open_or_recover(&config, None, &mut || {}, NOW).unwrap();
        let recovery = recovery.expect("moved aside");
        let moved = dir.path().join("store.corrupt-20261121T100000Z");
        assert_eq!(recovery.moved_to, moved.display().to_string());
        assert!(recovery.reason.contains("io buffer size"), "{recovery:?}");
        assert!(moved.join("db").is_file() && moved.join("conf").is_file());
        let stats = store.stats().unwrap();
        assert_eq!((stats.readings, stats.counters.store_recoveries), (0, 1));
        assert_eq!(stats.recovery.as_ref(), Some(&recovery));
        drop(store);
        // Kept across restarts of the fresh store.
        let (store, again) = open_or_recover(&config, None, &mut || {}, NOW).unwrap();
        assert_eq!(again, None);
        assert_eq!(store.stats().unwrap().recovery, Some(recovery));
    }

    #[test]
    fn a_check_that_finds_damage_moves_the_store_aside_next_to_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        drop(Store::open(&config).unwrap());
        std::fs::create_dir(dir.path().join("store.corrupt-20261121T100000Z")).unwrap();
        let checker = Checker::new(
            "/bin/sh".into(),
            vec![
                "-c".into(),
                "echo 'sled panicked on the store: boom' >&2; exit 3".into(),
            ],
        );
        let (_store, recovery) = open_or_recover(&config, Some(&checker), &mut || {}, NOW).unwrap();
        let recovery = recovery.unwrap();
        assert_eq!(recovery.reason, "sled panicked on the store: boom");
        assert!(
            recovery
                .moved_to
                .ends_with("store.corrupt-20261121T100000Z-1"),
            "{recovery:?}"
        );
    }

    #[test]
    fn what_is_not_damage_fails_the_open_and_moves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let held = Store::open(&config).unwrap();
        // In use by another agent (here, this one): locked, not damaged.
        let checker = Checker::new("/bin/sh".into(), vec!["-c".into(), "exit 4".into()]);
        let Err(e) = open_or_recover(&config, Some(&checker), &mut || {}, NOW) else {
            panic!("a store in use opened twice");
        };
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        drop(held);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["store"]);
    }
}

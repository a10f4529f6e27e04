//! Reading a store without writing to it, for `vigil inspect` and `vigil
//! status` (of a stopped agent).
//!
//! sled cannot open a database read-only: opening recovers the log, writes a
//! new snapshot file and grows the segment file, even when nothing is
//! inserted. Run as root against the service's store, that left root-owned
//! files behind. So the store's files are copied to a new private directory
//! (under the temporary directory the caller names), the copy is opened, and
//! the copy is removed when the last handle to the store is dropped.
//!
//! While copying, a shared lock on the store's `db` file keeps an agent from
//! starting on it halfway through (sled holds an exclusive lock on that file
//! while it has the store open, so an agent running now is reported as such).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::StoreError;

/// The directory of a copy, removed when dropped.
pub(super) struct CopyDir(PathBuf);

impl CopyDir {
    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for CopyDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            tracing::warn!(path = %self.0.display(), error = %e, "cannot remove the copy of the store");
        }
    }
}

/// Copy the store at `store` into a new directory under `tmp`. Creates and
/// changes nothing under `store`.
pub(super) fn copy_store(store: &Path, tmp: &Path) -> Result<CopyDir, StoreError> {
    // A directory without sled's files in it is not a store: opening it would
    // make one.
    let db = store.join("db");
    if !db.is_file() || !store.join("conf").is_file() {
        return Err(StoreError::Missing {
            path: store.to_path_buf(),
        });
    }
    let copy_error = |to: &Path, source: io::Error| StoreError::Copy {
        from: store.to_path_buf(),
        to: to.to_path_buf(),
        source,
    };
    let lock = fs::File::open(&db).map_err(|e| copy_error(tmp, e))?;
    if !lock_shared(&lock) {
        return Err(StoreError::Locked {
            path: store.to_path_buf(),
        });
    }
    let dir = new_private_dir(tmp).map_err(|e| copy_error(tmp, e))?;
    copy_tree(store, dir.path()).map_err(|e| copy_error(dir.path(), e))?;
    // The lock goes with `lock`, once the copy is complete.
    Ok(dir)
}

/// A new directory under `tmp` that only this user can read (the store holds
/// the plant's data).
fn new_private_dir(tmp: &Path) -> io::Result<CopyDir> {
    use std::os::unix::fs::DirBuilderExt;
    let mut builder = fs::DirBuilder::new();
    builder.mode(0o700);
    for n in 0u32.. {
        let path = tmp.join(format!("vigil-store-{}-{n}", std::process::id()));
        match builder.create(&path) {
            Ok(()) => return Ok(CopyDir(path)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("the loop returns by its 1000th name")
}

/// Files and directories of `from` into the existing directory `to`.
pub(super) fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let dest = to.join(entry.file_name());
        if kind.is_dir() {
            fs::create_dir(&dest)?;
            copy_tree(&entry.path(), &dest)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// A shared advisory lock on `file` (flock); false only if another process
/// holds it exclusively, as sled does with a store's `db` file while the
/// store is open. (A file system without flock is not a reason to refuse.)
#[cfg(target_os = "linux")]
fn lock_shared(file: &fs::File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor this function borrows; the lock is
    // released when the file is closed.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    locked || io::Error::last_os_error().raw_os_error() != Some(libc::EWOULDBLOCK)
}

#[cfg(not(target_os = "linux"))]
fn lock_shared(_file: &fs::File) -> bool {
    true
}

//! Checking a store in a child process before it is used.
//!
//! sled 0.34 does not report every damaged file as an error. On some damage
//! it panics while it opens the store (writing the snapshot of what it
//! recovered) or while it reads it: three bit flips in the files of a
//! store panicked it in 7 to 27 of 40 seeds. vigil's release build aborts
//! on a panic (`panic = "abort"`), so an agent that opened such a store died
//! at every start and systemd (`Restart=on-failure`) started it again,
//! forever.
//!
//! So the store is first opened by `vigil check-store PATH`, a child
//! process that reads every entry of every tree once, writes and removes
//! one key and flushes, then says by its exit status whether the store can
//! be used. A panic or a crash there ends only the child; the agent then
//! moves the store aside (`recover.rs`), and `inspect` and `status` report
//! it. The agent opens the store itself only after the check passed.
//!
//! Why not `panic = "unwind"` and `catch_unwind` around sled's calls:
//! - sled runs its writes on its own I/O threads. A panic there is caught
//!   by sled, which then marks its thread pool broken for the whole process
//!   (no store opened in that process works again, a fresh one included),
//!   and whoever waits for that work waits forever;
//! - a panic caught halfway through sled leaves its in-memory state (page
//!   table, segment accounting) as the panic found it, and carrying on with
//!   it is not safe;
//! - unwinding adds landing pads and unwind tables to the whole binary,
//!   against the ARM gateways' 8 MiB budget: `panic = "unwind"` made the
//!   x86_64 release binary 1.0 MB (12 %) larger, this check 0.1 MB.
//!
//! The check costs one more open of the store and one read of all of it at
//! each start. A check that makes no progress for [`STALL`] (sled looping
//! over damaged data) is killed and counts as damage too, so that a hang
//! cannot become a restart loop either. Damage that appears while the agent
//! runs and makes sled panic still ends the agent; systemd starts it again
//! and the check then moves the store aside: one restart, not a loop.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{failure, is_lock_error, open_sled, sled_config, StoreError};

/// Exit status of `vigil check-store`: the store can be used.
pub const EXIT_USABLE: u8 = 0;
/// sled reported the store as damaged.
pub const EXIT_DAMAGED: u8 = 2;
/// sled panicked on the store.
pub const EXIT_PANICKED: u8 = 3;
/// Any other error (the store is in use, a file may not be read, a full
/// disk): not a verdict on the store.
pub const EXIT_OTHER: u8 = 4;

/// How long the check may go without reporting progress before it counts as
/// hung. Opening a store replays its log since the last snapshot, which
/// sled takes every million operations, with no progress to report.
pub const STALL: Duration = Duration::from_secs(60);
/// The child reports progress at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// What is kept of the child's stderr (the reason is its last line).
const STDERR_MAX: u64 = 64 << 10;

/// Signals that mean the check crashed on the store (an abort after a
/// panic, a bad memory access) rather than that it was stopped (SIGTERM,
/// SIGKILL) or refused a system call (SIGSYS: the service's seccomp filter).
const CRASH_SIGNALS: [i32; 5] = [
    6,  // SIGABRT
    11, // SIGSEGV
    7,  // SIGBUS
    4,  // SIGILL
    8,  // SIGFPE
];

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// sled opened, read and wrote the store.
    Usable,
    /// The store cannot be used, for this reason.
    Damaged(String),
    /// The check could not tell (the store is in use, a file may not be
    /// read, the child could not be started): opening the store in this
    /// process then reports the error as it is.
    Unknown(String),
}

/// How to run the check: a program and its arguments, to which the store's
/// path is appended (`vigil check-store`).
#[derive(Debug, Clone)]
pub struct Checker {
    program: PathBuf,
    args: Vec<OsString>,
    stall: Duration,
}

impl Checker {
    pub fn new(program: PathBuf, args: Vec<OsString>) -> Checker {
        Checker {
            program,
            args,
            stall: STALL,
        }
    }

    /// The same, giving up after `stall` without progress.
    pub fn with_stall(mut self, stall: Duration) -> Checker {
        self.stall = stall;
        self
    }

    /// Check the store at `store` in a child process; `progress` is called
    /// whenever the child reports some. Blocking.
    pub fn check(&self, store: &Path, progress: &mut dyn FnMut()) -> Verdict {
        let spawned = Command::new(&self.program)
            .args(&self.args)
            .arg(store)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                return Verdict::Unknown(format!("cannot start {}: {e}", self.program.display()))
            }
        };
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            unreachable!("both are piped above");
        };
        // Read to the end, keeping the first part, so that the child never
        // blocks on a full pipe.
        let errors = std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut kept = Vec::new();
            let _ = (&mut stderr).take(STDERR_MAX).read_to_end(&mut kept);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            String::from_utf8_lossy(&kept).into_owned()
        });
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_err() || line_tx.send(()).is_err() {
                    break;
                }
            }
            // Dropping the sender tells the end of the output.
        });
        loop {
            match line_rx.recv_timeout(self.stall) {
                Ok(()) => progress(),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Our own child, by its handle.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Verdict::Damaged(format!(
                        "sled made no progress reading the store for {} s",
                        self.stall.as_secs()
                    ));
                }
            }
        }
        let status = match child.wait() {
            Ok(status) => status,
            Err(e) => return Verdict::Unknown(format!("cannot wait for the check: {e}")),
        };
        let stderr = errors.join().unwrap_or_default();
        verdict(status, &stderr)
    }
}

/// The verdict of a check that ended with `status`, having said `stderr`.
fn verdict(status: ExitStatus, stderr: &str) -> Verdict {
    use std::os::unix::process::ExitStatusExt;
    let said = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    let or = |default: String| {
        if said.is_empty() {
            default
        } else {
            said.clone()
        }
    };
    match (status.code(), status.signal()) {
        (Some(c), _) if c == i32::from(EXIT_USABLE) => Verdict::Usable,
        (Some(c), _) if c == i32::from(EXIT_DAMAGED) || c == i32::from(EXIT_PANICKED) => {
            Verdict::Damaged(or(format!("the check failed with status {c}")))
        }
        (Some(c), _) => Verdict::Unknown(or(format!("the check ended with status {c}"))),
        (None, Some(sig)) if CRASH_SIGNALS.contains(&sig) => {
            let crashed = format!("the check crashed on the store (signal {sig})");
            Verdict::Damaged(if said.is_empty() {
                crashed
            } else {
                format!("{crashed}: {said}")
            })
        }
        (None, sig) => Verdict::Unknown(format!("the check was stopped (signal {sig:?})")),
    }
}

/// The child's side, `vigil check-store PATH`: check the store, print
/// progress lines to stdout and why it cannot be used to stderr, and return
/// the exit status.
pub fn run_child(path: &Path) -> u8 {
    // A panic in any thread (sled's I/O threads included), whatever the
    // panic strategy, ends the check with its own status: never a hang.
    std::panic::set_hook(Box::new(|info| {
        let message = info.to_string().replace('\n', ": ");
        let _ = writeln!(std::io::stderr(), "sled panicked on the store: {message}");
        std::process::exit(i32::from(EXIT_PANICKED));
    }));
    let mut last = Instant::now();
    let say = |line: &str| {
        // The parent may be gone; that is no reason to fail the check.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    say("opening");
    let result = check_files(path, &mut |entries| {
        if last.elapsed() >= PROGRESS_EVERY {
            last = Instant::now();
            say(&format!("read {entries} entries"));
        }
    });
    match result {
        Ok(entries) => {
            say(&format!("usable: {entries} entries read"));
            EXIT_USABLE
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            if e.is_damage() {
                EXIT_DAMAGED
            } else {
                EXIT_OTHER
            }
        }
    }
}

/// Key of the entry the check writes and removes, in sled's default tree,
/// which vigil does not use otherwise.
const CHECK_KEY: &[u8] = b"vigil check";

/// Bytes of keys and values read between two openings of the store.
///
/// sled 0.34 counts a page against its cache by its size in the log, and a
/// large value (a readings block) is kept in a blob file with only a
/// pointer in the log: read in one go, a 500 MB store stayed in memory
/// whole (520 MB resident), over the service's `MemoryMax`. Opened anew
/// every 16 MiB, the same read peaked at 30 MB and took 20 % longer.
const REOPEN_EVERY_BYTES: u64 = 16 << 20;

/// Open the store at `path` as the agent would, read every entry of every
/// tree, write and remove one key and flush. Returns the entries read;
/// `progress` gets their count as the reading goes.
pub fn check_files(path: &Path, progress: &mut dyn FnMut(u64)) -> Result<u64, StoreError> {
    check_files_reopening(path, REOPEN_EVERY_BYTES, progress)
}

fn check_files_reopening(
    path: &Path,
    reopen_every_bytes: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, StoreError> {
    failure::remove_unfinished_snapshots(path)?;
    let open = || {
        open_sled(&sled_config(path)).map_err(|e| match e {
            e if is_lock_error(&e) => StoreError::Locked {
                path: path.to_path_buf(),
            },
            e => StoreError::Sled(e),
        })
    };
    let mut db = open()?;
    let mut entries = 0u64;
    for name in db.tree_names() {
        // The last key read: after opening the store anew, the reading
        // goes on after it.
        let mut after: Option<sled::IVec> = None;
        loop {
            let tree = db.open_tree(&name)?;
            let range = match after.clone() {
                Some(key) => tree.range((Bound::Excluded(key), Bound::Unbounded)),
                None => tree.range::<sled::IVec, _>(..),
            };
            let mut read = 0u64;
            let mut reopen = false;
            for entry in range {
                let (key, value) = entry?;
                entries += 1;
                progress(entries);
                read += (key.len() + value.len()) as u64;
                after = Some(key);
                if read >= reopen_every_bytes {
                    reopen = true;
                    break;
                }
            }
            if !reopen {
                break;
            }
            // Every handle goes (the range went with its loop), so that
            // sled frees what it read.
            drop(tree);
            drop(db);
            db = open()?;
        }
    }
    db.size_on_disk()?;
    // Writing is where sled allocates from what it recovered.
    db.insert(CHECK_KEY, &b"1"[..])?;
    db.remove(CHECK_KEY)?;
    db.flush()?;
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checker that runs a shell script instead of `vigil check-store`
    /// (the store's path is `$1`).
    fn script(text: &str) -> Checker {
        Checker::new(
            "/bin/sh".into(),
            vec!["-c".into(), text.into(), "check".into()],
        )
    }

    #[test]
    fn exit_statuses_and_signals_make_the_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let check = |text: &str| script(text).check(dir.path(), &mut || {});
        assert_eq!(check("echo read 10 entries; exit 0"), Verdict::Usable);
        assert_eq!(
            check("echo 'sled panicked on the store: boom' >&2; exit 3"),
            Verdict::Damaged("sled panicked on the store: boom".into())
        );
        assert_eq!(
            check("echo 'store I/O failed: Read corrupted data' >&2; exit 2"),
            Verdict::Damaged("store I/O failed: Read corrupted data".into())
        );
        // An abort without a word (panic = "abort" before the hook could speak).
        let Verdict::Damaged(reason) = check("kill -ABRT $$") else {
            panic!("a crash is damage");
        };
        assert!(
            reason.contains("crashed on the store (signal 6)"),
            "{reason}"
        );
        // Not a verdict on the store: the store is in use, the check was
        // stopped, or the program is not there.
        assert!(matches!(
            check("echo 'store is locked' >&2; exit 4"),
            Verdict::Unknown(r) if r == "store is locked"
        ));
        assert!(matches!(check("kill -TERM $$"), Verdict::Unknown(_)));
        let missing = Checker::new(dir.path().join("no-such-program"), vec![]);
        assert!(matches!(
            missing.check(dir.path(), &mut || {}),
            Verdict::Unknown(_)
        ));
    }

    #[test]
    fn progress_is_passed_on_and_a_silent_check_counts_as_hung() {
        let dir = tempfile::tempdir().unwrap();
        let mut lines = 0;
        let v = script("echo opening; echo read 5 entries; echo usable")
            .check(dir.path(), &mut || lines += 1);
        assert_eq!((v, lines), (Verdict::Usable, 3));
        // Says something, then nothing for longer than the stall allows.
        let hung = script("echo opening; exec sleep 30").with_stall(Duration::from_millis(200));
        let Verdict::Damaged(reason) = hung.check(dir.path(), &mut || {}) else {
            panic!("a hung check is damage");
        };
        assert!(reason.contains("made no progress"), "{reason}");
    }

    #[test]
    fn a_healthy_store_passes_and_keeps_nothing_of_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open_at(dir.path(), 1 << 20, 10, 1 << 16).unwrap();
        store.commit(&super::super::tests::batch(0..1)).unwrap();
        drop(store);
        let mut seen = 0;
        // The readings block and the metadata, at least.
        let entries = check_files(dir.path(), &mut |n| seen = n).unwrap();
        assert!(entries >= 2 && seen == entries, "{entries} {seen}");
        let db = open_sled(&sled_config(dir.path())).unwrap();
        assert_eq!(db.get(CHECK_KEY).unwrap(), None);
    }

    #[test]
    fn opened_anew_as_it_reads_every_entry_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_sled(&sled_config(dir.path())).unwrap();
        let mut all = 0;
        for (t, n) in [("a", 10u32), ("b", 1), ("c", 0), ("d", 7)] {
            let tree = db.open_tree(t).unwrap();
            for i in 0..n {
                tree.insert(i.to_be_bytes(), &[0u8; 100][..]).unwrap();
            }
            all += u64::from(n);
        }
        // sled's default tree is empty, and "a" to "d" hold 18 entries.
        drop(db);
        let in_one_go = check_files_reopening(dir.path(), u64::MAX, &mut |_| {}).unwrap();
        assert_eq!(in_one_go, all);
        // Opened anew after every entry.
        let reopening = check_files_reopening(dir.path(), 1, &mut |_| {}).unwrap();
        assert_eq!(reopening, all);
    }
}

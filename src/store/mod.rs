//! The durable store, and the only module that imports sled. Batches of
//! readings and dead letters come in from ingest; readings go out by sequence
//! number to whoever tails the log (detection, `vigil inspect`).
//!
//! Trees:
//! - `readings`: big-endian u64 sequence of a block's first reading → CBOR
//!   array of readings, cut into parts of at most 2 KiB (`parts.rs`).
//!   Appending whole blocks keeps values compact and makes a group commit a
//!   few sled inserts per block rather than one per reading.
//! - `dead_letters`: big-endian u64 sequence → CBOR `DeadLetter`, bounded in
//!   count and bytes; the oldest are dropped first, and counted.
//! - `meta`: sequence numbers, byte accounting and counters, written in the
//!   same transaction as the data they describe.
//! - `checkpoints`: detection's cursor and per-stream state (`detection.rs`).
//! - `outbox_alerts`, `outbox_aggregates`: what detection produced, until
//!   the upstream broker acknowledges it (`outbox.rs`).
//!
//! Disk budget: the readings log, the outbox, the dead letters and the
//! checkpoints are accounted in bytes (keys + encoded values). sled's files
//! take about twice that, so the data may take 2/5 of the budget, its data
//! limit (`disk.rs`). While that total is at or above the data limit,
//! `commit` refuses new data (`Commit::Full`) and ingest stops taking messages
//! from the broker until space is freed (`make_room`, in the order set out in
//! `evict.rs`).
//!
//! A store sled cannot open or read (damaged files) is checked for in a
//! child process before it is used, and moved aside for a fresh one
//! (`check.rs`, `recover.rs`).

pub mod check;
mod codec;
mod copy;
mod detection;
mod disk;
mod evict;
mod failure;
mod merge;
mod outbox;
mod parts;
mod recover;

pub use check::{Checker, Verdict};
pub use detection::{DetectionCommit, IdleStream};
pub use evict::Eviction;
pub use failure::WriteHealth;
pub use outbox::{Lane, OutboxEntry, OutboxItem};
pub use recover::{open_or_recover, Recovery};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::config::StoreConfig;
use crate::model::{DeadLetter, Reading, Reason};

use codec::{decode_block, encode_block};

/// Most readings in one block of the log.
const BLOCK_MAX_READINGS: usize = 1024;
/// Encoded size at which a block is closed even if it holds fewer readings.
const BLOCK_MAX_BYTES: usize = 256 * 1024;
/// sled's page cache. Small gateways have little memory; the log is written
/// sequentially and read once, so a large cache buys little.
const CACHE_BYTES: u64 = 32 << 20;

const META_KEY: &[u8] = b"meta";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {} is locked by another process (is another vigil running with it?)", path.display())]
    Locked { path: PathBuf },
    #[error("no store at {} (has `vigil run` used this configuration yet?)", path.display())]
    Missing { path: PathBuf },
    #[error("cannot copy the store {} to {} to read it: {source}", from.display(), to.display())]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
    #[error("store I/O failed: {0}")]
    Sled(#[from] sled::Error),
    #[error("cannot encode {what}: {detail}")]
    Encode { what: &'static str, detail: String },
    #[error("store transaction aborted")]
    Aborted,
    #[error("corrupt {what} at key {key}: {detail}")]
    Corrupt {
        what: &'static str,
        key: u64,
        detail: String,
    },
    #[error("cannot remove {}, a snapshot sled did not finish writing (sled would not open the store with it): {source}", path.display())]
    UnfinishedSnapshot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the store {} is damaged and cannot be read: {reason}", path.display())]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot move the damaged store {} aside to {}: {source}", from.display(), to.display())]
    MoveAside {
        from: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

impl StoreError {
    /// The store's files are damaged (as opposed to a disk that is full,
    /// read-only or not ours to write, or a store in use): sled found
    /// corruption, a file it needs is gone or cut short, or our own data
    /// does not decode. Opening it again would fail the same way.
    pub fn is_damage(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            StoreError::Corrupt { .. } | StoreError::Damaged { .. } => true,
            StoreError::Sled(e) => match e {
                sled::Error::Corruption { .. }
                | sled::Error::ReportableBug(_)
                // Only a damaged `conf` file makes sled 0.34 refuse a store
                // it wrote itself with the settings `sled_config` fixes.
                | sled::Error::Unsupported(_)
                // vigil never drops a tree.
                | sled::Error::CollectionNotFound(_) => true,
                // A blob file named by a damaged pointer, a file cut short.
                sled::Error::Io(io) => matches!(
                    io.kind(),
                    ErrorKind::NotFound | ErrorKind::InvalidData | ErrorKind::UnexpectedEof
                ),
                #[allow(unreachable_patterns)]
                _ => false,
            },
            _ => false,
        }
    }
}

/// Counters kept in the store, so they survive restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// MQTT messages handled (stored or dead-lettered).
    pub messages: u64,
    pub readings_stored: u64,
    /// Messages dead-lettered, by reason.
    pub rejected: BTreeMap<Reason, u64>,
    /// Dead letters dropped (oldest first) to stay within their bounds.
    pub dead_letters_dropped: u64,
    /// Readings removed from the log after being consumed.
    pub readings_trimmed: u64,
    /// Outbox entries acknowledged by the upstream broker: alerts, aggregates.
    #[serde(default)]
    pub delivered: [u64; 2],
    /// Aggregates merged into coarser ones to make room, and the number of
    /// merged aggregates that made.
    #[serde(default)]
    pub aggregates_merged: u64,
    #[serde(default)]
    pub aggregate_merges: u64,
    /// Aggregates dropped to make room, and the detection windows they held.
    #[serde(default)]
    pub aggregates_dropped: u64,
    #[serde(default)]
    pub aggregate_windows_dropped: u64,
    /// Alerts dropped because the alerts outbox was over its hard cap.
    #[serde(default)]
    pub alerts_dropped: u64,
    /// Outbox entries removed because they could not be decoded.
    #[serde(default)]
    pub outbox_unreadable: u64,
    /// Readings in blocks of the log that could not be decoded, removed
    /// before detection could read them.
    #[serde(default)]
    pub readings_unreadable: u64,
    /// Times the store before this one could not be used (damaged) and was
    /// moved aside for this one (see `recover.rs`).
    #[serde(default)]
    pub store_recoveries: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    next_seq: u64,
    next_dead: u64,
    readings_bytes: u64,
    dead_bytes: u64,
    dead_count: u64,
    counters: Counters,
    /// Outbox: next sequence number and bytes per lane ([alerts, aggregates]).
    #[serde(default)]
    next_outbox: [u64; 2],
    #[serde(default)]
    outbox_bytes: [u64; 2],
    #[serde(default)]
    outbox_count: [u64; 2],
    /// Detection's cursor, counters and stream states (active and idle).
    #[serde(default)]
    checkpoint_bytes: u64,
    /// Stores of earlier versions did not count the checkpoints; they are
    /// counted once at open.
    #[serde(default)]
    checkpoints_counted: bool,
    /// This store was started fresh because the one before it was damaged.
    #[serde(default)]
    recovery: Option<Recovery>,
}

impl Meta {
    fn used_bytes(&self) -> u64 {
        self.readings_bytes
            + self.dead_bytes
            + self.outbox_bytes[0]
            + self.outbox_bytes[1]
            + self.checkpoint_bytes
    }
}

/// What ingest hands over in one group commit.
#[derive(Debug, Default)]
pub struct Batch {
    pub readings: Vec<Reading>,
    pub dead_letters: Vec<DeadLetter>,
    /// MQTT messages this batch accounts for.
    pub messages: u64,
}

/// Result of `commit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// On disk; readings got sequence numbers `first_seq..first_seq + count`.
    Stored { first_seq: u64, count: u64 },
    /// The budget is used up; nothing was written.
    Full,
}

/// A summary of what the store holds.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub readings: u64,
    pub first_seq: Option<u64>,
    pub next_seq: u64,
    pub readings_bytes: u64,
    pub dead_letters: u64,
    pub dead_letter_bytes: u64,
    /// Outbox entries and bytes, alerts then aggregates.
    pub outbox: [u64; 2],
    pub outbox_bytes: [u64; 2],
    /// Detection's checkpoints: cursor, counters, stream states.
    pub checkpoint_bytes: u64,
    /// Next reading detection will process.
    pub detection_cursor: u64,
    pub budget_bytes: u64,
    /// What the data may take (`disk.rs`).
    pub data_limit_bytes: u64,
    /// The store's files: sled's log, blobs, snapshots.
    pub size_on_disk: u64,
    pub counters: Counters,
    /// Set when this store replaced one that was damaged.
    pub recovery: Option<Recovery>,
}

/// Handle to the store; cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    readings: sled::Tree,
    dead: sled::Tree,
    meta_tree: sled::Tree,
    checkpoints: sled::Tree,
    outbox: [sled::Tree; 2],
    limits: Limits,
    /// One writer at a time; the mutex also guards the in-memory copy of `Meta`.
    /// Lock order: `meta`, then `claims`.
    meta: Mutex<Meta>,
    /// Outbox entries the forwarder holds (see `outbox.rs`).
    claims: Mutex<outbox::Claims>,
    /// How writes went (see `failure.rs`). Taken after `meta`, never before.
    writes: Mutex<WriteHealth>,
    /// Outbox writes that gave out message ids (detection commits with
    /// outputs, merges) since the store was opened, bumped while `meta` is
    /// held, once the write is applied; and that count as it stood when the
    /// last fsync that worked began. Entries are handed to the forwarder only
    /// once the second has caught up with the first (see `outbox.rs`).
    outbox_writes: AtomicU64,
    outbox_synced: AtomicU64,
    /// The store's directory.
    path: PathBuf,
    /// The directory of a copy opened for reading (`open_copy`), removed
    /// after everything above it is dropped (fields drop in order).
    _copy: Option<copy::CopyDir>,
}

/// The store's bounds. The byte bounds configured are of disk space; the
/// data they allow is their share that keeps sled's files within them
/// (`disk.rs`).
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// `store.budget_bytes`, for the files.
    budget_bytes: u64,
    /// What the data may take: its share of the budget.
    data_bytes: u64,
    dead_letter_max: u64,
    dead_letter_max_bytes: u64,
    alerts_max_bytes: u64,
}

impl Limits {
    /// From the configured bounds, all byte bounds of disk space.
    fn new(
        budget_bytes: u64,
        dead_letter_max: u64,
        dead_letter_max_bytes: u64,
        alerts_max_bytes: u64,
    ) -> Limits {
        Limits {
            budget_bytes,
            data_bytes: disk::data_share(budget_bytes),
            dead_letter_max,
            dead_letter_max_bytes: disk::data_share(dead_letter_max_bytes),
            alerts_max_bytes: disk::data_share(alerts_max_bytes),
        }
    }
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Our transactions never abort on their own; only storage errors remain.
fn transaction_result(result: Result<(), TransactionError<()>>) -> Result<(), StoreError> {
    match result {
        Ok(()) => Ok(()),
        Err(TransactionError::Storage(e)) => Err(e.into()),
        Err(TransactionError::Abort(())) => Err(StoreError::Aborted),
    }
}

fn seq_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[8 - n..].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

fn to_cbor<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(v, &mut out).map_err(|e| StoreError::Encode {
        what,
        detail: e.to_string(),
    })?;
    Ok(out)
}

fn from_cbor<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    key: u64,
    bytes: &[u8],
) -> Result<T, StoreError> {
    ciborium::de::from_reader(bytes).map_err(|e| StoreError::Corrupt {
        what,
        key,
        detail: e.to_string(),
    })
}

/// Number of readings in the block starting at `first`.
fn block_len_at(first: u64, bytes: &[u8]) -> Result<u64, StoreError> {
    codec::block_len(bytes).map_err(|detail| corrupt_block(first, detail))
}

/// The readings of the block starting at `first`.
fn decode_block_at(first: u64, bytes: &[u8]) -> Result<Vec<Reading>, StoreError> {
    decode_block(bytes).map_err(|detail| corrupt_block(first, detail))
}

/// What a readings block is called in `StoreError::Corrupt`.
const BLOCK: &str = "readings block";

fn corrupt_block(first: u64, detail: String) -> StoreError {
    StoreError::Corrupt {
        what: BLOCK,
        key: first,
        detail,
    }
}

/// Metadata for trees that have data but no metadata record (written by a
/// tool, or restored from a copy): sequence numbers and byte counts are
/// recounted so that nothing is overwritten. Counters start from zero.
fn rebuild_meta(
    readings: &sled::Tree,
    dead: &sled::Tree,
    outbox: &[sled::Tree; 2],
) -> Result<Meta, StoreError> {
    let mut meta = Meta::default();
    for block in parts::blocks(readings.iter()) {
        let block = block?;
        meta.next_seq = meta.next_seq.max(block.first.saturating_add(block.len()?));
        meta.readings_bytes += block.stored_bytes();
    }
    for entry in dead.iter() {
        let (k, v) = entry?;
        meta.next_dead = meta.next_dead.max(seq_of(&k).saturating_add(1));
        meta.dead_bytes += (k.len() + v.len()) as u64;
        meta.dead_count += 1;
    }
    for (lane, tree) in outbox.iter().enumerate() {
        for entry in tree.iter() {
            let (k, v) = entry?;
            meta.next_outbox[lane] = meta.next_outbox[lane].max(seq_of(&k).saturating_add(1));
            meta.outbox_bytes[lane] += (k.len() + v.len()) as u64;
            meta.outbox_count[lane] += 1;
        }
    }
    Ok(meta)
}

/// sled's settings for a store, the same wherever it is opened (a change
/// of some of them, such as the segment size, makes sled refuse the store).
fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_BYTES)
        // We fsync at each group commit; a background flusher would only add writes.
        .flush_every_ms(None)
}

/// How long to wait for the store's lock before reporting it taken.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Open a sled database, waiting up to [`LOCK_WAIT`] for its file lock.
///
/// A `Db` that was just dropped in this process can still hold the lock for a
/// moment: sled's background I/O threads keep the file open until their last
/// write ends. Another process holding it fails after the wait.
pub(crate) fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Err(e) if is_lock_error(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// sled reports a taken lock only as an `Other` I/O error with this text.
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::Other
        && io.to_string().starts_with("could not acquire lock"))
}

impl Store {
    /// Open (or create) the store at `config.path`.
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        Self::open_with(&config.path, Self::limits(config), None)
    }

    /// Open a copy of the store at `config.path`, made under `tmp`, leaving
    /// the store itself as it was (see `copy.rs`): for reading a stopped
    /// agent's store. The copy is removed when the last handle is dropped.
    /// Fails with `Missing` when there is no store there, with `Locked`
    /// when an agent has it open, and with `Damaged` when the copy cannot
    /// be read (checked first by `checker` in a child process, if given:
    /// see `check.rs`).
    pub fn open_copy(
        config: &StoreConfig,
        tmp: &Path,
        checker: Option<&Checker>,
    ) -> Result<Store, StoreError> {
        let dir = copy::copy_store(&config.path, tmp)?;
        let path = dir.path().to_path_buf();
        let damaged = |reason| StoreError::Damaged {
            path: config.path.clone(),
            reason,
        };
        if let Some(checker) = checker {
            if let Verdict::Damaged(reason) = checker.check(&path, &mut || {}) {
                return Err(damaged(reason));
            }
        }
        Self::open_with(&path, Self::limits(config), Some(dir)).map_err(|e| match e {
            e if e.is_damage() => damaged(e.to_string()),
            e => e,
        })
    }

    fn limits(config: &StoreConfig) -> Limits {
        Limits::new(
            config.budget_bytes,
            config.dead_letter_max as u64,
            config.dead_letter_max_bytes,
            config.alerts_max_bytes,
        )
    }

    /// Open with the default alerts cap (half of what the dead letters leave).
    pub fn open_at(
        path: &Path,
        budget_bytes: u64,
        dead_letter_max: u64,
        dead_letter_max_bytes: u64,
    ) -> Result<Store, StoreError> {
        Self::open_with(
            path,
            Limits::new(
                budget_bytes,
                dead_letter_max,
                dead_letter_max_bytes,
                budget_bytes.saturating_sub(dead_letter_max_bytes) / 2,
            ),
            None,
        )
    }

    fn open_with(
        path: &Path,
        limits: Limits,
        copy: Option<copy::CopyDir>,
    ) -> Result<Store, StoreError> {
        failure::remove_unfinished_snapshots(path)?;
        let db = open_sled(&sled_config(path)).map_err(|e| match e {
            e if is_lock_error(&e) => StoreError::Locked {
                path: path.to_path_buf(),
            },
            e => StoreError::Sled(e),
        })?;
        let readings = db.open_tree("readings")?;
        let dead = db.open_tree("dead_letters")?;
        let meta_tree = db.open_tree("meta")?;
        let checkpoints = db.open_tree("checkpoints")?;
        let outbox = [
            db.open_tree("outbox_alerts")?,
            db.open_tree("outbox_aggregates")?,
        ];
        let meta = match meta_tree.get(META_KEY)? {
            Some(v) => match from_cbor("metadata", 0, &v) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "store metadata unreadable; recounting from the data (counters restart at zero)");
                    rebuild_meta(&readings, &dead, &outbox)?
                }
            },
            None => rebuild_meta(&readings, &dead, &outbox)?,
        };
        let mut meta: Meta = meta;
        if !meta.checkpoints_counted {
            // Not written back until the next commit: counting again after
            // a restart before then gives the same sum.
            meta.checkpoint_bytes = detection::count_bytes(&checkpoints)?;
            meta.checkpoints_counted = true;
        }
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                readings,
                dead,
                meta_tree,
                checkpoints,
                outbox,
                limits,
                path: path.to_path_buf(),
                meta: Mutex::new(meta),
                claims: Mutex::default(),
                writes: Mutex::default(),
                outbox_writes: AtomicU64::new(0),
                outbox_synced: AtomicU64::new(0),
                _copy: copy,
            }),
        })
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        // A poisoned lock means a writer panicked mid-update; the on-disk meta
        // is still consistent (transactions), so carry on with the copy we have.
        self.inner.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writes(&self) -> MutexGuard<'_, WriteHealth> {
        self.inner.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How writes have gone since the store was opened.
    pub fn write_health(&self) -> WriteHealth {
        self.writes().clone()
    }

    /// Note a write that failed, then hand the result on. Every path that
    /// writes to sled goes through here, `finish` or `sync`.
    fn noted<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.is_err() {
            self.writes().record(&result, Instant::now());
        }
        result
    }

    /// The outcome of a transaction; a failure is noted.
    fn finish(&self, result: Result<(), TransactionError<()>>) -> Result<(), StoreError> {
        self.noted(transaction_result(result))
    }

    /// fsync. Only an fsync that worked ends a run of failed writes: a
    /// transaction sled applied in memory says nothing about the disk.
    fn sync(&self) -> Result<(), StoreError> {
        // Read under `meta`, with no write half done: every outbox write
        // counted was applied before the flush begins, so the flush covers it.
        let outbox_writes = {
            let _meta = self.meta();
            self.inner.outbox_writes.load(Ordering::Acquire)
        };
        let result = self.inner.db.flush().map(drop).map_err(StoreError::from);
        if result.is_ok() {
            self.inner
                .outbox_synced
                .fetch_max(outbox_writes, Ordering::AcqRel);
        }
        self.writes().record(&result, Instant::now());
        result
    }

    /// Count an outbox write that gave out message ids; call it with `meta`
    /// held, once the write is applied.
    fn outbox_written(&self) {
        self.inner.outbox_writes.fetch_add(1, Ordering::Release);
    }

    /// Bytes used by the readings log, the outbox, the dead letters and
    /// detection's checkpoints.
    pub fn used_bytes(&self) -> u64 {
        self.meta().used_bytes()
    }

    /// `store.budget_bytes`: what the store's files may take.
    pub fn budget_bytes(&self) -> u64 {
        self.inner.limits.budget_bytes
    }

    /// What the data may take: the share of the budget that keeps sled's
    /// files within it (`disk.rs`).
    pub fn data_limit(&self) -> u64 {
        self.inner.limits.data_bytes
    }

    /// True while the data limit is used up.
    pub fn is_full(&self) -> bool {
        self.used_bytes() >= self.data_limit()
    }

    /// Append a batch and make it durable (fsync) before returning.
    ///
    /// Blocking: call it from a blocking thread, not from an async task.
    pub fn commit(&self, batch: &Batch) -> Result<Commit, StoreError> {
        let mut meta = self.meta();
        if meta.used_bytes() >= self.data_limit() {
            return Ok(Commit::Full);
        }
        let first_seq = meta.next_seq;

        // Encode outside the transaction: sled may run the closure more than once.
        let mut blocks: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut seq = first_seq;
        let mut added_bytes = 0u64;
        for chunk in codec::chunk(&batch.readings, BLOCK_MAX_READINGS, BLOCK_MAX_BYTES) {
            for (k, v) in parts::split(seq, &encode_block(chunk)?) {
                added_bytes += (k.len() + v.len()) as u64;
                blocks.push((k, v));
            }
            seq += chunk.len() as u64;
        }

        let mut next = meta.clone();
        next.next_seq = seq;
        next.readings_bytes += added_bytes;
        next.counters.messages += batch.messages;
        next.counters.readings_stored += batch.readings.len() as u64;

        let mut dead_inserts = Vec::with_capacity(batch.dead_letters.len());
        for dl in &batch.dead_letters {
            let value = to_cbor("dead letter", dl)?;
            *next.counters.rejected.entry(dl.reason).or_default() += 1;
            next.dead_bytes += 8 + value.len() as u64;
            next.dead_count += 1;
            dead_inserts.push((key(next.next_dead), value));
            next.next_dead += 1;
        }
        // Oldest dead letters give way first when over their count or byte bound.
        let mut dead_removals = Vec::new();
        if next.dead_count > self.inner.limits.dead_letter_max
            || next.dead_bytes > self.inner.limits.dead_letter_max_bytes
        {
            let pending: Vec<_> = dead_inserts
                .iter()
                .map(|(k, v)| (k.to_vec(), v.len()))
                .collect();
            let existing = self
                .inner
                .dead
                .iter()
                .map(|r| r.map(|(k, v)| (k.to_vec(), v.len())));
            for entry in existing.chain(pending.into_iter().map(Ok)) {
                if next.dead_count <= self.inner.limits.dead_letter_max
                    && next.dead_bytes <= self.inner.limits.dead_letter_max_bytes
                {
                    break;
                }
                let (k, len) = entry?;
                next.dead_count -= 1;
                next.dead_bytes -= 8 + len as u64;
                next.counters.dead_letters_dropped += 1;
                dead_removals.push(k);
            }
        }
        let meta_bytes = to_cbor("metadata", &next)?;

        let result: Result<(), TransactionError<()>> = (
            &self.inner.readings,
            &self.inner.dead,
            &self.inner.meta_tree,
        )
            .transaction(|(readings, dead, meta_tree)| {
                for (k, v) in &blocks {
                    readings.insert(k.as_slice(), v.as_slice())?;
                }
                for (k, v) in &dead_inserts {
                    dead.insert(&k[..], v.as_slice())?;
                }
                for k in &dead_removals {
                    dead.remove(k.as_slice())?;
                }
                meta_tree.insert(META_KEY, meta_bytes.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        self.finish(result)?;
        // The transaction is applied (readers see it) even if the flush below
        // fails, so the accounting must follow it now. A retried batch then
        // gets new sequence numbers: stored twice, never counted wrong.
        *meta = next;
        // Other writers need not wait for the fsync.
        drop(meta);
        self.sync()?;
        Ok(Commit::Stored {
            first_seq,
            count: batch.readings.len() as u64,
        })
    }

    /// Remove every block whose readings all have sequence numbers below `seq`.
    /// Returns the number of readings removed.
    pub fn trim_before(&self, seq: u64) -> Result<u64, StoreError> {
        self.trim(seq, 0)
    }

    /// Remove blocks below `seq`, oldest first, until the store uses at most
    /// `target` bytes. Not fsynced: readings that come back after a crash
    /// are behind detection's cursor and only take space until trimmed again.
    fn trim(&self, seq: u64, target: u64) -> Result<u64, StoreError> {
        let mut meta = self.meta();
        let mut next = meta.clone();
        let mut removals = Vec::new();
        for block in parts::blocks(self.inner.readings.range(..key(seq))) {
            if next.used_bytes() <= target {
                break;
            }
            let block = block?;
            let count = block.len()?;
            if block.first.saturating_add(count) > seq {
                break;
            }
            next.readings_bytes = next.readings_bytes.saturating_sub(block.stored_bytes());
            next.counters.readings_trimmed += count;
            removals.extend(block.keys);
        }
        if removals.is_empty() {
            return Ok(0);
        }
        let meta_bytes = to_cbor("metadata", &next)?;
        let result: Result<(), TransactionError<()>> =
            (&self.inner.readings, &self.inner.meta_tree).transaction(|(readings, meta_tree)| {
                for k in &removals {
                    readings.remove(k)?;
                }
                meta_tree.insert(META_KEY, meta_bytes.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        self.finish(result)?;
        let removed = next.counters.readings_trimmed - meta.counters.readings_trimmed;
        *meta = next;
        Ok(removed)
    }

    /// Readings with sequence numbers `>= from`, in order, at most `limit`.
    pub fn readings_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Reading)>, StoreError> {
        self.readings_within(from, limit, usize::MAX)
    }

    /// Readings with sequence numbers `>= from`, in order, at most `limit`
    /// of them and, once decoded, at most `max_bytes` in memory
    /// ([`Reading::approx_bytes`]); always at least one when there is one.
    /// Only the blocks read are decoded, and a block holds at most
    /// `BLOCK_MAX_BYTES` encoded (or one larger reading).
    pub fn readings_within(
        &self,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Reading)>, StoreError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        // The block holding `from` starts at or before it.
        let start = match self.inner.readings.range(..=key(from)).next_back() {
            Some(entry) => seq_of(&entry?.0),
            None => from,
        };
        let full = |out: &Vec<(u64, Reading)>, bytes: usize| {
            out.len() >= limit || (!out.is_empty() && bytes >= max_bytes)
        };
        'blocks: for entry in parts::blocks(self.inner.readings.range(key(start)..)) {
            if full(&out, bytes) {
                break;
            }
            let stored = entry?;
            let first = stored.first;
            let block = stored.decode()?;
            for (i, r) in block.into_iter().enumerate() {
                let seq = first + i as u64;
                if seq < from {
                    continue;
                }
                if full(&out, bytes) {
                    break 'blocks;
                }
                bytes += r.approx_bytes();
                out.push((seq, r));
            }
        }
        Ok(out)
    }

    /// Like [`Store::readings_within`], for detection: a block of the log
    /// that cannot be decoded is removed, counted (`readings_unreadable`)
    /// and logged instead of being returned as an error, which detection
    /// would retry forever. Also returns how many readings at or after
    /// `from` were lost so.
    pub fn readings_to_detect(
        &self,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(u64, Reading)>, u64), StoreError> {
        let mut unreadable = 0;
        loop {
            match self.readings_within(from, limit, max_bytes) {
                Err(StoreError::Corrupt {
                    what: BLOCK,
                    key: first,
                    detail,
                }) => unreadable += self.remove_unreadable_block(first, from, &detail)?,
                other => return other.map(|readings| (readings, unreadable)),
            }
        }
    }

    /// Remove the block starting at `first`, which cannot be decoded.
    /// Returns the readings at or after `from` it held: those up to the next
    /// block (or to the end of the log), since its own count may be what is
    /// damaged.
    fn remove_unreadable_block(
        &self,
        first: u64,
        from: u64,
        detail: &str,
    ) -> Result<u64, StoreError> {
        let mut meta = self.meta();
        let Some(block) = parts::blocks(
            self.inner
                .readings
                .range(key(first)..key(first.saturating_add(1))),
        )
        .next()
        .transpose()?
        else {
            return Ok(0);
        };
        let end = match self
            .inner
            .readings
            .range(key(first.saturating_add(1))..)
            .next()
        {
            Some(entry) => seq_of(&entry?.0),
            None => meta.next_seq,
        };
        let lost = end.saturating_sub(first.max(from));
        let mut next = meta.clone();
        next.readings_bytes = next.readings_bytes.saturating_sub(block.stored_bytes());
        next.counters.readings_unreadable += lost;
        let meta_bytes = to_cbor("metadata", &next)?;
        let result: Result<(), TransactionError<()>> =
            (&self.inner.readings, &self.inner.meta_tree).transaction(|(readings, meta_tree)| {
                for k in &block.keys {
                    readings.remove(k)?;
                }
                meta_tree.insert(META_KEY, meta_bytes.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        self.finish(result)?;
        *meta = next;
        tracing::error!(
            first_seq = first,
            readings = lost,
            error = detail,
            "a block of the readings log cannot be decoded (a damaged store): its readings are skipped by detection and the block is removed"
        );
        Ok(lost)
    }

    /// The last `n` readings, oldest first.
    pub fn last_readings(&self, n: usize) -> Result<Vec<(u64, Reading)>, StoreError> {
        let next = self.meta().next_seq;
        let first = self.first_seq()?.unwrap_or(next);
        let from = next.saturating_sub(n as u64).max(first);
        self.readings_from(from, n)
    }

    fn first_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.readings.first()?.map(|(k, _)| seq_of(&k)))
    }

    /// The last `n` dead letters, oldest first, with their sequence numbers.
    pub fn last_dead_letters(&self, n: usize) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.dead.iter().rev().take(n) {
            let (k, v) = entry?;
            let seq = seq_of(&k);
            out.push((seq, from_cbor("dead letter", seq, &v)?));
        }
        out.reverse();
        Ok(out)
    }

    pub fn stats(&self) -> Result<Stats, StoreError> {
        let meta = self.meta().clone();
        let detection_cursor = self.detection_cursor()?;
        let first_seq = self.first_seq()?;
        Ok(Stats {
            readings: first_seq
                .map(|f| meta.next_seq.saturating_sub(f))
                .unwrap_or(0),
            first_seq,
            next_seq: meta.next_seq,
            readings_bytes: meta.readings_bytes,
            dead_letters: meta.dead_count,
            dead_letter_bytes: meta.dead_bytes,
            outbox: meta.outbox_count,
            outbox_bytes: meta.outbox_bytes,
            checkpoint_bytes: meta.checkpoint_bytes,
            detection_cursor,
            budget_bytes: self.inner.limits.budget_bytes,
            data_limit_bytes: self.data_limit(),
            size_on_disk: disk::files_bytes(&self.inner.path).map_err(sled::Error::from)?,
            counters: meta.counters,
            recovery: meta.recovery,
        })
    }

    /// Flush everything to disk (used at shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.sync()
    }
}

#[cfg(test)]
impl Store {
    /// Replace the stored block starting at `first` (all its parts) with
    /// `bytes`: a damaged store, for tests.
    pub(crate) fn overwrite_block(&self, first: u64, bytes: &[u8]) {
        for k in self.inner.readings.range(key(first)..key(first + 1)).keys() {
            self.inner.readings.remove(k.unwrap()).unwrap();
        }
        self.inner.readings.insert(key(first), bytes).unwrap();
    }
}

#[cfg(test)]
mod tests;

//! The outbox: what detection produced, waiting for the upstream broker's
//! PUBACK. Two lanes, alerts and aggregates, each keyed by a big-endian u64
//! sequence number (oldest first); the value is the CBOR pair `[id, entry]`.
//!
//! The id is what upstream sees in the message id. A new entry's id is its
//! sequence number; an aggregate made by merging older ones (see `evict.rs`)
//! keeps the key of the oldest part, so it keeps its place in the queue, but
//! gets a fresh id: the parts may already have reached upstream before their
//! PUBACK was lost, and a consumer deduplicating by id must not drop the
//! merged message as a copy of one of them.
//!
//! The forwarder *claims* the entries it reads; eviction never touches a
//! claimed entry, so a PUBACK always deletes exactly what was sent.
//!
//! On disk before published. Detection commits and merges are not fsynced
//! (see `detection.rs`): sled keeps them in its own buffers until the next
//! flush, or writes them out in the background at its next transaction. A
//! crash (a kill as well as a power cut) before then takes them back, and
//! with them the ids they gave out, which then go to whatever detection
//! makes after the restart. What it made on processing time (windows closed
//! for want of readings, silence alerts) comes out differently or in another
//! order, so an id already published would name other content, which a
//! consumer would drop as a copy. So `outbox_claim` hands out entries only
//! once they are on disk: it fsyncs first if an outbox write that gave out
//! ids happened since the last fsync began: at most one fsync per detection
//! commit or merge pass that gave out ids (a detection commit holds seconds
//! of outputs, or an alert), and none when a group commit of readings began
//! after the write. An id that went out is durable, and so is `next_outbox`
//! past it: it is never given out again.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use tracing::error;

use crate::model::{Aggregate, AlertEvent, EpochMs};

use super::{from_cbor, key, seq_of, to_cbor, Meta, Store, StoreError, META_KEY};

/// The two outbox lanes; alerts go out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    Alerts = 0,
    Aggregates = 1,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Alerts, Lane::Aggregates];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Alerts => "alerts",
            Lane::Aggregates => "aggregates",
        }
    }
}

/// One outbox entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OutboxEntry {
    Alert(AlertEvent),
    Aggregate(Aggregate),
}

impl OutboxEntry {
    /// Event time the entry is about: the end of its window.
    pub fn end_ms(&self) -> EpochMs {
        match self {
            OutboxEntry::Alert(a) => a.window_end_ms,
            OutboxEntry::Aggregate(g) => g.end_ms,
        }
    }
}

/// An entry with its place in the lane (`seq`) and its message id number.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxItem {
    pub seq: u64,
    pub id: u64,
    pub entry: OutboxEntry,
}

pub(super) fn encode_entry(id: u64, entry: &OutboxEntry) -> Result<Vec<u8>, StoreError> {
    to_cbor("outbox entry", &(id, entry))
}

pub(super) fn decode_entry(seq: u64, bytes: &[u8]) -> Result<OutboxItem, StoreError> {
    let (id, entry): (u64, OutboxEntry) = from_cbor("outbox entry", seq, bytes)?;
    Ok(OutboxItem { seq, id, entry })
}

/// Why entries leave the outbox other than by eviction.
#[derive(Clone, Copy)]
enum Removal {
    Delivered,
    Unreadable,
}

/// Entries the forwarder holds, per lane.
pub(super) type Claims = [BTreeSet<u64>; 2];

impl Store {
    pub(super) fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.inner.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries of `lane` with sequence numbers `>= from`, oldest first.
    pub fn outbox(
        &self,
        lane: Lane,
        from: u64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.outbox[lane as usize]
            .range(key(from)..)
            .take(limit)
        {
            let (k, v) = entry?;
            out.push(decode_entry(seq_of(&k), &v)?);
        }
        Ok(out)
    }

    /// The last `n` entries of `lane`, oldest first.
    pub fn last_outbox(&self, lane: Lane, n: usize) -> Result<Vec<OutboxItem>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.outbox[lane as usize].iter().rev().take(n) {
            let (k, v) = entry?;
            out.push(decode_entry(seq_of(&k), &v)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Like `outbox`, and mark the entries as held by the forwarder until
    /// they are acknowledged or released. The entries are on disk when this
    /// returns (an fsync if needed; see the module docs). Blocking.
    pub fn outbox_claim(
        &self,
        lane: Lane,
        from: u64,
        limit: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        // Hold the claims while reading, so that eviction (which takes the
        // claims before it reads) cannot replace an entry between the read and
        // the claim.
        let mut claims = self.claims();
        let mut items = Vec::new();
        let mut unreadable = Vec::new();
        for entry in self.inner.outbox[lane as usize]
            .range(key(from)..)
            .take(limit)
        {
            let (k, v) = entry?;
            let seq = seq_of(&k);
            match decode_entry(seq, &v) {
                Ok(item) => items.push(item),
                Err(e) => {
                    error!(lane = lane.as_str(), seq, error = %e, "outbox entry unreadable (damaged, or written by another version); removing it");
                    unreadable.push((lane, seq));
                }
            }
        }
        claims[lane as usize].extend(items.iter().map(|i| i.seq));
        drop(claims);
        if let Err(e) = self.sync_outbox() {
            let mut claims = self.claims();
            for item in &items {
                claims[lane as usize].remove(&item.seq);
            }
            return Err(e);
        }
        // One bad entry must not block its lane forever.
        self.remove(&unreadable, Removal::Unreadable)?;
        Ok(items)
    }

    /// Make every outbox entry written so far durable, unless an fsync that
    /// began after the last such write already has.
    fn sync_outbox(&self) -> Result<(), StoreError> {
        // Taking `meta` waits for a write in progress: an entry already
        // read is then counted (writers count under `meta`).
        let written = {
            let _meta = self.meta();
            self.inner.outbox_writes.load(Ordering::Acquire)
        };
        if self.inner.outbox_synced.load(Ordering::Acquire) >= written {
            return Ok(());
        }
        self.sync()
    }

    /// Forget every claim (the connection dropped; entries will be read again).
    pub fn outbox_release(&self) {
        for set in self.claims().iter_mut() {
            set.clear();
        }
    }

    /// Delete entries the upstream broker has acknowledged. Not fsynced:
    /// after a crash an entry may come back and be sent again, which the
    /// message id lets upstream recognise.
    pub fn outbox_ack(&self, acked: &[(Lane, u64)]) -> Result<(), StoreError> {
        self.remove(acked, Removal::Delivered)
    }

    fn remove(&self, acked: &[(Lane, u64)], why: Removal) -> Result<(), StoreError> {
        if acked.is_empty() {
            return Ok(());
        }
        let mut meta = self.meta();
        let inner = &self.inner;
        let current: &Meta = &meta;
        let result: Result<Meta, TransactionError<StoreError>> =
            (&inner.outbox[0], &inner.outbox[1], &inner.meta_tree).transaction(
                |(alerts, aggregates, meta_tree)| {
                    let mut next = current.clone();
                    for &(lane, seq) in acked {
                        let tree = match lane {
                            Lane::Alerts => alerts,
                            Lane::Aggregates => aggregates,
                        };
                        if let Some(old) = tree.remove(&key(seq))? {
                            let l = lane as usize;
                            next.outbox_bytes[l] =
                                next.outbox_bytes[l].saturating_sub(8 + old.len() as u64);
                            next.outbox_count[l] = next.outbox_count[l].saturating_sub(1);
                            match why {
                                Removal::Delivered => next.counters.delivered[l] += 1,
                                Removal::Unreadable => next.counters.outbox_unreadable += 1,
                            }
                        }
                    }
                    let bytes =
                        to_cbor("metadata", &next).map_err(ConflictableTransactionError::Abort)?;
                    meta_tree.insert(META_KEY, bytes)?;
                    Ok(next)
                },
            );
        let next = self.noted(match result {
            Ok(next) => Ok(next),
            Err(TransactionError::Storage(e)) => Err(e.into()),
            Err(TransactionError::Abort(e)) => Err(e),
        })?;
        *meta = next;
        drop(meta);
        let mut claims = self.claims();
        for &(lane, seq) in acked {
            claims[lane as usize].remove(&seq);
        }
        Ok(())
    }

    /// The oldest entry of `lane` (its event time tells the age of a backlog).
    pub fn outbox_oldest(&self, lane: Lane) -> Result<Option<OutboxItem>, StoreError> {
        Ok(self.outbox(lane, 0, 1)?.pop())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DetectionCommit;
    use std::collections::BTreeMap;

    fn aggregate(i: i64) -> Aggregate {
        Aggregate {
            device: "d".into(),
            metric: "m".into(),
            start_ms: i * 1000,
            end_ms: (i + 1) * 1000,
            features: BTreeMap::from([("mean".to_string(), i as f64)]),
            windows: 1,
        }
    }

    fn alert(i: i64) -> AlertEvent {
        AlertEvent {
            id: format!("d/m/silence/last_reading/{i}"),
            kind: crate::model::AlertKind::Raised,
            device: "d".into(),
            metric: "m".into(),
            detector: "silence".into(),
            feature: "last_reading".into(),
            severity: crate::model::Severity::Warning,
            raised_ms: i,
            cleared_ms: None,
            window_start_ms: i,
            window_end_ms: i,
            value: 12.0,
            limit: Some(10.0),
            baseline: None,
            score: 1.0,
            message: "no reading for 12 s (limit 10 s)".into(),
        }
    }

    /// Detection commits without an fsync, and what the processing clock
    /// makes (a silence alert, a window closed for want of readings) has no
    /// group commit of readings after it to take it to disk. Whatever the
    /// forwarder is handed must already be there: after a crash an id it
    /// published is neither missing nor given to something else.
    #[test]
    fn claimed_entries_are_on_disk_so_their_ids_outlive_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_at(dir.path(), 1 << 30, 10, 1 << 20).unwrap();
        s.commit(&crate::store::Batch {
            readings: Vec::new(),
            dead_letters: Vec::new(),
            messages: 1,
        })
        .unwrap();
        s.commit_detection(&DetectionCommit {
            cursor: 0,
            alerts: vec![alert(12_000)],
            aggregates: (0..2).map(aggregate).collect(),
            ..DetectionCommit::default()
        })
        .unwrap();
        let claim = |s: &Store| -> Vec<OutboxItem> {
            Lane::ALL
                .iter()
                .flat_map(|&lane| s.outbox_claim(lane, 0, 10).unwrap())
                .collect()
        };
        let sent = claim(&s);
        assert_eq!(sent.len(), 3);

        let (_copy, after) = crate::store::tests::killed_copy(dir.path());
        let kept: Vec<_> = Lane::ALL
            .iter()
            .flat_map(|&lane| after.outbox(lane, 0, 10).unwrap())
            .collect();
        assert_eq!(kept, sent, "what was published is not what a crash leaves");
        // What detection makes after the crash gets ids of its own.
        after
            .commit_detection(&DetectionCommit {
                cursor: 0,
                alerts: vec![alert(13_000)],
                aggregates: vec![aggregate(9)],
                ..DetectionCommit::default()
            })
            .unwrap();
        let new_ids: Vec<_> = Lane::ALL
            .iter()
            .map(|&lane| after.last_outbox(lane, 1).unwrap()[0].id)
            .collect();
        assert_eq!(new_ids, [1, 2]);
    }

    /// The cost: a claim fsyncs only for outbox writes no fsync has
    /// covered yet, and an ingest group commit covers them as well.
    #[test]
    fn a_claim_fsyncs_only_for_writes_no_fsync_has_covered() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_at(dir.path(), 1 << 30, 10, 1 << 20).unwrap();
        let counts = |s: &Store| {
            (
                s.inner.outbox_writes.load(Ordering::Acquire),
                s.inner.outbox_synced.load(Ordering::Acquire),
            )
        };
        let add = |s: &Store, aggregates: Vec<Aggregate>| {
            s.commit_detection(&DetectionCommit {
                cursor: 1,
                aggregates,
                ..DetectionCommit::default()
            })
            .unwrap()
        };
        add(&s, (0..3).map(aggregate).collect());
        assert_eq!(counts(&s), (1, 0));
        s.outbox_claim(Lane::Aggregates, 0, 2).unwrap();
        assert_eq!(counts(&s), (1, 1));
        // Nothing written since: nothing to flush for the next read.
        s.outbox_claim(Lane::Aggregates, 2, 2).unwrap();
        assert_eq!(counts(&s), (1, 1));
        // Progress without outputs gives out no id.
        add(&s, Vec::new());
        assert_eq!(counts(&s), (1, 1));
        // A group commit's fsync covers what detection wrote before it.
        add(&s, vec![aggregate(3)]);
        assert_eq!(counts(&s), (2, 1));
        s.commit(&crate::store::Batch {
            readings: Vec::new(),
            dead_letters: Vec::new(),
            messages: 1,
        })
        .unwrap();
        assert_eq!(counts(&s), (2, 2));
    }

    #[test]
    fn ack_deletes_claimed_entries_and_accounts_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_at(dir.path(), 1 << 30, 10, 1 << 20).unwrap();
        s.commit_detection(&DetectionCommit {
            cursor: 1,
            aggregates: (0..5).map(aggregate).collect(),
            ..DetectionCommit::default()
        })
        .unwrap();
        let before = s.used_bytes();
        let items = s.outbox_claim(Lane::Aggregates, 0, 3).unwrap();
        assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(s.claims()[1].len(), 3);
        // Acking twice (a duplicate PUBACK after a resend) changes nothing the second time.
        s.outbox_ack(&[(Lane::Aggregates, 0), (Lane::Aggregates, 1)])
            .unwrap();
        s.outbox_ack(&[(Lane::Aggregates, 0)]).unwrap();
        let stats = s.stats().unwrap();
        assert_eq!(stats.outbox, [0, 3]);
        assert_eq!(stats.counters.delivered, [0, 2]);
        assert!(s.used_bytes() < before);
        assert_eq!(s.claims()[1].iter().copied().collect::<Vec<_>>(), [2]);
        s.outbox_release();
        assert!(s.claims()[1].is_empty());
        let rest: Vec<_> = s
            .outbox(Lane::Aggregates, 0, 10)
            .unwrap()
            .iter()
            .map(|i| i.seq)
            .collect();
        assert_eq!(rest, [2, 3, 4]);
        // A damaged entry is removed and counted, and does not stop the lane.
        let garbage = b"\xff garbage";
        let replaced = s.inner.outbox[1].insert(key(3), &garbage[..]).unwrap();
        // Accounted as the entry it replaced; its removal subtracts what is there.
        let skew = (replaced.unwrap().len() - garbage.len()) as u64;
        let read: Vec<_> = s
            .outbox_claim(Lane::Aggregates, 2, 10)
            .unwrap()
            .iter()
            .map(|i| i.seq)
            .collect();
        assert_eq!(read, [2, 4]);
        assert_eq!(s.stats().unwrap().counters.outbox_unreadable, 1);
        // Everything else delivered: the lane is empty.
        s.outbox_ack(&[2, 4].map(|q| (Lane::Aggregates, q)))
            .unwrap();
        assert_eq!(s.stats().unwrap().outbox, [0, 0]);
        assert_eq!(s.used_bytes() - s.checkpoint_bytes(), skew);
    }
}

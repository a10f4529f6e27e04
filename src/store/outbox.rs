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

use std::collections::BTreeSet;

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
    /// they are acknowledged or released.
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
        // One bad entry must not block its lane forever.
        self.remove(&unreadable, Removal::Unreadable)?;
        Ok(items)
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

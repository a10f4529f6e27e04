//! Detection's side of the store: the cursor into the readings log, the
//! per-stream checkpoints, and the outbox lanes it fills, all written in one
//! transaction so that each reading affects detection exactly once.
//!
//! - `checkpoints`: UTF-8 key → opaque bytes (detection owns the format);
//!   the cursor is the entry under `CURSOR_KEY`.
//! - `outbox_alerts`, `outbox_aggregates`: see `outbox.rs`.
//!
//! The commit does not fsync: the transaction is atomic, so after a crash
//! either all of it or none of it is there, and none of it means detection
//! runs over the same readings again and produces the same outputs (alert
//! ids come from event times). The next ingest group commit, or shutdown,
//! makes it durable.

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::model::{Aggregate, AlertEvent};

use super::outbox::{encode_entry, Lane, OutboxEntry};
use super::{from_cbor, key, to_cbor, Store, StoreError, META_KEY};

const CURSOR_KEY: &[u8] = b"\0cursor";

/// What one detection batch writes.
#[derive(Debug, Default)]
pub struct DetectionCommit {
    /// Sequence number of the next reading to process.
    pub cursor: u64,
    /// Changed checkpoint entries (key → bytes).
    pub checkpoints: Vec<(String, Vec<u8>)>,
    pub alerts: Vec<AlertEvent>,
    pub aggregates: Vec<Aggregate>,
}

impl Store {
    /// Where detection resumes: the sequence number of the next reading.
    pub fn detection_cursor(&self) -> Result<u64, StoreError> {
        match self.inner.checkpoints.get(CURSOR_KEY)? {
            Some(v) => from_cbor("detection cursor", 0, &v),
            None => Ok(0),
        }
    }

    /// Every checkpoint entry except the cursor.
    pub fn checkpoints(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.checkpoints.iter() {
            let (k, v) = entry?;
            if &k[..] == CURSOR_KEY {
                continue;
            }
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// Write a detection batch: cursor, checkpoints and outputs together.
    pub fn commit_detection(&self, c: &DetectionCommit) -> Result<(), StoreError> {
        let cursor = to_cbor("detection cursor", &c.cursor)?;
        let mut meta = self.meta();
        let mut next = meta.clone();
        let mut lanes: [Vec<([u8; 8], Vec<u8>)>; 2] = [Vec::new(), Vec::new()];
        let entries = c
            .alerts
            .iter()
            .map(|a| (Lane::Alerts, OutboxEntry::Alert(a.clone())))
            .chain(
                c.aggregates
                    .iter()
                    .map(|a| (Lane::Aggregates, OutboxEntry::Aggregate(a.clone()))),
            );
        for (lane, entry) in entries {
            let l = lane as usize;
            // A new entry's id is its sequence number (see `outbox.rs`).
            let value = encode_entry(next.next_outbox[l], &entry)?;
            next.outbox_bytes[l] += 8 + value.len() as u64;
            next.outbox_count[l] += 1;
            lanes[l].push((key(next.next_outbox[l]), value));
            next.next_outbox[l] += 1;
        }
        let meta_bytes = to_cbor("metadata", &next)?;
        let inner = &self.inner;
        let result: Result<(), TransactionError<()>> = (
            &inner.checkpoints,
            &inner.outbox[0],
            &inner.outbox[1],
            &inner.meta_tree,
        )
            .transaction(|(cp, alerts, aggregates, meta_tree)| {
                cp.insert(CURSOR_KEY, cursor.as_slice())?;
                for (k, v) in &c.checkpoints {
                    cp.insert(k.as_bytes(), v.as_slice())?;
                }
                for (k, v) in &lanes[0] {
                    alerts.insert(&k[..], v.as_slice())?;
                }
                for (k, v) in &lanes[1] {
                    aggregates.insert(&k[..], v.as_slice())?;
                }
                meta_tree.insert(META_KEY, meta_bytes.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        self.finish(result)?;
        *meta = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AlertKind, Severity};

    fn alert(i: i64) -> AlertEvent {
        AlertEvent {
            id: format!("d/m/limit/mean/{i}"),
            kind: AlertKind::Raised,
            device: "d".into(),
            metric: "m".into(),
            detector: "limit".into(),
            feature: "mean".into(),
            severity: Severity::Warning,
            raised_ms: i,
            cleared_ms: None,
            window_start_ms: i - 10,
            window_end_ms: i,
            value: 1.0,
            limit: Some(0.5),
            baseline: None,
            score: 0.7,
            message: "m".into(),
        }
    }

    #[test]
    fn cursor_checkpoints_and_outbox_commit_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open_at(dir.path(), 1 << 30, 10, 1 << 20).unwrap();
            assert_eq!(s.detection_cursor().unwrap(), 0);
            s.commit_detection(&DetectionCommit {
                cursor: 42,
                checkpoints: vec![("pump\0temp".into(), vec![1, 2, 3])],
                alerts: vec![alert(1), alert(2)],
                aggregates: vec![],
            })
            .unwrap();
            s.commit_detection(&DetectionCommit {
                cursor: 50,
                checkpoints: vec![("pump\0temp".into(), vec![4])],
                alerts: vec![alert(3)],
                aggregates: vec![],
            })
            .unwrap();
            let stats = s.stats().unwrap();
            assert_eq!(stats.outbox, [3, 0]);
            assert!(stats.outbox_bytes[0] > 0);
            assert_eq!(s.used_bytes(), stats.outbox_bytes[0]);
            s.flush().unwrap();
        }
        let s = Store::open_at(dir.path(), 1 << 30, 10, 1 << 20).unwrap();
        assert_eq!(s.detection_cursor().unwrap(), 50);
        assert_eq!(
            s.checkpoints().unwrap(),
            vec![("pump\0temp".into(), vec![4])]
        );
        let out = s.outbox(Lane::Alerts, 0, 10).unwrap();
        let ids: Vec<_> = out
            .iter()
            .map(|item| match &item.entry {
                OutboxEntry::Alert(a) => (item.seq, item.id, a.raised_ms),
                OutboxEntry::Aggregate(_) => panic!("aggregate in the alerts lane"),
            })
            .collect();
        assert_eq!(ids, vec![(0, 0, 1), (1, 1, 2), (2, 2, 3)]);
        assert_eq!(s.last_outbox(Lane::Alerts, 1).unwrap()[0].seq, 2);
        assert_eq!(s.stats().unwrap().outbox, [3, 0]);
    }
}

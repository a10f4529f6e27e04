//! Detection's side of the store: the cursor into the readings log, the
//! per-stream checkpoints, and the outbox lanes it fills, all written in one
//! transaction so that each reading affects detection exactly once.
//!
//! - `checkpoints`: UTF-8 key → opaque bytes (detection owns the format);
//!   the cursor is the entry under `CURSOR_KEY`. A stream detection has put
//!   aside for being idle is kept under `IDLE` + its key (its state, read
//!   back only when it speaks again), and listed under `INDEX` + the time
//!   it was last seen + its key, so the oldest come first. Every entry
//!   counts against the disk budget.
//! - `outbox_alerts`, `outbox_aggregates`: see `outbox.rs`.
//!
//! The commit does not fsync: the transaction is atomic, so after a crash
//! either all of it or none of it is there, and none of it means detection
//! runs over the same readings again. The next ingest group commit, or
//! shutdown, makes it durable, and so does the forwarder before it publishes
//! any of the outputs (see `outbox.rs`): what detection makes on processing
//! time (windows closed for want of readings, silence alerts) is not made
//! again the same way, so a message id must never go out before the entry
//! behind it is on disk.

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::model::{Aggregate, AlertEvent};

use super::outbox::{encode_entry, Lane, OutboxEntry};
use super::{from_cbor, key, to_cbor, Store, StoreError, META_KEY};

const CURSOR_KEY: &[u8] = b"\0cursor";
/// Prefix of idle streams' states. Stream keys are topic-safe names, which
/// never start with a control character.
const IDLE: u8 = 0x02;
/// Prefix of the idle streams' index (by time last seen).
const INDEX: &[u8] = b"\x01i";

fn idle_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(IDLE);
    k.extend_from_slice(key.as_bytes());
    k
}

fn index_key(seen_ms: i64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(INDEX.len() + 8 + key.len());
    k.extend_from_slice(INDEX);
    // Offset binary, so that the byte order is the numeric order.
    k.extend_from_slice(&((seen_ms as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// A stream's state put aside for being idle.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleStream {
    pub key: String,
    /// Processing time it was last seen.
    pub seen_ms: i64,
    pub state: Vec<u8>,
}

/// Bytes of every entry of a checkpoints tree (keys and values).
pub(super) fn count_bytes(tree: &sled::Tree) -> Result<u64, StoreError> {
    let mut n = 0;
    for entry in tree.iter() {
        let (k, v) = entry?;
        n += (k.len() + v.len()) as u64;
    }
    Ok(n)
}

/// What one detection batch writes.
#[derive(Debug, Default)]
pub struct DetectionCommit {
    /// Sequence number of the next reading to process.
    pub cursor: u64,
    /// Changed checkpoint entries (key → bytes).
    pub checkpoints: Vec<(String, Vec<u8>)>,
    pub alerts: Vec<AlertEvent>,
    pub aggregates: Vec<Aggregate>,
    /// Streams put aside: their active entry goes, the idle one comes.
    pub evicted: Vec<IdleStream>,
    /// Idle streams that spoke again (key, time last seen): their idle
    /// entries go; their state comes back among `checkpoints`.
    pub resumed: Vec<(String, i64)>,
    /// Idle streams forgotten to keep stream states within their share of
    /// the budget (key, time last seen).
    pub forgotten: Vec<(String, i64)>,
}

impl Store {
    /// Where detection resumes: the sequence number of the next reading.
    pub fn detection_cursor(&self) -> Result<u64, StoreError> {
        match self.inner.checkpoints.get(CURSOR_KEY)? {
            Some(v) => from_cbor("detection cursor", 0, &v),
            None => Ok(0),
        }
    }

    /// Every checkpoint entry except the cursor and the idle streams.
    pub fn checkpoints(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.checkpoints.iter() {
            let (k, v) = entry?;
            if &k[..] == CURSOR_KEY || k.first() == Some(&IDLE) || k.starts_with(INDEX) {
                continue;
            }
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    /// The idle streams (time last seen, key), oldest first.
    pub fn idle_streams(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.checkpoints.scan_prefix(INDEX) {
            let (k, _) = entry?;
            let rest = &k[INDEX.len()..];
            if rest.len() < 8 {
                continue;
            }
            let seen =
                (u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")) ^ (1 << 63)) as i64;
            out.push((seen, String::from_utf8_lossy(&rest[8..]).into_owned()));
        }
        Ok(out)
    }

    /// The state of an idle stream, if there is one.
    pub fn idle_stream_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .inner
            .checkpoints
            .get(idle_key(key))?
            .map(|v| v.to_vec()))
    }

    /// Bytes detection's checkpoints take (cursor, counters, stream states).
    pub fn checkpoint_bytes(&self) -> u64 {
        self.meta().checkpoint_bytes
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
        // What changes in the checkpoints tree, and by how many bytes. Only
        // detection writes it, so the sizes read here are those replaced.
        let mut cp_put: Vec<(Vec<u8>, &[u8])> = Vec::with_capacity(c.checkpoints.len() + 1);
        let mut cp_remove: Vec<Vec<u8>> = Vec::new();
        cp_put.push((CURSOR_KEY.to_vec(), cursor.as_slice()));
        for (k, v) in &c.checkpoints {
            cp_put.push((k.as_bytes().to_vec(), v.as_slice()));
        }
        let empty: &[u8] = &[];
        for e in &c.evicted {
            cp_remove.push(e.key.as_bytes().to_vec());
            cp_put.push((idle_key(&e.key), e.state.as_slice()));
            cp_put.push((index_key(e.seen_ms, &e.key), empty));
        }
        for (key, seen) in c.resumed.iter().chain(&c.forgotten) {
            cp_remove.push(idle_key(key));
            cp_remove.push(index_key(*seen, key));
        }
        let old_len = |k: &[u8]| -> Result<u64, StoreError> {
            Ok(self
                .inner
                .checkpoints
                .get(k)?
                .map_or(0, |v| (k.len() + v.len()) as u64))
        };
        let mut cp_bytes = next.checkpoint_bytes as i64;
        for k in &cp_remove {
            cp_bytes -= old_len(k)? as i64;
        }
        for (k, v) in &cp_put {
            // A key both removed and put (evicted, then resumed) counts once.
            if !cp_remove.contains(k) {
                cp_bytes -= old_len(k)? as i64;
            }
            cp_bytes += (k.len() + v.len()) as i64;
        }
        next.checkpoint_bytes = cp_bytes.max(0) as u64;
        let meta_bytes = to_cbor("metadata", &next)?;
        let inner = &self.inner;
        let result: Result<(), TransactionError<()>> = (
            &inner.checkpoints,
            &inner.outbox[0],
            &inner.outbox[1],
            &inner.meta_tree,
        )
            .transaction(|(cp, alerts, aggregates, meta_tree)| {
                for k in &cp_remove {
                    cp.remove(k.as_slice())?;
                }
                for (k, v) in &cp_put {
                    cp.insert(k.as_slice(), *v)?;
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
        if lanes.iter().any(|l| !l.is_empty()) {
            self.outbox_written();
        }
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
                ..DetectionCommit::default()
            })
            .unwrap();
            s.commit_detection(&DetectionCommit {
                cursor: 50,
                checkpoints: vec![("pump\0temp".into(), vec![4])],
                alerts: vec![alert(3)],
                ..DetectionCommit::default()
            })
            .unwrap();
            let stats = s.stats().unwrap();
            assert_eq!(stats.outbox, [3, 0]);
            assert!(stats.outbox_bytes[0] > 0);
            assert_eq!(
                s.used_bytes(),
                stats.outbox_bytes[0] + stats.checkpoint_bytes
            );
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

    #[test]
    fn idle_streams_are_put_aside_listed_oldest_first_and_counted_against_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open_at(dir.path(), 1 << 30, 10, 1 << 20).unwrap();
        s.commit_detection(&DetectionCommit {
            cursor: 1,
            checkpoints: vec![
                ("a\0t".into(), vec![1; 100]),
                ("b\0t".into(), vec![2; 100]),
                ("c\0t".into(), vec![3; 100]),
            ],
            ..DetectionCommit::default()
        })
        .unwrap();
        let full = s.checkpoint_bytes();
        assert!(full > 300, "{full}");
        assert_eq!(s.used_bytes(), full, "checkpoints not counted");
        s.commit_detection(&DetectionCommit {
            cursor: 2,
            evicted: vec![
                IdleStream {
                    key: "b\0t".into(),
                    seen_ms: 2_000,
                    state: vec![2; 100],
                },
                IdleStream {
                    key: "a\0t".into(),
                    seen_ms: -5,
                    state: vec![1; 100],
                },
            ],
            ..DetectionCommit::default()
        })
        .unwrap();
        let active: Vec<String> = s
            .checkpoints()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(active, ["c\0t"]);
        assert_eq!(
            s.idle_streams().unwrap(),
            vec![(-5, "a\0t".to_string()), (2_000, "b\0t".to_string())]
        );
        assert_eq!(s.idle_stream_state("b\0t").unwrap(), Some(vec![2; 100]));
        // One resumes (its state comes back as an active checkpoint), one is forgotten.
        s.commit_detection(&DetectionCommit {
            cursor: 3,
            checkpoints: vec![("b\0t".into(), vec![2; 100])],
            resumed: vec![("b\0t".into(), 2_000)],
            forgotten: vec![("a\0t".into(), -5)],
            ..DetectionCommit::default()
        })
        .unwrap();
        assert!(s.idle_streams().unwrap().is_empty());
        assert_eq!(s.idle_stream_state("a\0t").unwrap(), None);
        assert_eq!(s.checkpoints().unwrap().len(), 2);
        // The accounting matches the tree, also after a reopen that recounts.
        let counted = s.checkpoint_bytes();
        assert_eq!(counted, count_bytes(&s.inner.checkpoints).unwrap());
        assert!(counted < full);
    }
}

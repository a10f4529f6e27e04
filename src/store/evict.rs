//! What gives way when the store is full, in a fixed order:
//!
//! 1. raw readings detection has already consumed, oldest first (they were
//!    kept only as retention); if the readings detection has not processed
//!    yet still hold more than 1/8 of the data limit, detection is behind and
//!    nothing else gives way: ingest pauses until it catches up;
//! 2. the oldest aggregates: first merged, per stream, into coarser ones
//!    (up to ten consecutive windows into one, again and again, up to a day
//!    per aggregate), and dropped only when nothing is left to merge;
//! 3. alerts, oldest first, and only while the alerts lane is over its hard
//!    cap (`store.alerts_max_bytes`).
//!
//! The store is full when its data reaches the data limit (the share of the
//! budget that keeps sled's files within it: `disk.rs`). Space is freed
//! down to a little below that limit (`headroom`), so that a
//! full store does not run this for every batch. Nothing the forwarder has
//! claimed (sent, waiting for its PUBACK) is touched. Every merge and every
//! drop is counted in the store's counters and logged.

use std::collections::HashMap;

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tracing::{error, info, warn};

use super::merge::merge;
use super::outbox::{decode_entry, encode_entry, Claims, Lane, OutboxEntry, OutboxItem};
use super::{key, seq_of, to_cbor, Meta, Store, StoreError, META_KEY};
use crate::model::Aggregate;

/// Most aggregates merged into one in one pass.
const MERGE_FACTOR: usize = 10;
/// Oldest aggregates looked at in one merge pass.
const MERGE_SCAN: usize = 4096;
/// A merged aggregate covers at most this much event time.
const MAX_MERGED_SPAN_MS: i64 = 24 * 3600 * 1000;
/// Merge or drop passes in one `make_room` call (each is one transaction).
const MAX_PASSES: usize = 64;
/// Most entries dropped in one transaction.
const DROP_MAX: usize = 8192;
/// The outbox is squeezed only while the readings log (then all unprocessed)
/// holds less than this fraction of the data limit.
const READINGS_SHARE: u64 = 8;

/// What one `make_room` call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Eviction {
    pub readings_trimmed: u64,
    /// Aggregates merged into coarser ones, and how many those became.
    pub aggregates_merged: u64,
    pub aggregate_merges: u64,
    pub aggregates_dropped: u64,
    /// Detection windows in the dropped aggregates.
    pub aggregate_windows_dropped: u64,
    pub alerts_dropped: u64,
}

/// Bytes freed below the data limit once it is reached.
fn headroom(limit: u64) -> u64 {
    (limit / 32).clamp(4096, 64 << 20).min(limit / 4)
}

/// First sequence number eviction may touch in `lane`: after every claimed
/// entry (the forwarder claims oldest first).
fn first_unclaimed(claims: &Claims, lane: Lane) -> u64 {
    claims[lane as usize]
        .last()
        .map(|s| s.saturating_add(1))
        .unwrap_or(0)
}

impl Store {
    /// Free space if the store is full; `consumed_before` is detection's
    /// cursor (readings below it may go). Blocking.
    pub fn make_room(&self, consumed_before: u64) -> Result<Eviction, StoreError> {
        let limit = self.data_limit();
        let mut ev = Eviction::default();
        if self.used_bytes() < limit {
            return Ok(ev);
        }
        let target = limit - headroom(limit);
        ev.readings_trimmed = self.trim(consumed_before, target)?;
        // Readings detection has yet to process fill the store: it is behind,
        // not out of room. They will be trimmed once processed, and ingest
        // pauses until then; squeezing the outbox would not help for long.
        if self.meta().readings_bytes > limit / READINGS_SHARE {
            log(&ev, self.used_bytes(), limit);
            return Ok(ev);
        }
        for _ in 0..MAX_PASSES {
            if self.used_bytes() <= target {
                break;
            }
            let (parts, merges) = self.merge_oldest_aggregates()?;
            if parts > 0 {
                ev.aggregates_merged += parts;
                ev.aggregate_merges += merges;
                continue;
            }
            let (dropped, windows) = self.drop_oldest(Lane::Aggregates, target)?;
            ev.aggregates_dropped += dropped;
            ev.aggregate_windows_dropped += windows;
            if dropped == 0 {
                break;
            }
        }
        for _ in 0..MAX_PASSES {
            let (dropped, _) = self.drop_oldest(Lane::Alerts, target)?;
            ev.alerts_dropped += dropped;
            if dropped == 0 {
                break;
            }
        }
        log(&ev, self.used_bytes(), limit);
        Ok(ev)
    }

    /// One pass: merge runs of consecutive aggregates of the same stream
    /// among the oldest unclaimed ones. Returns (parts merged, merges made).
    fn merge_oldest_aggregates(&self) -> Result<(u64, u64), StoreError> {
        let mut meta = self.meta();
        let claims = self.claims();
        let lane = Lane::Aggregates as usize;
        let from = first_unclaimed(&claims, Lane::Aggregates);
        let mut streams: HashMap<(String, String), Vec<Part>> = HashMap::new();
        let mut order = Vec::new();
        for entry in self.inner.outbox[lane].range(key(from)..).take(MERGE_SCAN) {
            let (k, v) = entry?;
            // Unreadable entries are the forwarder's to remove and count.
            let seq = seq_of(&k);
            let Ok(OutboxItem {
                entry: OutboxEntry::Aggregate(aggregate),
                ..
            }) = decode_entry(seq, &v)
            else {
                continue;
            };
            let stream = (aggregate.device.clone(), aggregate.metric.clone());
            if !streams.contains_key(&stream) {
                order.push(stream.clone());
            }
            streams.entry(stream).or_default().push(Part {
                seq,
                bytes: 8 + v.len(),
                aggregate,
            });
        }
        let mut next = meta.clone();
        let mut removals: Vec<[u8; 8]> = Vec::new();
        let mut inserts: Vec<([u8; 8], Vec<u8>)> = Vec::new();
        let mut merges = 0u64;
        for stream in &order {
            for chunk in chunks(&streams[stream]) {
                let parts: Vec<_> = chunk.iter().map(|p| p.aggregate.clone()).collect();
                let Some(merged) = merge(&parts) else {
                    continue;
                };
                let id = next.next_outbox[lane];
                next.next_outbox[lane] += 1;
                let value = encode_entry(id, &OutboxEntry::Aggregate(merged))?;
                let freed: usize = chunk.iter().map(|p| p.bytes).sum();
                next.outbox_bytes[lane] =
                    next.outbox_bytes[lane].saturating_sub(freed as u64) + 8 + value.len() as u64;
                next.outbox_count[lane] -= chunk.len() as u64 - 1;
                next.counters.aggregates_merged += chunk.len() as u64;
                next.counters.aggregate_merges += 1;
                merges += 1;
                removals.extend(chunk.iter().map(|p| key(p.seq)));
                inserts.push((key(chunk[0].seq), value));
            }
        }
        if merges == 0 {
            return Ok((0, 0));
        }
        let parts = next.counters.aggregates_merged - meta.counters.aggregates_merged;
        self.apply(lane, &removals, &inserts, &next)?;
        *meta = next;
        // Merged aggregates carry fresh ids.
        self.outbox_written();
        Ok((parts, merges))
    }

    /// Drop the oldest unclaimed entries of `lane` until the store is down to
    /// `target` (alerts: also only while over their hard cap). Returns
    /// (entries dropped, detection windows in them).
    fn drop_oldest(&self, lane: Lane, target: u64) -> Result<(u64, u64), StoreError> {
        let mut meta = self.meta();
        let claims = self.claims();
        let l = lane as usize;
        let cap = self.inner.limits.alerts_max_bytes;
        let over = |m: &Meta| {
            m.used_bytes() > target && (lane == Lane::Aggregates || m.outbox_bytes[l] > cap)
        };
        let mut next = meta.clone();
        let mut removals = Vec::new();
        let mut windows = 0u64;
        let from = first_unclaimed(&claims, lane);
        for entry in self.inner.outbox[l].range(key(from)..) {
            if !over(&next) || removals.len() >= DROP_MAX {
                break;
            }
            let (k, v) = entry?;
            let seq = seq_of(&k);
            if let Ok(OutboxItem {
                entry: OutboxEntry::Aggregate(a),
                ..
            }) = decode_entry(seq, &v)
            {
                windows += u64::from(a.windows);
            }
            next.outbox_bytes[l] = next.outbox_bytes[l].saturating_sub(8 + v.len() as u64);
            next.outbox_count[l] -= 1;
            removals.push(key(seq));
        }
        let dropped = removals.len() as u64;
        if dropped == 0 {
            return Ok((0, 0));
        }
        match lane {
            Lane::Alerts => next.counters.alerts_dropped += dropped,
            Lane::Aggregates => {
                next.counters.aggregates_dropped += dropped;
                next.counters.aggregate_windows_dropped += windows;
            }
        }
        self.apply(l, &removals, &[], &next)?;
        *meta = next;
        Ok((dropped, windows))
    }

    /// Remove, then insert, in one lane, with the new metadata, atomically.
    fn apply(
        &self,
        lane: usize,
        removals: &[[u8; 8]],
        inserts: &[([u8; 8], Vec<u8>)],
        next: &Meta,
    ) -> Result<(), StoreError> {
        let meta_bytes = to_cbor("metadata", next)?;
        let result: Result<(), TransactionError<()>> =
            (&self.inner.outbox[lane], &self.inner.meta_tree).transaction(|(tree, meta_tree)| {
                for k in removals {
                    tree.remove(&k[..])?;
                }
                for (k, v) in inserts {
                    tree.insert(&k[..], v.as_slice())?;
                }
                meta_tree.insert(META_KEY, meta_bytes.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        self.finish(result)
    }
}

/// An aggregate a merge pass looked at: its key, its stored size, itself.
struct Part {
    seq: u64,
    bytes: usize,
    aggregate: Aggregate,
}

/// Runs of one stream's aggregates (oldest first) that may become one:
/// at most `MERGE_FACTOR`, not overlapping (sliding windows overlap and are
/// never merged), spanning at most `MAX_MERGED_SPAN_MS`. Runs of one are left out.
fn chunks(items: &[Part]) -> Vec<&[Part]> {
    let bounds = |i: usize| (items[i].aggregate.start_ms, items[i].aggregate.end_ms);
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=items.len() {
        let fits = i < items.len() && {
            let (first_start, _) = bounds(start);
            let (_, prev_end) = bounds(i - 1);
            let (s, e) = bounds(i);
            i - start < MERGE_FACTOR && s >= prev_end && e - first_start <= MAX_MERGED_SPAN_MS
        };
        if !fits {
            if i - start >= 2 {
                out.push(&items[start..i]);
            }
            start = i;
        }
    }
    out
}

fn log(ev: &Eviction, used: u64, limit: u64) {
    if ev.readings_trimmed > 0 {
        info!(
            readings = ev.readings_trimmed,
            used_bytes = used,
            data_limit_bytes = limit,
            "store full: removed the oldest readings detection has already processed"
        );
    }
    if ev.aggregates_merged > 0 {
        warn!(
            merged = ev.aggregates_merged,
            into = ev.aggregate_merges,
            used_bytes = used,
            data_limit_bytes = limit,
            "store full: merged old aggregates into coarser ones"
        );
    }
    if ev.aggregates_dropped > 0 {
        error!(
            dropped = ev.aggregates_dropped,
            windows = ev.aggregate_windows_dropped,
            used_bytes = used,
            data_limit_bytes = limit,
            "store full: dropped the oldest aggregates (nothing left to merge); raise store.budget_bytes or restore the uplink"
        );
    }
    if ev.alerts_dropped > 0 {
        error!(
            dropped = ev.alerts_dropped,
            used_bytes = used,
            data_limit_bytes = limit,
            "store full: dropped the oldest alerts (over store.alerts_max_bytes); raise the budget or restore the uplink"
        );
    }
}

#[cfg(test)]
#[path = "evict_tests.rs"]
mod tests;

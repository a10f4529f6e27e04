use std::collections::BTreeMap;

use super::*;
use crate::model::{Aggregate, AlertEvent, AlertKind, Reading, Severity, Value};
use crate::store::{Batch, Commit, DetectionCommit};

const HOUR: i64 = 3600 * 1000;

/// An hourly aggregate of ten readings, all equal to `i`.
fn aggregate(device: &str, i: i64) -> Aggregate {
    Aggregate {
        device: device.into(),
        metric: "temp".into(),
        start_ms: i * HOUR,
        end_ms: (i + 1) * HOUR,
        features: BTreeMap::from([
            ("count".to_string(), 10.0),
            ("mean".to_string(), i as f64),
            ("min".to_string(), i as f64),
            ("max".to_string(), i as f64),
            ("std".to_string(), 0.0),
        ]),
        windows: 1,
    }
}

fn alert(i: i64) -> AlertEvent {
    AlertEvent {
        id: format!("d/temp/limit/mean/{i}"),
        kind: AlertKind::Raised,
        device: "d".into(),
        metric: "temp".into(),
        detector: "limit".into(),
        feature: "mean".into(),
        severity: Severity::Warning,
        raised_ms: i,
        cleared_ms: None,
        window_start_ms: i - 1000,
        window_end_ms: i,
        value: 1.0,
        limit: Some(0.5),
        baseline: None,
        score: 0.7,
        message: "mean 1 is above the warning limit 0.5".into(),
    }
}

fn readings(n: usize, from: usize) -> Batch {
    Batch {
        readings: (from..from + n)
            .map(|i| Reading {
                device: "d".into(),
                metric: "temp".into(),
                time_ms: i as i64,
                value: Value::Scalar(i as f64),
            })
            .collect(),
        dead_letters: Vec::new(),
        messages: n as u64,
    }
}

fn add(s: &Store, cursor: u64, alerts: Vec<AlertEvent>, aggregates: Vec<Aggregate>) {
    s.commit_detection(&DetectionCommit {
        cursor,
        alerts,
        aggregates,
        ..DetectionCommit::default()
    })
    .unwrap();
}

/// Σ windows and Σ count over the aggregates lane.
fn lane_totals(s: &Store) -> (u64, f64) {
    s.outbox(Lane::Aggregates, 0, usize::MAX)
        .unwrap()
        .iter()
        .map(|i| match &i.entry {
            OutboxEntry::Aggregate(a) => (u64::from(a.windows), a.features["count"]),
            OutboxEntry::Alert(_) => panic!("alert in the aggregates lane"),
        })
        .fold((0, 0.0), |(w, c), (w2, c2)| (w + w2, c + c2))
}

#[test]
fn consumed_readings_go_first_then_aggregates_are_merged_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 100_000;
    let s = Store::open_at(dir.path(), limit * 5 / 2, 100, 1024).unwrap();
    assert_eq!(s.data_limit(), limit);
    let mut next = 0;
    while s.used_bytes() < 60_000 {
        let Commit::Stored { count, .. } = s.commit(&readings(200, next as usize)).unwrap() else {
            panic!("store full too early");
        };
        next += count;
    }
    let devices = ["a", "b", "c"];
    let mut hour = 0;
    let mut produced = 0u64;
    let mut batch = |s: &Store, hours: i64| {
        let aggs: Vec<_> = (hour..hour + hours)
            .flat_map(|i| devices.map(|d| aggregate(d, i)))
            .collect();
        produced += aggs.len() as u64;
        hour += hours;
        add(s, next, Vec::new(), aggs);
    };
    add(&s, next, (0..5).map(alert).collect(), Vec::new());
    while !s.is_full() {
        batch(&s, 10);
    }
    // Readings are most of what is stored.
    assert!(s.stats().unwrap().readings_bytes > limit / 2);
    let outbox_before = s.stats().unwrap().outbox;

    // 1. Consumed readings alone make enough room: the outbox is untouched.
    let ev = s.make_room(next).unwrap();
    assert!(ev.readings_trimmed > 0, "{ev:?}");
    assert_eq!(ev.aggregates_merged + ev.aggregates_dropped, 0, "{ev:?}");
    assert_eq!(s.stats().unwrap().outbox, outbox_before);
    assert!(s.used_bytes() < limit);

    // 2. Then aggregates are merged, round after round, before any is dropped.
    let mut merged_before_first_drop = 0;
    let mut totals = Eviction::default();
    for _ in 0..100 {
        batch(&s, 50);
        let ev = s.make_room(next).unwrap();
        if totals.aggregates_dropped == 0 && ev.aggregates_dropped > 0 {
            merged_before_first_drop = totals.aggregates_merged + ev.aggregates_merged;
        }
        totals.readings_trimmed += ev.readings_trimmed;
        totals.aggregates_merged += ev.aggregates_merged;
        totals.aggregates_dropped += ev.aggregates_dropped;
        totals.aggregate_windows_dropped += ev.aggregate_windows_dropped;
        totals.alerts_dropped += ev.alerts_dropped;
        if totals.aggregates_dropped > 0 {
            break;
        }
    }
    assert!(
        totals.aggregates_dropped > 0,
        "never had to drop: {totals:?}"
    );
    assert!(merged_before_first_drop > 0, "{totals:?}");
    // Hourly windows merge to at most a day: the lane now holds coarse aggregates.
    let coarse = s
        .outbox(Lane::Aggregates, 0, usize::MAX)
        .unwrap()
        .iter()
        .filter(|i| matches!(&i.entry, OutboxEntry::Aggregate(a) if a.windows > 1))
        .count();
    assert!(coarse > 0);

    // Nothing is lost without being counted: every window is in the lane or
    // in the dropped count, and merging kept the readings' count exact.
    let (windows, count) = lane_totals(&s);
    let stats = s.stats().unwrap();
    assert_eq!(
        windows + stats.counters.aggregate_windows_dropped,
        produced,
        "{stats:?}"
    );
    assert_eq!(count, 10.0 * windows as f64);
    assert_eq!(stats.counters.aggregates_merged, totals.aggregates_merged);
    assert_eq!(
        stats.counters.aggregate_windows_dropped,
        totals.aggregate_windows_dropped
    );
    // Alerts were under their cap: all still there.
    assert_eq!(totals.alerts_dropped, 0);
    assert_eq!(stats.outbox[0], 5);
    assert!(s.used_bytes() < limit);
}

#[test]
fn alerts_give_way_only_when_full_and_over_their_cap() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 50_000;
    let s = Store::open_at(dir.path(), limit * 5 / 2, 100, 1024).unwrap();
    // The default alerts cap, a bound of disk space, scaled like the budget.
    let cap = crate::store::disk::data_share((limit * 5 / 2 - 1024) / 2);

    // Full of unconsumed readings plus alerts under the cap: nothing may go.
    let mut next = 0;
    let mut i = 0;
    while s.stats().unwrap().outbox_bytes[0] < cap / 2 {
        add(&s, 0, vec![alert(i)], Vec::new());
        i += 1;
    }
    while !s.is_full() {
        if let Commit::Stored { count, .. } = s.commit(&readings(100, next as usize)).unwrap() {
            next += count;
        }
    }
    let before = s.stats().unwrap();
    assert_eq!(s.make_room(0).unwrap(), Eviction::default());
    assert_eq!(s.stats().unwrap().outbox, before.outbox);

    // Alerts over the cap in a full store: the oldest go, and only as many as needed.
    s.trim_before(next).unwrap();
    while s.used_bytes() < limit {
        add(&s, next, vec![alert(i)], Vec::new());
        i += 1;
    }
    let produced = i as u64;
    let ev = s.make_room(next).unwrap();
    assert!(ev.alerts_dropped > 0, "{ev:?}");
    let stats = s.stats().unwrap();
    assert_eq!(stats.outbox[0] + ev.alerts_dropped, produced);
    assert_eq!(stats.counters.alerts_dropped, ev.alerts_dropped);
    assert!(s.used_bytes() <= limit - headroom(limit));
    // A few more would have been enough to stop at the target.
    assert!(s.used_bytes() > limit - headroom(limit) - 2_000);
    let first = s.outbox(Lane::Alerts, 0, 1).unwrap()[0].seq;
    assert_eq!(first, ev.alerts_dropped, "the oldest alerts go first");
}

#[test]
fn claimed_entries_are_never_merged_or_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 40_000;
    let s = Store::open_at(dir.path(), limit * 5 / 2, 100, 1024).unwrap();
    let mut hour = 0;
    while !s.is_full() {
        add(&s, 0, Vec::new(), vec![aggregate("a", hour)]);
        hour += 1;
    }
    let claimed = s.outbox_claim(Lane::Aggregates, 0, 20).unwrap();
    let ev = s.make_room(0).unwrap();
    assert!(ev.aggregates_merged > 0, "{ev:?}");
    assert_eq!(s.outbox(Lane::Aggregates, 0, 20).unwrap(), claimed);
    // The merged aggregates that follow got fresh ids, beyond every original.
    let rest = s.outbox(Lane::Aggregates, 20, usize::MAX).unwrap();
    assert!(rest.iter().any(
        |i| matches!(&i.entry, OutboxEntry::Aggregate(a) if a.windows > 1) && i.id >= hour as u64
    ));
    // Once released (say, the connection dropped), they may be merged too.
    s.outbox_release();
    while !s.is_full() {
        add(&s, 0, Vec::new(), vec![aggregate("a", hour)]);
        hour += 1;
    }
    s.make_room(0).unwrap();
    let first = &s.outbox(Lane::Aggregates, 0, 1).unwrap()[0];
    assert!(matches!(&first.entry, OutboxEntry::Aggregate(a) if a.windows > 1));
}

/// A merged aggregate gets a fresh id, and nothing flushes a merge: the
/// forwarder must not publish it before it is on disk, or after a crash the
/// id could be given again to something else.
#[test]
fn a_merged_aggregate_is_on_disk_before_the_forwarder_gets_it() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 40_000;
    let s = Store::open_at(dir.path(), limit * 5 / 2, 100, 1024).unwrap();
    let mut hour = 0;
    while !s.is_full() {
        add(&s, 0, Vec::new(), vec![aggregate("a", hour)]);
        hour += 1;
    }
    s.flush().unwrap();
    let ev = s.make_room(0).unwrap();
    assert!(ev.aggregates_merged > 0, "{ev:?}");
    let sent = s.outbox_claim(Lane::Aggregates, 0, 5).unwrap();
    assert!(
        sent.iter().all(|i| i.id >= hour as u64),
        "not merged: {sent:?}"
    );

    let (_copy, after) = crate::store::tests::killed_copy(dir.path());
    assert_eq!(after.outbox(Lane::Aggregates, 0, 5).unwrap(), sent);
}

#[test]
fn the_outbox_is_left_alone_while_detection_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 40_000;
    let s = Store::open_at(dir.path(), limit * 5 / 2, 100, 1024).unwrap();
    add(
        &s,
        0,
        Vec::new(),
        (0..50).map(|i| aggregate("a", i)).collect(),
    );
    let mut next = 0;
    while !s.is_full() {
        if let Commit::Stored { count, .. } = s.commit(&readings(100, next as usize)).unwrap() {
            next += count;
        }
    }
    // Nothing processed yet: the readings will be trimmed once they are, so
    // no aggregate is merged or dropped in the meantime.
    assert_eq!(s.make_room(0).unwrap(), Eviction::default());
    assert_eq!(s.stats().unwrap().outbox, [0, 50]);
    // Once processed, trimming them is enough.
    let ev = s.make_room(next).unwrap();
    assert!(ev.readings_trimmed > 0);
    assert_eq!(ev.aggregates_merged + ev.aggregates_dropped, 0);
}

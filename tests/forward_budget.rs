//! A small disk budget and an upstream broker that is away while the data
//! comes in: consumed readings go first, then old aggregates are merged, and
//! dropped only when nothing is left to merge; alerts stay. Once upstream is
//! back, what is left arrives, and every detection window is accounted for.

use std::collections::{BTreeMap, BTreeSet};

use crate::forward::{
    expected_alerts, forward_setup, json, outbox_alerts, reading, upstream_table,
    wait_for_delivery, METRIC, T0,
};
use crate::support::{
    free_port, num, publish_blocking, stats, wait_until_commits_settle, Broker, Msg, Subscriber,
    VigilProcess,
};

const DEVICES: usize = 30;
const PER_DEVICE: i64 = 480;
/// One reading an hour, each in a one-second window of its own: twenty days
/// per stream, so even merged as far as they go (up to a day each) the
/// aggregates outgrow the budget.
const SPACING_MS: i64 = 3_600_000;
/// Of disk space: the data may take 100,000 bytes of it.
const BUDGET: u64 = 250_000;

/// Alarms on two devices early on (raised and cleared), and one in the last
/// window of every device (seen in the log, it tells that every window has
/// closed).
fn level(d: usize, k: i64) -> f64 {
    match (d, k) {
        (_, k) if k == PER_DEVICE - 1 => 90.0,
        (0, 100) | (1, 200..=201) => 95.0,
        _ => 20.0 + ((k * 7 + d as i64) % 11) as f64,
    }
}

fn series(d: usize) -> Vec<(i64, f64)> {
    (0..PER_DEVICE)
        .map(|k| (T0 + k * SPACING_MS, level(d, k)))
        .collect()
}

/// Line number of the first log line containing `needle`.
fn first_line(log: &str, needle: &str) -> Option<usize> {
    log.lines().position(|l| l.contains(needle))
}

#[test]
fn small_budget_merges_then_drops_in_documented_order() {
    let local = Broker::start();
    let up_port = free_port();
    let setup = forward_setup(&local, BUDGET, upstream_table(up_port, ""));

    // Production, with no upstream broker.
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    let msgs: Vec<Msg> = (0..PER_DEVICE)
        .flat_map(|k| (0..DEVICES).map(move |d| (d, k)))
        .map(|(d, k)| reading(&format!("b-{d}"), T0 + k * SPACING_MS, level(d, k)))
        .collect();
    publish_blocking(local.port, msgs);
    for d in 0..DEVICES {
        let end = T0 + (PER_DEVICE - 1) * SPACING_MS + 1000;
        vigil.wait_for_log(&format!("b-{d}/{METRIC}/limit/mean/{end}"), 1);
    }
    wait_until_commits_settle(&vigil);
    let log = vigil.log();
    assert!(vigil.terminate().success());

    let before = stats(&setup);
    println!("after production: {before}");
    let outbox = outbox_alerts(&setup);
    let mut expected = BTreeSet::new();
    for d in 0..DEVICES {
        expected.extend(expected_alerts(&format!("b-{d}"), &series(d)));
    }
    assert_eq!(outbox.values().cloned().collect::<BTreeSet<_>>(), expected);
    for key in [
        "readings_trimmed_total",
        "aggregates_merged_total",
        "aggregates_dropped_total",
    ] {
        assert!(num(&before, key) > 0, "{key} is 0: {before}");
    }
    assert_eq!(num(&before, "alerts_dropped_total"), 0, "{before}");
    assert!(
        num(&before, "aggregate_merges_total") < num(&before, "aggregates_merged_total"),
        "{before}"
    );
    // In the documented order: trimming, then merging, then dropping.
    let trimmed = first_line(&log, "store full: removed the oldest readings");
    let merged = first_line(&log, "store full: merged old aggregates");
    let dropped = first_line(&log, "store full: dropped the oldest aggregates");
    assert!(
        trimmed.is_some() && trimmed <= merged && merged < dropped,
        "trimmed at line {trimmed:?}, merged at {merged:?}, dropped at {dropped:?}"
    );
    assert!(first_line(&log, "dropped the oldest alerts").is_none());

    // Upstream comes up; what is left arrives.
    let upstream = Broker::start_on(up_port, None);
    let sub = Subscriber::start(upstream.port, "test-sub-budget", "vigil/#");
    let vigil = VigilProcess::start(&setup);
    let n_aggregates = num(&before, "outbox_aggregates") as usize;
    let got = wait_for_delivery(&sub, expected.len(), n_aggregates, json);
    assert!(vigil.terminate().success());
    assert_eq!(got.alert_events(), outbox, "every alert, as it was stored");
    assert_eq!(got.aggregates.len(), n_aggregates);

    // Each aggregate holds every reading of its stream in its time range,
    // `windows` of them, with exact features; ranges of a stream are disjoint.
    let mut covered: BTreeMap<usize, Vec<(i64, i64)>> = BTreeMap::new();
    let mut windows = 0u64;
    for (_, v) in got.aggregates.values() {
        let d: usize = v["device"].as_str().unwrap()[2..].parse().unwrap();
        let (start, end) = (
            v["start_ms"].as_i64().unwrap(),
            v["end_ms"].as_i64().unwrap(),
        );
        let w = v["windows"].as_u64().unwrap();
        let values: Vec<f64> = series(d)
            .into_iter()
            .filter(|(t, _)| (start..end).contains(t))
            .map(|(_, x)| x)
            .collect();
        let f = &v["features"];
        let feature = |name: &str| {
            f[name]
                .as_f64()
                .unwrap_or_else(|| panic!("no {name} in {v}"))
        };
        assert_eq!(values.len() as u64, w, "windows of {v}");
        assert_eq!(feature("count"), w as f64, "{v}");
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(
            (feature("mean") - mean).abs() < 1e-9 * mean,
            "mean of {v}: {mean}"
        );
        let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        assert_eq!((feature("min"), feature("max")), (min, max), "{v}");
        windows += w;
        covered.entry(d).or_default().push((start, end));
    }
    for ranges in covered.values_mut() {
        ranges.sort();
        assert!(
            ranges.windows(2).all(|p| p[0].1 <= p[1].0),
            "overlap: {ranges:?}"
        );
    }
    assert!(
        got.aggregates
            .values()
            .any(|(_, v)| v["windows"].as_u64() > Some(1)),
        "no merged aggregate arrived"
    );
    // Conservation: every detection window was delivered (inside one
    // aggregate) or counted as dropped, none in both, none twice; and the
    // dropped ones are the oldest: per stream, all before its first delivery.
    let lost_before_first: u64 = covered
        .values()
        .map(|r| ((r[0].0 - T0) / SPACING_MS) as u64)
        .sum::<u64>()
        + (DEVICES - covered.len()) as u64 * PER_DEVICE as u64;
    let dropped = num(&before, "aggregate_windows_dropped_total");
    let total = DEVICES as u64 * PER_DEVICE as u64;
    println!(
        "{windows} windows delivered in {n_aggregates} aggregates, {dropped} dropped, of {total}"
    );
    assert_eq!(windows + dropped, total, "windows delivered + dropped");
    assert_eq!(
        lost_before_first, dropped,
        "the dropped windows are the oldest ones"
    );

    let st = stats(&setup);
    assert_eq!(
        (num(&st, "outbox_alerts"), num(&st, "outbox_aggregates")),
        (0, 0),
        "{st}"
    );
    assert_eq!(num(&st, "aggregate_windows_dropped_total"), dropped, "{st}");
    assert_eq!(num(&st, "alerts_dropped_total"), 0, "{st}");
    assert!(
        num(&st, "delivered_aggregates_total") as usize >= n_aggregates,
        "{st}"
    );
}

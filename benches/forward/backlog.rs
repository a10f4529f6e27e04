//! The outbox backlog the drain measurement works on: aggregates and alerts
//! as detection writes them, in a store or encoded as the forwarder sends them.

use std::collections::BTreeMap;

use vigil::config::UpstreamConfig;
use vigil::forward;
use vigil::model::{Aggregate, AlertEvent, AlertKind, Severity};
use vigil::store::{DetectionCommit, Lane, OutboxEntry, OutboxItem, Store};

use crate::common::Noise;
use crate::{GATEWAY, T0};

const METRICS: [&str; 2] = ["temperature", "pressure"];
/// Device/metric streams of the backlog: 50 pumps × 2 metrics.
pub const STREAMS: u64 = 100;

/// Aggregate `k` of the backlog: 1-minute windows of 60 readings, streams
/// in turn; the 11 features detection computes for such a window.
fn aggregate(k: u64, rng: &mut Noise) -> Aggregate {
    let s = k % STREAMS;
    let start = T0 + (k / STREAMS) as i64 * 60_000;
    let mean = 50.0 + 10.0 * rng.uniform();
    let std = 0.5 + rng.uniform();
    let (min, max) = (mean - 2.5 * std, mean + 2.7 * std);
    let rms = (mean * mean + std * std * 59.0 / 60.0).sqrt();
    let peak = max.abs().max(min.abs());
    let features = BTreeMap::from(
        [
            ("count", 60.0),
            ("mean", mean),
            ("min", min),
            ("max", max),
            ("std", std),
            ("rms", rms),
            ("peak", peak),
            ("peak_to_peak", max - min),
            ("crest_factor", peak / rms),
            ("kurtosis", 3.0 + 0.6 * (rng.uniform() - 0.5)),
            ("skewness", 0.4 * (rng.uniform() - 0.5)),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    Aggregate {
        device: format!("pump-{:02}", s / 2),
        metric: METRICS[(s % 2) as usize].into(),
        start_ms: start,
        end_ms: start + 60_000,
        features,
        windows: 1,
    }
}

/// Alert `j` of the backlog: limit alerts raised (even `j`) and cleared
/// (odd `j`) a few minutes apart, on the streams in turn.
fn alert(j: u64) -> AlertEvent {
    let s = (j / 2) % STREAMS;
    let device = format!("pump-{:02}", s / 2);
    let metric = METRICS[(s % 2) as usize];
    let raised = T0 + (j / 2) as i64 * 600_000;
    let cleared = j % 2 == 1;
    let end = if cleared { raised + 180_000 } else { raised };
    let value = if cleared { 71.5 } else { 97.25 };
    AlertEvent {
        id: format!("{device}/{metric}/limit/mean/{raised}"),
        kind: if cleared {
            AlertKind::Cleared
        } else {
            AlertKind::Raised
        },
        device,
        metric: metric.into(),
        detector: "limit".into(),
        feature: "mean".into(),
        severity: Severity::Alarm,
        raised_ms: raised,
        cleared_ms: cleared.then_some(end),
        window_start_ms: end - 60_000,
        window_end_ms: end,
        value,
        limit: Some(95.0),
        baseline: None,
        score: if cleared { 0.0 } else { 1.0 },
        message: if cleared {
            "cleared after 1 normal window(s): mean 71.5 degC is back below 95 degC".into()
        } else {
            "mean 97.25 degC is above the alarm limit 95 degC".into()
        },
    }
}

/// Fill the outbox as detection would: commits of 4,096 aggregates, the
/// alerts spread evenly among them. Flushed to disk at the end.
pub fn fill_outbox(store: &Store, aggregates: u64, alerts: u64) {
    const PER_COMMIT: u64 = 4096;
    let mut rng = Noise(0x9E37_79B9_7F4A_7C15);
    let (mut k, mut j) = (0, 0);
    while k < aggregates {
        let n = PER_COMMIT.min(aggregates - k);
        let due = (k + n) * alerts / aggregates;
        let commit = DetectionCommit {
            cursor: k + n,
            checkpoints: Vec::new(),
            alerts: (j..due).map(alert).collect(),
            aggregates: (k..k + n).map(|i| aggregate(i, &mut rng)).collect(),
            ..DetectionCommit::default()
        };
        store.commit_detection(&commit).expect("fill the outbox");
        k += n;
        j = due;
    }
    store.flush().expect("flush the store");
}

/// The backlog's messages, encoded as the forwarder would send them.
pub fn encoded_backlog(
    upstream: &UpstreamConfig,
    aggregates: u64,
    alerts: u64,
) -> Vec<(String, Vec<u8>)> {
    let mut rng = Noise(0x9E37_79B9_7F4A_7C15);
    let alerts = (0..alerts).map(|j| (Lane::Alerts, j, OutboxEntry::Alert(alert(j))));
    let aggregates = (0..aggregates)
        .map(|k| {
            (
                Lane::Aggregates,
                k,
                OutboxEntry::Aggregate(aggregate(k, &mut rng)),
            )
        })
        .collect::<Vec<_>>();
    alerts
        .chain(aggregates)
        .map(|(lane, seq, entry)| {
            let item = OutboxItem {
                seq,
                id: seq,
                entry,
            };
            forward::encode(upstream, GATEWAY, lane, &item).expect("encode a message")
        })
        .collect()
}

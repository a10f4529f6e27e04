//! The engine over a few hand-made readings: counters for late and duplicate
//! readings, and what processing time alone does (closing the last window of
//! a quiet stream, the "sensor silent" alert and its clearing).

use super::*;
use crate::model::AlertKind;

fn engine(device_file: &str) -> Engine {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pump-1.toml");
    std::fs::write(&path, device_file).unwrap();
    Engine::new(DeviceRegistry::load_file(&path).unwrap())
}

fn reading(t: EpochMs, v: f64) -> Reading {
    Reading {
        device: "pump-1".into(),
        metric: "temperature".into(),
        time_ms: t,
        value: Value::Scalar(v),
    }
}

const DEVICE: &str = r#"match = "pump-1"
[metrics.temperature]
window = "10s"
allowed_lateness = "1s"
silent_after = "30s"
"#;

#[test]
fn late_and_duplicate_readings_are_counted_not_used() {
    let mut e = engine(DEVICE);
    let mut out = Output::default();
    for t in [0, 5_000, 12_000] {
        e.process(&reading(t, 1.0), t, &mut out);
    }
    // The watermark (11 s) has closed [0, 10 s) with its two readings.
    assert_eq!(out.aggregates.len(), 1);
    assert_eq!(out.aggregates[0].features["count"], 2.0);
    e.process(&reading(12_000, 1.0), 12_000, &mut out);
    e.process(&reading(3_000, 1.0), 12_000, &mut out);
    assert_eq!((e.counters().duplicates, e.counters().late), (1, 1));
    assert_eq!(e.counters().readings, 5);
}

#[test]
fn a_quiet_stream_gets_its_window_closed_and_a_silence_alert() {
    let mut e = engine(DEVICE);
    let mut out = Output::default();
    e.process(&reading(1_000, 1.0), 1_000, &mut out);
    e.process(&reading(4_000, 3.0), 4_000, &mut out);
    e.tick(5_000, &mut out);
    assert!(
        out.aggregates.is_empty(),
        "the window [0, 10 s) is not over"
    );
    // Event time extrapolated by the quiet time passes 10 s + 1 s of lateness.
    e.tick(11_500, &mut out);
    assert_eq!(out.aggregates.len(), 1);
    assert_eq!(out.aggregates[0].features["mean"], 2.0);
    assert!(out.alerts.is_empty());

    e.tick(34_500, &mut out);
    let silent = out.alerts.last().expect("no silence alert after 30 s");
    assert_eq!(
        (silent.detector.as_str(), silent.kind),
        ("silence", AlertKind::Raised)
    );
    // Only once while it lasts.
    e.tick(60_000, &mut out);
    assert_eq!(out.alerts.len(), 1);
    // The sensor speaks: cleared at once, same alert.
    e.process(&reading(61_000, 1.0), 61_000, &mut out);
    assert_eq!(out.alerts.len(), 2);
    assert_eq!(out.alerts[1].kind, AlertKind::Cleared);
    assert_eq!(out.alerts[1].id, out.alerts[0].id);
}

#[test]
fn dirty_states_are_handed_out_once() {
    let mut e = engine(DEVICE);
    let mut out = Output::default();
    e.process(&reading(0, 1.0), 0, &mut out);
    e.process(&reading(1_000, 1.0), 1_000, &mut out);
    assert_eq!(e.take_dirty().len(), 1);
    assert!(e.take_dirty().is_empty());
}

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

/// A device whose 10 s mean above 80 raises an alert at once.
const LIMITED: &str = r#"match = "pump-1"
[alerts]
raise_after = 1
[metrics.temperature]
window = "10s"
allowed_lateness = "1s"
silent_after = "30s"
[metrics.temperature.limits.mean]
warning_above = 80.0
"#;

/// One reading a second from `from_s` to `to_s` (exclusive) at `value`,
/// each processed when it was stamped.
fn feed(e: &mut Engine, out: &mut Output, from_s: i64, to_s: i64, value: f64) {
    for s in from_s..to_s {
        let t = T0 + s * 1000;
        e.tick(t, out);
        e.process(&reading(t, value), t, out);
    }
}

/// A processing time of 2026.
const T0: EpochMs = 1_795_255_200_000;
const YEAR_9999: EpochMs = 253_402_300_799_000;
const DAY: EpochMs = 86_400_000;

#[test]
fn readings_stamped_ahead_of_the_clock_are_counted_and_the_stream_keeps_detecting() {
    let mut e = engine(LIMITED);
    let mut out = Output::default();
    feed(&mut e, &mut out, 0, 30, 20.0);
    let windows = out.aggregates.len();
    assert!(windows >= 2);
    // A reading stamped in 9999 and one a day ahead, received at 30 s.
    let now = T0 + 30_000;
    e.process(&reading(YEAR_9999, 20.0), now, &mut out);
    e.process(&reading(now + DAY, 20.0), now, &mut out);
    assert_eq!(e.counters().skewed, 2);
    // The stream goes on: its windows keep closing, and an overheating
    // after the skewed readings raises its alert.
    feed(&mut e, &mut out, 30, 60, 20.0);
    assert!(
        out.aggregates.len() >= windows + 3,
        "windows stopped closing"
    );
    assert_eq!(
        e.counters().late,
        0,
        "readings after the skewed ones taken as late"
    );
    feed(&mut e, &mut out, 60, 80, 95.0);
    let raised = out
        .alerts
        .iter()
        .find(|a| a.kind == AlertKind::Raised && a.detector == "limit")
        .expect("no alert after the skewed readings");
    assert!(raised.window_start_ms >= T0 + 60_000);
    assert!(out.aggregates.iter().all(|a| a.end_ms <= T0 + 90_000));
}

#[test]
fn a_stream_whose_time_ran_ahead_recovers_from_its_checkpoint() {
    // What an earlier version did: take a reading a day ahead into the
    // windows, and checkpoint the stream with its watermark there.
    let mut old = engine(LIMITED);
    old.set_max_future_skew(EpochMs::MAX);
    let mut out = Output::default();
    feed(&mut old, &mut out, 0, 20, 20.0);
    old.process(&reading(T0 + 20_000 + DAY, 20.0), T0 + 20_000, &mut out);
    let (key, state) = old.take_dirty().pop().unwrap();
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(state, &mut bytes).unwrap();

    let mut e = engine(LIMITED);
    e.restore(&key, ciborium::de::from_reader(bytes.as_slice()).unwrap());
    e.resume(T0 + 20_000);
    let mut out = Output::default();
    feed(&mut e, &mut out, 21, 60, 20.0);
    assert_eq!(e.counters().clock_resets, 1);
    assert_eq!(
        e.counters().late,
        0,
        "readings after the restart taken as late"
    );
    assert!(out.aggregates.len() >= 3, "the stream stopped detecting");
    feed(&mut e, &mut out, 60, 80, 95.0);
    assert!(
        out.alerts.iter().any(|a| a.kind == AlertKind::Raised),
        "no alert from a stream that recovered"
    );
    // Its aggregates are in the present, not a day ahead.
    assert!(out.aggregates.iter().all(|a| a.end_ms < T0 + DAY));
}

#[test]
fn a_clock_step_back_restarts_streams_whose_time_is_ahead() {
    // Readings without a time took the gateway's clock, a day fast; then
    // NTP set it right. The tick finds the stream ahead and restarts it.
    let mut e = engine(LIMITED);
    let mut out = Output::default();
    feed(&mut e, &mut out, DAY / 1000, DAY / 1000 + 20, 20.0);
    e.tick(T0 + 21_000, &mut out);
    assert_eq!(e.counters().clock_resets, 1);
    feed(&mut e, &mut out, 21, 60, 20.0);
    assert_eq!(e.counters().late, 0);
    assert!(out.aggregates.iter().any(|a| a.end_ms <= T0 + 60_000));
}

#[test]
fn a_wall_clock_step_told_to_the_engine_is_not_silence() {
    for told in [false, true] {
        let mut e = engine(DEVICE);
        let mut out = Output::default();
        feed(&mut e, &mut out, 0, 10, 20.0);
        // The wall clock jumps an hour forward one second later.
        let now = T0 + 10_000 + 3_600_000;
        if told {
            e.clock_stepped(3_600_000);
        }
        e.tick(now, &mut out);
        let silent = out.alerts.iter().any(|a| a.detector == "silence");
        assert_eq!(silent, !told, "told the engine of the step: {told}");
    }
}

fn reading_of(device: &str, t: EpochMs, v: f64) -> Reading {
    Reading {
        device: device.into(),
        ..reading(t, v)
    }
}

#[test]
fn new_streams_beyond_max_streams_are_refused_and_counted() {
    let mut e = engine("match = \"*\"\n");
    e.set_stream_limits(StreamLimits {
        max_streams: 3,
        idle_ms: 3_600_000,
    });
    let mut out = Output::default();
    for i in 0..5 {
        e.process(&reading_of(&format!("pump-{i}"), T0, 1.0), T0, &mut out);
    }
    // Known streams still take readings.
    e.process(&reading_of("pump-0", T0 + 1_000, 1.0), T0 + 1_000, &mut out);
    assert_eq!(e.streams(), 3);
    assert_eq!(e.counters().streams_refused, 2);
    assert_eq!(e.counters().readings, 6);
    // With stream states at their share of the budget, none is taken either.
    let mut e = engine("match = \"*\"\n");
    e.set_admit_new(false);
    e.process(&reading_of("pump-9", T0, 1.0), T0, &mut out);
    assert_eq!((e.streams(), e.counters().streams_refused), (0, 1));
}

#[test]
fn an_idle_stream_is_put_aside_and_resumes_with_what_it_learned() {
    let mut e = engine(LIMITED);
    e.set_stream_limits(StreamLimits {
        max_streams: 10,
        idle_ms: 60_000,
    });
    let mut out = Output::default();
    feed(&mut e, &mut out, 0, 20, 95.0);
    assert_eq!(e.open_alerts(), [1, 0]);
    // 40 s later its windows are closed, but the silence alert (30 s) is
    // raised only now; the stream is idle only after 60 s.
    e.tick(T0 + 60_000, &mut out);
    assert_eq!(e.streams(), 1, "put aside before it was idle");
    e.tick(T0 + 80_000, &mut out);
    assert_eq!((e.streams(), e.idle_streams()), (0, 1));
    assert_eq!(e.counters().streams_evicted, 1);
    let life = e.take_lifecycle();
    let (key, seen, state) = life.evicted.into_iter().next().expect("evicted");
    assert_eq!(seen, T0 + 19_000);
    // It speaks again: its state is asked for, and it resumes with its
    // open alert, which the next windows clear.
    assert_eq!(e.needs_state("pump-1", "temperature"), Some(key.clone()));
    e.wake(&key, Some(state), T0 + 100_000);
    assert_eq!((e.streams(), e.idle_streams()), (1, 0));
    assert_eq!(e.take_lifecycle().resumed, vec![(key, seen)]);
    assert_eq!(e.open_alerts(), [2, 0], "the limit and silence alerts");
    feed(&mut e, &mut out, 100, 140, 20.0);
    assert_eq!(e.open_alerts(), [0, 0]);
    let events: Vec<(AlertKind, &str)> = out
        .alerts
        .iter()
        .map(|a| (a.kind, a.detector.as_str()))
        .collect();
    assert!(
        events.contains(&(AlertKind::Cleared, "limit")),
        "{events:?}"
    );
}

#[test]
fn a_stream_put_aside_since_the_last_commit_comes_back_from_memory() {
    let mut e = engine(DEVICE);
    e.set_stream_limits(StreamLimits {
        max_streams: 10,
        idle_ms: 60_000,
    });
    let mut out = Output::default();
    feed(&mut e, &mut out, 0, 5, 20.0);
    e.tick(T0 + 100_000, &mut out);
    assert_eq!(e.idle_streams(), 1);
    assert_eq!(e.needs_state("pump-1", "temperature"), None);
    assert_eq!((e.streams(), e.idle_streams()), (1, 0));
    assert!(
        !e.lifecycle_pending(),
        "an eviction never written was reported"
    );
}

#[test]
fn idle_streams_are_forgotten_oldest_first() {
    let mut e = engine(DEVICE);
    e.add_idle(300, "c\0t".into());
    e.add_idle(100, "a\0t".into());
    e.add_idle(200, "b\0t".into());
    assert_eq!(e.forget_oldest_idle(2), 2);
    assert_eq!(
        e.take_lifecycle().forgotten,
        vec![("a\0t".to_string(), 100), ("b\0t".to_string(), 200)]
    );
    assert_eq!(e.idle_streams(), 1);
    assert_eq!(e.forget_oldest_idle(5), 1);
    assert_eq!(e.forget_oldest_idle(5), 0);
}

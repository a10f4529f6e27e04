//! Hot reload of the device files for one stream: its old and new settings
//! and its state in; out, the state fitted to the new settings and a
//! `cleared` event for every open alert that nothing will evaluate again.
//!
//! The promise: changed thresholds apply from the next window that closes;
//! learned baselines and open alerts are kept unless what they stand on is
//! gone; buffered readings are not touched.

use crate::config::StreamSettings;
use crate::model::EpochMs;

use super::alert::Retired;
use super::baseline::Volatility;
use super::engine::{context, Accum, DetectCounters, Output, StreamState};
use super::window::Windows;

/// Changed streams a report names, at most.
const STREAMS_NAMED: usize = 16;

/// What a reload did, for the log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReloadReport {
    /// Known streams whose settings did not change: left exactly as they were.
    pub unchanged: usize,
    /// Known streams whose settings changed.
    pub changed: usize,
    /// Changed streams whose open windows started over (the window, or the
    /// waveform settings the open windows' spectra were computed with, changed).
    pub windows_restarted: usize,
    /// Changed streams that learn their baseline (or its spectral features) again.
    pub relearned: usize,
    /// Open alerts cleared because nothing evaluates them any more.
    pub alerts_retired: usize,
    /// `device/metric` of the first changed streams, in key order.
    pub changed_streams: Vec<String>,
}

impl ReloadReport {
    pub(super) fn record(&mut self, device: &str, metric: &str, change: &Change) {
        self.changed += 1;
        self.windows_restarted += usize::from(change.windows_restarted);
        self.relearned += usize::from(change.relearned);
        self.alerts_retired += change.retired;
        if self.changed_streams.len() < STREAMS_NAMED {
            self.changed_streams.push(format!("{device}/{metric}"));
        }
    }
}

/// What fitting one changed stream to its new settings did.
#[derive(Debug, Default)]
pub(super) struct Change {
    windows_restarted: bool,
    relearned: bool,
    retired: usize,
}

/// Fit the state of a stream whose settings changed from `old` to `new`:
///
/// - a new window (length, hop, count) restarts the open windows, as a
///   restart does, and the learned state (level and drift, volatility, the
///   previous window of rate limits): features of windows of another length
///   are not comparable;
/// - new waveform settings restart the open windows that hold spectra (band
///   sums are kept by position, velocity in the old input unit) and the
///   learned state of spectral features;
/// - otherwise (thresholds, baseline parameters, hysteresis, lateness) the
///   windows and everything learned are kept; the caller swaps the settings.
///
/// An open alert is cleared into `out` when its detector is no longer
/// configured for its feature, or when what its detector learned was
/// restarted (it would stay open, unevaluated, through the warm-up and then
/// be judged against another baseline). Other open alerts keep their id and
/// clear later under the new thresholds. Conditions of detectors that are
/// gone are dropped, open or not.
#[allow(clippy::too_many_arguments)]
pub(super) fn apply(
    device: &str,
    metric: &str,
    old: &StreamSettings,
    new: &StreamSettings,
    st: &mut StreamState,
    now_ms: EpochMs,
    counters: &mut DetectCounters,
    out: &mut Output,
) -> Change {
    let mut change = Change::default();
    let window_changed = st.windows.spec() != new.window || old.window != new.window;
    let waveform_changed = old.waveform != new.waveform;
    if window_changed || (waveform_changed && holds_spectra(&st.windows)) {
        st.windows = Windows::new(new.window);
        change.windows_restarted = true;
    }
    if window_changed {
        change.relearned =
            !st.learned.is_empty() || st.volatility != Volatility::default() || st.prev.is_some();
        st.learned.clear();
        st.volatility = Volatility::default();
        st.prev = None;
    } else if waveform_changed {
        let before = st.learned.len();
        st.learned.retain(|f, _| !is_spectral(f));
        change.relearned = st.learned.len() != before;
        if st
            .prev
            .as_ref()
            .is_some_and(|(_, p)| p.iter().any(|(f, _)| is_spectral(f)))
        {
            st.prev = None;
        }
    }

    let ctx = context(device, metric, new);
    // Event time of the newest reading: when the stream's clock stands.
    let at_ms = st.newest_ms.unwrap_or(now_ms);
    let quiet_s = st.seen_at_ms.map(|seen| (now_ms - seen) as f64 / 1000.0);
    st.conditions.retain(|key, cond| {
        let Some((detector, feature)) = key.split_once('/') else {
            return true;
        };
        let why = if !still_configured(detector, feature, new) {
            if detector == "iso10816" && new.iso10816.is_some() {
                format!("a limit on {feature} now replaces the iso10816 zones")
            } else {
                format!("the {detector} detector is no longer configured for {feature}")
            }
        } else if learns(detector) && (window_changed || waveform_changed && is_spectral(feature)) {
            let what = if window_changed {
                "window"
            } else {
                "waveform settings"
            };
            format!("the {what} changed, so the {detector} detector learns {feature} again")
        } else {
            return true;
        };
        let silence = detector == "silence";
        let retired = Retired {
            detector,
            feature,
            why: &why,
            // How long the sensor has been quiet, as the silence alert says.
            value: if silence { quiet_s } else { None },
            at_ms: if silence { now_ms } else { at_ms },
        };
        if let Some(ev) = cond.retire(&retired, &ctx) {
            counters.cleared += 1;
            change.retired += 1;
            out.alerts.push(ev);
        }
        false
    });
    change
}

/// Would `evaluate` (and `Engine::tick` for silence) still produce checks
/// for `detector` on `feature` under `s`? Mirrors the choices made there.
fn still_configured(detector: &str, feature: &str, s: &StreamSettings) -> bool {
    let limited = |f: &str| s.limits.iter().any(|l| l.feature == f);
    let baseline = s.baseline.as_ref();
    let learned = |f: &str| baseline.is_some_and(|b| b.features.iter().any(|x| x == f));
    match detector {
        "limit" => limited(feature),
        // On velocity RMS (waveform streams) or the mean (scalar streams that
        // report velocity RMS), unless a static limit on it takes over.
        "iso10816" => {
            s.iso10816.is_some() && matches!(feature, "velocity_rms" | "mean") && !limited(feature)
        }
        "rate" => s.rates.iter().any(|r| r.feature == feature),
        "baseline" => learned(feature),
        "drift" => learned(feature) && baseline.is_some_and(|b| b.cusum.is_some()),
        "volatility" => feature == "std" && baseline.is_some_and(|b| b.volatility_ratio.is_some()),
        "silence" => s.silent_after_ms.is_some(),
        // A detector this code does not know of: not for it to close.
        _ => true,
    }
}

/// Detectors that judge against what they learned.
fn learns(detector: &str) -> bool {
    matches!(detector, "baseline" | "drift" | "volatility")
}

/// Features computed from a waveform block's spectrum.
fn is_spectral(feature: &str) -> bool {
    feature == "velocity_rms" || feature.starts_with("band.") || feature.starts_with("envelope.")
}

/// Do the open windows hold spectral sums? `Windows` keeps its open windows
/// to itself; a drained copy shows them (a reload is rare).
fn holds_spectra(windows: &Windows<Accum>) -> bool {
    if !windows.has_open() {
        return false;
    }
    let mut copy = windows.clone();
    let mut open = Vec::new();
    copy.drain_all(&mut open);
    open.iter().any(|w| w.acc.blocks > 0)
}

#[cfg(test)]
mod tests {
    use std::ops::Range;

    use super::*;
    use crate::config::{DeviceRegistry, IsoZones};
    use crate::detect::Engine;
    use crate::model::{AlertEvent, AlertKind, Reading, Value};

    /// Ten-second windows, judged at once: a static limit and a baseline
    /// learned over five windows.
    const BASE: &str = r#"match = "pump-1"
[metrics.temperature]
unit = "degC"
window = "10s"
allowed_lateness = "0s"
raise_after = 1
clear_after = 1
hold_off = "0s"
[metrics.temperature.limits.mean]
warning_above = 80.0
[metrics.temperature.baseline]
features = ["mean"]
warmup_windows = 5
cusum = false
volatility = false
"#;

    const LIMIT: &str = "[metrics.temperature.limits.mean]\nwarning_above = 80.0\n";

    fn registry(text: &str) -> DeviceRegistry {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pump-1.toml");
        std::fs::write(&path, text).unwrap();
        DeviceRegistry::load_file(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One reading a second at `secs`, processed when it happens.
    fn feed(e: &mut Engine, metric: &str, secs: Range<i64>, v: impl Fn(i64) -> f64) -> Output {
        let mut out = Output::default();
        for s in secs {
            let r = Reading {
                device: "pump-1".into(),
                metric: metric.into(),
                time_ms: s * 1000,
                value: Value::Scalar(v(s)),
            };
            e.process(&r, s * 1000, &mut out);
        }
        out
    }

    /// About 50 with a little noise: window means 50.09 to 50.11.
    fn calm(s: i64) -> f64 {
        50.0 + 0.1 * (s % 3) as f64
    }

    fn find<'a>(alerts: &'a [AlertEvent], detector: &str, kind: AlertKind) -> Vec<&'a AlertEvent> {
        alerts
            .iter()
            .filter(|a| a.detector == detector && a.kind == kind)
            .collect()
    }

    #[test]
    fn an_unchanged_stream_keeps_its_baseline_and_open_alerts() {
        let mut reloaded = Engine::new(registry(BASE));
        let mut control = Engine::new(registry(BASE));
        let mut raised = Vec::new();
        for e in [&mut reloaded, &mut control] {
            feed(e, "temperature", 0..100, calm);
            raised = feed(e, "temperature", 100..120, |_| 85.0).alerts;
        }
        let limit_id = &find(&raised, "limit", AlertKind::Raised)[0].id;
        assert_eq!(find(&raised, "baseline", AlertKind::Raised).len(), 1);
        reloaded.take_dirty();

        // New files, in which only another metric changed.
        let mut out = Output::default();
        let new = format!("{BASE}[metrics.pressure]\nwindow = \"1m\"\n");
        let report = reloaded.reload(registry(&new), 120_000, &mut out);
        assert_eq!(
            report,
            ReloadReport {
                unchanged: 1,
                ..Default::default()
            }
        );
        assert!(out.is_empty());
        assert!(reloaded.take_dirty().is_empty(), "nothing to checkpoint");

        // Still high, back to normal (both alerts clear), then a step the
        // limit allows but the learned baseline does not.
        let after = |e: &mut Engine| {
            let mut out = feed(e, "temperature", 120..130, |_| 85.0);
            for (secs, v) in [(130..160, 0.0), (160..180, 65.0), (180..181, 0.0)] {
                let o = feed(
                    e,
                    "temperature",
                    secs,
                    |s| if v == 0.0 { calm(s) } else { v },
                );
                out.alerts.extend(o.alerts);
                out.aggregates.extend(o.aggregates);
            }
            out
        };
        let got = after(&mut reloaded);
        let want = after(&mut control);
        assert_eq!(got.alerts, want.alerts);
        assert_eq!(got.aggregates, want.aggregates);
        let cleared = find(&got.alerts, "limit", AlertKind::Cleared);
        assert_eq!(cleared.len(), 1);
        assert_eq!(
            &cleared[0].id, limit_id,
            "the alert raised before the reload"
        );
        let relearned_would_miss = find(&got.alerts, "baseline", AlertKind::Raised);
        assert_eq!(relearned_would_miss.len(), 1);
        assert_eq!(relearned_would_miss[0].value, 65.0);
    }

    #[test]
    fn a_lowered_limit_applies_from_the_next_window_and_the_baseline_stays() {
        let mut e = Engine::new(registry(BASE));
        feed(&mut e, "temperature", 0..100, calm);
        e.take_dirty();
        let mut out = Output::default();
        let lowered = BASE.replace("warning_above = 80.0", "warning_above = 60.0");
        let report = e.reload(registry(&lowered), 100_000, &mut out);
        assert_eq!(
            report,
            ReloadReport {
                changed: 1,
                changed_streams: vec!["pump-1/temperature".into()],
                ..Default::default()
            }
        );
        assert!(out.is_empty());
        let dirty: Vec<String> = e.take_dirty().into_iter().map(|(k, _)| k).collect();
        assert_eq!(dirty, ["pump-1\0temperature"]);

        let out = feed(&mut e, "temperature", 100..111, |_| 70.0);
        let limit = find(&out.alerts, "limit", AlertKind::Raised);
        assert_eq!(limit.len(), 1, "{:?}", out.alerts);
        assert_eq!(
            (limit[0].limit, limit[0].window_start_ms),
            (Some(60.0), 100_000)
        );
        // Judged against the baseline learned before the reload, not warming up again.
        let baseline = find(&out.alerts, "baseline", AlertKind::Raised);
        assert_eq!(baseline.len(), 1);
        assert_eq!(baseline[0].window_start_ms, 100_000);
    }

    #[test]
    fn removing_a_limit_clears_its_open_alert() {
        let mut e = Engine::new(registry(BASE));
        feed(&mut e, "temperature", 0..100, calm);
        let raised = feed(&mut e, "temperature", 100..111, |_| 85.0).alerts;
        let limit_id = find(&raised, "limit", AlertKind::Raised)[0].id.clone();
        let baseline_id = find(&raised, "baseline", AlertKind::Raised)[0].id.clone();
        let cleared_before = e.counters().cleared;

        let mut out = Output::default();
        let report = e.reload(registry(&BASE.replace(LIMIT, "")), 111_000, &mut out);
        assert_eq!((report.changed, report.alerts_retired), (1, 1));
        assert_eq!(out.alerts.len(), 1, "the baseline alert stays open");
        let ev = &out.alerts[0];
        assert_eq!(
            (ev.kind, ev.id.as_str(), ev.detector.as_str()),
            (AlertKind::Cleared, limit_id.as_str(), "limit")
        );
        assert_eq!((ev.value, ev.limit), (85.0, None));
        assert_eq!((ev.window_start_ms, ev.window_end_ms), (100_000, 110_000));
        assert_eq!(ev.cleared_ms, Some(110_000));
        assert!(
            ev.message.starts_with("cleared by a configuration reload: the limit detector is no longer configured for mean"),
            "{}",
            ev.message
        );
        assert_eq!(e.counters().cleared, cleared_before + 1);

        // No limit any more: 85 raises nothing new; back to normal, the
        // baseline alert clears under its id from before the reload.
        let mut later = feed(&mut e, "temperature", 111..130, |_| 85.0).alerts;
        later.extend(feed(&mut e, "temperature", 130..141, calm).alerts);
        assert_eq!(later.len(), 1, "{later:?}");
        assert_eq!(
            (later[0].kind, later[0].id.as_str()),
            (AlertKind::Cleared, baseline_id.as_str())
        );
    }

    #[test]
    fn a_new_window_length_restarts_windows_and_learning() {
        let mut e = Engine::new(registry(BASE));
        feed(&mut e, "temperature", 0..100, calm);
        let raised = feed(&mut e, "temperature", 100..121, |_| 65.0).alerts;
        let baseline_id = find(&raised, "baseline", AlertKind::Raised)[0].id.clone();

        let mut out = Output::default();
        let longer = BASE.replace("window = \"10s\"", "window = \"20s\"");
        let report = e.reload(registry(&longer), 121_000, &mut out);
        assert_eq!(
            (
                report.changed,
                report.windows_restarted,
                report.relearned,
                report.alerts_retired
            ),
            (1, 1, 1, 1)
        );
        // Its baseline is gone: the alert is closed, not left open through the warm-up.
        assert_eq!(out.alerts.len(), 1);
        assert_eq!(
            (out.alerts[0].kind, out.alerts[0].id.as_str()),
            (AlertKind::Cleared, baseline_id.as_str())
        );
        assert!(out.alerts[0].message.contains("window changed"));

        let after = feed(&mut e, "temperature", 121..241, |_| 65.0);
        // The window open at the reload ([120 s, 130 s) with one reading) is
        // dropped; the first new one holds only readings since.
        let first = &after.aggregates[0];
        assert_eq!((first.start_ms, first.end_ms), (120_000, 140_000));
        assert_eq!(first.features["count"], 19.0);
        assert_eq!(after.aggregates.len(), 6);
        // Learned afresh at 65: with the old baseline (about 50) it would raise.
        assert!(after.alerts.is_empty(), "{:?}", after.alerts);
    }

    #[test]
    fn a_stream_first_seen_after_a_reload_gets_the_new_settings() {
        let mut e = Engine::new(registry(BASE));
        feed(&mut e, "temperature", 0..20, calm);
        let pressure = "[metrics.pressure]\nwindow = \"5s\"\nallowed_lateness = \"0s\"\nraise_after = 1\n[metrics.pressure.limits.mean]\nwarning_above = 3.0\n";
        let mut out = Output::default();
        let report = e.reload(registry(&format!("{BASE}{pressure}")), 20_000, &mut out);
        assert_eq!((report.unchanged, report.changed), (1, 0));

        let out = feed(&mut e, "pressure", 20..31, |_| 5.0);
        let spans: Vec<_> = out
            .aggregates
            .iter()
            .map(|a| (a.start_ms, a.end_ms))
            .collect();
        assert_eq!(spans, [(20_000, 25_000), (25_000, 30_000)]);
        let raised = find(&out.alerts, "limit", AlertKind::Raised);
        assert_eq!(raised.len(), 1);
        assert_eq!(
            (raised[0].metric.as_str(), raised[0].limit),
            ("pressure", Some(3.0))
        );
    }

    #[test]
    fn removing_silent_after_clears_a_silence_alert_with_the_quiet_time() {
        let silent = BASE.replace(
            "raise_after = 1\n",
            "raise_after = 1\nsilent_after = \"30s\"\n",
        );
        let mut e = Engine::new(registry(&silent));
        feed(&mut e, "temperature", 0..10, calm);
        let mut out = Output::default();
        e.tick(45_000, &mut out);
        let raised = find(&out.alerts, "silence", AlertKind::Raised)[0]
            .id
            .clone();

        let mut out = Output::default();
        let report = e.reload(registry(BASE), 60_000, &mut out);
        assert_eq!(report.alerts_retired, 1);
        assert_eq!(out.alerts.len(), 1);
        let ev = &out.alerts[0];
        assert_eq!(
            (ev.kind, ev.id.as_str()),
            (AlertKind::Cleared, raised.as_str())
        );
        assert_eq!((ev.value, ev.cleared_ms), (51.0, Some(60_000)));
        assert!(ev
            .message
            .contains("silence detector is no longer configured"));

        // Nothing raises it again, nothing clears it twice.
        let mut out = Output::default();
        e.tick(120_000, &mut out);
        out.alerts
            .extend(feed(&mut e, "temperature", 120..121, calm).alerts);
        assert!(find(&out.alerts, "silence", AlertKind::Raised).is_empty());
        assert!(find(&out.alerts, "silence", AlertKind::Cleared).is_empty());
    }

    #[test]
    fn new_waveform_settings_restart_only_what_holds_spectra() {
        let wave = |unit: &str| {
            format!(
                "{BASE}[metrics.\"*\".waveform]\ninput_unit = \"{unit}\"\n[metrics.accel]\nwindow = \"10s\"\nallowed_lateness = \"0s\"\n[metrics.accel.baseline]\nfeatures = [\"mean\", \"velocity_rms\"]\nwarmup_windows = 3\n"
            )
        };
        let mut e = Engine::new(registry(&wave("g")));
        let both = |e: &mut Engine, secs: Range<i64>| {
            let mut out = feed(e, "temperature", secs.clone(), calm);
            for s in secs {
                let samples = (0..1000)
                    .map(|i| 0.1 * (i as f32 * 0.05 * std::f32::consts::TAU).sin())
                    .collect();
                let r = Reading {
                    device: "pump-1".into(),
                    metric: "accel".into(),
                    time_ms: s * 1000,
                    value: Value::Waveform(crate::model::Waveform {
                        sample_rate_hz: 1000.0,
                        samples,
                    }),
                };
                e.process(&r, s * 1000, &mut out);
            }
            out
        };
        both(&mut e, 0..105);
        let mut out = Output::default();
        let report = e.reload(registry(&wave("m/s2")), 105_000, &mut out);
        // Both streams see the new input unit; only the waveform one has
        // spectra in its open window and a learned velocity.
        assert_eq!(
            (report.changed, report.windows_restarted, report.relearned),
            (2, 1, 1)
        );
        assert!(out.is_empty());
        let after = both(&mut e, 105..111);
        let count = |metric: &str| {
            let a = after
                .aggregates
                .iter()
                .find(|a| a.metric == metric)
                .unwrap();
            assert_eq!((a.start_ms, a.end_ms), (100_000, 110_000));
            a.features["count"]
        };
        assert_eq!(count("temperature"), 10.0, "kept its open window");
        assert_eq!(
            count("accel"),
            5.0 * 1000.0,
            "only the blocks since the reload"
        );
    }

    #[test]
    fn what_counts_as_still_configured() {
        let mut s = StreamSettings {
            iso10816: Some(IsoZones::new(
                crate::config::MachineGroup::Medium,
                crate::config::Foundation::Rigid,
            )),
            ..StreamSettings::default()
        };
        assert!(still_configured("iso10816", "velocity_rms", &s));
        assert!(still_configured("iso10816", "mean", &s));
        assert!(!still_configured("limit", "mean", &s));
        assert!(still_configured("baseline", "mean", &s));
        assert!(!still_configured("baseline", "std", &s));
        assert!(still_configured("drift", "mean", &s));
        assert!(still_configured("volatility", "std", &s));
        assert!(!still_configured("silence", "last_reading", &s));
        assert!(!still_configured("rate", "mean", &s));
        assert!(
            still_configured("someday", "mean", &s),
            "unknown: left alone"
        );

        // A static limit on velocity RMS takes over from the ISO zones.
        s.limits.push(crate::config::Limit {
            feature: "velocity_rms".into(),
            warning_above: Some(3.0),
            alarm_above: None,
            warning_below: None,
            alarm_below: None,
        });
        assert!(!still_configured("iso10816", "velocity_rms", &s));
        assert!(still_configured("limit", "velocity_rms", &s));

        let b = s.baseline.as_mut().unwrap();
        b.cusum = None;
        b.volatility_ratio = None;
        assert!(still_configured("baseline", "mean", &s));
        assert!(!still_configured("drift", "mean", &s));
        assert!(!still_configured("volatility", "std", &s));
        s.baseline = None;
        assert!(!still_configured("baseline", "mean", &s));
    }
}

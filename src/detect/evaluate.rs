//! One closed window: its features, every detector configured for the
//! stream, and the alert state machine of each condition.

use std::collections::BTreeMap;

use crate::config::StreamSettings;
use crate::model::{Aggregate, AlertKind};

use super::alert::{Basis, Check};
use super::engine::{context, Accum, DetectCounters, Output, StreamState};
use super::rules;
use super::window::Open;

/// Features, detectors and alert state of one closed window.
pub(super) fn evaluate(
    device: &str,
    metric: &str,
    settings: &StreamSettings,
    st: &mut StreamState,
    w: Open<Accum>,
    counters: &mut DetectCounters,
    out: &mut Output,
) {
    let features = features_of(&w.acc, settings);
    let mut checks: Vec<Check> = Vec::new();

    for limit in &settings.limits {
        if let Some(v) = features.get(&limit.feature) {
            checks.push(rules::limit(limit, *v));
        }
    }
    if let Some(zones) = &settings.iso10816 {
        // Waveform streams: velocity RMS computed here. Scalar streams: the
        // sensor already reports velocity RMS in mm/s, so the window mean.
        let feature = if features.contains_key("velocity_rms") {
            "velocity_rms"
        } else {
            "mean"
        };
        let overridden = settings.limits.iter().any(|l| l.feature == feature);
        if let (false, Some(v)) = (overridden, features.get(feature)) {
            checks.push(rules::iso10816(zones, feature, *v));
        }
    }
    let mid = w.start_ms + (w.end_ms - w.start_ms) / 2;
    if let Some((prev_mid, prev)) = &st.prev {
        let minutes = (mid - prev_mid) as f64 / 60_000.0;
        if minutes > 0.0 {
            for rule in &settings.rates {
                let now = features.get(&rule.feature);
                let before = prev.iter().find(|(f, _)| *f == rule.feature).map(|p| p.1);
                if let (Some(now), Some(before)) = (now, before) {
                    checks.push(rules::rate(rule, *now, (now - before) / minutes));
                }
            }
        }
    }
    if !settings.rates.is_empty() {
        st.prev = Some((
            mid,
            settings
                .rates
                .iter()
                .filter_map(|r| features.get(&r.feature).map(|v| (r.feature.clone(), *v)))
                .collect(),
        ));
    }
    if let Some(b) = &settings.baseline {
        for feature in &b.features {
            let Some(v) = features.get(feature) else {
                continue;
            };
            let learned = st.learned.entry(feature.clone()).or_default();
            let scale = is_scale(feature);
            // Scale features (spreads, amplitudes, ratios) vary by factors:
            // learn their logarithm, so a doubling and a halving weigh the same.
            let x = if scale { v.max(1e-12).ln() } else { *v };
            if let Some(found) = learned.observe(x, mid, b) {
                let (level, spread) = if scale {
                    let level = found.level.level.exp();
                    (
                        level,
                        (found.level.level + found.level.spread).exp() - level,
                    )
                } else {
                    (found.level.level, found.level.spread)
                };
                checks.push(Check {
                    detector: "baseline",
                    feature: feature.clone(),
                    severity: found.level.severity,
                    value: *v,
                    limit: None,
                    baseline: Some((level, spread)),
                    statistic: Some(found.level.statistic),
                    score: found.level.score,
                    note: "",
                    basis: found.level.basis,
                });
                if let (Some(d), Some((_, h))) = (found.drift, b.cusum) {
                    checks.push(Check {
                        detector: "drift",
                        feature: feature.clone(),
                        severity: d.severity,
                        value: *v,
                        limit: Some(h),
                        baseline: Some((level, spread)),
                        statistic: Some(d.statistic),
                        score: d.score,
                        note: "",
                        basis: d.basis,
                    });
                }
            }
        }
        if let (Some(ratio), Some(std), Some(n)) = (
            b.volatility_ratio,
            features.get("std"),
            features.get("count"),
        ) {
            if let Some(f) = st.volatility.observe(*std, *n, ratio, b) {
                checks.push(Check {
                    detector: "volatility",
                    feature: "std".into(),
                    severity: f.severity,
                    value: *std,
                    limit: Some(ratio),
                    baseline: Some((f.level, f.spread)),
                    statistic: Some(f.statistic),
                    score: f.score,
                    note: "",
                    basis: Basis::Recent,
                });
            }
        }
    }

    let ctx = context(device, metric, settings);
    for check in &checks {
        let key = format!("{}/{}", check.detector, check.feature);
        let cond = st.conditions.entry(key).or_default();
        if let Some(ev) = cond.step(check, (w.start_ms, w.end_ms), &ctx) {
            match ev.kind {
                AlertKind::Raised => *counters.raised.entry(ev.severity).or_default() += 1,
                AlertKind::Escalated => counters.escalated += 1,
                AlertKind::Cleared => counters.cleared += 1,
                AlertKind::Reopened => counters.reopened += 1,
            }
            out.alerts.push(ev);
        }
    }
    out.aggregates.push(Aggregate {
        device: device.to_string(),
        metric: metric.to_string(),
        start_ms: w.start_ms,
        end_ms: w.end_ms,
        features,
        windows: 1,
    });
}

fn features_of(acc: &Accum, settings: &StreamSettings) -> BTreeMap<String, f64> {
    let mut list = Vec::with_capacity(20);
    acc.moments.features(&mut list);
    if acc.blocks > 0 {
        let n = acc.blocks as f64;
        list.push(("velocity_rms".into(), (acc.velocity_sq / n).sqrt()));
        for (band, sq) in settings.waveform.bands.iter().zip(&acc.bands_sq) {
            list.push((format!("band.{}", band.name), (sq / n).sqrt()));
        }
        for (name, sum) in crate::config::DEFECTS.iter().zip(&acc.envelope) {
            list.push((format!("envelope.{name}"), sum / n));
        }
    }
    list.into_iter().filter(|(_, v)| v.is_finite()).collect()
}

/// Features that measure a size (never negative, varying by factors).
fn is_scale(feature: &str) -> bool {
    matches!(
        feature,
        "std" | "rms" | "peak" | "peak_to_peak" | "crest_factor" | "kurtosis" | "velocity_rms"
    ) || feature.starts_with("band.")
        || feature.starts_with("envelope.")
}

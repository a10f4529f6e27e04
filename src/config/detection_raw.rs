//! The detection keys of a device file (`[alerts]`, and in a metric table
//! `window`, `hop`, `limits`, `rate`, `baseline`, ...): serde `Raw*` types in,
//! one validated layer per file out (`detection_layer.rs`). The vibration
//! keys (`waveform`, `bearing`, `iso10816`) are in `detection_vibration.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::detection_layer::{
    at, check_feature, set, BaselineLayer, Check, Extent, FileLayer, Levels, MetricLayer, Set, Val,
};
use super::detection_vibration::{bearing, iso, waveform, RawBearing, RawIso, RawWaveform};
use super::diag::{ConfigError, Source};
use super::ranges::{
    Real, ALLOWED_LATENESS, ALPHA, CUSUM_H, CUSUM_K, HOLD_OFF, LEVEL, RAISE_CLEAR_AFTER,
    RATE_PER_MIN, SILENT_AFTER, VOLATILITY_RATIO, WARMUP_WINDOWS, WINDOW, WINDOW_READINGS, Z,
};

/// `[alerts]`: device-wide hysteresis, overridden per metric.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    raise_after: Option<i64>,
    clear_after: Option<i64>,
    /// A duration.
    hold_off: Option<String>,
}

/// `[metrics."<glob>"]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetric {
    pub unit: Option<String>,
    pub description: Option<String>,
    /// Window length as a duration ("5m"), or `window_readings` as a count.
    window: Option<String>,
    window_readings: Option<i64>,
    /// Hop as a duration or `hop_readings` as a count; default: the window.
    hop: Option<String>,
    hop_readings: Option<i64>,
    allowed_lateness: Option<String>,
    /// A duration, or "never".
    silent_after: Option<String>,
    raise_after: Option<i64>,
    clear_after: Option<i64>,
    hold_off: Option<String>,
    limits: Option<BTreeMap<String, RawLimit>>,
    rate: Option<BTreeMap<String, RawRate>>,
    baseline: Option<RawBaseline>,
    waveform: Option<RawWaveform>,
    bearing: Option<RawBearing>,
    iso10816: Option<RawIso>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    warning_above: Option<f64>,
    alarm_above: Option<f64>,
    warning_below: Option<f64>,
    alarm_below: Option<f64>,
}

/// Units of the feature per minute, all positive.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    warning_rise_per_min: Option<f64>,
    alarm_rise_per_min: Option<f64>,
    warning_fall_per_min: Option<f64>,
    alarm_fall_per_min: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBaseline {
    enabled: Option<bool>,
    features: Option<Vec<String>>,
    warmup_windows: Option<i64>,
    alpha: Option<f64>,
    warning_z: Option<f64>,
    alarm_z: Option<f64>,
    cusum: Option<bool>,
    cusum_k: Option<f64>,
    cusum_h: Option<f64>,
    volatility: Option<bool>,
    volatility_ratio: Option<f64>,
}

/// Validate `[alerts]`.
pub(super) fn alerts_layer(
    src: &Source,
    raw: Option<RawAlerts>,
    errors: &mut Vec<ConfigError>,
) -> FileLayer {
    let raw = raw.unwrap_or_default();
    let mut c = Check { src, errors };
    FileLayer {
        tainted: false,
        raise_after: c.whole("alerts.raise_after", raw.raise_after, RAISE_CLEAR_AFTER),
        clear_after: c.whole("alerts.clear_after", raw.clear_after, RAISE_CLEAR_AFTER),
        hold_off_ms: c
            .duration("alerts.hold_off", raw.hold_off.as_ref(), HOLD_OFF)
            .map(|ms| set("alerts.hold_off", ms)),
        metrics: Vec::new(),
    }
}

/// Validate the detection keys of `[metrics.<name>]` on their own.
pub(super) fn metric_layer(
    src: &Source,
    name: &str,
    raw: &RawMetric,
    errors: &mut Vec<ConfigError>,
) -> MetricLayer {
    let k = format!("metrics.{name}");
    let key = |f: &str| format!("{k}.{f}");
    let mut c = Check { src, errors };
    let mut out = MetricLayer {
        name: name.to_string(),
        at: at(&k),
        ..MetricLayer::default()
    };
    // A blank unit is refused by devices.rs.
    out.unit = raw
        .unit
        .as_ref()
        .filter(|u| !u.trim().is_empty())
        .map(|u| set(&key("unit"), u.clone()));
    out.window = extent(
        &mut c,
        &key("window"),
        raw.window.as_ref(),
        &key("window_readings"),
        raw.window_readings,
    );
    out.hop = extent(
        &mut c,
        &key("hop"),
        raw.hop.as_ref(),
        &key("hop_readings"),
        raw.hop_readings,
    );
    out.allowed_lateness_ms = c
        .duration(
            &key("allowed_lateness"),
            raw.allowed_lateness.as_ref(),
            ALLOWED_LATENESS,
        )
        .map(|ms| set(&key("allowed_lateness"), ms));
    let silent = key("silent_after");
    out.silent_after_ms = match raw.silent_after.as_deref() {
        None => None,
        Some("never") => Some(set(&silent, None)),
        Some(text) => match SILENT_AFTER.parse(text) {
            Ok(ms) => Some(set(&silent, Some(ms))),
            Err(e) => {
                c.err(&silent, format!("{e}; or \"never\""));
                None
            }
        },
    };
    out.raise_after = c.whole(&key("raise_after"), raw.raise_after, RAISE_CLEAR_AFTER);
    out.clear_after = c.whole(&key("clear_after"), raw.clear_after, RAISE_CLEAR_AFTER);
    out.hold_off_ms = c
        .duration(&key("hold_off"), raw.hold_off.as_ref(), HOLD_OFF)
        .map(|ms| set(&key("hold_off"), ms));

    for (feature, l) in raw.limits.iter().flatten() {
        let lk = format!("{k}.limits.{feature}");
        let levels = [
            l.warning_above,
            l.alarm_above,
            l.warning_below,
            l.alarm_below,
        ];
        let names = [
            "warning_above",
            "alarm_above",
            "warning_below",
            "alarm_below",
        ];
        if let Some(l) = level_table(&mut c, &lk, feature, levels, names, LEVEL) {
            out.limits.insert(feature.clone(), l);
        }
    }
    for (feature, r) in raw.rate.iter().flatten() {
        let rk = format!("{k}.rate.{feature}");
        let levels = [
            r.warning_rise_per_min,
            r.alarm_rise_per_min,
            r.warning_fall_per_min,
            r.alarm_fall_per_min,
        ];
        let names = [
            "warning_rise_per_min",
            "alarm_rise_per_min",
            "warning_fall_per_min",
            "alarm_fall_per_min",
        ];
        // A fall is given as a positive number too.
        if let Some(r) = level_table(&mut c, &rk, feature, levels, names, RATE_PER_MIN) {
            out.rates.insert(feature.clone(), r);
        }
    }
    if let Some(b) = &raw.baseline {
        out.baseline = Some(baseline(&mut c, &key("baseline"), b));
    }
    if let Some(w) = &raw.waveform {
        waveform(&mut c, &key("waveform"), w, &mut out);
    }
    if let Some(b) = &raw.bearing {
        out.bearing = bearing(&mut c, &key("bearing"), b);
    }
    if let Some(i) = &raw.iso10816 {
        out.iso = Some(iso(&mut c, &key("iso10816"), i));
    }
    out
}

/// `window` / `window_readings` (or `hop` / `hop_readings`): one of the two.
fn extent(
    c: &mut Check<'_>,
    dkey: &str,
    duration: Option<&String>,
    nkey: &str,
    count: Option<i64>,
) -> Val<Extent> {
    match (duration, count) {
        (Some(_), Some(_)) => {
            c.err(
                nkey,
                format!(
                    "set either `{}` (a duration) or `{}` (a count of readings), not both",
                    last(dkey),
                    last(nkey)
                ),
            );
            None
        }
        (Some(text), None) => c
            .duration(dkey, Some(text), WINDOW)
            .map(|ms| set(dkey, Extent::Ms(ms))),
        (None, n) => c.whole(nkey, n, WINDOW_READINGS).map(|s| Set {
            v: Extent::Readings(s.v),
            at: s.at,
        }),
    }
}

fn last(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// A limits or rate table: at least one level, each one valid.
fn level_table(
    c: &mut Check<'_>,
    key: &str,
    feature: &str,
    raw: [Option<f64>; 4],
    names: [&str; 4],
    range: Real,
) -> Option<Levels> {
    if let Err(e) = check_feature(feature) {
        c.err(key, e);
        return None;
    }
    if raw.iter().all(Option::is_none) {
        c.err(
            key,
            format!("expected at least one of {}", names.join(", ")),
        );
        return None;
    }
    let [a, b, d, e] = [0, 1, 2, 3].map(|i| c.real(&format!("{key}.{}", names[i]), raw[i], range));
    Some(Levels {
        at: at(key),
        warning_up: a,
        alarm_up: b,
        warning_down: d,
        alarm_down: e,
    })
}

fn baseline(c: &mut Check<'_>, bk: &str, raw: &RawBaseline) -> BaselineLayer {
    let key = |f: &str| format!("{bk}.{f}");
    let features = raw.features.as_ref().and_then(|list| {
        let fk = key("features");
        if list.is_empty() {
            c.err(
                &fk,
                "expected at least one feature; to switch the baseline off, set enabled = false",
            );
            return None;
        }
        for (i, f) in list.iter().enumerate() {
            if let Err(e) = check_feature(f) {
                c.err(&format!("{fk}[{i}]"), e);
            } else if list[..i].contains(f) {
                c.err(&format!("{fk}[{i}]"), format!("{f:?} is listed twice"));
            }
        }
        // Kept whole even with a refused name, so that the checks across
        // files still see the others at their indices (a file with an error
        // never reaches a registry).
        Some(set(&fk, list.clone()))
    });
    BaselineLayer {
        at: at(bk),
        enabled: raw.enabled.map(|e| set(&key("enabled"), e)),
        features,
        warmup_windows: c.whole(&key("warmup_windows"), raw.warmup_windows, WARMUP_WINDOWS),
        alpha: c.real(&key("alpha"), raw.alpha, ALPHA),
        warning_z: c.real(&key("warning_z"), raw.warning_z, Z),
        alarm_z: c.real(&key("alarm_z"), raw.alarm_z, Z),
        cusum: raw.cusum.map(|b| set(&key("cusum"), b)),
        cusum_k: c.real(&key("cusum_k"), raw.cusum_k, CUSUM_K),
        cusum_h: c.real(&key("cusum_h"), raw.cusum_h, CUSUM_H),
        volatility: raw.volatility.map(|b| set(&key("volatility"), b)),
        volatility_ratio: c.real(
            &key("volatility_ratio"),
            raw.volatility_ratio,
            VOLATILITY_RATIO,
        ),
    }
}

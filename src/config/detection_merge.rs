//! Merging the layers of every device file that applies to one stream, least
//! specific first, and turning the merge into `StreamSettings`.
//!
//! The checks that need more than one file (an override that breaks
//! warning < alarm, a hop longer than an inherited window, a bearing with no
//! shaft speed anywhere, a `band.x` feature with no band `x`) live here. They
//! run at load time on every file's own view, as errors with file and line,
//! and again per stream, where a conflict between files that overlap without
//! one being more general than the other is repaired and logged.

use super::detection::{
    BaselineSettings, Bearing, IsoZones, Limit, RateLimit, StreamSettings, WaveformSettings,
    WindowSpec,
};
use super::detection_layer::{format_ms, At, Extent, FileLayer, Levels, MetricLayer, Set, Val};
use super::devices::glob_matches;

/// A problem with a merge, blamed on where the offending value was set.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Problem {
    pub at: At,
    pub msg: String,
    /// The part of a metric table the problem is about (see
    /// `MetricLayer::refused`); empty when a refused key cannot cause it.
    pub topic: &'static str,
}

/// Merge the layers of `files` (those that apply to the device, least
/// specific first, with their index in the registry): in each file `[alerts]`
/// first, then every metric table whose glob matches `metric`, least specific
/// first; a later value replaces an earlier one key by key. Also says whether
/// any metric table matched.
pub(super) fn merge<'a>(
    files: impl IntoIterator<Item = (usize, &'a FileLayer)>,
    metric: &str,
) -> (MetricLayer, bool) {
    let mut v = MetricLayer {
        name: metric.to_string(),
        ..MetricLayer::default()
    };
    let mut matched = false;
    let mut seq = 0;
    for (file, layer) in files {
        seq += 1;
        if layer.tainted {
            v.refused.push("*".into());
        }
        over(&mut v.raise_after, &layer.raise_after, file, seq);
        over(&mut v.clear_after, &layer.clear_after, file, seq);
        over(&mut v.hold_off_ms, &layer.hold_off_ms, file, seq);
        for t in layer
            .metrics
            .iter()
            .filter(|t| glob_matches(&t.name, metric))
        {
            seq += 1;
            matched = true;
            apply(&mut v, t, file, seq);
        }
    }
    (v, matched)
}

fn stamp(at: &At, file: usize, seq: usize) -> At {
    At {
        key: at.key.clone(),
        file,
        seq,
    }
}

fn over<T: Clone>(dst: &mut Val<T>, src: &Val<T>, file: usize, seq: usize) {
    if let Some(s) = src {
        *dst = Some(Set {
            v: s.v.clone(),
            at: stamp(&s.at, file, seq),
        });
    }
}

fn same_kind(a: Extent, b: Extent) -> bool {
    matches!(
        (a, b),
        (Extent::Ms(_), Extent::Ms(_)) | (Extent::Readings(_), Extent::Readings(_))
    )
}

fn levels_over(dst: &mut Levels, src: &Levels, file: usize, seq: usize) {
    dst.at = stamp(&src.at, file, seq);
    over(&mut dst.warning_up, &src.warning_up, file, seq);
    over(&mut dst.alarm_up, &src.alarm_up, file, seq);
    over(&mut dst.warning_down, &src.warning_down, file, seq);
    over(&mut dst.alarm_down, &src.alarm_down, file, seq);
}

fn apply(v: &mut MetricLayer, t: &MetricLayer, file: usize, seq: usize) {
    v.at = stamp(&t.at, file, seq);
    v.refused.extend(t.refused.iter().cloned());
    over(&mut v.unit, &t.unit, file, seq);
    // A window of the other kind replaces the inherited hop too, unless this
    // table sets a hop: a duration hop cannot step a count window.
    if let (Some(w), None, Some(h)) = (&t.window, &t.hop, &v.hop) {
        if !same_kind(w.v, h.v) {
            v.hop = None;
        }
    }
    over(&mut v.window, &t.window, file, seq);
    over(&mut v.hop, &t.hop, file, seq);
    over(
        &mut v.allowed_lateness_ms,
        &t.allowed_lateness_ms,
        file,
        seq,
    );
    over(&mut v.silent_after_ms, &t.silent_after_ms, file, seq);
    over(&mut v.raise_after, &t.raise_after, file, seq);
    over(&mut v.clear_after, &t.clear_after, file, seq);
    over(&mut v.hold_off_ms, &t.hold_off_ms, file, seq);
    for (feature, l) in &t.limits {
        levels_over(v.limits.entry(feature.clone()).or_default(), l, file, seq);
    }
    for (feature, r) in &t.rates {
        levels_over(v.rates.entry(feature.clone()).or_default(), r, file, seq);
    }
    if let Some(b) = &t.baseline {
        let d = v.baseline.get_or_insert_with(Default::default);
        d.at = stamp(&b.at, file, seq);
        over(&mut d.enabled, &b.enabled, file, seq);
        over(&mut d.features, &b.features, file, seq);
        over(&mut d.warmup_windows, &b.warmup_windows, file, seq);
        over(&mut d.alpha, &b.alpha, file, seq);
        over(&mut d.warning_z, &b.warning_z, file, seq);
        over(&mut d.alarm_z, &b.alarm_z, file, seq);
        over(&mut d.cusum, &b.cusum, file, seq);
        over(&mut d.cusum_k, &b.cusum_k, file, seq);
        over(&mut d.cusum_h, &b.cusum_h, file, seq);
        over(&mut d.volatility, &b.volatility, file, seq);
        over(&mut d.volatility_ratio, &b.volatility_ratio, file, seq);
    }
    over(&mut v.input_unit, &t.input_unit, file, seq);
    over(&mut v.envelope_band_hz, &t.envelope_band_hz, file, seq);
    for (name, b) in &t.bands {
        let band = Set {
            v: b.v,
            at: stamp(&b.at, file, seq),
        };
        v.bands.insert(name.clone(), band);
    }
    if let Some(b) = &t.bearing {
        let d = v.bearing.get_or_insert_with(Default::default);
        d.at = stamp(&b.at, file, seq);
        over(&mut d.shaft_hz, &b.shaft_hz, file, seq);
        over(&mut d.orders, &b.orders, file, seq);
    }
    if let Some(iso) = &t.iso {
        let d = v.iso.get_or_insert_with(Default::default);
        d.at = stamp(&iso.at, file, seq);
        over(&mut d.group, &iso.group, file, seq);
        over(&mut d.foundation, &iso.foundation, file, seq);
    }
}

fn val<T: Copy>(x: &Val<T>) -> Option<T> {
    x.as_ref().map(|s| s.v)
}

fn at_of<T>(x: &Val<T>) -> Option<&At> {
    x.as_ref().map(|s| &s.at)
}

/// The one of two settings applied last: the override to blame.
fn later<'a>(a: Option<&'a At>, b: Option<&'a At>) -> Option<&'a At> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.seq >= a.seq { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The last segment of a key path: the name of the key.
fn key_name(at: &At) -> &str {
    at.key.rsplit('.').next().unwrap_or(&at.key)
}

fn describe(e: Extent) -> String {
    match e {
        Extent::Ms(ms) => format_ms(ms),
        Extent::Readings(1) => "1 reading".into(),
        Extent::Readings(n) => format!("{n} readings"),
    }
}

/// Settings for a merge, and what is wrong with it. Unset keys take the
/// defaults; a setting with a problem is dropped (or the window made
/// tumbling) so that the settings returned are always usable. With no metric
/// table at all, the stream gets `StreamSettings::default()` with only the
/// `[alerts]` hysteresis applied.
pub(super) fn build(v: &MetricLayer, matched: bool) -> (StreamSettings, Vec<Problem>) {
    let d = StreamSettings::default();
    let mut p = Vec::new();
    let raise_after = val(&v.raise_after).unwrap_or(d.raise_after);
    let clear_after = val(&v.clear_after).unwrap_or(d.clear_after);
    let hold_off_ms = val(&v.hold_off_ms).unwrap_or(d.hold_off_ms);
    if !matched {
        let settings = StreamSettings {
            raise_after,
            clear_after,
            hold_off_ms,
            ..d
        };
        return (settings, p);
    }
    let window = window(v, d.window, &mut p);
    let limits = v
        .limits
        .iter()
        .filter_map(|(feature, l)| {
            // Strictly increasing: alarm_below < warning_below < warning_above
            // < alarm_above. `&`, not `&&`: report every problem.
            let ok = feature_ok(v, feature, &l.at, &mut p)
                & ordered(
                    &[&l.alarm_down, &l.warning_down, &l.warning_up, &l.alarm_up],
                    &mut p,
                );
            ok.then(|| Limit {
                feature: feature.clone(),
                warning_above: val(&l.warning_up),
                alarm_above: val(&l.alarm_up),
                warning_below: val(&l.warning_down),
                alarm_below: val(&l.alarm_down),
            })
        })
        .collect();
    let rates = v
        .rates
        .iter()
        .filter_map(|(feature, r)| {
            let ok = feature_ok(v, feature, &r.at, &mut p)
                & ordered(&[&r.warning_up, &r.alarm_up], &mut p)
                & ordered(&[&r.warning_down, &r.alarm_down], &mut p);
            ok.then(|| RateLimit {
                feature: feature.clone(),
                warning_rise_per_min: val(&r.warning_up),
                alarm_rise_per_min: val(&r.alarm_up),
                warning_fall_per_min: val(&r.warning_down),
                alarm_fall_per_min: val(&r.alarm_down),
            })
        })
        .collect();
    let baseline = baseline(v, &mut p);
    let bearing = v
        .bearing
        .as_ref()
        .and_then(|b| match (&b.shaft_hz, &b.orders) {
            (Some(s), Some(o)) => Some(Bearing {
                shaft_hz: s.v,
                bpfo: o.v[0],
                bpfi: o.v[1],
                bsf: o.v[2],
                ftf: o.v[3],
            }),
            (None, Some(o)) => {
                p.push(Problem {
                    at: o.at.clone(),
                    msg: "a bearing needs a shaft speed: set `shaft_rpm` or `shaft_hz` next to the defect multiples (or in a less specific file), since every device this file matches needs one".into(),
                    topic: "bearing",
                });
                None
            }
            (Some(s), None) => {
                p.push(Problem {
                    at: s.at.clone(),
                    msg: "a shaft speed alone is no bearing: set the defect multiples (bpfo, bpfi, bsf, ftf) or the geometry (balls, ball_diameter, pitch_diameter) here or in a less specific file".into(),
                    topic: "bearing",
                });
                None
            }
            // An empty or refused table, already reported on its own.
            (None, None) => None,
        });
    let iso10816 = v.iso.as_ref().and_then(|iso| {
        match (val(&iso.group), val(&iso.foundation)) {
            (Some(g), Some(f)) => Some(IsoZones::new(g, f)),
            (None, None) => None,
            _ => {
                p.push(Problem {
                    at: iso.at.clone(),
                    msg: "ISO 10816 zones need both `group` (1 or 2) and `foundation` (\"rigid\" or \"flexible\")".into(),
                    topic: "iso10816",
                });
                None
            }
        }
    });
    let dw = WaveformSettings::default();
    let settings = StreamSettings {
        unit: v.unit.as_ref().map(|s| s.v.clone()),
        window,
        allowed_lateness_ms: val(&v.allowed_lateness_ms).unwrap_or(d.allowed_lateness_ms),
        silent_after_ms: val(&v.silent_after_ms).unwrap_or(d.silent_after_ms),
        raise_after,
        clear_after,
        hold_off_ms,
        waveform: WaveformSettings {
            input_unit: val(&v.input_unit).unwrap_or(dw.input_unit),
            bands: v
                .bands
                .iter()
                .map(|(name, b)| super::detection::Band {
                    name: name.clone(),
                    from_hz: b.v.0,
                    to_hz: b.v.1,
                })
                .collect(),
            bearing,
            envelope_band_hz: val(&v.envelope_band_hz).or(dw.envelope_band_hz),
        },
        limits,
        iso10816,
        rates,
        baseline,
    };
    (settings, p)
}

fn window(v: &MetricLayer, default: WindowSpec, p: &mut Vec<Problem>) -> WindowSpec {
    let default = match default {
        WindowSpec::Time { length_ms, .. } => Extent::Ms(length_ms),
        WindowSpec::Count { length, .. } => Extent::Readings(length),
    };
    let len = val(&v.window).unwrap_or(default);
    let hop = val(&v.hop).unwrap_or(len);
    let blame = later(at_of(&v.window), at_of(&v.hop)).unwrap_or(&v.at);
    let tumbling = match len {
        Extent::Ms(l) => WindowSpec::Time {
            length_ms: l,
            hop_ms: l,
        },
        Extent::Readings(l) => WindowSpec::Count { length: l, hop: l },
    };
    let (l, h) = match (len, hop) {
        (Extent::Ms(l), Extent::Ms(h)) => (i128::from(l), i128::from(h)),
        (Extent::Readings(l), Extent::Readings(h)) => (i128::from(l), i128::from(h)),
        _ => {
            p.push(Problem {
                at: blame.clone(),
                msg: format!(
                    "the window ({}) and the hop ({}) must be of one kind: durations (`window`, `hop`) or counts (`window_readings`, `hop_readings`)",
                    describe(len),
                    describe(hop)
                ),
                topic: "window",
            });
            return tumbling;
        }
    };
    let msg = if h > l {
        format!(
            "the hop ({}) is longer than the window ({}); expected a hop no longer than the window",
            describe(hop),
            describe(len)
        )
    } else if l > 64 * h {
        // Every open window holds an accumulator: bound them per stream.
        format!(
            "a window of {} every {} keeps {} windows open at once; at most 64 are allowed, use a longer hop",
            describe(len),
            describe(hop),
            (l + h - 1) / h
        )
    } else {
        return match tumbling {
            WindowSpec::Time { length_ms, .. } => WindowSpec::Time {
                length_ms,
                hop_ms: h as i64,
            },
            WindowSpec::Count { length, .. } => WindowSpec::Count {
                length,
                hop: h as u32,
            },
        };
    };
    p.push(Problem {
        at: blame.clone(),
        msg,
        topic: "window",
    });
    tumbling
}

/// Each set level below the next set one; blames the later of a pair.
fn ordered(levels: &[&Val<f64>], p: &mut Vec<Problem>) -> bool {
    let set: Vec<&Set<f64>> = levels.iter().filter_map(|l| l.as_ref()).collect();
    let mut ok = true;
    for (i, a) in set.iter().enumerate() {
        for b in &set[i + 1..] {
            if a.v >= b.v {
                let blame = later(Some(&a.at), Some(&b.at)).unwrap_or(&b.at);
                p.push(Problem {
                    at: blame.clone(),
                    msg: format!(
                        "{} ({}) must be below {} ({})",
                        key_name(&a.at),
                        a.v,
                        key_name(&b.at),
                        b.v
                    ),
                    topic: "",
                });
                ok = false;
            }
        }
    }
    ok
}

/// Whether a feature exists for this merge: `band.x` needs a band `x`,
/// `envelope.*` a bearing. (Names were checked per file.)
fn feature_ok(v: &MetricLayer, feature: &str, at: &At, p: &mut Vec<Problem>) -> bool {
    let msg = if let Some(band) = feature.strip_prefix("band.") {
        if v.bands.contains_key(band) {
            return true;
        }
        let defined: Vec<String> = v.bands.keys().map(|b| format!("band.{b}")).collect();
        format!(
            "feature {feature:?} needs a band {band:?} in `waveform.bands` of this metric, here or in a less specific file; {}",
            if defined.is_empty() {
                "none is defined".to_string()
            } else {
                format!("defined: {}", defined.join(", "))
            }
        )
    } else if feature.starts_with("envelope.") && v.bearing.is_none() {
        format!("feature {feature:?} needs a `bearing` table for this metric, here or in a less specific file")
    } else {
        return true;
    };
    let topic = if feature.starts_with("band.") {
        "waveform"
    } else {
        "bearing"
    };
    p.push(Problem {
        at: at.clone(),
        msg,
        topic,
    });
    false
}

fn baseline(v: &MetricLayer, p: &mut Vec<Problem>) -> Option<BaselineSettings> {
    let b = v.baseline.as_ref()?;
    let d = BaselineSettings::default();
    let mut features = b.features.as_ref().map_or(d.features, |f| f.v.clone());
    if let Some(list) = &b.features {
        for (i, f) in list.v.iter().enumerate() {
            let at = At {
                key: format!("{}[{i}]", list.at.key),
                ..list.at.clone()
            };
            feature_ok(v, f, &at, p);
        }
    }
    features.retain(|f| feature_ok(v, f, &At::default(), &mut Vec::new()));
    let warning_z = val(&b.warning_z).unwrap_or(d.warning_z);
    let mut alarm_z = val(&b.alarm_z).unwrap_or(d.alarm_z);
    if alarm_z < warning_z {
        let blame = later(at_of(&b.warning_z), at_of(&b.alarm_z)).unwrap_or(&b.at);
        p.push(Problem {
            at: blame.clone(),
            msg: format!("alarm_z ({alarm_z}) must not be below warning_z ({warning_z})"),
            topic: "baseline",
        });
        alarm_z = warning_z;
    }
    if val(&b.enabled) == Some(false) || features.is_empty() {
        return None;
    }
    let (dk, dh) = d.cusum.unwrap_or((0.5, 12.0));
    Some(BaselineSettings {
        features,
        warmup_windows: val(&b.warmup_windows).unwrap_or(d.warmup_windows),
        alpha: val(&b.alpha).unwrap_or(d.alpha),
        warning_z,
        alarm_z,
        cusum: (val(&b.cusum) != Some(false))
            .then(|| (val(&b.cusum_k).unwrap_or(dk), val(&b.cusum_h).unwrap_or(dh))),
        volatility_ratio: (val(&b.volatility) != Some(false)).then(|| {
            val(&b.volatility_ratio)
                .or(d.volatility_ratio)
                .unwrap_or(4.0)
        }),
    })
}

/// Checks across files: for every file and every metric table in it, merge
/// what applies to the file's pattern and the table's glob taken literally
/// (exactly the files and tables at least as general), and report what is
/// wrong, once, at the key that was set last. `files` are in registry order;
/// a problem's `at.file` indexes them.
pub(super) fn check_all(files: &[(&str, &FileLayer)]) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    for (pattern, layer) in files {
        for table in &layer.metrics {
            let applying = files
                .iter()
                .enumerate()
                .filter(|(_, (p, _))| glob_matches(p, pattern))
                .map(|(i, (_, l))| (i, *l));
            let (view, matched) = merge(applying, &table.name);
            if view.refused.iter().any(|r| r == "*") {
                continue;
            }
            for problem in build(&view, matched).1 {
                // A refused key may be the one this check would look for.
                if view.refused.iter().any(|r| r == problem.topic) {
                    continue;
                }
                let seen = out.iter().any(|o| {
                    o.at.file == problem.at.file
                        && o.at.key == problem.at.key
                        && o.msg == problem.msg
                });
                if !seen {
                    out.push(problem);
                }
            }
        }
    }
    out
}

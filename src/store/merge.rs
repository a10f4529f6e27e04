//! Roll-up of window aggregates into coarser ones (e.g. minute windows into
//! an hour), from the features alone: the raw readings may be long gone.
//!
//! Count, mean, min, max and the standard deviation, skewness and kurtosis
//! determine a window's `Moments` (n, mean, M2..M4, extremes), and moments of
//! disjoint sets combine exactly with the pairwise update of Chan, Golub &
//! LeVeque (1979) and Pébay (2008), as `Moments::merge` does. So the merged
//! aggregate's time-domain features equal, up to rounding, those of one window
//! over all the values. Waveform features are per-block averages and are
//! re-weighted by each part's size.

use std::collections::BTreeMap;

use crate::detect::features::Moments;
use crate::model::Aggregate;

/// Merge consecutive, non-overlapping aggregates of one stream (given oldest
/// first) into one coarser aggregate.
///
/// `None` when `parts` is empty, mixes streams, overlaps (a window starting
/// before the previous one ended: sliding windows share values, which would be
/// counted twice), or a part lacks `count`, `mean`, `min` or `max` (always
/// present in a window's aggregate; without them its moments are unknown).
/// Gaps between windows are fine.
///
/// Features of the result:
/// - `count`, `mean`, `min`, `max`, `std`, `rms`, `peak`, `peak_to_peak`,
///   `crest_factor`: from the merged moments, by `Moments::features`.
/// - `skewness`, `kurtosis`: likewise, but only if every part's shape was
///   known: it had both, or its spread was within rounding noise of zero (a
///   single value or a constant, whose M3 and M4 are zero). A part of unknown
///   shape would enter with M3 = M4 = 0 and bias them, so they are left out.
/// - `velocity_rms`, `band.<name>`: RMS over blocks, so recombined as
///   √(Σ nᵢ·vᵢ² / Σ nᵢ); `envelope.<name>`: mean over blocks, so Σ nᵢ·vᵢ / Σ nᵢ.
///   Aggregates do not record their block count, so parts are weighted by
///   `count` (samples), which is exact for blocks of equal length, as sensors
///   send them. Present only if every part has the feature.
/// - `slope` is dropped: the least-squares slope of the union needs the time
///   moments (mean time, Σ(t − t̄)², Σ(t − t̄)(x − x̄)) that an aggregate does
///   not carry, and averaging slopes misses the trend between windows.
/// - Any other feature is dropped: its combining rule (mean? max? ratio?) is
///   unknown here, and a plausible but wrong value is worse than none.
pub fn merge(parts: &[Aggregate]) -> Option<Aggregate> {
    let first = parts.first()?;
    let last = parts.last()?;
    let mut total = Moments::default();
    let mut shape_known = true;
    let mut windows = 0u32;
    let mut prev_end: Option<i64> = None;
    for p in parts {
        if p.device != first.device || p.metric != first.metric {
            return None;
        }
        if prev_end.is_some_and(|end| p.start_ms < end) {
            return None;
        }
        prev_end = Some(p.end_ms);
        let (m, shape) = moments_of(&p.features)?;
        shape_known &= shape;
        total.merge(&m);
        windows = windows.saturating_add(p.windows);
    }

    let mut list = Vec::with_capacity(16);
    total.features(&mut list);
    let mut features: BTreeMap<String, f64> = list
        .into_iter()
        .filter(|(name, _)| match name.as_str() {
            // Never produced (the rebuilt moments have no time spread); kept explicit.
            "slope" => false,
            "skewness" | "kurtosis" => shape_known,
            _ => true,
        })
        .collect();

    for name in first.features.keys() {
        let rms_type = name == "velocity_rms" || name.starts_with("band.");
        if !rms_type && !name.starts_with("envelope.") {
            continue;
        }
        // Σ nᵢ·vᵢ (or nᵢ·vᵢ²), or None when some part lacks the feature.
        let sum: Option<f64> = parts
            .iter()
            .map(|p| {
                let v = *p.features.get(name)?;
                Some(p.features["count"] * if rms_type { v * v } else { v })
            })
            .sum();
        let Some(sum) = sum else { continue };
        let v = sum / total.n;
        let v = if rms_type { v.sqrt() } else { v };
        if v.is_finite() {
            features.insert(name.clone(), v);
        }
    }
    Some(Aggregate {
        device: first.device.clone(),
        metric: first.metric.clone(),
        start_ms: first.start_ms,
        end_ms: last.end_ms,
        features,
        windows,
    })
}

/// A window's moments rebuilt from its features, and whether its shape (M3,
/// M4) is known. Inverts `Moments::features`: std = √(M2/(n−1)),
/// skewness = √n·M3/M2^1.5, kurtosis = n·M4/M2².
fn moments_of(f: &BTreeMap<String, f64>) -> Option<(Moments, bool)> {
    let n = *f.get("count")?;
    let mean = *f.get("mean")?;
    if !n.is_finite() || n < 1.0 {
        return None;
    }
    let m2 = match f.get("std") {
        Some(s) if n >= 2.0 => s * s * (n - 1.0),
        _ => 0.0,
    };
    let (skew, kurt) = (f.get("skewness"), f.get("kurtosis"));
    let m3 = skew.map_or(0.0, |g| g * m2.powf(1.5) / n.sqrt());
    let m4 = kurt.map_or(0.0, |k| k * m2 * m2 / n);
    // The same noise floor below which `Moments::features` reports no shape.
    let flat = m2 <= f64::EPSILON * n * mean.abs().max(1.0) * mean.abs().max(1.0);
    let m = Moments {
        n,
        mean,
        m2,
        m3,
        m4,
        min: *f.get("min")?,
        max: *f.get("max")?,
        ..Moments::default()
    };
    Some((m, flat || (skew.is_some() && kurt.is_some())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(m: &Moments) -> BTreeMap<String, f64> {
        let mut v = Vec::new();
        m.features(&mut v);
        v.into_iter().collect()
    }

    fn agg(device: &str, start_ms: i64, end_ms: i64, features: BTreeMap<String, f64>) -> Aggregate {
        Aggregate {
            device: device.into(),
            metric: "temp".into(),
            start_ms,
            end_ms,
            features,
            windows: 1,
        }
    }

    fn assert_close(name: &str, a: f64, b: f64) {
        assert!(
            (a - b).abs() <= 1e-9 * a.abs().max(b.abs()),
            "{name}: {a} vs {b}"
        );
    }

    /// Ten back-to-back windows (one of a single value) of a skewed signal:
    /// a sine plus the square of a uniform LCG variate, offset from zero.
    fn windows() -> (Vec<Aggregate>, Moments) {
        let mut state = 12345u64;
        let mut all = Moments::default();
        let (mut parts, mut i, mut t_ms) = (Vec::new(), 0u32, 1_000_000i64);
        for len in [7, 23, 1, 40, 12, 31, 9, 18, 27, 15] {
            let mut m = Moments::default();
            for _ in 0..len {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                let x = 10.0 + 3.0 * (f64::from(i) / 5.0).sin() + 4.0 * u * u;
                let t_min = f64::from(i) / 60.0;
                m.push(t_min, x);
                all.push(t_min, x);
                i += 1;
            }
            let end = t_ms + len * 1000;
            parts.push(agg("pump-1", t_ms, end, features(&m)));
            t_ms = end;
        }
        (parts, all)
    }

    #[test]
    fn merged_features_equal_those_of_all_values() {
        let (parts, all) = windows();
        assert!(
            !parts[2].features.contains_key("std"),
            "single-value window"
        );
        let merged = merge(&parts).unwrap();
        let mut want = features(&all);
        assert!(want.remove("slope").is_some());
        assert!(want.contains_key("skewness") && want.contains_key("kurtosis"));
        assert_eq!(
            merged.features.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (name, v) in &want {
            assert_close(name, merged.features[name], *v);
        }
        assert_eq!(merged.features["count"], 183.0);
        assert_eq!(merged.windows, 10);
        assert_eq!((merged.start_ms, merged.end_ms), (1_000_000, 1_183_000));
        assert_eq!(
            (merged.device.as_str(), merged.metric.as_str()),
            ("pump-1", "temp")
        );
    }

    #[test]
    fn refuses_overlap_other_streams_and_nothing() {
        let (mut parts, _) = windows();
        assert!(merge(&[]).is_none());
        let mut overlapping = parts.clone();
        overlapping[4].start_ms = overlapping[3].end_ms - 1;
        assert!(merge(&overlapping).is_none());
        let mut gap = parts.clone();
        gap[4].start_ms += 5000;
        assert!(merge(&gap).is_some(), "gaps are fine");
        let mut other = parts.clone();
        other[7].device = "pump-2".into();
        assert!(merge(&other).is_none());
        other[7].device = "pump-1".into();
        other[7].metric = "pressure".into();
        assert!(merge(&other).is_none());
        parts[5].features.remove("mean");
        assert!(merge(&parts).is_none());
    }

    #[test]
    fn merge_of_merges_equals_merge_of_all() {
        let (mut parts, _) = windows();
        for (k, p) in parts.iter_mut().enumerate() {
            let k = k as f64;
            p.features.insert("velocity_rms".into(), 1.0 + 0.3 * k);
            p.features.insert("band.low".into(), 2.0 / (1.0 + k));
            p.features
                .insert("envelope.bpfo".into(), 0.05 * k * k + 0.01);
        }
        let once = merge(&parts).unwrap();
        let groups = [&parts[0..3], &parts[3..4], &parts[4..8], &parts[8..10]];
        let merged: Vec<Aggregate> = groups.iter().map(|g| merge(g).unwrap()).collect();
        let twice = merge(&merged).unwrap();
        assert_eq!(twice.windows, 10);
        assert_eq!(merged[2].windows, 4);
        assert_eq!((twice.start_ms, twice.end_ms), (once.start_ms, once.end_ms));
        assert_eq!(once.features.len(), twice.features.len());
        assert_eq!(once.features.len(), 14);
        for (name, v) in &once.features {
            assert_close(name, twice.features[name], *v);
        }
    }

    #[test]
    fn waveform_features_weighted_by_count() {
        let part = |start, kv: &str| {
            let f = kv.split_whitespace().map(|e| {
                let (k, v) = e.split_once('=').unwrap();
                (k.to_string(), v.parse().unwrap())
            });
            agg("m", start, start + 10, f.collect())
        };
        let common = "mean=1 min=1 max=1 std=0 slope=0.5";
        let a = part(0, &format!("{common} count=2 velocity_rms=3 band.low=1 band.high=7 envelope.bpfo=0.5 mystery=1"));
        let b = part(
            10,
            &format!("{common} count=6 velocity_rms=1 band.low=2 envelope.bpfo=0.1 mystery=2"),
        );
        let m = merge(&[a, b]).unwrap().features;
        // √((2·3² + 6·1²)/8), √((2·1² + 6·2²)/8), (2·0.5 + 6·0.1)/8.
        assert_close("velocity_rms", m["velocity_rms"], 3f64.sqrt());
        assert_close("band.low", m["band.low"], 3.25f64.sqrt());
        assert_close("envelope.bpfo", m["envelope.bpfo"], 0.2);
        for absent in ["band.high", "mystery", "slope", "skewness", "kurtosis"] {
            assert!(!m.contains_key(absent), "{absent}");
        }
        assert_eq!((m["count"], m["mean"], m["std"]), (8.0, 1.0, 0.0));
    }

    #[test]
    fn shape_only_when_every_part_had_one() {
        let (parts, _) = windows();
        let mut unknown = parts.clone();
        unknown[3].features.remove("kurtosis");
        let m = merge(&unknown).unwrap().features;
        assert!(!m.contains_key("kurtosis") && !m.contains_key("skewness"));
        assert!(m.contains_key("std"));
        // A constant part has no shape features but a known one (M3 = M4 = 0).
        let mut constant = Moments::default();
        for _ in 0..5 {
            constant.push(0.0, 0.1);
        }
        let mut with_constant = parts.clone();
        with_constant.push(agg("pump-1", 1_183_000, 1_188_000, features(&constant)));
        let m = merge(&with_constant).unwrap().features;
        assert!(m.contains_key("kurtosis") && m.contains_key("skewness"));
    }
}

//! The learned baseline: no thresholds to set. Per feature it learns the
//! stream's normal level and spread during a warm-up (median and MAD), then
//! follows them slowly with outlier-resistant updates, and scores each window:
//!
//! - level: robust z-score against the moving level, Student-t score (an
//!   anomalous window is not learned from, until the change has lasted as
//!   long as the warm-up: then the baseline learns anew);
//! - drift: two-sided CUSUM (Page 1954) of the z-scores against a much slower
//!   reference, for creeping changes the moving level would absorb;
//! - volatility: the window's spread against the learned within-window
//!   spread, scored with the F distribution of the variance ratio.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, FisherSnedecor, StudentsT};

use crate::config::BaselineSettings;
use crate::model::Severity;

/// MAD of a normal sample × 1.4826 estimates its standard deviation.
const MAD_TO_SIGMA: f64 = 1.4826;
/// Deviations are clipped at this many spreads before they update anything
/// (Huber), so one wild window moves the baseline by at most `alpha · 3σ`.
const CLIP: f64 = 3.0;
/// Variance of a standard normal truncated at ±3 (corrects the clipped
/// spread update so it stays unbiased for normal data).
const CLIPPED_VARIANCE: f64 = 0.9733;
/// The drift reference learns this many times slower than the level.
const DRIFT_SLOWDOWN: f64 = 10.0;
/// Degrees of freedom are capped: beyond this the t distribution is normal
/// for our purposes.
const MAX_DF: f64 = 100.0;
/// A volatility finding also needs this confidence, so a window of three
/// readings cannot trigger it by chance.
const VOLATILITY_CONFIDENCE: f64 = 0.999;

/// What one test concluded about one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub severity: Option<Severity>,
    pub value: f64,
    /// Learned level and spread the value was compared with.
    pub level: f64,
    pub spread: f64,
    /// The test statistic (z, CUSUM sum, or spread ratio).
    pub statistic: f64,
    pub score: f64,
}

/// Level and drift state of one feature of one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    /// Values seen during the warm-up; emptied when it ends.
    warm: Vec<f64>,
    level: f64,
    spread: f64,
    reference: f64,
    cusum_hi: f64,
    cusum_lo: f64,
    learned: u32,
    /// Consecutive windows outside the warning band (not learned from).
    #[serde(default)]
    outside: u32,
}

impl Default for Learned {
    fn default() -> Self {
        Learned {
            warm: Vec::new(),
            level: 0.0,
            spread: 0.0,
            reference: 0.0,
            cusum_hi: 0.0,
            cusum_lo: 0.0,
            learned: 0,
            outside: 0,
        }
    }
}

/// The two findings of a feature in one window (None while warming up).
pub struct LevelAndDrift {
    pub level: Finding,
    pub drift: Option<Finding>,
}

impl Learned {
    pub fn warming_up(&self, s: &BaselineSettings) -> bool {
        self.learned < s.warmup_windows
    }

    /// Score `x`, then learn from it.
    pub fn observe(&mut self, x: f64, s: &BaselineSettings) -> Option<LevelAndDrift> {
        if !x.is_finite() {
            return None;
        }
        if self.warming_up(s) {
            self.warm.push(x);
            self.learned += 1;
            if !self.warming_up(s) {
                self.finish_warmup();
            }
            return None;
        }
        let spread = self.spread.max(spread_floor(self.level));
        let z = (x - self.level) / spread;
        let df = (s.warmup_windows as f64 - 1.0).clamp(1.0, MAX_DF);
        let score = two_sided_score(z, df);
        let severity = if z.abs() >= s.alarm_z {
            Some(Severity::Alarm)
        } else if z.abs() >= s.warning_z {
            Some(Severity::Warning)
        } else {
            None
        };
        let level = Finding {
            severity,
            value: x,
            level: self.level,
            spread,
            statistic: z,
            score,
        };

        let drift = s.cusum.map(|(k, h)| {
            let zr = ((x - self.reference) / spread).clamp(-CLIP, CLIP);
            self.cusum_hi = (self.cusum_hi + zr - k).max(0.0);
            self.cusum_lo = (self.cusum_lo - zr - k).max(0.0);
            let sum = self.cusum_hi.max(self.cusum_lo);
            let signed = if self.cusum_hi >= self.cusum_lo {
                sum
            } else {
                -sum
            };
            Finding {
                severity: (sum >= h).then_some(Severity::Warning),
                value: x,
                level: self.reference,
                spread,
                statistic: signed,
                // 0.5 at the decision interval, approaching 1 beyond it.
                score: sum / (sum + h),
            }
        });

        if severity.is_some() {
            // An anomalous window teaches nothing (statistical process
            // control excludes out-of-control points from the baseline), so a
            // lasting fault is not absorbed. A change that lasts as long as
            // the warm-up is the new normal: learn it afresh.
            self.outside += 1;
            if self.outside >= s.warmup_windows {
                *self = Learned::default();
            }
            return Some(LevelAndDrift { level, drift });
        }
        self.outside = 0;
        // Learn: Huber-clipped exponentially weighted level and spread.
        let d = (x - self.level).clamp(-CLIP * spread, CLIP * spread);
        self.level += s.alpha * d;
        self.spread =
            ((1.0 - s.alpha) * spread * spread + s.alpha * d * d / CLIPPED_VARIANCE).sqrt();
        // The reference is a running mean until it has seen 1/slow windows
        // (so the warm-up's sampling error fades), then a slow moving mean.
        let slow = (1.0 / (self.learned as f64 + 1.0)).max(s.alpha / DRIFT_SLOWDOWN);
        self.reference += slow * (x - self.reference).clamp(-CLIP * spread, CLIP * spread);
        self.learned = self.learned.saturating_add(1);
        Some(LevelAndDrift { level, drift })
    }

    fn finish_warmup(&mut self) {
        let mut v = std::mem::take(&mut self.warm);
        let median = median(&mut v);
        let mut dev: Vec<f64> = v.iter().map(|x| (x - median).abs()).collect();
        let mad = median_of(&mut dev);
        let mut spread = MAD_TO_SIGMA * mad;
        if spread == 0.0 {
            // More than half the warm-up was one value: fall back to the mean
            // absolute deviation (× √(π/2) for a normal sample).
            spread = 1.2533 * dev.iter().sum::<f64>() / dev.len().max(1) as f64;
        }
        self.level = median;
        self.reference = median;
        self.spread = spread;
        self.warm = Vec::new();
    }
}

/// The within-window spread a stream normally has, for the volatility test.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Volatility {
    warm: Vec<f64>,
    /// Learned within-window standard deviation.
    reference: f64,
    /// Readings per window during learning (degrees of freedom of the reference).
    count: f64,
    learned: u32,
}

impl Volatility {
    /// Score a window with standard deviation `std` over `count` readings.
    pub fn observe(
        &mut self,
        std: f64,
        count: f64,
        ratio_limit: f64,
        s: &BaselineSettings,
    ) -> Option<Finding> {
        if !std.is_finite() || count < 2.0 {
            return None;
        }
        if self.learned < s.warmup_windows {
            self.warm.push(std);
            self.count += count;
            self.learned += 1;
            if self.learned >= s.warmup_windows {
                let mut v = std::mem::take(&mut self.warm);
                self.reference = median(&mut v);
                self.count /= self.learned as f64;
            }
            return None;
        }
        let reference = self.reference.max(1e-12);
        let ratio = std / reference;
        // Under "nothing changed", (s/σ)² follows F(n−1, ν) with ν the
        // reference's degrees of freedom (Snedecor's variance-ratio test).
        let df2 = ((self.count - 1.0) * s.warmup_windows as f64).clamp(1.0, 1e4);
        let score = FisherSnedecor::new(count - 1.0, df2)
            .map(|f| f.cdf(ratio * ratio))
            .unwrap_or(0.0);
        let severity = if score < VOLATILITY_CONFIDENCE {
            None
        } else if ratio >= 2.0 * ratio_limit {
            Some(Severity::Alarm)
        } else if ratio >= ratio_limit {
            Some(Severity::Warning)
        } else {
            None
        };
        // Learn in log space (spreads are scale quantities), clipped like the level.
        if severity.is_none() {
            let step = (ratio.max(1e-12).ln()).clamp(-1.0, 1.0);
            self.reference = reference * (s.alpha * step).exp();
        }
        self.learned = self.learned.saturating_add(1);
        Some(Finding {
            severity,
            value: std,
            level: reference,
            spread: reference,
            statistic: ratio,
            score,
        })
    }
}

/// A spread below this is rounding noise, not a property of the stream.
fn spread_floor(level: f64) -> f64 {
    (level.abs() * 1e-3).max(1e-9)
}

/// 1 − two-sided p-value of `z` under Student's t with `df` degrees of freedom.
fn two_sided_score(z: f64, df: f64) -> f64 {
    if !z.is_finite() {
        return 1.0;
    }
    match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => (1.0 - 2.0 * t.sf(z.abs())).clamp(0.0, 1.0),
        Err(_) => 0.0,
    }
}

fn median(v: &mut [f64]) -> f64 {
    median_of(v)
}

fn median_of(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BaselineSettings {
        BaselineSettings {
            features: vec!["mean".into()],
            warmup_windows: 20,
            alpha: 0.05,
            warning_z: 4.0,
            alarm_z: 8.0,
            cusum: Some((0.5, 5.0)),
            volatility_ratio: Some(3.0),
        }
    }

    /// Deterministic noise in [-1, 1).
    fn noise(seed: &mut u64) -> f64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    #[test]
    fn learns_then_flags_a_jump_with_the_right_severity() {
        let s = settings();
        let mut b = Learned::default();
        let mut seed = 7;
        for _ in 0..20 {
            assert!(b.observe(50.0 + noise(&mut seed), &s).is_none());
        }
        assert!(!b.warming_up(&s));
        // Uniform(-1,1) has σ = 0.577; MAD×1.4826 ≈ 0.74 for it.
        assert!((b.level - 50.0).abs() < 0.5);
        assert!(b.spread > 0.3 && b.spread < 1.2, "spread {}", b.spread);
        let normal = b.observe(50.2, &s).unwrap();
        assert_eq!(normal.level.severity, None);
        assert!(normal.level.score < 0.5);
        let spread = b.spread;
        let warn = b.observe(50.0 + 5.0 * spread, &s).unwrap();
        assert_eq!(warn.level.severity, Some(Severity::Warning));
        let alarm = b.observe(50.0 + 20.0 * spread, &s).unwrap();
        assert_eq!(alarm.level.severity, Some(Severity::Alarm));
        assert!(alarm.level.score > 0.9999);
        assert!(alarm.level.statistic > 8.0);
    }

    #[test]
    fn one_outlier_barely_moves_the_level() {
        let s = settings();
        let mut b = Learned::default();
        let mut seed = 3;
        for _ in 0..40 {
            b.observe(10.0 + 0.1 * noise(&mut seed), &s);
        }
        let before = b.level;
        b.observe(1e6, &s);
        assert!((b.level - before).abs() <= s.alpha * CLIP * b.spread * 1.5);
    }

    #[test]
    fn cusum_catches_a_creeping_drift_the_level_test_misses() {
        let s = settings();
        let mut b = Learned::default();
        let mut seed = 11;
        for _ in 0..20 {
            b.observe(noise(&mut seed), &s);
        }
        let sigma = b.spread;
        let mut drift_at = None;
        for i in 0..200 {
            // One spread per 100 windows: never a large z in one window.
            let x = noise(&mut seed) + sigma * i as f64 / 100.0;
            let f = b.observe(x, &s).unwrap();
            assert_eq!(f.level.severity, None, "window {i}: level test fired");
            if f.drift.unwrap().severity.is_some() && drift_at.is_none() {
                drift_at = Some(i);
            }
        }
        assert!(drift_at.is_some(), "CUSUM never signalled the drift");
    }

    #[test]
    fn cusum_is_quiet_on_stationary_noise() {
        // h = 12 with k = 0.5: an in-control run length around a million windows
        // (Siegmund's approximation), so 2000 windows of noise never signal.
        let s = BaselineSettings {
            cusum: Some((0.5, 12.0)),
            ..settings()
        };
        let mut b = Learned::default();
        let mut seed = 5;
        for i in 0..2000 {
            if let Some(f) = b.observe(noise(&mut seed), &s) {
                assert_eq!(f.drift.unwrap().severity, None, "window {i}");
                assert_eq!(f.level.severity, None, "window {i}");
            }
        }
    }

    #[test]
    fn volatility_flags_an_erratic_window() {
        let s = settings();
        let mut v = Volatility::default();
        for _ in 0..20 {
            assert!(v.observe(1.0, 60.0, 3.0, &s).is_none());
        }
        let calm = v.observe(1.1, 60.0, 3.0, &s).unwrap();
        assert_eq!(calm.severity, None);
        let wild = v.observe(4.0, 60.0, 3.0, &s).unwrap();
        assert_eq!(wild.severity, Some(Severity::Warning));
        assert!(wild.score > 0.999);
        let wilder = v.observe(7.0, 60.0, 3.0, &s).unwrap();
        assert_eq!(wilder.severity, Some(Severity::Alarm));
        // Past the ratio, but from two readings: not significant at 0.999.
        let tiny = v.observe(3.1, 2.0, 3.0, &s).unwrap();
        assert_eq!(tiny.severity, None);
        assert!(tiny.score < 0.999 && tiny.score > 0.99);
    }

    #[test]
    fn t_score_matches_the_normal_limit() {
        // With many degrees of freedom, z = 1.96 is the 95 % two-sided point.
        assert!((two_sided_score(1.959964, 1e4) - 0.95).abs() < 1e-3);
        assert_eq!(two_sided_score(0.0, 10.0), 0.0);
        assert!(two_sided_score(f64::INFINITY, 10.0) == 1.0);
    }
}

//! The learned baseline: no thresholds to set. Per feature it learns the
//! stream's normal level and spread as the median and MAD of its recent
//! normal windows (the warm-up first, then a moving history of about
//! 2/alpha windows), and scores each window:
//!
//! - level: robust z-score against the median, Student-t score (an
//!   anomalous window is not learned from, until the change has lasted as
//!   long as the warm-up: then the baseline learns anew);
//! - drift: two-sided CUSUM (Page 1954) of the clipped z-scores, for
//!   small persistent shifts the level test does not flag;
//! - volatility: the window's spread against the learned within-window
//!   spread, scored with the F distribution of the variance ratio.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, FisherSnedecor, StudentsT};

use crate::config::BaselineSettings;
use crate::model::Severity;

/// MAD of a normal sample × 1.4826 estimates its standard deviation.
const MAD_TO_SIGMA: f64 = 1.4826;
/// Deviations are clipped at this many spreads before they enter the CUSUM
/// sums (Huber), so one wild window cannot trip the drift detector.
const CLIP: f64 = 3.0;
/// Most windows a baseline remembers per feature (memory per stream); the
/// warm-up is at most as long, or it would never end.
const MAX_HISTORY: usize = crate::config::ranges::WARMUP_WINDOWS.max as usize;
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    /// The most recent normal windows' values (anomalous ones are left out),
    /// oldest first; at most `capacity` of them.
    history: VecDeque<f64>,
    cusum_hi: f64,
    cusum_lo: f64,
    /// Consecutive windows outside the warning band (not learned from).
    outside: u32,
}

/// The two findings of a feature in one window (None while warming up).
pub struct LevelAndDrift {
    pub level: Finding,
    pub drift: Option<Finding>,
}

/// Windows the baseline remembers: the warm-up, or about 2/alpha (the span
/// of an exponential average with weight alpha), at most `MAX_HISTORY`.
fn capacity(s: &BaselineSettings) -> usize {
    let span = (2.0 / s.alpha).round() as usize;
    span.max(s.warmup_windows as usize).clamp(1, MAX_HISTORY)
}

impl Learned {
    pub fn warming_up(&self, s: &BaselineSettings) -> bool {
        self.history.len() < s.warmup_windows as usize
    }

    /// Score `x` against the level and spread learned so far, then learn from it.
    pub fn observe(&mut self, x: f64, s: &BaselineSettings) -> Option<LevelAndDrift> {
        if !x.is_finite() {
            return None;
        }
        if self.warming_up(s) {
            self.history.push_back(x);
            return None;
        }
        let (level, spread) = median_and_spread(&self.history);
        let spread = spread.max(spread_floor(level));
        let z = (x - level) / spread;
        let df = (self.history.len() as f64 - 1.0).clamp(1.0, MAX_DF);
        let score = two_sided_score(z, df);
        let severity = if z.abs() >= s.alarm_z {
            Some(Severity::Alarm)
        } else if z.abs() >= s.warning_z {
            Some(Severity::Warning)
        } else {
            None
        };
        let finding = Finding {
            severity,
            value: x,
            level,
            spread,
            statistic: z,
            score,
        };

        let drift = s.cusum.map(|(k, h)| {
            // Clipped, so that one wild window cannot trip it on its own.
            let zc = z.clamp(-CLIP, CLIP);
            self.cusum_hi = (self.cusum_hi + zc - k).max(0.0);
            self.cusum_lo = (self.cusum_lo - zc - k).max(0.0);
            let sum = self.cusum_hi.max(self.cusum_lo);
            let signed = if self.cusum_hi >= self.cusum_lo {
                sum
            } else {
                -sum
            };
            Finding {
                // The level test already reports a large deviation; drift is
                // for the small ones that add up.
                severity: (sum >= h && severity.is_none()).then_some(Severity::Warning),
                value: x,
                level,
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
        } else {
            self.outside = 0;
            if self.history.len() >= capacity(s) {
                self.history.pop_front();
            }
            self.history.push_back(x);
        }
        Some(LevelAndDrift {
            level: finding,
            drift,
        })
    }
}

/// Median and robust spread (1.4826 × MAD; the mean absolute deviation when
/// more than half the values are equal).
fn median_and_spread(values: &VecDeque<f64>) -> (f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().collect();
    let median = median_of(&mut v);
    for x in v.iter_mut() {
        *x = (*x - median).abs();
    }
    let mad = median_of(&mut v);
    let spread = if mad > 0.0 {
        MAD_TO_SIGMA * mad
    } else {
        // × √(π/2): the mean absolute deviation of a normal sample to σ.
        1.2533 * v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    (median, spread)
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
                self.reference = median_of(&mut v);
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
        let (level, spread) = median_and_spread(&b.history);
        assert!((level - 50.0).abs() < 0.5);
        // Uniform(-1,1): σ = 0.577; MAD × 1.4826 ≈ 0.74 for it.
        assert!(spread > 0.3 && spread < 1.2, "spread {spread}");
        let normal = b.observe(50.2, &s).unwrap();
        assert_eq!(normal.level.severity, None);
        assert!(normal.level.score < 0.5);
        let spread = median_and_spread(&b.history).1;
        let warn = b.observe(50.0 + 5.0 * spread, &s).unwrap();
        assert_eq!(warn.level.severity, Some(Severity::Warning));
        let alarm = b.observe(50.0 + 20.0 * spread, &s).unwrap();
        assert_eq!(alarm.level.severity, Some(Severity::Alarm));
        assert!(alarm.level.score > 0.9999);
        assert!(alarm.level.statistic > 8.0);
    }

    #[test]
    fn anomalous_windows_are_not_learned_and_a_lasting_change_is() {
        let s = settings();
        let mut b = Learned::default();
        let mut seed = 3;
        for _ in 0..40 {
            b.observe(10.0 + 0.1 * noise(&mut seed), &s);
        }
        let before = median_and_spread(&b.history);
        // A wild window is flagged and leaves the baseline as it was.
        let f = b.observe(1e6, &s).unwrap();
        assert_eq!(f.level.severity, Some(Severity::Alarm));
        assert_eq!(median_and_spread(&b.history), before);
        // A change lasting as long as the warm-up is learned afresh.
        for _ in 0..s.warmup_windows {
            b.observe(20.0 + 0.1 * noise(&mut seed), &s);
        }
        assert!(
            b.warming_up(&s),
            "the baseline did not start learning again"
        );
        for _ in 0..s.warmup_windows {
            b.observe(20.0 + 0.1 * noise(&mut seed), &s);
        }
        let f = b.observe(20.0, &s).unwrap();
        assert_eq!(f.level.severity, None, "the new level is normal now");
    }

    #[test]
    fn cusum_catches_a_creeping_drift_the_level_test_misses() {
        let s = settings();
        let mut b = Learned::default();
        let mut seed = 11;
        for _ in 0..20 {
            b.observe(noise(&mut seed), &s);
        }
        let sigma = median_and_spread(&b.history).1;
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

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
//!
//! Two kinds of normal that a single level cannot describe:
//!
//! - regimes: when a change has lasted long enough to be learned anew, the
//!   level it replaced is kept as an operating state (off, idle, another
//!   load), up to `MAX_REGIMES` of them. A window far from the recent level
//!   but within the warning band of a known regime is normal, and teaches
//!   that regime.
//! - rhythms: two cyclic profiles are learned beside the level, one per
//!   time of day (96 phases of 15 minutes, UTC) and one per minute of the
//!   hour (60 phases). Once one has seen two of its periods and explains
//!   most of the stream's variance over the last day, windows are scored
//!   against what is normal at their phase (or the phase on either side)
//!   instead, so a daily cycle, a square wave or an hourly job is not an
//!   anomaly, and a day that breaks the cycle is.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, FisherSnedecor, StudentsT};

use crate::config::BaselineSettings;
use crate::model::{EpochMs, Severity};

/// MAD of a normal sample × 1.4826 estimates its standard deviation.
const MAD_TO_SIGMA: f64 = 1.4826;
/// Mean absolute deviation of a normal sample × √(π/2) estimates σ.
const MEAN_AD_TO_SIGMA: f64 = 1.2533;
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
/// Operating states remembered besides the recent level.
const MAX_REGIMES: usize = 4;
/// The rhythms learned: period and the phases it is divided into.
const DAY_MS: EpochMs = 86_400_000;
const HOUR_MS: EpochMs = 3_600_000;
const RHYTHMS: [(EpochMs, usize); 2] = [(DAY_MS, 96), (HOUR_MS, 60)];
/// A rhythm is used once it has seen this many periods...
const RHYTHM_PERIODS: EpochMs = 2;
/// ...and its residuals have at most this share of the stream's variance
/// (the per-phase profile explains at least three quarters of it).
const RHYTHM_RESIDUAL_SHARE: f64 = 0.25;
/// A phase is scored once it has learned from this many windows.
const PHASE_MIN_WINDOWS: u16 = 3;

/// What a window was compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Basis {
    /// The stream's recent normal windows.
    #[default]
    Recent,
    /// Another operating state the stream has held before.
    Regime,
    /// What is normal at this phase of a rhythm: the period and the
    /// phase's first minute in it (of the day, UTC, or of the hour).
    Phase { period_ms: EpochMs, minute: u32 },
}

impl Basis {
    /// Completes "… spreads above ___ 47.4 ± 0.2".
    pub fn describe(self) -> String {
        match self {
            Basis::Recent => "the learned level".into(),
            Basis::Regime => "the learned operating state".into(),
            Basis::Phase { period_ms, minute } if period_ms == DAY_MS => format!(
                "the level learned for {:02}:{:02} UTC",
                minute / 60,
                minute % 60
            ),
            Basis::Phase { minute, .. } => {
                format!("the level learned for minute {minute} of the hour")
            }
        }
    }
}

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
    pub basis: Basis,
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
    /// Levels the stream held before, most recently seen first. Absent from
    /// checkpoints written before regimes existed.
    #[serde(default)]
    regimes: Vec<Regime>,
    /// The daily and the hourly profile, once the first window is learned.
    #[serde(default)]
    rhythms: Vec<Rhythm>,
    /// Event time of the latest window found normal.
    #[serde(default)]
    normal_ms: Option<EpochMs>,
}

/// An operating state: a level the stream held for a warm-up or longer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Regime {
    level: f64,
    spread: f64,
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

fn severity_of(z: f64, s: &BaselineSettings) -> Option<Severity> {
    if z.abs() >= s.alarm_z {
        Some(Severity::Alarm)
    } else if z.abs() >= s.warning_z {
        Some(Severity::Warning)
    } else {
        None
    }
}

impl Learned {
    pub fn warming_up(&self, s: &BaselineSettings) -> bool {
        self.history.len() < s.warmup_windows as usize
    }

    /// The rhythm windows are scored against: of those established, the
    /// one that leaves the least of the variance unexplained.
    fn rhythm(&self) -> Option<&Rhythm> {
        self.rhythms
            .iter()
            .filter(|r| r.established())
            .min_by(|a, b| a.unexplained().total_cmp(&b.unexplained()))
    }

    /// Score `x`, the value of the window whose middle is at `t_ms`, against
    /// what was learned so far, then learn from it.
    pub fn observe(
        &mut self,
        x: f64,
        t_ms: EpochMs,
        s: &BaselineSettings,
    ) -> Option<LevelAndDrift> {
        if !x.is_finite() {
            return None;
        }
        // The profile judges for itself what it learns from: what is
        // anomalous for the recent level may be normal for its phase.
        if self.rhythms.len() != RHYTHMS.len() || !self.rhythms.iter().all(Rhythm::well_formed) {
            self.rhythms = RHYTHMS
                .iter()
                .map(|&(period, phases)| Rhythm::new(period, phases))
                .collect();
        }
        let period = self.rhythm().map(|r| r.period_ms);
        let mut phase = None;
        for r in self.rhythms.iter_mut() {
            let e = r.expect(x, t_ms);
            r.learn(x, t_ms, e.as_ref(), s);
            if Some(r.period_ms) == period {
                phase = e;
            }
        }
        if self.warming_up(s) {
            self.history.push_back(x);
            self.normal_ms = Some(t_ms);
            return None;
        }
        let (recent_level, recent_spread) = median_and_spread(&self.history);
        let recent_spread = recent_spread.max(spread_floor(recent_level));
        let (mut basis, mut level, mut spread) = match (phase, period) {
            (Some(p), Some(period_ms)) => (
                Basis::Phase {
                    period_ms,
                    minute: p.minute,
                },
                p.level,
                p.spread,
            ),
            _ => (Basis::Recent, recent_level, recent_spread),
        };
        let mut z = (x - level) / spread;
        let mut severity = severity_of(z, s);
        if severity.is_some() && basis == Basis::Recent {
            if let Some(i) = self.nearest_regime(x, s) {
                let r = &mut self.regimes[i];
                (basis, level, spread) = (Basis::Regime, r.level, r.spread);
                z = (x - level) / spread;
                severity = None;
                // Learn the regime as the moving level learns (clipped).
                let step = (x - r.level).clamp(-CLIP * r.spread, CLIP * r.spread);
                r.level += s.alpha * step;
                r.spread = (r.spread
                    + s.alpha * (MEAN_AD_TO_SIGMA * (x - r.level).abs() - r.spread))
                    .max(spread_floor(r.level));
                let r = self.regimes.remove(i);
                self.regimes.insert(0, r);
            }
        }
        let df = (self.history.len() as f64 - 1.0).clamp(1.0, MAX_DF);
        let finding = Finding {
            severity,
            value: x,
            level,
            spread,
            statistic: z,
            score: two_sided_score(z, df),
            basis,
        };

        let drift = s.cusum.map(|(k, h)| {
            if basis == Basis::Recent {
                // Clipped, so that one wild window cannot trip it on its own.
                let zc = z.clamp(-CLIP, CLIP);
                self.cusum_hi = (self.cusum_hi + zc - k).max(0.0);
                self.cusum_lo = (self.cusum_lo - zc - k).max(0.0);
            }
            let sum = self.cusum_hi.max(self.cusum_lo);
            let signed = if self.cusum_hi >= self.cusum_lo {
                sum
            } else {
                -sum
            };
            Finding {
                // The level test already reports a large deviation; drift is
                // for the small ones that add up.
                severity: (sum >= h && severity.is_none() && basis == Basis::Recent)
                    .then_some(Severity::Warning),
                value: x,
                level,
                spread,
                statistic: signed,
                // 0.5 at the decision interval, approaching 1 beyond it.
                score: sum / (sum + h),
                basis,
            }
        });

        if severity.is_some() {
            // An anomalous window teaches nothing (statistical process
            // control excludes out-of-control points from the baseline), so a
            // lasting fault is not absorbed. A change that lasts as long as
            // the warm-up (and a whole period, for a stream with a rhythm)
            // is the new normal: learn it afresh (the rhythm too, if it was
            // the one broken), and remember the level it replaces as an
            // operating state.
            self.outside += 1;
            let lasting = self.outside >= s.warmup_windows
                && period
                    .is_none_or(|p| self.normal_ms.is_none_or(|n| t_ms.saturating_sub(n) >= p));
            if lasting {
                self.remember_regime(recent_level, recent_spread, s);
                // A rhythm still being learned is not what changed.
                let rhythms = if period.is_some() {
                    Vec::new()
                } else {
                    std::mem::take(&mut self.rhythms)
                };
                *self = Learned {
                    regimes: std::mem::take(&mut self.regimes),
                    rhythms,
                    ..Learned::default()
                };
            }
        } else {
            self.outside = 0;
            self.normal_ms = Some(t_ms);
            if basis != Basis::Regime {
                if self.history.len() >= capacity(s) {
                    self.history.pop_front();
                }
                self.history.push_back(x);
            }
        }
        Some(LevelAndDrift {
            level: finding,
            drift,
        })
    }

    /// The known regime `x` is within the warning band of, the nearest one
    /// if several.
    fn nearest_regime(&self, x: f64, s: &BaselineSettings) -> Option<usize> {
        self.regimes
            .iter()
            .enumerate()
            .map(|(i, r)| (i, ((x - r.level) / r.spread).abs()))
            .filter(|(_, z)| *z < s.warning_z)
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
    }

    /// Keep `level ± spread` as an operating state: it replaces a known one
    /// it falls within, else the least recently seen goes if there are too
    /// many.
    fn remember_regime(&mut self, level: f64, spread: f64, s: &BaselineSettings) {
        if !(level.is_finite() && spread.is_finite()) {
            return;
        }
        if let Some(i) = self.nearest_regime(level, s) {
            self.regimes.remove(i);
        }
        self.regimes.insert(0, Regime { level, spread });
        self.regimes.truncate(MAX_REGIMES);
    }
}

/// A cyclic profile of one feature: each phase's level and spread,
/// learned from the windows that fall in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Rhythm {
    period_ms: EpochMs,
    /// Per phase: level, mean absolute deviation, windows learned.
    level: Vec<f32>,
    dev: Vec<f32>,
    windows: Vec<u16>,
    /// Event times of the first and the latest window learned.
    first_ms: Option<EpochMs>,
    latest_ms: EpochMs,
    /// Over about a day of windows: the stream's mean and variance, and the
    /// mean squared residual against the profile.
    mean: f64,
    var: f64,
    residual: f64,
    /// Windows that entered the averages above.
    seen: u64,
    /// Windows are scored against the profile (it explained the stream).
    used: bool,
    /// Per phase: consecutive windows the profile found anomalous there.
    off: Vec<u8>,
}

/// What the profile expects at one window's phase.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Expected {
    /// The phase (of the three nearest) that fits the value best.
    index: usize,
    minute: u32,
    level: f64,
    spread: f64,
}

impl Rhythm {
    fn new(period_ms: EpochMs, phases: usize) -> Rhythm {
        Rhythm {
            period_ms,
            level: vec![0.0; phases],
            dev: vec![0.0; phases],
            windows: vec![0; phases],
            off: vec![0; phases],
            ..Rhythm::default()
        }
    }

    /// One of `RHYTHMS`, with a value per phase in every list and times
    /// in order. A checkpoint's bytes are not trusted: anything else is
    /// learned afresh.
    fn well_formed(&self) -> bool {
        let n = self.windows.len();
        RHYTHMS.contains(&(self.period_ms, n))
            && self.level.len() == n
            && self.dev.len() == n
            && self.off.len() == n
            && self.first_ms.is_none_or(|f| f >= 0 && f <= self.latest_ms)
    }

    /// Phases of a well-formed rhythm (never 0).
    fn phases(&self) -> usize {
        self.windows.len()
    }

    fn phase_of(&self, t_ms: EpochMs) -> usize {
        let phase_ms = self.period_ms / self.phases() as EpochMs;
        (t_ms.rem_euclid(self.period_ms) / phase_ms) as usize
    }

    /// The share of the stream's variance the profile leaves unexplained.
    fn unexplained(&self) -> f64 {
        if self.var > 0.0 {
            self.residual / self.var
        } else {
            f64::INFINITY
        }
    }

    /// In use: once it has seen two periods and explains most of the
    /// variance. It stays in use until a change lasts a whole period (the
    /// baseline then learns anew), so a day that breaks the cycle is judged
    /// against it from its first window to its last.
    fn established(&self) -> bool {
        self.used
    }

    fn update_use(&mut self) {
        self.used = self.used
            || (self.unexplained() <= RHYTHM_RESIDUAL_SHARE
                && self.first_ms.is_some_and(|f| {
                    self.latest_ms.saturating_sub(f) >= RHYTHM_PERIODS * self.period_ms
                }));
    }

    /// The spread of a typical phase: the median of the phases' spreads,
    /// or their mean when most phases are constant.
    fn typical_spread(&self) -> f64 {
        let mut devs: Vec<f32> = self
            .dev
            .iter()
            .zip(&self.windows)
            .filter(|(_, n)| **n >= PHASE_MIN_WINDOWS)
            .map(|(d, _)| *d)
            .collect();
        if devs.is_empty() {
            return 0.0;
        }
        let mid = devs.len() / 2;
        let (_, m, _) = devs.select_nth_unstable_by(mid, |a, b| a.total_cmp(b));
        let typical = if *m > 0.0 {
            f64::from(*m)
        } else {
            devs.iter().map(|d| f64::from(*d)).sum::<f64>() / devs.len() as f64
        };
        MEAN_AD_TO_SIGMA * typical
    }

    /// What the profile expects at `t_ms`: of the window's phase and the
    /// phase on either side (a rhythm is never exactly on time), the one
    /// `x` fits best. None until the window's phase has learned enough.
    fn expect(&self, x: f64, t_ms: EpochMs) -> Option<Expected> {
        let phases = self.phases();
        let p = self.phase_of(t_ms);
        // A phase that has not learned enough yet is not judged by its
        // neighbours (it may be where the cycle turns).
        if self.windows[p] < PHASE_MIN_WINDOWS {
            return None;
        }
        let typical = self.typical_spread();
        let phase_ms = self.period_ms / phases as EpochMs;
        [phases - 1, 0, 1]
            .into_iter()
            .map(|d| (p + d) % phases)
            .filter(|&i| self.windows[i] >= PHASE_MIN_WINDOWS)
            .map(|i| {
                let level = f64::from(self.level[i]);
                let spread = (MEAN_AD_TO_SIGMA * f64::from(self.dev[i]))
                    .max(typical)
                    .max(spread_floor(level));
                Expected {
                    index: i,
                    minute: (i as EpochMs * phase_ms / 60_000) as u32,
                    level,
                    spread,
                }
            })
            .min_by(|a, b| {
                let za = ((x - a.level) / a.spread).abs();
                let zb = ((x - b.level) / b.spread).abs();
                za.total_cmp(&zb)
            })
    }

    /// Learn `x` at its phase, unless the profile finds it anomalous.
    fn learn(&mut self, x: f64, t_ms: EpochMs, expected: Option<&Expected>, s: &BaselineSettings) {
        let p = self.phase_of(t_ms);
        let first = *self.first_ms.get_or_insert(t_ms);
        self.latest_ms = self.latest_ms.max(t_ms);
        if let Some(e) = expected {
            // How the stream varies, and how much of it the profile leaves
            // unexplained (its misses included), averaged over about a day
            // of windows. A wild window adds about as much to both.
            self.seen += 1;
            let span = self.latest_ms.saturating_sub(first);
            let w = (1.0 / self.seen as f64)
                .max(span as f64 / (self.seen as f64 * DAY_MS as f64))
                .min(1.0);
            let r = x - e.level;
            let d = x - self.mean;
            self.mean += w * d;
            self.var = (1.0 - w) * (self.var + w * d * d);
            self.residual += w * (r * r - self.residual);
            if (r / e.spread).abs() >= s.warning_z {
                // Anomalous here, not learned: unless it keeps happening at
                // this phase, period after period. Then the phase learns
                // afresh (the cycle's shape has changed).
                self.off[p] = self.off[p].saturating_add(1);
                if self.off[p] >= PHASE_MIN_WINDOWS as u8 {
                    (self.windows[p], self.off[p]) = (0, 0);
                }
                self.update_use();
                return;
            }
            self.off[p] = 0;
        }
        self.update_use();
        let n = self.windows[p].saturating_add(1);
        self.windows[p] = n;
        let level = f64::from(self.level[p]);
        // Huber: a phase that has learned a little clips what it learns.
        let x = match expected {
            Some(e) if e.index == p && n > PHASE_MIN_WINDOWS => {
                x.clamp(level - CLIP * e.spread, level + CLIP * e.spread)
            }
            _ => x,
        };
        let w = (1.0 / f64::from(n)).max(s.alpha);
        if n == 1 {
            self.level[p] = x as f32;
            return;
        }
        let dev = f64::from(self.dev[p]);
        let wd = (1.0 / f64::from(n - 1)).max(s.alpha);
        self.dev[p] = (dev + wd * ((x - level).abs() - dev)) as f32;
        self.level[p] = (level + w * (x - level)) as f32;
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
        MEAN_AD_TO_SIGMA * v.iter().sum::<f64>() / v.len().max(1) as f64
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
            basis: Basis::Recent,
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
            assert!(b.observe(50.0 + noise(&mut seed), 0, &s).is_none());
        }
        assert!(!b.warming_up(&s));
        // Uniform(-1,1) has σ = 0.577; MAD×1.4826 ≈ 0.74 for it.
        let (level, spread) = median_and_spread(&b.history);
        assert!((level - 50.0).abs() < 0.5);
        // Uniform(-1,1): σ = 0.577; MAD × 1.4826 ≈ 0.74 for it.
        assert!(spread > 0.3 && spread < 1.2, "spread {spread}");
        let normal = b.observe(50.2, 0, &s).unwrap();
        assert_eq!(normal.level.severity, None);
        assert!(normal.level.score < 0.5);
        let spread = median_and_spread(&b.history).1;
        let warn = b.observe(50.0 + 5.0 * spread, 0, &s).unwrap();
        assert_eq!(warn.level.severity, Some(Severity::Warning));
        let alarm = b.observe(50.0 + 20.0 * spread, 0, &s).unwrap();
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
            b.observe(10.0 + 0.1 * noise(&mut seed), 0, &s);
        }
        let before = median_and_spread(&b.history);
        // A wild window is flagged and leaves the baseline as it was.
        let f = b.observe(1e6, 0, &s).unwrap();
        assert_eq!(f.level.severity, Some(Severity::Alarm));
        assert_eq!(median_and_spread(&b.history), before);
        // A change lasting as long as the warm-up is learned afresh.
        for _ in 0..s.warmup_windows {
            b.observe(20.0 + 0.1 * noise(&mut seed), 0, &s);
        }
        assert!(
            b.warming_up(&s),
            "the baseline did not start learning again"
        );
        for _ in 0..s.warmup_windows {
            b.observe(20.0 + 0.1 * noise(&mut seed), 0, &s);
        }
        let f = b.observe(20.0, 0, &s).unwrap();
        assert_eq!(f.level.severity, None, "the new level is normal now");
    }

    #[test]
    fn cusum_catches_a_creeping_drift_the_level_test_misses() {
        let s = settings();
        let mut b = Learned::default();
        let mut seed = 11;
        for _ in 0..20 {
            b.observe(noise(&mut seed), 0, &s);
        }
        let sigma = median_and_spread(&b.history).1;
        let mut drift_at = None;
        for i in 0..200 {
            // One spread per 100 windows: never a large z in one window.
            let x = noise(&mut seed) + sigma * i as f64 / 100.0;
            let f = b.observe(x, 0, &s).unwrap();
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
            if let Some(f) = b.observe(noise(&mut seed), 0, &s) {
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
    fn a_level_held_before_is_a_known_operating_state() {
        let s = settings();
        let mut b = Learned::default();
        let mut seed = 17;
        let mut t = 0;
        let mut step = |b: &mut Learned, x: f64| {
            t += 60_000;
            b.observe(x, t, &s)
        };
        for _ in 0..40 {
            step(&mut b, 10.0 + 0.1 * noise(&mut seed));
        }
        // A new load: anomalous until it has lasted a warm-up, then learned.
        let first = step(&mut b, 50.0 + 0.1 * noise(&mut seed)).unwrap();
        assert_eq!(first.level.severity, Some(Severity::Alarm));
        for _ in 0..60 {
            step(&mut b, 50.0 + 0.1 * noise(&mut seed));
        }
        // Back at the first level: normal, judged against that state.
        let back = step(&mut b, 10.0 + 0.1 * noise(&mut seed)).unwrap();
        assert_eq!(back.level.severity, None);
        assert_eq!(back.level.basis, Basis::Regime);
        assert!((back.level.level - 10.0).abs() < 0.1);
        // A level never held is still an anomaly.
        let other = step(&mut b, 30.0).unwrap();
        assert_eq!(other.level.severity, Some(Severity::Alarm));
        assert_eq!(other.level.basis, Basis::Recent);
    }

    /// A day of 15-minute windows: 20 at night, 80 from 09:00 to 18:00,
    /// with a ramp of one window each way.
    fn shift_day(day: i64, seed: &mut u64, broken: bool) -> Vec<(EpochMs, f64)> {
        (0..96)
            .map(|i| {
                let hour = i as f64 / 4.0;
                let level = match hour {
                    _ if broken => 20.0,
                    h if h == 9.0 || h == 18.0 => 50.0,
                    h if (9.0..18.0).contains(&h) => 80.0,
                    _ => 20.0,
                };
                let t = day * DAY_MS + i as i64 * 900_000 + 450_000;
                (t, level + noise(seed))
            })
            .collect()
    }

    #[test]
    fn a_daily_cycle_is_learned_and_a_day_that_breaks_it_is_flagged() {
        let s = settings();
        let mut b = Learned::default();
        let mut seed = 23;
        for day in 0..4 {
            for (t, x) in shift_day(day, &mut seed, false) {
                b.observe(x, t, &s);
            }
        }
        assert!(b.rhythm().is_some_and(|r| r.period_ms == DAY_MS));
        // Days that follow the cycle, ramps included: nothing flagged.
        for day in 4..7 {
            for (t, x) in shift_day(day, &mut seed, false) {
                let f = b.observe(x, t, &s).unwrap();
                assert_eq!(
                    f.level.severity,
                    None,
                    "day {day} at {t}: {f:?}",
                    f = f.level
                );
            }
        }
        // A day without the shift: flagged from 09:15 on, against what is
        // normal then (the ramp at 09:00 is the nearest fit of the three).
        let broken = shift_day(7, &mut seed, true);
        let flagged: Vec<_> = broken
            .iter()
            .filter_map(|&(t, x)| {
                let f = b.observe(x, t, &s).unwrap();
                f.level.severity.map(|_| (t, f.level.basis))
            })
            .collect();
        assert!(flagged.len() > 20, "only {} windows flagged", flagged.len());
        let (t, basis) = flagged[0];
        assert!(t < 7 * DAY_MS + 10 * 3_600_000, "first flagged at {t}");
        assert!(matches!(
            basis,
            Basis::Phase {
                period_ms: DAY_MS,
                ..
            }
        ));
        assert_eq!(basis.describe(), "the level learned for 09:00 UTC");
    }

    #[test]
    fn an_hourly_job_is_learned_as_a_rhythm() {
        // One-minute windows at 30, and 45 at minutes 4 and 5 of every hour.
        let s = settings();
        let mut b = Learned::default();
        let mut seed = 37;
        let mut at = |b: &mut Learned, minute: i64, seed: &mut u64| {
            let job = matches!(minute % 60, 4 | 5);
            let x = if job { 45.0 } else { 30.0 } + 0.3 * noise(seed);
            b.observe(x, minute * 60_000 + 30_000, &s)
        };
        for minute in 0..(6 * 60) {
            at(&mut b, minute, &mut seed);
        }
        assert!(b.rhythm().is_some_and(|r| r.period_ms == HOUR_MS));
        for minute in (6 * 60)..(9 * 60) {
            let f = at(&mut b, minute, &mut seed).unwrap();
            assert_eq!(f.level.severity, None, "minute {minute}: {:?}", f.level);
            assert!(
                matches!(
                    f.level.basis,
                    Basis::Phase {
                        period_ms: HOUR_MS,
                        ..
                    }
                ),
                "minute {minute}: {:?}",
                f.level.basis
            );
        }
    }

    #[test]
    fn noise_without_a_cycle_establishes_no_rhythm() {
        let s = settings();
        let mut b = Learned::default();
        let mut seed = 29;
        for i in 0..(4 * 96) {
            b.observe(50.0 + noise(&mut seed), i * 900_000, &s);
        }
        assert!(b.rhythm().is_none());
    }

    #[test]
    fn checkpoints_without_regimes_and_rhythms_still_load() {
        // The layout of a feature's state before regimes and rhythms.
        #[derive(Serialize)]
        struct Old {
            history: VecDeque<f64>,
            cusum_hi: f64,
            cusum_lo: f64,
            outside: u32,
        }
        let old = Old {
            history: (0..30).map(|i| 10.0 + (i % 3) as f64 * 0.1).collect(),
            cusum_hi: 0.5,
            cusum_lo: 0.0,
            outside: 0,
        };
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&old, &mut bytes).unwrap();
        let mut b: Learned = ciborium::de::from_reader(bytes.as_slice()).unwrap();
        let s = settings();
        assert!(!b.warming_up(&s));
        let f = b.observe(10.1, 0, &s).unwrap();
        assert_eq!(f.level.severity, None);
        assert_eq!(f.level.basis, Basis::Recent);
    }

    #[test]
    fn a_damaged_rhythm_in_a_checkpoint_is_learned_afresh() {
        // A checkpoint's bytes are not trusted: profiles whose phases do not
        // match their period, or whose per-phase lists differ in length.
        let s = settings();
        let mut seed = 31;
        let mut b = Learned::default();
        for i in 0..30 {
            b.observe(50.0 + noise(&mut seed), i * 60_000, &s);
        }
        let mut damaged = vec![b.clone(), b.clone(), b.clone()];
        damaged[0].rhythms[0].level.truncate(5);
        damaged[1].rhythms[1].period_ms = 7;
        damaged[2].rhythms[0].first_ms = Some(EpochMs::MIN);
        for mut d in damaged {
            let f = d.observe(50.0, 31 * 60_000, &s).unwrap();
            assert_eq!(f.level.severity, None);
            assert!(d.rhythms.iter().all(Rhythm::well_formed));
        }
    }

    #[test]
    fn t_score_matches_the_normal_limit() {
        // With many degrees of freedom, z = 1.96 is the 95 % two-sided point.
        assert!((two_sided_score(1.959964, 1e4) - 0.95).abs() < 1e-3);
        assert_eq!(two_sided_score(0.0, 10.0), 0.0);
        assert!(two_sided_score(f64::INFINITY, 10.0) == 1.0);
    }
}

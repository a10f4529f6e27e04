//! Time-domain features of a window, from streaming moments: values go in one
//! at a time (scalar readings) or a block at a time (waveform samples), and
//! nothing but a few sums is kept, whatever the window's length.

use serde::{Deserialize, Serialize};

/// Count, mean, central moments (M2..M4), extremes and the time/value
/// co-moment of the values seen so far.
///
/// Blocks are merged with the pairwise update of Chan, Golub & LeVeque (1979)
/// extended to the third and fourth moments by Pébay (2008), "Formulas for
/// robust, one-pass parallel computation of covariances and arbitrary-order
/// statistical moments", eqs. 2.1–2.4; a single value is a block of one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Moments {
    pub n: f64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
    pub min: f64,
    pub max: f64,
    /// Mean time (minutes, relative to `origin_ms` of the owner) and the
    /// co-moments with time, for the least-squares slope.
    pub mean_t: f64,
    pub ctt: f64,
    pub ctx: f64,
}

impl Default for Moments {
    fn default() -> Self {
        Moments {
            n: 0.0,
            mean: 0.0,
            m2: 0.0,
            m3: 0.0,
            m4: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean_t: 0.0,
            ctt: 0.0,
            ctx: 0.0,
        }
    }
}

impl Moments {
    /// Add one value observed at `t_min` minutes.
    pub fn push(&mut self, t_min: f64, x: f64) {
        self.merge(&Moments {
            n: 1.0,
            mean: x,
            min: x,
            max: x,
            mean_t: t_min,
            ..Moments::default()
        });
    }

    /// Add a block of evenly spaced samples, the first at `t0_min` minutes and
    /// one every `dt_min` minutes. Two passes over the block (mean, then
    /// central sums) keep the sums accurate for long blocks.
    pub fn push_block(&mut self, t0_min: f64, dt_min: f64, samples: &[f32]) {
        if samples.is_empty() {
            return;
        }
        let n = samples.len() as f64;
        let (mut sum, mut min, mut max) = (0.0f64, f64::INFINITY, f64::NEG_INFINITY);
        for &s in samples {
            let x = s as f64;
            sum += x;
            min = min.min(x);
            max = max.max(x);
        }
        let mean = sum / n;
        let (mut m2, mut m3, mut m4, mut sx_i) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let mid_i = (n - 1.0) / 2.0;
        for (i, &s) in samples.iter().enumerate() {
            let d = s as f64 - mean;
            let d2 = d * d;
            m2 += d2;
            m3 += d2 * d;
            m4 += d2 * d2;
            sx_i += d * (i as f64 - mid_i);
        }
        // Σ(i − mean_i)² for i = 0..n−1 is n(n²−1)/12.
        let cii = n * (n * n - 1.0) / 12.0;
        self.merge(&Moments {
            n,
            mean,
            m2,
            m3,
            m4,
            min,
            max,
            mean_t: t0_min + mid_i * dt_min,
            ctt: cii * dt_min * dt_min,
            ctx: sx_i * dt_min,
        });
    }

    /// Combine with the moments of another, disjoint set of values.
    pub fn merge(&mut self, b: &Moments) {
        if b.n == 0.0 {
            return;
        }
        if self.n == 0.0 {
            *self = *b;
            return;
        }
        let a = *self;
        let n = a.n + b.n;
        let d = b.mean - a.mean;
        let d2 = d * d;
        let (na, nb) = (a.n, b.n);
        self.n = n;
        self.mean = a.mean + d * nb / n;
        self.m2 = a.m2 + b.m2 + d2 * na * nb / n;
        self.m3 = a.m3
            + b.m3
            + d2 * d * na * nb * (na - nb) / (n * n)
            + 3.0 * d * (na * b.m2 - nb * a.m2) / n;
        self.m4 = a.m4
            + b.m4
            + d2 * d2 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n)
            + 6.0 * d2 * (na * na * b.m2 + nb * nb * a.m2) / (n * n)
            + 4.0 * d * (na * b.m3 - nb * a.m3) / n;
        let dt = b.mean_t - a.mean_t;
        self.mean_t = a.mean_t + dt * nb / n;
        self.ctt = a.ctt + b.ctt + dt * dt * na * nb / n;
        self.ctx = a.ctx + b.ctx + dt * d * na * nb / n;
        self.min = a.min.min(b.min);
        self.max = a.max.max(b.max);
    }

    /// The window's features. Features that are undefined for these values
    /// (spread of a single value, shape of a constant) are left out.
    pub fn features(&self, out: &mut Vec<(String, f64)>) {
        if self.n == 0.0 {
            return;
        }
        let n = self.n;
        let mut put = |name: &str, v: f64| {
            if v.is_finite() {
                out.push((name.to_string(), v));
            }
        };
        put("count", n);
        put("mean", self.mean);
        put("min", self.min);
        put("max", self.max);
        let var_pop = self.m2 / n;
        // Root mean square of the values themselves (not centred): E[x²] = mean² + var.
        let rms = (self.mean * self.mean + var_pop).sqrt();
        put("rms", rms);
        let peak = self.max.abs().max(self.min.abs());
        put("peak", peak);
        put("peak_to_peak", self.max - self.min);
        if rms > 0.0 {
            put("crest_factor", peak / rms);
        }
        if n >= 2.0 {
            // Sample standard deviation (n − 1).
            put("std", (self.m2 / (n - 1.0)).sqrt());
        }
        // Shape needs spread that is more than rounding noise.
        if self.m2 > f64::EPSILON * n * self.mean.abs().max(1.0) * self.mean.abs().max(1.0) {
            // Pearson's kurtosis (3 for a normal distribution, as vibration
            // practice quotes it) and the moment coefficient of skewness.
            put("kurtosis", n * self.m4 / (self.m2 * self.m2));
            put("skewness", n.sqrt() * self.m3 / self.m2.powf(1.5));
        }
        if self.ctt > 0.0 {
            // Least-squares slope, units per minute (times are in minutes).
            put("slope", self.ctx / self.ctt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(m: &Moments) -> std::collections::BTreeMap<String, f64> {
        let mut v = Vec::new();
        m.features(&mut v);
        v.into_iter().collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn hand_computed_values() {
        // 2, 4, 4, 4, 5, 5, 7, 9 at minutes 0..7: mean 5, population variance 4.
        let xs = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let mut m = Moments::default();
        for (i, x) in xs.iter().enumerate() {
            m.push(i as f64, *x);
        }
        let f = features(&m);
        assert_eq!(f["count"], 8.0);
        assert!(close(f["mean"], 5.0));
        assert_eq!(f["min"], 2.0);
        assert_eq!(f["max"], 9.0);
        assert!(close(f["std"], (32.0f64 / 7.0).sqrt()));
        assert!(close(f["rms"], (232.0f64 / 8.0).sqrt()));
        assert_eq!(f["peak"], 9.0);
        assert_eq!(f["peak_to_peak"], 7.0);
        assert!(close(f["crest_factor"], 9.0 / (29.0f64).sqrt()));
        // Central moments by hand: Σd³ = -27-1-1-1+0+0+8+64 = 42, Σd⁴ = 81+1+1+1+16+256 = 356.
        assert!(close(f["skewness"], 8f64.sqrt() * 42.0 / 32f64.powf(1.5)));
        assert!(close(f["kurtosis"], 8.0 * 356.0 / (32.0 * 32.0)));
        // Slope by the textbook formula Σ(t−t̄)(x−x̄) / Σ(t−t̄)².
        let tbar = 3.5;
        let num: f64 = xs
            .iter()
            .enumerate()
            .map(|(i, x)| (i as f64 - tbar) * (x - 5.0))
            .sum();
        let den: f64 = (0..8).map(|i| (i as f64 - tbar).powi(2)).sum();
        assert!(close(f["slope"], num / den));
    }

    #[test]
    fn blocks_equal_single_values() {
        let mut rng = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            ((rng >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32
        };
        let samples: Vec<f32> = (0..1000).map(|i| next() + (i % 7) as f32).collect();
        let dt = 1.0 / 600.0;
        let mut one = Moments::default();
        for (i, s) in samples.iter().enumerate() {
            one.push(2.0 + i as f64 * dt, *s as f64);
        }
        let mut blocks = Moments::default();
        for (k, chunk) in samples.chunks(333).enumerate() {
            blocks.push_block(2.0 + (k * 333) as f64 * dt, dt, chunk);
        }
        let (a, b) = (features(&one), features(&blocks));
        assert_eq!(a.len(), b.len());
        for (name, v) in &a {
            assert!(
                (v - b[name]).abs() <= 1e-7 * (1.0 + v.abs()),
                "{name}: {v} vs {}",
                b[name]
            );
        }
    }

    #[test]
    fn gaussian_kurtosis_is_three_and_crest_of_sine() {
        // A sine sampled over whole periods: RMS = A/√2, crest factor √2, kurtosis 1.5.
        let samples: Vec<f32> = (0..10_000)
            .map(|i| (2.0 * std::f64::consts::PI * i as f64 / 100.0).sin() as f32 * 3.0)
            .collect();
        let mut m = Moments::default();
        m.push_block(0.0, 1e-4, &samples);
        let f = features(&m);
        assert!((f["rms"] - 3.0 / 2f64.sqrt()).abs() < 1e-4);
        assert!((f["crest_factor"] - 2f64.sqrt()).abs() < 1e-3);
        assert!((f["kurtosis"] - 1.5).abs() < 1e-3);
        assert!(f["skewness"].abs() < 1e-6);
        // Slope of A·sin(2πft) over [0, T] by least squares: −12A/(2πf·T²)·T/1
        // = −6A/(π·cycles) per unit time, with T = 1 minute and 100 cycles.
        let expected = -6.0 * 3.0 / (std::f64::consts::PI * 100.0);
        assert!(
            (f["slope"] - expected).abs() < 0.02 * expected.abs(),
            "slope {}",
            f["slope"]
        );
    }

    #[test]
    fn undefined_features_are_absent() {
        let mut m = Moments::default();
        m.push(0.0, 4.0);
        let f = features(&m);
        assert_eq!(f["count"], 1.0);
        assert!(!f.contains_key("std") && !f.contains_key("kurtosis"));
        assert!(!f.contains_key("slope"));
        m.push(0.0, 4.0);
        let f = features(&m);
        assert_eq!(f["std"], 0.0);
        assert!(!f.contains_key("kurtosis"), "a constant has no shape");
        assert!(features(&Moments::default()).is_empty());
    }
}

//! A small deterministic random number generator: a seed in, a reproducible
//! stream of uniform and normal deviates out, the same on every platform.
//!
//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
//! generators", OOPSLA 2014) passes BigCrush, needs one word of state and
//! makes independent streams from one seed cheap, which is all a simulator
//! needs; normal deviates come from the Box–Muller transform.

use std::f64::consts::TAU;

/// SplitMix64's increment: the golden ratio in 64 bits.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
    /// Box–Muller makes normal deviates in pairs; the second waits here.
    spare: Option<f64>,
}

/// SplitMix64's output function (a strong 64-bit mixer).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng {
            state: seed,
            spare: None,
        }
    }

    /// Stream number `index` of `seed`: device i draws from stream i, so
    /// what a device sends does not depend on how many others there are.
    pub fn stream(seed: u64, index: u64) -> Rng {
        Rng::new(mix(
            seed ^ mix(index.wrapping_add(1).wrapping_mul(GOLDEN_GAMMA))
        ))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }

    /// Uniform in [0, 1), with 53 random bits (all an f64 holds).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform in 0..n (n > 0); the modulo bias is below 2^-40 for the
    /// small n a simulator uses.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Standard normal deviate (mean 0, standard deviation 1), by Box–Muller:
    /// for independent uniforms u1 in (0, 1] and u2, √(−2 ln u1)·cos(2π u2)
    /// and √(−2 ln u1)·sin(2π u2) are independent standard normals.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        // 1 − uniform is in (0, 1]: the logarithm stays finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        self.spare = Some(r * (TAU * u2).sin());
        r * (TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_streams_differ() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::new(42);
                move |_| r.next_u64()
            })
            .collect();
        let mut r = Rng::new(42);
        assert!(a.iter().all(|&x| x == r.next_u64()));
        let mut s0 = Rng::stream(42, 0);
        let mut s1 = Rng::stream(42, 1);
        assert_ne!(s0.next_u64(), s1.next_u64());
    }

    #[test]
    fn normal_has_unit_variance_and_uniform_its_range() {
        let mut r = Rng::new(7);
        let n = 200_000;
        let (mut sum, mut sq) = (0.0, 0.0);
        for _ in 0..n {
            let z = r.normal();
            sum += z;
            sq += z * z;
        }
        let mean = sum / n as f64;
        let var = sq / n as f64 - mean * mean;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        for _ in 0..10_000 {
            let u = r.uniform();
            assert!((0.0..1.0).contains(&u));
            assert!(r.below(3) < 3);
        }
    }
}

//! Exponential reconnect backoff with jitter, so that a fleet of gateways
//! does not reconnect to a recovering broker in lockstep.

use std::time::Duration;

pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            min,
            max,
            current: min,
            rng: seed | 1,
        }
    }

    /// The next delay: uniform in [d/2, d], then d doubles up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: plenty for jitter, no dependency.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        let d = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        d.mul_f64(0.5 + 0.5 * frac)
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let mut b = Backoff::new(min, max, 42);
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= min / 2 && delays[0] <= min);
        assert!(delays[7] >= max / 2 && delays[7] <= max);
        assert!(delays.iter().all(|d| *d <= max));
        b.reset();
        assert!(b.next_delay() <= min);
    }
}

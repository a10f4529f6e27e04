//! At most one warning per key per period, with a count of what was held back.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

pub struct RateLimit<K> {
    period: Duration,
    last: HashMap<K, (Instant, u64)>,
}

impl<K: Hash + Eq> RateLimit<K> {
    pub fn new(period: Duration) -> Self {
        RateLimit {
            period,
            last: HashMap::new(),
        }
    }

    /// `Some(suppressed)` when a warning for `key` may be logged at `now`,
    /// where `suppressed` is how many were held back since the last one.
    pub fn check(&mut self, key: K, now: Instant) -> Option<u64> {
        match self.last.get_mut(&key) {
            Some((at, held)) if now.duration_since(*at) < self.period => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            None => {
                self.last.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_period_per_key() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(Duration::from_secs(10));
        assert_eq!(rl.check("a", t0), Some(0));
        assert_eq!(rl.check("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(rl.check("a", t0 + Duration::from_secs(2)), None);
        assert_eq!(rl.check("b", t0 + Duration::from_secs(2)), Some(0));
        assert_eq!(rl.check("a", t0 + Duration::from_secs(11)), Some(2));
        assert_eq!(rl.check("a", t0 + Duration::from_secs(12)), None);
    }
}

//! Exponential backoff with jitter, for reconnecting to control: the delay
//! doubles from `base` up to `cap`, and each wait is drawn uniformly from
//! the upper half of it, so nodes that lost control together do not all
//! come back in the same instant.

use rand::Rng;
use std::time::Duration;

/// Backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay, drawn with `rng`.
    pub fn next_with(&mut self, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = exp / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// The next delay, with the thread's RNG.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(&mut rand::rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn grows_caps_and_resets() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let mut b = Backoff::new(base, cap);
        let mut prev_bound = Duration::ZERO;
        for i in 0..10u32 {
            let bound = (base * 2u32.pow(i)).min(cap);
            let d = b.next_with(&mut rng);
            assert!(d >= bound / 2 && d <= bound, "{i}: {d:?} vs {bound:?}");
            assert!(bound >= prev_bound);
            prev_bound = bound;
        }
        b.reset();
        assert!(b.next_with(&mut rng) <= base);
    }
}

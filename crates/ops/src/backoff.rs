//! Jittered exponential backoff for reconnecting: [`Backoff`] is the policy
//! (sans-IO: the caller draws the random number and owns the clock);
//! [`Retries`] counts the attempts of one reconnect loop and draws the
//! jitter itself.

use rand::Rng;
use std::time::Duration;

/// Reconnection delays: `base * 2^attempt`, capped at `max`, with "equal
/// jitter" (a uniformly random delay between half and all of that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay before jitter.
    pub base: Duration,
    /// Largest delay before jitter.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based); `unit` is a random
    /// number in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
        let cap = exp.min(self.max);
        let unit = unit.clamp(0.0, 1.0);
        cap / 2 + cap.mul_f64(unit / 2.0)
    }
}

/// The attempts of one reconnect loop under a [`Backoff`] policy.
#[derive(Debug, Clone)]
pub struct Retries {
    policy: Backoff,
    attempt: u32,
}

impl Retries {
    /// Starts at `base`, never above `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Retries {
            policy: Backoff { base, max },
            attempt: 0,
        }
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay, drawn with `rng`.
    pub fn next_with(&mut self, rng: &mut impl Rng) -> Duration {
        let d = self.policy.delay(self.attempt, rng.random::<f64>());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// The next delay, with the thread's RNG.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(&mut rand::rng())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_jitters() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(400));
        assert_eq!(b.delay(30, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(1));
        let mut prev = Duration::ZERO;
        for a in 0..10 {
            let d = b.delay(a, 0.5);
            assert!(d >= prev);
            prev = d;
        }
    }

    #[test]
    fn retries_grow_cap_and_reset() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        let mut r = Retries::new(base, cap);
        for i in 0..10u32 {
            let bound = (base * 2u32.pow(i)).min(cap);
            let d = r.next_with(&mut rng);
            assert!(d >= bound / 2 && d <= bound, "{i}: {d:?} vs {bound:?}");
        }
        r.reset();
        assert!(r.next_with(&mut rng) <= base);
    }
}

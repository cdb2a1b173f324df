//! Token buckets, sans-IO: the caller passes the time.

use std::time::{Duration, Instant};

/// A rate in bytes (or events) per second with a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Sustained units per second.
    pub per_sec: u32,
    /// Units available at once.
    pub burst: u32,
}

/// A token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst),
            last: now,
        }
    }

    /// Takes `n` units if the bucket holds them at `now`; otherwise takes
    /// nothing and says no.
    pub fn take(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * f64::from(self.rate.per_sec))
            .min(f64::from(self.rate.burst));
        let n = n as f64;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// How long until `n` units are there (zero if they are).
    pub fn wait_for(&self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last);
        let have = (self.tokens + elapsed.as_secs_f64() * f64::from(self.rate.per_sec))
            .min(f64::from(self.rate.burst));
        let missing = n as f64 - have;
        if missing <= 0.0 || self.rate.per_sec == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(missing / f64::from(self.rate.per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            Rate {
                per_sec: 1000,
                burst: 3000,
            },
            t0,
        );
        assert!(b.take(3000, t0));
        assert!(!b.take(1, t0));
        assert_eq!(b.wait_for(500, t0), Duration::from_millis(500));
        let t1 = t0 + Duration::from_millis(500);
        assert!(!b.take(600, t1), "only 500 refilled");
        assert!(b.take(500, t1));
        // Never above the burst however long the pause.
        let t2 = t1 + Duration::from_secs(3600);
        assert!(!b.take(3001, t2));
        assert!(b.take(3000, t2));
    }
}

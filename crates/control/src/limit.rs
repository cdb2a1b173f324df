//! Refusal rate limiting per source address.
//!
//! Every refused request (a bad credential anywhere; any client error on the
//! routes that need no credential: registration and the OAuth token grant)
//! costs its source one token of a bucket that refills at a steady rate.
//! While a source's bucket is empty, its requests are answered `429 Too
//! Many Requests` with `Retry-After` before any work is done (no database
//! read, no audit entry), so a flood of bad credentials can neither fill
//! the disk nor slow other clients down. Successful requests cost nothing.
//!
//! IPv6 sources are grouped by /64 (one subscriber's allocation); IPv4 by
//! address. The table is bounded: past [`MAX_SOURCES`] entries, full
//! buckets are forgotten first, then the oldest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most source addresses remembered at once.
pub const MAX_SOURCES: usize = 65_536;

/// A source's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Refusals allowed per source: a burst of `per_minute`, refilled at
/// `per_minute` a minute. Zero turns limiting off.
#[derive(Debug)]
pub struct RefusalLimiter {
    per_minute: u32,
    sources: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The key a source address is counted under.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl RefusalLimiter {
    /// A limiter allowing `per_minute` refusals a minute per source.
    pub fn new(per_minute: u32) -> Self {
        RefusalLimiter {
            per_minute,
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn capacity(&self) -> f64 {
        f64::from(self.per_minute)
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.capacity() / 60.0).min(self.capacity());
        b.at = now;
    }

    /// `Err(wait)` while `ip` has no refusal left: how long until it has one.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = sources.get_mut(&source_key(ip)) else {
            return Ok(());
        };
        self.refill(b, now);
        if b.tokens >= 1.0 {
            Ok(())
        } else {
            let missing = 1.0 - b.tokens;
            Err(Duration::from_secs_f64(missing * 60.0 / self.capacity()))
        }
    }

    /// Counts one refusal against `ip`.
    pub fn charge(&self, ip: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let key = source_key(ip);
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if !sources.contains_key(&key) && sources.len() >= MAX_SOURCES {
            self.evict(&mut sources, now);
        }
        let cap = self.capacity();
        let b = sources.entry(key).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        self.refill(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// Makes room: forgets every bucket that has refilled, or else the one
    /// charged longest ago.
    fn evict(&self, sources: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        let cap = self.capacity();
        let per_sec = cap / 60.0;
        sources.retain(|_, b| {
            let refilled = b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_sec;
            refilled < cap
        });
        if sources.len() >= MAX_SOURCES {
            // The oldest charge goes (ties broken by address: one answer).
            #[allow(clippy::disallowed_methods)]
            let oldest = sources
                .iter()
                .min_by_key(|(k, b)| (b.at, **k))
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                sources.remove(&oldest);
            }
        }
    }

    /// How many sources are remembered.
    pub fn tracked(&self) -> usize {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Routes that take no credential: every client error there is a refusal.
const UNAUTHENTICATED: &[&str] = &["/machine/v1/register", "/api/v1/oauth/token"];

/// Whether an answer to `path` counts as a refusal of its source.
fn is_refusal(path: &str, status: http::StatusCode) -> bool {
    match status.as_u16() {
        401 => true,
        400 | 403 | 409 | 413 | 415 | 422 => UNAUTHENTICATED.contains(&path),
        _ => false,
    }
}

/// The middleware: answers `429` to a source with no refusal left, and
/// charges every refusal to its source.
pub(crate) async fn gate(
    axum::extract::State(app): axum::extract::State<std::sync::Arc<crate::App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(crate::server::PeerAddr(peer)) = req.extensions().get().copied() else {
        return next.run(req).await;
    };
    let ip = peer.ip();
    if let Err(wait) = app.limiter.check(ip, Instant::now()) {
        app.metrics.rate_limited.inc();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let body = axum::Json(gatehouse_proto::control::ApiError {
            error: format!("too many refused requests from {ip}; retry in {secs} s"),
        });
        return (
            http::StatusCode::TOO_MANY_REQUESTS,
            [(http::header::RETRY_AFTER, secs.max(1).to_string())],
            body,
        )
            .into_response();
    }
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    if is_refusal(&path, resp.status()) {
        app.limiter.charge(ip, Instant::now());
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_then_a_steady_rate() {
        let l = RefusalLimiter::new(6);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..6 {
            assert!(l.check(a, t0).is_ok());
            l.charge(a, t0);
        }
        let wait = l.check(a, t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(10));
        // Another source is not affected.
        assert!(l.check(ip("192.0.2.2"), t0).is_ok());
        // One token back after 10 s (6 a minute).
        assert!(l.check(a, t0 + Duration::from_secs(9)).is_err());
        assert!(l.check(a, t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let l = RefusalLimiter::new(1);
        let t0 = Instant::now();
        l.charge(ip("2001:db8:1:2::1"), t0);
        assert!(l.check(ip("2001:db8:1:2::ffff"), t0).is_err());
        assert!(l.check(ip("2001:db8:1:3::1"), t0).is_ok());
        l.charge(ip("::ffff:192.0.2.9"), t0);
        assert!(l.check(ip("192.0.2.9"), t0).is_err());
    }

    #[test]
    fn zero_turns_it_off() {
        let l = RefusalLimiter::new(0);
        let t0 = Instant::now();
        for _ in 0..100 {
            l.charge(ip("192.0.2.1"), t0);
        }
        assert!(l.check(ip("192.0.2.1"), t0).is_ok());
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn the_table_stays_bounded() {
        let l = RefusalLimiter::new(2);
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            l.charge(IpAddr::V4(std::net::Ipv4Addr::from(i)), t0);
        }
        assert!(l.tracked() <= MAX_SOURCES);
        // Once buckets refill, they are the first to go.
        l.charge(ip("203.0.113.1"), t0 + Duration::from_secs(120));
        assert!(l.tracked() < 10, "{}", l.tracked());
    }
}

//! What one connection is doing, as far as its timeouts care: a sans-IO
//! core that takes the time as an argument and says when the connection
//! should be closed. The shell ([`crate::conn`]) feeds it request starts and
//! ends (from the service) and reads (from the socket).

use crate::Limits;
use std::time::Duration;
use tokio::time::Instant;

/// Why a connection's deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No request head arrived (or finished arriving) in time.
    HeaderRead,
    /// No request for the idle timeout.
    Idle,
}

/// The state of one connection.
#[derive(Debug)]
pub(crate) struct Activity {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    /// The deadline the watchdog is sleeping until (`None`: it waits for a
    /// change). A change needs to wake it only if it brings the deadline
    /// before this one.
    armed: Option<Instant>,
    /// Requests whose response has not ended.
    active: usize,
    /// When the connection last had no request in flight (or was opened).
    idle_since: Instant,
    /// Whether a request was ever received.
    served: bool,
    /// Whether the requests are HTTP/2 (streams: bytes while idle are
    /// pings and window updates, not the start of a request head).
    http2: bool,
    /// HTTP/1.1: when the first byte after going idle arrived, that is,
    /// when the next request head started.
    head_started: Option<Instant>,
}

impl Activity {
    /// A connection opened (its handshake done) at `now`.
    pub(crate) fn new(now: Instant, limits: &Limits) -> Self {
        Activity {
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            armed: None,
            active: 0,
            idle_since: now,
            served: false,
            http2: false,
            head_started: None,
        }
    }

    /// A request head was received.
    pub(crate) fn request_started(&mut self, http2: bool) {
        self.active += 1;
        self.served = true;
        self.http2 = http2;
        self.head_started = None;
    }

    /// A request's response ended (or was dropped) at `now`.
    pub(crate) fn request_ended(&mut self, now: Instant) {
        self.active = self.active.saturating_sub(1);
        if self.active == 0 {
            self.idle_since = now;
            self.head_started = None;
        }
    }

    /// Whether a read would start the next HTTP/1.1 request head.
    pub(crate) fn watching_reads(&self) -> bool {
        self.active == 0 && self.served && !self.http2 && self.head_started.is_none()
    }

    /// Bytes arrived at `now`.
    pub(crate) fn bytes_read(&mut self, now: Instant) {
        if self.watching_reads() {
            self.head_started = Some(now);
        }
    }

    /// The watchdog is about to sleep until the current deadline; returns
    /// it.
    pub(crate) fn arm(&mut self) -> Option<(Instant, Expiry)> {
        let d = self.deadline();
        self.armed = d.map(|(at, _)| at);
        d
    }

    /// Whether the watchdog must be woken: the deadline is now earlier
    /// than the one it sleeps until, or it has none.
    pub(crate) fn wake_watchdog(&self) -> bool {
        match (self.deadline(), self.armed) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some((at, _)), Some(armed)) => at < armed,
        }
    }

    /// When the connection should be closed, and why; `None` while a
    /// request is in flight.
    ///
    /// - before its first request, a connection has the header-read
    ///   timeout (from the end of its TLS handshake) to send a whole head;
    /// - an HTTP/1.1 connection whose next head has started has the
    ///   header-read timeout from that head's first byte;
    /// - otherwise an idle connection is closed after the idle timeout.
    pub(crate) fn deadline(&self) -> Option<(Instant, Expiry)> {
        if self.active > 0 {
            return None;
        }
        if !self.served {
            return Some((
                self.idle_since + self.header_read_timeout,
                Expiry::HeaderRead,
            ));
        }
        if let Some(t) = self.head_started {
            return Some((t + self.header_read_timeout, Expiry::HeaderRead));
        }
        Some((self.idle_since + self.idle_timeout, Expiry::Idle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn first_request_must_arrive_within_the_header_timeout() {
        let t0 = Instant::now();
        let mut a = Activity::new(t0, &limits());
        assert_eq!(a.deadline(), Some((t0 + s(5), Expiry::HeaderRead)));
        // Bytes before the first request do not move the deadline: a
        // trickle gets no more time than silence.
        a.bytes_read(t0 + s(1));
        assert_eq!(a.deadline(), Some((t0 + s(5), Expiry::HeaderRead)));
        a.request_started(false);
        assert_eq!(a.deadline(), None);
    }

    #[test]
    fn http1_idle_then_a_new_head() {
        let t0 = Instant::now();
        let mut a = Activity::new(t0, &limits());
        a.request_started(false);
        // A long request (a slow upload, a long download) has no deadline.
        a.bytes_read(t0 + s(100));
        assert_eq!(a.deadline(), None);
        a.request_ended(t0 + s(200));
        assert_eq!(a.deadline(), Some((t0 + s(260), Expiry::Idle)));
        assert!(a.watching_reads());
        a.bytes_read(t0 + s(230));
        assert!(!a.watching_reads());
        assert_eq!(a.deadline(), Some((t0 + s(235), Expiry::HeaderRead)));
        // More bytes of the same head change nothing.
        a.bytes_read(t0 + s(234));
        assert_eq!(a.deadline(), Some((t0 + s(235), Expiry::HeaderRead)));
        a.request_started(false);
        a.request_ended(t0 + s(240));
        assert_eq!(a.deadline(), Some((t0 + s(300), Expiry::Idle)));
    }

    #[test]
    fn http2_bytes_while_idle_are_not_a_head() {
        let t0 = Instant::now();
        let mut a = Activity::new(t0, &limits());
        a.request_started(true);
        a.request_started(true);
        a.request_ended(t0 + s(1));
        assert_eq!(a.deadline(), None, "one stream still open");
        a.request_ended(t0 + s(2));
        assert!(!a.watching_reads());
        a.bytes_read(t0 + s(3));
        assert_eq!(a.deadline(), Some((t0 + s(62), Expiry::Idle)));
    }

    #[test]
    fn the_watchdog_is_woken_only_for_an_earlier_deadline() {
        let t0 = Instant::now();
        let mut a = Activity::new(t0, &limits());
        assert!(a.wake_watchdog(), "it has no deadline yet");
        assert_eq!(a.arm(), Some((t0 + s(5), Expiry::HeaderRead)));
        assert!(!a.wake_watchdog());
        // Requests coming and going push the deadline later: no wake-up,
        // the watchdog finds the later deadline when it wakes on its own.
        a.request_started(false);
        assert!(!a.wake_watchdog());
        a.request_ended(t0 + s(1));
        assert!(!a.wake_watchdog());
        assert_eq!(a.arm(), Some((t0 + s(61), Expiry::Idle)));
        // A head starting brings it earlier.
        a.bytes_read(t0 + s(2));
        assert!(a.wake_watchdog());
        a.arm();
        a.request_started(false);
        assert_eq!(a.arm(), None);
        a.request_ended(t0 + s(3));
        assert!(a.wake_watchdog(), "it waits with no deadline");
    }
}

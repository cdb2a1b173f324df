//! Finding dead tunnel connections quickly (sans-IO: the caller owns the
//! clock and the control stream).
//!
//! A connector whose process is gone sends nothing more, and QUIC only
//! notices after its idle timeout (three heartbeats, seconds). A request on
//! such a connection would wait all that time. So the edge watches each
//! request: when nothing at all has arrived from the connector for
//! [`probe_after`] since the request was sent (on QUIC even a live
//! connector's acknowledgements count), the connection becomes *suspect*:
//! it gets no new requests while another connection can take them, and the
//! edge sends a `Ping` on its control stream. A live connector answers at
//! once. A connection from which nothing at all has arrived by
//! [`probe_timeout`] (neither the answer nor, on QUIC, any datagram: a busy
//! connector still acknowledges) is closed, which fails its streams so that
//! their requests can be retried on another connector.

use gatehouse_proto::Frame;
use std::time::{Duration, Instant};

/// The shortest time a request waits, hearing nothing from the connector,
/// before its connection is probed. A live QUIC peer acknowledges a request
/// within one round trip plus its acknowledgement delay (25 ms).
pub const PROBE_AFTER_MIN: Duration = Duration::from_millis(100);

/// The shortest time a probe may take before the connection is declared
/// dead. It covers one lost packet and a busy connector.
pub const PROBE_TIMEOUT_MIN: Duration = Duration::from_millis(250);

/// Round-trip time assumed before any has been measured (quinn's initial
/// estimate too).
pub const INITIAL_RTT: Duration = Duration::from_millis(100);

/// How long a request may hear nothing from its connection before the
/// connection is probed.
pub fn probe_after(rtt: Duration) -> Duration {
    PROBE_AFTER_MIN + rtt.saturating_mul(2)
}

/// How long a probe may stay unanswered.
pub fn probe_timeout(rtt: Duration) -> Duration {
    PROBE_TIMEOUT_MIN + rtt.saturating_mul(4)
}

/// The next smoothed round-trip time after a sample (RFC 6298's gain of
/// 1/8).
pub fn smoothed(srtt: Duration, sample: Duration) -> Duration {
    (srtt.saturating_mul(7) + sample) / 8
}

/// What [`Prober::start`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Send `Ping` with this nonce on the control stream.
    Send(u64),
    /// A probe is already out; its answer or deadline decides.
    Pending,
}

/// What a frame from the connector meant for the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// No probe was out.
    Idle,
    /// The probe is over: the connector is alive. `rtt` is the round trip
    /// when the frame was the probe's `Pong`.
    Answered {
        /// Time from the probe's `Ping` to its `Pong`.
        rtt: Option<Duration>,
    },
}

/// What an expired probe means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing arrived from the connector since the probe left: it is dead.
    Dead,
    /// No answer, but something else arrived: the connector is alive (and
    /// busy); the probe is over.
    Alive,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    nonce: u64,
    sent: Instant,
    deadline: Instant,
    /// The connection's count of things heard when the probe left.
    mark: u64,
}

/// Probe state of one connection.
#[derive(Debug, Default, Clone)]
pub struct Prober {
    last_nonce: u64,
    out: Option<Outstanding>,
}

impl Prober {
    /// A connection was suspected at `now`: starts a probe unless one is
    /// out. `mark` counts what has arrived from the connector so far (any
    /// growth proves it alive).
    pub fn start(&mut self, now: Instant, rtt: Duration, mark: u64) -> Start {
        if self.out.is_some() {
            return Start::Pending;
        }
        self.last_nonce = self.last_nonce.wrapping_add(1);
        self.out = Some(Outstanding {
            nonce: self.last_nonce,
            sent: now,
            deadline: now + probe_timeout(rtt),
            mark,
        });
        Start::Send(self.last_nonce)
    }

    /// A frame arrived on the control stream: any frame proves the
    /// connector alive and ends the probe.
    pub fn heard(&mut self, frame: &Frame, now: Instant) -> Heard {
        let Some(out) = self.out.take() else {
            return Heard::Idle;
        };
        let rtt = match frame {
            Frame::Pong(n) if *n == out.nonce => Some(now.saturating_duration_since(out.sent)),
            _ => None,
        };
        Heard::Answered { rtt }
    }

    /// When the probe out expires, if one is.
    pub fn deadline(&self) -> Option<Instant> {
        self.out.map(|o| o.deadline)
    }

    /// At `now`, with `mark` counting what has arrived from the connector:
    /// `None` while no probe is out or its deadline is ahead; else the
    /// verdict, and the probe is over.
    pub fn expire(&mut self, now: Instant, mark: u64) -> Option<Expiry> {
        let out = self.out.filter(|o| now >= o.deadline)?;
        self.out = None;
        Some(if mark == out.mark {
            Expiry::Dead
        } else {
            Expiry::Alive
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(10);

    #[test]
    fn a_probe_answered_in_time_clears_and_measures() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        assert_eq!(p.deadline(), None);
        assert_eq!(p.start(t0, RTT, 5), Start::Send(1));
        assert_eq!(p.start(t0, RTT, 5), Start::Pending, "one probe at a time");
        assert_eq!(p.deadline(), Some(t0 + probe_timeout(RTT)));
        let early = t0 + probe_timeout(RTT) - Duration::from_millis(1);
        assert_eq!(p.expire(early, 5), None);
        let ms = Duration::from_millis;
        assert_eq!(
            p.heard(&Frame::Pong(1), t0 + ms(12)),
            Heard::Answered { rtt: Some(ms(12)) }
        );
        assert_eq!(p.deadline(), None);
        assert_eq!(p.expire(t0 + ms(10_000), 5), None);
        assert_eq!(p.heard(&Frame::Pong(1), t0 + ms(13)), Heard::Idle);
        // The next probe carries a new nonce.
        assert_eq!(p.start(t0 + ms(20), RTT, 5), Start::Send(2));
    }

    #[test]
    fn any_frame_proves_life_but_only_the_pong_gives_a_round_trip() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        p.start(t0, RTT, 0);
        assert_eq!(
            p.heard(&Frame::Ping(77), t0 + RTT),
            Heard::Answered { rtt: None }
        );
        p.start(t0, RTT, 0);
        assert_eq!(
            p.heard(&Frame::Pong(1), t0 + RTT),
            Heard::Answered { rtt: None },
            "a stale nonce"
        );
    }

    #[test]
    fn an_unanswered_probe_finds_the_connection_dead_unless_it_heard_anything() {
        let t0 = Instant::now();
        let mut p = Prober::default();
        p.start(t0, Duration::from_millis(50), 7);
        let deadline = t0 + PROBE_TIMEOUT_MIN + Duration::from_millis(200);
        assert_eq!(p.deadline(), Some(deadline));
        assert_eq!(p.expire(deadline - Duration::from_millis(1), 7), None);
        assert_eq!(p.expire(deadline, 7), Some(Expiry::Dead));
        assert_eq!(p.deadline(), None, "the probe is over");
        assert_eq!(p.expire(deadline, 7), None);
        // A busy connector that acknowledged packets but did not answer
        // in time is alive.
        p.start(deadline, Duration::from_millis(50), 7);
        assert_eq!(
            p.expire(deadline + probe_timeout(Duration::from_millis(50)), 9),
            Some(Expiry::Alive)
        );
        assert_eq!(p.deadline(), None);
    }

    #[test]
    fn waits_grow_with_the_round_trip_and_smoothing_follows_samples() {
        assert_eq!(probe_after(Duration::ZERO), PROBE_AFTER_MIN);
        assert_eq!(
            probe_after(Duration::from_millis(100)),
            Duration::from_millis(300)
        );
        assert_eq!(
            probe_timeout(Duration::from_millis(100)),
            Duration::from_millis(650)
        );
        let ms = Duration::from_millis;
        assert_eq!(smoothed(ms(100), ms(100)), ms(100));
        assert_eq!(smoothed(ms(80), ms(0)), ms(70));
        let mut s = INITIAL_RTT;
        for _ in 0..64 {
            s = smoothed(s, ms(2));
        }
        assert!(s < ms(3), "{s:?}");
    }
}

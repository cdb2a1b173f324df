//! The connector's control-stream logic as a sans-IO state machine:
//! heartbeats (ping every interval, dead after three silent intervals) and
//! the drain (`GoAway`, wait for `GoAwayAck`, for requests in flight to end
//! and for new streams to stop arriving, or for the grace period). The
//! shell feeds it frames and the clock and carries out what it returns.

use gatehouse_proto::Frame;
use std::time::{Duration, Instant};

/// Streams must have stopped arriving for this long before a drained
/// connection closes (streams opened before the edge saw `GoAway` may still
/// be in transit).
pub const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// What the shell must do. (Rare and short-lived: the size of `Frame` in
/// `Send` does not matter.)
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Action {
    /// Send this frame on the control stream.
    Send(Frame),
    /// The connection is dead or broken; close it and reconnect.
    Lost(String),
    /// The drain is complete (or its grace period is over); close it.
    Drained {
        /// Requests still in flight when the grace period ended.
        abandoned: usize,
    },
}

#[derive(Debug, Clone, Copy)]
struct Drain {
    deadline: Instant,
    acked: bool,
}

/// Control state of one connection.
#[derive(Debug, Clone)]
pub struct ControlCore {
    heartbeat: Duration,
    grace: Duration,
    last_heard: Instant,
    next_ping: Instant,
    nonce: u64,
    drain: Option<Drain>,
}

impl ControlCore {
    /// A fresh connection at `now`.
    pub fn new(heartbeat: Duration, grace: Duration, now: Instant) -> Self {
        Self {
            heartbeat,
            grace,
            last_heard: now,
            next_ping: now + heartbeat,
            nonce: 0,
            drain: None,
        }
    }

    /// A frame arrived on the control stream.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) -> Option<Action> {
        self.last_heard = now;
        match frame {
            Frame::Pong(_) => None,
            Frame::Ping(n) => Some(Action::Send(Frame::Pong(n))),
            Frame::GoAwayAck => {
                if let Some(d) = self.drain.as_mut() {
                    d.acked = true;
                }
                None
            }
            _ => Some(Action::Lost("unexpected control frame".into())),
        }
    }

    /// Starts draining; returns the `GoAway` to send (once).
    pub fn start_drain(&mut self, now: Instant) -> Option<Action> {
        if self.drain.is_some() {
            return None;
        }
        self.drain = Some(Drain {
            deadline: now + self.grace,
            acked: false,
        });
        Some(Action::Send(Frame::GoAway))
    }

    /// Whether a drain has started.
    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Time-driven work at `now`, given the requests in flight and the time
    /// since the last new stream.
    pub fn poll(&mut self, now: Instant, inflight: usize, quiet_for: Duration) -> Option<Action> {
        if now.saturating_duration_since(self.last_heard) > self.heartbeat * 3 {
            return Some(Action::Lost("heartbeat timeout".into()));
        }
        if let Some(d) = self.drain {
            let idle = inflight == 0 && quiet_for >= DRAIN_QUIET;
            if d.acked && idle {
                return Some(Action::Drained { abandoned: 0 });
            }
            if now >= d.deadline {
                return Some(Action::Drained {
                    abandoned: inflight,
                });
            }
        }
        if now >= self.next_ping {
            self.next_ping = now + self.heartbeat;
            self.nonce += 1;
            return Some(Action::Send(Frame::Ping(self.nonce)));
        }
        None
    }

    /// When [`ControlCore::poll`] next has something to do (while draining,
    /// the shell also polls whenever a request ends).
    pub fn poll_timeout(&self, now: Instant) -> Instant {
        let dead = self.last_heard + self.heartbeat * 3 + Duration::from_millis(1);
        let mut t = self.next_ping.min(dead);
        if let Some(d) = self.drain {
            t = t.min(d.deadline).min(now + Duration::from_millis(50));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_secs(1);

    #[test]
    fn pings_every_interval_and_dies_after_three_silent_ones() {
        let t0 = Instant::now();
        let mut c = ControlCore::new(HB, Duration::from_secs(30), t0);
        assert_eq!(c.poll(t0, 0, Duration::ZERO), None);
        assert_eq!(c.poll_timeout(t0), t0 + HB);
        assert_eq!(
            c.poll(t0 + HB, 0, Duration::ZERO),
            Some(Action::Send(Frame::Ping(1)))
        );
        assert_eq!(
            c.poll(t0 + HB, 0, Duration::ZERO),
            None,
            "one ping per interval"
        );
        // A pong keeps it alive.
        assert_eq!(c.handle_frame(Frame::Pong(1), t0 + HB * 2), None);
        assert_eq!(
            c.poll(t0 + HB * 2, 0, Duration::ZERO),
            Some(Action::Send(Frame::Ping(2)))
        );
        assert!(matches!(
            c.poll(t0 + HB * 4, 0, Duration::ZERO),
            Some(Action::Send(_))
        ));
        assert_eq!(
            c.poll(t0 + HB * 5 + Duration::from_millis(1), 0, Duration::ZERO),
            Some(Action::Lost("heartbeat timeout".into()))
        );
    }

    #[test]
    fn answers_pings_and_refuses_other_frames() {
        let t0 = Instant::now();
        let mut c = ControlCore::new(HB, Duration::from_secs(30), t0);
        assert_eq!(
            c.handle_frame(Frame::Ping(7), t0),
            Some(Action::Send(Frame::Pong(7)))
        );
        assert!(matches!(
            c.handle_frame(Frame::GoAway, t0),
            Some(Action::Lost(_))
        ));
    }

    #[test]
    fn drain_waits_for_ack_inflight_and_quiet_or_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut c = ControlCore::new(HB, grace, t0);
        assert_eq!(c.start_drain(t0), Some(Action::Send(Frame::GoAway)));
        assert_eq!(c.start_drain(t0), None, "GoAway once");
        let ms = Duration::from_millis;
        // Not acknowledged yet: keep serving even when idle.
        assert_eq!(c.poll(t0 + ms(100), 0, ms(500)), None);
        c.handle_frame(Frame::GoAwayAck, t0 + ms(100));
        // Requests in flight, or a stream that just arrived: wait.
        assert_eq!(c.poll(t0 + ms(150), 2, ms(500)), None);
        assert_eq!(c.poll(t0 + ms(160), 0, ms(10)), None);
        assert_eq!(
            c.poll(t0 + ms(400), 0, ms(250)),
            Some(Action::Drained { abandoned: 0 })
        );
        // A drain that never finishes ends at the grace period.
        let mut c = ControlCore::new(HB, grace, t0);
        c.start_drain(t0);
        c.handle_frame(Frame::GoAwayAck, t0);
        for i in 1..10 {
            c.handle_frame(Frame::Pong(i), t0 + HB * (i as u32));
            assert!(!matches!(
                c.poll(t0 + HB * (i as u32), 3, ms(0)),
                Some(Action::Drained { .. })
            ));
        }
        c.handle_frame(Frame::Pong(10), t0 + grace);
        assert_eq!(
            c.poll(t0 + grace, 3, ms(0)),
            Some(Action::Drained { abandoned: 3 })
        );
    }
}

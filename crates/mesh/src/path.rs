//! Paths to a peer, and the choice among them.
//!
//! A [`Path`] is how a datagram reaches a peer: straight over UDP to an
//! address, or through a relay region (datagrams carried over HTTPS to a
//! relay that forwards them by public key; the node owns those
//! connections). The core asks one question per datagram: "which paths
//! for this peer?", and [`PathSet`] answers it.
//!
//! Two regimes (`docs/decisions/0029-paths-through-nat.md`):
//!
//! - **Peers without a disco key** (older nodes, peers control announced
//!   no key for): handshake initiations go to every candidate (direct
//!   endpoints and the relay); the first authenticated answer makes its path
//!   active; every other datagram follows the active path. An authenticated
//!   datagram arriving on another path moves the active path there (the
//!   peer roamed).
//! - **Peers with a disco key**: data never waits for a direct path. Until
//!   a disco pong proves one, datagrams go through the peer's relay; a pong
//!   makes the pinged address the best direct path, trusted for
//!   [`TRUST_DURATION`] after each pong; while it is trusted, data goes
//!   there only. When trust lapses (pongs stop: the path went silent), data
//!   falls back to the relay; the WireGuard session does not notice.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long a direct path stays trusted after its last pong (Tailscale's
/// `trustUDPAddrDuration`).
pub const TRUST_DURATION: Duration = Duration::from_millis(6_500);
/// How often the best direct path is pinged while a peer is active.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// The least time between two discovery pings to one address.
pub const DISCO_PING_INTERVAL: Duration = Duration::from_secs(5);
/// After this long without data sent to a peer, heartbeats stop; also the
/// life of an address learned from the peer's own datagrams.
pub const SESSION_ACTIVE: Duration = Duration::from_secs(45);
/// A disco ping without a pong for this long is forgotten.
pub const DISCO_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// How a datagram travels to or from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Path {
    /// Straight over UDP to this address.
    Direct(SocketAddr),
    /// Through the relay of this region (the node's relay connection
    /// carries it, addressed by the peer's public key).
    Relay(u16),
}

impl Path {
    /// The UDP address of a direct path.
    pub fn direct(&self) -> Option<SocketAddr> {
        match self {
            Path::Direct(a) => Some(*a),
            Path::Relay(_) => None,
        }
    }

    /// The region of a relay path.
    pub fn relay(&self) -> Option<u16> {
        match self {
            Path::Relay(r) => Some(*r),
            Path::Direct(_) => None,
        }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Direct(a) => write!(f, "udp:{a}"),
            Path::Relay(r) => write!(f, "relay:{r}"),
        }
    }
}

/// Where an address the core pings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A CallMeMaybe listed it; kept until the next one omits it.
    CallMeMaybe,
    /// The peer's own datagrams came from it (a ping, or an authenticated
    /// WireGuard datagram); kept [`SESSION_ACTIVE`] after the last one.
    Learned(Instant),
}

/// The proven direct path of a disco peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BestDirect {
    /// Where.
    pub addr: SocketAddr,
    /// The round trip of its last pong.
    pub latency: Duration,
    /// Data goes there only until then.
    pub trusted_until: Instant,
}

/// The candidates, the proven paths and the discovery state of one peer.
#[derive(Debug, Clone, Default)]
pub struct PathSet {
    candidates: Vec<Path>,
    active: Option<(Path, Instant)>,
    disco: bool,
    discovered: Vec<(SocketAddr, Source)>,
    best: Option<BestDirect>,
    /// When each direct address was last pinged.
    pinged: Vec<(SocketAddr, Instant)>,
}

impl PathSet {
    /// Replaces the candidates (from control's map: the peer's endpoints and
    /// its home relay). The active path stays: it was proven by an
    /// authenticated datagram.
    pub fn set_candidates(&mut self, mut paths: Vec<Path>) {
        paths.sort();
        paths.dedup();
        self.candidates = paths;
    }

    /// Whether the peer takes part in disco (control announced its disco
    /// key): it switches the choice of path to the disco regime.
    pub fn set_disco(&mut self, on: bool) {
        if !on {
            self.best = None;
            self.discovered.clear();
            self.pinged.clear();
        }
        self.disco = on;
    }

    /// Whether the disco regime applies.
    pub fn disco(&self) -> bool {
        self.disco
    }

    /// The candidates, as control listed them.
    pub fn candidates(&self) -> &[Path] {
        &self.candidates
    }

    /// The peer's home relay, if control announced one.
    pub fn relay(&self) -> Option<u16> {
        self.candidates.iter().find_map(Path::relay)
    }

    /// The path the last authenticated datagram arrived on.
    pub fn active(&self) -> Option<Path> {
        self.active.map(|(p, _)| p)
    }

    /// When the active path last carried an authenticated datagram.
    pub fn active_since(&self) -> Option<Instant> {
        self.active.map(|(_, t)| t)
    }

    /// The proven direct path (disco regime), trusted or not.
    pub fn best(&self) -> Option<BestDirect> {
        self.best
    }

    /// Whether the best direct path is trusted at `now`.
    pub fn trusted(&self, now: Instant) -> bool {
        self.best.is_some_and(|b| now <= b.trusted_until)
    }

    /// An authenticated datagram arrived on `path`. For a disco peer, a
    /// direct address that is not the best one becomes an address to ping
    /// (it returns true then): the peer may have roamed there, and a pong
    /// will prove it.
    pub fn confirmed(&mut self, path: Path, now: Instant) -> bool {
        self.active = Some((path, now));
        match path {
            Path::Direct(a) if self.disco && self.best.is_none_or(|b| b.addr != a) => {
                self.learned(a, now);
                true
            }
            _ => false,
        }
    }

    /// The peer's own datagram (a disco ping, a WireGuard datagram) came
    /// from `addr`: an address to ping.
    pub fn learned(&mut self, addr: SocketAddr, now: Instant) {
        match self.discovered.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, s @ Source::Learned(_))) => *s = Source::Learned(now),
            Some(_) => {}
            None => self.discovered.push((addr, Source::Learned(now))),
        }
    }

    /// A CallMeMaybe from the peer listed `endpoints`: they replace those of
    /// the previous one, and every address is due for a ping at once.
    pub fn call_me_maybe(&mut self, endpoints: &[SocketAddr]) {
        self.discovered
            .retain(|(_, s)| !matches!(s, Source::CallMeMaybe));
        for e in endpoints {
            if usable_endpoint(e) && !self.discovered.iter().any(|(a, _)| a == e) {
                self.discovered.push((*e, Source::CallMeMaybe));
            }
        }
        self.pinged.clear();
    }

    /// Every direct address worth pinging: the map's endpoints, those a
    /// CallMeMaybe listed, those learned, and the best path.
    pub fn direct_addresses(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self
            .candidates
            .iter()
            .filter_map(Path::direct)
            .chain(self.discovered.iter().map(|(a, _)| *a))
            .chain(self.best.map(|b| b.addr))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Direct addresses not pinged in the last [`DISCO_PING_INTERVAL`].
    pub fn due_pings(&self, now: Instant) -> Vec<SocketAddr> {
        self.direct_addresses()
            .into_iter()
            .filter(|a| {
                self.last_ping(*a)
                    .is_none_or(|t| now.saturating_duration_since(t) >= DISCO_PING_INTERVAL)
            })
            .collect()
    }

    /// When `addr` was last pinged.
    pub fn last_ping(&self, addr: SocketAddr) -> Option<Instant> {
        self.pinged
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, t)| *t)
    }

    /// A ping went to `addr`.
    pub fn pinged(&mut self, addr: SocketAddr, now: Instant) {
        match self.pinged.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, t)) => *t = now,
            None => self.pinged.push((addr, now)),
        }
    }

    /// A pong answered a ping to `addr` after `latency`. Returns whether
    /// the best direct path changed. The pinged address becomes the best
    /// path when there is none, when the best one is no longer trusted, or
    /// when it is clearly faster (a third less round trip: small
    /// differences do not make data hop between paths).
    pub fn pong(&mut self, addr: SocketAddr, latency: Duration, now: Instant) -> bool {
        let trusted_until = now + TRUST_DURATION;
        let new = BestDirect {
            addr,
            latency,
            trusted_until,
        };
        match self.best {
            Some(b) if b.addr == addr => {
                self.best = Some(new);
                false
            }
            Some(b) if now <= b.trusted_until && latency * 3 >= b.latency * 2 => false,
            _ => {
                self.best = Some(new);
                true
            }
        }
    }

    /// A ping to `addr` went unanswered: an untrusted best path there is
    /// given up (data already goes through the relay).
    pub fn ping_timed_out(&mut self, addr: SocketAddr, now: Instant) {
        if self
            .best
            .is_some_and(|b| b.addr == addr && now > b.trusted_until)
        {
            self.best = None;
        }
    }

    /// Forgets learned addresses not heard from in [`SESSION_ACTIVE`], and
    /// ping times older than that.
    pub fn expire(&mut self, now: Instant) {
        self.discovered.retain(|(_, s)| match s {
            Source::Learned(t) => now.saturating_duration_since(*t) < SESSION_ACTIVE,
            Source::CallMeMaybe => true,
        });
        self.pinged
            .retain(|(_, t)| now.saturating_duration_since(*t) < SESSION_ACTIVE);
    }

    /// Paths for a handshake initiation: every candidate (direct endpoints
    /// and the relay), the active path and the best direct path.
    pub fn for_handshake(&self) -> Vec<Path> {
        let mut v = self.candidates.clone();
        for p in self
            .active()
            .into_iter()
            .chain(self.best.map(|b| Path::Direct(b.addr)))
        {
            if !v.contains(&p) {
                v.push(p);
            }
        }
        v
    }

    /// The path for any other datagram at `now`.
    ///
    /// Disco regime: the trusted best direct path, else the relay, else
    /// (a peer without a relay) the best path even untrusted, the active
    /// path or the first candidate. Otherwise: the active path, else the
    /// first candidate (direct endpoints sort before the relay).
    pub fn for_data(&self, now: Instant) -> Option<Path> {
        if self.disco {
            if let Some(b) = self.best
                && now <= b.trusted_until
            {
                return Some(Path::Direct(b.addr));
            }
            if let Some(r) = self.relay() {
                return Some(Path::Relay(r));
            }
            if let Some(b) = self.best {
                return Some(Path::Direct(b.addr));
            }
        }
        self.active().or_else(|| self.candidates.first().copied())
    }
}

/// Whether an address a peer lists can be pinged from elsewhere: not
/// unspecified, not port 0, not IPv6 link-local (which needs a scope).
pub fn usable_endpoint(a: &SocketAddr) -> bool {
    a.port() != 0
        && !a.ip().is_unspecified()
        && match a.ip() {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Path {
        Path::Direct(s.parse().unwrap())
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn handshakes_fan_out_and_data_follows_the_proven_path() {
        let now = Instant::now();
        let mut p = PathSet::default();
        assert_eq!(p.for_data(now), None);
        p.set_candidates(vec![d("10.0.0.1:1"), d("192.0.2.1:1"), d("10.0.0.1:1")]);
        assert_eq!(p.for_handshake().len(), 2);
        assert_eq!(p.for_data(now), Some(d("10.0.0.1:1")));
        p.confirmed(d("192.0.2.1:1"), now);
        assert_eq!(p.for_data(now), Some(d("192.0.2.1:1")));
        // Roaming to an address control does not know yet.
        p.confirmed(d("198.51.100.7:9"), now);
        assert_eq!(p.for_data(now), Some(d("198.51.100.7:9")));
        assert_eq!(p.for_handshake().len(), 3);
        p.set_candidates(vec![d("10.0.0.2:1")]);
        assert_eq!(p.active(), Some(d("198.51.100.7:9")));
    }

    #[test]
    fn without_disco_the_relay_is_one_more_candidate() {
        let now = Instant::now();
        let mut p = PathSet::default();
        p.set_candidates(vec![Path::Relay(7), d("10.0.0.1:1")]);
        assert_eq!(p.for_handshake(), vec![d("10.0.0.1:1"), Path::Relay(7)]);
        assert_eq!(p.for_data(now), Some(d("10.0.0.1:1")));
        p.confirmed(Path::Relay(7), now);
        assert_eq!(p.for_data(now), Some(Path::Relay(7)));
        assert_eq!(Path::Relay(7).to_string(), "relay:7");
    }

    #[test]
    fn relay_first_then_direct_on_pong() {
        let now = Instant::now();
        let mut p = PathSet::default();
        p.set_disco(true);
        p.set_candidates(vec![d("192.0.2.1:1"), Path::Relay(3)]);
        // Data does not wait: the relay until a pong.
        assert_eq!(p.for_data(now), Some(Path::Relay(3)));
        // Even an authenticated datagram on the direct path proves only that
        // the peer can send from there; it becomes an address to ping.
        assert!(p.confirmed(d("192.0.2.9:1"), now));
        assert_eq!(p.for_data(now), Some(Path::Relay(3)));
        assert_eq!(p.due_pings(now), vec![a("192.0.2.1:1"), a("192.0.2.9:1")]);
        p.pinged(a("192.0.2.1:1"), now);
        assert_eq!(p.due_pings(now), vec![a("192.0.2.9:1")]);
        assert!(p.pong(a("192.0.2.1:1"), Duration::from_millis(20), now));
        assert_eq!(p.for_data(now), Some(d("192.0.2.1:1")));
        assert!(p.trusted(now + TRUST_DURATION));
        // A slightly faster address does not take over a trusted path; a
        // much faster one does.
        assert!(!p.pong(a("192.0.2.9:1"), Duration::from_millis(15), now));
        assert!(p.pong(a("192.0.2.9:1"), Duration::from_millis(5), now));
        assert_eq!(p.for_data(now), Some(d("192.0.2.9:1")));
    }

    #[test]
    fn silence_falls_back_to_the_relay_and_a_pong_restores_direct() {
        let t0 = Instant::now();
        let mut p = PathSet::default();
        p.set_disco(true);
        p.set_candidates(vec![d("192.0.2.1:1"), Path::Relay(3)]);
        p.pong(a("192.0.2.1:1"), Duration::from_millis(2), t0);
        // Heartbeats answered keep it.
        let t1 = t0 + HEARTBEAT;
        p.pong(a("192.0.2.1:1"), Duration::from_millis(2), t1);
        assert_eq!(p.for_data(t1 + TRUST_DURATION), Some(d("192.0.2.1:1")));
        // Then silence: the relay, the session untouched.
        let t2 = t1 + TRUST_DURATION + Duration::from_millis(1);
        assert_eq!(p.for_data(t2), Some(Path::Relay(3)));
        assert!(p.best().is_some());
        p.ping_timed_out(a("192.0.2.1:1"), t2);
        assert!(p.best().is_none());
        assert_eq!(p.for_data(t2), Some(Path::Relay(3)));
        // The path answers again.
        p.pong(a("192.0.2.1:1"), Duration::from_millis(2), t2);
        assert_eq!(p.for_data(t2), Some(d("192.0.2.1:1")));
    }

    #[test]
    fn roaming_peer_is_followed_once_its_new_address_answers() {
        let t0 = Instant::now();
        let mut p = PathSet::default();
        p.set_disco(true);
        p.set_candidates(vec![d("192.0.2.1:1"), Path::Relay(3)]);
        p.pong(a("192.0.2.1:1"), Duration::from_millis(2), t0);
        // The peer moved: its datagrams come from elsewhere; the old
        // address stays trusted until its pongs stop.
        let moved = a("198.51.100.7:4000");
        assert!(p.confirmed(Path::Direct(moved), t0));
        assert!(p.due_pings(t0).contains(&moved));
        let t1 = t0 + TRUST_DURATION + Duration::from_secs(1);
        assert!(p.pong(moved, Duration::from_millis(2), t1));
        assert_eq!(p.for_data(t1), Some(Path::Direct(moved)));
        // Learned addresses are forgotten when the peer stops using them.
        p.expire(t1 + SESSION_ACTIVE + Duration::from_secs(1));
        assert!(
            !p.direct_addresses().contains(&a("198.51.100.99:1")),
            "never learned"
        );
    }

    #[test]
    fn call_me_maybe_replaces_the_previous_list_and_skips_unusable() {
        let now = Instant::now();
        let mut p = PathSet::default();
        p.set_disco(true);
        p.pinged(a("192.0.2.5:5"), now);
        p.call_me_maybe(&[a("192.0.2.5:5"), a("[fe80::1]:5"), a("0.0.0.0:5")]);
        assert_eq!(p.due_pings(now), vec![a("192.0.2.5:5")]);
        p.call_me_maybe(&[a("192.0.2.6:6")]);
        assert_eq!(p.direct_addresses(), vec![a("192.0.2.6:6")]);
        // Without a relay, a disco peer still gets data somewhere.
        assert_eq!(p.for_data(now), None);
        p.pong(a("192.0.2.6:6"), Duration::from_millis(1), now);
        assert_eq!(
            p.for_data(now + SESSION_ACTIVE),
            Some(d("192.0.2.6:6")),
            "an untrusted best path beats none"
        );
    }
}

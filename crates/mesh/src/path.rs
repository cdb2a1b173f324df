//! Paths to a peer, and the choice among them.
//!
//! A [`Path`] is how a WireGuard datagram reaches a peer. Today there is one
//! kind, a direct UDP endpoint; a relay (datagrams carried over HTTPS to a
//! relay that forwards them by public key) and endpoints found by NAT
//! traversal become further candidates of the same [`PathSet`], so the core
//! keeps asking one question per datagram: "which paths for this peer?".
//!
//! The rule: handshake initiations go to every candidate (and the active
//! path); the first authenticated answer makes its path active; every other
//! datagram follows the active path. An authenticated datagram arriving on
//! another path moves the active path there (the peer roamed).

use std::net::SocketAddr;
use std::time::Instant;

/// How a datagram travels to or from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Path {
    /// Straight over UDP to this address.
    Direct(SocketAddr),
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Direct(a) => write!(f, "udp:{a}"),
        }
    }
}

/// The candidates and the active path of one peer.
#[derive(Debug, Clone, Default)]
pub struct PathSet {
    candidates: Vec<Path>,
    active: Option<(Path, Instant)>,
}

impl PathSet {
    /// Replaces the candidates (from control's map). The active path stays:
    /// it was proven by an authenticated datagram.
    pub fn set_candidates(&mut self, mut paths: Vec<Path>) {
        paths.sort();
        paths.dedup();
        self.candidates = paths;
    }

    /// The candidates, as control listed them.
    pub fn candidates(&self) -> &[Path] {
        &self.candidates
    }

    /// The active path, if an authenticated datagram arrived on one.
    pub fn active(&self) -> Option<Path> {
        self.active.map(|(p, _)| p)
    }

    /// When the active path last carried an authenticated datagram.
    pub fn active_since(&self) -> Option<Instant> {
        self.active.map(|(_, t)| t)
    }

    /// An authenticated datagram arrived on `path`.
    pub fn confirmed(&mut self, path: Path, now: Instant) {
        self.active = Some((path, now));
    }

    /// Paths for a handshake initiation: every candidate and the active path.
    pub fn for_handshake(&self) -> Vec<Path> {
        let mut v = self.candidates.clone();
        if let Some(a) = self.active()
            && !v.contains(&a)
        {
            v.push(a);
        }
        v
    }

    /// The path for any other datagram: the active one, else the first
    /// candidate.
    pub fn for_data(&self) -> Option<Path> {
        self.active().or_else(|| self.candidates.first().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Path {
        Path::Direct(s.parse().unwrap())
    }

    #[test]
    fn handshakes_fan_out_and_data_follows_the_proven_path() {
        let now = Instant::now();
        let mut p = PathSet::default();
        assert_eq!(p.for_data(), None);
        p.set_candidates(vec![d("10.0.0.1:1"), d("192.0.2.1:1"), d("10.0.0.1:1")]);
        assert_eq!(p.for_handshake().len(), 2);
        assert_eq!(p.for_data(), Some(d("10.0.0.1:1")));
        p.confirmed(d("192.0.2.1:1"), now);
        assert_eq!(p.for_data(), Some(d("192.0.2.1:1")));
        // Roaming to an address control does not know yet.
        p.confirmed(d("198.51.100.7:9"), now);
        assert_eq!(p.for_data(), Some(d("198.51.100.7:9")));
        assert_eq!(p.for_handshake().len(), 3);
        p.set_candidates(vec![d("10.0.0.2:1")]);
        assert_eq!(p.active(), Some(d("198.51.100.7:9")));
    }
}

//! What the core reports: its counters and each peer's state.

use super::Core;
use crate::filter::FilterCounters;
use crate::path::Path;
use base64::Engine as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Counters of the core, since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// The inbound filter.
    pub filter: FilterCounters,
    /// Datagrams that are not valid WireGuard for a known peer.
    pub bad_datagrams: u64,
    /// Outbound packets for addresses of no peer.
    pub no_route: u64,
    /// Outbound packets that do not parse as IP.
    pub bad_outbound: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Echo requests from peers answered by the core itself.
    pub echo_answered: u64,
    /// Bytes of datagrams (WireGuard and disco) sent over UDP.
    pub direct_tx_bytes: u64,
    /// Bytes of datagrams received over UDP.
    pub direct_rx_bytes: u64,
    /// Bytes of datagrams sent through relays.
    pub relay_tx_bytes: u64,
    /// Bytes of datagrams relays delivered from known peers.
    pub relay_rx_bytes: u64,
    /// Times data to a peer moved to another path.
    pub path_changes: u64,
    /// Disco pings sent.
    pub disco_pings_sent: u64,
    /// Disco pings received (and answered).
    pub disco_pings_received: u64,
    /// Disco pongs sent.
    pub disco_pongs_sent: u64,
    /// Disco pongs received.
    pub disco_pongs_received: u64,
    /// CallMeMaybe messages sent through relays.
    pub call_me_maybe_sent: u64,
    /// CallMeMaybe messages received through relays.
    pub call_me_maybe_received: u64,
    /// Disco packets dropped: unknown sender, not authentic, malformed.
    pub bad_disco: u64,
    /// STUN messages on the UDP socket that are no binding response.
    pub bad_stun: u64,
    /// Datagrams a relay delivered from a key of no peer.
    pub relay_unknown_sender: u64,
    /// Datagrams for relays dropped because the node's relay queue was full.
    pub relay_dropped: u64,
}

/// One peer's state, as reported by [`Core::peers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Node id.
    pub id: String,
    /// Host name.
    pub name: String,
    /// WireGuard public key, base64.
    pub key: String,
    /// Mesh addresses.
    pub addresses: Vec<IpAddr>,
    /// The path data takes now, once a session is up: for a peer with a
    /// disco key, its trusted direct path or its relay; otherwise the path
    /// the last authenticated datagram came on.
    pub path: Option<Path>,
    /// Paths control listed (endpoints, then the home relay).
    pub candidates: Vec<Path>,
    /// The peer's home relay region.
    pub home_relay: Option<u16>,
    /// Whether the peer announced a disco key.
    pub disco: bool,
    /// The round trip of the last pong on [`PeerStatus::path`] (direct:
    /// the last pong of that address; relay: the last pong through it).
    pub latency: Option<Duration>,
    /// A session is up and the peer answered what was last sent to it.
    pub reachable: bool,
    /// Since when it is reachable (core clock).
    pub reachable_since: Option<Instant>,
    /// When the last handshake completed (core clock).
    pub last_handshake: Option<Instant>,
    /// Bytes of IP packets sent to it.
    pub tx_bytes: u64,
    /// Bytes of IP packets received from it (before filtering).
    pub rx_bytes: u64,
    /// Connection attempts (TCP SYNs) from it that the filter dropped.
    pub denied_syn: u64,
}

impl Core {
    /// Every peer's state, sorted by id.
    pub fn peers(&self) -> Vec<PeerStatus> {
        #[allow(clippy::disallowed_methods)] // sorted below
        let mut v: Vec<PeerStatus> = self.peers.values().map(|p| self.status_of(p)).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The state of the peer holding mesh address `ip`.
    pub fn peer(&self, ip: IpAddr) -> Option<PeerStatus> {
        let idx = self.by_ip.get(&ip)?;
        self.peers.get(idx).map(|p| self.status_of(p))
    }

    fn status_of(&self, p: &super::PeerState) -> PeerStatus {
        let path = if p.last_handshake.is_none() {
            None
        } else if p.paths.disco() {
            p.paths.for_data(self.now)
        } else {
            p.paths.active()
        };
        let latency = match path {
            Some(Path::Direct(a)) => p.paths.best().filter(|b| b.addr == a).map(|b| b.latency),
            Some(Path::Relay(_)) => p.relay_latency,
            None => None,
        };
        PeerStatus {
            id: p.id.clone(),
            name: p.name.clone(),
            key: base64::engine::general_purpose::STANDARD.encode(p.key),
            addresses: p.addresses.clone(),
            path,
            candidates: p.paths.candidates().to_vec(),
            home_relay: p.paths.relay(),
            disco: p.paths.disco(),
            latency,
            reachable: p.reachable_since.is_some(),
            reachable_since: p.reachable_since,
            last_handshake: p.last_handshake,
            tx_bytes: p.tx_bytes,
            rx_bytes: p.rx_bytes,
            denied_syn: p.denied_syn,
        }
    }
}

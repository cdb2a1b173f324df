//! Datagrams in and out: what arrives on the UDP socket or from a relay is
//! told apart (WireGuard, disco, STUN) and handed on; what leaves is queued
//! with its bytes counted by the kind of path. STUN requests and the home
//! relay live here too.

use super::{Core, Event, Transmit};
use crate::path::Path;
use gatehouse_disco::disco::TxId;
use gatehouse_disco::{Datagram, NodePublicKey, classify, stun};
use std::net::SocketAddr;
use std::time::Instant;

impl Core {
    /// This node's home relay region (for status).
    pub fn set_home_relay(&mut self, region: Option<u16>) {
        self.home_relay = region;
    }

    /// This node's home relay region.
    pub fn home_relay(&self) -> Option<u16> {
        self.home_relay
    }

    /// A datagram arrived on `from` (the UDP socket, for a direct path):
    /// WireGuard, disco or STUN, told apart by
    /// [`gatehouse_disco::classify`]. Anything else is dropped and counted.
    pub fn handle_datagram(&mut self, from: Path, data: &[u8], now: Instant) {
        self.now = now;
        match from {
            Path::Direct(_) => self.counters.direct_rx_bytes += data.len() as u64,
            Path::Relay(_) => self.counters.relay_rx_bytes += data.len() as u64,
        }
        match (classify(data), from) {
            (Datagram::WireGuard, _) => self.handle_wireguard(from, None, data, now),
            (Datagram::Disco, _) => self.handle_disco(from, None, data, now),
            (Datagram::Stun, Path::Direct(addr)) => match stun::parse_binding_response(data) {
                Ok((tx_id, reflexive)) => self.events.push_back(Event::Stun {
                    tx_id,
                    reflexive,
                    from: addr,
                }),
                Err(e) => {
                    tracing::trace!(%from, error = %e, "stun message dropped");
                    self.counters.bad_stun += 1;
                }
            },
            _ => self.counters.bad_datagrams += 1,
        }
    }

    /// A datagram a relay of `region` delivered from the node with key
    /// `from`. Only peers' datagrams are taken: WireGuard for the session
    /// with that very peer, disco sealed by that peer's disco key.
    pub fn handle_relay_datagram(
        &mut self,
        region: u16,
        from: NodePublicKey,
        data: &[u8],
        now: Instant,
    ) {
        self.now = now;
        let Some(idx) = self.by_key.get(from.as_bytes()).copied() else {
            self.counters.relay_unknown_sender += 1;
            return;
        };
        self.counters.relay_rx_bytes += data.len() as u64;
        let path = Path::Relay(region);
        match classify(data) {
            Datagram::WireGuard => self.handle_wireguard(path, Some(idx), data, now),
            Datagram::Disco => self.handle_disco(path, Some(idx), data, now),
            _ => self.counters.bad_datagrams += 1,
        }
    }

    /// Queues a datagram, counting its bytes by the kind of path.
    pub(super) fn push(&mut self, path: Path, payload: Vec<u8>, to: Option<NodePublicKey>) {
        match path {
            Path::Direct(_) => self.counters.direct_tx_bytes += payload.len() as u64,
            Path::Relay(_) => self.counters.relay_tx_bytes += payload.len() as u64,
        }
        self.transmits.push_back(Transmit { path, payload, to });
    }

    /// Queues a STUN binding request with `tx_id` to `server`, from the
    /// mesh's UDP socket; the response comes as [`Event::Stun`].
    pub fn send_stun(&mut self, server: SocketAddr, tx_id: &TxId) {
        self.push(Path::Direct(server), stun::binding_request(tx_id), None);
    }

    /// Counts datagrams for relays the shell could not queue.
    pub fn note_relay_dropped(&mut self, n: u64) {
        self.counters.relay_dropped += n;
    }
}

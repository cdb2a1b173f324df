//! The WireGuard sessions: datagrams in (routed to a peer's session by
//! index, or by the static key in a handshake initiation), packets from the
//! local stack out, and the choice of paths a message takes.

use super::{Core, Event, MIN_WG_BUF, WG_OVERHEAD};
use crate::packet;
use crate::path::{Path, SESSION_ACTIVE};
use crate::pool;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet as WgPacket, TunnResult};
use gatehouse_disco::NodePublicKey;
use std::net::IpAddr;
use std::time::Instant;

impl Core {
    /// A WireGuard message on `from`; `relayed_by` is the peer a relay
    /// named as its sender (the message must belong to its session).
    pub(super) fn handle_wireguard(
        &mut self,
        from: Path,
        relayed_by: Option<u32>,
        data: &[u8],
        now: Instant,
    ) {
        let reply_to = relayed_by
            .and_then(|i| self.peers.get(&i))
            .map(|p| NodePublicKey(p.key));
        let Some(idx) = self.route_datagram(from, reply_to, data) else {
            self.counters.bad_datagrams += 1;
            return;
        };
        if relayed_by.is_some_and(|r| r != idx) {
            self.counters.bad_datagrams += 1;
            return;
        }
        let src_ip = from.direct().map(|a| a.ip());
        let Some(peer) = self.peers.get_mut(&idx) else {
            self.counters.bad_datagrams += 1;
            return;
        };
        let to = Some(NodePublicKey(peer.key));
        let mut out = pool::take(data.len().max(MIN_WG_BUF));
        let msg_type = data.first().copied().unwrap_or(0);
        let result = peer.tunn.decapsulate(src_ip, data, &mut out);
        let (send_back, inbound, authenticated) = match result {
            TunnResult::WriteToNetwork(p) => (Some(p.len()), None, msg_type != 3),
            TunnResult::WriteToTunnelV4(p, src) => (None, Some((p.len(), IpAddr::V4(src))), true),
            TunnResult::WriteToTunnelV6(p, src) => (None, Some((p.len(), IpAddr::V6(src))), true),
            // A keepalive (data type) or a cookie reply.
            TunnResult::Done => (None, None, msg_type == 4),
            TunnResult::Err(e) => {
                tracing::trace!(%from, error = ?e, "datagram refused");
                self.counters.bad_datagrams += 1;
                pool::give(out);
                return;
            }
        };
        let mut ping_back = false;
        if authenticated {
            // A disco peer's datagram from a new address: the peer may have
            // roamed; a ping (if the peer is in use) proves the address.
            ping_back = peer.paths.confirmed(from, now)
                && peer
                    .last_send
                    .is_some_and(|t| now.saturating_duration_since(t) < SESSION_ACTIVE);
            peer.heard(now);
        }
        if let Some(len) = send_back {
            out.truncate(len);
            // An answer to a handshake goes back where the handshake came from.
            self.push(from, out, to);
            let Some(peer) = self.peers.get_mut(&idx) else {
                return;
            };
            // Type 1 in: we answered as responder; type 2 in: we completed as initiator.
            if msg_type == 1 || msg_type == 2 {
                peer.handshake_sent = None;
                peer.handshake_started = None;
                peer.last_handshake = Some(now);
                peer.heard(now);
                self.counters.handshakes += 1;
                self.events.push_back(Event::SessionUp {
                    peer: peer.id.clone(),
                    path: from,
                });
                self.flush_queued(idx);
            }
        } else if let Some((len, src)) = inbound {
            out.truncate(len);
            peer.rx_bytes += len as u64;
            if !peer.addresses.contains(&src) {
                self.counters.filter.spoofed += 1;
                pool::give(out);
            } else {
                self.inbound(idx, out, now);
            }
        } else {
            pool::give(out);
        }
        if ping_back {
            self.discover(idx, now, false);
        }
    }

    /// Which peer a datagram is for: by receiver index, or, for handshake
    /// initiations, by the static key inside (after the MAC check).
    pub(super) fn route_datagram(
        &mut self,
        from: Path,
        reply_to: Option<NodePublicKey>,
        data: &[u8],
    ) -> Option<u32> {
        let ty = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
        match ty {
            1 => {
                let src = from.direct().map(|a| a.ip());
                let mut cookie = [0u8; 64];
                match self.limiter.verify_packet(src, data, &mut cookie) {
                    Ok(WgPacket::HandshakeInit(h)) => {
                        let half = parse_handshake_anon(&self.private, &self.public, &h).ok()?;
                        self.by_key.get(&half.peer_static_public).copied()
                    }
                    Err(TunnResult::WriteToNetwork(c)) => {
                        let payload = c.to_vec();
                        self.push(from, payload, reply_to);
                        None
                    }
                    _ => None,
                }
            }
            // A response carries the sender's index first, then ours.
            2 => Some(u32::from_le_bytes(data.get(8..12)?.try_into().ok()?) >> 8),
            3 | 4 => Some(u32::from_le_bytes(data.get(4..8)?.try_into().ok()?) >> 8),
            _ => None,
        }
    }

    /// An IP packet from the local stack, for a peer.
    pub fn handle_packet(&mut self, packet: &[u8], now: Instant) {
        self.now = now;
        let info = match packet::parse(packet) {
            Ok(i) => i,
            Err(_) => {
                self.counters.bad_outbound += 1;
                return;
            }
        };
        let Some(idx) = self.by_ip.get(&info.dst).copied() else {
            self.counters.no_route += 1;
            return;
        };
        self.flows.outbound(&info, now);
        self.encapsulate_to(idx, packet, now);
    }

    /// Encrypts an IP packet for peer `idx` and queues it.
    pub(super) fn encapsulate_to(&mut self, idx: u32, packet: &[u8], now: Instant) {
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        peer.tx_bytes += packet.len() as u64;
        let mut out = pool::take((packet.len() + WG_OVERHEAD).max(MIN_WG_BUF));
        let len = match peer.tunn.encapsulate(packet, &mut out) {
            TunnResult::WriteToNetwork(p) => p.len(),
            TunnResult::Err(e) => {
                tracing::debug!(peer = %peer.id, error = ?e, "encapsulate failed");
                pool::give(out);
                return;
            }
            _ => {
                pool::give(out);
                return;
            }
        };
        out.truncate(len);
        self.send(idx, out, now);
    }

    /// Queues a WireGuard message for a peer on the right paths: a
    /// handshake initiation on every path, anything else on the one
    /// [`PathSet::for_data`](crate::path::PathSet::for_data) chooses. Sending to a disco peer whose direct
    /// path is not trusted starts discovery.
    pub(super) fn send(&mut self, idx: u32, payload: Vec<u8>, now: Instant) {
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        let to = Some(NodePublicKey(peer.key));
        peer.last_send = Some(now);
        peer.unanswered_since.get_or_insert(now);
        let discover = peer.paths.disco() && !peer.paths.trusted(now);
        if payload.first() == Some(&1) {
            peer.handshake_sent = Some(now);
            peer.handshake_started.get_or_insert(now);
            let paths = peer.paths.for_handshake();
            if paths.is_empty() {
                tracing::debug!(peer = %peer.id, "no path to peer");
            }
            for path in paths {
                self.push(path, payload.clone(), to);
            }
        } else if let Some(path) = peer.paths.for_data(now) {
            if peer.data_path != Some(path) {
                if peer.data_path.is_some() {
                    self.counters.path_changes += 1;
                }
                tracing::debug!(peer = %peer.id, %path, "data path");
                peer.data_path = Some(path);
                self.events.push_back(Event::PathChanged {
                    peer: peer.id.clone(),
                    path,
                });
            }
            self.push(path, payload, to);
        }
        if discover {
            self.discover(idx, now, true);
        }
    }

    /// Sends what boringtun queued while the handshake ran.
    pub(super) fn flush_queued(&mut self, idx: u32) {
        // Queued packets are at most an IP packet plus WireGuard's overhead.
        let mut scratch = vec![0u8; 65_536 + WG_OVERHEAD];
        loop {
            let Some(peer) = self.peers.get_mut(&idx) else {
                return;
            };
            let out = match peer.tunn.decapsulate(None, &[], &mut scratch) {
                TunnResult::WriteToNetwork(p) => p.to_vec(),
                _ => return,
            };
            let now = self.now;
            self.send(idx, out, now);
        }
    }
}

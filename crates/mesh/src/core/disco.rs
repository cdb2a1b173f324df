//! Path discovery (disco): this node's disco key and endpoints, disco
//! pings, pongs and CallMeMaybe from peers, discovery rounds, the
//! heartbeat on a trusted direct path, and `Core::disco_ping`.

use super::{Core, Event, MAX_DISCO_PINGS, PendingPing, PingError, RELAY_MAGIC_IP};
use crate::path::{DISCO_PING_TIMEOUT, HEARTBEAT, Path, SESSION_ACTIVE};
use gatehouse_disco::disco::{self, TxId};
use gatehouse_disco::{DiscoPrivateKey, DiscoPublicKey, Message, NodePublicKey, stun};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

impl Core {
    /// This node's disco public key (announced to control; peers seal their
    /// disco messages to it).
    pub fn disco_public(&self) -> DiscoPublicKey {
        self.disco_public
    }

    /// Replaces the disco key (a new core makes a random one; tests set a
    /// fixed one). Every peer's shared key is recomputed.
    pub fn set_disco_key(&mut self, key: DiscoPrivateKey) {
        self.disco_public = key.public();
        self.disco = key;
        // Each peer on its own: the order does not matter.
        #[allow(clippy::disallowed_methods)]
        for p in self.peers.values_mut() {
            p.disco_shared = p.disco_key.map(|k| self.disco.shared(&k));
        }
        self.disco_pings.clear();
    }

    /// This node's endpoints, as CallMeMaybe messages list them to peers
    /// (local addresses and the reflexive ones STUN found).
    pub fn set_disco_endpoints(&mut self, mut endpoints: Vec<SocketAddr>) {
        endpoints.retain(crate::path::usable_endpoint);
        endpoints.sort();
        endpoints.dedup();
        self.disco_endpoints = endpoints;
    }

    /// The endpoints CallMeMaybe messages list.
    pub fn disco_endpoints(&self) -> &[SocketAddr] {
        &self.disco_endpoints
    }

    /// A disco packet on `from`; `relayed_by` is the peer a relay named as
    /// its sender. Dropped (and counted) unless it opens with the disco key
    /// of a peer (that very peer, through a relay).
    pub(super) fn handle_disco(
        &mut self,
        from: Path,
        relayed_by: Option<u32>,
        data: &[u8],
        now: Instant,
    ) {
        let Ok(sender) = disco::sender(data) else {
            self.counters.bad_disco += 1;
            return;
        };
        let Some(idx) = self.by_disco.get(&sender).copied() else {
            tracing::trace!(%from, "disco packet from an unknown key");
            self.counters.bad_disco += 1;
            return;
        };
        if relayed_by.is_some_and(|r| r != idx) {
            self.counters.bad_disco += 1;
            return;
        }
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        let Some(shared) = &peer.disco_shared else {
            self.counters.bad_disco += 1;
            return;
        };
        let msg = match disco::open(shared, data) {
            Ok(m) => m,
            Err(e) => {
                tracing::trace!(%from, error = %e, "disco packet dropped");
                self.counters.bad_disco += 1;
                return;
            }
        };
        let key = NodePublicKey(peer.key);
        match msg {
            Message::Ping {
                tx_id, node_key, ..
            } => self.disco_ping_in(idx, from, key, tx_id, node_key, now),
            Message::Pong { tx_id, .. } => self.disco_pong_in(idx, tx_id, now),
            Message::CallMeMaybe { endpoints } => {
                self.call_me_maybe_in(idx, from, &endpoints, now);
            }
        }
    }

    /// A disco ping from peer `idx` (node key `key`) on `from`: answered
    /// with a pong on the same path, and, while a path is being punched,
    /// pings back.
    fn disco_ping_in(
        &mut self,
        idx: u32,
        from: Path,
        key: NodePublicKey,
        tx_id: TxId,
        node_key: Option<NodePublicKey>,
        now: Instant,
    ) {
        if node_key.is_some_and(|k| k != key) {
            self.counters.bad_disco += 1;
            return;
        }
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        let Some(shared) = &peer.disco_shared else {
            return;
        };
        self.counters.disco_pings_received += 1;
        let src = match from {
            Path::Direct(a) => {
                peer.paths.learned(a, now);
                a
            }
            Path::Relay(r) => SocketAddr::new(IpAddr::V4(RELAY_MAGIC_IP), r),
        };
        let pong = disco::seal(
            &self.disco_public,
            shared,
            &disco::random_nonce(),
            &Message::Pong { tx_id, src },
        );
        // Both sides ping at once when a path is being punched: a
        // peer in use whose direct path is not trusted gets pings
        // back now.
        let ping_back = from.direct().is_some()
            && !peer.paths.trusted(now)
            && peer
                .last_send
                .is_some_and(|t| now.saturating_duration_since(t) < SESSION_ACTIVE);
        self.counters.disco_pongs_sent += 1;
        self.push(from, pong, Some(key));
        if ping_back {
            // The address the ping came from is open now (its NAT let it
            // through): ping it back at once, even though an earlier ping
            // there (lost before the hole opened) may be recent. As many
            // as the peer sends pings, to its own address: no more.
            if let Some(a) = from.direct() {
                self.send_disco_ping(idx, Path::Direct(a), None, now);
            }
            self.discover(idx, now, false);
        }
    }

    /// A disco pong from peer `idx`: it proves the path its ping took (and
    /// measures it), and answers a [`Core::disco_ping`] caller.
    fn disco_pong_in(&mut self, idx: u32, tx_id: TxId, now: Instant) {
        self.counters.disco_pongs_received += 1;
        let Some(p) = self.disco_pings.get(&tx_id).copied() else {
            return;
        };
        if p.idx != idx {
            self.counters.bad_disco += 1;
            return;
        }
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        self.disco_pings.remove(&tx_id);
        let rtt = now.saturating_duration_since(p.sent);
        peer.heard(now);
        match p.to {
            Path::Direct(a) => {
                if peer.paths.pong(a, rtt, now) {
                    tracing::debug!(peer = %peer.id, path = %p.to, ?rtt, "direct path proven");
                }
            }
            Path::Relay(_) => peer.relay_latency = Some(rtt),
        }
        if let Some(id) = p.cli {
            self.events.push_back(Event::DiscoPong {
                id,
                rtt,
                path: p.to,
            });
        }
    }

    /// A CallMeMaybe from peer `idx`: its endpoints become candidates and
    /// are pinged now (the peer pings this node at the same time).
    fn call_me_maybe_in(&mut self, idx: u32, from: Path, endpoints: &[SocketAddr], now: Instant) {
        // Accepted through a relay only (the relay vouches for the
        // sender's node key).
        if from.relay().is_none() {
            self.counters.bad_disco += 1;
            return;
        }
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        self.counters.call_me_maybe_received += 1;
        peer.paths.call_me_maybe(endpoints);
        self.discover(idx, now, false);
    }

    /// Sends a disco ping to `peer` over `to`.
    pub(super) fn send_disco_ping(&mut self, idx: u32, to: Path, cli: Option<u64>, now: Instant) {
        if self.disco_pings.len() >= MAX_DISCO_PINGS {
            return;
        }
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        let Some(shared) = &peer.disco_shared else {
            return;
        };
        let tx_id = stun::new_tx_id();
        let ping = Message::Ping {
            tx_id,
            node_key: Some(NodePublicKey(*self.public.as_bytes())),
            padding: 0,
        };
        let payload = disco::seal(&self.disco_public, shared, &disco::random_nonce(), &ping);
        if let Path::Direct(a) = to {
            peer.paths.pinged(a, now);
        }
        let key = NodePublicKey(peer.key);
        self.disco_pings.insert(
            tx_id,
            PendingPing {
                idx,
                to,
                sent: now,
                cli,
            },
        );
        self.counters.disco_pings_sent += 1;
        self.push(to, payload, Some(key));
    }

    /// Path discovery for a disco peer: pings to every direct address not
    /// pinged lately and, with `call_me_maybe`, this node's endpoints
    /// through the peer's relay so that it pings back at the same time.
    pub(super) fn discover(&mut self, idx: u32, now: Instant, call_me_maybe: bool) {
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        if !peer.paths.disco() {
            return;
        }
        let due = peer.paths.due_pings(now);
        let cmm = match (peer.paths.relay(), &peer.disco_shared) {
            (Some(r), Some(shared))
                if call_me_maybe
                    && !self.disco_endpoints.is_empty()
                    && peer.last_call_me_maybe.is_none_or(|t| {
                        now.saturating_duration_since(t) >= crate::path::DISCO_PING_INTERVAL
                    }) =>
            {
                peer.last_call_me_maybe = Some(now);
                let msg = Message::CallMeMaybe {
                    endpoints: self.disco_endpoints.clone(),
                };
                Some((
                    r,
                    disco::seal(&self.disco_public, shared, &disco::random_nonce(), &msg),
                    NodePublicKey(peer.key),
                ))
            }
            _ => None,
        };
        for a in due {
            self.send_disco_ping(idx, Path::Direct(a), None, now);
        }
        if let Some((r, payload, key)) = cmm {
            self.counters.call_me_maybe_sent += 1;
            self.push(Path::Relay(r), payload, Some(key));
        }
    }

    /// A disco ping to the peer with mesh address `dst` over every path
    /// there is (its relay and each direct address), as `tailscale ping`
    /// does. The first pong comes as [`Event::DiscoPong`] with the id
    /// returned here, naming the path it took.
    pub fn disco_ping(&mut self, dst: IpAddr, now: Instant) -> Result<u64, PingError> {
        self.now = now;
        let idx = self.ping_target(dst)?;
        let peer = self.peers.get(&idx).ok_or(PingError::NoRoute(dst))?;
        if !peer.paths.disco() {
            return Err(PingError::NoDisco(dst));
        }
        let paths: Vec<Path> = peer
            .paths
            .relay()
            .map(Path::Relay)
            .into_iter()
            .chain(peer.paths.direct_addresses().into_iter().map(Path::Direct))
            .collect();
        if paths.is_empty() {
            return Err(PingError::NoPath(dst));
        }
        if self.disco_pings.len() + paths.len() > MAX_DISCO_PINGS {
            return Err(PingError::Busy);
        }
        let id = self.next_disco_ping;
        self.next_disco_ping += 1;
        for p in paths {
            self.send_disco_ping(idx, p, Some(id), now);
        }
        Ok(id)
    }

    /// While a disco peer is in use: its trusted direct path is pinged every
    /// [`HEARTBEAT`] (each pong renews the trust), and without one,
    /// discovery runs (its own pacing keeps it to one round per
    /// [`crate::path::DISCO_PING_INTERVAL`]).
    pub(super) fn heartbeat(&mut self, idx: u32, now: Instant) {
        let Some(peer) = self.peers.get(&idx) else {
            return;
        };
        if !peer.paths.disco()
            || peer
                .last_send
                .is_none_or(|t| now.saturating_duration_since(t) >= SESSION_ACTIVE)
        {
            return;
        }
        match peer.paths.best() {
            Some(b) if peer.paths.trusted(now) => {
                if peer
                    .paths
                    .last_ping(b.addr)
                    .is_none_or(|t| now.saturating_duration_since(t) >= HEARTBEAT)
                {
                    self.send_disco_ping(idx, Path::Direct(b.addr), None, now);
                }
            }
            _ => self.discover(idx, now, true),
        }
    }

    /// Forgets disco pings without a pong after [`DISCO_PING_TIMEOUT`]; an
    /// untrusted best path whose ping went unanswered is given up.
    pub(super) fn expire_disco_pings(&mut self, now: Instant) {
        #[allow(clippy::disallowed_methods)] // sorted below
        let mut late: Vec<(TxId, PendingPing)> = self
            .disco_pings
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.sent) >= DISCO_PING_TIMEOUT)
            .map(|(t, p)| (*t, *p))
            .collect();
        late.sort_by_key(|(t, _)| *t);
        for (tx, p) in late {
            self.disco_pings.remove(&tx);
            if let (Path::Direct(a), Some(peer)) = (p.to, self.peers.get_mut(&p.idx)) {
                peer.paths.ping_timed_out(a, now);
            }
        }
    }
}

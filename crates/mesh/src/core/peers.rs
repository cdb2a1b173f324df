//! The peer set, from control's map: sessions made for new peers, kept
//! for changed ones, dropped for missing ones; the lookups by address and
//! disco key rebuilt.

use super::{Core, MIN_WG_BUF, PeerState, TICK};
use crate::path::Path;
use base64::Engine as _;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use gatehouse_proto::control::Peer;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn decode_key(s: &str) -> Option<[u8; 32]> {
    let v = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    v.try_into().ok()
}

impl Core {
    /// Sets the peers from control's map: new peers get a session, changed
    /// peers keep theirs, missing peers are dropped. Peers with an invalid
    /// key, and this node itself, are skipped.
    pub fn set_peers(&mut self, peers: &[Peer], now: Instant) {
        self.now = now;
        let keep = self.valid_peers(peers);
        self.drop_peers_not_in(&keep);
        let mut rehandshake = Vec::new();
        for (key, p) in keep {
            let idx = self.peer_index(key);
            if self.update_peer(idx, p) {
                rehandshake.push(idx);
            }
        }
        // A peer that announces new endpoints may have restarted and lost
        // its sessions: a fresh handshake (on every candidate) finds out at
        // once instead of after WireGuard's 15 s without an answer. For a
        // peer that merely moved, it is an early rekey.
        rehandshake.sort_unstable();
        for idx in rehandshake {
            self.initiate_handshake(idx, now);
        }
        self.rebuild_lookups();
        if self.next_tick.is_none() {
            self.next_tick = Some(now + TICK);
            self.next_second = Some(now + Duration::from_secs(1));
        }
    }

    /// The peers of the map by WireGuard key, without this node and
    /// without peers whose key does not decode.
    fn valid_peers<'a>(&self, peers: &'a [Peer]) -> HashMap<[u8; 32], &'a Peer> {
        let mut keep: HashMap<[u8; 32], &Peer> = HashMap::new();
        for p in peers {
            match decode_key(&p.wireguard_key) {
                Some(k) if k != *self.public.as_bytes() => {
                    keep.insert(k, p);
                }
                Some(_) => {}
                None => tracing::warn!(peer = %p.id, "peer has an invalid WireGuard key; skipped"),
            }
        }
        keep
    }

    /// Drops the peers whose key is not in `keep`, with their sessions.
    fn drop_peers_not_in(&mut self, keep: &HashMap<[u8; 32], &Peer>) {
        #[allow(clippy::disallowed_methods)] // sorted below
        let mut gone: Vec<u32> = self
            .by_key
            .iter()
            .filter(|(k, _)| !keep.contains_key(*k))
            .map(|(_, i)| *i)
            .collect();
        gone.sort_unstable();
        for i in gone {
            if let Some(p) = self.peers.remove(&i) {
                self.by_key.remove(&p.key);
            }
        }
    }

    /// The session index of the peer with `key`; a new peer gets one, and a
    /// session.
    fn peer_index(&mut self, key: [u8; 32]) -> u32 {
        if let Some(i) = self.by_key.get(&key) {
            return *i;
        }
        let idx = self.next_index;
        // Indices fill 24 bits; wrapping past them after 16
        // million peers reuses the oldest numbers.
        self.next_index = (self.next_index + 1) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.private.clone(),
            PublicKey::from(key),
            None,
            None,
            idx,
            None,
        );
        self.peers.insert(idx, PeerState::new(key, tunn));
        self.by_key.insert(key, idx);
        idx
    }

    /// Takes the map's entry for peer `idx`: names, addresses, candidate
    /// paths, disco key. Returns whether a peer with a session now lists
    /// other candidates (and so gets a fresh handshake).
    fn update_peer(&mut self, idx: u32, p: &Peer) -> bool {
        let Some(st) = self.peers.get_mut(&idx) else {
            return false;
        };
        st.id.clone_from(&p.id);
        st.name.clone_from(&p.name);
        st.addresses.clone_from(&p.addresses);
        let before = st.paths.candidates().to_vec();
        st.paths.set_candidates(
            p.endpoints
                .iter()
                .map(|e| Path::Direct(*e))
                .chain(p.home_relay.map(Path::Relay))
                .collect(),
        );
        let disco_key = p.disco_key.as_deref().and_then(|k| match k.parse() {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(peer = %p.id, error = %e, "peer has an invalid disco key; ignored");
                None
            }
        });
        if disco_key != st.disco_key {
            st.disco_shared = disco_key.map(|k| self.disco.shared(&k));
            st.disco_key = disco_key;
            st.paths.set_disco(disco_key.is_some());
        }
        st.last_handshake.is_some()
            && !st.paths.candidates().is_empty()
            && st.paths.candidates() != before.as_slice()
    }

    /// Sends peer `idx` a handshake initiation now.
    fn initiate_handshake(&mut self, idx: u32, now: Instant) {
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        let mut out = vec![0u8; MIN_WG_BUF];
        if let TunnResult::WriteToNetwork(p) = peer.tunn.format_handshake_initiation(&mut out, true)
        {
            let len = p.len();
            out.truncate(len);
            self.send(idx, out, now);
        }
    }

    /// Rebuilds the lookups of peers by mesh address and by disco key.
    fn rebuild_lookups(&mut self) {
        // Into another map: the order does not matter.
        #[allow(clippy::disallowed_methods)]
        let by_ip = self
            .peers
            .iter()
            .flat_map(|(i, p)| p.addresses.iter().map(move |a| (*a, *i)))
            .collect();
        self.by_ip = by_ip;
        #[allow(clippy::disallowed_methods)]
        let by_disco = self
            .peers
            .iter()
            .filter_map(|(i, p)| Some((p.disco_key?, *i)))
            .collect();
        self.by_disco = by_disco;
    }
}

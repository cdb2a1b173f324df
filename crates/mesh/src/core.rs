//! The sans-IO core of the data plane: peers from control's map, one
//! WireGuard session per peer, the path to each peer, and the inbound
//! filter. It owns no socket and reads no clock: the shell feeds it
//! datagrams, IP packets and the time, and drains what it wants sent.
//!
//! Time: the core's own timers (handshake retries across paths, flow expiry,
//! the handshake rate limiter's window) follow the `now` it is given. The
//! WireGuard sessions' protocol timers (rekey after 120 s, passive
//! keepalive) live inside boringtun and follow the process clock; the shell
//! calls [`Core::handle_timeout`] often enough for them. Under a simulated
//! clock those never fire, and the core's retry timer still recovers lost
//! handshakes (`docs/decisions/0012-mesh-data-plane.md`).

use crate::echo;
use crate::filter::{CompiledFilter, FilterCounters, FlowTable};
use crate::packet;
use crate::path::{DISCO_PING_TIMEOUT, HEARTBEAT, Path, PathSet, SESSION_ACTIVE};
use crate::pool;
use base64::Engine as _;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet as WgPacket, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use gatehouse_disco::disco::{self, TxId};
use gatehouse_disco::{
    Datagram, DiscoPrivateKey, DiscoPublicKey, DiscoShared, Message, NodePublicKey, classify, stun,
};
use gatehouse_filter::NodeFilter;
use gatehouse_proto::control::Peer;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// How often the sessions' timers are run.
pub const TICK: Duration = Duration::from_millis(250);
/// How long the core waits for a handshake answer before sending another
/// initiation itself (just above WireGuard's 5 s plus jitter, so with a real
/// clock boringtun's own retry comes first).
pub const HANDSHAKE_RETRY: Duration = Duration::from_millis(5_500);
/// After this long without an answer, handshake retries stop until new traffic.
pub const HANDSHAKE_GIVE_UP: Duration = Duration::from_secs(90);
/// Handshake initiations per second accepted before cookies are demanded.
const HANDSHAKE_RATE: u64 = 100;
/// WireGuard adds this much to every IP packet.
pub const WG_OVERHEAD: usize = 32;
/// Handshake initiation size, the smallest buffer boringtun writes into.
const MIN_WG_BUF: usize = 148;
/// A ping without an answer for this long is forgotten.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Pings waiting for an answer at most.
const MAX_PINGS: usize = 1024;
/// What a ping request carries after its header.
const PING_DATA: &[u8] = b"gatehouse mesh ping";
/// Disco pings waiting for a pong at most.
const MAX_DISCO_PINGS: usize = 4096;
/// A session whose last handshake is older than this is gone (WireGuard's
/// reject-after-time: an active session rekeys every 120 s).
const SESSION_LIFETIME: Duration = Duration::from_secs(180);
/// A peer that sent nothing authenticated this long after we sent it
/// something is no longer reachable (WireGuard's keepalive, 10 s, plus its
/// rekey timeout, 5 s: a live peer answers within that).
const UNANSWERED: Duration = Duration::from_secs(15);
/// The address a pong names for a ping that came through a relay
/// (Tailscale's: port = region).
pub const RELAY_MAGIC_IP: Ipv4Addr = Ipv4Addr::new(127, 3, 3, 40);

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub path: Path,
    /// The WireGuard message or disco packet.
    pub payload: Vec<u8>,
    /// The peer's public key: the address of a relayed datagram (`None`
    /// only for answers to senders the core does not know, over UDP).
    pub to: Option<NodePublicKey>,
}

/// Something the shell should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A decrypted IP packet the filter accepted, for the local stack.
    Packet(Vec<u8>),
    /// A session with a peer was established (its id), on this path.
    SessionUp {
        /// Peer id.
        peer: String,
        /// The path the handshake completed on.
        path: Path,
    },
    /// The answer to a [`Core::ping`] arrived.
    Pong {
        /// Peer id.
        peer: String,
        /// The address pinged.
        addr: IpAddr,
        /// The sequence number [`Core::ping`] returned.
        seq: u16,
        /// Round-trip time on the core's clock.
        rtt: Duration,
    },
    /// The pong to a [`Core::disco_ping`] arrived.
    DiscoPong {
        /// The id [`Core::disco_ping`] returned.
        id: u64,
        /// Round-trip time on the core's clock.
        rtt: Duration,
        /// The path the ping went (and its pong came back) over.
        path: Path,
    },
    /// A STUN binding response arrived on the UDP socket.
    Stun {
        /// Its transaction id.
        tx_id: TxId,
        /// This node's address as the STUN server saw it.
        reflexive: SocketAddr,
        /// Where it came from.
        from: SocketAddr,
    },
    /// Data to a peer now takes another path.
    PathChanged {
        /// Peer id.
        peer: String,
        /// The new path.
        path: Path,
    },
}

/// Why a ping could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    /// No peer has the address.
    #[error("no peer has the address {0}")]
    NoRoute(IpAddr),
    /// This node has no address of the same family to send from.
    #[error("no mesh address of the family of {0}")]
    NoSource(IpAddr),
    /// Too many pings wait for an answer.
    #[error("too many pings in flight")]
    Busy,
    /// The peer announced no disco key: disco pings cannot reach it.
    #[error("the peer with the address {0} takes no part in path discovery")]
    NoDisco(IpAddr),
    /// The peer has neither a relay nor a direct address to ping.
    #[error("no path to the peer with the address {0}")]
    NoPath(IpAddr),
}

/// Why the core could not start.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The node has no mesh address.
    #[error("no mesh address")]
    NoAddress,
}

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

struct PeerState {
    id: String,
    name: String,
    key: [u8; 32],
    addresses: Vec<IpAddr>,
    tunn: Box<Tunn>,
    paths: PathSet,
    /// When the core last sent a handshake initiation, while no answer came.
    handshake_sent: Option<Instant>,
    /// When the current run of unanswered initiations began.
    handshake_started: Option<Instant>,
    last_handshake: Option<Instant>,
    tx_bytes: u64,
    rx_bytes: u64,
    denied_syn: u64,
    disco_key: Option<DiscoPublicKey>,
    disco_shared: Option<DiscoShared>,
    /// When a datagram was last sent to it.
    last_send: Option<Instant>,
    /// The first send since the last authenticated datagram from it.
    unanswered_since: Option<Instant>,
    reachable_since: Option<Instant>,
    /// The path the last data datagram took.
    data_path: Option<Path>,
    /// The round trip of the last pong through a relay.
    relay_latency: Option<Duration>,
    last_call_me_maybe: Option<Instant>,
}

impl PeerState {
    fn new(key: [u8; 32], tunn: Tunn) -> Self {
        PeerState {
            id: String::new(),
            name: String::new(),
            key,
            addresses: Vec::new(),
            tunn: Box::new(tunn),
            paths: PathSet::default(),
            handshake_sent: None,
            handshake_started: None,
            last_handshake: None,
            tx_bytes: 0,
            rx_bytes: 0,
            denied_syn: 0,
            disco_key: None,
            disco_shared: None,
            last_send: None,
            unanswered_since: None,
            reachable_since: None,
            data_path: None,
            relay_latency: None,
            last_call_me_maybe: None,
        }
    }

    /// Something authenticated came from the peer.
    fn heard(&mut self, now: Instant) {
        self.unanswered_since = None;
        self.update_reachable(now);
    }

    fn update_reachable(&mut self, now: Instant) {
        let up = self
            .last_handshake
            .is_some_and(|t| now.saturating_duration_since(t) < SESSION_LIFETIME)
            && self
                .unanswered_since
                .is_none_or(|t| now.saturating_duration_since(t) < UNANSWERED);
        if !up {
            self.reachable_since = None;
        } else if self.reachable_since.is_none() {
            self.reachable_since = Some(now);
        }
    }
}

/// A disco ping waiting for its pong.
#[derive(Debug, Clone, Copy)]
struct PendingPing {
    idx: u32,
    to: Path,
    sent: Instant,
    /// The id of a [`Core::disco_ping`] caller.
    cli: Option<u64>,
}

impl std::fmt::Debug for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerState")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

/// The data plane's state machine.
pub struct Core {
    private: StaticSecret,
    public: PublicKey,
    addresses: Vec<IpAddr>,
    /// Peers by session index (the top 24 bits of boringtun's indices).
    peers: HashMap<u32, PeerState>,
    next_index: u32,
    by_key: HashMap<[u8; 32], u32>,
    by_ip: HashMap<IpAddr, u32>,
    filter: CompiledFilter,
    flows: FlowTable,
    counters: CoreCounters,
    limiter: RateLimiter,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_tick: Option<Instant>,
    next_second: Option<Instant>,
    now: Instant,
    /// Identifier of this node's ping requests.
    ping_id: u16,
    next_ping_seq: u16,
    /// Pings waiting for an answer: (address, sequence) → when sent.
    pings: HashMap<(IpAddr, u16), Instant>,
    disco: DiscoPrivateKey,
    disco_public: DiscoPublicKey,
    by_disco: HashMap<DiscoPublicKey, u32>,
    disco_pings: HashMap<TxId, PendingPing>,
    next_disco_ping: u64,
    /// This node's endpoints, as CallMeMaybe lists them.
    disco_endpoints: Vec<SocketAddr>,
    home_relay: Option<u16>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field(
                "public",
                &base64::engine::general_purpose::STANDARD.encode(self.public.as_bytes()),
            )
            .field("addresses", &self.addresses)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    let v = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    v.try_into().ok()
}

impl Core {
    /// A core for the node with this WireGuard private key and addresses.
    pub fn new(
        private_key: [u8; 32],
        addresses: Vec<IpAddr>,
        now: Instant,
    ) -> Result<Self, CoreError> {
        if addresses.is_empty() {
            return Err(CoreError::NoAddress);
        }
        let private = StaticSecret::from(private_key);
        let public = PublicKey::from(&private);
        // Derived from the key: stable for the node, different between nodes.
        let ping_id = u16::from_be_bytes([public.as_bytes()[0], public.as_bytes()[1]]);
        let disco = DiscoPrivateKey::generate();
        Ok(Core {
            disco_public: disco.public(),
            disco,
            by_disco: HashMap::new(),
            disco_pings: HashMap::new(),
            next_disco_ping: 1,
            disco_endpoints: Vec::new(),
            home_relay: None,
            ping_id,
            next_ping_seq: 0,
            pings: HashMap::new(),
            limiter: RateLimiter::new(&public, HANDSHAKE_RATE),
            private,
            public,
            addresses,
            peers: HashMap::new(),
            next_index: 1,
            by_key: HashMap::new(),
            by_ip: HashMap::new(),
            filter: CompiledFilter::default(),
            flows: FlowTable::default(),
            counters: CoreCounters::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_tick: None,
            next_second: None,
            now,
        })
    }

    /// This node's WireGuard public key, base64.
    pub fn public_key(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.public.as_bytes())
    }

    /// This node's mesh addresses.
    pub fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }

    /// Sets the peers from control's map: new peers get a session, changed
    /// peers keep theirs, missing peers are dropped. Peers with an invalid
    /// key, and this node itself, are skipped.
    pub fn set_peers(&mut self, peers: &[Peer], now: Instant) {
        self.now = now;
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
        let mut rehandshake = Vec::new();
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
        for (key, p) in keep {
            let idx = match self.by_key.get(&key) {
                Some(i) => *i,
                None => {
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
            };
            if let Some(st) = self.peers.get_mut(&idx) {
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
                if st.last_handshake.is_some()
                    && !st.paths.candidates().is_empty()
                    && st.paths.candidates() != before.as_slice()
                {
                    rehandshake.push(idx);
                }
            }
        }
        // A peer that announces new endpoints may have restarted and lost
        // its sessions: a fresh handshake (on every candidate) finds out at
        // once instead of after WireGuard's 15 s without an answer. For a
        // peer that merely moved, it is an early rekey.
        rehandshake.sort_unstable();
        for idx in rehandshake {
            let Some(peer) = self.peers.get_mut(&idx) else {
                continue;
            };
            let mut out = vec![0u8; MIN_WG_BUF];
            if let TunnResult::WriteToNetwork(p) =
                peer.tunn.format_handshake_initiation(&mut out, true)
            {
                let len = p.len();
                out.truncate(len);
                self.send(idx, out, now);
            }
        }
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
        if self.next_tick.is_none() {
            self.next_tick = Some(now + TICK);
            self.next_second = Some(now + Duration::from_secs(1));
        }
    }

    /// Sets the inbound filter (compiled here, off the packet path).
    pub fn set_filter(&mut self, filter: &NodeFilter) {
        self.filter = CompiledFilter::new(filter);
    }

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

    /// A WireGuard message on `from`; `relayed_by` is the peer a relay
    /// named as its sender (the message must belong to its session).
    fn handle_wireguard(&mut self, from: Path, relayed_by: Option<u32>, data: &[u8], now: Instant) {
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
    fn route_datagram(
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

    /// Queues a datagram, counting its bytes by the kind of path.
    fn push(&mut self, path: Path, payload: Vec<u8>, to: Option<NodePublicKey>) {
        match path {
            Path::Direct(_) => self.counters.direct_tx_bytes += payload.len() as u64,
            Path::Relay(_) => self.counters.relay_tx_bytes += payload.len() as u64,
        }
        self.transmits.push_back(Transmit { path, payload, to });
    }

    /// A disco packet on `from`; `relayed_by` is the peer a relay named as
    /// its sender. Dropped (and counted) unless it opens with the disco key
    /// of a peer (that very peer, through a relay).
    fn handle_disco(&mut self, from: Path, relayed_by: Option<u32>, data: &[u8], now: Instant) {
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
            } => {
                if node_key.is_some_and(|k| k != key) {
                    self.counters.bad_disco += 1;
                    return;
                }
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
                    self.discover(idx, now, false);
                }
            }
            Message::Pong { tx_id, .. } => {
                self.counters.disco_pongs_received += 1;
                let Some(p) = self.disco_pings.get(&tx_id).copied() else {
                    return;
                };
                if p.idx != idx {
                    self.counters.bad_disco += 1;
                    return;
                }
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
            Message::CallMeMaybe { endpoints } => {
                // Accepted through a relay only (the relay vouches for the
                // sender's node key).
                if from.relay().is_none() {
                    self.counters.bad_disco += 1;
                    return;
                }
                self.counters.call_me_maybe_received += 1;
                peer.paths.call_me_maybe(&endpoints);
                self.discover(idx, now, false);
            }
        }
    }

    /// Sends a disco ping to `peer` over `to`.
    fn send_disco_ping(&mut self, idx: u32, to: Path, cli: Option<u64>, now: Instant) {
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
    fn discover(&mut self, idx: u32, now: Instant, call_me_maybe: bool) {
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
        let idx = self
            .by_ip
            .get(&dst)
            .copied()
            .ok_or(PingError::NoRoute(dst))?;
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

    /// A decrypted packet from peer `idx`: checked against this node's
    /// addresses, then echo messages are handled here, everything else by
    /// the filter.
    fn inbound(&mut self, idx: u32, packet: Vec<u8>, now: Instant) {
        let info = match packet::parse(&packet) {
            Ok(i) => i,
            Err(_) => {
                self.counters.filter.malformed += 1;
                return;
            }
        };
        if !self.addresses.contains(&info.dst) {
            self.counters.filter.not_local += 1;
            return;
        }
        if (info.is_echo_request() || info.is_echo_reply()) && self.echo(idx, &packet, now) {
            return;
        }
        let f = &mut self.counters.filter;
        // Later fragments carry no ports: the filter cannot judge them, and
        // the stacks do not reassemble; they are dropped as denied.
        if !info.later_fragment
            && self
                .filter
                .allows(info.src, info.dst, info.proto, info.dst_port)
        {
            f.accepted += 1;
        } else if self.flows.is_reply(&info, now) {
            f.replies += 1;
        } else {
            f.denied += 1;
            if info.is_tcp_syn() {
                f.denied_syn += 1;
                if let Some(p) = self.peers.get_mut(&idx) {
                    p.denied_syn += 1;
                }
            }
            tracing::debug!(src = %info.src, dst = %info.dst, proto = info.proto, port = info.dst_port, "filter: denied");
            return;
        }
        self.events.push_back(Event::Packet(packet));
    }

    /// Echo messages the core handles itself (`docs/decisions/0021`):
    /// a request to this node is answered whatever the filter says (it
    /// reaches no stack or application, and only peers can send it); the
    /// answer to one of this node's pings becomes [`Event::Pong`]. Returns
    /// whether the packet was consumed; other echo messages (answers to
    /// pings of the kernel's, in TUN mode) go on to the filter.
    fn echo(&mut self, idx: u32, packet: &[u8], now: Instant) -> bool {
        let Some(e) = echo::parse(packet) else {
            return false;
        };
        if e.request {
            self.counters.echo_answered += 1;
            let reply = e.reply();
            self.encapsulate_to(idx, &reply, now);
            return true;
        }
        if e.id != self.ping_id {
            return false;
        }
        let Some(sent) = self.pings.remove(&(e.src, e.seq)) else {
            return false;
        };
        let peer = self
            .peers
            .get(&idx)
            .map(|p| p.id.clone())
            .unwrap_or_default();
        self.events.push_back(Event::Pong {
            peer,
            addr: e.src,
            seq: e.seq,
            rtt: now.saturating_duration_since(sent),
        });
        true
    }

    /// Sends an echo request to a peer's address through its session (a
    /// handshake first if there is none). Its answer comes as
    /// [`Event::Pong`] with the sequence number returned here; a ping
    /// without an answer is forgotten after [`PING_TIMEOUT`]. The peer's
    /// data plane answers it whatever its filter allows.
    pub fn ping(&mut self, dst: IpAddr, now: Instant) -> Result<u16, PingError> {
        self.now = now;
        let idx = self
            .by_ip
            .get(&dst)
            .copied()
            .ok_or(PingError::NoRoute(dst))?;
        let src = self
            .addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == dst.is_ipv4())
            .ok_or(PingError::NoSource(dst))?;
        if self.pings.len() >= MAX_PINGS {
            return Err(PingError::Busy);
        }
        // At most MAX_PINGS sequence numbers are taken: a free one is near.
        let mut seq = self.next_ping_seq;
        while self.pings.contains_key(&(dst, seq)) {
            seq = seq.wrapping_add(1);
        }
        self.next_ping_seq = seq.wrapping_add(1);
        self.pings.insert((dst, seq), now);
        let request = echo::build(src, dst, true, self.ping_id, seq, PING_DATA);
        self.encapsulate_to(idx, &request, now);
        Ok(seq)
    }

    /// Pings waiting for an answer.
    pub fn pings_in_flight(&self) -> usize {
        self.pings.len()
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
    fn encapsulate_to(&mut self, idx: u32, packet: &[u8], now: Instant) {
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
    /// [`PathSet::for_data`] chooses. Sending to a disco peer whose direct
    /// path is not trusted starts discovery.
    fn send(&mut self, idx: u32, payload: Vec<u8>, now: Instant) {
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
    fn flush_queued(&mut self, idx: u32) {
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

    /// Runs timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.next_second.is_some_and(|t| t <= now) {
            self.limiter.reset_count();
            self.flows.expire(now);
            self.pings
                .retain(|_, sent| now.saturating_duration_since(*sent) < PING_TIMEOUT);
            self.expire_disco_pings(now);
            // Each peer on its own: the order does not matter.
            #[allow(clippy::disallowed_methods)]
            for p in self.peers.values_mut() {
                p.paths.expire(now);
                p.update_reachable(now);
            }
            self.next_second = Some(now + Duration::from_secs(1));
        }
        if self.next_tick.is_none_or(|t| t > now) {
            return;
        }
        self.next_tick = Some(now + TICK);
        // Peers in index order, so what the tick sends comes out in one order.
        #[allow(clippy::disallowed_methods)]
        let mut idxs: Vec<u32> = self.peers.keys().copied().collect();
        idxs.sort_unstable();
        for idx in idxs {
            let Some(peer) = self.peers.get_mut(&idx) else {
                continue;
            };
            let mut out = vec![0u8; MIN_WG_BUF];
            let mut len = match peer.tunn.update_timers(&mut out) {
                TunnResult::WriteToNetwork(p) => Some(p.len()),
                _ => None,
            };
            // The core's own retry, on its clock.
            if len.is_none()
                && let (Some(sent), Some(started)) = (peer.handshake_sent, peer.handshake_started)
            {
                if now.saturating_duration_since(started) >= HANDSHAKE_GIVE_UP {
                    peer.handshake_sent = None;
                    peer.handshake_started = None;
                } else if now.saturating_duration_since(sent) >= HANDSHAKE_RETRY
                    && let TunnResult::WriteToNetwork(p) =
                        peer.tunn.format_handshake_initiation(&mut out, true)
                {
                    len = Some(p.len());
                }
            }
            if let Some(len) = len {
                out.truncate(len);
                self.send(idx, out, now);
            }
            self.heartbeat(idx, now);
        }
    }

    /// While a disco peer is in use: its trusted direct path is pinged every
    /// [`HEARTBEAT`] (each pong renews the trust), and without one,
    /// discovery runs (its own pacing keeps it to one round per
    /// [`crate::path::DISCO_PING_INTERVAL`]).
    fn heartbeat(&mut self, idx: u32, now: Instant) {
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
    fn expire_disco_pings(&mut self, now: Instant) {
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

    /// Queues a STUN binding request with `tx_id` to `server`, from the
    /// mesh's UDP socket; the response comes as [`Event::Stun`].
    pub fn send_stun(&mut self, server: SocketAddr, tx_id: &TxId) {
        self.push(Path::Direct(server), stun::binding_request(tx_id), None);
    }

    /// Counts datagrams for relays the shell could not queue.
    pub fn note_relay_dropped(&mut self, n: u64) {
        self.counters.relay_dropped += n;
    }

    /// When [`Core::handle_timeout`] should run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_tick, self.next_second) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Hands back the buffer of a sent [`Transmit`] or a consumed
    /// [`Event::Packet`], for reuse by later packets (optional: a buffer not
    /// given back is simply freed).
    pub fn recycle(buf: Vec<u8>) {
        pool::give(buf);
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Counters.
    pub fn counters(&self) -> CoreCounters {
        self.counters
    }

    /// Whether some peer has this address.
    pub fn routes_to(&self, ip: IpAddr) -> bool {
        self.by_ip.contains_key(&ip)
    }

    /// Flows this node opened that are remembered now.
    pub fn open_flows(&self) -> usize {
        self.flows.len()
    }

    /// Every peer's state, sorted by id.
    pub fn peers(&self) -> Vec<PeerStatus> {
        #[allow(clippy::disallowed_methods)] // sorted below
        let mut v: Vec<PeerStatus> = self
            .peers
            .values()
            .map(|p| {
                let path = if p.last_handshake.is_none() {
                    None
                } else if p.paths.disco() {
                    p.paths.for_data(self.now)
                } else {
                    p.paths.active()
                };
                let latency = match path {
                    Some(Path::Direct(a)) => {
                        p.paths.best().filter(|b| b.addr == a).map(|b| b.latency)
                    }
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
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

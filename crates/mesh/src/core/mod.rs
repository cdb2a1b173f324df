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

mod datagram;
mod disco;
mod inbound;
mod peers;
mod status;
mod wireguard;

pub use status::{CoreCounters, PeerStatus};

use crate::filter::{CompiledFilter, FlowTable};
use crate::path::{Path, PathSet};
use crate::pool;
use base64::Engine as _;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use gatehouse_disco::disco::TxId;
use gatehouse_disco::{DiscoPrivateKey, DiscoPublicKey, DiscoShared, NodePublicKey};
use gatehouse_filter::NodeFilter;
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

    /// Sets the inbound filter (compiled here, off the packet path).
    pub fn set_filter(&mut self, filter: &NodeFilter) {
        self.filter = CompiledFilter::new(filter);
    }

    /// Runs timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.next_second.is_some_and(|t| t <= now) {
            self.every_second(now);
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
            self.tick_peer(idx, now);
        }
    }

    /// Once a second: the rate limiter's window, expiry of flows, pings
    /// and paths, and each peer's reachability.
    fn every_second(&mut self, now: Instant) {
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
    }

    /// Every [`TICK`], for peer `idx`: the session's timers, the core's own
    /// handshake retry, and the disco heartbeat.
    fn tick_peer(&mut self, idx: u32, now: Instant) {
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
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
}

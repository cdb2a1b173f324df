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
use crate::path::{Path, PathSet};
use crate::pool;
use base64::Engine as _;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet as WgPacket, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use gatehouse_filter::NodeFilter;
use gatehouse_proto::control::Peer;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
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

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub path: Path,
    /// The WireGuard message.
    pub payload: Vec<u8>,
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
    /// The active path, if proven.
    pub path: Option<Path>,
    /// Paths control listed.
    pub candidates: Vec<Path>,
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
        Ok(Core {
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
                    self.peers.insert(
                        idx,
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
                        },
                    );
                    self.by_key.insert(key, idx);
                    idx
                }
            };
            if let Some(st) = self.peers.get_mut(&idx) {
                st.id.clone_from(&p.id);
                st.name.clone_from(&p.name);
                st.addresses.clone_from(&p.addresses);
                let before = st.paths.candidates().to_vec();
                st.paths
                    .set_candidates(p.endpoints.iter().map(|e| Path::Direct(*e)).collect());
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
        if self.next_tick.is_none() {
            self.next_tick = Some(now + TICK);
            self.next_second = Some(now + Duration::from_secs(1));
        }
    }

    /// Sets the inbound filter (compiled here, off the packet path).
    pub fn set_filter(&mut self, filter: &NodeFilter) {
        self.filter = CompiledFilter::new(filter);
    }

    /// A datagram arrived on `from`.
    pub fn handle_datagram(&mut self, from: Path, data: &[u8], now: Instant) {
        self.now = now;
        let Some(idx) = self.route_datagram(from, data) else {
            self.counters.bad_datagrams += 1;
            return;
        };
        let src_ip = match from {
            Path::Direct(a) => Some(a.ip()),
        };
        let Some(peer) = self.peers.get_mut(&idx) else {
            self.counters.bad_datagrams += 1;
            return;
        };
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
        if authenticated {
            peer.paths.confirmed(from, now);
        }
        if let Some(len) = send_back {
            out.truncate(len);
            // An answer to a handshake goes back where the handshake came from.
            self.transmits.push_back(Transmit {
                path: from,
                payload: out,
            });
            // Type 1 in: we answered as responder; type 2 in: we completed as initiator.
            if msg_type == 1 || msg_type == 2 {
                peer.handshake_sent = None;
                peer.handshake_started = None;
                peer.last_handshake = Some(now);
                self.counters.handshakes += 1;
                self.events.push_back(Event::SessionUp {
                    peer: peer.id.clone(),
                    path: from,
                });
                self.flush_queued(idx);
            }
            return;
        }
        if let Some((len, src)) = inbound {
            out.truncate(len);
            peer.rx_bytes += len as u64;
            if !peer.addresses.contains(&src) {
                self.counters.filter.spoofed += 1;
                pool::give(out);
                return;
            }
            self.inbound(idx, out, now);
        } else {
            pool::give(out);
        }
    }

    /// Which peer a datagram is for: by receiver index, or, for handshake
    /// initiations, by the static key inside (after the MAC check).
    fn route_datagram(&mut self, from: Path, data: &[u8]) -> Option<u32> {
        let ty = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
        match ty {
            1 => {
                let src = match from {
                    Path::Direct(a) => Some(a.ip()),
                };
                let mut cookie = [0u8; 64];
                match self.limiter.verify_packet(src, data, &mut cookie) {
                    Ok(WgPacket::HandshakeInit(h)) => {
                        let half = parse_handshake_anon(&self.private, &self.public, &h).ok()?;
                        self.by_key.get(&half.peer_static_public).copied()
                    }
                    Err(TunnResult::WriteToNetwork(c)) => {
                        let payload = c.to_vec();
                        self.transmits.push_back(Transmit {
                            path: from,
                            payload,
                        });
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

    /// Queues a WireGuard message for a peer on the right paths.
    fn send(&mut self, idx: u32, payload: Vec<u8>, now: Instant) {
        let Some(peer) = self.peers.get_mut(&idx) else {
            return;
        };
        if payload.first() == Some(&1) {
            peer.handshake_sent = Some(now);
            peer.handshake_started.get_or_insert(now);
            let paths = peer.paths.for_handshake();
            if paths.is_empty() {
                tracing::debug!(peer = %peer.id, "no path to peer");
            }
            for path in paths {
                self.transmits.push_back(Transmit {
                    path,
                    payload: payload.clone(),
                });
            }
        } else if let Some(path) = peer.paths.for_data() {
            self.transmits.push_back(Transmit { path, payload });
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
        }
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
            .map(|p| PeerStatus {
                id: p.id.clone(),
                name: p.name.clone(),
                key: base64::engine::general_purpose::STANDARD.encode(p.key),
                addresses: p.addresses.clone(),
                path: p.paths.active(),
                candidates: p.paths.candidates().to_vec(),
                last_handshake: p.last_handshake,
                tx_bytes: p.tx_bytes,
                rx_bytes: p.rx_bytes,
                denied_syn: p.denied_syn,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

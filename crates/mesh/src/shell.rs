//! The tokio shell around the core: one driver task owns the UDP socket
//! (and the TUN device in TUN mode), feeds the core, polls the stacks'
//! shards that have work, and sleeps until the next datagram, wake-up or
//! timer.

use crate::core::{Core, CoreCounters, Event, PING_TIMEOUT, PeerStatus, PingError, Transmit};
use crate::path::Path;
use crate::stack::{Accepted, MeshStream, Stack, Wake};
use crate::udp::Udp;
use crate::{MeshConfig, MeshError, Mode};
use gatehouse_disco::{DiscoPublicKey, NodePublicKey, stun};
use gatehouse_filter::NodeFilter;
use gatehouse_proto::control::Peer;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Datagrams read before the driver processes them.
const RX_ROUNDS: usize = 8;
/// Inbound connections waiting for [`Mesh::accept`].
const ACCEPT_BACKLOG: usize = 1024;
/// Datagrams waiting for the node to hand them to relays.
pub const RELAY_QUEUE: usize = 4096;
/// Between two STUN requests to a region that has not answered yet.
const STUN_RETRANSMIT: Duration = Duration::from_millis(250);

/// A datagram (WireGuard or disco) the mesh wants sent through the relay
/// of `region` to the node with key `to` (see [`Mesh::relay_link`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayOut {
    /// The relay region.
    pub region: u16,
    /// The destination's public key (its WireGuard key).
    pub to: NodePublicKey,
    /// The datagram.
    pub payload: Vec<u8>,
}

/// What [`Mesh::netcheck`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetReport {
    /// This node's addresses as the STUN servers saw the mesh socket
    /// (sorted, without duplicates; empty when UDP is blocked).
    pub reflexive: Vec<SocketAddr>,
    /// The round trip to each region that answered.
    pub latency: BTreeMap<u16, Duration>,
}

/// A STUN request waiting for its response.
struct StunWait {
    region: u16,
    sent: Instant,
    answer: mpsc::UnboundedSender<(u16, Duration, SocketAddr)>,
}

/// Where CallMeMaybe endpoints come from.
#[derive(Default)]
struct DiscoEndpoints {
    /// Set by the node; wins over the rest.
    explicit: Option<Vec<SocketAddr>>,
    /// From the last netcheck.
    reflexive: Vec<SocketAddr>,
}

/// An inbound TCP connection the filter allowed.
#[derive(Debug)]
pub struct MeshConnection {
    /// The stream.
    pub stream: MeshStream,
    /// The caller's mesh address and port.
    pub remote: SocketAddr,
    /// This node's mesh address and port it called.
    pub local: SocketAddr,
}

/// A snapshot of the data plane.
#[derive(Debug, Clone)]
pub struct MeshStatus {
    /// This node's WireGuard public key, base64.
    pub public_key: String,
    /// Its mesh addresses.
    pub addresses: Vec<IpAddr>,
    /// The UDP socket's address.
    pub listen: SocketAddr,
    /// Every peer, sorted by id.
    pub peers: Vec<PeerStatus>,
    /// Counters (filter drops among them).
    pub counters: CoreCounters,
    /// TCP sockets in the user-space stacks.
    pub sockets: usize,
    /// This node's disco public key.
    pub disco_public: DiscoPublicKey,
    /// This node's home relay region, as the node set it.
    pub home_relay: Option<u16>,
    /// The endpoints CallMeMaybe messages list.
    pub disco_endpoints: Vec<SocketAddr>,
}

/// Callers of [`Mesh::ping`] waiting for their answer, by address and
/// sequence number.
type Pongs = Mutex<HashMap<(IpAddr, u16), oneshot::Sender<Duration>>>;

struct Shared {
    core: Mutex<Core>,
    stack: Option<Stack>,
    wake: Arc<Wake>,
    listen: SocketAddr,
    addresses: Vec<IpAddr>,
    pongs: Pongs,
    disco_pongs: Mutex<HashMap<u64, oneshot::Sender<(Duration, Path)>>>,
    stun: Mutex<HashMap<stun::TxId, StunWait>>,
    relay_tx: mpsc::Sender<RelayOut>,
    relay_rx: Mutex<Option<mpsc::Receiver<RelayOut>>>,
    disco_endpoints: Mutex<DiscoEndpoints>,
}

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running data plane.
pub struct Mesh {
    shared: Arc<Shared>,
    accept: tokio::sync::Mutex<mpsc::Receiver<MeshConnection>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("listen", &self.shared.listen)
            .field("addresses", &self.shared.addresses)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Opens the UDP socket (and the TUN device in TUN mode) and starts the
    /// driver task.
    pub async fn start(cfg: MeshConfig) -> Result<Mesh, MeshError> {
        let now = Instant::now();
        let core = Core::new(cfg.private_key, cfg.addresses.clone(), now)?;
        let udp = Udp::bind(cfg.listen).map_err(|source| MeshError::Udp {
            addr: cfg.listen,
            source,
        })?;
        let listen = udp.local_addr().map_err(|source| MeshError::Udp {
            addr: cfg.listen,
            source,
        })?;
        let (stack, tun) = match &cfg.mode {
            Mode::Userspace => (
                Some(Stack::new(&cfg.addresses, crate::stack::SHARDS, now)),
                None,
            ),
            Mode::Tun { name } => {
                let dev =
                    crate::tun::open(name, &cfg.addresses).map_err(|source| MeshError::Tun {
                        name: name.clone(),
                        source,
                    })?;
                (None, Some(dev))
            }
        };
        let wake = match &stack {
            Some(s) => Arc::clone(&s.wake),
            None => Arc::new(Wake {
                dirty: Vec::new(),
                notify: Notify::new(),
            }),
        };
        let (relay_tx, relay_rx) = mpsc::channel(RELAY_QUEUE);
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            stack,
            wake,
            listen,
            addresses: cfg.addresses.clone(),
            pongs: Mutex::new(HashMap::new()),
            disco_pongs: Mutex::new(HashMap::new()),
            stun: Mutex::new(HashMap::new()),
            relay_tx,
            relay_rx: Mutex::new(Some(relay_rx)),
            disco_endpoints: Mutex::new(DiscoEndpoints::default()),
        });
        let (accept_tx, accept_rx) = mpsc::channel(ACCEPT_BACKLOG);
        let (stop, stop_rx) = watch::channel(false);
        let driver = Driver {
            shared: Arc::clone(&shared),
            udp,
            tun,
            accept: accept_tx,
            stop: stop_rx,
            transmits: Vec::new(),
            out: Vec::new(),
            shard_due: vec![None; shared.stack.as_ref().map_or(0, |s| s.shards.len())],
        };
        let task = tokio::spawn(driver.run());
        tracing::info!(%listen, addresses = ?cfg.addresses, "mesh data plane started");
        let mesh = Mesh {
            shared,
            accept: tokio::sync::Mutex::new(accept_rx),
            stop,
            task: Mutex::new(Some(task)),
        };
        mesh.update_disco_endpoints();
        Ok(mesh)
    }

    /// This node's disco public key: made at start, never stored (peers
    /// learn it from control, as the node announces it with its endpoints).
    pub fn disco_public(&self) -> DiscoPublicKey {
        lock(&self.shared.core).disco_public()
    }

    /// The datagrams the mesh wants sent through relays, for the node's
    /// relay connections. Returns the receiver once (`None` afterwards).
    /// The queue holds [`RELAY_QUEUE`] datagrams; when it is full, more are
    /// dropped (counted as `relay_dropped`), never waited for.
    pub fn relay_link(&self) -> Option<mpsc::Receiver<RelayOut>> {
        guard(&self.shared.relay_rx).take()
    }

    /// A datagram the relay of `region` delivered from the node with key
    /// `from`: WireGuard goes to that peer's session (on the path
    /// `relay:<region>`), disco to path discovery. Datagrams from keys of
    /// no peer are dropped and counted (`relay_unknown_sender`).
    pub fn relay_received(&self, region: u16, from: NodePublicKey, payload: &[u8]) {
        lock(&self.shared.core).handle_relay_datagram(region, from, payload, Instant::now());
        self.shared.wake.notify.notify_one();
    }

    /// This node's home relay region (shown in status).
    pub fn set_home_relay(&self, region: Option<u16>) {
        lock(&self.shared.core).set_home_relay(region);
    }

    /// The endpoints CallMeMaybe messages list to peers. Until the node
    /// sets them, they are [`Mesh::endpoints`] and the reflexive addresses
    /// the last [`Mesh::netcheck`] found.
    pub fn set_endpoints_for_disco(&self, endpoints: Vec<SocketAddr>) {
        guard(&self.shared.disco_endpoints).explicit = Some(endpoints);
        self.update_disco_endpoints();
    }

    fn update_disco_endpoints(&self) {
        let v = {
            let d = guard(&self.shared.disco_endpoints);
            match &d.explicit {
                Some(v) => v.clone(),
                None => {
                    let mut v = self.endpoints();
                    v.extend(d.reflexive.iter().copied());
                    v
                }
            }
        };
        lock(&self.shared.core).set_disco_endpoints(v);
    }

    /// STUN from the mesh's own UDP socket (so the answers name the
    /// address peers reach WireGuard at): a binding request to each
    /// region's server, repeated every 250 ms to regions that have not
    /// answered, until all answered or `timeout` passed. Regions that never
    /// answer are absent from the report; with UDP blocked it is empty.
    pub async fn netcheck(&self, servers: Vec<(u16, SocketAddr)>, timeout: Duration) -> NetReport {
        let deadline = tokio::time::Instant::now() + timeout;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut report = NetReport::default();
        let mut mine: Vec<stun::TxId> = Vec::new();
        let mut answered: std::collections::BTreeSet<u16> = std::collections::BTreeSet::new();
        let regions: std::collections::BTreeSet<u16> = servers.iter().map(|s| s.0).collect();
        loop {
            {
                let now = Instant::now();
                // Lock order: the core first, as the driver takes them.
                let mut core = lock(&self.shared.core);
                let mut waits = guard(&self.shared.stun);
                for (region, addr) in servers.iter().filter(|s| !answered.contains(&s.0)) {
                    let tx_id = stun::new_tx_id();
                    waits.insert(
                        tx_id,
                        StunWait {
                            region: *region,
                            sent: now,
                            answer: tx.clone(),
                        },
                    );
                    mine.push(tx_id);
                    core.send_stun(*addr, &tx_id);
                }
            }
            self.shared.wake.notify.notify_one();
            let round = (tokio::time::Instant::now() + STUN_RETRANSMIT).min(deadline);
            while let Ok(Some((region, rtt, addr))) =
                tokio::time::timeout_at(round, rx.recv()).await
            {
                answered.insert(region);
                let l = report.latency.entry(region).or_insert(rtt);
                *l = (*l).min(rtt);
                if !report.reflexive.contains(&addr) {
                    report.reflexive.push(addr);
                }
                // Every region answered: no need to wait out the round.
                if answered == regions {
                    break;
                }
            }
            if answered == regions || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        {
            let mut waits = guard(&self.shared.stun);
            for t in &mine {
                waits.remove(t);
            }
        }
        report.reflexive.sort();
        guard(&self.shared.disco_endpoints)
            .reflexive
            .clone_from(&report.reflexive);
        self.update_disco_endpoints();
        report
    }

    /// A disco ping to the peer with mesh address `dst` over its relay and
    /// every direct address at once (`gatehouse node ping`): the round trip
    /// of the first pong and the path it came over. Fails with
    /// `HostUnreachable` for an address of no peer (or a peer with no path),
    /// `Unsupported` for a peer without a disco key, `TimedOut` after
    /// [`PING_TIMEOUT`] without a pong.
    pub async fn disco_ping(&self, dst: IpAddr) -> io::Result<(Duration, Path)> {
        let (id, rx) = {
            let mut core = lock(&self.shared.core);
            let id = core.disco_ping(dst, Instant::now()).map_err(ping_error)?;
            let (tx, rx) = oneshot::channel();
            guard(&self.shared.disco_pongs).insert(id, tx);
            (id, rx)
        };
        self.shared.wake.notify.notify_one();
        match tokio::time::timeout(PING_TIMEOUT, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the data plane stopped",
            )),
            Err(_) => {
                guard(&self.shared.disco_pongs).remove(&id);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from {dst} (no disco pong)"),
                ))
            }
        }
    }

    /// Peers (WireGuard key, addresses, endpoints) and the inbound filter,
    /// from control's map. Called on every map change; idempotent.
    pub fn apply(&self, peers: &[Peer], filter: &NodeFilter) {
        {
            let mut core = lock(&self.shared.core);
            core.set_peers(peers, Instant::now());
            core.set_filter(filter);
        }
        self.shared.wake.notify.notify_one();
    }

    /// The next inbound TCP connection the filter allowed (user-space
    /// mode). `None` once the mesh stops, and always in TUN mode.
    pub async fn accept(&self) -> Option<MeshConnection> {
        self.shared.stack.as_ref()?;
        self.accept.lock().await.recv().await
    }

    /// Opens a TCP connection to a mesh address (user-space mode). Fails
    /// with `HostUnreachable` for an address of no peer, `ConnectionRefused`
    /// when the peer resets, `TimedOut` after
    /// [`crate::stack::CONNECT_TIMEOUT`] without an answer (what a peer
    /// whose filter drops the SYN looks like).
    pub async fn connect(&self, dst: SocketAddr) -> io::Result<MeshStream> {
        let Some(stack) = &self.shared.stack else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TUN mode: use the kernel's sockets",
            ));
        };
        if !lock(&self.shared.core).routes_to(dst.ip()) {
            return Err(io::Error::new(
                io::ErrorKind::HostUnreachable,
                format!("no peer has the address {}", dst.ip()),
            ));
        }
        let stream = stack.connect(dst)?;
        match tokio::time::timeout(crate::stack::CONNECT_TIMEOUT, stream.established()).await {
            Ok(r) => r.map(|()| stream),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from {dst}"),
            )),
        }
    }

    /// A round trip to a peer's mesh address through its WireGuard
    /// session: an echo request that the peer's data plane answers itself
    /// (in either mode, whatever its filter allows: it reaches no
    /// application). Fails with `HostUnreachable` for an address of no peer,
    /// `TimedOut` after [`PING_TIMEOUT`] without an answer.
    pub async fn ping(&self, dst: IpAddr) -> io::Result<Duration> {
        let (seq, rx) = {
            let mut core = lock(&self.shared.core);
            let seq = core.ping(dst, Instant::now()).map_err(ping_error)?;
            // Registered before the core lock is released: the driver, which
            // reports answers, cannot see this one first.
            let (tx, rx) = oneshot::channel();
            self.pongs().insert((dst, seq), tx);
            (seq, rx)
        };
        self.shared.wake.notify.notify_one();
        match tokio::time::timeout(PING_TIMEOUT, rx).await {
            Ok(Ok(rtt)) => Ok(rtt),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the data plane stopped",
            )),
            Err(_) => {
                self.pongs().remove(&(dst, seq));
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer from {dst}"),
                ))
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn pongs(&self) -> MutexGuard<'_, HashMap<(IpAddr, u16), oneshot::Sender<Duration>>> {
        self.shared.pongs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Local UDP endpoints to announce to control: the socket's address, or
    /// when it is bound to every address, the host's interface addresses
    /// except loopback, link-local (169.254/16, fe80::/10) and the mesh
    /// addresses: a peer on another machine could not reach those, and
    /// would send to its own loopback.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let l = self.shared.listen;
        if !l.ip().is_unspecified() {
            return vec![l];
        }
        let Ok(ifs) = getifaddrs::getifaddrs() else {
            return Vec::new();
        };
        let mut v: Vec<SocketAddr> = ifs
            .filter_map(|i| i.address.ip_addr())
            .filter(|ip| l.is_ipv6() || ip.is_ipv4())
            .filter(|ip| !self.shared.addresses.contains(ip))
            .filter(|ip| announceable(*ip))
            .map(|ip| SocketAddr::new(ip, l.port()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The state of the peer holding mesh address `ip` (cheaper than
    /// [`Mesh::status`] when one peer is wanted).
    pub fn peer(&self, ip: IpAddr) -> Option<PeerStatus> {
        lock(&self.shared.core).peer(ip)
    }

    /// Per peer: path, last handshake, bytes; and the counters.
    pub fn status(&self) -> MeshStatus {
        let core = lock(&self.shared.core);
        MeshStatus {
            public_key: core.public_key(),
            addresses: self.shared.addresses.clone(),
            listen: self.shared.listen,
            peers: core.peers(),
            counters: core.counters(),
            sockets: self.shared.stack.as_ref().map_or(0, Stack::sockets),
            disco_public: core.disco_public(),
            home_relay: core.home_relay(),
            disco_endpoints: core.disco_endpoints().to_vec(),
        }
    }

    /// Stops the driver; open streams are reset (reads end, writes fail).
    pub async fn shutdown(self) {
        self.close().await;
    }

    /// [`Mesh::shutdown`] for a shared mesh: stops the driver and waits for
    /// it; [`Mesh::accept`] then returns `None` and the other calls fail.
    pub async fn close(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.pongs().clear();
        guard(&self.shared.disco_pongs).clear();
    }
}

fn ping_error(e: PingError) -> io::Error {
    let kind = match e {
        PingError::NoRoute(_) | PingError::NoPath(_) => io::ErrorKind::HostUnreachable,
        PingError::NoSource(_) => io::ErrorKind::AddrNotAvailable,
        PingError::Busy => io::ErrorKind::WouldBlock,
        PingError::NoDisco(_) => io::ErrorKind::Unsupported,
    };
    io::Error::new(kind, e)
}

/// Whether an interface address may be announced to peers on other
/// machines: not loopback, not link-local, not unspecified.
pub fn announceable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local() && !a.is_unspecified(),
        IpAddr::V6(a) => {
            !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80 && !a.is_unspecified()
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Driver {
    shared: Arc<Shared>,
    udp: Udp,
    tun: Option<tun_rs::AsyncDevice>,
    accept: mpsc::Sender<MeshConnection>,
    stop: watch::Receiver<bool>,
    transmits: Vec<Transmit>,
    out: Vec<Vec<u8>>,
    shard_due: Vec<Option<Instant>>,
}

impl Driver {
    async fn run(mut self) {
        let mut tun_buf = vec![0u8; 65_536];
        loop {
            let now = Instant::now();
            self.timers(now);
            self.work(now).await;
            let deadline = self.deadline(now);
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline));
            let mut udp_ready = false;
            let mut tun_packet = None;
            tokio::select! {
                _ = self.stop.changed() => break,
                r = self.udp.readable() => {
                    if r.is_err() {
                        break;
                    }
                    udp_ready = true;
                }
                r = read_tun(self.tun.as_ref(), &mut tun_buf) => {
                    match r {
                        Ok(n) => tun_packet = Some(n),
                        Err(e) => {
                            tracing::warn!(error = %e, "tun read failed");
                            break;
                        }
                    }
                }
                _ = self.shared.wake.notify.notified() => {}
                _ = sleep => {}
            }
            let now = Instant::now();
            if udp_ready {
                self.receive(now);
            }
            if let Some(n) = tun_packet {
                lock(&self.shared.core).handle_packet(&tun_buf[..n], now);
                // Drain what else the device has, without waiting.
                if let Some(dev) = &self.tun {
                    let mut core = lock(&self.shared.core);
                    for _ in 0..64 {
                        match dev.try_recv(&mut tun_buf) {
                            Ok(n) => core.handle_packet(&tun_buf[..n], now),
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        if let Some(stack) = &self.shared.stack {
            stack.abort_all();
        }
        tracing::debug!("mesh driver stopped");
    }

    /// Hands relayed datagrams to the node's relay link (never waiting:
    /// a full queue drops them, as a congested network would).
    fn relay_out(&mut self) {
        if !self.transmits.iter().any(|t| t.path.relay().is_some()) {
            return;
        }
        let mut dropped = 0u64;
        let mut keep = Vec::with_capacity(self.transmits.len());
        for t in self.transmits.drain(..) {
            let (Some(region), Some(to)) = (t.path.relay(), t.to) else {
                keep.push(t);
                continue;
            };
            let out = RelayOut {
                region,
                to,
                payload: t.payload,
            };
            if self.shared.relay_tx.try_send(out).is_err() {
                dropped += 1;
            }
        }
        self.transmits = keep;
        if dropped > 0 {
            lock(&self.shared.core).note_relay_dropped(dropped);
        }
    }

    fn receive(&mut self, now: Instant) {
        let mut core = lock(&self.shared.core);
        for _ in 0..RX_ROUNDS {
            let r = self
                .udp
                .try_recv(|from, d| core.handle_datagram(Path::Direct(from), d, now));
            match r {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "udp receive failed");
                    break;
                }
            }
        }
    }

    fn timers(&mut self, now: Instant) {
        {
            let mut core = lock(&self.shared.core);
            if core.poll_timeout().is_some_and(|t| t <= now) {
                core.handle_timeout(now);
            }
        }
        for (i, due) in self.shard_due.iter_mut().enumerate() {
            if due.is_some_and(|t| t <= now) {
                *due = None;
                if let Some(d) = self.shared.wake.dirty.get(i) {
                    d.store(true, Ordering::Release);
                }
            }
        }
    }

    fn deadline(&self, now: Instant) -> Instant {
        let mut d = now + Duration::from_secs(1);
        if let Some(t) = lock(&self.shared.core).poll_timeout() {
            d = d.min(t);
        }
        for t in self.shard_due.iter().flatten() {
            d = d.min(*t);
        }
        d.max(now)
    }

    /// Moves packets between the core, the stacks (or TUN) and the socket
    /// until nothing is left to do.
    async fn work(&mut self, now: Instant) {
        // Kept between calls: its capacity is a burst of packets.
        let mut out = std::mem::take(&mut self.out);
        let mut accepted: Vec<Accepted> = Vec::new();
        let mut to_tun = Vec::new();
        let mut pongs = Vec::new();
        loop {
            let mut busy = false;
            {
                let mut core = lock(&self.shared.core);
                while let Some(ev) = core.poll_event() {
                    busy = true;
                    match ev {
                        Event::Packet(p) => match &self.shared.stack {
                            Some(stack) => stack.inbound(p),
                            None => to_tun.push(p),
                        },
                        Event::SessionUp { peer, path } => {
                            tracing::debug!(%peer, %path, "session up");
                        }
                        Event::Pong { addr, seq, rtt, .. } => pongs.push((addr, seq, rtt)),
                        Event::DiscoPong { id, rtt, path } => {
                            if let Some(tx) = guard(&self.shared.disco_pongs).remove(&id) {
                                let _ = tx.send((rtt, path));
                            }
                        }
                        Event::Stun {
                            tx_id, reflexive, ..
                        } => {
                            if let Some(w) = guard(&self.shared.stun).get(&tx_id) {
                                let rtt = now.saturating_duration_since(w.sent);
                                let _ = w.answer.send((w.region, rtt, reflexive));
                            }
                        }
                        Event::PathChanged { peer, path } => {
                            tracing::info!(%peer, %path, "path to peer");
                        }
                    }
                }
            }
            if !pongs.is_empty() {
                let mut waiting = self.shared.pongs.lock().unwrap_or_else(|e| e.into_inner());
                for (addr, seq, rtt) in pongs.drain(..) {
                    if let Some(tx) = waiting.remove(&(addr, seq)) {
                        let _ = tx.send(rtt);
                    }
                }
            }
            if let Some(stack) = &self.shared.stack {
                for (i, dirty) in self.shared.wake.dirty.iter().enumerate() {
                    if dirty.swap(false, Ordering::AcqRel) {
                        busy = true;
                        stack.poll_shard(i, now, &mut out, &mut accepted);
                        self.shard_due[i] = stack.shard_poll_at(i, now);
                    }
                }
                if !out.is_empty() {
                    let mut core = lock(&self.shared.core);
                    for p in out.drain(..) {
                        core.handle_packet(&p, now);
                        crate::pool::give(p);
                    }
                }
                for a in accepted.drain(..) {
                    let conn = MeshConnection {
                        stream: stack.stream(&a),
                        remote: a.remote,
                        local: a.local,
                    };
                    if let Err(e) = self.accept.try_send(conn) {
                        tracing::debug!(error = %e, "accept backlog full; connection dropped");
                    }
                }
            }
            if let Some(dev) = &self.tun {
                for p in to_tun.drain(..) {
                    if let Err(e) = dev.send(&p).await {
                        tracing::debug!(error = %e, "tun write failed");
                    }
                    crate::pool::give(p);
                }
            }
            {
                let mut core = lock(&self.shared.core);
                while let Some(t) = core.poll_transmit() {
                    self.transmits.push(t);
                }
            }
            if !self.transmits.is_empty() {
                busy = true;
                self.relay_out();
                self.udp.send_all(&self.transmits).await;
                for t in self.transmits.drain(..) {
                    crate::pool::give(t.payload);
                }
            }
            if !busy {
                break;
            }
        }
        self.out = out;
    }
}

async fn read_tun(dev: Option<&tun_rs::AsyncDevice>, buf: &mut [u8]) -> io::Result<usize> {
    match dev {
        Some(d) => d.recv(buf).await,
        None => std::future::pending().await,
    }
}

// What 0011 promises the node: the mesh and its streams move across tasks.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    const fn stream<T: Send + Unpin + 'static>() {}
    send_sync::<Mesh>();
    stream::<MeshStream>();
};

//! The WireGuard data plane (`gatehouse-mesh`) behind the node's
//! [`DataPlane`] trait: WireGuard in user space with one UDP socket, the
//! inbound filter enforced on every decrypted packet, and either the
//! user-space TCP/IP stacks (unprivileged, the default) or a TUN device and
//! the kernel's stack (root).
//!
//! The adapter is thin. It adds what the node shows and the mesh does not
//! count (connections in and out per peer), and in TUN mode it accepts and
//! opens connections with the kernel's sockets on the node's mesh
//! addresses, which the TUN device carries into the mesh. The node's
//! WireGuard private key is handed to the mesh in this process and goes
//! nowhere else.

use super::{Connection, DataPlane, PeerPath, PlaneStatus};
use crate::relays::Relays;
use gatehouse_filter::NodeFilter;
use gatehouse_mesh::{Mesh, MeshConfig, MeshError, MeshStream, Mode, Path};
use gatehouse_proto::control::{EndpointsRequest, Peer, RelayMap};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How often the node measures its relays and its public address again
/// (and at once when the relay map changes).
const NETCHECK_EVERY: Duration = Duration::from_secs(30);
/// How long one measurement waits for STUN answers.
const NETCHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long opening a connection may take in TUN mode (the user-space stack
/// has the same limit).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Inbound connections waiting for [`DataPlane::accept`] in TUN mode.
const BACKLOG: usize = 1024;

/// How the mesh data plane starts.
#[derive(Clone)]
pub struct MeshPlaneConfig {
    /// The node's WireGuard private key (from its state directory).
    pub private_key: [u8; 32],
    /// The node's mesh addresses.
    pub addresses: Vec<IpAddr>,
    /// The UDP socket's address; port 0 picks one.
    pub listen: SocketAddr,
    /// A TUN device of this name instead of the user-space stacks (root).
    pub tun: Option<String>,
    /// TUN mode: the ports the node's applications serve on its mesh
    /// addresses (the kernel's sockets listen there).
    pub ports: Vec<u16>,
    /// TLS settings for relays (the roots their certificates must chain
    /// to); `None`: no relays.
    pub relay_tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for MeshPlaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("MeshPlaneConfig")
            .field("public_key", &gatehouse_mesh::public_key(&self.private_key))
            .field("addresses", &self.addresses)
            .field("listen", &self.listen)
            .field("tun", &self.tun)
            .field("ports", &self.ports)
            .finish()
    }
}

/// Why the mesh data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum MeshPlaneError {
    /// The mesh itself (UDP socket, TUN device, key).
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// TUN mode: a listener on a mesh address.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
}

/// A connection over the mesh: a user-space stream, or in TUN mode a
/// kernel socket whose packets the TUN device carries.
#[derive(Debug)]
pub enum PlaneStream {
    /// User-space TCP/IP.
    Mesh(MeshStream),
    /// The kernel's TCP over the TUN device.
    Kernel(TcpStream),
}

impl AsyncRead for PlaneStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlaneStream::Mesh(s) => Pin::new(s).poll_read(cx, buf),
            PlaneStream::Kernel(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PlaneStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlaneStream::Mesh(s) => Pin::new(s).poll_write(cx, buf),
            PlaneStream::Kernel(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlaneStream::Mesh(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PlaneStream::Kernel(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PlaneStream::Mesh(s) => s.is_write_vectored(),
            PlaneStream::Kernel(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlaneStream::Mesh(s) => Pin::new(s).poll_flush(cx),
            PlaneStream::Kernel(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlaneStream::Mesh(s) => Pin::new(s).poll_shutdown(cx),
            PlaneStream::Kernel(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// What the adapter counts per peer (node id).
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    connections_in: u64,
    connections_out: u64,
    last_ok: Option<i64>,
}

type Incoming = mpsc::Receiver<(TcpStream, SocketAddr, SocketAddr)>;

/// The mesh data plane.
#[derive(Debug)]
pub struct MeshPlane {
    mesh: Arc<Mesh>,
    /// Relay connections, when relays are in use.
    relays: Option<Arc<Relays>>,
    /// The relay map from control, for the measuring task.
    relay_map: watch::Sender<RelayMap>,
    /// Signalled when the announcement changed.
    announce: Arc<Notify>,
    /// Mesh address → peer id, from the last map.
    owners: RwLock<Arc<HashMap<IpAddr, String>>>,
    counts: Mutex<BTreeMap<String, Counts>>,
    addresses: Vec<IpAddr>,
    tun: Option<String>,
    /// TUN mode: connections the kernel's listeners accepted.
    kernel: Option<tokio::sync::Mutex<Incoming>>,
    cancel: CancellationToken,
}

fn unix_now() -> i64 {
    unix(SystemTime::now())
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl MeshPlane {
    /// Starts the mesh (UDP socket, and the TUN device in TUN mode) and, in
    /// TUN mode, the kernel listeners for `cfg.ports`.
    pub async fn start(cfg: MeshPlaneConfig) -> Result<Self, MeshPlaneError> {
        let mode = match &cfg.tun {
            Some(name) => Mode::Tun { name: name.clone() },
            None => Mode::Userspace,
        };
        let mesh = Arc::new(
            Mesh::start(MeshConfig {
                private_key: cfg.private_key,
                addresses: cfg.addresses.clone(),
                listen: cfg.listen,
                mode,
            })
            .await?,
        );
        let cancel = CancellationToken::new();
        let relay_map = watch::Sender::new(RelayMap::default());
        let announce = Arc::new(Notify::new());
        let relays = cfg.relay_tls.map(|tls| {
            let into_mesh = Arc::clone(&mesh);
            let deliver: crate::relays::Deliver =
                Arc::new(move |region, from, data: bytes::Bytes| {
                    into_mesh.relay_received(region, from, &data);
                });
            let relays = Arc::new(Relays::new(
                gatehouse_relay::PrivateKey::from_bytes(cfg.private_key),
                tls,
                deliver,
            ));
            if let Some(out) = mesh.relay_link() {
                tokio::spawn(relay_out(out, Arc::clone(&relays), cancel.clone()));
            }
            tokio::spawn(netcheck_loop(
                Arc::clone(&mesh),
                Arc::clone(&relays),
                relay_map.subscribe(),
                Arc::clone(&announce),
                cancel.clone(),
            ));
            relays
        });
        let kernel = match &cfg.tun {
            Some(_) => Some(tokio::sync::Mutex::new(
                listen_kernel(&cfg.addresses, &cfg.ports, &cancel).await?,
            )),
            None => None,
        };
        Ok(MeshPlane {
            mesh,
            relays,
            relay_map,
            announce,
            owners: RwLock::new(Arc::new(HashMap::new())),
            counts: Mutex::new(BTreeMap::new()),
            addresses: cfg.addresses,
            tun: cfg.tun,
            kernel,
            cancel,
        })
    }

    /// The mesh underneath.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// A relay region's code (its id when the map does not name it).
    fn region_code(&self, id: u16) -> String {
        self.relay_map
            .borrow()
            .regions
            .iter()
            .find(|r| r.id == id)
            .map_or_else(|| id.to_string(), |r| r.code.clone())
    }

    /// A path as people read it: `direct 1.2.3.4:41641`, `relay <code>`.
    fn describe(&self, p: Path) -> String {
        match (p.direct(), p.relay()) {
            (Some(a), _) => format!("direct {a}"),
            (None, Some(r)) => format!("relay {}", self.region_code(r)),
            (None, None) => p.to_string(),
        }
    }

    fn owner(&self, ip: IpAddr) -> Option<String> {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            .cloned()
    }

    fn count(&self, ip: IpAddr, f: impl FnOnce(&mut Counts)) {
        let Some(id) = self.owner(ip) else { return };
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        f(c.entry(id).or_default());
    }

    async fn connect_kernel(dst: SocketAddr) -> io::Result<TcpStream> {
        let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dst))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, format!("no answer from {dst}"))
            })??;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// The data plane's path counters, read at each scrape: bytes by path kind
/// and direction, path changes, disco messages, relay connections.
#[derive(Debug)]
struct PathMetrics {
    mesh: Arc<Mesh>,
    relays: Option<Arc<Relays>>,
}

impl prometheus_client::collector::Collector for PathMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let c = self.mesh.status().counters;
        let mut counter = |name: &str, help: &str, v: u64| {
            let counter = ConstCounter::new(v);
            let m = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(m)
        };
        for (path, dir, v) in [
            ("direct", "tx", c.direct_tx_bytes),
            ("direct", "rx", c.direct_rx_bytes),
            ("relay", "tx", c.relay_tx_bytes),
            ("relay", "rx", c.relay_rx_bytes),
        ] {
            counter(
                &format!("path_{path}_{dir}_bytes"),
                "WireGuard datagram bytes by path kind and direction",
                v,
            )?;
        }
        counter("path_changes", "Changes of a peer's path", c.path_changes)?;
        counter("disco_pings_sent", "Disco pings sent", c.disco_pings_sent)?;
        counter(
            "disco_pongs_received",
            "Disco pongs received",
            c.disco_pongs_received,
        )?;
        counter(
            "disco_malformed",
            "Disco packets dropped as malformed or unauthenticated",
            c.bad_disco,
        )?;
        if let Some(r) = &self.relays {
            let rc = r.counters();
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            counter(
                "relay_connects",
                "Connections made to relays (reconnects included)",
                load(&rc.connects),
            )?;
            counter(
                "relay_disconnects",
                "Relay connections lost",
                load(&rc.disconnects),
            )?;
            counter(
                "relay_dropped",
                "Datagrams for relays dropped (no such region, queue full)",
                load(&rc.dropped) + c.relay_dropped,
            )?;
        }
        Ok(())
    }
}

/// Datagrams the mesh wants relayed, to the relay connections.
async fn relay_out(
    mut out: mpsc::Receiver<gatehouse_mesh::RelayOut>,
    relays: Arc<Relays>,
    cancel: CancellationToken,
) {
    loop {
        let o = tokio::select! {
            () = cancel.cancelled() => return,
            o = out.recv() => match o {
                Some(o) => o,
                None => return,
            },
        };
        relays.send(o.region, o.to, bytes::Bytes::from(o.payload));
    }
}

/// The STUN servers of a relay map, resolved (one address per region, of
/// the family the mesh socket speaks).
async fn stun_servers(map: &RelayMap, v6: bool) -> Vec<(u16, SocketAddr)> {
    let mut out = Vec::new();
    for r in &map.regions {
        for n in &r.nodes {
            let Some(port) = n.stun_port else { continue };
            let found = match tokio::net::lookup_host((n.host.as_str(), port)).await {
                Ok(addrs) => addrs.into_iter().find(|a| v6 || a.is_ipv4()),
                Err(e) => {
                    tracing::debug!(host = %n.host, error = %e, "relay's STUN server does not resolve");
                    None
                }
            };
            if let Some(a) = found {
                out.push((r.id, a));
                break;
            }
        }
    }
    out
}

/// Measures the relays and the node's public address whenever the relay
/// map changes and every [`NETCHECK_EVERY`]: the region that answers STUN
/// fastest becomes home (with UDP blocked, the current home stays, else the
/// map's first region); a changed reflexive address or home asks for a new
/// announcement. Idle relay connections are closed on the way.
async fn netcheck_loop(
    mesh: Arc<Mesh>,
    relays: Arc<Relays>,
    mut map_rx: watch::Receiver<RelayMap>,
    announce: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut last: Option<(Vec<SocketAddr>, Option<u16>)> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            r = map_rx.changed() => if r.is_err() { return },
            () = tokio::time::sleep(NETCHECK_EVERY) => {}
        }
        let map = map_rx.borrow_and_update().clone();
        relays.set_map(&map);
        relays.close_idle(Instant::now());
        let v6 = mesh.status().listen.is_ipv6();
        let servers = stun_servers(&map, v6).await;
        let report = mesh.netcheck(servers, NETCHECK_TIMEOUT).await;
        let fastest = report
            .latency
            .iter()
            .min_by_key(|(_, d)| **d)
            .map(|(id, _)| *id);
        let home = fastest
            .or_else(|| relays.home())
            .or_else(|| map.regions.first().map(|r| r.id));
        if relays.home() != home {
            tracing::info!(home = ?home, latency = ?report.latency, "home relay chosen");
        }
        relays.set_home(home);
        mesh.set_home_relay(home);
        let now = (report.reflexive.clone(), home);
        if last.as_ref() != Some(&now) {
            if !report.reflexive.is_empty() {
                tracing::info!(reflexive = ?report.reflexive, "public address learned by STUN");
            }
            last = Some(now);
            announce.notify_one();
        }
    }
}

/// TUN mode: listeners on every mesh address for every port, feeding one
/// channel. Only the mesh addresses: the node's services stay off the
/// host's other networks.
async fn listen_kernel(
    addresses: &[IpAddr],
    ports: &[u16],
    cancel: &CancellationToken,
) -> Result<Incoming, MeshPlaneError> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    for ip in addresses {
        for port in ports {
            let addr = SocketAddr::new(*ip, *port);
            let l = bind_when_assigned(addr)
                .await
                .map_err(|source| MeshPlaneError::Listen { addr, source })?;
            let tx = tx.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                loop {
                    let (s, remote) = tokio::select! {
                        () = cancel.cancelled() => return,
                        r = l.accept() => match r {
                            Ok(x) => x,
                            Err(e) => {
                                tracing::debug!(error = %e, %addr, "mesh plane: accept");
                                continue;
                            }
                        },
                    };
                    let _ = s.set_nodelay(true);
                    if tx.send((s, remote, addr)).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    Ok(rx)
}

/// Binds `addr`, waiting while the address is still being assigned: a fresh
/// IPv6 address on the TUN device stays "tentative" until duplicate address
/// detection ends (about a second), and binding it fails until then.
async fn bind_when_assigned(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrNotAvailable
                    && Instant::now() < deadline =>
            {
                tracing::debug!(%addr, "mesh plane: address not assigned yet");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

fn udp_address(p: Path) -> Option<SocketAddr> {
    match p {
        Path::Direct(a) => Some(a),
        _ => None,
    }
}

impl DataPlane for MeshPlane {
    type Stream = PlaneStream;

    fn apply(&self, peers: &[Peer], filter: &NodeFilter) {
        let owners: HashMap<IpAddr, String> = peers
            .iter()
            .flat_map(|p| p.addresses.iter().map(|a| (*a, p.id.clone())))
            .collect();
        *self.owners.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(owners);
        self.mesh.apply(peers, filter);
    }

    async fn accept(&self) -> Option<Connection<PlaneStream>> {
        let c = match &self.kernel {
            None => {
                let c = tokio::select! {
                    () = self.cancel.cancelled() => return None,
                    c = self.mesh.accept() => c?,
                };
                Connection {
                    stream: PlaneStream::Mesh(c.stream),
                    remote: c.remote,
                    local: c.local,
                }
            }
            Some(rx) => {
                let mut rx = rx.lock().await;
                let (s, remote, local) = tokio::select! {
                    () = self.cancel.cancelled() => return None,
                    c = rx.recv() => c?,
                };
                Connection {
                    stream: PlaneStream::Kernel(s),
                    remote,
                    local,
                }
            }
        };
        self.count(c.remote.ip(), |n| {
            n.connections_in += 1;
            n.last_ok = Some(unix_now());
        });
        Some(c)
    }

    async fn connect(&self, dst: SocketAddr) -> io::Result<PlaneStream> {
        if self.addresses.contains(&dst.ip()) {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "that address is this node's own",
            ));
        }
        if self.owner(dst.ip()).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::HostUnreachable,
                format!("no peer has the address {}", dst.ip()),
            ));
        }
        // A peer no path reaches (no relay, no endpoint) is refused at once
        // instead of after the connect timeout.
        let peer = self.mesh.peer(dst.ip());
        if let Some(p) = &peer
            && p.candidates.is_empty()
            && p.path.is_none()
        {
            tracing::info!(peer = %p.name, %dst, "no path to the peer: no relay and no endpoint");
            return Err(io::Error::new(
                io::ErrorKind::HostUnreachable,
                format!("no path to {}: no relay and no endpoint", p.name),
            ));
        }
        let opened = match self.kernel {
            None => self.mesh.connect(dst).await.map(PlaneStream::Mesh),
            Some(_) => Self::connect_kernel(dst).await.map(PlaneStream::Kernel),
        };
        let s = match opened {
            Ok(s) => s,
            Err(e) => {
                let (name, path) = peer
                    .map(|p| (p.name, p.path.map(|x| self.describe(x))))
                    .unwrap_or_default();
                tracing::info!(peer = %name, ?path, %dst, error = %e, "connection to the peer failed");
                return Err(e);
            }
        };
        self.count(dst.ip(), |n| {
            n.connections_out += 1;
            n.last_ok = Some(unix_now());
        });
        Ok(s)
    }

    async fn ping(&self, dst: IpAddr) -> io::Result<Duration> {
        let rtt = self.mesh.ping(dst).await?;
        self.count(dst, |n| n.last_ok = Some(unix_now()));
        Ok(rtt)
    }

    fn endpoints(&self) -> Vec<SocketAddr> {
        self.mesh.endpoints()
    }

    fn announcement(&self) -> EndpointsRequest {
        let st = self.mesh.status();
        let mut endpoints = self.mesh.endpoints();
        // Reflexive addresses too, but never loopback or link-local ones (a
        // relay on this machine sees the node at 127.0.0.1).
        endpoints.extend(
            st.disco_endpoints
                .iter()
                .copied()
                .filter(|e| gatehouse_mesh::announceable(e.ip().to_canonical())),
        );
        endpoints.sort();
        endpoints.dedup();
        EndpointsRequest {
            endpoints,
            disco_key: Some(self.mesh.disco_public().to_string()),
            home_relay: self.relays.as_ref().and_then(|r| r.home()),
        }
    }

    fn announce_wanted(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.announce))
    }

    fn apply_relays(&self, relays: &RelayMap) {
        self.relay_map.send_if_modified(|m| {
            let changed = m != relays;
            if changed {
                *m = relays.clone();
            }
            changed
        });
    }

    fn collector(&self) -> Option<Box<dyn prometheus_client::collector::Collector>> {
        Some(Box::new(PathMetrics {
            mesh: Arc::clone(&self.mesh),
            relays: self.relays.clone(),
        }))
    }

    async fn path_ping(&self, dst: IpAddr) -> io::Result<(Duration, String)> {
        let (rtt, path) = self.mesh.disco_ping(dst).await?;
        self.count(dst, |n| n.last_ok = Some(unix_now()));
        Ok((rtt, self.describe(path)))
    }

    fn status(&self) -> PlaneStatus {
        let st = self.mesh.status();
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let (now, wall) = (Instant::now(), SystemTime::now());
        let peers = st
            .peers
            .iter()
            .map(|p| {
                let c = counts.get(&p.id).copied().unwrap_or_default();
                // The proven path, else the endpoint the next handshake tries first.
                let endpoint = p
                    .path
                    .or_else(|| p.candidates.first().copied())
                    .and_then(udp_address);
                let handshake = p
                    .last_handshake
                    .and_then(|t| wall.checked_sub(now.saturating_duration_since(t)))
                    .map(unix);
                let reachable_since = p
                    .reachable_since
                    .and_then(|t| wall.checked_sub(now.saturating_duration_since(t)))
                    .map(unix);
                let path = PeerPath {
                    via: p.path.map(|x| self.describe(x)),
                    latency_us: p
                        .latency
                        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                    reachable: p.reachable,
                    reachable_since,
                    endpoint,
                    connections_out: c.connections_out,
                    connections_in: c.connections_in,
                    refused_in: p.denied_syn,
                    last_ok: c.last_ok.max(handshake),
                    last_handshake: handshake,
                    tx_bytes: p.tx_bytes,
                    rx_bytes: p.rx_bytes,
                };
                (p.id.clone(), path)
            })
            .collect();
        PlaneStatus {
            kind: "mesh".into(),
            listen: vec![st.listen],
            peers,
            refused: st.counters.filter.denied_syn,
            public_key: Some(st.public_key),
            tun: self.tun.clone(),
            home_relay: st.home_relay.map(|h| self.region_code(h)),
            relays: self
                .relays
                .as_ref()
                .map(|r| {
                    r.status()
                        .into_iter()
                        .map(|(id, s)| (self.region_code(id), s))
                        .collect()
                })
                .unwrap_or_default(),
            reflexive: {
                // The interfaces are read once, not per address.
                let local = self.mesh.endpoints();
                st.disco_endpoints
                    .iter()
                    .filter(|e| !local.contains(e))
                    .copied()
                    .collect()
            },
        }
    }

    async fn shutdown(&self) {
        self.cancel.cancel();
        self.mesh.close().await;
    }
}

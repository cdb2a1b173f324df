//! A data plane over kernel TCP, for nodes on one machine: each node listens
//! on a local TCP address (announced to control as its endpoint), and a
//! connection to a peer's mesh address is a TCP connection to the peer's
//! endpoint, authenticated both ways with mutual TLS — the caller presents
//! its machine certificate (which names its node id), the callee its serving
//! certificate (which names its DNS name), both from the mesh CA — followed
//! by a fixed-size header naming the mesh destination.
//!
//! The callee derives the caller's mesh address from the authenticated node
//! id and the map, never from the wire, and applies the inbound filter
//! before answering: a refused connection gets one status byte and is
//! closed, and never reaches an application. It stands in for the mesh
//! data plane; unlike it, the TCP and TLS handshakes complete before the
//! filter decides.

use super::{Connection, DataPlane, PeerPath, PlaneStatus};
use crate::certs::{CertStore, common_name, pem_certs};
use gatehouse_filter::NodeFilter;
use gatehouse_proto::control::Peer;
use rustls::pki_types::{PrivateKeyDer, ServerName, pem::PemObject};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_util::sync::CancellationToken;

/// ALPN protocol name of the loopback plane.
const ALPN: &[u8] = b"gatehouse-loopback/1";
/// Header version.
const VERSION: u8 = 1;
/// How long connecting (TCP, TLS, header, answer) may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// What a header asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A stream to a port.
    Connect,
    /// A ping: answered at once, reaches no application.
    Ping,
}

/// The header a caller sends after the TLS handshake: version, kind, the
/// mesh destination address (IPv6, or IPv4-mapped) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What is asked.
    pub kind: Kind,
    /// Mesh destination.
    pub dst: SocketAddr,
}

/// Header length in bytes.
pub const HEADER_LEN: usize = 20;

/// Answer codes.
mod status {
    pub const OK: u8 = 0;
    pub const FILTERED: u8 = 1;
    pub const UNKNOWN_PEER: u8 = 2;
    pub const NOT_HERE: u8 = 3;
    pub const BAD_HEADER: u8 = 4;
}

impl Header {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = VERSION;
        b[1] = match self.kind {
            Kind::Connect => 1,
            Kind::Ping => 2,
        };
        let v6 = match self.dst.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        b[2..18].copy_from_slice(&v6.octets());
        b[18..20].copy_from_slice(&self.dst.port().to_be_bytes());
        b
    }

    /// Decodes a header; `None` if it is not one.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Option<Header> {
        if b[0] != VERSION {
            return None;
        }
        let kind = match b[1] {
            1 => Kind::Connect,
            2 => Kind::Ping,
            _ => return None,
        };
        let mut o = [0u8; 16];
        o.copy_from_slice(&b[2..18]);
        let v6 = Ipv6Addr::from(o);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        let port = u16::from_be_bytes([b[18], b[19]]);
        Some(Header {
            kind,
            dst: SocketAddr::new(ip, port),
        })
    }
}

/// How a loopback plane starts.
#[derive(Debug, Clone)]
pub struct LoopbackConfig {
    /// Local TCP address to listen on (port 0: any).
    pub listen: SocketAddr,
    /// The node's mesh addresses.
    pub addresses: Vec<IpAddr>,
    /// The mesh CA (PEM).
    pub ca_pem: String,
    /// The node's machine certificate (PEM): its credential as a caller.
    pub machine_cert_pem: String,
    /// The machine key (PEM).
    pub machine_key_pem: String,
    /// The node's serving certificate: its credential as a callee.
    pub serving: Arc<CertStore>,
}

/// Why a loopback plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    /// TLS material.
    #[error("TLS: {0}")]
    Tls(String),
    /// Binding the listener.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: io::Error,
    },
}

#[derive(Debug, Default)]
struct Table {
    peers: HashMap<String, Peer>,
    by_addr: HashMap<IpAddr, String>,
    filter: Option<NodeFilter>,
}

#[derive(Debug)]
struct Shared {
    addresses: Vec<IpAddr>,
    table: RwLock<Arc<Table>>,
    stats: Mutex<BTreeMap<String, PeerPath>>,
    refused: AtomicU64,
    client_tls: Arc<rustls::ClientConfig>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

impl Shared {
    fn table(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn count(&self, id: &str, f: impl FnOnce(&mut PeerPath)) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(s.entry(id.to_string()).or_default());
    }
}

/// The loopback data plane.
#[derive(Debug)]
pub struct LoopbackPlane {
    shared: Arc<Shared>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Connection<TlsStream<TcpStream>>>>,
    cancel: CancellationToken,
    local: SocketAddr,
}

fn tls_err(e: impl std::fmt::Display) -> LoopbackError {
    LoopbackError::Tls(e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    gatehouse_ops::tls::provider()
}

fn roots(ca_pem: &str) -> Result<Arc<rustls::RootCertStore>, LoopbackError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(ca_pem).map_err(tls_err)? {
        roots.add(c).map_err(tls_err)?;
    }
    Ok(Arc::new(roots))
}

fn tls_configs(
    cfg: &LoopbackConfig,
) -> Result<(rustls::ServerConfig, rustls::ClientConfig), LoopbackError> {
    let roots = roots(&cfg.ca_pem)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(tls_err)?;
    let mut server =
        rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(
                Arc::clone(&cfg.serving) as Arc<dyn rustls::server::ResolvesServerCert>
            );
    server.alpn_protocols = vec![ALPN.to_vec()];
    let certs = pem_certs(&cfg.machine_cert_pem).map_err(tls_err)?;
    let key = PrivateKeyDer::from_pem_slice(cfg.machine_key_pem.as_bytes()).map_err(tls_err)?;
    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(tls_err)?;
    client.alpn_protocols = vec![ALPN.to_vec()];
    Ok((server, client))
}

impl LoopbackPlane {
    /// Binds the listener and starts accepting.
    pub async fn start(cfg: LoopbackConfig) -> Result<Self, LoopbackError> {
        let (server, client) = tls_configs(&cfg)?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| LoopbackError::Listen {
                    addr: cfg.listen,
                    source,
                })?;
        let local = listener
            .local_addr()
            .map_err(|source| LoopbackError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            addresses: cfg.addresses.clone(),
            table: RwLock::new(Arc::new(Table::default())),
            stats: Mutex::new(BTreeMap::new()),
            refused: AtomicU64::new(0),
            client_tls: Arc::new(client),
        });
        let (tx, rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(Arc::new(server)),
            Arc::clone(&shared),
            tx,
            cancel.clone(),
        ));
        Ok(LoopbackPlane {
            shared,
            incoming: tokio::sync::Mutex::new(rx),
            cancel,
            local,
        })
    }

    /// The local TCP address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn open(
        &self,
        kind: Kind,
        dst: SocketAddr,
    ) -> io::Result<(TlsStream<TcpStream>, String)> {
        if self.shared.addresses.contains(&dst.ip()) {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "that address is this node's own",
            ));
        }
        let table = self.shared.table();
        let unreachable = || {
            io::Error::new(
                io::ErrorKind::HostUnreachable,
                format!("no peer has {}", dst.ip()),
            )
        };
        let id = table.by_addr.get(&dst.ip()).ok_or_else(unreachable)?;
        let peer = table.peers.get(id).ok_or_else(unreachable)?;
        let endpoint = *peer.endpoints.first().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::HostUnreachable,
                format!("{} has announced no endpoint", peer.name),
            )
        })?;
        let name = ServerName::try_from(peer.fqdn.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let id = id.clone();
        let attempt = async {
            let tcp = TcpStream::connect(endpoint).await?;
            let _ = tcp.set_nodelay(true);
            let mut tls = TlsConnector::from(Arc::clone(&self.shared.client_tls))
                .connect(name, tcp)
                .await?;
            tls.write_all(&Header { kind, dst }.encode()).await?;
            tls.flush().await?;
            let mut answer = [0u8; 1];
            tls.read_exact(&mut answer).await?;
            match answer[0] {
                status::OK => Ok(TlsStream::Client(tls)),
                status::FILTERED => Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("{dst} refused by the peer's filter"),
                )),
                code => Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("{dst} refused by the peer (code {code})"),
                )),
            }
        };
        let stream = tokio::time::timeout(HANDSHAKE, attempt)
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {dst}"))
            })??;
        self.shared.count(&id, |p| {
            p.endpoint = Some(endpoint);
            if kind == Kind::Connect {
                p.connections_out += 1;
            }
            p.last_ok = Some(now_unix());
        });
        Ok((stream, id))
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Connection<TlsStream<TcpStream>>>,
    cancel: CancellationToken,
) {
    loop {
        let (tcp, from) = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "loopback plane: accept");
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        let tx = tx.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let r = tokio::select! {
                () = cancel.cancelled() => return,
                r = tokio::time::timeout(HANDSHAKE, inbound(tcp, from, acceptor, &shared)) => r,
            };
            match r {
                Ok(Ok(Some(conn))) => {
                    let _ = tx.send(conn).await;
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, %from, "loopback plane: inbound"),
                Err(_) => tracing::debug!(%from, "loopback plane: inbound handshake timed out"),
            }
        });
    }
}

/// One inbound connection: authenticate, read the header, apply the filter.
async fn inbound(
    tcp: TcpStream,
    from: SocketAddr,
    acceptor: TlsAcceptor,
    shared: &Shared,
) -> io::Result<Option<Connection<TlsStream<TcpStream>>>> {
    let mut tls = acceptor.accept(tcp).await?;
    let node_id = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| common_name(c.as_ref()))
        .and_then(|cn| cn.strip_prefix("node ").map(str::to_string));
    let mut raw = [0u8; HEADER_LEN];
    tls.read_exact(&mut raw).await?;
    let answer = |code: u8| [code];
    let Some(header) = Header::decode(&raw) else {
        tls.write_all(&answer(status::BAD_HEADER)).await?;
        return Ok(None);
    };
    let table = shared.table();
    let Some((id, peer)) = node_id
        .as_ref()
        .and_then(|id| table.peers.get(id).map(|p| (id, p)))
    else {
        // Not a peer in the current map: it may reach nothing here.
        shared.refused.fetch_add(1, Ordering::Relaxed);
        tls.write_all(&answer(status::UNKNOWN_PEER)).await?;
        return Ok(None);
    };
    if !shared.addresses.contains(&header.dst.ip()) {
        tls.write_all(&answer(status::NOT_HERE)).await?;
        return Ok(None);
    }
    if header.kind == Kind::Ping {
        shared.count(id, |p| p.last_ok = Some(now_unix()));
        tls.write_all(&answer(status::OK)).await?;
        tls.flush().await?;
        return Ok(None);
    }
    let src = peer
        .addresses
        .iter()
        .copied()
        .find(|a| a.is_ipv4() == header.dst.ip().is_ipv4());
    let allowed = match (src, &table.filter) {
        (Some(src), Some(f)) => f
            .allows(src, header.dst.ip(), 6, header.dst.port())
            .is_some(),
        _ => false,
    };
    let Some(src) = src.filter(|_| allowed) else {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        shared.count(id, |p| p.refused_in += 1);
        tracing::debug!(peer = %peer.name, dst = %header.dst, "loopback plane: refused by the filter");
        tls.write_all(&answer(status::FILTERED)).await?;
        return Ok(None);
    };
    tls.write_all(&answer(status::OK)).await?;
    tls.flush().await?;
    shared.count(id, |p| {
        p.connections_in += 1;
        p.last_ok = Some(now_unix());
    });
    Ok(Some(Connection {
        stream: TlsStream::Server(tls),
        remote: SocketAddr::new(src, from.port()),
        local: header.dst,
    }))
}

impl DataPlane for LoopbackPlane {
    type Stream = TlsStream<TcpStream>;

    fn apply(&self, peers: &[Peer], filter: &NodeFilter) {
        let mut t = Table {
            filter: Some(filter.clone()),
            ..Table::default()
        };
        for p in peers {
            for a in &p.addresses {
                t.by_addr.insert(*a, p.id.clone());
            }
            t.peers.insert(p.id.clone(), p.clone());
        }
        *self.shared.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(t);
    }

    async fn accept(&self) -> Option<Connection<Self::Stream>> {
        let mut rx = self.incoming.lock().await;
        tokio::select! {
            () = self.cancel.cancelled() => None,
            c = rx.recv() => c,
        }
    }

    async fn connect(&self, dst: SocketAddr) -> io::Result<Self::Stream> {
        self.open(Kind::Connect, dst).await.map(|(s, _)| s)
    }

    async fn ping(&self, dst: IpAddr) -> io::Result<Duration> {
        let start = Instant::now();
        self.open(Kind::Ping, SocketAddr::new(dst, 0)).await?;
        Ok(start.elapsed())
    }

    fn endpoints(&self) -> Vec<SocketAddr> {
        vec![self.local]
    }

    fn status(&self) -> PlaneStatus {
        let table = self.shared.table();
        let stats = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        let peers = table
            .peers
            .values()
            .map(|p| {
                let mut path = stats.get(&p.id).cloned().unwrap_or_default();
                if path.endpoint.is_none() {
                    path.endpoint = p.endpoints.first().copied();
                }
                (p.id.clone(), path)
            })
            .collect();
        PlaneStatus {
            kind: "loopback".into(),
            listen: vec![self.local],
            peers,
            refused: self.shared.refused.load(Ordering::Relaxed),
            public_key: None,
            tun: None,
            ..PlaneStatus::default()
        }
    }

    async fn shutdown(&self) {
        self.cancel.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for dst in ["100.64.0.2:443", "[fd01::2]:80", "0.0.0.0:0"] {
            let h = Header {
                kind: Kind::Connect,
                dst: dst.parse().unwrap(),
            };
            assert_eq!(Header::decode(&h.encode()), Some(h));
        }
        let mut b = Header {
            kind: Kind::Ping,
            dst: "100.64.0.2:0".parse().unwrap(),
        }
        .encode();
        b[1] = 9;
        assert_eq!(Header::decode(&b), None);
        b[0] = 2;
        assert_eq!(Header::decode(&b), None);
    }
}

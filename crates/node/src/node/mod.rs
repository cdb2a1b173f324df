//! The node daemon: identity and state directory, the control connection
//! (map stream with jittered reconnects, endpoint announcements, serving
//! certificate renewal), the data plane fed from the map, and the
//! applications and local API wired onto it.

mod control;
mod local;
mod renewal;
mod state;

use crate::api::{self, ControlStatus, NodeStatus};
use crate::certs::{CertError, CertStore};
use crate::dns;
use crate::metrics::NodeMetrics;
use crate::netmap::{MapView, Netmap};
use crate::plane::loopback::{LoopbackConfig, LoopbackPlane};
use crate::plane::mesh::{MeshPlane, MeshPlaneConfig};
use crate::plane::{DataPlane, PlaneDialer};
use crate::serve::{ServeConfig, ServeError, route::Route};
use crate::socks::{self, ProxyContext, ProxyStats};
use gatehouse_client::{ClientError, Identity, IdentityError, IdentityOrClientError, NodeClient};
use state::{load_or_register, prepare_state_dir};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which data plane a node runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PlaneKind {
    /// WireGuard (`gatehouse-mesh`) over one UDP socket, with user-space
    /// TCP/IP: no privileges needed. The default.
    #[default]
    Mesh,
    /// WireGuard with a TUN device of this name and the kernel's TCP/IP
    /// (root).
    MeshTun(String),
    /// Kernel TCP with mutual TLS to the peers' announced endpoints
    /// (`plane::loopback`): for tests of the layers above and comparisons.
    Loopback,
}

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// State directory: identity (keys, certificates) and the local socket.
    pub state_dir: PathBuf,
    /// Control's join string (needed to register).
    pub control: Option<String>,
    /// Pre-auth key (needed to register).
    pub authkey: Option<String>,
    /// Requested host name (used when registering).
    pub hostname: String,
    /// Register as one replica of the shared name `hostname` (tagged keys).
    pub shared_name: bool,
    /// Routes of `serve` on port 443 (none: no serve).
    pub routes: Vec<Route>,
    /// Redirect HTTP on port 80 to HTTPS (with `serve`).
    pub redirect_http: bool,
    /// Local SOCKS5 / HTTP CONNECT proxy address.
    pub socks5: Option<SocketAddr>,
    /// Local DNS resolver address (UDP and TCP).
    pub dns: Option<SocketAddr>,
    /// Metrics and health address.
    pub metrics: Option<SocketAddr>,
    /// The data plane's local address (UDP for the mesh, TCP for
    /// loopback), announced to control as the node's endpoint.
    pub listen: SocketAddr,
    /// The data plane.
    pub plane: PlaneKind,
    /// Connection limits of each `serve` listener (HTTPS and HTTP).
    pub serve_limits: gatehouse_limits::Limits,
}

impl NodeConfig {
    /// Defaults for a state directory: nothing served, the mesh data plane
    /// (user space) on `127.0.0.1:0`.
    pub fn new(state_dir: PathBuf, hostname: &str) -> Self {
        NodeConfig {
            state_dir,
            control: None,
            authkey: None,
            hostname: hostname.to_string(),
            shared_name: false,
            routes: Vec::new(),
            redirect_http: false,
            socks5: None,
            dns: None,
            metrics: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            plane: PlaneKind::Mesh,
            serve_limits: gatehouse_limits::Limits::default(),
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The state directory.
    #[error("state directory {path}")]
    State {
        /// Directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The saved identity.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Registration.
    #[error("registering")]
    Register(#[from] IdentityOrClientError),
    /// Talking to control.
    #[error("control")]
    Client(#[from] ClientError),
    /// The join string.
    #[error(transparent)]
    Join(#[from] gatehouse_client::JoinError),
    /// Not registered (or its key expired), and no join string or key to
    /// register with.
    #[error(
        "this node is not registered (or its key expired): give --control (and --authkey, or approve it at the URL it prints)"
    )]
    NeedsRegistration,
    /// The serving certificate.
    #[error("serving certificate")]
    Cert(#[from] CertError),
    /// Serve's configuration.
    #[error("serve")]
    Serve(#[from] ServeError),
    /// The data plane.
    #[error("data plane: {0}")]
    Plane(String),
    /// A listener.
    #[error("{what} on {addr}")]
    Bind {
        /// Which.
        what: &'static str,
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The local API socket.
    #[error(transparent)]
    Api(#[from] api::ApiError),
}

impl NodeError {
    /// Whether starting again later may succeed: talking to control (to
    /// register, or to fetch its CA) failed in a way that may pass (see
    /// [`ClientError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            NodeError::Client(e) | NodeError::Register(IdentityOrClientError::Client(e)) => {
                e.is_transient()
            }
            _ => false,
        }
    }
}

/// What a data plane is made from.
#[derive(Debug, Clone)]
pub struct PlaneInputs {
    /// The node's identity (keys stay in this process).
    pub identity: Identity,
    /// The serving certificate in use.
    pub certs: Arc<CertStore>,
    /// The configured local address.
    pub listen: SocketAddr,
    /// Ports the node's applications accept connections on from the mesh.
    pub ports: Vec<u16>,
}

/// Control no longer accepts a running node's identity: it answered `401`
/// (an administrator expired the node's key or deleted the node), or the
/// key's lifetime ended. The node has stopped talking to control and marked
/// its saved identity expired, so the next [`start`] registers again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Why (control's answer, or the lifetime's end).
    pub reason: String,
    /// Set when the saved identity could not be marked expired (nor
    /// removed): a new start would load it again, so the caller must stop
    /// and say so rather than start again.
    pub unmarked: Option<String>,
}

/// Addresses the node's listeners got.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bound {
    /// SOCKS5 / HTTP CONNECT.
    pub socks5: Option<SocketAddr>,
    /// DNS (UDP and TCP).
    pub dns: Option<SocketAddr>,
    /// Metrics.
    pub metrics: Option<SocketAddr>,
}

trait Handle: Send + Sync {
    fn status(&self) -> NodeStatus;
    fn stop_plane(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

struct Inner<P: DataPlane> {
    cfg: NodeConfig,
    identity: Mutex<Identity>,
    client: NodeClient,
    plane: Arc<P>,
    certs: Arc<CertStore>,
    map_tx: watch::Sender<Option<Arc<Netmap>>>,
    map: MapView,
    serve: Option<Arc<ServeConfig>>,
    metrics: Arc<NodeMetrics>,
    control: Mutex<ControlStatus>,
    /// Held while an announcement is sent: announcements go one at a
    /// time, each with what is current when its turn comes, so an older
    /// one never lands after a newer one.
    announcing: Arc<tokio::sync::Mutex<()>>,
    renewals: AtomicU64,
    ready_tx: watch::Sender<bool>,
    /// Set once control refused the identity (see [`Refused`]).
    refused_tx: watch::Sender<Option<Refused>>,
    cancel: CancellationToken,
    bound: Bound,
}

/// A running node.
pub struct RunningNode {
    handle: Arc<dyn Handle>,
    ready: watch::Receiver<bool>,
    refused: watch::Receiver<Option<Refused>>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    socket: PathBuf,
    /// The node's identity as it started.
    pub identity: Identity,
    /// Addresses its listeners got.
    pub bound: Bound,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("node", &self.identity.fqdn)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl RunningNode {
    /// Waits until the node serves (certificate in place, map received);
    /// `false` if it stopped first.
    pub async fn ready(&self) -> bool {
        let mut rx = self.ready.clone();
        tokio::select! {
            r = rx.wait_for(|r| *r) => r.is_ok(),
            () = self.cancel.cancelled() => false,
        }
    }

    /// Whether the node serves now.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// The node's status.
    pub fn status(&self) -> NodeStatus {
        self.handle.status()
    }

    /// Resolves once control refused the node's identity (see [`Refused`]):
    /// the node no longer talks to control and is not ready; shut it down
    /// and [`start`] again to register anew. Never resolves otherwise.
    pub async fn refused(&self) -> Refused {
        let mut rx = self.refused.clone();
        let refused = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone(),
            Err(_) => None,
        };
        match refused {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }

    /// Resolves once the node was asked to stop (`gatehouse node down`).
    pub async fn stopped(&self) {
        self.cancel.cancelled().await;
    }

    /// Stops everything and removes the local socket.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.handle.stop_plane().await;
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Starts a node on the data plane its configuration names.
pub async fn start(cfg: NodeConfig) -> Result<RunningNode, NodeError> {
    match cfg.plane.clone() {
        PlaneKind::Loopback => start_with(cfg, start_loopback).await,
        PlaneKind::Mesh => start_with(cfg, |i| start_mesh(i, None)).await,
        PlaneKind::MeshTun(name) => start_with(cfg, |i| start_mesh(i, Some(name))).await,
    }
}

async fn start_loopback(inputs: PlaneInputs) -> Result<LoopbackPlane, String> {
    LoopbackPlane::start(LoopbackConfig {
        listen: inputs.listen,
        addresses: inputs.identity.addresses.clone(),
        ca_pem: inputs.identity.ca_cert.clone(),
        machine_cert_pem: inputs.identity.machine_cert.clone(),
        machine_key_pem: inputs.identity.machine_key.clone(),
        serving: inputs.certs,
    })
    .await
    .map_err(|e| e.to_string())
}

/// The WireGuard key comes from the identity in the state directory and
/// stays in this process; control only ever had its public half.
async fn start_mesh(inputs: PlaneInputs, tun: Option<String>) -> Result<MeshPlane, String> {
    let private_key =
        gatehouse_mesh::MeshConfig::decode_private_key(&inputs.identity.wireguard_private)
            .map_err(|e| e.to_string())?;
    MeshPlane::start(MeshPlaneConfig {
        private_key,
        addresses: inputs.identity.addresses.clone(),
        listen: inputs.listen,
        tun,
        ports: inputs.ports,
        relay_tls: Some(relay_tls(&inputs.identity.ca_cert)?),
    })
    .await
    .map_err(|e| e.to_string())
}

/// What relays' certificates must chain to: the mesh CA (control's
/// embedded relay has control's certificate) or a public CA (standalone
/// relays with certificates of their own).
fn relay_tls(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = gatehouse_ops::tls::system_roots();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("the mesh CA in the identity: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("the mesh CA in the identity: {e}"))?;
    }
    gatehouse_ops::tls::client_config(Some(roots), &[])
        .map(Arc::new)
        .map_err(|e| format!("relay TLS: {e}"))
}

/// The ports `accept_loop` hands to an application.
fn serve_ports(cfg: &NodeConfig) -> Vec<u16> {
    match (cfg.routes.is_empty(), cfg.redirect_http) {
        (true, _) => Vec::new(),
        (false, false) => vec![443],
        (false, true) => vec![443, 80],
    }
}

fn spawn_conn(cancel: &CancellationToken, fut: impl Future<Output = ()> + Send + 'static) {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = cancel.cancelled() => {}
            () = fut => {}
        }
    });
}

async fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { what, addr, source })
}

/// The node's local listeners (SOCKS5 and HTTP CONNECT, DNS, metrics),
/// bound before anything starts so a busy address fails the start.
struct Listeners {
    socks: Option<TcpListener>,
    dns: Option<(tokio::net::UdpSocket, TcpListener)>,
    metrics: Option<TcpListener>,
}

impl Listeners {
    async fn bind(cfg: &NodeConfig) -> Result<Self, NodeError> {
        let socks = match cfg.socks5 {
            Some(a) => Some(bind_tcp("SOCKS5", a).await?),
            None => None,
        };
        let dns = match cfg.dns {
            Some(a) => Some(dns::bind(a).await.map_err(|source| NodeError::Bind {
                what: "DNS",
                addr: a,
                source,
            })?),
            None => None,
        };
        let metrics = match cfg.metrics {
            Some(a) => Some(bind_tcp("metrics", a).await?),
            None => None,
        };
        Ok(Listeners {
            socks,
            dns,
            metrics,
        })
    }

    fn bound(&self) -> Bound {
        Bound {
            socks5: self.socks.as_ref().and_then(|l| l.local_addr().ok()),
            dns: self.dns.as_ref().and_then(|(u, _)| u.local_addr().ok()),
            metrics: self.metrics.as_ref().and_then(|l| l.local_addr().ok()),
        }
    }

    /// Starts the applications on their listeners.
    fn serve(
        self,
        ctx: ProxyContext,
        map: &MapView,
        metrics: &Arc<NodeMetrics>,
        ready: &watch::Receiver<bool>,
        cancel: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if let Some(l) = self.socks {
            let cancel = cancel.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let (tcp, from) = tokio::select! {
                        () = cancel.cancelled() => return,
                        r = l.accept() => match r {
                            Ok(x) => x,
                            Err(_) => continue,
                        },
                    };
                    let _ = tcp.set_nodelay(true);
                    spawn_conn(&cancel, socks::handle(tcp, from, ctx.clone()));
                }
            }));
        }
        if let Some((udp, tcp)) = self.dns {
            let resolver = dns::Resolver::new(Arc::new(map.clone()));
            let m = Arc::clone(metrics);
            let on: dns::OnOutcome = Arc::new(move |o| m.dns_outcome(o));
            tasks.push(tokio::spawn(dns::serve_udp(
                udp,
                resolver.clone(),
                Arc::clone(&on),
                cancel.clone(),
            )));
            tasks.push(tokio::spawn(dns::serve_tcp(
                tcp,
                resolver,
                on,
                cancel.clone(),
            )));
        }
        if let Some(l) = self.metrics {
            let m = Arc::clone(metrics);
            let r = ready.clone();
            let stop = cancel.clone();
            tasks.push(tokio::spawn(gatehouse_ops::server::serve(
                l,
                Arc::new(move || m.encode()),
                Arc::new(move || {
                    if *r.borrow() {
                        Ok(())
                    } else {
                        Err("not ready".into())
                    }
                }),
                async move { stop.cancelled().await },
            )));
        }
        tasks
    }
}

/// Serves the local API on the node's socket (for its owner and root).
fn serve_local_api<P: DataPlane + std::fmt::Debug>(
    listener: tokio::net::UnixListener,
    socket: &std::path::Path,
    inner: &Arc<Inner<P>>,
    cancel: &CancellationToken,
) -> JoinHandle<()> {
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(socket).map(|m| m.uid()).unwrap_or(0)
    };
    let h = Arc::clone(inner);
    let handler: api::Handler = Arc::new(move |req| {
        let h = Arc::clone(&h);
        Box::pin(async move { h.handle_api(req).await })
    });
    tokio::spawn(api::serve(listener, owner, handler, cancel.clone()))
}

/// Starts a node on the data plane `make_plane` builds. Returns once every
/// listener is bound; [`RunningNode::ready`] tells when it serves.
pub async fn start_with<P, F, Fut>(cfg: NodeConfig, make_plane: F) -> Result<RunningNode, NodeError>
where
    P: DataPlane + std::fmt::Debug,
    F: FnOnce(PlaneInputs) -> Fut,
    Fut: Future<Output = Result<P, String>>,
{
    prepare_state_dir(&cfg.state_dir)?;
    let api_listener = api::bind(&cfg.state_dir).await?;
    let socket = api::socket_path(&cfg.state_dir);
    let identity = load_or_register(&cfg).await?;
    let certs = CertStore::new();
    certs.set(&identity.serving_cert, &identity.serving_key)?;
    let plane = Arc::new(
        make_plane(PlaneInputs {
            identity: identity.clone(),
            certs: Arc::clone(&certs),
            listen: cfg.listen,
            ports: serve_ports(&cfg),
        })
        .await
        .map_err(NodeError::Plane)?,
    );
    let client = NodeClient::new(&identity)?;
    let serve = if cfg.routes.is_empty() {
        None
    } else {
        Some(Arc::new(ServeConfig::new(
            identity.fqdn.clone(),
            cfg.routes.clone(),
            Arc::clone(&certs),
            cfg.serve_limits.clone(),
        )?))
    };
    let proxy_stats = Arc::new(ProxyStats::default());
    let mut metrics = NodeMetrics::new();
    if let Some(s) = &serve {
        metrics.register_serve(&s.stats);
    }
    metrics.register_proxy(&proxy_stats);
    if let Some(c) = plane.collector() {
        metrics.register_collector(c);
    }
    let metrics = Arc::new(metrics);

    let listeners = Listeners::bind(&cfg).await?;
    let bound = listeners.bound();

    let (map_tx, map) = MapView::channel();
    let (ready_tx, ready) = watch::channel(false);
    let (refused_tx, refused) = watch::channel(None);
    let cancel = CancellationToken::new();
    let inner = Arc::new(Inner {
        announcing: Arc::new(tokio::sync::Mutex::new(())),
        control: Mutex::new(ControlStatus {
            url: identity.control.clone(),
            ..ControlStatus::default()
        }),
        identity: Mutex::new(identity.clone()),
        cfg,
        client,
        plane: Arc::clone(&plane),
        certs,
        map_tx,
        map: map.clone(),
        serve,
        metrics: Arc::clone(&metrics),
        renewals: AtomicU64::new(0),
        ready_tx,
        refused_tx,
        cancel: cancel.clone(),
        bound,
    });

    let mut tasks = vec![
        tokio::spawn(Arc::clone(&inner).control_loop()),
        tokio::spawn(Arc::clone(&inner).renew_loop()),
        tokio::spawn(Arc::clone(&inner).accept_loop()),
    ];
    let ctx = ProxyContext {
        dialer: Arc::new(PlaneDialer(Arc::clone(&plane))),
        names: Arc::new(map.clone()),
        stats: proxy_stats,
    };
    tasks.extend(listeners.serve(ctx, &map, &metrics, &ready, &cancel));
    tasks.push(serve_local_api(api_listener, &socket, &inner, &cancel));
    Ok(RunningNode {
        handle: inner as Arc<dyn Handle>,
        ready,
        refused,
        cancel,
        tasks,
        socket,
        identity,
        bound,
    })
}

impl<P: DataPlane + std::fmt::Debug> Handle for Inner<P> {
    fn status(&self) -> NodeStatus {
        Inner::status(self)
    }

    fn stop_plane(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.plane.shutdown())
    }
}

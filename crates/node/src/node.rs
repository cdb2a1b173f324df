//! The node daemon: identity and state directory, the control connection
//! (map stream with jittered reconnects, endpoint announcements, serving
//! certificate renewal), the data plane fed from the map, and the
//! applications and local API wired onto it.

use crate::api::{
    self, ApiRequest, ApiResponse, CertStatus, ControlStatus, NodeStatus, PeerStatus, PlaneSummary,
};
use crate::certs::{self, CertError, CertStore};
use crate::dns;
use crate::metrics::NodeMetrics;
use crate::netmap::{MapView, Netmap};
use crate::plane::loopback::{LoopbackConfig, LoopbackPlane};
use crate::plane::mesh::{MeshPlane, MeshPlaneConfig};
use crate::plane::{DataPlane, PlaneDialer};
use crate::serve::{self, ServeConfig, ServeError, route::Route};
use crate::socks::{self, ProxyContext, ProxyStats};
use gatehouse_client::{
    ClientError, Identity, IdentityError, IdentityOrClientError, Join, NodeClient,
};
use gatehouse_ops::Retries;
use gatehouse_proto::control::{MapMessage, MapState, Peer};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// First reconnect delay after losing control.
const RECONNECT_BASE: Duration = Duration::from_millis(250);
/// Longest reconnect delay: a control restart costs nodes at most this much
/// once it listens again (each wait is drawn from the upper half, so nodes
/// spread out).
const RECONNECT_CAP: Duration = Duration::from_secs(5);
/// Longest wait control may ask for before a reconnect.
const RECONNECT_HINT_CAP: Duration = Duration::from_secs(30);

/// How a map stream ended without an error.
enum StreamEnd {
    /// The node is stopping.
    Stopped,
    /// Control closed the stream.
    Closed,
    /// Control is restarting and asked for a reconnect after this delay.
    Reconnect(Duration),
}
/// A map stream silent for this long is considered dead (control sends
/// keepalives every 25 seconds by default).
const MAP_SILENCE: Duration = Duration::from_secs(90);

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
    #[error("state directory {path}: {source}")]
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
    #[error("registering: {0}")]
    Register(#[from] IdentityOrClientError),
    /// Talking to control.
    #[error("control: {0}")]
    Client(#[from] ClientError),
    /// The join string.
    #[error(transparent)]
    Join(#[from] gatehouse_client::JoinError),
    /// Not registered, and no join string or key to register with.
    #[error("this node is not registered yet: give --control and --authkey")]
    NeedsRegistration,
    /// The serving certificate.
    #[error("serving certificate: {0}")]
    Cert(#[from] CertError),
    /// Serve's configuration.
    #[error("serve: {0}")]
    Serve(#[from] ServeError),
    /// The data plane.
    #[error("data plane: {0}")]
    Plane(String),
    /// A listener.
    #[error("{what} on {addr}: {source}")]
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
    renewals: AtomicU64,
    ready_tx: watch::Sender<bool>,
    cancel: CancellationToken,
    bound: Bound,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn prepare_state_dir(dir: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| NodeError::State {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            "the state directory is readable by others; its key files are not, but 0700 is advised"
        );
    }
    Ok(())
}

/// Loads the identity, or registers with control and saves it.
async fn load_or_register(cfg: &NodeConfig) -> Result<Identity, NodeError> {
    if let Some(id) = Identity::load(&cfg.state_dir)? {
        if let Some(c) = &cfg.control
            && let Ok(j) = Join::parse(c)
            && j.url() != id.control
        {
            tracing::warn!(saved = %id.control, given = %j.url(), "already registered with another control; using the saved one");
        }
        tracing::info!(node = %id.fqdn, "identity loaded");
        return Ok(id);
    }
    let (Some(control), Some(authkey)) = (&cfg.control, &cfg.authkey) else {
        return Err(NodeError::NeedsRegistration);
    };
    let join = Join::parse(control)?;
    let ca = gatehouse_client::fetch_pinned_ca(&join).await?;
    let id = if cfg.shared_name {
        NodeClient::register_replica(&join, &ca, authkey, &cfg.hostname).await?
    } else {
        NodeClient::register(&join, &ca, authkey, &cfg.hostname).await?
    };
    id.save(&cfg.state_dir)?;
    tracing::info!(node = %id.fqdn, id = %id.node_id, "registered");
    Ok(id)
}

/// A running node.
pub struct RunningNode {
    handle: Arc<dyn Handle>,
    ready: watch::Receiver<bool>,
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
    })
    .await
    .map_err(|e| e.to_string())
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
    let metrics = Arc::new(metrics);

    let socks_listener = match cfg.socks5 {
        Some(a) => Some(bind_tcp("SOCKS5", a).await?),
        None => None,
    };
    let dns_sockets = match cfg.dns {
        Some(a) => Some(dns::bind(a).await.map_err(|source| NodeError::Bind {
            what: "DNS",
            addr: a,
            source,
        })?),
        None => None,
    };
    let metrics_listener = match cfg.metrics {
        Some(a) => Some(bind_tcp("metrics", a).await?),
        None => None,
    };
    let bound = Bound {
        socks5: socks_listener.as_ref().and_then(|l| l.local_addr().ok()),
        dns: dns_sockets.as_ref().and_then(|(u, _)| u.local_addr().ok()),
        metrics: metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
    };

    let (map_tx, map) = MapView::channel();
    let (ready_tx, ready) = watch::channel(false);
    let cancel = CancellationToken::new();
    let inner = Arc::new(Inner {
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
        cancel: cancel.clone(),
        bound,
    });

    let mut tasks = vec![
        tokio::spawn(Arc::clone(&inner).control_loop()),
        tokio::spawn(Arc::clone(&inner).renew_loop()),
        tokio::spawn(Arc::clone(&inner).accept_loop()),
    ];
    if let Some(l) = socks_listener {
        let ctx = ProxyContext {
            dialer: Arc::new(PlaneDialer(Arc::clone(&plane))),
            names: Arc::new(map.clone()),
            stats: proxy_stats,
        };
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
    if let Some((udp, tcp)) = dns_sockets {
        let resolver = dns::Resolver::new(Arc::new(map.clone()));
        let m = Arc::clone(&metrics);
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
    if let Some(l) = metrics_listener {
        let m = Arc::clone(&metrics);
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
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&socket).map(|m| m.uid()).unwrap_or(0)
    };
    let h = Arc::clone(&inner);
    let handler: api::Handler = Arc::new(move |req| {
        let h = Arc::clone(&h);
        Box::pin(async move { h.handle_api(req).await })
    });
    tasks.push(tokio::spawn(api::serve(
        api_listener,
        owner,
        handler,
        cancel.clone(),
    )));
    Ok(RunningNode {
        handle: inner as Arc<dyn Handle>,
        ready,
        cancel,
        tasks,
        socket,
        identity,
        bound,
    })
}

impl<P: DataPlane + std::fmt::Debug> Inner<P> {
    fn set_control(&self, f: impl FnOnce(&mut ControlStatus)) {
        let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c);
    }

    /// Ready once a map arrived and the certificate in use is valid.
    fn update_ready(&self) {
        let now = SystemTime::now();
        let cert_ok = self.certs.info().is_some_and(|i| i.not_after > now);
        let ready = cert_ok && self.map.current().is_some();
        self.ready_tx.send_if_modified(|r| {
            let changed = *r != ready;
            *r = ready;
            changed
        });
    }

    async fn control_loop(self: Arc<Self>) {
        let mut backoff = Retries::new(RECONNECT_BASE, RECONNECT_CAP);
        let mut state: Option<MapState> = None;
        loop {
            let result = self.run_stream(&mut state, &mut backoff).await;
            self.metrics.control_connected.set(0);
            let (error, delay) = match result {
                Ok(StreamEnd::Stopped) => return,
                Ok(StreamEnd::Reconnect(after)) => {
                    tracing::info!(
                        after_ms = after.as_millis(),
                        "control: restarting; reconnecting"
                    );
                    backoff.reset();
                    ("control is restarting".to_string(), after)
                }
                Ok(StreamEnd::Closed) => {
                    let e = "control closed the map stream".to_string();
                    tracing::warn!(error = %e, "control: map stream lost; reconnecting");
                    (e, backoff.next_delay())
                }
                Err(e) => {
                    let e = e.to_string();
                    tracing::warn!(error = %e, "control: map stream lost; reconnecting");
                    (e, backoff.next_delay())
                }
            };
            self.set_control(|c| {
                c.connected = false;
                c.last_error = Some(error);
            });
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn run_stream(
        &self,
        state: &mut Option<MapState>,
        backoff: &mut Retries,
    ) -> Result<StreamEnd, ClientError> {
        let mut stream = tokio::select! {
            () = self.cancel.cancelled() => return Ok(StreamEnd::Stopped),
            s = self.client.map() => s?,
        };
        self.set_control(|c| c.streams += 1);
        let mut first = true;
        loop {
            let next = tokio::select! {
                () = self.cancel.cancelled() => return Ok(StreamEnd::Stopped),
                n = tokio::time::timeout(MAP_SILENCE, stream.next()) => n,
            };
            let msg = match next {
                Err(_) => return Err(ClientError::Http("map stream silent too long".into())),
                Ok(r) => match r? {
                    Some(MapMessage::Reconnect { after_ms }) => {
                        let after = Duration::from_millis(after_ms).min(RECONNECT_HINT_CAP);
                        return Ok(StreamEnd::Reconnect(after));
                    }
                    Some(m) => m,
                    None => return Ok(StreamEnd::Closed),
                },
            };
            if first {
                if !matches!(msg, MapMessage::Full(_)) {
                    return Err(ClientError::Decode(
                        "first map message is not a full map".into(),
                    ));
                }
                first = false;
                backoff.reset();
                self.metrics.control_connected.set(1);
                self.set_control(|c| {
                    c.connected = true;
                    c.last_error = None;
                });
                tracing::info!("control: map stream open");
                self.announce_endpoints();
            }
            self.metrics.map_messages.inc();
            self.set_control(|c| c.map_messages += 1);
            self.apply(state, msg);
        }
    }

    fn announce_endpoints(&self) {
        let client = self.client.clone();
        // Loopback reaches only this machine: announce it only to a control
        // on this machine (whose other nodes are here too); control refuses
        // it from anywhere else.
        let local = client.control_is_local();
        let endpoints: Vec<_> = self
            .plane
            .endpoints()
            .into_iter()
            .filter(|ep| local || !ep.ip().to_canonical().is_loopback())
            .collect();
        tokio::spawn(async move {
            if let Err(e) = client.set_endpoints(&endpoints).await {
                tracing::warn!(error = %e, "control: announcing endpoints");
            }
        });
    }

    fn apply(&self, state: &mut Option<MapState>, msg: MapMessage) {
        match msg {
            MapMessage::Keepalive | MapMessage::Reconnect { .. } => return,
            MapMessage::Full(f) => *state = Some(MapState::from_full(f)),
            MapMessage::Delta(d) => match state.as_mut() {
                Some(s) => s.apply(MapMessage::Delta(d)),
                None => return,
            },
        }
        let Some(s) = state.as_ref() else { return };
        self.adopt_cert_from_map(&s.self_node.serving_cert);
        let peers: Vec<Peer> = s.peers.values().cloned().collect();
        self.plane.apply(&peers, &s.filter);
        self.map_tx
            .send_replace(Some(Arc::new(Netmap::new(s.clone()))));
        self.update_ready();
    }

    /// Takes a serving certificate control sent in the map when it is for
    /// the node's key and lasts longer than the one in use.
    fn adopt_cert_from_map(&self, pem: &str) {
        let (current, key) = {
            let id = self.identity.lock().unwrap_or_else(|p| p.into_inner());
            (id.serving_cert.clone(), id.serving_key.clone())
        };
        if pem.is_empty() || pem == current {
            return;
        }
        let Ok(ck) = certs::certified_key(pem, &key) else {
            return;
        };
        let Ok(new) = ck
            .end_entity_cert()
            .map_err(CertError::from)
            .and_then(|c| certs::cert_info(c.as_ref()))
        else {
            return;
        };
        let longer = self
            .certs
            .info()
            .is_none_or(|cur| new.not_after > cur.not_after);
        if longer && self.certs.set(pem, &key).is_ok() {
            self.save_serving_cert(pem);
        }
    }

    fn save_serving_cert(&self, pem: &str) {
        let mut id = self.identity.lock().unwrap_or_else(|p| p.into_inner());
        id.serving_cert = pem.to_string();
        if let Err(e) = id.save(&self.cfg.state_dir) {
            tracing::warn!(error = %e, "saving the renewed certificate");
        }
    }

    async fn renew_once(&self) -> Result<(), NodeError> {
        let (csr, key) = {
            let id = self.identity.lock().unwrap_or_else(|p| p.into_inner());
            (id.serving_csr()?, id.serving_key.clone())
        };
        let pem = self.client.renew(&csr).await?;
        let info = self.certs.set(&pem, &key)?;
        self.save_serving_cert(&pem);
        self.renewals.fetch_add(1, Ordering::Relaxed);
        self.metrics.cert_renewals.inc();
        tracing::info!(serial = %info.serial, not_after = unix(info.not_after), "serving certificate renewed");
        self.update_ready();
        Ok(())
    }

    async fn renew_loop(self: Arc<Self>) {
        let mut just_renewed = false;
        let mut retry = Retries::new(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            let Some(info) = self.certs.info() else {
                return;
            };
            let now = SystemTime::now();
            let at = certs::next_renewal(&info, now, just_renewed);
            let wait = at.duration_since(now).unwrap_or_default();
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            match self.renew_once().await {
                Ok(()) => {
                    just_renewed = true;
                    retry.reset();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the serving certificate");
                    just_renewed = false;
                    let delay = retry.next_delay();
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn accept_loop(self: Arc<Self>) {
        loop {
            let conn = tokio::select! {
                () = self.cancel.cancelled() => return,
                c = self.plane.accept() => match c {
                    Some(c) => c,
                    None => return,
                },
            };
            match (conn.local.port(), &self.serve) {
                (443, Some(cfg)) => {
                    // Over the cap, the connection is closed at once.
                    let Some(slot) = cfg.gate.admit() else {
                        tracing::debug!(remote = %conn.remote, "serve: listener full, connection closed");
                        continue;
                    };
                    let who = self.map.current().and_then(|m| m.caller(conn.remote.ip()));
                    spawn_conn(
                        &self.cancel,
                        serve::handle(conn.stream, slot, conn.remote, who, Arc::clone(cfg)),
                    );
                }
                (80, Some(cfg)) if self.cfg.redirect_http => {
                    let Some(slot) = cfg.redirect_gate.admit() else {
                        tracing::debug!(remote = %conn.remote, "serve: redirect listener full, connection closed");
                        continue;
                    };
                    spawn_conn(
                        &self.cancel,
                        serve::handle_redirect(conn.stream, slot, conn.remote, Arc::clone(cfg)),
                    );
                }
                (port, _) => {
                    tracing::debug!(remote = %conn.remote, port, "nothing serves this port");
                }
            }
        }
    }

    async fn handle_api(&self, req: ApiRequest) -> ApiResponse {
        match req {
            ApiRequest::Status => ApiResponse::Status(Box::new(self.status())),
            ApiRequest::Down => {
                tracing::info!("stopping (local API)");
                self.cancel.cancel();
                ApiResponse::Ok
            }
            ApiRequest::Ping { peer } => self.ping(&peer).await,
        }
    }

    async fn ping(&self, what: &str) -> ApiResponse {
        let Some(map) = self.map.current() else {
            return ApiResponse::Error {
                error: "no map from control yet".into(),
            };
        };
        let Some(peer) = map
            .find(what)
            .filter(|p| p.id != map.state.self_node.node.id)
        else {
            return ApiResponse::Error {
                error: format!("{what} is not a peer of this node"),
            };
        };
        let addr: Option<IpAddr> = what
            .parse::<IpAddr>()
            .ok()
            .or_else(|| peer.addresses.iter().copied().find(IpAddr::is_ipv4))
            .or_else(|| peer.addresses.first().copied());
        let Some(addr) = addr else {
            return ApiResponse::Error {
                error: format!("{} has no address", peer.fqdn),
            };
        };
        match self.plane.ping(addr).await {
            Ok(rtt) => ApiResponse::Pong {
                peer: peer.fqdn.clone(),
                addr,
                rtt_ms: rtt.as_secs_f64() * 1000.0,
            },
            Err(e) => ApiResponse::Error {
                error: format!("{}: {e}", peer.fqdn),
            },
        }
    }

    fn status(&self) -> NodeStatus {
        let id = self
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let map = self.map.current();
        let plane = self.plane.status();
        let me = map.as_ref().map(|m| m.state.self_node.node.clone());
        let mut peers: Vec<PeerStatus> = map
            .as_ref()
            .map(|m| {
                m.state
                    .peers
                    .values()
                    .map(|p| PeerStatus {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        fqdn: p.fqdn.clone(),
                        addresses: p.addresses.clone(),
                        user: p.user.clone(),
                        tags: p.tags.clone(),
                        endpoints: p.endpoints.clone(),
                        path: plane.peers.get(&p.id).cloned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let certificate = self.certs.info().map(|i| CertStatus {
            serial: i.serial.clone(),
            not_after: unix(i.not_after),
            renew_at: unix(i.renew_at()),
            renewals: self.renewals.load(Ordering::Relaxed),
        });
        NodeStatus {
            ready: *self.ready_tx.borrow(),
            node_id: id.node_id.clone(),
            name: me.as_ref().map_or(id.name.clone(), |m| m.name.clone()),
            fqdn: me.as_ref().map_or(id.fqdn.clone(), |m| m.fqdn.clone()),
            addresses: me
                .as_ref()
                .map_or(id.addresses.clone(), |m| m.addresses.clone()),
            user: me.as_ref().and_then(|m| m.user.clone()),
            tags: me.as_ref().map(|m| m.tags.clone()).unwrap_or_default(),
            control: self
                .control
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            certificate,
            peers,
            plane: PlaneSummary {
                kind: plane.kind,
                listen: plane.listen,
                refused: plane.refused,
                public_key: plane.public_key,
                tun: plane.tun,
            },
            serve: self
                .serve
                .as_ref()
                .map(|s| s.routes.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            socks5: self.bound.socks5,
            dns: self.bound.dns,
            metrics: self.bound.metrics,
        }
    }
}

impl<P: DataPlane + std::fmt::Debug> Handle for Inner<P> {
    fn status(&self) -> NodeStatus {
        Inner::status(self)
    }

    fn stop_plane(&self) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.plane.shutdown())
    }
}

//! The edge's shell: listeners, tasks, reloads and shutdown.

use crate::acme::Http01;
use crate::certs::{ACME_TLS_ALPN, CertStore};
use crate::config::{EdgeConfig, Route};
use crate::proxy::{Public, http_answer};
use crate::tokens::TokenStore;
use crate::tunnels::{Registry, TunnelSide};
use gatehouse_limits::{Gate, ListenerMetrics};
use gatehouse_ops::Chain;
use hyper::body::Incoming;
use hyper::service::service_fn;
use prometheus_client::registry::Registry as Metrics;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::{debug, error, info};

/// Why the edge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The tunnel store is unusable.
    #[error(transparent)]
    Tokens(#[from] crate::tokens::TokenStoreError),
    /// A certificate is unusable.
    #[error(transparent)]
    Cert(#[from] crate::certs::CertError),
    /// TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] gatehouse_ops::tls::TlsError),
    /// A listener could not be opened.
    #[error("listen {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// rustls refused the configuration.
    #[error("TLS")]
    Rustls(#[from] rustls::Error),
    /// The QUIC stateless reset key could not be derived.
    #[error(transparent)]
    ResetKey(#[from] crate::quic_reset::ResetKeyError),
    /// Access could not be set up.
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
}

/// How long in-flight public requests may run after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

async fn bind(addr: SocketAddr) -> Result<TcpListener, EdgeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| EdgeError::Listen { addr, source })
}

/// Runs the edge until `shutdown` resolves. `config_path`, when given, is
/// re-read on SIGHUP (routes, path rules, certificate files).
pub async fn run(
    cfg: EdgeConfig,
    config_path: Option<PathBuf>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), EdgeError> {
    let edge = start(cfg, config_path).await?;
    shutdown.await;
    edge.shutdown().await;
    Ok(())
}

/// A running edge: its bound addresses and live tunnel connections.
#[derive(Debug)]
pub struct RunningEdge {
    /// Public HTTPS address.
    pub https: SocketAddr,
    /// Public HTTP address.
    pub http: Option<SocketAddr>,
    /// Tunnel address (UDP for QUIC and TCP for TLS, same port).
    pub tunnel: SocketAddr,
    /// Operations address.
    pub admin: Option<SocketAddr>,
    registry: Arc<Registry>,
    public: Arc<Public>,
    endpoint: quinn::Endpoint,
    tasks: tokio::task::JoinSet<()>,
    listeners: tokio::task::JoinSet<()>,
    stop_tx: tokio::sync::watch::Sender<bool>,
}

/// Binds the tunnel port on UDP (QUIC) and TCP (TLS). Port 0 picks a port
/// free on both.
fn bind_tunnel(
    addr: SocketAddr,
    quic: &quinn::ServerConfig,
    endpoint_config: &quinn::EndpointConfig,
) -> Result<(quinn::Endpoint, std::net::TcpListener), EdgeError> {
    let listen_err = |addr, source| EdgeError::Listen { addr, source };
    let tcp_for = |a: SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::bind(a)?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    if addr.port() != 0 {
        let endpoint = gatehouse_tunnel_io::transport::quic_endpoint(
            addr,
            Some(quic.clone()),
            endpoint_config.clone(),
        )
        .map_err(|e| listen_err(addr, e))?;
        let tcp = tcp_for(addr).map_err(|e| listen_err(addr, e))?;
        return Ok((endpoint, tcp));
    }
    let mut last = None;
    for _ in 0..32 {
        let endpoint = gatehouse_tunnel_io::transport::quic_endpoint(
            addr,
            Some(quic.clone()),
            endpoint_config.clone(),
        )
        .map_err(|e| listen_err(addr, e))?;
        let udp = endpoint.local_addr().map_err(|e| listen_err(addr, e))?;
        match tcp_for(udp) {
            Ok(tcp) => return Ok((endpoint, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(listen_err(
        addr,
        last.unwrap_or_else(|| std::io::Error::other("no port free on both UDP and TCP")),
    ))
}

fn local(l: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, EdgeError> {
    l.local_addr()
        .map_err(|source| EdgeError::Listen { addr, source })
}

impl RunningEdge {
    /// Live connector connections (every tunnel).
    pub fn live_connections(&self) -> usize {
        self.registry.live()
    }

    /// Public requests forwarded over a tunnel so far.
    pub fn forwarded_requests(&self) -> u64 {
        self.public.metrics.forwarded.get()
    }

    /// Stops taking requests, lets those in flight finish (up to a grace
    /// period), then closes the tunnel connections.
    pub async fn shutdown(mut self) {
        let (public, registry, endpoint) = (self.public, self.registry, self.endpoint);
        // A draining edge takes no new tunnel connections either: they
        // would be cut when it exits.
        info!("edge draining: refusing new public and tunnel connections");
        registry.refuse_new();
        self.listeners.abort_all();
        let _ = self.stop_tx.send(true);
        let inflight = public.inflight.clone();
        let drained = async {
            while inflight.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
            tracing::warn!(
                inflight = public.inflight.load(std::sync::atomic::Ordering::Relaxed),
                "grace period over with requests in flight"
            );
        }
        info!("edge shutting down: closing tunnel connections");
        registry.close_all();
        endpoint.close(
            quinn::VarInt::from_u32(gatehouse_proto::CLOSE_EDGE_SHUTDOWN),
            b"edge shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        self.tasks.abort_all();
    }
}

/// Binds every listener and starts serving; returns once the edge accepts
/// connections. `config_path`, when given, is re-read on SIGHUP.
pub async fn start(
    cfg: EdgeConfig,
    config_path: Option<PathBuf>,
) -> Result<RunningEdge, EdgeError> {
    let heartbeat = cfg.heartbeat()?;
    let routes = cfg.routes()?;
    let limits = cfg.limits()?;
    let listener_metrics = ListenerMetrics::default();
    let gate = |name: &'static str| Gate::with_metrics(limits.clone(), listener_metrics.gate(name));
    let tokens = TokenStore::load(&cfg.tokens)?;
    let store = Arc::new(CertStore::default());
    load_cert_files(&cfg, &store)?;
    let registry = Arc::new(Registry::default());
    let access = match cfg.access()? {
        Some(settings) => Some(Arc::new(crate::access::Access::new(settings)?)),
        None => None,
    };
    let public = Arc::new(Public {
        access,
        routes: RwLock::new(Arc::new(routes)),
        registry: registry.clone(),
        metrics: Default::default(),
        inflight: Default::default(),
    });
    let http01 = Arc::new(Http01::default());
    let side = Arc::new(TunnelSide {
        registry: registry.clone(),
        tokens: Arc::new(RwLock::new(tokens)),
        heartbeat,
    });
    let statics = Arc::new(RwLock::new(cfg.routes()?));
    let route_api = load_route_api(&cfg, &store)?;
    if let Some(api) = &route_api {
        publish_routes(&public, &statics, Some(api));
    }

    let tunnel_tls = TunnelTls::load(&cfg)?;
    let mut tasks = tokio::task::JoinSet::new();
    let (endpoint, tunnel_addr) =
        start_tunnel_endpoint(&cfg, &tunnel_tls, heartbeat, &side, &mut tasks)?;

    let https = bind(cfg.listen.https).await?;
    let https_addr = local(&https, cfg.listen.https)?;
    let mut http_addr = None;
    let mut admin_addr = None;
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(crate::certs::server_config(store.clone())?));
    let mut listeners = tokio::task::JoinSet::new();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    listeners.spawn(serve_https(
        https,
        gate("https"),
        acceptor,
        public.clone(),
        stop_rx,
    ));
    if let Some(addr) = cfg.listen.http {
        let l = bind(addr).await?;
        http_addr = Some(local(&l, addr)?);
        listeners.spawn(serve_http(l, gate("http"), public.clone(), http01.clone()));
    }
    if let Some(addr) = cfg.listen.admin {
        let metrics = ops_metrics(&public, &registry, &listener_metrics);
        admin_addr = Some(serve_admin(addr, metrics, registry.clone(), &mut tasks).await?);
    }
    if let Some(api) = route_api.clone() {
        let changed = route_changes(&api, &cfg, &public, &statics, &store, &http01);
        let shared = crate::routes_api::Shared {
            api,
            tokens: side.tokens.clone(),
            changed,
        };
        let gate = gate("route_api").http1_only();
        serve_route_api(shared, gate, &tunnel_tls, &mut tasks).await?;
    }
    if let Some(acme) = cfg.acme.clone() {
        spawn_acme(
            acme,
            &cfg,
            route_api.as_deref(),
            &store,
            &http01,
            &mut tasks,
        );
    }
    tasks.spawn(watch(
        cfg.tokens.clone(),
        config_path,
        side.clone(),
        public.clone(),
        store.clone(),
        (statics.clone(), route_api.clone()),
    ));
    info!(https = %https_addr, tunnel = %tunnel_addr, "edge ready");
    Ok(RunningEdge {
        https: https_addr,
        http: http_addr,
        tunnel: tunnel_addr,
        admin: admin_addr,
        registry,
        public,
        endpoint,
        tasks,
        listeners,
        stop_tx,
    })
}

/// Serves metrics, `/healthz` and `/readyz` (ready while a tunnel
/// connection is live) on `addr`; returns the address bound.
async fn serve_admin(
    addr: SocketAddr,
    metrics: Metrics,
    registry: Arc<Registry>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<SocketAddr, EdgeError> {
    let ready: gatehouse_ops::server::Readiness = Arc::new(move || {
        if registry.live() > 0 {
            Ok(())
        } else {
            Err("no live tunnel connection".into())
        }
    });
    let l = bind(addr).await?;
    let bound = local(&l, addr)?;
    tasks.spawn(gatehouse_ops::server::serve(
        l,
        gatehouse_ops::server::registry_metrics(Arc::new(metrics)),
        ready,
        std::future::pending(),
    ));
    Ok(bound)
}

/// Serves the route API (HTTP/1.1 over the tunnel's TLS) on its address.
async fn serve_route_api(
    shared: crate::routes_api::Shared,
    gate: Gate,
    tunnel_tls: &TunnelTls,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<(), EdgeError> {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(tunnel_tls.server_config(b"http/1.1")?));
    let listen = shared.api.listen();
    let listener = bind(listen).await?;
    tasks.spawn(crate::routes_api::serve(listener, gate, acceptor, shared));
    info!(%listen, "route API ready");
    Ok(())
}

/// The route API's registrations, with their certificates installed.
fn load_route_api(
    cfg: &EdgeConfig,
    store: &Arc<CertStore>,
) -> Result<Option<Arc<crate::routes_api::RouteApi>>, EdgeError> {
    let Some(rc) = &cfg.route_api else {
        return Ok(None);
    };
    let api = crate::routes_api::RouteApi::load(
        rc.clone(),
        cfg.hostnames.iter().map(|h| h.hostname.clone()).collect(),
    )
    .map_err(|source| EdgeError::Listen {
        addr: rc.listen,
        source,
    })?;
    for h in api.hostnames() {
        crate::routes_api::install_cert(&api, store, &h)?;
    }
    Ok(Some(Arc::new(api)))
}

/// The tunnel endpoint's certificate and key (also the route API's).
struct TunnelTls {
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TunnelTls {
    fn load(cfg: &EdgeConfig) -> Result<Self, EdgeError> {
        Ok(TunnelTls {
            chain: gatehouse_ops::tls::load_certs(&cfg.tunnel_tls.cert)?,
            key: gatehouse_ops::tls::load_key(&cfg.tunnel_tls.key)?,
        })
    }

    fn server_config(&self, alpn: &[u8]) -> Result<rustls::ServerConfig, EdgeError> {
        let mut c = rustls::ServerConfig::builder_with_provider(gatehouse_ops::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        c.alpn_protocols = vec![alpn.to_vec()];
        Ok(c)
    }
}

/// The tunnel endpoint: QUIC on UDP, TLS + HTTP/2 on TCP, same port; its
/// accept loops go into `tasks`.
fn start_tunnel_endpoint(
    cfg: &EdgeConfig,
    tls: &TunnelTls,
    heartbeat: Duration,
    side: &Arc<TunnelSide>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<(quinn::Endpoint, SocketAddr), EdgeError> {
    let qsc = quinn::crypto::rustls::QuicServerConfig::try_from(
        tls.server_config(gatehouse_proto::ALPN_QUIC)?,
    )
    .map_err(|e| rustls::Error::Other(rustls::OtherError(Arc::new(e))))?;
    let mut quic = quinn::ServerConfig::with_crypto(Arc::new(qsc));
    quic.transport_config(gatehouse_tunnel_io::transport::quic_transport(heartbeat, 1));
    // Stateless resets a restarted edge sends are recognised by connectors
    // of the crashed one: the keys are derived from the tunnel TLS key.
    let endpoint_config = crate::quic_reset::endpoint_config(&tls.key)?;
    let (endpoint, tunnel_tcp) = bind_tunnel(cfg.listen.tunnel, &quic, &endpoint_config)?;
    let tunnel_tcp = TcpListener::from_std(tunnel_tcp).map_err(|source| EdgeError::Listen {
        addr: cfg.listen.tunnel,
        source,
    })?;
    let tunnel_addr = local(&tunnel_tcp, cfg.listen.tunnel)?;
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(tls.server_config(gatehouse_proto::ALPN_TCP)?));
    tasks.spawn(crate::tunnels::accept_quic(side.clone(), endpoint.clone()));
    tasks.spawn(crate::tunnels::accept_tcp(
        side.clone(),
        tunnel_tcp,
        acceptor,
    ));
    Ok((endpoint, tunnel_addr))
}

/// The edge's metrics, served on its operations listener.
fn ops_metrics(public: &Public, registry: &Registry, listeners: &ListenerMetrics) -> Metrics {
    let mut metrics = Metrics::with_prefix("gatehouse_edge");
    metrics.register(
        "responses",
        "Public responses by status code",
        public.metrics.responses.clone(),
    );
    metrics.register(
        "forwarded_requests",
        "Public requests forwarded over a tunnel",
        public.metrics.forwarded.clone(),
    );
    metrics.register(
        "tunnel_connections",
        "Live connector connections",
        registry.metrics.connections.clone(),
    );
    metrics.register(
        "tunnel_auth_failures",
        "Connector connections refused for a bad token",
        registry.metrics.auth_failures.clone(),
    );
    listeners.register(&mut metrics);
    metrics.register(
        "tunnel_probe_failures",
        "Connector connections closed for not answering a liveness probe",
        registry.metrics.probe_failures.clone(),
    );
    metrics.register(
        "tunnel_retries",
        "Requests sent again on another connector after a tunnel stream failed",
        registry.metrics.retries.clone(),
    );
    metrics
}

/// What a registration through the route API sets off: its certificate
/// (from the route API's files, or ACME), and the routes republished.
fn route_changes(
    api: &Arc<crate::routes_api::RouteApi>,
    cfg: &EdgeConfig,
    public: &Arc<Public>,
    statics: &Arc<RwLock<BTreeMap<String, Route>>>,
    store: &Arc<CertStore>,
    http01: &Arc<Http01>,
) -> crate::routes_api::OnChange {
    let (public, statics, store, http01) = (
        public.clone(),
        statics.clone(),
        store.clone(),
        http01.clone(),
    );
    let acme = cfg.acme.clone();
    let api = api.clone();
    Arc::new(move |reg: Option<&crate::routes_api::Registered>| {
        if let Some(r) = reg {
            if api.tls().is_some() {
                if let Err(e) = crate::routes_api::install_cert(&api, &store, &r.hostname) {
                    error!(error = %Chain(&e), host = %r.hostname, "certificate for a registered route");
                }
            } else if let Some(a) = acme.clone()
                && !store.has(&r.hostname)
            {
                tokio::spawn(crate::acme::maintain(
                    a,
                    vec![r.hostname.clone()],
                    store.clone(),
                    http01.clone(),
                ));
            }
        }
        publish_routes(&public, &statics, Some(&api));
    })
}

/// Keeps ACME certificates for the hostnames without certificate files.
fn spawn_acme(
    acme: crate::config::AcmeConfig,
    cfg: &EdgeConfig,
    route_api: Option<&crate::routes_api::RouteApi>,
    store: &Arc<CertStore>,
    http01: &Arc<Http01>,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    let mut hosts: Vec<String> = cfg
        .hostnames
        .iter()
        .filter(|h| h.tls.is_none())
        .map(|h| h.hostname.clone())
        .collect();
    if let Some(api) = route_api.filter(|a| a.tls().is_none()) {
        hosts.extend(api.hostnames());
    }
    if !hosts.is_empty() {
        tasks.spawn(crate::acme::maintain(
            acme,
            hosts,
            store.clone(),
            http01.clone(),
        ));
    }
}

/// The routes of the config file.
type Statics = Arc<RwLock<std::collections::BTreeMap<String, crate::config::Route>>>;

/// Makes the public route table the config's routes plus the registered
/// ones (a config host name always wins).
fn publish_routes(
    public: &Public,
    statics: &Statics,
    api: Option<&Arc<crate::routes_api::RouteApi>>,
) {
    let mut all = api.map(|a| a.routes()).unwrap_or_default();
    all.extend(match statics.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    });
    match public.routes.write() {
        Ok(mut g) => *g = Arc::new(all),
        Err(p) => *p.into_inner() = Arc::new(all),
    }
}

fn load_cert_files(cfg: &EdgeConfig, store: &CertStore) -> Result<(), EdgeError> {
    for h in &cfg.hostnames {
        if let Some(t) = &h.tls {
            store.load_files(&h.hostname, &t.cert, &t.key)?;
        }
    }
    Ok(())
}

async fn serve_https(
    listener: TcpListener,
    gate: Gate,
    acceptor: tokio_rustls::TlsAcceptor,
    public: Arc<Public>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer, slot) = gate.accept(&listener).await;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let public = public.clone();
        let gate = gate.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let tls = match gate.handshake(&acceptor, tcp).await {
                Ok(t) => t,
                Err(e) => return debug!(%peer, error = %Chain(&e), "TLS handshake failed"),
            };
            if tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
                return; // TLS-ALPN-01 validation: the handshake was the answer.
            }
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let public = public.clone();
                async move { Ok::<_, std::convert::Infallible>(public.handle(req, peer, "https").await) }
            });
            // On shutdown: finish the requests in flight, refuse new ones.
            let stopped = async move {
                let _ = stop.changed().await;
            };
            match gate.serve(tls, slot, svc, stopped).await {
                Ok(ended) => debug!(%peer, ?ended, "connection closed"),
                Err(e) => debug!(%peer, error = %Chain(&e), "connection failed"),
            }
        });
    }
}

async fn serve_http(listener: TcpListener, gate: Gate, public: Arc<Public>, http01: Arc<Http01>) {
    loop {
        let (tcp, peer, slot) = gate.accept(&listener).await;
        let public = public.clone();
        let http01 = http01.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let resp = http_answer(&public, &http01, &req);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            if let Err(e) = gate.serve(tcp, slot, svc, std::future::pending()).await {
                debug!(%peer, error = %Chain(&e), "plain HTTP connection failed");
            }
        });
    }
}

/// Reloads the token store when its file changes or on SIGHUP (closing the
/// connections of revoked tunnels), and the edge config on SIGHUP.
async fn watch(
    tokens_path: PathBuf,
    config_path: Option<PathBuf>,
    side: Arc<TunnelSide>,
    public: Arc<Public>,
    store: Arc<CertStore>,
    (statics, route_api): (Statics, Option<Arc<crate::routes_api::RouteApi>>),
) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = std::fs::read(&tokens_path).ok();
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
        };
        let now = std::fs::read(&tokens_path).ok();
        if forced || now != last {
            last = now;
            match TokenStore::load(&tokens_path) {
                Ok(t) => {
                    match side.tokens.write() {
                        Ok(mut g) => *g = t,
                        Err(p) => *p.into_inner() = t,
                    }
                    info!("tunnel store reloaded");
                }
                Err(e) => {
                    error!(error = %Chain(&e), "tunnel store reload refused; keeping the running one")
                }
            }
        }
        // Revoked or expired tunnels lose their live connections.
        let active: Vec<String> = match side.tokens.read() {
            Ok(g) => g
                .active(crate::tokens::now_unix())
                .map(str::to_owned)
                .collect(),
            Err(p) => p
                .into_inner()
                .active(crate::tokens::now_unix())
                .map(str::to_owned)
                .collect(),
        };
        side.registry.close_revoked(&active);
        if forced {
            if let Some(p) = &config_path {
                match EdgeConfig::load(p).and_then(|c| Ok((c.routes()?, c))) {
                    Ok((routes, c)) => {
                        if let Err(e) = load_cert_files(&c, &store) {
                            error!(error = %Chain(&e), "certificate reload failed; keeping the running ones");
                        }
                        if let Some(api) = &route_api {
                            api.set_statics(
                                c.hostnames.iter().map(|h| h.hostname.clone()).collect(),
                            );
                        }
                        match statics.write() {
                            Ok(mut g) => *g = routes,
                            Err(p) => *p.into_inner() = routes,
                        }
                        publish_routes(&public, &statics, route_api.as_ref());
                        info!("edge config reloaded");
                    }
                    Err(e) => {
                        error!(error = %Chain(&e), "edge config reload refused; keeping the running one")
                    }
                }
            }
        }
    }
}

//! The connector's shell: HA connections to the edges, the control stream
//! (hello, heartbeats, drain), hot reload of the ingress rules, and shutdown.

use crate::control::{Action, ControlCore};
use crate::ingress::Ingress;
use crate::origin::Origins;
use crate::proxy::{self, Loaded};
use gatehouse_ops::{Backoff, Chain};
use gatehouse_proto::{CLOSE_DRAINED, Frame, Hello, Token};
use gatehouse_tunnel_io::stream::{FrameReader, FrameWriter, StreamError, TunnelBody, h2pipe};
use gatehouse_tunnel_io::transport;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, error, info, info_span, warn};

/// Which transport to dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// QUIC first; TLS/TCP when a QUIC attempt fails.
    Auto,
    /// QUIC only.
    Quic,
    /// TLS/TCP with HTTP/2 streams only.
    Tcp,
}

/// Everything the connector needs to run.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// The tunnel token.
    pub token: Token,
    /// Edge addresses; connections are spread over them.
    pub edges: Vec<SocketAddr>,
    /// Name the edge's tunnel certificate must carry.
    pub edge_server_name: String,
    /// PEM roots that sign the edge's tunnel certificate (the system's
    /// roots when `None`).
    pub edge_ca: Option<PathBuf>,
    /// Transport choice.
    pub transport: Transport,
    /// Number of connections (default 4).
    pub ha_connections: usize,
    /// How long in-flight requests may run after a shutdown signal.
    pub grace_period: Duration,
    /// The cloudflared-style config file with `ingress:` rules.
    pub config_path: PathBuf,
    /// Where to serve `/ready` and `/metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// Longest wait for a connection handshake.
    pub handshake_timeout: Duration,
}

/// Why the connector cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The config file cannot be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The ingress rules are invalid.
    #[error(transparent)]
    Ingress(#[from] crate::ingress::IngressError),
    /// An origin client cannot be built.
    #[error(transparent)]
    Origin(#[from] crate::origin::OriginError),
    /// TLS material for the edge is unusable.
    #[error(transparent)]
    Tls(#[from] gatehouse_ops::tls::TlsError),
    /// A socket could not be opened.
    #[error("socket")]
    Io(#[from] std::io::Error),
    /// No edge address.
    #[error("at least one --edge address is needed")]
    NoEdge,
}

/// Metrics of the connector.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    /// Live tunnel connections.
    pub connections: Gauge,
    /// Live tunnel connections on the TLS/TCP fallback.
    pub tcp_connections: Gauge,
    /// Requests received through the tunnel.
    pub requests: Counter,
    /// Requests whose origin could not be reached.
    pub origin_errors: Counter,
    /// Requests matched by a rule the connector does not serve.
    pub refused: Counter,
    /// Successful config reloads.
    pub reloads: Counter,
    /// Refused config reloads.
    pub reload_failures: Counter,
}

pub(crate) struct Shared {
    pub(crate) loaded: RwLock<Arc<Loaded>>,
    pub(crate) metrics: Metrics,
    live: AtomicUsize,
    connector_id: String,
    cfg: ConnectorConfig,
}

/// Reads and validates a config file into rules and origin clients; logs
/// the rules that validate but will be refused.
pub fn load(path: &std::path::Path) -> Result<(Ingress, Origins, String), ConnectorError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConnectorError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let ing = Ingress::parse(&text)?;
    let origins = Origins::build(&ing)?;
    for (i, rule, why) in ing.refused() {
        warn!(rule = i, hostname = rule.hostname, service = %rule.service, reason = %why, "ingress rule will not be served");
    }
    Ok((ing, origins, text))
}

/// Runs the connector until `shutdown` resolves, then drains: the edges are
/// told to send no new streams, in-flight requests get `grace_period` to
/// finish, and the connections close.
pub async fn run(
    cfg: ConnectorConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ConnectorError> {
    if cfg.edges.is_empty() {
        return Err(ConnectorError::NoEdge);
    }
    let (ing, origins, text) = load(&cfg.config_path)?;
    let roots = match &cfg.edge_ca {
        Some(p) => gatehouse_ops::tls::load_roots(p)?,
        None => gatehouse_ops::tls::system_roots(),
    };
    let metrics = Metrics::default();
    let mut registry = Registry::with_prefix("gatehouse_connector");
    registry.register(
        "connections",
        "Live tunnel connections",
        metrics.connections.clone(),
    );
    registry.register(
        "tcp_connections",
        "Live tunnel connections on the TLS/TCP fallback",
        metrics.tcp_connections.clone(),
    );
    registry.register(
        "requests",
        "Requests received through the tunnel",
        metrics.requests.clone(),
    );
    registry.register(
        "origin_errors",
        "Requests whose origin failed",
        metrics.origin_errors.clone(),
    );
    registry.register(
        "refused_requests",
        "Requests matched by an ingress rule the connector does not serve",
        metrics.refused.clone(),
    );
    registry.register(
        "reloads",
        "Successful config reloads",
        metrics.reloads.clone(),
    );
    registry.register(
        "reload_failures",
        "Refused config reloads",
        metrics.reload_failures.clone(),
    );
    let connector_id = hex_id();
    let shared = Arc::new(Shared {
        loaded: RwLock::new(Arc::new(Loaded::new(ing, origins, text))),
        metrics,
        live: AtomicUsize::new(0),
        connector_id: connector_id.clone(),
        cfg: cfg.clone(),
    });
    info!(connector_id, edges = ?cfg.edges, ha = cfg.ha_connections, "connector starting");

    let mut background = tokio::task::JoinSet::new();
    if let Some(addr) = cfg.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let s = shared.clone();
        let ready: gatehouse_ops::server::Readiness = Arc::new(move || {
            if s.live.load(Ordering::Relaxed) > 0 {
                Ok(())
            } else {
                Err("no live tunnel connection".into())
            }
        });
        background.spawn(gatehouse_ops::server::serve(
            listener,
            gatehouse_ops::server::registry_metrics(Arc::new(registry)),
            ready,
            std::future::pending(),
        ));
    }
    background.spawn(crate::reload::watch(shared.clone()));

    let dialer = Arc::new(Dialer::new(&cfg, roots)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut slots = tokio::task::JoinSet::new();
    for i in 0..cfg.ha_connections.max(1) {
        let edge = cfg.edges[i % cfg.edges.len()];
        let span = info_span!("conn", index = i, %edge);
        slots
            .spawn(slot(shared.clone(), dialer.clone(), i, edge, stop_rx.clone()).instrument(span));
    }
    shutdown.await;
    info!(grace = ?cfg.grace_period, "shutting down: draining connections");
    let _ = stop_tx.send(true);
    let drain = async { while slots.join_next().await.is_some() {} };
    if tokio::time::timeout(cfg.grace_period + Duration::from_secs(2), drain)
        .await
        .is_err()
    {
        warn!("grace period over, closing remaining connections");
    }
    dialer
        .endpoint
        .close(quinn::VarInt::from_u32(CLOSE_DRAINED), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(1), dialer.endpoint.wait_idle()).await;
    background.abort_all();
    info!("connector stopped");
    Ok(())
}

fn hex_id() -> String {
    let b: [u8; 8] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Dialer {
    endpoint: quinn::Endpoint,
    quic: quinn::ClientConfig,
    tls: tokio_rustls::TlsConnector,
}

impl Dialer {
    fn new(cfg: &ConnectorConfig, roots: rustls::RootCertStore) -> Result<Self, ConnectorError> {
        let bind: SocketAddr = if cfg.edges.iter().all(|a| a.is_ipv4()) {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let endpoint = transport::quic_endpoint(bind, None, quinn::EndpointConfig::default())?;
        let rustls_quic =
            gatehouse_ops::tls::client_config(Some(roots.clone()), &[gatehouse_proto::ALPN_QUIC])?;
        let qc = quinn::crypto::rustls::QuicClientConfig::try_from(rustls_quic)
            .map_err(std::io::Error::other)?;
        let mut quic = quinn::ClientConfig::new(Arc::new(qc));
        quic.transport_config(transport::quic_transport(
            Duration::from_secs(1),
            transport::CONNECTOR_STREAMS_INITIAL,
        ));
        let rustls_tcp =
            gatehouse_ops::tls::client_config(Some(roots), &[gatehouse_proto::ALPN_TCP])?;
        Ok(Self {
            endpoint,
            quic,
            tls: tokio_rustls::TlsConnector::from(Arc::new(rustls_tcp)),
        })
    }
}

/// How one connection ended.
enum Ended {
    /// The connector is shutting down and this connection drained.
    Drained,
    /// The connection was lost or closed by the edge.
    Lost(String),
}

#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("connect: {name:?} is not a valid TLS server name")]
    ServerName {
        name: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    #[error("connect")]
    QuicConnect(#[source] quinn::ConnectError),
    #[error("connect")]
    QuicConnection(#[source] quinn::ConnectionError),
    #[error("connect: QUIC handshake timed out")]
    QuicTimeout,
    #[error("connect")]
    Io(#[source] std::io::Error),
    #[error("connect: TLS handshake timed out")]
    TlsTimeout,
    #[error("token refused by the edge: {0}")]
    Refused(String),
    #[error("handshake")]
    Stream(#[source] StreamError),
    #[error("handshake")]
    OpenStream(#[source] quinn::ConnectionError),
    #[error("handshake: {0}")]
    Handshake(&'static str),
}

/// Delays between attempts to return to QUIC while a connection is on the
/// TLS/TCP fallback (`--transport auto`): from about a second, doubling up
/// to 30 s, jittered like reconnections.
pub const QUIC_RETRY: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(30),
};

async fn slot(
    shared: Arc<Shared>,
    dialer: Arc<Dialer>,
    index: usize,
    edge: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    // Fallback connections still draining after QUIC took over.
    let mut draining = Vec::new();
    connect_loop(&shared, &dialer, index, edge, stop, &mut draining).await;
    for t in draining {
        let _ = t.await;
    }
}

async fn connect_loop(
    shared: &Arc<Shared>,
    dialer: &Arc<Dialer>,
    index: usize,
    edge: SocketAddr,
    mut stop: watch::Receiver<bool>,
    draining: &mut Vec<tokio::task::JoinHandle<Result<Ended, DialError>>>,
) {
    let cfg = &shared.cfg;
    let mut attempt = 0u32;
    let mut use_tcp = cfg.transport == Transport::Tcp;
    loop {
        if *stop.borrow() {
            return;
        }
        draining.retain(|t| !t.is_finished());
        let started = Instant::now();
        let result = match (use_tcp, cfg.transport) {
            (true, Transport::Auto) => fallback(shared, dialer, index, edge, &stop, draining).await,
            (true, _) => dial_tcp(shared, dialer, index, edge, stop.clone()).await,
            (false, _) => dial_quic(shared, dialer, index, edge, stop.clone()).await,
        };
        match result {
            Ok(Ended::Drained) => return,
            Ok(Ended::Lost(why)) => {
                warn!(reason = why, "tunnel connection lost; reconnecting");
                if started.elapsed() > Duration::from_secs(5) {
                    attempt = 0;
                }
            }
            Err(DialError::Refused(why)) => {
                error!(reason = why, "the edge refused the tunnel token");
            }
            Err(e) => {
                warn!(error = %Chain(&e), tcp = use_tcp, "could not connect to the edge");
                if cfg.transport == Transport::Auto && !use_tcp {
                    use_tcp = true;
                    continue;
                }
            }
        }
        if cfg.transport == Transport::Auto {
            use_tcp = false;
        }
        let delay = cfg.backoff.delay(attempt, rand::random::<f64>());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

fn hello(shared: &Shared, index: usize) -> Frame {
    Frame::Hello(Hello {
        version: gatehouse_proto::VERSION,
        token: shared.cfg.token.encode(),
        connector_id: shared.connector_id.clone(),
        conn_index: u8::try_from(index).unwrap_or(u8::MAX),
    })
}

fn welcome(frame: Option<Frame>) -> Result<gatehouse_proto::Welcome, DialError> {
    match frame {
        Some(Frame::Welcome(w)) => Ok(w),
        Some(Frame::Refused(r)) => Err(DialError::Refused(r)),
        Some(_) => Err(DialError::Handshake("unexpected frame")),
        None => Err(DialError::Handshake("closed during handshake")),
    }
}

/// A QUIC connection whose hello the edge welcomed, not served yet.
struct QuicSetup {
    conn: quinn::Connection,
    w: FrameWriter,
    r: FrameReader,
    wel: gatehouse_proto::Welcome,
}

async fn dial_quic(
    shared: &Arc<Shared>,
    dialer: &Dialer,
    index: usize,
    edge: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Result<Ended, DialError> {
    let q = connect_quic(shared, dialer, index, edge).await?;
    Ok(serve_quic(shared, q, stop).await)
}

/// The QUIC handshake, then hello and welcome on the control stream.
async fn connect_quic(
    shared: &Arc<Shared>,
    dialer: &Dialer,
    index: usize,
    edge: SocketAddr,
) -> Result<QuicSetup, DialError> {
    let hs = shared.cfg.handshake_timeout;
    let connecting = dialer
        .endpoint
        .connect_with(dialer.quic.clone(), edge, &shared.cfg.edge_server_name)
        .map_err(DialError::QuicConnect)?;
    // `Elapsed` says only that the deadline passed; the variant says which.
    let conn = tokio::time::timeout(hs, connecting)
        .await
        .map_err(|_elapsed| DialError::QuicTimeout)?
        .map_err(DialError::QuicConnection)?;
    let setup = async {
        let (send, recv) = conn.open_bi().await.map_err(DialError::OpenStream)?;
        // Heartbeats and the drain go ahead of response data.
        let _ = send.set_priority(transport::CONTROL_PRIORITY);
        let mut w = FrameWriter::quic(send);
        let mut r = FrameReader::new(Box::new(recv));
        w.send(&hello(shared, index))
            .await
            .map_err(DialError::Stream)?;
        let f = r.next().await.map_err(DialError::Stream)?;
        Ok::<_, DialError>((w, r, welcome(f)?))
    };
    let (w, r, wel) = tokio::time::timeout(hs, setup)
        .await
        .map_err(|_elapsed| DialError::Handshake("timed out"))??;
    Ok(QuicSetup { conn, w, r, wel })
}

/// Serves a welcomed QUIC connection until it ends.
async fn serve_quic(shared: &Arc<Shared>, q: QuicSetup, stop: watch::Receiver<bool>) -> Ended {
    let QuicSetup { conn, w, r, wel } = q;
    info!(
        tunnel = wel.tunnel,
        connection_id = wel.connection_id,
        transport = "quic",
        "tunnel connection registered"
    );
    let sink = StreamSink::new(shared.clone());
    let accept_conn = conn.clone();
    let acceptor_sink = sink.clone();
    let acceptor = tokio::spawn(async move {
        let mut limit = transport::CONNECTOR_STREAMS_INITIAL;
        while let Ok((send, recv)) = accept_conn.accept_bi().await {
            acceptor_sink.spawn(FrameWriter::quic(send), FrameReader::new(Box::new(recv)));
            let inflight = acceptor_sink.inflight.load(Ordering::Relaxed);
            if let Some(more) = transport::grown_stream_limit(limit, inflight) {
                limit = more;
                accept_conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(more));
                debug!(streams = more, inflight, "stream allowance raised");
            }
        }
    });
    let close_conn = conn.clone();
    let closed = {
        let c = conn.clone();
        async move { c.closed().await.to_string() }
    };
    let ended = serve(shared, wel, w, r, &sink, stop, closed, move || {
        close_conn.close(quinn::VarInt::from_u32(CLOSE_DRAINED), b"drained");
    })
    .await;
    acceptor.abort();
    ended
}

/// Serves a TLS/TCP fallback connection (`--transport auto`) while trying
/// QUIC again in the background ([`QUIC_RETRY`]). Once a QUIC connection is
/// welcomed, it takes over: the TCP connection drains in the background
/// (`GoAway`; its requests in flight finish, `draining` keeps its task for
/// the shutdown to wait on) and the QUIC one is served.
async fn fallback(
    shared: &Arc<Shared>,
    dialer: &Arc<Dialer>,
    index: usize,
    edge: SocketAddr,
    stop: &watch::Receiver<bool>,
    draining: &mut Vec<tokio::task::JoinHandle<Result<Ended, DialError>>>,
) -> Result<Ended, DialError> {
    let (drain_tcp, tcp_stop) = watch::channel(false);
    let mut tcp = {
        let (shared, dialer) = (shared.clone(), dialer.clone());
        tokio::spawn(
            async move { dial_tcp(&shared, &dialer, index, edge, tcp_stop).await }
                .in_current_span(),
        )
    };
    let retry_quic = async {
        let mut attempt = 0u32;
        loop {
            tokio::time::sleep(QUIC_RETRY.delay(attempt, rand::random::<f64>())).await;
            attempt = attempt.saturating_add(1);
            match connect_quic(shared, dialer, index, edge).await {
                Ok(q) => return q,
                Err(e) => debug!(error = %Chain(&e), "QUIC still unavailable; staying on TLS/TCP"),
            }
        }
    };
    let joined = |r: Result<Result<Ended, DialError>, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| Ok(Ended::Lost(format!("connection task: {e}"))))
    };
    let mut stopping = stop.clone();
    let stopped = async move {
        // (The guard `wait_for` returns must not live across an await.)
        let _ = stopping.wait_for(|s| *s).await.map(|_| ());
    };
    tokio::select! {
        r = &mut tcp => joined(r),
        q = retry_quic => {
            info!(
                connection_id = q.wel.connection_id,
                "QUIC works again: draining the TLS/TCP connection"
            );
            let _ = drain_tcp.send(true);
            draining.push(tcp);
            Ok(serve_quic(shared, q, stop.clone()).await)
        }
        () = stopped => {
            let _ = drain_tcp.send(true);
            joined(tcp.await)
        }
    }
}

async fn dial_tcp(
    shared: &Arc<Shared>,
    dialer: &Dialer,
    index: usize,
    edge: SocketAddr,
    stop: watch::Receiver<bool>,
) -> Result<Ended, DialError> {
    let hs = shared.cfg.handshake_timeout;
    let name = rustls::pki_types::ServerName::try_from(shared.cfg.edge_server_name.clone())
        .map_err(|source| DialError::ServerName {
            name: shared.cfg.edge_server_name.clone(),
            source,
        })?;
    let setup = async {
        let tcp = tokio::net::TcpStream::connect(edge)
            .await
            .map_err(DialError::Io)?;
        let _ = tcp.set_nodelay(true);
        let mut tls = dialer.tls.connect(name, tcp).await.map_err(DialError::Io)?;
        transport::write_raw(&mut tls, &hello(shared, index))
            .await
            .map_err(DialError::Stream)?;
        let f = transport::read_raw(&mut tls)
            .await
            .map_err(DialError::Stream)?;
        Ok::<_, DialError>((tls, welcome(Some(f))?))
    };
    let (tls, wel) = tokio::time::timeout(hs, setup)
        .await
        .map_err(|_elapsed| DialError::TlsTimeout)??;
    info!(
        tunnel = wel.tunnel,
        connection_id = wel.connection_id,
        transport = "tcp",
        "tunnel connection registered"
    );
    let sink = StreamSink::new(shared.clone());
    let svc_sink = sink.clone();
    let (ctrl_tx, ctrl_rx) = mpsc::channel(1);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sink = svc_sink.clone();
        let ctrl_tx = ctrl_tx.clone();
        async move {
            let path = req.uri().path().to_owned();
            let (w, mut body) = h2pipe::writer();
            let pair = (w, FrameReader::new(h2pipe::reader(req.into_body())));
            let ok = match path.as_str() {
                transport::H2_CONTROL_PATH => ctrl_tx.try_send(pair).is_ok(),
                transport::H2_STREAM_PATH => {
                    sink.spawn(pair.0, pair.1);
                    // The response leaves with the stream's first frame
                    // (usually the whole answer): one write, not two.
                    body.first_bytes().await;
                    true
                }
                _ => false,
            };
            let mut resp = Response::new(http_body_util::BodyExt::boxed_unsync(body));
            if !ok {
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<Response<TunnelBody>, std::convert::Infallible>(resp)
        }
    });
    let (close_tx, mut close_rx) = mpsc::channel::<()>(1);
    let heartbeat = Duration::from_millis(u64::from(wel.heartbeat_ms.max(100)));
    let server = tokio::spawn(async move {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .initial_stream_window_size(transport::H2_STREAM_WINDOW)
            .initial_connection_window_size(transport::H2_CONNECTION_WINDOW)
            .max_frame_size(transport::H2_MAX_FRAME)
            .keep_alive_interval(Some(heartbeat))
            .keep_alive_timeout(heartbeat * 3)
            .max_concurrent_streams(4096)
            .serve_connection(TokioIo::new(tls), svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => return r.map_err(|e| Chain(&e).to_string()),
            _ = close_rx.recv() => conn.as_mut().graceful_shutdown(),
        }
        conn.await.map_err(|e| Chain(&e).to_string())
    });
    let mut ctrl_rx = ctrl_rx;
    let (w, r) = match tokio::time::timeout(hs, ctrl_rx.recv()).await {
        Ok(Some(pair)) => pair,
        _ => {
            server.abort();
            return Err(DialError::Handshake("no control stream"));
        }
    };
    let server_handle = server.abort_handle();
    let closed = async move {
        match server.await {
            Ok(Ok(())) => "closed".to_owned(),
            Ok(Err(e)) => e,
            Err(e) => e.to_string(),
        }
    };
    shared.metrics.tcp_connections.inc();
    let ended = serve(shared, wel, w, r, &sink, stop, closed, move || {
        let _ = close_tx.try_send(());
    })
    .await;
    shared.metrics.tcp_connections.dec();
    if matches!(ended, Ended::Lost(_)) {
        server_handle.abort();
    }
    Ok(ended)
}

/// Serves one registered connection: the shell around [`ControlCore`]
/// (control frames, heartbeats, and the drain when `stop` flips); request
/// streams are started by the `sink`.
#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Arc<Shared>,
    wel: gatehouse_proto::Welcome,
    mut ctrl_w: FrameWriter,
    mut ctrl_r: FrameReader,
    sink: &StreamSink,
    mut stop: watch::Receiver<bool>,
    closed: impl std::future::Future<Output = String>,
    close: impl FnOnce(),
) -> Ended {
    shared.live.fetch_add(1, Ordering::Relaxed);
    shared.metrics.connections.inc();
    let heartbeat = Duration::from_millis(u64::from(wel.heartbeat_ms.max(100)));
    let mut core = ControlCore::new(heartbeat, shared.cfg.grace_period, Instant::now());
    tokio::pin!(closed);
    let ended = loop {
        let wake = tokio::time::Instant::from_std(core.poll_timeout(Instant::now()));
        let action = tokio::select! {
            why = &mut closed => break Ended::Lost(why),
            f = ctrl_r.next() => match f {
                Ok(Some(frame)) => core.handle_frame(frame, Instant::now()),
                Ok(None) => break Ended::Lost("control stream closed by the edge".into()),
                // The connection's own end says more ("reset by peer",
                // "timed out", the edge's close) than the stream's error.
                Err(e) => break Ended::Lost(
                    futures::FutureExt::now_or_never(&mut closed)
                        .unwrap_or_else(|| format!("control stream: {}", Chain(&e))),
                ),
            },
            _ = tokio::time::sleep_until(wake) => core.poll(
                Instant::now(),
                sink.inflight.load(Ordering::Relaxed),
                sink.quiet_for(),
            ),
            _ = stop.changed(), if !core.draining() => core.start_drain(Instant::now()),
        };
        match action {
            None => {}
            Some(Action::Send(f)) => {
                let failed = ctrl_w.send(&f).await.is_err();
                match (failed, core.draining()) {
                    (false, _) => {}
                    (true, true) => break Ended::Drained,
                    (true, false) => break Ended::Lost("control stream write failed".into()),
                }
            }
            Some(Action::Lost(why)) => break Ended::Lost(why),
            Some(Action::Drained { abandoned }) => {
                if abandoned > 0 {
                    warn!(
                        inflight = abandoned,
                        "grace period over with requests in flight"
                    );
                }
                close();
                break Ended::Drained;
            }
        }
    };
    shared.live.fetch_sub(1, Ordering::Relaxed);
    shared.metrics.connections.dec();
    if let Ended::Drained = ended {
        info!("tunnel connection drained");
    }
    ended
}

/// Starts a handler task for each request stream and keeps the counts the
/// drain needs: requests in flight and the time of the last new stream.
#[derive(Clone)]
struct StreamSink {
    shared: Arc<Shared>,
    inflight: Arc<AtomicUsize>,
    epoch: Instant,
    last_stream_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl StreamSink {
    fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            inflight: Arc::default(),
            epoch: Instant::now(),
            last_stream_ms: Arc::default(),
        }
    }

    fn spawn(&self, w: FrameWriter, r: FrameReader) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_stream_ms.store(ms, Ordering::Relaxed);
        let guard = InflightGuard::new(self.inflight.clone());
        let shared = self.shared.clone();
        gatehouse_ops::heap::keep_freed_buffers();
        tokio::spawn(async move {
            let _guard = guard;
            proxy::handle_stream(&shared, w, r).await;
        });
    }

    /// Time since the last new stream.
    fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_stream_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

struct InflightGuard(Arc<AtomicUsize>);

impl InflightGuard {
    fn new(c: Arc<AtomicUsize>) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    pub(crate) fn current(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub(crate) fn config_path(&self) -> &std::path::Path {
        &self.cfg.config_path
    }
}

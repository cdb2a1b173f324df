//! The tunnel endpoint: accepts connector connections (QUIC, or TLS/TCP
//! with HTTP/2 streams), checks their token, keeps the live connections of
//! each tunnel, opens one stream per proxied request, and drops connections
//! whose connector stopped answering ([`crate::liveness`]).

use crate::liveness::{self, Expiry, Heard, Prober, Start};
use crate::tokens::TokenStore;
use gatehouse_ops::Chain;
use gatehouse_proto::{
    CLOSE_EDGE_SHUTDOWN, CLOSE_PROTOCOL, CLOSE_REFUSED, CLOSE_UNRESPONSIVE, Frame, Welcome,
};
use gatehouse_tunnel_io::stream::{FrameReader, FrameWriter, StreamError, TunnelBody};
use gatehouse_tunnel_io::transport::{self, CONTROL_PRIORITY};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, info, info_span, warn};

enum Kind {
    Quic(quinn::Connection),
    H2 {
        sender: hyper::client::conn::http2::SendRequest<TunnelBody>,
        task: tokio::task::AbortHandle,
    },
}

/// One live, authenticated connector connection.
pub struct LiveConn {
    /// Edge-wide connection id.
    pub id: u64,
    /// Tunnel name.
    pub tunnel: String,
    /// Connector process id (from its hello).
    pub connector: String,
    kind: Kind,
    draining: AtomicBool,
    dead: AtomicBool,
    closed: tokio::sync::Notify,
    /// A probe is out (or asked for): new requests go elsewhere if they can.
    suspect: AtomicBool,
    /// Asks the control task to probe.
    probe: tokio::sync::Notify,
    /// Frames received on the control stream.
    heard: AtomicU64,
    /// Smoothed round trip of answered probes, in microseconds (the HTTP/2
    /// fallback's only measure; QUIC keeps its own).
    srtt_us: AtomicU64,
}

impl std::fmt::Debug for LiveConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConn")
            .field("id", &self.id)
            .field("tunnel", &self.tunnel)
            .finish_non_exhaustive()
    }
}

impl LiveConn {
    fn new(id: u64, tunnel: String, connector: String, kind: Kind) -> Self {
        Self {
            id,
            tunnel,
            connector,
            kind,
            draining: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            closed: tokio::sync::Notify::new(),
            suspect: AtomicBool::new(false),
            probe: tokio::sync::Notify::new(),
            heard: AtomicU64::new(0),
            srtt_us: AtomicU64::new(duration_us(liveness::INITIAL_RTT)),
        }
    }

    /// Opens a stream for one request.
    pub async fn open(&self) -> Result<(FrameWriter, FrameReader), StreamError> {
        match &self.kind {
            Kind::Quic(c) => {
                let (send, recv) = c.open_bi().await.map_err(std::io::Error::other)?;
                Ok((FrameWriter::quic(send), FrameReader::new(Box::new(recv))))
            }
            Kind::H2 { sender, .. } => transport::open_h2(sender, transport::H2_STREAM_PATH),
        }
    }

    fn usable(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !self.dead.load(Ordering::Relaxed)
    }

    fn suspect(&self) -> bool {
        self.suspect.load(Ordering::Relaxed)
    }

    /// The round-trip time to the connector.
    fn rtt(&self) -> Duration {
        match &self.kind {
            Kind::Quic(c) => c.rtt(),
            Kind::H2 { .. } => Duration::from_micros(self.srtt_us.load(Ordering::Relaxed)),
        }
    }

    /// A count that grows whenever anything arrives from the connector: its
    /// control frames, and on QUIC every datagram (acknowledgements of the
    /// edge's own packets included).
    fn heard_mark(&self) -> u64 {
        let frames = self.heard.load(Ordering::Relaxed);
        match &self.kind {
            Kind::Quic(c) => frames.wrapping_add(c.stats().udp_rx.datagrams),
            Kind::H2 { .. } => frames,
        }
    }

    /// Marks the connection suspect and asks for a probe (once until it is
    /// answered).
    fn ask_probe(&self) {
        if !self.suspect.swap(true, Ordering::Relaxed) {
            self.probe.notify_one();
        }
    }

    /// Closes the connection.
    pub fn close(&self, code: u32, reason: &str) {
        self.dead.store(true, Ordering::Relaxed);
        match &self.kind {
            Kind::Quic(c) => c.close(quinn::VarInt::from_u32(code), reason.as_bytes()),
            Kind::H2 { task, .. } => task.abort(),
        }
        self.closed.notify_one();
    }
}

/// Metrics of the tunnel side.
#[derive(Debug, Default, Clone)]
pub struct TunnelMetrics {
    /// Live connector connections.
    pub connections: Gauge,
    /// Connections refused for a bad token.
    pub auth_failures: Counter,
    /// Connections closed because they did not answer a liveness probe.
    pub probe_failures: Counter,
    /// Requests sent again on another connector's connection after a
    /// stream failed before its response.
    pub retries: Counter,
}

/// Live connections by tunnel.
#[derive(Debug, Default)]
pub struct Registry {
    conns: RwLock<HashMap<String, Vec<Arc<LiveConn>>>>,
    rr: AtomicUsize,
    next_id: AtomicU64,
    /// Set when the edge starts shutting down: new connections are refused.
    closing: tokio::sync::watch::Sender<bool>,
    /// Metrics.
    pub metrics: TunnelMetrics,
}

impl Registry {
    /// A live connection of `tunnel`, round-robin over the usable ones.
    pub fn pick(&self, tunnel: &str) -> Option<Arc<LiveConn>> {
        self.pick_excluding(tunnel, &[])
    }

    /// A live connection of `tunnel` whose connector is not in `exclude`,
    /// round-robin over the usable ones that are not suspect, else over the
    /// suspect ones.
    pub fn pick_excluding(&self, tunnel: &str, exclude: &[String]) -> Option<Arc<LiveConn>> {
        let g = self.conns.read().ok()?;
        let list = g.get(tunnel)?;
        let allowed = |c: &&Arc<LiveConn>| c.usable() && !exclude.contains(&c.connector);
        let healthy = |c: &&Arc<LiveConn>| allowed(c) && !c.suspect();
        let rr = self.rr.fetch_add(1, Ordering::Relaxed);
        match list.iter().filter(healthy).count() {
            0 => {
                let n = list.iter().filter(allowed).count();
                (n > 0)
                    .then(|| list.iter().filter(allowed).nth(rr % n).cloned())
                    .flatten()
            }
            n => list.iter().filter(healthy).nth(rr % n).cloned(),
        }
    }

    /// Suspects `conn`'s connector: each of its usable connections to this
    /// edge is probed (a connector whose process died leaves all of them
    /// dead; the live ones answer within a round trip).
    pub fn suspect(&self, conn: &LiveConn) {
        let Ok(g) = self.conns.read() else { return };
        for c in g.get(&conn.tunnel).into_iter().flatten() {
            if c.connector == conn.connector && c.usable() {
                c.ask_probe();
            }
        }
    }

    /// A stream on `conn` failed before its response: its connector is
    /// suspected, and the request may be retried elsewhere.
    pub fn stream_failed(&self, conn: &LiveConn) {
        self.suspect(conn);
    }

    /// A request's retry goes to another connector.
    pub fn count_retry(&self) {
        self.metrics.retries.inc();
    }

    /// Runs `fut` (a step of a request on `conn`), suspecting `conn`'s
    /// connector whenever it has sent nothing at all for a while
    /// ([`liveness::probe_after`], doubling each time).
    pub async fn watch<F: std::future::Future>(&self, conn: &LiveConn, fut: F) -> F::Output {
        tokio::pin!(fut);
        let mut wait = liveness::probe_after(conn.rtt());
        loop {
            let mark = conn.heard_mark();
            tokio::select! {
                biased;
                out = &mut fut => return out,
                () = tokio::time::sleep(wait) => {}
            }
            if conn.heard_mark() == mark {
                debug!(conn = conn.id, waited = ?wait, "nothing heard from the connector: probing");
                self.suspect(conn);
            }
            wait = wait.saturating_mul(2);
        }
    }

    /// Refuses new tunnel connections from now on (the edge is shutting
    /// down); established ones stay.
    pub fn refuse_new(&self) {
        self.closing.send_replace(true);
    }

    fn refusing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Number of live connections of every tunnel.
    pub fn live(&self) -> usize {
        self.conns
            .read()
            .map(|g| {
                g.values()
                    .map(|v| v.iter().filter(|c| c.usable()).count())
                    .sum()
            })
            .unwrap_or(0)
    }

    fn add(&self, c: Arc<LiveConn>) {
        if let Ok(mut g) = self.conns.write() {
            g.entry(c.tunnel.clone()).or_default().push(c);
        }
        self.metrics.connections.inc();
    }

    fn remove(&self, c: &Arc<LiveConn>) {
        if let Ok(mut g) = self.conns.write() {
            if let Some(v) = g.get_mut(&c.tunnel) {
                v.retain(|x| x.id != c.id);
            }
        }
        self.metrics.connections.dec();
    }

    /// Closes every connection of tunnels not in `active`.
    pub fn close_revoked(&self, active: &[String]) {
        let Ok(g) = self.conns.read() else { return };
        for (name, list) in g.iter() {
            if !active.contains(name) {
                for c in list {
                    warn!(
                        tunnel = name,
                        conn = c.id,
                        "closing connection of a revoked tunnel"
                    );
                    c.close(CLOSE_REFUSED, "tunnel revoked");
                }
            }
        }
    }

    /// Closes every connection (edge shutdown).
    pub fn close_all(&self) {
        let Ok(g) = self.conns.read() else { return };
        for c in g.values().flatten() {
            c.close(CLOSE_EDGE_SHUTDOWN, "edge shutting down");
        }
    }
}

/// What the tunnel endpoint needs.
pub struct TunnelSide {
    /// Live connections.
    pub registry: Arc<Registry>,
    /// The token store, reloaded on change.
    pub tokens: Arc<RwLock<TokenStore>>,
    /// Heartbeat interval asked of connectors.
    pub heartbeat: Duration,
}

impl std::fmt::Debug for TunnelSide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelSide").finish_non_exhaustive()
    }
}

impl TunnelSide {
    fn check(&self, hello: &gatehouse_proto::Hello, peer: SocketAddr) -> Result<String, String> {
        if hello.version != gatehouse_proto::VERSION {
            warn!(%peer, version = hello.version, "tunnel connection refused: unsupported protocol version");
            return Err(format!("unsupported protocol version {}", hello.version));
        }
        let token = hello.token.as_str();
        let res = match self.tokens.read() {
            Ok(g) => g.verify(token, crate::tokens::now_unix()),
            Err(p) => p.into_inner().verify(token, crate::tokens::now_unix()),
        };
        res.map_err(|e| {
            self.registry.metrics.auth_failures.inc();
            warn!(%peer, error = %Chain(&e), "tunnel connection refused: bad token");
            "invalid or revoked tunnel token".to_owned()
        })
    }

    fn welcome(&self, tunnel: &str, id: u64) -> Frame {
        Frame::Welcome(Welcome {
            tunnel: tunnel.to_owned(),
            connection_id: id,
            heartbeat_ms: u32::try_from(self.heartbeat.as_millis()).unwrap_or(u32::MAX),
        })
    }
}

/// Accepts QUIC connections until the endpoint closes; once the edge is
/// shutting down, new ones are refused.
pub async fn accept_quic(side: Arc<TunnelSide>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        if side.registry.refusing() {
            debug!(peer = %incoming.remote_address(), "QUIC connection refused: edge shutting down");
            incoming.refuse();
            continue;
        }
        let side = side.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    let span = info_span!("tunnel_conn", %peer, transport = "quic");
                    quic_conn(side, conn, peer).instrument(span).await;
                }
                Err(e) => debug!(%peer, error = %Chain(&e), "QUIC handshake failed"),
            }
        });
    }
}

/// Why a connector's handshake failed (logged; the connection is dropped).
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("accepting the control stream")]
    Accept(#[source] quinn::ConnectionError),
    #[error("TLS")]
    Tls(#[source] std::io::Error),
    #[error("reading the hello")]
    Read(#[source] gatehouse_tunnel_io::stream::StreamError),
    #[error("expected hello")]
    NoHello,
}

async fn quic_conn(side: Arc<TunnelSide>, conn: quinn::Connection, peer: SocketAddr) {
    let hs = async {
        let (send, recv) = conn.accept_bi().await.map_err(HandshakeError::Accept)?;
        // Heartbeats and probes go ahead of request data.
        let _ = send.set_priority(CONTROL_PRIORITY);
        let w = FrameWriter::quic(send);
        let mut r = FrameReader::new(Box::new(recv));
        let hello = match r.next().await {
            Ok(Some(Frame::Hello(h))) => h,
            _ => return Err(HandshakeError::NoHello),
        };
        Ok::<_, HandshakeError>((w, r, hello))
    };
    let Ok(Ok((mut w, r, hello))) = tokio::time::timeout(Duration::from_secs(10), hs).await else {
        conn.close(quinn::VarInt::from_u32(CLOSE_PROTOCOL), b"handshake");
        return;
    };
    let tunnel = match side.check(&hello, peer) {
        Ok(t) => t,
        Err(msg) => {
            let _ = w.send(&Frame::Refused(msg)).await;
            let _ = w.finish().await;
            // Let the refusal reach the connector before closing.
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
            conn.close(quinn::VarInt::from_u32(CLOSE_REFUSED), b"refused");
            return;
        }
    };
    if side.registry.refusing() {
        debug!("tunnel connection dropped before registration: edge shutting down");
        conn.close(
            quinn::VarInt::from_u32(CLOSE_EDGE_SHUTDOWN),
            b"edge shutting down",
        );
        return;
    }
    let id = side.registry.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    if w.send(&side.welcome(&tunnel, id)).await.is_err() {
        return;
    }
    let live = Arc::new(LiveConn::new(
        id,
        tunnel,
        hello.connector_id,
        Kind::Quic(conn.clone()),
    ));
    let closed = async move {
        conn.closed().await;
    };
    control(side, live, w, r, closed).await;
}

/// Accepts TLS/TCP fallback connections until the edge starts shutting
/// down, then closes the listener (connectors get "connection refused").
pub async fn accept_tcp(
    side: Arc<TunnelSide>,
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
) {
    let mut closing = side.registry.closing.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = closing.wait_for(|c| *c) => {
                debug!("tunnel TCP listener closed: edge shutting down");
                return;
            }
        };
        let Ok((tcp, peer)) = accepted else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let side = side.clone();
        let tls = tls.clone();
        let span = info_span!("tunnel_conn", %peer, transport = "tcp");
        tokio::spawn(tcp_conn(side, tcp, tls, peer).instrument(span));
    }
}

async fn tcp_conn(
    side: Arc<TunnelSide>,
    tcp: tokio::net::TcpStream,
    tls: tokio_rustls::TlsAcceptor,
    peer: SocketAddr,
) {
    let hs = async {
        let mut s = tls.accept(tcp).await.map_err(HandshakeError::Tls)?;
        let f = transport::read_raw(&mut s)
            .await
            .map_err(HandshakeError::Read)?;
        let Frame::Hello(h) = f else {
            return Err(HandshakeError::NoHello);
        };
        Ok((s, h))
    };
    let (mut s, hello) = match tokio::time::timeout(Duration::from_secs(10), hs).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return debug!(error = %Chain(&e), "tunnel handshake failed"),
        Err(_) => return debug!("tunnel handshake timed out"),
    };
    let tunnel = match side.check(&hello, peer) {
        Ok(t) => t,
        Err(msg) => {
            let _ = transport::write_raw(&mut s, &Frame::Refused(msg)).await;
            return;
        }
    };
    if side.registry.refusing() {
        return debug!("tunnel connection dropped before registration: edge shutting down");
    }
    let id = side.registry.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    if transport::write_raw(&mut s, &side.welcome(&tunnel, id))
        .await
        .is_err()
    {
        return;
    }
    let hb = side.heartbeat;
    let Ok((sender, conn)) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .initial_stream_window_size(gatehouse_tunnel_io::transport::H2_STREAM_WINDOW)
        .initial_connection_window_size(gatehouse_tunnel_io::transport::H2_CONNECTION_WINDOW)
        .max_frame_size(gatehouse_tunnel_io::transport::H2_MAX_FRAME)
        .keep_alive_interval(Some(hb))
        .keep_alive_timeout(hb * 3)
        .handshake::<_, TunnelBody>(TokioIo::new(s))
        .await
    else {
        return;
    };
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %Chain(&e), "tunnel HTTP/2 connection ended");
        }
    });
    let Ok((w, r)) = transport::open_h2(&sender, transport::H2_CONTROL_PATH) else {
        task.abort();
        return;
    };
    let live = Arc::new(LiveConn::new(
        id,
        tunnel,
        hello.connector_id,
        Kind::H2 {
            sender,
            task: task.abort_handle(),
        },
    ));
    let closed = async move {
        let _ = task.await;
    };
    control(side, live, w, r, closed).await;
}

/// Registers the connection, answers heartbeats, drain requests and
/// probes, and unregisters it when it ends.
async fn control(
    side: Arc<TunnelSide>,
    live: Arc<LiveConn>,
    mut w: FrameWriter,
    mut r: FrameReader,
    closed: impl std::future::Future<Output = ()>,
) {
    info!(
        tunnel = live.tunnel,
        conn = live.id,
        connector = live.connector,
        "tunnel connection registered"
    );
    side.registry.add(live.clone());
    let dead_after = side.heartbeat * 3;
    let mut prober = Prober::default();
    let mut last_frame = tokio::time::Instant::now();
    tokio::pin!(closed);
    let reason = loop {
        let probe_deadline = prober.deadline().map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = &mut closed => break "connection closed".to_owned(),
            _ = live.closed.notified() => break "closed by the edge".to_owned(),
            _ = live.probe.notified() => {
                let mark = live.heard_mark();
                if let Start::Send(nonce) = prober.start(Instant::now(), live.rtt(), mark) {
                    let until = prober.deadline().map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
                    match tokio::time::timeout_at(until, w.send(&Frame::Ping(nonce))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break "control write failed".to_owned(),
                        Err(_) => break unresponsive(&side, &live),
                    }
                }
            }
            _ = sleep_until_some(probe_deadline) => {
                match prober.expire(Instant::now(), live.heard_mark()) {
                    Some(Expiry::Dead) => break unresponsive(&side, &live),
                    Some(Expiry::Alive) => {
                        debug!(conn = live.id, "probe unanswered, but the connector's packets arrive");
                        live.suspect.store(false, Ordering::Relaxed);
                    }
                    None => {}
                }
            }
            () = tokio::time::sleep_until(last_frame + dead_after) => {
                break "heartbeat timeout".to_owned();
            }
            f = r.next() => {
                if let Ok(Some(frame)) = &f {
                    last_frame = tokio::time::Instant::now();
                    live.heard.fetch_add(1, Ordering::Relaxed);
                    if let Heard::Answered { rtt } = prober.heard(frame, Instant::now()) {
                        if let Some(sample) = rtt {
                            let srtt = liveness::smoothed(live.rtt(), sample);
                            live.srtt_us.store(duration_us(srtt), Ordering::Relaxed);
                        }
                        debug!(conn = live.id, ?rtt, "connector answered the probe");
                        live.suspect.store(false, Ordering::Relaxed);
                    }
                }
                match f {
                    Ok(Some(Frame::Ping(n))) => {
                        if w.send(&Frame::Pong(n)).await.is_err() {
                            break "control write failed".to_owned();
                        }
                    }
                    Ok(Some(Frame::Pong(_))) => {}
                    Ok(Some(Frame::GoAway)) => {
                        live.draining.store(true, Ordering::Relaxed);
                        info!(tunnel = live.tunnel, conn = live.id, "connector draining this connection");
                        if w.send(&Frame::GoAwayAck).await.is_err() {
                            break "control write failed".to_owned();
                        }
                    }
                    Ok(Some(_)) => {
                        live.close(CLOSE_PROTOCOL, "unexpected control frame");
                        break "protocol violation".to_owned();
                    }
                    Ok(None) => break "control stream ended".to_owned(),
                    Err(e) => break format!("control stream: {}", Chain(&e)),
                }
            }
        }
    };
    side.registry.remove(&live);
    live.close(CLOSE_PROTOCOL, &reason);
    info!(
        tunnel = live.tunnel,
        conn = live.id,
        reason,
        "tunnel connection unregistered"
    );
    // The connector's other connections may be gone too: check them now
    // rather than wait for a request to stall on them.
    side.registry.suspect(&live);
}

/// Closes a connection that did not answer its probe.
fn unresponsive(side: &TunnelSide, live: &LiveConn) -> String {
    side.registry.metrics.probe_failures.inc();
    live.close(CLOSE_UNRESPONSIVE, "no answer to a liveness probe");
    "no answer to a liveness probe".to_owned()
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

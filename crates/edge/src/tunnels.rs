//! The tunnel endpoint: accepts connector connections (QUIC, or TLS/TCP
//! with HTTP/2 streams), checks their token, keeps the live connections of
//! each tunnel, and opens one stream per proxied request.

use crate::tokens::TokenStore;
use gatehouse_proto::{CLOSE_EDGE_SHUTDOWN, CLOSE_PROTOCOL, CLOSE_REFUSED, Frame, Welcome};
use gatehouse_tunnel::stream::{FrameReader, FrameWriter, StreamError, TunnelBody};
use gatehouse_tunnel::transport;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
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
}

/// Live connections by tunnel.
#[derive(Debug, Default)]
pub struct Registry {
    conns: RwLock<HashMap<String, Vec<Arc<LiveConn>>>>,
    rr: AtomicUsize,
    next_id: AtomicU64,
    /// Metrics.
    pub metrics: TunnelMetrics,
}

impl Registry {
    /// A live connection of `tunnel`, round-robin over the usable ones.
    pub fn pick(&self, tunnel: &str) -> Option<Arc<LiveConn>> {
        let g = self.conns.read().ok()?;
        let list = g.get(tunnel)?;
        let usable = list.iter().filter(|c| c.usable()).count();
        if usable == 0 {
            return None;
        }
        let n = self.rr.fetch_add(1, Ordering::Relaxed) % usable;
        list.iter().filter(|c| c.usable()).nth(n).cloned()
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
            warn!(%peer, error = %e, "tunnel connection refused: bad token");
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

/// Accepts QUIC connections until the endpoint closes.
pub async fn accept_quic(side: Arc<TunnelSide>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let side = side.clone();
        tokio::spawn(async move {
            let peer = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    let span = info_span!("tunnel_conn", %peer, transport = "quic");
                    quic_conn(side, conn, peer).instrument(span).await;
                }
                Err(e) => debug!(%peer, error = %e, "QUIC handshake failed"),
            }
        });
    }
}

async fn quic_conn(side: Arc<TunnelSide>, conn: quinn::Connection, peer: SocketAddr) {
    let hs = async {
        let (send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let w = FrameWriter::quic(send);
        let mut r = FrameReader::new(Box::new(recv));
        let hello = match r.next().await {
            Ok(Some(Frame::Hello(h))) => h,
            _ => return Err("expected hello".to_owned()),
        };
        Ok::<_, String>((w, r, hello))
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
    let id = side.registry.next_id.fetch_add(1, Ordering::Relaxed) + 1;
    if w.send(&side.welcome(&tunnel, id)).await.is_err() {
        return;
    }
    let live = Arc::new(LiveConn {
        id,
        tunnel,
        connector: hello.connector_id,
        kind: Kind::Quic(conn.clone()),
        draining: AtomicBool::new(false),
        dead: AtomicBool::new(false),
        closed: tokio::sync::Notify::new(),
    });
    let closed = async move {
        conn.closed().await;
    };
    control(side, live, w, r, closed).await;
}

/// Accepts TLS/TCP fallback connections.
pub async fn accept_tcp(
    side: Arc<TunnelSide>,
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
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
        let mut s = tls.accept(tcp).await.map_err(|e| e.to_string())?;
        let f = transport::read_raw(&mut s)
            .await
            .map_err(|e| e.to_string())?;
        let Frame::Hello(h) = f else {
            return Err("expected hello".to_owned());
        };
        Ok((s, h))
    };
    let (mut s, hello) = match tokio::time::timeout(Duration::from_secs(10), hs).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return debug!(error = e, "tunnel handshake failed"),
        Err(_) => return debug!("tunnel handshake timed out"),
    };
    let tunnel = match side.check(&hello, peer) {
        Ok(t) => t,
        Err(msg) => {
            let _ = transport::write_raw(&mut s, &Frame::Refused(msg)).await;
            return;
        }
    };
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
        .initial_stream_window_size(gatehouse_tunnel::transport::H2_STREAM_WINDOW)
        .initial_connection_window_size(gatehouse_tunnel::transport::H2_CONNECTION_WINDOW)
        .max_frame_size(gatehouse_tunnel::transport::H2_MAX_FRAME)
        .keep_alive_interval(Some(hb))
        .keep_alive_timeout(hb * 3)
        .handshake::<_, TunnelBody>(TokioIo::new(s))
        .await
    else {
        return;
    };
    let task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "tunnel HTTP/2 connection ended");
        }
    });
    let Ok((w, r)) = transport::open_h2(&sender, transport::H2_CONTROL_PATH) else {
        task.abort();
        return;
    };
    let live = Arc::new(LiveConn {
        id,
        tunnel,
        connector: hello.connector_id,
        kind: Kind::H2 {
            sender,
            task: task.abort_handle(),
        },
        draining: AtomicBool::new(false),
        dead: AtomicBool::new(false),
        closed: tokio::sync::Notify::new(),
    });
    let closed = async move {
        let _ = task.await;
    };
    control(side, live, w, r, closed).await;
}

/// Registers the connection, answers heartbeats and drain requests, and
/// unregisters it when it ends.
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
    tokio::pin!(closed);
    let reason = loop {
        tokio::select! {
            _ = &mut closed => break "connection closed".to_owned(),
            _ = live.closed.notified() => break "closed by the edge".to_owned(),
            f = tokio::time::timeout(dead_after, r.next()) => match f {
                Err(_) => break "heartbeat timeout".to_owned(),
                Ok(Ok(Some(Frame::Ping(n)))) => {
                    if w.send(&Frame::Pong(n)).await.is_err() {
                        break "control write failed".to_owned();
                    }
                }
                Ok(Ok(Some(Frame::Pong(_)))) => {}
                Ok(Ok(Some(Frame::GoAway))) => {
                    live.draining.store(true, Ordering::Relaxed);
                    info!(tunnel = live.tunnel, conn = live.id, "connector draining this connection");
                    if w.send(&Frame::GoAwayAck).await.is_err() {
                        break "control write failed".to_owned();
                    }
                }
                Ok(Ok(Some(_))) => {
                    live.close(CLOSE_PROTOCOL, "unexpected control frame");
                    break "protocol violation".to_owned();
                }
                Ok(Ok(None)) => break "control stream ended".to_owned(),
                Ok(Err(e)) => break format!("control stream: {e}"),
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
}

//! A relay client: [`Connection`] is one handshaken connection to a relay
//! (over HTTPS with `Upgrade: DERP`, or a WebSocket); [`RelayClient`] keeps
//! one open in the background, reconnecting with backoff, and tells the
//! relay whether it is the node's home (NotePreferred).

use crate::frame::{self, Frame, MAX_FRAME, MAX_SERVER_HANDSHAKE};
use crate::handshake::{self, HandshakeError, PrivateKey, ServerInfo};
use crate::ratelimit::{Rate, TokenBucket};
use crate::wire::{BoxIo, Wire, websocket_config};
use bytes::{Bytes, BytesMut};
use gatehouse_disco::NodePublicKey;
use gatehouse_ops::Retries;
use rustls::pki_types::ServerName;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How to reach a relay.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host[:port]` (the path `/derp` is implied).
    pub url: String,
    /// TLS settings: the roots (or pin) the relay's certificate must chain to.
    pub tls: Arc<rustls::ClientConfig>,
    /// Use the WebSocket form instead of `Upgrade: DERP`.
    pub websocket: bool,
    /// Tell the relay it is this node's home.
    pub home: bool,
    /// Time to connect, upgrade and handshake.
    pub connect_timeout: Duration,
    /// A connection silent this long is considered dead (the relay sends a
    /// keepalive at least every 65 s).
    pub read_timeout: Duration,
    /// Reconnect delays: from `backoff.0` doubling up to `backoff.1`.
    pub backoff: (Duration, Duration),
}

impl ClientConfig {
    /// Defaults for `url` with `tls`.
    pub fn new(url: impl Into<String>, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            url: url.into(),
            tls,
            websocket: false,
            home: true,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
        }
    }
}

/// A failure of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `https://host[:port]`.
    #[error("invalid relay URL {0:?}")]
    Url(String),
    /// Connecting or TLS failed.
    #[error("connecting to the relay")]
    Connect(#[source] std::io::Error),
    /// The relay did not upgrade the connection.
    #[error("the relay refused the upgrade: {0}")]
    Upgrade(String),
    /// The WebSocket handshake failed.
    #[error("WebSocket handshake with the relay")]
    WebSocket(#[source] tokio_tungstenite::tungstenite::Error),
    /// The DERP handshake failed.
    #[error("relay handshake")]
    Handshake(#[source] HandshakeError),
    /// The relay sent a malformed frame.
    #[error("malformed frame from the relay")]
    Frame(#[source] frame::FrameError),
    /// The connection broke.
    #[error("relay connection")]
    Io(#[source] std::io::Error),
    /// The relay closed the connection (a refusal looks like this).
    #[error("the relay closed the connection")]
    Closed,
    /// Nothing arrived for the read timeout.
    #[error("the relay was silent for too long")]
    Timeout,
    /// The client was stopped.
    #[error("the relay client is stopped")]
    Stopped,
}

fn parse_url(url: &str) -> Result<(String, u16), ClientError> {
    let bad = || ClientError::Url(url.to_owned());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("https") {
        return Err(bad());
    }
    let host = uri.host().ok_or_else(bad)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

/// One handshaken connection to a relay.
#[derive(Debug)]
pub struct Connection {
    wire: Wire,
    rbuf: BytesMut,
    server_key: NodePublicKey,
    server_info: ServerInfo,
}

impl Connection {
    /// Connects, upgrades and handshakes as `key`.
    pub async fn connect(cfg: &ClientConfig, key: &PrivateKey) -> Result<Self, ClientError> {
        tokio::time::timeout(cfg.connect_timeout, Self::connect_inner(cfg, key))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn connect_inner(cfg: &ClientConfig, key: &PrivateKey) -> Result<Self, ClientError> {
        let (host, port) = parse_url(&cfg.url)?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(ClientError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => {
                ServerName::try_from(host.clone()).map_err(|_| ClientError::Url(cfg.url.clone()))?
            }
        };
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&cfg.tls))
            .connect(name, tcp)
            .await
            .map_err(ClientError::Connect)?;
        let io: BoxIo = Box::new(tls);
        let authority = if port == 443 {
            host.clone()
        } else {
            format!("{host}:{port}")
        };
        let authority = if host.contains(':') {
            if port == 443 {
                format!("[{host}]")
            } else {
                format!("[{host}]:{port}")
            }
        } else {
            authority
        };
        let (wire, rbuf) = if cfg.websocket {
            let mut req = format!("wss://{authority}/derp")
                .into_client_request()
                .map_err(ClientError::WebSocket)?;
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                http::HeaderValue::from_static("derp"),
            );
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(req, io, Some(websocket_config()))
                    .await
                    .map_err(ClientError::WebSocket)?;
            (Wire::WebSocket(Box::new(ws)), BytesMut::new())
        } else {
            upgrade(io, &authority).await?
        };
        let mut conn = Connection {
            wire,
            rbuf,
            server_key: NodePublicKey([0; 32]),
            server_info: ServerInfo::default(),
        };
        let f = conn.read_frame(MAX_SERVER_HANDSHAKE).await?;
        conn.server_key = handshake::read_server_key(&f).map_err(ClientError::Handshake)?;
        let ci =
            handshake::client_info_frame(key, &conn.server_key, &handshake::default_client_info());
        conn.send(&[ci]).await?;
        let f = conn.read_frame(MAX_SERVER_HANDSHAKE).await?;
        conn.server_info = handshake::open_server_info(key, &conn.server_key, &f)
            .map_err(ClientError::Handshake)?;
        if cfg.home {
            conn.send(&[Frame::NotePreferred(true)]).await?;
        }
        Ok(conn)
    }

    /// The relay's public key.
    pub fn server_key(&self) -> NodePublicKey {
        self.server_key
    }

    /// What the relay announced.
    pub fn server_info(&self) -> &ServerInfo {
        &self.server_info
    }

    async fn read_frame(&mut self, max: usize) -> Result<Frame, ClientError> {
        loop {
            if let Some(f) = frame::decode(&mut self.rbuf, max).map_err(ClientError::Frame)? {
                return Ok(f);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(64 << 10);
            }
            match self.wire.read(&mut self.rbuf).await {
                Ok(0) => return Err(ClientError::Closed),
                Ok(_) => {}
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
    }

    /// The next frame from the relay. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        self.read_frame(MAX_FRAME).await
    }

    /// Writes frames (one write).
    pub async fn send(&mut self, frames: &[Frame]) -> Result<(), ClientError> {
        let mut out = BytesMut::new();
        for f in frames {
            frame::encode(f, &mut out);
        }
        self.send_raw(out.freeze()).await
    }

    /// Writes bytes as they are (tests use it to send what no client would).
    pub async fn send_raw(&mut self, bytes: Bytes) -> Result<(), ClientError> {
        self.wire.write(bytes).await.map_err(ClientError::Io)
    }
}

/// `GET /derp` with `Upgrade: DERP`; the bytes after the 101 response head
/// are the start of the DERP stream.
async fn upgrade(mut io: BoxIo, authority: &str) -> Result<(Wire, BytesMut), ClientError> {
    let req = format!(
        "GET /derp HTTP/1.1\r\nHost: {authority}\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n"
    );
    io.write_all(req.as_bytes())
        .await
        .map_err(ClientError::Io)?;
    io.flush().await.map_err(ClientError::Io)?;
    let mut buf = BytesMut::with_capacity(1024);
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 8 << 10 {
            return Err(ClientError::Upgrade("response head too large".into()));
        }
        if io.read_buf(&mut buf).await.map_err(ClientError::Io)? == 0 {
            return Err(ClientError::Closed);
        }
    };
    let head = buf.split_to(end);
    let status = head[..].split(|b| *b == b'\n').next().unwrap_or_default();
    let status = String::from_utf8_lossy(status).trim().to_owned();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(ClientError::Upgrade(status));
    }
    Ok((Wire::Stream(io), buf))
}

/// What the relay client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Connected and handshaken to the relay with this key.
    Connected(NodePublicKey),
    /// A packet from `src`.
    Packet {
        /// The sender's node key.
        src: NodePublicKey,
        /// The packet.
        data: Bytes,
    },
    /// A peer is gone from the relay (or was never there).
    PeerGone {
        /// The peer.
        key: NodePublicKey,
        /// Why.
        reason: frame::PeerGoneReason,
    },
    /// The relay's health problem (empty: healthy again).
    Health(String),
    /// The relay restarts.
    Restarting {
        /// When to reconnect.
        reconnect_in: Duration,
        /// For how long to try.
        try_for: Duration,
    },
    /// The connection ended; the client reconnects.
    Disconnected(String),
}

enum Cmd {
    Send(NodePublicKey, Bytes),
    Home(bool),
    Ping(oneshot::Sender<Duration>),
}

/// A connection to a relay kept open in the background.
#[derive(Debug)]
pub struct RelayClient {
    cmds: mpsc::Sender<Cmd>,
    events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<()>,
    key: NodePublicKey,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl RelayClient {
    /// Starts connecting to the relay as `key`.
    pub fn start(cfg: ClientConfig, key: PrivateKey) -> Self {
        let (cmds, cmd_rx) = mpsc::channel(256);
        let (ev_tx, events) = mpsc::channel(1024);
        let public = key.public();
        let task = tokio::spawn(drive(cfg, key, cmd_rx, ev_tx));
        Self {
            cmds,
            events,
            task,
            key: public,
        }
    }

    /// This client's node key.
    pub fn key(&self) -> NodePublicKey {
        self.key
    }

    /// Sends a packet to `dst` (waits while the outgoing queue is full;
    /// packets sent while disconnected are dropped).
    pub async fn send(&self, dst: NodePublicKey, packet: Bytes) -> Result<(), ClientError> {
        self.cmds
            .send(Cmd::Send(dst, packet))
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// Whether this relay is the node's home (told to the relay now and
    /// after each reconnect).
    pub async fn set_home(&self, home: bool) -> Result<(), ClientError> {
        self.cmds
            .send(Cmd::Home(home))
            .await
            .map_err(|_| ClientError::Stopped)
    }

    /// Round trip of a Ping to the relay.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Ping(tx))
            .await
            .map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// The next event.
    pub async fn recv(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Stops the client and closes its connection.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive(
    mut cfg: ClientConfig,
    key: PrivateKey,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<Event>,
) {
    let mut retries = Retries::new(cfg.backoff.0, cfg.backoff.1);
    loop {
        match Connection::connect(&cfg, &key).await {
            Ok(conn) => {
                retries.reset();
                if events
                    .send(Event::Connected(conn.server_key()))
                    .await
                    .is_err()
                {
                    return;
                }
                let why = match session(&mut cfg, conn, &mut cmds, &events).await {
                    Ok(()) => return,
                    Err(e) => e,
                };
                tracing::debug!(url = %cfg.url, error = %why, "relay client: disconnected");
                if events
                    .send(Event::Disconnected(why.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(url = %cfg.url, error = %e, "relay client: connect failed");
            }
        }
        let wait = tokio::time::sleep(retries.next_delay());
        tokio::pin!(wait);
        // Commands while disconnected: sends are dropped, home is kept.
        loop {
            tokio::select! {
                () = &mut wait => break,
                c = cmds.recv() => match c {
                    None => return,
                    Some(Cmd::Home(h)) => cfg.home = h,
                    Some(_) => {}
                },
            }
        }
    }
}

/// One connection's life; `Ok` when the client was dropped.
async fn session(
    cfg: &mut ClientConfig,
    mut conn: Connection,
    cmds: &mut mpsc::Receiver<Cmd>,
    events: &mpsc::Sender<Event>,
) -> Result<(), ClientError> {
    let mut bucket = (conn.server_info.rate_bytes_per_sec > 0).then(|| {
        TokenBucket::new(
            Rate {
                per_sec: conn.server_info.rate_bytes_per_sec,
                burst: conn.server_info.burst_bytes,
            },
            Instant::now(),
        )
    });
    let mut pings: Vec<([u8; 8], Instant, oneshot::Sender<Duration>)> = Vec::new();
    let mut out = BytesMut::new();
    loop {
        tokio::select! {
            c = cmds.recv() => {
                let Some(mut c) = c else { return Ok(()) };
                loop {
                    match c {
                        Cmd::Send(dst, p) => {
                            let cost = frame::HEADER_LEN + 32 + p.len();
                            if bucket.as_mut().is_none_or(|b| b.take(cost, Instant::now())) {
                                frame::encode_send_packet(&mut out, &dst, &p);
                            }
                        }
                        Cmd::Home(h) => {
                            cfg.home = h;
                            frame::encode(&Frame::NotePreferred(h), &mut out);
                        }
                        Cmd::Ping(tx) => {
                            let mut d = [0u8; 8];
                            rand::fill(&mut d);
                            pings.push((d, Instant::now(), tx));
                            frame::encode(&Frame::Ping(d), &mut out);
                        }
                    }
                    if out.len() >= 256 << 10 {
                        break;
                    }
                    match cmds.try_recv() {
                        Ok(next) => c = next,
                        Err(_) => break,
                    }
                }
                if !out.is_empty() {
                    conn.send_raw(out.split().freeze()).await?;
                }
            }
            f = tokio::time::timeout(cfg.read_timeout, conn.recv()) => {
                let f = f.map_err(|_| ClientError::Timeout)??;
                let ev = match f {
                    Frame::RecvPacket { src, packet } => Event::Packet { src, data: packet },
                    Frame::PeerGone { key, reason } => Event::PeerGone { key, reason },
                    Frame::Health(h) => Event::Health(h),
                    Frame::Restarting { reconnect_in, try_for } => Event::Restarting { reconnect_in, try_for },
                    Frame::Ping(d) => {
                        conn.send(&[Frame::Pong(d)]).await?;
                        continue;
                    }
                    Frame::Pong(d) => {
                        if let Some(i) = pings.iter().position(|p| p.0 == d) {
                            let (_, at, tx) = pings.swap_remove(i);
                            let _ = tx.send(at.elapsed());
                        }
                        continue;
                    }
                    _ => continue,
                };
                if events.send(ev).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

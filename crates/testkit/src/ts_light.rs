//! A light Tailscale-protocol client: it speaks Tailscale's control
//! protocol to control (`/key`, the `/ts2021` upgrade, Noise, HTTP/2
//! inside, `/machine/register`, a streamed `/machine/map` of zstd frames)
//! and keeps a view of its map, with no data plane. Tests use it to check
//! the protocol front end message by message; the control benchmark runs
//! thousands of them in one process.

use bytes::Bytes;
use gatehouse_tailcfg::{
    Compression, DiscoPublic, FrameDecoder, MapRequest, MapResponse, Node, NodePublic,
    OverTlsPublicKeyResponse, RegisterAuth, RegisterRequest, RegisterResponse,
};
use gatehouse_ts2021::{ClientHandshake, MachinePrivateKey, MachinePublicKey};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The capability version the light client announces.
pub const VERSION: u16 = 130;

/// What went wrong, as text (tests print it).
pub type TsResult<T> = Result<T, String>;

fn tls(ca_pem: &str) -> TsResult<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| format!("CA: {e}"))?)
            .map_err(|e| format!("CA: {e}"))?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

use rustls::pki_types::pem::PemObject as _;

/// An HTTP/1.1 connection to control's listener (`host:port`).
async fn http1(
    addr: &str,
    ca_pem: &str,
) -> TsResult<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    // As Tailscale's client: small HTTP/2 frames go out at once.
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1".to_string())
        .map_err(|e| e.to_string())?;
    let tls = tls(ca_pem)?
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/1.1: {e}"))?;
    tokio::spawn(conn.with_upgrades());
    Ok(send)
}

/// Control's Noise key, from `GET /key`.
pub async fn server_key(addr: &str, ca_pem: &str) -> TsResult<MachinePublicKey> {
    let mut send = http1(addr, ca_pem).await?;
    let req = http::Request::get(format!("/key?v={VERSION}"))
        .header(http::header::HOST, addr)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "/key: {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let k: OverTlsPublicKeyResponse =
        serde_json::from_slice(&body).map_err(|e| format!("/key: {e}"))?;
    Ok(MachinePublicKey(*k.public_key.as_bytes()))
}

/// An HTTP/2 session inside Noise.
pub type Session = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// Opens a Noise session as machine `key` (the `/ts2021` upgrade, then the
/// handshake, then HTTP/2), announcing capability `version`.
pub async fn open_session(
    addr: &str,
    ca_pem: &str,
    key: &MachinePrivateKey,
    server: MachinePublicKey,
    version: u16,
) -> TsResult<Session> {
    let (hs, init) = ClientHandshake::new(key, server, version, MachinePrivateKey::generate())
        .map_err(|e| e.to_string())?;
    let mut send = http1(addr, ca_pem).await?;
    let req = http::Request::post("/ts2021")
        .header(http::header::HOST, addr)
        .header(http::header::UPGRADE, "tailscale-control-protocol")
        .header(http::header::CONNECTION, "upgrade")
        .header(
            "X-Tailscale-Handshake",
            gatehouse_ts2021::upgrade::encode_handshake_header(&init),
        )
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(format!(
            "/ts2021: {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let noise = hs
        .complete(TokioIo::new(upgraded))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(noise))
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
    tokio::spawn(conn);
    Ok(h2)
}

/// POSTs JSON inside a session; the status and the body.
pub async fn post(
    session: &mut Session,
    path: &str,
    body: &impl serde::Serialize,
) -> TsResult<(http::StatusCode, hyper::body::Incoming)> {
    let json = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let req = http::Request::post(format!("http://control{path}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json)))
        .map_err(|e| e.to_string())?;
    session.ready().await.map_err(|e| format!("session: {e}"))?;
    let resp = session
        .send_request(req)
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    Ok((resp.status(), resp.into_body()))
}

/// Reads a whole body as text.
pub async fn text(body: hyper::body::Incoming) -> String {
    body.collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default()
}

/// What the light client knows of its network.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Its own node.
    pub node: Option<Node>,
    /// Peers by ID.
    pub peers: BTreeMap<i64, Node>,
    /// The packet filter (the `"base"` part).
    pub filter: Vec<gatehouse_tailcfg::FilterRule>,
    /// Map messages received (keep-alives included).
    pub messages: u64,
    /// Whether the stream ended.
    pub closed: bool,
}

impl View {
    fn apply(&mut self, r: MapResponse) {
        self.messages += 1;
        if r.keep_alive {
            return;
        }
        if let Some(n) = r.node {
            self.node = Some(n);
        }
        if let Some(peers) = r.peers {
            self.peers = peers.into_iter().map(|p| (p.id, p)).collect();
        }
        for p in r.peers_changed.unwrap_or_default() {
            self.peers.insert(p.id, p);
        }
        for id in r.peers_removed.unwrap_or_default() {
            self.peers.remove(&id);
        }
        for (id, on) in r.online_change.unwrap_or_default() {
            if let Some(p) = self.peers.get_mut(&id) {
                p.online = Some(on);
            }
        }
        if let Some(f) = r.packet_filter {
            self.filter = f;
        }
        if let Some(parts) = r.packet_filters
            && let Some(base) = parts.get(MapResponse::BASE_FILTER)
        {
            self.filter = base.clone().unwrap_or_default();
        }
    }

    /// Peer names (first DNS label), sorted.
    pub fn peer_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .peers
            .values()
            .map(|p| p.name.split('.').next().unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    }
}

/// A device just registered, with its session still open.
#[derive(Debug)]
pub struct Registered {
    /// Its machine key.
    pub machine: MachinePrivateKey,
    /// Its node key.
    pub node_key: NodePublic,
    /// Control's answer.
    pub response: RegisterResponse,
    /// The Noise session it registered over.
    pub session: Session,
}

/// Registers a new device (fresh machine and node keys) with `auth_key` as
/// `hostname`, to the control whose Noise key is `server`.
pub async fn register(
    addr: &str,
    ca_pem: &str,
    server: MachinePublicKey,
    auth_key: &str,
    hostname: &str,
) -> TsResult<Registered> {
    let machine = MachinePrivateKey::generate();
    let node_key = random_node_key();
    let mut session = open_session(addr, ca_pem, &machine, server, VERSION).await?;
    let req = RegisterRequest {
        version: i64::from(VERSION),
        node_key,
        auth: Some(RegisterAuth {
            auth_key: auth_key.to_string(),
        }),
        hostinfo: Some(gatehouse_tailcfg::Hostinfo {
            hostname: hostname.to_string(),
            os: "linux".into(),
            ipn_version: "light".into(),
            ..Default::default()
        }),
        ..RegisterRequest::default()
    };
    let (status, body) = post(&mut session, "/machine/register", &req).await?;
    let body = text(body).await;
    if !status.is_success() {
        return Err(format!("register: {status}: {body}"));
    }
    let response: RegisterResponse =
        serde_json::from_str(&body).map_err(|e| format!("register: {e}: {body}"))?;
    if !response.machine_authorized {
        return Err(format!("register: not authorized: {body}"));
    }
    Ok(Registered {
        machine,
        node_key,
        response,
        session,
    })
}

/// A streamed map: its messages, decoded.
#[derive(Debug)]
pub struct MapStream {
    _session: Session,
    body: hyper::body::Incoming,
    decoder: FrameDecoder,
}

impl MapStream {
    /// The next message; `None` when the stream ends or breaks.
    pub async fn next(&mut self) -> Option<MapResponse> {
        loop {
            match self.decoder.next_response() {
                Ok(Some(r)) => return Some(r),
                Ok(None) => {}
                Err(_) => return None,
            }
            let frame = self.body.frame().await?.ok()?;
            if let Some(data) = frame.data_ref() {
                self.decoder.push(data);
            }
        }
    }
}

/// Opens the map stream of the node `node_key` on `session` (zstd frames,
/// as official clients ask).
pub async fn map_stream(mut session: Session, node_key: NodePublic) -> TsResult<MapStream> {
    let req = MapRequest {
        version: i64::from(VERSION),
        compress: "zstd".into(),
        keep_alive: true,
        node_key,
        disco_key: DiscoPublic::from_bytes(MachinePrivateKey::generate().public().0),
        stream: true,
        ..MapRequest::default()
    };
    let (status, body) = post(&mut session, "/machine/map", &req).await?;
    if !status.is_success() {
        return Err(format!("map: {status}: {}", text(body).await));
    }
    Ok(MapStream {
        _session: session,
        body,
        decoder: FrameDecoder::new(Compression::Zstd),
    })
}

/// A registered light client following its map.
#[derive(Debug)]
pub struct TsLight {
    /// Its machine key.
    pub machine: MachinePrivateKey,
    /// Its node key (public).
    pub node_key: NodePublic,
    /// The registration answer.
    pub registered: RegisterResponse,
    view: Arc<Mutex<View>>,
    updates: watch::Receiver<u64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TsLight {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A fresh random 32-byte key (an X25519 public key).
pub fn random_node_key() -> NodePublic {
    NodePublic::from_bytes(MachinePrivateKey::generate().public().0)
}

impl TsLight {
    /// Registers with `auth_key` as `hostname`, then opens the map stream
    /// and waits for the first map.
    pub async fn join(addr: &str, ca_pem: &str, auth_key: &str, hostname: &str) -> TsResult<Self> {
        let server = server_key(addr, ca_pem).await?;
        let r = register(addr, ca_pem, server, auth_key, hostname).await?;
        let mut light = TsLight {
            machine: r.machine,
            node_key: r.node_key,
            registered: r.response,
            view: Arc::new(Mutex::new(View::default())),
            updates: watch::channel(0).1,
            task: None,
        };
        light.follow(r.session).await?;
        Ok(light)
    }

    async fn follow(&mut self, session: Session) -> TsResult<()> {
        let mut frames = map_stream(session, self.node_key).await?;
        let (tx, rx) = watch::channel(0u64);
        self.updates = rx;
        let view = Arc::clone(&self.view);
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(r) = frames.next().await {
                if let Ok(mut v) = view.lock() {
                    v.apply(r);
                }
                n += 1;
                let _ = tx.send(n);
            }
            if let Ok(mut v) = view.lock() {
                v.closed = true;
            }
            let _ = tx.send(n + 1);
        });
        self.task = Some(task);
        self.wait_until("the first map", |v| v.node.is_some()).await
    }

    /// A copy of the current view.
    pub fn view(&self) -> View {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Waits until `cond` holds on the view (10 s at most).
    pub async fn wait_until(&mut self, what: &str, cond: impl Fn(&View) -> bool) -> TsResult<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if cond(&self.view()) {
                return Ok(());
            }
            if self.view().closed {
                return Err(format!("{what}: the map stream ended"));
            }
            match tokio::time::timeout_at(deadline, self.updates.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    if cond(&self.view()) {
                        return Ok(());
                    }
                    return Err(format!("{what}: the map stream ended"));
                }
                Err(_) => return Err(format!("{what}: not within 10 s; view: {:?}", self.view())),
            }
        }
    }
}

//! Shared pieces of the node's integration tests: control in-process, nodes
//! on the mesh data plane (WireGuard over loopback UDP, user-space TCP/IP;
//! the loopback plane where a test asks for it), a real HTTP backend (echo,
//! server-sent events, a lazily generated download, WebSocket echo), and
//! clients that go through a node's SOCKS5 proxy and verify TLS against the
//! mesh CA.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use gatehouse_node::serve::route::parse_route;
use gatehouse_node::{NodeConfig, PlaneKind, RunningNode};
use gatehouse_testkit::TestControl;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How long any wait in these tests may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The policy of the tests: alice reaches blog's HTTPS and HTTP, and
/// grafana only on port 22 (so laptop and grafana are peers, but grafana's
/// filter refuses 443 from laptop).
pub const POLICY: &str = r#"{
  "tagOwners": {"tag:k8s": [], "tag:blog": [], "tag:grafana": []},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:blog:80,443"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:grafana:22"]},
  ],
}"#;

/// The test policy, and grafana's HTTPS opened to alice too (laptop and
/// grafana stay peers either way: only grafana's filter changes).
pub const POLICY_GRAFANA_OPEN: &str = r#"{
  "tagOwners": {"tag:k8s": [], "tag:blog": [], "tag:grafana": []},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:blog:80,443"]},
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:grafana:22,443"]},
  ],
}"#;

/// The same without blog.
pub const POLICY_NO_BLOG: &str = r#"{
  "tagOwners": {"tag:k8s": [], "tag:blog": [], "tag:grafana": []},
  "acls": [
    {"action": "accept", "src": ["alice@example.com"], "dst": ["tag:grafana:22"]},
  ],
}"#;

/// Starts control with the test policy and user alice.
pub async fn control() -> TestControl {
    let c = TestControl::start().await;
    c.admin.create_user("alice@example.com").await.unwrap();
    c.admin.set_policy(POLICY).await.unwrap();
    c
}

/// A node's state directory and configuration, before start.
pub fn node_config(c: &TestControl, key: &str, host: &str, dir: PathBuf) -> NodeConfig {
    let mut cfg = NodeConfig::new(dir, host);
    cfg.control = Some(c.info.join.clone());
    cfg.authkey = Some(key.to_string());
    cfg
}

/// Starts a node and waits until it is ready.
pub async fn start(cfg: NodeConfig) -> RunningNode {
    let n = gatehouse_node::start(cfg).await.unwrap();
    let ready = tokio::time::timeout(DEADLINE, n.ready()).await;
    assert!(matches!(ready, Ok(true)), "node did not become ready");
    n
}

/// Polls `cond` until it holds, failing after [`DEADLINE`].
pub async fn wait_for(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `node` has peers named exactly `names`.
pub async fn wait_peers(node: &RunningNode, names: &[&str]) {
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_for(&format!("peers {want:?}"), async || {
        let mut have: Vec<String> = node.status().peers.into_iter().map(|p| p.name).collect();
        have.sort();
        have == want
    })
    .await;
}

/// Writes the mesh CA to a file for curl.
pub fn ca_file(c: &TestControl, dir: &std::path::Path) -> PathBuf {
    let p = dir.join("mesh-ca.pem");
    std::fs::write(&p, &c.ca).unwrap();
    p
}

/// control + laptop (alice: SOCKS5, DNS) + blog and grafana (tagged, serving
/// backends), all ready and knowing each other.
pub struct Mesh {
    pub control: gatehouse_testkit::TestControl,
    pub laptop: gatehouse_node::RunningNode,
    pub blog: gatehouse_node::RunningNode,
    pub grafana: gatehouse_node::RunningNode,
    pub blog_backend: Backend,
    pub grafana_backend: Backend,
    pub dir: tempfile::TempDir,
}

/// [`mesh_on`] the mesh data plane: what a user runs.
pub async fn mesh() -> Mesh {
    mesh_on(PlaneKind::Mesh).await
}

/// The test world with every node on `plane`.
pub async fn mesh_on(plane: PlaneKind) -> Mesh {
    let control = control().await;
    let node_config = |c: &TestControl, key: &str, host: &str, dir: PathBuf| {
        let mut cfg = node_config(c, key, host, dir);
        cfg.plane = plane.clone();
        cfg
    };
    let dir = tempfile::tempdir().unwrap();
    let blog_backend = backend().await;
    let grafana_backend = backend().await;
    let blog_key = control.key(None, &["tag:k8s", "tag:blog"], false).await;
    let grafana_key = control.key(None, &["tag:k8s", "tag:grafana"], false).await;
    let laptop_key = control.key(Some("alice@example.com"), &[], false).await;

    let mut cfg = node_config(&control, &blog_key, "blog", dir.path().join("blog"));
    cfg.routes = vec![parse_route(&format!("/=http://{}", blog_backend.addr)).unwrap()];
    cfg.redirect_http = true;
    let blog = start(cfg).await;

    let mut cfg = node_config(
        &control,
        &grafana_key,
        "grafana",
        dir.path().join("grafana"),
    );
    cfg.routes = vec![parse_route(&format!("/=http://{}", grafana_backend.addr)).unwrap()];
    let grafana = start(cfg).await;

    let mut cfg = node_config(&control, &laptop_key, "laptop", dir.path().join("laptop"));
    cfg.socks5 = Some("127.0.0.1:0".parse().unwrap());
    cfg.dns = Some("127.0.0.1:0".parse().unwrap());
    let laptop = start(cfg).await;

    wait_peers(&laptop, &["blog", "grafana"]).await;
    // Peers' endpoints arrive after their registration: wait for them too.
    wait_for("endpoints of laptop's peers", async || {
        laptop
            .status()
            .peers
            .iter()
            .all(|p| !p.endpoints.is_empty())
    })
    .await;
    wait_peers(&blog, &["laptop"]).await;
    wait_peers(&grafana, &["laptop"]).await;
    Mesh {
        control,
        laptop,
        blog,
        grafana,
        blog_backend,
        grafana_backend,
        dir,
    }
}

/// The data plane's view of `node`'s peer `name`.
pub fn path_to(node: &RunningNode, name: &str) -> gatehouse_node::plane::PeerPath {
    node.status()
        .peers
        .into_iter()
        .find(|p| p.name == name)
        .and_then(|p| p.path)
        .unwrap_or_else(|| panic!("no path to {name}"))
}

// ---------------------------------------------------------------------
// The backend.

type Body = BoxBody<Bytes, Infallible>;

/// A running backend and what it observed.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Its address.
    pub addr: SocketAddr,
    /// Requests received.
    pub requests: Arc<AtomicU64>,
    /// Bytes of `/download` bodies generated so far.
    pub produced: Arc<AtomicU64>,
    /// Lets `/sse` send its second event and end.
    pub sse_go: Arc<Notify>,
}

/// A body generated chunk by chunk only as it is polled (so generation
/// follows consumption when nothing buffers).
struct Lazy {
    left: u64,
    produced: Arc<AtomicU64>,
}

const CHUNK: usize = 64 * 1024;

impl hyper::body::Body for Lazy {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64);
        self.left -= n;
        self.produced.fetch_add(n, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n as usize])))))
    }
}

fn full(s: impl Into<Bytes>) -> Body {
    Full::new(s.into()).boxed()
}

fn echo(req: &Request<Incoming>) -> Response<Body> {
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let e = headers
            .entry(k.as_str().to_string())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(a) = e {
            a.push(serde_json::Value::String(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    let body = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    Response::new(full(body.to_string()))
}

async fn websocket(req: Request<Incoming>) -> Response<Body> {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(full("no key"))
            .unwrap();
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        use futures::{SinkExt, StreamExt};
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    return;
                }
            } else if msg.is_close() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(""))
        .unwrap()
}

async fn backend_service(req: Request<Incoming>, b: Backend) -> Response<Body> {
    b.requests.fetch_add(1, Ordering::SeqCst);
    match req.uri().path() {
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            let go = Arc::clone(&b.sse_go);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: one\n\n")))).await;
                go.notified().await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("data: two\n\n")))).await;
            });
            let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(BodyExt::boxed(body))
                .unwrap()
        }
        "/download" => {
            let n: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1 << 20);
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(
                    Lazy {
                        left: n,
                        produced: Arc::clone(&b.produced),
                    }
                    .boxed(),
                )
                .unwrap()
        }
        "/ws" => websocket(req).await,
        _ => echo(&req),
    }
}

/// Starts a backend on a loopback port.
pub async fn backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = Backend {
        addr: listener.local_addr().unwrap(),
        requests: Arc::new(AtomicU64::new(0)),
        produced: Arc::new(AtomicU64::new(0)),
        sse_go: Arc::new(Notify::new()),
    };
    let shared = b.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let b = shared.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let b = b.clone();
                    async move { Ok::<_, Infallible>(backend_service(req, b).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    b
}

// ---------------------------------------------------------------------
// Clients.

/// Opens a tunnel through a SOCKS5 proxy to `host:port` (name resolved by
/// the proxy).
pub async fn socks_connect(proxy: SocketAddr, host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(proxy).await?;
    s.write_all(&[5, 1, 0]).await?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await?;
    assert_eq!(m, [5, 0]);
    let mut req = vec![5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host.as_bytes());
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await?;
    if reply[1] != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("SOCKS5 reply {}", reply[1]),
        ));
    }
    Ok(s)
}

/// A TLS client trusting only the mesh CA.
pub fn tls_client(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// SOCKS5 to `host:443`, then TLS verified against the mesh CA.
pub async fn mesh_tls(
    proxy: SocketAddr,
    host: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = socks_connect(proxy, host, 443).await?;
    let name = ServerName::try_from(host.to_string()).unwrap();
    tls_client(ca_pem, alpn).connect(name, tcp).await
}

/// An HTTP/1.1 connection to a node's serve through SOCKS5.
pub async fn http1(
    proxy: SocketAddr,
    host: &str,
    ca_pem: &str,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let tls = mesh_tls(proxy, host, ca_pem, &[b"http/1.1"]).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// GET `path` on a connection.
pub async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
) -> Response<Incoming> {
    sender.ready().await.unwrap();
    sender
        .send_request(
            Request::get(path)
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap()
}

/// Runs a command to completion; stdout, stderr and success.
pub async fn run(cmd: &str, args: &[&str]) -> (String, String, bool) {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e} (scripts/install-test-deps installs it)"));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// An HTTP/2 executor for clients.
pub fn executor() -> TokioExecutor {
    TokioExecutor::new()
}

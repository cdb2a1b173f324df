//! The node's local API: a Unix socket in the state directory (mode 0600,
//! and callers must run as the node's user or root), one JSON request and
//! one JSON response per line. `gatehouse node status|ping|down` are its
//! clients.

use crate::plane::PeerPath;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// File name of the socket in the state directory.
pub const SOCKET_FILE: &str = "node.sock";
/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ApiRequest {
    /// The node's status.
    Status,
    /// A path-level round trip to a peer (name, FQDN or address).
    Ping {
        /// The peer.
        peer: String,
    },
    /// Stop the node.
    Down,
}

/// A response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum ApiResponse {
    /// The node's status.
    Status(Box<NodeStatus>),
    /// A ping's answer.
    Pong {
        /// The peer's DNS name.
        peer: String,
        /// The address pinged.
        addr: IpAddr,
        /// Round trip, milliseconds.
        rtt_ms: f64,
        /// How the pong travelled (`relay <region>`, `direct <ip:port>`),
        /// when the data plane knows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
    },
    /// Done.
    Ok,
    /// The request failed.
    Error {
        /// Why.
        error: String,
    },
}

/// What `gatehouse node status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Serving (certificate in place, map received, listeners bound).
    pub ready: bool,
    /// Node id.
    pub node_id: String,
    /// Host name.
    pub name: String,
    /// DNS name.
    pub fqdn: String,
    /// Mesh addresses.
    pub addresses: Vec<IpAddr>,
    /// Owning user (untagged nodes).
    pub user: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Control connection.
    pub control: ControlStatus,
    /// Serving certificate.
    pub certificate: Option<CertStatus>,
    /// Peers, sorted by name.
    pub peers: Vec<PeerStatus>,
    /// Data plane.
    pub plane: PlaneSummary,
    /// Routes of `serve` (empty: not serving).
    pub serve: Vec<String>,
    /// SOCKS5 / HTTP CONNECT address.
    pub socks5: Option<SocketAddr>,
    /// DNS resolver address.
    pub dns: Option<SocketAddr>,
    /// Metrics and health address.
    pub metrics: Option<SocketAddr>,
}

/// The control connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlStatus {
    /// Control's URL.
    pub url: String,
    /// Whether the map stream is open.
    pub connected: bool,
    /// Map messages received (all streams).
    pub map_messages: u64,
    /// Map streams opened.
    pub streams: u64,
    /// The last error talking to control.
    pub last_error: Option<String>,
}

/// The serving certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    /// Serial, hex.
    pub serial: String,
    /// End of validity (unix seconds).
    pub not_after: i64,
    /// When it will be renewed (unix seconds).
    pub renew_at: i64,
    /// Renewals since the node started.
    pub renewals: u64,
}

/// A peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Node id.
    pub id: String,
    /// Host name.
    pub name: String,
    /// DNS name.
    pub fqdn: String,
    /// Mesh addresses.
    pub addresses: Vec<IpAddr>,
    /// Owning user.
    pub user: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Endpoints control knows.
    pub endpoints: Vec<SocketAddr>,
    /// The data plane's view.
    pub path: Option<PeerPath>,
}

/// The data plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaneSummary {
    /// Which.
    pub kind: String,
    /// Local addresses.
    pub listen: Vec<SocketAddr>,
    /// Inbound connections refused.
    pub refused: u64,
    /// The node's WireGuard public key (mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The TUN device in use (mesh, TUN mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tun: Option<String>,
    /// The home relay region's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_relay: Option<String>,
    /// Open relay connections, by region code.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub relays: std::collections::BTreeMap<String, crate::relays::RelayStatus>,
    /// The node's public addresses as STUN saw them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reflexive: Vec<SocketAddr>,
}

/// Why the local API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No node answers on the socket.
    #[error("no node running with state {dir} ({source})")]
    NotRunning {
        /// State directory.
        dir: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("local API: {0}")]
    Io(#[from] std::io::Error),
    /// The answer did not parse.
    #[error("local API: {0}")]
    Decode(#[from] serde_json::Error),
}

/// The socket path of a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// Sends one request to the node running with `state_dir`.
pub async fn call(state_dir: &Path, req: &ApiRequest) -> Result<ApiResponse, ApiError> {
    let path = socket_path(state_dir);
    let stream = UnixStream::connect(&path)
        .await
        .map_err(|source| ApiError::NotRunning {
            dir: state_dir.display().to_string(),
            source,
        })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    if answer.is_empty() {
        return Ok(ApiResponse::Error {
            error: "the node closed the connection".into(),
        });
    }
    Ok(serde_json::from_str(&answer)?)
}

/// Handles one request.
pub type Handler =
    Arc<dyn Fn(ApiRequest) -> Pin<Box<dyn Future<Output = ApiResponse> + Send>> + Send + Sync>;

/// Binds the socket: refuses if a node already answers on it, replaces a
/// stale one, and makes it readable only by its owner.
pub async fn bind(state_dir: &Path) -> Result<UnixListener, ApiError> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(state_dir);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(ApiError::Io(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "a node is already running with state {}",
                    state_dir.display()
                ),
            )));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves requests until `cancel`. Callers whose user is neither the
/// socket's owner nor root are refused.
pub async fn serve(
    listener: UnixListener,
    owner_uid: u32,
    handler: Handler,
    cancel: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "local API: accept");
                    continue;
                }
            },
        };
        let allowed = stream
            .peer_cred()
            .map(|c| c.uid() == owner_uid || c.uid() == 0)
            .unwrap_or(false);
        if !allowed {
            tracing::warn!("local API: caller refused (another user)");
            continue;
        }
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let read = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::io::AsyncReadExt::take(BufReader::new(r), MAX_REQUEST).read_line(&mut line),
            )
            .await;
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                return;
            }
            let resp = match serde_json::from_str::<ApiRequest>(&line) {
                Ok(req) => handler(req).await,
                Err(e) => ApiResponse::Error {
                    error: format!("bad request: {e}"),
                },
            };
            if let Ok(mut out) = serde_json::to_vec(&resp) {
                out.push(b'\n');
                let _ = w.write_all(&out).await;
            }
        });
    }
}

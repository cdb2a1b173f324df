//! The client side of raw TCP through the tunnel (`gatehouse tunnel access
//! tcp`): each local TCP connection becomes one HTTPS request to the edge
//! that upgrades to a raw byte stream (`Upgrade: gatehouse-tcp`), which the
//! connector joins to its `tcp://` origin.

use crate::proxy::TCP_UPGRADE;
use gatehouse_ops::Chain;
use gatehouse_tunnel_io::stream::{TunnelBody, empty};
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

/// Where to listen and where to go.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Public hostname of the TCP service.
    pub hostname: String,
    /// Edge HTTPS address to dial.
    pub edge: SocketAddr,
    /// Local address to listen on.
    pub listen: SocketAddr,
    /// Roots to verify the edge with.
    pub roots: rustls::RootCertStore,
}

/// Why one access connection failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Network error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// HTTP error.
    #[error(transparent)]
    Http(#[from] hyper::Error),
    /// The upgrade request could not be built.
    #[error("building the upgrade request")]
    Request(#[source] http::Error),
    /// The edge answered without switching protocols.
    #[error("the edge answered {0} instead of switching to TCP")]
    Refused(StatusCode),
    /// Bad server name.
    #[error("invalid hostname")]
    Name(#[source] rustls::pki_types::InvalidDnsNameError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] gatehouse_ops::tls::TlsError),
}

/// Listens on `cfg.listen` and forwards every connection until the task is
/// dropped.
pub async fn serve(cfg: AccessConfig) -> Result<(), AccessError> {
    let listener = TcpListener::bind(cfg.listen).await?;
    info!(listen = %listener.local_addr()?, hostname = cfg.hostname, "access tcp listening");
    let tls = Arc::new(gatehouse_ops::tls::client_config(
        Some(cfg.roots.clone()),
        &[b"http/1.1"],
    )?);
    let cfg = Arc::new(cfg);
    loop {
        let (local, peer) = listener.accept().await?;
        let cfg = cfg.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            if let Err(e) = one(&cfg, tls, local).await {
                warn!(%peer, error = %Chain(&e), "access connection failed");
            }
        });
    }
}

async fn one(
    cfg: &AccessConfig,
    tls: Arc<rustls::ClientConfig>,
    mut local: TcpStream,
) -> Result<(), AccessError> {
    let _ = local.set_nodelay(true);
    let tcp = TcpStream::connect(cfg.edge).await?;
    let _ = tcp.set_nodelay(true);
    let name =
        rustls::pki_types::ServerName::try_from(cfg.hostname.clone()).map_err(AccessError::Name)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %Chain(&e), "access HTTP connection ended");
        }
    });
    let req = Request::get("/")
        .header(http::header::HOST, &cfg.hostname)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, TCP_UPGRADE)
        .body::<TunnelBody>(empty())
        .map_err(AccessError::Request)?;
    let resp = send.send_request(req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(AccessError::Refused(resp.status()));
    }
    let up = hyper::upgrade::on(resp).await?;
    let mut up = TokioIo::new(up);
    let _ = tokio::io::copy_bidirectional(&mut local, &mut up).await;
    Ok(())
}

//! One Noise session: HTTP/2 over it, every request bound to the session's
//! machine key.

use crate::App;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use gatehouse_tailcfg::MachinePublic;
use gatehouse_ts2021::{ClientInfo, NoiseStream};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest request body inside a session (Tailscale's clients send a few
/// KiB; headscale's limit is the same).
const BODY_LIMIT: usize = 1 << 20;

/// Who is on the other end of a session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The client's machine key, proven by the handshake.
    pub machine_key: MachinePublic,
    /// The capability version it spoke the handshake with.
    pub version: u16,
    /// Where the connection comes from.
    pub remote: SocketAddr,
}

impl Session {
    /// The credential stored with the node this machine registered.
    pub fn credential(&self) -> String {
        self.machine_key.to_string()
    }
}

/// The early payload sent with the handshake response (Tailscale's
/// `EarlyNoise`, its JSON): a fresh challenge key. Control asks no
/// node-key challenge yet; clients read the payload and go on.
pub(crate) fn early_payload() -> Vec<u8> {
    let challenge = gatehouse_ts2021::MachinePrivateKey::generate().public();
    serde_json::to_vec(&gatehouse_tailcfg::EarlyNoise {
        node_key_challenge: gatehouse_tailcfg::ChallengePublic::from_bytes(challenge.0),
    })
    .unwrap_or_default()
}

/// Serves HTTP/2 on `stream` until the client goes away.
pub(crate) async fn serve<T>(
    app: Arc<App>,
    stream: NoiseStream<T>,
    client: ClientInfo,
    remote: SocketAddr,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let session = Session {
        machine_key: MachinePublic::from_bytes(client.machine_key.0),
        version: client.version,
        remote,
    };
    tracing::debug!(%remote, machine = %session.machine_key, version = session.version, "ts2021: session open");
    let router = axum::Router::new()
        .route(
            "/machine/register",
            axum::routing::post(super::register::register),
        )
        .route("/machine/map", axum::routing::post(super::poll::map))
        .fallback(|| async { (StatusCode::NOT_IMPLEMENTED, "not implemented") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::Extension(session))
        .with_state(Arc::clone(&app));
    let service = TowerToHyperService::new(router);
    let mut stopping = app.stopping.subscribe();
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stop = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let ended = tokio::select! {
        r = conn.as_mut() => r,
        () = stop => {
            // Control stops: requests in flight end (map streams end on
            // the same signal), then the session closes.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%remote, error = %e, "ts2021: session ended");
    }
}

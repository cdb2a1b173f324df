//! Tailscale's control protocol beside the native one (decision 0031), so
//! the official Tailscale clients join the network: `GET /key` gives
//! control's Noise public key; `POST /ts2021` upgrades to a Noise session
//! authenticated by the client's machine key; HTTP/2 inside it serves
//! `/machine/register` and `/machine/map`. Both work on the same store,
//! hub and policy as the native API: a Tailscale device is a node like any
//! other.

mod mapper;
mod poll;
mod register;
mod session;

use crate::App;
use crate::server::PeerAddr;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gatehouse_ts2021::upgrade::{
    HANDSHAKE_HEADER, UPGRADE_PATH, UPGRADE_PROTOCOL, decode_handshake_header, is_upgrade_protocol,
};
use std::sync::Arc;

pub(crate) use gatehouse_ts2021::MachinePrivateKey;

/// The file in the state directory holding control's Noise private key.
pub(crate) const KEY_FILE: &str = "noise.key";

/// How long a client has to finish the Noise handshake after the upgrade.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Mounts `/key` and `/ts2021` on control's router.
pub(crate) fn routes(router: axum::Router<Arc<App>>) -> axum::Router<Arc<App>> {
    router
        .route("/key", axum::routing::get(key))
        .route(UPGRADE_PATH, axum::routing::post(upgrade).get(upgrade))
        .route("/register/{code}", axum::routing::get(crate::waiting::page))
}

#[derive(serde::Deserialize)]
struct KeyQuery {
    v: Option<u32>,
}

/// Control's Noise public key (`OverTLSPublicKeyResponse`). A client that
/// says it is older than the oldest supported capability version is told
/// so here, before it tries the upgrade.
async fn key(State(app): State<Arc<App>>, Query(q): Query<KeyQuery>) -> Response {
    if let Some(v) = q.v
        && v < u32::from(gatehouse_ts2021::MIN_CAPABILITY_VERSION)
    {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "Tailscale clients of capability version {v} are too old: at least {} (Tailscale 1.80) is needed",
                gatehouse_ts2021::MIN_CAPABILITY_VERSION
            ),
        )
            .into_response();
    }
    let public = gatehouse_tailcfg::MachinePublic::from_bytes(app.noise_key.public().0);
    axum::Json(gatehouse_tailcfg::OverTlsPublicKeyResponse {
        legacy_public_key: gatehouse_tailcfg::MachinePublic::ZERO,
        public_key: public,
    })
    .into_response()
}

/// `POST /ts2021`: switches the connection to Tailscale's control protocol.
/// The request is judged on its headers before the `101`; the Noise
/// handshake then runs on the upgraded connection, and HTTP/2 inside it.
async fn upgrade(State(app): State<Arc<App>>, mut req: Request) -> Response {
    let remote = req
        .extensions()
        .get::<PeerAddr>()
        .map_or(std::net::SocketAddr::from(([0, 0, 0, 0], 0)), |a| a.0);
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| is_upgrade_protocol(v.as_bytes()));
    if !wants {
        return (
            StatusCode::BAD_REQUEST,
            format!("this path upgrades to {UPGRADE_PROTOCOL} only"),
        )
            .into_response();
    }
    let init = match decode_handshake_header(
        req.headers()
            .get(HANDSHAKE_HEADER)
            .map_or(&b""[..], HeaderValue::as_bytes),
    ) {
        Ok(init) => init,
        Err(e) => {
            tracing::info!(%remote, error = %e, "ts2021: upgrade refused");
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    if let Err(e) = gatehouse_ts2021::initiation_version(&init) {
        tracing::info!(%remote, error = %e, "ts2021: upgrade refused");
        return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "ts2021: upgrade did not complete");
                return;
            }
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let early = session::early_payload();
        let accepted = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            gatehouse_ts2021::accept_with_early_payload(io, &init, &app.noise_key, &early),
        )
        .await;
        match accepted {
            Ok(Ok((stream, client))) => session::serve(app, stream, client, remote).await,
            Ok(Err(e)) => {
                tracing::info!(%remote, error = %gatehouse_ops::Chain(&e), "ts2021: handshake refused");
            }
            Err(_) => tracing::info!(%remote, "ts2021: handshake timed out"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, UPGRADE_PROTOCOL)
        .header(header::CONNECTION, "upgrade")
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Refuses clients older than the oldest capability version supported.
fn check_version(v: gatehouse_tailcfg::CapVer) -> Result<(), crate::error::ApiErr> {
    if v < i64::from(gatehouse_ts2021::MIN_CAPABILITY_VERSION) {
        return Err(crate::error::ApiErr::bad(format!(
            "Tailscale clients of capability version {v} are not supported: at least {} (Tailscale 1.80)",
            gatehouse_ts2021::MIN_CAPABILITY_VERSION
        )));
    }
    Ok(())
}

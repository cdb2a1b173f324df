//! `/machine/map`: a Tailscale client announces its endpoints, disco key
//! and home relay, and (when `Stream`) follows its map: the native map
//! stream, each message as a Tailscale map frame.

use super::mapper;
use super::session::Session;
use crate::App;
use crate::error::ApiErr;
use crate::machine::{MAX_ENDPOINTS, announce, unusable_endpoint};
use crate::stream::MapEncoding;
use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gatehouse_proto::control::{FullMap, MapDelta};
use gatehouse_tailcfg::{Compression, FrameEncoder, MapRequest};
use std::sync::Arc;

pub(crate) async fn map(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    body: Bytes,
) -> Response {
    match handle(&app, &session, &body).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(remote = %session.remote, machine = %session.machine_key, error = %e, "ts2021: map request refused");
            e.into_response()
        }
    }
}

async fn handle(app: &Arc<App>, session: &Session, body: &[u8]) -> Result<Response, ApiErr> {
    let req: MapRequest =
        gatehouse_tailcfg::from_json(body).map_err(|e| ApiErr::bad(format!("map request: {e}")))?;
    super::check_version(req.version)?;
    let node = app
        .hub
        .node_by_fingerprint(&session.credential())
        .ok_or_else(|| ApiErr::unauthorized("unknown, deleted or expired node"))?;
    let wg_key = mapper::wg_key_of(&req.node_key);
    if node.wg_key != wg_key {
        return Err(ApiErr::unauthorized(
            "the node key is not this machine's: register again",
        ));
    }
    if node.key_expiry <= app.now() {
        return Err(ApiErr::unauthorized("node key expired: log in again"));
    }
    if !req.read_only {
        update(app, &node, &req, session).await?;
    }
    if !req.stream {
        if req.omit_peers {
            // A "lite" update: the endpoints are recorded, nothing to send.
            return Ok(StatusCode::OK.into_response());
        }
        // One map, leaving the device's stream (if it has one) alone.
        let full = app
            .hub
            .full_map(&node.id)
            .ok_or_else(|| ApiErr::unauthorized("unknown, deleted or expired node"))?;
        let mut enc = Frames::new(app, &req);
        return Ok(framed(Body::from(enc.full(full))));
    }
    let enc = Frames::new(app, &req);
    let body = crate::stream::open(app, &node, enc).await?;
    Ok(framed(body))
}

fn framed(body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// Records what the request announces: endpoints (those peers can use),
/// disco key, home relay, and what the client runs.
async fn update(
    app: &App,
    node: &crate::store::NodeRow,
    req: &MapRequest,
    session: &Session,
) -> Result<(), ApiErr> {
    let local = session.remote.ip().to_canonical().is_loopback();
    let endpoints: Vec<_> = req
        .endpoints
        .iter()
        .filter(|ep| unusable_endpoint(ep, local).is_none())
        .take(MAX_ENDPOINTS)
        .copied()
        .collect();
    let disco_key = (!req.disco_key.is_zero()).then(|| req.disco_key.to_string());
    let home_relay = req
        .hostinfo
        .as_ref()
        .and_then(|h| h.net_info.as_ref())
        .and_then(|n| u16::try_from(n.preferred_derp).ok())
        .filter(|r| *r != 0);
    announce(app, node, &endpoints, disco_key, home_relay).await?;
    if let Some(h) = &req.hostinfo {
        let client = super::register::client_info(h);
        if client != node.client {
            app.store.set_client(&node.id, &client).await?;
            app.hub.set_client(&node.id, client);
        }
    }
    Ok(())
}

/// Tailscale map frames (zstd when the client asks, as official clients
/// always do).
struct Frames {
    compression: Compression,
    clock: Arc<dyn crate::clock::Clock>,
}

thread_local! {
    /// One zstd context per worker thread, shared by the streams it runs
    /// (a context kept per stream would cost each idle client its
    /// workspace, a few hundred KiB).
    static ZSTD: std::cell::RefCell<Option<FrameEncoder>> = const { std::cell::RefCell::new(None) };
}

impl Frames {
    fn new(app: &App, req: &MapRequest) -> Self {
        Frames {
            compression: Compression::from_request(&req.compress),
            clock: Arc::clone(&app.config.clock),
        }
    }

    fn encode(&mut self, r: &gatehouse_tailcfg::MapResponse) -> Bytes {
        let framed = match self.compression {
            Compression::None => gatehouse_tailcfg::encode_frame(r, Compression::None),
            Compression::Zstd => ZSTD.with_borrow_mut(|enc| {
                if enc.is_none() {
                    *enc = Some(FrameEncoder::new(Compression::Zstd)?);
                }
                match enc.as_mut() {
                    Some(e) => e.encode(r),
                    None => gatehouse_tailcfg::encode_frame(r, Compression::Zstd),
                }
            }),
        };
        match framed {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "ts2021: a map response could not be encoded");
                Bytes::new()
            }
        }
    }
}

impl MapEncoding for Frames {
    fn full(&mut self, m: FullMap) -> Bytes {
        self.encode(&mapper::full(&m, self.clock.now()))
    }
    fn delta(&mut self, d: MapDelta) -> Bytes {
        self.encode(&mapper::delta(&d))
    }
    fn keepalive(&mut self) -> Bytes {
        self.encode(&mapper::keep_alive(self.clock.now()))
    }
    /// Tailscale clients reconnect on their own when the stream ends.
    fn goodbye(&mut self, _streams: usize) -> Option<Bytes> {
        None
    }
}

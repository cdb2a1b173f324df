//! `/machine/register`: a Tailscale client registers its node key with a
//! pre-auth key, asks whether it is still authorised, or logs out (an
//! expiry in the past).

use super::mapper;
use super::session::Session;
use crate::App;
use crate::admission::{self, Admitted, Authority, Candidate, Credential};
use crate::audit::audit;
use crate::error::ApiErr;
use crate::store::{ClientInfo, ClientKind, NodeRow};
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use gatehouse_tailcfg::{RegisterRequest, RegisterResponse};
use std::sync::Arc;

/// Longest pre-auth key text accepted (as the native API).
const MAX_AUTH_KEY: usize = 256;

pub(crate) async fn register(
    State(app): State<Arc<App>>,
    Extension(session): Extension<Session>,
    body: Bytes,
) -> Response {
    match handle(&app, &session, &body).await {
        Ok(resp) => axum::Json(resp).into_response(),
        Err(e) => {
            tracing::info!(remote = %session.remote, machine = %session.machine_key, error = %e, "ts2021: registration refused");
            e.into_response()
        }
    }
}

async fn handle(app: &App, session: &Session, body: &[u8]) -> Result<RegisterResponse, ApiErr> {
    let req: RegisterRequest = gatehouse_tailcfg::from_json(body)
        .map_err(|e| ApiErr::bad(format!("register request: {e}")))?;
    super::check_version(req.version)?;
    if req.node_key.is_zero() {
        return Err(ApiErr::bad("register request without a node key"));
    }
    let wg_key = mapper::wg_key_of(&req.node_key);
    let now = app.now();
    if let Some(node) = app.hub.node_registered_by(&session.credential())
        && let Some(resp) = known_machine(app, session, &req, node, &wg_key, now).await?
    {
        return Ok(resp);
    }
    if app.hub.has_wireguard_key(&wg_key) {
        // The node key belongs to a node another machine registered.
        return Err(ApiErr::unauthorized(
            "this node key is registered by another machine",
        ));
    }
    if req.expiry.is_some_and(|t| t.unix_timestamp() <= now) {
        return Err(ApiErr::unauthorized("no such node to log out"));
    }
    let auth_key = req.auth.as_ref().map_or("", |a| a.auth_key.as_str());
    if auth_key.len() > MAX_AUTH_KEY {
        return Err(ApiErr::bad("auth key is too long"));
    }
    let hostinfo = req.hostinfo.clone().unwrap_or_default();
    let hostname = hostname_of(&hostinfo.hostname)?;
    if auth_key.is_empty() {
        return interactive(app, session, &req, &wg_key, &hostname, &hostinfo).await;
    }
    let candidate = Candidate {
        authority: Authority::Key(auth_key),
        hostname: &hostname,
        shared_name: false,
        wg_key: &wg_key,
        credential: Credential::MachineKey(session.credential()),
        client: client_info(&hostinfo),
    };
    let Admitted { row, .. } = admission::register(app, candidate).await?;
    tracing::info!(node = %row.id, name = %row.name, remote = %session.remote, "ts2021: node registered");
    Ok(authorized(&row))
}

/// How long a follow-up request waits for an approval before it is told to
/// ask again.
const FOLLOWUP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A registration without a key: the device gets (or waits on) the URL of
/// its approval page.
async fn interactive(
    app: &App,
    session: &Session,
    req: &RegisterRequest,
    wg_key: &str,
    hostname: &str,
    hostinfo: &gatehouse_tailcfg::Hostinfo,
) -> Result<RegisterResponse, ApiErr> {
    let credential = session.credential();
    let code = app.pending.code_for(
        crate::waiting::Proof::MachineKey(credential.clone()),
        wg_key,
        hostname,
        client_info(hostinfo),
        session.remote.ip(),
    )?;
    let url = format!("{}/register/{code}", app.url());
    if req.followup.is_empty() {
        tracing::info!(remote = %session.remote, %hostname, %code, "ts2021: a device waits for approval");
        return Ok(RegisterResponse {
            auth_url: url,
            ..RegisterResponse::default()
        });
    }
    let asked = req
        .followup
        .rsplit_once("/register/")
        .map(|(_, c)| c)
        .ok_or_else(|| ApiErr::bad("follow-up URL is not a registration URL"))?;
    match app.pending.wait(asked, &credential, FOLLOWUP_WAIT).await? {
        Some(crate::waiting::Verdict::Approved(a)) => Ok(authorized(&a.row)),
        None => Ok(RegisterResponse {
            auth_url: url,
            ..RegisterResponse::default()
        }),
    }
}

/// A registration from a machine control knows: the same node key asking
/// again, a logout, a new node key signed off by the old one (rotation), or
/// a node whose key expired registering again (`None`: the expired node is
/// gone and the request goes on as a new registration).
async fn known_machine(
    app: &App,
    session: &Session,
    req: &RegisterRequest,
    node: NodeRow,
    wg_key: &str,
    now: i64,
) -> Result<Option<RegisterResponse>, ApiErr> {
    let actor = format!("node:{}", node.id);
    let wants_logout = req.expiry.is_some_and(|t| t.unix_timestamp() <= now);
    if wants_logout {
        if node.wg_key != wg_key {
            return Err(ApiErr::unauthorized(
                "this machine registered another node key",
            ));
        }
        if node.ephemeral {
            app.delete_node(&node.id, &actor, "logged out (ephemeral)")
                .await?;
        } else {
            app.expire_node(&node.id, &actor, "logged out").await?;
        }
        tracing::info!(node = %node.id, remote = %session.remote, "ts2021: node logged out");
        return Ok(Some(RegisterResponse {
            node_key_expired: true,
            ..RegisterResponse::default()
        }));
    }
    if node.key_expiry <= now {
        let asks = req.auth.as_ref().is_some_and(|a| !a.auth_key.is_empty())
            || !req.followup.is_empty()
            || node.wg_key != wg_key;
        if !asks {
            return Ok(Some(RegisterResponse {
                node_key_expired: true,
                ..RegisterResponse::default()
            }));
        }
        // Its key expired: it must be let in again (a key or an approval),
        // as a new node; the expired one, outside the mesh already, goes.
        app.delete_node(&node.id, &actor, "key expired; the machine registers again")
            .await?;
        return Ok(None);
    }
    if node.wg_key == wg_key {
        return Ok(Some(authorized(&node)));
    }
    if node.wg_key != mapper::wg_key_of(&req.old_node_key) {
        return Err(ApiErr::unauthorized(
            "this machine registered another node key: log out and register again",
        ));
    }
    // Rotation: the new key replaces the old one; peers learn it.
    if app.hub.has_wireguard_key(wg_key) {
        return Err(ApiErr::conflict("this node key is already registered"));
    }
    app.store.set_wg_key(&node.id, wg_key).await?;
    app.hub.set_wireguard_key(&node.id, wg_key);
    audit(app, &actor, "node.rotate", &node.id, true, "new node key").await;
    Ok(Some(authorized(&node)))
}

fn authorized(row: &NodeRow) -> RegisterResponse {
    let (user, login) = mapper::owner(row.user.as_deref(), !row.tags.is_empty());
    RegisterResponse {
        user,
        login,
        machine_authorized: true,
        ..RegisterResponse::default()
    }
}

/// The host name a device asks for: its `Hostinfo.Hostname`, bounded as
/// the native API bounds it.
fn hostname_of(h: &str) -> Result<String, ApiErr> {
    let h = h.trim();
    if h.len() > 255 || h.chars().any(char::is_control) {
        return Err(ApiErr::bad(
            "hostname must be at most 255 characters, without control characters",
        ));
    }
    Ok(if h.is_empty() {
        "device".into()
    } else {
        h.into()
    })
}

/// What a Tailscale client says it runs.
pub(super) fn client_info(h: &gatehouse_tailcfg::Hostinfo) -> ClientInfo {
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).take(64).collect() };
    ClientInfo {
        kind: ClientKind::Tailscale,
        os: clean(&h.os),
        version: clean(&h.ipn_version),
    }
}

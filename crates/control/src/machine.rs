//! The machine API (`/machine/v1`): registration with a pre-auth key, then,
//! authenticated by the machine certificate, the map stream, endpoint
//! updates and serving-certificate renewal.

use crate::App;
use crate::admission::{self, Admitted, Authority, Candidate, Credential};
use crate::audit::audit;
use crate::error::{ApiErr, ApiResult};
use crate::extract::JsonBody;
use crate::metrics::Metrics;
use crate::server::{PeerAddr, PeerCert};
use crate::store::{ClientInfo, ClientKind, NodeRow};
use crate::stream::MapEncoding;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use bytes::Bytes;
use gatehouse_proto::control::{
    ApiError, EndpointsRequest, FullMap, InteractiveRegisterRequest, InteractiveRegisterResponse,
    MapDelta, MapMessage, RegisterRequest, RegisterResponse, RenewRequest, RenewResponse,
};
use std::net::IpAddr;
use std::sync::Arc;

type AppState = State<Arc<App>>;

/// Most endpoints a node may announce.
pub(crate) const MAX_ENDPOINTS: usize = 32;

/// Longest CSR accepted (PEM).
const MAX_CSR: usize = 16 * 1024;
/// Longest pre-auth key text accepted.
const MAX_AUTH_KEY: usize = 256;

/// Checks what a registration request can be judged on without looking
/// anything up. A request failing here is answered 400 and leaves no audit
/// entry: it presented no credential to refuse, and nothing it carries is
/// stored.
fn check_shape(req: &RegisterRequest) -> ApiResult<()> {
    let host = req.hostname.trim();
    if host.is_empty() || req.hostname.len() > 255 || req.hostname.chars().any(char::is_control) {
        return Err(ApiErr::bad(
            "hostname must be 1 to 255 characters, without control characters",
        ));
    }
    if req.version.len() > 64 || req.version.chars().any(char::is_control) {
        return Err(ApiErr::bad(
            "version must be at most 64 characters, without control characters",
        ));
    }
    if req.auth_key.len() > MAX_AUTH_KEY {
        return Err(ApiErr::bad("auth_key is too long"));
    }
    let wg = base64::engine::general_purpose::STANDARD.decode(&req.wireguard_key);
    if !matches!(&wg, Ok(b) if b.len() == 32) {
        return Err(ApiErr::bad("wireguard_key must be 32 bytes, base64"));
    }
    for (field, csr) in [
        ("machine_csr", &req.machine_csr),
        ("serving_csr", &req.serving_csr),
    ] {
        if csr.is_empty() || csr.len() > MAX_CSR {
            return Err(ApiErr::bad(format!(
                "{field} must be a PEM CSR of at most {MAX_CSR} bytes"
            )));
        }
    }
    Ok(())
}

#[utoipa::path(post, path = "/machine/v1/register", tag = "machine", request_body = RegisterRequest,
    responses((status = 200, body = RegisterResponse), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn register(
    State(app): AppState,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> ApiResult<Json<RegisterResponse>> {
    if let Err(e) = check_shape(&req) {
        Metrics::outcome(&app.metrics.registrations, false);
        return Err(e);
    }
    let candidate = Candidate {
        authority: Authority::Key(&req.auth_key),
        hostname: &req.hostname,
        shared_name: req.shared_name,
        wg_key: &req.wireguard_key,
        credential: Credential::Certificates {
            machine_csr: &req.machine_csr,
            serving_csr: &req.serving_csr,
        },
        client: ClientInfo {
            kind: ClientKind::Gatehouse,
            os: "linux".into(),
            version: req.version.clone(),
        },
    };
    let Admitted { row, machine_cert } = admission::register(&app, candidate).await?;
    Ok(Json(registered(&app, row, machine_cert)))
}

/// What a registered native node is told.
fn registered(app: &App, row: NodeRow, machine_cert: Option<String>) -> RegisterResponse {
    let fqdn = format!("{}.{}", row.name, app.config.domain());
    let mut addresses = Vec::new();
    for a in [&row.ipv4, &row.ipv6] {
        if let Ok(ip) = a.parse::<IpAddr>() {
            addresses.push(ip);
        }
    }
    RegisterResponse {
        node_id: row.id,
        name: row.name,
        fqdn,
        addresses,
        machine_cert: machine_cert.unwrap_or_default(),
        serving_cert: row.serving_cert,
        ca_cert: app.ca.cert_pem().to_string(),
        key_expiry: row.key_expiry,
    }
}

/// How long a waiting request waits for an approval before it is told to
/// ask again.
const APPROVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

#[utoipa::path(post, path = "/machine/v1/register/interactive", tag = "machine", request_body = InteractiveRegisterRequest,
    responses((status = 200, body = InteractiveRegisterResponse), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn register_interactive(
    State(app): AppState,
    Extension(from): Extension<PeerAddr>,
    JsonBody(req): JsonBody<InteractiveRegisterRequest>,
) -> ApiResult<Json<InteractiveRegisterResponse>> {
    check_shape(&RegisterRequest {
        auth_key: String::new(),
        hostname: req.hostname.clone(),
        wireguard_key: req.wireguard_key.clone(),
        machine_csr: req.machine_csr.clone(),
        serving_csr: req.serving_csr.clone(),
        shared_name: false,
        version: req.version.clone(),
    })?;
    if req.wait.len() > 64 {
        return Err(ApiErr::bad("wait is not a registration code"));
    }
    let proof = crate::waiting::Proof::Certificates {
        machine_csr: req.machine_csr.clone(),
        serving_csr: req.serving_csr.clone(),
    };
    let id = proof.id();
    let client = ClientInfo {
        kind: ClientKind::Gatehouse,
        os: "linux".into(),
        version: req.version.clone(),
    };
    let code = app.pending.code_for(
        proof,
        &req.wireguard_key,
        &req.hostname,
        client,
        from.0.ip(),
    )?;
    let auth_url = format!("{}/register/{code}", app.url());
    let mut node = None;
    if !req.wait.is_empty() {
        match app.pending.wait(&req.wait, &id, APPROVAL_WAIT).await? {
            Some(crate::waiting::Verdict::Approved(a)) => {
                let a = *a;
                node = Some(registered(&app, a.row, a.machine_cert));
            }
            None => {}
        }
    } else {
        tracing::info!(hostname = %req.hostname, %code, "a node waits for approval");
    }
    Ok(Json(InteractiveRegisterResponse {
        code,
        auth_url,
        node,
    }))
}

/// The node a request's client certificate belongs to.
fn node_of(app: &App, cert: &PeerCert) -> ApiResult<NodeRow> {
    let fp = cert
        .0
        .as_deref()
        .ok_or_else(|| ApiErr::unauthorized("a machine certificate is required"))?;
    app.hub
        .node_by_fingerprint(fp)
        .ok_or_else(|| ApiErr::unauthorized("unknown, deleted or expired node"))
}

/// The native stream's messages: one JSON `MapMessage` per line.
struct Ndjson;

fn line(msg: &MapMessage) -> Bytes {
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

impl MapEncoding for Ndjson {
    fn full(&mut self, m: FullMap) -> Bytes {
        line(&MapMessage::Full(m))
    }
    fn delta(&mut self, d: MapDelta) -> Bytes {
        line(&MapMessage::Delta(d))
    }
    fn keepalive(&mut self) -> Bytes {
        line(&MapMessage::Keepalive)
    }
    /// The reconnect hint: at least 100 ms (a restart takes some), then
    /// spread uniformly over half a millisecond per open stream (2,000
    /// returns a second), at least 500 ms and at most 10 s, so a large
    /// network does not come back all at once and a small one comes back at
    /// once.
    fn goodbye(&mut self, streams: usize) -> Option<Bytes> {
        use rand::Rng;
        let spread = u64::try_from(streams / 2)
            .unwrap_or(u64::MAX)
            .clamp(500, 10_000);
        Some(line(&MapMessage::Reconnect {
            after_ms: 100 + rand::rng().random_range(0..spread),
        }))
    }
}

#[utoipa::path(get, path = "/machine/v1/map", tag = "machine",
    responses((status = 200, description = "Newline-delimited MapMessage JSON: a full map, then deltas and keepalives", content_type = "application/x-ndjson", body = String),
              (status = 401, body = ApiError)))]
pub(crate) async fn map(
    State(app): AppState,
    Extension(cert): Extension<PeerCert>,
) -> ApiResult<Response> {
    let node = node_of(&app, &cert)?;
    let body = crate::stream::open(&app, &node, Ndjson).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// Why peers must not be sent to `ep`, if they must not: addresses that are
/// nobody's (unspecified), everybody's (broadcast, multicast), port 0, and
/// loopback unless the node itself talks to control over loopback (all on
/// one machine).
pub(crate) fn unusable_endpoint(
    ep: &std::net::SocketAddr,
    node_is_local: bool,
) -> Option<&'static str> {
    let ip = ep.ip().to_canonical();
    if ep.port() == 0 {
        Some("port 0")
    } else if ip.is_unspecified() {
        Some("unspecified address")
    } else if ip.is_multicast() {
        Some("multicast address")
    } else if ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        Some("broadcast address")
    } else if ip.is_loopback() && !node_is_local {
        Some("loopback address from a node that is not on control's machine")
    } else {
        None
    }
}

/// Records where a node can be reached (checked endpoints), its disco key
/// and home relay, and tells its peers.
pub(crate) async fn announce(
    app: &App,
    node: &NodeRow,
    endpoints: &[std::net::SocketAddr],
    disco_key: Option<String>,
    home_relay: Option<u16>,
) -> Result<(), crate::store::StoreError> {
    let mut eps: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
    eps.sort();
    eps.dedup();
    if eps != node.endpoints {
        app.store.set_endpoints(&node.id, &eps, app.now()).await?;
    }
    app.hub.set_endpoints(&node.id, eps, disco_key, home_relay);
    Ok(())
}

#[utoipa::path(post, path = "/machine/v1/endpoints", tag = "machine", request_body = EndpointsRequest,
    responses((status = 204), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub(crate) async fn endpoints(
    State(app): AppState,
    Extension(cert): Extension<PeerCert>,
    Extension(from): Extension<PeerAddr>,
    JsonBody(req): JsonBody<EndpointsRequest>,
) -> ApiResult<axum::http::StatusCode> {
    let node = node_of(&app, &cert)?;
    if req.endpoints.len() > MAX_ENDPOINTS {
        return Err(ApiErr::bad(format!("at most {MAX_ENDPOINTS} endpoints")));
    }
    let local = from.0.ip().to_canonical().is_loopback();
    if let Some((ep, why)) = req
        .endpoints
        .iter()
        .find_map(|ep| unusable_endpoint(ep, local).map(|why| (ep, why)))
    {
        return Err(ApiErr::bad(format!("endpoint {ep}: {why}")));
    }
    let disco_key = match &req.disco_key {
        Some(k) => Some(
            k.parse::<gatehouse_disco::DiscoPublicKey>()
                .map_err(|e| ApiErr::bad(format!("disco_key: {e}")))?
                .to_string(),
        ),
        None => None,
    };
    announce(&app, &node, &req.endpoints, disco_key, req.home_relay).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/machine/v1/renew", tag = "machine", request_body = RenewRequest,
    responses((status = 200, body = RenewResponse), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub(crate) async fn renew(
    State(app): AppState,
    Extension(cert): Extension<PeerCert>,
    JsonBody(req): JsonBody<RenewRequest>,
) -> ApiResult<Json<RenewResponse>> {
    let node = node_of(&app, &cert)?;
    let fqdn = format!("{}.{}", node.name, app.config.domain());
    let names = admission::serving_names(&fqdn, node.service.as_deref(), &app.config.domain());
    let lifetime = time::Duration::seconds(
        i64::try_from(app.config.serving_cert_lifetime.as_secs()).unwrap_or(86_400),
    );
    let pem = app
        .ca
        .sign_serving(&req.serving_csr, &names, lifetime)
        .map_err(|e| ApiErr::bad(format!("serving_csr: {e}")))?;
    app.store.set_serving_cert(&node.id, &pem).await?;
    app.hub.set_serving_cert(&node.id, pem.clone());
    audit(
        &app,
        &format!("node:{}", node.id),
        "node.renew",
        &node.id,
        true,
        "",
    )
    .await;
    Ok(Json(RenewResponse { serving_cert: pem }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn endpoints_nobody_can_use_are_refused() {
        use super::unusable_endpoint;
        let ep = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        for bad in [
            "0.0.0.0:41641",
            "[::]:41641",
            "255.255.255.255:9",
            "224.0.0.1:41641",
            "[ff02::1]:41641",
            "192.0.2.1:0",
            "127.0.0.1:41641",
            "[::1]:41641",
            "[::ffff:127.0.0.1]:41641",
        ] {
            assert!(unusable_endpoint(&ep(bad), false).is_some(), "{bad}");
        }
        assert!(unusable_endpoint(&ep("127.0.0.1:41641"), true).is_none());
        assert!(unusable_endpoint(&ep("255.255.255.255:9"), true).is_some());
        for good in ["192.0.2.1:41641", "8.8.8.8:53", "[2001:db8::1]:41641"] {
            assert!(unusable_endpoint(&ep(good), false).is_none(), "{good}");
        }
    }
}

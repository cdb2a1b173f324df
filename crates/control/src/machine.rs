//! The machine API (`/machine/v1`): registration with a pre-auth key, then,
//! authenticated by the machine certificate, the map stream, endpoint
//! updates and serving-certificate renewal.

use crate::App;
use crate::audit::audit;
use crate::auth::{Minter, check_tag_ownership, key_minter_tags};
use crate::error::{ApiErr, ApiResult};
use crate::extract::JsonBody;
use crate::hub::StreamHandle;
use crate::metrics::Metrics;
use crate::secret::{self, Kind};
use crate::server::{PeerAddr, PeerCert};
use crate::store::{KeyRow, NodeRow};
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use bytes::Bytes;
use gatehouse_proto::control::{
    ApiError, EndpointsRequest, MapMessage, RegisterRequest, RegisterResponse, RenewRequest,
    RenewResponse,
};
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

type AppState = State<Arc<App>>;

/// Most endpoints a node may announce.
const MAX_ENDPOINTS: usize = 32;

fn time_of(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

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

/// A refused registration: who presented what, and the answer.
enum Refusal {
    /// A credential or request refused on its merits: audited.
    Refused { actor: String, err: ApiErr },
    /// Control failed (storage): answered, not audited as a refusal.
    Failed(ApiErr),
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        Refusal::Failed(e.into())
    }
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
    match admit(&app, &req).await {
        Ok(resp) => Ok(Json(resp)),
        Err(Refusal::Failed(e)) => Err(e),
        Err(Refusal::Refused { actor, err }) => {
            audit(
                &app,
                &actor,
                "node.register",
                &req.hostname,
                false,
                &err.to_string(),
            )
            .await;
            Metrics::outcome(&app.metrics.registrations, false);
            Err(err)
        }
    }
}

/// Judges a well-formed registration and, if it passes, stores the node.
async fn admit(app: &App, req: &RegisterRequest) -> Result<RegisterResponse, Refusal> {
    let (key, actor) = check_key(app, req).await?;
    let _serial = app.register_lock.lock().await;
    store_node(app, req, &key, &actor).await
}

fn refused(actor: &str, err: ApiErr) -> Refusal {
    Refusal::Refused {
        actor: actor.to_string(),
        err,
    }
}

/// The pre-auth key of a registration, if it may register this node: known,
/// unrevoked, unexpired, unused if one-off, its tags still owned by its
/// minter, and the name asked for allowed to its owner. Also the actor the
/// audit log names (`key:<id>`).
async fn check_key(app: &App, req: &RegisterRequest) -> Result<(KeyRow, String), Refusal> {
    let Some((key_id, key_secret)) = secret::parse(Kind::AuthKey, &req.auth_key) else {
        return Err(refused(
            "anonymous",
            ApiErr::unauthorized("invalid auth key"),
        ));
    };
    let actor = format!("key:{key_id}");
    let key = app.store.key(key_id).await?;
    let Some(key) = key.filter(|k| secret::verify(key_secret, &k.secret_hash)) else {
        return Err(refused(&actor, ApiErr::unauthorized("invalid auth key")));
    };
    let t = app.now();
    if key.revoked_at.is_some() {
        return Err(refused(&actor, ApiErr::unauthorized("auth key revoked")));
    }
    if key.expires_at <= t {
        return Err(refused(&actor, ApiErr::unauthorized("auth key expired")));
    }
    if !key.reusable && key.uses > 0 {
        return Err(refused(
            &actor,
            ApiErr::unauthorized("auth key already used (it is a one-off key)"),
        ));
    }
    // Tags must still be owned by the key's creator under today's policy.
    let minter_tags = key_minter_tags(app, &key.created_by)
        .await
        .map_err(|e| refused(&actor, e))?;
    let minter = match &minter_tags {
        None => Minter::Admin,
        Some(tags) => Minter::OAuth(tags),
    };
    check_tag_ownership(&app.hub.policy(), &minter, &key.tags)
        .map_err(|e| refused(&actor, ApiErr::forbidden(e)))?;
    if key.tags.is_empty() && key.user.is_none() {
        return Err(refused(
            &actor,
            ApiErr::bad("the key has neither a user nor tags"),
        ));
    }
    // (A user's key asking for a shared name is refused for that, later.)
    if key.tags.is_empty()
        && !req.shared_name
        && let Some(err) = reserved_for_tags(app, &req.hostname).await?
    {
        return Err(refused(&actor, err));
    }
    Ok((key, actor))
}

/// Allocates the node's name and addresses, signs its certificates and
/// stores it, spending one use of its key. The caller holds the
/// registration lock.
async fn store_node(
    app: &App,
    req: &RegisterRequest,
    key: &KeyRow,
    actor: &str,
) -> Result<RegisterResponse, Refusal> {
    let actor = actor.to_string();
    let t = app.now();
    if app.hub.has_wireguard_key(&req.wireguard_key) {
        return Err(refused(
            &actor,
            ApiErr::conflict("this WireGuard key is already registered"),
        ));
    }
    let service = if req.shared_name {
        Some(
            shared_name(app, &req.hostname, &key.tags, key.user.as_deref())
                .map_err(|e| refused(&actor, e))?,
        )
    } else {
        None
    };
    let (name, v4, v6) = app.hub.allocate(&req.hostname);
    let id = format!("n{}", secret::mint(Kind::Token).id);
    let fqdn = format!("{name}.{}", app.config.domain());
    let key_expiry =
        t + i64::try_from(app.config.node_key_lifetime.as_secs()).unwrap_or(i64::MAX / 2);
    let machine_cert = app
        .ca
        .sign_machine(&req.machine_csr, &id, time_of(key_expiry))
        .map_err(|e| refused(&actor, ApiErr::bad(format!("machine_csr: {e}"))))?;
    let lifetime = time::Duration::seconds(
        i64::try_from(app.config.serving_cert_lifetime.as_secs()).unwrap_or(86_400),
    );
    let names = serving_names(&fqdn, service.as_deref(), &app.config.domain());
    let serving_cert = app
        .ca
        .sign_serving(&req.serving_csr, &names, lifetime)
        .map_err(|e| refused(&actor, ApiErr::bad(format!("serving_csr: {e}"))))?;
    let fingerprint = crate::ca::pem_to_der(&machine_cert)
        .map(|d| crate::ca::der_fingerprint(&d))
        .ok_or_else(|| Refusal::Failed(ApiErr::internal("issued certificate does not parse")))?;
    let row = NodeRow {
        id: id.clone(),
        name: name.clone(),
        user: key.user.clone(),
        tags: key.tags.clone(),
        ipv4: v4.to_string(),
        ipv6: v6.to_string(),
        wg_key: req.wireguard_key.clone(),
        cert_fingerprint: fingerprint,
        serving_cert: serving_cert.clone(),
        endpoints: Vec::new(),
        ephemeral: key.ephemeral,
        auth_key_id: Some(key.id.clone()),
        created_at: t,
        key_expiry,
        last_seen: Some(t),
        service: service.clone(),
    };
    if !app.store.register_node(&row, &key.id, t).await? {
        return Err(refused(
            &actor,
            ApiErr::unauthorized("auth key already used, revoked or expired"),
        ));
    }
    if let Err(e) = app.hub.add_node(row) {
        // Cannot happen for checked tags; undo rather than keep a node the mesh lacks.
        app.store.delete_node(&id).await?;
        return Err(refused(&actor, ApiErr::bad(e.to_string())));
    }
    Metrics::outcome(&app.metrics.registrations, true);
    audit(
        app,
        &actor,
        "node.register",
        &id,
        true,
        &format!(
            "name={name} tags={:?} user={:?} shared_name={service:?}",
            key.tags, key.user
        ),
    )
    .await;
    Ok(RegisterResponse {
        node_id: id,
        name,
        fqdn,
        addresses: vec![IpAddr::V4(v4), IpAddr::V6(v6)],
        machine_cert,
        serving_cert,
        ca_cert: app.ca.cert_pem().to_string(),
        key_expiry,
    })
}

/// Whether `pattern` (with `*` matching any run of characters) matches `name`.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Why a user's device may not take `hostname`, if it is reserved for
/// tagged nodes: it matches a configured pattern (`--tagged-names`), or a
/// tagged node has held it.
async fn reserved_for_tags(
    app: &App,
    hostname: &str,
) -> Result<Option<ApiErr>, crate::store::StoreError> {
    let label = gatehouse_names::to_label(hostname);
    if let Some(p) = app
        .config
        .tagged_names
        .iter()
        .find(|p| glob_matches(p, &label))
    {
        return Ok(Some(ApiErr::conflict(format!(
            "the name {label} is reserved for tagged nodes (pattern {p:?}); choose another hostname"
        ))));
    }
    Ok(app.store.tagged_name(&label).await?.map(|tags| {
        ApiErr::conflict(format!(
            "the name {label} belongs to tagged nodes ({}); choose another hostname",
            tags.join(",")
        ))
    }))
}

/// The shared name a replica asks for, if it may have it: only tagged nodes
/// share names, and every node already holding the name (as its own or as
/// its shared name) must be a replica of it with the same tags, so no node
/// takes over another's name.
fn shared_name(
    app: &App,
    hostname: &str,
    tags: &[String],
    user: Option<&str>,
) -> Result<String, ApiErr> {
    if tags.is_empty() || user.is_some() {
        return Err(ApiErr::bad(
            "only tagged nodes share a name (the auth key has a user)",
        ));
    }
    let label = gatehouse_names::to_label(hostname);
    let mut want: Vec<&String> = tags.iter().collect();
    want.sort();
    for (service, holder_tags) in app.hub.name_holders(&label) {
        let mut have: Vec<&String> = holder_tags.iter().collect();
        have.sort();
        if service.as_deref() != Some(label.as_str()) || have != want {
            return Err(ApiErr::conflict(format!(
                "the name {label} is held by a node that is not a replica with tags {tags:?}"
            )));
        }
    }
    Ok(label)
}

/// The names a serving certificate covers: the node's FQDN and, for a
/// replica, its shared name's.
fn serving_names(fqdn: &str, service: Option<&str>, domain: &str) -> Vec<String> {
    let mut names = vec![fqdn.to_string()];
    if let Some(s) = service {
        let shared = format!("{s}.{domain}");
        if shared != fqdn {
            names.push(shared);
        }
    }
    names
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

fn line(msg: &MapMessage) -> Bytes {
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// A map stream being served; closing it (the client went away) frees its slot.
struct Streaming {
    app: Arc<App>,
    handle: StreamHandle,
    first: Option<Bytes>,
    ephemeral: bool,
    /// Control's shutdown signal.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The reconnect hint was sent: the stream ends.
    said_goodbye: bool,
}

/// The delay a node is asked to wait before reconnecting to a restarting
/// control: at least 100 ms (a restart takes some), then spread uniformly
/// over half a millisecond per open stream (2,000 returns a second), at
/// least 500 ms and at most 10 s, so a large network does not come back
/// all at once and a small one comes back at once.
fn reconnect_hint(streams: usize) -> MapMessage {
    use rand::Rng;
    let spread = u64::try_from(streams / 2)
        .unwrap_or(u64::MAX)
        .clamp(500, 10_000);
    MapMessage::Reconnect {
        after_ms: 100 + rand::rng().random_range(0..spread),
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.app.hub.close_stream(&self.handle);
        self.app.metrics.streams.dec();
        if self.ephemeral {
            let app = Arc::clone(&self.app);
            let id = self.handle.node_id.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    tokio::time::sleep(app.config.ephemeral_grace).await;
                    let online = app
                        .hub
                        .list()
                        .iter()
                        .any(|(p, _, online)| p.id == id && *online);
                    if !online && app.hub.node(&id).is_some() {
                        let _ = app.store.delete_node(&id).await;
                        app.hub.remove_node(&id);
                        audit(
                            &app,
                            "control",
                            "node.delete",
                            &id,
                            true,
                            "ephemeral node went offline",
                        )
                        .await;
                    }
                });
            }
        }
    }
}

async fn next_message(mut s: Streaming) -> Option<(Result<Bytes, Infallible>, Streaming)> {
    if let Some(first) = s.first.take() {
        s.app.metrics.map_messages.inc();
        return Some((Ok(first), s));
    }
    if s.said_goodbye {
        return None;
    }
    let keepalive = s.app.config.keepalive;
    loop {
        if *s.stopping.borrow_and_update() {
            s.said_goodbye = true;
            let hint = reconnect_hint(s.app.hub.stream_count());
            return Some((Ok(line(&hint)), s));
        }
        tokio::select! {
            r = s.stopping.changed() => if r.is_err() { return None },
            () = s.handle.notify.notified() => {
                match s.app.hub.delta(&mut s.handle) {
                    Err(_) => return None,
                    Ok(d) if d.is_empty() => continue,
                    Ok(d) => {
                        s.app.metrics.map_messages.inc();
                        return Some((Ok(line(&MapMessage::Delta(d))), s));
                    }
                }
            }
            () = tokio::time::sleep(keepalive) => {
                return Some((Ok(line(&MapMessage::Keepalive)), s));
            }
        }
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
    let (full, handle) = app
        .hub
        .open_stream(&node.id)
        .ok_or_else(|| ApiErr::unauthorized("unknown, deleted or expired node"))?;
    app.store.touch_node(&node.id, app.now()).await?;
    app.metrics.streams.inc();
    let s = Streaming {
        app: Arc::clone(&app),
        handle,
        first: Some(line(&MapMessage::Full(full))),
        ephemeral: node.ephemeral,
        stopping: app.stopping.subscribe(),
        said_goodbye: false,
    };
    let body = Body::from_stream(futures::stream::unfold(s, next_message));
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
fn unusable_endpoint(ep: &std::net::SocketAddr, node_is_local: bool) -> Option<&'static str> {
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
    let mut eps: Vec<String> = req.endpoints.iter().map(ToString::to_string).collect();
    eps.sort();
    eps.dedup();
    let disco_key = match &req.disco_key {
        Some(k) => Some(
            k.parse::<gatehouse_disco::DiscoPublicKey>()
                .map_err(|e| ApiErr::bad(format!("disco_key: {e}")))?
                .to_string(),
        ),
        None => None,
    };
    if eps != node.endpoints {
        app.store.set_endpoints(&node.id, &eps, app.now()).await?;
    }
    app.hub
        .set_endpoints(&node.id, eps, disco_key, req.home_relay);
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
    let names = serving_names(&fqdn, node.service.as_deref(), &app.config.domain());
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
    use super::glob_matches;

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

    #[test]
    fn globs() {
        assert!(glob_matches("k8s-*", "k8s-grafana"));
        assert!(glob_matches("k8s-*", "k8s-"));
        assert!(!glob_matches("k8s-*", "k8s"));
        assert!(!glob_matches("k8s-*", "my-k8s-grafana"));
        assert!(glob_matches("*-ui", "admin-ui"));
        assert!(glob_matches("a*b*c", "a-b-c"));
        assert!(!glob_matches("a*b*c", "a-c-b"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exact-1"));
        assert!(glob_matches("*", "anything"));
        assert!(!glob_matches("ab*ba", "aba"));
    }
}

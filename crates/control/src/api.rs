//! The admin API (`/api/v1`): users, nodes, keys, OAuth clients, policy,
//! audit, CA; plus health, readiness and metrics. Every route is declared
//! with its OpenAPI description, so the served routes and the document
//! cannot drift apart.

use crate::machine;
use crate::metrics::Metrics;
use crate::secret::{self, Kind};
use crate::store::{KeyRow, OAuthRow, TokenRow};
use crate::{App, now};
use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use gatehouse_policy::{Owner, Policy, PolicyRefused, check_policy};
use gatehouse_proto::control::{
    AdminToken, ApiError, AuditEntry, CreateKey, CreateOAuthClient, CreateUser, KeyInfo, NodeInfo,
    OAuthClientInfo, TokenResponse, User,
};
use serde::Deserialize;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

type AppState = State<Arc<App>>;

/// Every scope a token may carry.
pub(crate) const SCOPES: &[&str] = &[
    "devices:read",
    "devices:write",
    "auth_keys:read",
    "auth_keys:write",
    "auth_keys:all",
    "policy:read",
    "policy:write",
    "users:read",
    "users:write",
    "audit:read",
];

/// Longest pre-auth key lifetime.
const MAX_KEY_SECONDS: i64 = 90 * 86_400;
/// Lifetime of OAuth access tokens.
const TOKEN_SECONDS: i64 = 3600;
/// Largest request body (a policy file is the largest).
const MAX_BODY: usize = 1 << 20;

/// An error answer: status and message.
#[derive(Debug)]
pub(crate) struct ApiErr(pub StatusCode, pub String);

impl ApiErr {
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiErr(StatusCode::BAD_REQUEST, msg.into())
    }
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        ApiErr(StatusCode::UNAUTHORIZED, msg.into())
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        ApiErr(StatusCode::FORBIDDEN, msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiErr(StatusCode::NOT_FOUND, msg.into())
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        ApiErr(StatusCode::CONFLICT, msg.into())
    }
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        ApiErr(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<crate::store::StoreError> for ApiErr {
    fn from(e: crate::store::StoreError) -> Self {
        ApiErr::internal(e)
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiErr>;

/// A JSON body whose rejections are API errors (400, or 415 without the
/// JSON content type) with a JSON body, like every other error.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiErr;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiErr> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(r) => Err(ApiErr(
                if r.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    r.status()
                } else {
                    StatusCode::BAD_REQUEST
                },
                r.body_text(),
            )),
        }
    }
}

/// A form body (see [`JsonBody`]).
#[derive(Debug)]
pub(crate) struct FormBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for FormBody<T> {
    type Rejection = ApiErr;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiErr> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(v)) => Ok(FormBody(v)),
            Err(r) => Err(ApiErr(
                if r.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                    r.status()
                } else {
                    StatusCode::BAD_REQUEST
                },
                r.body_text(),
            )),
        }
    }
}

/// Query parameters whose rejections are API errors.
#[derive(Debug)]
pub(crate) struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiErr> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|r| ApiErr::bad(r.body_text()))
    }
}

/// Longest actor and target an audit entry keeps, in bytes.
pub(crate) const AUDIT_NAME_MAX: usize = 256;
/// Longest detail an audit entry keeps, in bytes.
pub(crate) const AUDIT_DETAIL_MAX: usize = 4096;

/// `s` cut to at most `max` bytes on a character boundary, marked when cut.
pub(crate) fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    const MARK: &str = "…(truncated)";
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &s[..end])
}

/// Writes an audit entry (failures to write are logged, not fatal). Every
/// field is bounded, since some come from unauthenticated requests.
pub(crate) async fn audit(
    app: &App,
    actor: &str,
    action: &str,
    target: &str,
    ok: bool,
    detail: &str,
) {
    let e = AuditEntry {
        id: 0,
        at: now(),
        actor: bounded(actor, AUDIT_NAME_MAX),
        action: bounded(action, AUDIT_NAME_MAX),
        target: bounded(target, AUDIT_NAME_MAX),
        outcome: if ok { "ok" } else { "refused" }.into(),
        detail: bounded(detail, AUDIT_DETAIL_MAX),
    };
    if let Err(err) = app.store.audit(&e).await {
        tracing::error!(error = %err, action, "cannot write audit entry");
    }
}

/// Who is calling the admin API.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// `admin` or `oauth:<client id>`.
    pub actor: String,
    scopes: Vec<String>,
    /// The admin token (every scope, owns every tag).
    pub admin: bool,
    /// Tags of the OAuth client.
    pub tags: Vec<String>,
}

impl Caller {
    fn has(&self, scope: &str) -> bool {
        if self.admin {
            return true;
        }
        let write = scope.replace(":read", ":write");
        self.scopes.iter().any(|s| s == scope || *s == write)
    }

    /// Refuses unless the caller holds `scope` (a `:write` scope includes `:read`).
    pub fn require(&self, scope: &str) -> ApiResult<()> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiErr::forbidden(format!(
                "this credential lacks the {scope} scope"
            )))
        }
    }

    /// Whether the caller may list and revoke `key`: the admin and holders
    /// of `auth_keys:all` see every key; an OAuth client, the keys it minted.
    fn sees_key(&self, key: &KeyRow) -> bool {
        self.has("auth_keys:all") || key.created_by == self.actor
    }

    fn require_admin(&self) -> ApiResult<()> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiErr::forbidden(
                "only the admin token may manage OAuth clients",
            ))
        }
    }
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiErr;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiErr::unauthorized("missing Authorization: Bearer <token>"))?;
        let (kind, parsed) = if let Some(p) = secret::parse(Kind::Admin, header) {
            ("admin", p)
        } else if let Some(p) = secret::parse(Kind::Token, header) {
            ("oauth", p)
        } else {
            audit(app, "anonymous", "api.auth", "", false, "malformed token").await;
            return Err(ApiErr::unauthorized("malformed token"));
        };
        let (id, secret_part) = parsed;
        let row = app.store.token(id).await?;
        let valid = row.as_ref().is_some_and(|t| {
            t.kind == kind
                && secret::verify(secret_part, &t.secret_hash)
                && t.revoked_at.is_none()
                && t.expires_at.is_none_or(|e| e > now())
        });
        let Some(row) = row.filter(|_| valid) else {
            audit(
                app,
                "anonymous",
                "api.auth",
                id,
                false,
                "unknown, revoked or expired token",
            )
            .await;
            return Err(ApiErr::unauthorized("unknown, revoked or expired token"));
        };
        if kind == "admin" {
            return Ok(Caller {
                actor: "admin".into(),
                scopes: Vec::new(),
                admin: true,
                tags: Vec::new(),
            });
        }
        let client_id = row.client_id.clone().unwrap_or_default();
        let client = app
            .store
            .oauth(&client_id)
            .await?
            .filter(|c| c.revoked_at.is_none())
            .ok_or_else(|| ApiErr::unauthorized("the token's OAuth client is revoked"))?;
        Ok(Caller {
            actor: format!("oauth:{client_id}"),
            scopes: row.scopes,
            admin: false,
            tags: client.tags,
        })
    }
}

/// Who minted a key, for deciding which tags it may carry.
pub(crate) enum Minter<'a> {
    Admin,
    OAuth(&'a [String]),
}

/// Whether `minter` may apply `tags` under `policy`: every tag must be
/// declared; the admin owns them all; an OAuth client owns a tag it carries
/// or whose owners include one of its tags.
pub(crate) fn check_tag_ownership(
    policy: &Policy,
    minter: &Minter<'_>,
    tags: &[String],
) -> Result<(), String> {
    for t in tags {
        let Some(owners) = policy.tag_owners.get(t) else {
            return Err(format!("{t} is not declared in the policy's tagOwners"));
        };
        let owned = match minter {
            Minter::Admin => true,
            Minter::OAuth(client_tags) => {
                client_tags.contains(t)
                    || owners
                        .iter()
                        .any(|o| matches!(o, Owner::Tag(ot) if client_tags.contains(ot)))
            }
        };
        if !owned {
            return Err(format!(
                "{t} is not owned by the key's creator (see tagOwners)"
            ));
        }
    }
    Ok(())
}

/// The minter of a stored key, loaded for an ownership check.
pub(crate) async fn key_minter_tags(app: &App, created_by: &str) -> ApiResult<Option<Vec<String>>> {
    match created_by.strip_prefix("oauth:") {
        None => Ok(None),
        Some(id) => {
            let c = app
                .store
                .oauth(id)
                .await?
                .filter(|c| c.revoked_at.is_none())
                .ok_or_else(|| {
                    ApiErr::unauthorized("the OAuth client that minted this key is revoked")
                })?;
            Ok(Some(c.tags))
        }
    }
}

fn valid_login(login: &str) -> bool {
    login
        .split_once('@')
        .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('@'))
        && !login.contains(char::is_whitespace)
        && !login.contains(':')
        && login.len() <= 254
}

// ---- users

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = Vec<User>), (status = 401, body = ApiError)))]
async fn list_users(State(app): AppState, caller: Caller) -> ApiResult<Json<Vec<User>>> {
    caller.require("users:read")?;
    let users = app.store.users().await?;
    Ok(Json(
        users
            .into_iter()
            .map(|(login, created_at)| User { login, created_at })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = CreateUser,
    responses((status = 201, body = User), (status = 400, body = ApiError), (status = 409, body = ApiError)))]
async fn create_user(
    State(app): AppState,
    caller: Caller,
    JsonBody(req): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    caller.require("users:write")?;
    if !valid_login(&req.login) {
        return Err(ApiErr::bad(format!(
            "invalid login {:?}: expected name@domain",
            req.login
        )));
    }
    if !app.store.create_user(&req.login).await? {
        return Err(ApiErr::conflict(format!("user {} exists", req.login)));
    }
    audit(&app, &caller.actor, "user.create", &req.login, true, "").await;
    Ok((
        StatusCode::CREATED,
        Json(User {
            login: req.login,
            created_at: now(),
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/users/{login}", tag = "users",
    params(("login" = String, Path, description = "User login")),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn delete_user(
    State(app): AppState,
    caller: Caller,
    Path(login): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require("users:write")?;
    let owned = app
        .hub
        .list()
        .into_iter()
        .filter(|(_, r, _)| r.user.as_deref() == Some(&login))
        .count();
    if owned > 0 {
        return Err(ApiErr::conflict(format!(
            "user {login} still owns {owned} nodes; delete them first"
        )));
    }
    if !app.store.delete_user(&login).await? {
        return Err(ApiErr::not_found(format!("no user {login}")));
    }
    audit(&app, &caller.actor, "user.delete", &login, true, "").await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- nodes

fn node_info(
    app: &App,
    (peer, row, online): (gatehouse_proto::control::Peer, crate::store::NodeRow, bool),
) -> NodeInfo {
    let _ = app;
    NodeInfo {
        node: peer,
        created_at: row.created_at,
        last_seen: row.last_seen,
        online,
        ephemeral: row.ephemeral,
    }
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes",
    responses((status = 200, body = Vec<NodeInfo>), (status = 401, body = ApiError)))]
async fn list_nodes(State(app): AppState, caller: Caller) -> ApiResult<Json<Vec<NodeInfo>>> {
    caller.require("devices:read")?;
    Ok(Json(
        app.hub
            .list()
            .into_iter()
            .map(|n| node_info(&app, n))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes",
    params(("id" = String, Path, description = "Node id")),
    responses((status = 200, body = NodeInfo), (status = 404, body = ApiError)))]
async fn get_node(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeInfo>> {
    caller.require("devices:read")?;
    app.hub
        .list()
        .into_iter()
        .find(|(p, _, _)| p.id == id || p.name == id)
        .map(|n| Json(node_info(&app, n)))
        .ok_or_else(|| ApiErr::not_found(format!("no node {id}")))
}

fn resolve_node(app: &App, id_or_name: &str) -> ApiResult<String> {
    app.hub
        .list()
        .into_iter()
        .find(|(p, _, _)| p.id == id_or_name || p.name == id_or_name)
        .map(|(p, _, _)| p.id)
        .ok_or_else(|| ApiErr::not_found(format!("no node {id_or_name}")))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{id}", tag = "nodes",
    params(("id" = String, Path, description = "Node id or name")),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn delete_node(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require("devices:write")?;
    let id = resolve_node(&app, &id)?;
    app.store.delete_node(&id).await?;
    app.hub.remove_node(&id);
    audit(&app, &caller.actor, "node.delete", &id, true, "").await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/expire", tag = "nodes",
    params(("id" = String, Path, description = "Node id or name")),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn expire_node(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require("devices:write")?;
    let id = resolve_node(&app, &id)?;
    let at = now();
    app.store.set_key_expiry(&id, at).await?;
    app.hub.expire_node(&id, at);
    audit(&app, &caller.actor, "node.expire", &id, true, "").await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- pre-auth keys

fn key_info(k: KeyRow, text: Option<String>) -> KeyInfo {
    KeyInfo {
        id: k.id,
        key: text,
        user: k.user,
        tags: k.tags,
        reusable: k.reusable,
        ephemeral: k.ephemeral,
        created_by: k.created_by,
        created_at: k.created_at,
        expires_at: k.expires_at,
        uses: k.uses,
        revoked_at: k.revoked_at,
    }
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "keys",
    responses((status = 200, body = Vec<KeyInfo>), (status = 401, body = ApiError)))]
async fn list_keys(State(app): AppState, caller: Caller) -> ApiResult<Json<Vec<KeyInfo>>> {
    caller.require("auth_keys:read")?;
    Ok(Json(
        app.store
            .keys()
            .await?
            .into_iter()
            .filter(|k| caller.sees_key(k))
            .map(|k| key_info(k, None))
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, body = KeyInfo), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn create_key(
    State(app): AppState,
    caller: Caller,
    JsonBody(req): JsonBody<CreateKey>,
) -> ApiResult<(StatusCode, Json<KeyInfo>)> {
    caller.require("auth_keys:write")?;
    let refuse = |e: ApiErr| async {
        audit(&app, &caller.actor, "key.create", "", false, &e.1).await;
        Err(e)
    };
    let expiry = req.expiry_seconds.unwrap_or(86_400);
    if !(1..=MAX_KEY_SECONDS).contains(&expiry) {
        return refuse(ApiErr::bad(format!(
            "expiry_seconds must be 1..={MAX_KEY_SECONDS}"
        )))
        .await;
    }
    if !req.tags.is_empty() && req.user.is_some() {
        return refuse(ApiErr::bad(
            "a tagged key has no user: nodes registered with it belong to their tags",
        ))
        .await;
    }
    if req.tags.is_empty() {
        if !caller.admin {
            return refuse(ApiErr::bad("keys minted by OAuth clients must carry tags")).await;
        }
        let Some(u) = &req.user else {
            return refuse(ApiErr::bad("an untagged key needs a user")).await;
        };
        if !app.store.users().await?.iter().any(|(l, _)| l == u) {
            return refuse(ApiErr::bad(format!("no user {u}; create it first"))).await;
        }
    }
    let minter = if caller.admin {
        Minter::Admin
    } else {
        Minter::OAuth(&caller.tags)
    };
    if let Err(e) = check_tag_ownership(&app.hub.policy(), &minter, &req.tags) {
        return refuse(ApiErr::forbidden(e)).await;
    }
    let m = secret::mint(Kind::AuthKey);
    let created = now();
    let row = KeyRow {
        id: m.id.clone(),
        secret_hash: m.hash,
        user: req.user,
        tags: req.tags,
        reusable: req.reusable,
        ephemeral: req.ephemeral,
        created_by: caller.actor.clone(),
        created_at: created,
        expires_at: created + expiry,
        uses: 0,
        revoked_at: None,
    };
    app.store.insert_key(&row).await?;
    audit(
        &app,
        &caller.actor,
        "key.create",
        &row.id,
        true,
        &format!("tags={:?} reusable={}", row.tags, row.reusable),
    )
    .await;
    Ok((StatusCode::CREATED, Json(key_info(row, Some(m.text)))))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn revoke_key(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require("auth_keys:write")?;
    // Someone else's key is answered like a missing one.
    let visible = app
        .store
        .key(&id)
        .await?
        .is_some_and(|k| caller.sees_key(&k));
    if !visible || !app.store.revoke_key(&id, now()).await? {
        return Err(ApiErr::not_found(format!("no active key {id}")));
    }
    audit(&app, &caller.actor, "key.revoke", &id, true, "").await;
    Ok(StatusCode::NO_CONTENT)
}

// ---- OAuth

fn oauth_info(c: OAuthRow, secret: Option<String>) -> OAuthClientInfo {
    OAuthClientInfo {
        id: c.id,
        secret,
        scopes: c.scopes,
        tags: c.tags,
        description: c.description,
        created_at: c.created_at,
        revoked_at: c.revoked_at,
    }
}

#[utoipa::path(get, path = "/api/v1/oauth/clients", tag = "oauth",
    responses((status = 200, body = Vec<OAuthClientInfo>), (status = 403, body = ApiError)))]
async fn list_oauth(State(app): AppState, caller: Caller) -> ApiResult<Json<Vec<OAuthClientInfo>>> {
    caller.require_admin()?;
    Ok(Json(
        app.store
            .oauth_clients()
            .await?
            .into_iter()
            .map(|c| oauth_info(c, None))
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/v1/oauth/clients", tag = "oauth", request_body = CreateOAuthClient,
    responses((status = 201, body = OAuthClientInfo), (status = 400, body = ApiError), (status = 403, body = ApiError)))]
async fn create_oauth(
    State(app): AppState,
    caller: Caller,
    JsonBody(req): JsonBody<CreateOAuthClient>,
) -> ApiResult<(StatusCode, Json<OAuthClientInfo>)> {
    caller.require_admin()?;
    if req.scopes.is_empty() {
        return Err(ApiErr::bad("an OAuth client needs at least one scope"));
    }
    if let Some(s) = req.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(ApiErr::bad(format!(
            "unknown scope {s:?}; known: {}",
            SCOPES.join(", ")
        )));
    }
    let policy = app.hub.policy();
    if let Some(t) = req
        .tags
        .iter()
        .find(|t| !policy.tag_owners.contains_key(*t))
    {
        return Err(ApiErr::bad(format!(
            "{t} is not declared in the policy's tagOwners"
        )));
    }
    if req.scopes.iter().any(|s| s == "auth_keys:write") && req.tags.is_empty() {
        return Err(ApiErr::bad(
            "a client with auth_keys:write needs tags (they decide which tags its keys may carry)",
        ));
    }
    let m = secret::mint(Kind::OAuth);
    let row = OAuthRow {
        id: m.id.clone(),
        secret_hash: m.hash,
        scopes: req.scopes,
        tags: req.tags,
        description: req.description,
        created_at: now(),
        revoked_at: None,
    };
    app.store.insert_oauth(&row).await?;
    audit(
        &app,
        &caller.actor,
        "oauth.create",
        &row.id,
        true,
        &format!("scopes={:?} tags={:?}", row.scopes, row.tags),
    )
    .await;
    Ok((StatusCode::CREATED, Json(oauth_info(row, Some(m.text)))))
}

#[utoipa::path(delete, path = "/api/v1/oauth/clients/{id}", tag = "oauth",
    params(("id" = String, Path, description = "Client id")),
    responses((status = 204), (status = 404, body = ApiError)))]
async fn revoke_oauth(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if !app.store.revoke_oauth(&id, now()).await? {
        return Err(ApiErr::not_found(format!("no active OAuth client {id}")));
    }
    audit(&app, &caller.actor, "oauth.revoke", &id, true, "").await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/admin/token", tag = "oauth",
    responses((status = 201, body = AdminToken), (status = 403, body = ApiError)))]
async fn rotate_admin_token(
    State(app): AppState,
    caller: Caller,
) -> ApiResult<(StatusCode, Json<AdminToken>)> {
    if !caller.admin {
        return Err(ApiErr::forbidden("only the admin token may replace itself"));
    }
    let m = secret::mint(Kind::Admin);
    app.store
        .rotate_admin_token(
            &TokenRow {
                id: m.id.clone(),
                secret_hash: m.hash,
                kind: "admin".into(),
                client_id: None,
                scopes: vec!["*".into()],
                expires_at: None,
                revoked_at: None,
            },
            now(),
        )
        .await?;
    audit(&app, &caller.actor, "admin.rotate", &m.id, true, "").await;
    Ok((StatusCode::CREATED, Json(AdminToken { token: m.text })))
}

/// Client-credentials grant, form-encoded (RFC 6749 §4.4).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct TokenRequest {
    /// Must be `client_credentials`.
    grant_type: String,
    /// The client id (optional: the secret names it).
    #[serde(default)]
    client_id: Option<String>,
    /// The client secret.
    client_secret: String,
    /// Space-separated scopes (default: all of the client's).
    #[serde(default)]
    scope: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/oauth/token", tag = "oauth",
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, body = TokenResponse), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn oauth_token(
    State(app): AppState,
    FormBody(req): FormBody<TokenRequest>,
) -> ApiResult<Json<TokenResponse>> {
    if req.grant_type != "client_credentials" {
        return Err(ApiErr::bad(
            "unsupported grant_type: only client_credentials",
        ));
    }
    let Some((id, secret_part)) = secret::parse(Kind::OAuth, &req.client_secret) else {
        audit(
            &app,
            "anonymous",
            "oauth.token",
            "",
            false,
            "malformed client secret",
        )
        .await;
        return Err(ApiErr::unauthorized("invalid client credentials"));
    };
    let client = app.store.oauth(id).await?;
    let ok = client.as_ref().is_some_and(|c| {
        secret::verify(secret_part, &c.secret_hash)
            && c.revoked_at.is_none()
            && req.client_id.as_deref().is_none_or(|cid| cid == c.id)
    });
    let Some(client) = client.filter(|_| ok) else {
        audit(
            &app,
            "anonymous",
            "oauth.token",
            id,
            false,
            "bad or revoked client credentials",
        )
        .await;
        return Err(ApiErr::unauthorized("invalid client credentials"));
    };
    let scopes: Vec<String> = match &req.scope {
        None => client.scopes.clone(),
        Some(s) => {
            let asked: Vec<String> = s.split_whitespace().map(String::from).collect();
            if let Some(bad) = asked.iter().find(|a| !client.scopes.contains(a)) {
                audit(
                    &app,
                    &format!("oauth:{}", client.id),
                    "oauth.token",
                    &client.id,
                    false,
                    &format!("scope {bad} not granted"),
                )
                .await;
                return Err(ApiErr::bad(format!(
                    "invalid_scope: {bad} is not granted to this client"
                )));
            }
            asked
        }
    };
    let m = secret::mint(Kind::Token);
    app.store
        .insert_token(&TokenRow {
            id: m.id.clone(),
            secret_hash: m.hash,
            kind: "oauth".into(),
            client_id: Some(client.id.clone()),
            scopes: scopes.clone(),
            expires_at: Some(now() + TOKEN_SECONDS),
            revoked_at: None,
        })
        .await?;
    audit(
        &app,
        &format!("oauth:{}", client.id),
        "oauth.token",
        &m.id,
        true,
        "",
    )
    .await;
    Ok(Json(TokenResponse {
        access_token: m.text,
        token_type: "bearer".into(),
        expires_in: TOKEN_SECONDS,
        scope: scopes.join(" "),
    }))
}

// ---- policy

#[utoipa::path(get, path = "/api/v1/policy", tag = "policy",
    responses((status = 200, description = "The policy file (HuJSON)", content_type = "application/hujson", body = String)))]
async fn get_policy(State(app): AppState, caller: Caller) -> ApiResult<Response> {
    caller.require("policy:read")?;
    let (version, text) = app.store.policy().await?.unwrap_or((0, String::new()));
    Ok((
        [
            (header::CONTENT_TYPE, "application/hujson"),
            (header::ETAG, &format!("\"{version}\"")),
        ],
        text,
    )
        .into_response())
}

/// Answer to a policy change.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct PolicyVersion {
    /// The new policy's version.
    version: i64,
}

#[utoipa::path(put, path = "/api/v1/policy", tag = "policy",
    request_body(content = String, content_type = "text/plain", description = "The new policy file (HuJSON)"),
    responses((status = 200, body = PolicyVersion), (status = 400, description = "Invalid, unfit for the nodes, or its tests fail: refused whole", body = ApiError)))]
async fn set_policy(
    State(app): AppState,
    caller: Caller,
    body: String,
) -> ApiResult<Json<PolicyVersion>> {
    caller.require("policy:write")?;
    let _serial = app.policy_lock.lock().await;
    let checked = check_policy(&body, &app.hub.inventory());
    let policy = match checked {
        Ok(p) => p,
        Err(e) => {
            let msg = match &e {
                PolicyRefused::TestsFailed(r) => {
                    let mut m = format!("policy refused: {e}");
                    for f in &r.failures {
                        m.push_str(&format!(
                            "\n- tests[{}] (line {}): {} {:?}: {}",
                            f.test,
                            f.line,
                            match f.expect {
                                gatehouse_policy::Expect::Accept => "accept",
                                gatehouse_policy::Expect::Deny => "deny",
                            },
                            f.dst,
                            f.reasons.join("; ")
                        ));
                    }
                    m
                }
                other => format!("policy refused: {other}"),
            };
            Metrics::outcome(&app.metrics.policy_changes, false);
            audit(&app, &caller.actor, "policy.set", "", false, &msg).await;
            return Err(ApiErr::bad(msg));
        }
    };
    let version = app.store.set_policy(&body, &caller.actor).await?;
    if let Err(e) = app.hub.set_policy(policy) {
        return Err(ApiErr::internal(e));
    }
    Metrics::outcome(&app.metrics.policy_changes, true);
    audit(
        &app,
        &caller.actor,
        "policy.set",
        &format!("v{version}"),
        true,
        "",
    )
    .await;
    Ok(Json(PolicyVersion { version }))
}

// ---- audit, CA, ops

/// Audit query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// How many entries (default 100, at most 10000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>)))]
async fn audit_log(
    State(app): AppState,
    caller: Caller,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    caller.require("audit:read")?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiErr::bad("limit must be 1..=10000"));
    }
    Ok(Json(app.store.audit_log(limit).await?))
}

#[utoipa::path(get, path = "/api/v1/ca", tag = "ca",
    responses((status = 200, description = "The mesh CA certificate", content_type = "application/x-pem-file", body = String)))]
async fn get_ca(State(app): AppState) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        app.ca.cert_pem().to_string(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, body = String), (status = 503, body = String)))]
async fn readyz(State(app): AppState) -> Response {
    match app.store.schema_version().await {
        Ok(_) => "ready".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")).into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(app): AppState) -> Response {
    app.metrics
        .streams
        .set(i64::try_from(app.hub.stream_count()).unwrap_or(i64::MAX));
    (
        [(
            header::CONTENT_TYPE,
            gatehouse_ops::server::METRICS_CONTENT_TYPE,
        )],
        app.metrics.encode(),
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Gatehouse control API", description = "Admin API and machine API of gatehouse control. See docs/protocol/control.md."),
    components(schemas(PolicyVersion, TokenRequest)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let comps = doc.components.get_or_insert_with(Default::default);
        comps.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The routes and their OpenAPI document.
pub(crate) fn router_and_doc() -> (axum::Router<Arc<App>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_users, create_user))
        .routes(routes!(delete_user))
        .routes(routes!(list_nodes))
        .routes(routes!(get_node, delete_node))
        .routes(routes!(expire_node))
        .routes(routes!(list_keys, create_key))
        .routes(routes!(revoke_key))
        .routes(routes!(list_oauth, create_oauth))
        .routes(routes!(revoke_oauth))
        .routes(routes!(oauth_token))
        .routes(routes!(rotate_admin_token))
        .routes(routes!(get_policy, set_policy))
        .routes(routes!(audit_log))
        .routes(routes!(get_ca))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(machine::register))
        .routes(routes!(machine::map))
        .routes(routes!(machine::endpoints))
        .routes(routes!(machine::renew))
        .split_for_parts()
}

/// The OpenAPI document (JSON).
pub fn openapi_json() -> String {
    let (_, mut doc) = router_and_doc();
    crate::openapi::finish(&mut doc);
    doc.to_pretty_json().unwrap_or_default()
}

/// The whole router with state.
pub(crate) fn router(app: Arc<App>) -> axum::Router {
    let (router, mut doc) = router_and_doc();
    crate::openapi::finish(&mut doc);
    let doc_json = doc.to_pretty_json().unwrap_or_default();
    router
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let body = doc_json.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
        .fallback(|| async { ApiErr::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::limit::gate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

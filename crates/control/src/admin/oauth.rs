//! `/api/v1/oauth/*`: OAuth clients, the client-credentials grant, and the
//! admin token's rotation.

use crate::App;
use crate::audit::audit;
use crate::auth::Caller;
use crate::auth::SCOPES;
use crate::error::{ApiErr, ApiResult};
use crate::extract::{FormBody, JsonBody};
use crate::secret::{self, Kind};
use crate::store::{OAuthRow, TokenRow};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gatehouse_proto::control::{
    AdminToken, ApiError, CreateOAuthClient, OAuthClientInfo, TokenResponse,
};
use serde::Deserialize;
use std::sync::Arc;

type AppState = State<Arc<App>>;

/// Lifetime of OAuth access tokens.
const TOKEN_SECONDS: i64 = 3600;

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
pub(crate) async fn list_oauth(
    State(app): AppState,
    caller: Caller,
) -> ApiResult<Json<Vec<OAuthClientInfo>>> {
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
pub(crate) async fn create_oauth(
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
        created_at: app.now(),
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
pub(crate) async fn revoke_oauth(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    if !app.store.revoke_oauth(&id, app.now()).await? {
        return Err(ApiErr::not_found(format!("no active OAuth client {id}")));
    }
    audit(&app, &caller.actor, "oauth.revoke", &id, true, "").await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/admin/token", tag = "oauth",
    responses((status = 201, body = AdminToken), (status = 403, body = ApiError)))]
pub(crate) async fn rotate_admin_token(
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
            app.now(),
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
pub(crate) async fn oauth_token(
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
            expires_at: Some(app.now() + TOKEN_SECONDS),
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

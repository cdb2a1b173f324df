//! `/api/v1/keys`: pre-auth keys.

use crate::App;
use crate::audit::audit;
use crate::auth::Caller;
use crate::auth::{Minter, check_tag_ownership};
use crate::error::{ApiErr, ApiResult};
use crate::extract::JsonBody;
use crate::secret::{self, Kind};
use crate::store::KeyRow;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gatehouse_proto::control::{ApiError, CreateKey, KeyInfo};
use std::sync::Arc;

type AppState = State<Arc<App>>;

/// Longest pre-auth key lifetime.
const MAX_KEY_SECONDS: i64 = 90 * 86_400;

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
pub(crate) async fn list_keys(
    State(app): AppState,
    caller: Caller,
) -> ApiResult<Json<Vec<KeyInfo>>> {
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
pub(crate) async fn create_key(
    State(app): AppState,
    caller: Caller,
    JsonBody(req): JsonBody<CreateKey>,
) -> ApiResult<(StatusCode, Json<KeyInfo>)> {
    caller.require("auth_keys:write")?;
    let refuse = |e: ApiErr| async {
        audit(&app, &caller.actor, "key.create", "", false, &e.to_string()).await;
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
        if !app.store.user_exists(u).await? {
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
    let created = app.now();
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
pub(crate) async fn revoke_key(
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
    if !visible || !app.store.revoke_key(&id, app.now()).await? {
        return Err(ApiErr::not_found(format!("no active key {id}")));
    }
    audit(&app, &caller.actor, "key.revoke", &id, true, "").await;
    Ok(StatusCode::NO_CONTENT)
}

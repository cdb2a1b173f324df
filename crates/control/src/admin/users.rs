//! `/api/v1/users`: people's logins.

use crate::App;
use crate::audit::audit;
use crate::auth::Caller;
use crate::error::{ApiErr, ApiResult};
use crate::extract::JsonBody;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gatehouse_proto::control::{ApiError, CreateUser, User};
use std::sync::Arc;

type AppState = State<Arc<App>>;

pub(crate) fn valid_login(login: &str) -> bool {
    login
        .split_once('@')
        .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('@'))
        && !login.contains(char::is_whitespace)
        && !login.contains(':')
        && login.len() <= 254
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users",
    responses((status = 200, body = Vec<User>), (status = 401, body = ApiError)))]
pub(crate) async fn list_users(State(app): AppState, caller: Caller) -> ApiResult<Json<Vec<User>>> {
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
pub(crate) async fn create_user(
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
            created_at: app.now(),
        }),
    ))
}

#[utoipa::path(delete, path = "/api/v1/users/{login}", tag = "users",
    params(("login" = String, Path, description = "User login")),
    responses((status = 204), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn delete_user(
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

//! `/api/v1/registrations`: devices waiting for an administrator's
//! approval (they asked to join without a pre-auth key), and approving
//! them.

use crate::App;
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::JsonBody;
use axum::Json;
use axum::extract::{Path, State};
use gatehouse_proto::control::{ApiError, ApproveDevice, NodeInfo, PendingDevice};
use std::sync::Arc;

type AppState = State<Arc<App>>;

#[utoipa::path(get, path = "/api/v1/registrations", tag = "nodes",
    responses((status = 200, body = Vec<PendingDevice>), (status = 401, body = ApiError)))]
pub(crate) async fn list_registrations(
    State(app): AppState,
    caller: Caller,
) -> ApiResult<Json<Vec<PendingDevice>>> {
    caller.require("devices:read")?;
    Ok(Json(app.pending.list()))
}

#[utoipa::path(post, path = "/api/v1/registrations/{code}/approve", tag = "nodes",
    params(("code" = String, Path, description = "The code of the device's approval URL")),
    request_body = ApproveDevice,
    responses((status = 200, body = NodeInfo), (status = 400, body = ApiError), (status = 404, body = ApiError)))]
pub(crate) async fn approve_registration(
    State(app): AppState,
    caller: Caller,
    Path(code): Path<String>,
    JsonBody(req): JsonBody<ApproveDevice>,
) -> ApiResult<Json<NodeInfo>> {
    caller.require("devices:write")?;
    // A person's device is theirs: only the administrator hands one out
    // (OAuth clients' keys carry their tags, never a person).
    if !caller.admin {
        return Err(crate::error::ApiErr::forbidden(
            "only the admin token may approve a device for a person",
        ));
    }
    let row = crate::waiting::approve(&app, &code, &req.user, &caller.actor).await?;
    let info = app
        .hub
        .list()
        .into_iter()
        .find(|(p, _, _)| p.id == row.id)
        .map(super::nodes::node_info)
        .ok_or_else(|| crate::error::ApiErr::internal("the approved node is not in the mesh"))?;
    Ok(Json(info))
}

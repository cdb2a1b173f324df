//! `/api/v1/nodes`: list, look up, delete and expire nodes.

use crate::App;
use crate::auth::Caller;
use crate::error::{ApiErr, ApiResult};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use gatehouse_proto::control::{ApiError, NodeInfo};
use std::sync::Arc;

type AppState = State<Arc<App>>;

pub(super) fn node_info(
    (mut peer, row, online): (gatehouse_proto::control::Peer, crate::store::NodeRow, bool),
) -> NodeInfo {
    // Said once, by `NodeInfo::online`.
    peer.online = None;
    NodeInfo {
        node: peer,
        created_at: row.created_at,
        last_seen: row.last_seen,
        online,
        ephemeral: row.ephemeral,
        client: row.client.kind.to_string(),
        os: row.client.os,
        version: row.client.version,
    }
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "nodes",
    responses((status = 200, body = Vec<NodeInfo>), (status = 401, body = ApiError)))]
pub(crate) async fn list_nodes(
    State(app): AppState,
    caller: Caller,
) -> ApiResult<Json<Vec<NodeInfo>>> {
    caller.require("devices:read")?;
    Ok(Json(app.hub.list().into_iter().map(node_info).collect()))
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", tag = "nodes",
    params(("id" = String, Path, description = "Node id")),
    responses((status = 200, body = NodeInfo), (status = 404, body = ApiError)))]
pub(crate) async fn get_node(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeInfo>> {
    caller.require("devices:read")?;
    app.hub
        .list()
        .into_iter()
        .find(|(p, _, _)| p.id == id || p.name == id)
        .map(|n| Json(node_info(n)))
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
pub(crate) async fn delete_node(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require("devices:write")?;
    let id = resolve_node(&app, &id)?;
    app.delete_node(&id, &caller.actor, "").await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/expire", tag = "nodes",
    params(("id" = String, Path, description = "Node id or name")),
    responses((status = 204), (status = 404, body = ApiError)))]
pub(crate) async fn expire_node(
    State(app): AppState,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require("devices:write")?;
    let id = resolve_node(&app, &id)?;
    app.expire_node(&id, &caller.actor, "").await?;
    Ok(StatusCode::NO_CONTENT)
}

//! The audit log, the mesh CA, and the operations endpoints (`/healthz`,
//! `/readyz`, `/metrics`) on control's own listener.

use crate::App;
use crate::auth::Caller;
use crate::error::{ApiErr, ApiResult};
use crate::extract::QueryParams;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gatehouse_proto::control::AuditEntry;
use serde::Deserialize;
use std::sync::Arc;

type AppState = State<Arc<App>>;

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
pub(crate) async fn audit_log(
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
pub(crate) async fn get_ca(State(app): AppState) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        app.ca.cert_pem().to_string(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = String)))]
pub(crate) async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, body = String), (status = 503, body = String)))]
pub(crate) async fn readyz(State(app): AppState) -> Response {
    match app.store.schema_version().await {
        Ok(_) => "ready".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")).into_response(),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub(crate) async fn metrics(State(app): AppState) -> Response {
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

//! `/api/v1/policy`: read and replace the policy (refused whole when
//! invalid, unfit for the nodes, or when its tests fail).

use crate::App;
use crate::audit::audit;
use crate::auth::Caller;
use crate::error::{ApiErr, ApiResult};
use crate::metrics::Metrics;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use gatehouse_policy::{PolicyRefused, check_policy};
use gatehouse_proto::control::ApiError;

use std::sync::Arc;

type AppState = State<Arc<App>>;

#[utoipa::path(get, path = "/api/v1/policy", tag = "policy",
    responses((status = 200, description = "The policy file (HuJSON)", content_type = "application/hujson", body = String)))]
pub(crate) async fn get_policy(State(app): AppState, caller: Caller) -> ApiResult<Response> {
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
pub(crate) async fn set_policy(
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

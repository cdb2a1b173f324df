//! The HTTP API: the admin routes (`/api/v1`: users, nodes, keys, OAuth
//! clients, policy, audit, CA), health, readiness and metrics, and the
//! machine API (`crate::machine`), assembled into one router with its
//! OpenAPI document. Every route is declared with its OpenAPI description,
//! so the served routes and the document cannot drift apart.

mod keys;
mod nodes;
mod oauth;
mod ops;
mod policy;
mod registrations;
mod users;

pub(crate) use users::valid_login;

use crate::App;
use crate::error::ApiErr;
use crate::machine;
use axum::http::header;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Largest request body (a policy file is the largest).
const MAX_BODY: usize = 1 << 20;

#[derive(OpenApi)]
#[openapi(
    info(title = "Gatehouse control API", description = "Admin API and machine API of gatehouse control. See docs/protocol/control.md."),
    components(schemas(policy::PolicyVersion, oauth::TokenRequest)),
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
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::delete_user))
        .routes(routes!(nodes::list_nodes))
        .routes(routes!(nodes::get_node, nodes::delete_node))
        .routes(routes!(nodes::expire_node))
        .routes(routes!(registrations::list_registrations))
        .routes(routes!(registrations::approve_registration))
        .routes(routes!(keys::list_keys, keys::create_key))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(oauth::list_oauth, oauth::create_oauth))
        .routes(routes!(oauth::revoke_oauth))
        .routes(routes!(oauth::oauth_token))
        .routes(routes!(oauth::rotate_admin_token))
        .routes(routes!(policy::get_policy, policy::set_policy))
        .routes(routes!(ops::audit_log))
        .routes(routes!(ops::get_ca))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(machine::register))
        .routes(routes!(machine::register_interactive))
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
        .merge(crate::tailscale::routes(axum::Router::new()))
        .merge(crate::signin::routes(axum::Router::new()))
        .fallback(|| async { ApiErr::not_found("no such route") })
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::limit::gate,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

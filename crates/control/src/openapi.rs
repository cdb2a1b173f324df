//! Finishing touches on the generated OpenAPI document: the document's own
//! route, and which operations need no credential.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{Content, OpenApi, Ref};

/// Routes anyone may call (no bearer token): public documents, health, and
/// the machine API (registration carries a pre-auth key, the rest a client
/// certificate).
const PUBLIC: &[&str] = &[
    "/api/v1/ca",
    "/api/v1/openapi.json",
    "/api/v1/oauth/token",
    "/healthz",
    "/readyz",
    "/metrics",
    "/machine/v1/register",
    "/machine/v1/map",
    "/machine/v1/endpoints",
    "/machine/v1/renew",
];

pub(crate) fn finish(doc: &mut OpenApi) {
    let op = OperationBuilder::new()
        .tag("ops")
        .description(Some("This document."))
        .response(
            "200",
            ResponseBuilder::new()
                .description("OpenAPI 3.1 document")
                .content("application/json", Content::new(Some(Ref::new("#")))),
        )
        .build();
    doc.paths.paths.insert(
        "/api/v1/openapi.json".into(),
        PathItem::new(HttpMethod::Get, op),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        if !PUBLIC.contains(&path.as_str()) {
            continue;
        }
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            op.security = Some(vec![SecurityRequirement::default()]);
        }
    }
}

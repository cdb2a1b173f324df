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
    "/machine/v1/register/interactive",
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
    let error = |desc: &str| {
        ResponseBuilder::new()
            .description(desc)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ApiError"))),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let public = PUBLIC.contains(&path.as_str());
        let has_param = path.contains('{');
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            let responses = &mut op.responses.responses;
            let mut add = |code: &str, desc: &str| {
                responses
                    .entry(code.into())
                    .or_insert_with(|| error(desc).into());
            };
            if public {
                op.security = Some(vec![SecurityRequirement::default()]);
            } else {
                add("401", "Missing, unknown, revoked or expired credential");
                add(
                    "403",
                    "The credential lacks the scope, or does not own the tags",
                );
            }
            if op.request_body.is_some() {
                add("400", "Invalid request");
                add("415", "Wrong content type");
            } else if op.parameters.as_ref().is_some_and(|p| !p.is_empty()) {
                add("400", "Invalid parameter");
            }
            if has_param {
                add("404", "No such object");
            }
            add(
                "429",
                "Too many refused requests from this source address; retry after Retry-After seconds",
            );
        }
    }
}

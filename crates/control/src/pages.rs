//! The few HTML pages control shows people (a device waiting for approval,
//! sign-in outcomes): one shape, every interpolated value escaped.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// `s` escaped for HTML text and attribute values.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A page with a title and a body (HTML the caller escaped).
pub(crate) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    (
        status,
        [
            ("cache-control", "no-store"),
            ("x-frame-options", "DENY"),
            ("content-security-policy", "default-src 'none'; form-action 'self' https: http://127.0.0.1:* http://localhost:*; frame-ancestors 'none'"),
            ("referrer-policy", "no-referrer"),
        ],
        Html(format!(
            "<!doctype html><meta charset=utf-8><title>Gatehouse: {t}</title><h1>{t}</h1>{body}",
            t = esc(title)
        )),
    )
        .into_response()
}

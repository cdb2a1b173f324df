//! The API's errors: one enum, one mapping to HTTP status codes, one JSON
//! form (`{"error": "…"}`). Internal failures keep their cause for the log
//! and answer only "internal error".

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gatehouse_proto::control::ApiError;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiErr {
    /// The request is malformed or asks for something invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// No credential, or one that is unknown, revoked or expired (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The credential lacks a scope or does not own a tag (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such object (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what exists (409).
    #[error("{0}")]
    Conflict(String),
    /// The body is not of the expected content type (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Control failed; the cause is logged, never sent (500).
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<&ApiErr> for StatusCode {
    fn from(e: &ApiErr) -> StatusCode {
        match e {
            ApiErr::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiErr::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiErr::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiErr::NotFound(_) => StatusCode::NOT_FOUND,
            ApiErr::Conflict(_) => StatusCode::CONFLICT,
            ApiErr::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiErr::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiErr {
    pub fn bad(msg: impl Into<String>) -> Self {
        ApiErr::BadRequest(msg.into())
    }
    pub fn unauthorized(msg: impl Into<String>) -> Self {
        ApiErr::Unauthorized(msg.into())
    }
    pub fn forbidden(msg: impl Into<String>) -> Self {
        ApiErr::Forbidden(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiErr::NotFound(msg.into())
    }
    pub fn conflict(msg: impl Into<String>) -> Self {
        ApiErr::Conflict(msg.into())
    }
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiErr::Internal(e.into())
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        let status = StatusCode::from(&self);
        if let ApiErr::Internal(cause) = &self {
            tracing::error!(error = %cause, source = ?std::error::Error::source(&**cause), "internal error");
        }
        (
            status,
            Json(ApiError {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}

impl From<crate::store::StoreError> for ApiErr {
    fn from(e: crate::store::StoreError) -> Self {
        ApiErr::internal(e)
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiErr>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_mapping_and_no_leaked_causes() {
        let e = ApiErr::internal(std::io::Error::other("disk on fire"));
        assert_eq!(StatusCode::from(&e), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.to_string(), "internal error");
        assert!(std::error::Error::source(&e).is_some_and(|s| s.to_string() == "disk on fire"));
        assert_eq!(
            StatusCode::from(&ApiErr::conflict("x")),
            StatusCode::CONFLICT
        );
        assert_eq!(ApiErr::bad("no").to_string(), "no");
    }
}

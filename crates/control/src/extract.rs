//! Request extractors whose rejections are API errors with a JSON body,
//! like every other error.

use crate::error::ApiErr;
use axum::Json;
use axum::extract::{FromRequestParts, Query};
use axum::http::{StatusCode, request::Parts};

/// 415 without the expected content type, 400 for anything else.
fn rejection(status: StatusCode, text: String) -> ApiErr {
    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        ApiErr::UnsupportedMediaType(text)
    } else {
        ApiErr::BadRequest(text)
    }
}

/// A JSON body whose rejections are API errors (400, or 415 without the
/// JSON content type) with a JSON body, like every other error.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiErr;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiErr> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(r) => Err(rejection(r.status(), r.body_text())),
        }
    }
}

/// A form body (see [`JsonBody`]).
#[derive(Debug)]
pub(crate) struct FormBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for FormBody<T> {
    type Rejection = ApiErr;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiErr> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(v)) => Ok(FormBody(v)),
            Err(r) => Err(rejection(r.status(), r.body_text())),
        }
    }
}

/// Query parameters whose rejections are API errors.
#[derive(Debug)]
pub(crate) struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiErr> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryParams(v))
            .map_err(|r| ApiErr::bad(r.body_text()))
    }
}

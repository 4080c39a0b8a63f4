//! Request extractors whose rejections are the gateway's JSON errors, not axum's text.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. No content type is required (clients forget it); the body must be JSON
/// of the expected shape and within `gateway.max_body_bytes` (else 413).
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::bad_request("the request body is empty: expected a JSON object"));
        }
        serde_json::from_slice(&body).map(JsonBody).map_err(|err| {
            let what = if err.is_data() { "invalid request" } else { "malformed JSON" };
            ApiError::bad_request(format!("{what}: {err}"))
        })
    }
}

/// An optional JSON body: none (only whitespace, or `null`) reads as `T::default()`; anything else
/// must be JSON of the expected shape and within `gateway.max_body_bytes` (else 413).
pub struct OptionalJsonBody<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        // JSON `null` is no body either.
        serde_json::from_slice::<Option<T>>(&body)
            .map(|body| OptionalJsonBody(body.unwrap_or_default()))
            .map_err(|err| {
                let what = if err.is_data() { "invalid request" } else { "malformed JSON" };
                ApiError::bad_request(format!("{what}: {err}"))
            })
    }
}

/// Query parameters; a missing or unparsable one is a 400 naming it.
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| QueryParams(params))
            .map_err(|rejection: QueryRejection| ApiError::bad_request(rejection.body_text()))
    }
}

//! Every error the gateway answers: a status and `{"error": "<what was wrong>"}`.
//!
//! 4xx for the caller's mistakes (passed through from the services' micro error codes),
//! 503 when no service answers or NATS is down, 504 when one answered too late, 502 when
//! a service failed in its own way.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mm_shared::nats::RequestError;

/// The body of every error answer (for the OpenAPI document; [`ApiError`] writes it).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong.
    pub error: String,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(serde_json::json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<RequestError> for ApiError {
    fn from(err: RequestError) -> Self {
        match &err {
            RequestError::Timeout { .. } => Self::new(StatusCode::GATEWAY_TIMEOUT, err.to_string()),
            RequestError::NoResponders { subject } => Self::unavailable(format!(
                "the {} service is not running (no responder on {subject})",
                service_of(subject)
            )),
            RequestError::Service { code, message, .. } => match StatusCode::from_u16(*code) {
                Ok(status) if status.is_client_error() => Self::new(status, message.clone()),
                Ok(StatusCode::SERVICE_UNAVAILABLE) => Self::unavailable(message.clone()),
                // The service ran out of the request's time budget before it could start
                // on it: a timeout, as if it had answered too late.
                Ok(StatusCode::GATEWAY_TIMEOUT) => Self::new(StatusCode::GATEWAY_TIMEOUT, message.clone()),
                _ => Self::new(StatusCode::BAD_GATEWAY, err.to_string()),
            },
            RequestError::Transport { .. } => Self::unavailable(err.to_string()),
            RequestError::Decode { .. } => Self::new(StatusCode::BAD_GATEWAY, err.to_string()),
            RequestError::Encode { .. } => Self::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        }
    }
}

/// `matchmaking.join` → `matchmaking`.
fn service_of(subject: &str) -> &str {
    subject.split('.').next().unwrap_or(subject)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn request_errors_map_to_statuses() {
        let subject = "matchmaking.join".to_owned();
        let cases = [
            (RequestError::Timeout { subject: subject.clone(), timeout: Duration::from_secs(2) }, 504),
            (RequestError::NoResponders { subject: subject.clone() }, 503),
            (RequestError::Service { subject: subject.clone(), code: 404, message: "no".into() }, 404),
            (RequestError::Service { subject: subject.clone(), code: 409, message: "no".into() }, 409),
            (RequestError::Service { subject: subject.clone(), code: 503, message: "no".into() }, 503),
            (RequestError::Service { subject: subject.clone(), code: 500, message: "no".into() }, 502),
            (RequestError::Service { subject: subject.clone(), code: 504, message: "late".into() }, 504),
            (RequestError::Service { subject: subject.clone(), code: 999, message: "no".into() }, 502),
            (RequestError::Transport { subject, reason: "closed".into() }, 503),
        ];
        for (err, status) in cases {
            assert_eq!(ApiError::from(err).status.as_u16(), status);
        }
        let err = ApiError::from(RequestError::NoResponders { subject: "store.offers".into() });
        assert!(err.message.contains("store service"), "{}", err.message);
    }
}

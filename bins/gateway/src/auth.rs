//! `Authorization: Bearer <token>`: the player behind a request, as `session.verify` says.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use mm_shared::protocol::{SessionInfo, TokenRequest, limits, subjects};

use crate::error::ApiError;
use crate::state::AppState;

/// The logged-in player making the request.
pub struct Player {
    pub id: String,
    pub token: String,
}

impl FromRequestParts<AppState> for Player {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("missing `Authorization: Bearer <token>` header (log in at POST /login)")
        })?;
        verify(state, token).await
    }
}

/// The player a token belongs to, as `session.verify` says; 401 if none.
pub async fn verify(state: &AppState, token: &str) -> Result<Player, ApiError> {
    // A token that cannot be one is refused here, without asking anyone.
    if !limits::is_token(token) {
        return Err(ApiError::unauthorized("invalid or expired token"));
    }
    let request = TokenRequest { token: token.to_owned() };
    let session: SessionInfo = state.call(subjects::SESSION_VERIFY, &request).await?;
    Ok(Player { id: session.player_id, token: request.token })
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any case); `None`
/// when the header is absent or not of that form.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

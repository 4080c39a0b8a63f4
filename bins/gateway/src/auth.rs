//! `Authorization: Bearer <token>`: the player behind a request, as the token itself says
//! (checked here: [`crate::tokens`]).

use crate::error::ApiError;
use crate::state::AppState;
use crate::tokens::Verified;
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

/// The logged-in player making the request.
pub struct Player {
    pub id: String,
    pub token: String,
    /// What the token said (its id and expiry: a logout revokes it here at once).
    pub verified: Verified,
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

/// The player a token belongs to; 401 if none, 503 while this gateway cannot know every
/// revocation (see [`crate::tokens`]).
pub async fn verify(state: &AppState, token: &str) -> Result<Player, ApiError> {
    let verified = state.tokens().check(token).await?;
    Ok(Player { id: verified.player.to_string(), token: token.to_owned(), verified })
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any case); `None`
/// when the header is absent or not of that form.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

//! The player API (`CONTRACT.md`): every route is one NATS request to a micro service.
//!
//! | route | service |
//! |---|---|
//! | `POST /login` | `session.login` |
//! | `POST /logout` | `session.logout` |
//! | `POST /matchmaking/join` (optional body `{"queue", "latencies", "partyId"}`) | `matchmaking.join` |
//! | `GET /matchmaking/queues` (no token) | `matchmaking.queues` |
//! | `POST /party`, `POST /party/join`, `GET /party`, `DELETE /party` | `party.create/join/get/leave` |
//! | `GET /matchmaking/status?ticketId&waitMs` | `matchmaking.status` (+ long-poll) |
//! | `DELETE /matchmaking/cancel?ticketId` | `matchmaking.cancel` |
//! | `GET /store/offers` | `store.offers` |
//! | `POST /store/purchase` | `store.purchase` |
//!
//! Player routes take `Authorization: Bearer <token>` (checked by `session.verify`)
//! before anything else, so an anonymous request learns nothing about ids. `POST /login`
//! is rate-limited per client address first (`rate_limit`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::{delete, get, post};
use axum::{Json, Router, middleware};
use mm_shared::protocol::{
    CancelReply, JoinBody, JoinReply, LoginReply, LoginRequest, Offer, PartyCreated, PartyJoinBody,
    PartyJoinRequest, PartyRequest, PartyView, PurchaseReply, PurchaseRequest, QueueInfo, TicketRequest,
    TicketView, TokenRequest, limits, subjects,
};
use serde::Deserialize;

use crate::auth::Player;
use crate::error::ApiError;
use crate::extract::{JsonBody, OptionalJsonBody, QueryParams};
use crate::rate_limit::{LoginLimiter, limit_login};
use crate::state::AppState;

/// Header a client may send to make a purchase safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The routes. Add new ones here: the layers in [`router`] then cover them too.
fn routes(login_limiter: Arc<LoginLimiter>) -> Router<AppState> {
    Router::new()
        .route("/login", post(login).route_layer(middleware::from_fn_with_state(login_limiter, limit_login)))
        .route("/logout", post(logout))
        .route("/matchmaking/join", post(join))
        .route("/matchmaking/queues", get(queues))
        .route("/party", post(create_party).get(get_party).delete(leave_party))
        .route("/party/join", post(join_party))
        .route("/matchmaking/status", get(status))
        .route("/matchmaking/cancel", delete(cancel))
        .route("/store/offers", get(offers))
        .route("/store/purchase", post(purchase))
        .route("/game/{game_id}/connect", get(crate::game_proxy::connect))
}

/// The whole player API with its body limit, login rate, JSON fallbacks and metrics.
pub fn router(state: AppState, max_body_bytes: usize, login_limiter: Arc<LoginLimiter>) -> Router {
    routes(login_limiter)
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), crate::metrics::track))
        .with_state(state)
}

async fn login(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Json<LoginReply>, ApiError> {
    limits::check_id("id", &request.id).map_err(ApiError::bad_request)?;
    limits::check_password(&request.password).map_err(ApiError::bad_request)?;
    state.call(subjects::SESSION_LOGIN, &request).await.map(Json)
}

async fn logout(State(state): State<AppState>, player: Player) -> Result<StatusCode, ApiError> {
    let () = state.call(subjects::SESSION_LOGOUT, &TokenRequest { token: player.token }).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /matchmaking/join`: no body (or `{}`) joins `default` alone, as in the seed.
async fn join(
    State(state): State<AppState>,
    player: Player,
    OptionalJsonBody(body): OptionalJsonBody<JoinBody>,
) -> Result<Json<JoinReply>, ApiError> {
    body.check().map_err(ApiError::bad_request)?;
    state.call(subjects::MATCHMAKING_JOIN, &body.into_request(player.id)).await.map(Json)
}

async fn queues(State(state): State<AppState>) -> Result<Json<Vec<QueueInfo>>, ApiError> {
    state.call(subjects::MATCHMAKING_QUEUES, &()).await.map(Json)
}

async fn create_party(State(state): State<AppState>, player: Player) -> Result<Json<PartyCreated>, ApiError> {
    state.call(subjects::PARTY_CREATE, &PartyRequest { player_id: player.id }).await.map(Json)
}

async fn join_party(
    State(state): State<AppState>,
    player: Player,
    JsonBody(body): JsonBody<PartyJoinBody>,
) -> Result<Json<PartyView>, ApiError> {
    limits::check_token("partyId", &body.party_id).map_err(ApiError::bad_request)?;
    let request = PartyJoinRequest { player_id: player.id, party_id: body.party_id };
    state.call(subjects::PARTY_JOIN, &request).await.map(Json)
}

async fn get_party(State(state): State<AppState>, player: Player) -> Result<Json<PartyView>, ApiError> {
    state.call(subjects::PARTY_GET, &PartyRequest { player_id: player.id }).await.map(Json)
}

async fn leave_party(State(state): State<AppState>, player: Player) -> Result<StatusCode, ApiError> {
    let () = state.call(subjects::PARTY_LEAVE, &PartyRequest { player_id: player.id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusQuery {
    ticket_id: String,
    /// Milliseconds to wait for the ticket to stop searching (0: answer now).
    #[serde(default)]
    wait_ms: u64,
}

async fn status(
    State(state): State<AppState>,
    player: Player,
    QueryParams(query): QueryParams<StatusQuery>,
) -> Result<Json<TicketView>, ApiError> {
    limits::check_ticket_id(&query.ticket_id).map_err(ApiError::bad_request)?;
    let wait = Duration::from_millis(query.wait_ms).min(state.long_poll_max());
    let request = TicketRequest { player_id: player.id, ticket_id: query.ticket_id };
    crate::long_poll::status(&state, request, wait).await.map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CancelQuery {
    ticket_id: String,
}

async fn cancel(
    State(state): State<AppState>,
    player: Player,
    QueryParams(query): QueryParams<CancelQuery>,
) -> Result<Json<CancelReply>, ApiError> {
    limits::check_ticket_id(&query.ticket_id).map_err(ApiError::bad_request)?;
    let request = TicketRequest { player_id: player.id, ticket_id: query.ticket_id };
    state.call(subjects::MATCHMAKING_CANCEL, &request).await.map(Json)
}

async fn offers(State(state): State<AppState>) -> Result<Json<Vec<Offer>>, ApiError> {
    state.call(subjects::STORE_OFFERS, &()).await.map(Json)
}

/// `POST /store/purchase` body: the seed's `offer_id`, and optionally the idempotency key
/// (also accepted as the `Idempotency-Key` header).
#[derive(Debug, Deserialize)]
struct PurchaseBody {
    offer_id: String,
    #[serde(rename = "idempotencyKey", default)]
    idempotency_key: Option<String>,
}

async fn purchase(
    State(state): State<AppState>,
    player: Player,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PurchaseBody>,
) -> Result<Json<PurchaseReply>, ApiError> {
    limits::check_id("offer_id", &body.offer_id).map_err(ApiError::bad_request)?;
    let header = match headers.get(IDEMPOTENCY_KEY) {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("the Idempotency-Key header must be plain text"))?
                .to_owned(),
        ),
        None => None,
    };
    let idempotency_key = match (header, body.idempotency_key) {
        (Some(header), Some(field)) if header != field => {
            return Err(ApiError::bad_request("the Idempotency-Key header and idempotencyKey field differ"));
        }
        (header, field) => header.or(field),
    };
    if let Some(key) = &idempotency_key {
        limits::check_idempotency_key(key).map_err(ApiError::bad_request)?;
    }
    let request = PurchaseRequest { player_id: player.id, offer_id: body.offer_id, idempotency_key };
    state.call(subjects::STORE_PURCHASE, &request).await.map(Json)
}

async fn unknown_route(uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no route {}", uri.path()))
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {}", uri.path()))
}

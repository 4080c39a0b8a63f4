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
//! Player routes take `Authorization: Bearer <token>` (a signed token, checked here:
//! [`crate::tokens`]) before anything else, so an anonymous request learns nothing about ids. `POST /login`
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
use crate::error::{ApiError, ErrorBody};
use crate::extract::{JsonBody, OptionalJsonBody, QueryParams};
use crate::rate_limit::{LoginLimiter, limit_login};
use crate::state::AppState;

/// Header a client may send to make a purchase safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Every route [`routes`] serves: method, path template (as metrics label it) and the
/// status of its success. Metrics create their series from it at start-up; a unit test
/// checks it against the OpenAPI document, which the `openapi` test checks against the router.
pub const ROUTES: [(&str, &str, u16); 14] = [
    ("POST", "/login", 200),
    ("POST", "/logout", 204),
    ("POST", "/matchmaking/join", 200),
    ("GET", "/matchmaking/queues", 200),
    ("POST", "/party", 200),
    ("GET", "/party", 200),
    ("DELETE", "/party", 204),
    ("POST", "/party/join", 200),
    ("GET", "/matchmaking/status", 200),
    ("DELETE", "/matchmaking/cancel", 200),
    ("GET", "/store/offers", 200),
    ("POST", "/store/purchase", 200),
    ("GET", "/game/{game_id}/connect", 101),
    ("GET", "/openapi.json", 200),
];

/// The NATS subjects the routes call (their client series exist from start-up).
pub const SUBJECTS: [&str; 12] = [
    subjects::SESSION_LOGIN,
    subjects::SESSION_LOGOUT,
    subjects::MATCHMAKING_JOIN,
    subjects::MATCHMAKING_QUEUES,
    subjects::MATCHMAKING_STATUS,
    subjects::MATCHMAKING_CANCEL,
    subjects::PARTY_CREATE,
    subjects::PARTY_JOIN,
    subjects::PARTY_GET,
    subjects::PARTY_LEAVE,
    subjects::STORE_OFFERS,
    subjects::STORE_PURCHASE,
];

/// The routes. Add new ones here (and to [`ROUTES`]): the layers in [`router`] then cover them too.
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
        .route("/openapi.json", get(openapi_json))
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

/// `GET /openapi.json`: the OpenAPI 3.1 document of this API, made from the handlers'
/// annotations and the bodies' types ([`ApiDoc`]).
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document of the player API", content_type = "application/json", body = Object)))]
async fn openapi_json() -> ([(axum::http::HeaderName, &'static str); 1], &'static str) {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let document =
        DOCUMENT.get_or_init(|| crate::openapi::document().to_json().unwrap_or_else(|_| "{}".to_owned()));
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document.as_str())
}

#[utoipa::path(post, path = "/login", tag = "session", request_body = LoginRequest,
    description = "Logs a player in (registering the id on its first login) and returns a session token. Rate-limited per client address.",
    responses(
        (status = 200, description = "Logged in", body = LoginReply),
        (status = 400, description = "Malformed body or invalid id/password", body = ErrorBody),
        (status = 401, description = "Wrong password", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Body is JSON of the wrong shape", body = ErrorBody),
        (status = 429, description = "Too many logins from this address (see Retry-After)", body = ErrorBody),
        (status = 503, description = "The session service is unavailable", body = ErrorBody),
        (status = 504, description = "The session service answered too late", body = ErrorBody),
    ))]
async fn login(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Json<LoginReply>, ApiError> {
    limits::check_id("id", &request.id).map_err(ApiError::bad_request)?;
    limits::check_password(&request.password).map_err(ApiError::bad_request)?;
    state.call(subjects::SESSION_LOGIN, &request).await.map(Json)
}

#[utoipa::path(post, path = "/logout", tag = "session", security(("bearer" = [])),
    description = "Ends the session: the token stops working at once.",
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 503, description = "The session service is unavailable", body = ErrorBody),
        (status = 504, description = "The session service answered too late", body = ErrorBody),
    ))]
async fn logout(State(state): State<AppState>, player: Player) -> Result<StatusCode, ApiError> {
    let () = state.call(subjects::SESSION_LOGOUT, &TokenRequest { token: player.token }).await?;
    // Refused here from now on; other gateways learn it from KV `revoked_tokens`.
    state.tokens().revoked_here(&player.verified);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /matchmaking/join`: no body (or `{}`) joins `default` alone, as in the seed.
#[utoipa::path(post, path = "/matchmaking/join", tag = "matchmaking", security(("bearer" = [])),
    request_body(content = Option<JoinBody>, description = "Optional: no body (or `{}`) joins the `default` queue alone"),
    description = "Queues the player (or, with `partyId`, the whole party the player leads) for a match.",
    responses(
        (status = 200, description = "Queued", body = JoinReply),
        (status = 400, description = "Malformed body, unknown queue or invalid latencies", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not the party's leader", body = ErrorBody),
        (status = 404, description = "Unknown party", body = ErrorBody),
        (status = 409, description = "Already queued", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Body is JSON of the wrong shape", body = ErrorBody),
        (status = 503, description = "The matchmaking service is unavailable", body = ErrorBody),
        (status = 504, description = "The matchmaking service answered too late", body = ErrorBody),
    ))]
async fn join(
    State(state): State<AppState>,
    player: Player,
    OptionalJsonBody(body): OptionalJsonBody<JoinBody>,
) -> Result<Json<JoinReply>, ApiError> {
    body.check().map_err(ApiError::bad_request)?;
    state.call(subjects::MATCHMAKING_JOIN, &body.into_request(player.id)).await.map(Json)
}

#[utoipa::path(get, path = "/matchmaking/queues", tag = "matchmaking",
    description = "The configured queues (no token needed).",
    responses(
        (status = 200, description = "Every queue", body = Vec<QueueInfo>),
        (status = 503, description = "The matchmaking service is unavailable", body = ErrorBody),
        (status = 504, description = "The matchmaking service answered too late", body = ErrorBody),
    ))]
async fn queues(State(state): State<AppState>) -> Result<Json<Vec<QueueInfo>>, ApiError> {
    state.call(subjects::MATCHMAKING_QUEUES, &()).await.map(Json)
}

#[utoipa::path(post, path = "/party", tag = "party", security(("bearer" = [])),
    description = "Creates a party led by the caller.",
    responses(
        (status = 200, description = "Created", body = PartyCreated),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 409, description = "Already in a party", body = ErrorBody),
        (status = 503, description = "The party service is unavailable", body = ErrorBody),
        (status = 504, description = "The party service answered too late", body = ErrorBody),
    ))]
async fn create_party(State(state): State<AppState>, player: Player) -> Result<Json<PartyCreated>, ApiError> {
    state.call(subjects::PARTY_CREATE, &PartyRequest { player_id: player.id }).await.map(Json)
}

#[utoipa::path(post, path = "/party/join", tag = "party", security(("bearer" = [])), request_body = PartyJoinBody,
    description = "Joins a party.",
    responses(
        (status = 200, description = "Joined", body = PartyView),
        (status = 400, description = "Malformed body or party id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "Unknown party", body = ErrorBody),
        (status = 409, description = "Already in a party, or the party is full or queued", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Body is JSON of the wrong shape", body = ErrorBody),
        (status = 503, description = "The party service is unavailable", body = ErrorBody),
        (status = 504, description = "The party service answered too late", body = ErrorBody),
    ))]
async fn join_party(
    State(state): State<AppState>,
    player: Player,
    JsonBody(body): JsonBody<PartyJoinBody>,
) -> Result<Json<PartyView>, ApiError> {
    limits::check_token("partyId", &body.party_id).map_err(ApiError::bad_request)?;
    let request = PartyJoinRequest { player_id: player.id, party_id: body.party_id };
    state.call(subjects::PARTY_JOIN, &request).await.map(Json)
}

#[utoipa::path(get, path = "/party", tag = "party", security(("bearer" = [])),
    description = "The caller's party.",
    responses(
        (status = 200, description = "The party", body = PartyView),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "Not in a party", body = ErrorBody),
        (status = 503, description = "The party service is unavailable", body = ErrorBody),
        (status = 504, description = "The party service answered too late", body = ErrorBody),
    ))]
async fn get_party(State(state): State<AppState>, player: Player) -> Result<Json<PartyView>, ApiError> {
    state.call(subjects::PARTY_GET, &PartyRequest { player_id: player.id }).await.map(Json)
}

#[utoipa::path(delete, path = "/party", tag = "party", security(("bearer" = [])),
    description = "Leaves the caller's party.",
    responses(
        (status = 204, description = "Left"),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "Not in a party", body = ErrorBody),
        (status = 409, description = "The party is queued", body = ErrorBody),
        (status = 503, description = "The party service is unavailable", body = ErrorBody),
        (status = 504, description = "The party service answered too late", body = ErrorBody),
    ))]
async fn leave_party(State(state): State<AppState>, player: Player) -> Result<StatusCode, ApiError> {
    let () = state.call(subjects::PARTY_LEAVE, &PartyRequest { player_id: player.id }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct StatusQuery {
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    ticket_id: String,
    /// Milliseconds to wait for the ticket to stop searching (0: answer now).
    #[serde(default)]
    wait_ms: u64,
}

#[utoipa::path(get, path = "/matchmaking/status", tag = "matchmaking", security(("bearer" = [])), params(StatusQuery),
    description = "The player's ticket; with `waitMs`, waits (long-poll) until it stops searching or the time is up.",
    responses(
        (status = 200, description = "The ticket", body = TicketView),
        (status = 400, description = "Missing or malformed ticketId or waitMs", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "Unknown ticket, or another player's", body = ErrorBody),
        (status = 503, description = "The matchmaking service is unavailable", body = ErrorBody),
        (status = 504, description = "The matchmaking service answered too late", body = ErrorBody),
    ))]
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
struct CancelQuery {
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    ticket_id: String,
}

#[utoipa::path(delete, path = "/matchmaking/cancel", tag = "matchmaking", security(("bearer" = [])), params(CancelQuery),
    description = "Cancels a ticket that is still searching.",
    responses(
        (status = 200, description = "Cancelled", body = CancelReply),
        (status = 400, description = "Missing or malformed ticketId", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "Unknown ticket, or another player's", body = ErrorBody),
        (status = 409, description = "The ticket is no longer searching", body = ErrorBody),
        (status = 503, description = "The matchmaking service is unavailable", body = ErrorBody),
        (status = 504, description = "The matchmaking service answered too late", body = ErrorBody),
    ))]
async fn cancel(
    State(state): State<AppState>,
    player: Player,
    QueryParams(query): QueryParams<CancelQuery>,
) -> Result<Json<CancelReply>, ApiError> {
    limits::check_ticket_id(&query.ticket_id).map_err(ApiError::bad_request)?;
    let request = TicketRequest { player_id: player.id, ticket_id: query.ticket_id };
    state.call(subjects::MATCHMAKING_CANCEL, &request).await.map(Json)
}

#[utoipa::path(get, path = "/store/offers", tag = "store",
    description = "The store's catalogue (no token needed).",
    responses(
        (status = 200, description = "Every offer", body = Vec<Offer>),
        (status = 503, description = "The store service is unavailable", body = ErrorBody),
        (status = 504, description = "The store service answered too late", body = ErrorBody),
    ))]
async fn offers(State(state): State<AppState>) -> Result<Json<Vec<Offer>>, ApiError> {
    state.call(subjects::STORE_OFFERS, &()).await.map(Json)
}

/// `POST /store/purchase` body: the seed's `offer_id`, and optionally the idempotency key
/// (also accepted as the `Idempotency-Key` header).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct PurchaseBody {
    #[schema(pattern = r"^[A-Za-z0-9_.@-]{1,64}$")]
    offer_id: String,
    /// Also accepted as the `Idempotency-Key` header (both: they must be equal).
    #[serde(rename = "idempotencyKey", default)]
    #[schema(pattern = r"^[A-Za-z0-9_.:-]{1,128}$")]
    idempotency_key: Option<String>,
}

#[utoipa::path(post, path = "/store/purchase", tag = "store", security(("bearer" = [])), request_body = PurchaseBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the purchase safe to retry: the same key buys once")),
    description = "Buys an offer with the player's balance.",
    responses(
        (status = 200, description = "Bought (or the earlier purchase with the same key)", body = PurchaseReply),
        (status = 400, description = "Malformed body, offer id or idempotency key", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 404, description = "Unknown offer", body = ErrorBody),
        (status = 409, description = "Not enough balance, or the key was used for another purchase", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Body is JSON of the wrong shape", body = ErrorBody),
        (status = 503, description = "The store service is unavailable", body = ErrorBody),
        (status = 504, description = "The store service answered too late", body = ErrorBody),
    ))]
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

//! HTTP metrics: requests by route *template* (`/matchmaking/status`, never a raw path
//! with ids in it), method and status; latency; requests in flight.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use mm_shared::telemetry::GaugeGuard;

use crate::state::AppState;

pub fn describe() {
    describe_counter!(
        "mm_gateway_http_requests_total",
        "HTTP requests answered, by route template, method and status code."
    );
    describe_histogram!(
        "mm_gateway_http_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an HTTP request (long-polls included), by route template and method."
    );
    describe_gauge!("mm_gateway_http_requests_in_flight", "HTTP requests being answered right now.");
    describe_gauge!("mm_gateway_long_polls_waiting", "Status long-polls waiting for their ticket to change.");
    describe_histogram!(
        "mm_gateway_long_poll_wait_seconds",
        Unit::Seconds,
        "How long status long-polls waited, by outcome: changed, timeout, shutdown, closed."
    );
    describe_counter!(
        "mm_gateway_game_connects_total",
        "Game WebSocket connection attempts through the proxy, by result (ok, forbidden, upstream_error, ...)."
    );
    describe_histogram!(
        "mm_gateway_game_connect_duration_seconds",
        Unit::Seconds,
        "Time to admit a game WebSocket: token check, KV lookup and dialling the game server."
    );
    describe_gauge!("mm_gateway_game_connections", "Game WebSockets being proxied right now.");
    describe_counter!(
        "mm_gateway_game_frames_total",
        "WebSocket frames the game proxy passed on, by direction (to_server, to_client)."
    );
    describe_counter!(
        "mm_gateway_refusals_total",
        "Requests and sockets the gateway's own limits refused or closed, by reason: login_rate (429 on \
         POST /login), game_sockets_player (429, the player's game sockets are all open), game_sockets_total \
         (503, the gateway's are), game_message_too_big (close 1009), game_idle (close 1001 after \
         gateway.game_idle_timeout)."
    );
    describe_counter!(
        "mm_gateway_token_checks_total",
        "Player tokens this gateway checked itself, by result: ok, invalid (malformed, tampered, unknown \
         key, expired), revoked, catching_up (503: its view of revocations is not complete after a NATS \
         reconnect)."
    );
    describe_gauge!(
        "mm_gateway_login_rate_clients",
        "Client addresses the login rate limit is tracking (sampled after each clean-up)."
    );
    describe_counter!(
        "mm_gateway_long_poll_rechecks_total",
        "Status re-reads a long-poll made when its ticket's event arrived, by result: final, searching, error."
    );
    // Known label values exist at 0 from the start, so dashboards and alerts see them
    // before the first refusal.
    for reason in Refusal::ALL {
        metrics::counter!("mm_gateway_refusals_total", "reason" => reason.label()).increment(0);
    }
    for result in crate::tokens::CHECK_RESULTS {
        metrics::counter!("mm_gateway_token_checks_total", "result" => result).increment(0);
    }
    for result in ["final", "searching", "error"] {
        metrics::counter!("mm_gateway_long_poll_rechecks_total", "result" => result).increment(0);
    }
    metrics::gauge!("mm_gateway_login_rate_clients").set(0.0);
    for (method, route, status) in crate::api::ROUTES {
        metrics::counter!(
            "mm_gateway_http_requests_total",
            "route" => route,
            "method" => method,
            "status" => status.to_string()
        )
        .increment(0);
        let _ = metrics::histogram!("mm_gateway_http_request_duration_seconds", "route" => route, "method" => method);
    }
    metrics::gauge!("mm_gateway_http_requests_in_flight").set(0.0);
    metrics::gauge!("mm_gateway_long_polls_waiting").set(0.0);
    for outcome in crate::long_poll::OUTCOMES {
        let _ = metrics::histogram!("mm_gateway_long_poll_wait_seconds", "outcome" => outcome);
    }
    metrics::counter!("mm_gateway_game_connects_total", "result" => "ok").increment(0);
    let _ = metrics::histogram!("mm_gateway_game_connect_duration_seconds");
    metrics::gauge!("mm_gateway_game_connections").set(0.0);
    for direction in ["to_server", "to_client"] {
        metrics::counter!("mm_gateway_game_frames_total", "direction" => direction).increment(0);
    }
    mm_shared::nats::register_client_metrics(&crate::api::SUBJECTS);
}

/// Why the gateway's own limits turned something away (`mm_gateway_refusals_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `POST /login` over `gateway.login_rate` for the client's address.
    LoginRate,
    /// The player already has `gateway.game_sockets_per_player` game sockets open.
    GameSocketsPlayer,
    /// The gateway already proxies `gateway.game_sockets_max` game sockets.
    GameSocketsTotal,
    /// A game WebSocket message over the game server's limit (either direction).
    GameMessageTooBig,
    /// A game WebSocket with no frame either way for `gateway.game_idle_timeout`.
    GameIdle,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::LoginRate,
        Refusal::GameSocketsPlayer,
        Refusal::GameSocketsTotal,
        Refusal::GameMessageTooBig,
        Refusal::GameIdle,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Refusal::LoginRate => "login_rate",
            Refusal::GameSocketsPlayer => "game_sockets_player",
            Refusal::GameSocketsTotal => "game_sockets_total",
            Refusal::GameMessageTooBig => "game_message_too_big",
            Refusal::GameIdle => "game_idle",
        }
    }
}

/// Counts one refusal.
pub fn refused(reason: Refusal) {
    metrics::counter!("mm_gateway_refusals_total", "reason" => reason.label()).increment(1);
}

/// Middleware: records every request under its route template.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let _in_flight =
        (state.request_started(), GaugeGuard::new(metrics::gauge!("mm_gateway_http_requests_in_flight")));
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!("mm_gateway_http_request_duration_seconds", "route" => route.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "mm_gateway_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// Standard methods by name; anything else (extension methods) as `other`, so a client
/// cannot create label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

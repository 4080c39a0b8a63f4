//! The scenarios a simulated player can run, and the ways one can fail.
//!
//! Both are closed sets known at compile time, so per-scenario and per-kind numbers live
//! in fixed arrays indexed by them (no maps, no locks on the hot path) and metric labels
//! stay bounded.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One thing a player does, start to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// `POST /login`: every player does it first; as a scenario it refreshes the token.
    Login,
    /// Join the queue, long-poll the ticket until matched (or give up and cancel).
    Matchmaking,
    /// Play the matched game: WebSocket through the gateway, echoes checked, until the
    /// server ends the game.
    InGame,
    /// `GET /store/offers`.
    FetchStore,
    /// `POST /store/purchase` with an idempotency key.
    StorePurchase,
    /// The player leaves; the pool replaces them.
    Logout,
}

/// How many scenarios there are (the length of every per-scenario array).
pub const SCENARIOS: usize = 6;

impl Scenario {
    /// Every scenario, in index order.
    pub const ALL: [Scenario; SCENARIOS] = [
        Scenario::Login,
        Scenario::Matchmaking,
        Scenario::InGame,
        Scenario::FetchStore,
        Scenario::StorePurchase,
        Scenario::Logout,
    ];

    /// Its position in per-scenario arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The name used in config keys, metric labels, stats and the report.
    pub const fn name(self) -> &'static str {
        match self {
            Scenario::Login => "login",
            Scenario::Matchmaking => "matchmaking",
            Scenario::InGame => "in_game",
            Scenario::FetchStore => "fetch_store",
            Scenario::StorePurchase => "store_purchase",
            Scenario::Logout => "logout",
        }
    }

    /// The scenario called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Self::ALL.into_iter().find(|scenario| scenario.name() == name)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a scenario failed. Each is a metric label and a key in the report's `errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The gateway could not be reached (refused, reset, DNS).
    Connect,
    /// No answer within the configured timeout.
    Timeout,
    /// `401`: the token was refused.
    Unauthorized,
    /// `404` where the resource had to exist.
    NotFound,
    /// `409` where it is not an expected answer.
    Conflict,
    /// Another 4xx.
    Http4xx,
    /// A 5xx.
    Http5xx,
    /// A status the scenario does not expect (1xx, 3xx).
    HttpOther,
    /// The body was not the JSON the contract promises.
    Decode,
    /// The ticket ended `failed`, `expired` or `cancelled` by someone else.
    TicketEnded,
    /// Still `searching` when the matchmaking timeout ran out (the ticket is cancelled).
    MatchTimeout,
    /// `in_game` without a matched game in the session.
    NoMatch,
    /// The WebSocket handshake failed.
    WsConnect,
    /// The game server echoed something other than what was sent.
    EchoMismatch,
    /// No echo within the echo timeout.
    EchoTimeout,
    /// The WebSocket ended without a close frame.
    WsDropped,
    /// The game outlasted `in_game.max_duration`.
    GameTooLong,
    /// The store had no offers to buy.
    NoOffers,
    /// `429`: the gateway's rate limit. Counted for every 429 answer, also those a
    /// scenario waited out (`Retry-After`) and retried successfully; a failure only when
    /// the retries ran out.
    Throttled,
}

/// How many error kinds there are.
pub const ERROR_KINDS: usize = 19;

impl ErrorKind {
    /// Every kind, in index order.
    pub const ALL: [ErrorKind; ERROR_KINDS] = [
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Unauthorized,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::Http4xx,
        ErrorKind::Http5xx,
        ErrorKind::HttpOther,
        ErrorKind::Decode,
        ErrorKind::TicketEnded,
        ErrorKind::MatchTimeout,
        ErrorKind::NoMatch,
        ErrorKind::WsConnect,
        ErrorKind::EchoMismatch,
        ErrorKind::EchoTimeout,
        ErrorKind::WsDropped,
        ErrorKind::GameTooLong,
        ErrorKind::NoOffers,
        ErrorKind::Throttled,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    /// The label used in metrics, stats and the report.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unauthorized => "http_401",
            ErrorKind::NotFound => "http_404",
            ErrorKind::Conflict => "http_409",
            ErrorKind::Http4xx => "http_4xx",
            ErrorKind::Http5xx => "http_5xx",
            ErrorKind::HttpOther => "http_other",
            ErrorKind::Decode => "decode",
            ErrorKind::TicketEnded => "ticket_ended",
            ErrorKind::MatchTimeout => "match_timeout",
            ErrorKind::NoMatch => "no_match",
            ErrorKind::WsConnect => "ws_connect",
            ErrorKind::EchoMismatch => "echo_mismatch",
            ErrorKind::EchoTimeout => "echo_timeout",
            ErrorKind::WsDropped => "ws_dropped",
            ErrorKind::GameTooLong => "game_too_long",
            ErrorKind::NoOffers => "no_offers",
            ErrorKind::Throttled => "http_429",
        }
    }

    /// The kind for an unexpected HTTP status.
    pub fn from_status(status: u16) -> ErrorKind {
        match status {
            401 => ErrorKind::Unauthorized,
            404 => ErrorKind::NotFound,
            409 => ErrorKind::Conflict,
            429 => ErrorKind::Throttled,
            400..=499 => ErrorKind::Http4xx,
            500..=599 => ErrorKind::Http5xx,
            _ => ErrorKind::HttpOther,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failure with what happened, for the (rate-limited) log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {detail}")]
pub struct Failure {
    pub kind: ErrorKind,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }
}

/// How a scenario ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It did what it set out to do.
    Succeeded,
    /// The backend said no, correctly (a purchase without enough balance): not an error.
    Rejected,
    /// Something went wrong.
    Failed(Failure),
    /// The run ended while it was still going.
    Aborted,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_and_names_agree_with_the_tables() {
        for (position, scenario) in Scenario::ALL.into_iter().enumerate() {
            assert_eq!(scenario.index(), position);
            assert_eq!(Scenario::from_name(scenario.name()), Some(scenario));
            let json = serde_json::to_value(scenario).expect("json");
            assert_eq!(json, scenario.name(), "serde and name() agree");
        }
        for (position, kind) in ErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), position);
        }
        let names = Scenario::ALL.map(Scenario::name);
        assert_eq!(
            names,
            mm_shared::protocol::HARNESS_SCENARIOS,
            "the protocol lists them in the same order"
        );
        assert_eq!(Scenario::from_name("dance"), None);
        assert_eq!(ErrorKind::from_status(503), ErrorKind::Http5xx);
        assert_eq!(ErrorKind::from_status(422), ErrorKind::Http4xx);
        assert_eq!(ErrorKind::from_status(429), ErrorKind::Throttled);
    }
}

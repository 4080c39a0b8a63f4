//! The wire contract between the services: names and message shapes.
//!
//! Every NATS subject, KV bucket and Redis key the project uses is a constant (or a
//! function, for per-id names) in this module, and every message is a serde type here.
//! JSON field names follow `CONTRACT.md` and the seed project: camelCase, except
//! `offer_id` which the seed's store API spelled in snake case.
//!
//! Timestamps are Unix epoch milliseconds (`u64`).

use serde::{Deserialize, Serialize};

/// Default addresses in local mode (`CONTRACT.md`); every one can be changed by config.
pub mod addresses {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    const fn local(port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }

    /// The gateway: player API, `/metrics`, `/healthz`.
    pub const GATEWAY: SocketAddr = local(8080);
    /// The matchmaker's `/metrics` and `/healthz`.
    pub const MATCHMAKER_ADMIN: SocketAddr = local(9101);
    /// The orchestrator's `/metrics` and `/healthz`.
    pub const ORCHESTRATOR_ADMIN: SocketAddr = local(9102);
    /// The harness's `/metrics` and `/healthz` (the seed's port).
    pub const HARNESS_ADMIN: SocketAddr = local(9464);
    /// A game server's own port when none is given (the orchestrator always gives one).
    pub const GAME_SERVER: SocketAddr = local(7777);
    pub const NATS_PORT: u16 = 4222;
    /// nats-server's HTTP monitoring port (`/varz`, `/jsz`, `/healthz`).
    pub const NATS_MONITOR_PORT: u16 = 8222;
    pub const REDIS_PORT: u16 = 6379;
}

/// NATS subjects and micro-service names.
pub mod subjects {
    /// Micro service that owns tickets and the queue.
    pub const MATCHMAKING_SERVICE: &str = "matchmaking";
    pub const MATCHMAKING_JOIN: &str = "matchmaking.join";
    pub const MATCHMAKING_STATUS: &str = "matchmaking.status";
    pub const MATCHMAKING_CANCEL: &str = "matchmaking.cancel";
    /// The configured queues ([`super::QueueInfo`] list); no player needed.
    pub const MATCHMAKING_QUEUES: &str = "matchmaking.queues";

    /// Micro service for parties (hosted by the matchmaker, beside `matchmaking`).
    pub const PARTY_SERVICE: &str = "party";
    pub const PARTY_CREATE: &str = "party.create";
    pub const PARTY_JOIN: &str = "party.join";
    pub const PARTY_GET: &str = "party.get";
    pub const PARTY_LEAVE: &str = "party.leave";

    /// Micro service for the store's catalogue and purchases.
    pub const STORE_SERVICE: &str = "store";
    pub const STORE_OFFERS: &str = "store.offers";
    pub const STORE_PURCHASE: &str = "store.purchase";

    /// Micro service for accounts and session tokens.
    pub const SESSION_SERVICE: &str = "session";
    pub const SESSION_LOGIN: &str = "session.login";
    pub const SESSION_VERIFY: &str = "session.verify";
    pub const SESSION_LOGOUT: &str = "session.logout";
    /// Operator only (NATS permissions): a player's rating ([`super::RatingRequest`]).
    pub const SESSION_RATING_GET: &str = "session.rating.get";
    /// Operator only: sets a player's rating ([`super::RatingSet`]).
    pub const SESSION_RATING_SET: &str = "session.rating.set";

    /// Micro service that places game servers on nodes.
    pub const ORCHESTRATOR_SERVICE: &str = "orchestrator";
    pub const ORCHESTRATOR_ALLOCATE: &str = "orchestrator.allocate";
    /// Ends the server of a match that was not committed ([`super::ReleaseRequest`]);
    /// idempotent.
    pub const ORCHESTRATOR_RELEASE: &str = "orchestrator.release";

    /// A node's own placement endpoint: the allocator asks the chosen node here.
    pub fn orchestrator_node_place(node: &str) -> String {
        format!("orchestrator.node.{node}.place")
    }

    /// A node's own release endpoint: whichever node receives `orchestrator.release`
    /// asks the node that runs the match's server here ([`super::ReleaseRequest`]).
    pub fn orchestrator_node_release(node: &str) -> String {
        format!("orchestrator.node.{node}.release")
    }

    /// Published once per match, after its tickets are `matched`.
    pub const EVENTS_MATCH_CREATED: &str = "events.match.created";

    /// A game's result ([`super::GameEnded`]): published by the orchestrator node that
    /// ran the game server (which reported it in its last output line); the matchmaker
    /// updates ratings from it, once per game.
    pub const EVENTS_GAME_ENDED: &str = "events.game.ended";

    /// Every status change of one ticket (what the gateway's long-poll waits on).
    pub fn ticket_events(ticket_id: &str) -> String {
        format!("events.ticket.{ticket_id}")
    }

    /// Every status change of any ticket (for `nats sub`).
    pub const TICKET_EVENTS_ALL: &str = "events.ticket.*";

    /// Live control of every harness instance.
    pub const HARNESS_CONTROL: &str = "harness.control";

    /// One harness instance's stats, once a second.
    pub fn harness_stats(instance: &str) -> String {
        format!("harness.stats.{instance}")
    }

    /// Every harness instance's stats (for `nats sub` and `mmctl fleet`).
    pub const HARNESS_STATS_ALL: &str = "harness.stats.*";
}

/// JetStream KV buckets.
pub mod buckets {
    /// One key per live game server (key = game id), value [`super::ServerEntry`].
    pub const SERVERS: &str = "servers";
    /// One key per orchestrator node, value [`super::NodeEntry`].
    pub const NODES: &str = "nodes";
    /// One key per live game server (key = game id): the per-match secret the gateway's
    /// proxy dials it with. Apart from `servers`, which anyone may read: only
    /// orchestrators write this bucket and only gateways read it.
    pub const SECRETS: &str = "secrets";
    /// One key per harness instance (key = instance id, value
    /// [`super::HarnessInstance`]), plus [`HARNESS_CONTROL_KEY`].
    pub const HARNESS: &str = "harness";
    /// The key in [`HARNESS`] holding the fleet's control state
    /// ([`super::HarnessControl`]), so a late joiner learns it. Instance ids never
    /// contain a dot, so it cannot clash with one.
    pub const HARNESS_CONTROL_KEY: &str = "fleet.control";
    /// The session service's public signing keys (key = key id, value
    /// [`super::SessionKeyEntry`]): what gateways check tokens with. Only matchmakers
    /// write it; anyone may read it (public keys are public).
    pub const SESSION_KEYS: &str = "session_keys";
    /// Tokens ended before their expiry (logout, or a login past
    /// `session.tokens_per_player`): key = token id, value [`super::Revocation`]. Only
    /// matchmakers write it and only gateways read it; an entry is kept as long as a
    /// token lives (`session.ttl`), after which the token has expired anyway.
    pub const REVOKED_TOKENS: &str = "revoked_tokens";
}

/// Redis keys (the seed project's names).
pub mod keys {
    /// The default queue: a sorted set of ticket ids scored by `seq` (join order), oldest
    /// first (`ZRANGE queue:default 0 -1`). A list in the seed project; a matchmaker
    /// converts one an older version left when it starts.
    pub const QUEUE_DEFAULT: &str = "queue:default";

    /// The name of the seed's queue, which every join without a body goes to.
    pub const DEFAULT_QUEUE_NAME: &str = "default";

    /// Prefix of every queue's sorted set (`queue:<name>`): scripts that act on a ticket
    /// find its queue from the ticket's `queue` field with it.
    pub const QUEUE_PREFIX: &str = "queue:";

    /// A queue's sorted set of ticket ids by `seq` (`queue:default` for the seed's).
    pub fn queue(name: &str) -> String {
        format!("{QUEUE_PREFIX}{name}")
    }

    /// A queue's join-order counter.
    pub fn queue_seq(name: &str) -> String {
        format!("{QUEUE_PREFIX}{name}:seq")
    }

    /// A queue's leases: batch ids by lease deadline (`leases:default` for the seed's).
    pub fn leases(name: &str) -> String {
        format!("leases:{name}")
    }

    /// A player's rating (JSON: `rating`, `uncertainty`, `games`), kept as long as the
    /// account.
    pub fn player_rating(player_id: &str) -> String {
        format!("player:{player_id}:rating")
    }

    /// Marks a game whose result was applied to ratings (so a result is applied once).
    pub fn game_rated(game_id: &str) -> String {
        format!("game:{game_id}:rated")
    }

    /// A party (JSON: `partyId`, `leader`, `members`, `ticketId`).
    pub fn party(party_id: &str) -> String {
        format!("party:{party_id}")
    }

    /// The party a player is in.
    pub fn player_party(player_id: &str) -> String {
        format!("player:{player_id}:party")
    }

    /// Prefix of `ticket:{id}`: the matchmaker's Lua scripts build ticket keys from it.
    pub const TICKET_PREFIX: &str = "ticket:";

    /// A ticket's JSON.
    pub fn ticket(ticket_id: &str) -> String {
        format!("{TICKET_PREFIX}{ticket_id}")
    }

    /// Join-order counter of `queue:default`: the `seq` of its next ticket.
    pub const QUEUE_DEFAULT_SEQ: &str = "queue:default:seq";

    /// Leases of in-flight batches: a sorted set of batch ids scored by lease deadline
    /// (Unix ms, Redis clock).
    pub const LEASES_DEFAULT: &str = "leases:default";

    /// One in-flight batch: the set of ticket ids a matcher popped and is allocating for.
    pub fn lease(batch_id: &str) -> String {
        format!("lease:{batch_id}")
    }

    /// A player's account: JSON with the password's salt and salted hash (and its live
    /// tokens).
    pub fn player(player_id: &str) -> String {
        format!("player:{player_id}")
    }

    /// Index of live accounts: a sorted set of player ids scored by when the account
    /// expires (Unix ms, Redis clock); it bounds and counts the account table.
    pub const ACCOUNTS: &str = "accounts";

    /// The id of the player's latest ticket (joining again returns it while it searches).
    pub fn player_ticket(player_id: &str) -> String {
        format!("player:{player_id}:ticket")
    }

    /// The player's store balance (an integer; absent until the first purchase).
    pub fn player_balance(player_id: &str) -> String {
        format!("player:{player_id}:balance")
    }

    /// The player's recent purchases, newest last (JSON per entry, capped).
    pub fn player_purchases(player_id: &str) -> String {
        format!("player:{player_id}:purchases")
    }

    /// A purchase made with a client idempotency key: the stored reply, replayed on retry.
    pub fn purchase(player_id: &str, idempotency_key: &str) -> String {
        format!("purchase:{player_id}:{idempotency_key}")
    }

    /// A session (by its token's id, `jti`) → the player id it belongs to (expires with
    /// the token). A token whose session is gone was logged out or replaced.
    pub fn session(token_id: &str) -> String {
        format!("session:{token_id}")
    }

    /// The session service's signing keys: a hash of key id → the Ed25519 key pair
    /// (PKCS#8, base64) and when it was made. Only matchmakers read it.
    pub const SIGNING_KEYS: &str = "session:signing-keys";
    /// A match's JSON.
    pub fn match_record(match_id: &str) -> String {
        format!("match:{match_id}")
    }
}

/// Players per match.
pub const MATCH_SIZE: usize = 10;

// ---------------------------------------------------------------------------------------
// Sessions

/// Limits on what players and clients send: checked by the gateway and again by every
/// service, so a bad id is a 400 wherever it enters.
pub mod limits {
    /// Longest player, ticket, offer or purchase id.
    pub const MAX_ID_LEN: usize = 64;
    /// Longest password (hashing cost stays bounded).
    pub const MAX_PASSWORD_LEN: usize = 256;
    /// Longest client idempotency key.
    pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

    /// Checks an id: 1 to [`MAX_ID_LEN`] characters of `A-Z a-z 0-9 _ - .` and `@`.
    ///
    /// No `*`, `>` or whitespace, so an id is always safe inside a NATS subject or a
    /// Redis key. `what` names the field in the error.
    pub fn check_id(what: &str, value: &str) -> Result<(), String> {
        check_chars(what, value, MAX_ID_LEN, |c| c.is_ascii_alphanumeric() || "_-.@".contains(c))
    }

    /// Checks a ticket id: like [`check_id`] but without `.` and `@`, because a ticket id
    /// is one token of the subject `events.ticket.<id>`.
    pub fn check_ticket_id(value: &str) -> Result<(), String> {
        check_token("ticket id", value)
    }

    /// Checks a value used as one NATS subject token or one KV key: 1 to [`MAX_ID_LEN`]
    /// characters of `A-Z a-z 0-9 _ -` (no `.`, which would split it). `what` names the
    /// field in the error.
    pub fn check_token(what: &str, value: &str) -> Result<(), String> {
        check_chars(what, value, MAX_ID_LEN, |c| c.is_ascii_alphanumeric() || "_-".contains(c))
    }

    /// Checks an idempotency key: 1 to [`MAX_IDEMPOTENCY_KEY_LEN`] characters of
    /// `A-Z a-z 0-9 _ - . :`.
    pub fn check_idempotency_key(value: &str) -> Result<(), String> {
        check_chars("idempotency key", value, MAX_IDEMPOTENCY_KEY_LEN, |c| {
            c.is_ascii_alphanumeric() || "_-.:".contains(c)
        })
    }

    /// Checks a password: 1 to [`MAX_PASSWORD_LEN`] bytes.
    pub fn check_password(value: &str) -> Result<(), String> {
        match value.len() {
            0 => Err("password must not be empty".to_owned()),
            len if len > MAX_PASSWORD_LEN => {
                Err(format!("password is {len} bytes long; at most {MAX_PASSWORD_LEN} are allowed"))
            }
            _ => Ok(()),
        }
    }

    /// Largest party (the leader included).
    pub const MAX_PARTY: usize = 10;
    /// Largest rating (either sign) a rating may be set to.
    pub const MAX_RATING: f64 = 1_000_000.0;

    /// Most regions one join may give latencies for.
    pub const MAX_REGIONS: usize = 32;
    /// Highest latency a join may give, in ms: beyond it nobody plays anywhere.
    pub const MAX_LATENCY_MS: f64 = 10_000.0;

    /// Checks the latencies of a join: at most [`MAX_REGIONS`], region names that are
    /// subject tokens, each latency a number from 0 to [`MAX_LATENCY_MS`].
    pub fn check_latencies(latencies: &std::collections::BTreeMap<String, f64>) -> Result<(), String> {
        if latencies.len() > MAX_REGIONS {
            return Err(format!(
                "latencies name {} regions; at most {MAX_REGIONS} are allowed",
                latencies.len()
            ));
        }
        for (region, ms) in latencies {
            check_token("region", region)?;
            if !(0.0..=MAX_LATENCY_MS).contains(ms) {
                return Err(format!(
                    "latency to region {region} is {ms} ms: it must be between 0 and {MAX_LATENCY_MS}"
                ));
            }
        }
        Ok(())
    }

    fn check_chars(
        what: &str,
        value: &str,
        max: usize,
        allowed: impl Fn(char) -> bool,
    ) -> Result<(), String> {
        if value.is_empty() {
            return Err(format!("{what} must not be empty"));
        }
        if value.len() > max {
            return Err(format!("{what} is {} characters long; at most {max} are allowed", value.len()));
        }
        match value.chars().find(|c| !allowed(*c)) {
            Some(bad) => Err(format!("{what} contains {bad:?}, which is not allowed")),
            None => Ok(()),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ids_that_could_reach_a_subject_or_key_are_refused() {
            assert!(check_id("player id", "ana.smith@example").is_ok());
            for bad in ["", "a b", "a*", "a>", "a:b", "ü", &"x".repeat(MAX_ID_LEN + 1)] {
                assert!(check_id("player id", bad).is_err(), "{bad:?}");
            }
            assert!(check_ticket_id("0b9f6c1e-8d7a-4c1b-9e3f-2a5d7c9e1f00").is_ok());
            assert!(check_ticket_id("a.b").is_err(), "a dot would split the event subject");
            assert!(check_token("instance id", "box-1_a").is_ok());
            let refused = check_token("instance id", "box 1").expect_err("a space");
            assert!(refused.starts_with("instance id "), "{refused}");
            assert!(check_idempotency_key("order:42").is_ok());
            assert!(check_idempotency_key("order 42").is_err());
            assert!(check_password("").is_err());
            assert!(check_password(&"p".repeat(MAX_PASSWORD_LEN + 1)).is_err());
        }
    }
}

/// `session.login` request (and the body of `POST /login`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginRequest {
    /// The player id: any name the player picks; it is registered on first login.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_.@-]{1,64}$"))]
    pub id: String,
    /// 1 to 256 bytes of UTF-8 (the schema's 64 characters always fit).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub password: String,
}

/// `session.login` reply (and `POST /login`'s answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginReply {
    pub token: String,
    pub player_id: String,
}

/// `session.verify` / `session.logout` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub token: String,
}

/// A public signing key in KV bucket [`buckets::SESSION_KEYS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionKeyEntry {
    /// The Ed25519 public key, base64url (32 bytes).
    pub public_key: String,
    /// When the key was made (Unix ms); it signs new tokens for `session.key_lifetime`.
    pub created_at: u64,
}

/// A revoked token in KV bucket [`buckets::REVOKED_TOKENS`] (the key is its id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    pub player_id: String,
    /// When the token would have expired (Unix ms): the revocation matters until then.
    pub expires_at: u64,
}

/// `session.verify` reply: whose token it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub player_id: String,
}

// ---------------------------------------------------------------------------------------
// Matchmaking

/// Where a ticket is in its life. Only `searching` can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum TicketStatus {
    Searching,
    Matched,
    Cancelled,
    Expired,
    Failed,
}

impl TicketStatus {
    /// The lowercase name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Searching => "searching",
            Self::Matched => "matched",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }

    /// True once the ticket can no longer change.
    pub fn is_final(self) -> bool {
        self != Self::Searching
    }
}

/// The game server a matched ticket's player connects to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerAssignment {
    /// WebSocket URL: the gateway's `/game/{gameId}/connect`.
    pub url: String,
    pub game_id: String,
}

/// `matchmaking.join` request: the player, and the optional body of
/// `POST /matchmaking/join` ([`JoinBody`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub player_id: String,
    /// The queue; `None` is [`keys::DEFAULT_QUEUE_NAME`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Round-trip time to each region, in milliseconds.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub latencies: std::collections::BTreeMap<String, f64>,
    /// Queue the caller's whole party (the caller must lead it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub party_id: Option<String>,
}

/// The optional JSON body of `POST /matchmaking/join` (`CONTRACT.md`): no body, or `{}`,
/// joins the seed's `default` queue alone. Unknown fields are refused (a typo is a 400).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinBody {
    /// A configured queue (`GET /matchmaking/queues`); none: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub queue: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub latencies: std::collections::BTreeMap<String, f64>,
    /// Queue the caller's whole party (the caller must lead it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub party_id: Option<String>,
}

impl JoinBody {
    /// Checks the shape (the queue's existence is the matchmaker's to check): a queue
    /// name and region names that are subject tokens, at most
    /// [`limits::MAX_REGIONS`] regions, latencies from 0 to [`limits::MAX_LATENCY_MS`].
    pub fn check(&self) -> Result<(), String> {
        if let Some(queue) = &self.queue {
            limits::check_token("queue", queue)?;
        }
        if let Some(party) = &self.party_id {
            limits::check_token("partyId", party)?;
        }
        limits::check_latencies(&self.latencies)
    }

    /// The `matchmaking.join` request of `player_id` with this body.
    pub fn into_request(self, player_id: String) -> JoinRequest {
        JoinRequest { player_id, queue: self.queue, latencies: self.latencies, party_id: self.party_id }
    }
}

/// One configured queue, as `GET /matchmaking/queues` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueInfo {
    pub name: String,
    /// `fifo`, `skill` or `latency`.
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_size: Option<usize>,
    /// Players per match.
    pub match_size: usize,
}

/// How good a match was when it was formed (in the match record and the matched
/// tickets' views; the matchmaker's `/metrics` has the same numbers by queue).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MatchQuality {
    /// Highest minus lowest ticket rating in the match (a party counts as its mean).
    pub rating_spread: f64,
    /// Difference of the two sides' mean player ratings.
    pub team_rating_diff: f64,
    /// The worst member's latency to the match's region, when it has one (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_latency_ms: Option<f64>,
    /// How long the match's oldest ticket had waited (ms, Redis clock).
    pub wait_ms: u64,
}

/// `matchmaking.join` reply (and `POST /matchmaking/join`'s answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinReply {
    pub ticket_id: String,
    pub status: TicketStatus,
}

/// `matchmaking.status` and `matchmaking.cancel` request: a player asking about a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketRequest {
    pub player_id: String,
    pub ticket_id: String,
}

/// A ticket as its player sees it: the `matchmaking.status` reply, the body of
/// `GET /matchmaking/status`, and the payload of `events.ticket.<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TicketView {
    pub ticket_id: String,
    pub status: TicketStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerAssignment>,
    /// Why a ticket `failed` or `expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The queue it is in.
    #[serde(default = "default_queue_name")]
    pub queue: String,
    /// The ticket's rating when it joined (a party's: its members' mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<f64>,
    /// A matched ticket of a team queue: the match's teams, player ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<Vec<Vec<String>>>,
    /// A matched ticket of a queue that places by latency: the match's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// A matched ticket: how good its match was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<MatchQuality>,
}

fn default_queue_name() -> String {
    keys::DEFAULT_QUEUE_NAME.to_owned()
}

/// `matchmaking.cancel` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancelReply {
    pub status: TicketStatus,
}

/// A ticket as stored in Redis under `ticket:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticket {
    pub id: String,
    pub player_id: String,
    pub status: TicketStatus,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerAssignment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Failed allocation attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// When a still-searching ticket expires (Unix ms, Redis clock).
    #[serde(default)]
    pub expires_at: u64,
    /// Join order in its queue: the queue is always sorted by it, oldest at the head.
    #[serde(default)]
    pub seq: u64,
    /// The queue it was joined to.
    #[serde(default = "default_queue_name")]
    pub queue: String,
    /// A party's ticket: every member, the leader (`player_id`) first. Empty for one
    /// player alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub players: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub party_id: Option<String>,
    /// The ticket's rating at join: the player's, or the mean of a party's members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating: Option<f64>,
    /// Round-trip time to each region, ms (a party's: its leader's).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub latencies: std::collections::BTreeMap<String, f64>,
    /// Set when matched in a team queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<Vec<Vec<String>>>,
    /// Set when matched in a region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Set when matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<MatchQuality>,
}

impl Ticket {
    /// A searching ticket of one player in the default queue (tests and benches build
    /// candidates with it).
    pub fn solo(id: impl Into<String>, player_id: impl Into<String>) -> Self {
        Ticket {
            id: id.into(),
            player_id: player_id.into(),
            status: TicketStatus::Searching,
            created_at: 0,
            match_id: None,
            server: None,
            reason: None,
            attempts: 0,
            expires_at: 0,
            seq: 0,
            queue: default_queue_name(),
            players: Vec::new(),
            party_id: None,
            rating: None,
            latencies: std::collections::BTreeMap::new(),
            teams: None,
            region: None,
            quality: None,
        }
    }

    /// Every player of the ticket (one, or a party's members).
    pub fn player_ids(&self) -> Vec<String> {
        if self.players.is_empty() { vec![self.player_id.clone()] } else { self.players.clone() }
    }

    /// How many players the ticket holds.
    pub fn size(&self) -> usize {
        self.players.len().max(1)
    }

    /// What the ticket's player may see of it.
    pub fn view(&self) -> TicketView {
        TicketView {
            ticket_id: self.id.clone(),
            status: self.status,
            match_id: self.match_id.clone(),
            server: self.server.clone(),
            reason: self.reason.clone(),
            queue: self.queue.clone(),
            rating: self.rating,
            teams: self.teams.clone(),
            region: self.region.clone(),
            quality: self.quality.clone(),
        }
    }
}

/// A formed match as stored in Redis under `match:{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchRecord {
    pub id: String,
    pub ticket_ids: Vec<String>,
    /// Every player, side by side: the first half plays the second half (the game
    /// server's rule), so a team queue's `teams` flattened.
    pub player_ids: Vec<String>,
    pub server: ServerAssignment,
    pub created_at: u64,
    #[serde(default = "default_queue_name")]
    pub queue: String,
    /// A team queue's teams (player ids).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<Vec<Vec<String>>>,
    /// Where the match is played, when its queue places by latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<MatchQuality>,
}

/// `events.match.created` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchCreated {
    pub match_id: String,
    pub game_id: String,
    pub server_url: String,
    pub player_ids: Vec<String>,
    pub ticket_ids: Vec<String>,
    pub created_at: u64,
    #[serde(default = "default_queue_name")]
    pub queue: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<Vec<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// `events.game.ended` payload: who played whom, and which side won.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GameEnded {
    pub game_id: String,
    pub match_id: String,
    /// The two sides, player ids: the game server's first half and second half of its
    /// player list.
    pub teams: Vec<Vec<String>>,
    /// Index into `teams` of the side that won.
    pub winner: usize,
}

/// `session.rating.get` request (and `session.rating.set`'s answer is a [`RatingReply`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RatingRequest {
    pub player_id: String,
}

/// `session.rating.set` request: the player's rating becomes `rating` (its uncertainty
/// and game count stay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RatingSet {
    pub player_id: String,
    pub rating: f64,
}

/// A player's rating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RatingReply {
    pub player_id: String,
    pub rating: f64,
    pub uncertainty: f64,
    /// Games rated so far.
    pub games: u64,
}

// ---------------------------------------------------------------------------------------
// Parties

/// `party.create` and `party.get` and `party.leave` request: the calling player.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartyRequest {
    pub player_id: String,
}

/// `party.join` request (the body of `POST /party/join` is `{"partyId"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartyJoinRequest {
    pub player_id: String,
    pub party_id: String,
}

/// `POST /party/join` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartyJoinBody {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub party_id: String,
}

/// `party.create` reply (`POST /party`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartyCreated {
    pub party_id: String,
}

/// A party as its members see it (`GET /party`, `party.join`'s answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartyView {
    pub party_id: String,
    pub leader: String,
    /// Every member, the leader first.
    pub members: Vec<String>,
    /// The party's latest ticket, once its leader queued it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_id: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Store

/// One item of the store's catalogue (`store.offers` replies with a list of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Offer {
    pub id: String,
    pub name: String,
    pub price: u64,
}

/// `store.purchase` request. `offer_id` keeps the seed's snake case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseRequest {
    #[serde(rename = "playerId")]
    pub player_id: String,
    pub offer_id: String,
    /// Client-chosen key: retrying a purchase with the same key buys once.
    #[serde(rename = "idempotencyKey", default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// `store.purchase` reply (and `POST /store/purchase`'s answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PurchaseReply {
    #[serde(rename = "purchaseId")]
    pub purchase_id: String,
    pub offer_id: String,
    pub balance: u64,
}

// ---------------------------------------------------------------------------------------
// Orchestrator

/// `orchestrator.allocate` request: a game server for one match.
///
/// Allocation is idempotent per match: the game id is derived from `matchId`, so a retry
/// for a match whose server is still live gets that same server back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocateRequest {
    pub match_id: String,
    pub player_ids: Vec<String>,
}

/// `orchestrator.allocate` request of a match placed by latency: the request, plus the
/// region its players are close to. On the wire it is an [`AllocateRequest`] with one
/// more field, so an orchestrator that knows no regions reads it as a plain request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionalAllocateRequest {
    #[serde(flatten)]
    pub request: AllocateRequest,
    /// Place the server on a node of this region (nodes declare theirs); none: anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// `orchestrator.allocate` reply: where the match's players go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocateReply {
    pub game_id: String,
    /// The WebSocket URL players connect to (the gateway's `/game/{gameId}/connect`).
    pub url: String,
    pub node: String,
    /// `host:port` of the game server itself (what the gateway proxies to).
    pub address: String,
    /// How the server was had: `warm` (taken from a node's pool of started servers, in
    /// milliseconds) or `cold` (started for this match). An older orchestrator sends
    /// none: `cold`.
    #[serde(default)]
    pub start: StartKind,
}

/// How an allocation got its server ([`AllocateReply::start`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    /// A warm server of the node's pool was claimed and handed the match.
    Warm,
    /// A server was started for this match (the pool was empty, or is off). Also what a
    /// replay of an existing allocation answers.
    #[default]
    Cold,
}

impl StartKind {
    /// Both kinds, as metric labels.
    pub const ALL: [StartKind; 2] = [Self::Warm, Self::Cold];

    /// The lowercase name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Cold => "cold",
        }
    }
}

/// `orchestrator.release` request: the match was not committed (a ticket was cancelled
/// during the allocation, the lease was lost, the commit failed), so its server must end
/// now rather than run a whole game for nobody. Idempotent: releasing a match whose server
/// is gone, or was never placed, is fine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRequest {
    pub match_id: String,
}

/// `orchestrator.release` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseReply {
    /// The match's game id (derived from the match id).
    pub game_id: String,
    /// A live server was found and is being stopped (false: nothing was running).
    pub released: bool,
}

/// `orchestrator.node.<id>.place` request: the allocator asks one node to run a game
/// server. The node answers with an [`AllocateReply`] once the server is ready, or with a
/// micro error: 409 when it has no room or cannot start it within the request's budget
/// (the allocator then tries the next node), 503 when its driver failed. The time the
/// node has is the request's relative budget (the `Mm-Budget-Ms` header, see
/// `mm_shared::nats`), never a wall-clock time: a node that cannot have the server ready
/// within it stops it and answers, so a timed-out request never leaves a server behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaceRequest {
    pub game_id: String,
    pub match_id: String,
    pub player_ids: Vec<String>,
}

/// A game server's life, as the allocation runner drives it:
/// `pending → starting → ready → running → complete | failed | lost`, with
/// `running → starting` again when the restart policy restarts a server that died early.
/// A server of a node's warm pool goes `pending → starting → warm`, and from `warm` to
/// `running` when an allocation claims it (under its match's game id), or to `complete`
/// when it is recycled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Accepted by a node; resources and a port reserved.
    #[default]
    Pending,
    /// The driver started it; waiting for its `/healthz`.
    Starting,
    /// Started, healthy and unallocated, in its node's pool: no `matchId`, no players, no
    /// secret; it refuses players until its node hands it a match.
    Warm,
    /// `/healthz` answers; the allocation reply is on its way.
    Ready,
    /// Handed to its match: players may connect.
    Running,
    /// Its game ended (the entry is deleted right after).
    Complete,
    /// It died and the restart policy gave up (the entry is deleted right after).
    Failed,
    /// Its node lost track of it (the entry is deleted right after).
    Lost,
}

impl ServerState {
    /// Every state, in life order.
    pub const ALL: [ServerState; 8] = [
        Self::Pending,
        Self::Starting,
        Self::Warm,
        Self::Ready,
        Self::Running,
        Self::Complete,
        Self::Failed,
        Self::Lost,
    ];

    /// The lowercase name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Starting => "starting",
            Self::Warm => "warm",
            Self::Ready => "ready",
            Self::Running => "running",
            Self::Complete => "complete",
            Self::Failed => "failed",
            Self::Lost => "lost",
        }
    }

    /// True for the states a server ends in.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Complete | Self::Failed | Self::Lost)
    }
}

/// A live game server in KV bucket `servers` (key = game id). Only orchestrators write it.
///
/// What the gateway's game proxy needs is all here: it checks that the player is in
/// `playerIds`, then opens `ws://{address}/connect?player=<playerId>` with the header
/// `Authorization: Bearer {secret}` (see [`game_server`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerEntry {
    pub game_id: String,
    pub match_id: String,
    pub node: String,
    pub state: ServerState,
    /// `host:port` the game server listens on.
    pub address: String,
    /// Unix ms when the server was first started.
    pub started_at: u64,
    #[serde(default)]
    pub player_ids: Vec<String>,
    /// `podman` or `process`.
    #[serde(default)]
    pub driver: String,
    /// Restarts after an early exit.
    #[serde(default)]
    pub restarts: u32,
    /// The per-match secret a connection presents as `Authorization: Bearer <secret>`.
    /// Never written into `servers`, which anyone may read: orchestrators keep it in the
    /// bucket [`buckets::SECRETS`] (key = game id), which only gateways read.
    #[serde(default, skip_serializing)]
    pub secret: String,
    /// Unix ms when the game ends (kept across restarts).
    #[serde(default)]
    pub ends_at: u64,
    /// Unix ms of the last state change.
    #[serde(default)]
    pub updated_at: u64,
    /// What the server holds on its node (`servers` is 1).
    #[serde(default)]
    pub resources: Resources,
    /// The driver's handle: a container id, or a process id.
    #[serde(default)]
    pub handle: String,
    /// Why it ended (final states), or why it was last restarted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// For a server that came from its node's warm pool: the id it had while warm (its
    /// entry's key then, and its driver's `mm.game-id` label for good).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub warm_id: String,
}

/// Resources of a node: what it declares, or what is in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub cpu_millicores: u64,
    pub memory_mb: u64,
    pub servers: u64,
}

/// An orchestrator node in KV bucket `nodes` (key = node id), rewritten on every
/// heartbeat and whenever its use changes; deleted when the node stops cleanly. A node
/// whose `heartbeatAt` is older than the readers' node timeout is down.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    pub node: String,
    /// `podman` or `process`.
    pub driver: String,
    pub driver_healthy: bool,
    pub capacity: Resources,
    pub used: Resources,
    /// Dynamic host port range, inclusive.
    pub port_range: (u16, u16),
    pub ports_used: u64,
    pub heartbeat_at: u64,
    pub started_at: u64,
    /// What the driver said at the last check ("podman 4.3.1, rootless", or why it is unhealthy).
    #[serde(default)]
    pub driver_status: String,
    #[serde(default)]
    pub version: String,
    /// The process that holds this node id (random per start): a second process with a
    /// live node's id refuses to start, naming this holder.
    #[serde(default)]
    pub instance: String,
    /// The holder's process id and host name, for that message.
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub host: String,
    /// Server starts accepted and not yet ready on this node (its driver's queue).
    #[serde(default)]
    pub starting: u64,
    /// Warm servers in this node's pool (counted in `used`): an allocation here claims
    /// one in milliseconds, with no new capacity needed.
    #[serde(default)]
    pub warm: u64,
    /// The region this node declares (`orchestrator.region`); empty: none. A match placed
    /// by latency goes to a node of its region when one is registered.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
}

/// What the orchestrator hands a game server, and what a game server's clients present.
pub mod game_server {
    /// The WebSocket path on a game server.
    pub const CONNECT_PATH: &str = "/connect";
    /// The query parameter naming the connecting player.
    pub const PLAYER_PARAM: &str = "player";
    /// A warm server's assignment endpoint, for its node only: `POST` hands it its match
    /// (an [`Assignment`], once: a second one is refused with 409), `GET` says which match
    /// it has (an [`AssignmentStatus`]). Both need `Authorization: Bearer <bootstrap
    /// token>`, the token its node started it with ([`env::BOOTSTRAP_TOKEN`]). A server
    /// started with a match (no token) answers 404.
    pub const ASSIGN_PATH: &str = "/assign";

    /// What a node hands a warm server of its pool: the match it now serves. Players
    /// connect as to any game server once it is assigned.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Assignment {
        pub game_id: String,
        pub match_id: String,
        pub player_ids: Vec<String>,
        /// The per-match secret connections present (this channel is the node's and the
        /// server's alone).
        pub secret: String,
        /// Unix ms when the game ends.
        pub ends_at: u64,
    }

    /// `GET /assign`: the server's assignment, if it has one (`null` while warm).
    #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct AssignmentStatus {
        pub assignment: Option<Assignment>,
    }
    /// Largest WebSocket message (and frame) a game server accepts, and so the largest the
    /// gateway's proxy lets through in either direction: one number for both.
    pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

    /// How a game server reports its game's result: its last line on stdout is this
    /// prefix and a [`super::GameEnded`] as JSON (`MM_GAME_RESULT {"gameId":...}`). The node
    /// that ran it reads the line from the server's output once it exited after its game's
    /// end, checks it against what it knows of the match, and publishes the result on
    /// `events.game.ended` (game servers have no NATS credentials).
    pub const RESULT_PREFIX: &str = "MM_GAME_RESULT ";
    /// The longest result line a node reads (two sides of ten ids fit many times over);
    /// a longer one is ignored.
    pub const MAX_RESULT_LINE_BYTES: usize = 8 * 1024;

    /// Podman labels on every game-server container (`podman ps --filter label=mm.game-id`).
    pub mod labels {
        pub const GAME_ID: &str = "mm.game-id";
        pub const NODE: &str = "mm.node";
    }

    /// Environment of a game server (its `[game]` config keys).
    pub mod env {
        pub const LISTEN: &str = "MM_GAME__LISTEN";
        pub const GAME_ID: &str = "MM_GAME__GAME_ID";
        pub const MATCH_ID: &str = "MM_GAME__MATCH_ID";
        /// Unix ms when the game ends.
        pub const ENDS_AT: &str = "MM_GAME__ENDS_AT";
        pub const SECRET: &str = "MM_GAME__SECRET";
        /// The match's players, as a list: `["p1","p2"]`.
        pub const PLAYERS: &str = "MM_GAME__PLAYERS";
        pub const LOG_FORMAT: &str = "MM_LOG__FORMAT";
        /// tokio's own variable: a game server needs few threads.
        pub const WORKER_THREADS: &str = "TOKIO_WORKER_THREADS";
        /// How long the server waits for its first player before it ends itself
        /// (`"15s"`; `"0s"`: it waits for the whole game); for a warm server, from its
        /// assignment.
        pub const JOIN_TIMEOUT: &str = "MM_GAME__JOIN_TIMEOUT";
        /// Set for a warm server (and then no match, players, secret or end): the token
        /// its node presents on [`super::ASSIGN_PATH`]. Never printed.
        pub const BOOTSTRAP_TOKEN: &str = "MM_GAME__BOOTSTRAP_TOKEN";
    }

    /// Exit codes by which a game server says why it ended early, so its orchestrator
    /// tells them apart from a crash without reading its logs.
    pub mod exit_codes {
        /// No player joined within its join timeout: it ended itself.
        pub const NO_PLAYERS: i64 = 3;
        /// Its listen address was taken by another program.
        pub const ADDRESS_IN_USE: i64 = 4;
    }
}

// ---------------------------------------------------------------------------------------
// Harness

/// `harness.control` payload: fields left out are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HarnessControl {
    /// Players across the whole fleet, divided among live instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_target: Option<u64>,
    /// Scenario name → executions per idle player per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rates: Option<std::collections::BTreeMap<String, f64>>,
    /// Forget the fleet target, rates and plan set so far (applied before the other
    /// fields): each instance goes back to its own `--players` and configured rates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// A plan of stages for the whole fleet. A new plan replaces the one before; while
    /// one is set (from its `startedAtMs` on) it decides the fleet target, over
    /// `fleetTarget`, and after its last stage the fleet holds that stage's players
    /// until a `reset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<HarnessPlan>,
}

/// The fleet's plan of stages (`harness.control` `stages`), like k6's `stages` for the
/// whole fleet: each stage moves the fleet target linearly from where the one before
/// ended (the first from 0) to its `players` over its `duration`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HarnessPlan {
    /// When the first stage starts, Unix ms by the publisher's clock (`mmctl fleet
    /// --stages` stamps it). Absent, each instance stamps it with its own clock when the
    /// message arrives. A start still ahead waits: until then the fleet runs as without
    /// the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    pub stages: Vec<HarnessPlanStage>,
}

/// One stage of a [`HarnessPlan`]: the same fields as one of `[[harness.stages]]`, with
/// `players` counted across the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HarnessPlanStage {
    /// `"30s"`, `"2m"`, or an integer of milliseconds.
    #[serde(with = "crate::duration")]
    pub duration: std::time::Duration,
    /// The fleet target at the end of the stage.
    pub players: u64,
    /// Scenario name → executions per idle player per second while the stage lasts
    /// (`0.01`, or `"1/300s"` when read; always a number when written). They apply over
    /// the control `rates`.
    #[serde(
        default,
        skip_serializing_if = "std::collections::BTreeMap::is_empty",
        deserialize_with = "crate::rate::deserialize_map"
    )]
    pub rates: std::collections::BTreeMap<String, f64>,
}

impl HarnessPlan {
    /// How long its stages last together (saturating).
    pub fn total(&self) -> std::time::Duration {
        self.stages
            .iter()
            .fold(std::time::Duration::ZERO, |total, stage| total.saturating_add(stage.duration))
    }
}

impl HarnessControl {
    /// Applies `change` on top of this state, the way every instance applies a
    /// `harness.control` message: `reset` first, then each field that is present.
    pub fn apply(&mut self, change: &HarnessControl) {
        if change.reset {
            *self = HarnessControl::default();
        }
        if let Some(target) = change.fleet_target {
            self.fleet_target = Some(target);
        }
        if let Some(rates) = &change.rates {
            self.rates
                .get_or_insert_with(Default::default)
                .extend(rates.iter().map(|(k, v)| (k.clone(), *v)));
        }
        if let Some(plan) = &change.stages {
            self.stages = Some(plan.clone());
        }
    }
}

/// The harness's scenarios, in the order they are shown (the keys of
/// [`HarnessStats::scenarios`] and of the report's `scenarios`).
pub const HARNESS_SCENARIOS: [&str; 6] =
    ["login", "matchmaking", "in_game", "fetch_store", "store_purchase", "logout"];

/// Highest scenario rate a harness takes, in executions per idle player per second.
pub const HARNESS_MAX_RATE: f64 = 1e6;

/// Most stages a fleet plan may have.
pub const HARNESS_MAX_STAGES: usize = 100;

/// Longest fleet plan (its stages together): a year, like the longest harness run.
pub const HARNESS_MAX_PLAN: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Earliest `startedAtMs` a plan may have (2020-01-01): anything before is a number in
/// the wrong unit (seconds, most likely), not a plan that started 50 years ago.
pub const HARNESS_PLAN_EPOCH_MS: u64 = 1_577_836_800_000;

/// Furthest ahead of the receiving instance's clock a plan may start: a day.
pub const HARNESS_PLAN_MAX_AHEAD_MS: u64 = 24 * 3600 * 1000;

impl HarnessControl {
    /// Checks a control message before any of it is applied: every rate names one of
    /// [`HARNESS_SCENARIOS`] and lies in `0..=`[`HARNESS_MAX_RATE`], and a plan has 1 to
    /// [`HARNESS_MAX_STAGES`] stages, none of them 0 long, lasting at most
    /// [`HARNESS_MAX_PLAN`] together, with a start (if given) in milliseconds. The harness
    /// refuses a message that fails this as a whole; `mmctl fleet` refuses to send one.
    pub fn check(&self) -> Result<(), String> {
        check_rates("rates", self.rates.iter().flatten())?;
        let Some(plan) = &self.stages else { return Ok(()) };
        if plan.stages.is_empty() {
            return Err(
                "stages: a plan needs at least one stage (to drop a plan, send {\"reset\": true})".to_owned()
            );
        }
        if plan.stages.len() > HARNESS_MAX_STAGES {
            return Err(format!(
                "stages: the plan has {} stages; at most {HARNESS_MAX_STAGES} are allowed",
                plan.stages.len()
            ));
        }
        for (index, stage) in plan.stages.iter().enumerate() {
            if stage.duration.is_zero() {
                return Err(format!("stages[{index}].duration: must be more than 0"));
            }
            check_rates(&format!("stages[{index}].rates"), &stage.rates)?;
        }
        if plan.total() > HARNESS_MAX_PLAN {
            return Err(format!(
                "stages: the plan lasts {}; at most {} are allowed",
                crate::duration::format(plan.total()),
                crate::duration::format(HARNESS_MAX_PLAN)
            ));
        }
        if let Some(started_at) = plan.started_at_ms
            && started_at < HARNESS_PLAN_EPOCH_MS
        {
            return Err(format!(
                "stages.startedAtMs is {started_at}: before 2020, so not Unix milliseconds (seconds?)"
            ));
        }
        Ok(())
    }

    /// [`HarnessControl::check`], and a plan's start at most
    /// [`HARNESS_PLAN_MAX_AHEAD_MS`] after `now_ms` (the receiver's clock).
    pub fn check_at(&self, now_ms: u64) -> Result<(), String> {
        self.check()?;
        if let Some(started_at) = self.stages.as_ref().and_then(|plan| plan.started_at_ms)
            && started_at > now_ms.saturating_add(HARNESS_PLAN_MAX_AHEAD_MS)
        {
            return Err(format!(
                "stages.startedAtMs is {started_at}, more than a day after this instance's clock ({now_ms})"
            ));
        }
        Ok(())
    }

    /// Gives a plan without a start the start `now_ms` (what an instance does with a
    /// plan as it receives it).
    pub fn stamp(&mut self, now_ms: u64) {
        if let Some(plan) = &mut self.stages {
            plan.started_at_ms.get_or_insert(now_ms);
        }
    }
}

/// Every rate names a known scenario and lies in `0..=`[`HARNESS_MAX_RATE`]; `what`
/// names the field in the error.
fn check_rates<'a>(what: &str, rates: impl IntoIterator<Item = (&'a String, &'a f64)>) -> Result<(), String> {
    for (name, rate) in rates {
        if !HARNESS_SCENARIOS.contains(&name.as_str()) {
            return Err(format!(
                "unknown scenario `{name}` in {what} (known: {})",
                HARNESS_SCENARIOS.join(", ")
            ));
        }
        if !(0.0..=HARNESS_MAX_RATE).contains(rate) {
            return Err(format!(
                "rate of `{name}` in {what} is {rate}: must be a number of at least 0 and at most {HARNESS_MAX_RATE}"
            ));
        }
    }
    Ok(())
}

/// A live harness instance in KV bucket `harness` (key = instance id), refreshed on
/// every heartbeat and deleted when the instance stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HarnessInstance {
    pub instance: String,
    pub host: String,
    pub pid: u32,
    pub version: String,
    /// The gateway its players talk to.
    pub gateway: String,
    pub started_at: u64,
    pub heartbeat_at: u64,
    /// Players this instance keeps alive now: its share of the fleet target, or its own
    /// `--players` when no fleet target is set.
    pub target: u64,
    /// Players alive now.
    pub players: u64,
}

/// `harness.stats.<instance>` payload, once a second. Counters are cumulative since the
/// instance started and histograms hold every value recorded so far, so stats from any
/// number of instances merge by adding them up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HarnessStats {
    pub instance: String,
    pub host: String,
    /// When these stats were taken.
    pub at: u64,
    pub started_at: u64,
    /// This instance's target now.
    pub target: u64,
    /// The fleet target, when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_target: Option<u64>,
    pub players: HarnessPlayers,
    /// Scenario name → its numbers.
    pub scenarios: std::collections::BTreeMap<String, HarnessScenarioStats>,
    /// Matchmaking join → `matched`, in microseconds.
    pub time_to_match_us: HistogramData,
    /// Matchmaking join → first echo from the game server, in microseconds.
    pub time_to_play_us: HistogramData,
    /// How late the compositor's ticks ran, in microseconds.
    pub tick_lag_us: HistogramData,
    /// Failures by kind (`timeout`, `http_5xx`, `echo_mismatch`, ...), all scenarios.
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// Player counts of one harness instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HarnessPlayers {
    /// Players alive (logging in, idle or busy).
    pub alive: u64,
    pub logging_in: u64,
    pub idle: u64,
    pub busy: u64,
    /// Most players alive at once so far.
    pub peak: u64,
}

/// One scenario's numbers on one harness instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HarnessScenarioStats {
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Correct refusals that are not errors (a purchase without enough balance: 409).
    pub rejected: u64,
    /// Cut short by the end of the run: still running when its drain ran out (a game
    /// that had not ended yet, a ticket still searching). Neither success nor failure.
    /// (Called `aborted` before; older instances' stats still read.)
    #[serde(alias = "aborted")]
    pub cut: u64,
    /// Executions the compositor wanted but found no idle player for.
    pub starved: u64,
    /// Configured rate: executions per idle player per second.
    pub rate: f64,
    /// What the compositor aims for now: idle players × rate, per second.
    pub desired_per_second: f64,
    /// What it dispatched over the last interval, per second.
    pub actual_per_second: f64,
    /// Scenario latency in microseconds.
    pub latency_us: HistogramData,
}

/// A histogram as (value, count) pairs, sorted by value: the buckets an HDR histogram
/// recorded into (each value is its bucket's highest equivalent value). Histograms from
/// several instances merge by adding counts of equal values, without losing precision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HistogramData(pub Vec<(u64, u64)>);

impl HistogramData {
    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|&(_, count)| count).sum()
    }

    /// The largest value recorded (0 when empty).
    pub fn max(&self) -> u64 {
        self.0.last().map_or(0, |&(value, _)| value)
    }

    /// The value at quantile `q` (0.0..=1.0): the smallest recorded value with at least
    /// `q` of all counts at or below it (0 when empty), as HDR histograms define it.
    pub fn value_at_quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        // Rounding up to a whole count: q = 0.5 of 3 values is the 2nd.
        let wanted = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for &(value, count) in &self.0 {
            seen += count;
            if seen >= wanted {
                return value;
            }
        }
        self.max()
    }

    /// Adds `other`'s counts into this histogram.
    pub fn merge(&mut self, other: &HistogramData) {
        let mut merged = std::collections::BTreeMap::new();
        for &(value, count) in self.0.iter().chain(&other.0) {
            *merged.entry(value).or_insert(0u64) += count;
        }
        self.0 = merged.into_iter().collect();
    }
}

#[cfg(test)]
mod harness_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn control_messages_merge_in_order() {
        let mut state = HarnessControl::default();
        state.apply(&serde_json::from_value(json!({"fleetTarget": 100})).expect("json"));
        state.apply(&serde_json::from_value(json!({"rates": {"matchmaking": 0.5}})).expect("json"));
        state.apply(&serde_json::from_value(json!({"rates": {"logout": 0.0}})).expect("json"));
        assert_eq!(state.fleet_target, Some(100), "a message without fleetTarget keeps it");
        let rates = state.rates.clone().expect("rates");
        assert_eq!((rates["matchmaking"], rates["logout"]), (0.5, 0.0));
        state.apply(&serde_json::from_value(json!({"reset": true, "fleetTarget": 7})).expect("json"));
        assert_eq!(state, HarnessControl { fleet_target: Some(7), ..HarnessControl::default() });
        assert_eq!(serde_json::to_value(&state).expect("json"), json!({"fleetTarget": 7}));
    }

    #[test]
    fn control_checks_scenario_names_and_rate_bounds() {
        let with_rate = |name: &str, rate: f64| HarnessControl {
            rates: Some(std::collections::BTreeMap::from([(name.to_owned(), rate)])),
            ..HarnessControl::default()
        };
        assert!(with_rate("matchmaking", 0.5).check().is_ok());
        assert!(with_rate("logout", HARNESS_MAX_RATE).check().is_ok());
        let unknown = with_rate("matchmaknig", 0.5).check().expect_err("misspelled");
        assert!(unknown.contains("unknown scenario `matchmaknig`"), "{unknown}");
        assert!(unknown.contains("matchmaking"), "lists the known names: {unknown}");
        for bad in [-1.0, f64::NAN, HARNESS_MAX_RATE * 2.0] {
            assert!(with_rate("logout", bad).check().is_err(), "{bad}");
        }
        assert!(HarnessControl { fleet_target: Some(5), ..HarnessControl::default() }.check().is_ok());
    }

    #[test]
    fn a_plan_is_set_replaced_and_reset() {
        let mut state = HarnessControl::default();
        let plan = json!({"startedAtMs": 1_700_000_000_000u64, "stages": [
            {"duration": "2s", "players": 6},
            {"duration": "3s", "players": 6, "rates": {"matchmaking": "1/4s", "logout": 0}}
        ]});
        state.apply(&serde_json::from_value(json!({"fleetTarget": 50, "stages": plan})).expect("json"));
        let set = state.stages.clone().expect("a plan");
        assert_eq!(set.started_at_ms, Some(1_700_000_000_000));
        assert_eq!(set.total(), std::time::Duration::from_secs(5));
        assert_eq!(set.stages[1].rates["matchmaking"], 0.25, "a count per duration becomes per second");
        assert_eq!(state.fleet_target, Some(50), "kept, though the plan decides while it is set");
        // Written back with numbers and human durations, and read again the same.
        let written = serde_json::to_value(&state).expect("json");
        assert_eq!(
            written["stages"]["stages"][1],
            json!({"duration": "3s", "players": 6, "rates": {"logout": 0.0, "matchmaking": 0.25}})
        );
        assert_eq!(serde_json::from_value::<HarnessControl>(written).expect("round trip"), state);

        state.apply(&serde_json::from_value(json!({"rates": {"login": 1}})).expect("json"));
        assert_eq!(state.stages.as_ref(), Some(&set), "a message without stages keeps the plan");
        state.apply(
            &serde_json::from_value(json!({"stages": {"stages": [{"duration": 1000, "players": 3}]}}))
                .expect("json"),
        );
        let replaced = state.stages.clone().expect("a plan");
        assert_eq!(
            (replaced.started_at_ms, replaced.stages.len()),
            (None, 1),
            "a new plan replaces the old one whole"
        );
        state.stamp(42);
        assert_eq!(state.stages.as_ref().and_then(|plan| plan.started_at_ms), Some(42));
        state.stamp(43);
        assert_eq!(state.stages.as_ref().and_then(|plan| plan.started_at_ms), Some(42), "a start is kept");
        state.apply(&serde_json::from_value(json!({"reset": true})).expect("json"));
        assert_eq!(state, HarnessControl::default(), "reset clears the plan too");
    }

    #[test]
    fn plans_are_checked_whole() {
        let control = |plan: serde_json::Value| -> HarnessControl {
            serde_json::from_value(json!({"stages": plan})).expect("json of the right shape")
        };
        let stage = json!({"duration": "1s", "players": 1});
        assert!(control(json!({"stages": [stage]})).check().is_ok());
        let refusals = [
            (json!({"stages": []}), "at least one stage"),
            (
                json!({"stages": [{"duration": "0s", "players": 1}]}),
                "stages[0].duration: must be more than 0",
            ),
            (
                json!({"stages": [stage, {"duration": "1s", "players": 1, "rates": {"dance": 1}}]}),
                "unknown scenario `dance` in stages[1].rates",
            ),
            (
                json!({"stages": [{"duration": "1s", "players": 1, "rates": {"logout": 2e6}}]}),
                "rate of `logout` in stages[0].rates",
            ),
            (json!({"stages": [{"duration": "366d", "players": 1}]}), "invalid duration"),
            (
                json!({"stages": [{"duration": "8000h", "players": 1}, {"duration": "1000h", "players": 1}]}),
                "the plan lasts 9000h; at most 8760h",
            ),
            (json!({"startedAtMs": 1_700_000_000u64, "stages": [stage]}), "not Unix milliseconds"),
        ];
        for (plan, expected) in refusals {
            let err = match serde_json::from_value::<HarnessControl>(json!({"stages": plan.clone()})) {
                Ok(parsed) => parsed.check().expect_err(expected),
                Err(err) => err.to_string(),
            };
            assert!(err.contains(expected), "{plan}: {err}");
        }
        let many = vec![stage.clone(); HARNESS_MAX_STAGES + 1];
        let err = control(json!({"stages": many})).check().expect_err("too many");
        assert!(err.contains("at most 100"), "{err}");
        // Misspelled fields are refused rather than ignored.
        for typo in
            [json!({"stages": [{"duration": "1s", "players": 1, "rate": {}}]}), json!({"stage": [stage]})]
        {
            assert!(serde_json::from_value::<HarnessControl>(json!({"stages": typo})).is_err(), "{typo}");
        }
        let now = 1_800_000_000_000u64;
        let ahead = |ms: u64| control(json!({"startedAtMs": now + ms, "stages": [stage]}));
        assert!(ahead(60_000).check_at(now).is_ok(), "a start a minute ahead waits");
        let err = ahead(HARNESS_PLAN_MAX_AHEAD_MS + 1).check_at(now).expect_err("too far ahead");
        assert!(err.contains("more than a day"), "{err}");
    }

    #[test]
    fn histogram_data_merges_and_answers_quantiles() {
        let mut a = HistogramData(vec![(10, 2), (20, 1)]);
        let b = HistogramData(vec![(5, 1), (20, 1), (40, 1)]);
        a.merge(&b);
        assert_eq!(a.0, vec![(5, 1), (10, 2), (20, 2), (40, 1)]);
        assert_eq!(a.count(), 6);
        assert_eq!(a.max(), 40);
        assert_eq!(a.value_at_quantile(0.0), 5);
        assert_eq!(a.value_at_quantile(0.5), 10, "3rd of 6");
        assert_eq!(a.value_at_quantile(0.51), 20, "4th of 6");
        assert_eq!(a.value_at_quantile(1.0), 40);
        assert_eq!(HistogramData::default().value_at_quantile(0.99), 0);
        assert_eq!(serde_json::to_value(&b).expect("json"), json!([[5, 1], [20, 1], [40, 1]]));
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn http_facing_shapes_match_the_contract() {
        let login = LoginReply { token: "t".into(), player_id: "p".into() };
        assert_eq!(serde_json::to_value(&login).expect("json"), json!({"token": "t", "playerId": "p"}));

        let join = JoinReply { ticket_id: "k".into(), status: TicketStatus::Searching };
        assert_eq!(
            serde_json::to_value(&join).expect("json"),
            json!({"ticketId": "k", "status": "searching"})
        );

        let matched = TicketView {
            ticket_id: "k".into(),
            status: TicketStatus::Matched,
            match_id: Some("m".into()),
            server: Some(ServerAssignment { url: "ws://g/game/x/connect".into(), game_id: "x".into() }),
            reason: None,
            queue: "default".into(),
            rating: None,
            teams: None,
            region: None,
            quality: None,
        };
        assert_eq!(
            serde_json::to_value(&matched).expect("json"),
            json!({"ticketId": "k", "status": "matched", "matchId": "m",
                   "server": {"url": "ws://g/game/x/connect", "gameId": "x"}, "queue": "default"})
        );
        // A team queue's matched view carries the teams; an older view reads as `default`.
        let team = TicketView {
            teams: Some(vec![vec!["a".into()], vec!["b".into()]]),
            queue: "skill".into(),
            ..matched.clone()
        };
        assert_eq!(serde_json::to_value(&team).expect("json")["teams"], json!([["a"], ["b"]]));
        let older: TicketView =
            serde_json::from_value(json!({"ticketId": "k", "status": "searching"})).expect("older view");
        assert_eq!(older.queue, "default");
        // The join body: optional, checked, unknown fields refused.
        let body: JoinBody = serde_json::from_value(json!({"queue": "skill", "latencies": {"eu": 20.5},
            "partyId": "p1"}))
        .expect("body");
        assert!(body.check().is_ok());
        assert!(serde_json::from_value::<JoinBody>(json!({"queu": "skill"})).is_err());
        let far = JoinBody { latencies: [("eu".to_owned(), -1.0)].into(), ..JoinBody::default() };
        assert!(far.check().is_err());
        let absurd = JoinBody { latencies: [("eu".to_owned(), 1e9)].into(), ..JoinBody::default() };
        assert!(absurd.check().is_err());
        let many = JoinBody {
            latencies: (0..=limits::MAX_REGIONS).map(|r| (format!("r{r}"), 10.0)).collect(),
            ..JoinBody::default()
        };
        assert!(many.check().expect_err("33 regions").contains("at most 32"));

        let purchase = PurchaseReply { purchase_id: "u".into(), offer_id: "o".into(), balance: 5 };
        assert_eq!(
            serde_json::to_value(&purchase).expect("json"),
            json!({"purchaseId": "u", "offer_id": "o", "balance": 5})
        );
        let offer = Offer { id: "o".into(), name: "Skin".into(), price: 10 };
        assert_eq!(
            serde_json::to_value(&offer).expect("json"),
            json!({"id": "o", "name": "Skin", "price": 10})
        );
    }

    #[test]
    fn server_entry_has_the_contract_fields() {
        let entry = ServerEntry {
            game_id: "g".into(),
            match_id: "m".into(),
            node: "n".into(),
            state: ServerState::Running,
            address: "127.0.0.1:20000".into(),
            started_at: 1,
            ..ServerEntry::default()
        };
        let value = serde_json::to_value(&entry).expect("json");
        for field in ["gameId", "matchId", "node", "state", "address", "startedAt"] {
            assert!(value.get(field).is_some(), "missing {field}: {value}");
        }
        assert_eq!(value["state"], "running");
    }

    #[test]
    fn warm_pool_shapes() {
        // A warm server's entry: state "warm", no matchId field to speak of.
        let warm = ServerEntry {
            game_id: "w1".into(),
            state: ServerState::Warm,
            warm_id: "w1".into(),
            ..ServerEntry::default()
        };
        let value = serde_json::to_value(&warm).expect("json");
        assert_eq!((value["state"].as_str(), value["matchId"].as_str()), (Some("warm"), Some("")));
        assert!(ServerState::ALL.contains(&ServerState::Warm) && !ServerState::Warm.is_final());
        // The allocate reply says how it started; an older reply without it reads as cold.
        let reply = json!({"gameId": "g", "url": "u", "node": "n", "address": "a"});
        let reply: AllocateReply = serde_json::from_value(reply).expect("an older reply");
        assert_eq!(reply.start, StartKind::Cold);
        let warm_reply = AllocateReply { start: StartKind::Warm, ..reply };
        assert_eq!(serde_json::to_value(&warm_reply).expect("json")["start"], "warm");
        // The assignment carries its secret (on the node's own channel), in camelCase.
        let assignment = game_server::Assignment {
            game_id: "g".into(),
            match_id: "m".into(),
            player_ids: vec!["p".into()],
            secret: "s".into(),
            ends_at: 5,
        };
        let value = serde_json::to_value(&assignment).expect("json");
        for field in ["gameId", "matchId", "playerIds", "secret", "endsAt"] {
            assert!(value.get(field).is_some(), "missing {field}: {value}");
        }
        let node: NodeEntry = serde_json::from_value(json!({
            "node": "n", "driver": "process", "driverHealthy": true,
            "capacity": {"cpuMillicores": 1, "memoryMb": 1, "servers": 1},
            "used": {"cpuMillicores": 0, "memoryMb": 0, "servers": 0},
            "portRange": [1, 2], "portsUsed": 0, "heartbeatAt": 0, "startedAt": 0
        }))
        .expect("an older node entry");
        assert_eq!(node.warm, 0);
    }

    #[test]
    fn names_are_the_contracts() {
        assert_eq!(subjects::orchestrator_node_place("n1"), "orchestrator.node.n1.place");
        assert_eq!(subjects::orchestrator_node_release("n1"), "orchestrator.node.n1.release");
        assert_eq!(subjects::ticket_events("t1"), "events.ticket.t1");
        assert_eq!(subjects::harness_stats("h1"), "harness.stats.h1");
        assert_eq!(keys::ticket("t1"), "ticket:t1");
        assert_eq!(keys::match_record("m1"), "match:m1");
        assert_eq!(keys::queue(keys::DEFAULT_QUEUE_NAME), keys::QUEUE_DEFAULT);
        assert_eq!(keys::queue_seq(keys::DEFAULT_QUEUE_NAME), keys::QUEUE_DEFAULT_SEQ);
        assert_eq!(keys::leases(keys::DEFAULT_QUEUE_NAME), keys::LEASES_DEFAULT);
        assert_eq!(keys::player_rating("p"), "player:p:rating");
        assert!(subjects::EVENTS_MATCH_CREATED.starts_with("events."));
        for status in [
            TicketStatus::Searching,
            TicketStatus::Matched,
            TicketStatus::Cancelled,
            TicketStatus::Expired,
            TicketStatus::Failed,
        ] {
            assert_eq!(serde_json::to_value(status).expect("json"), status.as_str());
        }
    }
}

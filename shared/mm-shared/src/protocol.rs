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

    /// Micro service for the store's catalogue and purchases.
    pub const STORE_SERVICE: &str = "store";
    pub const STORE_OFFERS: &str = "store.offers";
    pub const STORE_PURCHASE: &str = "store.purchase";

    /// Micro service for accounts and session tokens.
    pub const SESSION_SERVICE: &str = "session";
    pub const SESSION_LOGIN: &str = "session.login";
    pub const SESSION_VERIFY: &str = "session.verify";
    pub const SESSION_LOGOUT: &str = "session.logout";

    /// Micro service that places game servers on nodes.
    pub const ORCHESTRATOR_SERVICE: &str = "orchestrator";
    pub const ORCHESTRATOR_ALLOCATE: &str = "orchestrator.allocate";

    /// A node's own placement endpoint: the allocator asks the chosen node here.
    pub fn orchestrator_node_place(node: &str) -> String {
        format!("orchestrator.node.{node}.place")
    }

    /// Published once per match, after its tickets are `matched`.
    pub const EVENTS_MATCH_CREATED: &str = "events.match.created";

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
}

/// JetStream KV buckets.
pub mod buckets {
    /// One key per live game server (key = game id), value [`super::ServerEntry`].
    pub const SERVERS: &str = "servers";
    /// One key per orchestrator node, value [`super::NodeEntry`].
    pub const NODES: &str = "nodes";
    /// One key per harness instance.
    pub const HARNESS: &str = "harness";
}

/// Redis keys (the seed project's names).
pub mod keys {
    /// The default queue: a list of ticket ids, oldest at the head.
    pub const QUEUE_DEFAULT: &str = "queue:default";

    /// A ticket's JSON.
    pub fn ticket(ticket_id: &str) -> String {
        format!("ticket:{ticket_id}")
    }

    /// A match's JSON.
    pub fn match_record(match_id: &str) -> String {
        format!("match:{match_id}")
    }
}

/// Players per match.
pub const MATCH_SIZE: usize = 10;

// ---------------------------------------------------------------------------------------
// Sessions

/// `session.login` request (and the body of `POST /login`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    /// The player id: any name the player picks; it is registered on first login.
    pub id: String,
    pub password: String,
}

/// `session.login` reply (and `POST /login`'s answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginReply {
    pub token: String,
    pub player_id: String,
}

/// `session.verify` / `session.logout` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub token: String,
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
pub struct ServerAssignment {
    /// WebSocket URL: the gateway's `/game/{gameId}/connect`.
    pub url: String,
    pub game_id: String,
}

/// `matchmaking.join` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequest {
    pub player_id: String,
}

/// `matchmaking.join` reply (and `POST /matchmaking/join`'s answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
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
}

/// `matchmaking.cancel` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelReply {
    pub status: TicketStatus,
}

/// A ticket as stored in Redis under `ticket:{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Ticket {
    /// What the ticket's player may see of it.
    pub fn view(&self) -> TicketView {
        TicketView {
            ticket_id: self.id.clone(),
            status: self.status,
            match_id: self.match_id.clone(),
            server: self.server.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// A formed match as stored in Redis under `match:{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchRecord {
    pub id: String,
    pub ticket_ids: Vec<String>,
    pub player_ids: Vec<String>,
    pub server: ServerAssignment,
    pub created_at: u64,
}

/// `events.match.created` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MatchCreated {
    pub match_id: String,
    pub game_id: String,
    pub server_url: String,
    pub player_ids: Vec<String>,
    pub ticket_ids: Vec<String>,
    pub created_at: u64,
}

// ---------------------------------------------------------------------------------------
// Store

/// One item of the store's catalogue (`store.offers` replies with a list of these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
pub struct PurchaseReply {
    #[serde(rename = "purchaseId")]
    pub purchase_id: String,
    pub offer_id: String,
    pub balance: u64,
}

// ---------------------------------------------------------------------------------------
// Orchestrator

/// `orchestrator.allocate` request: a game server for one match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocateRequest {
    pub match_id: String,
    pub player_ids: Vec<String>,
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
}

/// A game server's life, as the allocation runner drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    Pending,
    Starting,
    Ready,
    Running,
    Complete,
    Failed,
    Lost,
}

/// A live game server in KV bucket `servers` (key = game id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerEntry {
    pub game_id: String,
    pub match_id: String,
    pub node: String,
    pub state: ServerState,
    /// `host:port` the game server listens on.
    pub address: String,
    pub started_at: u64,
    #[serde(default)]
    pub player_ids: Vec<String>,
    /// `podman` or `process`.
    #[serde(default)]
    pub driver: String,
    /// Restarts after an early exit.
    #[serde(default)]
    pub restarts: u32,
}

/// Resources of a node: what it declares, or what is in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    pub cpu_millicores: u64,
    pub memory_mb: u64,
    pub servers: u64,
}

/// An orchestrator node in KV bucket `nodes` (key = node id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        };
        assert_eq!(
            serde_json::to_value(&matched).expect("json"),
            json!({"ticketId": "k", "status": "matched", "matchId": "m",
                   "server": {"url": "ws://g/game/x/connect", "gameId": "x"}})
        );

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
            player_ids: vec![],
            driver: "podman".into(),
            restarts: 0,
        };
        let value = serde_json::to_value(&entry).expect("json");
        for field in ["gameId", "matchId", "node", "state", "address", "startedAt"] {
            assert!(value.get(field).is_some(), "missing {field}: {value}");
        }
        assert_eq!(value["state"], "running");
    }

    #[test]
    fn names_are_the_contracts() {
        assert_eq!(subjects::orchestrator_node_place("n1"), "orchestrator.node.n1.place");
        assert_eq!(subjects::ticket_events("t1"), "events.ticket.t1");
        assert_eq!(subjects::harness_stats("h1"), "harness.stats.h1");
        assert_eq!(keys::ticket("t1"), "ticket:t1");
        assert_eq!(keys::match_record("m1"), "match:m1");
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

//! The matchmaker's configuration: `[matchmaker]`, `[matcher]`, `[session]`, `[store]`,
//! plus the shared `[nats]`, `[redis]` and `[log]` sections.

use std::net::SocketAddr;
use std::time::Duration;

use mm_shared::config::{LogConfig, NatsConfig, RedisConfig};
use mm_shared::protocol::{Offer, addresses, limits};
use mm_shared::service::ServiceConfig;
use serde::{Deserialize, Serialize};

/// Everything the matchmaker binary reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub matchmaker: MatchmakerSection,
    pub matcher: MatcherConfig,
    pub ratings: RatingsConfig,
    pub parties: PartiesConfig,
    pub session: SessionConfig,
    pub store: StoreConfig,
    pub nats: NatsConfig,
    pub redis: RedisConfig,
    pub log: LogConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

impl Config {
    /// Checks what the types cannot: relations between values. The message names the keys.
    pub fn validate(&self) -> Result<(), String> {
        self.matcher.validate()?;
        crate::queues::Queues::from_config(self)?;
        self.ratings.validate()?;
        if !(1..=limits::MAX_PARTY).contains(&self.parties.max_size) || self.parties.ttl.is_zero() {
            return Err(format!(
                "config keys `parties.max_size` (1 to {}) and `parties.ttl` (above zero)",
                limits::MAX_PARTY
            ));
        }
        self.store.validate()?;
        if self.matchmaker.ticket_ttl.is_zero() || self.matchmaker.ticket_retention.is_zero() {
            return Err(
                "config keys `matchmaker.ticket_ttl` and `matchmaker.ticket_retention` must be above zero"
                    .to_owned(),
            );
        }
        if self.session.ttl < Duration::from_secs(1) {
            return Err("config key `session.ttl` must be at least 1s".to_owned());
        }
        if self.session.account_ttl <= self.session.ttl {
            return Err(format!(
                "config key `session.account_ttl` ({}) must be longer than `session.ttl` ({}): \
                 a token must not outlive its account",
                mm_shared::duration::format(self.session.account_ttl),
                mm_shared::duration::format(self.session.ttl)
            ));
        }
        if self.session.max_accounts == 0 {
            return Err("config key `session.max_accounts` must be at least 1".to_owned());
        }
        if self.session.key_lifetime < Duration::from_secs(1) {
            return Err("config key `session.key_lifetime` must be at least 1s".to_owned());
        }
        if self.session.tokens_per_player == 0 {
            return Err("config key `session.tokens_per_player` must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// `[matchmaker]`: the process and its tickets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchmakerSection {
    /// Where `/metrics` and `/healthz` are served.
    pub admin_listen: SocketAddr,
    /// Requests each micro-service endpoint handles at once in this process.
    pub endpoint_concurrency: usize,
    /// A ticket still searching this long after it joined becomes `expired`.
    #[serde(with = "mm_shared::duration")]
    pub ticket_ttl: Duration,
    /// How long a ticket (and a match) stays readable after its last change.
    #[serde(with = "mm_shared::duration")]
    pub ticket_retention: Duration,
    /// The queues (`[[matchmaker.queues]]`); `default`, the seed's FIFO, must be one.
    /// A file that lists queues replaces this whole list.
    pub queues: Vec<QueueConfig>,
}

/// One `[[matchmaker.queues]]` entry.
///
/// ```toml
/// [[matchmaker.queues]]
/// name = "skill"
/// function = "skill"          # fifo | skill | latency
/// teams = 2                   # two sides balanced by rating, recorded as `teams`
/// team_size = 5
/// window = 1000               # tickets looked at per round
/// rating_window = { start = 100.0, per_second = 10.0, max = 800.0 }
/// max_ping = { start = 60.0, per_second = 2.0, max = 150.0 }   # optional for skill
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// The queue's name (`queue:<name>` in Redis): letters, digits, `-`, `_`.
    pub name: String,
    /// `fifo` (join order), `skill` (ratings) or `latency` (regions).
    #[serde(default)]
    pub function: FunctionKind,
    /// Teams per match: 2 (two sides balanced by rating, recorded in the match). Without
    /// it a match still plays two sides, but records no teams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<usize>,
    /// Players per team (with `teams`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_size: Option<usize>,
    /// Players per match without `teams` (even; default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_size: Option<usize>,
    /// Tickets from the queue's head a round looks at (fifo: the match size; else 1,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<usize>,
    /// `skill`: the rating spread allowed, widening with the oldest ticket's wait
    /// (default start 100, 10 a second, at most 800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rating_window: Option<crate::matcher::Widening>,
    /// The latency cap (ms) to the match's region, widening with the oldest ticket's
    /// wait: needed by `latency` (default start 60, 2 a second, at most 150), optional for
    /// `skill`. Tickets of such a queue must give latencies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ping: Option<crate::matcher::Widening>,
}

/// The match functions a queue can use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FunctionKind {
    #[default]
    Fifo,
    Skill,
    Latency,
}

impl FunctionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fifo => "fifo",
            Self::Skill => "skill",
            Self::Latency => "latency",
        }
    }
}

impl QueueConfig {
    /// The seed's queue: FIFO, matches of ten.
    pub fn seed_default() -> Self {
        Self {
            name: mm_shared::protocol::keys::DEFAULT_QUEUE_NAME.to_owned(),
            function: FunctionKind::Fifo,
            teams: None,
            team_size: None,
            match_size: None,
            window: None,
            rating_window: None,
            max_ping: None,
        }
    }

    /// The default `skill` queue: two teams of five balanced by rating.
    pub fn default_skill() -> Self {
        Self {
            name: "skill".to_owned(),
            function: FunctionKind::Skill,
            teams: Some(2),
            team_size: Some(5),
            window: Some(1000),
            ..Self::seed_default()
        }
    }
}

/// `[ratings]`: every player's rating, and how game results move it (Weng-Lin, the
/// Bradley-Terry "full pair" model of OpenSkill, on a 1500-centred scale).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RatingsConfig {
    /// A new player's rating.
    pub initial: f64,
    /// A new player's uncertainty (sigma): large, so the first games move a rating fast.
    pub uncertainty: f64,
    /// Skill-class width: the rating difference that makes one side about 2:1 favourite.
    pub beta: f64,
    /// How long a rated game is remembered, so its result is applied once.
    #[serde(with = "mm_shared::duration")]
    pub result_memory: Duration,
}

impl Default for RatingsConfig {
    fn default() -> Self {
        // OpenSkill's defaults (mu 25, sigma 25/3, beta 25/6), times 60.
        Self {
            initial: 1500.0,
            uncertainty: 500.0,
            beta: 250.0,
            result_memory: Duration::from_secs(24 * 3600),
        }
    }
}

impl RatingsConfig {
    fn validate(&self) -> Result<(), String> {
        let sane = |v: f64| v.is_finite() && v.abs() <= limits::MAX_RATING;
        let positive = |v: f64| v > 0.0 && sane(v);
        if !(sane(self.initial) && positive(self.uncertainty) && positive(self.beta)) {
            return Err(format!(
                "config keys `ratings.initial`, `ratings.uncertainty` and `ratings.beta`: numbers within \
                 ±{}, uncertainty and beta above zero",
                limits::MAX_RATING
            ));
        }
        if self.result_memory.is_zero() {
            return Err("config key `ratings.result_memory` must be above zero".to_owned());
        }
        Ok(())
    }
}

/// `[parties]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PartiesConfig {
    /// Members at most, the leader included (a queue also refuses a party bigger than its
    /// side).
    pub max_size: usize,
    /// A party nobody changes or queues for this long is gone.
    #[serde(with = "mm_shared::duration")]
    pub ttl: Duration,
}

impl Default for PartiesConfig {
    fn default() -> Self {
        Self { max_size: 5, ttl: Duration::from_secs(3600) }
    }
}

impl MatchmakerSection {
    pub fn tickets(&self) -> TicketSettings {
        TicketSettings { ttl: self.ticket_ttl, retention: self.ticket_retention }
    }
}

impl Default for MatchmakerSection {
    fn default() -> Self {
        Self {
            admin_listen: addresses::MATCHMAKER_ADMIN,
            endpoint_concurrency: 256,
            ticket_ttl: TicketSettings::default().ttl,
            ticket_retention: TicketSettings::default().retention,
            queues: vec![QueueConfig::seed_default(), QueueConfig::default_skill()],
        }
    }
}

/// How long tickets live (`matchmaker.ticket_ttl`, `matchmaker.ticket_retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketSettings {
    pub ttl: Duration,
    pub retention: Duration,
}

impl Default for TicketSettings {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(600), retention: Duration::from_secs(3600) }
    }
}

/// `[matcher]`: the workers that form matches and allocate their servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatcherConfig {
    /// Run the matcher in this process (the services run either way).
    pub enabled: bool,
    /// Loops popping batches from the queue in this process.
    pub workers: usize,
    /// Allocations this process waits for at once (across its workers).
    pub max_allocations: usize,
    /// Deadline of one `orchestrator.allocate` request.
    #[serde(with = "mm_shared::duration")]
    pub allocate_timeout: Duration,
    /// How long popped tickets belong to their matcher; after it, any matcher's reaper
    /// returns them to the queue. Must be longer than `allocate_timeout`.
    #[serde(with = "mm_shared::duration")]
    pub lease: Duration,
    /// Failed allocations a ticket survives; the next failure makes it `failed`.
    /// "No orchestrator answers" does not count: tickets wait for one instead.
    pub max_attempts: u32,
    /// Pause after the first failed allocation; it doubles per failure in a row.
    #[serde(with = "mm_shared::duration")]
    pub retry_backoff_min: Duration,
    #[serde(with = "mm_shared::duration")]
    pub retry_backoff_max: Duration,
    /// How often an idle worker looks at the queue when no join in this process woke it.
    #[serde(with = "mm_shared::duration")]
    pub idle_poll: Duration,
    /// How often expired leases and tickets are looked for, and queue gauges refreshed.
    #[serde(with = "mm_shared::duration")]
    pub reap_interval: Duration,
    /// Deadline of one `orchestrator.release` request (the server of a match that was
    /// not committed).
    #[serde(with = "mm_shared::duration")]
    pub release_timeout: Duration,
    /// Tries per release (timeouts and 5xx answers are tried again, with the same backoff
    /// as allocations); releases run in the background and never hold up the matcher.
    pub release_attempts: usize,
}

impl Default for MatcherConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            workers: 1,
            max_allocations: 64,
            allocate_timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            max_attempts: 5,
            retry_backoff_min: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(5),
            idle_poll: Duration::from_millis(100),
            reap_interval: Duration::from_secs(1),
            release_timeout: Duration::from_secs(2),
            release_attempts: 3,
        }
    }
}

impl MatcherConfig {
    fn validate(&self) -> Result<(), String> {
        if self.lease <= self.allocate_timeout {
            return Err(format!(
                "config key `matcher.lease` ({}) must be longer than `matcher.allocate_timeout` ({}), \
                 or tickets would be taken from a matcher still waiting for its allocation",
                mm_shared::duration::format(self.lease),
                mm_shared::duration::format(self.allocate_timeout)
            ));
        }
        if self.workers == 0 || self.max_allocations == 0 || self.max_attempts == 0 {
            return Err(
                "config keys `matcher.workers`, `matcher.max_allocations` and `matcher.max_attempts` \
                 must be at least 1"
                    .to_owned(),
            );
        }
        if self.retry_backoff_min > self.retry_backoff_max {
            return Err("config key `matcher.retry_backoff_min` must not exceed `matcher.retry_backoff_max`"
                .to_owned());
        }
        if self.idle_poll.is_zero() || self.reap_interval.is_zero() || self.release_timeout.is_zero() {
            return Err("config keys `matcher.idle_poll`, `matcher.reap_interval` and \
                        `matcher.release_timeout` must be above zero"
                .to_owned());
        }
        if self.release_attempts == 0 {
            return Err("config key `matcher.release_attempts` must be at least 1".to_owned());
        }
        Ok(())
    }

    /// The backoff after failed allocations, Redis errors and failed releases.
    pub fn backoff(&self) -> crate::retry::Backoff {
        crate::retry::Backoff::new(self.retry_backoff_min, self.retry_backoff_max)
    }

    /// How releases are sent.
    pub fn release(&self) -> crate::release::ReleaseSettings {
        crate::release::ReleaseSettings {
            timeout: self.release_timeout,
            attempts: self.release_attempts,
            backoff: self.backoff(),
        }
    }
}

/// `[session]`: accounts and login tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// A token works this long from its login (gateways check it themselves, so use does
    /// not lengthen it; a client logs in again).
    #[serde(with = "mm_shared::duration")]
    pub ttl: Duration,
    /// A signing key signs new tokens this long, then a new one does; a key is kept
    /// (published in KV `session_keys`) until the last token it signed has expired.
    #[serde(with = "mm_shared::duration")]
    pub key_lifetime: Duration,
    /// An account nobody logs into for this long is deleted (each login starts the
    /// period again); its id may then be registered afresh.
    #[serde(with = "mm_shared::duration")]
    pub account_ttl: Duration,
    /// Live accounts at most; past it, first logins are refused (503) and existing
    /// players still log in.
    pub max_accounts: u64,
    /// Live tokens one player may hold; a login past it ends the oldest.
    pub tokens_per_player: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            key_lifetime: Duration::from_secs(24 * 3600),
            account_ttl: Duration::from_secs(30 * 24 * 3600),
            max_accounts: DEFAULT_MAX_ACCOUNTS,
            // One client, and a second logging in before the first one's session ends.
            tokens_per_player: 2,
        }
    }
}

/// Default `session.max_accounts`. At its worst (an id of 64 characters, holding its
/// `tokens_per_player` live tokens) an account costs about 1,000 bytes by `MEMORY USAGE`
/// (account key ~440 with its token list, index entry ~170, each token ~200) and 1,220 of
/// `used_memory` with Redis's hash tables, as the `services` test
/// `a_full_account_table_fits_its_memory_budget` measures. So a full table, every account
/// holding every token, is ~92 MB: within half of the 200 MB `maxmemory` recommended for
/// the backend's Redis, which leaves the rest to tickets, matches and the store. Stale
/// accounts (tokens expired) cost ~700 bytes: ~52 MB.
pub const DEFAULT_MAX_ACCOUNTS: u64 = 75_000;

/// `[store]`: the catalogue and the players' money.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// What a player's balance is before their first purchase.
    pub starting_balance: u64,
    /// How long a purchase made with an idempotency key can be replayed with it.
    #[serde(with = "mm_shared::duration")]
    pub idempotency_ttl: Duration,
    /// Purchases kept per player in `player:{id}:purchases`.
    pub history: u32,
    /// The catalogue (`[[store.offers]]` with `id`, `name`, `price`).
    pub offers: Vec<Offer>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let offer = |id: &str, name: &str, price| Offer { id: id.to_owned(), name: name.to_owned(), price };
        Self {
            starting_balance: 5000,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            history: 100,
            offers: vec![
                offer("skin-vandal-prime", "Prime Vandal", 1775),
                offer("skin-phantom-oni", "Oni Phantom", 1775),
                offer("player-card-dawn", "Dawn Player Card", 375),
                offer("spray-gg", "GG Spray", 325),
                offer("battle-pass", "Battle Pass", 1000),
            ],
        }
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for offer in &self.offers {
            limits::check_id("offer id", &offer.id)
                .map_err(|err| format!("config key `store.offers`: {err}"))?;
            if !seen.insert(offer.id.as_str()) {
                return Err(format!("config key `store.offers`: offer id `{}` appears twice", offer.id));
            }
            // The purchase script's JSON writes at most 14 digits exactly: see MAX_AMOUNT.
            if offer.price > MAX_AMOUNT {
                return Err(format!(
                    "config key `store.offers`: price of `{}` is over {MAX_AMOUNT}",
                    offer.id
                ));
            }
        }
        if self.starting_balance > MAX_AMOUNT {
            return Err(format!("config key `store.starting_balance` is over {MAX_AMOUNT}"));
        }
        Ok(())
    }
}

/// Largest price or balance: 10^14 - 1, the largest integer of at most 14 digits.
///
/// The purchase script keeps amounts in Lua numbers (doubles, exact up to 2^53), but
/// Redis's `cjson.encode` writes numbers with only 14 significant digits: from 10^14 on a
/// balance comes out as `1e+14`-style text that no longer reads as a `u64`, after the
/// player was already charged. Below 10^14 every amount is written exactly.
pub const MAX_AMOUNT: u64 = 99_999_999_999_999;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_relations_are_checked() {
        Config::default().validate().expect("defaults are valid");

        let mut config = Config::default();
        config.matcher.lease = config.matcher.allocate_timeout;
        assert!(config.validate().expect_err("lease too short").contains("matcher.lease"));

        let mut config = Config::default();
        config.matcher.release_attempts = 0;
        assert!(config.validate().expect_err("no release tries").contains("`matcher.release_attempts`"));
        let mut config = Config::default();
        config.matcher.release_timeout = Duration::ZERO;
        assert!(config.validate().expect_err("no release deadline").contains("`matcher.release_timeout`"));

        let mut config = Config::default();
        config.store.offers.push(config.store.offers[0].clone());
        assert!(config.validate().expect_err("duplicate").contains("appears twice"));

        let mut config = Config::default();
        config.session.account_ttl = config.session.ttl;
        assert!(config.validate().expect_err("short account ttl").contains("`session.account_ttl`"));
        let mut config = Config::default();
        config.session.max_accounts = 0;
        assert!(config.validate().expect_err("no accounts").contains("`session.max_accounts`"));
        let mut config = Config::default();
        config.session.tokens_per_player = 0;
        assert!(config.validate().expect_err("no tokens").contains("`session.tokens_per_player`"));
    }

    #[test]
    fn ticket_keys_live_in_the_matchmaker_section() {
        let config: MatchmakerSection =
            toml::from_str("ticket_ttl = \"5m\"\nticket_retention = \"10m\"").expect("parses");
        assert_eq!(config.tickets().ttl, Duration::from_secs(300));
        assert_eq!(config.tickets().retention, Duration::from_secs(600));
    }
}

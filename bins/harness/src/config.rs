//! `[harness]` and its sub-tables: how many players, what they do and how often.
//!
//! ```toml
//! [harness]
//! players = 1000
//! duration = "60s"
//! gateway = "http://127.0.0.1:8080"
//!
//! [harness.rates]              # executions per idle player per second, or "N/<duration>"
//! matchmaking = "1/300s"
//! fetch_store = "1/2700s"
//! logout = "1/1800s"
//!
//! [harness.follow_ups.fetch_store]   # chance that one scenario is followed by another
//! store_purchase = 0.1
//! ```
//!
//! Values are checked while the file is read (a negative rate or a chance above 1 fails
//! with the key's name), and the relations between them by [`HarnessSection::validate`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mm_shared::config::{LogConfig, NatsConfig};
use mm_shared::protocol::{HARNESS_MAX_RATE, addresses, limits};
use mm_shared::service::ServiceConfig;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::scenario::{SCENARIOS, Scenario};

/// Everything the harness binary reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub harness: HarnessSection,
    pub nats: NatsConfig,
    pub log: LogConfig,
}

impl ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// `[harness]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HarnessSection {
    /// Where `/metrics` and `/healthz` are served.
    pub admin_listen: SocketAddr,
    /// Players to keep alive, unless a fleet target divides one among the instances.
    pub players: u64,
    /// How long the run lasts (at most a year).
    #[serde(with = "mm_shared::duration")]
    pub duration: Duration,
    /// Gateway base URL (`http://host:port`).
    pub gateway: String,
    /// Where the JSON report goes (none: not written).
    pub report: Option<PathBuf>,
    /// Where the HTML report with charts goes (none: not written).
    pub report_html: Option<PathBuf>,
    /// This instance's id in the fleet (default: `<host>-<pid>-<random>`). Letters,
    /// digits, `-` and `_` only.
    pub instance: Option<String>,
    /// Run without NATS: no fleet membership, control or stats publishing.
    pub standalone: bool,
    /// Password every simulated player logs in with.
    pub password: String,
    /// At most one new player per this interval, so start-up is no thundering herd.
    #[serde(with = "mm_shared::duration")]
    pub spawn_interval: Duration,
    /// The compositor's tick.
    #[serde(with = "mm_shared::duration")]
    pub tick: Duration,
    /// At the end of the run, how long scenarios still running may take to finish
    /// before they are cut short (at most 1h). Give it a game's length to let the
    /// games that started near the end finish.
    #[serde(with = "mm_shared::duration")]
    pub drain: Duration,
    /// Fail the run (exit 1) when failed / finished scenarios exceeds this (0.0..=1.0).
    pub max_error_rate: Option<f64>,
    /// Fail the run (exit 1) when time-to-match p99 exceeds this.
    #[serde(default, with = "optional_duration", skip_serializing_if = "Option::is_none")]
    pub max_time_to_match_p99: Option<Duration>,
    /// Show the live progress line: `auto` (when stderr is a terminal), `always`, `never`.
    pub progress: Progress,
    /// Print the summary table on stdout at the end (`mmctl demo` prints it itself).
    pub print_table: bool,
    /// Also write the summary table to this file (text), as `mmctl demo` reads it.
    pub report_table: Option<PathBuf>,
    pub rates: Rates,
    /// Scenario → scenario that may follow it → chance (0.0..=1.0).
    pub follow_ups: BTreeMap<Scenario, BTreeMap<Scenario, Chance>>,
    pub think: ThinkSection,
    pub login: LoginSection,
    pub http: HttpSection,
    pub matchmaking: MatchmakingSection,
    pub in_game: InGameSection,
    pub fleet: FleetSection,
    pub population: PopulationSection,
    /// A plan of stages (`[[harness.stages]]`: duration, players, optional rates): the
    /// target ramps from stage to stage and the run lasts their total (`stages.rs`).
    pub stages: Vec<crate::stages::Stage>,
}

impl Default for HarnessSection {
    fn default() -> Self {
        let follow_ups = BTreeMap::from([
            (Scenario::Matchmaking, BTreeMap::from([(Scenario::InGame, Chance(1.0))])),
            (Scenario::FetchStore, BTreeMap::from([(Scenario::StorePurchase, Chance(0.1))])),
        ]);
        Self {
            admin_listen: addresses::HARNESS_ADMIN,
            players: 1000,
            duration: Duration::from_secs(60),
            gateway: "http://127.0.0.1:8080".to_owned(),
            report: None,
            report_html: None,
            instance: None,
            standalone: false,
            password: "harness".to_owned(),
            spawn_interval: Duration::from_millis(2),
            tick: Duration::from_millis(100),
            drain: Duration::from_secs(2),
            max_error_rate: None,
            max_time_to_match_p99: None,
            progress: Progress::Auto,
            print_table: true,
            report_table: None,
            rates: Rates::default(),
            follow_ups,
            think: ThinkSection::default(),
            login: LoginSection::default(),
            http: HttpSection::default(),
            matchmaking: MatchmakingSection::default(),
            in_game: InGameSection::default(),
            fleet: FleetSection::default(),
            population: PopulationSection::default(),
            stages: Vec::new(),
        }
    }
}

/// When the live progress line is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Progress {
    #[default]
    Auto,
    Always,
    Never,
}

/// `[harness.rates]`: executions per idle player per second, per scenario.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rates {
    pub login: Rate,
    pub matchmaking: Rate,
    pub in_game: Rate,
    pub fetch_store: Rate,
    pub store_purchase: Rate,
    pub logout: Rate,
}

impl Default for Rates {
    /// The seed's: a player queues every 5 minutes, shops every 45, leaves after 30.
    fn default() -> Self {
        Self {
            login: Rate::ZERO,
            matchmaking: Rate::one_per(Duration::from_secs(300)),
            in_game: Rate::ZERO,
            fetch_store: Rate::one_per(Duration::from_secs(2700)),
            store_purchase: Rate::ZERO,
            logout: Rate::one_per(Duration::from_secs(1800)),
        }
    }
}

impl Rates {
    /// The rates as an array indexed by [`Scenario::index`].
    pub fn to_array(self) -> [Rate; SCENARIOS] {
        [self.login, self.matchmaking, self.in_game, self.fetch_store, self.store_purchase, self.logout]
    }
}

/// Executions per idle player per second, kept as an exact fraction:
/// `nanos` billionths of an execution every `period_ns` nanoseconds.
///
/// `"1/300s"` is exactly one execution per 300 s (no float rounding), so the compositor's
/// counts over many ticks come out exact; a plain number is per second with nine decimals.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    nanos: u64,
    period_ns: u64,
}

const NANOS_PER_EXECUTION: u64 = 1_000_000_000;

impl Rate {
    pub const ZERO: Rate = Rate { nanos: 0, period_ns: 1_000_000_000 };

    /// One execution per `period`.
    pub fn one_per(period: Duration) -> Rate {
        Rate { nanos: NANOS_PER_EXECUTION, period_ns: duration_ns(period).max(1) }
    }

    /// `per_second` executions per second (nine decimals kept). `None` when negative,
    /// not a number, or absurdly large.
    pub fn per_second(per_second: f64) -> Option<Rate> {
        Self::count_per(per_second, Duration::from_secs(1))
    }

    /// `count` executions per `period`.
    pub fn count_per(count: f64, period: Duration) -> Option<Rate> {
        let nanos = count * NANOS_PER_EXECUTION as f64;
        let period_ns = duration_ns(period);
        // NaN fails `contains` too. A million executions per period and player is plenty
        // (the same bound `HarnessControl::check` puts on a per-second rate).
        if !(0.0..=HARNESS_MAX_RATE).contains(&count) || period_ns == 0 {
            return None;
        }
        Some(Rate { nanos: nanos.round() as u64, period_ns })
    }

    /// Executions per idle player per second, as a float (for display and metrics).
    pub fn as_per_second(self) -> f64 {
        self.nanos as f64 / self.period_ns as f64
    }

    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }

    /// Numerator of the exact fraction, in billionths of an execution.
    pub(crate) fn nanos(self) -> u64 {
        self.nanos
    }

    /// Denominator of the exact fraction, in nanoseconds.
    pub(crate) fn period_ns(self) -> u64 {
        self.period_ns
    }
}

fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.period_ns == 1_000_000_000 {
            write!(f, "{}", self.as_per_second())
        } else {
            let count = self.nanos as f64 / NANOS_PER_EXECUTION as f64;
            write!(f, "{count}/{}", mm_shared::duration::format(Duration::from_nanos(self.period_ns)))
        }
    }
}

/// Parses `0.5` (per second), `1/300s`, `2/5m` or `1/s` (the forms of
/// [`mm_shared::rate::split`]), kept as an exact fraction.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    mm_shared::rate::split(text).and_then(|(count, period)| Rate::count_per(count, period)).ok_or_else(|| {
        format!(
            "invalid rate `{}`: expected executions per idle player per second (0.01) or a \
             count per duration (\"1/300s\"), not negative",
            text.trim()
        )
    })
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.period_ns == 1_000_000_000 {
            serializer.serialize_f64(self.as_per_second())
        } else {
            serializer.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Rate, D::Error> {
        struct RateVisitor;

        impl Visitor<'_> for RateVisitor {
            type Value = Rate;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate: executions per idle player per second (0.01) or \"1/300s\"")
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Rate, E> {
                Rate::per_second(value)
                    .ok_or_else(|| E::custom(format!("invalid rate {value}: must be a number of at least 0")))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Rate, E> {
                self.visit_f64(value as f64)
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Rate, E> {
                self.visit_f64(value as f64)
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Rate, E> {
                parse_rate(value).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(RateVisitor)
    }
}

/// A probability, 0.0 to 1.0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Chance(pub f64);

impl<'de> Deserialize<'de> for Chance {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Chance, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if (0.0..=1.0).contains(&value) {
            Ok(Chance(value))
        } else {
            Err(de::Error::custom(format!("invalid chance {value}: must be between 0 and 1")))
        }
    }
}

/// `[harness.think]`: a player's pause between steps, uniform in `[min, max]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThinkSection {
    #[serde(with = "mm_shared::duration")]
    pub min: Duration,
    #[serde(with = "mm_shared::duration")]
    pub max: Duration,
}

impl Default for ThinkSection {
    fn default() -> Self {
        Self { min: Duration::from_millis(200), max: Duration::from_secs(2) }
    }
}

/// `[harness.login]`: how a player whose login fails tries again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoginSection {
    /// First pause after a failed login; doubles after each failure.
    #[serde(with = "mm_shared::duration")]
    pub retry_min: Duration,
    /// Longest pause between login attempts.
    #[serde(with = "mm_shared::duration")]
    pub retry_max: Duration,
}

impl Default for LoginSection {
    fn default() -> Self {
        Self { retry_min: Duration::from_secs(1), retry_max: Duration::from_secs(30) }
    }
}

/// `[harness.http]`: the one HTTP client every player shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Deadline of one request, answer and body included (a long poll adds its wait).
    #[serde(with = "mm_shared::duration")]
    pub timeout: Duration,
    /// Deadline of one TCP connect.
    #[serde(with = "mm_shared::duration")]
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub pool_max_idle: usize,
    /// How long an unused keep-alive connection is kept.
    #[serde(with = "mm_shared::duration")]
    pub pool_idle_timeout: Duration,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            pool_max_idle: 1024,
            pool_idle_timeout: Duration::from_secs(30),
        }
    }
}

/// `[harness.matchmaking]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchmakingSection {
    /// Give up (and cancel the ticket) when not matched within this.
    #[serde(with = "mm_shared::duration")]
    pub timeout: Duration,
    /// How long each status long-poll may wait (`waitMs`); at most 60s.
    #[serde(with = "mm_shared::duration")]
    pub poll_wait: Duration,
    /// Least time between two status requests, in case the gateway answers at once.
    #[serde(with = "mm_shared::duration")]
    pub poll_interval: Duration,
}

impl Default for MatchmakingSection {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(120),
            poll_wait: Duration::from_secs(20),
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// `[harness.in_game]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InGameSection {
    /// Deadline of the WebSocket handshake.
    #[serde(with = "mm_shared::duration")]
    pub connect_timeout: Duration,
    /// Pause between two messages to the game server.
    #[serde(with = "mm_shared::duration")]
    pub message_interval: Duration,
    /// Deadline of each echo.
    #[serde(with = "mm_shared::duration")]
    pub echo_timeout: Duration,
    /// A game still going after this is a failure (`game_too_long`).
    #[serde(with = "mm_shared::duration")]
    pub max_duration: Duration,
}

impl Default for InGameSection {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            message_interval: Duration::from_secs(1),
            echo_timeout: Duration::from_secs(5),
            max_duration: Duration::from_secs(600),
        }
    }
}

/// `[harness.fleet]`: membership in the NATS fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetSection {
    /// How often the instance refreshes its entry in the `harness` bucket.
    #[serde(with = "mm_shared::duration")]
    pub heartbeat: Duration,
    /// An instance not heard from for this long is gone: its share is given to the others.
    #[serde(with = "mm_shared::duration")]
    pub stale_after: Duration,
    /// How often stats go out on `harness.stats.<instance>`.
    #[serde(with = "mm_shared::duration")]
    pub stats_interval: Duration,
}

impl Default for FleetSection {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            stale_after: Duration::from_secs(5),
            stats_interval: Duration::from_secs(1),
        }
    }
}

/// `[harness.population]`: who the simulated players are, hidden from the backend.
///
/// ```toml
/// [harness.population]
/// seed = 1
/// [[harness.population.skill]]       # true skill: clusters of players
/// share = 0.5
/// mean = 1000.0
/// sd = 100.0
/// [[harness.population.regions]]     # where players live, and their ping to each region
/// name = "eu"
/// share = 0.6
/// latency_ms = { eu = 20.0, us = 110.0 }
/// jitter_ms = 10.0
/// [harness.population.parties]       # party size → share of matchmaking attempts
/// 1 = 0.7
/// 2 = 0.2
/// 5 = 0.1
/// [harness.population.queues]        # queue → share of matchmaking attempts
/// default = 0.5
/// skill = 0.5
/// ```
///
/// A player's traits (true skill, home region) follow from the seed and the player's id
/// alone, so the same id is the same player in every run and on every instance. The
/// defaults are the seed project's players: no latencies, alone, in `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PopulationSection {
    pub seed: u64,
    /// True-skill clusters (each a normal distribution over its share of players).
    pub skill: Vec<SkillCluster>,
    /// Regions players live in; none: they give no latencies.
    pub regions: Vec<RegionModel>,
    /// Party size ("1" to "10") → share of matchmaking attempts.
    pub parties: BTreeMap<String, f64>,
    /// Queue → share of matchmaking attempts.
    pub queues: BTreeMap<String, f64>,
}

impl Default for PopulationSection {
    fn default() -> Self {
        Self {
            seed: 1,
            skill: vec![SkillCluster { share: 1.0, mean: 1500.0, sd: 300.0 }],
            regions: Vec::new(),
            parties: BTreeMap::from([("1".to_owned(), 1.0)]),
            queues: BTreeMap::from([(mm_shared::protocol::keys::DEFAULT_QUEUE_NAME.to_owned(), 1.0)]),
        }
    }
}

/// One cluster of true skill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkillCluster {
    pub share: f64,
    pub mean: f64,
    pub sd: f64,
}

/// One region players live in, and their round-trip time to every region from there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionModel {
    pub name: String,
    pub share: f64,
    /// Region → base round trip in ms (a region not listed is not reported).
    pub latency_ms: BTreeMap<String, f64>,
    /// Up to this much is added at random to each latency of each join.
    #[serde(default)]
    pub jitter_ms: f64,
}

impl PopulationSection {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut shares = |key: &str, values: &mut dyn Iterator<Item = f64>| {
            let values: Vec<f64> = values.collect();
            if values.iter().any(|v| !v.is_finite() || *v < 0.0) || values.iter().sum::<f64>() <= 0.0 {
                problems.push(format!(
                    "  config key `harness.population.{key}`: shares must be numbers of at least 0, not all 0"
                ));
            }
        };
        shares("skill", &mut self.skill.iter().map(|c| c.share));
        shares("parties", &mut self.parties.values().copied());
        shares("queues", &mut self.queues.values().copied());
        if !self.regions.is_empty() {
            shares("regions", &mut self.regions.iter().map(|r| r.share));
        }
        if self.skill.iter().any(|c| !c.mean.is_finite() || !c.sd.is_finite() || c.sd < 0.0) {
            problems.push(
                "  config key `harness.population.skill`: mean and sd must be numbers, sd at least 0"
                    .to_owned(),
            );
        }
        for size in self.parties.keys() {
            if !size.parse::<usize>().is_ok_and(|size| (1..=limits::MAX_PARTY).contains(&size)) {
                problems.push(format!(
                    "  config key `harness.population.parties`: `{size}` is not a party size from 1 to {}",
                    limits::MAX_PARTY
                ));
            }
        }
        for queue in self.queues.keys() {
            if let Err(reason) = limits::check_token("queue", queue) {
                problems.push(format!("  config key `harness.population.queues`: {reason}"));
            }
        }
        for region in &self.regions {
            let latencies: BTreeMap<String, f64> = region
                .latency_ms
                .iter()
                .map(|(name, ms)| (name.clone(), ms + region.jitter_ms.max(0.0)))
                .collect();
            if let Err(reason) =
                limits::check_token("region", &region.name).and_then(|()| limits::check_latencies(&latencies))
            {
                problems
                    .push(format!("  config key `harness.population.regions` ({}): {reason}", region.name));
            }
            if !region.jitter_ms.is_finite() || region.jitter_ms < 0.0 {
                problems.push(format!(
                    "  config key `harness.population.regions` ({}): jitter_ms must be at least 0",
                    region.name
                ));
            }
        }
        problems
    }
}

/// `Option<Duration>` in the human form.
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => mm_shared::duration::serialize(duration, serializer),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrapped(#[serde(with = "mm_shared::duration")] Duration);
        Ok(Some(Wrapped::deserialize(deserializer)?.0))
    }
}

/// Longest run (`harness.duration`): a year. Far beyond any real run, and far from the
/// overflow of a clock instant.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest `harness.drain`.
pub const MAX_DRAIN: Duration = Duration::from_secs(3600);
/// Longest `harness.matchmaking.poll_wait`: the top of the HTTP histogram buckets
/// (`mm_shared::telemetry::buckets::HTTP`), so a long poll never lands in `+Inf`.
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(60);

/// A relation between config values that does not hold; names the keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n{}", problems.join("\n"))]
pub struct ValidationError {
    pub problems: Vec<String>,
}

impl HarnessSection {
    /// Checks what single values cannot: orderings, non-zero intervals, the URL.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut problems = Vec::new();
        let mut positive = |key: &str, value: Duration| {
            if value.is_zero() {
                problems.push(format!("  config key `harness.{key}`: must be more than 0"));
            }
        };
        positive("spawn_interval", self.spawn_interval);
        positive("tick", self.tick);
        positive("http.timeout", self.http.timeout);
        positive("http.connect_timeout", self.http.connect_timeout);
        positive("matchmaking.timeout", self.matchmaking.timeout);
        positive("in_game.message_interval", self.in_game.message_interval);
        positive("in_game.echo_timeout", self.in_game.echo_timeout);
        positive("fleet.heartbeat", self.fleet.heartbeat);
        positive("fleet.stats_interval", self.fleet.stats_interval);
        let mut at_most = |key: &str, value: Duration, max: Duration| {
            if value > max {
                problems.push(format!(
                    "  config key `harness.{key}`: {} is more than the most allowed, {}",
                    mm_shared::duration::format(value),
                    mm_shared::duration::format(max)
                ));
            }
        };
        at_most("duration", self.duration, MAX_DURATION);
        at_most("stages (their total duration)", crate::stages::total(&self.stages), MAX_DURATION);
        at_most("drain", self.drain, MAX_DRAIN);
        at_most("matchmaking.poll_wait", self.matchmaking.poll_wait, MAX_POLL_WAIT);
        if self.tick > Duration::from_secs(10) {
            problems.push("  config key `harness.tick`: at most 10s (rates need frequent ticks)".to_owned());
        }
        for (index, stage) in self.stages.iter().enumerate() {
            if stage.duration.is_zero() {
                problems
                    .push(format!("  config key `harness.stages[{index}].duration`: must be more than 0"));
            }
        }
        if self.think.min > self.think.max {
            problems.push(format!(
                "  config key `harness.think.min` ({}) is more than `harness.think.max` ({})",
                mm_shared::duration::format(self.think.min),
                mm_shared::duration::format(self.think.max)
            ));
        }
        if self.login.retry_min > self.login.retry_max || self.login.retry_min.is_zero() {
            problems.push(
                "  config key `harness.login.retry_min`: must be more than 0 and at most \
                 `harness.login.retry_max`"
                    .to_owned(),
            );
        }
        if self.fleet.stale_after <= self.fleet.heartbeat {
            problems.push(
                "  config key `harness.fleet.stale_after`: must be longer than `harness.fleet.heartbeat`"
                    .to_owned(),
            );
        }
        if let Some(rate) = self.max_error_rate
            && !(0.0..=1.0).contains(&rate)
        {
            problems.push(format!("  config key `harness.max_error_rate`: {rate} is not between 0 and 1"));
        }
        if let Err(reason) = crate::http::GatewayUrl::parse(&self.gateway) {
            problems.push(format!("  config key `harness.gateway`: {reason}"));
        }
        if let Some(instance) = &self.instance
            && let Err(reason) = limits::check_token("instance id", instance)
        {
            problems.push(format!(
                "  config key `harness.instance`: {reason} (1-64 letters, digits, `-` or `_`)"
            ));
        }
        problems.extend(self.population.problems());
        if problems.is_empty() { Ok(()) } else { Err(ValidationError { problems }) }
    }

    /// How long the run lasts: the stages' total when there is a plan, else `duration`.
    pub fn run_duration(&self) -> Duration {
        if self.stages.is_empty() { self.duration } else { crate::stages::total(&self.stages) }
    }

    /// The instance's own target and rates at the start (the plan's start, if any).
    pub fn start_point(&self) -> (u64, [Rate; crate::scenario::SCENARIOS]) {
        match crate::stages::point(&self.stages, self.rates, Duration::ZERO) {
            Some(point) => (point.target, point.rates),
            None => (self.players, self.rates.to_array()),
        }
    }

    /// Follow-ups of `scenario`, as (next, chance) pairs.
    pub fn follow_ups_of(&self, scenario: Scenario) -> Vec<(Scenario, f64)> {
        self.follow_ups
            .get(&scenario)
            .map(|next| next.iter().map(|(next, chance)| (*next, chance.0)).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<Config, String> {
        let figment = figment::Figment::from(figment::providers::Serialized::defaults(Config::default()))
            .merge(<figment::providers::Toml as figment::providers::Format>::string(toml));
        mm_shared::config::extract::<Config>(figment).map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_are_the_seeds_and_valid() {
        let config = load("").expect("defaults load");
        config.harness.validate().expect("defaults are valid");
        let rates = config.harness.rates.to_array();
        assert_eq!(rates[Scenario::Matchmaking.index()], Rate::one_per(Duration::from_secs(300)));
        assert_eq!(rates[Scenario::FetchStore.index()], Rate::one_per(Duration::from_secs(2700)));
        assert_eq!(rates[Scenario::Logout.index()], Rate::one_per(Duration::from_secs(1800)));
        assert_eq!(config.harness.follow_ups_of(Scenario::Matchmaking), vec![(Scenario::InGame, 1.0)]);
        assert_eq!(config.harness.follow_ups_of(Scenario::FetchStore), vec![(Scenario::StorePurchase, 0.1)]);
    }

    #[test]
    fn rates_read_numbers_and_fractions() {
        let config = load(
            "[harness.rates]\nmatchmaking = 0.25\nfetch_store = \"2/1m\"\nlogout = 1\nlogin = \"1/s\"\n",
        )
        .expect("loads");
        let rates = config.harness.rates;
        assert_eq!(rates.matchmaking.as_per_second(), 0.25);
        assert_eq!(rates.fetch_store, Rate::count_per(2.0, Duration::from_secs(60)).expect("rate"));
        assert_eq!(rates.logout.as_per_second(), 1.0);
        assert_eq!(rates.login.as_per_second(), 1.0);
        // What --print-config writes reads back the same.
        let text = toml::to_string(&config).expect("serializes");
        let again = load(&text).expect("round trip");
        assert_eq!(again.harness.rates, rates);
    }

    #[test]
    fn a_negative_rate_names_its_key() {
        let message = load("[harness.rates]\nmatchmaking = -0.5\n").expect_err("negative").to_string();
        assert!(message.contains("`harness.rates.matchmaking`"), "{message}");
        assert!(message.contains("invalid rate"), "{message}");
        let message = load("[harness.rates]\nlogout = \"-1/5m\"\n").expect_err("negative").to_string();
        assert!(message.contains("`harness.rates.logout`"), "{message}");
        let message = load("[harness.rates]\ndance = 1\n").expect_err("unknown").to_string();
        assert!(message.contains("dance"), "{message}");
    }

    #[test]
    fn chances_and_follow_ups_are_checked() {
        let config =
            load("[harness.follow_ups.fetch_store]\nstore_purchase = 0.5\n").expect("override one chance");
        assert_eq!(config.harness.follow_ups_of(Scenario::FetchStore), vec![(Scenario::StorePurchase, 0.5)]);
        assert_eq!(config.harness.follow_ups_of(Scenario::Matchmaking), vec![(Scenario::InGame, 1.0)]);
        let message = load("[harness.follow_ups.fetch_store]\nstore_purchase = 1.5\n")
            .expect_err("chance > 1")
            .to_string();
        assert!(message.contains("`harness.follow_ups.fetch_store.store_purchase`"), "{message}");
        let message = load("[harness.follow_ups.shopping]\nlogout = 0.5\n").expect_err("unknown").to_string();
        assert!(message.contains("shopping"), "{message}");
    }

    #[test]
    fn relations_between_values_are_validated() {
        let config = load(
            "[harness]\ngateway = \"ftp://x\"\ninstance = \"a.b\"\nmax_error_rate = 2.0\n\
             [harness.think]\nmin = \"5s\"\nmax = \"1s\"\n[harness.fleet]\nheartbeat = \"5s\"\nstale_after = \"2s\"\n",
        )
        .expect("each value is fine alone");
        let problems = config.harness.validate().expect_err("relations fail").to_string();
        for key in [
            "harness.gateway",
            "harness.instance",
            "harness.max_error_rate",
            "harness.think.min",
            "harness.fleet.stale_after",
        ] {
            assert!(problems.contains(&format!("`{key}`")), "{key} missing in:\n{problems}");
        }
    }

    #[test]
    fn durations_that_would_overflow_a_clock_are_refused() {
        let config = load("[harness]\nduration = \"3000000000000000h\"\ndrain = \"3000000000000000h\"\n")
            .expect("each value parses");
        let problems = config.harness.validate().expect_err("too long").to_string();
        for key in ["harness.duration", "harness.drain"] {
            assert!(problems.contains(&format!("`{key}`")), "{key} missing in:\n{problems}");
        }
        let config = load("[harness]\nduration = \"8760h\"\ndrain = \"1h\"\n").expect("loads");
        config.harness.validate().expect("a year's run and an hour's drain are fine");
    }

    #[test]
    fn a_long_poll_fits_the_http_histogram() {
        let top = mm_shared::telemetry::buckets::HTTP.last().copied().unwrap_or_default();
        assert!(MAX_POLL_WAIT.as_secs_f64() <= top, "poll_wait may exceed the top bucket {top}");
        let config = load("[harness.matchmaking]\npoll_wait = \"2m\"\n").expect("loads");
        let problems = config.harness.validate().expect_err("too long").to_string();
        assert!(problems.contains("`harness.matchmaking.poll_wait`"), "{problems}");
    }

    #[test]
    fn the_population_reads_and_is_checked() {
        let config = load(
            "[harness.population]\nseed = 7\n[[harness.population.skill]]\nshare = 1\nmean = 1000.0\nsd = 50.0\n\
             [[harness.population.regions]]\nname = \"eu\"\nshare = 1\nlatency_ms = { eu = 20.0, us = 120.0 }\n\
             [harness.population.parties]\n1 = 0.7\n3 = 0.3\n[harness.population.queues]\nskill = 1.0\n",
        )
        .expect("loads");
        config.harness.validate().expect("valid");
        assert_eq!(config.harness.population.parties["3"], 0.3);
        let bad =
            load("[harness.population.parties]\n11 = 1.0\n[harness.population.queues]\n\"a.b\" = 1.0\n")
                .expect("each value parses");
        let problems = bad.harness.validate().expect_err("invalid").to_string();
        assert!(problems.contains("party size"), "{problems}");
        assert!(problems.contains("`harness.population.queues`"), "{problems}");
        let far =
            load("[[harness.population.regions]]\nname = \"eu\"\nshare = 1\nlatency_ms = { eu = -3.0 }\n")
                .expect("parses");
        assert!(far.harness.validate().is_err());
    }

    #[test]
    fn parse_rate_forms() {
        assert_eq!(parse_rate("1/300s"), Ok(Rate::one_per(Duration::from_secs(300))));
        assert_eq!(parse_rate("1/5m"), Ok(Rate::one_per(Duration::from_secs(300))));
        assert_eq!(parse_rate("0"), Ok(Rate::ZERO));
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("1/0s").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("often").is_err());
        assert_eq!(Rate::one_per(Duration::from_secs(300)).to_string(), "1/5m");
    }
}

//! Player ratings, and how game results move them.
//!
//! **The model** is Weng-Lin (the Bradley-Terry "full pair" model behind OpenSkill), from
//! the `skillratings` crate, on a 1500-centred scale (OpenSkill's defaults times 60):
//! - it rates *teams* natively (a team is the sum of its players), which Elo and
//!   Glicko-2 do not (they would need every game split into made-up duels);
//! - every player has a rating *and* an uncertainty: a new player's large uncertainty
//!   makes the first games move the rating fast, and settled players move little, so
//!   ratings converge in a few games, where Elo's fixed K needs many;
//! - one closed-form update per game, no iteration (TrueSkill's factor graph needs
//!   message passing, and is patented), so a result costs microseconds.
//!
//! Matchmaking uses the rating (mu); the uncertainty only steers updates.
//!
//! **Results** arrive on `events.game.ended` from the orchestrator that ran the game
//! (its game server decided the winner and wrote it as its last output line; game servers
//! have no NATS credentials). Nothing a client publishes is believed: a result counts only
//! if its match exists (`match:{id}`), was played on that game id, and its teams are that
//! match's players in the match's order, half and half. It is applied once per game: one
//! Lua script writes every player's new rating and the game's marker (`game:{id}:rated`)
//! together, and only if no rating changed since it was read (else it reads again), so
//! two matchmakers, a replayed event or two games ending together never double-count.
//!
//! Redis: `player:{id}:rating` (JSON `rating`, `uncertainty`, `games`), kept as long as
//! an account (`session.account_ttl`, from its last change); `game:{id}:rated`, kept
//! `ratings.result_memory`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mm_shared::duration::millis;
use mm_shared::nats::ServiceError;
use mm_shared::protocol::{
    GameEnded, MatchRecord, RatingReply, RatingRequest, RatingSet, keys, limits, subjects,
};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use skillratings::Outcomes;
use skillratings::weng_lin::{WengLinConfig, WengLinRating, weng_lin_two_teams};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::RatingsConfig;
use crate::micro::unavailable;

/// Tries of a result whose players' ratings kept changing under it.
const APPLY_ATTEMPTS: usize = 5;
/// Results applied at once by one process.
const CONCURRENT_RESULTS: usize = 64;
/// The queue group every matchmaker's result subscription joins: each result is handled
/// by one of them (and would be harmless twice).
const RESULTS_GROUP: &str = "matchmaker-results";

/// A player's rating as stored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub rating: f64,
    pub uncertainty: f64,
    #[serde(default)]
    pub games: u64,
}

/// Writes every player's new rating and the game's marker, if nothing changed since read.
/// KEYS: marker, rating keys. ARGV: marker ttl ms, rating ttl ms, n, the n ratings as read
/// ('' for none), the n new ones. Returns 'applied', 'replayed' or 'changed'.
const APPLY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 'replayed' end
local n = tonumber(ARGV[3])
for i = 1, n do
  if (redis.call('GET', KEYS[i + 1]) or '') ~= ARGV[3 + i] then return 'changed' end
end
for i = 1, n do redis.call('SET', KEYS[i + 1], ARGV[3 + n + i], 'PX', tonumber(ARGV[2])) end
redis.call('SET', KEYS[1], '1', 'PX', tonumber(ARGV[1]))
return 'applied'
"#;

/// Sets a rating, keeping its uncertainty and game count. KEYS: rating key. ARGV: rating,
/// initial uncertainty, ttl ms. Returns the stored JSON.
const SET: &str = r#"
local raw = redis.call('GET', KEYS[1])
local stored = { uncertainty = tonumber(ARGV[2]), games = 0 }
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' then
    stored.uncertainty = tonumber(decoded.uncertainty) or stored.uncertainty
    stored.games = tonumber(decoded.games) or 0
  end
end
stored.rating = tonumber(ARGV[1])
raw = cjson.encode(stored)
redis.call('SET', KEYS[1], raw, 'PX', tonumber(ARGV[3]))
return raw
"#;

/// What applying a result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Every player's rating moved.
    Applied,
    /// The game was rated already.
    Replayed,
    /// No such match (or not on that game): ignored.
    UnknownMatch,
    /// The teams are not the match's: ignored.
    Mismatch,
}

impl Applied {
    pub fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Replayed => "replayed",
            Self::UnknownMatch => "unknown_match",
            Self::Mismatch => "mismatch",
        }
    }
}

/// Why a result could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("invalid result: {0}")]
    Invalid(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the players' ratings kept changing; gave up after {APPLY_ATTEMPTS} tries")]
    Contended,
}

/// Ratings in Redis. Cheap to clone.
#[derive(Clone)]
pub struct Ratings {
    redis: ConnectionManager,
    config: RatingsConfig,
    /// How long a rating is kept after its last change (an account's lifetime).
    keep: Duration,
    apply: Arc<redis::Script>,
    set: Arc<redis::Script>,
}

impl Ratings {
    pub fn new(redis: ConnectionManager, config: RatingsConfig, keep: Duration) -> Self {
        Self {
            redis,
            config,
            keep,
            apply: Arc::new(redis::Script::new(APPLY)),
            set: Arc::new(redis::Script::new(SET)),
        }
    }

    /// A new player's rating.
    pub fn initial(&self) -> Stored {
        Stored { rating: self.config.initial, uncertainty: self.config.uncertainty, games: 0 }
    }

    /// A stored rating, or the initial one. The join script (`stored_rating` in
    /// tickets/scripts.rs) reads ticket ratings the same way; keep the two alike.
    fn decode(&self, raw: Option<&str>) -> Stored {
        raw.and_then(|raw| serde_json::from_str::<Stored>(raw).ok())
            .filter(|stored| {
                stored.rating.is_finite() && stored.uncertainty.is_finite() && stored.uncertainty > 0.0
            })
            .unwrap_or_else(|| self.initial())
    }

    /// The players' ratings as stored (`None` for a player with none yet).
    async fn read(&self, players: &[String]) -> Result<Vec<Option<String>>, redis::RedisError> {
        if players.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = players.iter().map(|player| keys::player_rating(player)).collect();
        redis::cmd("MGET").arg(&keys).query_async(&mut self.redis.clone()).await
    }

    /// `session.rating.get`.
    pub async fn get(&self, request: RatingRequest) -> Result<RatingReply, ServiceError> {
        limits::check_id("player id", &request.player_id).map_err(ServiceError::bad_request)?;
        let raws = self.read(std::slice::from_ref(&request.player_id)).await.map_err(unavailable)?;
        let stored = self.decode(raws.first().and_then(Option::as_deref));
        Ok(reply(request.player_id, stored))
    }

    /// `session.rating.set`.
    pub async fn set(&self, request: RatingSet) -> Result<RatingReply, ServiceError> {
        limits::check_id("player id", &request.player_id).map_err(ServiceError::bad_request)?;
        if !request.rating.is_finite() || request.rating.abs() > limits::MAX_RATING {
            return Err(ServiceError::bad_request(format!(
                "rating {} is not a number within ±{}",
                request.rating,
                limits::MAX_RATING
            )));
        }
        let raw: String = self
            .set
            .key(keys::player_rating(&request.player_id))
            .arg(request.rating)
            .arg(self.config.uncertainty)
            .arg(millis(self.keep))
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(unavailable)?;
        Ok(reply(request.player_id, self.decode(Some(&raw))))
    }

    /// Applies one game's result, once (see the module doc).
    pub async fn apply(&self, result: &GameEnded) -> Result<Applied, ApplyError> {
        check(result).map_err(ApplyError::Invalid)?;
        let mut redis = self.redis.clone();
        let record: Option<String> =
            redis::cmd("GET").arg(keys::match_record(&result.match_id)).query_async(&mut redis).await?;
        let Some(record) = record.and_then(|raw| serde_json::from_str::<MatchRecord>(&raw).ok()) else {
            return Ok(Applied::UnknownMatch);
        };
        if record.server.game_id != result.game_id {
            return Ok(Applied::UnknownMatch);
        }
        let players: Vec<String> = result.teams.concat();
        let half = record.player_ids.len() / 2;
        if players != record.player_ids || result.teams.iter().any(|team| team.len() != half) {
            return Ok(Applied::Mismatch);
        }
        let marker = keys::game_rated(&result.game_id);
        for _ in 0..APPLY_ATTEMPTS {
            let raws = self.read(&players).await?;
            let before: Vec<Stored> = raws.iter().map(|raw| self.decode(raw.as_deref())).collect();
            let (first, second) = before.split_at(result.teams[0].len());
            let after = update([first, second], result.winner, &self.config);
            let mut script = self.apply.prepare_invoke();
            script.key(&marker);
            for player in &players {
                script.key(keys::player_rating(player));
            }
            script.arg(millis(self.config.result_memory)).arg(millis(self.keep)).arg(players.len());
            for raw in &raws {
                script.arg(raw.as_deref().unwrap_or(""));
            }
            for stored in &after {
                let json =
                    serde_json::to_string(stored).map_err(|err| ApplyError::Invalid(err.to_string()))?;
                script.arg(json);
            }
            let outcome: String = script.invoke_async(&mut redis).await?;
            match outcome.as_str() {
                "applied" => return Ok(Applied::Applied),
                "replayed" => return Ok(Applied::Replayed),
                _ => continue,
            }
        }
        Err(ApplyError::Contended)
    }
}

fn reply(player_id: String, stored: Stored) -> RatingReply {
    RatingReply { player_id, rating: stored.rating, uncertainty: stored.uncertainty, games: stored.games }
}

/// The shape every result must have before anything is read for it.
fn check(result: &GameEnded) -> Result<(), String> {
    limits::check_token("gameId", &result.game_id)?;
    limits::check_id("matchId", &result.match_id)?;
    if result.teams.len() != 2 || result.teams.iter().any(Vec::is_empty) {
        return Err("a result has two non-empty teams".to_owned());
    }
    if result.winner > 1 {
        return Err(format!("winner {} is not a team (0 or 1)", result.winner));
    }
    let players: Vec<&String> = result.teams.iter().flatten().collect();
    if players.len() > 2 * limits::MAX_PARTY {
        return Err(format!("{} players: more than a match holds", players.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for player in players {
        limits::check_id("player id", player)?;
        if !seen.insert(player) {
            return Err(format!("player {player} is on the teams twice"));
        }
    }
    Ok(())
}

/// The two teams' ratings after `winner` (0 or 1) won: Weng-Lin's two-team update. Pure.
pub fn update(teams: [&[Stored]; 2], winner: usize, config: &RatingsConfig) -> Vec<Stored> {
    let model = WengLinConfig { beta: config.beta, uncertainty_tolerance: 1e-6 };
    let to_model = |team: &[Stored]| -> Vec<WengLinRating> {
        team.iter().map(|s| WengLinRating { rating: s.rating, uncertainty: s.uncertainty }).collect()
    };
    let outcome = if winner == 0 { Outcomes::WIN } else { Outcomes::LOSS };
    let (first, second) = weng_lin_two_teams(&to_model(teams[0]), &to_model(teams[1]), &outcome, &model);
    teams
        .iter()
        .flat_map(|team| team.iter())
        .zip(first.iter().chain(second.iter()))
        .map(|(before, after)| Stored {
            rating: after.rating,
            uncertainty: after.uncertainty,
            games: before.games + 1,
        })
        .collect()
}

/// Applies every `events.game.ended` until `shutdown` (one of the matchmakers takes each).
/// Messages with a reply subject are not events (JetStream deliveries carry one) and are
/// ignored.
pub async fn serve_results(
    nats: async_nats::Client,
    ratings: Ratings,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut results = nats
        .queue_subscribe(subjects::EVENTS_GAME_ENDED, RESULTS_GROUP.to_owned())
        .await
        .map_err(|err| anyhow::anyhow!("cannot subscribe to {}: {err}", subjects::EVENTS_GAME_ENDED))?;
    Ok(tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(CONCURRENT_RESULTS));
        let mut tasks = JoinSet::new();
        loop {
            let message = tokio::select! {
                message = results.next() => match message {
                    Some(message) => message,
                    None => break,
                },
                () = shutdown.cancelled() => break,
            };
            while tasks.try_join_next().is_some() {}
            if message.reply.is_some() {
                metrics::counter!("mm_matchmaker_game_results_total", "result" => "invalid").increment(1);
                continue;
            }
            let result: GameEnded = match serde_json::from_slice(&message.payload) {
                Ok(result) => result,
                Err(err) => {
                    tracing::debug!("events.game.ended: not a result: {err}");
                    metrics::counter!("mm_matchmaker_game_results_total", "result" => "invalid").increment(1);
                    continue;
                }
            };
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            let ratings = ratings.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let label = match ratings.apply(&result).await {
                    Ok(applied) => {
                        tracing::debug!(game_id = %result.game_id, "game result: {}", applied.label());
                        applied.label()
                    }
                    Err(ApplyError::Invalid(why)) => {
                        tracing::debug!(game_id = %result.game_id, "game result refused: {why}");
                        "invalid"
                    }
                    Err(err) => {
                        tracing::warn!(game_id = %result.game_id, "game result not applied: {err}");
                        "failed"
                    }
                };
                metrics::counter!("mm_matchmaker_game_results_total", "result" => label).increment(1);
            });
        }
        while tasks.join_next().await.is_some() {}
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn player(rating: f64) -> Stored {
        Stored { rating, uncertainty: 500.0, games: 0 }
    }

    #[test]
    fn winners_go_up_losers_go_down_and_uncertainty_shrinks() {
        let config = RatingsConfig::default();
        let first = vec![player(1500.0); 5];
        let second = vec![player(1500.0); 5];
        let after = update([&first, &second], 0, &config);
        assert_eq!(after.len(), 10);
        for (index, stored) in after.iter().enumerate() {
            if index < 5 {
                assert!(stored.rating > 1500.0, "winner {index}: {stored:?}");
            } else {
                assert!(stored.rating < 1500.0, "loser {index}: {stored:?}");
            }
            assert!(stored.uncertainty < 500.0);
            assert_eq!(stored.games, 1);
        }
        // An upset moves ratings more than the expected result.
        let strong = vec![player(2000.0); 5];
        let weak = vec![player(1000.0); 5];
        let expected = update([&strong, &weak], 0, &config);
        let upset = update([&strong, &weak], 1, &config);
        assert!((upset[0].rating - 2000.0).abs() > (expected[0].rating - 2000.0).abs());
    }

    #[test]
    fn repeated_results_sort_two_clusters() {
        // Players of two true strengths, in random teams: after some games the strong
        // cluster is rated above the weak one.
        let config = RatingsConfig::default();
        let mut ratings = vec![player(1500.0); 20];
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..60 {
            let mut order: Vec<usize> = (0..20).collect();
            rng.shuffle(&mut order);
            let (a, b) = (&order[..5], &order[5..10]);
            let strength = |team: &[usize]| team.iter().filter(|&&p| p < 10).count();
            let winner = usize::from(strength(a) < strength(b));
            let first: Vec<Stored> = a.iter().map(|&p| ratings[p]).collect();
            let second: Vec<Stored> = b.iter().map(|&p| ratings[p]).collect();
            for (slot, stored) in a.iter().chain(b).zip(update([&first, &second], winner, &config)) {
                ratings[*slot] = stored;
            }
        }
        let strong = ratings[..10].iter().map(|s| s.rating).sum::<f64>() / 10.0;
        let weak = ratings[10..].iter().map(|s| s.rating).sum::<f64>() / 10.0;
        assert!(strong > weak + 200.0, "strong {strong:.0} vs weak {weak:.0}");
    }

    #[test]
    fn malformed_results_are_refused_before_any_read() {
        let good = GameEnded {
            game_id: "g1".into(),
            match_id: "m1".into(),
            teams: vec![vec!["a".into()], vec!["b".into()]],
            winner: 1,
        };
        assert!(check(&good).is_ok());
        assert!(check(&GameEnded { winner: 2, ..good.clone() }).is_err());
        assert!(check(&GameEnded { teams: vec![vec!["a".into()]], ..good.clone() }).is_err());
        assert!(
            check(&GameEnded { teams: vec![vec!["a".into()], vec!["a".into()]], ..good.clone() }).is_err()
        );
        assert!(check(&GameEnded { game_id: "g.1".into(), ..good.clone() }).is_err());
        assert!(check(&GameEnded { teams: vec![vec!["a b".into()], vec!["c".into()]], ..good }).is_err());
    }
}

//! The configured queues (`[[matchmaker.queues]]`), checked, each with its match function.
//!
//! A queue is a name (its Redis sorted set is `queue:<name>`), a match function and its
//! settings. `default` is always there and always the seed's FIFO, so every client that
//! sends no body keeps the seed's behaviour.

use std::collections::BTreeMap;
use std::sync::Arc;

use mm_shared::protocol::{MATCH_SIZE, QueueInfo, keys, limits};

use crate::config::{Config, FunctionKind, QueueConfig};
use crate::matcher::{Fifo, MatchFunction, Rules, Widening};

/// Largest match: two sides of ten.
pub const MAX_MATCH_SIZE: usize = 20;
/// Most tickets one round looks at.
pub const MAX_WINDOW: usize = 10_000;

/// `skill`'s rating window when the queue gives none.
pub const DEFAULT_RATING_WINDOW: Widening = Widening { start: 100.0, per_second: 10.0, max: 800.0 };
/// `latency`'s cap when the queue gives none.
pub const DEFAULT_MAX_PING: Widening = Widening { start: 60.0, per_second: 2.0, max: 150.0 };

/// One queue, ready to serve.
#[derive(Clone)]
pub struct Queue {
    pub info: QueueInfo,
    pub function: Arc<dyn MatchFunction>,
    /// Match records carry `teams`.
    pub teams: bool,
    /// Tickets must give latencies (the function places by region).
    pub needs_latencies: bool,
    /// Largest party it takes: one side.
    pub max_party: usize,
}

/// Every configured queue by name.
#[derive(Clone)]
pub struct Queues {
    by_name: BTreeMap<String, Queue>,
}

impl Queues {
    /// Checks `[[matchmaker.queues]]` and builds each queue's function. The message names
    /// the key and the queue.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let mut by_name = BTreeMap::new();
        for queue in &config.matchmaker.queues {
            let built = build(queue, config.ratings.initial)
                .map_err(|err| format!("config key `matchmaker.queues` (queue `{}`): {err}", queue.name))?;
            if by_name.insert(queue.name.clone(), built).is_some() {
                return Err(format!(
                    "config key `matchmaker.queues`: queue `{}` is listed twice",
                    queue.name
                ));
            }
        }
        match by_name.get(keys::DEFAULT_QUEUE_NAME) {
            Some(queue) if queue.info.function == "fifo" && queue.info.match_size == MATCH_SIZE => {}
            _ => {
                return Err(format!(
                    "config key `matchmaker.queues`: a queue `{}` with function `fifo` and matches of \
                     {MATCH_SIZE} must be listed: it is the seed's queue, which every join without a body uses",
                    keys::DEFAULT_QUEUE_NAME
                ));
            }
        }
        Ok(Self { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Queue> {
        self.by_name.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Queue> {
        self.by_name.values()
    }

    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// What `GET /matchmaking/queues` lists.
    pub fn infos(&self) -> Vec<QueueInfo> {
        self.by_name.values().map(|queue| queue.info.clone()).collect()
    }
}

fn build(queue: &QueueConfig, default_rating: f64) -> Result<Queue, String> {
    limits::check_token("queue name", &queue.name)?;
    let (match_size, teams) = match (queue.teams, queue.team_size) {
        (Some(2), Some(size)) if (1..=MAX_MATCH_SIZE / 2).contains(&size) => {
            if queue.match_size.is_some_and(|match_size| match_size != 2 * size) {
                return Err("`match_size` must be `teams` times `team_size`".to_owned());
            }
            (2 * size, true)
        }
        (Some(2), _) => return Err(format!("`team_size` must be from 1 to {}", MAX_MATCH_SIZE / 2)),
        (Some(teams), _) => {
            return Err(format!("`teams` is {teams}: matches are played by two sides, so it must be 2"));
        }
        (None, Some(_)) => return Err("`team_size` needs `teams = 2`".to_owned()),
        (None, None) => {
            let size = queue.match_size.unwrap_or(MATCH_SIZE);
            if !(2..=MAX_MATCH_SIZE).contains(&size) || !size.is_multiple_of(2) {
                return Err(format!(
                    "`match_size` is {size}: it must be even (two sides) and from 2 to {MAX_MATCH_SIZE}"
                ));
            }
            (size, false)
        }
    };
    let window = queue.window.unwrap_or(match queue.function {
        FunctionKind::Fifo => match_size,
        _ => 1000,
    });
    if !(match_size..=MAX_WINDOW).contains(&window) {
        return Err(format!(
            "`window` is {window}: it must be from the match size ({match_size}) to {MAX_WINDOW}"
        ));
    }
    let rating_window = queue.rating_window.unwrap_or(DEFAULT_RATING_WINDOW);
    rating_window.check("rating_window")?;
    let max_ping = match (queue.function, queue.max_ping) {
        (FunctionKind::Latency, ping) => Some(ping.unwrap_or(DEFAULT_MAX_PING)),
        (_, ping) => ping,
    };
    if let Some(ping) = max_ping {
        ping.check("max_ping")?;
    }
    let function: Arc<dyn MatchFunction> = match queue.function {
        FunctionKind::Fifo => {
            if queue.rating_window.is_some() || queue.max_ping.is_some() {
                return Err("`fifo` takes no `rating_window` or `max_ping`".to_owned());
            }
            Arc::new(Fifo { match_size, window })
        }
        FunctionKind::Skill => {
            Arc::new(Rules { max_ping, default_rating, ..Rules::skill(match_size, window, rating_window) })
        }
        FunctionKind::Latency => {
            if queue.rating_window.is_some() {
                return Err("`latency` takes no `rating_window` (use `skill` with `max_ping`)".to_owned());
            }
            Arc::new(Rules {
                balance: teams,
                default_rating,
                ..Rules::latency(match_size, window, max_ping.unwrap_or(DEFAULT_MAX_PING))
            })
        }
    };
    Ok(Queue {
        info: QueueInfo {
            name: queue.name.clone(),
            function: queue.function.as_str().to_owned(),
            teams: teams.then_some(2),
            team_size: teams.then_some(match_size / 2),
            match_size,
        },
        function,
        teams,
        needs_latencies: max_ping.is_some(),
        max_party: match_size / 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(queues: Vec<QueueConfig>) -> Result<Queues, String> {
        let mut config = Config::default();
        config.matchmaker.queues = queues;
        Queues::from_config(&config)
    }

    #[test]
    fn the_default_config_has_the_seeds_queue_and_a_skill_queue_of_two_fives() {
        let queues = Queues::from_config(&Config::default()).expect("valid");
        let infos = queues.infos();
        let default = infos.iter().find(|q| q.name == "default").expect("default");
        assert_eq!((default.function.as_str(), default.match_size, default.teams), ("fifo", 10, None));
        let skill = infos.iter().find(|q| q.name == "skill").expect("skill");
        assert_eq!(
            (skill.function.as_str(), skill.teams, skill.team_size, skill.match_size),
            ("skill", Some(2), Some(5), 10)
        );
        let json = serde_json::to_value(skill).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"name": "skill", "function": "skill", "teams": 2, "teamSize": 5, "matchSize": 10})
        );
    }

    #[test]
    fn bad_queues_are_refused_with_their_name() {
        let skill = QueueConfig::default_skill();
        let refused =
            |queue: QueueConfig| with(vec![QueueConfig::seed_default(), queue]).err().unwrap_or_default();
        assert!(refused(QueueConfig { teams: Some(3), ..skill.clone() }).contains("must be 2"));
        assert!(refused(QueueConfig { name: "a.b".into(), ..skill.clone() }).contains("queue name"));
        assert!(refused(QueueConfig { team_size: Some(11), ..skill.clone() }).contains("team_size"));
        assert!(
            refused(QueueConfig { teams: None, team_size: None, match_size: Some(7), ..skill.clone() })
                .contains("even")
        );
        assert!(refused(QueueConfig { window: Some(3), ..skill.clone() }).contains("window"));
        let bad_window = Widening { start: 10.0, per_second: -1.0, max: 5.0 };
        assert!(
            refused(QueueConfig { rating_window: Some(bad_window), ..skill.clone() })
                .contains("rating_window")
        );
        assert!(refused(QueueConfig { name: "default".into(), ..skill.clone() }).contains("twice"));
        let missing = with(vec![skill]).err().unwrap_or_default();
        assert!(missing.contains("`default`"), "{missing}");
    }
}

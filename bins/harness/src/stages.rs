//! Load shapes: a run that follows a plan of stages (`[[harness.stages]]`), like k6's
//! `stages` or Locust's `LoadTestShape`.
//!
//! ```toml
//! [[harness.stages]]        # ramp: 0 → 500 players over 2 minutes
//! duration = "2m"
//! players = 500
//! [[harness.stages]]        # hold
//! duration = "5m"
//! players = 500
//! [[harness.stages]]        # spike, with more matchmaking while it lasts
//! duration = "30s"
//! players = 2000
//! rates = { matchmaking = "1/60s" }
//! ```
//!
//! Each stage moves the player target linearly from where the previous one ended (the
//! first from 0) to its `players` over its `duration`; its `rates` replace the configured
//! ones of the scenarios it names while it lasts. With stages the run lasts their total
//! (`harness.duration` is not used). The plan sets this instance's *own* target and
//! rates ([`Own`]): what `players` and `rates` set without a plan. A fleet target set
//! over `harness.control` still takes precedence, as it does over `players`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::{Rate, Rates};
use crate::scenario::{SCENARIOS, Scenario};

/// How often a plan's target is recomputed while it ramps.
pub const STEP: Duration = Duration::from_millis(100);

/// One stage of `[[harness.stages]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// How long the stage lasts.
    #[serde(with = "mm_shared::duration")]
    pub duration: Duration,
    /// The player target at the end of the stage.
    pub players: u64,
    /// Rates while the stage lasts (scenarios not named keep their configured rate).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rates: BTreeMap<Scenario, Rate>,
}

/// Where a plan is at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The stage (index into the plan); the last one once the plan is over.
    pub stage: usize,
    pub target: u64,
    pub rates: [Rate; SCENARIOS],
}

/// How long the plan lasts.
pub fn total(stages: &[Stage]) -> Duration {
    stages.iter().map(|stage| stage.duration).fold(Duration::ZERO, Duration::saturating_add)
}

/// The plan at `elapsed` (None without stages).
pub fn point(stages: &[Stage], configured: Rates, elapsed: Duration) -> Option<Point> {
    let mut start = Duration::ZERO;
    let mut from = 0u64;
    for (index, stage) in stages.iter().enumerate() {
        let end = start.saturating_add(stage.duration);
        if elapsed < end || index + 1 == stages.len() {
            let into = elapsed.saturating_sub(start).min(stage.duration);
            let share = if stage.duration.is_zero() {
                1.0
            } else {
                into.as_secs_f64() / stage.duration.as_secs_f64()
            };
            let target = from as f64 + (stage.players as f64 - from as f64) * share;
            let mut rates = configured.to_array();
            for (scenario, rate) in &stage.rates {
                rates[scenario.index()] = *rate;
            }
            return Some(Point { stage: index, target: target.round().max(0.0) as u64, rates });
        }
        start = end;
        from = stage.players;
    }
    None
}

/// This instance's own target and rates: `players` and `rates`, or the plan's now. A
/// fleet target (and control rates) apply on top of them.
pub struct Own {
    target: AtomicU64,
    rates: Mutex<[Rate; SCENARIOS]>,
    /// Wakes the fleet loop up to recompute the settings.
    pub changed: Notify,
}

impl Own {
    pub fn new(target: u64, rates: [Rate; SCENARIOS]) -> Self {
        Self { target: AtomicU64::new(target), rates: Mutex::new(rates), changed: Notify::new() }
    }

    pub fn target(&self) -> u64 {
        self.target.load(Ordering::Relaxed)
    }

    pub fn rates(&self) -> [Rate; SCENARIOS] {
        *self.rates.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets both; true when something changed (and the fleet loop was woken).
    pub fn set(&self, target: u64, rates: [Rate; SCENARIOS]) -> bool {
        let mut current = self.rates.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let changed = self.target.swap(target, Ordering::Relaxed) != target || *current != rates;
        *current = rates;
        drop(current);
        if changed {
            self.changed.notify_one();
        }
        changed
    }
}

/// One stage as the report shows it (times from the start of the run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageReport {
    pub start_seconds: f64,
    pub duration_seconds: f64,
    /// Target at the stage's start and end.
    pub from_players: u64,
    pub players: u64,
    /// Rates the stage set (per idle player per second), by scenario.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rates: BTreeMap<String, f64>,
}

/// The plan as the report shows it.
pub fn report(stages: &[Stage]) -> Vec<StageReport> {
    let mut start = Duration::ZERO;
    let mut from = 0;
    stages
        .iter()
        .map(|stage| {
            let row = StageReport {
                start_seconds: start.as_secs_f64(),
                duration_seconds: stage.duration.as_secs_f64(),
                from_players: from,
                players: stage.players,
                rates: stage
                    .rates
                    .iter()
                    .map(|(scenario, rate)| (scenario.name().to_owned(), rate.as_per_second()))
                    .collect(),
            };
            start = start.saturating_add(stage.duration);
            from = stage.players;
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(seconds: u64, players: u64) -> Stage {
        Stage { duration: Duration::from_secs(seconds), players, rates: BTreeMap::new() }
    }

    #[test]
    fn a_ramp_a_hold_and_a_spike() {
        let mut spike = stage(10, 400);
        spike.rates.insert(Scenario::Matchmaking, Rate::per_second(0.5).expect("rate"));
        let plan = [stage(100, 100), stage(50, 100), spike];
        let at =
            |seconds: f64| point(&plan, Rates::default(), Duration::from_secs_f64(seconds)).expect("plan");
        assert_eq!((at(0.0).stage, at(0.0).target), (0, 0));
        assert_eq!(at(25.0).target, 25, "a quarter of the ramp");
        assert_eq!((at(120.0).stage, at(120.0).target), (1, 100), "the hold");
        assert_eq!((at(155.0).stage, at(155.0).target), (2, 250), "half way up the spike");
        let configured = Rates::default().to_array();
        assert_eq!(at(120.0).rates, configured);
        assert_eq!(at(155.0).rates[Scenario::Matchmaking.index()].as_per_second(), 0.5);
        assert_eq!(at(155.0).rates[Scenario::Logout.index()], configured[Scenario::Logout.index()]);
        assert_eq!(at(1000.0).target, 400, "after the plan: its last target");
        assert_eq!(total(&plan), Duration::from_secs(160));
        assert_eq!(point(&[], Rates::default(), Duration::ZERO), None);
        let rows = report(&plan);
        assert_eq!((rows[2].start_seconds, rows[2].from_players, rows[2].players), (150.0, 100, 400));
    }

    #[test]
    fn stages_read_from_toml() {
        let text = r#"
            duration = "30s"
            players = 20
            rates = { matchmaking = "1/60s" }
        "#;
        let stage: Stage = toml::from_str(text).expect("a stage");
        assert_eq!(stage.duration, Duration::from_secs(30));
        assert!((stage.rates[&Scenario::Matchmaking].as_per_second() - 1.0 / 60.0).abs() < 1e-9);
        assert!(toml::from_str::<Stage>("duration = \"1s\"\nplayers = 1\nshape = 2").is_err());
    }
}

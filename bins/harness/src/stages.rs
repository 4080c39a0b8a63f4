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
//!
//! A fleet follows one plan the same way ([`FleetPlan`], from `harness.control`'s
//! `stages`): its `players` are the fleet target, divided among the live instances; it
//! runs on the wall clock from the plan's `startedAtMs`, so every instance (and a late
//! joiner) is at the same point of it. It comes first: over `fleetTarget`, and over this
//! instance's own plan.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mm_shared::protocol::HarnessPlan;
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
    point_over(stages, configured.to_array(), elapsed)
}

/// The plan at `elapsed`, its stage's rates over `base` (None without stages).
pub fn point_over(stages: &[Stage], base: [Rate; SCENARIOS], elapsed: Duration) -> Option<Point> {
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
            let mut rates = base;
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

/// The fleet's plan (`harness.control` `stages`) as an instance follows it.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetPlan {
    /// When its first stage starts, Unix ms.
    pub started_at_ms: u64,
    /// `players` are fleet players.
    pub stages: Vec<Stage>,
}

impl FleetPlan {
    /// The plan of a checked control message ([`mm_shared::protocol::HarnessControl::check`]);
    /// `now_ms` stands in for a missing start. A rate the check would refuse is left
    /// out rather than trusted.
    pub fn from_control(plan: &HarnessPlan, now_ms: u64) -> Self {
        let stages = plan
            .stages
            .iter()
            .map(|stage| Stage {
                duration: stage.duration,
                players: stage.players,
                rates: stage
                    .rates
                    .iter()
                    .filter_map(|(name, per_second)| {
                        Some((Scenario::from_name(name)?, Rate::per_second(*per_second)?))
                    })
                    .collect(),
            })
            .collect();
        Self { started_at_ms: plan.started_at_ms.unwrap_or(now_ms), stages }
    }

    /// The plan at wall-clock `now_ms`, its stage's rates over `base`; None before it
    /// starts.
    pub fn point(&self, base: [Rate; SCENARIOS], now_ms: u64) -> Option<Point> {
        let elapsed = now_ms.checked_sub(self.started_at_ms)?;
        point_over(&self.stages, base, Duration::from_millis(elapsed))
    }

    /// When its last stage ends, Unix ms.
    pub fn ends_at_ms(&self) -> u64 {
        let total = u64::try_from(total(&self.stages).as_millis()).unwrap_or(u64::MAX);
        self.started_at_ms.saturating_add(total)
    }

    /// Whether the target can still move (the plan has not started or is not over).
    pub fn moving(&self, now_ms: u64) -> bool {
        now_ms < self.ends_at_ms()
    }
}

/// A fleet plan an instance followed, from when to when (Unix ms; `until` None while it
/// still follows it).
#[derive(Debug, Clone, PartialEq)]
pub struct Followed {
    pub plan: FleetPlan,
    pub until_ms: Option<u64>,
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

impl StageReport {
    /// `stage`, from `from_players`, as it ran from `start_seconds` for `duration_seconds`.
    fn of(stage: &Stage, start_seconds: f64, duration_seconds: f64, from_players: u64) -> Self {
        StageReport {
            start_seconds,
            duration_seconds,
            from_players,
            players: stage.players,
            rates: stage
                .rates
                .iter()
                .map(|(scenario, rate)| (scenario.name().to_owned(), rate.as_per_second()))
                .collect(),
        }
    }
}

/// The plan as the report shows it.
pub fn report(stages: &[Stage]) -> Vec<StageReport> {
    let mut start = Duration::ZERO;
    let mut from = 0;
    stages
        .iter()
        .map(|stage| {
            let row = StageReport::of(stage, start.as_secs_f64(), stage.duration.as_secs_f64(), from);
            start = start.saturating_add(stage.duration);
            from = stage.players;
            row
        })
        .collect()
}

/// One stage of a fleet plan as an instance's report shows it: times from the start of
/// this instance's run (negative: before it), players across the fleet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStageReport {
    /// Which of the fleet plans this run followed (1 = the first; a new one replaces the
    /// one before).
    pub plan: usize,
    /// The stage's number in its plan (1 = the first).
    pub stage: usize,
    /// Its times (the duration cut short when the plan was replaced or reset during the
    /// stage), and the fleet target at its start and end.
    #[serde(flatten)]
    pub row: StageReport,
}

/// The fleet plans a run followed, stage by stage, in the time of a run that started at
/// `run_started_at_ms`; stages a replacement or a reset came before are left out.
pub fn fleet_report(followed: &[Followed], run_started_at_ms: u64) -> Vec<FleetStageReport> {
    let seconds_from_run = |at_ms: u64| (i128::from(at_ms) - i128::from(run_started_at_ms)) as f64 / 1000.0;
    let mut rows = Vec::new();
    for (number, episode) in followed.iter().enumerate() {
        let until = episode.until_ms.unwrap_or(u64::MAX);
        let mut start = episode.plan.started_at_ms;
        let mut from = 0;
        for (index, stage) in episode.plan.stages.iter().enumerate() {
            if start >= until {
                break;
            }
            let length = u64::try_from(stage.duration.as_millis()).unwrap_or(u64::MAX);
            let end = start.saturating_add(length).min(until);
            rows.push(FleetStageReport {
                plan: number + 1,
                stage: index + 1,
                row: StageReport::of(stage, seconds_from_run(start), (end - start) as f64 / 1000.0, from),
            });
            start = start.saturating_add(length);
            from = stage.players;
        }
    }
    rows
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

    fn fleet_plan(started_at_ms: u64, stages: Vec<Stage>) -> FleetPlan {
        FleetPlan { started_at_ms, stages }
    }

    #[test]
    fn a_fleet_plan_runs_on_the_wall_clock() {
        let start = 1_700_000_000_000;
        let mut spike = stage(1, 10);
        spike.rates.insert(Scenario::Matchmaking, Rate::per_second(2.0).expect("rate"));
        let plan = fleet_plan(start, vec![stage(2, 6), stage(3, 6), spike]);
        let base = Rates::default().to_array();
        let at = |ms: u64| plan.point(base, start + ms).map(|point| (point.stage, point.target));
        assert_eq!(plan.point(base, start - 1), None, "not started yet");
        assert_eq!(at(0), Some((0, 0)));
        assert_eq!(at(1000), Some((0, 3)), "half way up the ramp");
        assert_eq!(at(3000), Some((1, 6)), "the hold");
        assert_eq!(at(5500), Some((2, 8)), "half way up the spike");
        assert_eq!(at(3_600_000), Some((2, 10)), "after the plan: its last players");
        let spiking = plan.point(base, start + 5500).expect("point");
        assert_eq!(spiking.rates[Scenario::Matchmaking.index()].as_per_second(), 2.0);
        assert_eq!(spiking.rates[Scenario::Logout.index()], base[Scenario::Logout.index()]);
        assert_eq!(plan.ends_at_ms(), start + 6000);
        assert!(plan.moving(start - 5000) && plan.moving(start + 5999));
        assert!(!plan.moving(start + 6000));
    }

    #[test]
    fn a_fleet_plan_comes_from_a_control_message() {
        let message: mm_shared::protocol::HarnessControl = serde_json::from_value(serde_json::json!({
            "stages": {"stages": [{"duration": "2s", "players": 6, "rates": {"matchmaking": "1/4s"}}]}
        }))
        .expect("json");
        let plan = FleetPlan::from_control(message.stages.as_ref().expect("a plan"), 77);
        assert_eq!(plan.started_at_ms, 77, "no start: the one given");
        assert_eq!(plan.stages[0].duration, Duration::from_secs(2));
        assert_eq!(plan.stages[0].rates[&Scenario::Matchmaking].as_per_second(), 0.25);
    }

    #[test]
    fn the_report_shows_fleet_stages_in_the_runs_time() {
        let start = 1_700_000_000_000;
        let first = fleet_plan(start, vec![stage(2, 6), stage(3, 6), stage(1, 10)]);
        let second = fleet_plan(start + 4000, vec![stage(10, 2)]);
        // Joined 1.5 s into the first plan, which was replaced 4 s into it.
        let followed = [
            Followed { plan: first, until_ms: Some(start + 4000) },
            Followed { plan: second, until_ms: None },
        ];
        let rows = fleet_report(&followed, start + 1500);
        let summary: Vec<_> = rows
            .iter()
            .map(|row| {
                let stage = &row.row;
                (
                    row.plan,
                    row.stage,
                    stage.start_seconds,
                    stage.duration_seconds,
                    stage.from_players,
                    stage.players,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [(1, 1, -1.5, 2.0, 0, 6), (1, 2, 0.5, 2.0, 6, 6), (2, 1, 2.5, 10.0, 0, 2)],
            "the hold cut short by the new plan, the spike never reached"
        );
        assert!(fleet_report(&[], start).is_empty());
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

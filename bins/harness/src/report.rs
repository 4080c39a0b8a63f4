//! The end of a run: the JSON report, the human table, and the pass/fail thresholds.
//!
//! The report keeps the shape `CONTRACT.md` fixes (`players.peak`,
//! `scenarios.<name>.{attempted,succeeded,failed,latency_ms}`, `time_to_match_ms`) and adds
//! what a reader of a load test asks next: rejected/cut/starved counts, errors by
//! kind, time to play, tick lag, rates, and which threshold failed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mm_shared::protocol::{HarnessStats, HistogramData};
use serde::{Deserialize, Serialize};

use crate::quality::QualityReport;
use crate::scenario::{ERROR_KINDS, Failure, SCENARIOS, Scenario};
use crate::timeline::{Distributions, Timeline};

/// p50/p90/p99/max in milliseconds (microsecond precision).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of plain units (rating points, milliseconds), as recorded.
    pub fn from_units(histogram: &HistogramData) -> Self {
        let value = |v: u64| v as f64;
        Self {
            p50: value(histogram.value_at_quantile(0.50)),
            p90: value(histogram.value_at_quantile(0.90)),
            p99: value(histogram.value_at_quantile(0.99)),
            max: value(histogram.max()),
        }
    }

    /// From a histogram of microseconds.
    pub fn from_micros(histogram: &HistogramData) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlayersReport {
    /// Most players alive at once.
    pub peak: u64,
    /// The target when the run ended.
    pub target: u64,
    /// Players started, replacements included.
    pub spawned: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Correct refusals, not errors (a purchase without enough balance).
    pub rejected: u64,
    /// Cut short by the end of the run (still running when the drain ran out, like a
    /// game that had not ended): neither success nor failure.
    pub cut: u64,
    /// Executions the compositor wanted but found no idle player for.
    pub starved: u64,
    pub latency_ms: Percentiles,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Configured rate at the end: executions per idle player per second.
    pub rate_per_idle_player: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StarvationReport {
    pub total: u64,
    pub by_scenario: BTreeMap<String, u64>,
}

/// One pass/fail threshold and how the run did against it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    /// `max_error_rate` or `max_time_to_match_p99_ms`.
    pub name: String,
    pub limit: f64,
    pub actual: f64,
    pub breached: bool,
    pub detail: String,
}

/// The run report written with `--report FILE.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub instance: String,
    pub host: String,
    pub version: String,
    pub gateway: String,
    /// Unix epoch milliseconds.
    pub started_at: u64,
    pub duration_seconds: f64,
    pub players: PlayersReport,
    pub scenarios: BTreeMap<String, ScenarioReport>,
    /// Matchmaking join → matched.
    pub time_to_match_ms: Percentiles,
    /// Matchmaking join → first echo from the game server.
    pub time_to_play_ms: Percentiles,
    /// Failures by kind, all scenarios.
    pub errors: BTreeMap<String, u64>,
    /// failed / (succeeded + rejected + failed), all scenarios.
    pub error_rate: f64,
    pub starvation: StarvationReport,
    /// How late the compositor's ticks ran.
    pub tick_lag_ms: Percentiles,
    /// Live instances at the end (1 without a fleet).
    pub fleet_instances: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_target: Option<u64>,
    pub thresholds: Vec<Threshold>,
    /// Per queue: time to match, match quality and quality by wait (`queues`); how well
    /// ratings order players by true skill (`rating_convergence`).
    #[serde(flatten)]
    pub quality: QualityReport,
    /// Time to match and time to play as log-spaced buckets (the HTML report's charts).
    #[serde(default)]
    pub distributions: Distributions,
    /// The run over time, one sample per stats interval (bounded; the HTML report's charts).
    #[serde(default)]
    pub timeline: Timeline,
    /// The stage plan the run followed (`[[harness.stages]]`), if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<crate::stages::StageReport>,
    /// The fleet plans (`harness.control` `stages`) the instance followed, stage by
    /// stage, in this run's time; players across the fleet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet_stages: Vec<crate::stages::FleetStageReport>,
}

/// What the report is made of besides the stats.
pub struct RunFacts<'a> {
    pub instance: &'a str,
    pub host: &'a str,
    pub gateway: &'a str,
    pub started_at: u64,
    pub duration: Duration,
    pub target: u64,
    pub spawned: u64,
    pub fleet_instances: usize,
}

/// Failed / finished across scenarios (0 when nothing finished).
pub fn error_rate(stats: &HarnessStats) -> f64 {
    let (failed, finished) = stats.scenarios.values().fold((0u64, 0u64), |(failed, finished), s| {
        (failed + s.failed, finished + s.failed + s.succeeded + s.rejected)
    });
    if finished == 0 { 0.0 } else { failed as f64 / finished as f64 }
}

impl Report {
    pub fn build(stats: &HarnessStats, facts: &RunFacts<'_>) -> Self {
        let scenarios: BTreeMap<String, ScenarioReport> = stats
            .scenarios
            .iter()
            .map(|(name, s)| {
                (
                    name.clone(),
                    ScenarioReport {
                        attempted: s.attempted,
                        succeeded: s.succeeded,
                        failed: s.failed,
                        rejected: s.rejected,
                        cut: s.cut,
                        starved: s.starved,
                        latency_ms: Percentiles::from_micros(&s.latency_us),
                        errors: BTreeMap::new(),
                        rate_per_idle_player: s.rate,
                    },
                )
            })
            .collect();
        let by_scenario: BTreeMap<String, u64> = stats
            .scenarios
            .iter()
            .filter(|(_, s)| s.starved > 0)
            .map(|(name, s)| (name.clone(), s.starved))
            .collect();
        Self {
            instance: facts.instance.to_owned(),
            host: facts.host.to_owned(),
            version: mm_shared::VERSION.to_owned(),
            gateway: facts.gateway.to_owned(),
            started_at: facts.started_at,
            duration_seconds: (facts.duration.as_secs_f64() * 1000.0).round() / 1000.0,
            players: PlayersReport { peak: stats.players.peak, target: facts.target, spawned: facts.spawned },
            scenarios,
            time_to_match_ms: Percentiles::from_micros(&stats.time_to_match_us),
            time_to_play_ms: Percentiles::from_micros(&stats.time_to_play_us),
            errors: stats.errors.clone(),
            error_rate: error_rate(stats),
            starvation: StarvationReport { total: by_scenario.values().sum(), by_scenario },
            tick_lag_ms: Percentiles::from_micros(&stats.tick_lag_us),
            fleet_instances: facts.fleet_instances,
            fleet_target: stats.fleet_target,
            thresholds: Vec::new(),
            quality: QualityReport::default(),
            distributions: Distributions::from_stats(stats),
            timeline: Timeline::default(),
            stages: Vec::new(),
            fleet_stages: Vec::new(),
        }
    }

    /// Adds the stage plan.
    pub fn with_stages(mut self, stages: Vec<crate::stages::StageReport>) -> Self {
        self.stages = stages;
        self
    }

    /// Adds the fleet plans' stages.
    pub fn with_fleet_stages(mut self, stages: Vec<crate::stages::FleetStageReport>) -> Self {
        self.fleet_stages = stages;
        self
    }

    /// Adds the run over time.
    pub fn with_timeline(mut self, timeline: Timeline) -> Self {
        self.timeline = timeline;
        self
    }

    /// Adds the quality sections.
    pub fn with_quality(mut self, quality: QualityReport) -> Self {
        self.quality = quality;
        self
    }

    /// Fills in per-scenario errors by kind.
    pub fn with_scenario_errors(
        mut self,
        errors: &[(Scenario, Vec<(crate::scenario::ErrorKind, u64)>)],
    ) -> Self {
        for (scenario, kinds) in errors {
            if let Some(report) = self.scenarios.get_mut(scenario.name()) {
                report.errors = kinds.iter().map(|(kind, count)| (kind.name().to_owned(), *count)).collect();
            }
        }
        self
    }

    /// Judges the run against the thresholds that are set.
    pub fn judge(&mut self, max_error_rate: Option<f64>, max_time_to_match_p99: Option<Duration>) {
        if let Some(limit) = max_error_rate {
            let breached = self.error_rate > limit;
            self.thresholds.push(Threshold {
                name: "max_error_rate".to_owned(),
                limit,
                actual: self.error_rate,
                breached,
                detail: format!(
                    "error rate {} {} the limit of {}",
                    percent(self.error_rate),
                    if breached { "is over" } else { "is within" },
                    percent(limit)
                ),
            });
        }
        if let Some(limit) = max_time_to_match_p99 {
            let limit_ms = limit.as_secs_f64() * 1000.0;
            let matched = self.scenarios.get(Scenario::Matchmaking.name()).map_or(0, |s| s.succeeded);
            let tried = self.scenarios.get(Scenario::Matchmaking.name()).map_or(0, |s| s.attempted);
            let actual = self.time_to_match_ms.p99;
            let (breached, detail) = if matched == 0 && tried > 0 {
                (true, format!("no player was matched in {tried} matchmaking attempts"))
            } else {
                let breached = actual > limit_ms;
                let verb = if breached { "is over" } else { "is within" };
                (
                    breached,
                    format!("time-to-match p99 {} {verb} the limit of {}", millis(actual), millis(limit_ms)),
                )
            };
            self.thresholds.push(Threshold {
                name: "max_time_to_match_p99_ms".to_owned(),
                limit: limit_ms,
                actual,
                breached,
                detail,
            });
        }
    }

    /// The thresholds the run breached.
    pub fn breaches(&self) -> Vec<&Threshold> {
        self.thresholds.iter().filter(|threshold| threshold.breached).collect()
    }

    /// Writes the report as pretty JSON (to a temporary file first, so a reader never sees
    /// half a report).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        std::fs::write(&temporary, text + "\n")?;
        std::fs::rename(&temporary, path)
    }

    /// The human summary printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "harness run: {:.1} s, instance {}, gateway {}{}",
            self.duration_seconds,
            self.instance,
            self.gateway,
            match self.fleet_target {
                Some(target) => format!(", fleet of {} sharing {target} players", self.fleet_instances),
                None => String::new(),
            }
        );
        let _ = writeln!(
            out,
            "players: peak {}, target {}, started {}",
            self.players.peak, self.players.target, self.players.spawned
        );
        for (index, stage) in self.stages.iter().enumerate() {
            let _ = writeln!(out, "{}", stage_line(&format!("stage {}", index + 1), stage, "players"));
        }
        for fleet in &self.fleet_stages {
            let name = format!("fleet plan {} stage {}", fleet.plan, fleet.stage);
            let _ = writeln!(out, "{}", stage_line(&name, &fleet.row, "fleet players"));
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<15} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "scenario",
            "attempted",
            "succeeded",
            "rejected",
            "failed",
            "cut",
            "starved",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms"
        );
        for scenario in Scenario::ALL {
            let Some(s) = self.scenarios.get(scenario.name()) else { continue };
            let _ = writeln!(
                out,
                "{:<15} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                scenario.name(),
                s.attempted,
                s.succeeded,
                s.rejected,
                s.failed,
                s.cut,
                s.starved,
                s.latency_ms.p50,
                s.latency_ms.p90,
                s.latency_ms.p99,
                s.latency_ms.max
            );
        }
        let _ = writeln!(out);
        for (label, p) in [
            ("time to match", self.time_to_match_ms),
            ("time to play", self.time_to_play_ms),
            ("tick lag", self.tick_lag_ms),
        ] {
            let _ = writeln!(
                out,
                "{label:<15} p50 {}  p90 {}  p99 {}  max {}",
                millis(p.p50),
                millis(p.p90),
                millis(p.p99),
                millis(p.max)
            );
        }
        let errors = if self.errors.is_empty() {
            "none".to_owned()
        } else {
            self.errors.iter().map(|(kind, count)| format!("{kind} {count}")).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(out, "{:<15} {} ({errors})", "error rate", percent(self.error_rate));
        let cut: u64 = self.scenarios.values().map(|s| s.cut).sum();
        if cut > 0 {
            let _ = writeln!(
                out,
                "{:<15} {cut} executions were still running when the run ended (games not over yet, \
                 tickets still searching): neither successes nor failures",
                "cut"
            );
        }
        self.quality_table(&mut out);
        for threshold in &self.thresholds {
            let verdict = if threshold.breached { "FAIL" } else { "ok" };
            let _ = writeln!(out, "{:<15} {verdict}: {}", "threshold", threshold.detail);
        }
        out
    }

    /// Per queue, side by side: time to match and match quality (p50 / p90), then each
    /// queue's quality by the oldest ticket's wait (medians), then rating convergence.
    fn quality_table(&self, out: &mut String) {
        let queues: Vec<_> = self.quality.queues.iter().filter(|(_, q)| q.matched_players > 0).collect();
        if queues.is_empty() {
            return;
        }
        let pair = |p: &Percentiles| format!("{:.0} / {:.0}", p.p50, p.p90);
        let _ = writeln!(out);
        let _ = writeln!(out, "match quality by queue (p50 / p90; ratings and true skill in points)");
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:>8} {:>17} {:>14} {:>14} {:>14} {:>16}",
            "queue",
            "players",
            "matches",
            "time to match ms",
            "rating spread",
            "team diff",
            "worst ping ms",
            "true-skill spread"
        );
        for (name, queue) in &queues {
            let _ = writeln!(
                out,
                "{:<12} {:>8} {:>8} {:>17} {:>14} {:>14} {:>14} {:>16}",
                name,
                queue.matched_players,
                queue.matches,
                pair(&queue.time_to_match_ms),
                pair(&queue.rating_spread),
                pair(&queue.team_rating_diff),
                queue.worst_latency_ms.as_ref().map_or("-".to_owned(), pair),
                pair(&queue.true_skill_spread),
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "quality against wait (medians of the matches whose oldest ticket waited this long)"
        );
        let _ = writeln!(
            out,
            "{:<12} {:<8} {:>8} {:>14} {:>10} {:>14} {:>17}",
            "queue", "wait", "matches", "rating spread", "team diff", "worst ping ms", "true-skill spread"
        );
        let cell = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.0}"));
        for (name, queue) in &queues {
            for row in queue.by_wait.iter().filter(|row| row.matches > 0) {
                let _ = writeln!(
                    out,
                    "{:<12} {:<8} {:>8} {:>14} {:>10} {:>14} {:>17}",
                    name,
                    row.wait,
                    row.matches,
                    cell(row.rating_spread_p50),
                    cell(row.team_rating_diff_p50),
                    cell(row.worst_latency_ms_p50),
                    cell(row.true_skill_spread_p50),
                );
            }
        }
        let convergence = &self.quality.rating_convergence;
        let rho = |value: Option<f64>| value.map_or("n/a (all equal)".to_owned(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "\nrating convergence: Spearman rank correlation of rating with true skill over {} players: \
             start {}, end {}",
            convergence.players,
            rho(convergence.spearman_start),
            rho(convergence.spearman_end)
        );
    }
}

fn percent(rate: f64) -> String {
    format!("{:.2}%", rate * 100.0)
}

/// `850.0 ms` or `12.35 s`.
fn millis(ms: f64) -> String {
    if ms >= 10_000.0 { format!("{:.2} s", ms / 1000.0) } else { format!("{ms:.1} ms") }
}

/// Which (scenario, kind) failures have been logged in full already.
static LOGGED: [[AtomicBool; ERROR_KINDS]; SCENARIOS] =
    [const { [const { AtomicBool::new(false) }; ERROR_KINDS] }; SCENARIOS];

/// Logs the first failure of each kind per scenario with its detail; the rest are only
/// counted (a hundred thousand players failing the same way must not flood the log).
pub fn log_failure(scenario: Scenario, failure: &Failure) {
    let first = !LOGGED[scenario.index()][failure.kind.index()].swap(true, Ordering::Relaxed);
    if first {
        tracing::warn!(
            scenario = scenario.name(),
            kind = failure.kind.name(),
            "{} (further `{}` failures of {scenario} are counted in the report and /metrics, not logged)",
            failure.detail,
            failure.kind
        );
    } else {
        tracing::debug!(scenario = scenario.name(), kind = failure.kind.name(), "{}", failure.detail);
    }
}

/// One stage of the table: `name: from S s for D s, A → B <players> (rates: ...)`.
fn stage_line(name: &str, stage: &crate::stages::StageReport, players: &str) -> String {
    let rates: Vec<String> =
        stage.rates.iter().map(|(scenario, rate)| format!("{scenario} {rate:.4}/s")).collect();
    format!(
        "{name}: from {:.0} s for {:.0} s, {} → {} {players}{}",
        stage.start_seconds,
        stage.duration_seconds,
        stage.from_players,
        stage.players,
        if rates.is_empty() { String::new() } else { format!(" (rates: {})", rates.join(", ")) }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_shared::protocol::HarnessScenarioStats;

    fn stats() -> HarnessStats {
        let mut stats = HarnessStats::default();
        for scenario in Scenario::ALL {
            stats.scenarios.insert(scenario.name().to_owned(), HarnessScenarioStats::default());
        }
        let matchmaking = stats.scenarios.get_mut("matchmaking").expect("listed");
        matchmaking.attempted = 10;
        matchmaking.succeeded = 9;
        matchmaking.failed = 1;
        matchmaking.latency_us = HistogramData(vec![(1500, 9), (30_000, 1)]);
        stats.time_to_match_us = HistogramData(vec![(1_000_000, 8), (4_000_000, 1)]);
        stats.players.peak = 1000;
        stats.errors.insert("timeout".to_owned(), 1);
        stats
    }

    fn facts() -> RunFacts<'static> {
        RunFacts {
            instance: "h1",
            host: "box",
            gateway: "http://127.0.0.1:8080",
            started_at: 1,
            duration: Duration::from_secs(60),
            target: 1000,
            spawned: 1000,
            fleet_instances: 1,
        }
    }

    #[test]
    fn the_report_has_the_contract_shape() {
        let report = Report::build(&stats(), &facts());
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["players"]["peak"], 1000);
        let matchmaking = &json["scenarios"]["matchmaking"];
        for key in ["attempted", "succeeded", "failed"] {
            assert!(matchmaking[key].is_u64(), "{key}: {matchmaking}");
        }
        for key in ["p50", "p90", "p99", "max"] {
            assert!(matchmaking["latency_ms"][key].is_number(), "{key}");
            assert!(json["time_to_match_ms"][key].is_number(), "{key}");
        }
        assert_eq!(matchmaking["latency_ms"]["p50"], 1.5);
        assert_eq!(json["time_to_match_ms"]["max"], 4000.0);
        assert_eq!(json["scenarios"].as_object().expect("map").len(), SCENARIOS);
        let back: Report = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, report);
    }

    #[test]
    fn thresholds_say_which_was_breached() {
        let mut report = Report::build(&stats(), &facts());
        assert_eq!(report.error_rate, 0.1);
        report.judge(Some(0.05), Some(Duration::from_secs(10)));
        let breaches = report.breaches();
        assert_eq!(breaches.len(), 1);
        assert_eq!(breaches[0].name, "max_error_rate");
        assert!(breaches[0].detail.contains("10.00% is over the limit of 5.00%"), "{}", breaches[0].detail);

        let mut report = Report::build(&stats(), &facts());
        report.judge(None, Some(Duration::from_secs(2)));
        assert_eq!(report.breaches()[0].name, "max_time_to_match_p99_ms");
        assert!(report.table().contains("FAIL: time-to-match p99 4000.0 ms is over the limit of 2000.0 ms"));
    }

    #[test]
    fn nothing_matched_fails_a_time_to_match_gate() {
        let mut stats = stats();
        stats.time_to_match_us = HistogramData::default();
        if let Some(matchmaking) = stats.scenarios.get_mut("matchmaking") {
            matchmaking.succeeded = 0;
        }
        let mut report = Report::build(&stats, &facts());
        report.judge(None, Some(Duration::from_secs(60)));
        assert!(report.breaches()[0].detail.contains("no player was matched"));
    }
}

//! What the run measured: counters, HDR histograms and player counts.
//!
//! Players record into lock-free counters and a few mutex-guarded histograms with HDR
//! buckets (microsecond resolution, 3 significant digits), each kept as its recorded
//! buckets so that a snapshot costs what was recorded since the last one. Once a second
//! [`Stats::snapshot`]
//! turns them into the `harness.stats.<instance>` message, which is also what the final
//! report and the progress line are made from, and [`Stats::export`] mirrors the counters
//! to Prometheus, so every number has one source.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use mm_shared::protocol::{HarnessPlayers, HarnessScenarioStats, HarnessStats, HistogramData};

use crate::config::Rate;
use crate::scenario::{ERROR_KINDS, ErrorKind, Outcome, SCENARIOS, Scenario};

/// Largest value a histogram keeps: one hour, in microseconds (larger values saturate).
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// Where a player is in its life (for the players-by-state gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayerState {
    LoggingIn,
    Idle,
    Busy,
}

impl PlayerState {
    const ALL: [PlayerState; 3] = [PlayerState::LoggingIn, PlayerState::Idle, PlayerState::Busy];

    fn name(self) -> &'static str {
        match self {
            PlayerState::LoggingIn => "logging_in",
            PlayerState::Idle => "idle",
            PlayerState::Busy => "busy",
        }
    }
}

/// Why a player task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// It ran the `logout` scenario.
    Logout,
    /// The target shrank.
    Retired,
    /// The run ended.
    Shutdown,
}

impl ExitReason {
    const ALL: [ExitReason; 3] = [ExitReason::Logout, ExitReason::Retired, ExitReason::Shutdown];

    fn name(self) -> &'static str {
        match self {
            ExitReason::Logout => "logout",
            ExitReason::Retired => "retired",
            ExitReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Default)]
struct ScenarioCounters {
    attempted: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    cut: AtomicU64,
    starved: AtomicU64,
    /// Executions the compositor handed out (attempts of follow-ups are not in it).
    dispatched: AtomicU64,
    /// Configured rate and the compositor's current aim, as `f64` bits.
    rate_bits: AtomicU64,
    desired_bits: AtomicU64,
}

/// Everything measured since the start of the run. Shared by every player.
pub struct Stats {
    scenarios: [ScenarioCounters; SCENARIOS],
    errors: [[AtomicU64; ERROR_KINDS]; SCENARIOS],
    latency: [Mutex<Recorded>; SCENARIOS],
    time_to_match: Mutex<Recorded>,
    time_to_play: Mutex<Recorded>,
    tick_lag: Mutex<Recorded>,
    states: [AtomicU64; 3],
    peak: AtomicU64,
    spawned: AtomicU64,
    exited: [AtomicU64; 3],
    game_messages: AtomicU64,
    /// Prometheus handles, registered once (a lookup by labels allocates).
    prometheus: Handles,
}

struct Handles {
    scenario_duration: [metrics::Histogram; SCENARIOS],
    /// Every (scenario, kind) failure counter, there at 0 from the start: a dashboard
    /// panel of failures shows zeros rather than "No data" until the first one.
    failures: [[metrics::Counter; ERROR_KINDS]; SCENARIOS],
    time_to_match: metrics::Histogram,
    time_to_play: metrics::Histogram,
    tick_lag: metrics::Histogram,
}

/// A histogram that keeps its own `iter_recorded` output up to date, so that the snapshot
/// every `stats_interval` costs what was recorded since the last one, not a walk over
/// every bucket up to the largest value (which was a quarter of the harness's CPU at a
/// few hundred requests per second).
struct Recorded {
    /// Values recorded since the last [`Recorded::data`], as their bucket's highest
    /// equivalent value (what `iter_recorded` calls `value_iterated_to`).
    pending: Vec<u64>,
    /// (highest equivalent value, count) per recorded bucket, ascending.
    data: Vec<(u64, u64)>,
}

/// Values a histogram holds before they are merged even without a snapshot.
const PENDING_MAX: usize = 4096;

/// The bucket layout every histogram shares: 1 µs .. one hour, 3 significant digits.
fn layout() -> &'static Histogram<u64> {
    static LAYOUT: std::sync::OnceLock<Histogram<u64>> = std::sync::OnceLock::new();
    // Constant bounds that hdrhistogram accepts: no input reaches this.
    LAYOUT.get_or_init(|| Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid histogram bounds"))
}

impl Recorded {
    fn record(&mut self, micros: u64) {
        self.pending.push(layout().highest_equivalent(micros));
        if self.pending.len() >= PENDING_MAX {
            self.merge();
        }
    }

    /// Folds the pending values into `data`: sort them, then one merge pass.
    fn merge(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_unstable();
        let mut merged = Vec::with_capacity(self.data.len() + self.pending.len().min(64));
        let mut old = self.data.iter().copied().peekable();
        let mut new = self.pending.drain(..).peekable();
        while let Some(&value) = new.peek() {
            let mut count = 0;
            while new.next_if_eq(&value).is_some() {
                count += 1;
            }
            while let Some(earlier) = old.next_if(|&(earlier, _)| earlier < value) {
                merged.push(earlier);
            }
            match old.next_if(|&(earlier, _)| earlier == value) {
                Some((_, before)) => merged.push((value, before + count)),
                None => merged.push((value, count)),
            }
        }
        merged.extend(old);
        self.data = merged;
    }
}

fn histogram() -> Mutex<Recorded> {
    Mutex::new(Recorded { pending: Vec::new(), data: Vec::new() })
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX).clamp(1, HISTOGRAM_MAX_US)
}

fn record(histogram: &Mutex<Recorded>, duration: Duration) {
    let mut histogram = histogram.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    histogram.record(micros(duration));
}

fn to_data(histogram: &Mutex<Recorded>) -> HistogramData {
    let mut histogram = histogram.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    histogram.merge();
    HistogramData(histogram.data.clone())
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        describe_metrics();
        Self {
            scenarios: Default::default(),
            errors: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| histogram()),
            time_to_match: histogram(),
            time_to_play: histogram(),
            tick_lag: histogram(),
            states: Default::default(),
            peak: AtomicU64::new(0),
            spawned: AtomicU64::new(0),
            exited: Default::default(),
            game_messages: AtomicU64::new(0),
            prometheus: Handles {
                scenario_duration: Scenario::ALL.map(|scenario| {
                    metrics::histogram!("mm_harness_scenario_duration_seconds", "scenario" => scenario.name())
                }),
                failures: Scenario::ALL.map(|scenario| {
                    ErrorKind::ALL.map(|kind| {
                        let counter = metrics::counter!(
                            "mm_harness_scenario_failures_total",
                            "scenario" => scenario.name(),
                            "kind" => kind.name()
                        );
                        counter.absolute(0);
                        counter
                    })
                }),
                time_to_match: metrics::histogram!("mm_harness_time_to_match_seconds"),
                time_to_play: metrics::histogram!("mm_harness_time_to_play_seconds"),
                tick_lag: metrics::histogram!("mm_harness_tick_lag_seconds"),
            },
        }
    }

    // --- players ---

    pub fn player_spawned(&self, alive: u64) {
        self.spawned.fetch_add(1, Ordering::Relaxed);
        self.peak.fetch_max(alive, Ordering::Relaxed);
    }

    pub fn player_exited(&self, reason: ExitReason) {
        let index = ExitReason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.exited[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn enter(&self, state: PlayerState) {
        self.states[state as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn leave(&self, state: PlayerState) {
        self.states[state as usize].fetch_sub(1, Ordering::Relaxed);
    }

    pub fn players_in(&self, state: PlayerState) -> u64 {
        self.states[state as usize].load(Ordering::Relaxed)
    }

    pub fn spawned(&self) -> u64 {
        self.spawned.load(Ordering::Relaxed)
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    // --- scenarios ---

    pub fn attempt(&self, scenario: Scenario) {
        self.scenarios[scenario.index()].attempted.fetch_add(1, Ordering::Relaxed);
    }

    /// A 429 that `scenario` waited out and retried: shown under its kind (`http_429`)
    /// in the errors by kind, without failing the attempt.
    pub fn throttled(&self, scenario: Scenario) {
        self.errors[scenario.index()][ErrorKind::Throttled.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Records how an attempt of `scenario` that took `took` ended.
    pub fn finish(&self, scenario: Scenario, took: Duration, outcome: &Outcome) {
        let counters = &self.scenarios[scenario.index()];
        match outcome {
            Outcome::Succeeded => counters.succeeded.fetch_add(1, Ordering::Relaxed),
            Outcome::Rejected => counters.rejected.fetch_add(1, Ordering::Relaxed),
            Outcome::Failed(failure) => {
                self.errors[scenario.index()][failure.kind.index()].fetch_add(1, Ordering::Relaxed);
                counters.failed.fetch_add(1, Ordering::Relaxed)
            }
            Outcome::Aborted => {
                counters.cut.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        record(&self.latency[scenario.index()], took);
        self.prometheus.scenario_duration[scenario.index()].record(took.as_secs_f64());
    }

    pub fn dispatched(&self, started: &[u64; SCENARIOS], starved: &[u64; SCENARIOS]) {
        for index in 0..SCENARIOS {
            if started[index] > 0 {
                self.scenarios[index].dispatched.fetch_add(started[index], Ordering::Relaxed);
            }
            if starved[index] > 0 {
                self.scenarios[index].starved.fetch_add(starved[index], Ordering::Relaxed);
            }
        }
    }

    /// The compositor's configuration and aim now (per idle player, and in total).
    pub fn set_rates(&self, rates: &[Rate; SCENARIOS], desired: &[f64; SCENARIOS]) {
        for index in 0..SCENARIOS {
            self.scenarios[index].rate_bits.store(rates[index].as_per_second().to_bits(), Ordering::Relaxed);
            self.scenarios[index].desired_bits.store(desired[index].to_bits(), Ordering::Relaxed);
        }
    }

    pub fn dispatched_counts(&self) -> [u64; SCENARIOS] {
        std::array::from_fn(|index| self.scenarios[index].dispatched.load(Ordering::Relaxed))
    }

    pub fn time_to_match(&self, took: Duration) {
        record(&self.time_to_match, took);
        self.prometheus.time_to_match.record(took.as_secs_f64());
    }

    pub fn time_to_play(&self, took: Duration) {
        record(&self.time_to_play, took);
        self.prometheus.time_to_play.record(took.as_secs_f64());
    }

    pub fn tick_lag(&self, lag: Duration) {
        record(&self.tick_lag, lag);
        self.prometheus.tick_lag.record(lag.as_secs_f64());
    }

    pub fn game_message_echoed(&self) {
        self.game_messages.fetch_add(1, Ordering::Relaxed);
    }

    /// In-game messages echoed correctly so far.
    pub fn game_messages_echoed(&self) -> u64 {
        self.game_messages.load(Ordering::Relaxed)
    }

    // --- output ---

    /// Everything so far, as the `harness.stats` message. `actual` is the dispatch rate
    /// per scenario the caller measured over its last interval.
    pub fn snapshot(&self, actual: &[f64; SCENARIOS]) -> HarnessStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let scenarios = Scenario::ALL
            .into_iter()
            .map(|scenario| {
                let c = &self.scenarios[scenario.index()];
                let stats = HarnessScenarioStats {
                    attempted: load(&c.attempted),
                    succeeded: load(&c.succeeded),
                    failed: load(&c.failed),
                    rejected: load(&c.rejected),
                    cut: load(&c.cut),
                    starved: load(&c.starved),
                    rate: f64::from_bits(load(&c.rate_bits)),
                    desired_per_second: f64::from_bits(load(&c.desired_bits)),
                    actual_per_second: actual[scenario.index()],
                    latency_us: to_data(&self.latency[scenario.index()]),
                };
                (scenario.name().to_owned(), stats)
            })
            .collect();
        let mut errors = std::collections::BTreeMap::new();
        for per_scenario in &self.errors {
            for kind in ErrorKind::ALL {
                let count = load(&per_scenario[kind.index()]);
                if count > 0 {
                    *errors.entry(kind.name().to_owned()).or_insert(0) += count;
                }
            }
        }
        let (logging_in, idle, busy) = (
            self.players_in(PlayerState::LoggingIn),
            self.players_in(PlayerState::Idle),
            self.players_in(PlayerState::Busy),
        );
        HarnessStats {
            at: mm_shared::protocol::now_ms(),
            players: HarnessPlayers {
                alive: logging_in + idle + busy,
                logging_in,
                idle,
                busy,
                peak: self.peak(),
            },
            scenarios,
            time_to_match_us: to_data(&self.time_to_match),
            time_to_play_us: to_data(&self.time_to_play),
            tick_lag_us: to_data(&self.tick_lag),
            errors,
            ..HarnessStats::default()
        }
    }

    /// Failures of `scenario` by kind (non-zero only).
    pub fn errors_of(&self, scenario: Scenario) -> Vec<(ErrorKind, u64)> {
        ErrorKind::ALL
            .into_iter()
            .map(|kind| (kind, self.errors[scenario.index()][kind.index()].load(Ordering::Relaxed)))
            .filter(|(_, count)| *count > 0)
            .collect()
    }

    /// Mirrors the counters and gauges to Prometheus (histograms are recorded as they happen).
    pub fn export(&self, snapshot: &HarnessStats, target: u64) {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        for state in PlayerState::ALL {
            metrics::gauge!("mm_harness_players", "state" => state.name()).set(self.players_in(state) as f64);
        }
        metrics::gauge!("mm_harness_players_target").set(target as f64);
        metrics::gauge!("mm_harness_players_peak").set(self.peak() as f64);
        metrics::counter!("mm_harness_players_spawned_total").absolute(load(&self.spawned));
        for (index, reason) in ExitReason::ALL.into_iter().enumerate() {
            metrics::counter!("mm_harness_players_exited_total", "reason" => reason.name())
                .absolute(load(&self.exited[index]));
        }
        for scenario in Scenario::ALL {
            let name = scenario.name();
            let c = &self.scenarios[scenario.index()];
            metrics::counter!("mm_harness_scenario_attempts_total", "scenario" => name)
                .absolute(load(&c.attempted));
            metrics::counter!("mm_harness_scenario_successes_total", "scenario" => name)
                .absolute(load(&c.succeeded));
            metrics::counter!("mm_harness_scenario_rejections_total", "scenario" => name)
                .absolute(load(&c.rejected));
            metrics::counter!("mm_harness_scenario_cut_total", "scenario" => name).absolute(load(&c.cut));
            metrics::counter!("mm_harness_scenario_starved_total", "scenario" => name)
                .absolute(load(&c.starved));
            metrics::counter!("mm_harness_scenario_dispatched_total", "scenario" => name)
                .absolute(load(&c.dispatched));
            for kind in ErrorKind::ALL {
                let count = load(&self.errors[scenario.index()][kind.index()]);
                self.prometheus.failures[scenario.index()][kind.index()].absolute(count);
            }
            if let Some(stats) = snapshot.scenarios.get(name) {
                metrics::gauge!("mm_harness_scenario_rate_per_idle_player", "scenario" => name)
                    .set(stats.rate);
                metrics::gauge!("mm_harness_scenario_desired_rate", "scenario" => name)
                    .set(stats.desired_per_second);
                metrics::gauge!("mm_harness_scenario_actual_rate", "scenario" => name)
                    .set(stats.actual_per_second);
            }
        }
        metrics::counter!("mm_harness_game_messages_echoed_total").absolute(load(&self.game_messages));
    }
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("mm_harness_players", "Simulated players by state (logging_in, idle, busy).");
    describe_gauge!(
        "mm_harness_players_target",
        "Players this instance keeps alive: its own or its share of the fleet target."
    );
    describe_gauge!("mm_harness_players_peak", "Most players alive at once in this run.");
    describe_counter!("mm_harness_players_spawned_total", "Players started (including replacements).");
    describe_counter!(
        "mm_harness_players_exited_total",
        "Players that ended, by reason (logout, retired, shutdown)."
    );
    describe_counter!("mm_harness_scenario_attempts_total", "Scenario executions started, by scenario.");
    describe_counter!(
        "mm_harness_scenario_successes_total",
        "Scenario executions that succeeded, by scenario."
    );
    describe_counter!(
        "mm_harness_scenario_failures_total",
        "Scenario executions that failed, by scenario and kind (timeout, http_5xx, echo_mismatch, ...)."
    );
    describe_counter!(
        "mm_harness_scenario_rejections_total",
        "Scenario executions the backend correctly refused (a purchase without enough balance), by scenario."
    );
    describe_counter!(
        "mm_harness_scenario_cut_total",
        "Scenario executions cut short by the end of the run (still running when its drain ran out), by scenario."
    );
    describe_counter!(
        "mm_harness_scenario_starved_total",
        "Executions the compositor wanted but found no idle player for, by scenario."
    );
    describe_counter!(
        "mm_harness_scenario_dispatched_total",
        "Executions the compositor handed to idle players."
    );
    describe_histogram!(
        "mm_harness_scenario_duration_seconds",
        Unit::Seconds,
        "How long a scenario took from start to end, by scenario."
    );
    describe_gauge!(
        "mm_harness_scenario_rate_per_idle_player",
        "Configured rate: executions per idle player per second, by scenario."
    );
    describe_gauge!(
        "mm_harness_scenario_desired_rate",
        "Executions per second the compositor aims for now (idle players x rate)."
    );
    describe_gauge!(
        "mm_harness_scenario_actual_rate",
        "Executions per second the compositor dispatched over the last second."
    );
    describe_histogram!("mm_harness_tick_lag_seconds", Unit::Seconds, "How late each compositor tick ran.");
    describe_histogram!(
        "mm_harness_time_to_match_seconds",
        Unit::Seconds,
        "Matchmaking join to matched ticket."
    );
    describe_histogram!(
        "mm_harness_time_to_play_seconds",
        Unit::Seconds,
        "Matchmaking join to the first echo from the match's game server."
    );
    describe_counter!(
        "mm_harness_game_messages_echoed_total",
        "In-game messages the game server echoed correctly."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Failure;

    #[test]
    fn outcomes_land_in_their_counters_and_histograms() {
        let stats = Stats::new();
        for outcome in [
            Outcome::Succeeded,
            Outcome::Succeeded,
            Outcome::Rejected,
            Outcome::Failed(Failure::new(ErrorKind::Http5xx, "boom")),
            Outcome::Aborted,
        ] {
            stats.attempt(Scenario::StorePurchase);
            stats.finish(Scenario::StorePurchase, Duration::from_millis(20), &outcome);
        }
        let snapshot = stats.snapshot(&[0.0; SCENARIOS]);
        let purchase = &snapshot.scenarios["store_purchase"];
        assert_eq!(
            (purchase.attempted, purchase.succeeded, purchase.rejected, purchase.failed, purchase.cut),
            (5, 2, 1, 1, 1)
        );
        assert_eq!(purchase.latency_us.count(), 4, "runs cut short have no latency");
        let p50 = purchase.latency_us.value_at_quantile(0.5);
        assert!((19_980..=20_020).contains(&p50), "{p50} µs: 3 significant digits");
        assert_eq!(snapshot.errors.get("http_5xx"), Some(&1));
        assert_eq!(snapshot.scenarios.len(), SCENARIOS, "every scenario is listed");
    }

    #[test]
    fn histogram_data_is_what_hdrhistogram_iterates() {
        let mut reference = Histogram::<u64>::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("bounds");
        let recorded = histogram();
        for round in 0..5 {
            // More than PENDING_MAX per round, so merges happen both while recording and
            // at the snapshot; values from 1 µs to the cap, many in the same buckets.
            for _ in 0..(PENDING_MAX + 1000) {
                let value = match fastrand::u8(..4) {
                    0 => fastrand::u64(1..=2048),
                    1 => fastrand::u64(1..=100_000),
                    2 => fastrand::u64(1..=HISTOGRAM_MAX_US),
                    _ => 20_000 + fastrand::u64(..50),
                };
                reference.saturating_record(value);
                record(&recorded, Duration::from_micros(value));
            }
            let expected: Vec<(u64, u64)> = reference
                .iter_recorded()
                .map(|value| (value.value_iterated_to(), value.count_at_value()))
                .collect();
            assert_eq!(to_data(&recorded).0, expected, "round {round}");
        }
        assert_eq!(to_data(&histogram()).0, Vec::new(), "empty");
    }
}

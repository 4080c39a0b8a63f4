//! Match quality as the players saw it, per queue, and how well ratings learnt.
//!
//! Every matched player reports its match here: the queue, the match's quality as the
//! matchmaker formed it (rating spread, the sides' rating difference, its oldest ticket's
//! wait: in the matched ticket's view), its own true skill (which only the harness knows)
//! and the latency it declared to the match's region. A match is summed up once its
//! players have all reported (or at the end, or when it is old): its true-skill spread is
//! the spread of the true skills this instance saw in it (all of them, unless several
//! instances share one match).
//!
//! Everything is kept per queue, overall and per wait bucket (the oldest ticket's wait:
//! the same buckets as the matchmaker's `wait` label), in HDR histograms of whole rating
//! points and milliseconds: the report's percentiles and its quality-by-wait table come
//! from here, and so do the per-queue series in `/metrics`.
//!
//! Ratings: each solo ticket's view carries the player's rating when it joined; the first
//! and the last one seen per player, against the player's true skill, give Spearman's rank
//! correlation at the start and at the end of the run.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mm_shared::protocol::{HistogramData, MatchQuality};
use serde::{Deserialize, Serialize};

use crate::population::spearman;
use crate::report::Percentiles;

/// The wait buckets (upper bounds in ms) and their labels: the matchmaker's.
pub const WAIT_BUCKETS: [(u64, &str); 5] =
    [(5_000, "0-5s"), (15_000, "5-15s"), (30_000, "15-30s"), (60_000, "30-60s"), (u64::MAX, "60s+")];

/// Largest value kept (rating points, ms): larger ones saturate.
const MAX_VALUE: u64 = 10_000_000;
/// A match not complete after this long is summed up with what was seen.
const MATCH_MAX_AGE: Duration = Duration::from_secs(120);
/// Matches kept waiting for their players at most (beyond, the oldest are summed up).
const MAX_PENDING: usize = 20_000;

fn bucket_of(wait_ms: u64) -> usize {
    WAIT_BUCKETS.iter().position(|(limit, _)| wait_ms < *limit).unwrap_or(WAIT_BUCKETS.len() - 1)
}

fn histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts: no input reaches this.
    Histogram::new_with_bounds(1, MAX_VALUE, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, value: f64) {
    if value.is_finite() {
        histogram.saturating_record(value.round().clamp(0.0, MAX_VALUE as f64) as u64);
    }
}

fn data(histogram: &Histogram<u64>) -> HistogramData {
    HistogramData(histogram.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect())
}

/// Quality of the matches in one bucket (or overall).
struct Sums {
    matches: u64,
    rating_spread: Histogram<u64>,
    team_rating_diff: Histogram<u64>,
    worst_latency_ms: Histogram<u64>,
    true_skill_spread: Histogram<u64>,
}

impl Sums {
    fn new() -> Self {
        Self {
            matches: 0,
            rating_spread: histogram(),
            team_rating_diff: histogram(),
            worst_latency_ms: histogram(),
            true_skill_spread: histogram(),
        }
    }
}

struct QueueSums {
    time_to_match_us: Histogram<u64>,
    all: Sums,
    by_wait: [Sums; WAIT_BUCKETS.len()],
    /// Prometheus: true-skill spread by wait bucket.
    spread_metric: [metrics::Histogram; WAIT_BUCKETS.len()],
    time_to_match_metric: metrics::Histogram,
    matches_metric: metrics::Counter,
}

/// A match some of whose players have reported.
struct Pending {
    queue: usize,
    expected: usize,
    skills: Vec<f64>,
    worst_latency_ms: Option<f64>,
    quality: Option<MatchQuality>,
    /// The longest time-to-match its players saw (when the view has no quality).
    waited: Duration,
    since: Instant,
}

/// A player's ratings seen: true skill, the first and the last.
#[derive(Clone, Copy)]
struct Seen {
    true_skill: f64,
    first: f64,
    last: f64,
}

struct Inner {
    queues: Vec<QueueSums>,
    pending: HashMap<Box<str>, Pending>,
    ratings: HashMap<u64, Seen>,
}

/// One matched player's report of its match.
pub struct Matched<'a> {
    pub queue: &'a str,
    pub match_id: &'a str,
    /// Players in the match (the view's teams, or the queue's match size).
    pub players: usize,
    pub quality: Option<&'a MatchQuality>,
    pub true_skill: f64,
    /// The latency this player's ticket declared to the match's region.
    pub latency_ms: Option<f64>,
    pub time_to_match: Duration,
}

/// Every queue's quality; shared by every player.
pub struct Quality {
    names: Vec<String>,
    inner: Mutex<Inner>,
}

impl Quality {
    /// For the queues the population uses (a player joins only those; anything else is
    /// not counted).
    pub fn new(queues: Vec<String>) -> Self {
        describe_metrics();
        let sums = queues
            .iter()
            .map(|queue| QueueSums {
                time_to_match_us: histogram(),
                all: Sums::new(),
                by_wait: std::array::from_fn(|_| Sums::new()),
                spread_metric: std::array::from_fn(|index| {
                    metrics::histogram!(
                        "mm_harness_match_true_skill_spread",
                        "queue" => queue.clone(),
                        "wait" => WAIT_BUCKETS[index].1
                    )
                }),
                time_to_match_metric: metrics::histogram!("mm_harness_queue_time_to_match_seconds", "queue" => queue.clone()),
                matches_metric: {
                    let counter = metrics::counter!("mm_harness_matches_total", "queue" => queue.clone());
                    counter.increment(0);
                    counter
                },
            })
            .collect();
        metrics::gauge!("mm_harness_rating_rank_correlation").set(0.0);
        Self {
            names: queues,
            inner: Mutex::new(Inner { queues: sums, pending: HashMap::new(), ratings: HashMap::new() }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A player was matched.
    pub fn matched(&self, report: Matched<'_>) {
        let Some(queue) = self.names.iter().position(|name| name == report.queue) else { return };
        let mut inner = self.lock();
        let sums = &mut inner.queues[queue];
        sums.time_to_match_us
            .saturating_record(u64::try_from(report.time_to_match.as_micros()).unwrap_or(u64::MAX));
        sums.time_to_match_metric.record(report.time_to_match.as_secs_f64());
        let pending = inner.pending.entry(report.match_id.into()).or_insert_with(|| Pending {
            queue,
            expected: report.players.max(1),
            skills: Vec::new(),
            worst_latency_ms: None,
            quality: report.quality.cloned(),
            waited: Duration::ZERO,
            since: Instant::now(),
        });
        pending.skills.push(report.true_skill);
        if let Some(latency) = report.latency_ms {
            pending.worst_latency_ms =
                Some(pending.worst_latency_ms.map_or(latency, |worst| worst.max(latency)));
        }
        pending.waited = pending.waited.max(report.time_to_match);
        if pending.quality.is_none() {
            pending.quality = report.quality.cloned();
        }
        if pending.skills.len() >= pending.expected {
            if let Some(done) = inner.pending.remove(report.match_id) {
                finish(&mut inner, done);
            }
        } else if inner.pending.len() > MAX_PENDING {
            sweep(&mut inner, Duration::ZERO);
        }
    }

    /// A solo player's rating when it joined (from its matched ticket's view).
    pub fn rating(&self, player: u64, true_skill: f64, rating: f64) {
        if !rating.is_finite() {
            return;
        }
        let mut inner = self.lock();
        inner.ratings.entry(player).and_modify(|seen| seen.last = rating).or_insert(Seen {
            true_skill,
            first: rating,
            last: rating,
        });
    }

    /// Sums up what is complete or old; updates the gauges (every stats interval).
    pub fn tick(&self) {
        let mut inner = self.lock();
        sweep(&mut inner, MATCH_MAX_AGE);
        let pairs: Vec<(f64, f64)> =
            inner.ratings.values().map(|seen| (seen.true_skill, seen.last)).collect();
        metrics::gauge!("mm_harness_rating_rank_correlation").set(spearman(&pairs).unwrap_or(0.0));
    }

    /// Everything, for the report (matches still waiting for players are summed up).
    pub fn report(&self) -> QualityReport {
        let mut inner = self.lock();
        sweep(&mut inner, Duration::ZERO);
        let queues = self
            .names
            .iter()
            .zip(&inner.queues)
            .map(|(name, sums)| {
                let by_wait = WAIT_BUCKETS
                    .iter()
                    .zip(&sums.by_wait)
                    .map(|((_, label), sums)| WaitRow {
                        wait: (*label).to_owned(),
                        matches: sums.matches,
                        rating_spread_p50: median(&sums.rating_spread),
                        team_rating_diff_p50: median(&sums.team_rating_diff),
                        worst_latency_ms_p50: median(&sums.worst_latency_ms),
                        true_skill_spread_p50: median(&sums.true_skill_spread),
                    })
                    .collect();
                let points = |histogram: &Histogram<u64>| Percentiles::from_units(&data(histogram));
                let report = QueueReport {
                    matched_players: sums.time_to_match_us.len(),
                    matches: sums.all.matches,
                    time_to_match_ms: Percentiles::from_micros(&data(&sums.time_to_match_us)),
                    rating_spread: points(&sums.all.rating_spread),
                    team_rating_diff: points(&sums.all.team_rating_diff),
                    worst_latency_ms: (!sums.all.worst_latency_ms.is_empty())
                        .then(|| points(&sums.all.worst_latency_ms)),
                    true_skill_spread: points(&sums.all.true_skill_spread),
                    by_wait,
                };
                (name.clone(), report)
            })
            .collect();
        let first: Vec<(f64, f64)> = inner.ratings.values().map(|s| (s.true_skill, s.first)).collect();
        let last: Vec<(f64, f64)> = inner.ratings.values().map(|s| (s.true_skill, s.last)).collect();
        QualityReport {
            queues,
            rating_convergence: Convergence {
                players: inner.ratings.len(),
                spearman_start: spearman(&first),
                spearman_end: spearman(&last),
            },
        }
    }
}

fn median(histogram: &Histogram<u64>) -> Option<f64> {
    (!histogram.is_empty()).then(|| histogram.value_at_quantile(0.5) as f64)
}

/// Sums up the matches that are complete or older than `age`.
fn sweep(inner: &mut Inner, age: Duration) {
    let done: Vec<Box<str>> = inner
        .pending
        .iter()
        .filter(|(_, pending)| pending.since.elapsed() >= age)
        .map(|(id, _)| id.clone())
        .collect();
    for id in done {
        if let Some(pending) = inner.pending.remove(&id) {
            finish(inner, pending);
        }
    }
}

fn finish(inner: &mut Inner, pending: Pending) {
    let wait_ms = pending
        .quality
        .as_ref()
        .map_or(u64::try_from(pending.waited.as_millis()).unwrap_or(u64::MAX), |quality| quality.wait_ms);
    let bucket = bucket_of(wait_ms);
    let high = pending.skills.iter().copied().fold(f64::MIN, f64::max);
    let low = pending.skills.iter().copied().fold(f64::MAX, f64::min);
    let spread = (pending.skills.len() >= 2).then_some(high - low);
    let Some(sums) = inner.queues.get_mut(pending.queue) else { return };
    sums.matches_metric.increment(1);
    for sums in [&mut sums.all, &mut sums.by_wait[bucket]] {
        sums.matches += 1;
        if let Some(quality) = &pending.quality {
            record(&mut sums.rating_spread, quality.rating_spread);
            record(&mut sums.team_rating_diff, quality.team_rating_diff);
        }
        if let Some(latency) =
            pending.quality.as_ref().and_then(|q| q.worst_latency_ms).or(pending.worst_latency_ms)
        {
            record(&mut sums.worst_latency_ms, latency);
        }
        if let Some(spread) = spread {
            record(&mut sums.true_skill_spread, spread);
        }
    }
    if let Some(spread) = spread {
        sums.spread_metric[bucket].record(spread);
    }
}

/// One queue in the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueReport {
    /// Players matched in this queue.
    pub matched_players: u64,
    /// Matches (this instance saw a player of).
    pub matches: u64,
    pub time_to_match_ms: Percentiles,
    /// Highest minus lowest ticket rating of a match, as the matchmaker formed it.
    pub rating_spread: Percentiles,
    /// Difference of the sides' mean ratings.
    pub team_rating_diff: Percentiles,
    /// The worst member's latency to the match's region (queues that place by latency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worst_latency_ms: Option<Percentiles>,
    /// Highest minus lowest true skill of a match's players: what the ratings are for.
    pub true_skill_spread: Percentiles,
    /// Quality against the oldest ticket's wait.
    pub by_wait: Vec<WaitRow>,
}

/// One row of the quality-by-wait table: medians of the matches whose oldest ticket
/// waited this long.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WaitRow {
    pub wait: String,
    pub matches: u64,
    pub rating_spread_p50: Option<f64>,
    pub team_rating_diff_p50: Option<f64>,
    pub worst_latency_ms_p50: Option<f64>,
    pub true_skill_spread_p50: Option<f64>,
}

/// How well ratings order players by true skill.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Convergence {
    /// Players whose rating was seen (solo tickets).
    pub players: usize,
    /// Spearman's rank correlation of true skill with each player's first rating seen
    /// (none when every rating was the same: no order yet).
    pub spearman_start: Option<f64>,
    /// ... with the last rating seen.
    pub spearman_end: Option<f64>,
}

/// The report's quality sections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    pub queues: BTreeMap<String, QueueReport>,
    pub rating_convergence: Convergence,
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "mm_harness_match_true_skill_spread",
        "Highest minus lowest true skill of the players of each match, by queue and the oldest ticket's wait."
    );
    describe_histogram!(
        "mm_harness_queue_time_to_match_seconds",
        Unit::Seconds,
        "Matchmaking join to matched ticket, by queue."
    );
    describe_counter!("mm_harness_matches_total", "Matches this instance's players were in, by queue.");
    describe_gauge!(
        "mm_harness_rating_rank_correlation",
        "Spearman's rank correlation of players' latest seen rating with their true skill (1: perfectly ordered)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quality(spread: f64, wait_ms: u64) -> MatchQuality {
        MatchQuality {
            rating_spread: spread,
            team_rating_diff: spread / 10.0,
            worst_latency_ms: None,
            wait_ms,
        }
    }

    #[test]
    fn matches_are_summed_up_once_complete_per_queue_and_wait() {
        let quality_sums = Quality::new(vec!["default".into(), "skill".into()]);
        let formed = quality(40.0, 2_000);
        for (index, skill) in [1000.0, 1010.0, 1040.0, 1005.0].into_iter().enumerate() {
            quality_sums.matched(Matched {
                queue: "skill",
                match_id: "m1",
                players: 4,
                quality: Some(&formed),
                true_skill: skill,
                latency_ms: Some(20.0 + index as f64),
                time_to_match: Duration::from_millis(1500),
            });
        }
        let late = quality(300.0, 40_000);
        quality_sums.matched(Matched {
            queue: "skill",
            match_id: "m2",
            players: 10,
            quality: Some(&late),
            true_skill: 1000.0,
            latency_ms: None,
            time_to_match: Duration::from_secs(40),
        });
        quality_sums.matched(Matched {
            queue: "skill",
            match_id: "m2",
            players: 10,
            quality: Some(&late),
            true_skill: 2000.0,
            latency_ms: None,
            time_to_match: Duration::from_secs(41),
        });
        let report = quality_sums.report();
        let skill = &report.queues["skill"];
        assert_eq!((skill.matches, skill.matched_players), (2, 6));
        assert_eq!(skill.by_wait[0].matches, 1);
        assert_eq!(skill.by_wait[0].true_skill_spread_p50, Some(40.0));
        assert_eq!(skill.by_wait[3].matches, 1, "the 30-60s row");
        assert_eq!(skill.by_wait[3].rating_spread_p50, Some(300.0));
        assert_eq!(skill.worst_latency_ms.map(|p| p.max), Some(23.0));
        assert_eq!(report.queues["default"].matches, 0);
    }

    #[test]
    fn rating_convergence_compares_first_and_last_ratings_with_true_skill() {
        let quality = Quality::new(vec!["default".into()]);
        for player in 0..20u64 {
            let true_skill = player as f64 * 10.0;
            quality.rating(player, true_skill, 1500.0);
            quality.rating(player, true_skill, 1400.0 + true_skill);
        }
        let convergence = quality.report().rating_convergence;
        assert_eq!(convergence.players, 20);
        assert_eq!(convergence.spearman_start, None, "everyone started at 1500");
        assert!((convergence.spearman_end.expect("ordered") - 1.0).abs() < 1e-9);
    }
}

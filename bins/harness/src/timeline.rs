//! The run over time: one sample per stats interval, kept for the charts of the HTML
//! report (and in the JSON report, so the HTML is a pure function of it).
//!
//! Memory stays bounded however long the run: at [`MAX_SAMPLES`] every other sample is
//! dropped and from then on only every other interval is kept (the stride doubles), so
//! a long run is covered end to end at a coarser step. Counters are cumulative, so rates
//! between any two kept samples stay exact; latency percentiles are those of the
//! stats interval (or stride of intervals) that ended with the sample.

use std::collections::BTreeMap;

use mm_shared::protocol::{HarnessStats, HistogramData};
use serde::{Deserialize, Serialize};

use crate::report::Percentiles;
use crate::scenario::Scenario;

/// Most samples a timeline holds (about 30 minutes at one a second before thinning).
pub const MAX_SAMPLES: usize = 1800;

/// Buckets of a distribution chart: log-spaced, this many per decade.
const BUCKETS_PER_DECADE: f64 = 10.0;

/// One scenario at one sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioSample {
    /// Cumulative counts since the start.
    pub attempted: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Latency over the interval since the previous sample (none: nothing finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<Percentiles>,
}

/// The run at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    pub target: u64,
    pub alive: u64,
    pub logging_in: u64,
    pub idle: u64,
    pub busy: u64,
    /// In the order of [`Timeline::scenarios`].
    pub scenarios: Vec<ScenarioSample>,
    /// Cumulative failures by kind (kinds seen so far).
    pub errors: BTreeMap<String, u64>,
    /// Time to match over the interval (none: nobody was matched in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_match_ms: Option<Percentiles>,
}

/// Samples of the whole run, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Scenario names, the order of each sample's `scenarios`.
    pub scenarios: Vec<String>,
    /// Seconds between kept samples now (grows when the timeline thins itself out).
    pub interval_seconds: f64,
    pub samples: Vec<Sample>,
}

/// How many values fell between two bounds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Bucket `i` holds values in `(bounds_ms[i], bounds_ms[i + 1]]`.
    pub bounds_ms: Vec<f64>,
    pub counts: Vec<u64>,
}

impl Distribution {
    /// Log-spaced buckets over an HDR histogram of microseconds.
    pub fn from_micros(histogram: &HistogramData) -> Self {
        let Some(&(first, _)) = histogram.0.first() else { return Self::default() };
        let exponent = |micros: u64| (micros.max(1) as f64 / 1000.0).log10() * BUCKETS_PER_DECADE;
        let low = exponent(first).floor() - 1.0;
        let high = exponent(histogram.max()).ceil().max(low + 1.0);
        let buckets = (high - low) as usize;
        let bounds_ms: Vec<f64> = (0..=buckets)
            .map(|index| {
                let ms = 10f64.powf((low + index as f64) / BUCKETS_PER_DECADE);
                // Three significant digits: the labels stay short.
                let scale = 10f64.powf(ms.log10().floor() - 2.0);
                (ms / scale).round() * scale
            })
            .collect();
        let mut counts = vec![0u64; buckets];
        for &(micros, count) in &histogram.0 {
            let position = (exponent(micros) - low).ceil() as usize;
            let index = position.saturating_sub(1).min(buckets - 1);
            counts[index] += count;
        }
        Self { bounds_ms, counts }
    }
}

/// The distributions of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Distributions {
    /// Matchmaking join → matched.
    pub time_to_match: Distribution,
    /// Matchmaking join → first echo from the game server.
    pub time_to_play: Distribution,
}

impl Distributions {
    pub fn from_stats(stats: &HarnessStats) -> Self {
        Self {
            time_to_match: Distribution::from_micros(&stats.time_to_match_us),
            time_to_play: Distribution::from_micros(&stats.time_to_play_us),
        }
    }
}

/// Builds a [`Timeline`] from the stats loop's snapshots.
#[derive(Debug)]
pub struct Recorder {
    timeline: Timeline,
    /// Keep one snapshot in `stride`.
    stride: u64,
    seen: u64,
    /// Histograms of the last kept sample, to take each interval's percentiles.
    previous_latency: Vec<HistogramData>,
    previous_time_to_match: HistogramData,
    base_interval: f64,
    max_samples: usize,
}

impl Recorder {
    /// For snapshots taken every `interval`.
    pub fn new(interval: std::time::Duration) -> Self {
        Self::with_capacity(interval, MAX_SAMPLES)
    }

    fn with_capacity(interval: std::time::Duration, max_samples: usize) -> Self {
        let base_interval = interval.as_secs_f64();
        Self {
            timeline: Timeline {
                scenarios: Scenario::ALL.iter().map(|scenario| scenario.name().to_owned()).collect(),
                interval_seconds: base_interval,
                samples: Vec::new(),
            },
            stride: 1,
            seen: 0,
            previous_latency: vec![HistogramData::default(); Scenario::ALL.len()],
            previous_time_to_match: HistogramData::default(),
            base_interval,
            max_samples: max_samples.max(2),
        }
    }

    /// Adds the snapshot taken `elapsed` seconds into the run (every interval's; the
    /// recorder keeps what its stride says). `last` keeps it regardless (the end).
    pub fn record(&mut self, elapsed: f64, target: u64, snapshot: &HarnessStats, last: bool) {
        self.seen += 1;
        if !last && !(self.seen - 1).is_multiple_of(self.stride) {
            return;
        }
        if self.timeline.samples.len() >= self.max_samples {
            self.thin();
        }
        let scenarios = Scenario::ALL
            .iter()
            .zip(&mut self.previous_latency)
            .map(|(scenario, previous)| {
                let Some(stats) = snapshot.scenarios.get(scenario.name()) else {
                    return ScenarioSample::default();
                };
                let interval = difference(&stats.latency_us, previous);
                *previous = stats.latency_us.clone();
                ScenarioSample {
                    attempted: stats.attempted,
                    succeeded: stats.succeeded,
                    failed: stats.failed,
                    latency_ms: (interval.count() > 0).then(|| Percentiles::from_micros(&interval)),
                }
            })
            .collect();
        let matched = difference(&snapshot.time_to_match_us, &self.previous_time_to_match);
        self.previous_time_to_match = snapshot.time_to_match_us.clone();
        let players = &snapshot.players;
        self.timeline.samples.push(Sample {
            t: (elapsed * 1000.0).round() / 1000.0,
            target,
            alive: players.alive,
            logging_in: players.logging_in,
            idle: players.idle,
            busy: players.busy,
            scenarios,
            errors: snapshot.errors.clone(),
            time_to_match_ms: (matched.count() > 0).then(|| Percentiles::from_micros(&matched)),
        });
    }

    /// Drops every other sample (the first stays) and doubles the stride: what is left
    /// is one snapshot in `2 × stride`, the grid recording goes on with.
    fn thin(&mut self) {
        let mut index = 0;
        self.timeline.samples.retain(|_| {
            let keep = index % 2 == 0;
            index += 1;
            keep
        });
        self.stride *= 2;
        self.timeline.interval_seconds = self.base_interval * self.stride as f64;
    }

    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    pub fn into_timeline(self) -> Timeline {
        self.timeline
    }
}

/// `now` minus `before`: the values recorded in between (both cumulative, sorted by value).
fn difference(now: &HistogramData, before: &HistogramData) -> HistogramData {
    let mut earlier = before.0.iter().peekable();
    let mut out = Vec::new();
    for &(value, count) in &now.0 {
        let mut had = 0;
        while let Some(&&(old_value, old_count)) = earlier.peek() {
            if old_value > value {
                break;
            }
            if old_value == value {
                had = old_count;
            }
            earlier.next();
        }
        if count > had {
            out.push((value, count - had));
        }
    }
    HistogramData(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_shared::protocol::HarnessScenarioStats;

    fn snapshot(attempted: u64, latency: Vec<(u64, u64)>) -> HarnessStats {
        let mut stats = HarnessStats::default();
        stats.scenarios.insert(
            "login".to_owned(),
            HarnessScenarioStats { attempted, latency_us: HistogramData(latency), ..Default::default() },
        );
        stats
    }

    #[test]
    fn each_sample_has_the_percentiles_of_its_own_interval() {
        let mut recorder = Recorder::new(std::time::Duration::from_secs(1));
        recorder.record(1.0, 5, &snapshot(10, vec![(1000, 10)]), false);
        recorder.record(2.0, 5, &snapshot(20, vec![(1000, 10), (50_000, 10)]), false);
        recorder.record(3.0, 5, &snapshot(20, vec![(1000, 10), (50_000, 10)]), false);
        let samples = &recorder.timeline().samples;
        assert_eq!(samples[0].scenarios[0].latency_ms.map(|p| p.p99), Some(1.0));
        assert_eq!(samples[1].scenarios[0].latency_ms.map(|p| p.p50), Some(50.0), "only the new values");
        assert_eq!(samples[2].scenarios[0].latency_ms, None, "nothing finished");
        assert_eq!(samples[2].scenarios[0].attempted, 20, "counts stay cumulative");
    }

    #[test]
    fn a_long_run_thins_out_and_stays_bounded() {
        let mut recorder = Recorder::with_capacity(std::time::Duration::from_secs(1), 10);
        for second in 1..=1000u64 {
            recorder.record(second as f64, 1, &snapshot(second, vec![]), second == 1000);
        }
        let timeline = recorder.timeline();
        assert!(timeline.samples.len() <= 10, "{}", timeline.samples.len());
        assert_eq!(timeline.samples.first().map(|s| s.t), Some(1.0), "the start stays");
        assert_eq!(timeline.samples.last().map(|s| s.t), Some(1000.0), "the end is there");
        assert!(timeline.samples.windows(2).all(|pair| pair[0].t < pair[1].t));
        assert!(timeline.interval_seconds >= 64.0, "{}", timeline.interval_seconds);
    }

    #[test]
    fn distributions_put_every_value_in_a_bucket() {
        let histogram = HistogramData(vec![(900, 3), (12_000, 5), (2_500_000, 2)]);
        let distribution = Distribution::from_micros(&histogram);
        assert_eq!(distribution.counts.iter().sum::<u64>(), 10);
        assert_eq!(distribution.bounds_ms.len(), distribution.counts.len() + 1);
        for (index, &count) in distribution.counts.iter().enumerate() {
            if count == 3 {
                assert!(
                    distribution.bounds_ms[index] < 0.9 && 0.9 <= distribution.bounds_ms[index + 1] * 1.001
                );
            }
        }
        assert_eq!(Distribution::from_micros(&HistogramData::default()), Distribution::default());
    }
}

//! How fast the players' success rate came back after a fault, from the harness's stats.
//!
//! The harness publishes cumulative counters every second (`harness.stats.<instance>`).
//! Consecutive messages give one *sample* each: the scenarios that finished in that
//! interval, how many succeeded and failed, and the failures by kind. A sample's rate is
//! `succeeded / (succeeded + failed)`; a sample in which nothing finished has none and is
//! neither good nor bad.
//!
//! After a fault at `t`, within its window `[t, end)`: the fault *recovered* at the end of
//! the last sample whose rate was under the threshold, provided at least one good sample
//! follows it inside the window (the rate is back above the threshold and stays there);
//! otherwise it *never* recovered within the window. A window without any bad sample had
//! no dip at all. Failures often surface late (an HTTP deadline, a game cut short), which
//! is why it is the *last* bad sample that counts, not the first good one.

use std::collections::BTreeMap;
use std::time::Duration;

/// One stats message's cumulative counters, summed over every scenario.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Point {
    /// When the harness took them (Unix ms, its clock: the same host's).
    pub at_ms: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// Failures by kind (`timeout`, `http_5xx`, ...), cumulative.
    pub errors: BTreeMap<String, u64>,
}

impl Point {
    /// The counters of one `harness.stats.<instance>` message.
    pub fn from_stats(stats: &mm_shared::protocol::HarnessStats) -> Self {
        Point {
            at_ms: stats.at,
            succeeded: stats.scenarios.values().map(|s| s.succeeded).sum(),
            failed: stats.scenarios.values().map(|s| s.failed).sum(),
            errors: stats.errors.clone(),
        }
    }
}

/// What finished between two stats messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// The end of the interval (Unix ms).
    pub at_ms: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
}

impl Sample {
    /// Successes among finished scenarios, if any finished.
    pub fn rate(&self) -> Option<f64> {
        let finished = self.succeeded + self.failed;
        (finished > 0).then(|| self.succeeded as f64 / finished as f64)
    }
}

/// Samples from a series of cumulative points of one harness instance, in time order.
/// Points out of order (a late delivery after a reconnect) or repeated are skipped;
/// counters never go backwards (saturating).
pub fn samples(points: &[Point]) -> Vec<Sample> {
    let mut sorted: Vec<&Point> = points.iter().collect();
    sorted.sort_by_key(|point| point.at_ms);
    sorted.dedup_by_key(|point| point.at_ms);
    sorted
        .windows(2)
        .map(|pair| {
            let (before, after) = (pair[0], pair[1]);
            let errors = after
                .errors
                .iter()
                .map(|(kind, count)| {
                    (kind.clone(), count.saturating_sub(before.errors.get(kind).copied().unwrap_or(0)))
                })
                .filter(|(_, count)| *count > 0)
                .collect();
            Sample {
                at_ms: after.at_ms,
                succeeded: after.succeeded.saturating_sub(before.succeeded),
                failed: after.failed.saturating_sub(before.failed),
                errors,
            }
        })
        .collect()
}

/// When the rate came back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// No sample of the window was under the threshold.
    NoDip,
    /// This long after the fault, the rate was back above the threshold for good.
    Recovered(Duration),
    /// Still under the threshold at the end of the window (or nothing finished after the
    /// last bad sample).
    Never,
    /// Nothing finished in the whole window: no rate to judge.
    NoData,
}

/// What one fault did to the players.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    pub verdict: Verdict,
    /// The lowest rate of a sample in the window.
    pub worst: Option<f64>,
    /// Scenarios that finished in the window, and how many of them failed.
    pub finished: u64,
    pub failed: u64,
    /// Failures in the window by kind.
    pub errors: BTreeMap<String, u64>,
}

/// The recovery after a fault at `fault_ms`, from the samples that end in
/// `[fault_ms, end_ms)`; `threshold` is the least good rate (0.99).
pub fn recovery(samples: &[Sample], fault_ms: u64, end_ms: u64, threshold: f64) -> Recovery {
    let window: Vec<&Sample> =
        samples.iter().filter(|sample| sample.at_ms > fault_ms && sample.at_ms <= end_ms).collect();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for sample in &window {
        for (kind, count) in &sample.errors {
            *errors.entry(kind.clone()).or_default() += count;
        }
    }
    let rated: Vec<(&Sample, f64)> =
        window.iter().filter_map(|sample| sample.rate().map(|rate| (*sample, rate))).collect();
    let worst = rated.iter().map(|(_, rate)| *rate).reduce(f64::min);
    let last_bad = rated.iter().rposition(|(_, rate)| *rate < threshold);
    let verdict = match last_bad {
        _ if rated.is_empty() => Verdict::NoData,
        None => Verdict::NoDip,
        Some(index) if index + 1 < rated.len() => {
            Verdict::Recovered(Duration::from_millis(rated[index].0.at_ms.saturating_sub(fault_ms)))
        }
        Some(_) => Verdict::Never,
    };
    Recovery {
        verdict,
        worst,
        finished: window.iter().map(|sample| sample.succeeded + sample.failed).sum(),
        failed: window.iter().map(|sample| sample.failed).sum(),
        errors,
    }
}

impl Recovery {
    /// "4s", "no dip", "never", "no data": the table's column.
    pub fn describe(&self) -> String {
        match self.verdict {
            Verdict::NoDip => "0s (no dip)".to_owned(),
            Verdict::Recovered(after) => format!("{}s", after.as_secs_f64().ceil()),
            Verdict::Never => "never".to_owned(),
            Verdict::NoData => "no data".to_owned(),
        }
    }

    /// "35 (http_5xx 30, timeout 5)": the failures of the window, the commonest kinds first.
    pub fn describe_failures(&self) -> String {
        if self.failed == 0 {
            return "0".to_owned();
        }
        let mut kinds: Vec<(&String, &u64)> = self.errors.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> =
            kinds.iter().take(3).map(|(kind, count)| format!("{kind} {count}")).collect();
        if shown.is_empty() {
            self.failed.to_string()
        } else {
            format!("{} ({})", self.failed, shown.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cumulative points, one a second from `start` ms, from per-second (ok, failed).
    fn points(start: u64, per_second: &[(u64, u64)]) -> Vec<Point> {
        let mut total = (0, 0);
        let mut out = vec![Point { at_ms: start, ..Point::default() }];
        for (i, (ok, failed)) in per_second.iter().enumerate() {
            total.0 += ok;
            total.1 += failed;
            out.push(Point {
                at_ms: start + 1000 * (i as u64 + 1),
                succeeded: total.0,
                failed: total.1,
                errors: BTreeMap::from([("http_5xx".to_owned(), total.1)]),
            });
        }
        out
    }

    #[test]
    fn samples_are_deltas_in_time_order() {
        let mut series = points(10_000, &[(10, 0), (5, 5), (0, 0)]);
        series.swap(1, 3);
        series.push(series[2].clone());
        let samples = samples(&series);
        assert_eq!(samples.len(), 3);
        assert_eq!((samples[0].at_ms, samples[0].succeeded, samples[0].failed), (11_000, 10, 0));
        assert_eq!((samples[1].succeeded, samples[1].failed), (5, 5));
        assert_eq!(samples[1].errors, BTreeMap::from([("http_5xx".to_owned(), 5)]));
        assert!(samples[0].errors.is_empty(), "kinds with no new failure are left out");
        assert_eq!(samples[2].rate(), None, "nothing finished: no rate");
        assert_eq!(samples[1].rate(), Some(0.5));
    }

    #[test]
    fn recovery_is_the_end_of_the_last_bad_second() {
        // Fault at 10 s: fine for a second, a dip, a good second, a late failure, then good.
        let series = points(10_000, &[(100, 0), (20, 80), (100, 0), (90, 10), (100, 0), (100, 0)]);
        let result = recovery(&samples(&series), 10_000, 30_000, 0.99);
        assert_eq!(result.verdict, Verdict::Recovered(Duration::from_secs(4)));
        assert_eq!(result.describe(), "4s");
        assert_eq!(result.worst, Some(0.2));
        assert_eq!((result.finished, result.failed), (600, 90));
        assert_eq!(result.describe_failures(), "90 (http_5xx 90)");
    }

    #[test]
    fn a_window_still_bad_at_its_end_never_recovered() {
        let series = points(0, &[(100, 0), (50, 50), (0, 0), (10, 10)]);
        assert_eq!(recovery(&samples(&series), 0, 4_000, 0.99).verdict, Verdict::Never);
        // Nothing finished after the last bad second: not shown to be back either.
        let series = points(0, &[(100, 0), (50, 50), (0, 0)]);
        assert_eq!(recovery(&samples(&series), 0, 3_000, 0.99).describe(), "never");
    }

    #[test]
    fn no_dip_no_data_and_the_window_bounds() {
        let series = points(0, &[(100, 0), (99, 1), (100, 0)]);
        let result = recovery(&samples(&series), 0, 10_000, 0.99);
        assert_eq!(result.verdict, Verdict::NoDip, "exactly 99% is not under 99%");
        assert_eq!(result.describe(), "0s (no dip)");
        assert_eq!(
            recovery(&samples(&points(0, &[(0, 0), (0, 0)])), 0, 5_000, 0.99).verdict,
            Verdict::NoData
        );
        // Samples before the fault or after the window's end do not count.
        let series = points(0, &[(0, 10), (100, 0), (100, 0), (0, 10)]);
        let result = recovery(&samples(&series), 1_000, 3_000, 0.99);
        assert_eq!(result.verdict, Verdict::NoDip);
        assert_eq!(result.failed, 0);
    }
}

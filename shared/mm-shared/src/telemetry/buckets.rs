//! Histogram buckets, in seconds, chosen here once so that services and dashboards agree.
//!
//! Prometheus histograms are only as good as their buckets: each set spans the range its
//! metric really lives in, with enough resolution around the values people alert on.

/// Request/reply and HTTP latencies: 0.5 ms to 10 s.
pub const LATENCY: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Waits that take seconds to minutes: time in queue, time to match, time to play,
/// game-server start-up. 50 ms to 10 min.
pub const WAIT: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// Timer lateness, where what matters is a fraction of a millisecond against a 50 ms
/// alarm: 0.1 ms to 1 s.
pub const LAG: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// HTTP requests that may long-poll: [`LATENCY`] plus 30 s and 60 s, so a status request
/// that waited for its ticket lands in a bucket instead of `+Inf`.
pub const HTTP: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Starting a game server (container or process) until it answers: fine steps around
/// the 0.1-0.5 s a start takes, up to the 30 s a start may be allowed, and below 10 ms for
/// the claim of a warm server (an allocation that starts nothing). 1 ms to 30 s.
pub const STARTUP: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
    5.0, 10.0, 30.0,
];

/// Rating points (match quality: rating spread, team difference, true-skill spread):
/// 5 to 2,000, where a good match is tens of points apart and a mixed one hundreds.
pub const RATING: &[f64] =
    &[5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 400.0, 600.0, 800.0, 1200.0, 2000.0];

/// Round trips to a game's region, in seconds: 5 ms to 1 s.
pub const PING: &[f64] = &[0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0];

/// Metrics that use a set other than [`LATENCY`]. A histogram not named here gets `LATENCY`.
pub const BY_METRIC: &[(&str, &[f64])] = &[
    ("mm_matchmaker_time_in_queue_seconds", WAIT),
    ("mm_matchmaker_allocation_duration_seconds", STARTUP),
    ("mm_gateway_http_request_duration_seconds", HTTP),
    ("mm_gateway_long_poll_wait_seconds", WAIT),
    ("mm_orchestrator_allocation_duration_seconds", STARTUP),
    ("mm_orchestrator_container_start_duration_seconds", STARTUP),
    ("mm_orchestrator_server_ready_duration_seconds", STARTUP),
    ("mm_orchestrator_pool_refill_duration_seconds", STARTUP),
    ("mm_harness_http_request_duration_seconds", HTTP),
    ("mm_harness_time_to_match_seconds", WAIT),
    ("mm_harness_time_to_play_seconds", WAIT),
    ("mm_harness_scenario_duration_seconds", WAIT),
    ("mm_harness_tick_lag_seconds", LAG),
    // Match quality, by queue (matchmaker: as formed; harness: with the players' true skill).
    ("mm_matchmaker_match_rating_spread", RATING),
    ("mm_matchmaker_match_team_rating_difference", RATING),
    ("mm_matchmaker_match_worst_latency_seconds", PING),
    ("mm_matchmaker_match_wait_seconds", WAIT),
    ("mm_harness_queue_time_to_match_seconds", WAIT),
    ("mm_harness_match_true_skill_spread", RATING),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets_of(metric: &str) -> &'static [f64] {
        BY_METRIC.iter().find(|(name, _)| *name == metric).map_or(LATENCY, |(_, values)| *values)
    }

    #[test]
    fn http_requests_that_long_poll_have_room_above_the_poll_wait() {
        // A status long-poll waits up to 20 s by default (harness `matchmaking.poll_wait`,
        // at most 60 s) and the gateway holds it up to 30 s: both HTTP histograms need
        // buckets past that, which LATENCY (10 s) does not have.
        for metric in ["mm_gateway_http_request_duration_seconds", "mm_harness_http_request_duration_seconds"]
        {
            let top = buckets_of(metric).last().copied().unwrap_or_default();
            assert!(top >= 60.0, "{metric} tops out at {top} s");
        }
        assert!(LATENCY.last().copied().unwrap_or_default() < 20.0);
    }

    #[test]
    fn every_set_is_strictly_increasing_and_named_once() {
        for (name, values) in BY_METRIC {
            assert!(values.windows(2).all(|pair| pair[0] < pair[1]), "{name}");
            assert_eq!(BY_METRIC.iter().filter(|(other, _)| other == name).count(), 1, "{name}");
        }
    }
}

//! The HTML report opened in headless Chromium: every chart is drawn with data and the
//! page logs nothing to the console. This one renders a report made up in the test (with
//! errors and two queues, which a short clean run has not); `stack.rs` opens the report
//! of a real run against the real stack.

mod browser;

use std::collections::BTreeMap;
use std::time::Duration;

use harness::quality::{QualityReport, QueueReport, WaitRow};
use harness::report::{Percentiles, Report, RunFacts};
use harness::stages::Stage;
use harness::timeline::Recorder;
use mm_shared::protocol::{HarnessScenarioStats, HarnessStats, HistogramData};

/// Stats after `second` seconds of a steady made-up run.
fn stats_at(second: u64) -> HarnessStats {
    let mut stats = HarnessStats::default();
    for (index, name) in
        ["login", "matchmaking", "in_game", "fetch_store", "store_purchase", "logout"].into_iter().enumerate()
    {
        let per_second = 10 * (index as u64 + 1);
        let attempted = per_second * second;
        let failed = if name == "matchmaking" { second / 3 } else { 0 };
        stats.scenarios.insert(
            name.to_owned(),
            HarnessScenarioStats {
                attempted,
                succeeded: attempted - failed,
                failed,
                latency_us: HistogramData(vec![
                    (2_000 * (index as u64 + 1), attempted * 9 / 10),
                    (40_000 + 1_000 * second, attempted / 10),
                ]),
                ..HarnessScenarioStats::default()
            },
        );
    }
    stats.players.alive = (second * 10).min(100);
    stats.players.busy = stats.players.alive / 3;
    stats.players.idle = stats.players.alive - stats.players.busy;
    stats.players.peak = stats.players.alive;
    stats.time_to_match_us = HistogramData(vec![(800_000, second * 5), (3_000_000 + second * 1000, second)]);
    stats.time_to_play_us = HistogramData(vec![(1_200_000, second * 5), (4_500_000, second)]);
    stats.errors =
        BTreeMap::from([("match_timeout".to_owned(), second / 3), ("http_5xx".to_owned(), second / 5)]);
    stats
}

fn queue(spread: f64) -> QueueReport {
    let p = |v: f64| Percentiles { p50: v, p90: v * 2.0, p99: v * 3.0, max: v * 4.0 };
    QueueReport {
        matched_players: 40,
        matches: 4,
        time_to_match_ms: p(900.0),
        rating_spread: p(spread),
        team_rating_diff: p(spread / 10.0),
        worst_latency_ms: Some(p(60.0)),
        true_skill_spread: p(spread * 1.5),
        by_wait: ["0-5s", "5-15s", "15-30s", "30-60s", "60s+"]
            .iter()
            .enumerate()
            .map(|(index, wait)| WaitRow {
                wait: (*wait).to_owned(),
                matches: if index < 3 { 2 } else { 0 },
                rating_spread_p50: (index < 3).then_some(spread * (index as f64 + 1.0)),
                team_rating_diff_p50: (index < 3).then_some(spread / 10.0),
                worst_latency_ms_p50: (index < 3).then_some(40.0 + index as f64),
                true_skill_spread_p50: (index < 3).then_some(spread * 1.5 * (index as f64 + 1.0)),
            })
            .collect(),
    }
}

#[test]
fn every_chart_of_the_html_report_renders_with_data_in_chromium() {
    let mut recorder = Recorder::new(Duration::from_secs(1));
    for second in 0..=30 {
        recorder.record(second as f64, 100, &stats_at(second), second == 30);
    }
    let last = stats_at(30);
    let facts = RunFacts {
        instance: "html-test",
        host: "box",
        gateway: "http://127.0.0.1:1",
        started_at: 1_700_000_000_000,
        duration: Duration::from_secs(30),
        target: 100,
        spawned: 120,
        fleet_instances: 1,
    };
    let mut report = Report::build(&last, &facts)
        .with_quality(QualityReport {
            queues: BTreeMap::from([("default".to_owned(), queue(100.0)), ("skill".to_owned(), queue(20.0))]),
            ..QualityReport::default()
        })
        .with_timeline(recorder.into_timeline())
        .with_stages(harness::stages::report(&[
            Stage { duration: Duration::from_secs(10), players: 100, rates: BTreeMap::new() },
            Stage { duration: Duration::from_secs(15), players: 100, rates: BTreeMap::new() },
            Stage { duration: Duration::from_secs(5), players: 300, rates: BTreeMap::new() },
        ]))
        // A fleet plan that began 4 s before this run: its stages at -4 s, 6 s and 16 s.
        .with_fleet_stages(harness::stages::fleet_report(
            &[harness::stages::Followed {
                plan: harness::stages::FleetPlan {
                    started_at_ms: facts.started_at - 4000,
                    stages: vec![
                        Stage { duration: Duration::from_secs(10), players: 50, rates: BTreeMap::new() },
                        Stage { duration: Duration::from_secs(10), players: 50, rates: BTreeMap::new() },
                        Stage { duration: Duration::from_secs(5), players: 900, rates: BTreeMap::new() },
                    ],
                },
                until_ms: None,
            }],
            facts.started_at,
        ));
    report.judge(Some(0.5), Some(Duration::from_secs(10)));

    let dir = tempfile::tempdir().expect("temp dir");
    let page = dir.path().join("report.html");
    harness::report_html::write(&report, &page).expect("written");
    let rendered = browser::render(&page);
    assert!(rendered.console.is_empty(), "console messages: {:#?}", rendered.console);
    assert!(rendered.dom.contains("data-rendered=\"true\""), "the script ran to its end");
    for chart in [
        "players",
        "rates",
        "latency-login",
        "latency-matchmaking",
        "latency-store_purchase",
        "time-to-match-over-time",
        "time-to-match",
        "time-to-play",
        "errors",
        "quality-true-skill",
        "quality-rating",
        "quality-ping",
        "quality-matches",
    ] {
        rendered.assert_drawn(chart);
    }
    let errors = rendered.chart("errors").expect("drawn");
    assert_eq!(errors.series, 3, "all kinds, http_5xx and match_timeout");
    let players = rendered.chart("players").expect("drawn");
    assert!(players.points >= 5 * 31, "every sample of every state: {players:?}");
    assert_eq!(players.stages, 2, "the boundaries at 10 s and 25 s (the first stage starts at 0)");
    assert!(rendered.dom.contains("stage 3 → 300"), "the spike is labelled");
    assert_eq!(
        players.fleet_stages, 2,
        "the fleet plan's boundaries at 6 s and 16 s (not the one before the run)"
    );
    assert!(rendered.dom.contains("fleet stage 3 → 900"), "the fleet's spike is labelled");
    assert!(rendered.dom.contains("Fleet stages"), "the fleet stages table");
    assert!(rendered.dom.contains("match_timeout"), "the errors table");
    assert!(rendered.dom.contains("FAIL: "), "the breached threshold is shown");
}

#[test]
fn a_broken_page_fails_the_check() {
    // The check itself: a page whose script throws draws nothing and says so.
    let dir = tempfile::tempdir().expect("temp dir");
    let page = dir.path().join("broken.html");
    let mut html = harness::report_html::render(&Report::default());
    html = html.replacen("'use strict';", "'use strict'; null.boom();", 1);
    std::fs::write(&page, html).expect("written");
    let rendered = browser::render(&page);
    assert!(rendered.charts.is_empty(), "{:?}", rendered.charts);
    assert!(!rendered.console.is_empty(), "the exception is seen");
}

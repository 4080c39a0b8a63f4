//! The live progress line on a terminal: one line, redrawn every second.
//!
//! ```text
//! [00:35/01:00] players 998/1000 (idle 950 busy 40 login 8) | 12.3 scen/s | errors 3 (0.20%) | match p50 1.2s p99 4.5s
//! ```
//!
//! Written to stderr (stdout carries the final table), and only when stderr is a
//! terminal unless `progress = "always"`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use mm_shared::protocol::HarnessStats;

use crate::config::Progress;

/// Draws the progress line, if it is wanted.
pub struct ProgressLine {
    enabled: bool,
    drawn: bool,
}

impl ProgressLine {
    pub fn new(mode: Progress) -> Self {
        let enabled = match mode {
            Progress::Always => true,
            Progress::Never => false,
            Progress::Auto => std::io::stderr().is_terminal(),
        };
        Self { enabled, drawn: false }
    }

    /// Redraws the line from the latest stats.
    pub fn draw(
        &mut self,
        stats: &HarnessStats,
        elapsed: Duration,
        total: Duration,
        scenarios_per_second: f64,
    ) {
        if !self.enabled {
            return;
        }
        let line = render(stats, elapsed, total, scenarios_per_second);
        let mut err = std::io::stderr().lock();
        // \r and "erase line": the new text replaces the old in place.
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Ends the line so the next output starts on its own.
    pub fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

/// The text of the line.
pub fn render(stats: &HarnessStats, elapsed: Duration, total: Duration, scenarios_per_second: f64) -> String {
    let players = &stats.players;
    let failed: u64 = stats.scenarios.values().map(|s| s.failed).sum();
    let rate = crate::report::error_rate(stats);
    let ttm = &stats.time_to_match_us;
    let matched = if ttm.count() == 0 {
        "match -".to_owned()
    } else {
        format!(
            "match p50 {} p99 {}",
            seconds(ttm.value_at_quantile(0.5)),
            seconds(ttm.value_at_quantile(0.99))
        )
    };
    format!(
        "[{}/{}] players {}/{} (idle {} busy {} login {}) | {:.1} scen/s | errors {} ({:.2}%) | {}",
        clock(elapsed),
        clock(total),
        players.alive,
        stats.target,
        players.idle,
        players.busy,
        players.logging_in,
        scenarios_per_second,
        failed,
        rate * 100.0,
        matched
    )
}

fn clock(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{:02}:{:02}", secs / 60, secs % 60)
    }
}

fn seconds(micros: u64) -> String {
    format!("{:.1}s", micros as f64 / 1_000_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mm_shared::protocol::HistogramData;

    #[test]
    fn the_line_says_what_matters() {
        let mut stats = HarnessStats { target: 1000, ..HarnessStats::default() };
        stats.players.alive = 998;
        stats.players.idle = 950;
        stats.time_to_match_us = HistogramData(vec![(1_200_000, 1), (4_500_000, 1)]);
        let line = render(&stats, Duration::from_secs(35), Duration::from_secs(60), 12.34);
        assert_eq!(
            line,
            "[00:35/01:00] players 998/1000 (idle 950 busy 0 login 0) | 12.3 scen/s | errors 0 (0.00%) | match p50 1.2s p99 4.5s"
        );
    }
}

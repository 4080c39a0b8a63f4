//! How fast this node's driver starts servers, and whether one more start fits a budget.
//! Pure: the caller passes the time.
//!
//! A placement is *in flight* from its admission until its server is ready (or failed):
//! the driver's queue, its start, and the wait for `/healthz`. The node learns its start
//! **rate** as starts completed per second of busy time (time with at least one start in
//! flight), weighted towards recent busy time (a half-life of busy time, so idle periods
//! neither age nor dilute what was learnt). A new start with `n` others in flight is
//! expected to be ready after about `(n + 1) / rate`; when that is more than
//! [`BUDGET_SHARE`] of the request's budget (the rest is the caller's margin to answer),
//! the node refuses it at once (the allocator asks the next node, the matcher
//! backs off) instead of letting it time out.
//!
//! With nothing in flight a start is always admitted (so a slow rate learnt once cannot
//! lock the node out); before the rate is known, at most `learning_slots` starts are in
//! flight at once.

use std::time::{Duration, Instant};

/// Completions (weighted) before the learnt rate is trusted.
const MIN_COMPLETIONS: f64 = 4.0;

/// The part of a request's budget a start may be expected to take.
pub const BUDGET_SHARE: f64 = 0.8;

/// A start the node cannot have ready within the request's budget.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Busy {
    #[error(
        "busy: {in_flight} starts in flight at about {rate:.1}/s, so a new one would be ready in about {} \
         but the request has {} left",
        mm_shared::duration::format(*estimate),
        mm_shared::duration::format(*budget)
    )]
    Queue { in_flight: u64, rate: f64, estimate: Duration, budget: Duration },
    #[error("busy: {in_flight} starts in flight, as many as it takes while its start rate is not known yet")]
    Learning { in_flight: u64 },
}

#[derive(Debug, Clone)]
pub struct StartQueue {
    in_flight: u64,
    /// Completed starts, decayed by busy time.
    completions: f64,
    /// Busy seconds, decayed the same way.
    busy: f64,
    last: Instant,
    half_life: Duration,
    learning_slots: u64,
}

impl StartQueue {
    pub fn new(now: Instant, half_life: Duration, learning_slots: u64) -> Self {
        Self {
            in_flight: 0,
            completions: 0.0,
            busy: 0.0,
            last: now,
            half_life,
            learning_slots: learning_slots.max(1),
        }
    }

    /// Accounts the busy time up to `now`, decaying what came before.
    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        if self.in_flight == 0 || elapsed.is_zero() {
            return;
        }
        let factor = 0.5f64.powf(elapsed.as_secs_f64() / self.half_life.as_secs_f64().max(1e-3));
        self.completions *= factor;
        self.busy = self.busy * factor + elapsed.as_secs_f64();
    }

    /// Starts completed per busy second, once enough were seen.
    pub fn rate(&self) -> Option<f64> {
        (self.completions >= MIN_COMPLETIONS && self.busy > 0.0).then(|| self.completions / self.busy)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Admits one more start that must be ready within `budget`, or says why not.
    pub fn admit(&mut self, now: Instant, budget: Duration) -> Result<(), Busy> {
        self.advance(now);
        if self.in_flight > 0 {
            match self.rate() {
                Some(rate) => {
                    let estimate = Duration::from_secs_f64((self.in_flight + 1) as f64 / rate);
                    if estimate > budget.mul_f64(BUDGET_SHARE) {
                        return Err(Busy::Queue { in_flight: self.in_flight, rate, estimate, budget });
                    }
                }
                None if self.in_flight >= self.learning_slots => {
                    return Err(Busy::Learning { in_flight: self.in_flight });
                }
                None => {}
            }
        }
        self.in_flight += 1;
        Ok(())
    }

    /// One admitted start is taken back before it began: it teaches nothing.
    pub fn withdraw(&mut self, now: Instant) {
        self.advance(now);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// One admitted start finished (ready, failed or given up).
    pub fn finish(&mut self, now: Instant) {
        self.advance(now);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.completions += 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn learns_the_rate_from_busy_time_and_refuses_what_would_be_late() {
        let t0 = Instant::now();
        let mut queue = StartQueue::new(t0, Duration::from_secs(30), 8);
        // Serial starts of 250 ms each: 4 per busy second.
        let mut now = t0;
        for _ in 0..20 {
            queue.admit(now, SECOND).expect("nothing in flight: admitted");
            now += Duration::from_millis(250);
            queue.finish(now);
            // Idle time in between changes nothing.
            now += Duration::from_secs(5);
        }
        let rate = queue.rate().expect("learnt");
        assert!((rate - 4.0).abs() < 0.01, "{rate}");
        // A 2.5 s budget leaves 2 s for the start: with 8 in flight a ninth would be
        // ready in (8 + 1) / 4 = 2.25 s, too late.
        let budget = Duration::from_millis(2500);
        for _ in 0..7 {
            queue.admit(now, budget).expect("fits");
        }
        assert_eq!(queue.in_flight(), 7);
        queue.admit(now, budget).expect("the eighth is ready in 2 s");
        let busy = queue.admit(now, budget).expect_err("the ninth would be late");
        let Busy::Queue { in_flight, estimate, .. } = busy.clone() else { panic!("{busy}") };
        assert_eq!(in_flight, 8);
        assert!(estimate > 2 * SECOND, "{busy}");
        assert!(busy.to_string().contains("busy: 8 starts in flight at about 4.0/s"), "{busy}");
        // A bigger budget still fits.
        queue.admit(now, 5 * SECOND).expect("fits in 5 s");
    }

    #[test]
    fn an_idle_node_always_admits_and_an_unknown_rate_admits_a_few() {
        let t0 = Instant::now();
        let mut queue = StartQueue::new(t0, Duration::from_secs(30), 3);
        for _ in 0..3 {
            queue.admit(t0, Duration::from_millis(1)).expect("learning");
        }
        let learning = queue.admit(t0, 100 * SECOND).expect_err("only 3 while the rate is unknown");
        assert_eq!(learning, Busy::Learning { in_flight: 3 });
        let mut now = t0 + SECOND;
        for _ in 0..3 {
            queue.finish(now);
        }
        // Very slow starts (10 s each) are learnt...
        for _ in 0..6 {
            queue.admit(now, SECOND).expect("nothing in flight");
            now += 10 * SECOND;
            queue.finish(now);
        }
        assert!(queue.rate().is_some_and(|rate| rate < 0.2), "{:?}", queue.rate());
        // ...yet an empty queue still takes one, whatever the budget.
        queue.admit(now, Duration::from_millis(1)).expect("an empty queue admits");
        assert!(queue.admit(now, SECOND).is_err(), "a second one would be late");
    }

    #[test]
    fn recent_busy_time_outweighs_old() {
        let t0 = Instant::now();
        let mut queue = StartQueue::new(t0, Duration::from_secs(5), 8);
        let mut now = t0;
        // Slow at first (1/s), then fast (10/s) for longer than a few half-lives.
        for (count, each) in [(10, SECOND), (300, Duration::from_millis(100))] {
            for _ in 0..count {
                queue.admit(now, 100 * SECOND).expect("admitted");
                now += each;
                queue.finish(now);
            }
        }
        let rate = queue.rate().expect("learnt");
        assert!(rate > 9.0, "{rate}");
    }
}

//! The node's pool of warm servers: which are claimable, which are starting, and how many
//! it wants. Pure: the caller passes the time and does the I/O.
//!
//! - **Claims** take the oldest warm server ([`WarmPool::claim`]); the node calls it under
//!   its lock, so two allocations never get the same server. A claim that fails before
//!   the server took its match (a duplicate match) gives it back at the head.
//! - **Sizing** ([`Sizer`]): `fixed` wants `min`; `auto` wants the recent allocation rate
//!   (allocations per second over `rate_window`) times the cold-start time (how long a
//!   replacement takes, start to warm, as measured), rounded up, between `min` and `max`:
//!   what arrives at that rate while replacements start is covered.
//! - **Refills** ([`WarmPool::wanted`]): the target less what is warm and what is starting.
//!   Warm starts that fail in a row back off ([`WarmPool::backoff`]), so a broken driver is
//!   not asked in a tight loop.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{PoolPolicy, PoolSection};

/// Weight of a new cold-start sample in the running average.
const LATENCY_WEIGHT: f64 = 0.2;
/// The first retry delay after a failed warm start, doubled per failure in a row.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How many warm servers a node wants.
#[derive(Debug, Clone)]
pub struct Sizer {
    policy: PoolPolicy,
    min: usize,
    ceiling: usize,
    window: Duration,
    /// When this node's recent allocations happened (within `window`), oldest first.
    allocations: VecDeque<Instant>,
    /// Running average of cold starts (start to ready or warm), in seconds.
    cold_start: Option<f64>,
}

impl Sizer {
    pub fn new(config: &PoolSection) -> Self {
        Self {
            policy: config.policy,
            min: config.min,
            ceiling: config.ceiling(),
            window: config.rate_window,
            allocations: VecDeque::new(),
            cold_start: None,
        }
    }

    fn forget_before(&mut self, now: Instant) {
        while self.allocations.front().is_some_and(|at| now.saturating_duration_since(*at) > self.window) {
            self.allocations.pop_front();
        }
    }

    /// One allocation served by this node (warm or cold).
    pub fn record_allocation(&mut self, now: Instant) {
        self.forget_before(now);
        self.allocations.push_back(now);
    }

    /// One cold start: from the decision to start until the server answered.
    pub fn record_cold_start(&mut self, took: Duration) {
        let sample = took.as_secs_f64();
        self.cold_start = Some(match self.cold_start {
            None => sample,
            Some(average) => average + LATENCY_WEIGHT * (sample - average),
        });
    }

    /// Allocations per second over the window.
    pub fn rate(&mut self, now: Instant) -> f64 {
        self.forget_before(now);
        self.allocations.len() as f64 / self.window.as_secs_f64().max(1e-3)
    }

    #[cfg(test)]
    pub fn cold_start(&self) -> Option<Duration> {
        self.cold_start.map(Duration::from_secs_f64)
    }

    /// The pool size wanted now.
    pub fn target(&mut self, now: Instant) -> usize {
        match self.policy {
            PoolPolicy::Fixed => self.min,
            PoolPolicy::Auto => {
                let demand = self.cold_start.map_or(0.0, |latency| self.rate(now) * latency).ceil();
                // `as` saturates a float too big for usize; clamped to the ceiling anyway.
                (demand as usize).clamp(self.min, self.ceiling.max(self.min))
            }
        }
    }
}

/// The warm servers of one node, by their slot (the id their driver knows them by).
#[derive(Debug, Clone)]
pub struct WarmPool {
    /// Claimable, oldest first.
    warm: VecDeque<String>,
    /// Being started for the pool.
    starting: HashSet<String>,
    /// Warm starts that failed in a row.
    failures: u32,
    pub sizer: Sizer,
}

impl WarmPool {
    pub fn new(config: &PoolSection) -> Self {
        Self { warm: VecDeque::new(), starting: HashSet::new(), failures: 0, sizer: Sizer::new(config) }
    }

    pub fn warm(&self) -> usize {
        self.warm.len()
    }

    #[cfg(test)]
    pub fn starting(&self) -> usize {
        self.starting.len()
    }

    /// A refill of `slot` begins.
    pub fn start(&mut self, slot: &str) {
        self.starting.insert(slot.to_owned());
    }

    /// `slot` is warm: claimable from now on (last in line).
    pub fn enter(&mut self, slot: &str) {
        if self.starting.remove(slot) {
            self.failures = 0;
        }
        if !self.warm.iter().any(|warm| warm == slot) {
            self.warm.push_back(slot.to_owned());
        }
    }

    /// Takes the oldest warm server, which no one else can take from now on.
    pub fn claim(&mut self) -> Option<String> {
        self.warm.pop_front()
    }

    /// A claimed server that did not take its match after all: first in line again.
    pub fn give_back(&mut self, slot: &str) {
        if !self.warm.iter().any(|warm| warm == slot) {
            self.warm.push_front(slot.to_owned());
        }
    }

    /// Takes `slot` out of the claimable ones; false if it was not there (a claim took it).
    pub fn leave(&mut self, slot: &str) -> bool {
        match self.warm.iter().position(|warm| warm == slot) {
            Some(at) => {
                self.warm.remove(at);
                true
            }
            None => false,
        }
    }

    /// `slot`'s server ended. One that ended while starting was a failed refill.
    pub fn forget(&mut self, slot: &str) {
        self.leave(slot);
        if self.starting.remove(slot) {
            self.failures = self.failures.saturating_add(1);
        }
    }

    /// How many refills to begin now.
    pub fn wanted(&mut self, now: Instant) -> usize {
        self.sizer.target(now).saturating_sub(self.warm.len() + self.starting.len())
    }

    /// How long to wait before the next refill after failures in a row (zero: none).
    pub fn backoff(&self) -> Duration {
        match self.failures {
            0 => Duration::ZERO,
            n => BACKOFF_MIN.saturating_mul(1 << (n - 1).min(16)).min(BACKOFF_MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(min: usize, max: usize, policy: PoolPolicy) -> PoolSection {
        PoolSection { min, max, policy, rate_window: Duration::from_secs(10), ..PoolSection::default() }
    }

    #[test]
    fn claims_take_the_oldest_once_and_a_given_back_one_comes_first() {
        let mut pool = WarmPool::new(&config(3, 0, PoolPolicy::Fixed));
        let now = Instant::now();
        assert_eq!(pool.wanted(now), 3);
        for slot in ["w1", "w2", "w3"] {
            pool.start(slot);
        }
        assert_eq!(pool.wanted(now), 0, "starting ones count");
        pool.enter("w2");
        pool.enter("w1");
        pool.enter("w1");
        assert_eq!((pool.warm(), pool.starting()), (2, 1));
        assert_eq!(pool.claim().as_deref(), Some("w2"));
        assert_eq!(pool.wanted(now), 1, "a claimed one is replaced");
        pool.give_back("w2");
        assert_eq!(pool.claim().as_deref(), Some("w2"), "given back: first in line");
        assert_eq!(pool.claim().as_deref(), Some("w1"));
        assert_eq!(pool.claim(), None);
        assert!(!pool.leave("w1"), "claimed: no longer there to leave");
    }

    #[test]
    fn a_server_that_ends_is_never_claimed_and_failed_starts_back_off() {
        let mut pool = WarmPool::new(&config(2, 0, PoolPolicy::Fixed));
        pool.start("a");
        pool.start("b");
        pool.enter("a");
        pool.forget("a");
        assert_eq!(pool.claim(), None, "a server that died is never handed out");
        assert_eq!(pool.backoff(), Duration::ZERO, "it had been warm: no failed start");
        pool.forget("b");
        assert_eq!(pool.backoff(), BACKOFF_MIN);
        for slot in ["c", "d", "e"] {
            pool.start(slot);
            pool.forget(slot);
        }
        assert_eq!(pool.backoff(), BACKOFF_MIN * 8, "four failures in a row");
        for n in 0..30 {
            let slot = format!("x{n}");
            pool.start(&slot);
            pool.forget(&slot);
        }
        assert_eq!(pool.backoff(), BACKOFF_MAX);
        pool.start("ok");
        pool.enter("ok");
        assert_eq!(pool.backoff(), Duration::ZERO, "a success resets it");
    }

    #[test]
    fn fixed_wants_min_whatever_the_rate() {
        let mut sizer = Sizer::new(&config(4, 50, PoolPolicy::Fixed));
        let t0 = Instant::now();
        for i in 0..1000 {
            sizer.record_allocation(t0 + Duration::from_millis(i));
        }
        sizer.record_cold_start(Duration::from_secs(1));
        assert_eq!(sizer.target(t0 + Duration::from_secs(1)), 4);
    }

    #[test]
    fn auto_covers_the_rate_times_the_cold_start_between_min_and_max() {
        let mut sizer = Sizer::new(&config(2, 20, PoolPolicy::Auto));
        let t0 = Instant::now();
        assert_eq!(sizer.target(t0), 2, "nothing learnt: min");
        // 10 allocations a second for the whole 10 s window...
        for i in 0..100 {
            sizer.record_allocation(t0 + Duration::from_millis(i * 100));
        }
        let now = t0 + Duration::from_millis(9_950);
        assert!((sizer.rate(now) - 10.0).abs() < 1e-9);
        assert_eq!(sizer.target(now), 2, "no cold start measured yet: min");
        // ...with cold starts of 0.75 s: 7.5 arrive while one replacement starts.
        sizer.record_cold_start(Duration::from_millis(750));
        assert_eq!(sizer.target(now), 8);
        // Slower starts need more, up to max.
        for _ in 0..50 {
            sizer.record_cold_start(Duration::from_secs(5));
        }
        assert_eq!(sizer.target(now), 20, "capped at max");
        // The rate fades out of the window: back to min.
        assert_eq!(sizer.target(now + Duration::from_secs(11)), 2);
    }

    #[test]
    fn auto_with_a_slow_trickle_stays_at_min_and_a_min_above_max_wins() {
        let mut sizer = Sizer::new(&config(3, 0, PoolPolicy::Auto));
        let t0 = Instant::now();
        sizer.record_allocation(t0);
        sizer.record_cold_start(Duration::from_secs(30));
        assert_eq!(sizer.target(t0), 3, "max 0 means min");
        let mut sizer = Sizer::new(&config(0, 5, PoolPolicy::Auto));
        assert_eq!(sizer.target(t0), 0, "min 0: empty until allocations come");
        sizer.record_allocation(t0);
        sizer.record_cold_start(Duration::from_millis(200));
        // 1 allocation in 10 s × 0.2 s = 0.02, rounded up: one warm server.
        assert_eq!(sizer.target(t0), 1);
    }

    #[test]
    fn the_cold_start_average_follows_recent_samples() {
        let mut sizer = Sizer::new(&config(1, 1, PoolPolicy::Auto));
        assert_eq!(sizer.cold_start(), None);
        sizer.record_cold_start(Duration::from_millis(100));
        for _ in 0..60 {
            sizer.record_cold_start(Duration::from_millis(500));
        }
        let average = sizer.cold_start().expect("learnt");
        assert!((average.as_secs_f64() - 0.5).abs() < 0.001, "{average:?}");
    }
}

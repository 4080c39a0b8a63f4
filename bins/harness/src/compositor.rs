//! The compositor: turns per-player rates into scenario executions, tick by tick.
//!
//! Each scenario has a rate in executions per *idle* player per second. On every tick the
//! compositor adds `idle players × rate × elapsed` to a per-scenario accumulator, takes
//! the whole executions out of it and keeps the fraction for the next tick, so a rate of
//! one per 300 s over 1,000 idle players gives exactly 1,000 executions in 300 s however
//! the ticks fall. The elapsed time is the real time since the previous tick, so a late
//! tick makes up for its lateness instead of losing executions.
//!
//! This module is pure: no clock, no tasks, no I/O. The caller passes the time and the
//! number of idle players, and hands the planned executions to [`dispatch`] with a
//! function that gives one to an idle player. When there is none, the execution counts
//! as *starved* instead of being queued: queued work would pile up behind a saturated
//! pool and arrive as a burst later, which real players never do.

use std::time::Duration;

use crate::config::Rate;
use crate::scenario::{SCENARIOS, Scenario};

/// A tick later than this after the previous one (a stopped process, a suspended
/// laptop) counts as this long, so a stall does not come back as a burst.
pub const MAX_ELAPSED: Duration = Duration::from_secs(5);

/// Executions per scenario, indexed by [`Scenario::index`].
pub type Counts = [u64; SCENARIOS];

/// The compositor's state: rates and the fractional executions carried between ticks.
#[derive(Debug, Clone)]
pub struct Compositor {
    rates: [Rate; SCENARIOS],
    /// Per scenario, executions owed but not yet whole, in units of
    /// 1 / (10⁹ × the rate's period in ns) executions: exact integer arithmetic.
    carry: [u128; SCENARIOS],
    /// The clock reading of the previous tick.
    last: Duration,
}

/// What one tick wants run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    pub executions: Counts,
    /// The time this tick covered (after capping at [`MAX_ELAPSED`]).
    pub elapsed: Duration,
}

impl Plan {
    pub fn total(&self) -> u64 {
        self.executions.iter().sum()
    }
}

impl Compositor {
    /// A compositor with `rates`, whose clock starts at `now`.
    pub fn new(rates: [Rate; SCENARIOS], now: Duration) -> Self {
        Self { rates, carry: [0; SCENARIOS], last: now }
    }

    pub fn rates(&self) -> &[Rate; SCENARIOS] {
        &self.rates
    }

    /// Changes the rates; what is owed so far is kept (re-expressed in the new units).
    pub fn set_rates(&mut self, rates: [Rate; SCENARIOS]) {
        for (index, rate) in rates.into_iter().enumerate() {
            let old = unit(self.rates[index]);
            let new = unit(rate);
            if old != new {
                // carry/old of an execution is owed; keep that fraction (rounded down).
                self.carry[index] = if rate.is_zero() { 0 } else { self.carry[index] * new / old };
            }
            self.rates[index] = rate;
        }
    }

    /// One tick at clock reading `now` with `idle` idle players: what to run.
    pub fn tick(&mut self, now: Duration, idle: u64) -> Plan {
        let elapsed = now.saturating_sub(self.last).min(MAX_ELAPSED);
        self.last = now.max(self.last);
        let elapsed_ns = elapsed.as_nanos();
        let mut executions = [0; SCENARIOS];
        for ((rate, carry), executions) in self.rates.iter().zip(&mut self.carry).zip(&mut executions) {
            if rate.is_zero() {
                continue;
            }
            // idle × (nanos / 10⁹) × (elapsed_ns / period_ns) executions, scaled by
            // 10⁹ × period_ns so that it stays an integer.
            *carry += u128::from(idle) * u128::from(rate.nanos()) * elapsed_ns;
            let whole = *carry / unit(*rate);
            *carry -= whole * unit(*rate);
            *executions = u64::try_from(whole).unwrap_or(u64::MAX);
        }
        Plan { executions, elapsed }
    }

    /// Executions per second the rates ask for with `idle` idle players.
    pub fn desired_per_second(&self, idle: u64) -> [f64; SCENARIOS] {
        self.rates.map(|rate| idle as f64 * rate.as_per_second())
    }
}

/// Accumulator units per whole execution for `rate`.
fn unit(rate: Rate) -> u128 {
    1_000_000_000u128 * u128::from(rate.period_ns())
}

/// What [`dispatch`] did with a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dispatched {
    /// Executions handed to an idle player.
    pub started: Counts,
    /// Executions dropped because no idle player was free.
    pub starved: Counts,
}

/// Hands the plan's executions to idle players, round-robin across scenarios so that a
/// shortage starves each scenario in proportion to its share. `give` hands one
/// execution to an idle player and says whether there was one; after its first `false`
/// it is not called again in this tick and every remaining execution is starved.
pub fn dispatch(plan: &Plan, mut give: impl FnMut(Scenario) -> bool) -> Dispatched {
    let mut remaining = plan.executions;
    let mut result = Dispatched::default();
    let mut pool_empty = false;
    while remaining.iter().any(|&left| left > 0) {
        for scenario in Scenario::ALL {
            let index = scenario.index();
            if remaining[index] == 0 {
                continue;
            }
            if pool_empty {
                result.starved[index] += remaining[index];
                remaining[index] = 0;
                continue;
            }
            remaining[index] -= 1;
            if give(scenario) {
                result.started[index] += 1;
            } else {
                pool_empty = true;
                result.starved[index] += 1;
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const MATCHMAKING: usize = Scenario::Matchmaking.index();
    const FETCH_STORE: usize = Scenario::FetchStore.index();
    const LOGOUT: usize = Scenario::Logout.index();

    fn rates(pairs: &[(Scenario, Rate)]) -> [Rate; SCENARIOS] {
        let mut rates = [Rate::ZERO; SCENARIOS];
        for (scenario, rate) in pairs {
            rates[scenario.index()] = *rate;
        }
        rates
    }

    /// A clock the test moves by hand.
    struct Clock(Duration);

    impl Clock {
        fn advance(&mut self, by: Duration) -> Duration {
            self.0 += by;
            self.0
        }
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn seed_rates_give_exact_counts_over_many_ticks() {
        let seed = crate::config::Rates::default().to_array();
        let mut clock = Clock(Duration::from_secs(1000));
        let mut compositor = Compositor::new(seed, clock.0);
        let mut total = [0u64; SCENARIOS];
        // 5,400 s in 100 ms ticks with 1,000 idle players.
        for _ in 0..54_000 {
            let plan = compositor.tick(clock.advance(ms(100)), 1000);
            for (sum, count) in total.iter_mut().zip(plan.executions) {
                *sum += count;
            }
        }
        assert_eq!(total[MATCHMAKING], 1000 * 5400 / 300, "one per 300 s per player");
        assert_eq!(total[FETCH_STORE], 1000 * 5400 / 2700, "one per 2700 s per player");
        assert_eq!(total[LOGOUT], 1000 * 5400 / 1800, "one per 1800 s per player");
        assert_eq!(total[Scenario::Login.index()], 0);
    }

    #[test]
    fn the_fraction_is_carried_from_tick_to_tick() {
        // 1,000 idle × 1/300 s × 0.1 s = 1/3 execution per tick: 0, 0, 1, 0, 0, 1, ...
        let rate = Rate::one_per(Duration::from_secs(300));
        let mut clock = Clock(Duration::ZERO);
        let mut compositor = Compositor::new(rates(&[(Scenario::Matchmaking, rate)]), clock.0);
        let per_tick: Vec<u64> =
            (0..9).map(|_| compositor.tick(clock.advance(ms(100)), 1000).executions[MATCHMAKING]).collect();
        assert_eq!(per_tick, vec![0, 0, 1, 0, 0, 1, 0, 0, 1]);
    }

    #[test]
    fn late_and_irregular_ticks_keep_the_rate_exact() {
        // Ticks from 1 ms to 997 ms apart; what counts is the total time covered.
        let rate = Rate::per_second(0.37).expect("rate");
        let mut clock = Clock(Duration::ZERO);
        let mut compositor = Compositor::new(rates(&[(Scenario::FetchStore, rate)]), clock.0);
        let mut total = 0;
        let mut state = 12345u64;
        for _ in 0..10_000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let step = ms(1 + (state >> 33) % 997);
            total += compositor.tick(clock.advance(step), 250).executions[FETCH_STORE];
        }
        let covered = clock.0.as_nanos();
        // 250 × 0.37 per second over `covered` ns, rounded down: exact integer arithmetic.
        let expected = 250u128 * 370_000_000 * covered / 1_000_000_000 / 1_000_000_000;
        assert_eq!(u128::from(total), expected);
    }

    #[test]
    fn a_stall_is_capped_not_replayed_as_a_burst() {
        let mut clock = Clock(Duration::ZERO);
        let mut compositor =
            Compositor::new(rates(&[(Scenario::Logout, Rate::per_second(1.0).expect("rate"))]), clock.0);
        let plan = compositor.tick(clock.advance(Duration::from_secs(60)), 10);
        assert_eq!(plan.elapsed, MAX_ELAPSED);
        assert_eq!(plan.executions[LOGOUT], 10 * MAX_ELAPSED.as_secs());
        // A clock that goes backwards yields nothing rather than panicking.
        assert_eq!(compositor.tick(Duration::ZERO, 10).total(), 0);
    }

    #[test]
    fn idle_count_scales_each_tick() {
        let mut clock = Clock(Duration::ZERO);
        let mut compositor =
            Compositor::new(rates(&[(Scenario::Matchmaking, Rate::per_second(0.5).expect("rate"))]), clock.0);
        let busy_second: u64 =
            (0..10).map(|_| compositor.tick(clock.advance(ms(100)), 0).executions[MATCHMAKING]).sum();
        let idle_second: u64 =
            (0..10).map(|_| compositor.tick(clock.advance(ms(100)), 40).executions[MATCHMAKING]).sum();
        assert_eq!((busy_second, idle_second), (0, 20), "no idle players, no executions");
    }

    #[test]
    fn changing_a_rate_keeps_what_is_owed() {
        let mut clock = Clock(Duration::ZERO);
        let mut compositor =
            Compositor::new(rates(&[(Scenario::Matchmaking, Rate::per_second(1.0).expect("rate"))]), clock.0);
        // Half an execution owed after 0.5 s with one idle player.
        assert_eq!(compositor.tick(clock.advance(ms(500)), 1).total(), 0);
        compositor.set_rates(rates(&[(Scenario::Matchmaking, Rate::one_per(Duration::from_secs(2)))]));
        // 0.5 owed + 1 s × 0.5/s = 1.0
        assert_eq!(compositor.tick(clock.advance(ms(1000)), 1).executions[MATCHMAKING], 1);
        assert_eq!(compositor.desired_per_second(10)[MATCHMAKING], 5.0);
    }

    #[test]
    fn a_busy_pool_starves_executions_in_proportion() {
        let mut plan = Plan::default();
        plan.executions[MATCHMAKING] = 6;
        plan.executions[FETCH_STORE] = 3;
        plan.executions[LOGOUT] = 1;
        let mut idle = 5;
        let mut given = Vec::new();
        let result = dispatch(&plan, |scenario| {
            if idle == 0 {
                return false;
            }
            idle -= 1;
            given.push(scenario);
            true
        });
        assert_eq!(
            given,
            vec![
                Scenario::Matchmaking,
                Scenario::FetchStore,
                Scenario::Logout,
                Scenario::Matchmaking,
                Scenario::FetchStore
            ],
            "round-robin across scenarios"
        );
        assert_eq!(result.started[MATCHMAKING], 2);
        assert_eq!(result.starved[MATCHMAKING], 4);
        assert_eq!((result.started[FETCH_STORE], result.starved[FETCH_STORE]), (2, 1));
        assert_eq!((result.started[LOGOUT], result.starved[LOGOUT]), (1, 0));
        let started: u64 = result.started.iter().sum();
        let starved: u64 = result.starved.iter().sum();
        assert_eq!(started + starved, plan.total(), "nothing is queued for later");
    }

    #[test]
    fn an_empty_pool_is_asked_once_per_tick() {
        let mut plan = Plan::default();
        plan.executions[MATCHMAKING] = 1000;
        let mut asked = 0;
        let result = dispatch(&plan, |_| {
            asked += 1;
            false
        });
        assert_eq!(asked, 1);
        assert_eq!(result.starved[MATCHMAKING], 1000);
    }
}

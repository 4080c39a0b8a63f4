//! One simulated player: a long-lived task with its own session.
//!
//! ```text
//! login (retried with backoff) → idle ⇄ scenario → follow-ups by chance → think → idle
//!                                        └ logout: the player leaves; the pool replaces it
//! ```
//!
//! Memory is the design constraint: a hundred thousand idle players must fit in a few
//! hundred MiB. While idle, a player's task holds only its [`Session`] (an `Arc`, a
//! number and a few boxed strings) and a oneshot receiver. Everything a scenario needs
//! (HTTP futures, WebSocket buffers, timers) lives in a boxed future that exists only
//! while the player is busy, so it does not widen the idle task's state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::HarnessSection;
use crate::http::Gateway;
use crate::pool::{Command, Pool};
use crate::population::Population;
use crate::quality::Quality;
use crate::scenario::{ErrorKind, Outcome, SCENARIOS, Scenario};
use crate::scenarios;
use crate::scenarios::party::PartyInvite;
use crate::stats::{ExitReason, PlayerState, Stats};

/// Follow-ups chained after one dispatched scenario at most (a config whose follow-ups
/// form a cycle must not keep a player busy forever).
const MAX_CHAIN: usize = 8;

/// What every player shares: config, the HTTP client, the pool and the stats.
pub struct Context {
    pub config: HarnessSection,
    pub gateway: Gateway,
    pub stats: Stats,
    pub pool: Pool,
    /// Who the players are (true skill, regions) and what each attempt draws.
    pub population: Population,
    /// Match quality per queue and rating convergence, as players report them.
    pub quality: Quality,
    /// Player ids are `<prefix>-p<number>`.
    pub player_prefix: Box<str>,
    /// Offer ids the store listed last (shared so that players need not remember them).
    pub offers: RwLock<crate::scenarios::store::Offers>,
    /// Cancelled when the run ends: busy players abort what they are doing.
    pub abort: CancellationToken,
    /// Per scenario: (next scenario, chance), from `[harness.follow_ups]`.
    pub follow_ups: [Vec<(Scenario, f64)>; SCENARIOS],
    /// Skip the login request and start with a made-up token (benchmarks of idle
    /// memory, where no gateway is involved).
    pub preseeded: bool,
    /// This instance's own target and rates (`players`/`rates`, or the stage plan's now).
    pub own: crate::stages::Own,
    next_number: AtomicU64,
    tasks: AtomicU64,
    tasks_done: Notify,
}

impl Context {
    pub fn new(config: HarnessSection, gateway: Gateway, instance: &str, preseeded: bool) -> Self {
        let follow_ups = Scenario::ALL.map(|scenario| config.follow_ups_of(scenario));
        // Player ids must stay within the backend's 64 characters.
        let prefix: String = instance.chars().take(40).collect();
        let population = Population::new(&config.population);
        let (target, rates) = config.start_point();
        Self {
            own: crate::stages::Own::new(target, rates),
            pool: Pool::new(0),
            gateway,
            stats: Stats::new(),
            quality: Quality::new(population.queue_names()),
            population,
            player_prefix: prefix.into(),
            offers: RwLock::new(Default::default()),
            abort: CancellationToken::new(),
            follow_ups,
            preseeded,
            next_number: AtomicU64::new(1),
            tasks: AtomicU64::new(0),
            tasks_done: Notify::new(),
            config,
        }
    }

    /// Player tasks still running.
    pub fn tasks(&self) -> u64 {
        self.tasks.load(Ordering::Acquire)
    }

    /// Waits until every player task has ended.
    pub async fn all_tasks_ended(&self) {
        loop {
            let notified = self.tasks_done.notified();
            if self.tasks() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Starts one player task (the caller has claimed its place in the pool).
pub fn spawn(context: &Arc<Context>, alive: u64) {
    let number = context.next_number.fetch_add(1, Ordering::Relaxed);
    context.tasks.fetch_add(1, Ordering::AcqRel);
    context.stats.player_spawned(alive);
    tokio::spawn(live(Session::new(context.clone(), number)));
}

/// A player's own state.
pub struct Session {
    pub context: Arc<Context>,
    pub number: u64,
    pub token: Option<Box<str>>,
    /// The matchmaking ticket while one is open.
    pub ticket: Option<Box<str>>,
    /// The matched game, from `matched` until `in_game` has played it.
    pub game: Option<Box<Game>>,
    /// A party leader's invite, from the recruitment until `matchmaking` takes it.
    pub party: Option<Arc<PartyInvite>>,
}

/// A match the player was given.
#[derive(Debug)]
pub struct Game {
    /// WebSocket URL (the gateway's `/game/{gameId}/connect`).
    pub url: Box<str>,
    pub game_id: Box<str>,
    /// When the player joined the queue (for time-to-play).
    pub joined: Instant,
}

impl Session {
    pub fn new(context: Arc<Context>, number: u64) -> Self {
        Self { context, number, token: None, ticket: None, game: None, party: None }
    }

    pub fn player_id(&self) -> String {
        format!("{}-p{}", self.context.player_prefix, self.number)
    }

    /// The token as an owned string, for requests made while the session is borrowed.
    pub fn token(&self) -> Box<str> {
        self.token.clone().unwrap_or_default()
    }
}

/// How a chain of scenarios ended for the player.
enum ChainEnd {
    /// Back to idle.
    Idle,
    /// The player logged out.
    LoggedOut,
    /// Its token ended, it could not log in again, and the target shrank meanwhile.
    Retired,
    /// The run ended.
    Aborted,
}

/// The player's whole life. Kept small: see the module docs.
async fn live(mut session: Session) {
    let context = session.context.clone();
    let reason = life(&mut session).await;
    if reason != ExitReason::Retired {
        context.pool.left();
    }
    context.stats.player_exited(reason);
    drop(session);
    if context.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
        context.tasks_done.notify_waiters();
    }
}

async fn life(session: &mut Session) -> ExitReason {
    let context = session.context.clone();
    context.stats.enter(PlayerState::LoggingIn);
    let logged_in = Box::pin(log_in(session)).await;
    context.stats.leave(PlayerState::LoggingIn);
    match logged_in {
        LoginEnd::LoggedIn => {}
        LoginEnd::Retired => return ExitReason::Retired,
        LoginEnd::Aborted => return ExitReason::Shutdown,
    }
    loop {
        let (slot, command) = oneshot::channel();
        if !context.pool.park(slot) {
            return ExitReason::Shutdown;
        }
        context.stats.enter(PlayerState::Idle);
        let command = command.await;
        context.stats.leave(PlayerState::Idle);
        let scenario = match command {
            Ok(Command::Run(scenario)) => scenario,
            Ok(Command::Member(invite)) => {
                session.party = Some(invite);
                Scenario::Matchmaking
            }
            Ok(Command::Retire) => return ExitReason::Retired,
            Err(_) => return ExitReason::Shutdown,
        };
        context.stats.enter(PlayerState::Busy);
        let end = Box::pin(run_chain(session, scenario)).await;
        context.stats.leave(PlayerState::Busy);
        match end {
            ChainEnd::Idle => {}
            ChainEnd::LoggedOut => return ExitReason::Logout,
            ChainEnd::Retired => return ExitReason::Retired,
            ChainEnd::Aborted => return ExitReason::Shutdown,
        }
        if context.pool.claim_retirement() {
            return ExitReason::Retired;
        }
    }
}

/// How the login phase ended.
enum LoginEnd {
    LoggedIn,
    /// The target shrank while the player could not log in.
    Retired,
    /// The run ended.
    Aborted,
}

/// Logs in, retrying with exponential backoff.
async fn log_in(session: &mut Session) -> LoginEnd {
    let context = session.context.clone();
    if context.preseeded {
        // As long as a real token (an Ed25519 JWT of ~280 characters), so that what an
        // idle player holds is measured as it is.
        session.token = Some(format!("{:0>280}", session.number).into());
        return LoginEnd::LoggedIn;
    }
    let mut backoff = context.config.login.retry_min;
    loop {
        match timed(session, Scenario::Login).await {
            Outcome::Succeeded => return LoginEnd::LoggedIn,
            Outcome::Aborted => return LoginEnd::Aborted,
            Outcome::Rejected | Outcome::Failed(_) => {}
        }
        // A player who cannot log in is the first to go when the target shrinks.
        if context.pool.claim_retirement() {
            return LoginEnd::Retired;
        }
        // Jitter spreads the retries of players that failed together.
        let pause = backoff.mul_f64(0.5 + fastrand::f64());
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = context.abort.cancelled() => return LoginEnd::Aborted,
        }
        backoff = (backoff * 2).min(context.config.login.retry_max);
    }
}

/// Runs one scenario, counting its attempt, outcome and latency; aborts it when the run
/// ends.
async fn timed(session: &mut Session, scenario: Scenario) -> Outcome {
    let context = session.context.clone();
    let stats = &context.stats;
    stats.attempt(scenario);
    let started = Instant::now();
    let outcome = tokio::select! {
        biased;
        () = context.abort.cancelled() => Outcome::Aborted,
        outcome = scenarios::run(session, scenario) => outcome,
    };
    stats.finish(scenario, started.elapsed(), &outcome);
    if let Outcome::Failed(failure) = &outcome {
        crate::report::log_failure(scenario, failure);
    }
    outcome
}

/// A dispatched scenario, its follow-ups, and the think time after each step.
async fn run_chain(session: &mut Session, first: Scenario) -> ChainEnd {
    let context = session.context.clone();
    let mut scenario = first;
    for _ in 0..=MAX_CHAIN {
        let outcome = timed(session, scenario).await;
        if matches!(outcome, Outcome::Aborted) {
            // Boxed: rare, and as large as a request; inline it would widen every chain.
            Box::pin(scenarios::matchmaking::abandon_ticket(session)).await;
            return ChainEnd::Aborted;
        }
        if scenario == Scenario::Logout {
            return ChainEnd::LoggedOut;
        }
        // A token lives `session.ttl` from its login, and a login elsewhere may end it:
        // refused, the player logs in again (counted as a login), as a client would.
        if let Outcome::Failed(failure) = &outcome
            && failure.kind == ErrorKind::Unauthorized
            && scenario != Scenario::Login
        {
            match Box::pin(log_in(session)).await {
                LoginEnd::LoggedIn => {}
                LoginEnd::Retired => return ChainEnd::Retired,
                LoginEnd::Aborted => return ChainEnd::Aborted,
            }
        }
        let next = match outcome {
            Outcome::Succeeded => pick_follow_up(&context.follow_ups[scenario.index()]),
            _ => None,
        };
        if !think(&context).await {
            return ChainEnd::Aborted;
        }
        match next {
            Some(next) => scenario = next,
            None => break,
        }
    }
    ChainEnd::Idle
}

/// The first follow-up whose chance comes up.
fn pick_follow_up(follow_ups: &[(Scenario, f64)]) -> Option<Scenario> {
    follow_ups.iter().find(|(_, chance)| *chance > 0.0 && fastrand::f64() < *chance).map(|(next, _)| *next)
}

/// A pause between steps, like a person reading the screen. `false` if the run ended.
async fn think(context: &Context) -> bool {
    let think = &context.config.think;
    let min = u64::try_from(think.min.as_nanos()).unwrap_or(u64::MAX);
    let max = u64::try_from(think.max.as_nanos()).unwrap_or(u64::MAX).max(min);
    let pause = Duration::from_nanos(fastrand::u64(min..=max));
    if pause.is_zero() {
        return !context.abort.is_cancelled();
    }
    tokio::select! {
        () = tokio::time::sleep(pause) => true,
        () = context.abort.cancelled() => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> Arc<Context> {
        let config = HarnessSection::default();
        let url = crate::http::GatewayUrl::parse("http://127.0.0.1:1").expect("url");
        let gateway = Gateway::new(url, &config.http);
        Arc::new(Context::new(config, gateway, "test", true))
    }

    #[tokio::test]
    async fn an_idle_player_is_small() {
        let session = Session::new(context(), 1);
        assert!(std::mem::size_of::<Session>() <= 64, "session: {} bytes", std::mem::size_of::<Session>());
        // The future of a player's whole life, boxed scenarios excluded by construction.
        let future = live(session);
        let size = std::mem::size_of_val(&future);
        assert!(size <= 256, "a player's task state is {size} bytes");
    }

    #[test]
    fn follow_ups_are_taken_by_chance() {
        assert_eq!(pick_follow_up(&[(Scenario::InGame, 1.0)]), Some(Scenario::InGame));
        assert_eq!(pick_follow_up(&[(Scenario::InGame, 0.0)]), None);
        assert_eq!(pick_follow_up(&[]), None);
        let hits =
            (0..10_000).filter(|_| pick_follow_up(&[(Scenario::StorePurchase, 0.1)]).is_some()).count();
        assert!((700..1300).contains(&hits), "about 10% of 10,000: {hits}");
    }
}

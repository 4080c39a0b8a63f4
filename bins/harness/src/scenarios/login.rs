//! `login`: `POST /login` with the player's id and password; keeps the token.
//!
//! A `429` (the gateway's login rate per client address: a whole harness machine is one
//! address) is waited out as its `Retry-After` says, plus jitter so that players
//! throttled together do not come back together, and retried: at most [`MAX_RETRIES`]
//! times and [`WAIT_BUDGET`] of waiting in all, and never past the end of the run. Each
//! 429 waited out shows under `http_429` in the errors by kind without failing the login;
//! when the retries run out the login fails as `http_429` (and the player's own login
//! backoff takes over).

use std::time::Duration;

use hyper::Method;
use mm_shared::protocol::{LoginReply, LoginRequest};

use crate::http::Call;
use crate::player::Session;
use crate::scenario::{Outcome, Scenario};

/// 429s one login waits out at most.
pub const MAX_RETRIES: u32 = 5;
/// Waiting one login does for 429s at most, in all.
pub const WAIT_BUDGET: Duration = Duration::from_secs(30);
/// The wait when a 429 says nothing (or something unreadable).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The shortest and longest single wait, whatever `Retry-After` says.
const MIN_WAIT: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_secs(10);

pub async fn run(session: &mut Session) -> Outcome {
    let request = LoginRequest { id: session.player_id(), password: session.context.config.password.clone() };
    let (mut retries, mut waited) = (0, Duration::ZERO);
    let answer = loop {
        let answer = match session
            .context
            .gateway
            .send(Call::new(Method::POST, "POST /login", "/login").json(&request))
            .await
        {
            Ok(answer) => answer,
            Err(failure) => return Outcome::Failed(failure),
        };
        if answer.status != 429 || retries >= MAX_RETRIES {
            break answer;
        }
        let pause = throttle_pause(answer.retry_after);
        if waited + pause > WAIT_BUDGET {
            break answer;
        }
        retries += 1;
        waited += pause;
        session.context.stats.throttled(Scenario::Login);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = session.context.abort.cancelled() => return Outcome::Aborted,
        }
    };
    if !answer.is_success() {
        return Outcome::Failed(answer.unexpected("login"));
    }
    match answer.json::<LoginReply>("login") {
        Ok(reply) => {
            session.token = Some(reply.token.into());
            Outcome::Succeeded
        }
        Err(failure) => Outcome::Failed(failure),
    }
}

/// `Retry-After` (bounded), and up to half again: never sooner than the gateway asked.
fn throttle_pause(retry_after: Option<Duration>) -> Duration {
    retry_after.unwrap_or(DEFAULT_RETRY_AFTER).clamp(MIN_WAIT, MAX_WAIT).mul_f64(1.0 + fastrand::f64() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_follow_retry_after_within_bounds() {
        for _ in 0..100 {
            let pause = throttle_pause(Some(Duration::from_secs(2)));
            assert!(pause >= Duration::from_secs(2) && pause <= Duration::from_secs(3), "{pause:?}");
            assert!(throttle_pause(None) >= DEFAULT_RETRY_AFTER);
            assert!(throttle_pause(Some(Duration::ZERO)) >= MIN_WAIT);
            assert!(throttle_pause(Some(Duration::from_secs(3600))) <= MAX_WAIT.mul_f64(1.5));
        }
    }
}

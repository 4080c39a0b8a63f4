//! What each scenario does against the gateway, one file each.
//!
//! A scenario takes the player's [`Session`], talks to the gateway through the shared
//! client, updates the session (token, ticket, game) and says how it went. It never
//! counts or logs itself: `player::timed` does that, the same way for all of them.

pub mod in_game;
pub mod login;
pub mod matchmaking;
pub mod party;
pub mod store;

use hyper::Method;

use crate::http::Call;
use crate::player::Session;
use crate::scenario::{Outcome, Scenario};

/// Runs `scenario` for the player. Boxed: only a busy player pays for a scenario's state.
pub async fn run(session: &mut Session, scenario: Scenario) -> Outcome {
    match scenario {
        Scenario::Login => Box::pin(login::run(session)).await,
        Scenario::Matchmaking => Box::pin(matchmaking::run(session)).await,
        Scenario::InGame => Box::pin(in_game::run(session)).await,
        Scenario::FetchStore => Box::pin(store::fetch(session)).await,
        Scenario::StorePurchase => Box::pin(store::purchase(session)).await,
        Scenario::Logout => Box::pin(logout(session)).await,
    }
}

/// `POST /logout`: the session ends on the backend too. The player leaves whatever the
/// answer (a real client that closes does not wait for the server to agree).
async fn logout(session: &mut Session) -> Outcome {
    let token = session.token();
    let answer =
        session.context.gateway.send(Call::new(Method::POST, "POST /logout", "/logout").token(&token)).await;
    session.token = None;
    match answer {
        Ok(answer) if answer.is_success() => Outcome::Succeeded,
        Ok(answer) => Outcome::Failed(answer.unexpected("logout")),
        Err(failure) => Outcome::Failed(failure),
    }
}

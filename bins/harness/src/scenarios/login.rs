//! `login`: `POST /login` with the player's id and password; keeps the token.

use hyper::Method;
use mm_shared::protocol::{LoginReply, LoginRequest};

use crate::http::Call;
use crate::player::Session;
use crate::scenario::Outcome;

pub async fn run(session: &mut Session) -> Outcome {
    let request = LoginRequest { id: session.player_id(), password: session.context.config.password.clone() };
    let answer = match session
        .context
        .gateway
        .send(Call::new(Method::POST, "POST /login", "/login").json(&request))
        .await
    {
        Ok(answer) => answer,
        Err(failure) => return Outcome::Failed(failure),
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

//! `in_game`: play the matched game until the server ends it.
//!
//! The player dials the WebSocket URL from its matched ticket (through the gateway, with
//! `?token=`), then sends a message every `message_interval` and checks that each one
//! comes back unchanged before sending the next. Messages alternate text and binary and
//! carry the player id and a sequence number, so an echo that belongs to someone else or
//! arrives out of order is caught, then the player's true skill as JSON
//! (`p-1#3 {"trueSkill":1523.4}`), from which the game server decides who won. Frames
//! that do not look like ours are the server's own
//! (state updates) and are let through.
//!
//! The game ends well when the server sends a close frame; a connection that just drops,
//! a wrong echo, a missing echo or a game longer than `max_duration` is a failure.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout_at;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::http::query_escape;
use crate::player::Session;
use crate::scenario::{ErrorKind, Failure, Outcome};

/// How long the close handshake may take after the server's close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What came back while waiting.
enum Heard {
    /// The echo of the message we are waiting for.
    Echo,
    /// The server ended the game.
    Closed,
    /// The wait ran out.
    Nothing,
}

pub async fn run(session: &mut Session) -> Outcome {
    let Some(game) = session.game.take() else {
        return Outcome::Failed(Failure::new(ErrorKind::NoMatch, "in_game without a matched game"));
    };
    let context = session.context.clone();
    let config = &context.config.in_game;
    let url = game_url(&game.url, &context.gateway.url().ws_base(), &session.token());
    let mut socket =
        match tokio::time::timeout(config.connect_timeout, tokio_tungstenite::connect_async(&url)).await {
            Ok(Ok((socket, _response))) => socket,
            Ok(Err(err)) => {
                return Outcome::Failed(Failure::new(
                    ErrorKind::WsConnect,
                    format!("game {}: {err}", game.game_id),
                ));
            }
            Err(_) => {
                return Outcome::Failed(Failure::new(
                    ErrorKind::Timeout,
                    format!(
                        "game {}: no WebSocket handshake within {:?}",
                        game.game_id, config.connect_timeout
                    ),
                ));
            }
        };
    let tag = session.player_id();
    // What the game server decides the winner from: the player's hidden true skill, sent
    // with every message (the server echoes the message as it came).
    let skill = context.population.traits(&tag).true_skill;
    let started = Instant::now();
    let mut first_echo = true;
    for sequence in 1u64.. {
        if started.elapsed() > config.max_duration {
            let _ = socket.close(None).await;
            return Outcome::Failed(Failure::new(
                ErrorKind::GameTooLong,
                format!("game {} still going after {:?}", game.game_id, config.max_duration),
            ));
        }
        let text = format!("{tag}#{sequence} {{\"trueSkill\":{skill:.1}}}");
        let message =
            if sequence % 2 == 1 { Message::text(text.clone()) } else { Message::binary(text.clone()) };
        if let Err(err) = socket.send(message).await {
            // The server may end the game between two messages.
            return ended_while_sending(&err, &game.game_id);
        }
        match listen(&mut socket, &tag, Some(&text), Instant::now() + config.echo_timeout).await {
            Ok(Heard::Echo) => {}
            Ok(Heard::Closed) => return finish_close(&mut socket).await,
            Ok(Heard::Nothing) => {
                return Outcome::Failed(Failure::new(
                    ErrorKind::EchoTimeout,
                    format!(
                        "game {}: no echo of message {sequence} within {:?}",
                        game.game_id, config.echo_timeout
                    ),
                ));
            }
            Err(failure) => return Outcome::Failed(failure),
        }
        if first_echo {
            first_echo = false;
            context.stats.time_to_play(game.joined.elapsed());
        }
        context.stats.game_message_echoed();
        match listen(&mut socket, &tag, None, Instant::now() + config.message_interval).await {
            Ok(Heard::Nothing | Heard::Echo) => {}
            Ok(Heard::Closed) => return finish_close(&mut socket).await,
            Err(failure) => return Outcome::Failed(failure),
        }
    }
    Outcome::Succeeded
}

/// The server closed: send the close reply (tungstenite queues it when the close frame
/// arrives; a flush sends it) and wait briefly for the connection to end, so the server
/// sees a clean close handshake instead of waiting for a player who left.
async fn finish_close<S>(socket: &mut S) -> Outcome
where
    S: futures_util::Sink<Message> + futures_util::Stream + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = socket.flush().await;
        while socket.next().await.is_some() {}
    })
    .await;
    Outcome::Succeeded
}

/// Reads frames until `expected` is echoed, the server closes, or `deadline`.
async fn listen<S>(
    socket: &mut S,
    tag: &str,
    expected: Option<&str>,
    deadline: Instant,
) -> Result<Heard, Failure>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let frame = match timeout_at(deadline.into(), socket.next()).await {
            Err(_) => return Ok(Heard::Nothing),
            Ok(None) => {
                return Err(Failure::new(ErrorKind::WsDropped, "connection ended without a close frame"));
            }
            Ok(Some(Err(err))) => return Err(Failure::new(ErrorKind::WsDropped, err.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let body = match &frame {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(bytes) => bytes.as_ref(),
            Message::Close(frame) => return closed(frame.as_ref()),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };
        let ours = body.starts_with(tag.as_bytes()) && body.get(tag.len()) == Some(&b'#');
        if !ours {
            continue;
        }
        return match expected {
            Some(expected) if body == expected.as_bytes() => Ok(Heard::Echo),
            _ => Err(Failure::new(
                ErrorKind::EchoMismatch,
                format!(
                    "expected {:?}, got {:?}",
                    expected.unwrap_or("nothing"),
                    String::from_utf8_lossy(&body[..body.len().min(80)])
                ),
            )),
        };
    }
}

/// A close frame: the game ended. An abnormal close code says the server failed.
fn closed(frame: Option<&CloseFrame>) -> Result<Heard, Failure> {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    match frame {
        Some(frame) if matches!(frame.code, CloseCode::Error | CloseCode::Abnormal | CloseCode::Policy) => {
            Err(Failure::new(
                ErrorKind::WsDropped,
                format!("server closed with {}: {}", frame.code, frame.reason),
            ))
        }
        _ => Ok(Heard::Closed),
    }
}

fn ended_while_sending(err: &tokio_tungstenite::tungstenite::Error, game_id: &str) -> Outcome {
    use tokio_tungstenite::tungstenite::Error;
    match err {
        Error::ConnectionClosed => Outcome::Succeeded,
        other => Outcome::Failed(Failure::new(ErrorKind::WsDropped, format!("game {game_id}: {other}"))),
    }
}

/// The URL to dial: the ticket's `server.url` (absolute `ws://`, `http://`, or a path on
/// the gateway) with the player's token appended.
pub fn game_url(server_url: &str, gateway_ws: &str, token: &str) -> String {
    let base = if let Some(rest) = server_url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = server_url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if server_url.starts_with('/') {
        format!("{gateway_ws}{server_url}")
    } else {
        server_url.to_owned()
    };
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}token={}", query_escape(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn game_urls_get_the_token() {
        assert_eq!(
            game_url("ws://127.0.0.1:8080/game/g1/connect", "ws://gw", "t0k"),
            "ws://127.0.0.1:8080/game/g1/connect?token=t0k"
        );
        assert_eq!(game_url("/game/g1/connect", "ws://gw:1", "t"), "ws://gw:1/game/g1/connect?token=t");
        assert_eq!(game_url("http://h/game/g?x=1", "ws://gw", "t"), "ws://h/game/g?x=1&token=t");
    }

    #[tokio::test]
    async fn echoes_are_matched_and_foreign_frames_ignored() {
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        let frames = |list: Vec<Message>| futures_util::stream::iter(list.into_iter().map(Ok));
        let mut stream = frames(vec![Message::text("server tick 1"), Message::text("p-1#2")]);
        assert!(matches!(listen(&mut stream, "p-1", Some("p-1#2"), deadline).await, Ok(Heard::Echo)));

        let mut stream = frames(vec![Message::binary(b"p-1#3".to_vec())]);
        let failure = listen(&mut stream, "p-1", Some("p-1#2"), deadline).await.err().expect("mismatch");
        assert_eq!(failure.kind, ErrorKind::EchoMismatch);

        let mut stream = frames(vec![Message::Close(None)]);
        assert!(matches!(listen(&mut stream, "p-1", Some("p-1#2"), deadline).await, Ok(Heard::Closed)));

        let mut stream = frames(vec![]);
        let failure = listen(&mut stream, "p-1", None, deadline).await.err().expect("dropped");
        assert_eq!(failure.kind, ErrorKind::WsDropped);

        // "p-10#1" belongs to another player whose id starts the same way.
        let mut stream = frames(vec![Message::text("p-10#1"), Message::text("p-1#1")]);
        assert!(matches!(listen(&mut stream, "p-1", Some("p-1#1"), deadline).await, Ok(Heard::Echo)));
    }
}

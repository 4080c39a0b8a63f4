//! What a node asks its game servers over HTTP: `/healthz` while one starts, and a warm
//! server's assignment endpoint ([`game_server::ASSIGN_PATH`]), authenticated by the
//! bootstrap token the node started it with. Every call is bounded in time; one request
//! per connection (`Connection: close`), answers read up to a small size.

use std::time::Duration;

use mm_shared::protocol::game_server::{self, Assignment, AssignmentStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long an assignment call may take (a local request to a server that is up).
pub const ASSIGN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `/healthz` may take.
const HEALTHZ_TIMEOUT: Duration = Duration::from_millis(500);
/// The most of an answer read (assignments are small).
const MAX_ANSWER: u64 = 64 * 1024;

/// `GET /healthz` on `address`: true on a 200, within half a second.
pub async fn healthz(address: &str) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
        stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: game\r\n\r\n").await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    matches!(tokio::time::timeout(HEALTHZ_TIMEOUT, probe).await, Ok(Some(true)))
}

/// One request; the status and body of the answer.
async fn request(address: &str, head: String, body: &[u8]) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream =
            tokio::net::TcpStream::connect(address).await.map_err(|err| format!("cannot connect: {err}"))?;
        stream.set_nodelay(true).map_err(|err| err.to_string())?;
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        stream.write_all(&request).await.map_err(|err| format!("sending: {err}"))?;
        let mut raw = Vec::new();
        stream.take(MAX_ANSWER).read_to_end(&mut raw).await.map_err(|err| format!("reading: {err}"))?;
        parse(&raw)
    };
    tokio::time::timeout(ASSIGN_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {}", mm_shared::duration::format(ASSIGN_TIMEOUT)))?
}

fn parse(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("an answer without its end of headers")?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or("an answer without a status line")?;
    Ok((status, body.to_owned()))
}

/// Hands the warm server at `address` its match: `POST /assign` with its bootstrap token.
pub async fn assign(address: &str, token: &str, assignment: &Assignment) -> Result<(), String> {
    let body = serde_json::to_vec(assignment).map_err(|err| format!("encoding the assignment: {err}"))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: game\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        game_server::ASSIGN_PATH,
        body.len()
    );
    match request(address, head, &body).await? {
        (200 | 204, _) => Ok(()),
        (status, body) => Err(format!("the game server refused its assignment ({status}): {}", body.trim())),
    }
}

/// Which match the server at `address` was handed (`None`: it is still warm).
pub async fn assignment(address: &str, token: &str) -> Result<Option<Assignment>, String> {
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: game\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
        game_server::ASSIGN_PATH
    );
    match request(address, head, &[]).await? {
        (200, body) => serde_json::from_str::<AssignmentStatus>(&body)
            .map(|status| status.assignment)
            .map_err(|err| format!("an assignment status that does not decode: {err}")),
        (status, body) => Err(format!("the game server answered {status}: {}", body.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_or_say_why_not() {
        assert_eq!(parse(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"), Ok((204, String::new())));
        assert_eq!(
            parse(b"HTTP/1.1 409 Conflict\r\n\r\n{\"error\":\"x\"}"),
            Ok((409, "{\"error\":\"x\"}".into()))
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse(b"garbage\r\n\r\n").is_err());
        assert!(parse(b"").is_err());
    }
}

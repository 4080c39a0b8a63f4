//! PURE: a game's result, read from its server's last output lines.
//!
//! A game server has no NATS credentials: when its game ends it writes the result as its
//! last line on stdout (`MM_GAME_RESULT {"gameId","matchId","teams","winner"}`, see
//! [`mm_shared::protocol::game_server::RESULT_PREFIX`]) and exits. Its runner reads the
//! server's last lines and, from a line that passes [`read`], publishes
//! [`GameEnded`] on `events.game.ended`.
//!
//! The server's text is not believed as such: the line must be short, well-formed JSON,
//! about this server's game and match, and name as teams exactly the two halves of the
//! player list the node started the server with. What is published is built from the
//! node's own entry; only the winner (0 or 1) comes from the server. Anything else is
//! ignored, with the reason (the matchmaker checks the teams against the match again).

use mm_shared::protocol::game_server::{MAX_RESULT_LINE_BYTES, RESULT_PREFIX};
use mm_shared::protocol::{GameEnded, ServerEntry};

/// Why a server's output gave no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoResult {
    #[error("its output has no result line")]
    Missing,
    #[error("its result line is longer than {MAX_RESULT_LINE_BYTES} bytes")]
    TooLong,
    #[error("its result line is not a result: {0}")]
    Malformed(String),
    #[error("its result is about game {game_id} of match {match_id}, not this server's")]
    OtherGame { game_id: String, match_id: String },
    #[error("its result's teams are not the two halves of the match's players")]
    WrongTeams,
    #[error("its winner {0} is not a team (0 or 1)")]
    BadWinner(usize),
    #[error("the match's {0} players are not two equal sides")]
    NoSides(usize),
}

/// The result in `logs` (a server's last output lines) for the server of `entry`.
pub fn read(logs: &str, entry: &ServerEntry) -> Result<GameEnded, NoResult> {
    // The last line with the prefix: the result is the server's last output, but its
    // stderr (logs) and stdout may interleave in what the driver kept.
    let line = logs
        .lines()
        .rev()
        .map(|line| line.trim_end_matches('\r'))
        .find(|line| line.starts_with(RESULT_PREFIX))
        .ok_or(NoResult::Missing)?;
    if line.len() > MAX_RESULT_LINE_BYTES {
        return Err(NoResult::TooLong);
    }
    let claimed: GameEnded = serde_json::from_str(&line[RESULT_PREFIX.len()..])
        .map_err(|err| NoResult::Malformed(err.to_string()))?;
    if claimed.game_id != entry.game_id || claimed.match_id != entry.match_id {
        return Err(NoResult::OtherGame { game_id: claimed.game_id, match_id: claimed.match_id });
    }
    let players = &entry.player_ids;
    if players.is_empty() || !players.len().is_multiple_of(2) {
        return Err(NoResult::NoSides(players.len()));
    }
    let (first, second) = players.split_at(players.len() / 2);
    if claimed.teams.len() != 2 || claimed.teams[0] != first || claimed.teams[1] != second {
        return Err(NoResult::WrongTeams);
    }
    if claimed.winner > 1 {
        return Err(NoResult::BadWinner(claimed.winner));
    }
    Ok(GameEnded {
        game_id: entry.game_id.clone(),
        match_id: entry.match_id.clone(),
        teams: vec![first.to_vec(), second.to_vec()],
        winner: claimed.winner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> ServerEntry {
        ServerEntry {
            game_id: "g-1".to_owned(),
            match_id: "m-1".to_owned(),
            player_ids: ["a", "b", "c", "d"].map(str::to_owned).to_vec(),
            ..ServerEntry::default()
        }
    }

    fn line(json: &str) -> String {
        format!("{RESULT_PREFIX}{json}")
    }

    const GOOD: &str = r#"{"gameId":"g-1","matchId":"m-1","teams":[["a","b"],["c","d"]],"winner":1}"#;

    #[test]
    fn the_last_result_line_among_the_logs_is_read() {
        let logs = format!("2026 INFO game ended\n{}\r\nINFO game-server stopped\n", line(GOOD));
        let result = read(&logs, &entry()).expect("a result");
        assert_eq!(result.winner, 1);
        assert_eq!(result.teams, vec![vec!["a".to_owned(), "b".to_owned()], vec!["c".into(), "d".into()]]);
        assert_eq!((result.game_id.as_str(), result.match_id.as_str()), ("g-1", "m-1"));
        let earlier = GOOD.replace(r#""winner":1"#, r#""winner":0"#);
        assert_eq!(read(&format!("{}\n{}", line(&earlier), line(GOOD)), &entry()).map(|r| r.winner), Ok(1));
    }

    #[test]
    fn garbage_and_forgeries_give_no_result() {
        let entry = entry();
        let no = |logs: String| read(&logs, &entry).expect_err("no result");
        assert_eq!(no(String::new()), NoResult::Missing);
        assert_eq!(no("INFO game ended\nthe winner is 0".into()), NoResult::Missing);
        assert_eq!(no(format!("  {}", line(GOOD))), NoResult::Missing, "the prefix starts the line");
        assert!(matches!(no(line("{not json")), NoResult::Malformed(_)));
        assert!(matches!(no(line(r#"{"gameId":"g-1"}"#)), NoResult::Malformed(_)));
        assert_eq!(no(line(&format!("{GOOD}{}", " ".repeat(MAX_RESULT_LINE_BYTES)))), NoResult::TooLong);
        assert!(matches!(no(line(&GOOD.replace("g-1", "g-2"))), NoResult::OtherGame { .. }));
        assert!(matches!(no(line(&GOOD.replace("m-1", "m-9"))), NoResult::OtherGame { .. }));
        let swapped = GOOD.replace(r#"[["a","b"],["c","d"]]"#, r#"[["c","d"],["a","b"]]"#);
        assert_eq!(no(line(&swapped)), NoResult::WrongTeams);
        let stranger = GOOD.replace(r#""d""#, r#""z""#);
        assert_eq!(no(line(&stranger)), NoResult::WrongTeams);
        let three = GOOD.replace(r#"["c","d"]]"#, r#"["c","d"],[]]"#);
        assert_eq!(no(line(&three)), NoResult::WrongTeams);
        assert_eq!(no(line(&GOOD.replace(r#""winner":1"#, r#""winner":2"#))), NoResult::BadWinner(2));
        assert!(matches!(no(line(&GOOD.replace(r#""winner":1"#, r#""winner":-1"#))), NoResult::Malformed(_)));
        let odd = ServerEntry { player_ids: vec!["a".into(), "b".into(), "c".into()], ..entry.clone() };
        assert_eq!(read(&line(GOOD), &odd), Err(NoResult::NoSides(3)));
    }
}

//! Who won: the game's result, decided from the players' true skills with some luck.
//!
//! A simulated player sends its hidden *true skill* with its game messages
//! (`p-1#3 {"trueSkill":1523.4}`, see the harness's `in_game` scenario). The server keeps
//! the last value each connected player sent, under the id it admitted the connection
//! as (so nobody can speak for another player), and at the end of the game plays the
//! first half of the match's player list against the second half (the matchmaker lists
//! the players side by side).
//!
//! **The decision** is a logistic win probability on the difference of the sides' mean
//! true skill, on the Elo scale: `P(first side wins) = 1 / (1 + 10^(-(a - b) / 400))`,
//! then one draw. Equal sides are a coin flip; a side 200 points stronger wins about
//! three games in four, so ratings learn the true order over a run without every game
//! going to the favourite. A player who sent no skill (never connected, or not a
//! simulated player) counts as the mean of those who did, so a no-show tilts nothing.
//!
//! The result is written as the server's last output line (see
//! [`mm_shared::protocol::game_server::RESULT_PREFIX`]); its node publishes it.

use std::collections::HashMap;

use mm_shared::protocol::GameEnded;
use mm_shared::protocol::game_server::RESULT_PREFIX;
use serde::Deserialize;

/// Rating points for a tenfold change in the odds (Elo's scale).
pub const LOGISTIC_SCALE: f64 = 400.0;
/// A true skill further from zero than this is not believed.
pub const MAX_TRUE_SKILL: f64 = 1_000_000.0;
/// Only this much of a message (after the tag) is looked at for a true skill.
const MAX_SKILL_JSON: usize = 128;
/// Players whose skill one game keeps at most (a server started by hand admits any id).
pub const MAX_TRACKED_PLAYERS: usize = 64;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SkillNote {
    true_skill: f64,
}

/// The true skill a game message carries, if it carries one: `<tag> {"trueSkill": x}`,
/// the JSON short, the number finite and within [`MAX_TRUE_SKILL`]. Anything else
/// (an ordinary echo, a binary blob, garbage) is `None`.
pub fn true_skill(message: &[u8]) -> Option<f64> {
    let space = message.iter().position(|&byte| byte == b' ')?;
    let json = &message[space + 1..];
    if json.len() > MAX_SKILL_JSON || json.first() != Some(&b'{') {
        return None;
    }
    let note: SkillNote = serde_json::from_slice(json).ok()?;
    (note.true_skill.is_finite() && note.true_skill.abs() <= MAX_TRUE_SKILL).then_some(note.true_skill)
}

/// The winner of a game between the two halves of `players`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// 0: the first half won; 1: the second.
    pub winner: usize,
    /// Each side's mean true skill (no-shows counted at the mean of those known).
    pub strength: [f64; 2],
    /// The first side's chance to win, before the draw.
    pub first_wins: f64,
}

/// The first side's chance to beat the second, from their mean true skills.
pub fn win_probability(first: f64, second: f64) -> f64 {
    1.0 / (1.0 + 10f64.powf((second - first) / LOGISTIC_SCALE))
}

/// Plays the first half of `players` against the second half. `None` when the list
/// cannot be two equal sides (empty, or odd).
pub fn decide(
    players: &[String],
    skills: &HashMap<String, f64>,
    rng: &mut fastrand::Rng,
) -> Option<Decision> {
    if players.is_empty() || !players.len().is_multiple_of(2) {
        return None;
    }
    let known: Vec<f64> = players.iter().filter_map(|player| skills.get(player).copied()).collect();
    let fallback = if known.is_empty() { 0.0 } else { known.iter().sum::<f64>() / known.len() as f64 };
    let (first, second) = players.split_at(players.len() / 2);
    let mean = |side: &[String]| {
        side.iter().map(|player| skills.get(player).copied().unwrap_or(fallback)).sum::<f64>()
            / side.len() as f64
    };
    let strength = [mean(first), mean(second)];
    let first_wins = win_probability(strength[0], strength[1]);
    let winner = usize::from(rng.f64() >= first_wins);
    Some(Decision { winner, strength, first_wins })
}

/// The result line: [`RESULT_PREFIX`] and the [`GameEnded`] as JSON, on one line.
pub fn line(game_id: &str, match_id: &str, players: &[String], winner: usize) -> String {
    let (first, second) = players.split_at(players.len() / 2);
    let result = GameEnded {
        game_id: game_id.to_owned(),
        match_id: match_id.to_owned(),
        teams: vec![first.to_vec(), second.to_vec()],
        winner,
    };
    // Serialising plain strings and numbers cannot fail; JSON escapes keep it one line.
    let json = serde_json::to_string(&result).unwrap_or_default();
    format!("{RESULT_PREFIX}{json}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn players(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("p{i}")).collect()
    }

    #[test]
    fn a_true_skill_is_read_only_from_a_short_well_formed_note() {
        assert_eq!(true_skill(br#"p-1#3 {"trueSkill":1523.4}"#), Some(1523.4));
        assert_eq!(true_skill(br#"p-1#4 {"trueSkill":-20}"#), Some(-20.0));
        for bad in [
            &b"p-1#3"[..],
            b"hello",
            b"p-1#3 ",
            br#"p-1#3 {"trueSkill":"high"}"#,
            br#"p-1#3 {"trueSkill":1e300}"#,
            br#"p-1#3 {"trueSkill":1500,"more":1}"#,
            br#"p-1#3 {"trueSkill":15"#,
            b"\xff\x00 {\xff",
        ] {
            assert_eq!(true_skill(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let long = format!(r#"p-1#3 {{"trueSkill":1500{}}}"#, " ".repeat(200));
        assert_eq!(true_skill(long.as_bytes()), None, "too long to be a note");
    }

    #[test]
    fn the_win_probability_is_logistic_on_the_skill_difference() {
        assert!((win_probability(1500.0, 1500.0) - 0.5).abs() < 1e-12);
        assert!((win_probability(1900.0, 1500.0) - 10.0 / 11.0).abs() < 1e-12, "400 points: 10 to 1");
        assert!((win_probability(1500.0, 1700.0) + win_probability(1700.0, 1500.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_stronger_side_wins_most_games_but_not_all() {
        let players = players(10);
        // First half 1700, second half 1500: P(first) = 1 / (1 + 10^-0.5) ≈ 0.76.
        let skills: HashMap<String, f64> = players
            .iter()
            .enumerate()
            .map(|(i, player)| (player.clone(), if i < 5 { 1700.0 } else { 1500.0 }))
            .collect();
        let mut rng = fastrand::Rng::with_seed(13);
        let games = 2_000u32;
        let mut first_won = 0u32;
        for _ in 0..games {
            let decision = decide(&players, &skills, &mut rng).expect("two sides");
            assert_eq!(decision.strength, [1700.0, 1500.0]);
            first_won += u32::from(decision.winner == 0);
        }
        let share = f64::from(first_won) / f64::from(games);
        assert!((0.72..0.80).contains(&share), "the strong side won {share:.3} of the games");
        // The same seed decides the same way.
        let again = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..20).map(|_| decide(&players, &skills, &mut rng).expect("sides").winner).collect::<Vec<_>>()
        };
        assert_eq!(again(5), again(5));
    }

    #[test]
    fn no_shows_count_at_the_mean_and_odd_lists_have_no_result() {
        let players = players(4);
        let skills = HashMap::from([("p0".to_owned(), 2000.0), ("p2".to_owned(), 1000.0)]);
        let mut rng = fastrand::Rng::with_seed(1);
        let decision = decide(&players, &skills, &mut rng).expect("sides");
        assert_eq!(decision.strength, [1750.0, 1250.0], "p1 and p3 count at the mean, 1500");
        let nobody = decide(&players, &HashMap::new(), &mut rng).expect("sides");
        assert_eq!((nobody.strength, nobody.first_wins), ([0.0, 0.0], 0.5), "a coin flip");
        assert_eq!(decide(&players[..3], &skills, &mut rng), None);
        assert_eq!(decide(&[], &skills, &mut rng), None);
    }

    #[test]
    fn the_line_is_the_prefix_and_the_result_as_json() {
        let line = line("g-1", "m-1", &players(4), 1);
        let json = line.strip_prefix(RESULT_PREFIX).expect("prefix");
        assert!(!line.contains('\n'));
        let parsed: GameEnded = serde_json::from_str(json).expect("a GameEnded");
        assert_eq!(
            parsed.teams,
            vec![vec!["p0".to_owned(), "p1".to_owned()], vec!["p2".into(), "p3".into()]]
        );
        assert_eq!((parsed.game_id.as_str(), parsed.match_id.as_str(), parsed.winner), ("g-1", "m-1", 1));
    }
}

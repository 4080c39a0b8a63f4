//! The environment a game server is started with: its `[game]` config as `MM_GAME__*`.
//!
//! The game server reads these through figment, which parses every `MM_*` value (`123`
//! becomes a number, `[a, b]` a list, `"..."` a string with escapes). So strings go in
//! double quotes and lists as lists of quoted strings, escaped to plain ASCII: figment's
//! escape handling slices by character index and would panic on a non-ASCII character
//! before an escape.

use std::fmt::Write;

use mm_shared::protocol::game_server::env;

use super::LaunchSpec;

/// `text` as a figment string literal: quoted, with `"`, `\`, control and non-ASCII
/// characters escaped (`\uXXXX`, or `\UXXXXXXXX` beyond the BMP).
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if u32::from(c) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => {
                let _ = write!(out, "\\U{:08X}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// A list of strings as a figment list literal: `["a","b"]`.
pub fn quoted_list(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|item| quoted(item)).collect();
    format!("[{}]", items.join(","))
}

/// The game server's environment for `spec`, listening on `listen`.
pub fn game_env(spec: &LaunchSpec, listen: &str) -> Vec<(&'static str, String)> {
    vec![
        (env::LISTEN, listen.to_owned()),
        (env::GAME_ID, quoted(&spec.game_id)),
        (env::MATCH_ID, quoted(&spec.match_id)),
        (env::ENDS_AT, spec.ends_at.to_string()),
        (env::SECRET, quoted(&spec.secret)),
        (env::PLAYERS, quoted_list(&spec.player_ids)),
        (env::WORKER_THREADS, spec.worker_threads.max(1).to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_to_ascii() {
        assert_eq!(quoted("p1"), "\"p1\"");
        assert_eq!(quoted("123"), "\"123\"");
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quoted("é\"x"), "\"\\u00E9\\\"x\"");
        assert_eq!(quoted("🎮\n"), "\"\\U0001F3AE\\u000A\"");
        assert_eq!(quoted_list(&["a,b".into(), "c".into()]), "[\"a,b\",\"c\"]");
        assert_eq!(quoted_list(&[]), "[]");
        assert!(quoted("žluť🎮\"\\").is_ascii());
    }
}

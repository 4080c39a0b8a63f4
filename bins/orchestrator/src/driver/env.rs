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

/// The inverse of [`quoted`]: the string a figment string literal of ours stands for.
pub fn unquote(literal: &str) -> Option<String> {
    let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            kind @ ('u' | 'U') => {
                let width = if kind == 'u' { 4 } else { 8 };
                let digits: String = chars.by_ref().take(width).collect();
                if digits.len() != width {
                    return None;
                }
                out.push(char::from_u32(u32::from_str_radix(&digits, 16).ok()?)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

/// The inverse of [`quoted_list`].
pub fn unquote_list(literal: &str) -> Option<Vec<String>> {
    let inner = literal.trim().strip_prefix('[')?.strip_suffix(']')?;
    let mut items = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        // One quoted item: up to the first `"` that no backslash escapes.
        let mut end = None;
        let mut escaped = false;
        for (at, c) in rest.char_indices().skip(1) {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(at);
                    break;
                }
                _ => {}
            }
        }
        let end = end?;
        items.push(unquote(&rest[..=end])?);
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').map_or(rest, str::trim_start);
    }
    Some(items)
}

/// What a game server's environment says of its game (to adopt a server whose KV entry
/// was lost): everything but its host port. A warm server's says only its warm id and
/// its bootstrap token.
pub fn recover(environment: &[String]) -> Option<super::Recovered> {
    let value = |key: &str| {
        environment
            .iter()
            .find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_owned()))
    };
    let game_id = unquote(&value(env::GAME_ID)?)?;
    if let Some(token) = value(env::BOOTSTRAP_TOKEN) {
        return Some(super::Recovered {
            game_id,
            match_id: String::new(),
            player_ids: Vec::new(),
            secret: String::new(),
            ends_at: 0,
            port: 0,
            bootstrap_token: unquote(&token)?,
        });
    }
    Some(super::Recovered {
        game_id,
        match_id: unquote(&value(env::MATCH_ID)?)?,
        player_ids: unquote_list(&value(env::PLAYERS)?)?,
        secret: unquote(&value(env::SECRET)?)?,
        ends_at: value(env::ENDS_AT)?.parse().ok()?,
        port: 0,
        bootstrap_token: String::new(),
    })
}

/// The game server's environment for `spec`, listening on `listen`. A warm server gets
/// its bootstrap token instead of a match.
pub fn game_env(spec: &LaunchSpec, listen: &str) -> Vec<(&'static str, String)> {
    let mut environment = vec![
        (env::LISTEN, listen.to_owned()),
        (env::GAME_ID, quoted(&spec.game_id)),
        (env::WORKER_THREADS, spec.worker_threads.max(1).to_string()),
        (env::JOIN_TIMEOUT, quoted(&mm_shared::duration::format(spec.join_timeout))),
    ];
    if spec.bootstrap_token.is_empty() {
        environment.extend([
            (env::MATCH_ID, quoted(&spec.match_id)),
            (env::ENDS_AT, spec.ends_at.to_string()),
            (env::SECRET, quoted(&spec.secret)),
            (env::PLAYERS, quoted_list(&spec.player_ids)),
        ]);
    } else {
        environment.push((env::BOOTSTRAP_TOKEN, quoted(&spec.bootstrap_token)));
    }
    environment
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

    #[test]
    fn unquoting_undoes_quoting() {
        for text in ["p1", "", "a\"b\\c", "é\"x", "🎮\n", "žluť🎮\"\\", "a,b", "[x]"] {
            assert_eq!(unquote(&quoted(text)).as_deref(), Some(text), "{text:?}");
        }
        let items: Vec<String> = ["a,b", "c\"d", "", "é"].into_iter().map(str::to_owned).collect();
        assert_eq!(unquote_list(&quoted_list(&items)), Some(items));
        assert_eq!(unquote_list("[]"), Some(Vec::new()));
        for bad in ["p1", "\"open", "\"bad\\q\"", "\"\\u12\""] {
            assert_eq!(unquote(bad), None, "{bad:?}");
        }
        assert_eq!(unquote_list("[\"a\" \"b"), None);
    }

    #[test]
    fn a_launch_spec_is_recovered_from_its_environment() {
        let spec = LaunchSpec {
            game_id: "g1".into(),
            match_id: "m-é".into(),
            node: "n".into(),
            player_ids: vec!["p1".into(), "p,2".into()],
            secret: "s3cret".into(),
            host_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            port: 20001,
            ends_at: 1234,
            cpu_millicores: 10,
            memory_mb: 32,
            worker_threads: 1,
            join_timeout: std::time::Duration::from_secs(15),
            bootstrap_token: String::new(),
        };
        let environment: Vec<String> = game_env(&spec, "0.0.0.0:7777")
            .into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let recovered = recover(&environment).expect("recovered");
        assert_eq!(
            (
                recovered.game_id.as_str(),
                recovered.match_id.as_str(),
                recovered.secret.as_str(),
                recovered.ends_at
            ),
            ("g1", "m-é", "s3cret", 1234)
        );
        assert_eq!(recovered.player_ids, spec.player_ids);
        let without_game_id: Vec<String> =
            environment.iter().filter(|pair| !pair.starts_with(env::GAME_ID)).cloned().collect();
        assert_eq!(recover(&without_game_id), None);

        // A warm server: its id and token, and no match in its environment at all.
        let warm = LaunchSpec {
            game_id: "w1".into(),
            match_id: String::new(),
            player_ids: Vec::new(),
            secret: String::new(),
            ends_at: 0,
            bootstrap_token: "boot\"strap".into(),
            ..spec
        };
        let environment: Vec<String> = game_env(&warm, "0.0.0.0:7777")
            .into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        for absent in [env::MATCH_ID, env::SECRET, env::PLAYERS, env::ENDS_AT] {
            assert!(!environment.iter().any(|pair| pair.starts_with(absent)), "{absent}: {environment:?}");
        }
        let recovered = recover(&environment).expect("recovered");
        assert_eq!((recovered.game_id.as_str(), recovered.bootstrap_token.as_str()), ("w1", "boot\"strap"));
        assert!(recovered.match_id.is_empty() && recovered.secret.is_empty());
    }
}

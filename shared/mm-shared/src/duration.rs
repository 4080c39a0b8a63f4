//! Durations in configuration files and on the command line: `500ms`, `2s`, `1.5m`, `1h`.
//!
//! A bare integer means milliseconds, so `MM_NATS__REQUEST_TIMEOUT=2000` works too.
//! Used through `#[serde(with = "mm_shared::duration")]` on `std::time::Duration` fields.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: expected a number with a unit (ms, s, m, h), like 500ms, 2s or 5m")]
pub struct ParseDurationError {
    input: String,
}

/// Parses `500ms`, `2s`, `1.5m`, `1h` or a bare number of milliseconds.
pub fn parse(input: &str) -> Result<Duration, ParseDurationError> {
    let err = || ParseDurationError { input: input.to_owned() };
    let text = input.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| err())?;
    let seconds_per_unit = match unit.trim() {
        "" | "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| err())
}

/// Formats a duration the way [`parse`] reads it back (`250ms`, `2s`, `1.5s`).
pub fn format(duration: Duration) -> String {
    let secs = duration.as_secs();
    let whole_seconds = duration.subsec_nanos() == 0;
    if duration < Duration::from_secs(1) || !duration.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", trim_float(duration.as_secs_f64() * 1000.0))
    } else if whole_seconds && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if whole_seconds && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{}s", trim_float(duration.as_secs_f64()))
    }
}

/// Whole milliseconds for a Redis expiry (`PX`, `PEXPIRE`) or a script argument: rounded
/// down, but never 0 (Redis refuses a zero expiry), and saturating at `u64::MAX`.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// serde `serialize_with` half: writes the human form.
pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*duration))
}

/// serde `deserialize_with` half: reads a string with a unit or an integer of milliseconds.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like 500ms, 2s or 5m, or an integer of milliseconds")
        }

        fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
            parse(value).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<Duration, E> {
            Ok(Duration::from_millis(value))
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<Duration, E> {
            u64::try_from(value)
                .map(Duration::from_millis)
                .map_err(|_| E::custom(format!("invalid duration {value}: must not be negative")))
        }
    }

    deserializer.deserialize_any(DurationVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1500"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse(" 3 s "), Ok(Duration::from_secs(3)));
    }

    #[test]
    fn rejects_nonsense_with_a_helpful_message() {
        for bad in ["", "abc", "5 parsecs", "-1s", "1..2s", "s"] {
            let err = parse(bad).expect_err(bad);
            assert!(err.to_string().contains("500ms, 2s"), "{err}");
        }
    }

    #[test]
    fn format_round_trips() {
        for millis in [1, 250, 999, 1000, 1500, 2000, 60_000, 90_000, 3_600_000, 7_200_000] {
            let duration = Duration::from_millis(millis);
            assert_eq!(parse(&format(duration)), Ok(duration), "{}", format(duration));
        }
        assert_eq!(format(Duration::from_secs(120)), "2m");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn millis_is_at_least_one_and_saturates() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_micros(2999)), 2);
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(10)), 1);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}

//! Scenario rates as people write them: executions per idle player per second (`0.01`),
//! or a count per duration (`"1/300s"`, `"2/5m"`, `"1/s"`).
//!
//! The harness keeps a count per duration as an exact fraction (its `Rate`); a
//! `harness.control` message carries plain numbers per second, and its stage plan also
//! takes the count-per-duration form ([`deserialize_map`]), so a `[[stages]]` file reads
//! the same as `[[harness.stages]]`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserializer;
use serde::de::{self, MapAccess, Visitor};

/// Splits a rate into a count and the period it is counted over: `"2/5m"` is (2, 5 min),
/// `"1/s"` is (1, 1 s), and a bare number is per second. `None` when it does not read as
/// a rate (bounds are the caller's: a negative count still splits).
pub fn split(text: &str) -> Option<(f64, Duration)> {
    let text = text.trim();
    match text.split_once('/') {
        Some((count, period)) => {
            let count: f64 = count.trim().parse().ok()?;
            let period = period.trim();
            if period.is_empty() {
                return None;
            }
            // `1/s` means one per second: a unit alone is one of it.
            let period = if period.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
                crate::duration::parse(period)
            } else {
                crate::duration::parse(&format!("1{period}"))
            }
            .ok()?;
            Some((count, period))
        }
        None => Some((text.parse().ok()?, Duration::from_secs(1))),
    }
}

/// A rate in executions per second, from either form. A zero period is refused; the
/// value's bounds are the caller's to check.
pub fn per_second(text: &str) -> Result<f64, String> {
    match split(text) {
        Some((count, period)) if !period.is_zero() => Ok(count / period.as_secs_f64()),
        _ => Err(format!(
            "invalid rate `{text}`: expected executions per idle player per second (0.01) or a count \
             per duration (\"1/300s\")"
        )),
    }
}

/// serde `deserialize_with` for a scenario → rate map whose values may be numbers (per
/// second) or count-per-duration strings; every value comes out per second.
pub fn deserialize_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, f64>, D::Error> {
    struct RatesVisitor;

    impl<'de> Visitor<'de> for RatesVisitor {
        type Value = BTreeMap<String, f64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of scenario names to rates (0.01, or \"1/300s\")")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut rates = BTreeMap::new();
            while let Some((name, PerSecond(rate))) = access.next_entry::<String, PerSecond>()? {
                rates.insert(name, rate);
            }
            Ok(rates)
        }
    }

    deserializer.deserialize_map(RatesVisitor)
}

/// One rate value in either form.
struct PerSecond(f64);

impl<'de> serde::Deserialize<'de> for PerSecond {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RateVisitor;

        impl Visitor<'_> for RateVisitor {
            type Value = PerSecond;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate: executions per idle player per second (0.01) or \"1/300s\"")
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<PerSecond, E> {
                Ok(PerSecond(value))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<PerSecond, E> {
                Ok(PerSecond(value as f64))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<PerSecond, E> {
                Ok(PerSecond(value as f64))
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<PerSecond, E> {
                per_second(value).map(PerSecond).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(RateVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_split() {
        assert_eq!(split("1/300s"), Some((1.0, Duration::from_secs(300))));
        assert_eq!(split(" 2 / 5m "), Some((2.0, Duration::from_secs(300))));
        assert_eq!(split("1/s"), Some((1.0, Duration::from_secs(1))));
        assert_eq!(split("0.25"), Some((0.25, Duration::from_secs(1))));
        assert_eq!(split("-1/5m"), Some((-1.0, Duration::from_secs(300))), "bounds are the caller's");
        for bad in ["", "often", "1/", "1/fortnight", "/5m"] {
            assert_eq!(split(bad), None, "{bad}");
        }
    }

    #[test]
    fn per_second_refuses_a_zero_period() {
        assert_eq!(per_second("3/1m"), Ok(0.05));
        assert_eq!(per_second("0.5"), Ok(0.5));
        let err = per_second("1/0s").expect_err("zero period");
        assert!(err.contains("1/300s"), "{err}");
    }

    #[test]
    fn a_map_takes_numbers_and_strings() {
        #[derive(serde::Deserialize)]
        struct Holder {
            #[serde(deserialize_with = "deserialize_map")]
            rates: BTreeMap<String, f64>,
        }
        let holder: Holder =
            serde_json::from_str(r#"{"rates": {"a": 0.5, "b": 2, "c": "1/4s"}}"#).expect("json");
        assert_eq!(holder.rates, BTreeMap::from([("a".into(), 0.5), ("b".into(), 2.0), ("c".into(), 0.25)]));
        let holder: Holder = toml::from_str("rates = { a = \"6/1m\", b = 1 }").expect("toml");
        assert_eq!(holder.rates, BTreeMap::from([("a".into(), 0.1), ("b".into(), 1.0)]));
        let err = serde_json::from_str::<Holder>(r#"{"rates": {"a": "often"}}"#).err().expect("refused");
        assert!(err.to_string().contains("invalid rate `often`"), "{err}");
        assert!(serde_json::from_str::<Holder>(r#"{"rates": {"a": true}}"#).is_err());
    }
}

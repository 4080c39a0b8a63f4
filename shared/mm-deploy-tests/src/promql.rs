//! Just enough PromQL for the checks: which of the project's metrics an expression names,
//! whether counters and histogram buckets are read through `rate`/`increase`, and the
//! expression with Grafana's variables filled in so Prometheus itself can parse it.

use std::collections::BTreeSet;

/// The suffixes Prometheus gives a histogram's series.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// Every identifier `mm_[a-z0-9_]+` in `expr`, as written (with any `_bucket`, `_sum`,
/// `_count` suffix). Loose on purpose: the project's metric names are the only things
/// spelled that way, and label names never start with `mm_`.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    identifiers(expr).into_iter().filter(|(name, _)| name.starts_with("mm_")).map(|(name, _)| name).collect()
}

/// Does a family list (name → type, from `# TYPE` lines) account for `name`? Either it is
/// a family, or it is a histogram family's `_bucket`/`_sum`/`_count` series.
pub fn is_exported(name: &str, families: &std::collections::BTreeMap<String, String>) -> bool {
    if families.contains_key(name) {
        return true;
    }
    HISTOGRAM_SUFFIXES.iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|base| families.get(base))
            .is_some_and(|kind| kind == "histogram" || kind == "summary")
    })
}

/// Counters (`*_total`) and histogram series (`*_bucket`, `*_count`, `*_sum`) only mean
/// something through `rate`, `irate` or `increase`; returns the names in `expr` read raw.
pub fn raw_counter_reads(expr: &str) -> Vec<String> {
    identifiers(expr)
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with("mm_")
                && (name.ends_with("_total") || HISTOGRAM_SUFFIXES.iter().any(|s| name.ends_with(s)))
        })
        .filter(|(_, start)| {
            let before = expr[..*start].trim_end();
            !["rate(", "irate(", "increase("].iter().any(|function| before.ends_with(function))
        })
        .map(|(name, _)| name)
        .collect()
}

/// `expr` with Grafana's variables replaced so Prometheus can run it: `$__rate_interval`
/// and `$__interval` become `rate_interval`, any other `$name` (`$instance`, `$node`)
/// becomes `.*`, which is what "All" selects.
pub fn for_prometheus(expr: &str, rate_interval: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let braced = after.starts_with('{');
        let name_start = usize::from(braced);
        let name_len = after[name_start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len() - name_start);
        let name = &after[name_start..name_start + name_len];
        let consumed =
            name_start + name_len + usize::from(braced && after[name_start + name_len..].starts_with('}'));
        out.push_str(match name {
            "__rate_interval" | "__interval" | "__range" => rate_interval,
            "" => "$",
            _ => ".*",
        });
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

/// One of the project's series an expression selects: its name and the label matchers
/// written after it that must hold exactly (`label="value"`; regular expressions and
/// negations are left out: they do not name a value that must exist).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selector {
    pub name: String,
    pub equal: Vec<(String, String)>,
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if !self.equal.is_empty() {
            let labels: Vec<String> = self.equal.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            write!(f, "{{{}}}", labels.join(", "))?;
        }
        Ok(())
    }
}

/// Every selector of the project's metrics (`mm_*`) in `expr`, with its equality matchers.
pub fn selectors(expr: &str) -> BTreeSet<Selector> {
    identifiers(expr)
        .into_iter()
        .filter(|(name, _)| name.starts_with("mm_"))
        .map(|(name, start)| {
            let after = expr[start + name.len()..].trim_start();
            let equal = after
                .strip_prefix('{')
                .and_then(|inside| inside.find('}').map(|end| &inside[..end]))
                .map(equality_matchers)
                .unwrap_or_default();
            Selector { name, equal }
        })
        .collect()
}

/// `a="x", b=~"y", c!="z"` → `[("a", "x")]`.
fn equality_matchers(inside: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = inside;
    while let Some(op) = rest.find('=') {
        let label = rest[..op].trim().trim_start_matches(',').trim().trim_end_matches('!').to_owned();
        let negated = rest[..op].trim_end().ends_with('!');
        let after = &rest[op + 1..];
        let regex = after.starts_with('~');
        let after = after.trim_start_matches('~').trim_start();
        let Some(quote) = after.chars().next().filter(|c| matches!(c, '"' | '\'' | '`')) else { break };
        let Some(end) = after[1..].find(quote) else { break };
        let value = &after[1..1 + end];
        if !negated && !regex && !value.contains('$') {
            out.push((label, value.to_owned()));
        }
        rest = &after[1 + end + 1..];
    }
    out
}

/// Identifiers (`[a-zA-Z_:][a-zA-Z0-9_:]*`) outside string literals, with their offsets.
fn identifiers(expr: &str) -> Vec<(String, usize)> {
    let bytes = expr.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            // Skip a string literal (label values such as "5.." are not names).
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            found.push((expr[start..i].to_owned(), start));
        } else {
            i += 1;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn finds_project_metric_names_only() {
        let expr = r#"histogram_quantile(0.99, sum by (le, route) (rate(mm_gateway_http_request_duration_seconds_bucket{service="gateway", route!="mm_not_a_name"}[$__rate_interval]))) / on() group_left up"#;
        let names: Vec<String> = metric_names(expr).into_iter().collect();
        assert_eq!(names, ["mm_gateway_http_request_duration_seconds_bucket"]);
    }

    #[test]
    fn histogram_series_count_as_their_family() {
        let families = BTreeMap::from([
            ("mm_a_seconds".to_owned(), "histogram".to_owned()),
            ("mm_b_total".to_owned(), "counter".to_owned()),
            ("mm_c".to_owned(), "gauge".to_owned()),
        ]);
        for name in ["mm_a_seconds", "mm_a_seconds_bucket", "mm_a_seconds_count", "mm_b_total", "mm_c"] {
            assert!(is_exported(name, &families), "{name}");
        }
        for name in ["mm_b_total_bucket", "mm_c_count", "mm_d", "mm_a"] {
            assert!(!is_exported(name, &families), "{name}");
        }
    }

    #[test]
    fn counters_must_be_rated() {
        assert!(raw_counter_reads("sum(rate(mm_x_total[5m])) / sum(increase(mm_y_count[1h]))").is_empty());
        assert!(raw_counter_reads("rate( mm_x_bucket[1m])").is_empty());
        assert_eq!(raw_counter_reads("sum(mm_x_total)"), ["mm_x_total"]);
        assert_eq!(raw_counter_reads("mm_h_sum / mm_h_count"), ["mm_h_sum", "mm_h_count"]);
        assert!(raw_counter_reads("sum(mm_players)").is_empty(), "gauges are read as they are");
    }

    #[test]
    fn selectors_keep_the_values_that_must_exist() {
        let expr = r#"sum(rate(mm_a_total{scenario="login", kind!="x", route=~"/a.*", instance=~"$instance"}[5m])) / mm_b"#;
        let found: Vec<String> = selectors(expr).iter().map(ToString::to_string).collect();
        assert_eq!(found, [r#"mm_a_total{scenario="login"}"#, "mm_b"]);
    }

    #[test]
    fn grafana_variables_become_promql() {
        assert_eq!(
            for_prometheus(
                r#"rate(mm_x_total{instance=~"$instance", node=~"${node}"}[$__rate_interval])"#,
                "30s"
            ),
            r#"rate(mm_x_total{instance=~".*", node=~".*"}[30s])"#
        );
        assert_eq!(for_prometheus("sum(mm_x) * 60", "30s"), "sum(mm_x) * 60");
    }
}

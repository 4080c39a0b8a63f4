//! The Prometheus text format, read just far enough: the families a page declares and the
//! values of its samples.

use std::collections::BTreeMap;
use std::time::Duration;

/// Family name → type (`counter`, `gauge`, `histogram`, ...), from the `# TYPE` lines.
pub fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut parts = rest.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// The sum of every sample of series `name` (any labels); 0 when there is none.
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok()))
        .sum()
}

/// One sample's series: its name and labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Series {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Every series a page has a sample of (label values unescaped only as far as the
/// project's values need: they hold no quotes).
pub fn series(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let name_end = line.find(['{', ' '])?;
            let name = line[..name_end].to_owned();
            let mut labels = BTreeMap::new();
            if line[name_end..].starts_with('{') {
                let inside = &line[name_end + 1..name_end + line[name_end..].find('}')?];
                for pair in inside.split("\",") {
                    let (key, value) = pair.split_once('=')?;
                    let value = value.trim_start_matches('"').trim_end_matches('"');
                    labels.insert(key.trim_start_matches(',').trim().to_owned(), value.to_owned());
                }
            }
            Some(Series { name, labels })
        })
        .collect()
}

/// `GET http://{addr}/metrics`, or a panic that says which service did not answer.
pub fn scrape(what: &str, addr: &str) -> String {
    let answer = mm_shared::probe::http_get(addr, "/metrics", Duration::from_secs(5))
        .unwrap_or_else(|err| panic!("{what} /metrics at {addr}: {err}"));
    assert_eq!(answer.status, 200, "{what} /metrics answered {}: {}", answer.status, answer.body);
    answer.body
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP mm_a_total As.\n# TYPE mm_a_total counter\nmm_a_total{x=\"1\"} 2\nmm_a_total{x=\"2\"} 3\n\
                        # TYPE mm_a_totally gauge\nmm_a_totally 100\n# TYPE mm_h_seconds histogram\nmm_h_seconds_count 4\n";

    #[test]
    fn reads_families_and_sums() {
        let families = families(PAGE);
        assert_eq!(families.get("mm_a_total").map(String::as_str), Some("counter"));
        assert_eq!(families.get("mm_h_seconds").map(String::as_str), Some("histogram"));
        assert_eq!(sum(PAGE, "mm_a_total"), 5.0);
        assert_eq!(sum(PAGE, "mm_h_seconds_count"), 4.0);
        assert_eq!(sum(PAGE, "mm_missing"), 0.0);
        let found = series(PAGE);
        assert_eq!(found.len(), 4);
        assert_eq!(found[1].labels.get("x").map(String::as_str), Some("2"));
        assert!(found[3].labels.is_empty());
    }
}

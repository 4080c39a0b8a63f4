//! The HTML report (`--report-html FILE.html`): one self-contained file that needs no
//! network to view. It holds the run report as JSON and the script that draws its charts
//! as SVG (`report_html/report.js`, hand-written, no library): players, scenario rates,
//! latency percentiles and time to match over time (from [`crate::timeline`]), the time
//! to match and time to play distributions, errors by kind, and per queue match quality
//! against wait.

use std::path::Path;

use crate::report::Report;

const TEMPLATE: &str = include_str!("report_html/report.html");
const SCRIPT: &str = include_str!("report_html/report.js");

/// The page for `report`.
pub fn render(report: &Report) -> String {
    let title = format!(
        "harness run {} — {:.0} s, {} players",
        report.instance, report.duration_seconds, report.players.peak
    );
    // Inside <script type="application/json"> only `</script` (or `<!--`) could end the
    // element early; JSON allows `<` only inside strings, where `\u003c` means the same.
    let data = serde_json::to_string(report)
        .unwrap_or_else(|_| "{}".to_owned())
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    fill(TEMPLATE, &[("__TITLE__", &escape(&title)), ("__SCRIPT__", SCRIPT), ("__DATA__", &data)])
}

/// Writes the page (to a temporary file first, so a reader never sees half of it).
pub fn write(report: &Report, path: &Path) -> std::io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, render(report))?;
    std::fs::rename(&temporary, path)
}

/// Replaces each marker of `template` with its value; inserted values are never searched.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some((at, marker, value)) = values
        .iter()
        .filter_map(|(marker, value)| rest.find(marker).map(|at| (at, *marker, *value)))
        .min_by_key(|(at, _, _)| *at)
    {
        out.push_str(&rest[..at]);
        out.push_str(value);
        rest = &rest[at + marker.len()..];
    }
    out.push_str(rest);
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained_and_holds_the_report() {
        let report = Report { instance: "</script><b>x</b>__DATA__".to_owned(), ..Report::default() };
        let page = render(&report);
        assert!(!page.contains("__SCRIPT__") && !page.contains("__TITLE__"));
        assert_eq!(page.matches("</script>").count(), 3, "the guard, the data and the charts");
        assert!(!page.contains("<b>x</b>"), "text is escaped");
        // The SVG namespace is a name, not an address the page loads.
        let without_namespace = page.replace("'http://www.w3.org/2000/svg'", "");
        for remote in ["src=", "href=", "http://", "https://", "@import", "url(", "fetch(", "XMLHttpRequest"]
        {
            assert!(!without_namespace.contains(remote), "no {remote}: the page needs no network");
        }
        let start = page.find("id=\"report-data\">").expect("data") + "id=\"report-data\">".len();
        let end = start + page[start..].find("</script>").expect("end");
        let back: Report = serde_json::from_str(&page[start..end]).expect("the data is the report");
        assert_eq!(back, report);
    }
}

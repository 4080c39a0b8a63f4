// Each test binary uses part of this module.
#![allow(dead_code)]

//! Opens an HTML report in headless Chromium (Debian's `chromium`, which `just setup`
//! installs) and reads back what its script drew: the DOM after the page's scripts ran
//! (`--dump-dom`) and the console (Chromium logs every console message to stderr).

use std::path::Path;
use std::process::Command;

/// One chart the page drew.
#[derive(Debug)]
pub struct Chart {
    pub name: String,
    pub series: u64,
    pub points: u64,
    /// Stage boundaries marked on it.
    pub stages: u64,
    /// Fleet plan stage boundaries marked on it.
    pub fleet_stages: u64,
}

/// What the page showed.
#[derive(Debug)]
pub struct Rendered {
    pub dom: String,
    pub charts: Vec<Chart>,
    /// Console messages, uncaught exceptions and `console.error` calls.
    pub console: Vec<String>,
}

impl Rendered {
    pub fn chart(&self, name: &str) -> Option<&Chart> {
        self.charts.iter().find(|chart| chart.name == name)
    }

    /// Panics unless `name` was drawn with at least one point.
    pub fn assert_drawn(&self, name: &str) {
        match self.chart(name) {
            Some(chart) if chart.points > 0 && chart.series > 0 => {}
            Some(chart) => panic!("chart {name} drew no data: {chart:?}\ncharts: {:?}", self.charts),
            None => panic!("no chart {name}; charts: {:?}", self.charts),
        }
    }
}

fn chromium() -> String {
    std::env::var("MM_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

/// Renders `page` (a file) in headless Chromium, without network, and returns the DOM.
pub fn render(page: &Path) -> Rendered {
    let profile = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", page.canonicalize().expect("page exists").display());
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // No name resolves: the page cannot reach anything but itself.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run `{}` ({err}): the HTML report test needs Debian's `chromium` \
                 (`just setup` installs it; MM_CHROMIUM names another binary)",
                chromium()
            )
        });
    let stderr = String::from_utf8_lossy(&output.stderr);
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "chromium failed ({}):\n{stderr}", output.status);
    assert!(dom.contains("<html"), "chromium printed no DOM:\n{stderr}");
    let mut console: Vec<String> =
        stderr.lines().filter(|line| line.contains(":CONSOLE")).map(str::to_owned).collect();
    if let Some(errors) = attribute(&dom, "<html", "data-errors") {
        console.push(format!("page errors: {errors}"));
    }
    Rendered { charts: charts(&dom), dom, console }
}

/// The value of `name` in the first tag that starts with `tag`.
fn attribute(dom: &str, tag: &str, name: &str) -> Option<String> {
    let start = dom.find(tag)?;
    let end = start + dom[start..].find('>')?;
    value(&dom[start..end], name)
}

fn value(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = start + tag[start..].find('"')?;
    Some(tag[start..end].to_owned())
}

/// The DOM without the text of its scripts (which may spell tags in comments).
fn without_scripts(dom: &str) -> String {
    let mut out = String::with_capacity(dom.len());
    let mut rest = dom;
    while let Some(start) = rest.find("<script") {
        out.push_str(&rest[..start]);
        rest = rest[start..].find("</script>").map_or("", |end| &rest[start + end + "</script>".len()..]);
    }
    out.push_str(rest);
    out
}

/// Every `<svg class="chart" ...>` with its data-chart, data-series and data-points.
fn charts(dom: &str) -> Vec<Chart> {
    let mut out = Vec::new();
    let dom = without_scripts(dom);
    let mut rest = dom.as_str();
    while let Some(start) = rest.find("<svg ") {
        let end = start + rest[start..].find('>').unwrap_or(rest.len() - start);
        let tag = &rest[start..end];
        if value(tag, "class").as_deref() == Some("chart") {
            let number = |name: &str| value(tag, name).and_then(|v| v.parse().ok()).unwrap_or(0);
            out.push(Chart {
                name: value(tag, "data-chart").unwrap_or_default(),
                series: number("data-series"),
                points: number("data-points"),
                stages: number("data-stages"),
                fleet_stages: number("data-fleet-stages"),
            });
        }
        rest = &rest[end..];
    }
    out
}

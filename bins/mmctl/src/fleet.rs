//! `mmctl fleet`: the harness fleet at a glance, and its live control.
//!
//! Reads the KV bucket `harness` (who is registered, with what target) and listens to
//! `harness.stats.*` for a moment (what each instance is doing), then prints one line per
//! instance and the fleet's merged numbers: scenario counts and rates, errors, and latency
//! percentiles merged from every instance's histogram (not averaged). With `--target`,
//! `--rate`, `--stages` or `--reset` it first publishes a `harness.control` message; a
//! plan from `--stages FILE.toml` (`[[stages]]` tables, like `[[harness.stages]]` with
//! players across the fleet) is stamped with this machine's clock as its start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind, RequestError, RequestErrorKind};
use futures_util::StreamExt;
use mm_shared::protocol::{
    HARNESS_SCENARIOS, HarnessControl, HarnessInstance, HarnessPlan, HarnessPlanStage, HarnessScenarioStats,
    HarnessStats, HistogramData, buckets, subjects,
};
use serde::{Deserialize, Serialize};

/// What to do besides showing the fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetArgs {
    pub nats: String,
    /// How long to collect stats.
    pub listen: Duration,
    pub target: Option<u64>,
    /// `name=value` pairs: executions per idle player per second.
    pub rates: Vec<String>,
    /// A TOML file of `[[stages]]`: the fleet's plan, starting now.
    pub stages: Option<PathBuf>,
    pub reset: bool,
    pub json: bool,
}

/// An instance that has not heartbeated for this long is shown as stale.
const STALE_AFTER: Duration = Duration::from_secs(10);
const NATS_TIMEOUT: Duration = Duration::from_secs(3);

/// The control message the flags ask for, if any.
pub fn control_from(args: &FleetArgs) -> anyhow::Result<Option<HarnessControl>> {
    let mut rates = BTreeMap::new();
    for pair in &args.rates {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("--rate {pair}: expected NAME=VALUE, like matchmaking=0.01"))?;
        let value: f64 =
            value
                .trim()
                .parse()
                .ok()
                .filter(|value: &f64| value.is_finite() && *value >= 0.0)
                .with_context(|| format!("--rate {pair}: the value must be a number of at least 0"))?;
        rates.insert(name.trim().to_owned(), value);
    }
    let stages = match &args.stages {
        Some(path) => Some(plan_from_file(path, mm_shared::protocol::now_ms())?),
        None => None,
    };
    let control = HarnessControl {
        fleet_target: args.target,
        rates: (!rates.is_empty()).then_some(rates),
        reset: args.reset,
        stages,
    };
    Ok((control != HarnessControl::default()).then_some(control))
}

/// What a `--stages` file holds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    stages: Vec<HarnessPlanStage>,
}

/// The plan in a `--stages` file, starting at `started_at_ms`.
fn plan_from_file(path: &Path, started_at_ms: u64) -> anyhow::Result<HarnessPlan> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--stages: reading {}", path.display()))?;
    plan_from_toml(&text, started_at_ms).with_context(|| format!("--stages {}", path.display()))
}

/// The plan in the text of a `--stages` file: `[[stages]]` tables with `duration`,
/// `players` (across the fleet) and optional `rates`, as in `[[harness.stages]]`.
fn plan_from_toml(text: &str, started_at_ms: u64) -> anyhow::Result<HarnessPlan> {
    let file: PlanFile = toml::from_str(text).map_err(|err| {
        anyhow::anyhow!(
            "expected [[stages]] tables with duration, players and optional rates \
             (like [[harness.stages]]): {err}"
        )
    })?;
    Ok(HarnessPlan { started_at_ms: Some(started_at_ms), stages: file.stages })
}

/// Where a plan is at `now_ms`, in words (`mmctl fleet`'s fleet line).
fn plan_state(plan: &HarnessPlan, now_ms: u64) -> String {
    let Some(started_at) = plan.started_at_ms else {
        return format!("fleet plan of {} stage(s)", plan.stages.len());
    };
    if now_ms < started_at {
        return format!("fleet plan starts in {:.1} s", (started_at - now_ms) as f64 / 1000.0);
    }
    let elapsed = Duration::from_millis(now_ms - started_at);
    let mut end = Duration::ZERO;
    let mut from = 0;
    for (index, stage) in plan.stages.iter().enumerate() {
        end = end.saturating_add(stage.duration);
        if elapsed < end {
            return format!(
                "fleet plan: stage {} of {}, {from} → {} players, started {:.1} s ago",
                index + 1,
                plan.stages.len(),
                stage.players,
                elapsed.as_secs_f64()
            );
        }
        from = stage.players;
    }
    format!("fleet plan over: holding {from} players")
}

/// Exit code of a control message the harness would refuse (nothing is sent).
const REFUSED: u8 = 2;

pub fn run(args: FleetArgs) -> anyhow::Result<ExitCode> {
    let control = control_from(&args)?;
    // Every harness instance refuses such a message whole: refuse it here instead of
    // printing "sent" for a change nobody applies.
    if let Some(Err(reason)) = control.as_ref().map(HarnessControl::check) {
        eprintln!("mmctl: error: not sending harness.control: {reason}");
        return Ok(ExitCode::from(REFUSED));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(show(args, control))
}

async fn show(args: FleetArgs, control: Option<HarnessControl>) -> anyhow::Result<ExitCode> {
    let nats = crate::credentials::connect(&args.nats, "mmctl", NATS_TIMEOUT).await?;
    let mut stats =
        nats.subscribe(subjects::HARNESS_STATS_ALL).await.context("subscribing to harness stats")?;
    if let Some(control) = &control {
        let payload = serde_json::to_vec(control)?;
        nats.publish(subjects::HARNESS_CONTROL, payload.into())
            .await
            .context("publishing harness.control")?;
        nats.flush().await.context("publishing harness.control")?;
        if !args.json {
            println!("sent {}: {}", subjects::HARNESS_CONTROL, serde_json::to_string(control)?);
        }
    }
    let mut latest: BTreeMap<String, HarnessStats> = BTreeMap::new();
    // The first message of each instance, to turn counters into per-second rates.
    let mut first: BTreeMap<String, HarnessStats> = BTreeMap::new();
    let listen = tokio::time::sleep(args.listen);
    tokio::pin!(listen);
    loop {
        tokio::select! {
            () = &mut listen => break,
            message = stats.next() => match message {
                Some(message) => {
                    if let Ok(snapshot) = serde_json::from_slice::<HarnessStats>(&message.payload) {
                        first.entry(snapshot.instance.clone()).or_insert_with(|| snapshot.clone());
                        latest.insert(snapshot.instance.clone(), snapshot);
                    }
                }
                None => break,
            },
        }
    }
    let (registered, control_state) = read_bucket(&nats).await?;
    let per_second = latest
        .iter()
        .map(|(id, last)| (id.clone(), first.get(id).map_or(0.0, |first| attempts_per_second(first, last))))
        .collect();
    let mut fleet = Fleet::new(registered, latest, control_state);
    fleet.per_second = per_second;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&fleet.summary())?);
    } else {
        print!("{}", fleet.table());
    }
    Ok(if fleet.live() > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Where the backend account reaches the harness account's JetStream: the `harness`
/// bucket lives there (`nats/nats-server.conf` imports its stream info and direct gets,
/// read-only, under this prefix).
pub const HARNESS_JS_PREFIX: &str = "JS.harness.API";

/// Every registered instance and the control state, from the `harness` bucket. A bucket
/// that does not exist yet is an empty fleet; any other failure to open it is an error.
///
/// The bucket is read with requests only (the keys from the stream's subject counts, each
/// value by a direct get), never with a consumer: that is all the backend account may do
/// across to the harness account. The harness account's JetStream comes first; a server
/// without accounts (a bare `nats-server -js`) has the bucket in its only one.
async fn read_bucket(nats: &async_nats::Client) -> anyhow::Result<(Vec<HarnessInstance>, HarnessControl)> {
    let stream_name = format!("KV_{}", buckets::HARNESS);
    for prefix in [HARNESS_JS_PREFIX, "$JS.API"] {
        let jetstream = async_nats::jetstream::with_prefix(nats.clone(), prefix);
        let stream = match tokio::time::timeout(NATS_TIMEOUT, jetstream.get_stream(&stream_name)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) if is_absent(&err) => continue,
            Ok(Err(err)) => bail!("opening the {} bucket: {err}", buckets::HARNESS),
            Err(_) => bail!("opening the {} bucket: no answer within {NATS_TIMEOUT:?}", buckets::HARNESS),
        };
        return read_values(&stream).await;
    }
    Ok((Vec::new(), HarnessControl::default()))
}

/// The live keys of the bucket's stream and their values.
async fn read_values(
    stream: &async_nats::jetstream::stream::Stream,
) -> anyhow::Result<(Vec<HarnessInstance>, HarnessControl)> {
    let prefix = format!("$KV.{}.", buckets::HARNESS);
    let mut subjects =
        match tokio::time::timeout(NATS_TIMEOUT, stream.info_with_subjects(format!("{prefix}>"))).await {
            Ok(Ok(subjects)) => subjects,
            Ok(Err(err)) => bail!("listing the harness bucket: {err}"),
            Err(_) => bail!("listing the harness bucket: no answer within {NATS_TIMEOUT:?}"),
        };
    let mut names = Vec::new();
    while let Ok(Some(Ok((subject, _count)))) = tokio::time::timeout(NATS_TIMEOUT, subjects.next()).await {
        if let Some(name) = subject.strip_prefix(&prefix) {
            names.push(name.to_owned());
        }
    }
    let mut instances = Vec::new();
    let mut control = HarnessControl::default();
    for name in names {
        let got =
            tokio::time::timeout(NATS_TIMEOUT, stream.direct_get_last_for_subject(format!("{prefix}{name}")));
        let Ok(Ok(message)) = got.await else { continue };
        // A deleted or purged key keeps a marker message with an empty value.
        let operation = message.headers.get("KV-Operation").map(|value| value.as_str().to_owned());
        if matches!(operation.as_deref(), Some("DEL" | "PURGE")) || message.payload.is_empty() {
            continue;
        }
        if name == buckets::HARNESS_CONTROL_KEY {
            control = serde_json::from_slice(&message.payload).unwrap_or_default();
        } else if let Ok(instance) = serde_json::from_slice::<HarnessInstance>(&message.payload) {
            instances.push(instance);
        }
    }
    Ok((instances, control))
}

/// Is the stream just not there (this JetStream has no such stream, or no JetStream
/// answers under this prefix)?
fn is_absent(err: &GetStreamError) -> bool {
    match err.kind() {
        GetStreamErrorKind::JetStream(inner) => inner.error_code() == ErrorCode::STREAM_NOT_FOUND,
        GetStreamErrorKind::Request => std::error::Error::source(err)
            .and_then(|source| source.downcast_ref::<RequestError>())
            .is_some_and(|source| source.kind() == RequestErrorKind::NoResponders),
        _ => false,
    }
}

/// Scenario attempts per second between two stats messages of one instance.
fn attempts_per_second(first: &HarnessStats, last: &HarnessStats) -> f64 {
    let attempts = |stats: &HarnessStats| stats.scenarios.values().map(|s| s.attempted).sum::<u64>();
    let millis = last.at.saturating_sub(first.at);
    if millis == 0 {
        0.0
    } else {
        attempts(last).saturating_sub(attempts(first)) as f64 * 1000.0 / millis as f64
    }
}

/// The fleet, merged.
struct Fleet {
    instances: Vec<HarnessInstance>,
    stats: BTreeMap<String, HarnessStats>,
    /// Scenario attempts per second per instance, over the listening time.
    per_second: BTreeMap<String, f64>,
    control: HarnessControl,
    now: u64,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Summary<'a> {
    instances: Vec<InstanceSummary<'a>>,
    control: &'a HarnessControl,
    players: u64,
    scenarios: BTreeMap<String, HarnessScenarioStats>,
    time_to_match_us: HistogramData,
    time_to_play_us: HistogramData,
    errors: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceSummary<'a> {
    #[serde(flatten)]
    entry: &'a HarnessInstance,
    stale: bool,
    stats: bool,
}

impl Fleet {
    fn new(
        mut instances: Vec<HarnessInstance>,
        stats: BTreeMap<String, HarnessStats>,
        control: HarnessControl,
    ) -> Self {
        instances.sort_by(|a, b| a.instance.cmp(&b.instance));
        Self { instances, stats, per_second: BTreeMap::new(), control, now: mm_shared::protocol::now_ms() }
    }

    fn is_stale(&self, instance: &HarnessInstance) -> bool {
        self.now.saturating_sub(instance.heartbeat_at) > STALE_AFTER.as_millis() as u64
    }

    fn live(&self) -> usize {
        self.instances.iter().filter(|instance| !self.is_stale(instance)).count()
    }

    /// Stats of live instances, merged: counters and rates added, histograms merged.
    fn merged(&self) -> HarnessStats {
        let mut total = HarnessStats::default();
        for instance in self.instances.iter().filter(|instance| !self.is_stale(instance)) {
            let Some(stats) = self.stats.get(&instance.instance) else { continue };
            total.players.alive += stats.players.alive;
            total.players.idle += stats.players.idle;
            total.players.busy += stats.players.busy;
            total.players.logging_in += stats.players.logging_in;
            total.target += stats.target;
            for (name, s) in &stats.scenarios {
                let sum = total.scenarios.entry(name.clone()).or_default();
                sum.attempted += s.attempted;
                sum.succeeded += s.succeeded;
                sum.failed += s.failed;
                sum.rejected += s.rejected;
                sum.cut += s.cut;
                sum.starved += s.starved;
                // Per-player rates are the same on every instance under one control; keep the largest.
                sum.rate = sum.rate.max(s.rate);
                sum.desired_per_second += s.desired_per_second;
                sum.actual_per_second += s.actual_per_second;
                sum.latency_us.merge(&s.latency_us);
            }
            total.time_to_match_us.merge(&stats.time_to_match_us);
            total.time_to_play_us.merge(&stats.time_to_play_us);
            for (kind, count) in &stats.errors {
                *total.errors.entry(kind.clone()).or_default() += count;
            }
        }
        total
    }

    fn summary(&self) -> Summary<'_> {
        let merged = self.merged();
        Summary {
            instances: self
                .instances
                .iter()
                .map(|entry| InstanceSummary {
                    entry,
                    stale: self.is_stale(entry),
                    stats: self.stats.contains_key(&entry.instance),
                })
                .collect(),
            control: &self.control,
            players: merged.players.alive,
            scenarios: merged.scenarios,
            time_to_match_us: merged.time_to_match_us,
            time_to_play_us: merged.time_to_play_us,
            errors: merged.errors,
        }
    }

    fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if self.instances.is_empty() {
            let _ = writeln!(out, "no harness instance is registered in the `{}` bucket", buckets::HARNESS);
            return out;
        }
        let merged = self.merged();
        let _ = writeln!(
            out,
            "fleet: {} live instance(s), {} players alive, target {}{}",
            self.live(),
            merged.players.alive,
            merged.target,
            match (&self.control.stages, self.control.fleet_target) {
                (Some(plan), _) => format!(" ({})", plan_state(plan, self.now)),
                (None, Some(target)) => format!(" (fleet target {target})"),
                (None, None) => " (each instance's own --players)".to_owned(),
            }
        );
        if let Some(rates) = &self.control.rates {
            let rates: Vec<String> = rates.iter().map(|(name, rate)| format!("{name}={rate}")).collect();
            let _ = writeln!(out, "control rates: {}", rates.join(", "));
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<28} {:<16} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8}  heartbeat",
            "instance", "host", "players", "target", "idle", "busy", "scen/s", "errors"
        );
        for instance in &self.instances {
            let age = self.now.saturating_sub(instance.heartbeat_at) as f64 / 1000.0;
            let heartbeat = if self.is_stale(instance) {
                format!("{age:.0}s ago (stale)")
            } else {
                format!("{age:.1}s ago")
            };
            match self.stats.get(&instance.instance) {
                Some(stats) => {
                    let per_second = self.per_second.get(&instance.instance).copied().unwrap_or(0.0);
                    let _ = writeln!(
                        out,
                        "{:<28} {:<16} {:>8} {:>8} {:>8} {:>7} {:>8.1} {:>7.2}%  {heartbeat}",
                        instance.instance,
                        instance.host,
                        stats.players.alive,
                        stats.target,
                        stats.players.idle,
                        stats.players.busy,
                        per_second,
                        error_rate(stats.scenarios.values()) * 100.0
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "{:<28} {:<16} {:>8} {:>8} {:>8} {:>7} {:>8} {:>8}  {heartbeat} (no stats heard)",
                        instance.instance,
                        instance.host,
                        instance.players,
                        instance.target,
                        "-",
                        "-",
                        "-",
                        "-"
                    );
                }
            }
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<15} {:>11} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9}",
            "scenario",
            "rate/player",
            "desired/s",
            "actual/s",
            "attempted",
            "succeeded",
            "rejected",
            "failed",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms"
        );
        let ordered = HARNESS_SCENARIOS
            .iter()
            .filter_map(|name| merged.scenarios.get_key_value(*name))
            .chain(merged.scenarios.iter().filter(|(name, _)| !HARNESS_SCENARIOS.contains(&name.as_str())));
        for (name, s) in ordered {
            let _ = writeln!(
                out,
                "{:<15} {:>11.6} {:>9.2} {:>9.2} {:>9} {:>9} {:>8} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                name,
                s.rate,
                s.desired_per_second,
                s.actual_per_second,
                s.attempted,
                s.succeeded,
                s.rejected,
                s.failed,
                ms(s.latency_us.value_at_quantile(0.5)),
                ms(s.latency_us.value_at_quantile(0.9)),
                ms(s.latency_us.value_at_quantile(0.99)),
                ms(s.latency_us.max())
            );
        }
        let _ = writeln!(out);
        for (label, histogram) in
            [("time to match", &merged.time_to_match_us), ("time to play", &merged.time_to_play_us)]
        {
            let _ = writeln!(
                out,
                "{label:<15} p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  ({} samples)",
                ms(histogram.value_at_quantile(0.5)),
                ms(histogram.value_at_quantile(0.9)),
                ms(histogram.value_at_quantile(0.99)),
                ms(histogram.max()),
                histogram.count()
            );
        }
        let errors = if merged.errors.is_empty() {
            "none".to_owned()
        } else {
            merged.errors.iter().map(|(kind, count)| format!("{kind} {count}")).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(
            out,
            "{:<15} {:.2}% ({errors})",
            "error rate",
            error_rate(merged.scenarios.values()) * 100.0
        );
        out
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn error_rate<'a>(scenarios: impl Iterator<Item = &'a HarnessScenarioStats>) -> f64 {
    let (failed, finished) =
        scenarios.fold((0u64, 0u64), |(f, n), s| (f + s.failed, n + s.failed + s.succeeded + s.rejected));
    if finished == 0 { 0.0 } else { failed as f64 / finished as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, heartbeat_at: u64) -> HarnessInstance {
        HarnessInstance {
            instance: id.into(),
            host: "box".into(),
            pid: 1,
            version: "0".into(),
            gateway: "http://g".into(),
            started_at: 0,
            heartbeat_at,
            target: 5,
            players: 5,
        }
    }

    fn stats(id: &str, latency: Vec<(u64, u64)>) -> HarnessStats {
        let mut stats = HarnessStats { instance: id.into(), target: 5, ..HarnessStats::default() };
        stats.players.alive = 5;
        stats.scenarios.insert(
            "fetch_store".into(),
            HarnessScenarioStats {
                attempted: 10,
                succeeded: 9,
                failed: 1,
                actual_per_second: 2.0,
                latency_us: HistogramData(latency),
                ..HarnessScenarioStats::default()
            },
        );
        stats
    }

    #[test]
    fn instances_merge_into_fleet_numbers() {
        let now = mm_shared::protocol::now_ms();
        let stats = BTreeMap::from([
            ("a".to_owned(), stats("a", vec![(1000, 9)])),
            ("b".to_owned(), stats("b", vec![(1000, 1), (50_000, 8)])),
            ("dead".to_owned(), stats("dead", vec![(9_000_000, 100)])),
        ]);
        let fleet = Fleet::new(
            vec![instance("b", now), instance("a", now), instance("dead", now - 60_000)],
            stats,
            HarnessControl { fleet_target: Some(10), ..HarnessControl::default() },
        );
        assert_eq!(fleet.live(), 2);
        let merged = fleet.merged();
        assert_eq!(merged.players.alive, 10, "the stale instance is left out");
        let fetch = &merged.scenarios["fetch_store"];
        assert_eq!((fetch.attempted, fetch.failed, fetch.actual_per_second), (20, 2, 4.0));
        assert_eq!(fetch.latency_us.value_at_quantile(0.5), 1000, "10 of 18 values are 1 ms");
        assert_eq!(fetch.latency_us.max(), 50_000);
        let table = fleet.table();
        assert!(
            table.contains("2 live instance(s), 10 players alive, target 10 (fleet target 10)"),
            "{table}"
        );
        assert!(table.contains("(stale)"), "{table}");
    }

    #[test]
    fn control_flags_become_one_message() {
        let args = FleetArgs {
            target: Some(50_000),
            rates: vec!["matchmaking=0.01".into(), "logout = 0".into()],
            ..FleetArgs::default()
        };
        let control = control_from(&args).expect("valid").expect("something to send");
        assert_eq!(
            serde_json::to_value(&control).expect("json"),
            serde_json::json!({"fleetTarget": 50000, "rates": {"matchmaking": 0.01, "logout": 0.0}})
        );
        assert!(control_from(&FleetArgs::default()).expect("valid").is_none());
        let bad = FleetArgs { rates: vec!["matchmaking=-1".into()], ..FleetArgs::default() };
        assert!(control_from(&bad).is_err());
    }

    #[test]
    fn a_stages_file_becomes_a_plan_starting_now() {
        let text = "[[stages]]\nduration = \"2m\"\nplayers = 500\n\
                    [[stages]]\nduration = \"30s\"\nplayers = 2000\nrates = { matchmaking = \"1/60s\", logout = 0 }\n";
        let plan = plan_from_toml(text, 1_700_000_000_000).expect("a plan");
        let control = HarnessControl { stages: Some(plan.clone()), ..HarnessControl::default() };
        assert!(control.check().is_ok());
        let json = serde_json::to_value(&control).expect("json");
        assert_eq!(json["stages"]["startedAtMs"], 1_700_000_000_000u64);
        assert_eq!(json["stages"]["stages"][0], serde_json::json!({"duration": "2m", "players": 500}));
        assert_eq!(json["stages"]["stages"][1]["rates"]["logout"], 0.0);
        let per_minute = json["stages"]["stages"][1]["rates"]["matchmaking"].as_f64().expect("rate");
        assert!((per_minute - 1.0 / 60.0).abs() < 1e-12, "{per_minute}");

        for (bad, expected) in [
            ("", "missing field `stages`"),
            ("[[harness.stages]]\nduration = \"1s\"\nplayers = 1\n", "unknown field `harness`"),
            ("[[stages]]\nduration = \"1s\"\n", "missing field `players`"),
            ("[[stages]]\nduration = \"soon\"\nplayers = 1\n", "invalid duration `soon`"),
            ("[[stages]]\nduration = \"1s\"\nplayers = 1\nrate = 2\n", "unknown field `rate`"),
        ] {
            let err = format!("{:#}", plan_from_toml(bad, 0).expect_err(bad));
            assert!(err.contains(expected) && err.contains("[[stages]]"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_fleet_line_says_where_the_plan_is() {
        let plan = plan_from_toml(
            "[[stages]]\nduration = \"2s\"\nplayers = 6\n[[stages]]\nduration = \"3s\"\nplayers = 10\n",
            10_000,
        )
        .expect("a plan");
        assert_eq!(plan_state(&plan, 9_000), "fleet plan starts in 1.0 s");
        assert_eq!(plan_state(&plan, 11_000), "fleet plan: stage 1 of 2, 0 → 6 players, started 1.0 s ago");
        assert_eq!(plan_state(&plan, 13_500), "fleet plan: stage 2 of 2, 6 → 10 players, started 3.5 s ago");
        assert_eq!(plan_state(&plan, 16_000), "fleet plan over: holding 10 players");
        let now = mm_shared::protocol::now_ms();
        let fleet = Fleet::new(
            vec![instance("a", now)],
            BTreeMap::from([("a".to_owned(), stats("a", vec![]))]),
            HarnessControl { fleet_target: Some(99), stages: Some(plan), ..HarnessControl::default() },
        );
        let table = fleet.table();
        assert!(table.contains("target 5 (fleet plan over: holding 10 players)"), "the plan wins: {table}");
    }
}

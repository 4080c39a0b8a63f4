//! Logs, metrics and health: how every service tells what it is doing.
//!
//! - [`init_logging`]: `tracing` to stderr, human by default, JSON by flag or config.
//! - [`install_metrics`]: the process-wide Prometheus recorder with explicit histogram
//!   buckets (see [`buckets`]) and a `service` label on every series.
//! - [`process`]: CPU, memory, threads, fds and tokio task counts, read at scrape time.
//! - [`admin`]: the `/metrics` and `/healthz` router every service serves.

pub mod admin;
pub mod buckets;
pub mod process;

use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// `log.filter` (or `RUST_LOG`) is not a valid `tracing` filter.
    #[error("config key `log.filter`: invalid filter `{filter}`: {reason}")]
    BadFilter { filter: String, reason: String },
    /// The Prometheus recorder rejected its settings.
    #[error("metrics recorder: {0}")]
    Recorder(String),
}

/// Sends `tracing` events to stderr. `force_json` is the `--log-json` flag.
///
/// `RUST_LOG`, when set, replaces `log.filter`. Calling it twice (tests) is harmless.
pub fn init_logging(config: &LogConfig, force_json: bool) -> Result<(), TelemetryError> {
    let (filter_text, filter) = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => {
            let filter = EnvFilter::try_new(&text);
            (text, filter)
        }
        _ => (config.filter.clone(), EnvFilter::try_new(&config.filter)),
    };
    let filter =
        filter.map_err(|err| TelemetryError::BadFilter { filter: filter_text, reason: err.to_string() })?;
    let json = force_json || config.format == LogFormat::Json;
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).try_init()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        registry
            .with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init()
    };
    // A second init in the same process (tests) keeps the first subscriber.
    drop(result);
    Ok(())
}

static RECORDER: Mutex<Option<PrometheusHandle>> = Mutex::new(None);

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
///
/// Every series carries `service="<service>"`; histograms get the buckets from [`buckets`].
pub fn install_metrics(service: &str) -> Result<PrometheusHandle, TelemetryError> {
    let mut slot = RECORDER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let recorder_error =
        |err: metrics_exporter_prometheus::BuildError| TelemetryError::Recorder(err.to_string());
    let mut builder = PrometheusBuilder::new()
        .set_buckets(buckets::LATENCY)
        .map_err(recorder_error)?
        .add_global_label("service", service);
    for (name, values) in buckets::BY_METRIC {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), values)
            .map_err(recorder_error)?;
    }
    let handle = builder.install_recorder().map_err(recorder_error)?;
    metrics::describe_gauge!("mm_build_info", "Always 1; labels say which build is running.");
    metrics::gauge!("mm_build_info", "version" => crate::VERSION).set(1.0);
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Drains the recorder's histogram buffers every few seconds so memory stays flat
/// even when nothing scrapes `/metrics`.
pub fn spawn_upkeep(handle: PrometheusHandle, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                () = shutdown.cancelled() => break,
            }
        }
    });
}

/// Holds a gauge one higher while alive (requests in flight, open sockets). The decrement
/// is in `Drop`, so it happens however the holder ends: returned, failed, or dropped as a
/// cancelled future or an aborted task.
pub struct GaugeGuard(metrics::Gauge);

impl GaugeGuard {
    pub fn new(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

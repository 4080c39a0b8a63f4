//! The admin surface every service serves: `GET /metrics` and `GET /healthz`.
//!
//! `/healthz` runs the service's registered checks (is NATS connected, does Redis answer)
//! with a deadline each, and answers `200` when all pass, `503` when any fails, with a
//! JSON body that says which and why.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::future::join_all;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};

use super::process::ProcessStats;

/// How long one health check may take before it counts as failed.
const CHECK_DEADLINE: Duration = Duration::from_secs(1);

type CheckFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The service's health: its name, when it started, and named checks.
///
/// Cheap to clone; components add their checks as they come up.
#[derive(Clone)]
pub struct Health {
    service: Arc<str>,
    started: Instant,
    checks: Arc<RwLock<Vec<(String, CheckFn)>>>,
}

/// What `/healthz` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthReport {
    pub service: String,
    pub version: String,
    /// `ok` or `failing`.
    pub status: String,
    pub uptime_seconds: u64,
    pub checks: BTreeMap<String, CheckReport>,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckReport {
    pub ok: bool,
    pub detail: String,
}

impl Health {
    /// A health registry for `service` with no checks yet (healthy while it has none).
    pub fn new(service: &str) -> Self {
        Self { service: Arc::from(service), started: Instant::now(), checks: Arc::default() }
    }

    /// Adds a check: `Ok(detail)` is healthy, `Err(reason)` is not.
    pub fn add_check<F, Fut>(&self, name: &str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        self.checks.write().unwrap_or_else(|poisoned| poisoned.into_inner()).push((name.to_owned(), check));
    }

    /// Runs every check concurrently, each within [`CHECK_DEADLINE`].
    pub async fn report(&self) -> HealthReport {
        let checks: Vec<(String, CheckFn)> =
            self.checks.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let outcomes = join_all(checks.into_iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(CHECK_DEADLINE, check()).await {
                Ok(Ok(detail)) => CheckReport { ok: true, detail },
                Ok(Err(reason)) => CheckReport { ok: false, detail: reason },
                Err(_) => CheckReport {
                    ok: false,
                    detail: format!("no answer within {}", crate::duration::format(CHECK_DEADLINE)),
                },
            };
            (name, outcome)
        }))
        .await;
        let checks: BTreeMap<String, CheckReport> = outcomes.into_iter().collect();
        let ok = checks.values().all(|check| check.ok);
        HealthReport {
            service: self.service.to_string(),
            version: crate::VERSION.to_owned(),
            status: if ok { "ok" } else { "failing" }.to_owned(),
            uptime_seconds: self.started.elapsed().as_secs(),
            checks,
        }
    }

    /// The service name given to [`Health::new`].
    pub fn service(&self) -> &str {
        &self.service
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: PrometheusHandle,
    health: Health,
}

/// `GET /metrics` and `GET /healthz`, to serve alone or merge into a service's router.
pub fn router(metrics: PrometheusHandle, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(render_health))
        .with_state(AdminState { metrics, health })
}

async fn render_metrics(State(state): State<AdminState>) -> Response {
    let mut body = state.metrics.render();
    ProcessStats::read().render(state.health.service(), &mut body);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

async fn render_health(State(state): State<AdminState>) -> Response {
    let report = state.health.report().await;
    let status = if report.status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(report)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failing_or_slow_checks_make_the_report_fail() {
        let health = Health::new("test");
        assert_eq!(health.report().await.status, "ok", "no checks means healthy");

        health.add_check("fine", || async { Ok("connected".to_owned()) });
        let report = health.report().await;
        assert_eq!(report.status, "ok");
        assert_eq!(report.checks["fine"].detail, "connected");

        health.add_check("slow", || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(String::new())
        });
        health.add_check("broken", || async { Err("connection refused".to_owned()) });
        let started = Instant::now();
        let report = health.report().await;
        assert!(started.elapsed() < Duration::from_secs(5), "checks run with a deadline");
        assert_eq!(report.status, "failing");
        assert!(report.checks["fine"].ok);
        assert!(!report.checks["slow"].ok);
        assert!(report.checks["slow"].detail.starts_with("no answer within"));
        assert_eq!(report.checks["broken"].detail, "connection refused");
    }
}

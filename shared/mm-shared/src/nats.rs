//! NATS: connecting, calling services, and serving micro-service endpoints.
//!
//! - [`connect`] retries the first connection until the server answers (services may
//!   start before NATS does) and then reconnects forever; every connection event is
//!   logged and counted in `mm_nats_connection_events_total{event}`.
//! - [`request_json`] is one JSON request/reply with a deadline and a typed error:
//!   timeout, no responders, or the service's own error code.
//! - [`serve_endpoint`] turns a micro-service endpoint into typed handler calls, answering
//!   bad input (empty, not JSON, oversized) with a 4xx micro error and never panicking.
//!
//! ## Budgets, not clocks
//!
//! Every request carries its *relative* time budget in the [`BUDGET_HEADER`] header
//! (whole milliseconds): the caller's own timeout, or less when the caller is itself
//! working within a budget ([`request_json_with_budget`]). The serving side turns it into
//! a deadline on *its own* clock when the request arrives ([`Budget`]); no wall-clock
//! time is ever compared across hosts. A request whose budget runs out before a handler
//! could start on it (it waited for a free slot) is answered `504` unworked and counted
//! in `mm_nats_service_budget_expired_total{endpoint}`: its caller has given up already.
//! Handlers that want the deadline use [`serve_endpoint_with_budget`].
//!
//! Only real requests are answered: a message without a reply subject, or one that a
//! JetStream push consumer delivered (reply `$JS.ACK...`), is dropped and counted in
//! `mm_nats_service_ignored_total{endpoint}`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::service::endpoint::Endpoint;
use async_nats::service::{self, NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, RequestErrorKind};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::NatsConfig;

/// Largest request body a service endpoint accepts; larger ones get a 413.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How long [`serve_endpoint`] waits for in-flight handlers after shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The request header that carries the caller's remaining time budget, in whole
/// milliseconds (see the module doc).
pub const BUDGET_HEADER: &str = "Mm-Budget-Ms";

/// Requests an endpoint holds waiting for a free handler slot, beyond its concurrency;
/// past that it answers 503 at once rather than queue without bound.
const MAX_WAITING: usize = 8192;

/// How often a client pings its server (see [`options`]).
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Why [`connect`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Shutdown was requested before NATS answered.
    #[error("shut down while waiting for NATS at {url}")]
    Cancelled { url: String },
    /// A mistake retrying cannot fix: a malformed URL or refused credentials.
    #[error("cannot connect to NATS at {url} (config key `nats.url`/`nats.user`): {reason}")]
    Fatal { url: String, reason: String },
}

/// Connects to NATS, retrying the first connection with backoff until it succeeds or
/// `shutdown` fires; afterwards the client reconnects on its own, without limit.
pub async fn connect(
    config: &NatsConfig,
    client_name: &str,
    shutdown: &CancellationToken,
) -> Result<Client, ConnectError> {
    describe_metrics();
    // The same pacing for every service: 100 ms doubling to 2 s, with jitter.
    let backoff = crate::retry::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let servers = server_addrs(&config.url)
        .map_err(|reason| ConnectError::Fatal { url: config.url.clone(), reason })?;
    let mut attempt = 1u32;
    loop {
        let pause = backoff.delay(attempt);
        match options(config, client_name).connect(servers.clone()).await {
            Ok(client) => {
                tracing::info!(url = %config.url, "connected to NATS");
                return Ok(client);
            }
            Err(err)
                if matches!(
                    err.kind(),
                    ConnectErrorKind::ServerParse | ConnectErrorKind::AuthorizationViolation
                ) =>
            {
                return Err(ConnectError::Fatal { url: config.url.clone(), reason: err.to_string() });
            }
            Err(err) => {
                tracing::warn!(
                    url = %config.url,
                    attempt,
                    retry_in = %crate::duration::format(pause),
                    "NATS not reachable yet: {err}"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Err(ConnectError::Cancelled { url: config.url.clone() }),
        }
        attempt += 1;
    }
}

/// The servers of a comma-separated URL list (`nats://a:4222,nats://b:4222`): async-nats
/// takes several seed addresses as a list, not as one comma-separated string. It tries
/// them in random order, reconnects to any of them (and to the servers the cluster
/// advertises), so losing one server of a cluster only moves the connection.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    let servers: Vec<async_nats::ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|server| !server.is_empty())
        .map(|server| {
            server
                .parse::<async_nats::ServerAddr>()
                .map_err(|err| format!("`{}` is not a NATS URL: {err}", crate::config::redact_url(server)))
        })
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err("no server URL given".to_owned());
    }
    Ok(servers)
}

/// The replicas a KV bucket created now should have: `auto` asks the server this client
/// reached whether it is in a cluster, and how many servers the cluster advertises to
/// clients (`connect_urls`, one per server); three or more make 3, anything else 1.
pub fn kv_replicas(client: &Client, setting: crate::config::Replicas) -> usize {
    match setting {
        crate::config::Replicas::Fixed(n) => usize::from(n),
        crate::config::Replicas::Auto => {
            let info = client.server_info();
            let servers = cluster_size(info.cluster.as_deref(), &info.connect_urls);
            if servers >= 3 { 3 } else { 1 }
        }
    }
}

/// KV bucket `config.bucket`, created when it does not exist yet (two services may race
/// to create it: the loser gets the winner's). Each call to the server is bounded by
/// `timeout`; the error names the bucket.
pub async fn ensure_kv_bucket(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
    timeout: Duration,
) -> anyhow::Result<async_nats::jetstream::kv::Store> {
    let name = config.bucket.clone();
    if let Ok(Ok(store)) = tokio::time::timeout(timeout, js.get_key_value(name.clone())).await {
        return Ok(store);
    }
    if let Ok(Ok(store)) = tokio::time::timeout(timeout, js.create_key_value(config)).await {
        return Ok(store);
    }
    match tokio::time::timeout(timeout, js.get_key_value(name.clone())).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(err)) => {
            Err(anyhow::anyhow!("cannot open or create KV bucket `{name}`: {err} (is JetStream enabled?)"))
        }
        Err(_) => Err(anyhow::anyhow!("KV bucket `{name}` did not answer within {timeout:?}")),
    }
}

/// Servers in the cluster as a client sees it: 1 outside a cluster; otherwise the
/// distinct client URLs advertised (each server advertises its own too).
fn cluster_size(cluster: Option<&str>, connect_urls: &[String]) -> usize {
    if cluster.is_none_or(str::is_empty) {
        return 1;
    }
    let distinct: std::collections::HashSet<&str> = connect_urls.iter().map(String::as_str).collect();
    distinct.len().max(1)
}

fn options(config: &NatsConfig, client_name: &str) -> ConnectOptions {
    let mut options = ConnectOptions::new()
        .name(client_name)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .max_reconnects(None)
        // A connection whose peer went silent (a host cut off: no FIN, no RST) is given up
        // after two unanswered pings, ~15 s, instead of async-nats's ~3 min: the client
        // then reconnects to another server, or as soon as its link is back.
        .ping_interval(PING_INTERVAL)
        .event_callback(|event| async move { record_event(&event) });
    if let Some(user) = &config.user {
        options = options.user_and_password(user.clone(), config.password.clone().unwrap_or_default());
        if let Some(prefix) = inbox_prefix(user) {
            options = options.custom_inbox_prefix(prefix);
        }
    }
    options
}

/// The users `nats/nats-server.conf` defines: one per service, and the operator (who is
/// also `no_auth_user`). mmctl, compose and the deployment tests all go by this list.
pub const USERS: [&str; 5] = ["matchmaker", "gateway", "orchestrator", "harness", "operator"];

/// The environment variable nats-server reads `user`'s password from
/// (`MM_NATS_<USER>_PASSWORD`, as `nats/nats-server.conf` names them).
pub fn password_env(user: &str) -> String {
    format!("MM_NATS_{}_PASSWORD", user.to_uppercase())
}

/// `_INBOX.<user>`: where this user's replies arrive. `nats/nats-server.conf` lets each
/// user subscribe only to its own, so no service reads replies meant for another (session
/// tokens and game-server secrets travel in replies). `None` for a name that is not one
/// subject token; such a user keeps the shared `_INBOX` prefix.
pub fn inbox_prefix(user: &str) -> Option<String> {
    let token = !user.is_empty() && user.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    token.then(|| format!("_INBOX.{user}"))
}

fn record_event(event: &Event) {
    let name = match event {
        Event::Connected => "connected",
        Event::Disconnected => "disconnected",
        Event::LameDuckMode => "lame_duck",
        Event::Draining => "draining",
        Event::Closed => "closed",
        Event::SlowConsumer(_) => "slow_consumer",
        Event::ServerError(_) => "server_error",
        Event::ClientError(_) => "client_error",
    };
    metrics::counter!("mm_nats_connection_events_total", "event" => name).increment(1);
    match event {
        Event::Connected => tracing::info!("NATS connection (re)established"),
        Event::Draining | Event::Closed => tracing::info!("NATS connection {event}"),
        _ => tracing::warn!("NATS connection event: {event}"),
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "mm_nats_connection_events_total",
        "NATS connection events (connected, disconnected, slow_consumer, ...)."
    );
    metrics::describe_counter!(
        "mm_nats_client_requests_total",
        "NATS requests this process made, by subject and result (ok, timeout, no_responders, service_error, ...)."
    );
    metrics::describe_histogram!(
        "mm_nats_client_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from sending a NATS request to its reply, by subject."
    );
    metrics::describe_counter!(
        "mm_nats_service_requests_total",
        "Requests this process's NATS micro-service endpoints answered, by endpoint and code (200 = success)."
    );
    metrics::describe_histogram!(
        "mm_nats_service_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time a NATS micro-service endpoint took to answer, by endpoint."
    );
    metrics::describe_gauge!(
        "mm_nats_service_requests_in_flight",
        "Requests a NATS micro-service endpoint is handling right now."
    );
    metrics::describe_counter!(
        "mm_nats_service_budget_expired_total",
        "Requests an endpoint answered 504 unworked: their time budget (Mm-Budget-Ms) ran out \
         before a handler could start on them."
    );
    metrics::describe_counter!(
        "mm_nats_service_ignored_total",
        "Messages an endpoint dropped unanswered: no reply subject, or a JetStream delivery."
    );
}

/// A health check for [`crate::telemetry::admin::Health`]: healthy while connected.
pub fn health_check(client: Client) -> impl Fn() -> std::future::Ready<Result<String, String>> {
    move || {
        std::future::ready(match client.connection_state() {
            async_nats::connection::State::Connected => Ok("connected".to_owned()),
            other => Err(format!("NATS {other}")),
        })
    }
}

/// Why a request got no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request could not be serialized (a bug on the caller's side).
    #[error("could not encode the request for {subject}: {source}")]
    Encode { subject: String, source: serde_json::Error },
    /// A service is subscribed but did not answer in time.
    #[error("no reply from {subject} within {}", crate::duration::format(*timeout))]
    Timeout { subject: String, timeout: Duration },
    /// Nothing is subscribed to the subject.
    #[error("no service answers on {subject}")]
    NoResponders { subject: String },
    /// The service answered with an error (micro `Nats-Service-Error-Code` header).
    #[error("{subject} answered {code}: {message}")]
    Service { subject: String, code: u16, message: String },
    /// The reply was not the JSON the caller expected.
    #[error("could not decode the reply from {subject}: {source}")]
    Decode { subject: String, source: serde_json::Error },
    /// The request could not be sent (connection closed, payload over the server's limit).
    #[error("request to {subject} failed: {reason}")]
    Transport { subject: String, reason: String },
}

impl RequestError {
    /// A short label for metrics and logs: `timeout`, `no_responders`, `service_error`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Encode { .. } => "encode",
            Self::Timeout { .. } => "timeout",
            Self::NoResponders { .. } => "no_responders",
            Self::Service { .. } => "service_error",
            Self::Decode { .. } => "decode",
            Self::Transport { .. } => "transport",
        }
    }
}

/// Sends `request` as JSON to `subject` and decodes the JSON reply, within `timeout`.
/// The request's budget ([`BUDGET_HEADER`]) is `timeout`.
pub async fn request_json<Req, Resp>(
    client: &Client,
    subject: &str,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, RequestError>
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    request_json_with_budget(client, subject, request, timeout, timeout).await
}

/// Like [`request_json`], telling the service it has only `budget` (at most `timeout`)
/// for the work: for a caller that itself works within a budget and waits a little
/// longer than it grants, so the service's own "out of time" answer arrives rather than
/// a timeout.
pub async fn request_json_with_budget<Req, Resp>(
    client: &Client,
    subject: &str,
    request: &Req,
    timeout: Duration,
    budget: Duration,
) -> Result<Resp, RequestError>
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let started = Instant::now();
    let result = request_inner(client, subject, request, timeout, budget.min(timeout)).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(err) => err.kind(),
    };
    metrics::counter!("mm_nats_client_requests_total", "subject" => subject.to_owned(), "result" => outcome)
        .increment(1);
    metrics::histogram!("mm_nats_client_request_duration_seconds", "subject" => subject.to_owned())
        .record(started.elapsed().as_secs_f64());
    result
}

/// Creates the client series of `subjects` at 0 (a successful result, no latency yet), for
/// a process that knows at start-up which subjects it will call: its dashboards then show
/// zeros, not "No data", until the first request.
pub fn register_client_metrics(subjects: &[&str]) {
    describe_metrics();
    for subject in subjects {
        let subject = (*subject).to_owned();
        metrics::counter!("mm_nats_client_requests_total", "subject" => subject.clone(), "result" => "ok")
            .increment(0);
        let _ = metrics::histogram!("mm_nats_client_request_duration_seconds", "subject" => subject);
    }
}

async fn request_inner<Req, Resp>(
    client: &Client,
    subject: &str,
    request: &Req,
    timeout: Duration,
    budget: Duration,
) -> Result<Resp, RequestError>
where
    Req: Serialize + ?Sized,
    Resp: DeserializeOwned,
{
    let payload = serde_json::to_vec(request)
        .map_err(|source| RequestError::Encode { subject: subject.to_owned(), source })?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(BUDGET_HEADER, budget.as_millis().to_string().as_str());
    let request = async_nats::Request::new().payload(payload.into()).headers(headers).timeout(Some(timeout));
    let reply = client.send_request(subject.to_owned(), request).await.map_err(|err| match err.kind() {
        RequestErrorKind::TimedOut => RequestError::Timeout { subject: subject.to_owned(), timeout },
        RequestErrorKind::NoResponders => RequestError::NoResponders { subject: subject.to_owned() },
        _ => RequestError::Transport { subject: subject.to_owned(), reason: err.to_string() },
    })?;
    if let Some(headers) = &reply.headers
        && let Some(code) = headers.get(NATS_SERVICE_ERROR_CODE)
    {
        return Err(RequestError::Service {
            subject: subject.to_owned(),
            code: code.as_str().trim().parse().unwrap_or(500),
            message: headers
                .get(NATS_SERVICE_ERROR)
                .map(|value| value.as_str().to_owned())
                .unwrap_or_default(),
        });
    }
    serde_json::from_slice(&reply.payload)
        .map_err(|source| RequestError::Decode { subject: subject.to_owned(), source })
}

/// An error a service endpoint answers with; it travels in the micro error headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    /// HTTP-like: 4xx for the caller's mistakes, 5xx for the service's own failures.
    pub code: u16,
    pub message: String,
}

impl ServiceError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(409, message)
    }
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(413, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, message)
    }
    /// 504: the request's time budget ran out.
    pub fn out_of_time(message: impl Into<String>) -> Self {
        Self::new(504, message)
    }
}

/// A request's time budget as the serving side sees it: when it arrived (this host's
/// monotonic clock) and the deadline its [`BUDGET_HEADER`] sets, if it sent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    arrived: Instant,
    deadline: Option<Instant>,
}

impl Budget {
    /// A request that arrived at `arrived` with `budget` (`None`: no budget sent).
    pub fn new(arrived: Instant, budget: Option<Duration>) -> Self {
        Self { arrived, deadline: budget.map(|budget| arrived + budget) }
    }

    /// A request that arrived just now with no budget.
    pub fn unbounded() -> Self {
        Self::new(Instant::now(), None)
    }

    /// A request that arrived just now with `budget`.
    pub fn from_now(budget: Duration) -> Self {
        Self::new(Instant::now(), Some(budget))
    }

    /// Reads the budget a request's headers carry: `Ok(None)` without one, 400 for a
    /// value that is not a whole number of milliseconds.
    pub fn read(headers: Option<&async_nats::HeaderMap>) -> Result<Option<Duration>, ServiceError> {
        let Some(value) = headers.and_then(|headers| headers.get(BUDGET_HEADER)) else {
            return Ok(None);
        };
        value.as_str().trim().parse::<u64>().map(|ms| Some(Duration::from_millis(ms))).map_err(|_| {
            ServiceError::bad_request(format!(
                "header {BUDGET_HEADER} must be a whole number of milliseconds, not {:?}",
                value.as_str()
            ))
        })
    }

    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// The deadline the caller set (`None`: it set none).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The deadline, but no later than `cap` after the request arrived: what a handler
    /// with a time limit of its own works to.
    pub fn deadline_within(&self, cap: Duration) -> Instant {
        let capped = self.arrived + cap;
        self.deadline.map_or(capped, |deadline| deadline.min(capped))
    }

    /// Time left before the deadline (`None`: no budget; zero once spent).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline.map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    /// Has the deadline passed?
    pub fn is_spent(&self) -> bool {
        self.deadline.is_some_and(|deadline| Instant::now() >= deadline)
    }
}

/// Decodes a request body: empty bodies read as JSON `null` (so `()`/`Option` requests
/// work), anything else must be JSON of the expected shape and within the size limit.
pub fn decode_request<Req: DeserializeOwned>(payload: &[u8]) -> Result<Req, ServiceError> {
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(ServiceError::too_large(format!(
            "request of {} bytes is over the limit of {MAX_REQUEST_BYTES} bytes",
            payload.len()
        )));
    }
    if payload.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"null")
            .map_err(|_| ServiceError::bad_request("empty request: expected a JSON object"));
    }
    serde_json::from_slice(payload).map_err(|err| {
        let what = if err.is_data() { "unexpected JSON shape" } else { "malformed JSON" };
        ServiceError::bad_request(format!("{what}: {err}"))
    })
}

/// Serves one micro-service endpoint: each request is decoded, handed to `handler` on its
/// own task (at most `concurrency` at once), and answered with its JSON result or its
/// [`ServiceError`]. A request whose budget runs out while it waits for a slot is answered
/// 504 unworked (see the module doc). Returns when the endpoint closes or `shutdown`
/// fires, after letting in-flight handlers finish (up to 10 s); requests still waiting
/// for a slot then are answered 503.
pub async fn serve_endpoint<Req, Resp, H, Fut>(
    endpoint: Endpoint,
    name: &'static str,
    concurrency: usize,
    shutdown: CancellationToken,
    handler: H,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
{
    serve_endpoint_with_budget(endpoint, name, concurrency, shutdown, move |request, _budget| {
        handler(request)
    })
    .await;
}

/// [`serve_endpoint`] for handlers that work within the request's [`Budget`].
pub async fn serve_endpoint_with_budget<Req, Resp, H, Fut>(
    mut endpoint: Endpoint,
    name: &'static str,
    concurrency: usize,
    shutdown: CancellationToken,
    handler: H,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    H: Fn(Req, Budget) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
{
    describe_metrics();
    metrics::counter!("mm_nats_service_budget_expired_total", "endpoint" => name).increment(0);
    metrics::counter!("mm_nats_service_ignored_total", "endpoint" => name).increment(0);
    // The endpoint's series exist at 0 before its first request (no "No data" panels).
    metrics::counter!("mm_nats_service_requests_total", "endpoint" => name, "code" => "200").increment(0);
    let _ = metrics::histogram!("mm_nats_service_request_duration_seconds", "endpoint" => name);
    metrics::gauge!("mm_nats_service_requests_in_flight", "endpoint" => name).set(0.0);
    let concurrency = concurrency.max(1);
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut in_flight = JoinSet::new();
    loop {
        let request = tokio::select! {
            request = endpoint.next() => match request {
                Some(request) => request,
                None => break,
            },
            () = shutdown.cancelled() => break,
        };
        // The budget starts when the request is read, not when a slot frees up.
        let arrived = Instant::now();
        // Reap finished tasks so the set does not grow with the request count.
        while in_flight.try_join_next().is_some() {}
        if !is_real_request(&request.message) {
            metrics::counter!("mm_nats_service_ignored_total", "endpoint" => name).increment(1);
            continue;
        }
        let budget = match Budget::read(request.message.headers.as_ref()) {
            Ok(budget) => Budget::new(arrived, budget),
            Err(err) => {
                in_flight.spawn(respond(request, name, Err(err), arrived));
                continue;
            }
        };
        if in_flight.len() >= concurrency + MAX_WAITING {
            let err = ServiceError::unavailable(format!(
                "{name}: {} requests already waiting; try again later",
                in_flight.len() - concurrency
            ));
            in_flight.spawn(respond(request, name, Err(err), arrived));
            continue;
        }
        let (handler, permits, shutdown) = (handler.clone(), permits.clone(), shutdown.clone());
        in_flight.spawn(async move {
            let deadline = async {
                match budget.deadline() {
                    Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                    None => std::future::pending().await,
                }
            };
            let permit = tokio::select! {
                biased;
                () = deadline => None,
                () = shutdown.cancelled() => {
                    let err = ServiceError::unavailable(format!("{name}: the service is shutting down"));
                    respond(request, name, Err(err), arrived).await;
                    return;
                }
                permit = permits.acquire_owned() => permit.ok(),
            };
            match permit {
                Some(permit) if !budget.is_spent() => {
                    let _permit = permit;
                    answer(request, name, handler.as_ref(), budget).await;
                }
                _ => {
                    metrics::counter!("mm_nats_service_budget_expired_total", "endpoint" => name)
                        .increment(1);
                    let waited = arrived.elapsed();
                    let err = ServiceError::out_of_time(format!(
                        "{name}: the request's time budget ran out before its work started (it waited {})",
                        crate::duration::format(waited)
                    ));
                    respond(request, name, Err(err), arrived).await;
                }
            }
        });
    }
    if let Err(err) = endpoint.stop().await {
        tracing::debug!(endpoint = name, "unsubscribing: {err}");
    }
    let drained =
        tokio::time::timeout(DRAIN_DEADLINE, async { while in_flight.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(endpoint = name, "handlers still running after {DRAIN_DEADLINE:?}; abandoning them");
    }
}

/// Is this a request someone waits for: it has a reply subject, and it is no JetStream
/// delivery (a push consumer may deliver to any subject its creator names)?
fn is_real_request(message: &async_nats::Message) -> bool {
    message.reply.as_ref().is_some_and(|reply| !reply.as_str().starts_with("$JS."))
}

async fn answer<Req, Resp, H, Fut>(request: service::Request, name: &'static str, handler: &H, budget: Budget)
where
    Req: DeserializeOwned,
    Resp: Serialize,
    H: Fn(Req, Budget) -> Fut,
    Fut: Future<Output = Result<Resp, ServiceError>>,
{
    let in_flight = crate::telemetry::GaugeGuard::new(
        metrics::gauge!("mm_nats_service_requests_in_flight", "endpoint" => name),
    );
    let outcome = match decode_request::<Req>(&request.message.payload) {
        Ok(decoded) => handler(decoded, budget).await.and_then(|reply| {
            serde_json::to_vec(&reply)
                .map_err(|err| ServiceError::internal(format!("could not encode the reply: {err}")))
        }),
        Err(err) => Err(err),
    };
    drop(in_flight);
    respond(request, name, outcome, budget.arrived()).await;
}

/// Sends the reply (or the micro error) and records the request's metrics.
async fn respond(
    request: service::Request,
    name: &'static str,
    outcome: Result<Vec<u8>, ServiceError>,
    arrived: Instant,
) {
    let code = match &outcome {
        Ok(_) => 200,
        Err(err) => err.code,
    };
    if let Err(err) = &outcome
        && err.code >= 500
    {
        tracing::warn!(endpoint = name, code = err.code, "{}", err.message);
    }
    let response = outcome
        .map(Into::into)
        .map_err(|err| service::error::Error { status: err.message, code: usize::from(err.code) });
    if let Err(err) = request.respond(response).await {
        tracing::warn!(endpoint = name, "could not send the reply: {err}");
    }
    metrics::counter!("mm_nats_service_requests_total", "endpoint" => name, "code" => code.to_string())
        .increment(1);
    metrics::histogram!("mm_nats_service_request_duration_seconds", "endpoint" => name)
        .record(arrived.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_split_and_a_cluster_of_three_gets_three_replicas() {
        let servers = server_addrs("nats://10.0.0.1:4222, nats://10.0.0.2:4223,").expect("two URLs");
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[1].port(), 4223);
        assert!(server_addrs("").is_err());
        let err = server_addrs("nats://u:secret@[bad").expect_err("not a URL");
        assert!(!err.contains("secret"), "{err}");
        let three: Vec<String> = ["a:1", "b:1", "c:1", "a:1"].map(String::from).to_vec();
        assert_eq!(cluster_size(None, &three), 1, "not clustered");
        assert_eq!(cluster_size(Some("mm"), &three), 3);
        assert_eq!(cluster_size(Some("mm"), &[]), 1);
    }

    #[test]
    fn replicas_read_auto_or_a_small_number() {
        use crate::config::Replicas;
        let read = |text: &str| serde_json::from_str::<Replicas>(text);
        assert_eq!(read("\"auto\"").expect("auto"), Replicas::Auto);
        assert_eq!(read("3").expect("3"), Replicas::Fixed(3));
        assert_eq!(read("\"1\"").expect("from an env var"), Replicas::Fixed(1));
        assert!(read("0").is_err() && read("6").is_err() && read("\"many\"").is_err());
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Join {
        player_id: String,
    }

    #[test]
    fn decode_answers_every_bad_payload_with_a_4xx() {
        let ok: Join = decode_request(br#"{"player_id":"p1"}"#).expect("valid");
        assert_eq!(ok, Join { player_id: "p1".into() });

        for (payload, code, needle) in [
            (&b""[..], 400, "empty request"),
            (&b"  \n"[..], 400, "empty request"),
            (&b"{not json"[..], 400, "malformed JSON"),
            (&b"\xff\xfe\x00garbage"[..], 400, "malformed JSON"),
            (&br#"{"other":1}"#[..], 400, "unexpected JSON shape"),
            (&br#"[1,2,3]"#[..], 400, "unexpected JSON shape"),
        ] {
            let err = decode_request::<Join>(payload).expect_err("must fail");
            assert_eq!(err.code, code, "{payload:?}");
            assert!(err.message.contains(needle), "{payload:?}: {}", err.message);
        }
        let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(decode_request::<Join>(&huge).expect_err("too big").code, 413);
    }

    #[test]
    fn each_user_gets_its_own_inbox() {
        assert_eq!(inbox_prefix("gateway").as_deref(), Some("_INBOX.gateway"));
        assert_eq!(inbox_prefix("node-a_1").as_deref(), Some("_INBOX.node-a_1"));
        for not_a_token in ["", "a.b", "a b", "a*", "a>", "ü"] {
            assert_eq!(inbox_prefix(not_a_token), None, "{not_a_token:?}");
        }
    }

    #[test]
    fn budgets_become_deadlines_on_arrival() {
        let arrived = Instant::now();
        let budget = Budget::new(arrived, Some(Duration::from_secs(2)));
        assert_eq!(budget.deadline(), Some(arrived + Duration::from_secs(2)));
        assert_eq!(budget.deadline_within(Duration::from_secs(1)), arrived + Duration::from_secs(1));
        assert_eq!(budget.deadline_within(Duration::from_secs(5)), arrived + Duration::from_secs(2));
        assert!(!budget.is_spent());
        let none = Budget::new(arrived, None);
        assert_eq!((none.deadline(), none.remaining()), (None, None));
        assert_eq!(none.deadline_within(Duration::from_secs(3)), arrived + Duration::from_secs(3));
        assert!(!none.is_spent());
        assert!(Budget::new(arrived, Some(Duration::ZERO)).is_spent());

        let mut headers = async_nats::HeaderMap::new();
        assert_eq!(Budget::read(Some(&headers)), Ok(None));
        headers.insert(BUDGET_HEADER, "1500");
        assert_eq!(Budget::read(Some(&headers)), Ok(Some(Duration::from_millis(1500))));
        headers.insert(BUDGET_HEADER, "soon");
        assert_eq!(Budget::read(Some(&headers)).expect_err("not a number").code, 400);
        assert_eq!(Budget::read(None), Ok(None));
    }

    #[test]
    fn empty_payload_is_fine_for_requests_without_a_body() {
        let unit: () = decode_request(b"").expect("unit request");
        assert_eq!(unit, ());
        let none: Option<Join> = decode_request(b"").expect("optional request");
        assert_eq!(none, None);
    }
}

//! The gateway as players see it: one shared HTTP/1.1 client with a keep-alive pool.
//!
//! Every player task borrows the same [`Gateway`]; connections are pooled across players,
//! so a hundred thousand mostly idle players need only as many sockets as there are
//! requests in flight. Every call has a deadline that covers the answer and its body.
//!
//! The pool is the harness's own, on hyper's connection-level HTTP/1 API: there is one
//! origin, so a stack of idle senders replaces `hyper_util`'s legacy client (its pool
//! keyed by scheme and authority, with hashing, URI and `Host` work per request, was a
//! fifth of the harness's CPU per request). Requests go out in origin form with a `Host`
//! header made once. A request a reused connection refused before sending it (the server
//! closed it while idle) is sent again once on a new connection, as the legacy client did.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::HttpSection;
use crate::scenario::{ERROR_KINDS, ErrorKind, Failure};

/// Largest answer body a player reads (the offers list is the biggest).
const MAX_BODY_BYTES: usize = 1 << 20;

/// A checked gateway base URL: `http://host:port`, no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayUrl {
    http: String,
}

impl GatewayUrl {
    /// Accepts `http://host[:port][/]`; says why anything else is refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim().trim_end_matches('/');
        if trimmed.starts_with("https://") {
            return Err(format!(
                "`{text}`: https is not supported; point the harness at the gateway's http address"
            ));
        }
        if !trimmed.starts_with("http://") {
            return Err(format!("`{text}` is not an http:// URL"));
        }
        let uri: Uri = trimmed.parse().map_err(|err| format!("`{text}` is not a URL: {err}"))?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("`{text}` has no host"));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(format!("`{text}`: give the gateway's base URL, without a path"));
        }
        Ok(Self { http: trimmed.to_owned() })
    }

    /// `http://host:port`
    pub fn as_str(&self) -> &str {
        &self.http
    }

    /// `ws://host:port`, for game URLs the gateway gives as paths.
    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.http.trim_start_matches("http://"))
    }
}

/// What the gateway answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
    /// `Retry-After` in seconds, when the answer has one (429, 503).
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as `T`, or a `decode` failure that shows the start of the body.
    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, Failure> {
        serde_json::from_slice(&self.body).map_err(|err| {
            Failure::new(ErrorKind::Decode, format!("{what}: {err} in {}", snippet(&self.body)))
        })
    }

    /// A failure for a status the scenario did not expect, with the gateway's message.
    pub fn unexpected(&self, what: &str) -> Failure {
        Failure::new(
            ErrorKind::from_status(self.status),
            format!("{what}: {} {}", self.status, snippet(&self.body)),
        )
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    text.trim().to_owned()
}

/// The shared client. Cheap to borrow from every player; clone the `Arc` it lives in.
pub struct Gateway {
    url: GatewayUrl,
    /// `host:port` to connect to.
    addr: Box<str>,
    /// The `Host` header of every request.
    host: HeaderValue,
    timeout: Duration,
    connect_timeout: Duration,
    /// Idle keep-alive connections, the most recently used last.
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
    metrics: RequestMetrics,
}

/// A keep-alive connection waiting for its next request.
struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// One request's parts.
pub struct Call<'a> {
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path: &'a str,
    /// The route template, for metrics (`GET /matchmaking/status`).
    pub route: &'static str,
    pub token: Option<&'a str>,
    pub body: Option<Bytes>,
    pub headers: &'a [(&'static str, &'a str)],
    /// Extra time on top of the usual deadline (long polls).
    pub extra_wait: Duration,
}

impl<'a> Call<'a> {
    pub fn new(method: Method, route: &'static str, path: &'a str) -> Self {
        Self { method, path, route, token: None, body: None, headers: &[], extra_wait: Duration::ZERO }
    }

    pub fn token(mut self, token: &'a str) -> Self {
        self.token = Some(token);
        self
    }

    pub fn json(mut self, body: &impl Serialize) -> Self {
        // Serializing our own request types cannot fail; an empty body would surface as
        // the gateway's 400 anyway.
        self.body = Some(serde_json::to_vec(body).map(Bytes::from).unwrap_or_default());
        self
    }

    pub fn headers(mut self, headers: &'a [(&'static str, &'a str)]) -> Self {
        self.headers = headers;
        self
    }

    pub fn extra_wait(mut self, wait: Duration) -> Self {
        self.extra_wait = wait;
        self
    }
}

impl Gateway {
    pub fn new(url: GatewayUrl, config: &HttpSection) -> Self {
        let (addr, host) = origin(&url);
        describe_metrics();
        Self {
            url,
            addr,
            host,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            idle: Mutex::new(VecDeque::new()),
            max_idle: config.pool_max_idle,
            idle_timeout: config.pool_idle_timeout,
            metrics: RequestMetrics::new(),
        }
    }

    pub fn url(&self) -> &GatewayUrl {
        &self.url
    }

    /// Sends `call` and reads the whole answer, within the deadline.
    pub async fn send(&self, call: Call<'_>) -> Result<Answer, Failure> {
        let started = Instant::now();
        let route = call.route;
        let deadline = self.timeout + call.extra_wait;
        let result = match tokio::time::timeout(deadline, self.send_inner(call)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(
                ErrorKind::Timeout,
                format!("{route}: no answer within {}", mm_shared::duration::format(deadline)),
            )),
        };
        let status = match &result {
            Ok(answer) => status_class(answer.status),
            Err(failure) => STATUS_CLASSES + failure.kind.index(),
        };
        self.metrics.record(route, status, started.elapsed());
        result
    }

    async fn send_inner(&self, call: Call<'_>) -> Result<Answer, Failure> {
        let route = call.route;
        let request = self.request(call)?;
        let (mut sender, reused) = self.checkout(route).await?;
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut err) => match err.take_message() {
                // Never sent: the idle connection was closing. Once more on a new one.
                Some(request) if reused => {
                    sender = self.connect(route).await?;
                    sender.send_request(request).await.map_err(|err| connect_failure(route, &err))?
                }
                _ => return Err(connect_failure(route, &err.into_error())),
            },
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|err| Failure::new(ErrorKind::Connect, format!("{route}: reading the answer: {err}")))?
            .to_bytes();
        self.check_in(sender);
        Ok(Answer { status, body, retry_after })
    }

    /// The request for `call`, in origin form with the `Host` header.
    fn request(&self, call: Call<'_>) -> Result<Request<Full<Bytes>>, Failure> {
        let route = call.route;
        let invalid = |what: &str| {
            Failure::new(ErrorKind::HttpOther, format!("{route}: cannot build the request: {what}"))
        };
        let uri = Uri::try_from(call.path).map_err(|err| invalid(&err.to_string()))?;
        let has_body = call.body.is_some();
        let mut request = Request::new(Full::new(call.body.unwrap_or_default()));
        *request.method_mut() = call.method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        if let Some(token) = call.token {
            let mut value = String::with_capacity(7 + token.len());
            value.push_str("Bearer ");
            value.push_str(token);
            let value = HeaderValue::try_from(value)
                .map_err(|_| Failure::new(ErrorKind::Decode, "the token is not a valid header value"))?;
            headers.insert(AUTHORIZATION, value);
        }
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (name, value) in call.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|err| invalid(&err.to_string()))?;
            let value = HeaderValue::from_str(value).map_err(|err| invalid(&err.to_string()))?;
            headers.append(name, value);
        }
        Ok(request)
    }

    /// A ready connection: the most recently used idle one, or a new one. `true` when
    /// it was reused.
    async fn checkout(&self, route: &str) -> Result<(SendRequest<Full<Bytes>>, bool), Failure> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop_back();
            let Some(Idle { mut sender, since }) = idle else { break };
            if sender.is_closed() || since.elapsed() > self.idle_timeout {
                continue;
            }
            // Ready at once, unless the connection is still finishing its last answer.
            if sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
        }
        Ok((self.connect(route).await?, false))
    }

    /// Puts a connection whose answer was read whole back into the pool, and lets go of
    /// those idle for longer than the idle timeout.
    fn check_in(&self, sender: SendRequest<Full<Bytes>>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while idle.front().is_some_and(|oldest| now.duration_since(oldest.since) > self.idle_timeout) {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back(Idle { sender, since: now });
        }
    }

    /// A new keep-alive connection (no Nagle), its I/O driven by a task of its own.
    async fn connect(&self, route: &str) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let fail = |what: String| Failure::new(ErrorKind::Connect, format!("{route}: {what}"));
        let stream =
            match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(&*self.addr))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => return Err(fail(format!("tcp connect error: {err}"))),
                Err(_) => {
                    return Err(fail(format!(
                        "tcp connect error: no connection within {}",
                        mm_shared::duration::format(self.connect_timeout)
                    )));
                }
            };
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream)).await.map_err(|err| fail(error_chain(&err)))?;
        tokio::spawn(async move {
            // Ends when the connection closes; its requests see the error.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// `host:port` to connect to and the `Host` header, from a checked URL.
fn origin(url: &GatewayUrl) -> (Box<str>, HeaderValue) {
    let uri: Uri = url.as_str().parse().unwrap_or_else(|_| Uri::from_static("http://localhost"));
    let host = uri.host().unwrap_or("localhost");
    let port = uri.port_u16();
    let header = match port {
        Some(port) if port != 80 => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    let addr = format!("{host}:{}", port.unwrap_or(80));
    let header = HeaderValue::try_from(header).unwrap_or_else(|_| HeaderValue::from_static("localhost"));
    (addr.into(), header)
}

fn connect_failure(route: &str, err: &hyper::Error) -> Failure {
    Failure::new(ErrorKind::Connect, format!("{route}: {}", error_chain(err)))
}

/// Status classes before the failure kinds in a route's counters.
const STATUS_CLASSES: usize = 4;
const STATUSES: usize = STATUS_CLASSES + ERROR_KINDS;

fn status_label(status: usize) -> &'static str {
    match status {
        0 => "2xx",
        1 => "4xx",
        2 => "5xx",
        3 => "other",
        kind => ErrorKind::ALL.get(kind - STATUS_CLASSES).map_or("other", |kind| kind.name()),
    }
}

/// Per-request Prometheus handles, registered on first use: a lookup by labels hashes
/// and allocates, which per request cost more than the rest of the bookkeeping.
struct RequestMetrics {
    requests: [[OnceLock<metrics::Counter>; STATUSES]; ROUTES.len()],
    durations: [OnceLock<metrics::Histogram>; ROUTES.len()],
}

impl RequestMetrics {
    fn new() -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            durations: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn record(&self, route: &'static str, status: usize, took: Duration) {
        let label = status_label(status);
        let Some(index) = ROUTES.iter().position(|known| *known == route) else {
            metrics::counter!("mm_harness_http_requests_total", "route" => route, "status" => label)
                .increment(1);
            metrics::histogram!("mm_harness_http_request_duration_seconds", "route" => route)
                .record(took.as_secs_f64());
            return;
        };
        let counter = &self.requests[index][status.min(STATUSES - 1)];
        counter
            .get_or_init(
                || metrics::counter!("mm_harness_http_requests_total", "route" => route, "status" => label),
            )
            .increment(1);
        self.durations[index]
            .get_or_init(|| metrics::histogram!("mm_harness_http_request_duration_seconds", "route" => route))
            .record(took.as_secs_f64());
    }
}

/// The status class's index: 2xx, 4xx, 5xx, other.
fn status_class(status: u16) -> usize {
    match status {
        200..=299 => 0,
        400..=499 => 1,
        500..=599 => 2,
        _ => 3,
    }
}

/// `error: cause: cause`, so "connection refused" is visible behind hyper's summary.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The routes players call (the `route` label); their series exist at 0 from the start.
pub const ROUTES: [&str; 11] = [
    "POST /login",
    "POST /logout",
    "POST /matchmaking/join",
    "GET /matchmaking/status",
    "DELETE /matchmaking/cancel",
    "POST /party",
    "POST /party/join",
    "GET /party",
    "DELETE /party",
    "GET /store/offers",
    "POST /store/purchase",
];

fn describe_metrics() {
    for route in ROUTES {
        metrics::counter!("mm_harness_http_requests_total", "route" => route, "status" => "2xx").increment(0);
        let _ = metrics::histogram!("mm_harness_http_request_duration_seconds", "route" => route);
    }
    metrics::describe_counter!(
        "mm_harness_http_requests_total",
        "HTTP requests players sent to the gateway, by route and status class (2xx, 4xx, 5xx) or failure kind."
    );
    metrics::describe_histogram!(
        "mm_harness_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from sending an HTTP request to the gateway to reading its whole answer, by route."
    );
}

/// Percent-encodes a query value (tokens and ids are usually safe already).
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls() {
        let url = GatewayUrl::parse("http://127.0.0.1:8080/").expect("valid");
        assert_eq!(url.as_str(), "http://127.0.0.1:8080");
        assert_eq!(url.ws_base(), "ws://127.0.0.1:8080");
        assert!(GatewayUrl::parse("https://x").expect_err("tls").contains("https is not supported"));
        assert!(GatewayUrl::parse("localhost:8080").is_err());
        assert!(GatewayUrl::parse("http://x/api").expect_err("path").contains("without a path"));
    }

    #[test]
    fn origins_and_status_labels() {
        let (addr, host) = origin(&GatewayUrl::parse("http://127.0.0.1:8080").expect("valid"));
        assert_eq!((&*addr, host.to_str().expect("ascii")), ("127.0.0.1:8080", "127.0.0.1:8080"));
        let (addr, host) = origin(&GatewayUrl::parse("http://gateway/").expect("valid"));
        assert_eq!((&*addr, host.to_str().expect("ascii")), ("gateway:80", "gateway"));
        assert_eq!(status_label(status_class(204)), "2xx");
        assert_eq!(status_label(status_class(302)), "other");
        assert_eq!(status_label(STATUS_CLASSES + ErrorKind::Timeout.index()), "timeout");
        assert_eq!(status_label(STATUSES - 1), ErrorKind::ALL[ERROR_KINDS - 1].name());
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_escape("abc-123_~."), "abc-123_~.");
        assert_eq!(query_escape("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}

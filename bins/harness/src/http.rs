//! The gateway as players see it: one shared HTTP/1.1 client with a keep-alive pool.
//!
//! Every player task borrows the same [`Gateway`]; connections are pooled across players,
//! so a hundred thousand mostly idle players need only as many sockets as there are
//! requests in flight. Every call has a deadline that covers the answer and its body.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::HttpSection;
use crate::scenario::{ErrorKind, Failure};

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
    client: Client<HttpConnector, Full<Bytes>>,
    url: GatewayUrl,
    timeout: Duration,
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_idle_timeout(config.pool_idle_timeout)
            .build(connector);
        describe_metrics();
        Self { client, url, timeout: config.timeout }
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
            Err(failure) => failure.kind.name(),
        };
        metrics::counter!("mm_harness_http_requests_total", "route" => route, "status" => status)
            .increment(1);
        metrics::histogram!("mm_harness_http_request_duration_seconds", "route" => route)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn send_inner(&self, call: Call<'_>) -> Result<Answer, Failure> {
        let route = call.route;
        let uri = format!("{}{}", self.url.http, call.path);
        let mut request = Request::builder().method(call.method).uri(uri);
        if let Some(token) = call.token {
            let value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| Failure::new(ErrorKind::Decode, "the token is not a valid header value"))?;
            request = request.header(AUTHORIZATION, value);
        }
        if call.body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        for (name, value) in call.headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(call.body.unwrap_or_default())).map_err(|err| {
            Failure::new(ErrorKind::HttpOther, format!("{route}: cannot build the request: {err}"))
        })?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|err| Failure::new(ErrorKind::Connect, format!("{route}: {}", error_chain(&err))))?;
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
        Ok(Answer { status, body, retry_after })
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
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
    fn query_values_are_escaped() {
        assert_eq!(query_escape("abc-123_~."), "abc-123_~.");
        assert_eq!(query_escape("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}

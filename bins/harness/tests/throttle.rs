//! The `login` scenario against a gateway that throttles (429 + Retry-After), served by a
//! stand-in on 127.0.0.1: throttled logins wait and retry, are counted under `http_429`
//! without failing, give up after their bounded retries, and stop when the run ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use harness::config::HarnessSection;
use harness::http::{Gateway, GatewayUrl};
use harness::player::{Context, Session};
use harness::scenario::{ErrorKind, Outcome, Scenario};
use harness::scenarios::login;

/// A stand-in gateway whose `POST /login` answers 429 with `retry_after` to its first
/// `throttled` requests, then logs in; returns its address and the request count.
async fn gateway(throttled: u32, retry_after: &'static str) -> (String, Arc<AtomicU32>) {
    let requests = Arc::new(AtomicU32::new(0));
    let counter = requests.clone();
    let app = Router::new().route(
        "/login",
        post(move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < throttled {
                    let mut response: Response = (
                        StatusCode::TOO_MANY_REQUESTS,
                        axum::Json(serde_json::json!({"error": "too many logins from your address"})),
                    )
                        .into_response();
                    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(retry_after));
                    return response;
                }
                axum::Json(serde_json::json!({"token": "0".repeat(64), "playerId": "throttle-p1"}))
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, requests)
}

fn session(addr: &str) -> (Arc<Context>, Session) {
    let config = HarnessSection::default();
    let gateway = Gateway::new(GatewayUrl::parse(&format!("http://{addr}")).expect("url"), &config.http);
    let context = Arc::new(Context::new(config, gateway, "throttle", false));
    (context.clone(), Session::new(context, 1))
}

fn throttled_count(context: &Context) -> u64 {
    context
        .stats
        .errors_of(Scenario::Login)
        .into_iter()
        .find(|(kind, _)| *kind == ErrorKind::Throttled)
        .map_or(0, |(_, count)| count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_login_waits_as_told_retries_and_is_counted_not_failed() {
    let (addr, requests) = gateway(2, "1").await;
    let (context, mut session) = session(&addr);
    let started = Instant::now();
    let outcome = login::run(&mut session).await;
    assert!(matches!(outcome, Outcome::Succeeded), "{outcome:?}");
    assert!(session.token.is_some());
    assert_eq!(requests.load(Ordering::SeqCst), 3, "two 429s, then the login");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "waited Retry-After each time: {:?}",
        started.elapsed()
    );
    assert_eq!(throttled_count(&context), 2, "each 429 waited out shows under http_429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_throttled_for_good_gives_up_after_its_retries() {
    let (addr, requests) = gateway(u32::MAX, "0").await;
    let (context, mut session) = session(&addr);
    let outcome = login::run(&mut session).await;
    match outcome {
        Outcome::Failed(failure) => assert_eq!(failure.kind, ErrorKind::Throttled, "{failure}"),
        other => panic!("expected a throttled failure, got {other:?}"),
    }
    assert_eq!(requests.load(Ordering::SeqCst), login::MAX_RETRIES + 1, "bounded attempts");
    assert_eq!(
        throttled_count(&context),
        u64::from(login::MAX_RETRIES),
        "the last 429 is the failure itself"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_login_stops_waiting_when_the_run_ends() {
    let (addr, _requests) = gateway(u32::MAX, "60").await;
    let (context, mut session) = session(&addr);
    let abort = context.abort.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        abort.cancel();
    });
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), login::run(&mut session)).await.expect("ends");
    assert!(matches!(outcome, Outcome::Aborted), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "did not sit out the 60 s: {:?}", started.elapsed());
}

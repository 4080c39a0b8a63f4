//! `orchestrator.release` from the matchmaker's side: fire and forget, a bounded number
//! of tries, and nothing fails while no orchestrator serves it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use futures_util::StreamExt;
use matchmaker::release::{ReleaseSettings, Releaser, Why};
use matchmaker::retry::Backoff;
use mm_shared::protocol::{ReleaseReply, ReleaseRequest, subjects};
use mm_testkit::NatsServer;

fn settings() -> ReleaseSettings {
    ReleaseSettings {
        timeout: Duration::from_millis(100),
        attempts: 3,
        backoff: Backoff::new(Duration::from_millis(5), Duration::from_millis(20)),
    }
}

/// Answers `orchestrator.release` with what `answer` says for request n (None: silence);
/// returns the request counter.
async fn responder(
    nats: &NatsServer,
    answer: impl Fn(usize) -> Option<u16> + Send + 'static,
) -> Arc<AtomicUsize> {
    let client = common::nats(&nats.url()).await;
    let mut requests = client.subscribe(subjects::ORCHESTRATOR_RELEASE).await.expect("subscribe");
    common::synced(&client).await;
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let request: ReleaseRequest = serde_json::from_slice(&message.payload).expect("release request");
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let (Some(reply), Some(code)) = (message.reply, answer(n)) else { continue };
            if code == 200 {
                let body = ReleaseReply { game_id: format!("game-{}", request.match_id), released: true };
                let payload = serde_json::to_vec(&body).expect("json");
                let _ = client.publish(reply, payload.into()).await;
            } else {
                let mut headers = HeaderMap::new();
                headers.insert(NATS_SERVICE_ERROR, "busy (test)");
                headers.insert(NATS_SERVICE_ERROR_CODE, code.to_string().as_str());
                let _ = client.publish_with_headers(reply, headers, "".into()).await;
            }
        }
    });
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_orchestrator_a_release_fails_nothing_and_is_not_retried() {
    let nats = NatsServer::start().expect("nats-server");
    // A retry would pause at least half a second first.
    let slow_retries = ReleaseSettings {
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(2)),
        ..settings()
    };
    let releaser = Releaser::new(common::nats(&nats.url()).await, slow_retries);
    let started = Instant::now();
    for n in 0..50 {
        releaser.release(&format!("m{n}"), Why::Abandoned);
    }
    assert!(started.elapsed() < Duration::from_millis(100), "release never waits: {:?}", started.elapsed());
    assert!(releaser.finish(Duration::from_secs(5)).await);
    // No responders is an immediate answer, and not tried again.
    assert!(started.elapsed() < Duration::from_millis(400), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_times_out_is_tried_its_attempts_and_no_more() {
    let nats = NatsServer::start().expect("nats-server");
    let requests = responder(&nats, |_| None).await;
    let releaser = Releaser::new(common::nats(&nats.url()).await, settings());
    let started = Instant::now();
    releaser.release("m1", Why::LeaseLost);
    assert!(started.elapsed() < Duration::from_millis(50), "release never waits");
    assert!(releaser.finish(Duration::from_secs(5)).await);
    assert_eq!(requests.load(Ordering::SeqCst), 3);
    assert!(started.elapsed() >= Duration::from_millis(300), "three deadlines: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_orchestrator_is_asked_again_and_a_refusal_is_final() {
    let nats = NatsServer::start().expect("nats-server");
    // 503, 503, then done: three requests for the first release.
    let requests = responder(&nats, |n| Some(if n < 2 { 503 } else { 200 })).await;
    let releaser = Releaser::new(common::nats(&nats.url()).await, settings());
    releaser.release("m1", Why::Superseded);
    assert!(releaser.finish(Duration::from_secs(5)).await);
    assert_eq!(requests.load(Ordering::SeqCst), 3);

    // A 4xx is the orchestrator's final word: asked once.
    let nats = NatsServer::start().expect("nats-server");
    let requests = responder(&nats, |_| Some(400)).await;
    let releaser = Releaser::new(common::nats(&nats.url()).await, settings());
    releaser.release("bad id", Why::Cancelled);
    assert!(releaser.finish(Duration::from_secs(5)).await);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

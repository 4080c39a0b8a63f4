//! The NATS helpers against a real nats-server: connect (with retry), JSON request/reply,
//! micro endpoints, and each typed error.

use std::time::{Duration, Instant};

use async_nats::service::ServiceExt;
use futures_util::StreamExt;
use mm_shared::config::NatsConfig;
use mm_shared::nats::{self, RequestError, ServiceError};
use mm_testkit::NatsServer;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Greet {
    name: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Greeting {
    text: String,
}

fn config(url: &str) -> NatsConfig {
    NatsConfig { url: url.to_owned(), ..NatsConfig::default() }
}

/// Starts a micro service `greeter` with endpoint `greet` that says hello, answers 404
/// for "nobody", and 500 for "crash".
async fn start_greeter(
    client: &async_nats::Client,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let service = client.service_builder().start("greeter", "0.1.0").await.expect("service starts");
    let endpoint = service.endpoint("greet").await.expect("endpoint");
    tokio::spawn(async move {
        nats::serve_endpoint(endpoint, "greet", 16, shutdown, |request: Greet| async move {
            match request.name.as_str() {
                "nobody" => Err(ServiceError::not_found("no such player: nobody")),
                "crash" => Err(ServiceError::internal("it broke")),
                name => Ok(Greeting { text: format!("hello {name}") }),
            }
        })
        .await;
        drop(service);
    })
}

#[tokio::test]
async fn request_reply_round_trip_and_typed_errors() {
    let server = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let client = nats::connect(&config(&server.url()), "test", &shutdown).await.expect("connects");
    let greeter = start_greeter(&client, shutdown.clone()).await;
    let timeout = Duration::from_secs(2);

    let reply: Greeting = nats::request_json(&client, "greet", &Greet { name: "ana".into() }, timeout)
        .await
        .expect("round trip");
    assert_eq!(reply.text, "hello ana");

    let err = nats::request_json::<_, Greeting>(&client, "greet", &Greet { name: "nobody".into() }, timeout)
        .await
        .expect_err("404");
    match err {
        RequestError::Service { code, message, .. } => {
            assert_eq!(code, 404);
            assert_eq!(message, "no such player: nobody");
        }
        other => panic!("expected a service error, got {other:?}"),
    }
    let err = nats::request_json::<_, Greeting>(&client, "greet", &Greet { name: "crash".into() }, timeout)
        .await
        .expect_err("500");
    assert!(matches!(err, RequestError::Service { code: 500, .. }), "{err:?}");

    // Malformed and oversized payloads get a 4xx micro error, and the service keeps serving.
    for (payload, code) in [
        (b"{nope".to_vec(), "400"),
        (Vec::new(), "400"),
        (vec![0xff, 0x00, 0x13], "400"),
        (vec![b'x'; nats::MAX_REQUEST_BYTES + 10], "413"),
    ] {
        let reply = client.request("greet", payload.into()).await.expect("a reply, not a hang");
        let headers = reply.headers.expect("error headers");
        assert_eq!(headers.get("Nats-Service-Error-Code").map(|v| v.as_str()), Some(code));
        assert!(!headers.get("Nats-Service-Error").map(|v| v.as_str()).unwrap_or("").is_empty());
    }
    let reply: Greeting = nats::request_json(&client, "greet", &Greet { name: "still here".into() }, timeout)
        .await
        .expect("still serving");
    assert_eq!(reply.text, "hello still here");

    // Stopping the endpoint unsubscribes: afterwards nobody answers.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), greeter).await.expect("endpoint stops").expect("no panic");
    let err = nats::request_json::<_, Greeting>(&client, "greet", &Greet { name: "x".into() }, timeout)
        .await
        .expect_err("nobody listens");
    assert!(matches!(err, RequestError::NoResponders { .. }), "{err:?}");
}

#[tokio::test]
async fn a_silent_responder_is_a_timeout_not_a_hang() {
    let server = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let client = nats::connect(&config(&server.url()), "test", &shutdown).await.expect("connects");
    // Subscribed (so not "no responders") but never answering.
    let _silent = client.subscribe("silent").await.expect("subscribe");
    client.flush().await.expect("flush");

    let started = Instant::now();
    let err = nats::request_json::<_, Greeting>(
        &client,
        "silent",
        &Greet { name: "x".into() },
        Duration::from_millis(300),
    )
    .await
    .expect_err("times out");
    assert!(matches!(err, RequestError::Timeout { .. }), "{err:?}");
    assert_eq!(err.kind(), "timeout");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());

    let err = nats::request_json::<_, Greeting>(
        &client,
        "nobody.here",
        &Greet { name: "x".into() },
        Duration::from_secs(2),
    )
    .await
    .expect_err("no responders");
    assert!(matches!(err, RequestError::NoResponders { .. }), "{err:?}");
}

#[tokio::test]
async fn connect_waits_for_a_server_that_starts_later() {
    let port = mm_testkit::free_port();
    let shutdown = CancellationToken::new();
    let url = format!("nats://127.0.0.1:{port}");
    let connecting = {
        let shutdown = shutdown.clone();
        let config = config(&url);
        tokio::spawn(async move { nats::connect(&config, "late", &shutdown).await })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!connecting.is_finished(), "must keep retrying while nothing listens");

    let server = tokio::task::spawn_blocking(move || NatsServer::start_on(port))
        .await
        .expect("join")
        .expect("nats-server on the chosen port");
    let client = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("connects soon after the server is up")
        .expect("join")
        .expect("connected");
    let mut sub = client.subscribe("ping").await.expect("subscribe");
    client.publish("ping", "x".into()).await.expect("publish");
    let message = tokio::time::timeout(Duration::from_secs(2), sub.next()).await.expect("delivered");
    assert!(message.is_some());
    drop(server);
}

#[tokio::test]
async fn connect_gives_up_on_shutdown() {
    let port = mm_testkit::free_port();
    let shutdown = CancellationToken::new();
    let config = config(&format!("nats://127.0.0.1:{port}"));
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let err = tokio::time::timeout(Duration::from_secs(5), nats::connect(&config, "t", &shutdown))
        .await
        .expect("returns promptly")
        .expect_err("cancelled");
    assert!(matches!(err, nats::ConnectError::Cancelled { .. }), "{err}");
}

#[tokio::test]
async fn health_check_follows_the_connection() {
    let mut server = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let client = nats::connect(&config(&server.url()), "t", &shutdown).await.expect("connects");
    let check = nats::health_check(client.clone());
    assert_eq!(check().await, Ok("connected".to_owned()));

    server.process().stop_with(libc::SIGKILL, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while check().await.is_ok() {
        assert!(Instant::now() < deadline, "health must notice the lost server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `slow` endpoint with one handler slot: each request holds it for 400 ms and
/// reports the budget it saw; every request that reached the handler is counted.
async fn start_slow(
    client: &async_nats::Client,
    shutdown: CancellationToken,
    worked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let service = client.service_builder().start("slow", "0.1.0").await.expect("service starts");
    let endpoint = service.endpoint("slow").await.expect("endpoint");
    tokio::spawn(async move {
        nats::serve_endpoint_with_budget(endpoint, "slow", 1, shutdown, move |request: Greet, budget| {
            let worked = worked.clone();
            async move {
                worked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let left = budget.remaining().map_or(-1, |left| left.as_millis() as i64);
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok(Greeting { text: format!("{} {left}", request.name) })
            }
        })
        .await;
        drop(service);
    })
}

#[tokio::test]
async fn budgets_travel_and_an_expired_one_is_dropped_unworked() {
    let server = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let client = nats::connect(&config(&server.url()), "test", &shutdown).await.expect("connects");
    let worked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let _slow = start_slow(&client, shutdown.clone(), worked.clone()).await;

    // The handler sees the caller's budget (its timeout, or the smaller budget given).
    let reply: Greeting =
        nats::request_json(&client, "slow", &Greet { name: "a".into() }, Duration::from_secs(3))
            .await
            .expect("ok");
    let left: i64 = reply.text.trim_start_matches("a ").parse().expect("a number");
    assert!((2500..=3000).contains(&left), "about the 3 s timeout left: {left}");
    let reply: Greeting = nats::request_json_with_budget(
        &client,
        "slow",
        &Greet { name: "b".into() },
        Duration::from_secs(3),
        Duration::from_millis(1000),
    )
    .await
    .expect("ok");
    let left: i64 = reply.text.trim_start_matches("b ").parse().expect("a number");
    assert!((500..=1000).contains(&left), "about the 1 s budget left: {left}");
    // Without the header there is no deadline.
    let raw = client.request("slow", br#"{"name":"c"}"#.to_vec().into()).await.expect("reply");
    let reply: Greeting = serde_json::from_slice(&raw.payload).expect("json");
    assert_eq!(reply.text, "c -1");

    // One request holds the only slot; one behind it with a budget shorter than the wait
    // is answered 504 without its handler ever running.
    worked.store(0, std::sync::atomic::Ordering::SeqCst);
    let first = {
        let client = client.clone();
        tokio::spawn(async move {
            nats::request_json::<_, Greeting>(
                &client,
                "slow",
                &Greet { name: "first".into() },
                Duration::from_secs(3),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let err = nats::request_json_with_budget::<_, Greeting>(
        &client,
        "slow",
        &Greet { name: "late".into() },
        Duration::from_secs(3),
        Duration::from_millis(150),
    )
    .await
    .expect_err("out of time");
    match err {
        RequestError::Service { code: 504, message, .. } => {
            assert!(message.contains("budget ran out before its work started"), "{message}");
        }
        other => panic!("expected a 504, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "answered at its deadline: {:?}",
        started.elapsed()
    );
    first.await.expect("join").expect("the first one is served");
    // A budget of 0 has run out on arrival.
    let err = nats::request_json_with_budget::<_, Greeting>(
        &client,
        "slow",
        &Greet { name: "zero".into() },
        Duration::from_secs(3),
        Duration::ZERO,
    )
    .await
    .expect_err("out of time");
    assert!(matches!(err, RequestError::Service { code: 504, .. }), "{err:?}");
    assert_eq!(worked.load(std::sync::atomic::Ordering::SeqCst), 1, "only the first request was worked on");

    // A malformed budget is the caller's mistake.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(nats::BUDGET_HEADER, "soon");
    let reply = client
        .request_with_headers("slow", headers, br#"{"name":"d"}"#.to_vec().into())
        .await
        .expect("a reply");
    let headers = reply.headers.expect("error headers");
    assert_eq!(headers.get("Nats-Service-Error-Code").map(|v| v.as_str()), Some("400"));
}

#[tokio::test]
async fn messages_nobody_waits_for_are_not_answered() {
    let server = NatsServer::start().expect("nats-server");
    let shutdown = CancellationToken::new();
    let client = nats::connect(&config(&server.url()), "test", &shutdown).await.expect("connects");
    let worked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let _slow = start_slow(&client, shutdown.clone(), worked.clone()).await;
    // A JetStream delivery (reply `$JS.ACK...`) and a plain publish: neither is worked on.
    let mut acks = client.subscribe("$JS.ACK.>").await.expect("subscribe");
    client
        .publish_with_reply("slow", "$JS.ACK.S.C.1.1.1.1.0", br#"{"name":"js"}"#.to_vec().into())
        .await
        .expect("pub");
    client.publish("slow", br#"{"name":"plain"}"#.to_vec().into()).await.expect("pub");
    client.flush().await.expect("flush");
    let answered = tokio::time::timeout(Duration::from_millis(800), acks.next()).await;
    assert!(answered.is_err(), "a JetStream delivery got an answer: {answered:?}");
    assert_eq!(worked.load(std::sync::atomic::Ordering::SeqCst), 0);
    let reply: Greeting =
        nats::request_json(&client, "slow", &Greet { name: "real".into() }, Duration::from_secs(3))
            .await
            .expect("ok");
    assert!(reply.text.starts_with("real "), "{}", reply.text);
}

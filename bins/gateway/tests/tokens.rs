//! Session tokens checked at the gateway without a round trip: real nats-server,
//! redis-server, matchmaker and gateways. Signed by the session service (Ed25519 JWTs);
//! bad, tampered, foreign-key, expired and revoked tokens are 401; a logout reaches every
//! gateway; a gateway cut off from NATS fails closed and never lets a token revoked
//! meanwhile through.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mm_shared::protocol::subjects;
use mm_shared::token::{self, Claims};
use mm_testkit::{NatsServer, RedisServer, ServiceProcess, free_port};
use serde_json::json;
use support::http::Http;
use support::start_matchmaker as matchmaker;
use tokio::net::{TcpListener, TcpStream};

fn gateway(nats_url: &str) -> (ServiceProcess, Http) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut gateway = ServiceProcess::start(
        "gateway",
        &[],
        &[("MM_NATS__URL", nats_url), ("MM_GATEWAY__LISTEN", addr.as_str()), ("MM_LOG__FILTER", "info")],
    )
    .expect("gateway starts");
    gateway.wait_healthy(&addr).expect("gateway healthy");
    (gateway, Http::new(&addr))
}

/// A player route that needs a valid token and nothing else of note: an unknown ticket
/// is 404 for a valid token, 401 for any other.
async fn use_token(http: &Http, token: &str) -> (u16, String) {
    let answer = http.get("/matchmaking/status?ticketId=no-such-ticket", Some(token)).await;
    (answer.status, answer.body["error"].as_str().unwrap_or_default().to_owned())
}

async fn eventually_status(http: &Http, token: &str, status: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (got, message) = use_token(http, token).await;
        if got == status {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "still {got} ({message}) after {limit:?}, expected {status}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_at_the_gateway_and_logouts_reach_every_gateway() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let _matchmaker = matchmaker(&nats, &redis, &[("MM_SESSION__TTL", "3s")]);
    let (_a, a) = gateway(&nats.url());
    let (_b, b) = gateway(&nats.url());

    let ana = a.login("ana").await;
    let claims = token::unverified_claims(&ana).expect("a JWT");
    assert_eq!(claims.sub, "ana");

    // Used at both gateways, with no session.verify on the wire.
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let mut verifies = client.subscribe(subjects::SESSION_VERIFY).await.expect("subscribe");
    support::synced(&client).await;
    for http in [&a, &b] {
        for _ in 0..20 {
            assert_eq!(use_token(http, &ana).await.0, 404, "a valid token");
        }
    }
    let asked = tokio::time::timeout(Duration::from_millis(200), verifies.next()).await;
    assert!(asked.is_err(), "no gateway asked session.verify: {asked:?}");

    // Made-up, tampered, foreign-key and `none` tokens.
    let (header, rest) = ana.split_once('.').expect("three parts");
    let (_, signature) = rest.split_once('.').expect("three parts");
    let eve = Claims { sub: "eve".into(), ..claims.clone() };
    let tampered = format!("{header}.{}.{signature}", b64(&serde_json::to_vec(&eve).expect("json")));
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let foreign_key = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let kid = token::Unverified::parse(&ana).expect("parses").kid().to_owned();
    let same_kid_other_key = token::sign(&foreign_key, &kid, &eve);
    let unknown_kid = token::sign(&foreign_key, "0011223344556677", &eve);
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(&serde_json::to_vec(&eve).expect("json"))
    );
    let long = "a".repeat(10_000);
    for (what, bad) in [
        ("made up", "0".repeat(64).as_str()),
        ("tampered claims", tampered.as_str()),
        ("signed by another key under the real key id", same_kid_other_key.as_str()),
        ("signed by an unknown key", unknown_kid.as_str()),
        ("alg none", none.as_str()),
        ("10 kB", long.as_str()),
    ] {
        for http in [&a, &b] {
            let (status, message) = use_token(http, bad).await;
            assert_eq!(status, 401, "{what}: {message}");
        }
    }

    // A logout at A: refused at A at once, and at B as soon as B sees the revocation.
    let bo = a.login("bo").await;
    assert_eq!(use_token(&b, &bo).await.0, 404);
    let logout = a.post("/logout", Some(&bo), json!(null)).await;
    assert_eq!(logout.status, 204, "{}", logout.body);
    assert_eq!(use_token(&a, &bo).await.0, 401, "the gateway that logged out refuses it at once");
    let took = eventually_status(&b, &bo, 401, Duration::from_secs(2)).await;
    println!("a logout at gateway A reached gateway B within {took:?}");

    // A login past the token limit (2) revokes the oldest, everywhere.
    let cy = [a.login("cy").await, a.login("cy").await, a.login("cy").await];
    eventually_status(&b, &cy[0], 401, Duration::from_secs(2)).await;
    for token in &cy[1..] {
        assert_eq!(use_token(&b, token).await.0, 404, "the newer two still work");
    }

    // A token ends at its expiry (session.ttl 3s, rounded up to the second).
    let left = Duration::from_millis((claims.exp * 1000).saturating_sub(mm_shared::protocol::now_ms()));
    tokio::time::sleep(left).await;
    for http in [&a, &b] {
        assert_eq!(use_token(http, &ana).await.0, 401, "expired");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_keep_older_tokens_valid_until_they_expire() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let _matchmaker =
        matchmaker(&nats, &redis, &[("MM_SESSION__TTL", "30s"), ("MM_SESSION__KEY_LIFETIME", "1s")]);
    let (_a, a) = gateway(&nats.url());
    let old = a.login("ana").await;
    let old_kid = token::Unverified::parse(&old).expect("parses").kid().to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let new = a.login("bo").await;
    let new_kid = token::Unverified::parse(&new).expect("parses").kid().to_owned();
    assert_ne!(old_kid, new_kid, "a new key signs after key_lifetime");
    // A gateway started now learns both keys.
    let (_b, b) = gateway(&nats.url());
    for http in [&a, &b] {
        assert_eq!(use_token(http, &old).await.0, 404, "the older key still checks its tokens");
        assert_eq!(use_token(http, &new).await.0, 404);
    }
}

/// A TCP relay on loopback between a gateway and nats-server that the test can cut.
struct Relay {
    addr: String,
    cut: Arc<AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let cut = Arc::new(AtomicBool::new(false));
        let links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (accept_cut, accept_links) = (cut.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if accept_cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accept_links.lock().expect("links").push(link);
            }
        });
        Self { addr, cut, links }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for link in self.links.lock().expect("links").drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_cut_from_nats_fails_closed_and_never_admits_a_token_revoked_meanwhile() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let _matchmaker = matchmaker(&nats, &redis, &[]);
    let (_a, a) = gateway(&nats.url());
    let relay = Relay::start(format!("127.0.0.1:{}", nats.port())).await;
    let (_b, b) = gateway(&format!("nats://{}", relay.addr));

    let ana = a.login("ana").await;
    assert_eq!(use_token(&b, &ana).await.0, 404, "B admits the token");

    relay.cut();
    // B knows it may be missing revocations: 503 saying so (not 401: the token may be fine).
    let started = Instant::now();
    loop {
        let (status, message) = use_token(&b, &ana).await;
        if status == 503 && message.contains("revoked tokens") {
            break;
        }
        // Until B notices the cut, a request may pass the token check and then time out.
        assert!(matches!(status, 404 | 503 | 504), "{status}: {message}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "B still answers {status} after the cut: {message}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The logout happens while B cannot hear it.
    let logout = a.post("/logout", Some(&ana), json!(null)).await;
    assert_eq!(logout.status, 204, "{}", logout.body);
    relay.restore();

    // From the cut to the end, B never admits the revoked token: 503 until its watch has
    // caught up on the new connection, then 401.
    let started = Instant::now();
    let mut answers = std::collections::BTreeMap::new();
    loop {
        let (status, message) = use_token(&b, &ana).await;
        *answers.entry(status).or_insert(0) += 1;
        assert!(status == 503 || status == 401, "B admitted a revoked token: {status} {message}");
        if status == 401 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "B did not catch up: {status} {message}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("after the relay came back: {answers:?} in {:?}", started.elapsed());
    // And a token that was not revoked works again through B.
    let bo = a.login("bo").await;
    assert_eq!(use_token(&b, &bo).await.0, 404, "B is back in step");
}

/// Matchmakers create `revoked_tokens` before they publish a signing key. So a token that
/// verifies at a gateway that has not watched that bucket yet (it started before any
/// matchmaker, and polls for the bucket) must wait for it: 503, never admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_waits_until_the_gateway_watches_the_revocations() {
    use async_nats::jetstream::{self, kv};
    let nats = NatsServer::start().expect("nats-server");
    let (_gateway, http) = gateway(&nats.url());
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("nats"));
    // A key in `session_keys` with no `revoked_tokens` beside it.
    let keys = js
        .create_key_value(kv::Config {
            bucket: mm_shared::protocol::buckets::SESSION_KEYS.to_owned(),
            ..Default::default()
        })
        .await
        .expect("session_keys");
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).expect("key");
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let kid = "00112233aabbccdd";
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    let entry = mm_shared::protocol::SessionKeyEntry {
        public_key: token::public_key(&pair),
        created_at: now.as_millis() as u64,
    };
    keys.put(kid, serde_json::to_vec(&entry).expect("json").into()).await.expect("put the key");
    let claims = Claims {
        sub: "p1".into(),
        jti: token::token_id(&[7; 16]),
        iat: now.as_secs(),
        exp: now.as_secs() + 600,
    };
    let signed = token::sign(&pair, kid, &claims);

    // Once the gateway knows the key (it looks unknown ids up), the token verifies, and
    // waits: no revocations are known.
    let started = Instant::now();
    let (status, message) = loop {
        let (status, message) = use_token(&http, &signed).await;
        if status != 401 || started.elapsed() > Duration::from_secs(5) {
            break (status, message);
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    };
    assert_eq!(status, 503, "a verified token before the revocations are watched: {message}");
    assert!(message.contains("catching up with revoked tokens"), "{message}");

    // The bucket appears (as a matchmaker makes it): the token goes through to the route,
    // which has no matchmaker to ask.
    js.create_key_value(kv::Config {
        bucket: mm_shared::protocol::buckets::REVOKED_TOKENS.to_owned(),
        ..Default::default()
    })
    .await
    .expect("revoked_tokens");
    let started = Instant::now();
    loop {
        let (status, message) = use_token(&http, &signed).await;
        if !message.contains("catching up") {
            assert_ne!(status, 401, "the token is valid: {message}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still catching up: {message}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Test support shared by the gateway's tests and bench; each uses a different part.
#![allow(dead_code)]

pub mod http;

use futures_util::StreamExt;
use mm_shared::protocol::{AllocateReply, AllocateRequest, subjects};
use mm_testkit::{NatsServer, RedisServer, ServiceProcess};

/// A matchmaker process on these servers, healthy (its services answer), with `env` on top.
pub fn start_matchmaker(nats: &NatsServer, redis: &RedisServer, env: &[(&str, &str)]) -> ServiceProcess {
    ServiceProcess::matchmaker(nats, redis, env).expect("a healthy matchmaker").0
}

/// Returns once the server has processed everything this client sent before, its
/// subscriptions included (`flush` only empties the client's buffer).
pub async fn synced(client: &async_nats::Client) {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.expect("subscribe");
    client.publish(inbox, "".into()).await.expect("publish");
    tokio::time::timeout(std::time::Duration::from_secs(5), echo.next())
        .await
        .expect("echo within 5 s")
        .expect("echo");
}

/// Stand-in orchestrator: every allocation succeeds at once.
pub async fn allocator(nats_url: &str) -> tokio::task::JoinHandle<()> {
    let client = async_nats::connect(nats_url).await.expect("nats");
    let mut requests = client.subscribe(subjects::ORCHESTRATOR_ALLOCATE).await.expect("subscribe");
    synced(&client).await;
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let Some(reply) = message.reply else { continue };
            let request: AllocateRequest =
                serde_json::from_slice(&message.payload).expect("allocate request");
            let game_id = format!("game-{}", request.match_id);
            let answer = AllocateReply {
                url: format!("ws://127.0.0.1:8080/game/{game_id}/connect"),
                game_id,
                node: "test".into(),
                address: "127.0.0.1:20000".into(),
                start: Default::default(),
            };
            let _ = client.publish(reply, serde_json::to_vec(&answer).expect("json").into()).await;
        }
    })
}

/// A WebSocket as the tests dial it.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

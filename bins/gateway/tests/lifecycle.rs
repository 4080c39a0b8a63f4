//! The gateway starts, answers `/healthz` once NATS is connected, and stops on SIGTERM.

use mm_testkit::{NatsServer, free_port, lifecycle::assert_service_lifecycle};

#[test]
fn starts_answers_and_stops() {
    let nats = NatsServer::start().expect("nats-server");
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [("MM_NATS__URL", nats.url()), ("MM_GATEWAY__LISTEN", listen.clone())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_service_lifecycle("gateway", &listen, &env, "MM_GATEWAY__LISTEN");
}

//! The matchmaker starts, answers `/healthz` once NATS and Redis are connected, says why
//! it is not healthy while one is missing, and stops on SIGTERM either way.

use std::time::Duration;

use mm_testkit::{NatsServer, RedisServer, ServiceProcess, free_port, lifecycle::assert_service_lifecycle};

#[test]
fn starts_answers_and_stops() {
    let nats = NatsServer::start().expect("nats-server");
    let redis = RedisServer::start().expect("redis-server");
    let admin = format!("127.0.0.1:{}", free_port());
    let env = [
        ("MM_NATS__URL", nats.url()),
        ("MM_REDIS__URL", redis.url()),
        ("MM_MATCHMAKER__ADMIN_LISTEN", admin.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_service_lifecycle("matchmaker", &admin, &env, "MM_REDIS__RESPONSE_TIMEOUT");
}

#[test]
fn unhealthy_while_redis_is_missing_and_still_stops_cleanly() {
    let nats = NatsServer::start().expect("nats-server");
    let admin = format!("127.0.0.1:{}", free_port());
    let nowhere = format!("redis://127.0.0.1:{}/", free_port());
    let mut matchmaker = ServiceProcess::start(
        "matchmaker",
        &[],
        &[
            ("MM_NATS__URL", &nats.url()),
            ("MM_REDIS__URL", &nowhere),
            ("MM_MATCHMAKER__ADMIN_LISTEN", &admin),
        ],
    )
    .expect("starts");
    let answered = mm_shared::probe::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        mm_shared::probe::http_get(&admin, "/healthz", Duration::from_secs(2))
            .is_ok_and(|answer| answer.status == 503 && answer.body.contains("connecting to redis://"))
    });
    assert!(answered, "expected a 503 naming the missing Redis; log:\n{}", matchmaker.log());
    let status = matchmaker.terminate(Duration::from_secs(5)).expect("stops on SIGTERM");
    assert!(status.success(), "{status}");
}

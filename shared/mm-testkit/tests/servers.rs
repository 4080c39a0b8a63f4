//! The test servers themselves: they start, answer, and are gone after drop.

use std::time::Duration;

use mm_testkit::{Error, NatsServer, PodmanService, RedisServer};

fn gone(pid: u32) -> bool {
    mm_shared::probe::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        !mm_shared::process::is_alive(pid)
    })
}

#[test]
fn nats_and_redis_start_on_free_ports_and_die_on_drop() {
    let mut nats = NatsServer::start().expect("nats-server");
    let mut redis = RedisServer::start().expect("redis-server");
    assert_ne!(nats.port(), redis.port());
    assert!(mm_shared::probe::tcp_open(&format!("127.0.0.1:{}", nats.port()), Duration::from_secs(1)));
    let jetstream =
        mm_shared::probe::http_get(&nats.monitor_addr(), "/jsz", Duration::from_secs(2)).expect("/jsz");
    assert!(jetstream.body.contains("\"config\""), "JetStream is enabled: {}", jetstream.body);

    let (nats_pid, redis_pid) = (nats.process().pid(), redis.process().pid());
    drop(nats);
    drop(redis);
    assert!(gone(nats_pid), "nats-server outlived its guard");
    assert!(gone(redis_pid), "redis-server outlived its guard");
}

#[test]
fn two_servers_of_a_kind_do_not_collide() {
    let a = NatsServer::start().expect("first");
    let b = NatsServer::start().expect("second");
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
}

#[test]
fn a_missing_tool_says_to_run_just_setup() {
    let err = mm_testkit::require("surely-not-installed-anywhere", "some package").expect_err("missing");
    assert!(matches!(err, Error::Missing { .. }));
    assert!(err.to_string().contains("just setup"), "{err}");
}

#[test]
fn podman_service_answers_on_its_own_socket() {
    let podman = PodmanService::start().expect("podman system service (run `just setup`)");
    let path = podman.socket().to_owned();
    assert!(path.exists());
    let mut stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
    use std::io::{Read, Write};
    stream.write_all(b"GET /v4.0.0/libpod/info HTTP/1.0\r\nHost: d\r\n\r\n").expect("write");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"), "{reply:.200}");
    assert!(reply.contains("\"ociRuntime\""), "{reply:.300}");
}

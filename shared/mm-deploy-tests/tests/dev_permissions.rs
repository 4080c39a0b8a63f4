//! `mmctl dev` runs nats-server with `nats/nats-server.conf` and hands each service its own
//! user: the server's connection list (`/connz?auth=1`) names each service's user, and a
//! client without credentials still gets in, as the operator.

use std::time::Duration;

use mm_deploy_tests::nats_users::UserClient;
use mm_shared::probe::{http_get, wait_until};
use mm_testkit::{ServiceProcess, free_port};

#[test]
fn mmctl_dev_gives_each_service_its_own_nats_user() {
    let local = || format!("127.0.0.1:{}", free_port());
    let (nats_port, monitor_port) = (free_port(), free_port());
    let env: Vec<(&str, String)> = vec![
        ("MM_DEV__NATS_PORT", nats_port.to_string()),
        ("MM_DEV__NATS_MONITOR_PORT", monitor_port.to_string()),
        ("MM_DEV__REDIS_PORT", free_port().to_string()),
        ("MM_DEV__STOP_TIMEOUT", "5s".to_owned()),
        ("MM_GATEWAY__LISTEN", local()),
        ("MM_MATCHMAKER__ADMIN_LISTEN", local()),
        ("MM_ORCHESTRATOR__ADMIN_LISTEN", local()),
        ("MM_ORCHESTRATOR__DRIVER", "process".to_owned()),
        ("MM_HARNESS__ADMIN_LISTEN", local()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (*key, value.as_str())).collect();
    let mut mmctl = ServiceProcess::start("mmctl", &["dev"], &env).expect("mmctl starts");
    let log = mmctl.dir().join("mmctl.log");
    mmctl
        .process()
        .wait_ready(Duration::from_secs(60), || {
            std::fs::read_to_string(&log).is_ok_and(|log| log.contains("the backend is up"))
        })
        .expect("the stack comes up");

    // Each service's connection, by its client name, and the user it authenticated as.
    let monitor = format!("127.0.0.1:{monitor_port}");
    let users = || -> Vec<(String, String)> {
        let Ok(answer) = http_get(&monitor, "/connz?auth=1", Duration::from_secs(2)) else {
            return Vec::new();
        };
        let connz: serde_json::Value = serde_json::from_str(&answer.body).unwrap_or_default();
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|connection| {
                let field = |key: &str| connection[key].as_str().unwrap_or("").to_owned();
                (field("name"), field("authorized_user"))
            })
            .collect()
    };
    let all_connected = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let users = users();
        ["gateway", "matchmaker", "orchestrator"].iter().all(|name| users.iter().any(|(n, _)| n == name))
    });
    assert!(all_connected, "the services connect to NATS: {:?}", users());
    for (name, user) in users() {
        if ["gateway", "matchmaker", "orchestrator"].contains(&name.as_str()) {
            assert_eq!(user, name, "{name} connects as its own user, not as the operator");
        }
    }

    // No credentials: the operator, as the `nats` CLI connects.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let operator = UserClient::connect(&format!("nats://127.0.0.1:{nats_port}"), None)
            .await
            .expect("a client without credentials connects");
        let js = async_nats::jetstream::new(operator.client.clone());
        js.get_key_value("nodes").await.expect("and reads `nodes`");
        assert!(
            users().iter().any(|(_, user)| user == "operator"),
            "a client without credentials is the operator: {:?}",
            users()
        );
    });

    let status = mmctl.interrupt(Duration::from_secs(30)).expect("mmctl stops on Ctrl-C");
    assert!(status.success(), "{status}");
}

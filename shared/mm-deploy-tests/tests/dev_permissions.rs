//! `mmctl dev` runs nats-server with `nats/nats-server.conf` and hands each service its own
//! user: the server's connection list (`/connz?auth=1`) names each service's user; a
//! client without credentials gets in as the read-only viewer; the operator's and the
//! harness's credentials are in `.mm/operator.env` and `.mm/harness.env` (0600), which
//! `mmctl fleet` reads by itself, and which are gone when the stack stops.

use std::os::unix::fs::PermissionsExt;
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
        ("MM_DEV__DRIVER", "process".to_owned()),
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

    // No credentials: the viewer, as the `nats` CLI connects without flags.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let viewer = UserClient::connect(&format!("nats://127.0.0.1:{nats_port}"), None)
            .await
            .expect("a client without credentials connects");
        let js = async_nats::jetstream::new(viewer.client.clone());
        js.get_key_value("nodes").await.expect("and reads `nodes`");
        assert!(
            users().iter().any(|(_, user)| user == "viewer"),
            "a client without credentials is the viewer: {:?}",
            users()
        );
    });

    // The credentials files: private, one NATS_URL each, and they work.
    let data_dir = mmctl.dir().join(".mm");
    let mut harness_url = String::new();
    for (file, user) in [("operator.env", "operator"), ("harness.env", "harness")] {
        let path = data_dir.join(file);
        let mode =
            std::fs::metadata(&path).unwrap_or_else(|err| panic!("{file}: {err}")).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file} is readable by its owner only");
        let text = std::fs::read_to_string(&path).expect("readable");
        let url = text.trim().strip_prefix("NATS_URL=").unwrap_or_else(|| panic!("{file}: {text}"));
        assert!(
            url.starts_with(&format!("nats://{user}:")) && url.ends_with(&format!("@127.0.0.1:{nats_port}"))
        );
        if user == "harness" {
            harness_url = url.to_owned();
        }
    }
    // `mmctl fleet` steers as the operator with no flag: a harness (connected with
    // harness.env, in its own account) hears the control message.
    runtime.block_on(async {
        use futures_util::StreamExt;
        let (servers, credentials) = mm_shared::config::split_nats_credentials(&harness_url);
        let (user, password) = credentials.expect("harness.env has credentials");
        let harness = async_nats::ConnectOptions::with_user_and_password(user, password)
            .custom_inbox_prefix("_INBOX.harness")
            .name("harness-test")
            .connect(servers.as_str())
            .await
            .expect("the harness connects with harness.env");
        let mut control = harness.subscribe("harness.control").await.expect("subscribe");
        harness.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let fleet = std::process::Command::new(mm_testkit::project_bin("mmctl").expect("built"))
            .args(["fleet", "--listen", "200ms", "--target", "0"])
            .current_dir(mmctl.dir())
            .envs(env.iter().copied())
            .output()
            .expect("mmctl fleet runs");
        let said =
            String::from_utf8_lossy(&fleet.stdout).into_owned() + &String::from_utf8_lossy(&fleet.stderr);
        let heard = tokio::time::timeout(Duration::from_secs(5), control.next()).await;
        assert!(matches!(heard, Ok(Some(_))), "the harness did not hear mmctl fleet's control: {said}");
        assert!(fleet.status.code() != Some(2), "{said}");
        assert!(
            users().iter().any(|(name, user)| name == "harness-test" && user == "harness"),
            "harness.env's URL is the harness user's: {:?}",
            users()
        );
    });

    let status = mmctl.interrupt(Duration::from_secs(30)).expect("mmctl stops on Ctrl-C");
    assert!(status.success(), "{status}");
    assert!(!data_dir.join("operator.env").exists(), "this run's passwords go with it");
    assert!(!data_dir.join("harness.env").exists());
}

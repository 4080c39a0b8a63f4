//! `mmctl dev` end to end: the real stack comes up, a dead child is restarted, and
//! stopping mmctl (Ctrl-C, or even SIGKILL) leaves no process behind.

use std::time::Duration;

use mm_shared::probe::{http_get, wait_until};
use mm_shared::process::{descendants, is_alive, send_signal};
use mm_testkit::{ServiceProcess, free_port};

/// A `mmctl dev` on free ports.
struct Dev {
    mmctl: ServiceProcess,
    env: Vec<(String, String)>,
    gateway: String,
    matchmaker: String,
    orchestrator: String,
}

fn ports_env() -> Vec<(String, String)> {
    let local = || format!("127.0.0.1:{}", free_port());
    vec![
        ("MM_DEV__NATS_PORT".into(), free_port().to_string()),
        ("MM_DEV__NATS_MONITOR_PORT".into(), free_port().to_string()),
        ("MM_DEV__REDIS_PORT".into(), free_port().to_string()),
        ("MM_DEV__STOP_TIMEOUT".into(), "5s".into()),
        // These tests are about supervision; the Podman journey is the test below.
        ("MM_DEV__DRIVER".into(), "process".into()),
        ("MM_GATEWAY__LISTEN".into(), local()),
        ("MM_MATCHMAKER__ADMIN_LISTEN".into(), local()),
        ("MM_ORCHESTRATOR__ADMIN_LISTEN".into(), local()),
        ("MM_HARNESS__ADMIN_LISTEN".into(), local()),
    ]
}

fn lookup<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).expect("key set")
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl Dev {
    fn start() -> Self {
        Self::start_with(&["dev"], Vec::new())
    }

    /// `mmctl <args>` with `extra` environment on top of the free ports.
    fn start_with(args: &[&str], extra: Vec<(String, String)>) -> Self {
        let mut env = ports_env();
        env.retain(|(key, _)| !extra.iter().any(|(over, _)| over == key));
        env.extend(extra);
        let mmctl = ServiceProcess::start("mmctl", args, &borrowed(&env)).expect("mmctl starts");
        let mut dev = Dev {
            gateway: lookup(&env, "MM_GATEWAY__LISTEN").to_owned(),
            matchmaker: lookup(&env, "MM_MATCHMAKER__ADMIN_LISTEN").to_owned(),
            orchestrator: lookup(&env, "MM_ORCHESTRATOR__ADMIN_LISTEN").to_owned(),
            mmctl,
            env,
        };
        let log = dev.mmctl.dir().join("mmctl.log");
        let up = dev.mmctl.process().wait_ready(Duration::from_secs(100), || {
            std::fs::read_to_string(&log).is_ok_and(|log| log.contains("the backend is up"))
        });
        up.unwrap_or_else(|err| panic!("the stack did not come up: {err}"));
        dev
    }

    /// `mmctl status` against this stack.
    fn status(&self) -> (bool, String) {
        let binary = mm_testkit::project_bin("mmctl").expect("built");
        let output = std::process::Command::new(binary)
            .arg("status")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("runs");
        (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The stack's processes: (pid, name) of every descendant of mmctl.
    fn children(&self) -> Vec<(u32, String)> {
        descendants(self.mmctl.pid()).into_iter().map(|pid| (pid, process_name(pid))).collect()
    }
}

fn process_name(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}

fn healthy(addr: &str) -> bool {
    http_get(addr, "/healthz", Duration::from_secs(2)).is_ok_and(|answer| answer.status == 200)
}

/// Within 30 s: the children shut down gracefully (the death signal is SIGTERM), which
/// takes a while on a busy machine.
fn all_gone(pids: &[u32]) -> bool {
    wait_until(Duration::from_secs(30), Duration::from_millis(50), || pids.iter().all(|pid| !is_alive(*pid)))
}

const STACK: [&str; 5] = ["nats-server", "redis-server", "matchmaker", "orchestrator", "gateway"];

#[test]
fn dev_runs_the_stack_and_ctrl_c_leaves_nothing() {
    let mut dev = Dev::start();
    let children = dev.children();
    let mut names: Vec<&str> = children.iter().map(|(_, name)| name.as_str()).collect();
    names.sort_unstable();
    let mut expected = STACK.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "mmctl dev runs exactly the stack");
    for addr in [&dev.gateway, &dev.matchmaker, &dev.orchestrator] {
        assert!(healthy(addr), "{addr} is healthy");
    }
    let (ok, table) = dev.status();
    assert!(ok, "mmctl status is happy with a running stack:\n{table}");
    assert!(table.contains("matchmaker") && table.contains("redis: PONG"), "{table}");
    let log = dev.mmctl.log();
    for prefix in ["nats         | ", "redis        | ", "matchmaker   | ", "gateway      | "] {
        assert!(log.contains(prefix), "log lines are prefixed by service ({prefix:?}):\n{log}");
    }

    let status = dev.mmctl.interrupt(Duration::from_secs(30)).expect("mmctl stops on Ctrl-C");
    assert!(status.success(), "{status}");
    let pids: Vec<u32> = children.iter().map(|(pid, _)| *pid).collect();
    assert!(all_gone(&pids), "left behind: {:?}", dev.children());
    let (ok, table) = dev.status();
    assert!(!ok, "mmctl status notices the stack is gone:\n{table}");
}

#[test]
fn dev_cluster_runs_three_nats_servers_with_replicated_buckets_and_rides_out_losing_one() {
    // Three servers on consecutive ports from a free base (the port check refuses taken ones).
    let base = |key: &str| (key.to_owned(), free_port().saturating_sub(3).to_string());
    let mut extra =
        vec![base("MM_DEV__NATS_PORT"), base("MM_DEV__NATS_MONITOR_PORT"), base("MM_DEV__NATS_ROUTE_PORT")];
    // A new cluster elects its JetStream meta leader once all three servers have met, which
    // takes more than the default 30 s when the whole test suite loads both cores.
    extra.push(("MM_DEV__READY_TIMEOUT".to_owned(), "90s".to_owned()));
    let mut dev = Dev::start_with(&["dev", "--cluster"], extra);
    let servers: Vec<u32> =
        dev.children().into_iter().filter(|(_, name)| name == "nats-server").map(|(pid, _)| pid).collect();
    assert_eq!(servers.len(), 3, "three nats-servers: {:?}", dev.children());
    let harness_env = std::fs::read_to_string(dev.mmctl.dir().join(".mm/harness.env")).expect("harness.env");
    assert_eq!(harness_env.matches("nats://harness:").count(), 3, "every server in harness.env");
    let monitor = format!("127.0.0.1:{}", lookup(&dev.env, "MM_DEV__NATS_MONITOR_PORT"));
    let replicas = |bucket: &str| -> Option<u64> {
        let answer =
            http_get(&monitor, "/jsz?accounts=true&streams=true&config=true", Duration::from_secs(2)).ok()?;
        let jsz: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|account| account["stream_detail"].as_array())
            .flatten()
            .find_map(|stream| {
                (stream["name"] == format!("KV_{bucket}"))
                    .then(|| stream["config"]["num_replicas"].as_u64())
                    .flatten()
            })
    };
    for bucket in ["servers", "nodes", "secrets"] {
        let three =
            wait_until(Duration::from_secs(20), Duration::from_millis(100), || replicas(bucket) == Some(3));
        assert!(three, "KV {bucket} on 3 replicas: {:?}", replicas(bucket));
    }

    // One server dies: the services stay up (and mmctl starts it again).
    send_signal(servers[1], libc::SIGKILL).expect("kill -9");
    let fine = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let restarted = dev.children().iter().filter(|(_, name)| name == "nats-server").count() == 3;
        restarted && [&dev.gateway, &dev.matchmaker, &dev.orchestrator].iter().all(|addr| healthy(addr))
    });
    assert!(fine, "the stack rides out a nats-server's death; log:\n{}", dev.mmctl.log());
    let status = dev.mmctl.interrupt(Duration::from_secs(30)).expect("stops");
    assert!(status.success());
}

#[test]
fn a_child_that_dies_is_restarted() {
    let mut dev = Dev::start();
    let (victim, _) =
        dev.children().into_iter().find(|(_, name)| name == "matchmaker").expect("matchmaker runs");
    send_signal(victim, libc::SIGKILL).expect("kill -9");
    let back = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let again = dev.children().into_iter().any(|(pid, name)| name == "matchmaker" && pid != victim);
        again && healthy(&dev.matchmaker)
    });
    assert!(back, "matchmaker was not restarted; log:\n{}", dev.mmctl.log());
    assert!(dev.mmctl.log().contains("matchmaker died after"), "the death is reported");
    let status = dev.mmctl.interrupt(Duration::from_secs(30)).expect("stops");
    assert!(status.success());
}

#[test]
fn killing_mmctl_takes_its_children_down() {
    let mut dev = Dev::start();
    let pids: Vec<u32> = dev.children().into_iter().map(|(pid, _)| pid).collect();
    assert_eq!(pids.len(), STACK.len());
    dev.mmctl.process().stop_with(libc::SIGKILL, Duration::from_secs(5));
    assert!(all_gone(&pids), "children outlived a SIGKILLed mmctl");
}

#[test]
fn a_taken_port_is_a_clear_error_and_starts_nothing() {
    let env = ports_env();
    let gateway = lookup(&env, "MM_GATEWAY__LISTEN").to_owned();
    let _squatter = std::net::TcpListener::bind(&gateway).expect("bind the gateway's port first");
    let mut mmctl = ServiceProcess::start("mmctl", &["dev"], &borrowed(&env)).expect("starts");
    let exited =
        wait_until(Duration::from_secs(20), Duration::from_millis(50), || mmctl.process().exited().is_some());
    assert!(exited, "mmctl must give up at once");
    let status = mmctl.process().exited().expect("exited");
    assert_eq!(status.code(), Some(1));
    let log = mmctl.log();
    assert!(log.contains("already in use") && log.contains("gateway.listen"), "{log}");
    assert!(descendants(mmctl.pid()).is_empty());
}

#[test]
fn ctrl_c_while_waiting_for_a_tier_stops_at_once() {
    // nats-server cannot read this config, so the first tier never gets ready and mmctl
    // would wait the whole ready timeout for it.
    let conf = std::env::temp_dir().join(format!("mmctl-dev-broken-{}.conf", std::process::id()));
    std::fs::write(&conf, "this is { not a nats config\n").expect("config written");
    let mut env = ports_env();
    env.push(("MM_DEV__NATS_CONFIG".into(), conf.display().to_string()));
    env.push(("MM_DEV__READY_TIMEOUT".into(), "60s".into()));
    let mut mmctl = ServiceProcess::start("mmctl", &["dev"], &borrowed(&env)).expect("starts");
    let log = mmctl.dir().join("mmctl.log");
    let waiting = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        std::fs::read_to_string(&log).is_ok_and(|log| log.contains("nats died after"))
    });
    assert!(waiting, "nats should fail to start:\n{}", mmctl.log());
    let asked = std::time::Instant::now();
    let status = mmctl.interrupt(Duration::from_secs(15));
    let _ = std::fs::remove_file(&conf);
    assert!(status.is_some(), "mmctl did not stop within 15 s of Ctrl-C:\n{}", mmctl.log());
    assert!(asked.elapsed() < Duration::from_secs(5), "took {:?}:\n{}", asked.elapsed(), mmctl.log());
    assert!(descendants(mmctl.pid()).is_empty());
}

/// Removes a node's containers and the pause process when the test ends, however it ends.
struct PodmanCleanup<'a> {
    user: &'a mm_rootless::PodmanUser,
    node: String,
}

impl Drop for PodmanCleanup<'_> {
    fn drop(&mut self) {
        let _ = self.user.remove_containers(&self.node);
        self.user.end_pause_process();
    }
}

/// Runs `podman <args>` as the project's Podman user; its stdout.
fn podman(user: &mm_rootless::PodmanUser, args: &[&str]) -> String {
    user.podman(args).unwrap_or_else(|err| panic!("{err}"))
}

/// The whole point of the project, from a user's seat: `mmctl dev` on a host with Podman
/// runs each match's game server as a labelled container of the project's rootless Podman
/// (a service mmctl starts), and Ctrl-C leaves no container, no service and no process of
/// that user. (`.ci/nextest.toml` runs the tests that use the project user one at a time.)
#[test]
fn dev_runs_matches_in_rootless_podman_containers() {
    let user = mm_rootless::PodmanUser::detect().unwrap_or_else(|problems| {
        panic!("rootless Podman cannot run here ({problems}): run `just setup` (as root)")
    });
    let pid = std::process::id();
    let node = format!("mmctl-test-{pid}");
    let socket = user.runtime_dir().join("podman").join(format!("mmctl-test-{pid}.sock"));
    // Dropped last: after mmctl, whatever happened to it.
    let _cleanup = PodmanCleanup { user: &user, node: node.clone() };
    let mut env = ports_env();
    env.retain(|(key, _)| key != "MM_DEV__DRIVER");
    env.extend([
        ("MM_DEV__DRIVER".to_owned(), "podman".to_owned()),
        ("MM_DEV__PODMAN_SOCKET".to_owned(), socket.display().to_string()),
        ("MM_ORCHESTRATOR__NODE".to_owned(), node.clone()),
        ("MM_ORCHESTRATOR__GAME__DURATION".to_owned(), "20s".to_owned()),
        ("MM_DEV__READY_TIMEOUT".to_owned(), "60s".to_owned()),
    ]);
    let mut mmctl = ServiceProcess::start("mmctl", &["dev"], &borrowed(&env)).expect("mmctl starts");
    let log = mmctl.dir().join("mmctl.log");
    let up = mmctl.process().wait_ready(Duration::from_secs(120), || {
        std::fs::read_to_string(&log).is_ok_and(|log| log.contains("the backend is up"))
    });
    up.unwrap_or_else(|err| panic!("the stack did not come up: {err}"));
    let said = mmctl.log();
    assert!(
        said.contains("game servers are rootless Podman containers of user"),
        "the banner says so:\n{said}"
    );
    assert!(
        descendants(mmctl.pid()).iter().any(|pid| process_name(*pid) == "podman"),
        "mmctl runs the Podman service itself"
    );

    // Ten players queue through the gateway and are matched.
    let gateway: std::net::SocketAddr = lookup(&env, "MM_GATEWAY__LISTEN").parse().expect("address");
    let call = |method: &str, path: &str, token: Option<&str>, body: Option<&serde_json::Value>| {
        mm_deploy_tests::http::call(gateway, method, path, token, body, Duration::from_secs(30))
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
    };
    let mut players = Vec::new();
    for i in 0..10 {
        let body = serde_json::json!({"id": format!("podman-{pid}-{i}"), "password": "pw"});
        let (status, login) = call("POST", "/login", None, Some(&body));
        assert_eq!(status, 200, "{login}");
        let token = login["token"].as_str().expect("token").to_owned();
        let (status, joined) = call("POST", "/matchmaking/join", Some(&token), None);
        assert_eq!(status, 200, "{joined}");
        players.push((token, joined["ticketId"].as_str().expect("ticket").to_owned()));
    }
    let (token, ticket) = &players[0];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let matched = loop {
        let (status, view) =
            call("GET", &format!("/matchmaking/status?ticketId={ticket}&waitMs=10000"), Some(token), None);
        assert_eq!(status, 200, "{view}");
        if view["status"] == "matched" {
            break view;
        }
        assert!(std::time::Instant::now() < deadline, "not matched: {view}\n{}", mmctl.log());
    };
    let game_id = matched["server"]["gameId"].as_str().expect("gameId").to_owned();
    let url = matched["server"]["url"].as_str().expect("url").to_owned();

    // Its game server is a container, labelled with the game and the node.
    let socket_url = format!("unix://{}", socket.display());
    let listed = podman(
        &user,
        &[
            "--url",
            &socket_url,
            "ps",
            "--filter",
            &format!("label=mm.game-id={game_id}"),
            "--format",
            "{{.Names}} {{.Labels}}",
        ],
    );
    let containers: Vec<&str> = listed.lines().collect();
    assert_eq!(containers.len(), 1, "one running container for game {game_id}: {listed}");
    assert!(containers[0].contains(&format!("mm.node:{node}")), "{listed}");

    // And it plays: an echo through the gateway's proxy.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut socket, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(format!("{url}?token={token}")),
        )
        .await
        .expect("connects in time")
        .expect("connects through the gateway");
        socket.send(Message::text("hello container")).await.expect("send");
        let echo =
            tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("an echo in time");
        assert_eq!(echo.expect("open").expect("a frame"), Message::text("hello container"));
    });

    // Ctrl-C mid-game: nothing of the stack, of Podman or of the project user remains.
    let children: Vec<u32> = descendants(mmctl.pid());
    let status = mmctl.interrupt(Duration::from_secs(60)).expect("mmctl stops on Ctrl-C");
    assert!(status.success(), "{status}\n{}", mmctl.log());
    assert!(all_gone(&children), "left behind: {children:?}");
    let left = mm_rootless::processes_of(user.account.uid);
    assert!(
        left.is_empty() || !user.is_switched(),
        "processes of {} remain: {:?}",
        user.describe(),
        left.iter().map(|pid| (*pid, process_name(*pid))).collect::<Vec<_>>()
    );
    assert!(!socket.exists(), "the service's socket is gone");
    let said = mmctl.log();
    assert!(said.contains("game-server containers: 1 started, 1 removed, 0 left"), "{said}");
    let remaining =
        podman(&user, &["ps", "-a", "--filter", &format!("label=mm.node={node}"), "--format", "{{.Names}}"]);
    user.end_pause_process();
    assert!(remaining.is_empty(), "containers left: {remaining}");
}

//! `compose.yaml`: podman-compose accepts it and it keeps the deployment's promises
//! (limits, worker threads, health checks, no privilege, fixed addresses for the static
//! binaries); and one match runs through the real compose stack, brought up and down with
//! `just up` / `just down` as a user does, from the images `just images` makes without a
//! registry.
//!
//! `just up` starts the rootless Podman service of the project user on a socket where
//! nothing answered, and `just down` stops it: the test checks both. Grafana needs a
//! registry and is left out (its profile is not enabled).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mm_deploy_tests::compose::{ComposeProject, podman};
use mm_deploy_tests::{http, repo, run_bounded};
use mm_shared::probe::{http_get, wait_until};
use mm_testkit::free_port;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The images compose runs that `just images` builds.
const IMAGES: [&str; 8] =
    ["gateway", "matchmaker", "orchestrator", "harness", "game-server", "nats-server", "redis", "prometheus"];

/// The project's own services and the admin port each health-checks.
const SERVICES: [(&str, u16); 4] =
    [("gateway", 8080), ("matchmaker", 9101), ("orchestrator", 9102), ("harness", 9464)];

/// `podman-compose config` as JSON (through PyYAML, which podman-compose itself needs).
fn config(profiles: &[&str]) -> Value {
    let mut args = Vec::new();
    for profile in profiles {
        args.extend(["--profile", profile]);
    }
    args.push("config");
    let project = ComposeProject::new("mm-config-check", Vec::new());
    let config = project.run(&args, Duration::from_secs(60));
    assert!(config.success(), "podman-compose rejects compose.yaml:\n{}", config.output());
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, &config.stdout).expect("written");
    let json = run_bounded(
        Command::new("python3")
            .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)"])
            .arg(&file),
        Duration::from_secs(30),
    );
    assert!(json.success(), "{}", json.output());
    serde_json::from_str(&json.stdout).expect("JSON")
}

fn env_of(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(map) => {
            map.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned())).collect()
        }
        Value::Array(list) => list
            .iter()
            .filter_map(|item| item.as_str()?.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect(),
        _ => BTreeMap::new(),
    }
}

#[test]
fn compose_file_is_accepted_and_keeps_its_promises() {
    let config = config(&["grafana"]);
    let services = config["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    let expected = BTreeSet::from([
        "nats",
        "redis",
        "matchmaker",
        "orchestrator",
        "gateway",
        "harness",
        "prometheus",
        "grafana",
    ]);
    assert_eq!(names, expected);

    for (name, service) in services {
        assert_ne!(service["privileged"], true, "{name} must not be privileged");
        assert!(service.get("cap_add").is_none(), "{name} adds capabilities");
        assert_eq!(service["restart"], "unless-stopped", "{name}: restart policy");
        let limits = &service["deploy"]["resources"]["limits"];
        assert!(limits["cpus"].is_string() || limits["cpus"].is_number(), "{name}: a CPU limit");
        assert!(limits["memory"].is_string(), "{name}: a memory limit");
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let volume = volume.as_str().unwrap_or_default();
            if let Some(source) = volume.strip_prefix("./") {
                let path = source.split(':').next().unwrap_or_default();
                assert!(repo().join(path).exists(), "{name} mounts {path}, which does not exist");
            }
        }
    }
    let cpus = |name: &str| -> String {
        let value = &services[name]["deploy"]["resources"]["limits"]["cpus"];
        value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string())
    };
    let whole = |cpus: String| -> String { cpus.trim_end_matches(".0").to_owned() };

    // The project's services: tokio sized to the CPU limit, a health check through the
    // binary itself (the images have no shell), their own NATS user.
    for (name, port) in SERVICES {
        let service = &services[name];
        let env = env_of(service);
        assert_eq!(env.get("TOKIO_WORKER_THREADS"), Some(&whole(cpus(name))), "{name}: workers = CPU limit");
        let test: Vec<&str> = service["healthcheck"]["test"]
            .as_array()
            .expect("a health check")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(test, ["CMD", "/app", "--healthcheck", &format!("127.0.0.1:{port}")], "{name}");
        assert_eq!(env.get("MM_NATS__USER").map(String::as_str), Some(name), "{name}: its own NATS user");
        assert!(env.get("MM_NATS__PASSWORD").is_some_and(|pw| !pw.is_empty()), "{name}: a password");
        let nats = if name == "harness" { "nats://10.213.7.130:4222" } else { "nats://10.213.7.2:4222" };
        assert_eq!(env.get("MM_NATS__URL").map(String::as_str), Some(nats), "{name}");
        assert!(service["image"].as_str().is_some_and(|image| image.starts_with("localhost/mm/")), "{name}");
    }
    // nats-server gets every user's password, and `just up` makes one for each.
    let nats_env = env_of(&services["nats"]);
    let compose_env = std::fs::read_to_string(repo().join("podman/compose-env")).expect("podman/compose-env");
    for user in mm_shared::nats::USERS {
        let key = mm_shared::nats::password_env(user);
        assert!(nats_env.get(&key).is_some_and(|pw| !pw.is_empty()), "nats: {key}");
        let generated = compose_env.lines().any(|line| {
            line.trim_start().starts_with("for name in ")
                && line.contains(&format!("NATS_{}", user.to_uppercase()))
        });
        assert!(generated, "podman/compose-env makes no password for {user}");
    }
    assert!(
        compose_env
            .lines()
            .any(|line| line.trim_start().starts_with("for name in ") && line.contains(" REDIS")),
        "podman/compose-env makes no Redis password"
    );
    for name in ["nats", "prometheus"] {
        assert_eq!(env_of(&services[name]).get("GOMAXPROCS"), Some(&whole(cpus(name))), "{name}: GOMAXPROCS");
    }
    // Static binaries get addresses: nats, redis and the gateway have fixed ones.
    let address = |name: &str, network: &str| {
        services[name]["networks"][network]["ipv4_address"].as_str().unwrap_or("").to_owned()
    };
    assert_eq!(address("nats", "mm"), "10.213.7.2");
    assert_eq!(address("nats", "load"), "10.213.7.130");
    assert_eq!(address("redis", "data"), "10.213.7.195");
    assert_eq!(address("gateway", "mm"), "10.213.7.4");
    assert_eq!(address("gateway", "load"), "10.213.7.132");
    assert_eq!(
        env_of(&services["matchmaker"]).get("MM_REDIS__URL").map(String::as_str),
        Some("redis://:dev-redis@10.213.7.195:6379/"),
        "Redis wants a password"
    );
    let redis_command: Vec<&str> =
        services["redis"]["command"].as_array().expect("command").iter().filter_map(Value::as_str).collect();
    assert!(redis_command.windows(2).any(|pair| pair == ["--requirepass", "dev-redis"]), "{redis_command:?}");
    assert!(
        redis_command.windows(2).any(|pair| pair == ["--maxmemory-policy", "noeviction"]),
        "{redis_command:?}"
    );
    for (network, subnet, range) in [
        ("mm", "10.213.7.0/25", "10.213.7.64/26"),
        ("load", "10.213.7.128/26", "10.213.7.160/27"),
        ("data", "10.213.7.192/26", "10.213.7.224/27"),
    ] {
        let ipam = &config["networks"][network]["ipam"]["config"][0];
        assert_eq!(ipam["subnet"], subnet, "{network}");
        assert_eq!(ipam["ip_range"], range, "{network}: dynamic addresses stay clear of the fixed ones");
    }
    // Each container reaches only what it needs: Redis only the matchmakers, the harness
    // only the gateway and NATS, Prometheus everything but Redis.
    let networks_of = |name: &str| -> BTreeSet<String> {
        match &services[name]["networks"] {
            Value::Object(map) => map.keys().cloned().collect(),
            Value::Array(list) => list.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            _ => BTreeSet::new(),
        }
    };
    for (name, expected) in [
        ("redis", &["data"][..]),
        ("matchmaker", &["data", "mm"][..]),
        ("harness", &["load"][..]),
        ("prometheus", &["load", "mm"][..]),
        ("orchestrator", &["mm"][..]),
        ("gateway", &["load", "mm"][..]),
        ("nats", &["load", "mm"][..]),
    ] {
        let expected: BTreeSet<String> = expected.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(networks_of(name), expected, "{name}'s networks");
    }
    // Matchmakers scale: replicas, and no fixed address.
    let matchmaker = &services["matchmaker"];
    assert_eq!(matchmaker["deploy"]["mode"], "replicated");
    assert!(
        matchmaker["deploy"]["replicas"].to_string().trim_matches('"').parse::<u32>().is_ok_and(|n| n >= 2)
    );
    assert!(matchmaker["networks"].get("mm").and_then(|mm| mm.get("ipv4_address")).is_none());
    // The orchestrator drives the mounted Podman socket and hands out reachable addresses.
    let orchestrator = &services["orchestrator"];
    let env = env_of(orchestrator);
    assert_eq!(env.get("MM_ORCHESTRATOR__DRIVER").map(String::as_str), Some("podman"));
    let socket = env.get("MM_ORCHESTRATOR__PODMAN__SOCKET").cloned().unwrap_or_default();
    let mounts: Vec<&str> =
        orchestrator["volumes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(
        mounts.iter().any(|mount| mount.ends_with(&format!(":{socket}"))),
        "socket mounted at {socket}: {mounts:?}"
    );
    // Game servers are published and reached on the network's host side, never on the
    // host's external address; players get the gateway's address on this network.
    assert_eq!(env.get("MM_ORCHESTRATOR__ADVERTISE_IP").map(String::as_str), Some("10.213.7.1"));
    assert_eq!(env.get("MM_ORCHESTRATOR__HOST_IP").map(String::as_str), Some("10.213.7.1"));
    assert_eq!(env.get("MM_ORCHESTRATOR__PUBLIC_URL").map(String::as_str), Some("ws://10.213.7.132:8080"));
    assert_eq!(
        env_of(&services["harness"]).get("MM_HARNESS__GATEWAY").map(String::as_str),
        Some("http://10.213.7.132:8080")
    );
    for (name, service) in services {
        for port in service["ports"].as_array().into_iter().flatten() {
            let port = port.as_str().unwrap_or_default();
            assert!(port.starts_with("127.0.0.1:"), "{name} publishes {port} beyond loopback by default");
        }
    }
    // Named volumes for every stateful server.
    let volumes: BTreeSet<&str> =
        config["volumes"].as_object().expect("volumes").keys().map(String::as_str).collect();
    for volume in ["nats-data", "redis-data", "prometheus-data", "grafana-data"] {
        assert!(volumes.contains(volume), "named volume {volume}");
    }

    // Grafana only with its profile (it needs a registry).
    let default = config_services(&[]);
    assert!(!default.contains("grafana") && default.contains("prometheus"), "{default:?}");
}

fn config_services(profiles: &[&str]) -> BTreeSet<String> {
    config(profiles)["services"].as_object().expect("services").keys().cloned().collect()
}

fn require_images() {
    for image in IMAGES {
        let exists = podman(&["image", "exists", &format!("localhost/mm/{image}:latest")]);
        assert!(
            exists.success(),
            "image localhost/mm/{image}:latest is missing: run `just images` (as `just test` does)"
        );
    }
}

/// `count` consecutive ports, all free on every address now.
fn free_port_range(count: u16) -> (u16, u16) {
    let start = 40000 + (std::process::id() % 400) as u16 * 50;
    (0..100)
        .map(|step| start.wrapping_add(step * 97) % 20000 + 40000)
        .find(|base| (0..count).all(|i| TcpListener::bind(("0.0.0.0", base + i)).is_ok()))
        .map(|base| (base, base + count - 1))
        .expect("a free port range")
}

/// The project user's game servers of `game_id`, through the socket `just up` serves.
fn game_containers(user: &mm_rootless::PodmanUser, socket: &str, game_id: &str) -> Vec<String> {
    let label = format!("label=mm.game-id={game_id}");
    let ps = user
        .podman(&["--url", socket, "ps", "-a", "--filter", &label, "--format", "{{.Names}} {{.Labels}}"])
        .unwrap_or_else(|err| panic!("{err}"));
    ps.lines().map(str::to_owned).filter(|line| !line.is_empty()).collect()
}

/// Stops the rootless Podman services an earlier, killed run of this test left (`just up`
/// runs them in a session of their own, so they outlive a killed test).
fn reap_stale_services(user: &mm_rootless::PodmanUser) {
    for pid in mm_rootless::processes_of(user.account.uid) {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let test_pid = cmdline
            .split("compose-test-")
            .nth(1)
            .and_then(|rest| rest.split('.').next())
            .and_then(|digits| digits.parse::<u32>().ok());
        if let Some(test_pid) = test_pid
            && cmdline.contains("system service")
            && !mm_shared::process::is_alive(test_pid)
        {
            eprintln!("stopping the Podman service (pid {pid}) an earlier run left");
            let _ = mm_shared::process::send_signal(pid, libc::SIGTERM);
        }
    }
}

#[test]
fn one_match_through_just_up_and_down() {
    require_images();
    ComposeProject::reap_stale("mmtest", "compose-test-");
    let user = mm_rootless::PodmanUser::detect()
        .unwrap_or_else(|problems| panic!("rootless Podman cannot run here ({problems}): run `just setup`"));
    reap_stale_services(&user);
    let started = Instant::now();
    let pid = std::process::id();
    // Where nothing answers yet: `just up` starts the service there.
    let socket_path = user.runtime_dir().join("podman").join(format!("compose-test-{pid}.sock"));
    assert!(!mm_rootless::ping(&socket_path, Duration::from_millis(200)));
    let socket = format!("unix://{}", socket_path.display());
    let net = format!("10.213.{}", 100 + pid % 150);
    let (gateway_port, nats_port, monitor_port, prometheus_port) =
        (free_port(), free_port(), free_port(), free_port());
    let (game_low, game_high) = free_port_range(20);
    let node = format!("compose-test-{pid}");
    let env: Vec<(String, String)> = [
        ("MM_NET", net.clone()),
        ("MM_PODMAN_SOCKET", socket_path.display().to_string()),
        ("MM_GATEWAY_PORT", gateway_port.to_string()),
        ("MM_NATS_PORT", nats_port.to_string()),
        ("MM_NATS_MONITOR_PORT", monitor_port.to_string()),
        ("MM_PROMETHEUS_PORT", prometheus_port.to_string()),
        ("MM_GAME_PORTS", format!("{game_low}-{game_high}")),
        ("MM_NODE", node.clone()),
        ("MM_MATCHMAKERS", "2".to_owned()),
        // The test's ten players are the only ones: one match, predictably.
        ("MM_HARNESS_PLAYERS", "0".to_owned()),
        ("MM_GAME_DURATION", "4s".to_owned()),
        ("MM_NATS_GATEWAY_PASSWORD", format!("gw{pid}")),
        ("MM_NATS_MATCHMAKER_PASSWORD", format!("mm{pid}")),
        ("MM_NATS_ORCHESTRATOR_PASSWORD", format!("or{pid}")),
        ("MM_NATS_HARNESS_PASSWORD", format!("ha{pid}")),
        ("MM_NATS_OPERATOR_PASSWORD", format!("op{pid}")),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();
    let mut project = ComposeProject::new(&format!("mmtest{pid}"), env);
    let up = project.just_up(Duration::from_secs(300));
    assert!(up.success(), "just up failed:\n{}", up.output());
    let up_took = started.elapsed();
    assert!(mm_rootless::ping(&socket_path, Duration::from_secs(2)), "just up serves Podman on {socket}");
    assert!(up.stderr.contains("started a rootless Podman service"), "{}", up.output());

    let gateway: SocketAddr = ([127, 0, 0, 1], gateway_port).into();
    let healthy = wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
        http_get(&gateway.to_string(), "/healthz", Duration::from_secs(2))
            .is_ok_and(|answer| answer.status == 200)
    });
    assert!(healthy, "the gateway did not become healthy");

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    // The orchestrator node registered; read as the viewer (no credentials), as `nats kv get nodes` does.
    runtime.block_on(async {
        let viewer =
            async_nats::connect(format!("nats://127.0.0.1:{nats_port}")).await.expect("NATS, no credentials");
        let js = async_nats::jetstream::new(viewer);
        let registered = async {
            loop {
                if let Ok(nodes) = js.get_key_value("nodes").await
                    && let Ok(Some(_)) = nodes.get(&node).await
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), registered)
            .await
            .expect("the orchestrator node registers");
    });

    // Each service connects to NATS as its own user (nats-server's connection list).
    let monitor = format!("127.0.0.1:{monitor_port}");
    let users = || -> Vec<String> {
        let connz =
            http_get(&monitor, "/connz?auth=1", Duration::from_secs(5)).map(|a| a.body).unwrap_or_default();
        let connz: Value = serde_json::from_str(&connz).unwrap_or_default();
        let mut users: Vec<String> = connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}={}",
                    c["name"].as_str().unwrap_or(""),
                    c["authorized_user"].as_str().unwrap_or("")
                )
            })
            .collect();
        users.sort();
        users
    };
    let expected = [
        "gateway=gateway",
        "harness=harness",
        "matchmaker=matchmaker",
        "matchmaker=matchmaker",
        "orchestrator=orchestrator",
    ];
    let own_users = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        let users = users();
        users
            .iter()
            .filter(|user| !user.ends_with("=operator") && !user.ends_with("=viewer"))
            .eq(expected.iter())
    });
    assert!(own_users, "each service connects as its own user: {:?}", users());

    // Ten players log in and queue, once the matchmaker's services answer (the gateway
    // says 503 until then).
    let call = |method: &str, path: &str, token: Option<&str>, body: Option<&Value>| {
        http::call(gateway, method, path, token, body, Duration::from_secs(30))
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
    };
    let serving = wait_until(Duration::from_secs(60), Duration::from_millis(250), || {
        call("GET", "/store/offers", None, None).0 == 200
    });
    assert!(serving, "the matchmaker's services did not come up:\n{}", project.logs());
    let mut players = Vec::new();
    for i in 0..10 {
        let id = format!("compose-{pid}-{i}");
        let (status, login) = call("POST", "/login", None, Some(&json!({"id": id, "password": "pw"})));
        assert_eq!(status, 200, "login: {login}");
        let token = login["token"].as_str().expect("token").to_owned();
        let (status, joined) = call("POST", "/matchmaking/join", Some(&token), None);
        assert_eq!(status, 200, "join: {joined}");
        players.push((token, joined["ticketId"].as_str().expect("ticketId").to_owned()));
    }
    let mut servers = Vec::new();
    for (token, ticket) in &players {
        let deadline = Instant::now() + Duration::from_secs(90);
        let matched = loop {
            let (status, view) = call(
                "GET",
                &format!("/matchmaking/status?ticketId={ticket}&waitMs=10000"),
                Some(token),
                None,
            );
            assert_eq!(status, 200, "status: {view}");
            if view["status"] == "matched" {
                break view;
            }
            assert_eq!(view["status"], "searching", "{view}");
            assert!(Instant::now() < deadline, "not matched within 90 s:\n{}", project.logs());
        };
        servers.push(matched["server"].clone());
    }
    let game_id = servers[0]["gameId"].as_str().expect("gameId").to_owned();
    let url = servers[0]["url"].as_str().expect("url").to_owned();
    assert!(
        servers.iter().all(|server| server["gameId"] == game_id.as_str()),
        "one match of ten: {servers:?}"
    );
    assert!(url.starts_with(&format!("ws://{net}.132:8080/game/")), "the gateway on the load network: {url}");

    // The orchestrator started the match's game server on the project user's rootless
    // Podman, labelled, published on the network's host side only.
    let containers = game_containers(&user, &socket, &game_id);
    assert_eq!(containers.len(), 1, "one container for the match: {containers:?}");
    assert!(containers[0].contains(&format!("mm.node:{node}")), "{containers:?}");

    // Every player plays through the gateway: an echo, then the game's end.
    runtime.block_on(async {
        let mut sockets = Vec::new();
        for (i, (token, _)) in players.iter().enumerate() {
            let (mut socket, _) = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::connect_async(format!("{url}?token={token}")),
            )
            .await
            .expect("connects in time")
            .unwrap_or_else(|err| panic!("player {i} connects through the gateway: {err}"));
            let text = format!("hello from {i}");
            socket.send(Message::text(text.clone())).await.expect("send");
            let echo =
                tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("an echo in time");
            assert_eq!(echo.expect("open").expect("a frame"), Message::text(text));
            sockets.push(socket);
        }
        for mut socket in sockets {
            let end = async {
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Close(frame) = message {
                        return frame.map(|frame| frame.reason.to_string());
                    }
                }
                None
            };
            let reason = tokio::time::timeout(Duration::from_secs(30), end).await.expect("the game ends");
            assert_eq!(reason.as_deref(), Some("game over"));
        }
    });
    let removed = wait_until(Duration::from_secs(30), Duration::from_millis(250), || {
        game_containers(&user, &socket, &game_id).is_empty()
    });
    assert!(
        removed,
        "the game server is removed after its game: {:?}",
        game_containers(&user, &socket, &game_id)
    );

    // Prometheus (built from this host's binary) scrapes every service, matchmaker replicas
    // found through compose DNS, and saw the match.
    let prometheus = format!("127.0.0.1:{prometheus_port}");
    let api = |path: &str| -> Value {
        http_get(&prometheus, &format!("/api/v1/{path}"), Duration::from_secs(5))
            .ok()
            .and_then(|answer| serde_json::from_str(&answer.body).ok())
            .unwrap_or(Value::Null)
    };
    let scraped = wait_until(Duration::from_secs(90), Duration::from_millis(500), || {
        let targets = api("targets");
        let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        let up: Vec<String> = active
            .iter()
            .filter(|target| target["health"] == "up")
            .map(|target| target["labels"]["job"].as_str().unwrap_or("").to_owned())
            .collect();
        let matches =
            api(&format!("query?query={}", mm_deploy_tests::url_encode("sum(mm_matchmaker_matches_total)")));
        let matched = matches["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse::<f64>().ok());
        active.len() == up.len()
            && ["gateway", "orchestrator", "harness", "prometheus"]
                .iter()
                .all(|job| up.iter().any(|u| u == job))
            && up.iter().filter(|job| *job == "matchmaker").count() == 2
            && matched.is_some_and(|n| n >= 1.0)
    });
    assert!(scraped, "Prometheus does not scrape the whole stack:\n{}", api("targets"));

    let before_down = Instant::now();
    let down = project.just_down(Duration::from_secs(240));
    assert!(down.success(), "just down failed:\n{}", down.output());
    eprintln!(
        "compose stack: just up {:.1}s, whole test {:.1}s, just down {:.1}s",
        up_took.as_secs_f64(),
        before_down.duration_since(started).as_secs_f64(),
        before_down.elapsed().as_secs_f64()
    );
    // Nothing left: no compose container, no game server, no Podman service, no process
    // of the project user.
    assert!(project.containers().is_empty(), "compose containers left: {:?}", project.containers());
    assert!(!mm_rootless::ping(&socket_path, Duration::from_millis(500)), "the Podman service still answers");
    let processes = mm_rootless::processes_of(user.account.uid);
    assert!(
        processes.is_empty() || !user.is_switched(),
        "processes of {} remain: {processes:?}",
        user.describe()
    );
    let left = user
        .podman(&["ps", "-aq", "--filter", &format!("label=mm.node={node}")])
        .unwrap_or_else(|err| panic!("{err}"));
    user.end_pause_process();
    assert!(left.trim().is_empty(), "game servers left behind: {left}");
}

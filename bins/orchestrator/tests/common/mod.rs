//! What the orchestrator's integration tests share: nodes as child processes, a NATS
//! client with the KV buckets, allocation, a player's WebSocket, and Podman checks.

#![allow(dead_code)] // each test binary uses a different part

pub mod rootless;

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::{SinkExt, StreamExt};
use mm_shared::nats::RequestError;
use mm_shared::protocol::{
    AllocateReply, AllocateRequest, NodeEntry, ReleaseReply, ReleaseRequest, ServerEntry, ServerState,
    buckets, now_ms, subjects,
};
use mm_testkit::{NatsServer, ServiceProcess, free_port};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The image `just image` builds.
pub const IMAGE: &str = "localhost/mm/game-server:latest";

/// One orchestrator node, started as a child process.
pub struct Node {
    pub process: ServiceProcess,
    pub id: String,
    pub admin: String,
}

impl Node {
    /// Starts node `id` on `nats` with `env` on top of the test defaults (3 s games,
    /// quick heartbeats), and waits until it is healthy.
    pub fn start(nats: &NatsServer, id: &str, env: &[(&str, &str)]) -> Node {
        Self::try_start(nats, id, env).expect("the orchestrator starts and becomes healthy")
    }

    /// Starts a node whose driver is expected to be unhealthy (so `/healthz` says 503):
    /// waits until it serves instead.
    pub fn start_unhealthy(nats: &NatsServer, id: &str, env: &[(&str, &str)]) -> Node {
        Self::launch(nats, id, env, false).expect("the orchestrator starts and serves")
    }

    pub fn try_start(nats: &NatsServer, id: &str, env: &[(&str, &str)]) -> mm_testkit::Result<Node> {
        Self::launch(nats, id, env, true)
    }

    fn launch(nats: &NatsServer, id: &str, env: &[(&str, &str)], healthy: bool) -> mm_testkit::Result<Node> {
        let admin = format!("127.0.0.1:{}", free_port());
        let url = nats.url();
        let mut all: Vec<(&str, &str)> = vec![
            ("MM_NATS__URL", url.as_str()),
            ("MM_ORCHESTRATOR__ADMIN_LISTEN", admin.as_str()),
            ("MM_ORCHESTRATOR__NODE", id),
            ("MM_ORCHESTRATOR__DRIVER", "process"),
            ("MM_ORCHESTRATOR__GAME__DURATION", "3s"),
            ("MM_ORCHESTRATOR__HEARTBEAT_INTERVAL", "200ms"),
            ("MM_ORCHESTRATOR__NODE_TIMEOUT", "2s"),
            ("MM_ORCHESTRATOR__RESTART__DELAY", "100ms"),
            ("RUST_LOG", "info,orchestrator=debug"),
        ];
        for (key, value) in env {
            all.retain(|(existing, _)| existing != key);
            all.push((key, value));
        }
        let mut process = ServiceProcess::start("orchestrator", &[], &all)?;
        if healthy {
            process.wait_healthy(&admin)?;
        } else {
            let log = process.dir().join("orchestrator.log");
            process.process().wait_ready(mm_testkit::READY_TIMEOUT, || {
                std::fs::read_to_string(&log).is_ok_and(|log| log.contains("serving orchestrator.allocate"))
            })?;
        }
        Ok(Node { process, id: id.to_owned(), admin })
    }

    /// The node's `/metrics` text.
    pub fn metrics(&self) -> String {
        mm_shared::probe::http_get(&self.admin, "/metrics", Duration::from_secs(5))
            .map(|a| a.body)
            .unwrap_or_default()
    }

    /// The value of one series of `/metrics` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }
}

/// The value of `series` (name with its labels, as printed) in a metrics text.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            // The recorder adds `service="orchestrator"`; match the other labels in any order.
            let wanted = series.split(['{', '}', ',']).filter(|part| !part.is_empty());
            let mut parts = name.split(['{', '}', ',']).filter(|part| !part.is_empty());
            let metric = parts.next()?;
            let labels: Vec<&str> = parts.collect();
            let mut wanted = wanted.into_iter();
            (wanted.next()? == metric && wanted.all(|label| labels.contains(&label)))
                .then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A NATS client with the two buckets the orchestrator writes.
pub struct Client {
    pub nats: async_nats::Client,
    pub servers: kv::Store,
    pub nodes: kv::Store,
}

impl Client {
    /// Connects and waits until the orchestrator created both buckets.
    pub async fn connect(nats: &NatsServer) -> Client {
        let client = async_nats::connect(nats.url()).await.expect("connect to NATS");
        let js = jetstream::new(client.clone());
        let servers = eventually(Duration::from_secs(10), "bucket servers", || async {
            js.get_key_value(buckets::SERVERS).await.ok()
        })
        .await;
        let nodes = eventually(Duration::from_secs(10), "bucket nodes", || async {
            js.get_key_value(buckets::NODES).await.ok()
        })
        .await;
        Client { nats: client, servers, nodes }
    }

    pub async fn allocate(&self, match_id: &str, players: usize) -> Result<AllocateReply, RequestError> {
        let request =
            AllocateRequest { match_id: match_id.to_owned(), player_ids: players_of(match_id, players) };
        mm_shared::nats::request_json(
            &self.nats,
            subjects::ORCHESTRATOR_ALLOCATE,
            &request,
            Duration::from_secs(15),
        )
        .await
    }

    /// Asks for a server for `match_id` with a time budget of `budget` (the request's own
    /// timeout too).
    pub async fn allocate_within(
        &self,
        match_id: &str,
        players: usize,
        budget: Duration,
    ) -> Result<AllocateReply, RequestError> {
        let request =
            AllocateRequest { match_id: match_id.to_owned(), player_ids: players_of(match_id, players) };
        mm_shared::nats::request_json(&self.nats, subjects::ORCHESTRATOR_ALLOCATE, &request, budget).await
    }

    pub async fn release(&self, match_id: &str) -> Result<ReleaseReply, RequestError> {
        let request = ReleaseRequest { match_id: match_id.to_owned() };
        mm_shared::nats::request_json(
            &self.nats,
            subjects::ORCHESTRATOR_RELEASE,
            &request,
            Duration::from_secs(5),
        )
        .await
    }

    /// Writes `entry` into KV `servers` behind every node's back.
    pub async fn plant(&self, entry: &ServerEntry) {
        let value = serde_json::to_vec(entry).expect("json");
        self.servers.put(&entry.game_id, value.into()).await.expect("KV put");
    }

    /// A server's entry, with its secret from the `secrets` bucket (the entry itself never
    /// holds it: anyone may read `servers`).
    pub async fn entry(&self, game_id: &str) -> Option<ServerEntry> {
        let bytes = self.servers.get(game_id).await.expect("KV get")?;
        let raw: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
        assert!(raw.get("secret").is_none(), "a secret in `servers`: {raw}");
        let mut entry: ServerEntry = serde_json::from_slice(&bytes).expect("a ServerEntry");
        let secrets = async_nats::jetstream::new(self.nats.clone())
            .get_key_value(mm_shared::protocol::buckets::SECRETS)
            .await
            .expect("the secrets bucket");
        if let Some(secret) = secrets.get(game_id).await.expect("KV get") {
            entry.secret = String::from_utf8_lossy(&secret).into_owned();
        }
        Some(entry)
    }

    pub async fn entries(&self) -> Vec<ServerEntry> {
        let mut keys = self.servers.keys().await.expect("KV keys");
        let mut entries = Vec::new();
        while let Some(key) = keys.next().await {
            if let Some(entry) = self.entry(&key.expect("key")).await {
                entries.push(entry);
            }
        }
        entries
    }

    /// The warm entries of `node` in KV `servers`.
    pub async fn warm_entries(&self, node: &str) -> Vec<ServerEntry> {
        self.entries()
            .await
            .into_iter()
            .filter(|entry| entry.node == node && entry.state == ServerState::Warm)
            .collect()
    }

    /// Waits (up to `within`) until `node` has `count` warm servers; their entries.
    pub async fn wait_warm(&self, node: &str, count: usize, within: Duration) -> Vec<ServerEntry> {
        eventually(within, &format!("{count} warm servers on {node}"), || async {
            let warm = self.warm_entries(node).await;
            (warm.len() == count).then_some(warm)
        })
        .await
    }

    pub async fn node(&self, id: &str) -> Option<NodeEntry> {
        let bytes = self.nodes.get(id).await.expect("KV get")?;
        Some(serde_json::from_slice(&bytes).expect("a NodeEntry"))
    }

    /// Waits until `game_id`'s entry is gone (the game ended and was cleaned up).
    pub async fn wait_gone(&self, game_id: &str, within: Duration) {
        eventually(within, &format!("entry {game_id} deleted"), || async {
            self.entry(game_id).await.is_none().then_some(())
        })
        .await;
    }
}

/// A running-looking entry of game `game_id` on `node`, for planting.
pub fn planted(game_id: &str, node: &str) -> ServerEntry {
    ServerEntry {
        game_id: game_id.to_owned(),
        match_id: format!("m-{game_id}"),
        node: node.to_owned(),
        state: ServerState::Running,
        address: "127.0.0.1:1".to_owned(),
        started_at: now_ms(),
        ends_at: now_ms() + 600_000,
        updated_at: now_ms(),
        ..ServerEntry::default()
    }
}

/// The players of a match: `<match>-p0`, `<match>-p1`, ...
pub fn players_of(match_id: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{match_id}-p{i}")).collect()
}

/// Polls `check` until it returns `Some`, or fails the test after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to a game server the way the gateway's proxy does; the HTTP status on refusal.
pub async fn connect_player(address: &str, player: &str, secret: &str) -> Result<Socket, u16> {
    let mut request =
        format!("ws://{address}/connect?player={player}").into_client_request().expect("request");
    request.headers_mut().insert("authorization", format!("Bearer {secret}").parse().expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(WsError::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("unexpected WebSocket error: {other}"),
    }
}

/// A text and a binary frame come back unchanged.
pub async fn assert_echo(socket: &mut Socket) {
    socket.send(Message::text("ping from a player")).await.expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("echo in time");
    assert_eq!(reply.expect("open").expect("frame"), Message::text("ping from a player"));
    socket.send(Message::binary(vec![7u8, 0, 255])).await.expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next()).await.expect("echo in time");
    assert_eq!(reply.expect("open").expect("frame"), Message::binary(vec![7u8, 0, 255]));
}

/// Reads until the connection ends; the close frame's code, if one came.
pub async fn wait_closed(socket: &mut Socket, within: Duration) -> Option<CloseCode> {
    let read = async {
        let mut code = None;
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(Some(frame))) => code = Some(frame.code),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        code
    };
    tokio::time::timeout(within, read).await.expect("the game server closes the socket in time")
}

/// `podman <args>`: against the service at `socket` when given (the remote client, so a
/// rootless service is reached as it is), else the local (root) storage that the tests'
/// rootful services share. Stdout, trimmed.
pub fn podman(socket: Option<&Path>, args: &[&str]) -> String {
    let output = podman_command(socket).args(args).output().expect("podman runs");
    assert!(output.status.success(), "podman {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn podman_command(socket: Option<&Path>) -> Command {
    let mut command = Command::new("podman");
    if let Some(socket) = socket {
        command.arg("--url").arg(format!("unix://{}", socket.display()));
    }
    command
}

/// Container ids labelled with this node, running or not.
pub fn containers_of(socket: Option<&Path>, node: &str) -> Vec<String> {
    podman(socket, &["ps", "-a", "-q", "--no-trunc", "--filter", &format!("label=mm.node={node}")])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Fails with what to do when `just image` has not been run.
pub fn require_image(socket: Option<&Path>) {
    let status = podman_command(socket).args(["image", "exists", IMAGE]).status().expect("podman runs");
    assert!(status.success(), "the image {IMAGE} is missing: run `just image` (as `just test` does)");
}

/// Removes every container labelled with `node` (cleanup after a failed test).
pub fn remove_containers(socket: Option<&Path>, node: &str) {
    let Ok(output) = podman_command(socket)
        .args(["ps", "-a", "-q", "--filter", &format!("label=mm.node={node}")])
        .output()
    else {
        return;
    };
    for id in String::from_utf8_lossy(&output.stdout).lines() {
        let _ = podman_command(socket).args(["rm", "-f", "-t", "0", id]).output();
    }
}

/// Removes a node's containers when dropped, so a failing test leaves none behind.
pub struct ContainerGuard<'a> {
    pub socket: Option<&'a Path>,
    pub node: String,
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        remove_containers(self.socket, &self.node);
    }
}

/// The journey every driver must support: allocate → container with the labels →
/// KV entry → a player's WebSocket echo → the game ends → its result is published from
/// the server's last output line → entry and container gone.
pub async fn journey(client: &Client, socket: Option<&Path>, node: &str, match_id: &str) {
    let mut results = client.nats.subscribe(subjects::EVENTS_GAME_ENDED).await.expect("subscribe");
    client.nats.flush().await.expect("flush");
    let reply = client.allocate(match_id, 10).await.expect("allocated");
    assert_eq!(reply.node, node);

    let containers = podman(
        socket,
        &[
            "ps",
            "--format",
            "{{.ID}} {{.Labels}}",
            "--filter",
            &format!("label=mm.game-id={}", reply.game_id),
        ],
    );
    assert_eq!(containers.lines().count(), 1, "one container for the game: {containers}");
    assert!(containers.contains(&format!("mm.node:{node}")), "labelled with its node: {containers}");
    let entry = client.entry(&reply.game_id).await.expect("KV entry");
    assert_eq!(entry.state, mm_shared::protocol::ServerState::Running);
    assert_eq!((entry.driver.as_str(), entry.address.as_str()), ("podman", reply.address.as_str()));
    let inspect = podman(
        socket,
        &[
            "inspect",
            "--format",
            "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.SecurityOpt}} {{.Config.User}} {{range $p, $b := .HostConfig.PortBindings}}{{range $b}}{{.HostIP}}:{{.HostPort}}{{end}}{{end}}",
            &entry.handle,
        ],
    );
    assert_eq!(
        inspect,
        format!("true [no-new-privileges] 65534:65534 {}", reply.address),
        "container settings"
    );

    let mut socket_a =
        connect_player(&reply.address, &format!("{match_id}-p0"), &entry.secret).await.expect("admitted");
    assert_echo(&mut socket_a).await;
    assert_eq!(connect_player(&reply.address, "someone-else", &entry.secret).await.err(), Some(403));

    assert_eq!(wait_closed(&mut socket_a, Duration::from_secs(15)).await, Some(CloseCode::Normal));
    let result = tokio::time::timeout(Duration::from_secs(15), results.next())
        .await
        .expect("the game's result published")
        .expect("subscribed");
    let result: mm_shared::protocol::GameEnded =
        serde_json::from_slice(&result.payload).expect("a GameEnded");
    let players = players_of(match_id, 10);
    assert_eq!((result.game_id.as_str(), result.match_id.as_str()), (reply.game_id.as_str(), match_id));
    assert_eq!(result.teams, vec![players[..5].to_vec(), players[5..].to_vec()]);
    client.wait_gone(&reply.game_id, Duration::from_secs(15)).await;
    eventually(Duration::from_secs(10), "the container removed", || async {
        containers_of(socket, node).is_empty().then_some(())
    })
    .await;
}

/// Is a process with this pid alive?
pub fn alive(pid: &str) -> bool {
    pid.parse().is_ok_and(mm_shared::process::is_alive)
}

/// A game-server "binary" in `dir`: a shell script that runs `before` (a slow start, say)
/// and then the real game server with its arguments. Its path.
pub fn wrapped_game_server(dir: &Path, before: &str) -> String {
    let script = dir.join("wrapped-game-server");
    let binary = mm_testkit::bin_dir().join("game-server");
    let text = format!("#!/bin/sh\n{before}\nexec {} \"$@\"\n", binary.display());
    std::fs::write(&script, text).expect("script");
    let mut permissions = std::fs::metadata(&script).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o755);
    std::fs::set_permissions(&script, permissions).expect("chmod");
    script.display().to_string()
}

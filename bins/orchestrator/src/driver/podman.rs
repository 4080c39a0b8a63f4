//! The Podman driver: one container per game server, through the libpod REST API.
//!
//! - Containers are named `mm-<gameId>` and labelled `mm.game-id` and `mm.node`, so a
//!   node finds its own after a restart and `podman ps --filter label=mm.game-id` lists
//!   exactly the project's.
//! - Each runs read-only, with no new privileges and no capabilities, its port published
//!   on `host_ip` only, rlimits within this process's hard limits (Podman's defaults
//!   exceed them on some hosts and the start fails), and memory, pids and CPU-weight
//!   limits where the cgroup setup allows them (rootless on cgroup v1 allows none).
//! - Exits come from Podman's event stream (`died` events filtered by `mm.node`); after
//!   the stream breaks and reconnects, one listing re-reports what may have been missed.
//!
//! Everything goes through `podman-api` except container creation, which is sent as
//! raw JSON: podman-api 0.11 spells the spec field `no_new_privilages`, which libpod
//! ignores. No call to `adjust_api_version()`; every call has a deadline.

use std::collections::HashMap;
use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mm_shared::protocol::game_server::labels;
use podman_api::Podman;
use podman_api::opts::{
    ContainerDeleteOpts, ContainerListFilter, ContainerListOpts, ContainerLogsOpts, ContainerPruneFilter,
    ContainerPruneOpts, ContainerStopOpts, EventsOpts,
};
use serde_json::json;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::{CONTAINER_PORT, Driver, DriverError, DriverResult, Exit, Instance, LaunchSpec, env};
use crate::config::OrchestratorSection;

/// The libpod API version in request paths (Podman accepts any; podman-api uses this one).
const API_PREFIX: &str = "/v4.3.1/libpod";

/// Signals sent at once by a shutdown's sweep (quick calls that wait for no container).
const SIGNAL_PARALLEL: usize = 32;

/// Which resource limits this Podman can enforce.
#[derive(Debug, Clone, Copy)]
struct Limits {
    nofile: u64,
    nproc: u64,
    pids: Option<i64>,
    memory: bool,
    cpu: bool,
}

pub struct PodmanDriver {
    api: Podman,
    socket: PathBuf,
    image: String,
    node: String,
    runtime: String,
    limits: Limits,
    timeout: Duration,
    /// "podman 4.3.1, rootless" for logs and the node entry.
    description: String,
    exits: mpsc::UnboundedSender<Exit>,
    /// Container changes (create, start, stop, remove) sent at once. Podman serializes
    /// them on its locks: beyond a few, calls only wait inside Podman, where their
    /// deadlines run out; here they wait their turn instead.
    changes: Semaphore,
    parallel: usize,
}

impl PodmanDriver {
    /// Connects to the configured socket and learns what this Podman can do.
    pub async fn connect(
        config: &OrchestratorSection,
        node: &str,
        exits: mpsc::UnboundedSender<Exit>,
    ) -> Result<Self, DriverError> {
        let socket = config.podman.socket_path();
        if !socket.exists() {
            return Err(DriverError::Unavailable(format!(
                "no Podman socket at {} (start one with `podman system service --time=0`, \
                 or set orchestrator.podman.socket)",
                socket.display()
            )));
        }
        let api = Podman::unix(&socket);
        let probe = Duration::from_secs(2);
        bounded(probe, &socket, "ping", api.ping()).await?;
        let version = bounded(probe, &socket, "version", api.version())
            .await
            .ok()
            .and_then(|version| version.version)
            .unwrap_or_else(|| "(unknown version)".to_owned());
        let info = bounded(probe, &socket, "info", api.info()).await.ok();
        let host = info.as_ref().and_then(|info| info.host.as_ref());
        let rootless = host
            .and_then(|host| host.security.as_ref())
            .and_then(|security| security.rootless)
            .unwrap_or_else(|| std::fs::metadata(&socket).map(|meta| meta.uid() != 0).unwrap_or(true));
        let cgroup = host.and_then(|host| host.cgroup_version.clone()).unwrap_or_default();
        let controllers = host.and_then(|host| host.cgroup_controllers.clone()).unwrap_or_default();
        // Rootful Podman can always limit; rootless only through delegated cgroup v2
        // controllers (rootless on cgroup v1 cannot enforce limits at all).
        let allows = |controller: &str| !rootless || controllers.iter().any(|c| c == controller);
        // Containers run without CAP_SYS_RESOURCE, so their rlimits cannot exceed what
        // Podman's own processes have: our hard limits at most, and Podman lowers its
        // RLIMIT_NPROC to 32768. A game server needs few files; RLIMIT_NPROC counts every
        // thread of the (shared) container user, so it stays high.
        let (hard_nofile, hard_nproc) = hard_limits();
        let limits = Limits {
            nofile: pick(config.podman.nofile, hard_nofile.min(4096)),
            nproc: pick(config.podman.nproc, hard_nproc.min(32768)),
            pids: (allows("pids") && config.podman.pids_limit > 0).then_some(config.podman.pids_limit),
            memory: allows("memory"),
            cpu: allows("cpu"),
        };
        for (what, configured, hard) in [
            ("nofile", config.podman.nofile, hard_nofile),
            ("nproc", config.podman.nproc, hard_nproc.min(32768)),
        ] {
            if configured > hard {
                tracing::warn!(
                    "orchestrator.podman.{what} = {configured} is more than Podman may give a container \
                     ({hard}): starts will fail with \"setrlimit ... operation not permitted\"; lower it"
                );
            }
        }
        let description = format!(
            "podman {version}, {}, cgroup {}{}",
            if rootless { "rootless" } else { "rootful" },
            if cgroup.is_empty() { "?" } else { &cgroup },
            if limits.memory { "" } else { ", no memory/cpu limits" }
        );
        Ok(Self {
            api,
            socket,
            image: config.podman.image.clone(),
            node: node.to_owned(),
            runtime: config.podman.runtime.clone(),
            limits,
            timeout: config.driver_timeout,
            description,
            exits,
            changes: Semaphore::new(config.podman.parallel.max(1)),
            parallel: config.podman.parallel.max(1),
        })
    }

    /// Reports exits from Podman's event stream until `shutdown`; the stream is opened
    /// again (with backoff) whenever it breaks.
    pub fn watch_events(&self, shutdown: CancellationToken) {
        let api = self.api.clone();
        let node = self.node.clone();
        let exits = self.exits.clone();
        let socket = self.socket.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let mut first = true;
            let session = || {
                let resync = !std::mem::replace(&mut first, false);
                let (api, node, exits, socket) = (api.clone(), node.clone(), exits.clone(), socket.clone());
                async move {
                    if resync {
                        // Events may have been missed while the stream was down: report
                        // every stopped container once (a runner ignores exits it already
                        // handled).
                        match bounded(timeout, &socket, "list", list_instances(&api, &node)).await {
                            Ok(instances) => {
                                for instance in instances.into_iter().filter(|i| !i.running) {
                                    let _ = exits.send(Exit {
                                        game_id: instance.game_id,
                                        handle: instance.handle,
                                        code: None,
                                    });
                                }
                            }
                            Err(err) => tracing::debug!("resync after the event stream broke: {}", err.error),
                        }
                    }
                    let opts = EventsOpts::builder()
                        .stream(true)
                        .filters([
                            ("type".to_owned(), vec!["container".to_owned()]),
                            ("event".to_owned(), vec!["died".to_owned()]),
                            ("label".to_owned(), vec![format!("{}={node}", labels::NODE)]),
                        ])
                        .build();
                    let mut events = api.events(&opts);
                    loop {
                        match events.next().await {
                            Some(Ok(event)) => {
                                let Some(game_id) = event.actor.attributes.get(labels::GAME_ID).cloned()
                                else {
                                    continue;
                                };
                                let code = event
                                    .actor
                                    .attributes
                                    .get("containerExitCode")
                                    .and_then(|code| code.parse::<i64>().ok());
                                let _ = exits.send(Exit { game_id, handle: event.actor.id, code });
                            }
                            Some(Err(err)) => return Err(format!("Podman event stream failed: {err}")),
                            None => return Err("Podman event stream ended".to_owned()),
                        }
                    }
                }
            };
            crate::retry::forever(
                "watching Podman's events",
                &shutdown,
                Duration::from_millis(200),
                Duration::from_secs(5),
                session,
            )
            .await;
        });
    }

    /// Waits for a turn to change a container (see `changes`).
    async fn turn(&self) -> Option<SemaphorePermit<'_>> {
        self.changes.acquire().await.ok()
    }

    fn container(&self, handle: &str) -> podman_api::api::Container {
        self.api.containers().get(handle)
    }

    /// The libpod create spec for `spec` (see the module doc for what each part is for).
    fn create_spec(&self, spec: &LaunchSpec) -> serde_json::Value {
        let environment: HashMap<&str, String> =
            env::game_env(spec, &format!("0.0.0.0:{CONTAINER_PORT}")).into_iter().collect();
        let mut resources = serde_json::Map::new();
        if self.limits.memory {
            resources.insert("memory".into(), json!({ "limit": spec.memory_mb.max(8) * 1024 * 1024 }));
        }
        if let Some(pids) = self.limits.pids {
            resources.insert("pids".into(), json!({ "limit": pids }));
        }
        if self.limits.cpu {
            // A weight, not a cap (as Nomad maps its cpu resource): a capped server
            // would start slowly on a busy host.
            resources.insert("cpu".into(), json!({ "shares": (spec.cpu_millicores * 1024 / 1000).max(2) }));
        }
        let mut body = json!({
            "name": container_name(&spec.game_id),
            "image": self.image,
            "labels": { labels::GAME_ID: spec.game_id, labels::NODE: spec.node },
            "env": environment,
            "portmappings": [{
                // An empty host_ip publishes on every address; Podman 4.3 turns a literal
                // 0.0.0.0 into a DNAT rule for destination 0.0.0.0/32, which nothing matches.
                "host_ip": if spec.host_ip.is_unspecified() { String::new() } else { spec.host_ip.to_string() },
                "host_port": spec.port,
                "container_port": CONTAINER_PORT,
                "protocol": "tcp",
            }],
            "read_only_filesystem": true,
            "no_new_privileges": true,
            "cap_drop": ["ALL"],
            "r_limits": [
                { "type": "nofile", "soft": self.limits.nofile, "hard": self.limits.nofile },
                { "type": "nproc", "soft": self.limits.nproc, "hard": self.limits.nproc },
            ],
            "stop_timeout": 5,
        });
        if !resources.is_empty() {
            body["resource_limits"] = serde_json::Value::Object(resources);
        }
        if !self.runtime.is_empty() {
            body["oci_runtime"] = json!(self.runtime);
        }
        body
    }

    async fn create(&self, spec: &LaunchSpec) -> DriverResult<String> {
        let _turn = self.turn().await;
        let body = serde_json::to_vec(&self.create_spec(spec))
            .map_err(|err| DriverError::Failed(format!("encoding the container spec: {err}")))?;
        let (status, reply) = tokio::time::timeout(
            self.timeout,
            post_json(&self.socket, &format!("{API_PREFIX}/containers/create"), body),
        )
        .await
        .map_err(|_| self.unanswered("create"))?
        .map_err(|err| self.unreachable(&err))?;
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
        let message = reply.get("message").and_then(|m| m.as_str()).unwrap_or("").to_owned();
        match status {
            201 | 200 => {
                reply.get("Id").and_then(|id| id.as_str()).map(str::to_owned).ok_or_else(|| {
                    DriverError::Failed("Podman created a container but sent no id".to_owned())
                })
            }
            // The create spec names no other resource (pod, network, volume) that could be
            // missing: a 404 is the image.
            404 => Err(DriverError::ImageMissing { image: self.image.clone() }),
            409 => Err(DriverError::NameInUse(container_name(&spec.game_id))),
            _ => Err(DriverError::Failed(format!(
                "Podman refused to create the container ({status}): {message}"
            ))),
        }
    }

    fn unanswered(&self, what: &str) -> DriverError {
        DriverError::Unavailable(format!(
            "Podman at {} did not answer `{what}` within {}",
            self.socket.display(),
            mm_shared::duration::format(self.timeout)
        ))
    }

    fn unreachable(&self, err: &dyn std::fmt::Display) -> DriverError {
        DriverError::Unavailable(format!("Podman at {} is not answering: {err}", self.socket.display()))
    }

    /// Runs one podman-api call within the driver's deadline.
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = podman_api::Result<T>>,
    ) -> Result<T, CallError> {
        bounded(self.timeout, &self.socket, what, call).await
    }
}

/// `mm-<gameId>`.
pub fn container_name(game_id: &str) -> String {
    format!("mm-{game_id}")
}

fn pick(configured: u64, default: u64) -> u64 {
    if configured == 0 { default } else { configured }
}

/// This process's hard RLIMIT_NOFILE and RLIMIT_NPROC (containers cannot get more).
#[allow(unsafe_code)]
fn hard_limits() -> (u64, u64) {
    let read = |resource| {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes into the struct we own; a failure leaves it zeroed.
        let ok = unsafe { libc::getrlimit(resource, &mut limit) } == 0;
        if !ok || limit.rlim_max == libc::RLIM_INFINITY { None } else { Some(limit.rlim_max) }
    };
    (read(libc::RLIMIT_NOFILE).unwrap_or(1024), read(libc::RLIMIT_NPROC).unwrap_or(4096))
}

/// A failed podman-api call: the HTTP status Podman answered, if it answered.
#[derive(Debug)]
struct CallError {
    status: Option<u16>,
    error: DriverError,
}

impl From<CallError> for DriverError {
    fn from(err: CallError) -> Self {
        err.error
    }
}

/// Runs a podman-api call within `timeout`, mapping failures to driver errors.
async fn bounded<T>(
    timeout: Duration,
    socket: &Path,
    what: &str,
    call: impl Future<Output = podman_api::Result<T>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(CallError {
            status: None,
            error: DriverError::Unavailable(format!(
                "Podman at {} did not answer `{what}` within {}",
                socket.display(),
                mm_shared::duration::format(timeout)
            )),
        }),
        Ok(Ok(value)) => Ok(value),
        Ok(Err(podman_api::Error::Fault { code, message })) => Err(CallError {
            status: Some(code.as_u16()),
            error: DriverError::Failed(format!("Podman `{what}` answered {}: {message}", code.as_u16())),
        }),
        Ok(Err(err)) => Err(CallError {
            status: None,
            error: DriverError::Unavailable(format!(
                "Podman at {} is not answering `{what}`: {err}",
                socket.display()
            )),
        }),
    }
}

async fn list_instances(api: &Podman, node: &str) -> podman_api::Result<Vec<Instance>> {
    let opts = ContainerListOpts::builder()
        .all(true)
        .filter([ContainerListFilter::LabelKeyVal(labels::NODE.to_owned(), node.to_owned())])
        .build();
    let containers = api.containers().list(&opts).await?;
    Ok(containers
        .into_iter()
        .filter_map(|container| {
            let game_id = container.labels.as_ref()?.get(labels::GAME_ID)?.clone();
            Some(Instance {
                handle: container.id?,
                game_id,
                running: container.state.as_deref() == Some("running"),
            })
        })
        .collect())
}

/// POSTs a JSON body to the Podman socket; returns the status and body.
async fn post_json(socket: &Path, path: &str, body: Vec<u8>) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|err| err.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|err| err.to_string())?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, "podman")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|err| err.to_string())?;
    let response = sender.send_request(request).await.map_err(|err| err.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|err| err.to_string())?.to_bytes();
    drop(sender);
    connection.abort();
    Ok((status, body))
}

impl Driver for PodmanDriver {
    fn name(&self) -> &'static str {
        "podman"
    }

    fn check(&self) -> BoxFuture<'_, DriverResult<String>> {
        async move {
            self.call("ping", self.api.ping()).await?;
            let exists = self.call("image exists", self.api.images().get(&self.image).exists()).await?;
            if exists {
                Ok(self.description.clone())
            } else {
                Err(DriverError::ImageMissing { image: self.image.clone() })
            }
        }
        .boxed()
    }

    fn parallel(&self) -> usize {
        self.parallel
    }

    fn start<'a>(&'a self, spec: &'a LaunchSpec) -> BoxFuture<'a, DriverResult<String>> {
        async move {
            let id = match self.create(spec).await {
                Err(DriverError::NameInUse(name)) => {
                    // A leftover of an earlier attempt: remove it and create again.
                    self.remove(&name).await?;
                    self.create(spec).await?
                }
                other => other?,
            };
            let started = {
                let _turn = self.turn().await;
                self.call("start", self.container(&id).start(None)).await
            };
            if let Err(err) = started {
                let _ = self.remove(&id).await;
                // Podman says why only in prose; the host says whether the port is taken.
                if super::port_in_use(spec.host_ip, spec.port) {
                    return Err(DriverError::PortTaken(spec.port));
                }
                return Err(err.into());
            }
            Ok(id)
        }
        .boxed()
    }

    fn stop<'a>(&'a self, handle: &'a str, timeout: Duration) -> BoxFuture<'a, DriverResult<()>> {
        async move {
            let opts = ContainerStopOpts::builder().timeout(timeout.as_secs().max(1) as usize).build();
            let container = self.container(handle);
            let _turn = self.turn().await;
            // The stop call itself waits up to `timeout` for the container.
            match bounded(self.timeout + timeout, &self.socket, "stop", container.stop(&opts)).await {
                // 304: already stopped; 404: already gone.
                Ok(()) | Err(CallError { status: Some(304 | 404), .. }) => Ok(()),
                Err(err) => Err(err.into()),
            }
        }
        .boxed()
    }

    fn remove<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, DriverResult<()>> {
        async move {
            let opts = ContainerDeleteOpts::builder().force(true).build();
            let _turn = self.turn().await;
            match self.call("remove", self.container(handle).delete(&opts)).await {
                Ok(()) | Err(CallError { status: Some(404), .. }) => Ok(()),
                Err(err) => Err(err.into()),
            }
        }
        .boxed()
    }

    fn discard<'a>(&'a self, handle: &'a str, timeout: Duration) -> BoxFuture<'a, DriverResult<()>> {
        async move {
            // One call: Podman stops it (SIGTERM, then kill after `timeout`) and removes it.
            let opts =
                ContainerDeleteOpts::builder().force(true).timeout(timeout.as_secs().max(1) as usize).build();
            let container = self.container(handle);
            let _turn = self.turn().await;
            match bounded(self.timeout + timeout, &self.socket, "remove", container.delete(&opts)).await {
                Ok(()) | Err(CallError { status: Some(404), .. }) => Ok(()),
                Err(err) => Err(err.into()),
            }
        }
        .boxed()
    }

    fn discard_game<'a>(&'a self, game_id: &'a str, timeout: Duration) -> BoxFuture<'a, DriverResult<()>> {
        async move {
            let name = container_name(game_id);
            self.discard(&name, timeout).await
        }
        .boxed()
    }

    fn terminate_all<'a>(&'a self, node: &'a str) -> BoxFuture<'a, usize> {
        async move {
            let Ok(instances) = self.list(node).await else { return 0 };
            let running: Vec<Instance> = instances.into_iter().filter(|instance| instance.running).collect();
            let count = running.len();
            // Signals are quick calls that wait for no container: no turn is taken.
            futures_util::stream::iter(running)
                .for_each_concurrent(SIGNAL_PARALLEL, |instance| async move {
                    let container = self.container(&instance.handle);
                    if let Err(err) = self.call("kill", container.send_signal("TERM")).await {
                        tracing::debug!(game_id = %instance.game_id, "SIGTERM: {}", err.error);
                    }
                })
                .await;
            count
        }
        .boxed()
    }

    fn sweep<'a>(
        &'a self,
        node: &'a str,
        stopped_only: bool,
        timeout: Duration,
    ) -> BoxFuture<'a, DriverResult<usize>> {
        async move {
            if !stopped_only {
                // Removing running containers one by one (stop, wait, remove) is what a
                // busy shutdown runs out of time on: every running container gets
                // SIGTERM at once, then whatever has not exited by `timeout` is killed
                // with its removal.
                let running = |instances: Vec<Instance>| -> Vec<Instance> {
                    instances.into_iter().filter(|instance| instance.running).collect()
                };
                self.terminate_all(node).await;
                let waited = std::time::Instant::now();
                let mut left = running(self.list(node).await?);
                while !left.is_empty() && waited.elapsed() < timeout {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    left = running(self.list(node).await?);
                }
                futures_util::stream::iter(left)
                    .for_each_concurrent(SIGNAL_PARALLEL, |instance| async move {
                        let opts = ContainerDeleteOpts::builder().force(true).timeout(0).build();
                        let container = self.container(&instance.handle);
                        if let Err(err) = self.call("remove", container.delete(&opts)).await {
                            tracing::warn!(game_id = %instance.game_id, "removing at shutdown: {}", err.error);
                        }
                    })
                    .await;
            }
            // Every stopped container of the node in one call.
            let opts = ContainerPruneOpts::builder()
                .filter([ContainerPruneFilter::LabelKeyVal(labels::NODE.to_owned(), node.to_owned())])
                .build();
            let pruned = self.call("prune", self.api.containers().prune(&opts)).await?;
            Ok(pruned.iter().filter(|report| report.err.is_none()).count())
        }
        .boxed()
    }

    fn recover<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Option<super::Recovered>> {
        async move {
            let inspect = self.call("inspect", self.container(handle).inspect()).await.ok()?;
            let environment = inspect.config.as_ref()?.env.as_ref()?;
            let mut recovered = env::recover(environment)?;
            let bindings = inspect.host_config.as_ref()?.port_bindings.as_ref()?;
            let binding = bindings.get(&format!("{CONTAINER_PORT}/tcp"))?.as_ref()?.first()?;
            recovered.port = binding.host_port.as_deref()?.parse().ok()?;
            Some(recovered)
        }
        .boxed()
    }

    fn exit_code<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, DriverResult<Option<i64>>> {
        async move {
            let inspect = self.call("inspect", self.container(handle).inspect()).await?;
            Ok(inspect.state.and_then(|state| state.exit_code).map(i64::from))
        }
        .boxed()
    }

    fn logs_tail<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, String> {
        async move {
            let opts = ContainerLogsOpts::builder().stdout(true).stderr(true).tail("5").build();
            let container = self.container(handle);
            let collect = async {
                let mut text = Vec::new();
                let mut chunks = container.logs(&opts);
                while let Some(Ok(chunk)) = chunks.next().await {
                    text.extend_from_slice(&Vec::<u8>::from(chunk));
                }
                String::from_utf8_lossy(&text).trim().to_owned()
            };
            tokio::time::timeout(Duration::from_secs(2), collect).await.unwrap_or_default()
        }
        .boxed()
    }

    fn list<'a>(&'a self, node: &'a str) -> BoxFuture<'a, DriverResult<Vec<Instance>>> {
        async move { Ok(self.call("list", list_instances(&self.api, node)).await?) }.boxed()
    }

    fn watch(&self, shutdown: CancellationToken) {
        self.watch_events(shutdown);
    }
}

//! The start-up every binary shares: flags, config, logs, metrics, signals, admin server.
//!
//! ```text
//! main: Args::parse() → service::main::<Config>("matchmaker", &args.common, run)
//! run:  serve_admin → connect_nats / connect_redis (each adds a health check)
//!       → work until `service.shutdown` is cancelled → finish in-flight work
//! main: wait for HTTP servers to drain → exit 0 (or 1 with the error)
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError, LogConfig, NatsConfig, RedisConfig};
use crate::telemetry::admin::Health;
use crate::telemetry::{self, TelemetryError};

/// Flags every binary accepts (flatten into its own `clap` parser).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// TOML config file; its values override the defaults and `MM_<SECTION>__<KEY>`
    /// environment variables override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write logs as JSON lines instead of human-readable text.
    #[arg(long)]
    pub log_json: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Do not start: ask the instance running at HOST:PORT (its admin address) for
    /// `/healthz` and exit 0 if it answers 200, 1 otherwise. For container health checks:
    /// the images are `FROM scratch`, with no shell or curl to run.
    #[arg(long, value_name = "HOST:PORT")]
    pub healthcheck: Option<String>,
    /// Values the binary's own flags set (`--players 500`), applied over file and env.
    #[arg(skip)]
    pub overrides: config::Overrides,
}

/// A service's typed configuration: all its sections, loaded by [`config::load`].
pub trait ServiceConfig: Serialize + DeserializeOwned + Default + Send + Sync + 'static {
    /// The `[log]` section.
    fn log(&self) -> &LogConfig;
}

/// Everything a started service holds on to.
pub struct Service<C> {
    /// The binary's name, also the `service` label on its metrics.
    pub name: &'static str,
    pub config: C,
    pub metrics: PrometheusHandle,
    pub health: Health,
    /// Cancelled on SIGINT/SIGTERM.
    pub shutdown: CancellationToken,
    /// HTTP servers started by [`Service::serve`], awaited when the service stops.
    servers: std::sync::Mutex<Vec<JoinHandle<std::io::Result<()>>>>,
}

impl<C> Service<C> {
    /// The `/metrics` + `/healthz` router for this service.
    pub fn admin_router(&self) -> Router {
        telemetry::admin::router(self.metrics.clone(), self.health.clone())
    }

    /// Serves `router` on `addr` until shutdown (see [`serve_http`]); `key` is the
    /// config key that chose the address, for the error message if it is taken.
    pub async fn serve(&self, addr: SocketAddr, key: &str, router: Router) -> Result<SocketAddr, StartError> {
        let (bound, task) = serve_http(addr, key, router, self.shutdown.clone()).await?;
        self.servers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(task);
        Ok(bound)
    }

    /// Serves only the admin router (`/metrics`, `/healthz`) on `addr`.
    pub async fn serve_admin(&self, addr: SocketAddr, key: &str) -> Result<SocketAddr, StartError> {
        self.serve(addr, key, self.admin_router()).await
    }

    /// Connects to NATS (retrying until shutdown). The `nats` health check is added
    /// first, so `/healthz` says "connecting" (503) until the connection is up.
    pub async fn connect_nats(
        &self,
        config: &NatsConfig,
    ) -> Result<async_nats::Client, crate::nats::ConnectError> {
        let config = &config.with_url_credentials();
        let slot = Arc::new(OnceLock::<async_nats::Client>::new());
        let (check_slot, url) = (slot.clone(), config.url.clone());
        self.health.add_check("nats", move || {
            let client = check_slot.get().cloned();
            let url = url.clone();
            async move {
                match client {
                    Some(client) => crate::nats::health_check(client)().await,
                    None => Err(format!("connecting to {url}")),
                }
            }
        });
        let client = crate::nats::connect(config, self.name, &self.shutdown).await?;
        let _ = slot.set(client.clone());
        Ok(client)
    }

    /// Connects to Redis (retrying until shutdown), with a `redis` health check that says
    /// "connecting" until then and pings Redis afterwards.
    pub async fn connect_redis(
        &self,
        config: &RedisConfig,
    ) -> Result<redis::aio::ConnectionManager, crate::redis::ConnectError> {
        let slot = Arc::new(OnceLock::<redis::aio::ConnectionManager>::new());
        let check_slot = slot.clone();
        let url = config.url.clone();
        self.health.add_check("redis", move || {
            let connection = check_slot.get().cloned();
            let url = url.clone();
            async move {
                match connection {
                    Some(connection) => crate::redis::health_check(connection)().await,
                    None => Err(format!("connecting to {}", crate::redis::redacted(&url))),
                }
            }
        });
        let connection = crate::redis::connect(config, &self.shutdown).await?;
        let _ = slot.set(connection.clone());
        Ok(connection)
    }
}

/// How long [`main`] waits for HTTP servers to finish their requests after shutdown.
const SERVER_DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// The whole life of a service binary: builds the tokio runtime, [`start`]s the service,
/// runs `body`, then waits for its HTTP servers to drain. Returns the process exit code:
/// 0 after a clean stop (including Ctrl-C while still waiting for NATS or Redis), 1 with
/// the error printed otherwise.
pub fn main<C, F, Fut>(name: &'static str, args: &CommonArgs, body: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(Arc<Service<C>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if let Some(addr) = &args.healthcheck {
        return healthcheck(name, addr);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{name}: cannot start the tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let Some(service) = start::<C>(name, args)? else { return Ok(()) };
        let service = Arc::new(service);
        let outcome = body(service.clone()).await;
        service.shutdown.cancel();
        let servers =
            std::mem::take(&mut *service.servers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let drained =
            tokio::time::timeout(SERVER_DRAIN_DEADLINE, futures_util::future::join_all(servers)).await;
        if drained.is_err() {
            tracing::warn!("HTTP connections still open after {SERVER_DRAIN_DEADLINE:?}; closing them");
        }
        match outcome {
            Err(err) if is_cancelled(&err) => {
                tracing::info!("stopped before start-up finished: {err}");
                Ok(())
            }
            other => other,
        }
    });
    // Tasks still running (abandoned connections) must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => {
            tracing::info!("{name} stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("{name}: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// How long `--healthcheck` waits for `/healthz` (whose own checks have a 1 s deadline).
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// `--healthcheck`: one `GET /healthz` of a running instance, answered by the exit code.
fn healthcheck(name: &str, addr: &str) -> ExitCode {
    match crate::probe::http_get(addr, "/healthz", HEALTHCHECK_TIMEOUT) {
        Ok(answer) if answer.status == 200 => ExitCode::SUCCESS,
        Ok(answer) => {
            eprintln!("{name}: http://{addr}/healthz answered {}: {}", answer.status, answer.body.trim());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("{name}: http://{addr}/healthz: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Is this error just "shutdown was requested while we were still connecting"?
fn is_cancelled(err: &anyhow::Error) -> bool {
    matches!(err.downcast_ref(), Some(crate::nats::ConnectError::Cancelled { .. }))
        || matches!(err.downcast_ref(), Some(crate::redis::ConnectError::Cancelled { .. }))
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error("cannot print the configuration: {0}")]
    Print(String),
    /// The listen address is taken or not ours; `key` is the config key that set it.
    #[error("cannot listen on {addr} (config key `{key}`): {source}")]
    Listen { addr: SocketAddr, key: String, source: std::io::Error },
}

/// Loads the config and sets up logs, metrics and signal handling.
///
/// Returns `Ok(None)` when `--print-config` was given (the config has been printed).
/// Must run inside a tokio runtime.
pub fn start<C: ServiceConfig>(
    name: &'static str,
    args: &CommonArgs,
) -> Result<Option<Service<C>>, StartError> {
    let config: C = config::load_with(args.config.as_deref(), &args.overrides)?;
    if args.print_config {
        let text = toml::to_string_pretty(&config).map_err(|err| StartError::Print(err.to_string()))?;
        print!("{text}");
        return Ok(None);
    }
    telemetry::init_logging(config.log(), args.log_json)?;
    let metrics = telemetry::install_metrics(name)?;
    let shutdown = crate::shutdown::on_signals().map_err(StartError::Signals)?;
    telemetry::spawn_upkeep(metrics.clone(), shutdown.clone());
    tracing::info!(version = crate::VERSION, "{name} starting");
    Ok(Some(Service {
        name,
        config,
        metrics,
        health: Health::new(name),
        shutdown,
        servers: Default::default(),
    }))
}

/// Binds `addr` and serves `router` on it until `shutdown`; in-flight requests finish.
///
/// Binding happens before this returns, so a taken port fails start-up with the config
/// `key` in the message. Returns the bound address (useful with port 0) and the server task.
pub async fn serve_http(
    addr: SocketAddr,
    key: &str,
    router: Router,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<std::io::Result<()>>), StartError> {
    let listen_error = |source| StartError::Listen { addr, key: key.to_owned(), source };
    let listener = TcpListener::bind(addr).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    tracing::info!(%bound, "serving HTTP");
    let task = tokio::spawn(async move {
        axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    });
    Ok((bound, task))
}

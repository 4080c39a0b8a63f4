//! What every service of the matchmaking simulation needs, written once.
//!
//! | module | gives |
//! |---|---|
//! | [`config`] | figment layering: defaults → TOML file → `MM_<SECTION>__<KEY>` env |
//! | [`telemetry`] | tracing logs, the Prometheus recorder, process metrics, the admin router |
//! | [`nats`] | connect with retry, JSON request/reply with typed errors, micro endpoints |
//! | [`redis`] | a reconnecting Redis connection with timeouts |
//! | [`protocol`] | subject, bucket and key names; every message and KV value as a serde type |
//! | [`rate`] | scenario rates as written: per second (`0.01`) or a count per duration (`"1/300s"`) |
//! | [`shutdown`] | SIGINT/SIGTERM turned into one cancellation token |
//! | [`service`] | the start-up every binary shares (args, config, logs, metrics, admin server) |
//! | [`probe`] | tiny blocking TCP/HTTP checks for supervisors and tests |
//! | [`process`] | child processes that die with their parent |

#![deny(unsafe_code)]

pub mod config;
pub mod duration;
pub mod nats;
pub mod probe;
pub mod process;
pub mod protocol;
pub mod rate;
pub mod redis;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod token;

/// The version every binary reports in `/healthz`, logs and `mm_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

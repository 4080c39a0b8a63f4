//! Tests of how the project is deployed and watched, and the helpers they share.
//!
//! - [`promql`]: the project's metric names in a PromQL expression, counter lint,
//!   Grafana variables filled in.
//! - [`dashboards`]: `grafana/dashboards/*.json` as panels and queries.
//! - [`exposition`]: what a `/metrics` page exports.
//! - [`prometheus`]: a real `prometheus` process scraping a test's services.
//! - [`compose`]: a compose project that is always taken down; [`http`]: JSON calls.
//! - [`nats_users`]: the users of `nats/nats-server.conf` with test passwords.
//!
//! The tests: `nats_permissions` (each service's NATS user is refused outside its
//! subjects), `dev_permissions` (`mmctl dev` gives each service its user),
//! `observability` (the whole stack under those permissions: promtool on every
//! `/metrics`, every dashboard and alert metric exported, every dashboard query answered
//! by a real Prometheus), `dashboards` and `prometheus_config` (files only), `compose`
//! (`podman-compose config`, and one match through the compose stack).

pub mod compose;
pub mod dashboards;
pub mod exposition;
pub mod http;
pub mod nats_users;
pub mod prometheus;
pub mod promql;

use std::path::PathBuf;

pub use mm_shared::process::{Ran, run_bounded};

/// The repository's root directory.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Percent-encodes a URL query value (everything but unreserved characters).
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

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

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The repository's root directory.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What a bounded command did.
#[derive(Debug)]
pub struct Ran {
    /// `None` when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }

    /// Both outputs, for assertion messages.
    pub fn output(&self) -> String {
        format!("status {:?}\n--- stdout\n{}\n--- stderr\n{}", self.status, self.stdout, self.stderr)
    }
}

/// Runs `command` to completion or kills it at `timeout`; never hangs a test. Output is
/// read on threads, so a chatty command cannot block on a full pipe.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Ran {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {description}: {err}"));
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = reader(child.stdout.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let stderr = reader(child.stderr.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    Ran { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
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

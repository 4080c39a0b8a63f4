//! Test support for the whole workspace: real servers, never mocks.
//!
//! - [`NatsServer`]: `nats-server -js` on a free port with a temporary store.
//! - [`RedisServer`]: `redis-server` on a free port, no persistence.
//! - [`PodmanService`]: `podman system service` on a temporary unix socket.
//! - [`ServiceProcess`]: one of the project's binaries, with its own env, its log
//!   captured, stopped with SIGTERM.
//! - [`netns::Lan`]: several hosts on one machine (network namespaces on a private LAN),
//!   for tests of what crosses a network.
//!
//! Each waits until its server answers before returning, and kills it on `Drop`. Each
//! child also gets SIGTERM from the kernel if the test process dies (nextest timeouts),
//! so nothing outlives a test. When a test panics, the children's logs are printed.
//!
//! A missing tool is an error that says to run `just setup`.

mod child;
pub mod lifecycle;
pub mod netns;
mod podman;
mod servers;
mod service;

pub use child::Spawned;
pub use podman::PodmanService;
pub use servers::{NatsServer, RedisServer};
pub use service::ServiceProcess;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

/// How long a server may take to answer after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a test server or process could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{binary}` is not installed or not on PATH: run `just setup` ({hint})")]
    Missing { binary: String, hint: String },
    #[error("the project binary `{name}` was not found in {}: run `cargo build --workspace --bins` (or `just test`)", dir.display())]
    MissingProjectBinary { name: String, dir: PathBuf },
    #[error("could not start {what}: {source}")]
    Spawn { what: String, source: std::io::Error },
    #[error("{what} did not become ready within {waited:?}; its log ends with:\n{log}")]
    NotReady { what: String, waited: Duration, log: String },
    #[error("{what} exited early ({status}); its log ends with:\n{log}")]
    Exited { what: String, status: String, log: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Finds `binary` on PATH, or says how to get it.
pub fn require(binary: &str, hint: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Error::Missing { binary: binary.to_owned(), hint: hint.to_owned() })
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Another process may take it before the caller binds it; the server starters retry
/// with a new port when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or(0)
}

/// The directory holding the workspace's built binaries (`target/debug` for tests).
///
/// `MM_BIN_DIR` overrides it; otherwise it is found from the test executable's path
/// (`target/debug/deps/<test>` → `target/debug`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of one of the workspace's binaries (`gateway`, `matchmaker`, ...).
pub fn project_bin(name: &str) -> Result<PathBuf> {
    let dir = bin_dir();
    let path = dir.join(name);
    if path.is_file() { Ok(path) } else { Err(Error::MissingProjectBinary { name: name.to_owned(), dir }) }
}

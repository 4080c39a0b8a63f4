//! Configuration: built-in defaults, then an optional TOML file, then `MM_<SECTION>__<KEY>`
//! environment variables, each layer overriding the one before.
//!
//! Every service has one typed config struct made of sections (`[nats]`, `[redis]`,
//! `[log]`, and its own, such as `[gateway]`). Sections reject keys they do not know, so a
//! typo fails at start instead of being ignored; the top level accepts other services'
//! sections, so one file (or one environment) can configure the whole stack.
//!
//! A bad value fails with a message that names the key and where it came from:
//! `config key `nats.request_timeout` (environment variable MM_NATS__REQUEST_TIMEOUT): ...`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Source};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Prefix of every environment variable the services read.
pub const ENV_PREFIX: &str = "MM_";
/// Separator between section and key in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` named a file that is not there.
    #[error("config file {} does not exist", path.display())]
    MissingFile { path: PathBuf },
    /// One or more values were invalid; the message names every offending key.
    #[error("invalid configuration:\n{}", problems.join("\n"))]
    Invalid { problems: Vec<String> },
}

/// Values set on the command line (`--players 500`), applied over every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides(Vec<(String, figment::value::Value)>);

impl Overrides {
    /// Sets `key` (dotted, like `harness.players`) to `value`.
    pub fn set(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        match figment::value::Value::serialize(value) {
            Ok(value) => self.0.push((key.to_owned(), value)),
            Err(err) => tracing::warn!("ignoring override {key}: {err}"),
        }
        self
    }
}

/// Loads `T` from its defaults, the optional TOML `file`, and the `MM_` environment.
pub fn load<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    load_with(file, &Overrides::default())
}

/// Like [`load`], with command-line `overrides` on top.
pub fn load_with<T>(file: Option<&Path>, overrides: &Overrides) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    if let Some(path) = file
        && !path.is_file()
    {
        return Err(ConfigError::MissingFile { path: path.to_owned() });
    }
    let mut figment = figment::<T>(file);
    for (key, value) in &overrides.0 {
        figment = figment.merge(Serialized::global(key, value.clone()));
    }
    extract(figment)
}

/// The layered figment behind [`load`], for callers that add layers of their own.
pub fn figment<T: Serialize + Default>(file: Option<&Path>) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment.merge(Env::prefixed(ENV_PREFIX).split(ENV_SEPARATOR))
}

/// Extracts `T` from a figment, turning figment's errors into [`ConfigError`].
pub fn extract<T: DeserializeOwned>(figment: Figment) -> Result<T, ConfigError> {
    figment
        .extract()
        .map_err(|errors| ConfigError::Invalid { problems: errors.into_iter().map(describe).collect() })
}

/// One line per problem: the key, where its value came from, and what was wrong.
fn describe(error: figment::Error) -> String {
    let path = &error.path;
    let key = path.join(".");
    let origin = match error.metadata.as_ref() {
        Some(meta) => match &meta.source {
            Some(Source::File(file)) => format!("in file {}", file.display()),
            _ if meta.name.contains("environment") => format!(
                "environment variable {ENV_PREFIX}{}",
                path.iter().map(|part| part.to_uppercase()).collect::<Vec<_>>().join(ENV_SEPARATOR)
            ),
            // Built-in defaults are always valid, so a bad serialized value came from
            // a command-line flag.
            _ if meta.name.contains("figment::value") => "command line".to_owned(),
            _ => meta.name.to_string(),
        },
        None => "unknown source".to_owned(),
    };
    if key.is_empty() {
        format!("  ({origin}): {}", error.kind)
    } else {
        format!("  config key `{key}` ({origin}): {}", error.kind)
    }
}

/// `[nats]`: how a service reaches NATS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma separated: `nats://127.0.0.1:4222`.
    pub url: String,
    /// Default deadline of a request/reply call.
    #[serde(with = "crate::duration")]
    pub request_timeout: Duration,
    /// Deadline of one connection attempt; attempts repeat until connected or shut down.
    #[serde(with = "crate::duration")]
    pub connect_timeout: Duration,
    /// User name when the server requires one (the `nats/` config gives each service its own).
    pub user: Option<String>,
    /// Password for `user`. Never printed by `--print-config`.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// Replicas of the JetStream KV buckets this service creates (`servers`, `nodes`,
    /// `secrets`, `harness`): `auto` (3 when the server it reached is in a cluster of at
    /// least three, 1 otherwise) or a number. A bucket that exists keeps its own.
    pub kv_replicas: Replicas,
}

/// How many copies of a JetStream KV bucket a cluster keeps (`[nats] kv_replicas`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replicas {
    /// 3 in a cluster of three or more servers, 1 otherwise (decided at connection time
    /// from the servers the cluster advertises).
    #[default]
    Auto,
    /// Exactly this many (1 to 5; at most the cluster's size).
    Fixed(u8),
}

impl Serialize for Replicas {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Replicas::Auto => serializer.serialize_str("auto"),
            Replicas::Fixed(n) => serializer.serialize_u8(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Replicas {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let number = match Raw::deserialize(deserializer)? {
            Raw::Text(text) if text.trim().eq_ignore_ascii_case("auto") => return Ok(Replicas::Auto),
            Raw::Text(text) => text.trim().parse::<i64>().map_err(|_| {
                serde::de::Error::custom(format!("`{text}`: expected `auto` or a number from 1 to 5"))
            })?,
            Raw::Number(number) => number,
        };
        u8::try_from(number).ok().filter(|n| (1..=5).contains(n)).map(Replicas::Fixed).ok_or_else(|| {
            serde::de::Error::custom(format!("{number}: expected `auto` or a number from 1 to 5"))
        })
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            user: None,
            password: None,
            kv_replicas: Replicas::Auto,
        }
    }
}

/// A NATS URL list without the credentials written into it, and the first user and
/// password found (async-nats does not read them from the URL itself).
pub fn split_nats_credentials(url: &str) -> (String, Option<(String, String)>) {
    let mut found: Option<(String, String)> = None;
    let servers: Vec<String> = url
        .split(',')
        .map(|server| {
            let server = server.trim();
            let Some((scheme, rest)) = server.split_once("://") else { return server.to_owned() };
            let Some((userinfo, host)) = rest.rsplit_once('@') else { return server.to_owned() };
            if found.is_none() {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                found = Some((user.to_owned(), password.to_owned()));
            }
            format!("{scheme}://{host}")
        })
        .collect();
    (servers.join(","), found.filter(|(user, _)| !user.is_empty()))
}

/// `url` with any password in it replaced by `***` (`nats://operator:***@host:4222`), for
/// messages and logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let server = server.trim();
            match server.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?))) {
                Some((scheme, (userinfo, host))) => {
                    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
                    format!("{scheme}://{user}:***@{host}")
                }
                None => server.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl NatsConfig {
    /// The same settings with credentials written into the URL
    /// (`nats://user:password@host:port`, as `.mm/harness.env` and `.mm/operator.env` give
    /// them) moved to `user` and `password`: then the user's own reply inbox is used, and
    /// no log line shows the password. Explicit `user`/`password` keys win.
    pub fn with_url_credentials(&self) -> NatsConfig {
        let mut config = self.clone();
        let (url, found) = split_nats_credentials(&self.url);
        config.url = url;
        if let Some((user, password)) = found {
            if config.user.is_none() && !user.is_empty() {
                config.user = Some(user);
            }
            if config.password.is_none() && !password.is_empty() {
                config.password = Some(password);
            }
        }
        config
    }
}

/// `[redis]`: how a service reaches Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://127.0.0.1:6379/` (a database number may follow the slash).
    pub url: String,
    /// Deadline of one connection attempt.
    #[serde(with = "crate::duration")]
    pub connect_timeout: Duration,
    /// Deadline of one command's reply. The redis crate's default (500 ms) also cuts
    /// blocking commands short, so services that block say so explicitly.
    #[serde(with = "crate::duration")]
    pub response_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".to_owned(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event (the default).
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]`: what is logged and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json` (`--log-json` also selects JSON).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `info,matchmaker=debug`; `RUST_LOG` overrides it.
    /// The default quiets async-nats, whose connection events `mm_shared::nats` logs itself.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Human, filter: "info,async_nats=warn".to_owned() }
    }
}

/// The node id to use: the configured one, or this machine's host name.
pub fn node_id(configured: &str) -> Result<String, String> {
    let id = if configured.is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
            .collect()
    } else {
        configured.to_owned()
    };
    let valid = !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(id)
    } else {
        Err(format!(
            "invalid node id `{id}` (config key `orchestrator.node`): use 1-64 letters, digits, `-` or `_`"
        ))
    }
}

#[cfg(test)]
// figment::Jail's closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;
    use std::net::SocketAddr;

    /// A service config shaped like the real ones: its own section plus shared ones.
    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Example {
        example: ExampleSection,
        nats: NatsConfig,
        log: LogConfig,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct ExampleSection {
        listen: SocketAddr,
        workers: u16,
    }

    impl Default for ExampleSection {
        fn default() -> Self {
            Self { listen: "127.0.0.1:9000".parse().expect("valid"), workers: 4 }
        }
    }

    fn load_in(jail: &Jail, file: Option<&str>) -> Result<Example, ConfigError> {
        load(file.map(|name| jail.directory().join(name)).as_deref())
    }

    #[test]
    fn credentials_in_a_nats_url_move_out_of_it() {
        let config =
            NatsConfig { url: "nats://harness:s3cret@10.0.0.5:4222".into(), ..NatsConfig::default() };
        let split = config.with_url_credentials();
        assert_eq!(split.url, "nats://10.0.0.5:4222");
        assert_eq!((split.user.as_deref(), split.password.as_deref()), (Some("harness"), Some("s3cret")));
        let several = NatsConfig {
            url: "nats://a:pw@h1:4222, nats://h2:4222".into(),
            user: Some("explicit".into()),
            ..NatsConfig::default()
        };
        let split = several.with_url_credentials();
        assert_eq!(split.url, "nats://h1:4222,nats://h2:4222");
        assert_eq!((split.user.as_deref(), split.password.as_deref()), (Some("explicit"), Some("pw")));
        assert_eq!(redact_url("nats://a:pw@h1:4222,nats://h2:4222"), "nats://a:***@h1:4222,nats://h2:4222");
        let plain = NatsConfig::default().with_url_credentials();
        assert_eq!((plain.url.as_str(), plain.user), ("nats://127.0.0.1:4222", None));
    }

    #[test]
    fn node_ids_are_checked() {
        assert_eq!(node_id("node-a_1"), Ok("node-a_1".to_owned()));
        assert!(node_id("a.b").is_err());
        assert!(node_id("a b").is_err());
        assert!(node_id("").is_ok(), "the host name, cleaned up");
    }

    #[test]
    fn defaults_then_file_then_env() {
        Jail::expect_with(|jail| {
            let defaults = load_in(jail, None).expect("defaults load");
            assert_eq!(defaults, Example::default());

            jail.create_file(
                "mm.toml",
                r#"
                [example]
                workers = 8
                [nats]
                url = "nats://10.0.0.1:4222"
                request_timeout = "750ms"
                [gateway]           # another service's section: ignored here
                listen = "0.0.0.0:1"
                "#,
            )?;
            let from_file = load_in(jail, Some("mm.toml")).expect("file loads");
            assert_eq!(from_file.example.workers, 8);
            assert_eq!(from_file.example.listen, ExampleSection::default().listen);
            assert_eq!(from_file.nats.url, "nats://10.0.0.1:4222");
            assert_eq!(from_file.nats.request_timeout, Duration::from_millis(750));

            jail.set_env("MM_EXAMPLE__WORKERS", "16");
            jail.set_env("MM_NATS__REQUEST_TIMEOUT", "2000");
            jail.set_env("MM_LOG__FORMAT", "json");
            jail.set_env("MM_UNRELATED", "ignored");
            let from_env = load_in(jail, Some("mm.toml")).expect("env loads");
            assert_eq!(from_env.example.workers, 16, "env beats file");
            assert_eq!(from_env.nats.url, "nats://10.0.0.1:4222", "file beats default");
            assert_eq!(from_env.nats.request_timeout, Duration::from_secs(2));
            assert_eq!(from_env.log.format, LogFormat::Json);
            Ok(())
        });
    }

    #[test]
    fn command_line_overrides_beat_everything() {
        Jail::expect_with(|jail| {
            jail.set_env("MM_EXAMPLE__WORKERS", "16");
            let mut overrides = Overrides::default();
            overrides.set("example.workers", 32u16);
            let config: Example = load_with(None, &overrides).expect("loads");
            assert_eq!(config.example.workers, 32);
            overrides.set("example.workers", "lots");
            let message = load_with::<Example>(None, &overrides).expect_err("bad").to_string();
            assert!(message.contains("`example.workers` (command line)"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("MM_EXAMPLE__WORKERS", "many");
            let message = load_in(jail, None).expect_err("must fail").to_string();
            assert!(message.contains("`example.workers`"), "{message}");
            assert!(message.contains("MM_EXAMPLE__WORKERS"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn bad_file_value_names_key_and_file() {
        Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[nats]\nrequest_timeout = \"soon\"\n")?;
            let message = load_in(jail, Some("bad.toml")).expect_err("must fail").to_string();
            assert!(message.contains("`nats.request_timeout`"), "{message}");
            assert!(message.contains("bad.toml"), "{message}");
            assert!(message.contains("invalid duration `soon`"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn typo_in_a_known_section_is_rejected() {
        Jail::expect_with(|jail| {
            jail.set_env("MM_NATS__URLL", "nats://x");
            let message = load_in(jail, None).expect_err("must fail").to_string();
            assert!(message.contains("`nats.urll`"), "{message}");
            assert!(message.contains("unknown field"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn missing_file_is_an_error_not_a_silent_default() {
        Jail::expect_with(|jail| {
            let err = load_in(jail, Some("nope.toml")).expect_err("must fail");
            assert!(matches!(err, ConfigError::MissingFile { .. }), "{err}");
            Ok(())
        });
    }

    #[test]
    fn password_is_not_printed() {
        let config = NatsConfig { password: Some("hunter2".into()), ..NatsConfig::default() };
        let text = toml::to_string(&config).expect("serializes");
        assert!(!text.contains("hunter2"), "{text}");
    }
}

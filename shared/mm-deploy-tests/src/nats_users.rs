//! `nats/nats-server.conf` with known passwords: a nats-server that enforces the
//! project's per-service users, and clients that connect as one of them.

use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use futures_util::StreamExt;
use mm_testkit::NatsServer;
use tokio::sync::mpsc;

pub use mm_shared::nats::USERS;

/// The password this test gives `user`.
pub fn password(user: &str) -> String {
    format!("test-{user}-pw")
}

/// `MM_NATS_<USER>_PASSWORD` for every user, as nats-server reads them.
pub fn server_env() -> Vec<(String, String)> {
    USERS.iter().map(|user| (mm_shared::nats::password_env(user), password(user))).collect()
}

/// What a service needs to connect as `user` (`MM_NATS__USER`, `MM_NATS__PASSWORD`).
pub fn client_env(user: &str) -> Vec<(&'static str, String)> {
    vec![("MM_NATS__USER", user.to_owned()), ("MM_NATS__PASSWORD", password(user))]
}

/// A nats-server (JetStream, free port) running the project's config file.
pub fn start_server() -> NatsServer {
    let config = crate::repo().join("nats/nats-server.conf");
    let config = config.to_str().expect("UTF-8 path").to_owned();
    let env = server_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
    NatsServer::start_with_env(&["-c", &config], &env).expect("nats-server with nats/nats-server.conf")
}

/// A client connected as `user` (`None`: no credentials, the config's `no_auth_user`),
/// with the per-user inbox the services use, and the server's error messages (such as
/// "Permissions Violation for Publish to ...") on a channel.
pub struct UserClient {
    pub client: Client,
    errors: mpsc::UnboundedReceiver<String>,
}

impl UserClient {
    pub async fn connect(url: &str, user: Option<&str>) -> Result<Self, async_nats::ConnectError> {
        let (sender, errors) = mpsc::unbounded_channel();
        let mut options = ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(Duration::from_secs(2)))
            .event_callback(move |event| {
                let sender = sender.clone();
                async move {
                    if let Event::ServerError(error) = event {
                        let _ = sender.send(error.to_string());
                    }
                }
            });
        if let Some(user) = user {
            options = options.user_and_password(user.to_owned(), password(user));
            if let Some(prefix) = mm_shared::nats::inbox_prefix(user) {
                options = options.custom_inbox_prefix(prefix);
            }
        }
        let client = options.connect(url).await?;
        Ok(Self { client, errors })
    }

    /// Returns once the server has processed everything this client sent before, its
    /// subscriptions included. (`flush` only writes to the socket; the server handles each
    /// connection on its own, so another client's publish may otherwise overtake them.)
    /// A message to this client's own inbox makes the round trip, so the user must be
    /// allowed to publish there (the operator is).
    pub async fn sync(&self) {
        let inbox = self.client.new_inbox();
        let mut echo = self.client.subscribe(inbox.clone()).await.expect("subscribe to the own inbox");
        self.client.publish(inbox, "sync".into()).await.expect("publish to the own inbox");
        tokio::time::timeout(Duration::from_secs(5), echo.next())
            .await
            .expect("the server answers within 5 s")
            .expect("subscription open");
    }

    /// Waits (up to 5 s) for the server to report a permissions violation naming `subject`.
    pub async fn violation(&mut self, subject: &str) -> String {
        let wait = async {
            while let Some(error) = self.errors.recv().await {
                if error.contains("Permissions Violation") && error.contains(subject) {
                    return error;
                }
            }
            String::new()
        };
        match tokio::time::timeout(Duration::from_secs(5), wait).await {
            Ok(error) if !error.is_empty() => error,
            _ => panic!("no permissions violation reported for {subject}"),
        }
    }

    /// Server errors reported so far.
    pub fn errors_so_far(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        while let Ok(error) = self.errors.try_recv() {
            errors.push(error);
        }
        errors
    }
}

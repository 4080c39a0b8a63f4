//! The JetStream KV buckets only orchestrators write: `servers`, `nodes` and `secrets`.
//!
//! `secrets` holds each live server's per-match secret (key = game id), apart from its
//! `servers` entry because anyone may read `servers`: it is written when the entry is
//! created (or rebuilt), read by the gateways and by adoption here, and purged, marker
//! and all, when the entry is deleted. Its `max_age` bounds what a crash leaves.
//!
//! `servers` is a live view: one entry per live game server, rewritten at each state
//! change and deleted when the server ends. `nodes` holds each node's heartbeat. Every
//! call has a deadline. Reconciliation and the node claim work by revision: a change
//! made on the strength of a read applies only if the key still has the revision read
//! (compare-and-set, compare-and-delete), so two writers never undo each other. A deleted key leaves a delete marker in the bucket's stream;
//! the [`Store::janitor`] purges markers once watchers have had time to see them (as
//! the Go client's `PurgeDeletes` does), so a bucket does not grow with every game ever
//! played.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use mm_shared::nats::ensure_kv_bucket;
use mm_shared::protocol::{NodeEntry, ServerEntry, buckets};
use tokio_util::sync::CancellationToken;

/// Deadline of one KV operation.
const KV_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a delete marker stays before the janitor purges it.
const MARKER_AGE: Duration = Duration::from_secs(30);
/// How often the janitor looks for markers to purge.
const JANITOR_INTERVAL: Duration = Duration::from_secs(5);
/// How long a dead node's entry stays in `nodes` (live nodes rewrite theirs every second).
const NODES_MAX_AGE: Duration = Duration::from_secs(3600);
/// How long a secret stays at most: longer than any game (the entry's deletion purges it
/// first); only what a crash between two writes leaves waits this long.
const SECRETS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Why a KV operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` found the key already there.
    #[error("an entry for game {0} already exists")]
    Exists(String),
    /// The key changed since it was read (or exists, for a create).
    #[error("KV bucket `{bucket}`: `{key}` changed since it was read")]
    Conflict { bucket: &'static str, key: String },
    #[error("KV bucket `{bucket}` did not answer within {}", mm_shared::duration::format(KV_TIMEOUT))]
    Timeout { bucket: &'static str },
    #[error("KV bucket `{bucket}`: {reason}")]
    Failed { bucket: &'static str, reason: String },
}

/// A value read from KV with the revision it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revised<T> {
    pub value: T,
    pub revision: u64,
}

/// A key's latest record: a value, or a delete marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Latest<T> {
    Value(Revised<T>),
    Deleted { revision: u64 },
}

pub struct Store {
    client: async_nats::Client,
    servers: kv::Store,
    nodes: kv::Store,
    secrets: kv::Store,
    /// Keys deleted from `servers`, oldest first, for the janitor.
    deleted: Mutex<VecDeque<(String, Instant)>>,
}

impl Store {
    /// Opens the buckets, creating them if they do not exist yet, with the replicas
    /// `auto` gives (3 in a cluster of three or more servers, else 1).
    #[cfg(test)]
    pub async fn open(client: async_nats::Client) -> anyhow::Result<Self> {
        let replicas = mm_shared::nats::kv_replicas(&client, mm_shared::config::Replicas::Auto);
        Self::open_with(client, replicas).await
    }

    /// Like [`Store::open`], with `replicas` copies of each bucket it creates (a bucket
    /// that exists keeps its own).
    pub async fn open_with(client: async_nats::Client, replicas: usize) -> anyhow::Result<Self> {
        tracing::debug!(replicas, "opening the KV buckets");
        let mut js = jetstream::new(client.clone());
        js.set_timeout(KV_TIMEOUT);
        let servers = ensure_kv_bucket(
            &js,
            kv::Config {
                bucket: buckets::SERVERS.to_owned(),
                description: "live game servers, by game id (written by orchestrators)".to_owned(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
            KV_TIMEOUT,
        )
        .await?;
        let nodes = ensure_kv_bucket(
            &js,
            kv::Config {
                bucket: buckets::NODES.to_owned(),
                description: "orchestrator nodes: capacity, use, heartbeat".to_owned(),
                history: 1,
                max_age: NODES_MAX_AGE,
                num_replicas: replicas,
                ..Default::default()
            },
            KV_TIMEOUT,
        )
        .await?;
        let secrets = ensure_kv_bucket(
            &js,
            kv::Config {
                bucket: buckets::SECRETS.to_owned(),
                description:
                    "game servers' per-match secrets, by game id (orchestrators write, gateways read)"
                        .to_owned(),
                history: 1,
                max_age: SECRETS_MAX_AGE,
                num_replicas: replicas,
                ..Default::default()
            },
            KV_TIMEOUT,
        )
        .await?;
        Ok(Self { client, servers, nodes, secrets, deleted: Mutex::new(VecDeque::new()) })
    }

    /// The NATS connection the buckets use (for the node's few plain publishes).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Writes a server's secret (creation, and a recovered entry).
    pub async fn put_secret(&self, game_id: &str, secret: &str) -> Result<(), StoreError> {
        let value = bytes::Bytes::copy_from_slice(secret.as_bytes());
        bounded(buckets::SECRETS, self.secrets.put(game_id, value)).await.map(|_| ())
    }

    /// A server's secret, if it has one.
    pub async fn secret(&self, game_id: &str) -> Result<Option<String>, StoreError> {
        let value = bounded(buckets::SECRETS, self.secrets.get(game_id)).await?;
        Ok(value
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .filter(|secret| !secret.is_empty()))
    }

    /// Removes a server's secret, delete marker and all (best effort: its `max_age` ends
    /// one this misses).
    async fn forget_secret(&self, game_id: &str) {
        let subject = format!("{}{game_id}", self.secrets.prefix);
        match tokio::time::timeout(KV_TIMEOUT, self.secrets.stream.purge().filter(subject)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::debug!(%game_id, "purging a secret: {err}"),
            Err(_) => tracing::debug!(%game_id, "purging a secret: no answer in time"),
        }
    }

    /// The `nodes` bucket, for watching.
    pub fn nodes(&self) -> &kv::Store {
        &self.nodes
    }

    /// Writes a new server entry, then its secret; fails with [`StoreError::Exists`] if
    /// its game id is taken (the live server's secret is left as it is). An entry whose
    /// secret cannot be written is deleted again: nobody could connect to it.
    pub async fn create_server(&self, entry: &ServerEntry) -> Result<(), StoreError> {
        let value = encode(entry);
        let bucket = buckets::SERVERS;
        match tokio::time::timeout(KV_TIMEOUT, self.servers.create(&entry.game_id, value)).await {
            Err(_) => return Err(StoreError::Timeout { bucket }),
            Ok(Ok(_)) => {}
            Ok(Err(err)) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                return Err(StoreError::Exists(entry.game_id.clone()));
            }
            Ok(Err(err)) => return Err(StoreError::Failed { bucket, reason: err.to_string() }),
        }
        // A warm server has no match, so no secret yet.
        if !entry.secret.is_empty()
            && let Err(err) = self.put_secret(&entry.game_id, &entry.secret).await
        {
            let _ = self.delete_server(&entry.game_id).await;
            return Err(err);
        }
        Ok(())
    }

    pub async fn put_server(&self, entry: &ServerEntry) -> Result<(), StoreError> {
        let bucket = buckets::SERVERS;
        bounded(bucket, self.servers.put(&entry.game_id, encode(entry))).await.map(|_| ())
    }

    pub async fn delete_server(&self, game_id: &str) -> Result<(), StoreError> {
        bounded(buckets::SERVERS, self.servers.delete(game_id)).await?;
        self.forget_secret(game_id).await;
        self.deleted
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push_back((game_id.to_owned(), Instant::now()));
        Ok(())
    }

    pub async fn get_server(&self, game_id: &str) -> Result<Option<ServerEntry>, StoreError> {
        let value = bounded(buckets::SERVERS, self.servers.get(game_id)).await?;
        Ok(value.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Every server entry (for reconciliation). Entries that do not decode are skipped.
    pub async fn servers(&self) -> Result<Vec<ServerEntry>, StoreError> {
        let bucket = buckets::SERVERS;
        let collect = async {
            let mut keys = self.servers.keys().await.map_err(|err| err.to_string())?;
            let mut entries = Vec::new();
            while let Some(key) = keys.next().await {
                let key = key.map_err(|err| err.to_string())?;
                if let Some(bytes) = self.servers.get(&key).await.map_err(|err| err.to_string())?
                    && let Ok(entry) = serde_json::from_slice::<ServerEntry>(&bytes)
                {
                    entries.push(entry);
                }
            }
            Ok::<_, String>(entries)
        };
        match tokio::time::timeout(KV_TIMEOUT * 4, collect).await {
            Err(_) => Err(StoreError::Timeout { bucket }),
            Ok(result) => result.map_err(|reason| StoreError::Failed { bucket, reason }),
        }
    }

    /// Writes `entry` over the revision `revision` of its key; [`StoreError::Conflict`]
    /// when the key has another revision now.
    pub async fn update_server(&self, entry: &ServerEntry, revision: u64) -> Result<u64, StoreError> {
        let (bucket, key) = (buckets::SERVERS, entry.game_id.as_str());
        revised(bucket, key, self.servers.update(key, encode(entry), revision)).await
    }

    /// Deletes `game_id`'s entry if it still has `revision`: `Ok(false)` when it changed.
    pub async fn delete_server_if(&self, game_id: &str, revision: u64) -> Result<bool, StoreError> {
        match revised(buckets::SERVERS, game_id, async {
            self.servers.delete_expect_revision(game_id, Some(revision)).await.map(|()| 0)
        })
        .await
        {
            Ok(_) => {
                self.forget_secret(game_id).await;
                self.deleted
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push_back((game_id.to_owned(), Instant::now()));
                Ok(true)
            }
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// The latest record of every key of `servers`, with its revision: one ordered
    /// consumer delivering the last message per key (entries that do not decode are
    /// skipped). Reconciliation reads the bucket this way rather than key by key.
    pub async fn server_snapshot(&self) -> Result<Vec<Revised<ServerEntry>>, StoreError> {
        let bucket = buckets::SERVERS;
        let prefix = self.servers.prefix.clone();
        let collect = async {
            let consumer = self
                .servers
                .stream
                .create_consumer(jetstream::consumer::push::OrderedConfig {
                    deliver_subject: self.client.new_inbox(),
                    description: Some("orchestrator reconciliation".to_owned()),
                    filter_subject: format!("{prefix}>"),
                    deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                    replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                    ..Default::default()
                })
                .await
                .map_err(|err| err.to_string())?;
            let mut entries = Vec::new();
            if consumer.cached_info().num_pending == 0 {
                return Ok(entries);
            }
            let mut messages = consumer.messages().await.map_err(|err| err.to_string())?;
            while let Some(message) = messages.next().await {
                let message = message.map_err(|err| err.to_string())?;
                let (revision, pending) = {
                    let info = message.info().map_err(|err| err.to_string())?;
                    (info.stream_sequence, info.pending)
                };
                let deleted =
                    message.headers.as_ref().is_some_and(|headers| headers.get("KV-Operation").is_some());
                if !deleted && let Ok(value) = serde_json::from_slice::<ServerEntry>(&message.payload) {
                    entries.push(Revised { value, revision });
                }
                if pending == 0 {
                    break;
                }
            }
            Ok::<_, String>(entries)
        };
        match tokio::time::timeout(KV_TIMEOUT * 2, collect).await {
            Err(_) => Err(StoreError::Timeout { bucket }),
            Ok(result) => result.map_err(|reason| StoreError::Failed { bucket, reason }),
        }
    }

    /// `node`'s latest record in `nodes` (`None`: never written, or purged). A value that
    /// does not decode reads as a default entry with the revision, so it can be replaced.
    pub async fn node_latest(&self, node: &str) -> Result<Option<Latest<NodeEntry>>, StoreError> {
        let entry = bounded(buckets::NODES, self.nodes.entry(node)).await?;
        Ok(entry.map(|entry| match entry.operation {
            kv::Operation::Put => Latest::Value(Revised {
                value: serde_json::from_slice(&entry.value).unwrap_or_default(),
                revision: entry.revision,
            }),
            kv::Operation::Delete | kv::Operation::Purge => Latest::Deleted { revision: entry.revision },
        }))
    }

    /// Writes a node entry where none is (or a delete marker is); its revision.
    pub async fn create_node(&self, entry: &NodeEntry) -> Result<u64, StoreError> {
        let (bucket, key) = (buckets::NODES, entry.node.as_str());
        match tokio::time::timeout(KV_TIMEOUT, self.nodes.create(key, encode(entry))).await {
            Err(_) => Err(StoreError::Timeout { bucket }),
            Ok(Ok(revision)) => Ok(revision),
            Ok(Err(err)) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(StoreError::Conflict { bucket, key: key.to_owned() })
            }
            Ok(Err(err)) => Err(StoreError::Failed { bucket, reason: err.to_string() }),
        }
    }

    /// Writes a node entry over `revision`; its new revision.
    pub async fn update_node(&self, entry: &NodeEntry, revision: u64) -> Result<u64, StoreError> {
        let (bucket, key) = (buckets::NODES, entry.node.as_str());
        revised(bucket, key, self.nodes.update(key, encode(entry), revision)).await
    }

    /// Deletes `node`'s entry if it still has `revision` (this instance's last write).
    pub async fn delete_node_if(&self, node: &str, revision: u64) -> Result<bool, StoreError> {
        match revised(buckets::NODES, node, async {
            self.nodes.delete_expect_revision(node, Some(revision)).await.map(|()| 0)
        })
        .await
        {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict { .. }) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Purges delete markers of `servers` older than [`MARKER_AGE`], every few seconds,
    /// until `shutdown`.
    pub async fn janitor(&self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(JANITOR_INTERVAL) => {}
                () = shutdown.cancelled() => return,
            }
            self.purge_markers(MARKER_AGE).await;
        }
    }

    /// One janitor pass: purges the delete markers of keys deleted at least `age` ago.
    /// A key whose purge fails goes back in the queue (with the keys after it), so a
    /// JetStream hiccup delays its marker's purge rather than leaving it for good.
    /// Returns how many keys are still waiting.
    async fn purge_markers(&self, age: Duration) -> usize {
        let mut due: VecDeque<(String, Instant)> = {
            let mut deleted = self.deleted.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let count = deleted.iter().take_while(|(_, at)| at.elapsed() >= age).count();
            deleted.drain(..count).collect()
        };
        while let Some((key, deleted_at)) = due.pop_front() {
            // Only a marker is purged: a key that was written again meanwhile (a new
            // game for the same match) keeps its entry.
            if let Ok(Ok(Some(entry))) =
                tokio::time::timeout(KV_TIMEOUT, self.servers.entry(key.as_str())).await
                && entry.operation == kv::Operation::Put
            {
                continue;
            }
            // The bucket's stream handle came with the bucket: nothing to look up here.
            let subject = format!("{}{key}", self.servers.prefix);
            let failure =
                match tokio::time::timeout(KV_TIMEOUT, self.servers.stream.purge().filter(subject)).await {
                    Ok(Ok(_)) => None,
                    Ok(Err(err)) => Some(err.to_string()),
                    Err(_) => Some(format!("no answer within {}", mm_shared::duration::format(KV_TIMEOUT))),
                };
            if let Some(failure) = failure {
                tracing::debug!(%key, "purging a delete marker, will try again: {failure}");
                due.push_front((key, deleted_at));
                let mut deleted = self.deleted.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // Oldest first: the ones taken out go back in front of newer deletions.
                while let Some(item) = due.pop_back() {
                    deleted.push_front(item);
                }
                break;
            }
        }
        self.deleted.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

/// Runs a revision-checked KV write within the deadline: a wrong revision is
/// [`StoreError::Conflict`].
async fn revised(
    bucket: &'static str,
    key: &str,
    call: impl Future<Output = Result<u64, kv::UpdateError>>,
) -> Result<u64, StoreError> {
    match tokio::time::timeout(KV_TIMEOUT, call).await {
        Err(_) => Err(StoreError::Timeout { bucket }),
        Ok(Ok(revision)) => Ok(revision),
        Ok(Err(err)) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
            Err(StoreError::Conflict { bucket, key: key.to_owned() })
        }
        Ok(Err(err)) => Err(StoreError::Failed { bucket, reason: err.to_string() }),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> bytes::Bytes {
    serde_json::to_vec(value).unwrap_or_default().into()
}

async fn bounded<T, E: std::fmt::Display>(
    bucket: &'static str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(KV_TIMEOUT, call).await {
        Err(_) => Err(StoreError::Timeout { bucket }),
        Ok(result) => result.map_err(|err| StoreError::Failed { bucket, reason: err.to_string() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn messages(store: &Store) -> u64 {
        store.servers.stream.get_info().await.expect("stream info").state.messages
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn markers_are_purged_and_a_failed_purge_is_tried_again() {
        let mut nats = mm_testkit::NatsServer::start().expect("nats-server");
        let client = async_nats::connect(nats.url()).await.expect("connects");
        let store = Store::open(client).await.expect("opens the buckets");
        for game_id in ["g1", "g2"] {
            let entry = ServerEntry { game_id: game_id.to_owned(), ..ServerEntry::default() };
            store.create_server(&entry).await.expect("created");
            store.delete_server(game_id).await.expect("deleted");
        }
        assert_eq!(messages(&store).await, 2, "two delete markers");
        assert_eq!(store.purge_markers(Duration::from_secs(3600)).await, 2, "none is due yet");
        assert_eq!(messages(&store).await, 2);
        assert_eq!(store.purge_markers(Duration::ZERO).await, 0, "both purged");
        assert_eq!(messages(&store).await, 0);

        // With JetStream gone, a due key stays queued for the next pass.
        store
            .create_server(&ServerEntry { game_id: "g3".to_owned(), ..ServerEntry::default() })
            .await
            .expect("created");
        store.delete_server("g3").await.expect("deleted");
        nats.process().stop_with(libc::SIGTERM, Duration::from_secs(5));
        assert_eq!(store.purge_markers(Duration::ZERO).await, 1, "g3 waits for another try");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn snapshots_carry_revisions_and_deletes_compare_them() {
        let nats = mm_testkit::NatsServer::start().expect("nats-server");
        let client = async_nats::connect(nats.url()).await.expect("connects");
        let store = Store::open(client).await.expect("opens the buckets");
        assert!(store.server_snapshot().await.expect("empty snapshot").is_empty());
        for game_id in ["g1", "g2", "g3"] {
            let entry = ServerEntry { game_id: game_id.to_owned(), ..ServerEntry::default() };
            store.create_server(&entry).await.expect("created");
        }
        store.delete_server("g3").await.expect("deleted");
        store.servers.put("junk", "not json".into()).await.expect("put");
        let mut snapshot = store.server_snapshot().await.expect("snapshot");
        snapshot.sort_by(|a, b| a.value.game_id.cmp(&b.value.game_id));
        let ids: Vec<&str> = snapshot.iter().map(|entry| entry.value.game_id.as_str()).collect();
        assert_eq!(ids, ["g1", "g2"], "no deleted or undecodable entry");

        // g1 changes after the snapshot: a compare-and-delete of the old revision fails.
        let g1 = snapshot[0].clone();
        let changed = ServerEntry { detail: "changed".to_owned(), ..g1.value.clone() };
        let revision = store.update_server(&changed, g1.revision).await.expect("updated");
        assert!(matches!(store.update_server(&changed, g1.revision).await, Err(StoreError::Conflict { .. })));
        assert!(!store.delete_server_if("g1", g1.revision).await.expect("answered"), "changed since");
        assert!(store.delete_server_if("g1", revision).await.expect("answered"), "the current revision");
        assert!(store.get_server("g1").await.expect("get").is_none());
    }
}

//! The JetStream KV buckets only orchestrators write: `servers` and `nodes`.
//!
//! `servers` is a live view: one entry per live game server, rewritten at each state
//! change and deleted when the server ends. `nodes` holds each node's heartbeat. Every
//! call has a deadline. A deleted key leaves a delete marker in the bucket's stream;
//! the [`Store::janitor`] purges markers once watchers have had time to see them (as
//! the Go client's `PurgeDeletes` does), so a bucket does not grow with every game ever
//! played.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
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

/// Why a KV operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` found the key already there.
    #[error("an entry for game {0} already exists")]
    Exists(String),
    #[error("KV bucket `{bucket}` did not answer within {}", mm_shared::duration::format(KV_TIMEOUT))]
    Timeout { bucket: &'static str },
    #[error("KV bucket `{bucket}`: {reason}")]
    Failed { bucket: &'static str, reason: String },
}

pub struct Store {
    servers: kv::Store,
    nodes: kv::Store,
    /// Keys deleted from `servers`, oldest first, for the janitor.
    deleted: Mutex<VecDeque<(String, Instant)>>,
}

impl Store {
    /// Opens both buckets, creating them if they do not exist yet.
    pub async fn open(client: async_nats::Client) -> anyhow::Result<Self> {
        let mut js = jetstream::new(client);
        js.set_timeout(KV_TIMEOUT);
        let servers = ensure_bucket(
            &js,
            kv::Config {
                bucket: buckets::SERVERS.to_owned(),
                description: "live game servers, by game id (written by orchestrators)".to_owned(),
                history: 1,
                ..Default::default()
            },
        )
        .await?;
        let nodes = ensure_bucket(
            &js,
            kv::Config {
                bucket: buckets::NODES.to_owned(),
                description: "orchestrator nodes: capacity, use, heartbeat".to_owned(),
                history: 1,
                max_age: NODES_MAX_AGE,
                ..Default::default()
            },
        )
        .await?;
        Ok(Self { servers, nodes, deleted: Mutex::new(VecDeque::new()) })
    }

    /// The `nodes` bucket, for watching.
    pub fn nodes(&self) -> &kv::Store {
        &self.nodes
    }

    /// Writes a new server entry; fails with [`StoreError::Exists`] if its game id is taken.
    pub async fn create_server(&self, entry: &ServerEntry) -> Result<(), StoreError> {
        let value = encode(entry);
        let bucket = buckets::SERVERS;
        match tokio::time::timeout(KV_TIMEOUT, self.servers.create(&entry.game_id, value)).await {
            Err(_) => Err(StoreError::Timeout { bucket }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                Err(StoreError::Exists(entry.game_id.clone()))
            }
            Ok(Err(err)) => Err(StoreError::Failed { bucket, reason: err.to_string() }),
        }
    }

    pub async fn put_server(&self, entry: &ServerEntry) -> Result<(), StoreError> {
        let bucket = buckets::SERVERS;
        bounded(bucket, self.servers.put(&entry.game_id, encode(entry))).await.map(|_| ())
    }

    pub async fn delete_server(&self, game_id: &str) -> Result<(), StoreError> {
        bounded(buckets::SERVERS, self.servers.delete(game_id)).await?;
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

    pub async fn put_node(&self, entry: &NodeEntry) -> Result<(), StoreError> {
        bounded(buckets::NODES, self.nodes.put(&entry.node, encode(entry))).await.map(|_| ())
    }

    pub async fn delete_node(&self, node: &str) -> Result<(), StoreError> {
        bounded(buckets::NODES, self.nodes.delete(node)).await
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

/// Gets a bucket, or creates it when it does not exist yet (two nodes may race: the
/// loser gets the winner's).
async fn ensure_bucket(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    let name = config.bucket.clone();
    if let Ok(Ok(store)) = tokio::time::timeout(KV_TIMEOUT, js.get_key_value(name.clone())).await {
        return Ok(store);
    }
    match tokio::time::timeout(KV_TIMEOUT, js.create_key_value(config)).await {
        Ok(Ok(store)) => Ok(store),
        _ => match tokio::time::timeout(KV_TIMEOUT, js.get_key_value(name.clone())).await {
            Ok(Ok(store)) => Ok(store),
            Ok(Err(err)) => Err(anyhow::anyhow!(
                "cannot open or create KV bucket `{name}`: {err} (is JetStream enabled?)"
            )),
            Err(_) => Err(anyhow::anyhow!("KV bucket `{name}` did not answer within {KV_TIMEOUT:?}")),
        },
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
}

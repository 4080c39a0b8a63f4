//! A NATS micro service and the tasks serving its endpoints.
//!
//! Endpoints subscribe in the micro service's queue group, so every instance of the
//! matchmaker shares each subject's load; `nats micro ls/info/stats` sees them all.

use std::future::Future;

use async_nats::Client;
use async_nats::service::{Service, ServiceExt};
use mm_shared::nats::{ServiceError, serve_endpoint};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// One running micro service.
pub struct MicroService {
    service: Service,
    endpoints: JoinSet<()>,
    shutdown: CancellationToken,
    concurrency: usize,
}

impl MicroService {
    /// Registers service `name` (discoverable by `$SRV.PING`/`INFO`/`STATS`).
    pub async fn start(
        nats: &Client,
        name: &str,
        description: &str,
        concurrency: usize,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let service = nats
            .service_builder()
            .description(description)
            .start(name, mm_shared::VERSION)
            .await
            .map_err(|err| anyhow::anyhow!("cannot start micro service {name}: {err}"))?;
        Ok(Self { service, endpoints: JoinSet::new(), shutdown, concurrency })
    }

    /// Serves `subject` (endpoint `name` in `nats micro info`) with `handler` until shutdown.
    pub async fn endpoint<Req, Resp, H, Fut>(
        &mut self,
        name: &str,
        subject: &'static str,
        handler: H,
    ) -> anyhow::Result<()>
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        H: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    {
        let endpoint = self
            .service
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(|err| anyhow::anyhow!("cannot add endpoint {subject}: {err}"))?;
        self.endpoints.spawn(serve_endpoint(
            endpoint,
            subject,
            self.concurrency,
            self.shutdown.clone(),
            handler,
        ));
        Ok(())
    }

    /// Like [`MicroService::endpoint`], with `state` cloned into each call: the handler is
    /// usually a method call, `|service, request| async move { service.join(request).await }`.
    pub async fn route<S, Req, Resp, H, Fut>(
        &mut self,
        name: &str,
        subject: &'static str,
        state: S,
        handler: H,
    ) -> anyhow::Result<()>
    where
        S: Clone + Send + Sync + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        H: Fn(S, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, ServiceError>> + Send + 'static,
    {
        self.endpoint(name, subject, move |request| handler(state.clone(), request)).await
    }

    /// Waits until every endpoint has stopped (after shutdown), then leaves the service.
    pub async fn finish(mut self) {
        while self.endpoints.join_next().await.is_some() {}
        let _ = self.service.stop().await;
    }
}

/// Redis failed: the service cannot answer now (503), the caller may retry. Every
/// service's Redis errors read the same.
pub(crate) fn unavailable(err: redis::RedisError) -> ServiceError {
    ServiceError::unavailable(format!("storage unavailable: {err}"))
}

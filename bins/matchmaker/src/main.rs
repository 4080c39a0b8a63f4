//! The matchmaker binary: `session`, `matchmaking` and `store` micro services and the
//! matcher, with `/metrics` and `/healthz` on 127.0.0.1:9101. See the library for the parts.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use matchmaker::config::Config;
use mm_shared::service::{self, CommonArgs, Service};

/// Forms matches of ten from the Redis queue and hands them to the orchestrator; also
/// serves player sessions and the store.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    service::main("matchmaker", &args.common, run)
}

async fn run(service: Arc<Service<Config>>) -> anyhow::Result<()> {
    let config = &service.config;
    config.validate().map_err(anyhow::Error::msg)?;
    service.serve_admin(config.matchmaker.admin_listen, "matchmaker.admin_listen").await?;
    // Healthy only once its services answer (the signing keys and buckets come first).
    let serving = Arc::new(AtomicBool::new(false));
    let serving_check = serving.clone();
    service.health.add_check("serving", move || {
        let serving = serving_check.load(Ordering::Relaxed);
        async move { if serving { Ok("serving".to_owned()) } else { Err("starting".to_owned()) } }
    });
    let nats = service.connect_nats(&config.nats).await?;
    let redis = service.connect_redis(&config.redis).await?;
    let running = matchmaker::start(&nats, redis, config, service.shutdown.clone()).await?;
    serving.store(true, Ordering::Relaxed);
    service.shutdown.cancelled().await;
    running.finish().await;
    nats.drain().await?;
    Ok(())
}

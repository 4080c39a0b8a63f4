//! The harness binary: simulated players against the gateway.
//!
//! `harness --players N --duration 60s --gateway URL --nats URL --report FILE.json
//! --report-html FILE.html`
//!
//! Flags map onto config keys (`harness.players`, ...) so that a file, the environment and
//! the command line all work the same way. The run itself is [`harness::run::Run`].

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use harness::config::Config;
use harness::run::{Identity, Options, Run};
use mm_shared::service::{self, CommonArgs, Service};

/// Simulated players: log in, shop, queue, play, log out.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Players to keep alive (overrides `harness.players`); a fleet target set over
    /// `harness.control` takes precedence while it is set.
    #[arg(long)]
    players: Option<u64>,
    /// How long to run, like `60s` or `5m` (overrides `harness.duration`).
    #[arg(long, value_parser = mm_shared::duration::parse)]
    duration: Option<Duration>,
    /// Gateway base URL (overrides `harness.gateway`).
    #[arg(long)]
    gateway: Option<String>,
    /// NATS URL for fleet control (overrides `nats.url`). Without it, and without
    /// `MM_NATS__URL`, the harness reads `NATS_URL` (as the `nats` CLI does): a load machine
    /// runs `set -a; . ./harness.env` with the file copied from the backend, whose URL
    /// carries the harness user's credentials.
    #[arg(long)]
    nats: Option<String>,
    /// Write the run report here as JSON (overrides `harness.report`).
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Write the run report here as a self-contained HTML page with charts (overrides
    /// `harness.report_html`).
    #[arg(long, value_name = "FILE.html")]
    report_html: Option<PathBuf>,
    /// Exit 1 when more than this fraction of finished scenarios failed, like `0.01`
    /// (overrides `harness.max_error_rate`).
    #[arg(long, value_name = "FRACTION")]
    max_error_rate: Option<f64>,
    /// Exit 1 when time-to-match p99 is over this, like `30s`
    /// (overrides `harness.max_time_to_match_p99`).
    #[arg(long, value_parser = mm_shared::duration::parse, value_name = "DURATION")]
    max_time_to_match_p99: Option<Duration>,
    /// This instance's id in the fleet (overrides `harness.instance`).
    #[arg(long)]
    instance: Option<String>,
    /// Run without NATS: no fleet, no live control (overrides `harness.standalone`).
    #[arg(long)]
    standalone: bool,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    let overrides = &mut args.common.overrides;
    if let Some(players) = args.players {
        overrides.set("harness.players", players);
    }
    if let Some(duration) = args.duration {
        overrides.set("harness.duration", mm_shared::duration::format(duration));
    }
    if let Some(gateway) = &args.gateway {
        overrides.set("harness.gateway", gateway);
    }
    if let Some(nats) = &args.nats {
        overrides.set("nats.url", nats);
    } else if std::env::var_os("MM_NATS__URL").is_none()
        && let Some(url) = std::env::var("NATS_URL").ok().filter(|url| !url.trim().is_empty())
    {
        overrides.set("nats.url", url);
    }
    if let Some(report) = &args.report {
        overrides.set("harness.report", report);
    }
    if let Some(report) = &args.report_html {
        overrides.set("harness.report_html", report);
    }
    if let Some(rate) = args.max_error_rate {
        overrides.set("harness.max_error_rate", rate);
    }
    if let Some(p99) = args.max_time_to_match_p99 {
        overrides.set("harness.max_time_to_match_p99", mm_shared::duration::format(p99));
    }
    if let Some(instance) = &args.instance {
        overrides.set("harness.instance", instance);
    }
    if args.standalone {
        overrides.set("harness.standalone", true);
    }
    service::main("harness", &args.common, run)
}

async fn run(service: Arc<Service<Config>>) -> anyhow::Result<()> {
    let config = &service.config;
    config.harness.validate()?;
    service.serve_admin(config.harness.admin_listen, "harness.admin_listen").await?;
    let nats = if config.harness.standalone {
        tracing::info!("standalone: no fleet membership, control or stats over NATS");
        None
    } else {
        Some(service.connect_nats(&config.nats).await?)
    };
    let identity = Identity::from_config(&config.harness);
    let options = Options { nats: nats.clone(), preseeded: false, progress: config.harness.progress };
    let started = Run::start(config.harness.clone(), identity, options).await?;
    // With `[[harness.stages]]`, as long as the plan lasts.
    started.run_for(config.harness.run_duration(), &service.shutdown).await;
    let report = started.finish().await;
    if let Some(nats) = nats {
        let _ = tokio::time::timeout(Duration::from_secs(2), nats.drain()).await;
    }

    if config.harness.print_table {
        let mut stdout = std::io::stdout().lock();
        // The table is the command's output, like `--print-config`: it goes to stdout.
        let _ = writeln!(stdout, "\n{}", report.table());
        let _ = stdout.flush();
    }
    if let Some(path) = &config.harness.report {
        report.write(path).with_context(|| format!("writing the report to {}", path.display()))?;
        tracing::info!(path = %path.display(), "report written");
    }
    if let Some(path) = &config.harness.report_html {
        harness::report_html::write(&report, path)
            .with_context(|| format!("writing the HTML report to {}", path.display()))?;
        tracing::info!(path = %path.display(), "HTML report written");
    }
    if let Some(path) = &config.harness.report_table {
        std::fs::write(path, report.table())
            .with_context(|| format!("writing the table to {}", path.display()))?;
    }
    let breaches = report.breaches();
    if !breaches.is_empty() {
        let what: Vec<&str> = breaches.iter().map(|threshold| threshold.detail.as_str()).collect();
        anyhow::bail!("the run failed its thresholds: {}", what.join("; "));
    }
    Ok(())
}

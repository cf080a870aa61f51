//! `weir serve --config FILE`: the gateway daemon, a thin call into the
//! [`topology`](crate::topology). SIGINT or SIGTERM stops it in order;
//! SIGHUP (`systemctl reload weir`) reloads the config and the modules.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use super::Failure;
use crate::config::Config;
use crate::topology::{Handle, Options, Topology, log_report};

/// Arguments of `weir serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The gateway config.
    #[arg(long, short, default_value = "/etc/weir/weir.toml")]
    config: PathBuf,
    /// Records the channel from sources to pipelines holds (backpressure bound).
    #[arg(long, default_value_t = 1024)]
    channel: usize,
    /// How often to log each sink's queue (depth, enqueued, delivered);
    /// `0` turns the stats lines off.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    stats_every: std::time::Duration,
}

pub(super) fn run(args: ServeArgs) -> Result<(), Failure> {
    let cfg = Config::load(&args.config).map_err(Failure::refused)?;
    // TLS for MQTT uses rustls with the ring provider (smaller on ARM).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let opts = Options {
        channel: args.channel,
        stats_every: args.stats_every,
    };
    let topology = Topology::build(&cfg, opts).map_err(refused_if_config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let reloads = tokio::spawn(reload_on_hangup(topology.handle(), args.config.clone()));
        let report = topology.run(stop_signal()).await;
        reloads.abort();
        report
    })?;
    log_report(&report.snapshot);
    std::io::stdout().flush()?;
    Ok(())
}

/// A module that does not load is a refused config (exit 2); a store that
/// cannot open is a runtime error (exit 1).
fn refused_if_config(e: anyhow::Error) -> Failure {
    if e.is::<Box<crate::pipeline::chain::BuildError>>() {
        Failure::refused(e)
    } else {
        Failure::from(e)
    }
}

/// Reload `path` at every SIGHUP. A config that does not parse or load is
/// refused with the reason, once, and the running one keeps running.
async fn reload_on_hangup(handle: Handle, path: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!(config = %path.display(), "SIGHUP: reloading the config and the modules");
        match Config::load(&path) {
            Ok(cfg) => {
                // The outcome is logged by the topology.
                let _ = handle.reload(cfg).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "reload refused: the config does not load; the running config keeps running (fix it, then `systemctl reload weir`)");
            }
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

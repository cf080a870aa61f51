//! `weir serve --config FILE`: the gateway daemon. Sources run as tasks on a
//! small async runtime and hand records over a bounded channel to the
//! pipeline thread, which writes results to stdout as JSON lines (sinks come
//! with the durable buffer). SIGINT or SIGTERM stops it cleanly: sources
//! stop, the channel drains, counters are logged.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use clap::Args;

use super::{Failure, output};
use crate::config::{Config, SourceConfig};
use crate::pipeline::Runtime;
use crate::record::Record;
use crate::routing::Router;
use crate::sources::serial::{self, SerialMetrics};

/// Arguments of `weir serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The gateway config.
    #[arg(long, short, default_value = "/etc/weir/weir.toml")]
    config: PathBuf,
    /// Records the channel from sources to pipelines holds (backpressure bound).
    #[arg(long, default_value_t = 1024)]
    channel: usize,
}

pub(super) fn run(args: ServeArgs) -> Result<(), Failure> {
    let cfg = Config::load(&args.config).map_err(Failure::refused)?;
    let mut router = Router::from_config(&cfg, &Runtime::new()).map_err(Failure::refused)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Record>(args.channel.max(1));

    let worker = std::thread::Builder::new().name("pipelines".into()).spawn(
        move || -> std::io::Result<Router> {
            let mut stdout = BufWriter::new(std::io::stdout().lock());
            let mut failed = None;
            while let Some(rec) = rx.blocking_recv() {
                router.dispatch(&rec, |name, out| {
                    if failed.is_none() {
                        failed = output::write_output(&mut stdout, name, out).err();
                    }
                });
                if let Some(e) = failed.take() {
                    return Err(e);
                }
                if rx.is_empty() {
                    stdout.flush()?;
                }
            }
            stdout.flush()?;
            Ok(router)
        },
    )?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let metrics = rt.block_on(async {
        let mut tasks = Vec::new();
        let mut metrics = Vec::new();
        for src in &cfg.sources {
            match src {
                SourceConfig::Serial(s) => {
                    let m = Arc::new(SerialMetrics::default());
                    metrics.push((s.name.clone(), m.clone()));
                    tasks.push(tokio::spawn(serial::source::run(
                        s.clone(),
                        tx.clone(),
                        m,
                        stopped.clone(),
                    )));
                }
            }
        }
        drop(tx);
        tracing::info!(
            sources = tasks.len(),
            pipelines = cfg.pipelines.len(),
            "weir is serving"
        );
        wait_for_signal().await;
        tracing::info!("stopping: sources first, then the pipelines drain");
        let _ = stop.send(true);
        for t in tasks {
            let _ = t.await;
        }
        metrics
    });
    let router = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))??;
    for (name, m) in metrics {
        let rejected = m
            .rejected
            .lock()
            .map(|r| {
                let mut kinds: Vec<String> = r.iter().map(|(k, n)| format!("{k}={n}")).collect();
                kinds.sort();
                kinds.join(",")
            })
            .unwrap_or_default();
        tracing::info!(
            source = %name,
            records = m.records.load(Relaxed),
            bytes = m.bytes.load(Relaxed),
            outages = m.outages.load(Relaxed),
            lost_frames = m.lost_frames.load(Relaxed),
            seq_resets = m.seq_resets.load(Relaxed),
            dropped_full = m.dropped_full.load(Relaxed),
            rejected,
            "source done"
        );
    }
    output::report(&router);
    std::io::stdout().flush()?;
    Ok(())
}

async fn wait_for_signal() {
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

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
use crate::routing::Router;
use crate::sources::mqtt::{self, MqttMetrics};
use crate::sources::serial::{self, SerialMetrics};
use crate::sources::{Ack, Item};

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
    // TLS for MQTT uses rustls with the ring provider (smaller on ARM).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(args.channel.max(1));

    let worker = std::thread::Builder::new().name("pipelines".into()).spawn(
        move || -> std::io::Result<Router> {
            let mut stdout = BufWriter::new(std::io::stdout().lock());
            // Acknowledgements wait until the output they cover is flushed.
            let mut acks: Vec<Ack> = Vec::new();
            while let Some(item) = rx.blocking_recv() {
                let ack = handle(&mut router, item, &mut stdout)?;
                acks.extend(ack);
                if rx.is_empty() || acks.len() >= 256 {
                    stdout.flush()?;
                    acks.drain(..).for_each(Ack::ack);
                }
            }
            stdout.flush()?;
            acks.drain(..).for_each(Ack::ack);
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
        let mut mqtt_metrics = Vec::new();
        for src in &cfg.sources {
            match src {
                SourceConfig::Mqtt(m) => {
                    let counters = Arc::new(MqttMetrics::default());
                    mqtt_metrics.push((m.name.clone(), counters.clone()));
                    let (m, id, tx, stop) = (
                        m.clone(),
                        cfg.gateway.id.clone(),
                        tx.clone(),
                        stopped.clone(),
                    );
                    tasks.push(tokio::spawn(mqtt::source::run(m, id, tx, counters, stop)));
                }
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
        (metrics, mqtt_metrics)
    });
    let (metrics, mqtt_metrics) = metrics;
    let router = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the pipeline thread panicked"))??;
    for (name, m) in metrics {
        let rejected = kinds(&m.rejected);
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
    for (name, m) in mqtt_metrics {
        tracing::info!(
            source = %name,
            messages = m.messages.load(Relaxed),
            records = m.records.load(Relaxed),
            connects = m.connects.load(Relaxed),
            outages = m.outages.load(Relaxed),
            ack_failures = m.ack_failures.load(Relaxed),
            rejected = kinds(&m.rejected),
            "source done"
        );
    }
    output::report(&router);
    std::io::stdout().flush()?;
    Ok(())
}

/// `kind=count,...`, sorted.
fn kinds(counts: &std::sync::Mutex<std::collections::HashMap<&'static str, u64>>) -> String {
    let Ok(counts) = counts.lock() else {
        return String::new();
    };
    let mut kinds: Vec<String> = counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
    kinds.sort();
    kinds.join(",")
}

/// Run one item through the pipelines (or write it as a dead letter) and
/// return its acknowledgement, to be sent once the output is flushed.
fn handle(router: &mut Router, item: Item, out: &mut impl Write) -> std::io::Result<Option<Ack>> {
    match item {
        Item::Record { record, ack } => {
            output::dispatch_to(router, &record, out)?;
            Ok(ack)
        }
        Item::Rejected {
            source,
            topic,
            kind,
            error,
            bytes,
            ack,
        } => {
            let line = serde_json::json!({
                "source": source,
                "topic": topic,
                "dead_letter": { "stage": "source", "kind": kind, "error": error },
                "payload_bytes": bytes,
            });
            writeln!(out, "{line}")?;
            Ok(ack)
        }
    }
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

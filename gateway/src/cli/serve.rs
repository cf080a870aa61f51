//! `weir serve --config FILE`: the gateway daemon.
//!
//! Sources and sinks run as tasks on a small async runtime. Sources hand
//! records over a bounded channel to the pipeline thread, which puts the
//! output into the sink queues (the store); the sync thread makes batches
//! durable and only then acknowledges their inputs; each sink drains its
//! queue. SIGINT or SIGTERM stops it cleanly: sources stop, the pipelines
//! drain, the last batch is synced, the sinks send what they can (MQTT for
//! `drain_on_stop`), counters are logged.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use clap::Args;

use super::{Failure, output};
use crate::config::{Config, SourceConfig};
use crate::pipeline::Runtime;
use crate::routing::Router;
use crate::sinks::intake::{Intake, SyncMetrics, run_syncer};
use crate::sinks::{self, SinkConfig, SinkMetrics, SinkType};
use crate::sources::Item;
use crate::sources::mqtt::{self, MqttMetrics};
use crate::sources::serial::{self, SerialMetrics};
use crate::store::{OpenReport, Queue, Store};

/// Records a pipeline's own channel holds (a thread per pipeline).
const LANE_CAPACITY: usize = 256;

/// The pipeline thread's loop: take inputs, run them through `router`, put
/// the output into the queues, and close a batch when the input runs dry
/// (`sync_every = 0`) or `sync_every` has passed.
fn drain(
    mut rx: tokio::sync::mpsc::Receiver<Item>,
    mut intake: Intake,
    mut router: Router,
    every: std::time::Duration,
    stopping: &AtomicBool,
) -> Router {
    // A batch closes when the channel runs dry (sync_every = 0)
    // or when sync_every has passed since the last one: one sled
    // transaction and one sync per batch, however slow the input.
    let timer = (!every.is_zero()).then(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a timer runtime")
    });
    let mut last = std::time::Instant::now();
    let mut stop_seen: Option<std::time::Instant> = None;
    loop {
        // Shutdown is bounded: after DRAIN_BUDGET the inputs
        // still waiting are left unacknowledged (an MQTT broker
        // redelivers them; serial ones are lost, and counted).
        if stopping.load(Relaxed)
            && stop_seen
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                >= DRAIN_BUDGET
        {
            let mut left = 0u64;
            while let Some(item) = rx.blocking_recv() {
                left += 1;
                drop(item);
            }
            if left > 0 {
                intake.metrics.abandoned.fetch_add(left, Relaxed);
                tracing::warn!(
                    inputs = left,
                    budget_s = DRAIN_BUDGET.as_secs(),
                    "stopping: inputs left unprocessed after the drain budget; MQTT brokers redeliver them, serial ones are lost"
                );
            }
            break;
        }
        let item = if let Some(timer) = timer.as_ref().filter(|_| intake.has_pending()) {
            let wait = every.saturating_sub(last.elapsed());
            match timer.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                Ok(item) => item,
                Err(_) => {
                    intake.submit();
                    last = std::time::Instant::now();
                    continue;
                }
            }
        } else {
            rx.blocking_recv()
        };
        let Some(item) = item else { break };
        intake.handle(&mut router, item);
        let due = if every.is_zero() {
            rx.is_empty()
        } else {
            last.elapsed() >= every
        };
        if due {
            intake.submit();
            last = std::time::Instant::now();
        }
    }
    intake.submit();
    router
}

/// The dispatcher of a thread per pipeline: each record goes to the
/// pipelines that take it, each with a share of its acknowledgement and
/// its own redelivery marker; source dead letters and records no pipeline
/// takes go through its own intake. Returns its (empty) router.
fn drain_dispatch(
    mut rx: tokio::sync::mpsc::Receiver<Item>,
    mut intake: Intake,
    lanes: Vec<(
        String,
        crate::routing::Route,
        tokio::sync::mpsc::Sender<Item>,
    )>,
    stopping: &AtomicBool,
) -> Vec<Router> {
    let mut none = Router::empty();
    let mut stop_seen: Option<std::time::Instant> = None;
    while let Some(item) = rx.blocking_recv() {
        if stopping.load(Relaxed)
            && stop_seen
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                >= DRAIN_BUDGET
        {
            let mut left = 1u64;
            drop(item);
            while let Some(item) = rx.blocking_recv() {
                left += 1;
                drop(item);
            }
            intake.metrics.abandoned.fetch_add(left, Relaxed);
            tracing::warn!(
                inputs = left,
                budget_s = DRAIN_BUDGET.as_secs(),
                "stopping: inputs left unprocessed after the drain budget; MQTT brokers redeliver them, serial ones are lost"
            );
            break;
        }
        match item {
            Item::Record {
                record,
                ack,
                origin,
            } => {
                let to: Vec<usize> = (0..lanes.len())
                    .filter(|&i| lanes[i].1.accepts(&record.source, &record.topic))
                    .collect();
                if to.is_empty() {
                    let item = Item::Record {
                        record,
                        ack,
                        origin,
                    };
                    intake.handle(&mut none, item);
                } else {
                    let mut shares = ack.map(|a| a.split(to.len()));
                    for &i in &to {
                        let (name, _, lane) = &lanes[i];
                        let origin = origin.clone().map(|mut o| {
                            o.lane = name.clone();
                            o
                        });
                        let item = Item::Record {
                            record: record.clone(),
                            ack: shares.as_mut().and_then(Vec::pop),
                            origin,
                        };
                        // Blocks only while that pipeline's own channel is full.
                        let _ = lane.blocking_send(item);
                    }
                }
            }
            rejected => intake.handle(&mut none, rejected),
        }
        if rx.is_empty() && intake.has_pending() {
            intake.submit();
        }
    }
    intake.submit();
    vec![none]
}

/// How long the pipelines keep draining their input after a stop signal
/// before leaving the rest unacknowledged.
pub const DRAIN_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

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
    let router = Router::from_config(&cfg, &Runtime::new()).map_err(Failure::refused)?;
    // TLS for MQTT uses rustls with the ring provider (smaller on ARM).
    let _ = rustls::crypto::ring::default_provider().install_default();

    // The store, and one queue per sink.
    let sinks = cfg.sinks();
    let mut report = OpenReport::default();
    let store = if sinks.iter().any(SinkConfig::is_durable) {
        let path = cfg.store_path();
        let (store, r) = Store::open(&path, &cfg.store)?;
        report = r;
        store
    } else {
        Store::memory()
    };
    let mut queues = Vec::new();
    for s in &sinks {
        let q = store.queue(&s.name, s.buffer, s.is_durable(), &mut report)?;
        queues.push((s.clone(), q));
    }
    if store.is_durable() {
        for (name, entries, bytes) in &report.queues {
            tracing::info!(store = %store.path().display(), sink = %name, entries, bytes, "buffer opened");
        }
        if report.damaged > 0 || report.lost_seqs > 0 || report.moved_aside.is_some() {
            tracing::error!(
                damaged_entries = report.damaged,
                lost_seqs = report.lost_seqs,
                salvaged = report.salvaged,
                moved_aside = ?report.moved_aside.as_ref().map(|m| m.0.display().to_string()),
                "the store was damaged; serving what is intact (see `weir store verify`)"
            );
        }
        if report.expired > 0 {
            tracing::warn!(
                expired = report.expired,
                "buffered entries older than max_age were dropped at start"
            );
        }
        for orphan in store.queue_names() {
            if !sinks.iter().any(|s| s.name == orphan) {
                tracing::warn!(queue = %orphan, "the store holds a queue for a sink no longer configured (`weir store compact --drop-orphans` removes it)");
            }
        }
    }
    let store = Arc::new(store);
    let stopping = Arc::new(AtomicBool::new(false));
    let sync_metrics = Arc::new(SyncMetrics::default());
    let (sync_tx, sync_rx) = std::sync::mpsc::channel();
    let syncer = {
        let (store, stopping, m) = (store.clone(), stopping.clone(), sync_metrics.clone());
        let qs: Vec<Arc<Queue>> = queues.iter().map(|(_, q)| q.clone()).collect();
        // The pipeline thread paces batches by `sync_every`; the sync
        // thread syncs each as soon as it comes (group commit).
        std::thread::Builder::new()
            .name("store-sync".into())
            .spawn(move || run_syncer(store, sync_rx, qs, stopping, m))?
    };
    let every = cfg.store.sync_every;
    let mut intake_metrics = Vec::new();
    let (tx, rx) = tokio::sync::mpsc::channel::<Item>(args.channel.max(1));
    let worker = if cfg.pipelines.len() <= 1 {
        // One pipeline: it runs on the thread that takes the input.
        let intake = Intake::new(store.clone(), &queues, sync_tx, stopping.clone());
        intake_metrics.push(intake.metrics.clone());
        let stopping = stopping.clone();
        std::thread::Builder::new()
            .name("pipelines".into())
            .spawn(move || drain(rx, intake, router, every, &stopping))?
    } else {
        // A thread per pipeline, so a slow one stalls only itself: the
        // dispatcher hands each record to the pipelines that take it, with
        // a share of its acknowledgement each.
        let mut lanes = Vec::new();
        let mut routes = Vec::new();
        for (route, r) in router.split() {
            let name = r
                .pipelines()
                .next()
                .map(|p| p.name().to_string())
                .unwrap_or_default();
            let (ltx, lrx) =
                tokio::sync::mpsc::channel::<Item>(args.channel.clamp(1, LANE_CAPACITY));
            let intake = Intake::new(store.clone(), &queues, sync_tx.clone(), stopping.clone());
            intake_metrics.push(intake.metrics.clone());
            let stopping = stopping.clone();
            let thread = std::thread::Builder::new()
                .name(format!("pipeline-{name}"))
                .spawn(move || drain(lrx, intake, r, every, &stopping))?;
            routes.push((name, route, ltx));
            lanes.push(thread);
        }
        let intake = Intake::new(store.clone(), &queues, sync_tx, stopping.clone());
        intake_metrics.push(intake.metrics.clone());
        let stopping = stopping.clone();
        std::thread::Builder::new()
            .name("dispatch".into())
            .spawn(move || {
                let mut own = drain_dispatch(rx, intake, routes, &stopping);
                own.extend(lanes.into_iter().filter_map(|l| l.join().ok()));
                Router::join(own)
            })?
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (stop_sinks, sinks_stopped) = tokio::sync::watch::channel(false);
    let (metrics, mqtt_metrics, sink_metrics, worker) = rt.block_on(async {
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
        let mut sink_tasks = Vec::new();
        let mut sink_metrics = Vec::new();
        for (s, q) in &queues {
            let m = Arc::new(SinkMetrics::default());
            sink_metrics.push((s.name.clone(), m.clone(), q.clone()));
            let args = (
                s.clone(),
                cfg.gateway.id.clone(),
                q.clone(),
                store.clone(),
                m,
                sinks_stopped.clone(),
            );
            sink_tasks.push(match s.kind {
                SinkType::Mqtt => tokio::spawn(sinks::mqtt::run(
                    args.0, args.1, args.2, args.3, args.4, args.5,
                )),
                _ => tokio::spawn(sinks::lines::run(
                    args.0, args.1, args.2, args.3, args.4, args.5,
                )),
            });
        }
        tracing::info!(
            sources = tasks.len(),
            pipelines = cfg.pipelines.len(),
            sinks = sink_tasks.len(),
            durable = store.is_durable(),
            "weir is serving"
        );
        let stats = (!args.stats_every.is_zero()).then(|| {
            let qs: Vec<Arc<Queue>> = queues.iter().map(|(_, q)| q.clone()).collect();
            let every = args.stats_every.max(std::time::Duration::from_millis(10));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    for q in &qs {
                        let m = &q.metrics;
                        tracing::info!(
                            sink = %q.name(),
                            queued = q.len(),
                            bytes = q.bytes(),
                            enqueued = m.enqueued.load(Relaxed),
                            delivered = m.delivered.load(Relaxed),
                            dropped_oldest = m.dropped_oldest.load(Relaxed),
                            dropped_newest = m.dropped_newest.load(Relaxed),
                            blocked = m.blocked.load(Relaxed),
                            "buffer"
                        );
                    }
                }
            })
        });
        // systemd (Type=notify): ready now; watchdog pings from this runtime.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| {
            let every = std::time::Duration::from_micros(usec / 2);
            tokio::spawn(async move {
                loop {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                    tokio::time::sleep(every).await;
                }
            })
        });
        wait_for_signal().await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        if let Some(w) = watchdog {
            w.abort();
        }
        if let Some(s) = stats {
            s.abort();
        }
        tracing::info!("stopping: sources first, then the pipelines drain, then the sinks");
        stopping.store(true, Relaxed);
        let _ = stop.send(true);
        for t in tasks {
            let _ = t.await;
        }
        let worker = tokio::task::spawn_blocking(move || {
            let r = worker.join();
            let _ = syncer.join();
            r
        })
        .await;
        let _ = stop_sinks.send(true);
        for t in sink_tasks {
            let _ = t.await;
        }
        (metrics, mqtt_metrics, sink_metrics, worker)
    });
    let router = worker
        .ok()
        .and_then(|r| r.ok())
        .ok_or_else(|| anyhow::anyhow!("the pipeline thread panicked"))?;
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
    let im = &intake_metrics;
    tracing::info!(
        redelivered = im.iter().map(|m| m.redelivered.load(Relaxed)).sum::<u64>(),
        abandoned = im.iter().map(|m| m.abandoned.load(Relaxed)).sum::<u64>(),
        syncs = sync_metrics.syncs.load(Relaxed),
        sync_failures = sync_metrics.failures.load(Relaxed),
        store_reopens = sync_metrics.reopens.load(Relaxed),
        "intake done"
    );
    output::report(&router);
    for (name, m, q) in sink_metrics {
        let qm = &q.metrics;
        tracing::info!(
            sink = %name,
            records = m.records.load(Relaxed),
            bytes = m.bytes.load(Relaxed),
            sends = m.sends.load(Relaxed),
            connects = m.connects.load(Relaxed),
            outages = m.outages.load(Relaxed),
            queued = q.len(),
            enqueued = qm.enqueued.load(Relaxed),
            delivered = qm.delivered.load(Relaxed),
            resent = qm.resent.load(Relaxed),
            dropped_oldest = qm.dropped_oldest.load(Relaxed),
            dropped_newest = qm.dropped_newest.load(Relaxed),
            blocked = qm.blocked.load(Relaxed),
            expired = qm.expired.load(Relaxed),
            damaged = qm.damaged.load(Relaxed),
            dead_lettered = qm.dead_lettered.load(Relaxed),
            "sink done"
        );
    }
    // A clean stop: the next start can tell the files were left intact.
    store.close();
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

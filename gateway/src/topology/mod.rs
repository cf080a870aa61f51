//! The topology: a running gateway's wiring, its reloads and its stop.
//!
//! [`Topology::build`] opens the store and one queue per sink and loads
//! every pipeline; [`Topology::run`] starts the sync thread, the pipeline
//! threads ([`lanes`]), the sources and the sinks (each a supervised task,
//! [`supervise`]), and serves until the `shutdown` future completes. Then
//! it stops in one order: sources stop, pipelines drain (for at most
//! [`DRAIN_BUDGET`]), the last batch syncs, sinks send what they can. A
//! [`Handle`] asks it to reload a config in between ([`reload`]).
//!
//! Every component writes its counters to one [`Registry`]; the stop
//! report, the stats line and the status views all read it.

pub mod control;
pub mod intake;
pub mod lanes;
pub mod push;
pub mod reload;
pub mod supervise;
pub mod window;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use lanes::DRAIN_BUDGET;

use crate::config::{Config, SourceConfig};
use crate::deploy::{Overlay, Pushed};
use crate::metrics::{Registry, Snapshot, SourceCounters};
use crate::pipeline::CarryState;
use crate::pipeline::Runtime;
use crate::routing::Router;
use crate::sinks::{self, SinkConfig, SinkMetrics, SinkType};
use crate::sources::Item;
use crate::sources::mqtt::{self, MqttMetrics};
use crate::sources::serial::{self, SerialMetrics};
use crate::store::{OpenReport, Queue, Store};
use intake::run_syncer;

/// How a topology runs, beyond its config.
#[derive(Debug, Clone)]
pub struct Options {
    /// Records the channel from sources to pipelines holds.
    pub channel: usize,
    /// How often to log each sink's buffer; zero: never.
    pub stats_every: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            channel: 1024,
            stats_every: Duration::from_secs(60),
        }
    }
}

/// A gateway, built and ready to run.
pub struct Topology {
    cfg: Config,
    overlay: Overlay,
    opts: Options,
    store: Arc<Store>,
    queues: Vec<(SinkConfig, Arc<Queue>)>,
    router: Router,
    registry: Arc<Registry>,
    requests: mpsc::UnboundedReceiver<Request>,
    handle: Handle,
    metrics: Option<std::net::TcpListener>,
    control: Option<(std::path::PathBuf, std::os::unix::net::UnixListener)>,
}

/// What a running topology is asked to do.
pub(crate) enum Request {
    Reload(Box<Config>, oneshot::Sender<Result<String, String>>),
    /// Run a pushed module in a stage (`None`: the config's module again),
    /// swapped in between records.
    Deploy {
        stage: (String, String),
        module: Option<Pushed>,
        carry: CarryState,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// Asks a running topology to reload.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Request>,
}

impl Handle {
    /// Apply `cfg` to the running gateway. `Ok`: what changed; `Err`: why
    /// it was refused (the running config keeps running).
    pub async fn reload(&self, cfg: Config) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Reload(Box::new(cfg), tx))
            .map_err(|_| "the gateway is stopping".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the gateway is stopping".to_string()))
    }
}

/// What a run leaves behind.
pub struct Report {
    /// Every counter at the end.
    pub snapshot: Snapshot,
}

impl Topology {
    /// Open the store and the sink queues, and load every pipeline.
    pub fn build(cfg: &Config, opts: Options) -> anyhow::Result<Topology> {
        let registry = Arc::new(Registry::new(&cfg.gateway.id));
        // Pushed modules kept on disk run again, without the broker.
        let overlay = push::restore(cfg, &registry)?;
        let router = Router::build(cfg, &Runtime::new(), &overlay, None)?;
        let sinks = cfg.sinks();
        let mut report = OpenReport::default();
        let store = if sinks.iter().any(SinkConfig::is_durable) {
            let (store, r) = Store::open(&cfg.store_path(), &cfg.store)?;
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
            log_open(&store, &report, &sinks);
        }
        let store = Arc::new(store);
        registry.set_store(store.clone());
        let (tx, requests) = mpsc::unbounded_channel();
        // Bound here, so a taken port fails the start with the reason.
        let metrics = bind_metrics(cfg).map_err(|e| anyhow::anyhow!(e))?;
        // Status without a control socket beats no gateway: a socket that
        // cannot be made is logged, and weir serves without it.
        let path = control::path_of(cfg);
        let control = match control::bind(&path) {
            Ok(l) => Some((path, l)),
            Err(e) => {
                tracing::error!(error = %e, "no control socket: `weir status` and `weir top` cannot reach this gateway");
                None
            }
        };
        Ok(Topology {
            control,
            metrics,
            cfg: cfg.clone(),
            overlay,
            opts,
            store,
            queues,
            router,
            registry,
            requests,
            handle: Handle { tx },
        })
    }

    /// The registry every component writes to.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// A handle to reload the running topology.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Serve until `shutdown` completes, then stop in order. Runs on the
    /// caller's (current-thread) tokio runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<Report> {
        let Topology {
            mut cfg,
            mut overlay,
            opts,
            store,
            queues,
            router,
            registry,
            mut requests,
            handle,
            metrics,
            control,
        } = self;
        let stopping = Arc::new(AtomicBool::new(false));
        let (sync_tx, sync_rx) = std::sync::mpsc::channel();
        let wake = Arc::new(Mutex::new(
            queues.iter().map(|(_, q)| q.clone()).collect::<Vec<_>>(),
        ));
        let syncer = {
            let (store, stopping, m) = (store.clone(), stopping.clone(), registry.sync.clone());
            let beat = registry.beat("store-sync");
            let wake = wake.clone();
            // The pipeline threads close batches by the commit window; the
            // sync thread syncs each as soon as it comes (group commit).
            std::thread::Builder::new()
                .name("store-sync".into())
                .spawn(move || run_syncer(store, sync_rx, wake, stopping, m, beat))?
        };
        let downlinks = Arc::new(serial::downlink::Downlinks::default());
        let shared = lanes::Shared {
            store: store.clone(),
            syncer: sync_tx,
            stopping: stopping.clone(),
            registry: registry.clone(),
            commit_window: cfg.store.commit_window,
            downlinks: downlinks.clone(),
        };
        // Status shows the pipelines from the start, before any record.
        registry.publish_pipelines(router.pipelines());
        let (tx, rx) = mpsc::channel::<Item>(opts.channel.max(1));
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        // One pipeline runs on the thread that takes the input; several
        // (from the start or after a reload) get a thread each behind a
        // dispatcher.
        let worker = {
            let (sinks, channel) = (queues.clone(), opts.channel);
            let name = if cfg.pipelines.len() <= 1 {
                "pipelines"
            } else {
                "dispatch"
            };
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || lanes::serve(rx, ctl_rx, sinks, router, shared, channel))?
        };

        let mut tasks = Tasks {
            gateway: cfg.gateway.id.clone(),
            registry: registry.clone(),
            store: store.clone(),
            tx: Some(tx),
            sources: HashMap::new(),
            sinks: HashMap::new(),
            queues,
            wake,
            metrics: None,
            status: None,
            control: None,
            handle: handle.clone(),
            config_file: std::path::PathBuf::from(&cfg.file),
            downlinks,
        };
        for src in &cfg.sources {
            tasks.start_source(src);
        }
        for (s, q) in tasks.queues.clone() {
            tasks.start_sink(&s, q);
        }
        tracing::info!(
            sources = cfg.sources.len(),
            pipelines = cfg.pipelines.len(),
            sinks = tasks.queues.len(),
            durable = store.is_durable(),
            "weir is serving"
        );
        if let Some(l) = metrics {
            tasks.start_metrics(l)?;
        }
        let (status_stop, _) = watch::channel(false);
        tasks.start_status(&cfg).await;
        let (config_tx, config_rx) = watch::channel(Arc::new(cfg.clone()));
        let pusher = cfg
            .modules
            .clone()
            .zip(cfg.modules_sink())
            .map(|(m, sink)| {
                tokio::spawn(push::run(
                    push::Agent::new(
                        &cfg,
                        m,
                        sink,
                        registry.clone(),
                        config_rx,
                        handle.tx.clone(),
                    ),
                    status_stop.subscribe(),
                ))
            });
        if let Some((p, l)) = control {
            tasks.start_control(p, l)?;
        }
        let stats = (!opts.stats_every.is_zero()).then(|| {
            let (registry, every) = (registry.clone(), opts.stats_every);
            tokio::spawn(stats_lines(registry, every.max(Duration::from_millis(10))))
        });
        // systemd (Type=notify): ready now; the watchdog is fed from this
        // runtime, and only while no worker thread is wedged.
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec).then(|| {
            let every = Duration::from_micros(usec / 2);
            tokio::spawn(feed_watchdog(registry.clone(), every))
        });

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(req) = requests.recv() => match req {
                    Request::Reload(new, reply) => {
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                        let r = reload::apply(&cfg, &new, &overlay, &ctl, &mut tasks).await;
                        match &r {
                            Ok(what) => {
                                registry.reloads.fetch_add(1, Relaxed);
                                registry.changes.fetch_add(1, Relaxed);
                                tracing::info!(changes = %what, "reloaded");
                                cfg = *new;
                                let _ = config_tx.send(Arc::new(cfg.clone()));
                            }
                            Err(why) => {
                                registry.reloads_refused.fetch_add(1, Relaxed);
                                tracing::error!(reason = %why, "reload refused; the running config keeps running");
                            }
                        }
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                        let _ = reply.send(r);
                    }
                    Request::Deploy { stage, module, carry, reply } => {
                        let mut next = overlay.clone();
                        match module {
                            Some(m) => next.insert(stage.clone(), m),
                            None => next.remove(&stage),
                        };
                        let r = reload::swap_in(&cfg, &next, Some((&stage.0, &stage.1, carry)), &tasks.queues, &ctl).await;
                        if r.is_ok() {
                            overlay = next;
                            registry.changes.fetch_add(1, Relaxed);
                        }
                        let _ = reply.send(r.map(|_| ()));
                    }
                },
            }
        }

        drop(handle);
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        for t in [watchdog, stats].into_iter().flatten() {
            t.abort();
        }
        let control_path = tasks.stop_services();
        tracing::info!("stopping: sources first, then the pipelines drain, then the sinks");
        stopping.store(true, Relaxed);
        tasks.stop_sources().await;
        drop(tasks.tx.take());
        drop(ctl);
        let worker = tokio::task::spawn_blocking(move || {
            let r = worker.join();
            let _ = syncer.join();
            r
        })
        .await;
        tasks.stop_sinks().await;
        if let Some(t) = tasks.status.take() {
            t.stop().await;
        }
        let _ = status_stop.send(true);
        if let Some(t) = pusher {
            let _ = t.await;
        }
        let worker_ok = matches!(worker, Ok(Ok(Ok(_))));
        let snapshot = registry.snapshot();
        // A clean stop: the next start can tell the files were left intact.
        store.close();
        if let Some(p) = control_path {
            let _ = std::fs::remove_file(p);
        }
        if !worker_ok {
            anyhow::bail!("the pipeline thread panicked");
        }
        Ok(Report { snapshot })
    }
}

/// A running task: its stop signal and its supervisor.
struct Task {
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
}

impl Task {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.join.await;
    }
}

/// The tasks of a running topology: sources, sinks and the services
/// (metrics, status over MQTT, the control socket).
pub(crate) struct Tasks {
    gateway: String,
    registry: Arc<Registry>,
    store: Arc<Store>,
    tx: Option<mpsc::Sender<Item>>,
    sources: HashMap<String, Task>,
    sinks: HashMap<String, Task>,
    /// Every queue opened, with the config of its sink when last
    /// configured: a sink a reload removes keeps its queue (and what it
    /// holds) for its return.
    queues: Vec<(SinkConfig, Arc<Queue>)>,
    /// The queues the sync thread wakes after a sync.
    wake: Arc<Mutex<Vec<Arc<Queue>>>>,
    metrics: Option<tokio::task::JoinHandle<()>>,
    status: Option<Task>,
    control: Option<(std::path::PathBuf, tokio::task::JoinHandle<()>)>,
    handle: Handle,
    config_file: std::path::PathBuf,
    /// The downlink queues of the serial sources in Weir's wire protocol.
    downlinks: Arc<serial::downlink::Downlinks>,
}

/// Bind `[metrics] listen`, if configured: a taken port is an error with
/// the reason (at start, and for a reload).
fn bind_metrics(cfg: &Config) -> Result<Option<std::net::TcpListener>, String> {
    let Some(m) = &cfg.metrics else {
        return Ok(None);
    };
    let l = std::net::TcpListener::bind(m.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| {
            format!(
                "[metrics] cannot listen on {}: {e} (pick another `listen` address)",
                m.listen
            )
        })?;
    tracing::info!(listen = %m.listen, "metrics at http://{}/metrics", m.listen);
    Ok(Some(l))
}

/// A config's identity for "did it change": its full debug rendering.
pub(crate) fn fingerprint(v: &impl std::fmt::Debug) -> String {
    format!("{v:?}")
}

impl Tasks {
    fn start_source(&mut self, src: &SourceConfig) {
        let Some(tx) = self.tx.clone() else { return };
        let (stop, stopped) = watch::channel(false);
        let name = src.name().to_string();
        let join = match src {
            SourceConfig::Mqtt(m) => {
                let counters = Arc::new(MqttMetrics::default());
                self.registry
                    .source(&name, SourceCounters::Mqtt(counters.clone()));
                let (m, id, rx) = (m.clone(), self.gateway.clone(), stopped.clone());
                let c = counters.clone();
                supervise::spawn(format!("source {name}"), counters, stopped, move || {
                    mqtt::source::run(m.clone(), id.clone(), tx.clone(), c.clone(), rx.clone())
                })
            }
            SourceConfig::Serial(s) => {
                let counters = Arc::new(SerialMetrics::default());
                self.registry
                    .source(&name, SourceCounters::Serial(counters.clone()));
                let (s, rx) = (s.clone(), stopped.clone());
                let c = counters.clone();
                // Commands go only where sensors speak the wire protocol.
                let line = if matches!(s.framing, serial::framing::Framing::Weir) {
                    Some(self.downlinks.open(&name))
                } else {
                    self.downlinks.close(&name);
                    None
                };
                supervise::spawn(format!("source {name}"), counters, stopped, move || {
                    serial::source::run(s.clone(), tx.clone(), c.clone(), line.clone(), rx.clone())
                })
            }
        };
        self.sources.insert(name, Task { stop, join });
    }

    fn start_sink(&mut self, s: &SinkConfig, q: Arc<Queue>) {
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(SinkMetrics::default());
        self.registry
            .sink(&s.name, s.kind.as_str(), counters.clone(), q.clone());
        let (cfg, id, store, c, rx) = (
            s.clone(),
            self.gateway.clone(),
            self.store.clone(),
            counters.clone(),
            stopped.clone(),
        );
        let join = supervise::spawn(format!("sink {}", s.name), counters, stopped, move || {
            let args = (
                cfg.clone(),
                id.clone(),
                q.clone(),
                store.clone(),
                c.clone(),
                rx.clone(),
            );
            async move {
                match args.0.kind {
                    SinkType::Mqtt => {
                        sinks::mqtt::run(args.0, args.1, args.2, args.3, args.4, args.5).await
                    }
                    _ => sinks::lines::run(args.0, args.1, args.2, args.3, args.4, args.5).await,
                }
            }
        });
        self.sinks.insert(s.name.clone(), Task { stop, join });
    }

    /// Serve `/metrics` on `l` (instead of the listener before).
    fn start_metrics(&mut self, l: std::net::TcpListener) -> std::io::Result<()> {
        let l = tokio::net::TcpListener::from_std(l)?;
        if let Some(old) = self.metrics.take() {
            old.abort();
        }
        let serve = crate::metrics::prometheus::serve(l, self.registry.clone());
        self.metrics = Some(tokio::spawn(serve));
        Ok(())
    }

    fn stop_metrics(&mut self) {
        if let Some(old) = self.metrics.take() {
            old.abort();
        }
    }

    /// Publish status over MQTT as `cfg` says (after stopping the
    /// publisher before: its topic gets the clean stop's `offline`).
    async fn start_status(&mut self, cfg: &Config) {
        if let Some(t) = self.status.take() {
            t.stop().await;
        }
        let Some((st, sink)) = cfg.status.clone().zip(cfg.status_sink()) else {
            return;
        };
        let (stop, stopped) = watch::channel(false);
        let run = crate::metrics::status::run(
            st,
            sink,
            cfg.gateway.id.clone(),
            self.registry.clone(),
            stopped,
        );
        self.status = Some(Task {
            stop,
            join: tokio::spawn(run),
        });
    }

    /// Answer on the control socket `path` (bound as `l`), instead of the
    /// one before (whose file is removed).
    fn start_control(
        &mut self,
        path: std::path::PathBuf,
        l: std::os::unix::net::UnixListener,
    ) -> std::io::Result<()> {
        let l = tokio::net::UnixListener::from_std(l)?;
        self.stop_control();
        let serve = control::serve(
            l,
            self.registry.clone(),
            self.handle.clone(),
            self.config_file.clone(),
            self.downlinks.clone(),
        );
        self.control = Some((path, tokio::spawn(serve)));
        Ok(())
    }

    /// Stop answering on the control socket and remove its file.
    fn stop_control(&mut self) {
        if let Some((path, t)) = self.control.take() {
            t.abort();
            let _ = std::fs::remove_file(path);
        }
    }

    /// Stop `/metrics` and the control socket at the end of a run; the
    /// control socket's path, for its removal after the stop.
    fn stop_services(&mut self) -> Option<std::path::PathBuf> {
        self.stop_metrics();
        let (path, t) = self.control.take()?;
        t.abort();
        Some(path)
    }

    async fn stop_sources(&mut self) {
        for (_, t) in self.sources.drain() {
            t.stop().await;
        }
    }

    async fn stop_sinks(&mut self) {
        for (_, t) in self.sinks.drain() {
            t.stop().await;
        }
    }
}

/// Feed systemd's watchdog every `every` while no worker thread (a
/// pipeline, the dispatcher, the sync thread) has been busy on one unit of
/// work (a record, a sync) for longer than `every`. A wedged one lets the
/// watchdog expire, and systemd restarts weir.
async fn feed_watchdog(registry: Arc<Registry>, every: Duration) {
    let mut wedged: Option<String> = None;
    loop {
        match registry.wedged(every) {
            None => {
                if let Some(name) = wedged.take() {
                    tracing::info!(thread = %name, "the thread moves again; feeding the watchdog");
                }
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            Some((name, busy)) => {
                if wedged.as_ref() != Some(&name) {
                    tracing::error!(thread = %name, busy_ms = busy.as_millis() as u64,
                        "a worker thread is stuck on one unit of work: not feeding the systemd watchdog, so systemd restarts weir if it stays stuck");
                    wedged = Some(name);
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Log one line per sink buffer every `every`.
async fn stats_lines(registry: Arc<Registry>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        for s in registry.snapshot().sinks {
            tracing::info!(
                sink = %s.name,
                state = s.state.as_str(),
                queued = s.queued,
                bytes = s.queued_bytes,
                enqueued = s.enqueued,
                delivered = s.delivered,
                dropped_oldest = s.dropped.get("drop_oldest").copied().unwrap_or(0),
                dropped_newest = s.dropped.get("drop_newest").copied().unwrap_or(0),
                blocked = s.blocked,
                "buffer"
            );
        }
    }
}

/// What the store held at open, and what it found damaged.
fn log_open(store: &Store, report: &OpenReport, sinks: &[SinkConfig]) {
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

/// Log every counter once, at the end of a run.
pub fn log_report(s: &Snapshot) {
    let kinds = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    for src in &s.sources {
        tracing::info!(
            source = %src.name,
            kind = src.kind,
            messages = src.messages,
            records = src.records,
            connects = src.connects,
            outages = src.outages,
            restarts = src.restarts,
            ack_failures = src.ack_failures,
            lost_frames = src.lost_frames,
            seq_resets = src.seq_resets,
            dropped_full = src.dropped_full,
            rejected = kinds(&src.rejected),
            "source done"
        );
    }
    tracing::info!(
        redelivered = s.store.redelivered,
        abandoned = s.store.abandoned,
        syncs = s.store.syncs,
        sync_failures = s.store.sync_failures,
        store_reopens = s.store.reopens,
        "intake done"
    );
    log_pipelines(&s.pipelines);
    for k in &s.sinks {
        tracing::info!(
            sink = %k.name,
            records = k.delivered,
            bytes = k.delivered_bytes,
            connects = k.connects,
            outages = k.outages,
            restarts = k.restarts,
            queued = k.queued,
            enqueued = k.enqueued,
            delivered = k.delivered,
            resent = k.resent,
            dropped_oldest = k.dropped.get("drop_oldest").copied().unwrap_or(0),
            dropped_newest = k.dropped.get("drop_newest").copied().unwrap_or(0),
            blocked = k.blocked,
            expired = k.dropped.get("expired").copied().unwrap_or(0),
            damaged = k.dropped.get("damaged").copied().unwrap_or(0),
            dead_lettered = k.dead_lettered,
            "sink done"
        );
    }
}

/// Log each pipeline's and stage's counters once (the stop report; `weir run`).
pub fn log_pipelines(pipelines: &[crate::metrics::PipelineStats]) {
    for p in pipelines {
        tracing::info!(
            pipeline = %p.name,
            records_in = p.records_in,
            records_out = p.records_out,
            dead_lettered = p.dead_lettered,
            policy_dropped = p.policy_dropped,
            policy_passed = p.policy_passed,
            "pipeline done"
        );
        for st in &p.stages {
            let failures: Vec<String> = st.failed.iter().map(|(k, n)| format!("{k}={n}")).collect();
            tracing::info!(
                stage = format!("{}/{}", p.name, st.name),
                records_in = st.records_in,
                records_out = st.records_out,
                dropped = st.dropped,
                failed = st.failed.values().sum::<u64>(),
                failures = failures.join(","),
                fuel_per_record = st.fuel_used.checked_div(st.records_in).unwrap_or(0),
                logs_dropped = st.logs_dropped,
                quarantined = st.quarantined,
                "stage done"
            );
        }
    }
}

//! One registry of everything a running gateway counts.
//!
//! Components keep writing to their own counters (atomics on the hot path,
//! no locks); the registry owns a handle to each, and every reader takes a
//! [`Snapshot`] from it: the stop report, the stats line, `/metrics`,
//! `weir status` and the MQTT status message. The pipeline threads own
//! their stage counters (plain integers), so they publish a copy here now
//! and then ([`Registry::publish_pipelines`]).

pub mod prometheus;
pub mod status;

pub use crate::common::health::{Beat, Health, Seconds, State};

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::Serialize;

use crate::pipeline::FailureKind;
use crate::sinks::SinkMetrics;
use crate::sources::mqtt::MqttMetrics;
use crate::sources::serial::SerialMetrics;
use crate::store::{Queue, Store};

/// `[metrics]`: serve `/metrics` for Prometheus.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to listen; loopback unless you say otherwise.
    #[serde(default = "default_listen")]
    pub listen: std::net::SocketAddr,
}

fn default_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 9464))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counters of the intake.
#[derive(Debug, Default)]
pub struct IntakeMetrics {
    /// Inputs recognised as a broker's redelivery of a message already
    /// taken in (acknowledged again, not processed twice).
    pub redelivered: AtomicU64,
    /// Inputs left unacknowledged because the gateway stopped while a
    /// `block` queue was full (the broker redelivers them).
    pub abandoned: AtomicU64,
    /// Downlink commands from stages (`serial_send`) queued on their line.
    pub downlink_sent: AtomicU64,
    /// Downlink commands from stages refused (no such serial source, or
    /// its queue full).
    pub downlink_refused: AtomicU64,
}

/// Counters of the sync thread.
#[derive(Debug, Default)]
pub struct SyncMetrics {
    /// Syncs done.
    pub syncs: AtomicU64,
    /// Syncs that failed (retried; their inputs stay unacknowledged).
    pub failures: AtomicU64,
    /// Times the store was reopened after a failed sync.
    pub reopens: AtomicU64,
    /// How long each successful sync took.
    pub sync_time: crate::metrics::Seconds,
}

/// A source's counters.
#[derive(Clone)]
pub enum SourceCounters {
    /// An MQTT source.
    Mqtt(Arc<MqttMetrics>),
    /// A serial source.
    Serial(Arc<SerialMetrics>),
}

impl SourceCounters {
    /// The task's health.
    pub fn health(&self) -> &Health {
        match self {
            SourceCounters::Mqtt(m) => &m.health,
            SourceCounters::Serial(m) => &m.health,
        }
    }
}

struct SourceEntry {
    name: String,
    counters: SourceCounters,
}

struct SinkEntry {
    name: String,
    kind: &'static str,
    counters: Arc<SinkMetrics>,
    queue: Arc<Queue>,
}

/// Every counter of a running gateway.
pub struct Registry {
    started: Instant,
    gateway: String,
    sources: Mutex<Vec<SourceEntry>>,
    pipelines: Mutex<BTreeMap<String, PipelineStats>>,
    sinks: Mutex<Vec<SinkEntry>>,
    intakes: Mutex<Vec<Arc<IntakeMetrics>>>,
    store: Mutex<Option<Arc<Store>>>,
    /// The sync thread's counters.
    pub sync: Arc<SyncMetrics>,
    /// Reloads applied, and refused.
    pub reloads: AtomicU64,
    /// Reloads refused (the running config kept).
    pub reloads_refused: AtomicU64,
    /// Bumped whenever something status shows changes state.
    pub changes: Arc<AtomicU64>,
    beats: Mutex<Vec<Arc<Beat>>>,
    deployments: Mutex<BTreeMap<String, crate::deploy::ledger::Ledger>>,
    groups: Mutex<Vec<String>>,
}

impl Registry {
    /// An empty registry for gateway `gateway`.
    pub fn new(gateway: &str) -> Registry {
        Registry {
            started: Instant::now(),
            gateway: gateway.to_string(),
            sources: Mutex::default(),
            pipelines: Mutex::default(),
            sinks: Mutex::default(),
            intakes: Mutex::default(),
            store: Mutex::default(),
            sync: Arc::default(),
            reloads: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            changes: Arc::default(),
            beats: Mutex::default(),
            deployments: Mutex::default(),
            groups: Mutex::default(),
        }
    }

    /// The fleet groups this gateway is in (status shows them).
    pub fn set_groups(&self, groups: &[String]) {
        *lock(&self.groups) = groups.to_vec();
    }

    /// Module `name`'s deployments changed (status publishes them).
    pub fn deployment(&self, name: &str, ledger: &crate::deploy::ledger::Ledger) {
        lock(&self.deployments).insert(name.to_string(), ledger.clone());
        self.changes.fetch_add(1, Relaxed);
    }

    /// A heartbeat for worker thread `name`.
    pub fn beat(&self, name: &str) -> Arc<Beat> {
        let b = Arc::new(Beat::new(name, self.started));
        let mut beats = lock(&self.beats);
        // Threads that ended (a pipeline a reload removed) hold no Arc.
        beats.retain(|b| Arc::strong_count(b) > 1);
        beats.push(b.clone());
        b
    }

    /// The worker thread busy longest on one unit of work, if that is
    /// longer than `limit`.
    pub fn wedged(&self, limit: std::time::Duration) -> Option<(String, std::time::Duration)> {
        lock(&self.beats)
            .iter()
            .filter_map(|b| b.busy_for().map(|d| (b.name().to_string(), d)))
            .filter(|(_, d)| *d > limit)
            .max_by_key(|(_, d)| *d)
    }

    /// Register (or replace, after a reload) a source's counters.
    pub fn source(&self, name: &str, counters: SourceCounters) {
        let mut s = lock(&self.sources);
        s.retain(|e| e.name != name);
        s.push(SourceEntry {
            name: name.to_string(),
            counters,
        });
        self.changes.fetch_add(1, Relaxed);
    }

    /// Forget a source a reload removed.
    pub fn remove_source(&self, name: &str) {
        lock(&self.sources).retain(|e| e.name != name);
        self.changes.fetch_add(1, Relaxed);
    }

    /// Register (or replace) a sink's counters and queue.
    pub fn sink(&self, name: &str, kind: &'static str, counters: Arc<SinkMetrics>, q: Arc<Queue>) {
        let mut s = lock(&self.sinks);
        s.retain(|e| e.name != name);
        s.push(SinkEntry {
            name: name.to_string(),
            kind,
            counters,
            queue: q,
        });
        self.changes.fetch_add(1, Relaxed);
    }

    /// Forget a sink a reload removed.
    pub fn remove_sink(&self, name: &str) {
        lock(&self.sinks).retain(|e| e.name != name);
        self.changes.fetch_add(1, Relaxed);
    }

    /// Register an intake's counters.
    pub fn intake(&self, m: Arc<IntakeMetrics>) {
        lock(&self.intakes).push(m);
    }

    /// The store (its size on disk).
    pub fn set_store(&self, store: Arc<Store>) {
        *lock(&self.store) = Some(store);
    }

    /// A copy of the counters of `pipelines` (called by the pipeline
    /// threads at batch ends, and when they stop).
    pub fn publish_pipelines<'a>(
        &self,
        pipelines: impl Iterator<Item = &'a crate::pipeline::Pipeline>,
    ) {
        let stats: Vec<PipelineStats> = pipelines.map(PipelineStats::of).collect();
        let mut p = lock(&self.pipelines);
        for s in stats {
            p.insert(s.name.clone(), s);
        }
    }

    /// Forget pipelines a reload removed.
    pub fn retain_pipelines(&self, keep: &[String]) {
        lock(&self.pipelines).retain(|k, _| keep.contains(k));
    }

    /// The health of every source and sink task.
    pub fn health(&self) -> Vec<(String, State)> {
        let mut out: Vec<(String, State)> = lock(&self.sources)
            .iter()
            .map(|e| (e.name.clone(), e.counters.health().get().0))
            .collect();
        out.extend(
            lock(&self.sinks)
                .iter()
                .map(|e| (e.name.clone(), e.counters.health.get().0)),
        );
        out
    }

    /// The buffers as `weir store inspect --json` shows them, read from
    /// the running daemon's store (no copy, no recovery run).
    pub fn inspect(&self) -> serde_json::Value {
        let now = crate::record::now_ms();
        let store = lock(&self.store);
        let queues: Vec<serde_json::Value> = lock(&self.sinks)
            .iter()
            .filter(|e| e.queue.is_durable())
            .map(|e| {
                let q = &e.queue;
                let oldest = q.oldest();
                serde_json::json!({
                    "sink": e.name,
                    "configured": true,
                    "entries": q.len(),
                    "bytes": q.bytes(),
                    "max_bytes": q.config().max_bytes.0,
                    "oldest_seq": oldest.map(|o| o.0),
                    "oldest_age_s": oldest.map(|o| now.saturating_sub(o.1) as f64 / 1000.0),
                    "damaged_kept": q.damaged_kept(),
                })
            })
            .collect();
        let durable = store.as_ref().filter(|s| s.is_durable());
        serde_json::json!({
            "path": durable.map(|s| s.path().display().to_string()),
            "size_on_disk": durable.map_or(0, |s| s.size_on_disk()),
            "next_seq": durable.map_or(0, |s| s.next_seq()),
            "queues": queues,
            "damaged_found": 0,
            "lost_seqs": 0,
            "moved_aside": null,
            "ok": true,
            "live": true,
        })
    }

    /// Everything, now.
    pub fn snapshot(&self) -> Snapshot {
        let now_ms = crate::record::now_ms();
        let sources = lock(&self.sources)
            .iter()
            .map(|e| SourceStats::of(&e.name, &e.counters))
            .collect();
        let sinks = lock(&self.sinks)
            .iter()
            .map(|e| SinkStats::of(e, now_ms))
            .collect();
        let intakes = lock(&self.intakes);
        let store = lock(&self.store);
        Snapshot {
            gateway: self.gateway.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            sources,
            pipelines: lock(&self.pipelines).values().cloned().collect(),
            sinks,
            store: StoreStats {
                durable: store.as_ref().is_some_and(|s| s.is_durable()),
                path: store
                    .as_ref()
                    .filter(|s| s.is_durable())
                    .map(|s| s.path().display().to_string()),
                bytes_on_disk: store
                    .as_ref()
                    .filter(|s| s.is_durable())
                    .map_or(0, |s| s.size_on_disk()),
                syncs: self.sync.syncs.load(Relaxed),
                sync_failures: self.sync.failures.load(Relaxed),
                reopens: self.sync.reopens.load(Relaxed),
                redelivered: intakes.iter().map(|m| m.redelivered.load(Relaxed)).sum(),
                abandoned: intakes.iter().map(|m| m.abandoned.load(Relaxed)).sum(),
            },
            reloads: self.reloads.load(Relaxed),
            reloads_refused: self.reloads_refused.load(Relaxed),
            deployments: lock(&self.deployments).clone(),
            groups: lock(&self.groups).clone(),
        }
    }
}

/// Everything a gateway counts, at one moment (`weir status --json`).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The gateway's id.
    pub gateway: String,
    /// Weir's version.
    pub version: String,
    /// Seconds since `weir serve` started.
    pub uptime_s: u64,
    /// Sources.
    pub sources: Vec<SourceStats>,
    /// Pipelines and their stages.
    pub pipelines: Vec<PipelineStats>,
    /// Sinks and their buffers.
    pub sinks: Vec<SinkStats>,
    /// The store and the intake.
    pub store: StoreStats,
    /// Reloads applied.
    pub reloads: u64,
    /// Reloads refused.
    pub reloads_refused: u64,
    /// Pushed modules, by name.
    pub deployments: BTreeMap<String, crate::deploy::ledger::Ledger>,
    /// The fleet groups this gateway is in.
    pub groups: Vec<String>,
}

/// A source, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStats {
    /// Its name in the config.
    pub name: String,
    /// `mqtt` or `serial`.
    pub kind: String,
    /// What the task is doing.
    pub state: State,
    /// Why it is not up.
    pub reason: Option<String>,
    /// Restarts by the supervisor.
    pub restarts: u64,
    /// Messages (MQTT) or bytes (serial) read.
    pub messages: u64,
    /// Records handed to the pipelines.
    pub records: u64,
    /// Connections made (MQTT) or device opens (serial).
    pub connects: u64,
    /// Times it lost its broker or device.
    pub outages: u64,
    /// Rejected input by kind.
    pub rejected: BTreeMap<String, u64>,
    /// Acknowledgements that came after the source stopped (MQTT; the
    /// broker redelivers those messages).
    pub ack_failures: u64,
    /// Frames lost, from gaps in sensor sequence numbers (serial).
    pub lost_frames: u64,
    /// Sensor sequence numbers that went backwards (serial).
    pub seq_resets: u64,
    /// Records dropped because the pipelines were full (serial `when_full`).
    pub dropped_full: u64,
    /// Downlink commands written to sensor nodes (serial).
    pub commands: u64,
    /// Replies from sensor nodes (serial).
    pub replies: u64,
}

impl SourceStats {
    fn of(name: &str, c: &SourceCounters) -> SourceStats {
        let kinds = |m: &Mutex<std::collections::HashMap<&'static str, u64>>| {
            lock(m)
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        let (state, reason) = c.health().get();
        let restarts = c.health().restarts.load(Relaxed);
        match c {
            SourceCounters::Mqtt(m) => SourceStats {
                name: name.to_string(),
                kind: "mqtt".into(),
                state,
                reason,
                restarts,
                messages: m.messages.load(Relaxed),
                records: m.records.load(Relaxed),
                connects: m.connects.load(Relaxed),
                outages: m.outages.load(Relaxed),
                rejected: kinds(&m.rejected),
                ack_failures: m.ack_failures.load(Relaxed),
                lost_frames: 0,
                seq_resets: 0,
                dropped_full: 0,
                commands: 0,
                replies: 0,
            },
            SourceCounters::Serial(m) => SourceStats {
                name: name.to_string(),
                kind: "serial".into(),
                state,
                reason,
                restarts,
                messages: m.bytes.load(Relaxed),
                records: m.records.load(Relaxed),
                connects: m.opens.load(Relaxed),
                outages: m.outages.load(Relaxed),
                rejected: kinds(&m.rejected),
                ack_failures: 0,
                lost_frames: m.lost_frames.load(Relaxed),
                seq_resets: m.seq_resets.load(Relaxed),
                dropped_full: m.dropped_full.load(Relaxed),
                commands: m.commands.load(Relaxed),
                replies: m.replies.load(Relaxed),
            },
        }
    }
}

/// A pipeline, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStats {
    /// Its name.
    pub name: String,
    /// Inputs.
    pub records_in: u64,
    /// Records out of the last stage.
    pub records_out: u64,
    /// Failed records dead-lettered.
    pub dead_lettered: u64,
    /// Failed records dropped by policy.
    pub policy_dropped: u64,
    /// Failed records passed on by policy.
    pub policy_passed: u64,
    /// Its stages, in order.
    pub stages: Vec<StageStats>,
}

/// A stage, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct StageStats {
    /// Its name in the pipeline.
    pub name: String,
    /// The module file.
    pub module: String,
    /// SHA-256 of the module's bytes, hex.
    pub sha256: String,
    /// The pushed bundle's version; `None`: the config's module file.
    pub version: Option<String>,
    /// Records given to it.
    pub records_in: u64,
    /// Records it emitted.
    pub records_out: u64,
    /// Records it processed and emitted nothing for.
    pub dropped: u64,
    /// Failures by kind.
    pub failed: BTreeMap<String, u64>,
    /// Fuel used, all records together.
    pub fuel_used: u64,
    /// Guest log lines dropped over the rate limit.
    pub logs_dropped: u64,
    /// Quarantined after too many failures in a row.
    pub quarantined: bool,
    /// Records given to the running module version (since its swap).
    pub version_in: u64,
    /// Of them, failed.
    pub version_failed: u64,
}

impl PipelineStats {
    /// A pipeline's counters now.
    pub fn of(p: &crate::pipeline::Pipeline) -> PipelineStats {
        let m = p.metrics();
        PipelineStats {
            name: p.name().to_string(),
            records_in: m.records_in,
            records_out: m.records_out,
            dead_lettered: m.dead_lettered,
            policy_dropped: m.policy_dropped,
            policy_passed: m.policy_passed,
            stages: p
                .stages()
                .iter()
                .map(|s| {
                    let sm = s.metrics();
                    StageStats {
                        name: s.name().to_string(),
                        module: s.module_path().to_string(),
                        sha256: s.module_sha256().to_string(),
                        version: s.module_version().map(str::to_string),
                        records_in: sm.records_in,
                        records_out: sm.records_out,
                        dropped: sm.records_dropped,
                        failed: FailureKind::ALL
                            .iter()
                            .map(|k| (k.as_str().to_string(), sm.failed(*k)))
                            .filter(|(_, n)| *n > 0)
                            .collect(),
                        fuel_used: sm.fuel_used,
                        logs_dropped: s.logs_dropped(),
                        quarantined: s.is_quarantined(),
                        version_in: sm.version_in,
                        version_failed: sm.version_failed,
                    }
                })
                .collect(),
        }
    }
}

/// A sink and its buffer, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStats {
    /// Its name.
    pub name: String,
    /// Its type (`mqtt`, `file`, ...).
    pub kind: String,
    /// What the task is doing.
    pub state: State,
    /// Why it is not up.
    pub reason: Option<String>,
    /// Restarts by the supervisor.
    pub restarts: u64,
    /// Entries put into its queue.
    pub enqueued: u64,
    /// Entries delivered (PUBACK, or written and flushed).
    pub delivered: u64,
    /// Payload bytes delivered.
    pub delivered_bytes: u64,
    /// Entries sent again after a reconnect.
    pub resent: u64,
    /// Dropped by policy (`drop-oldest`, `drop-newest`) or expired.
    pub dropped: BTreeMap<String, u64>,
    /// Moved to its dead-letter queue.
    pub dead_lettered: u64,
    /// Times the pipelines waited for room (`block`).
    pub blocked: u64,
    /// Entries in its queue now.
    pub queued: u64,
    /// Bytes in its queue now.
    pub queued_bytes: u64,
    /// Age of the oldest entry, seconds (0 when empty).
    pub oldest_age_s: f64,
    /// Connections made (MQTT).
    pub connects: u64,
    /// Times it lost its broker.
    pub outages: u64,
}

impl SinkStats {
    fn of(e: &SinkEntry, now_ms: u64) -> SinkStats {
        let q = &e.queue.metrics;
        let (state, reason) = e.counters.health.get();
        SinkStats {
            name: e.name.clone(),
            kind: e.kind.to_string(),
            state,
            reason,
            restarts: e.counters.health.restarts.load(Relaxed),
            enqueued: q.enqueued.load(Relaxed),
            delivered: q.delivered.load(Relaxed),
            delivered_bytes: e.counters.bytes.load(Relaxed),
            resent: q.resent.load(Relaxed),
            dropped: [
                ("drop_oldest", q.dropped_oldest.load(Relaxed)),
                ("drop_newest", q.dropped_newest.load(Relaxed)),
                ("expired", q.expired.load(Relaxed)),
                ("damaged", q.damaged.load(Relaxed)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            dead_lettered: q.dead_lettered.load(Relaxed),
            blocked: q.blocked.load(Relaxed),
            queued: e.queue.len(),
            queued_bytes: e.queue.bytes(),
            oldest_age_s: e
                .queue
                .oldest()
                .map_or(0.0, |(_, at)| now_ms.saturating_sub(at) as f64 / 1000.0),
            connects: e.counters.connects.load(Relaxed),
            outages: e.counters.outages.load(Relaxed),
        }
    }
}

/// The store and the intake, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    /// Whether any sink is durable (sled on disk).
    pub durable: bool,
    /// Where the store is.
    pub path: Option<String>,
    /// sled's size on disk.
    pub bytes_on_disk: u64,
    /// Syncs done.
    pub syncs: u64,
    /// Syncs that failed and were retried.
    pub sync_failures: u64,
    /// Times the store was reopened after a failing disk.
    pub reopens: u64,
    /// Broker redeliveries recognised and not processed twice.
    pub redelivered: u64,
    /// Inputs left unprocessed at a stop (MQTT brokers redeliver them).
    pub abandoned: u64,
}

impl AsRef<Health> for MqttMetrics {
    fn as_ref(&self) -> &Health {
        &self.health
    }
}

impl AsRef<Health> for SerialMetrics {
    fn as_ref(&self) -> &Health {
        &self.health
    }
}

impl AsRef<Health> for SinkMetrics {
    fn as_ref(&self) -> &Health {
        &self.health
    }
}

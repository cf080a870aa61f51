//! The pipeline side of the sinks: run each input through the router, put
//! the output into the sink queues, and acknowledge the input upstream only
//! once every entry it produced is synced.
//!
//! Acknowledgements travel with their batch to the sync thread
//! ([`run_syncer`]), which syncs each batch as it comes (group commit; the
//! pipeline thread closes batches by its commit window), then acknowledges and
//! wakes the sinks.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::{IntakeMetrics, SyncMetrics};
use crate::pipeline::PipelineOutput;
use crate::record::now_ms;
use crate::routing::Router;
use crate::sinks::{Include, SinkConfig};
use crate::sources::{Ack, Item, Origin};
use crate::store::{Kind, Pushed, Queue, Store, entry, wait_until};

/// Acknowledgements waiting for entries below `upto` to be synced.
pub struct Pending {
    upto: u64,
    acks: Vec<Ack>,
}

struct Route {
    queue: Arc<Queue>,
    pipelines: Vec<String>,
    include: Include,
}

impl Route {
    fn wants(&self, pipeline: &str, kind: Kind) -> bool {
        let kind_ok = match (self.include, kind) {
            (Include::All, _) => true,
            (Include::Records, k) => k == Kind::Record,
            (Include::DeadLetters, k) => k == Kind::DeadLetter,
        };
        kind_ok && (self.pipelines.is_empty() || self.pipelines.iter().any(|p| p == pipeline))
    }
}

/// Puts pipeline output into the queues; owned by the pipeline thread.
pub struct Intake {
    store: Arc<Store>,
    routes: Vec<Route>,
    acks: Vec<Ack>,
    since_submit: usize,
    syncer: mpsc::Sender<Pending>,
    stopping: Arc<AtomicBool>,
    /// Counters.
    pub metrics: Arc<IntakeMetrics>,
    abandon: bool,
    /// The current input's admitted outputs: (route, seq, stored bytes).
    puts: Vec<(usize, u64, Vec<u8>)>,
    /// The lowest sequence number this intake may still commit.
    low: Arc<AtomicU64>,
    /// The thread's heartbeat: idle while waiting by design.
    beat: Option<Arc<crate::common::health::Beat>>,
    /// When the current input was received (ms since the epoch): its
    /// outputs' entries carry it, so a sink's delivery latency and a
    /// queue's `max_age` count from receipt.
    received_ms: u64,
    /// Where stages' downlink commands go.
    downlinks: Option<Arc<crate::sources::serial::downlink::Downlinks>>,
}

impl Intake {
    /// An intake over `queues` (with the sink configs they belong to).
    pub fn new(
        store: Arc<Store>,
        sinks: &[(SinkConfig, Arc<Queue>)],
        syncer: mpsc::Sender<Pending>,
        stopping: Arc<AtomicBool>,
    ) -> Intake {
        Intake {
            routes: Self::routes(sinks),
            acks: Vec::new(),
            since_submit: 0,
            syncer,
            stopping,
            metrics: Arc::default(),
            abandon: false,
            puts: Vec::new(),
            low: store.writer(),
            store,
            beat: None,
            received_ms: 0,
            downlinks: None,
        }
    }

    /// Send stages' downlink commands (`serial_send`) through `downlinks`.
    pub fn with_downlinks(
        mut self,
        downlinks: Arc<crate::sources::serial::downlink::Downlinks>,
    ) -> Intake {
        self.downlinks = Some(downlinks);
        self
    }

    /// Mark waits by design (for disk room, for queue room) as idle on
    /// `beat`.
    pub fn with_beat(mut self, beat: Arc<crate::common::health::Beat>) -> Intake {
        self.beat = Some(beat);
        self
    }

    /// Run `wait` with the heartbeat idle: waiting for room is not a wedge.
    fn idle_while<T>(
        beat: &Option<Arc<crate::common::health::Beat>>,
        wait: impl FnOnce() -> T,
    ) -> T {
        let was = beat.as_ref().and_then(|b| b.busy_for());
        if let Some(b) = beat {
            b.idle();
        }
        let r = wait();
        if let (Some(b), Some(_)) = (beat, was) {
            b.busy();
        }
        r
    }

    fn routes(sinks: &[(SinkConfig, Arc<Queue>)]) -> Vec<Route> {
        sinks
            .iter()
            .map(|(c, q)| Route {
                queue: q.clone(),
                pipelines: c.pipelines.clone(),
                include: c.include,
            })
            .collect()
    }

    /// Route to the sinks of a reloaded config (between inputs: the
    /// same queues, maybe other pipelines or kinds each).
    pub fn set_sinks(&mut self, sinks: &[(SinkConfig, Arc<Queue>)]) {
        debug_assert!(self.puts.is_empty());
        self.routes = Self::routes(sinks);
    }

    /// Handle one item from the sources. Its acknowledgement is held until
    /// the batch is synced (or dropped, unacknowledged, if the gateway
    /// stops while a `block` queue is full).
    pub fn handle(&mut self, router: &mut Router, item: Item) {
        // A failing disk: stop taking input until a sync succeeds again,
        // so sources feel backpressure instead of memory filling up.
        if !self.store.is_healthy() {
            self.submit();
            Self::idle_while(&self.beat, || {
                wait_until(|| self.store.is_healthy(), || self.stopping.load(Relaxed))
            });
        }
        self.abandon = false;
        let ack = match item {
            Item::Record {
                record,
                ack,
                origin,
            } => {
                // A source stamps `ts` at receipt; never in the future.
                self.received_ms = record.ts.min(now_ms());
                let origin = origin.filter(|_| self.store.is_durable());
                if let Some(o) = &origin
                    && o.dup
                    && self.store.redelivery_done(o, &self.queues())
                {
                    self.metrics.redelivered.fetch_add(1, Relaxed);
                    self.hold(ack);
                    return;
                }
                router.dispatch(&record, |name, out| self.output(name, out));
                if !self.abandon {
                    self.commit(origin.as_ref());
                }
                ack
            }
            Item::Rejected {
                source,
                topic,
                kind,
                error,
                bytes,
                ack,
            } => {
                self.received_ms = now_ms();
                let line = serde_json::json!({
                    "source": source,
                    "topic": topic,
                    "dead_letter": { "stage": "source", "kind": kind, "error": error },
                    "payload_bytes": bytes,
                });
                self.push("", Kind::DeadLetter, line.to_string().as_bytes());
                if !self.abandon {
                    self.commit(None);
                }
                ack
            }
        };
        if self.abandon {
            self.puts.clear();
            self.low
                .store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
            self.metrics.abandoned.fetch_add(1, Relaxed);
            drop(ack);
        } else {
            self.hold(ack);
        }
    }

    fn hold(&mut self, ack: Option<Ack>) {
        self.acks.extend(ack);
        self.since_submit += 1;
        if self.since_submit >= 512 {
            self.submit();
        }
    }

    fn output(&mut self, pipeline: &str, out: &PipelineOutput) {
        for r in out.records.iter() {
            self.push(pipeline, Kind::Record, r);
        }
        for d in &out.dead {
            let v = crate::pipeline::json::dead_letter_json(pipeline, d);
            self.push(pipeline, Kind::DeadLetter, v.to_string().as_bytes());
        }
        // Commands go out as the record is handled: a redelivered record
        // sends its commands again (they are idempotent: ping, identify,
        // set_interval).
        for d in &out.downlink {
            let Some(downlinks) = &self.downlinks else {
                break;
            };
            let order = crate::sources::serial::downlink::Order {
                sensor: d.sensor,
                command: d.command,
                reply: None,
            };
            match downlinks.send(&d.source, order) {
                Ok(()) => {
                    self.metrics.downlink_sent.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    if self.metrics.downlink_refused.fetch_add(1, Relaxed) == 0 {
                        tracing::warn!(pipeline, error = %e,
                            "a stage's downlink command was not sent (further ones are counted, not logged)");
                    }
                }
            }
        }
    }

    /// Admit one output into every queue that wants it; it is written with
    /// the rest of the input's output by [`Intake::commit`].
    fn push(&mut self, pipeline: &str, kind: Kind, body: &[u8]) {
        if self.abandon {
            return;
        }
        let wanted: Vec<usize> = (0..self.routes.len())
            .filter(|&i| self.routes[i].wants(pipeline, kind))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let stored = entry::encode(kind, self.received_ms, pipeline, body);
        // Room first, then the number: a writer that waits for room holds
        // no number, so it never holds back what other pipeline threads
        // committed after it (a full queue of their entries would then
        // wait for it, and it for them).
        let mut admitted = Vec::with_capacity(wanted.len());
        for i in wanted {
            let q = self.routes[i].queue.clone();
            let need = stored.len() as u64;
            match q.admit(need) {
                Pushed::Stored => {}
                Pushed::Refused => continue,
                Pushed::Full => {
                    // `block`: let what is queued become deliverable, then wait.
                    q.metrics.blocked.fetch_add(1, Relaxed);
                    self.submit();
                    let stopping = self.stopping.clone();
                    let mut refused = false;
                    let ok = Self::idle_while(&self.beat, || {
                        wait_until(
                            || match q.admit(need) {
                                Pushed::Full => false,
                                Pushed::Refused => {
                                    refused = true;
                                    true
                                }
                                Pushed::Stored => true,
                            },
                            || stopping.load(Relaxed),
                        )
                    });
                    if !ok {
                        self.abandon = true;
                        return;
                    }
                    if refused {
                        continue;
                    }
                }
            }
            admitted.push(i);
        }
        if admitted.is_empty() {
            return;
        }
        // One sequence number per record: the same message id in every sink.
        self.store.hold_from(&self.low);
        let seq = self.store.take_seq();
        for i in admitted {
            self.puts.push((i, seq, stored.clone()));
        }
    }

    /// Whether inputs wait for [`Intake::submit`].
    pub fn has_pending(&self) -> bool {
        self.since_submit > 0
    }

    fn queues(&self) -> Vec<&Queue> {
        self.routes.iter().map(|r| &*r.queue).collect()
    }

    /// Write the current input's outputs (marker first).
    fn commit(&mut self, origin: Option<&Origin>) {
        let puts: Vec<(&Queue, u64, Vec<u8>)> = self
            .puts
            .drain(..)
            .map(|(i, seq, stored)| (&*self.routes[i].queue, seq, stored))
            .collect();
        self.store.commit(puts, origin);
        self.low
            .store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    }

    /// Hand the held acknowledgements to the sync thread with the batch.
    pub fn submit(&mut self) {
        self.since_submit = 0;
        // Entries below `upto` may be delivered once synced; an unfinished
        // input's numbers are not written yet.
        let upto = self.puts.first().map_or(self.store.next_seq(), |p| p.1);
        let p = Pending {
            upto,
            acks: std::mem::take(&mut self.acks),
        };
        let _ = self.syncer.send(p);
    }
}

/// The longest wait between sync retries on a failing disk: how long
/// after space comes back the gateway resumes, at most.
pub const MAX_SYNC_RETRY: Duration = Duration::from_secs(2);

/// The sync thread: make batches durable, then acknowledge their inputs
/// and wake the sinks. Runs until every [`Intake`] sender is gone.
pub fn run_syncer(
    store: Arc<Store>,
    rx: mpsc::Receiver<Pending>,
    queues: Arc<Mutex<Vec<Arc<Queue>>>>,
    stopping: Arc<AtomicBool>,
    metrics: Arc<SyncMetrics>,
    beat: Arc<crate::common::health::Beat>,
) {
    while let Ok(first) = rx.recv() {
        let (mut upto, mut acks) = (first.upto, first.acks);
        while let Ok(p) = rx.try_recv() {
            upto = upto.max(p.upto);
            acks.extend(p.acks);
        }
        // Several intakes (a thread per pipeline): nothing past what one of
        // them may still commit becomes deliverable.
        let upto = upto.min(store.deliverable());
        let mut backoff = Duration::from_millis(50);
        let mut failed = false;
        let mut reopen_error = String::new();
        loop {
            let began = std::time::Instant::now();
            // Busy only inside one sync: a hung fsync is a wedge; the
            // retries on a full disk below are waits by design.
            beat.busy();
            let synced = store.sync(upto);
            beat.idle();
            match synced {
                Ok(()) => {
                    metrics.sync_time.observe(began.elapsed());
                    if failed {
                        tracing::info!("store sync works again; acknowledging what waited");
                    }
                    break;
                }
                Err(e) => {
                    metrics.failures.fetch_add(1, Relaxed);
                    if !failed {
                        tracing::error!(error = %e, "store sync failed (disk full or failing?); inputs stay unacknowledged, intake pauses, retrying until there is room again");
                    }
                    failed = true;
                    if stopping.load(Relaxed) {
                        // Unacknowledged: the broker redelivers next time.
                        acks.clear();
                        break;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_SYNC_RETRY);
                    // sled keeps its first I/O error: reopen it once the
                    // filesystem has room again, then sync again.
                    match store.recover() {
                        Ok(true) => metrics.reopens.fetch_add(1, Relaxed),
                        Ok(false) => 0,
                        Err(e) => {
                            let e = e.to_string();
                            if e != reopen_error {
                                tracing::error!(error = %e, "the store cannot be reopened yet; retrying");
                                reopen_error = e;
                            }
                            0
                        }
                    };
                }
            }
        }
        metrics.syncs.fetch_add(1, Relaxed);
        acks.into_iter().for_each(Ack::ack);
        // The sinks of now: a reload may add some.
        for q in queues.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            q.wake.notify_one();
        }
    }
}

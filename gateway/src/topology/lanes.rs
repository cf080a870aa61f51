//! The pipeline threads ([`serve`]). With one pipeline, it runs on the
//! thread that takes the input ([`drain`]). With several (from the start,
//! or after a reload that adds one), a dispatcher hands each
//! record to the pipelines that take it, each on a thread of its own with
//! a share of the record's acknowledgement ([`dispatch`]), so a slow
//! pipeline stalls only itself.
//!
//! A reload reaches them as a [`Swap`] on their control channel and is
//! applied between two records: the record being processed finishes on
//! the old version, the next one runs on the new; nothing is processed
//! twice or skipped.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::intake::{Intake, Pending};
use super::window::Window;
use crate::metrics::{Beat, Registry};
use crate::routing::{Route, Router};
use crate::sinks::SinkConfig;
use crate::sources::Item;
use crate::store::{Queue, Store};

/// How long the pipelines keep draining their input after a stop signal
/// before leaving the rest unacknowledged.
pub const DRAIN_BUDGET: Duration = Duration::from_secs(5);

/// Records a pipeline's own channel holds (a thread per pipeline).
pub const LANE_CAPACITY: usize = 256;

/// How often a pipeline thread copies its counters to the registry.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// New pipelines for a running thread.
pub struct Swap {
    /// The new pipelines (for a lane: its one pipeline).
    pub router: Router,
    /// The sinks and their queues, as the new config routes to them.
    pub sinks: Vec<(SinkConfig, Arc<Queue>)>,
    /// Told once the swap is applied: `(pipeline, stages whose state was kept)`.
    pub done: std_mpsc::Sender<Vec<(String, Vec<String>)>>,
}

/// What every pipeline thread shares.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<Store>,
    pub syncer: std_mpsc::Sender<Pending>,
    pub stopping: Arc<AtomicBool>,
    pub registry: Arc<Registry>,
    /// The group-commit window ([`Window`]).
    pub commit_window: Duration,
    /// Where stages' downlink commands (`serial_send`) go.
    pub downlinks: Arc<crate::sources::serial::downlink::Downlinks>,
}

impl Shared {
    /// An intake for thread `name`, with its heartbeat.
    fn intake(&self, name: &str, sinks: &[(SinkConfig, Arc<Queue>)]) -> (Intake, Arc<Beat>) {
        let beat = self.registry.beat(name);
        let intake = Intake::new(
            self.store.clone(),
            sinks,
            self.syncer.clone(),
            self.stopping.clone(),
        )
        .with_beat(beat.clone())
        .with_downlinks(self.downlinks.clone());
        self.registry.intake(intake.metrics.clone());
        (intake, beat)
    }
}

/// Either an input or a swap; `None`: the input is closed.
enum Next {
    Item(Item),
    Swap(Swap),
    Timeout,
    Closed,
}

/// Wait for the next input or swap, on `rt` (a current-thread runtime of
/// the calling thread), up to `until`; take no input before `rest`
/// (inputs gather in the channel meanwhile: one wake for many).
fn next(
    rt: &tokio::runtime::Runtime,
    rx: &mut mpsc::Receiver<Item>,
    ctl: &mut mpsc::UnboundedReceiver<Swap>,
    rest: Option<Instant>,
    until: Option<Instant>,
) -> Next {
    if let Ok(s) = ctl.try_recv() {
        return Next::Swap(s);
    }
    if let Some(t) = rest.filter(|&t| t > Instant::now()) {
        let swap = rt.block_on(async {
            tokio::select! {
                biased;
                Some(s) = ctl.recv() => Some(s),
                () = tokio::time::sleep_until(t.into()) => None,
            }
        });
        if let Some(s) = swap {
            return Next::Swap(s);
        }
    }
    match rx.try_recv() {
        Ok(item) => return Next::Item(item),
        Err(mpsc::error::TryRecvError::Disconnected) => return Next::Closed,
        Err(mpsc::error::TryRecvError::Empty) => {}
    }
    rt.block_on(async {
        let wait = async {
            match until {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            Some(s) = ctl.recv() => Next::Swap(s),
            item = rx.recv() => item.map_or(Next::Closed, Next::Item),
            () = wait => Next::Timeout,
        }
    })
}

fn timer() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a timer runtime")
}

/// Drop what is left in `rx` after the drain budget, and say so once.
fn abandon(rx: &mut mpsc::Receiver<Item>, intake: &Intake, already: u64) {
    let mut left = already;
    rx.close();
    while let Ok(item) = rx.try_recv() {
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
}

/// Whether the drain budget is spent.
fn over_budget(stopping: &AtomicBool, seen: &mut Option<Instant>) -> bool {
    stopping.load(Relaxed) && seen.get_or_insert_with(Instant::now).elapsed() >= DRAIN_BUDGET
}

/// One pipeline thread's loop: take inputs, run them through `router`,
/// put the output into the queues, and close a batch when the
/// group-commit [`Window`] says so. Returns the router
/// (for its counters).
pub fn drain(
    rx: mpsc::Receiver<Item>,
    ctl: mpsc::UnboundedReceiver<Swap>,
    sinks: Vec<(SinkConfig, Arc<Queue>)>,
    router: Router,
    shared: Shared,
) -> Router {
    match run_one(rx, ctl, sinks, router, shared, false) {
        Ended::Done(r) | Ended::Grow { router: r, .. } => r,
    }
}

/// How [`run_one`] ended.
enum Ended {
    /// The input closed, or the stop's drain budget was spent.
    Done(Router),
    /// A swap brought several pipelines: they need a thread each.
    Grow {
        rx: mpsc::Receiver<Item>,
        ctl: mpsc::UnboundedReceiver<Swap>,
        sinks: Vec<(SinkConfig, Arc<Queue>)>,
        /// The new pipelines, with the old ones' state and counters.
        router: Router,
    },
}

/// The gateway's pipeline thread: one pipeline runs on it ([`drain`]);
/// several, or a reload that brings several, go behind a dispatcher
/// ([`dispatch`]) from this thread. Returns the pipelines (for the report).
pub fn serve(
    rx: mpsc::Receiver<Item>,
    ctl: mpsc::UnboundedReceiver<Swap>,
    sinks: Vec<(SinkConfig, Arc<Queue>)>,
    router: Router,
    shared: Shared,
    capacity: usize,
) -> std::io::Result<Router> {
    if router.pipelines().count() > 1 {
        return dispatch(rx, ctl, sinks, router, shared, capacity);
    }
    match run_one(rx, ctl, sinks, router, shared.clone(), true) {
        Ended::Done(r) => Ok(r),
        Ended::Grow {
            rx,
            ctl,
            sinks,
            router,
        } => dispatch(rx, ctl, sinks, router, shared, capacity),
    }
}

/// [`drain`]; with `grow`, a swap to several pipelines ends it with
/// [`Ended::Grow`] (after this thread's last batch is handed to the sync
/// thread), so the caller can dispatch.
fn run_one(
    mut rx: mpsc::Receiver<Item>,
    mut ctl: mpsc::UnboundedReceiver<Swap>,
    sinks: Vec<(SinkConfig, Arc<Queue>)>,
    mut router: Router,
    shared: Shared,
    grow: bool,
) -> Ended {
    let name = router
        .pipelines()
        .next()
        .map_or("pipelines".to_string(), |p| {
            format!("pipeline {}", p.name())
        });
    let (mut intake, beat) = shared.intake(&name, &sinks);
    let mut window = Window::new(shared.commit_window);
    let rt = timer();
    let mut published = Instant::now();
    // Counters changed since they were last published.
    let mut dirty = false;
    let mut stop_seen: Option<Instant> = None;
    loop {
        // Shutdown is bounded: after DRAIN_BUDGET the inputs still
        // waiting are left unacknowledged (an MQTT broker redelivers
        // them; serial ones are lost, and counted).
        if over_budget(&shared.stopping, &mut stop_seen) {
            abandon(&mut rx, &intake, 0);
            break;
        }
        // Wake for the batch's end, and to publish counters that
        // changed even when no more input comes.
        let publish_at = dirty.then(|| published + PUBLISH_EVERY);
        let until = window.deadline().into_iter().chain(publish_at).min();
        let item = match next(&rt, &mut rx, &mut ctl, window.rest_until(), until) {
            Next::Item(item) => item,
            Next::Swap(s) => {
                let mut new = s.router;
                let kept = new.carry_over(&mut router);
                router = new;
                shared.registry.publish_pipelines(router.pipelines());
                if grow && router.pipelines().count() > 1 {
                    // What this thread took is committed; the dispatcher
                    // takes the next input.
                    intake.submit();
                    let _ = s.done.send(kept);
                    return Ended::Grow {
                        rx,
                        ctl,
                        sinks: s.sinks,
                        router,
                    };
                }
                intake.set_sinks(&s.sinks);
                let _ = s.done.send(kept);
                continue;
            }
            Next::Timeout => {
                let (now, dry) = (Instant::now(), rx.is_empty());
                if window.due(now, dry) {
                    intake.submit();
                    window.closed(now, dry);
                }
                if dirty && published.elapsed() >= PUBLISH_EVERY {
                    shared.registry.publish_pipelines(router.pipelines());
                    published = Instant::now();
                    dirty = false;
                }
                continue;
            }
            Next::Closed => break,
        };
        let waited_on = matches!(
            &item,
            Item::Record { ack: Some(_), .. } | Item::Rejected { ack: Some(_), .. }
        );
        beat.busy();
        intake.handle(&mut router, item);
        beat.idle();
        dirty = true;
        let (now, dry) = (Instant::now(), rx.is_empty());
        window.input(now, waited_on);
        if !intake.has_pending() {
            // The intake closed the batch itself (its cap, or a wait for
            // room or for the disk).
            window.closed(now, false);
        } else if window.due(now, dry) {
            intake.submit();
            window.closed(now, dry);
        }
        // Under a backlog that never lets the input run dry, counters
        // are published on time all the same (probation reads them).
        if published.elapsed() >= PUBLISH_EVERY {
            shared.registry.publish_pipelines(router.pipelines());
            published = Instant::now();
            dirty = false;
        }
    }
    intake.submit();
    shared.registry.publish_pipelines(router.pipelines());
    Ended::Done(router)
}

/// A pipeline on a thread of its own.
struct Lane {
    name: String,
    route: Route,
    tx: mpsc::Sender<Item>,
    ctl: mpsc::UnboundedSender<Swap>,
    thread: std::thread::JoinHandle<Router>,
}

impl Lane {
    fn spawn(
        router: Router,
        route: Route,
        sinks: &[(SinkConfig, Arc<Queue>)],
        shared: &Shared,
        capacity: usize,
    ) -> std::io::Result<Lane> {
        let name = router
            .pipelines()
            .next()
            .map(|p| p.name().to_string())
            .unwrap_or_default();
        let (tx, rx) = mpsc::channel::<Item>(capacity.clamp(1, LANE_CAPACITY));
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (sinks, shared) = (sinks.to_vec(), shared.clone());
        let thread = std::thread::Builder::new()
            .name(format!("pipeline-{name}"))
            .spawn(move || drain(rx, ctl_rx, sinks, router, shared))?;
        Ok(Lane {
            name,
            route,
            tx,
            ctl,
            thread,
        })
    }
}

/// The dispatcher of a thread per pipeline: each record goes to the
/// pipelines that take it, each with a share of its acknowledgement and
/// its own redelivery marker; source dead letters and records no pipeline
/// takes go through its own intake. A swap may add pipelines (new
/// threads), remove them (their threads finish what they hold on the old
/// version) or change them. Returns the pipelines, joined (for the report).
pub fn dispatch(
    mut rx: mpsc::Receiver<Item>,
    mut ctl: mpsc::UnboundedReceiver<Swap>,
    mut sinks: Vec<(SinkConfig, Arc<Queue>)>,
    router: Router,
    shared: Shared,
    capacity: usize,
) -> std::io::Result<Router> {
    let mut lanes = Vec::new();
    for (route, r) in router.split() {
        lanes.push(Lane::spawn(r, route, &sinks, &shared, capacity)?);
    }
    let mut retired: Vec<std::thread::JoinHandle<Router>> = Vec::new();
    let (mut intake, beat) = shared.intake("dispatch", &sinks);
    let mut none = Router::empty();
    let rt = timer();
    let mut stop_seen: Option<Instant> = None;
    loop {
        if over_budget(&shared.stopping, &mut stop_seen) {
            abandon(&mut rx, &intake, 0);
            break;
        }
        let item = match next(&rt, &mut rx, &mut ctl, None, None) {
            Next::Item(item) => item,
            Next::Swap(s) => {
                let mut new = s.router;
                let mut kept = Vec::new();
                let mut next_lanes = Vec::new();
                for (name, route) in new.routes() {
                    let Some(r) = new.take(&name) else { continue };
                    match lanes.iter().position(|l: &Lane| l.name == name) {
                        Some(i) => {
                            let mut lane = lanes.remove(i);
                            let (done, wait) = std_mpsc::channel();
                            let swap = Swap {
                                router: r,
                                sinks: s.sinks.clone(),
                                done,
                            };
                            if lane.ctl.send(swap).is_ok() {
                                kept.extend(wait.recv().unwrap_or_default());
                            }
                            lane.route = route;
                            next_lanes.push(lane);
                        }
                        None => match Lane::spawn(r, route, &s.sinks, &shared, capacity) {
                            Ok(lane) => next_lanes.push(lane),
                            Err(e) => tracing::error!(pipeline = %name, error = %e,
                                "cannot start a thread for the reloaded pipeline; it does not run"),
                        },
                    }
                }
                // Removed pipelines finish what they hold, on their version.
                for lane in lanes.drain(..) {
                    drop(lane.tx);
                    retired.push(lane.thread);
                }
                lanes = next_lanes;
                sinks = s.sinks;
                intake.set_sinks(&sinks);
                let _ = s.done.send(kept);
                continue;
            }
            Next::Timeout => continue,
            Next::Closed => break,
        };
        beat.busy();
        match item {
            Item::Record {
                record,
                ack,
                origin,
            } => {
                let to: Vec<usize> = (0..lanes.len())
                    .filter(|&i| lanes[i].route.accepts(&record.source, &record.topic))
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
                        let lane = &lanes[i];
                        let origin = origin.clone().map(|mut o| {
                            o.lane = lane.name.clone();
                            o
                        });
                        let item = Item::Record {
                            record: record.clone(),
                            ack: shares.as_mut().and_then(Vec::pop),
                            origin,
                        };
                        // Blocks only while that pipeline's own channel is
                        // full: a wait by design (that pipeline has its own
                        // heartbeat).
                        beat.idle();
                        let _ = lane.tx.blocking_send(item);
                        beat.busy();
                    }
                }
            }
            rejected => intake.handle(&mut none, rejected),
        }
        beat.idle();
        if rx.is_empty() && intake.has_pending() {
            intake.submit();
        }
    }
    intake.submit();
    let mut parts = vec![none];
    for lane in lanes {
        drop(lane.tx);
        retired.push(lane.thread);
    }
    parts.extend(retired.into_iter().filter_map(|t| t.join().ok()));
    Ok(Router::join(parts))
}

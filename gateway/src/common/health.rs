//! The primitives every component counts with: a task's health (state,
//! reason, restarts), a worker thread's heartbeat, and a histogram of
//! durations. The registry ([`crate::metrics`]) reads them.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A histogram of durations, in seconds: 0.5 ms to about 2.3 hours, in
/// steps of 4x.
#[derive(Debug)]
pub struct Seconds(pub prometheus_client::metrics::histogram::Histogram);

impl Default for Seconds {
    fn default() -> Self {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        Seconds(Histogram::new(exponential_buckets(0.0005, 4.0, 12)))
    }
}

impl Seconds {
    /// Count one duration.
    pub fn observe(&self, d: std::time::Duration) {
        self.0.observe(d.as_secs_f64());
    }

    /// Count `n` durations from `at_ms` (ms since the epoch) to now.
    pub fn since_ms(&self, at_ms: u64, n: usize) {
        let s = crate::record::now_ms().saturating_sub(at_ms) as f64 / 1000.0;
        for _ in 0..n {
            self.0.observe(s);
        }
    }
}

/// What a source or sink task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Started, not connected yet.
    Starting,
    /// Connected (or open) and working.
    Up,
    /// Lost its broker, device or file; retrying with backoff.
    Down,
    /// The task ended; the supervisor restarts it after a backoff.
    BackingOff,
    /// Stopped (the gateway is stopping, or a reload replaced it).
    Stopped,
}

impl State {
    /// The name used in status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Up => "up",
            State::Down => "down",
            State::BackingOff => "backing_off",
            State::Stopped => "stopped",
        }
    }

    /// Every state, for the one-hot state gauge.
    pub const ALL: [State; 5] = [
        State::Starting,
        State::Up,
        State::Down,
        State::BackingOff,
        State::Stopped,
    ];
}

/// The state of one task, its reason when not up, and its restarts.
#[derive(Debug)]
pub struct Health {
    inner: Mutex<(State, Option<String>)>,
    /// Times the supervisor restarted the task.
    pub restarts: AtomicU64,
    /// Bumped at every change (status over MQTT publishes on change).
    changes: Arc<AtomicU64>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(Arc::default())
    }
}

impl Health {
    /// A task's health, bumping `changes` at every change of state.
    pub fn new(changes: Arc<AtomicU64>) -> Health {
        Health {
            inner: Mutex::new((State::Starting, None)),
            restarts: AtomicU64::new(0),
            changes,
        }
    }

    /// Set the state; `reason` says why when it is not up.
    pub fn set(&self, state: State, reason: Option<String>) {
        let mut g = lock(&self.inner);
        if g.0 != state || g.1 != reason {
            *g = (state, reason);
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connected or open.
    pub fn up(&self) {
        self.set(State::Up, None);
    }

    /// Lost, retrying.
    pub fn down(&self, reason: impl Into<String>) {
        self.set(State::Down, Some(reason.into()));
    }

    /// The state and its reason.
    pub fn get(&self) -> (State, Option<String>) {
        lock(&self.inner).clone()
    }
}

/// A worker thread's heartbeat: when it began its current unit of work
/// (a record, a sync), or idle. Waits that are idle by design (for input,
/// for room in a `block` queue, for a failing disk to have room again)
/// count as idle; the watchdog is fed only while no thread has been busy
/// on one unit of work for too long.
#[derive(Debug)]
pub struct Beat {
    name: String,
    base: Instant,
    /// Milliseconds since `base` plus one when the work began; 0: idle.
    busy_since: AtomicU64,
}

impl Beat {
    /// A heartbeat named `name`, its times counted from `base`.
    pub fn new(name: &str, base: Instant) -> Beat {
        Beat {
            name: name.to_string(),
            base,
            busy_since: AtomicU64::new(0),
        }
    }

    /// Starting a unit of work.
    pub fn busy(&self) {
        let ms = self.base.elapsed().as_millis() as u64 + 1;
        self.busy_since.store(ms, Relaxed);
    }

    /// Done, or waiting by design.
    pub fn idle(&self) {
        self.busy_since.store(0, Relaxed);
    }

    /// How long the current unit of work has taken; `None` when idle.
    pub fn busy_for(&self) -> Option<std::time::Duration> {
        match self.busy_since.load(Relaxed) {
            0 => None,
            since => Some(
                self.base
                    .elapsed()
                    .saturating_sub(std::time::Duration::from_millis(since - 1)),
            ),
        }
    }

    /// Which thread.
    pub fn name(&self) -> &str {
        &self.name
    }
}

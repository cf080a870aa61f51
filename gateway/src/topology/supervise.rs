//! Supervised tasks: a source or sink task that ends (or panics) while
//! the gateway is serving is started again after a backoff with jitter,
//! and its health says so meanwhile.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::common::backoff::jittered;
use crate::common::health::{Health, State};

/// The first wait before a restart; it doubles up to [`MAX_RESTART_WAIT`].
pub const FIRST_RESTART_WAIT: Duration = Duration::from_secs(1);
/// The longest wait before a restart.
pub const MAX_RESTART_WAIT: Duration = Duration::from_secs(60);
/// A task that ran this long before ending starts again from the first wait.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Run `start()` until `stop` says true, restarting it whenever it ends
/// early. `what` names the task in logs (`source mqtt-in`).
pub fn spawn<H, F, Fut>(
    what: String,
    health: Arc<H>,
    mut stop: watch::Receiver<bool>,
    mut start: F,
) -> tokio::task::JoinHandle<()>
where
    H: AsRef<Health> + Send + Sync + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let health: &Health = (*health).as_ref();
        let mut wait = FIRST_RESTART_WAIT;
        loop {
            let began = Instant::now();
            let ended = tokio::spawn(start()).await;
            if *stop.borrow() {
                break;
            }
            let why = match ended {
                // Its own last word says why, when it left one.
                Ok(()) => match health.get().1 {
                    Some(r) => format!("the task ended: {r}"),
                    None => "the task ended while the gateway was serving".to_string(),
                },
                Err(e) if e.is_panic() => "the task panicked".to_string(),
                Err(e) => e.to_string(),
            };
            if began.elapsed() >= HEALTHY_RUN {
                wait = FIRST_RESTART_WAIT;
            }
            let pause = jittered(wait);
            health.set(State::BackingOff, Some(why.clone()));
            tracing::error!(task = %what, reason = %why, restart_in_ms = pause.as_millis() as u64,
                "task stopped; restarting it after a backoff");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            health.restarts.fetch_add(1, Relaxed);
            health.set(State::Starting, None);
            wait = (wait * 2).min(MAX_RESTART_WAIT);
        }
        health.set(State::Stopped, None);
    })
}

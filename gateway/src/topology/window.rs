//! The group-commit window: when a pipeline thread closes its batch and
//! hands it to the sync thread. Free of I/O: it is told the time.
//!
//! A sync (sled's flush and `fdatasync`) costs the same for one record as
//! for a hundred, and most of its cost is waking threads, so the batch
//! should grow when records trickle in. But records are acknowledged
//! upstream only once synced, and an MQTT broker sends at most its
//! in-flight window of unacknowledged QoS 1 messages, so waiting while
//! the broker waits for us only adds latency. The rules, in order:
//!
//! - a batch never holds more than [`MAX_BATCH`] inputs;
//! - a batch closes at most `window` after its first input (1 ms with a
//!   zero window), however it began: a slow pipeline with a backlog
//!   never runs dry, and its inputs wait for their sync;
//! - with a zero window, the batch closes whenever the input runs dry;
//! - an input that comes after a quiet spell of at least the window (the
//!   gateway was idle) closes its batch at once when the input runs dry:
//!   a lone record is not delayed;
//! - a batch that holds inputs whose source waits for their
//!   acknowledgement closes early once the input has been quiet for
//!   twice the usual gap between inputs (at least [`MIN_STALL`]): the
//!   source has most likely stopped for its in-flight window.
//!
//! So a quiet gateway syncs each record as it comes; a busy one syncs
//! at most once per window.
//!
//! The window adapts to the rate: the configured window is the longest
//! it gets, and the span actually used is the time [`TARGET_BATCH`]
//! inputs take to arrive at the rate measured over the last batches (at
//! least [`MIN_HOLD`]). A slow flow (1,000/s) gets the whole window, so a
//! sync and its wakes are shared by about twenty records instead of five;
//! a fast one (15,000/s) gets about 2 ms, where the batch is large
//! anyway, and records wait no longer than they need to.
//!
//! Waking a thread costs more than handling a W1 record, so under a
//! steady flow the pipeline thread also takes its input in batches: after
//! a batch of several inputs that ran dry and did not wait on a source, it
//! rests for one window ([`Window::rest_until`]) while inputs gather in
//! its channel, then takes them all and closes that batch when the input
//! runs dry. A lone input after the rest ends the resting. Under a steady
//! flow a record thus waits at most about two windows (a rest, then its
//! batch) before its sync.

use std::time::{Duration, Instant};

/// The most inputs a batch holds before it closes regardless.
pub const MAX_BATCH: usize = 512;

/// How long a batch stays open at most with a zero window (under a
/// backlog that never lets the input run dry).
pub const MIN_HOLD: Duration = Duration::from_millis(1);

/// The batch the adaptive span aims for: enough inputs that a sync's
/// fixed cost (sled's flush, `fdatasync`, the wakes of the sync and sink
/// threads) is a small share of each, measured at 1,000 and 5,000/s.
pub const TARGET_BATCH: u32 = 32;

/// The shortest quiet spell taken as a stalled source.
pub const MIN_STALL: Duration = Duration::from_micros(200);

/// The batch a pipeline thread is filling.
#[derive(Debug, Clone)]
pub struct Window {
    window: Duration,
    /// First input of the open batch, if one is open.
    opened: Option<Instant>,
    /// Whether the open batch came after a quiet spell.
    after_quiet: bool,
    last_input: Option<Instant>,
    /// Inputs in the open batch.
    held: usize,
    /// Whether the open batch holds inputs whose source waits for them.
    waited_on: bool,
    /// Moving average of the gap between inputs.
    gap: Duration,
    /// Rest (take no input) until then.
    rest: Option<Instant>,
    /// Whether the open batch gathered during a rest.
    rested: bool,
    /// When the last batch closed.
    last_close: Option<Instant>,
    /// The time between inputs, measured batch by batch (the time since
    /// the previous batch closed over the inputs this one held): input
    /// taken in bursts after a rest skews the gap between takes, this not.
    interval: Duration,
}

impl Window {
    /// A window of `window` (zero: close whenever the input runs dry).
    pub fn new(window: Duration) -> Window {
        Window {
            window,
            opened: None,
            after_quiet: true,
            last_input: None,
            held: 0,
            waited_on: false,
            gap: window,
            rest: None,
            rested: false,
            last_close: None,
            interval: window,
        }
    }

    /// The span a batch stays open and the pipeline rests for: the time
    /// [`TARGET_BATCH`] inputs take at the measured rate, within
    /// [`MIN_HOLD`] and the configured window.
    pub fn span(&self) -> Duration {
        if self.window.is_zero() {
            return Duration::ZERO;
        }
        self.interval
            .saturating_mul(TARGET_BATCH)
            .clamp(MIN_HOLD.min(self.window), self.window)
    }

    /// An input was added to the batch at `now`; `waited_on`: its
    /// source waits for its acknowledgement before sending more.
    pub fn input(&mut self, now: Instant, waited_on: bool) {
        if let Some(last) = self.last_input {
            let gap = now.saturating_duration_since(last);
            // An eighth of each new gap: steady under jitter.
            self.gap = (self.gap * 7 + gap) / 8;
        }
        if self.opened.is_none() {
            self.rested = self.rest.take().is_some();
            self.opened = Some(now);
            self.after_quiet = self
                .last_input
                .is_none_or(|last| now.saturating_duration_since(last) >= self.window);
        }
        self.last_input = Some(now);
        self.held += 1;
        self.waited_on |= waited_on;
    }

    /// How long a quiet input means a stalled source.
    fn stall(&self) -> Duration {
        (self.gap * 2).clamp(MIN_STALL, self.span().max(MIN_STALL))
    }

    /// Whether the batch should close now; `dry`: no input is waiting.
    pub fn due(&self, now: Instant, dry: bool) -> bool {
        let Some(opened) = self.opened else {
            return false;
        };
        if self.held >= MAX_BATCH {
            return true;
        }
        // However the batch began: a slow pipeline with a backlog never
        // runs dry, and its inputs wait for this sync.
        if now.saturating_duration_since(opened) >= self.span().max(MIN_HOLD) {
            return true;
        }
        if self.window.is_zero() || self.after_quiet || self.rested {
            return dry;
        }
        dry && self.waited_on
            && self
                .last_input
                .is_some_and(|l| now.saturating_duration_since(l) >= self.stall())
    }

    /// When to look again if no input comes (`None`: no batch is open).
    pub fn deadline(&self) -> Option<Instant> {
        let opened = self.opened?;
        if self.window.is_zero() || self.after_quiet || self.rested {
            return Some(opened);
        }
        let end = opened + self.span();
        match (self.waited_on, self.last_input) {
            (true, Some(l)) => Some(end.min(l + self.stall())),
            _ => Some(end),
        }
    }

    /// Whether a batch is open.
    pub fn is_open(&self) -> bool {
        self.opened.is_some()
    }

    /// Take no input before this (`None`: take it as it comes).
    pub fn rest_until(&self) -> Option<Instant> {
        self.rest.filter(|_| self.opened.is_none())
    }

    /// The batch was closed (handed to the sync thread) at `now`; `dry`:
    /// no input was waiting.
    pub fn closed(&mut self, now: Instant, dry: bool) {
        let span = self.span();
        let full_window = self
            .opened
            .is_some_and(|o| now.saturating_duration_since(o) >= span);
        let steady = !self.window.is_zero()
            && dry
            && !self.waited_on
            && self.held >= 2
            && (self.rested || full_window);
        self.rest = steady.then(|| now + span);
        // The rate over this batch: a faster flow is taken at once (its
        // records should not wait for a span sized for a slower one), a
        // slower one half and half with the old measure, so one odd batch
        // does not swing the span far. A batch after a quiet
        // spell measures the quiet, which gives the longest span: the
        // next batch under a steady flow measures the flow again.
        if let Some(last) = self.last_close
            && self.held > 0
        {
            let per = now.saturating_duration_since(last) / self.held as u32;
            self.interval = if per < self.interval {
                per
            } else {
                (self.interval + per.min(self.window)) / 2
            };
        }
        self.last_close = Some(now);
        self.rested = false;
        self.opened = None;
        self.held = 0;
        self.waited_on = false;
        self.after_quiet = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Play inputs arriving at the given offsets (ms) through a pipeline
    /// thread that takes no time per input: it rests when told, takes
    /// what arrived, and closes batches when due, at inputs and at
    /// deadlines. Returns the batch sizes, the longest an input waited
    /// from its arrival to its batch's close, and how often the thread
    /// woke.
    fn play(window: Duration, at: &[f64], waited_on: bool) -> (Vec<usize>, Duration, usize) {
        play_with(window, at, waited_on, Duration::ZERO)
    }

    /// [`play`] with a pipeline that takes `cost` per input.
    fn play_with(
        window: Duration,
        at: &[f64],
        waited_on: bool,
        cost: Duration,
    ) -> (Vec<usize>, Duration, usize) {
        let t0 = Instant::now();
        let arrivals: Vec<Instant> = at
            .iter()
            .map(|&off| t0 + Duration::from_secs_f64(off / 1000.0))
            .collect();
        let mut w = Window::new(window);
        let (mut sizes, mut batch, mut worst, mut wakes) =
            (Vec::new(), Vec::new(), Duration::ZERO, 0);
        let mut close = |w: &mut Window, now: Instant, dry: bool, batch: &mut Vec<Instant>| {
            sizes.push(batch.len());
            for a in batch.drain(..) {
                worst = worst.max(now - a);
            }
            w.closed(now, dry);
        };
        let (mut next, mut now) = (0, t0);
        while next < arrivals.len() || w.is_open() {
            wakes += 1;
            if let Some(r) = w.rest_until() {
                now = now.max(r);
            }
            if next < arrivals.len() && arrivals[next] <= now {
                // Take every input that is there.
                while next < arrivals.len() && arrivals[next] <= now {
                    now += cost;
                    w.input(now, waited_on);
                    batch.push(arrivals[next]);
                    next += 1;
                    let dry = arrivals.get(next).is_none_or(|&a| a > now);
                    if w.due(now, dry) {
                        close(&mut w, now, dry, &mut batch);
                    }
                }
                continue;
            }
            // Wait for the next input or the deadline.
            let arrival = arrivals.get(next).copied();
            match (w.deadline(), arrival) {
                (Some(d), a) if a.is_none_or(|a| d < a) => {
                    now = now.max(d);
                    assert!(w.due(now, true), "a deadline that is not due");
                    close(&mut w, now, true, &mut batch);
                }
                (_, Some(a)) => now = now.max(a),
                _ => unreachable!("no input and no deadline"),
            }
        }
        (sizes, worst, wakes)
    }

    #[test]
    fn zero_window_closes_whenever_the_input_runs_dry() {
        let (sizes, worst, _) = play(Duration::ZERO, &[0.0, 1.0, 2.0, 2.0, 2.0, 3.0], false);
        assert_eq!(sizes, vec![1, 1, 3, 1]);
        assert_eq!(worst, Duration::ZERO);
    }

    #[test]
    fn a_lone_record_after_a_quiet_spell_is_not_delayed() {
        let (sizes, worst, _) = play(ms(5), &[0.0, 100.0, 200.0], false);
        assert_eq!(sizes, vec![1, 1, 1]);
        assert_eq!(worst, Duration::ZERO);
    }

    #[test]
    fn a_steady_trickle_is_batched_once_per_window() {
        // 1,000/s for a second: about one batch and one wake per window,
        // not per record; no record waits much more than a window.
        let at: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let (sizes, worst, wakes) = play(ms(5), &at, false);
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert!(sizes.len() <= 220, "{} batches", sizes.len());
        assert!(wakes <= 450, "{wakes} wakes");
        assert!(worst <= ms(6), "a record waited {worst:?}");
        // And 15,000/s: the span is shorter than the window there (see
        // `the_span_adapts_to_the_rate`), batches still hold many inputs.
        let at: Vec<f64> = (0..15_000).map(|i| i as f64 / 15.0).collect();
        let (sizes, worst, wakes) = play(ms(5), &at, false);
        assert_eq!(sizes.iter().sum::<usize>(), 15_000);
        assert!(sizes.len() <= 15_000 / 16, "{} batches", sizes.len());
        assert!(wakes <= 2 * sizes.len() + 10, "{wakes} wakes");
        assert!(worst <= ms(6), "a record waited {worst:?}");
    }

    #[test]
    fn the_span_adapts_to_the_rate() {
        // A 20 ms window. At 1,000/s the whole window is used: about
        // twenty records per sync rather than five.
        let at: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let (sizes, worst, wakes) = play(ms(20), &at, false);
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert!(sizes.len() <= 60, "{} batches", sizes.len());
        assert!(wakes <= 130, "{wakes} wakes");
        assert!(worst <= ms(21), "a record waited {worst:?}");
        // At 15,000/s the span shrinks to what TARGET_BATCH inputs take
        // (about 2 ms): batches stay large, records wait far less than
        // the window.
        let at: Vec<f64> = (0..15_000).map(|i| i as f64 / 15.0).collect();
        let (sizes, worst, wakes) = play(ms(20), &at, false);
        assert_eq!(sizes.iter().sum::<usize>(), 15_000);
        let steady = &sizes[sizes.len() / 2..];
        let mean = steady.iter().sum::<usize>() / steady.len();
        assert!(worst <= ms(21), "a record waited {worst:?}");
        assert!(
            wakes <= 3 * sizes.len(),
            "{wakes} wakes for {} batches",
            sizes.len()
        );
        assert!(mean >= TARGET_BATCH as usize / 2, "mean batch {mean}");
        assert!(mean <= TARGET_BATCH as usize * 2, "mean batch {mean}");
        let late: Vec<f64> = (0..15_000).map(|i| 1000.0 + i as f64 / 15.0).collect();
        let mut w = Window::new(ms(20));
        let t0 = Instant::now();
        for (i, &a) in at.iter().chain(&late).enumerate() {
            let now = t0 + Duration::from_secs_f64(a / 1000.0);
            w.input(now, false);
            if i % TARGET_BATCH as usize == TARGET_BATCH as usize - 1 {
                w.closed(now, true);
            }
        }
        assert!(w.span() <= ms(3), "span {:?} at 15,000/s", w.span());
        // And back to a slow flow: the span grows again.
        for i in 0..200 {
            let now = t0 + ms(3000 + i * 5);
            w.input(now, false);
            w.closed(now, true);
        }
        assert_eq!(w.span(), ms(20));
    }

    #[test]
    fn a_slow_trickle_ends_the_resting() {
        // 100/s: inputs farther apart than the window are each synced at
        // once, and never wait for a rest.
        let at: Vec<f64> = (0..100).map(|i| i as f64 * 10.0).collect();
        let (sizes, worst, _) = play(ms(5), &at, false);
        assert_eq!(sizes.len(), 100);
        assert_eq!(worst, Duration::ZERO);
    }

    #[test]
    fn a_stalled_source_closes_the_batch_early() {
        // Bursts of 20 (a broker's in-flight window), then nothing until
        // they are acknowledged: each burst closes after a short quiet
        // spell, well inside the window.
        let mut at = Vec::new();
        for b in 0..5 {
            for i in 0..20 {
                at.push(b as f64 * 0.9 + i as f64 * 0.01);
            }
        }
        let (sizes, worst, _) = play(ms(10), &at, true);
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(worst < ms(2), "waited {worst:?} for a stalled source");
        // The same inputs without acknowledgements wait for the window.
        let (sizes_q0, _, _) = play(ms(10), &at, false);
        assert!(sizes_q0.len() < sizes.len(), "{sizes_q0:?} vs {sizes:?}");
    }

    #[test]
    fn a_slow_pipeline_with_a_backlog_still_syncs_once_per_window() {
        // 2 ms per input, one arriving every millisecond: the input never
        // runs dry. Each batch still closes within the window, after at
        // most window / cost + 2 inputs (a batch opens when its first
        // input is done); before, the first batch held
        // every input until the cap.
        let at: Vec<f64> = (0..200).map(|i| i as f64).collect();
        for waited_on in [false, true] {
            for (window, most) in [(ms(5), 4), (Duration::ZERO, 2)] {
                let (sizes, _, _) = play_with(window, &at, waited_on, ms(2));
                assert_eq!(sizes.iter().sum::<usize>(), 200);
                assert!(
                    sizes.iter().all(|&s| s <= most),
                    "window {window:?}: {sizes:?}"
                );
            }
        }
    }

    #[test]
    fn a_batch_never_exceeds_its_cap() {
        let at: Vec<f64> = (0..2000).map(|i| i as f64 * 0.001).collect();
        let (sizes, _, _) = play(ms(50), &at, false);
        assert!(sizes.iter().all(|&s| s <= MAX_BATCH), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 2000);
    }

    #[test]
    fn every_open_batch_has_a_deadline_that_closes_it() {
        for window in [0, 1, 5, 20] {
            for waited_on in [false, true] {
                for rested in [false, true] {
                    let mut w = Window::new(ms(window));
                    let t0 = Instant::now();
                    w.input(t0, waited_on);
                    w.input(t0, waited_on);
                    w.closed(t0 + ms(window), true);
                    let t1 = w.rest_until().filter(|_| rested).unwrap_or(t0 + ms(window));
                    w.input(t1 + ms(1), waited_on);
                    let d = w.deadline().expect("an open batch has a deadline");
                    assert!(w.due(d, true), "window {window} waited_on {waited_on}");
                    assert!(d <= t1 + ms(1) + ms(window));
                    assert!(w.rest_until().is_none(), "no rest while a batch is open");
                }
            }
        }
    }
}

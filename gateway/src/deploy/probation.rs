//! Probation: after a swap, the new version runs for a window of records
//! or time; too many failures in it, or a quarantine, and it is rolled
//! back. No I/O: [`Probation::observe`] is given the stage's counters
//! since the swap and the time, and gives the verdict.

use std::time::{Duration, Instant};

/// The stage's counters since the swap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Records given to the new version.
    pub records: u64,
    /// Of them, failed.
    pub failed: u64,
    /// The stage is quarantined.
    pub quarantined: bool,
}

/// What probation decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not yet decided.
    Running,
    /// Through: the version stays.
    Passed(Sample),
    /// Failed: roll back, for this reason.
    Failed(String),
}

/// One version's probation.
#[derive(Debug, Clone)]
pub struct Probation {
    records: u64,
    until: Instant,
    window: Duration,
    max_rate: f64,
}

impl Probation {
    /// A window of `records` records or `window` from `now`, whichever
    /// ends first, failing above `max_rate`.
    pub fn new(records: u64, window: Duration, max_rate: f64, now: Instant) -> Probation {
        Probation {
            records: records.max(1),
            until: now + window,
            window,
            max_rate,
        }
    }

    /// Failures the whole window may hold.
    fn allowed(&self) -> u64 {
        (self.max_rate * self.records as f64).floor() as u64
    }

    /// The verdict on `s` at `now`.
    pub fn observe(&self, s: Sample, now: Instant) -> Verdict {
        if s.quarantined {
            return Verdict::Failed(format!(
                "quarantined during probation ({} of {} records failed)",
                s.failed, s.records
            ));
        }
        // Early: once the window can no longer pass, stop it.
        if s.failed > self.allowed() {
            return Verdict::Failed(format!(
                "{} of {} records failed during probation, over the {:.1}% allowed of {}",
                s.failed,
                s.records,
                self.max_rate * 100.0,
                self.records
            ));
        }
        if s.records >= self.records {
            return Verdict::Passed(s);
        }
        if now >= self.until {
            let rate = if s.records == 0 {
                0.0
            } else {
                s.failed as f64 / s.records as f64
            };
            if rate > self.max_rate {
                return Verdict::Failed(format!(
                    "{} of {} records failed in the {} s probation, over the {:.1}% allowed",
                    s.failed,
                    s.records,
                    self.window.as_secs(),
                    self.max_rate * 100.0
                ));
            }
            return Verdict::Passed(s);
        }
        Verdict::Running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(records: u64, failed: u64) -> Sample {
        Sample {
            records,
            failed,
            quarantined: false,
        }
    }

    #[test]
    fn every_path_of_the_window() {
        let t0 = Instant::now();
        let p = Probation::new(100, Duration::from_secs(60), 0.05, t0);
        assert_eq!(p.observe(s(0, 0), t0), Verdict::Running);
        assert_eq!(p.observe(s(50, 5), t0), Verdict::Running);
        // Six failures can never fit in 5% of 100: fail at once.
        assert!(matches!(p.observe(s(10, 6), t0), Verdict::Failed(_)));
        assert_eq!(p.observe(s(100, 5), t0), Verdict::Passed(s(100, 5)));
        // Time ends it with fewer records: judged on what was seen.
        let end = t0 + Duration::from_secs(60);
        assert_eq!(p.observe(s(0, 0), end), Verdict::Passed(s(0, 0)));
        assert!(matches!(p.observe(s(20, 2), end), Verdict::Failed(_)));
        assert_eq!(p.observe(s(20, 1), end), Verdict::Passed(s(20, 1)));
        let q = Sample {
            quarantined: true,
            ..s(3, 3)
        };
        assert!(matches!(p.observe(q, t0), Verdict::Failed(r) if r.contains("quarantined")));
        // A zero rate: the first failure ends it.
        let strict = Probation::new(100, Duration::from_secs(60), 0.0, t0);
        assert!(matches!(strict.observe(s(1, 1), t0), Verdict::Failed(_)));
    }
}

//! Which entry a broker keeps refusing: a state machine, free of I/O.
//!
//! A broker that will not take a publish (over its packet size, a topic it
//! rejects) usually closes the connection rather than answering. The sink
//! sends again from the head of its queue after every reconnect, so one
//! such entry would wedge the queue forever.
//!
//! Which entry it was is not visible from a full window: the broker
//! resets the connection, and the reset discards acknowledgements of
//! earlier publishes still in the socket's buffer. So a drop soon after
//! sending starts *probing*: one publish in flight at a time, up to the
//! newest entry that was in flight. A drop while probing is the fault of
//! the one entry in flight; the same entry `after` times in a row goes to
//! the dead-letter queue. An acknowledgement clears a suspect; probing
//! ends once the entries that were in flight are resolved.

use std::time::Duration;

/// A drop counts against the entries in flight only this soon after the
/// oldest was sent; later drops (keep-alive timeouts of a stalled broker,
/// network outages) are not their fault.
pub const BLAME_WITHIN: Duration = Duration::from_secs(5);

/// What a dropped connection means for the entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to blame on an entry.
    Unrelated,
    /// One of the entries in flight: send one at a time to find it.
    Probe,
    /// `seq` is suspected, `attempts` times so far.
    Suspect {
        /// The entry.
        seq: u64,
        /// Drops right after it, in a row.
        attempts: u32,
    },
    /// `seq` failed `attempts` times: dead-letter it.
    DeadLetter {
        /// The entry.
        seq: u64,
        /// Drops right after it, in a row.
        attempts: u32,
    },
}

/// The poison-entry tracker of one sink.
#[derive(Debug, Clone)]
pub struct Poison {
    after: u32,
    suspect: Option<(u64, u32)>,
    /// Probing, up to and including this entry.
    probe_until: Option<u64>,
}

impl Poison {
    /// Dead-letter after `after` drops in a row (0: never).
    pub fn new(after: u32) -> Poison {
        Poison {
            after,
            suspect: None,
            probe_until: None,
        }
    }

    /// The connection dropped. `oldest` is the oldest entry sent on it and
    /// not acknowledged, with how long before the drop it was sent;
    /// `newest` the newest entry sent and not acknowledged.
    pub fn dropped(&mut self, oldest: Option<(u64, Duration)>, newest: u64) -> Verdict {
        let Some((seq, ago)) = oldest else {
            return Verdict::Unrelated;
        };
        if ago > BLAME_WITHIN {
            return Verdict::Unrelated;
        }
        if self.probe_until.is_none() && newest > seq {
            self.probe_until = Some(newest);
            return Verdict::Probe;
        }
        self.probe_until = Some(self.probe_until.unwrap_or(seq).max(seq));
        let attempts = match self.suspect {
            Some((s, n)) if s == seq => n + 1,
            _ => 1,
        };
        if self.after > 0 && attempts >= self.after {
            self.resolved(seq);
            return Verdict::DeadLetter { seq, attempts };
        }
        self.suspect = Some((seq, attempts));
        Verdict::Suspect { seq, attempts }
    }

    /// `seq` was acknowledged: the broker takes it after all.
    pub fn acked(&mut self, seq: u64) {
        self.resolved(seq);
    }

    /// `seq` is acknowledged or dead-lettered.
    fn resolved(&mut self, seq: u64) {
        if self.suspect.is_some_and(|(s, _)| s == seq) {
            self.suspect = None;
        }
        if self.probe_until.is_some_and(|u| seq >= u) {
            self.probe_until = None;
        }
    }

    /// How many publishes may be in flight: one while probing.
    pub fn window(&self, configured: usize) -> usize {
        if self.probe_until.is_some() {
            1
        } else {
            configured
        }
    }

    /// Whether the sink sends one entry per publish (probing).
    pub fn probing(&self) -> bool {
        self.probe_until.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::from_millis(10);

    #[test]
    fn a_drop_with_a_window_in_flight_probes_then_blames_the_one() {
        let mut p = Poison::new(3);
        // 2..=9 in flight; the reset lost the acks of 2..=4.
        assert_eq!(p.dropped(Some((2, SOON)), 9), Verdict::Probe);
        assert_eq!(p.window(100), 1);
        for s in 2..5 {
            p.acked(s);
            assert_eq!(p.window(100), 1, "still probing after {s}");
        }
        // 5 alone: dropped three times in a row.
        assert_eq!(
            p.dropped(Some((5, SOON)), 5),
            Verdict::Suspect {
                seq: 5,
                attempts: 1
            }
        );
        assert_eq!(
            p.dropped(Some((5, SOON)), 5),
            Verdict::Suspect {
                seq: 5,
                attempts: 2
            }
        );
        assert_eq!(
            p.dropped(Some((5, SOON)), 5),
            Verdict::DeadLetter {
                seq: 5,
                attempts: 3
            }
        );
        assert_eq!(p.window(100), 1, "6..=9 were in flight too");
        for s in 6..9 {
            p.acked(s);
        }
        assert!(p.probing());
        p.acked(9);
        assert!(!p.probing());
        assert_eq!(p.window(100), 100);
    }

    #[test]
    fn one_in_flight_is_blamed_at_once() {
        let mut p = Poison::new(2);
        assert_eq!(
            p.dropped(Some((7, SOON)), 7),
            Verdict::Suspect {
                seq: 7,
                attempts: 1
            }
        );
        assert_eq!(
            p.dropped(Some((7, SOON)), 7),
            Verdict::DeadLetter {
                seq: 7,
                attempts: 2
            }
        );
        assert!(!p.probing());
    }

    #[test]
    fn an_ack_or_another_suspect_starts_over() {
        let mut p = Poison::new(3);
        p.dropped(Some((7, SOON)), 7);
        p.dropped(Some((7, SOON)), 7);
        p.acked(6);
        assert!(p.probing(), "only its own ack clears it");
        p.acked(7);
        assert!(!p.probing());
        assert_eq!(
            p.dropped(Some((7, SOON)), 7),
            Verdict::Suspect {
                seq: 7,
                attempts: 1
            }
        );
        assert_eq!(
            p.dropped(Some((9, SOON)), 9),
            Verdict::Suspect {
                seq: 9,
                attempts: 1
            }
        );
        assert_eq!(
            p.dropped(Some((7, SOON)), 7),
            Verdict::Suspect {
                seq: 7,
                attempts: 1
            }
        );
    }

    #[test]
    fn outages_and_late_drops_blame_nobody() {
        let mut p = Poison::new(2);
        p.dropped(Some((7, SOON)), 7);
        // Nothing in flight (refused connection), or a drop long after the
        // send (keep-alive timeout): not the entry's fault, count kept.
        assert_eq!(p.dropped(None, 0), Verdict::Unrelated);
        assert_eq!(
            p.dropped(Some((7, BLAME_WITHIN + Duration::from_millis(1))), 7),
            Verdict::Unrelated
        );
        assert_eq!(
            p.dropped(Some((7, SOON)), 7),
            Verdict::DeadLetter {
                seq: 7,
                attempts: 2
            }
        );
    }

    #[test]
    fn zero_means_never() {
        let mut p = Poison::new(0);
        for n in 1..100 {
            assert_eq!(
                p.dropped(Some((7, SOON)), 7),
                Verdict::Suspect {
                    seq: 7,
                    attempts: n
                }
            );
        }
    }
}

//! Backoff with jitter: a fleet of gateways that lost the same broker at
//! the same moment must not reconnect in lockstep.

use std::time::Duration;

/// `d` scaled by a random factor in [0.5, 1.0).
pub fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.5 + 0.5 * unit())
}

/// A number in [0, 1) from the system's randomness (a clock-seeded
/// mix if that is unavailable: jitter needs spread, not secrecy).
fn unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let x = (t.as_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32);
        b = x.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes();
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Retrying a connection: the reason said once per distinct reason, then
/// a jittered wait that doubles up to a minute.
#[derive(Debug)]
pub struct Retry {
    backoff: Duration,
    warned: Option<String>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            backoff: Duration::from_millis(500),
            warned: None,
        }
    }
}

impl Retry {
    /// Note `why` it failed: `say` is called with it unless it is the
    /// reason said last. Returns the wait before the next try.
    pub fn failed(&mut self, why: String, say: impl FnOnce(&str)) -> Duration {
        if self.warned.as_ref() != Some(&why) {
            say(&why);
            self.warned = Some(why);
        }
        let wait = jittered(self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(60));
        wait
    }

    /// [`Retry::failed`], then wait unless `stop` changes first. `false`:
    /// stop.
    pub async fn wait(
        &mut self,
        why: String,
        say: impl FnOnce(&str),
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        let wait = self.failed(why, say);
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            _ = stop.changed() => false,
        }
    }

    /// Connected: the backoff starts over. `true` if a failure had been
    /// said (so the recovery is worth a line too).
    pub fn connected(&mut self) -> bool {
        self.backoff = Duration::from_millis(500);
        self.warned.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_says_each_reason_once_and_backs_off_to_a_minute() {
        let mut r = Retry::default();
        let mut said = Vec::new();
        let mut waits = Vec::new();
        for why in ["a", "a", "b", "b", "b", "a"].into_iter().chain(["c"; 10]) {
            waits.push(r.failed(why.to_string(), |w| said.push(w.to_string())));
        }
        assert_eq!(said, ["a", "b", "a", "c"]);
        assert!(waits[0] < Duration::from_millis(500));
        assert!(waits.iter().all(|w| *w < Duration::from_secs(60)));
        assert!(*waits.last().unwrap() >= Duration::from_secs(30));
        assert!(r.connected());
        assert!(!r.connected());
        assert!(r.failed("d".into(), |_| {}) < Duration::from_millis(500));
    }

    #[test]
    fn jitter_stays_in_range_and_spreads() {
        let d = Duration::from_secs(10);
        let waits: Vec<Duration> = (0..200).map(|_| jittered(d)).collect();
        assert!(waits.iter().all(|w| *w >= d / 2 && *w < d), "{waits:?}");
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(
            distinct.len() > 150,
            "only {} distinct waits",
            distinct.len()
        );
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

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

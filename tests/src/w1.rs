//! Reference workload W1: drop readings with `temp_c` outside [-40, 85], add `temp_f` and
//! `dew_point_c` (Magnus, a = 17.62, b = 243.12), then `temp_avg10_c` over the last 10
//! kept readings of each sensor; about 2% of generated readings are out of range.

use std::collections::{BTreeMap, HashMap, VecDeque};

use weir::record::{Record, json_to_cbor};
/// The simulator's seeded generator (xorshift64*).
use weir::sim::Rng;

/// Number of distinct sensors.
pub const SENSORS: u64 = 100;
/// First `ts` of generated readings.
pub const TS0: u64 = 1_732_380_000_000;

/// One sensor reading, as a sensor sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// `s0` .. `s99`.
    pub id: String,
    /// Epoch ms at the sender.
    pub ts: u64,
    /// Temperature, about 2% out of [-40, 85].
    pub temp_c: f64,
    /// Relative humidity, %.
    pub hum: f64,
    /// Battery, mV.
    pub bat_mv: u64,
    /// Sequence number.
    pub seq: u64,
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let m = 10f64.powi(decimals);
    (x * m).round() / m
}

/// `n` readings from a seeded generator.
pub fn generate(n: usize, seed: u64) -> Vec<Reading> {
    let mut rng = Rng::new(seed);
    (0..n as u64)
        .map(|seq| {
            let out_of_range = rng.unit() < 0.02;
            let temp_c = if out_of_range {
                if rng.unit() < 0.5 {
                    -40.01 - rng.unit() * 30.0
                } else {
                    85.01 + rng.unit() * 30.0
                }
            } else {
                -10.0 + rng.unit() * 50.0
            };
            Reading {
                id: format!("s{}", rng.bits() % SENSORS),
                ts: TS0 + seq * 10,
                temp_c: round_to(temp_c, 2),
                hum: round_to(5.0 + rng.unit() * 94.0, 1),
                bat_mv: 2900 + rng.bits() % 400,
                seq,
            }
        })
        .collect()
}

impl Reading {
    /// The reading as the sensor's JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "ts": self.ts, "temp_c": self.temp_c,
            "hum": self.hum, "bat_mv": self.bat_mv, "seq": self.seq,
        })
    }

    /// The reading as a gateway record from an MQTT topic.
    pub fn record(&self) -> Record {
        Record {
            source: "mqtt".into(),
            topic: format!("sensors/{}/telemetry", self.id),
            ts: self.ts + 5,
            headers: BTreeMap::new(),
            payload: json_to_cbor(&self.json()),
        }
    }
}

/// What W1 must output for one accepted reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// The reading's sequence number.
    pub seq: u64,
    /// Sensor id.
    pub id: String,
    /// temp_c * 9/5 + 32, rounded to 0.01.
    pub temp_f: f64,
    /// Magnus dew point, rounded to 0.01.
    pub dew_point_c: f64,
    /// Mean of the last 10 accepted temp_c of this id, rounded to 0.01.
    pub temp_avg10_c: f64,
}

/// The reference model: W1's three stages as plain Rust, from the spec.
pub fn reference(readings: &[Reading]) -> Vec<Expected> {
    const A: f64 = 17.62;
    const B: f64 = 243.12;
    // Windows hold micro-degrees, so the mean is exact for readings with up
    // to six decimals: the spec's "rounded to 0.01" of the true mean.
    let mut windows: HashMap<&str, VecDeque<i64>> = HashMap::new();
    let mut out = Vec::new();
    for r in readings {
        if !(-40.0..=85.0).contains(&r.temp_c) {
            continue;
        }
        let t = r.temp_c;
        let gamma = (r.hum / 100.0).ln() + A * t / (B + t);
        let w = windows.entry(&r.id).or_default();
        w.push_back((t * 1e6).round() as i64);
        if w.len() > 10 {
            w.pop_front();
        }
        let (sum, n) = (w.iter().sum::<i64>(), w.len() as i64 * 10_000);
        // round(sum / n) half away from zero, in integers: hundredths of a degree
        let avg_hundredths = (2 * sum + sum.signum() * n) / (2 * n);
        out.push(Expected {
            seq: r.seq,
            id: r.id.clone(),
            temp_f: round_to(t * 1.8 + 32.0, 2),
            dew_point_c: round_to(B * gamma / (A - gamma), 2),
            temp_avg10_c: avg_hundredths as f64 / 100.0,
        });
    }
    out
}

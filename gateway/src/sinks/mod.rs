//! Sinks: where pipeline output goes, each drained from its own queue in
//! the store ([`crate::store`]).
//!
//! The pipeline side (putting output into the queues, acknowledging inputs
//! once their batch is synced) is the topology's intake
//! ([`crate::topology::intake`]).
//! - [`mqtt`]: an MQTT broker (the cloud, or a local republish), QoS 1 with
//!   an in-flight window; an entry leaves its queue on PUBACK.
//! - [`lines`]: JSON lines to a rotated file or to stdout.
//!
//! Every sink sends in queue order (or live-first, see [`Selector`]),
//! under an optional rate cap ([`Rate`]), with a message id
//! `{gateway_id}-{seq}` on every record.

mod config;
pub mod lines;
pub mod mqtt;
pub mod poison;
pub mod topic;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

pub use config::{
    DEFAULT_TOPIC, Envelope, Format, Include, LiveFirst, Preset, PresetFacts, RateConfig, RawSink,
    SinkConfig, SinkType,
};
use serde_json::{Map, Value};

use crate::record::{Record, cbor_to_json};
use crate::store::{Entry, Kind, Queue};
use topic::Placeholder;

/// Counters of one sink's sending side (the queue has its own).
#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// Publishes or writes done.
    pub sends: AtomicU64,
    /// Records confirmed (PUBACK, or written and flushed).
    pub records: AtomicU64,
    /// Payload bytes confirmed.
    pub bytes: AtomicU64,
    /// Successful connections (MQTT).
    pub connects: AtomicU64,
    /// Times the sink became unreachable (each logged once).
    pub outages: AtomicU64,
    /// Up, down (and why), restarts.
    pub health: crate::common::health::Health,
    /// From entering the buffer to delivered (PUBACK, or written).
    pub latency: crate::common::health::Seconds,
}

/// Turns entries into topics and payloads.
#[derive(Debug, Clone)]
pub struct Render {
    gateway_id: String,
    sink: String,
    topic: String,
    max_topic: usize,
    format: Format,
    envelope: Envelope,
}

/// One entry, rendered.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The entry's sequence number.
    pub seq: u64,
    /// When it entered the buffer, ms since the Unix epoch.
    pub enqueued_ms: u64,
    /// Where it goes (MQTT).
    pub topic: String,
    /// The record as JSON (CBOR is encoded from it).
    pub value: Value,
    /// Why no broker would take its topic: it can never be delivered.
    pub refused: Option<String>,
}

impl Render {
    /// A renderer for sink `cfg` of gateway `gateway_id`.
    pub fn new(cfg: &SinkConfig, gateway_id: &str) -> Render {
        Render {
            gateway_id: gateway_id.to_string(),
            sink: cfg.name.clone(),
            topic: cfg.topic(gateway_id),
            max_topic: cfg.max_topic_bytes(),
            format: cfg.format,
            envelope: cfg.envelope(),
        }
    }

    /// The message id of entry `seq`.
    pub fn msg_id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.gateway_id)
    }

    /// Render one entry.
    pub fn render(&self, e: &Entry) -> Rendered {
        let msg_id = self.msg_id(e.seq);
        let (mut value, record) = match e.kind {
            Kind::Record => match Record::from_cbor(&e.body) {
                Ok(r) => {
                    let v = match self.envelope {
                        Envelope::Flat => match cbor_to_json(&r.payload) {
                            Value::Object(m) => Value::Object(m),
                            other => Value::Object(Map::from_iter([("value".into(), other)])),
                        },
                        Envelope::Record => {
                            let mut v = r.to_json();
                            if let Some(o) = v.as_object_mut() {
                                o.insert("pipeline".into(), e.pipeline.clone().into());
                            }
                            v
                        }
                    };
                    (v, Some(r))
                }
                // Stages validate what they emit; this would be a host bug.
                Err(err) => (
                    serde_json::json!({ "undecodable": err.to_string(), "cbor": e.body }),
                    None,
                ),
            },
            Kind::DeadLetter => (
                serde_json::from_slice(&e.body).unwrap_or_else(
                    |_| serde_json::json!({ "dead_letter": String::from_utf8_lossy(&e.body) }),
                ),
                None,
            ),
        };
        let topic = topic::fill(&self.topic, self.max_topic, |p| match *p {
            Placeholder::Known("gateway_id") => Some(self.gateway_id.clone()),
            Placeholder::Known("sink") => Some(self.sink.clone()),
            Placeholder::Known("pipeline") => Some(e.pipeline.clone()),
            Placeholder::Known("msg_id") => Some(msg_id.clone()),
            Placeholder::Known("source") => record.as_ref().map(|r| r.source.clone()),
            Placeholder::Known("topic") => record.as_ref().map(|r| r.topic.clone()),
            Placeholder::Known(_) => None,
            Placeholder::Field(field) => value
                .get(field)
                .or_else(|| value.get("payload").and_then(|p| p.get(field)))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
        });
        let (topic, refused) = match topic {
            Ok(t) => (t, None),
            Err(why) => (String::new(), Some(why)),
        };
        if let Some(o) = value.as_object_mut() {
            o.insert("msg_id".into(), msg_id.into());
            o.insert("gateway_id".into(), self.gateway_id.clone().into());
        }
        Rendered {
            seq: e.seq,
            enqueued_ms: e.enqueued_ms,
            topic,
            value,
            refused,
        }
    }

    /// Encode one record (batch of one) or an array of several.
    pub fn encode(&self, batch: &[Rendered]) -> Vec<u8> {
        let one;
        let v: &Value = if let [r] = batch {
            &r.value
        } else {
            one = Value::Array(batch.iter().map(|r| r.value.clone()).collect());
            &one
        };
        match self.format {
            Format::Json => serde_json::to_vec(v).expect("JSON values serialize"),
            Format::Cbor => serde_cbor::to_vec(v).expect("JSON values serialize as CBOR"),
        }
    }
}

/// Which entries a sink sends next: in queue order, or live-first.
///
/// Live-first: at every (re)connect the entries already queued become the
/// backlog; newer ones are live. Live entries go first; the backlog gets
/// `backlog_share` of the sends while live ones wait, and every send they
/// leave unused. Order holds within each part, not across them.
#[derive(Debug, Clone)]
pub struct Selector {
    next: u64,
    live: Option<Live>,
}

#[derive(Debug, Clone)]
struct Live {
    share: f64,
    from: u64,
    next: u64,
    sent_backlog: u64,
    sent: u64,
}

impl Selector {
    /// A selector for a sink with `live_first` (or not).
    pub fn new(live_first: Option<LiveFirst>) -> Selector {
        Selector {
            next: 0,
            live: live_first.map(|l| Live {
                share: l.backlog_share,
                from: 0,
                next: 0,
                sent_backlog: 0,
                sent: 0,
            }),
        }
    }

    /// Start over from the head of the queue (after a reconnect: whatever
    /// was in flight is sent again). `next_seq` is where live entries start.
    pub fn rewind(&mut self, next_seq: u64) {
        self.next = 0;
        if let Some(l) = &mut self.live {
            l.from = next_seq;
            l.next = next_seq;
        }
    }

    /// Give back entries from `seq` on (taken, not sent): they come next.
    pub fn unread(&mut self, seq: u64) {
        match &mut self.live {
            Some(l) if seq >= l.from => l.next = l.next.min(seq),
            _ => self.next = self.next.min(seq),
        }
    }

    /// Up to `max` deliverable entries (below `durable`) holding about
    /// `max_bytes` at most (at least one), in order within the part
    /// chosen. Advances past them.
    pub fn take(&mut self, q: &Queue, durable: u64, max: usize, max_bytes: u64) -> Vec<Entry> {
        let Some(l) = &mut self.live else {
            let got = q.read_within(self.next, durable, max, max_bytes);
            if let Some(e) = got.last() {
                self.next = e.seq + 1;
            }
            return got;
        };
        let backlog_due = (l.sent_backlog as f64) < l.share * l.sent as f64;
        let mut order = [false, true]; // false = live, true = backlog
        if backlog_due {
            order.reverse();
        }
        for backlog in order {
            let got = if backlog {
                q.read_within(self.next, durable.min(l.from), max, max_bytes)
            } else {
                q.read_within(l.next.max(l.from), durable, max, max_bytes)
            };
            if let Some(e) = got.last() {
                if backlog {
                    self.next = e.seq + 1;
                    l.sent_backlog += got.len() as u64;
                } else {
                    l.next = e.seq + 1;
                }
                l.sent += got.len() as u64;
                return got;
            }
        }
        Vec::new()
    }
}

/// A rate cap in records/s and bytes/s (generic cell rate: a send may go
/// when the theoretical arrival time is at most one second ahead).
#[derive(Debug, Clone)]
pub struct Rate {
    records_per_s: Option<f64>,
    bytes_per_s: Option<f64>,
    tat: Instant,
}

impl Rate {
    /// A cap from the config (no limits: always ready).
    pub fn new(cfg: RateConfig) -> Rate {
        Rate {
            records_per_s: cfg.records_per_s,
            bytes_per_s: cfg.bytes_per_s.map(|b| b.0 as f64),
            tat: Instant::now(),
        }
    }

    /// When the next send may go (`None`: now).
    pub fn wait(&self, now: Instant) -> Option<Instant> {
        if self.records_per_s.is_none() && self.bytes_per_s.is_none() {
            return None;
        }
        let burst = Duration::from_secs(1);
        (self.tat > now + burst).then(|| self.tat - burst)
    }

    /// Account for a send.
    pub fn spend(&mut self, now: Instant, records: usize, bytes: usize) {
        let mut cost = 0.0f64;
        if let Some(r) = self.records_per_s {
            cost = cost.max(records as f64 / r);
        }
        if let Some(b) = self.bytes_per_s {
            cost = cost.max(bytes as f64 / b);
        }
        if cost > 0.0 {
            self.tat = self.tat.max(now) + Duration::from_secs_f64(cost);
        }
    }
}

#[cfg(test)]
mod tests;

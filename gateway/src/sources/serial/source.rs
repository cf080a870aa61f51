//! The serial source's I/O: open the device with its line settings, read,
//! deframe, hand records on; when the device disappears (a USB unplug), log
//! it once, count the outage, and retry with backoff until it returns. On a
//! line in Weir's wire protocol it also writes the downlink's commands and
//! hands each reply to whoever waits for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;

use super::downlink::{Line, Order, Pending};
use super::framing::{DEFAULT_MAX_MESSAGE, Deframer, Framing, Message};
use crate::record::{Record, now_ms};
use crate::sources::item::Item;

/// `[[source]] type = "serial"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Unique source name (`serial0`).
    pub name: String,
    /// Device path (`/dev/ttyUSB0`, `/dev/serial/by-id/...`).
    pub path: String,
    /// Baud rate.
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Data bits: 5, 6, 7 or 8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// Parity: none, odd or even.
    #[serde(default)]
    pub parity: Parity,
    /// Stop bits: 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Flow control: none, software (XON/XOFF) or hardware (RTS/CTS).
    #[serde(default)]
    pub flow_control: FlowControl,
    /// How bytes are framed.
    pub framing: Framing,
    /// Topic of the records: `{source}`, `{sensor}` (wire sensor id) and
    /// `{field}` (a payload field) are filled in.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Longest line or message accepted, bytes.
    #[serde(default = "default_max_message")]
    pub max_message: usize,
    /// What to do when the pipelines fall behind: a serial line cannot be
    /// paused, so records are dropped, and counted.
    #[serde(default)]
    pub when_full: WhenFull,
}

fn default_baud() -> u32 {
    115_200
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_topic() -> String {
    "sensors/{sensor}/telemetry".into()
}
fn default_max_message() -> usize {
    DEFAULT_MAX_MESSAGE
}

/// Parity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    /// No parity bit.
    #[default]
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Flow control.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    /// None.
    #[default]
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// The policy when the channel to the pipelines is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// Drop the record that does not fit (the default).
    #[default]
    DropNewest,
}

/// Counters of one serial source.
#[derive(Debug, Default)]
pub struct SerialMetrics {
    /// Records handed to the pipelines.
    pub records: AtomicU64,
    /// Bytes read.
    pub bytes: AtomicU64,
    /// Times the device could not be opened or was lost.
    pub outages: AtomicU64,
    /// Frames lost, from gaps in sensor sequence numbers.
    pub lost_frames: AtomicU64,
    /// Sequence numbers that went backwards (a sensor restarted).
    pub seq_resets: AtomicU64,
    /// Records dropped because the pipelines were full (`when_full`).
    pub dropped_full: AtomicU64,
    /// Rejected input, by kind (`crc`, `malformed`, ...).
    pub rejected: std::sync::Mutex<HashMap<&'static str, u64>>,
    /// Times the device was opened.
    pub opens: AtomicU64,
    /// Downlink commands written to the line.
    pub commands: AtomicU64,
    /// Replies from sensors (each answers a command).
    pub replies: AtomicU64,
    /// Commands dropped because the line would not take them within a
    /// second (hardware flow control holding it, say).
    pub command_timeouts: AtomicU64,
    /// Up, down (and why), restarts.
    pub health: crate::common::health::Health,
}

impl SerialMetrics {
    /// Rejections of one kind.
    pub fn rejected(&self, kind: &str) -> u64 {
        self.rejected
            .lock()
            .map(|m| m.get(kind).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Per-sensor sequence tracking: counts frames lost in gaps.
#[derive(Debug, Default)]
pub struct SeqTracker {
    last: HashMap<u32, u32>,
}

/// What a sequence number says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEvent {
    /// The first frame seen from this sensor, or the next one.
    InOrder,
    /// `n` frames were lost before this one.
    Gap(u32),
    /// The number went backwards or repeated: the sensor restarted (or a duplicate).
    Reset,
}

impl SeqTracker {
    /// Record `seq` from `sensor`.
    pub fn observe(&mut self, sensor: u32, seq: u32) -> SeqEvent {
        let prev = self.last.insert(sensor, seq);
        match prev {
            None => SeqEvent::InOrder,
            Some(p) => match seq.wrapping_sub(p) {
                1 => SeqEvent::InOrder,
                d if d > 1 && d < 1 << 31 => SeqEvent::Gap(d - 1),
                _ => SeqEvent::Reset,
            },
        }
    }
}

/// Fill `{source}`, `{sensor}` and `{field}` (a payload field) in a topic template.
pub fn topic_for(
    template: &str,
    source: &str,
    sensor: Option<u32>,
    payload: &serde_cbor::Value,
) -> String {
    crate::record::fill_template(template, |key| match key {
        "source" => Some(source.to_owned()),
        "sensor" => sensor.map(|id| id.to_string()),
        field => match payload {
            serde_cbor::Value::Map(m) => match m.get(&serde_cbor::Value::Text(field.into()))? {
                serde_cbor::Value::Text(s) => Some(s.clone()),
                serde_cbor::Value::Integer(i) => Some(i.to_string()),
                _ => None,
            },
            _ => None,
        },
    })
}

fn builder(cfg: &SerialConfig) -> tokio_serial::SerialPortBuilder {
    use tokio_serial::{DataBits, StopBits};
    let data_bits = match cfg.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    tokio_serial::new(&cfg.path, cfg.baud)
        .data_bits(data_bits)
        .parity(match cfg.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        })
        .stop_bits(if cfg.stop_bits == 2 {
            StopBits::Two
        } else {
            StopBits::One
        })
        .flow_control(match cfg.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        })
}

/// What woke the read loop.
enum Event {
    Read(std::io::Result<usize>),
    Order(Order),
    Stop,
}

/// Longest wait for the line to take one command frame.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Read the device until `shutdown` resolves, reopening it whenever it
/// fails. `line` (Weir framing only) brings downlink commands to write.
pub async fn run(
    cfg: SerialConfig,
    tx: mpsc::Sender<Item>,
    metrics: Arc<SerialMetrics>,
    line: Option<Arc<Line>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut deframer = Deframer::new(&cfg.framing, cfg.max_message);
    let mut seqs = SeqTracker::default();
    let mut pending = Pending::default();
    let mut backoff = Duration::from_millis(100);
    let mut down = false;
    let mut buf = vec![0u8; 4096];
    // A restarted source takes the queue over from the one that ended.
    let mut orders = match &line {
        Some(l) => Some(l.rx.lock().await),
        None => None,
    };
    loop {
        let port = builder(&cfg).open_native_async();
        let mut port = match port {
            Ok(p) => p,
            Err(e) => {
                metrics.health.down(format!("{}: {e}", cfg.path));
                if !down {
                    down = true;
                    metrics.outages.fetch_add(1, Relaxed);
                    tracing::warn!(source = %cfg.name, path = %cfg.path, error = %e,
                        "serial device unavailable; retrying with backoff until it returns");
                }
                tokio::select! {
                    _ = tokio::time::sleep(crate::common::backoff::jittered(backoff)) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if down {
            tracing::info!(source = %cfg.name, path = %cfg.path, "serial device is back");
        } else {
            tracing::info!(source = %cfg.name, path = %cfg.path, baud = cfg.baud, "serial device open");
        }
        backoff = Duration::from_millis(100);
        metrics.opens.fetch_add(1, Relaxed);
        metrics.health.up();
        deframer.reset();
        loop {
            let event = tokio::select! {
                r = port.read(&mut buf) => Event::Read(r),
                Some(o) = async {
                    match orders.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => Event::Order(o),
                _ = shutdown.changed() => Event::Stop,
            };
            let n = match event {
                Event::Stop => return,
                Event::Order(mut order) => {
                    let seq = pending.number(&mut order);
                    let frame = command_frame(&order, seq);
                    match tokio::time::timeout(WRITE_TIMEOUT, port.write_all(&frame)).await {
                        Ok(Ok(())) => {
                            metrics.commands.fetch_add(1, Relaxed);
                            tracing::info!(source = %cfg.name, sensor = order.sensor, seq,
                                command = order.command.name(), "downlink command written");
                            continue;
                        }
                        Ok(Err(e)) => Err(e),
                        Err(_) => {
                            metrics.command_timeouts.fetch_add(1, Relaxed);
                            tracing::warn!(source = %cfg.name, sensor = order.sensor,
                                command = order.command.name(),
                                "the line did not take a downlink command within 1 s; dropped (flow control holding it?)");
                            continue;
                        }
                    }
                }
                Event::Read(Ok(0)) => Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                Event::Read(r) => r,
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    down = true;
                    metrics.health.down(format!("{}: {e}", cfg.path));
                    metrics.outages.fetch_add(1, Relaxed);
                    tracing::warn!(source = %cfg.name, path = %cfg.path, error = %e,
                        "serial device lost; retrying with backoff until it returns");
                    break;
                }
            };
            metrics.bytes.fetch_add(n as u64, Relaxed);
            deframer.push(&buf[..n], &mut |r| match r {
                Ok(msg) => deliver(&cfg, msg, &tx, &metrics, &mut seqs, &mut pending),
                Err(e) => {
                    let first = metrics.rejected.lock().is_ok_and(|mut m| {
                        let n = m.entry(e.kind()).or_default();
                        *n += 1;
                        *n == 1
                    });
                    // The first rejection of each kind is a warning; a noisy
                    // line then logs at debug level, and everything is counted.
                    if first {
                        tracing::warn!(source = %cfg.name, path = %cfg.path, error = %e,
                            "serial input rejected (further rejections of this kind are logged at debug level and counted)");
                    } else {
                        tracing::debug!(source = %cfg.name, error = %e, "serial input rejected");
                    }
                }
            });
        }
    }
}

/// A downlink command as a wire frame.
fn command_frame(order: &Order, seq: u32) -> Vec<u8> {
    let mut payload = [0u8; weir_sensor::node::MAX_COMMAND];
    // Every command fits: the longest is set_interval with a u32.
    let n = order.command.encode(&mut payload).unwrap_or(0);
    let mut frame = vec![0u8; weir_wire::frame_len(n)];
    let header = weir_wire::Header {
        kind: weir_wire::RecordType::Command,
        sensor_id: order.sensor,
        seq,
    };
    let len = weir_wire::encode(&header, &payload[..n], &mut frame).unwrap_or(0);
    frame.truncate(len);
    frame
}

fn deliver(
    cfg: &SerialConfig,
    msg: Message,
    tx: &mpsc::Sender<Item>,
    metrics: &SerialMetrics,
    seqs: &mut SeqTracker,
    pending: &mut Pending,
) {
    let mut headers = std::collections::BTreeMap::new();
    if let Some((sensor, seq)) = msg.sensor {
        match seqs.observe(sensor, seq) {
            SeqEvent::InOrder => {}
            SeqEvent::Gap(n) => {
                metrics.lost_frames.fetch_add(u64::from(n), Relaxed);
                tracing::debug!(source = %cfg.name, sensor, seq, lost = n, "sequence gap: frames lost");
            }
            SeqEvent::Reset => {
                metrics.seq_resets.fetch_add(1, Relaxed);
            }
        }
        headers.insert("sensor".to_owned(), sensor.to_string());
        headers.insert("seq".to_owned(), seq.to_string());
    }
    // A reply answers the gateway, not the pipelines.
    if let (Some("reply"), Some((sensor, _))) = (msg.kind.as_deref(), msg.sensor) {
        metrics.replies.fetch_add(1, Relaxed);
        let raw = serde_cbor::to_vec(&msg.payload).unwrap_or_default();
        let json = crate::record::cbor_to_json(&msg.payload);
        if !pending.reply(sensor, &raw, json.clone()) {
            tracing::info!(source = %cfg.name, sensor, reply = %json, "reply from a sensor (nobody waits for it)");
        }
        return;
    }
    if let Some(kind) = &msg.kind {
        headers.insert("kind".to_owned(), kind.clone());
    }
    let record = Record {
        source: cfg.name.clone(),
        topic: topic_for(&cfg.topic, &cfg.name, msg.sensor.map(|s| s.0), &msg.payload),
        ts: now_ms(),
        headers,
        payload: msg.payload,
    };
    match tx.try_send(Item::Record {
        record,
        ack: None,
        origin: None,
    }) {
        Ok(()) => {
            metrics.records.fetch_add(1, Relaxed);
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics.dropped_full.fetch_add(1, Relaxed);
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_gaps_and_resets() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(1, 10), SeqEvent::InOrder);
        assert_eq!(t.observe(1, 11), SeqEvent::InOrder);
        assert_eq!(t.observe(1, 15), SeqEvent::Gap(3));
        assert_eq!(t.observe(2, 0), SeqEvent::InOrder, "sensors are separate");
        assert_eq!(t.observe(1, 3), SeqEvent::Reset);
        assert_eq!(t.observe(1, 3), SeqEvent::Reset, "a duplicate");
        assert_eq!(t.observe(3, u32::MAX), SeqEvent::InOrder);
        assert_eq!(t.observe(3, 0), SeqEvent::InOrder, "wraps");
    }

    #[test]
    fn topics_are_filled() {
        let payload = serde_cbor::value::to_value(serde_json::json!({"id": "s9", "n": 3})).unwrap();
        assert_eq!(
            topic_for("sensors/{sensor}/telemetry", "serial0", Some(7), &payload),
            "sensors/7/telemetry"
        );
        assert_eq!(
            topic_for("{source}/{id}/{n}/{missing}", "serial0", None, &payload),
            "serial0/s9/3/_"
        );
    }
}

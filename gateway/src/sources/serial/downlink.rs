//! The downlink: commands from the gateway to sensor nodes on a serial
//! source's line (`ping`, `identify`, `set_interval`; see
//! `weir_sensor::command`), and the replies that answer them.
//!
//! A command reaches a line from `weir sensor send` (through the control
//! socket) or from a transform stage (`serial_send`). The serial source
//! writes it as a `Command` frame numbered per sensor, and matches each
//! `Reply` frame to the caller waiting for it by (sensor, sequence number).
//! Numbering and matching ([`Pending`]) do no I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use weir_sensor::{Command, Reply};

/// Commands waiting for a line to write them; more are refused.
pub const QUEUE: usize = 16;

/// A command for one sensor, and who waits for its reply (if anyone).
#[derive(Debug)]
pub struct Order {
    /// The sensor (the wire header's id).
    pub sensor: u32,
    /// The command.
    pub command: Command,
    /// Gets the reply's payload, as JSON.
    pub reply: Option<oneshot::Sender<serde_json::Value>>,
}

/// One serial source's queue of commands.
#[derive(Debug)]
pub struct Line {
    tx: mpsc::Sender<Order>,
    /// Taken by the running source for as long as it runs.
    pub rx: tokio::sync::Mutex<mpsc::Receiver<Order>>,
}

/// Why a command was not queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No serial source of that name runs here.
    NoSuchSource(String),
    /// The line has [`QUEUE`] commands waiting already.
    Full(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::NoSuchSource(s) => write!(
                f,
                "no serial source `{s}` runs on this gateway (see `[[source]]` entries with type = \"serial\")"
            ),
            Refused::Full(s) => write!(
                f,
                "serial source `{s}` has {QUEUE} commands waiting to be written (is its device open? `weir status` says)"
            ),
        }
    }
}

/// The lines of a running gateway, by source name.
#[derive(Debug, Default)]
pub struct Downlinks {
    lines: Mutex<HashMap<String, Arc<Line>>>,
}

impl Downlinks {
    /// The line of `source`, made on first use (a source restarted by its
    /// supervisor keeps its queue).
    pub fn open(&self, source: &str) -> Arc<Line> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .entry(source.to_owned())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                Arc::new(Line {
                    tx,
                    rx: tokio::sync::Mutex::new(rx),
                })
            })
            .clone()
    }

    /// Forget the line of a source a reload removed.
    pub fn close(&self, source: &str) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(source);
    }

    /// Queue `order` for `source` without waiting.
    pub fn send(&self, source: &str, order: Order) -> Result<(), Refused> {
        let line = self
            .lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .cloned()
            .ok_or_else(|| Refused::NoSuchSource(source.to_owned()))?;
        line.tx.try_send(order).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Refused::Full(source.to_owned()),
            mpsc::error::TrySendError::Closed(_) => Refused::NoSuchSource(source.to_owned()),
        })
    }
}

/// Command numbering per sensor and the callers waiting for replies.
///
/// Numbers start from the wall clock's milliseconds, so a restarted gateway
/// does not reuse the numbers of commands it sent just before, and a late
/// reply to one of those finds nobody waiting.
#[derive(Debug)]
pub struct Pending {
    base: u32,
    next: HashMap<u32, u32>,
    waiting: HashMap<(u32, u32), oneshot::Sender<serde_json::Value>>,
}

impl Default for Pending {
    fn default() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Pending::starting_at(ms as u32)
    }
}

impl Pending {
    /// Numbering from `base` for every sensor.
    pub fn starting_at(base: u32) -> Self {
        Pending {
            base,
            next: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    /// The sequence number for the next command to `order.sensor`; its
    /// caller, if any, now waits for the reply that quotes it.
    pub fn number(&mut self, order: &mut Order) -> u32 {
        // Callers that stopped waiting (timed out) are forgotten here.
        self.waiting.retain(|_, tx| !tx.is_closed());
        let next = self.next.entry(order.sensor).or_insert(self.base);
        let seq = *next;
        *next = next.wrapping_add(1);
        if let Some(tx) = order.reply.take() {
            self.waiting.insert((order.sensor, seq), tx);
        }
        seq
    }

    /// A reply from `sensor`: hand it to its caller. `false` when nobody
    /// waits for it (a stage's command, a caller that gave up, or a stray).
    pub fn reply(&mut self, sensor: u32, payload: &[u8], json: serde_json::Value) -> bool {
        let Some(r) = Reply::parse(payload) else {
            return false;
        };
        match self.waiting.remove(&(sensor, r.ack)) {
            Some(tx) => tx.send(json).is_ok(),
            None => false,
        }
    }

    /// Callers waiting.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

/// Parse a command as the CLI and the control socket name it: `ping`,
/// `identify`, or `set-interval` (or `set_interval`) with `value` in
/// milliseconds or as a duration (`30s`, `5min`).
pub fn parse_command(name: &str, value: Option<&str>) -> Result<Command, String> {
    let c = match (name, value) {
        ("ping", None) => Command::Ping,
        ("identify", None) => Command::Identify,
        ("set-interval" | "set_interval", Some(v)) => {
            let ms = match v.parse::<u64>() {
                Ok(ms) => ms,
                Err(_) => humantime::parse_duration(v)
                    .map_err(|e| {
                        format!(
                            "set-interval `{v}`: {e} (give milliseconds or a duration such as 30s)"
                        )
                    })?
                    .as_millis() as u64,
            };
            let lo = u64::from(weir_sensor::command::MIN_INTERVAL_MS);
            let hi = u64::from(weir_sensor::command::MAX_INTERVAL_MS);
            if !(lo..=hi).contains(&ms) {
                return Err(format!(
                    "set-interval {ms} ms: give {lo} ms to {hi} ms (one day)"
                ));
            }
            Command::SetInterval { ms: ms as u32 }
        }
        ("set-interval" | "set_interval", None) => {
            return Err("set-interval needs the interval: `set-interval 30s`".into());
        }
        ("ping" | "identify", Some(v)) => {
            return Err(format!("`{name}` takes no value (got `{v}`)"));
        }
        _ => {
            return Err(format!(
                "unknown command `{name}` (ping, identify, set-interval DURATION)"
            ));
        }
    };
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(sensor: u32, waits: bool) -> (Order, Option<oneshot::Receiver<serde_json::Value>>) {
        let (tx, rx) = oneshot::channel();
        let o = Order {
            sensor,
            command: Command::Ping,
            reply: waits.then_some(tx),
        };
        (o, waits.then_some(rx))
    }

    fn reply(ack: u32) -> Vec<u8> {
        let mut b = [0u8; 64];
        let r = Reply {
            cmd: "ping",
            ack,
            ok: true,
            error: None,
        };
        let n = r.encode(&[], &mut b).unwrap();
        b[..n].to_vec()
    }

    #[test]
    fn numbers_per_sensor_and_replies_reach_their_caller() {
        let mut p = Pending::starting_at(u32::MAX);
        let (mut a, ra) = order(1, true);
        let (mut b, rb) = order(1, true);
        let (mut c, _) = order(2, false);
        assert_eq!(p.number(&mut a), u32::MAX);
        assert_eq!(p.number(&mut b), 0, "wraps");
        assert_eq!(p.number(&mut c), u32::MAX, "sensors are numbered apart");
        assert_eq!(p.waiting(), 2);
        // A reply from the wrong sensor, a stray ack, and garbage match nothing.
        assert!(!p.reply(2, &reply(0), serde_json::json!(1)));
        assert!(!p.reply(1, &reply(7), serde_json::json!(1)));
        assert!(!p.reply(1, b"\x01", serde_json::json!(1)));
        assert!(p.reply(1, &reply(0), serde_json::json!("b")));
        assert!(p.reply(1, &reply(u32::MAX), serde_json::json!("a")));
        assert_eq!(ra.unwrap().try_recv().unwrap(), "a");
        assert_eq!(rb.unwrap().try_recv().unwrap(), "b");
        assert!(
            !p.reply(1, &reply(0), serde_json::json!(1)),
            "answered once"
        );
    }

    #[test]
    fn callers_that_gave_up_are_forgotten() {
        let mut p = Pending::starting_at(0);
        let (mut a, ra) = order(1, true);
        p.number(&mut a);
        drop(ra);
        let (mut b, _rb) = order(1, true);
        p.number(&mut b);
        assert_eq!(p.waiting(), 1);
        assert!(!p.reply(1, &reply(0), serde_json::json!(1)));
    }

    #[test]
    fn commands_are_parsed_with_their_reasons() {
        assert_eq!(parse_command("ping", None), Ok(Command::Ping));
        assert_eq!(
            parse_command("set-interval", Some("30s")),
            Ok(Command::SetInterval { ms: 30_000 })
        );
        assert_eq!(
            parse_command("set_interval", Some("250")),
            Ok(Command::SetInterval { ms: 250 })
        );
        assert!(
            parse_command("set-interval", Some("2d"))
                .unwrap_err()
                .contains("one day")
        );
        assert!(
            parse_command("set-interval", None)
                .unwrap_err()
                .contains("needs")
        );
        assert!(
            parse_command("reboot", None)
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(
            parse_command("ping", Some("1"))
                .unwrap_err()
                .contains("no value")
        );
    }

    #[test]
    fn a_full_line_and_a_missing_source_are_refused() {
        let d = Downlinks::default();
        assert!(matches!(
            d.send("serial9", order(1, false).0),
            Err(Refused::NoSuchSource(_))
        ));
        let _line = d.open("serial0");
        for _ in 0..QUEUE {
            d.send("serial0", order(1, false).0).unwrap();
        }
        let e = d.send("serial0", order(1, false).0).unwrap_err();
        assert_eq!(e, Refused::Full("serial0".into()));
        assert!(e.to_string().contains("16 commands waiting"));
    }
}

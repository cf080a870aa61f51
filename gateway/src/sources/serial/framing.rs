//! Turning serial bytes into record payloads, for every framing mode. Pure
//! and I/O-free: fed byte chunks, it calls back with payloads or with the
//! reason a chunk of input was rejected. The serial I/O around it is in
//! `source.rs`.

use serde::Deserialize;
use serde_cbor::Value;

use crate::record::json_to_cbor;

/// Longest line or length-prefixed message accepted by default.
pub const DEFAULT_MAX_MESSAGE: usize = 4096;

/// How bytes on the line are framed (`framing` in a serial source's config).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Framing {
    /// Weir's wire protocol (COBS, header, CBOR payload, CRC-32).
    Weir,
    /// Text lines (`\n`, optional `\r`) in a line format.
    Lines {
        /// What each line holds.
        format: LineFormat,
        /// CSV only: the column names, in order. Empty: the first line is the header.
        #[serde(default)]
        columns: Vec<String>,
        /// CSV only: the field delimiter (default `,`).
        #[serde(default = "default_delimiter")]
        delimiter: char,
    },
    /// A length prefix, then that many bytes of CBOR or JSON.
    LengthPrefixed {
        /// Prefix width in bytes: 1, 2 or 4 (big-endian).
        #[serde(default = "default_width")]
        width: u8,
        /// What the message holds.
        #[serde(default)]
        payload: MessageFormat,
    },
}

fn default_delimiter() -> char {
    ','
}
fn default_width() -> u8 {
    2
}

/// Line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineFormat {
    /// One JSON object per line.
    Json,
    /// Comma-separated values mapped to column names.
    Csv,
    /// NMEA 0183 sentences (`$GPGGA,...*hh`), checksum verified.
    Nmea,
}

/// Message formats for length-prefixed framing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    /// A CBOR item.
    #[default]
    Cbor,
    /// A JSON value.
    Json,
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The payload.
    pub payload: Value,
    /// Sensor id and sequence number, when the framing carries them (weir).
    pub sensor: Option<(u32, u32)>,
    /// Record type (weir framing) or sentence type (NMEA); `None` otherwise.
    pub kind: Option<String>,
}

/// Why a piece of input was rejected; `kind()` names the counter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// A wire-protocol frame was rejected.
    #[error("frame rejected: {0}")]
    Frame(weir_wire::FrameError),
    /// A line or message longer than the limit.
    #[error("message longer than {max} bytes, discarded")]
    TooLong {
        /// The limit.
        max: usize,
    },
    /// Not valid UTF-8 text.
    #[error("line is not valid UTF-8")]
    Utf8,
    /// Malformed JSON, CSV, CBOR or NMEA.
    #[error("malformed {format}: {detail}")]
    Malformed {
        /// Which format.
        format: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// An NMEA checksum mismatch.
    #[error("NMEA checksum mismatch: sentence says {expected:02X}, data gives {actual:02X}")]
    Checksum {
        /// Checksum carried by the sentence.
        expected: u8,
        /// Checksum computed.
        actual: u8,
    },
}

impl InputError {
    /// The counter name.
    pub fn kind(&self) -> &'static str {
        match self {
            InputError::Frame(e) => e.kind(),
            InputError::TooLong { .. } => "too_long",
            InputError::Utf8 => "utf8",
            InputError::Malformed { .. } => "malformed",
            InputError::Checksum { .. } => "checksum",
        }
    }
}

fn malformed(format: &'static str, detail: impl ToString) -> InputError {
    InputError::Malformed {
        format,
        detail: detail.to_string(),
    }
}

/// A streaming deframer for one serial line.
pub struct Deframer {
    mode: Mode,
    max: usize,
}

enum Mode {
    Weir(Box<weir_wire::Decoder>),
    Lines {
        format: LineFormat,
        columns: Vec<String>,
        delimiter: u8,
        buf: Vec<u8>,
        overflow: bool,
    },
    Prefixed {
        width: u8,
        payload: MessageFormat,
        buf: Vec<u8>,
    },
}

impl Deframer {
    /// A deframer for `framing`, holding at most `max` bytes of a partial
    /// line or message (the wire protocol has its own bound).
    pub fn new(framing: &Framing, max: usize) -> Self {
        let mode = match framing {
            Framing::Weir => Mode::Weir(Box::default()),
            Framing::Lines {
                format,
                columns,
                delimiter,
            } => Mode::Lines {
                format: *format,
                columns: columns.clone(),
                delimiter: u8::try_from(*delimiter).unwrap_or(b','),
                buf: Vec::new(),
                overflow: false,
            },
            Framing::LengthPrefixed { width, payload } => Mode::Prefixed {
                width: *width,
                payload: *payload,
                buf: Vec::new(),
            },
        };
        Deframer { mode, max }
    }

    /// Forget a partial message (after the device was reopened).
    pub fn reset(&mut self) {
        match &mut self.mode {
            Mode::Weir(d) => d.reset(),
            Mode::Lines { buf, overflow, .. } => {
                buf.clear();
                *overflow = false;
            }
            Mode::Prefixed { buf, .. } => buf.clear(),
        }
    }

    /// Feed bytes; `out` is called for each message or rejection completed.
    pub fn push(&mut self, data: &[u8], out: &mut impl FnMut(Result<Message, InputError>)) {
        let max = self.max;
        match &mut self.mode {
            Mode::Weir(dec) => dec.push(data, |r| {
                out(r.map_err(InputError::Frame).and_then(|f| {
                    let payload = if f.payload.is_empty() {
                        Value::Null
                    } else {
                        serde_cbor::from_slice(f.payload).map_err(|e| malformed("CBOR", e))?
                    };
                    Ok(Message {
                        payload,
                        sensor: Some((f.header.sensor_id, f.header.seq)),
                        kind: Some(f.header.kind.as_str().into()),
                    })
                }))
            }),
            Mode::Lines {
                format,
                columns,
                delimiter,
                buf,
                overflow,
            } => {
                for &b in data {
                    if b != b'\n' {
                        if buf.len() < max {
                            buf.push(b);
                        } else {
                            *overflow = true;
                        }
                        continue;
                    }
                    if std::mem::take(overflow) {
                        buf.clear();
                        out(Err(InputError::TooLong { max }));
                        continue;
                    }
                    let line = buf.strip_suffix(b"\r").unwrap_or(buf);
                    if !line.iter().all(u8::is_ascii_whitespace)
                        && let Some(r) = parse_line(*format, columns, *delimiter, line)
                    {
                        out(r);
                    }
                    buf.clear();
                }
            }
            Mode::Prefixed {
                width,
                payload,
                buf,
            } => {
                buf.extend_from_slice(data);
                let w = usize::from(*width);
                loop {
                    if buf.len() < w {
                        break;
                    }
                    let len = buf[..w]
                        .iter()
                        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                    if len > max {
                        // The stream cannot be resynchronised inside a bad
                        // length: drop what is buffered and start afresh.
                        buf.clear();
                        out(Err(InputError::TooLong { max }));
                        break;
                    }
                    if buf.len() < w + len {
                        break;
                    }
                    let msg = &buf[w..w + len];
                    let parsed = match payload {
                        MessageFormat::Cbor => {
                            serde_cbor::from_slice::<Value>(msg).map_err(|e| malformed("CBOR", e))
                        }
                        MessageFormat::Json => serde_json::from_slice::<serde_json::Value>(msg)
                            .map(|v| json_to_cbor(&v))
                            .map_err(|e| malformed("JSON", e)),
                    };
                    out(parsed.map(|payload| Message {
                        payload,
                        sensor: None,
                        kind: None,
                    }));
                    buf.drain(..w + len);
                }
            }
        }
    }
}

/// Parse one line; `None` for a CSV header line (it is consumed).
fn parse_line(
    format: LineFormat,
    columns: &mut Vec<String>,
    delimiter: u8,
    line: &[u8],
) -> Option<Result<Message, InputError>> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Some(Err(InputError::Utf8));
    };
    let text = text.trim();
    let plain = |payload| Message {
        payload,
        sensor: None,
        kind: None,
    };
    Some(match format {
        LineFormat::Json => serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| malformed("JSON", e))
            .and_then(|v| match v {
                serde_json::Value::Object(_) => Ok(plain(json_to_cbor(&v))),
                _ => Err(malformed("JSON", "expected an object")),
            }),
        LineFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .has_headers(false)
                .delimiter(delimiter)
                .from_reader(text.as_bytes());
            let record = match reader.records().next() {
                Some(Ok(r)) => r,
                Some(Err(e)) => return Some(Err(malformed("CSV", e))),
                None => return None,
            };
            if columns.is_empty() {
                *columns = record.iter().map(|c| c.trim().to_owned()).collect();
                return None;
            }
            if record.len() != columns.len() {
                return Some(Err(malformed(
                    "CSV",
                    format!(
                        "{} fields, expected {} ({})",
                        record.len(),
                        columns.len(),
                        columns.join(",")
                    ),
                )));
            }
            let map = columns
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (Value::Text(k.clone()), csv_value(v.trim())));
            Ok(plain(Value::Map(map.collect())))
        }
        LineFormat::Nmea => parse_nmea(text),
    })
}

/// Integers and floats become numbers, empty fields null, anything else text.
fn csv_value(v: &str) -> Value {
    if v.is_empty() {
        Value::Null
    } else if let Ok(i) = v.parse::<i64>() {
        Value::Integer(i.into())
    } else if let Ok(f) = v.parse::<f64>() {
        Value::Float(f)
    } else {
        Value::Text(v.to_owned())
    }
}

/// `$TTSSS,f1,f2,...*hh` → `{talker, sentence, fields: [...]}` after checking
/// `hh`, the XOR of every byte between `$` and `*`.
fn parse_nmea(text: &str) -> Result<Message, InputError> {
    let body = text
        .strip_prefix('$')
        .or_else(|| text.strip_prefix('!'))
        .ok_or_else(|| malformed("NMEA", "a sentence starts with '$' or '!'"))?;
    let (data, sum) = body
        .rsplit_once('*')
        .ok_or_else(|| malformed("NMEA", "no '*' checksum"))?;
    let expected = u8::from_str_radix(sum, 16)
        .map_err(|_| malformed("NMEA", format!("bad checksum `{sum}`")))?;
    let actual = data.bytes().fold(0u8, |acc, b| acc ^ b);
    if expected != actual {
        return Err(InputError::Checksum { expected, actual });
    }
    let mut parts = data.split(',');
    let address = parts.next().unwrap_or_default();
    if address.len() < 3 {
        return Err(malformed("NMEA", format!("bad address field `{address}`")));
    }
    let (talker, sentence) = address.split_at(address.len() - 3);
    let fields = parts.map(|f| Value::Text(f.to_owned())).collect();
    let map = [
        (Value::Text("talker".into()), Value::Text(talker.into())),
        (Value::Text("sentence".into()), Value::Text(sentence.into())),
        (Value::Text("fields".into()), Value::Array(fields)),
    ];
    Ok(Message {
        payload: Value::Map(map.into_iter().collect()),
        sensor: None,
        kind: Some(sentence.into()),
    })
}

#[cfg(test)]
#[path = "framing_tests.rs"]
mod tests;

//! MQTT messages to records, pure and I/O-free: payload decoding, topic
//! segments mapped to fields, user properties to headers.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_cbor::Value;

use crate::record::{Record, json_to_cbor};

/// How message payloads are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// JSON if it starts like JSON (`{`, `[`, or whitespace), else CBOR.
    #[default]
    Auto,
    /// JSON.
    Json,
    /// CBOR.
    Cbor,
}

/// Why a message could not become a record; `kind()` names the counter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    /// Larger than `max_payload`.
    #[error("payload of {len} bytes exceeds max_payload {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not valid UTF-8 (JSON).
    #[error("payload is not valid UTF-8")]
    Utf8,
    /// Malformed JSON or CBOR.
    #[error("malformed {format} payload: {detail}")]
    Malformed {
        /// Which format.
        format: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// `payload = "auto"` and the payload is neither (plain text, say).
    #[error(
        "payload is neither JSON nor CBOR; it starts with \"{start}\" ({len} bytes). Weir takes JSON objects or CBOR maps: have the sensor send JSON, or turn its format into fields in a transform stage"
    )]
    Unrecognised {
        /// The first bytes, escaped.
        start: String,
        /// Its size.
        len: usize,
    },
}

/// The first bytes of a payload, escaped for a log line.
fn start_of(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(32)];
    let mut s = shown.escape_ascii().to_string();
    if bytes.len() > shown.len() {
        s.push_str("...");
    }
    s
}

impl MessageError {
    /// The counter name.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageError::TooLarge { .. } => "too_large",
            MessageError::Utf8 => "utf8",
            MessageError::Malformed { .. } | MessageError::Unrecognised { .. } => "malformed",
        }
    }
}

/// Decode a payload.
pub fn decode_payload(
    bytes: &[u8],
    format: PayloadFormat,
    max: usize,
) -> Result<Value, MessageError> {
    if bytes.len() > max {
        return Err(MessageError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let json = match format {
        PayloadFormat::Json => true,
        PayloadFormat::Cbor => false,
        PayloadFormat::Auto => matches!(
            bytes.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        ),
    };
    if json {
        let text = std::str::from_utf8(bytes).map_err(|_| MessageError::Utf8)?;
        serde_json::from_str::<serde_json::Value>(text)
            .map(|v| json_to_cbor(&v))
            .map_err(|e| MessageError::Malformed {
                format: "JSON",
                detail: e.to_string(),
            })
    } else {
        serde_cbor::from_slice(bytes).map_err(|e| match format {
            // Not JSON by its first byte, and not CBOR either.
            PayloadFormat::Auto => MessageError::Unrecognised {
                start: start_of(bytes),
                len: bytes.len(),
            },
            _ => MessageError::Malformed {
                format: "CBOR",
                detail: e.to_string(),
            },
        })
    }
}

/// A topic pattern such as `sensors/{id}/telemetry`: `{name}` segments are
/// captured into payload fields, other segments must match literally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFields {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Field(String),
}

impl TopicFields {
    /// Parse a pattern.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let segments = pattern
            .split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some("") => Err(format!("empty field name in `{pattern}`")),
                    Some(name) => Ok(Segment::Field(name.to_owned())),
                    None if s.contains(['{', '}', '+', '#']) => {
                        Err(format!("bad segment `{s}` in `{pattern}`"))
                    }
                    None => Ok(Segment::Literal(s.to_owned())),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TopicFields { segments })
    }

    /// The captured fields, if `topic` matches.
    pub fn capture<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let parts: Vec<&str> = topic.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut out = Vec::new();
        for (seg, part) in self.segments.iter().zip(parts) {
            match seg {
                Segment::Literal(l) if l != part => return None,
                Segment::Literal(_) => {}
                Segment::Field(name) => out.push((name.as_str(), part)),
            }
        }
        Some(out)
    }
}

/// Build a record from a message. Captured topic fields are added to a map
/// payload unless the payload already has them.
pub fn to_record(
    source: &str,
    topic: &str,
    payload: Value,
    fields: Option<&TopicFields>,
    headers: BTreeMap<String, String>,
    now_ms: u64,
) -> Record {
    let mut payload = payload;
    if let (Some(tf), Value::Map(map)) = (fields, &mut payload)
        && let Some(captured) = tf.capture(topic)
    {
        for (name, value) in captured {
            map.entry(Value::Text(name.to_owned()))
                .or_insert_with(|| Value::Text(value.to_owned()));
        }
    }
    Record {
        source: source.to_owned(),
        topic: topic.to_owned(),
        ts: now_ms,
        headers,
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_decode_by_format() {
        let json = br#" {"temp_c": 21.5} "#;
        let cbor = serde_cbor::to_vec(&serde_json::json!({"temp_c": 21.5})).unwrap();
        let want = decode_payload(json, PayloadFormat::Json, 100).unwrap();
        assert_eq!(
            decode_payload(json, PayloadFormat::Auto, 100).unwrap(),
            want
        );
        assert_eq!(
            decode_payload(&cbor, PayloadFormat::Auto, 100).unwrap(),
            want
        );
        assert_eq!(
            decode_payload(&cbor, PayloadFormat::Cbor, 100).unwrap(),
            want
        );
        let kind = |b: &[u8], f| decode_payload(b, f, 100).unwrap_err().kind();
        assert_eq!(kind(b"{nope", PayloadFormat::Auto), "malformed");
        assert_eq!(kind(b"\xff\xfe", PayloadFormat::Json), "utf8");
        assert_eq!(kind(b"\xff\xfe", PayloadFormat::Cbor), "malformed");
        assert_eq!(kind(&[b'1'; 101], PayloadFormat::Json), "too_large");
    }

    #[test]
    fn plain_text_is_called_neither_json_nor_cbor_with_its_start_shown() {
        let e = decode_payload(b"temp=21.5\n\x01", PayloadFormat::Auto, 100).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("neither JSON nor CBOR"), "{msg}");
        assert!(msg.contains(r#"starts with "temp=21.5\n\x01""#), "{msg}");
        assert!(!msg.contains("EOF"), "{msg}");
        let long = decode_payload(&[b'x'; 50], PayloadFormat::Auto, 100).unwrap_err();
        assert!(long.to_string().contains(&format!("{}...", "x".repeat(32))));
    }

    #[test]
    fn topic_segments_become_fields_without_overwriting() {
        let tf = TopicFields::parse("sensors/{id}/{kind}").unwrap();
        assert_eq!(
            tf.capture("sensors/s7/telemetry"),
            Some(vec![("id", "s7"), ("kind", "telemetry")])
        );
        assert_eq!(tf.capture("sensors/s7"), None);
        assert_eq!(tf.capture("other/s7/telemetry"), None);
        let payload =
            serde_cbor::value::to_value(serde_json::json!({"kind": "mine", "v": 1})).unwrap();
        let rec = to_record(
            "mqtt",
            "sensors/s7/telemetry",
            payload,
            Some(&tf),
            BTreeMap::new(),
            5,
        );
        let json = rec.to_json();
        assert_eq!(
            json["payload"],
            serde_json::json!({"id": "s7", "kind": "mine", "v": 1})
        );
        assert!(TopicFields::parse("a/{}/b").is_err());
        assert!(TopicFields::parse("a/+/b").is_err());
    }
}

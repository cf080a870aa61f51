//! The record model: what flows from sources through pipelines to sinks.
//!
//! On the host a [`Record`] is a struct; between host and guest (and between
//! stages) it travels as the ABI v1 CBOR map (see `firmware-sdk/ABI.md`).
//! Sensors that speak JSON are converted here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_cbor::Value;

/// One telemetry record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The source that produced the record.
    pub source: String,
    /// MQTT topic or other subject.
    pub topic: String,
    /// Receive time at the gateway, ms since the Unix epoch.
    pub ts: u64,
    /// Metadata, text to text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The payload, usually a map of sensor fields.
    pub payload: Value,
}

/// Why bytes are not a record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not valid CBOR, or not a record map.
    #[error("not a record: {0}")]
    Cbor(#[from] serde_cbor::Error),
    /// Not valid JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Valid JSON of the wrong shape.
    #[error("{0}")]
    Shape(String),
}

impl Record {
    /// Encode as the ABI v1 CBOR record map.
    pub fn to_cbor(&self) -> Vec<u8> {
        serde_cbor::to_vec(self).expect("a Record always serializes")
    }

    /// Decode an ABI v1 CBOR record map.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, RecordError> {
        Ok(serde_cbor::from_slice(bytes)?)
    }

    /// The record as a JSON object (payload converted with [`cbor_to_json`]).
    pub fn to_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        obj.insert("source".into(), self.source.clone().into());
        obj.insert("topic".into(), self.topic.clone().into());
        obj.insert("ts".into(), self.ts.into());
        if !self.headers.is_empty() {
            let h = self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()));
            obj.insert("headers".into(), serde_json::Value::Object(h.collect()));
        }
        obj.insert("payload".into(), cbor_to_json(&self.payload));
        serde_json::Value::Object(obj)
    }
}

/// Convert JSON to CBOR: integers stay integers, other numbers become floats.
pub fn json_to_cbor(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Integer(i.into()),
            (None, Some(u)) => Value::Integer(u.into()),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Text(s.clone()),
        J::Array(a) => Value::Array(a.iter().map(json_to_cbor).collect()),
        J::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::Text(k.clone()), json_to_cbor(v)))
                .collect(),
        ),
    }
}

/// Convert CBOR to JSON. Byte strings become arrays of numbers, non-text map
/// keys are rendered as text, tags are unwrapped, non-finite floats become null.
pub fn cbor_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Integer(i) => {
            if let Ok(x) = i64::try_from(*i) {
                x.into()
            } else if let Ok(x) = u64::try_from(*i) {
                x.into()
            } else {
                J::String(i.to_string())
            }
        }
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Text(s) => J::String(s.clone()),
        Value::Bytes(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
        Value::Array(a) => J::Array(a.iter().map(cbor_to_json).collect()),
        Value::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Text(s) => s.clone(),
                        other => cbor_to_json(other).to_string(),
                    };
                    (key, cbor_to_json(v))
                })
                .collect(),
        ),
        Value::Tag(_, inner) => cbor_to_json(inner),
        _ => J::Null,
    }
}

/// How a JSON line becomes a record.
#[derive(Debug, Clone)]
pub struct JsonInput {
    /// Source name given to records.
    pub source: String,
    /// Topic for bare payloads; `{field}` is replaced by that payload field.
    pub topic_template: String,
}

impl JsonInput {
    /// Parse one JSON line. An object with a `payload` key is a record envelope
    /// (`source`, `topic`, `ts`, `headers` optional); any other object is a bare
    /// sensor payload whose topic comes from the template.
    pub fn parse(&self, line: &str, now_ms: u64) -> Result<Record, RecordError> {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let obj = v
            .as_object()
            .ok_or_else(|| RecordError::Shape("expected a JSON object".into()))?;
        if let Some(payload) = obj.get("payload") {
            let text = |k: &str| -> Result<Option<String>, RecordError> {
                match obj.get(k) {
                    None => Ok(None),
                    Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(RecordError::Shape(format!("`{k}` must be a string"))),
                }
            };
            let ts = match obj.get("ts") {
                None => now_ms,
                Some(t) => t
                    .as_u64()
                    .ok_or_else(|| RecordError::Shape("`ts` must be an unsigned integer".into()))?,
            };
            let mut headers = BTreeMap::new();
            if let Some(h) = obj.get("headers") {
                let h = h
                    .as_object()
                    .ok_or_else(|| RecordError::Shape("`headers` must be an object".into()))?;
                for (k, v) in h {
                    let v = v.as_str().ok_or_else(|| {
                        RecordError::Shape(format!("header `{k}` must be a string"))
                    })?;
                    headers.insert(k.clone(), v.to_owned());
                }
            }
            return Ok(Record {
                source: text("source")?.unwrap_or_else(|| self.source.clone()),
                topic: text("topic")?.unwrap_or_default(),
                ts,
                headers,
                payload: json_to_cbor(payload),
            });
        }
        Ok(Record {
            source: self.source.clone(),
            topic: fill_template(&self.topic_template, |key| match obj.get(key) {
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(v @ serde_json::Value::Number(_)) => Some(v.to_string()),
                _ => None,
            }),
            ts: now_ms,
            headers: BTreeMap::new(),
            payload: json_to_cbor(&v),
        })
    }
}

/// Replace `{name}` in `template` with `lookup(name)`, or `_` when it has none.
pub fn fill_template(template: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 8);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        out.push_str(&rest[..start]);
        match lookup(&rest[start + 1..start + len]) {
            Some(v) => out.push_str(&v),
            None => out.push('_'),
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> JsonInput {
        JsonInput {
            source: "stdin".into(),
            topic_template: "sensors/{id}/telemetry".into(),
        }
    }

    #[test]
    fn bare_payload_gets_topic_from_template() {
        let r = input()
            .parse(r#"{"id":"s17","temp_c":21.53,"seq":42}"#, 7)
            .unwrap();
        assert_eq!(r.topic, "sensors/s17/telemetry");
        assert_eq!(r.ts, 7);
        let back = Record::from_cbor(&r.to_cbor()).unwrap();
        assert_eq!(back, r);
        weir_abi::record::validate(&r.to_cbor()).unwrap();
        assert_eq!(r.to_json()["payload"]["temp_c"], 21.53);
        assert_eq!(r.to_json()["payload"]["seq"], 42);
    }

    #[test]
    fn envelope_keeps_its_fields() {
        let r = input()
            .parse(
                r#"{"topic":"a/b","ts":5,"headers":{"k":"v"},"payload":[1,2]}"#,
                7,
            )
            .unwrap();
        assert_eq!((r.topic.as_str(), r.ts), ("a/b", 5));
        assert_eq!(r.headers["k"], "v");
    }

    #[test]
    fn bad_json_is_an_error_not_a_panic() {
        for bad in [
            "",
            "{",
            "[1]",
            r#"{"payload":1,"ts":-1}"#,
            r#"{"payload":1,"headers":{"a":1}}"#,
        ] {
            assert!(input().parse(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_rejects_non_records() {
        assert!(weir_abi::record::validate(&[0xa0]).is_err());
        assert!(weir_abi::record::validate(&[0xff]).is_err());
        let mut ok = input().parse(r#"{"id":"x"}"#, 0).unwrap().to_cbor();
        ok.push(0x00); // trailing byte
        assert!(weir_abi::record::validate(&ok).is_err());
    }
}

//! Pipeline output as JSON: records tagged with their pipeline, and dead
//! letters with what went wrong (`weir run`, `weir module test`, and the
//! intake's dead-letter entries).

use serde_json::{Value, json};

use super::DeadLetter;
use crate::record::Record;

/// A record (ABI v1 CBOR) as a JSON object, tagged with its pipeline.
pub fn record_json(pipeline: Option<&str>, cbor: &[u8]) -> Value {
    let mut v = match Record::from_cbor(cbor) {
        Ok(r) => r.to_json(),
        // Stages validate every emitted record, so this means a host bug; say so
        // rather than lose the bytes.
        Err(e) => json!({ "undecodable": e.to_string(), "cbor": cbor }),
    };
    if let (Some(p), Some(obj)) = (pipeline, v.as_object_mut()) {
        obj.insert("pipeline".into(), p.into());
    }
    v
}

/// A dead letter as a JSON object: the record plus `dead_letter: {stage, kind, error}`.
pub fn dead_letter_json(pipeline: &str, d: &DeadLetter) -> Value {
    let mut v = record_json(Some(pipeline), &d.record);
    if let Some(obj) = v.as_object_mut() {
        obj.insert(
            "dead_letter".into(),
            json!({ "stage": d.stage, "kind": d.error.kind().as_str(), "error": d.error.to_string() }),
        );
    }
    v
}

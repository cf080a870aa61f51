//! Rendering records and dead letters as JSON lines.

use serde_json::{Value, json};

use std::io::Write;

use crate::pipeline::{DeadLetter, FailureKind, PipelineOutput};
use crate::record::Record;
use crate::routing::Router;

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

/// Write a pipeline's output as JSON lines: records, then dead letters.
pub fn write_output(
    w: &mut impl Write,
    pipeline: &str,
    out: &PipelineOutput,
) -> std::io::Result<()> {
    for r in out.records.iter() {
        writeln!(w, "{}", record_json(Some(pipeline), r))?;
    }
    for d in &out.dead {
        writeln!(w, "{}", dead_letter_json(pipeline, d))?;
    }
    Ok(())
}

/// Run `rec` through the router and write every pipeline's output; the
/// first write error stops the writing and is returned.
pub fn dispatch_to(router: &mut Router, rec: &Record, w: &mut impl Write) -> std::io::Result<()> {
    let mut failed = None;
    router.dispatch(rec, |name, out| {
        if failed.is_none() {
            failed = write_output(w, name, out).err();
        }
    });
    failed.map_or(Ok(()), Err)
}

/// Log every pipeline and stage counter once.
pub fn report(router: &Router) {
    for p in router.pipelines() {
        let m = p.metrics();
        tracing::info!(
            pipeline = p.name(),
            records_in = m.records_in,
            records_out = m.records_out,
            dead_lettered = m.dead_lettered,
            policy_dropped = m.policy_dropped,
            policy_passed = m.policy_passed,
            "pipeline done"
        );
        for s in p.stages() {
            let sm = s.metrics();
            let failures: Vec<String> = FailureKind::ALL
                .iter()
                .filter(|k| sm.failed(**k) > 0)
                .map(|k| format!("{k}={}", sm.failed(*k)))
                .collect();
            tracing::info!(
                stage = s.label(),
                records_in = sm.records_in,
                records_out = sm.records_out,
                dropped = sm.records_dropped,
                failed = sm.failed_total(),
                failures = failures.join(","),
                fuel_per_record = sm.fuel_used.checked_div(sm.records_in).unwrap_or(0),
                logs_dropped = s.logs_dropped(),
                quarantined = s.is_quarantined(),
                "stage done"
            );
        }
    }
}

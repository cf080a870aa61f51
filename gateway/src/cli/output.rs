//! Rendering records and dead letters as JSON lines.

use serde_json::{Value, json};

use std::io::Write;

use crate::pipeline::{DeadLetter, PipelineOutput};
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
    let stats: Vec<_> = router
        .pipelines()
        .map(crate::metrics::PipelineStats::of)
        .collect();
    crate::topology::log_pipelines(&stats);
}

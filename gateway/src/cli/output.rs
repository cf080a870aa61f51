//! Rendering records and dead letters as JSON lines.

use std::io::Write;

use crate::pipeline::PipelineOutput;
pub use crate::pipeline::json::{dead_letter_json, record_json};
use crate::record::Record;
use crate::routing::Router;

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

/// Write a pipeline's output records as their ABI v1 CBOR bytes in hex,
/// one per line (to compare byte for byte), then dead letters as JSON.
pub fn write_output_hex(
    w: &mut impl Write,
    pipeline: &str,
    out: &PipelineOutput,
) -> std::io::Result<()> {
    for r in out.records.iter() {
        writeln!(w, "{}", hex::encode(r))?;
    }
    for d in &out.dead {
        writeln!(w, "{}", dead_letter_json(pipeline, d))?;
    }
    Ok(())
}

/// Run `rec` through the router and write every pipeline's output with
/// `write`; the first write error stops the writing and is returned.
pub fn dispatch_with<W: Write>(
    router: &mut Router,
    rec: &Record,
    w: &mut W,
    write: fn(&mut W, &str, &PipelineOutput) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut failed = None;
    router.dispatch(rec, |name, out| {
        if failed.is_none() {
            failed = write(w, name, out).err();
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

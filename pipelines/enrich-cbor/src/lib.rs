//! W1 enrich written over the full [`Record`]: the guest scans the CBOR
//! record and re-encodes it itself. Same output as `enrich`, which uses the
//! host's `input_get` / `emit_input` instead; `benches/w1_pipeline.rs`
//! measures both in the same run (ABI.md, "Performance").
#![no_std]

#[path = "../../enrich/src/math.rs"]
mod math;

use weir_guest::{Action, Error, Record, Value};

/// Add the derived fields.
pub fn transform(rec: &mut Record<'_>) -> Result<Action, Error> {
    let t = rec.payload.f64("temp_c").ok_or(Error::Transform)?;
    rec.payload.set("temp_f", Value::Float(math::temp_f(t)))?;
    if let Some(dew) = rec.payload.f64("hum").and_then(|h| math::dew_point(t, h)) {
        rec.payload.set("dew_point_c", Value::Float(dew))?;
    }
    Ok(Action::Emit)
}

weir_guest::export_transform!(transform);

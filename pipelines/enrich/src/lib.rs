//! W1 stage 2, enrich: add `temp_f` and `dew_point_c` (Magnus formula,
//! a = 17.62, b = 243.12 °C), both rounded to 0.01. `dew_point_c` is added
//! only when `hum` is in (0, 100]. A record without a numeric `temp_c` is an error.
#![no_std]

pub mod math;

use weir_guest::{Action, Error, Input, Patch, Value};

/// Add the derived fields.
pub fn transform(input: &Input<'_>, out: &mut Patch) -> Result<Action, Error> {
    let t = input.f64("temp_c").ok_or(Error::Transform)?;
    out.set("temp_f", Value::Float(math::temp_f(t)))?;
    if let Some(dew) = input.f64("hum").and_then(|h| math::dew_point(t, h)) {
        out.set("dew_point_c", Value::Float(dew))?;
    }
    Ok(Action::Emit)
}

weir_guest::export_patch_transform!(transform);

//! W1 stage 2, enrich: add `temp_f` and `dew_point_c` (Magnus formula,
//! a = 17.62, b = 243.12 °C), both rounded to 0.01. `dew_point_c` is added
//! only when `hum` is in (0, 100]. A record without a numeric `temp_c` is an error.
#![no_std]

use weir_guest::{Action, Error, Record, Value};

const A: f64 = 17.62;
const B: f64 = 243.12;

/// Round to two decimals, half away from zero.
pub fn round2(x: f64) -> f64 {
    libm::round(x * 100.0) / 100.0
}

/// Dew point in °C from temperature (°C) and relative humidity (%).
pub fn dew_point(t: f64, hum: f64) -> f64 {
    let g = libm::log(hum / 100.0) + A * t / (B + t);
    B * g / (A - g)
}

/// Add the derived fields.
pub fn transform(rec: &mut Record<'_>) -> Result<Action, Error> {
    let t = rec.payload.f64("temp_c").ok_or(Error::Transform)?;
    rec.payload.set("temp_f", Value::Float(round2(t * 9.0 / 5.0 + 32.0)))?;
    if let Some(h) = rec.payload.f64("hum").filter(|h| *h > 0.0 && *h <= 100.0) {
        rec.payload.set("dew_point_c", Value::Float(round2(dew_point(t, h))))?;
    }
    Ok(Action::Emit)
}

weir_guest::export_transform!(transform);

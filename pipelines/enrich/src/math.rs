//! W1 enrich arithmetic, shared by `enrich` and `enrich-cbor`.

/// Magnus coefficient a.
pub const A: f64 = 17.62;
/// Magnus coefficient b, °C.
pub const B: f64 = 243.12;

/// Round to two decimals, half away from zero.
pub fn round2(x: f64) -> f64 {
    libm::round(x * 100.0) / 100.0
}

/// Fahrenheit from Celsius, rounded to 0.01.
pub fn temp_f(t: f64) -> f64 {
    round2(t * 9.0 / 5.0 + 32.0)
}

/// Dew point in °C (Magnus) from temperature (°C) and relative humidity (%),
/// rounded to 0.01; `None` unless humidity is in (0, 100].
pub fn dew_point(t: f64, hum: f64) -> Option<f64> {
    if !(hum > 0.0 && hum <= 100.0) {
        return None;
    }
    let g = libm::log(hum / 100.0) + A * t / (B + t);
    Some(round2(B * g / (A - g)))
}

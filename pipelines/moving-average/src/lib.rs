//! W1 stage 3, moving-average: add `temp_avg10_c`, the mean of the last
//! `window` (default 10, at most 32) accepted `temp_c` of the same `id`,
//! rounded to 0.01. The window lives in the host's per-module state (grant
//! `state`), so it survives instance restarts and per-record isolation.
//!
//! State value layout: `[count: u8, next: u8, window × f64 little-endian]`.
#![no_std]

use weir_guest::host::state;
use weir_guest::{Action, Error, Fields, Global, Record, Value};

const MAX_WINDOW: usize = 32;
static WINDOW: Global<usize> = Global::new(10);

/// Read `window` from the stage config.
pub fn init(cfg: &Fields<'_>) -> Result<(), Error> {
    if let Some(v) = cfg.get("window") {
        let w = v.as_i64().ok_or(Error::Config)?;
        if !(1..=MAX_WINDOW as i64).contains(&w) {
            return Err(Error::Config);
        }
        WINDOW.set(w as usize);
    }
    Ok(())
}

/// Update the sensor's window and add the mean.
pub fn transform(rec: &mut Record<'_>) -> Result<Action, Error> {
    let t = rec.payload.f64("temp_c").ok_or(Error::Transform)?;
    let id = rec.payload.str("id").ok_or(Error::Transform)?;
    let window = WINDOW.get();

    let mut buf = [0u8; 2 + 8 * MAX_WINDOW];
    let size = 2 + 8 * window;
    let (mut count, mut next) = match state::get(id.as_bytes(), &mut buf[..size])? {
        Some(n) if n == size => (buf[0] as usize, buf[1] as usize),
        _ => (0, 0), // new sensor, or the window size changed: start afresh
    };
    let slot = 2 + 8 * next;
    buf[slot..slot + 8].copy_from_slice(&t.to_le_bytes());
    next = (next + 1) % window;
    count = (count + 1).min(window);
    buf[0] = count as u8;
    buf[1] = next as u8;
    state::set(id.as_bytes(), &buf[..size])?;

    let sum: f64 = (0..count)
        .map(|i| {
            let s = 2 + 8 * i;
            f64::from_le_bytes(buf[s..s + 8].try_into().unwrap_or([0; 8]))
        })
        .sum();
    let avg = libm::round(sum / count as f64 * 100.0) / 100.0;
    rec.payload.set("temp_avg10_c", Value::Float(avg))?;
    Ok(Action::Emit)
}

weir_guest::export_transform!(transform, init = init);

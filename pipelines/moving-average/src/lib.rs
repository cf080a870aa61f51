//! W1 stage 3, moving-average: add `temp_avg10_c`, the mean of the last
//! `window` (default 10, at most 32) accepted `temp_c` of the same `id`,
//! rounded to 0.01. The window lives in the host's per-module state (grant
//! `state`), so it survives instance restarts and per-record isolation.
//!
//! The mean is exact: temperatures are kept as integer micro-degrees and the
//! mean is rounded half away from zero in integer arithmetic, so ties such as
//! 14.615 always round to 14.62 (a floating-point sum would round them either
//! way depending on the order of the window).
//!
//! State value layout: `[count: u8, next: u8, window × i64 µ°C little-endian]`.
#![no_std]

use weir_guest::host::state;
use weir_guest::{Action, Error, Fields, Global, Input, Patch, Value};

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

/// One sensor's window, as stored in the module's state.
struct Window {
    count: usize,
    next: usize,
    micros: [i64; MAX_WINDOW],
}

impl Window {
    fn load(bytes: &[u8], window: usize) -> Window {
        let mut w = Window {
            count: 0,
            next: 0,
            micros: [0; MAX_WINDOW],
        };
        // A stored window of another size (the config changed) starts afresh.
        if let [count, next, rest @ ..] = bytes
            && rest.len() == 8 * window
            && (*count as usize) <= window
            && (*next as usize) < window
        {
            w.count = *count as usize;
            w.next = *next as usize;
            for (t, chunk) in w.micros.iter_mut().zip(rest.chunks_exact(8)) {
                let mut b = [0u8; 8];
                b.iter_mut().zip(chunk).for_each(|(d, s)| *d = *s);
                *t = i64::from_le_bytes(b);
            }
        }
        w
    }

    fn store(&self, out: &mut [u8; 2 + 8 * MAX_WINDOW], window: usize) -> usize {
        out[0] = self.count as u8;
        out[1] = self.next as u8;
        for (chunk, t) in out[2..]
            .chunks_exact_mut(8)
            .zip(&self.micros[..])
            .take(window)
        {
            chunk
                .iter_mut()
                .zip(t.to_le_bytes())
                .for_each(|(d, s)| *d = s);
        }
        2 + 8 * window
    }

    /// Add a reading; the mean in hundredths of a degree, rounded half away from zero.
    fn push(&mut self, t: f64, window: usize) -> i64 {
        if let Some(slot) = self.micros.get_mut(self.next) {
            *slot = libm::round(t * 1e6) as i64;
        }
        self.next = if self.next + 1 >= window {
            0
        } else {
            self.next + 1
        };
        self.count = (self.count + 1).min(window);
        let sum: i64 = self.micros.iter().take(self.count).sum();
        // mean in hundredths = sum / (count * 10_000), rounded half away from zero
        let den = self.count as i64 * 10_000;
        let (q, r) = (sum / den, sum % den);
        if 2 * r.abs() >= den {
            q + sum.signum()
        } else {
            q
        }
    }
}

/// Update the sensor's window and add the mean.
pub fn transform(input: &Input<'_>, out: &mut Patch) -> Result<Action, Error> {
    let t = input.f64("temp_c").ok_or(Error::Transform)?;
    let mut id_buf = [0u8; 64];
    let id = input.str("id", &mut id_buf).ok_or(Error::Transform)?;
    let window = WINDOW.get().clamp(1, MAX_WINDOW);

    let mut buf = [0u8; 2 + 8 * MAX_WINDOW];
    let stored = match state::get(id.as_bytes(), &mut buf)? {
        Some(n) => buf.get(..n).unwrap_or(&[]),
        None => &[],
    };
    let mut w = Window::load(stored, window);
    if !t.is_finite() || t.abs() > 1e9 {
        return Err(Error::Transform);
    }
    let avg = w.push(t, window);
    let n = w.store(&mut buf, window);
    state::set(id.as_bytes(), buf.get(..n).unwrap_or(&[]))?;

    out.set("temp_avg10_c", Value::Float(avg as f64 / 100.0))?;
    Ok(Action::Emit)
}

weir_guest::export_patch_transform!(transform, init = init);

//! W1 stage 1, range-filter: drop the record when `temp_c` is outside
//! [`min`, `max`] (default [-40, 85], settable in the stage's `config`).
//! A record without a numeric `temp_c` is an error (it goes to the error policy).
#![no_std]

use weir_guest::{Action, Error, Fields, Global, Input, Patch};

static MIN: Global<f64> = Global::new(-40.0);
static MAX: Global<f64> = Global::new(85.0);

/// Read `min` / `max` from the stage config.
pub fn init(cfg: &Fields<'_>) -> Result<(), Error> {
    for (key, cell) in [("min", &MIN), ("max", &MAX)] {
        if let Some(v) = cfg.get(key) {
            cell.set(v.as_f64().ok_or(Error::Config)?);
        }
    }
    if MIN.get() > MAX.get() {
        return Err(Error::Config);
    }
    Ok(())
}

/// Keep the record (unchanged) when `temp_c` is within range.
pub fn transform(input: &Input<'_>, _out: &mut Patch) -> Result<Action, Error> {
    let t = input.f64("temp_c").ok_or(Error::Transform)?;
    Ok(if (MIN.get()..=MAX.get()).contains(&t) {
        Action::Emit
    } else {
        Action::Drop
    })
}

weir_guest::export_patch_transform!(transform, init = init);

//! {name}: a Weir transform module. It keeps readings that have a
//! `temp_c`, adds `"checked": true` to them, and fails a record without
//! one, saying why. The host re-emits the record with the patch merged in,
//! so the module never encodes a whole record.
#![no_std]

use weir_guest::{Action, Error, Input, Patch, Value};

pub fn transform(input: &Input<'_>, out: &mut Patch) -> Result<Action, Error> {
    let mut buf = [0u8; 16];
    if input.get("temp_c", &mut buf).is_none() {
        weir_guest::host::fail("no temp_c in the record");
        return Err(Error::Transform);
    }
    out.set("checked", Value::Bool(true))?;
    Ok(Action::Emit)
}

weir_guest::export_patch_transform!(transform);

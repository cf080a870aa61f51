//! The fast transform form: read fields of the input through the host
//! (`input_get`) and emit the input with a patch (`emit_input`), so the module
//! never scans or re-encodes the record itself.
//!
//! ```
//! use weir_guest::{Action, Error, Input, Patch, Value};
//!
//! fn transform(input: &Input<'_>, out: &mut Patch) -> Result<Action, Error> {
//!     let t = input.f64("temp_c").ok_or(Error::Transform)?;
//!     out.set("temp_f", Value::Float(t * 1.8 + 32.0))?;
//!     Ok(Action::Emit)
//! }
//! weir_guest::export_patch_transform!(transform);
//! ```

use weir_abi::cbor::{self, Reader, Writer};

use crate::{Error, Record, Value, host};

/// The record being processed, read field by field through the host.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    /// The input as the host wrote it (ABI v1 CBOR record).
    pub fn new(bytes: &'a [u8]) -> Self {
        Input { bytes }
    }

    /// The raw CBOR of payload field `key`, copied into `buf`.
    pub fn raw<'b>(&self, key: &str, buf: &'b mut [u8]) -> Option<&'b [u8]> {
        let n = host::input_get(key.as_bytes(), buf).ok()??;
        buf.get(..n)
    }

    /// Payload field `key`, decoded (text and bytes borrow from `buf`).
    pub fn get<'b>(&self, key: &str, buf: &'b mut [u8]) -> Option<Value<'b>> {
        let raw = self.raw(key, buf)?;
        Value::decode(&mut Reader::new(raw)).ok()
    }

    /// Payload field `key` as a float (integers are converted).
    pub fn f64(&self, key: &str) -> Option<f64> {
        let mut buf = [0u8; 16];
        self.get(key, &mut buf)?.as_f64()
    }

    /// Payload field `key` as an integer.
    pub fn i64(&self, key: &str) -> Option<i64> {
        let mut buf = [0u8; 16];
        self.get(key, &mut buf)?.as_i64()
    }

    /// Payload field `key` as text, copied into `buf`.
    pub fn str<'b>(&self, key: &str, buf: &'b mut [u8]) -> Option<&'b str> {
        self.get(key, buf)?.as_str()
    }

    /// The whole record, for what fields alone do not give (topic, headers).
    pub fn record(&self) -> Result<Record<'a>, Error> {
        Record::decode(self.bytes)
    }
}

/// Changes to the input's payload: a small CBOR map built in place.
pub struct Patch {
    buf: [u8; Patch::CAPACITY],
    len: usize,
    count: u64,
}

impl Default for Patch {
    fn default() -> Self {
        Patch::new()
    }
}

impl Patch {
    /// Bytes a patch can hold.
    pub const CAPACITY: usize = 1024;
    /// Room kept in front for the map head (at most 64 entries: 2 bytes).
    const HEAD: usize = 2;

    /// An empty patch.
    pub fn new() -> Self {
        Patch {
            buf: [0; Patch::CAPACITY],
            len: Patch::HEAD,
            count: 0,
        }
    }

    fn entry(
        &mut self,
        key: &str,
        write: impl FnOnce(&mut Writer<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.count >= weir_abi::patch::MAX_PATCH_ENTRIES as u64 {
            return Err(Error::Resource);
        }
        let mut w = Writer::new(self.buf.get_mut(self.len..).ok_or(Error::Resource)?);
        w.text(key)?;
        write(&mut w)?;
        self.len += w.len();
        self.count += 1;
        Ok(())
    }

    /// Set payload field `key` (each key at most once per patch).
    pub fn set(&mut self, key: &str, value: Value<'_>) -> Result<(), Error> {
        self.entry(key, |w| value.encode(w))
    }

    /// Remove payload field `key`.
    pub fn remove(&mut self, key: &str) -> Result<(), Error> {
        self.entry(key, |w| Ok(w.raw(&[weir_abi::patch::REMOVE])?))
    }

    /// True if nothing was set or removed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded patch map (empty slice for an empty patch).
    pub fn bytes(&mut self) -> &[u8] {
        if self.count == 0 {
            return &[];
        }
        let head = if self.count < 24 { 1 } else { 2 };
        let start = Patch::HEAD - head;
        if let Some(room) = self.buf.get_mut(start..Patch::HEAD) {
            // Cannot fail: `head` bytes are exactly what the count needs.
            let _ = Writer::new(room).head(cbor::MAP, self.count);
        }
        self.buf.get(start..self.len).unwrap_or(&[])
    }
}

/// The body of `weir_transform` for a patch transform.
pub fn dispatch_patch(input: &[u8], f: crate::PatchFn) -> i32 {
    let mut patch = Patch::new();
    match f(&Input::new(input), &mut patch) {
        Ok(crate::Action::Emit) => match host::emit_input(patch.bytes()) {
            Ok(()) => weir_abi::status::OK,
            Err(e) => e.status(),
        },
        Ok(crate::Action::Drop) => weir_abi::status::OK,
        Err(e) => e.status(),
    }
}

//! A reading: a CBOR map of sensor fields, written straight into a buffer.

use weir_abi::cbor::Writer;

use crate::error::{Error, ErrorKind};

/// The most fields in one reading (the map head stays one byte).
pub const MAX_FIELDS: u8 = 23;

/// A reading did not fit its buffer, or has more than [`MAX_FIELDS`] fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

impl Error for TooLarge {
    fn kind(&self) -> ErrorKind {
        ErrorKind::TooLarge
    }
}

/// Builds one reading's CBOR map in a caller's buffer, field by field.
///
/// ```
/// let mut buf = [0u8; 64];
/// let cbor = weir_sensor::Reading::new(&mut buf)
///     .text("id", "s1")
///     .float("temp_c", 21.5)
///     .uint("bat_mv", 3010)
///     .finish()
///     .unwrap();
/// assert_eq!(cbor[0], 0xa3); // a map of three fields
/// ```
pub struct Reading<'b> {
    w: Writer<'b>,
    fields: u8,
    failed: bool,
}

impl<'b> Reading<'b> {
    /// Start a reading in `buf`.
    pub fn new(buf: &'b mut [u8]) -> Self {
        let mut w = Writer::new(buf);
        // The map head, counted at the end.
        let failed = w.raw(&[0xa0]).is_err();
        Reading {
            w,
            fields: 0,
            failed,
        }
    }

    fn field(
        mut self,
        key: &str,
        value: impl FnOnce(&mut Writer<'b>) -> Result<(), weir_abi::cbor::Error>,
    ) -> Self {
        if self.fields >= MAX_FIELDS {
            self.failed = true;
        }
        if !self.failed {
            self.failed = self.w.text(key).and_then(|()| value(&mut self.w)).is_err();
            self.fields += 1;
        }
        self
    }

    /// A text field.
    pub fn text(self, key: &str, value: &str) -> Self {
        self.field(key, |w| w.text(value))
    }

    /// A float field (single precision on the wire when that is exact).
    pub fn float(self, key: &str, value: f64) -> Self {
        self.field(key, |w| w.float(value))
    }

    /// An unsigned integer field.
    pub fn uint(self, key: &str, value: u64) -> Self {
        self.field(key, |w| w.head(weir_abi::cbor::UINT, value))
    }

    /// A signed integer field.
    pub fn int(self, key: &str, value: i64) -> Self {
        self.field(key, |w| w.int(value))
    }

    /// A boolean field.
    pub fn bool(self, key: &str, value: bool) -> Self {
        self.field(key, |w| w.raw(&[if value { 0xf5 } else { 0xf4 }]))
    }

    /// The encoded map.
    pub fn finish(self) -> Result<&'b [u8], TooLarge> {
        if self.failed {
            return Err(TooLarge);
        }
        let fields = self.fields;
        let buf = self.w.into_inner();
        buf[0] = 0xa0 | fields;
        Ok(buf)
    }
}

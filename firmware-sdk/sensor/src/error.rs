//! Errors in embedded-hal's shape: each error type has `kind()`, which
//! returns a [`ErrorKind`] that generic code can match on.

/// What went wrong, for code that handles errors of any driver or link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The UART failed to read or write.
    Uart,
    /// The I2C bus failed (arbitration loss, bus error, overrun).
    Bus,
    /// The device did not acknowledge its address or a byte: it is absent,
    /// busy or unpowered.
    NoAcknowledge,
    /// A checksum over data from the device did not match: the reading is
    /// corrupt and was discarded.
    Crc,
    /// A reading or reply does not fit its buffer, or has too many fields.
    TooLarge,
    /// Anything else.
    Other,
}

/// An error that can say its [`ErrorKind`].
pub trait Error: core::fmt::Debug {
    /// The kind of this error.
    fn kind(&self) -> ErrorKind;
}

impl core::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ErrorKind::Uart => "UART read or write failed",
            ErrorKind::Bus => "I2C bus error",
            ErrorKind::NoAcknowledge => "the device did not acknowledge",
            ErrorKind::Crc => "checksum mismatch",
            ErrorKind::TooLarge => "does not fit its buffer",
            ErrorKind::Other => "other error",
        })
    }
}

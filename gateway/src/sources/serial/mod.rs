//! The serial source: records from sensors on serial lines (UART, RS-485,
//! USB CDC), in Weir's wire protocol, text lines or length-prefixed messages.
//!
//! - [`framing`]: bytes to payloads, for every framing mode (pure, I/O-free).
//! - [`source`]: the device I/O: open, read, reconnect, count, hand on.

pub mod framing;
pub mod source;

pub use source::{SerialConfig, SerialMetrics};

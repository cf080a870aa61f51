//! The serial source: records from sensors on serial lines (UART, RS-485,
//! USB CDC), in Weir's wire protocol, text lines or length-prefixed messages.
//!
//! - [`framing`]: bytes to payloads, for every framing mode (pure, I/O-free).
//! - [`source`]: the device I/O: open, read, reconnect, count, hand on,
//!   and write the downlink's commands.
//! - [`downlink`]: commands to sensor nodes and their replies (numbering and
//!   matching are I/O-free).

pub mod downlink;
pub mod framing;
pub mod source;

pub use source::{SerialConfig, SerialMetrics};

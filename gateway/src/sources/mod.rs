//! Sources: where records come from.
//!
//! - [`serial`]: sensors on serial lines.

pub mod serial;
